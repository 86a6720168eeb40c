package cniplugin_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/routemode/routemode/agent/cniconf"
	"github.com/routemode/routemode/agent/endpoint"
	"github.com/routemode/routemode/agent/health"
	"github.com/routemode/routemode/agent/ipam"
	"github.com/routemode/routemode/agent/nsutil"
	"github.com/routemode/routemode/internal/netlab"
)

// runtime drives the plugin through libcni, the library containerd and
// CRI-O call it with, reading the configuration list the agent wrote and
// running the plugin in the node's namespace. Its attachment cache is the
// test's own, and empty: a runtime that lost its state.
func runtime(t *testing.T, n *netlab.Node, fn func(c *libcni.CNIConfig, list *libcni.NetworkConfigList) error) error {
	t.Helper()
	list, err := libcni.ConfListFromFile(filepath.Join(n.CNIConfDir, cniconf.FileName))
	if err != nil {
		t.Fatal(err)
	}
	if list.CNIVersion != "1.1.0" {
		t.Fatalf("libcni negotiated spec %s from the agent's configuration, want 1.1.0", list.CNIVersion)
	}
	c := libcni.NewCNIConfigWithCacheDir([]string{n.Lab.CNIBin}, t.TempDir(), nil)
	// The plugin inherits the namespace of the thread that starts it.
	return ns.WithNetNSPath(nsutil.NamedPath(n.NSName), func(ns.NetNS) error { return fn(c, list) })
}

// rawPod wires a pod namespace with ADD and nothing else, so that deleting
// the namespace really frees it (and its veth).
func rawPod(ctx context.Context, t *testing.T, n *netlab.Node, name string) (containerID, nsName string) {
	t.Helper()
	nsName = netlab.MustPodNS(t, n, name)
	containerID = "gc-" + name
	if res := netlab.MustCNI(t, ctx, n, "ADD", containerID, nsutil.NamedPath(nsName), "eth0", netlab.MustPluginStdin(t, n)); res.ExitCode != 0 {
		t.Fatalf("ADD %s: %s %s", name, res.Stdout, res.Stderr)
	}
	return containerID, nsName
}

type wiring struct {
	record, address, device bool
}

