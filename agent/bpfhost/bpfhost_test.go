package bpfhost_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/routemode/routemode/agent/bpfhost"
	"github.com/routemode/routemode/agent/datapath"
	"github.com/routemode/routemode/agent/hostrouting"
	"github.com/routemode/routemode/agent/node"
	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/bpf"
	"github.com/routemode/routemode/internal/fwdcount"
	"github.com/routemode/routemode/internal/netlab"
	"github.com/routemode/routemode/internal/privileged"
)

// TestAgentTogglesBPFHostRouting drives eBPF host routing through the agent:
// legacy → bpf → legacy on a live native-routing lab, node by node, with
// probe streams running. Nothing is lost, the status reports the mode, the
// nodes' forward hooks see the pods' packets only with legacy, a restarted
// agent changes nothing (it adopts the running programs), and one restarted with
// --legacy-host-routing-only refuses bpf but detaches for legacy.
func TestAgentTogglesBPFHostRouting(t *testing.T) {
	legacyOnly := map[string]bool{} // nodes whose next agent runs --legacy-host-routing-only
	const legacyOnlyReason = "the agent runs with --legacy-host-routing-only"
	routers := map[string]*bpfhost.Router{}
	l := bpfLab(t, routers, func(n *netlab.Node) string {
		if legacyOnly[n.Name] {
			return legacyOnlyReason
		}
		return ""
	})
	ctx := netlab.Context(t, time.Minute)
	netlab.MustStep(t, ctx, l.Nodes, netlab.Native)
	var pods []*netlab.Pod
	for i, n := range l.Nodes {
		pods = append(pods, netlab.MustAddPod(t, ctx, n, "pod"+string(rune('1'+i))))
	}
	streams := netlab.MustStreams(t, pods, 1000)
	// A counting rule in each node's forward hook: the stack forwards the
	// pods' packets with legacy.
	fwd := make([]*fwdcount.Counter, len(l.Nodes))
	for i, n := range l.Nodes {
		var err error
		if fwd[i], err = fwdcount.Start(n.Path(), netlab.PodPrefix); err != nil {
			t.Fatal(err)
		}
	}
	if got := forwardedOnEvery(t, fwd, make([]uint64, len(fwd))); got != nil {
		t.Errorf("with legacy host routing the nodes' forward hooks saw %v pod packets; want some on every node", got)
	}
	withBPF := netlab.Native
	withBPF.HostRouting = v1alpha1.HostRoutingBPF
	for _, n := range l.Nodes {
		netlab.MustStep(t, ctx, []*netlab.Node{n}, withBPF)
		if got := n.Status.Datapath.HostRouting; got != v1alpha1.HostRoutingBPF {
			t.Errorf("%s reports host routing %q, want bpf", n.Name, got)
		}
		time.Sleep(300 * time.Millisecond)
	}
	eps, err := hostrouting.ListEndpoints(routers["node-1"].PinDir)
	if err != nil || len(eps) != 2 { // the pod and the health endpoint
		t.Errorf("node-1's BPF endpoint map: %v %v, want 2 entries", eps, err)
	}
	for _, ep := range eps {
		t.Logf("node-1 bpf endpoint: %s", hostrouting.FormatEndpoint(ep))
	}
	// node-1's direct route to node-2's pods is in the map the programs read.
	routes, err := hostrouting.ListDirectRoutes(routers["node-1"].PinDir)
	n2 := l.Nodes[1]
	if err != nil || len(routes) != 1 || routes[0].Dst != n2.PodCIDR || routes[0].Gateway != n2.IP {
		t.Errorf("node-1's BPF direct routes: %v %v, want %s via %s", routes, err, n2.PodCIDR, n2.IP)
	}
	for _, r := range routes {
		t.Logf("node-1 bpf direct route: %s", hostrouting.FormatDirectRoute(r))
	}
	// The programs, not the stack, forward the pods' packets now: the
	// forward hooks see none while the programs' counters rise.
	fwdBefore := forwarded(t, fwd)
	peerBefore, directBefore := bpfForwarded(t, routers["node-1"].PinDir)
	time.Sleep(500 * time.Millisecond)
	peer, direct := bpfForwarded(t, routers["node-1"].PinDir)
	fwdAfter := forwarded(t, fwd)
	t.Logf("node-1 BPF counters over 500 ms: %d packets delivered with redirect_peer, %d sent along the direct route; forward hooks: %v -> %v packets",
		peer-peerBefore, direct-directBefore, fwdBefore, fwdAfter)
	if peer == peerBefore || direct == directBefore || !slices.Equal(fwdBefore, fwdAfter) {
		t.Errorf("BPF host routing did not bypass the stack: redirect_peer +%d, direct route +%d, forward hooks %v -> %v",
			peer-peerBefore, direct-directBefore, fwdBefore, fwdAfter)
	}
	// A restarted agent (new Manager, same pins) adopts the running
	// programs, the same as its own, and changes nothing; nor does its
	// next reconcile.
	n1 := l.Nodes[0]
	n1.Agent.Close()
	if n1.Agent, err = n1.NewAgent(); err != nil {
		t.Fatal(err)
	}
	res := n1.Reconcile(ctx)
	if len(res.Changes) != 0 || res.Status.Datapath.HostRouting != v1alpha1.HostRoutingBPF {
		t.Errorf("restart in bpf mode: changes %q, host routing %q; want the running programs adopted, nothing changed", res.Changes, res.Status.Datapath.HostRouting)
	}
	if res := n1.Reconcile(ctx); len(res.Changes) != 0 {
		t.Errorf("second reconcile after the restart changed %q", res.Changes)
	}
	// An Apply that fails reports the mode the programs left in force.
	mode, _, err := routers["node-1"].Apply(ctx, node.HostRoutingRequest{Mode: v1alpha1.HostRoutingBPF, Underlay: "rmnosuchdev"})
	if err == nil || mode != v1alpha1.HostRoutingBPF {
		t.Errorf("failed Apply with the programs attached: mode %q, error %v; want bpf and an error", mode, err)
	}
	// Restarted with --legacy-host-routing-only while its spec still says
	// bpf: the agent refuses and says why, and the programs keep serving
	// until the node is switched back to legacy.
	legacyOnly[n1.Name] = true
	n1.Agent.Close()
	if n1.Agent, err = n1.NewAgent(); err != nil {
		t.Fatal(err)
	}
	res = n1.Reconcile(ctx)
	if c := res.Status.Capabilities; c == nil || c.BPFHostRouting || c.BPFHostRoutingReason != legacyOnlyReason {
		t.Errorf("legacy-only agent's capabilities: %+v, want no bpf because %q", c, legacyOnlyReason)
	}
	applied := meta.FindStatusCondition(res.Status.Conditions, v1alpha1.ConditionDatapathApplied)
	if applied == nil || applied.Status != metav1.ConditionFalse || applied.Reason != node.ReasonHostRoutingFailed ||
		res.Status.Datapath.HostRouting != v1alpha1.HostRoutingBPF || len(res.Changes) != 0 {
		t.Errorf("legacy-only agent asked for bpf: condition %+v, host routing %q, changes %q; want HostRoutingFailed with bpf still in force, no change",
			applied, res.Status.Datapath.HostRouting, res.Changes)
	}
	for _, n := range l.Nodes {
		netlab.MustStep(t, ctx, []*netlab.Node{n}, netlab.Native)
		time.Sleep(300 * time.Millisecond) // traffic runs with this node back in legacy
	}
	if back := forwardedOnEvery(t, fwd, fwdAfter); back != nil {
		t.Errorf("back in legacy, the forward hooks saw no pod packet: %v -> %v", fwdAfter, back)
	}
	if mode := hostrouting.InForce(routers["node-1"].PinDir); mode != v1alpha1.HostRoutingLegacy {
		t.Errorf("legacy-only node-1 back in legacy still runs programs: pins show %q", mode)
	}
	if routes, err := hostrouting.ListDirectRoutes(routers["node-1"].PinDir); err != nil || len(routes) != 0 {
		t.Errorf("node-1's BPF direct routes back in legacy: %v %v, want none", routes, err)
	}
	stats := streams.Stop()
	total := netlab.Total(stats)
	t.Logf("probes across legacy→bpf→legacy: %s", total)
	if total.Lost != 0 || total.Sent == 0 {
		t.Errorf("lost %d of %d probes:\n%s", total.Lost, total.Sent, netlab.Report(stats))
	}
}

