// Package cniplugin implements the routemode CNI plugin (CNI spec 1.1:
// ADD, DEL, CHECK, GC, STATUS, VERSION; configurations of spec 0.3.0 to
// 1.0.0 get ADD, DEL and CHECK). ADD allocates a /32 from the node's
// podCIDR (agent/ipam), wires the pod (agent/podnet) and records the
// endpoint (agent/endpoint) for the agent; DEL undoes all three and
// succeeds when there is nothing to undo; CHECK verifies the wiring; GC
// does what DEL would for every pod the runtime no longer lists; STATUS
// says whether an ADD can succeed. Every failure is a CNI error result
// with a code and a message naming the problem.
package cniplugin

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/routemode/routemode/agent/cniconf"
	"github.com/routemode/routemode/agent/endpoint"
	"github.com/routemode/routemode/agent/health"
	"github.com/routemode/routemode/agent/ipam"
	"github.com/routemode/routemode/agent/nlsafe"
	"github.com/routemode/routemode/agent/podnet"
)

// Versions are the CNI spec versions the plugin speaks.
var Versions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// About is printed when the plugin runs without CNI_COMMAND.
const About = "routemode CNI plugin: veth + /32 pod wiring for the routemode datapath"

// Main runs the plugin.
func Main() {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: Add, Del: Del, Check: Check, GC: GC, Status: Status}, Versions, About)
}

func nodeHandle() (podnet.Node, func(), error) {
	h, err := netlink.NewHandle()
	if err != nil {
		return podnet.Node{}, nil, types.NewError(types.ErrInternal, "opening netlink", err.Error())
	}
	return podnet.Node{Handle: nlsafe.Wrap(h)}, h.Close, nil
}

func netConf(args *skel.CmdArgs) (*cniconf.NetConf, cniconf.Config, error) {
	return cniconf.Parse(args.StdinData)
}

// Add wires a pod.
func Add(args *skel.CmdArgs) (err error) {
	conf, cfg, err := netConf(args)
	if err != nil {
		return err
	}
	if args.IfName == "" {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_IFNAME is empty", "")
	}
	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("opening pod network namespace %q", args.Netns), err.Error())
	}
	defer podNS.Close()
	node, closeNode, err := nodeHandle()
	if err != nil {
		return err
	}
	defer closeNode()
	// The configuration outlives a reboot (/etc/cni/net.d is on disk),
	// rm_host does not: until the agent has set the node up for this
	// podCIDR, the file may be the one of the node's previous life, whose
	// podCIDR the node may no longer have (its Node deleted and registered
	// again). A pod wired from it would hold an address no peer routes to.
	if err := podnet.CheckRouter(node, cfg.RouterIP); err != nil {
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("the routemode agent has not set this node up for podCIDR %s (yet): the runtime retries the pod once it has", cfg.PodCIDR), err.Error())
	}

	alloc, err := ipam.New(cfg.IPAMDir, cfg.PodCIDR)
	if err != nil {
		return types.NewError(types.ErrIOFailure, "opening the address store", err.Error())
	}
	ip, err := alloc.Allocate(args.ContainerID, args.IfName)
	if err != nil {
		return types.NewError(types.ErrTryAgainLater, err.Error(), "")
	}
	defer func() {
		if err != nil {
			_ = alloc.Release(args.ContainerID, args.IfName)
		}
	}()

	ep, err := podnet.Setup(node, podnet.Config{RouterIP: cfg.RouterIP, DeviceMTU: cfg.DeviceMTU, RouteMTU: cfg.RouteMTU},
		podnet.Request{ContainerID: args.ContainerID, IfName: args.IfName, PodNS: podNS, IP: ip})
	if err != nil {
		return types.NewError(types.ErrInternal, "wiring the pod", err.Error())
	}
	store := endpoint.Store{Dir: cfg.EndpointDir}
	if err := store.Put(ep); err != nil {
		_ = podnet.Teardown(node, ep.LXCName)
		return types.NewError(types.ErrIOFailure, "recording the endpoint", err.Error())
	}
	return types.PrintResult(result(cfg, ep, args.Netns), conf.CNIVersion)
}

