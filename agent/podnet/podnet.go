// Package podnet wires one pod network namespace to its node, the same way
// for CNI pods and for the agent's health endpoint:
//
//   - a veth pair whose node side is lxc<hash> (or the name asked for) and
//     whose pod side is eth0, both at the full device MTU;
//   - the pod's address as a /32 on eth0, a link route to the router IP and
//     a default route via the router IP carrying the route MTU of the mode;
//   - on the node, a /32 route to the pod through the lxc device (route
//     protocol RouteProtocol, so the agent's own garbage collection never
//     touches it) and proxy ARP on the lxc device.
//
// Gateway handling: the router IP (first address of the podCIDR) is a
// local address of the node, held on the agent's rm_host device, so the
// node answers the pod's ARP for its gateway on the lxc device as for any
// local address; proxy ARP on the lxc device makes it answer for any other
// routed address a pod might ARP for. No MAC is configured in the pod, so
// an lxc device recreated with another MAC needs no pod change.
package podnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/routemode/routemode/agent/endpoint"
	"github.com/routemode/routemode/agent/nlsafe"
	"github.com/routemode/routemode/agent/nsutil"
)

// RouteProtocol marks the node's routes to pods (0xB6): distinct from the
// agent's peer routes (0xB5), so each owner collects only its own.
const RouteProtocol netlink.RouteProtocol = 0xB6

// Config is the pod network of a node, as the CNI configuration carries it.
type Config struct {
	RouterIP  netip.Addr
	DeviceMTU int
	RouteMTU  int
}

// Request names one attachment.
type Request struct {
	ContainerID string
	IfName      string
	// PodNS is the pod's namespace; its Path is recorded in the endpoint.
	PodNS ns.NetNS
	IP    netip.Addr
	// LXCName is the node-side device; empty means endpoint.LXCName.
	LXCName string
}

// Node is the node side: its netlink handle and namespace (nil: the
// caller's, used for the proxy_arp sysctl).
type Node struct {
	Handle nlsafe.Handle
	NS     ns.NetNS
	// Sysctls is the /proc/sys mount the pod's proxy_arp is written through.
	Sysctls nsutil.Sysctls
}

// Setup wires the pod and returns its endpoint record. A leftover device of
// the same name is replaced. On failure nothing it created is left.
func Setup(node Node, cfg Config, req Request) (ep endpoint.Endpoint, err error) {
	if req.LXCName == "" {
		req.LXCName = endpoint.LXCName(req.ContainerID, req.IfName)
	}
	if req.IfName == "" {
		return ep, errors.New("no interface name")
	}
	if err := Teardown(node, req.LXCName); err != nil {
		return ep, err
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: req.LXCName, MTU: cfg.DeviceMTU},
		PeerName:      req.IfName,
		PeerMTU:       uint32(cfg.DeviceMTU),
		PeerNamespace: netlink.NsFd(int(req.PodNS.Fd())),
	}
	if err := node.Handle.LinkAdd(veth); err != nil {
		return ep, fmt.Errorf("creating veth %s/%s: %w", req.LXCName, req.IfName, err)
	}
	defer func() {
		if err != nil {
			_ = Teardown(node, req.LXCName)
		}
	}()
	lxc, err := node.Handle.LinkByName(req.LXCName)
	if err != nil {
		return ep, err
	}

	podMAC, err := setupPodSide(cfg, req)
	if err != nil {
		return ep, err
	}

	if err := node.Sysctls.Write(node.NS, "net/ipv4/conf/"+req.LXCName+"/proxy_arp", "1"); err != nil {
		return ep, err
	}
	if err := node.Handle.LinkSetUp(lxc); err != nil {
		return ep, fmt.Errorf("setting %s up: %w", req.LXCName, err)
	}
	if err := node.Handle.RouteReplace(HostRoute(req.IP, lxc.Attrs().Index)); err != nil {
		return ep, fmt.Errorf("adding route to %s via %s: %w", req.IP, req.LXCName, err)
	}
	return endpoint.Endpoint{
		ID:          endpoint.IDFor(req.IP),
		ContainerID: req.ContainerID,
		IfName:      req.IfName,
		IP:          req.IP,
		NetNS:       req.PodNS.Path(),
		LXCName:     req.LXCName,
		LXCIndex:    lxc.Attrs().Index,
		LXCMAC:      lxc.Attrs().HardwareAddr.String(),
		PodMAC:      podMAC,
	}, nil
}

// HostRoute is the node's route to a pod.
func HostRoute(ip netip.Addr, lxcIndex int) *netlink.Route {
	return &netlink.Route{
		Dst:       hostNet(ip),
		LinkIndex: lxcIndex,
		Scope:     netlink.SCOPE_LINK,
		Protocol:  RouteProtocol,
		Table:     unix.RT_TABLE_MAIN,
	}
}