func TestDirectRoutesAreTheUnderlayRoutesInTheCIDR(t *testing.T) {
	p, a := netip.MustParsePrefix, netip.MustParseAddr
	routes := []datapath.Route{
		{Dst: p("10.0.2.0/24"), Gw: a("192.168.0.140"), Dev: "eth0", MTU: 1450}, // lowered for a rollout
		{Dst: p("10.0.1.0/24"), Gw: a("192.168.0.130"), Dev: "eth0"},
		{Dst: p("10.0.3.0/24"), Gw: a("10.0.3.0"), Dev: "rm_vxlan", OnLink: true, MTU: 1450}, // tunnel
		{Dst: p("10.9.0.0/24"), Gw: a("192.168.0.150"), Dev: "eth0"},                         // outside the CIDR
		{Dst: p("10.0.0.0/8"), Gw: a("192.168.0.1"), Dev: "eth0"},                            // wider than the CIDR
		{Dst: p("10.0.4.0/24"), Dev: "eth0"},                                                 // no gateway
	}
	got := bpfhost.DirectRoutes(routes, "eth0", p("10.0.0.0/16"))
	want := []hostrouting.DirectRoute{
		{Dst: p("10.0.1.0/24"), Gateway: a("192.168.0.130")},
		{Dst: p("10.0.2.0/24"), Gateway: a("192.168.0.140"), MTU: 1450},
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got := bpfhost.DirectRoutes(routes, "eth0", netip.Prefix{}); len(got) != 0 {
		t.Errorf("without a native routing CIDR: got %v, want none", got)
	}
}

// bpfLab is a 2-node lab, strict rp_filter, whose agents are eBPF host
// routers pinned in directories the lab removes, recorded in routers by
// node name, their programs removed when the test ends; disabled gives the
// reason a node's next agent runs with --legacy-host-routing-only, or "".
// Where the kernel cannot do eBPF host routing, the test is skipped.
func bpfLab(t *testing.T, routers map[string]*bpfhost.Router, disabled func(*netlab.Node) string) *netlab.Lab {
	if c := hostrouting.Probe(); !c.BPFHostRouting {
		privileged.Unavailable(t, "eBPF host routing: "+c.Reason)
	}
	return netlab.New(t, netlab.Spec{Nodes: 2, CNI: true, Agents: true, RPFilter: 1, HostRouter: func(n *netlab.Node) node.HostRouter {
		pin, err := n.Lab.RecordDir(filepath.Join(hostrouting.BPFFSRoot, "routemode", n.Lab.ID+n.Name))
		if err != nil {
			t.Fatal(err)
		}
		r := bpfhost.New(pin, hostrouting.Options{Handle: n.Handle, NetNS: n.Path(), Logger: n.Logger(), Disabled: disabled(n)})
		if routers[n.Name] == nil {
			t.Cleanup(func() {
				if err := r.Remove(); err != nil {
					t.Errorf("removing %s's programs: %v", n.Name, err)
				}
				r.Close()
				_ = os.Remove(filepath.Dir(pin)) // only once empty: other tests may use it
			})
		}
		routers[n.Name] = r
		return r
	}})
}

// forwarded reads the forward hooks' packet counts.
func forwarded(t *testing.T, fwd []*fwdcount.Counter) []uint64 {
	t.Helper()
	out := make([]uint64, len(fwd))
	for i, c := range fwd {
		n, err := c.Packets()
		if err != nil {
			t.Fatal(err)
		}
		out[i] = n
	}
	return out
}

// forwardedOnEvery waits until every node's forward hook has counted
// packets beyond from; it returns nil then, or the last counts if that does
// not happen within 30 s.
func forwardedOnEvery(t *testing.T, fwd []*fwdcount.Counter, from []uint64) []uint64 {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := forwarded(t, fwd)
		all := true
		for i := range got {
			all = all && got[i] > from[i]
		}
		if all {
			return nil
		}
		if time.Now().After(deadline) {
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// bpfForwarded sums a node's packets delivered with redirect_peer and
// sent along a direct route.
func bpfForwarded(t *testing.T, pinDir string) (peer, direct uint64) {
	t.Helper()
	counters, err := hostrouting.ReadCounters(pinDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range counters {
		switch c.Reason {
		case bpf.ReasonRedirectPeer:
			peer += c.Packets
		case bpf.ReasonRedirectDirectRoute:
			direct += c.Packets
		}
	}
	return peer, direct
}