func result(cfg cniconf.Config, ep endpoint.Endpoint, netnsPath string) *current.Result {
	zero := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	router := net.IP(cfg.RouterIP.AsSlice())
	return &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: ep.LXCName, Mac: ep.LXCMAC},
			{Name: ep.IfName, Mac: ep.PodMAC, Sandbox: netnsPath},
		},
		IPs: []*current.IPConfig{{
			Interface: current.Int(1),
			Address:   net.IPNet{IP: net.IP(ep.IP.AsSlice()), Mask: net.CIDRMask(32, 32)},
			Gateway:   router,
		}},
		Routes: []*types.Route{{Dst: *zero, GW: router, MTU: cfg.RouteMTU}},
	}
}

// Del unwires a pod; anything already gone is fine, so DEL can be repeated
// and may name a pod that never existed.
func Del(args *skel.CmdArgs) error {
	return withNode(args, func(_ *cniconf.NetConf, cfg cniconf.Config, node podnet.Node) error {
		if err := remove(node, cfg, attachment{args.ContainerID, args.IfName}); err != nil {
			return types.NewError(types.ErrIOFailure, "removing the pod's network", err.Error())
		}
		return nil
	})
}

// withNode runs fn with the parsed configuration and the node's netlink
// handle.
func withNode(args *skel.CmdArgs, fn func(conf *cniconf.NetConf, cfg cniconf.Config, node podnet.Node) error) error {
	conf, cfg, err := netConf(args)
	if err != nil {
		return err
	}
	node, closeNode, err := nodeHandle()
	if err != nil {
		return err
	}
	defer closeNode()
	return fn(conf, cfg, node)
}

// attachment is a pod interface as the runtime names it.
type attachment struct{ containerID, ifName string }