func setupPodSide(cfg Config, req Request) (mac string, err error) {
	h, err := nlsafe.NewHandleAt(nsHandle(req.PodNS))
	if err != nil {
		return "", fmt.Errorf("opening pod namespace %s: %w", req.PodNS.Path(), err)
	}
	defer h.Close()
	if lo, err := h.LinkByName("lo"); err == nil {
		_ = h.LinkSetUp(lo)
	}
	l, err := h.LinkByName(req.IfName)
	if err != nil {
		return "", fmt.Errorf("pod interface %s: %w", req.IfName, err)
	}
	if err := h.AddrReplace(l, &netlink.Addr{IPNet: hostNet(req.IP)}); err != nil {
		return "", fmt.Errorf("adding %s to pod: %w", req.IP, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return "", fmt.Errorf("setting pod %s up: %w", req.IfName, err)
	}
	idx := l.Attrs().Index
	if err := h.RouteReplace(&netlink.Route{Dst: hostNet(cfg.RouterIP), LinkIndex: idx, Scope: netlink.SCOPE_LINK}); err != nil {
		return "", fmt.Errorf("adding pod route to router %s: %w", cfg.RouterIP, err)
	}
	if err := h.RouteReplace(DefaultRoute(cfg.RouterIP, idx, cfg.RouteMTU)); err != nil {
		return "", fmt.Errorf("adding pod default route: %w", err)
	}
	return l.Attrs().HardwareAddr.String(), nil
}

// DefaultRoute is a pod's default route.
func DefaultRoute(router netip.Addr, ifIndex, mtu int) *netlink.Route {
	return &netlink.Route{
		Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		Gw:        net.IP(router.AsSlice()),
		LinkIndex: ifIndex,
		MTU:       mtu,
		Table:     unix.RT_TABLE_MAIN,
	}
}

// Teardown deletes the node-side device (and with it the pair and the
// node's route to the pod); a device that does not exist is fine.
func Teardown(node Node, lxcName string) error {
	l, err := node.Handle.LinkByName(lxcName)
	if err != nil {
		if nlsafe.IsNotFound(err) {
			return nil
		}
		return err
	}
	if err := node.Handle.LinkDel(l); err != nil && !nlsafe.IsNotFound(err) {
		return fmt.Errorf("deleting %s: %w", lxcName, err)
	}
	return nil
}

// CheckRouter verifies that the node holds the pods' gateway address,
// which the agent puts on its rm_host device: without it ADD still wires
// pods, but they reach nothing.
func CheckRouter(node Node, router netip.Addr) error {
	addrs, err := node.Handle.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("listing the node's addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && ip == router {
			return nil
		}
	}
	return fmt.Errorf("no device of the node holds the pods' router address %s (the agent puts it on rm_host)", router)
}

// Check verifies the wiring of ep: the lxc device is up, the node routes the
// pod's address through it, and the pod has its address and default route.
func Check(node Node, ep endpoint.Endpoint) error {
	lxc, err := node.Handle.LinkByName(ep.LXCName)
	if err != nil {
		return fmt.Errorf("node-side device %s: %w", ep.LXCName, err)
	}
	if lxc.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("node-side device %s is down", ep.LXCName)
	}
	routes, err := node.Handle.RouteListFiltered(unix.AF_INET, &netlink.Route{Dst: hostNet(ep.IP), Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		return err
	}
	if len(routes) == 0 || routes[0].LinkIndex != lxc.Attrs().Index {
		return fmt.Errorf("node has no route to %s via %s", ep.IP, ep.LXCName)
	}
	return withPod(ep, func(h nlsafe.Handle, idx int) error {
		addrs, err := h.AddrList(nil, unix.AF_INET)
		if err != nil {
			return err
		}
		if !slices.ContainsFunc(addrs, func(a netlink.Addr) bool {
			ip, ok := netip.AddrFromSlice(a.IP.To4())
			return ok && a.LinkIndex == idx && ip == ep.IP
		}) {
			return fmt.Errorf("pod interface %s lacks address %s", ep.IfName, ep.IP)
		}
		_, err = defaultRoute(h, idx)
		return err
	})
}

// RouteMTU reads the MTU of the pod's default route.
func RouteMTU(ep endpoint.Endpoint) (int, error) {
	var mtu int
	err := withPod(ep, func(h nlsafe.Handle, idx int) error {
		r, err := defaultRoute(h, idx)
		if err != nil {
			return err
		}
		mtu = r.MTU
		return nil
	})
	return mtu, err
}

// SetRouteMTU sets the MTU of the pod's default route in place (a route
// replace of the same key, so the pod is never without a route). The pod's
// link MTU stays at the device MTU, so it still receives full-size packets.
func SetRouteMTU(ep endpoint.Endpoint, router netip.Addr, mtu int) error {
	return withPod(ep, func(h nlsafe.Handle, idx int) error {
		return h.RouteReplace(DefaultRoute(router, idx, mtu))
	})
}

func withPod(ep endpoint.Endpoint, fn func(h nlsafe.Handle, ifIndex int) error) error {
	podNS, err := ns.GetNS(ep.NetNS)
	if err != nil {
		return fmt.Errorf("pod namespace %s: %w", ep.NetNS, err)
	}
	defer podNS.Close()
	h, err := nlsafe.NewHandleAt(nsHandle(podNS))
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(ep.IfName)
	if err != nil {
		return fmt.Errorf("pod interface %s: %w", ep.IfName, err)
	}
	return fn(h, l.Attrs().Index)
}

func defaultRoute(h nlsafe.Handle, ifIndex int) (netlink.Route, error) {
	routes, err := h.RouteList(nil, unix.AF_INET)
	if err != nil {
		return netlink.Route{}, err
	}
	for _, r := range routes {
		if r.LinkIndex == ifIndex && r.Table == unix.RT_TABLE_MAIN && IsDefault(r.Dst) {
			return r, nil
		}
	}
	return netlink.Route{}, errors.New("pod has no default route")
}

// IsDefault reports whether dst is the IPv4 default destination.
func IsDefault(dst *net.IPNet) bool {
	if dst == nil {
		return true
	}
	ones, _ := dst.Mask.Size()
	return ones == 0
}

func hostNet(ip netip.Addr) *net.IPNet {
	return &net.IPNet{IP: net.IP(ip.AsSlice()), Mask: net.CIDRMask(32, 32)}
}