func wiredState(t *testing.T, n *netlab.Node, containerID string) wiring {
	t.Helper()
	var w wiring
	ep, ok, err := endpoint.Store{Dir: filepath.Join(n.StateDir, "endpoints")}.Get(containerID, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	w.record = ok
	alloc, err := ipam.New(filepath.Join(n.StateDir, "ipam"), n.PodCIDR)
	if err != nil {
		t.Fatal(err)
	}
	_, w.address = alloc.Lookup(containerID, "eth0")
	lxc := endpoint.LXCName(containerID, "eth0")
	if ok {
		lxc = ep.LXCName
	}
	_, err = n.Handle.LinkByName(lxc)
	w.device = err == nil
	return w
}

// TestGCRemovesPodsTheRuntimeNoLongerLists: pods whose DEL never came
// (namespace gone, namespace left behind, an ADD that died after taking
// an address) are removed by GC, through libcni, while the pod the runtime
// still lists, the agent's health endpoint and a foreign lxc device stay.
func TestGCRemovesPodsTheRuntimeNoLongerLists(t *testing.T) {
	_, n := oneNode(t)
	ctx := netlab.Context(t, 2*time.Minute)
	keep := netlab.MustAddPod(t, ctx, n, "keep")
	gone, goneNS := rawPod(ctx, t, n, "gone")
	left, _ := rawPod(ctx, t, n, "left")
	alloc, err := ipam.New(filepath.Join(n.StateDir, "ipam"), n.PodCIDR)
	if err != nil {
		t.Fatal(err)
	}
	const crashed = "gc-crashed-add"
	if _, err := alloc.Allocate(crashed, "eth0"); err != nil {
		t.Fatal(err)
	}
	// A device named like routemode's but wired by someone else: GC only
	// removes what its own records and addresses name.
	foreign := endpoint.LXCName("someone-else", "eth0")
	if err := n.Handle.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: foreign}, PeerName: "rmtestpeer"}); err != nil {
		t.Fatal(err)
	}
	// The runtime lost gone's namespace without a DEL.
	if err := nsutil.Delete(goneNS); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{keep.ContainerID, gone, left} {
		if w := wiredState(t, n, id); !w.record || !w.address {
			t.Fatalf("%s before GC: %+v", id, w)
		}
	}
	before, _ := alloc.Allocations()

	// GC without the list of valid attachments must not take it as "none".
	stdin := netlab.MustPluginStdin(t, n)
	res := netlab.MustCNI(t, ctx, n, "GC", "", "", "", stdin)
	if e := cniError(t, res); e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Msg, "cni.dev/valid-attachments") {
		t.Errorf("GC without valid attachments: %+v", e)
	}
	if after, _ := alloc.Allocations(); len(after) != len(before) {
		t.Fatalf("a refused GC released addresses: %d before, %d after", len(before), len(after))
	}

	err = runtime(t, n, func(c *libcni.CNIConfig, list *libcni.NetworkConfigList) error {
		return c.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: keep.ContainerID, IfName: "eth0"}}})
	})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}

	if w := wiredState(t, n, keep.ContainerID); w != (wiring{true, true, true}) {
		t.Errorf("the listed pod lost its wiring: %+v", w)
	}
	if _, err := keep.Ping(ctx, netip.AddrPortFrom(ipam.HealthIP(n.PodCIDR), health.Port), 64, false); err != nil {
		t.Errorf("the listed pod after GC → health endpoint: %v", err)
	}
	for _, id := range []string{gone, left, crashed} {
		if w := wiredState(t, n, id); w != (wiring{}) {
			t.Errorf("%s after GC: %+v, want nothing left", id, w)
		}
	}
	after, _ := alloc.Allocations()
	if len(after) != 1 || after[0].ContainerID != keep.ContainerID {
		t.Errorf("addresses after GC: %+v, want only %s's", after, keep.ContainerID)
	}
	if _, ok, _ := (endpoint.Store{Dir: filepath.Join(n.StateDir, "endpoints")}).Get(health.ContainerID, health.IfName); !ok {
		t.Error("GC removed the agent's health endpoint record")
	}
	for _, dev := range []string{health.LXCName, foreign} {
		if _, err := n.Handle.LinkByName(dev); err != nil {
			t.Errorf("GC removed %s: %v", dev, err)
		}
	}
	t.Logf("GC released %d addresses and kept %s's", len(before)-len(after), keep.ContainerID)

	// Nothing stale: a second GC is a no-op.
	err = runtime(t, n, func(c *libcni.CNIConfig, list *libcni.NetworkConfigList) error {
		return c.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: keep.ContainerID, IfName: "eth0"}}})
	})
	if w := wiredState(t, n, keep.ContainerID); err != nil || w != (wiring{true, true, true}) {
		t.Errorf("second GC: %v, listed pod %+v", err, w)
	}

	gcWith := func(edit func(conf map[string]any)) netlab.CNIResult {
		var conf map[string]any
		if err := json.Unmarshal(netlab.MustPluginStdin(t, n), &conf); err != nil {
			t.Fatal(err)
		}
		edit(conf)
		stdin, _ := json.Marshal(conf)
		return netlab.MustCNI(t, ctx, n, "GC", "", "", "", stdin)
	}
	// Another network's GC does not own routemode's pods.
	res = gcWith(func(c map[string]any) { c["name"] = "other"; c["cni.dev/valid-attachments"] = []any{} })
	if e := cniError(t, res); e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Msg, `"other"`) {
		t.Errorf("GC of another network: %+v", e)
	}
	if w := wiredState(t, n, keep.ContainerID); w != (wiring{true, true, true}) {
		t.Errorf("another network's GC touched the pod: %+v", w)
	}
	// A runtime with no pod left on the network sends null: none is valid.
	if res := gcWith(func(c map[string]any) { c["cni.dev/valid-attachments"] = nil }); res.ExitCode != 0 {
		t.Fatalf("GC with a null list: %s %s", res.Stdout, res.Stderr)
	}
	if w := wiredState(t, n, keep.ContainerID); w != (wiring{}) {
		t.Errorf("GC with a null list left the pod: %+v", w)
	}
}