// remove undoes ADD for one attachment: the device (and with it the pair
// and the node's route), the address, the record. What is already gone is
// fine; every step is tried even when one fails.
func remove(node podnet.Node, cfg cniconf.Config, a attachment) error {
	store := endpoint.Store{Dir: cfg.EndpointDir}
	lxc := endpoint.LXCName(a.containerID, a.ifName)
	if ep, ok, err := store.Get(a.containerID, a.ifName); err == nil && ok && ep.LXCName != "" {
		lxc = ep.LXCName
	}
	var errs []error
	if err := podnet.Teardown(node, lxc); err != nil {
		errs = append(errs, err)
	}
	alloc, err := ipam.New(cfg.IPAMDir, cfg.PodCIDR)
	if err == nil {
		err = alloc.Release(a.containerID, a.ifName)
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := store.Delete(a.containerID, a.ifName); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// GC removes, as DEL would, every pod the plugin wired (an endpoint
// record or an address) that is not in the runtime's
// cni.dev/valid-attachments: pods whose DEL never came, because the
// runtime crashed or lost its state, would otherwise hold their addresses
// for good. The runtime runs no ADD or DEL while GC runs (CNI 1.1,
// "Lifecycle & Ordering").
func GC(args *skel.CmdArgs) error {
	return withNode(args, func(conf *cniconf.NetConf, cfg cniconf.Config, node podnet.Node) error {
		// The records and addresses are not tagged with a network: GC of
		// another network pointed at this plugin must not take them.
		if conf.Name != cniconf.NetworkName {
			return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(
				"GC of network %q: routemode's pods belong to network %q, so nothing was removed", conf.Name, cniconf.NetworkName), "")
		}
		// Absent means the runtime did not say; null (a runtime with no
		// pod on this network) means none is valid.
		var keys map[string]json.RawMessage
		if err := json.Unmarshal(args.StdinData, &keys); err != nil {
			return types.NewError(types.ErrDecodingFailure, "network configuration is not valid JSON: "+err.Error(), "")
		}
		if _, ok := keys["cni.dev/valid-attachments"]; !ok {
			return types.NewError(types.ErrInvalidNetworkConfig,
				"GC without cni.dev/valid-attachments: the plugin cannot tell which pods are stale, so it removed nothing", "")
		}
		valid := make(map[attachment]bool, len(conf.ValidAttachments))
		for _, v := range conf.ValidAttachments {
			valid[attachment{v.ContainerID, v.IfName}] = true
		}
		known, err := wired(cfg)
		errs := []error{err}
		for _, a := range known {
			if valid[a] {
				continue
			}
			if err := remove(node, cfg, a); err != nil {
				errs = append(errs, fmt.Errorf("container %s interface %s: %w", a.containerID, a.ifName, err))
			}
		}
		if err := errors.Join(errs...); err != nil {
			return types.NewError(types.ErrIOFailure, "removing stale pods", err.Error())
		}
		return nil
	})
}

// wired lists the attachments the plugin holds anything for, sorted: an
// ADD that failed half-way may have left an address without a record. The
// agent's health endpoint, recorded like a pod but not the runtime's, is
// left out. What it could read is returned along with any error.
func wired(cfg cniconf.Config) ([]attachment, error) {
	var all []attachment
	eps, epErr := endpoint.Store{Dir: cfg.EndpointDir}.List()
	for _, ep := range eps {
		if ep.ContainerID != health.ContainerID {
			all = append(all, attachment{ep.ContainerID, ep.IfName})
		}
	}
	alloc, err := ipam.New(cfg.IPAMDir, cfg.PodCIDR)
	var allocs []ipam.Allocation
	if err == nil {
		allocs, err = alloc.Allocations()
	}
	for _, al := range allocs {
		all = append(all, attachment{al.ContainerID, al.IfName})
	}
	slices.SortFunc(all, func(a, b attachment) int {
		return cmp.Or(cmp.Compare(a.containerID, b.containerID), cmp.Compare(a.ifName, b.ifName))
	})
	return slices.Compact(all), errors.Join(epErr, err)
}

// Status says whether an ADD can succeed (CNI 1.1): the agent has set the
// node up (rm_host holds the pods' gateway address) and the podCIDR has a
// free address.
func Status(args *skel.CmdArgs) error {
	return withNode(args, func(_ *cniconf.NetConf, cfg cniconf.Config, node podnet.Node) error {
		if err := podnet.CheckRouter(node, cfg.RouterIP); err != nil {
			return types.NewError(types.ErrPluginNotAvailable, "the routemode agent has not set this node up", err.Error())
		}
		alloc, err := ipam.New(cfg.IPAMDir, cfg.PodCIDR)
		if err != nil {
			return types.NewError(types.ErrPluginNotAvailable, "opening the address store", err.Error())
		}
		allocs, err := alloc.Allocations()
		if err != nil {
			return types.NewError(types.ErrPluginNotAvailable, "reading the address store", err.Error())
		}
		used := 0
		for _, al := range allocs {
			if cfg.PodCIDR.Contains(al.IP) {
				used++
			}
		}
		if used >= alloc.Capacity() {
			return types.NewError(types.ErrPluginNotAvailable,
				fmt.Sprintf("no free pod address: all %d of %s are in use; delete pods to start new ones", alloc.Capacity(), cfg.PodCIDR), "")
		}
		return nil
	})
}

// Check verifies that a pod is wired as ADD left it.
func Check(args *skel.CmdArgs) error {
	conf, cfg, err := netConf(args)
	if err != nil {
		return err
	}
	if conf.RawPrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "CHECK needs prevResult in the network configuration", "")
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return types.NewError(types.ErrDecodingFailure, "parsing prevResult", err.Error())
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "converting prevResult", err.Error())
	}
	ep, ok, err := endpoint.Store{Dir: cfg.EndpointDir}.Get(args.ContainerID, args.IfName)
	if err != nil {
		return types.NewError(types.ErrIOFailure, "reading the endpoint record", err.Error())
	}
	if !ok {
		return types.NewError(types.ErrUnknownContainer, fmt.Sprintf("no endpoint recorded for container %s interface %s", args.ContainerID, args.IfName), "")
	}
	if len(prev.IPs) == 0 {
		return types.NewError(types.ErrInvalidNetworkConfig, "prevResult has no IP", "")
	}
	if ip, _ := netip.AddrFromSlice(prev.IPs[0].Address.IP.To4()); ip != ep.IP {
		return types.NewError(types.ErrInternal, fmt.Sprintf("prevResult IP %s differs from the recorded %s", prev.IPs[0].Address.IP, ep.IP), "")
	}
	node, closeNode, err := nodeHandle()
	if err != nil {
		return err
	}
	defer closeNode()
	if err := podnet.Check(node, ep); err != nil {
		return types.NewError(types.ErrInternal, "pod wiring check failed", err.Error())
	}
	return nil
}