// TestStatus: STATUS, through libcni, passes on a node the agent set up,
// and fails with code 50 and the reason when ADD could not work: the
// pods' gateway address missing, or no free address.
func TestStatus(t *testing.T) {
	_, n := oneNode(t)
	ctx := netlab.Context(t, time.Minute)
	status := func() error {
		return runtime(t, n, func(c *libcni.CNIConfig, list *libcni.NetworkConfigList) error {
			return c.GetStatusNetworkList(ctx, list)
		})
	}
	wantUnavailable := func(what, msg string) {
		t.Helper()
		err := status()
		var e *types.Error
		if !errors.As(err, &e) || e.Code != types.ErrPluginNotAvailable || !strings.Contains(e.Error(), msg) {
			t.Errorf("STATUS %s: %v, want code %d naming %q", what, err, types.ErrPluginNotAvailable, msg)
			return
		}
		t.Logf("STATUS %s: %s", what, e.Error())
	}
	if err := status(); err != nil {
		t.Fatalf("STATUS of a ready node: %v", err)
	}

	router := ipam.RouterIP(n.PodCIDR)
	if out, err := netlab.IP(n, "addr", "del", router.String()+"/32", "dev", "rm_host"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	wantUnavailable("without the router address", router.String())
	if out, err := netlab.IP(n, "addr", "add", router.String()+"/32", "dev", "rm_host"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if err := status(); err != nil {
		t.Fatalf("STATUS with the router address back: %v", err)
	}

	alloc, err := ipam.New(filepath.Join(n.StateDir, "ipam"), n.PodCIDR)
	if err != nil {
		t.Fatal(err)
	}
	for i := range alloc.Capacity() {
		if _, err := alloc.Allocate(fmt.Sprintf("fill-%d", i), "eth0"); err != nil {
			t.Fatalf("filling the podCIDR, address %d: %v", i+1, err)
		}
	}
	wantUnavailable("with every address taken", "no free pod address")
	if err := alloc.Release("fill-0", "eth0"); err != nil {
		t.Fatal(err)
	}
	if err := status(); err != nil {
		t.Errorf("STATUS with one address free: %v", err)
	}
}

// TestGCAndStatusNeedSpec11: a configuration of spec 1.0.0 gets neither,
// with the CNI library's error, and GC changes nothing.
func TestGCAndStatusNeedSpec11(t *testing.T) {
	_, n := oneNode(t)
	ctx := netlab.Context(t, time.Minute)
	var conf map[string]any
	if err := json.Unmarshal(netlab.MustPluginStdin(t, n), &conf); err != nil {
		t.Fatal(err)
	}
	conf["cniVersion"] = "1.0.0"
	conf["cni.dev/valid-attachments"] = []any{}
	stdin, _ := json.Marshal(conf)
	p := netlab.MustAddPod(t, ctx, n, "p")
	for _, cmd := range []string{"GC", "STATUS"} {
		if e := cniError(t, netlab.MustCNI(t, ctx, n, cmd, "", "", "", stdin)); e.Code != types.ErrIncompatibleCNIVersion {
			t.Errorf("%s with spec 1.0.0: %+v", cmd, e)
		}
	}
	if w := wiredState(t, n, p.ContainerID); w != (wiring{true, true, true}) {
		t.Errorf("pod after a refused GC: %+v", w)
	}
}
