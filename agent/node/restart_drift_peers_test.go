package node_test

import (
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/routemode/routemode/agent/datapath"
	"github.com/routemode/routemode/agent/masq"
	"github.com/routemode/routemode/agent/node"
	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/netlab"
	"github.com/routemode/routemode/internal/peertable"
)

// restart replaces n's agent by a new instance, as a restarted agent
// process, and reconciles once; it returns the changes the new agent made.
func restart(t *testing.T, n *netlab.Node) []string {
	t.Helper()
	// A resync of the running agent first: it refreshes the status (pods
	// were added since) and must change nothing either.
	if res := n.Reconcile(t.Context()); len(res.Changes) != 0 {
		t.Errorf("resync before the restart changed %v", res.Changes)
	}
	before := n.Status
	n.Agent.Close()
	a, err := n.NewAgent()
	if err != nil {
		t.Fatal(err)
	}
	n.Agent = a
	res := n.Reconcile(t.Context())
	if ok, why := n.Healthy(); !ok {
		t.Errorf("after restart: %s", why)
	}
	if res.Status.Datapath != before.Datapath || res.Status.VTEPMAC != before.VTEPMAC || len(res.Status.Conditions) != len(before.Conditions) {
		t.Errorf("restarted agent reports %+v, before %+v", res.Status.Datapath, before.Datapath)
	}
	for i, c := range res.Status.Conditions {
		if b := before.Conditions[i]; c.Status != b.Status || c.Reason != b.Reason || c.Message != b.Message || !c.LastTransitionTime.Equal(&b.LastTransitionTime) {
			t.Errorf("condition %s changed across the restart: %+v, was %+v", c.Type, c, b)
		}
	}
	return res.Changes
}

// TestRestartChangesNothing restarts agents in steady and mixed states
// while traffic flows: a new agent instance reads the kernel back, finds it
// right and makes zero changes, and no probe is lost.
func TestRestartChangesNothing(t *testing.T) {
	l := netlab.New(t, netlab.Spec{Nodes: 2, CNI: true, Agents: true, RPFilter: 1})
	ctx := netlab.Context(t, time.Minute)
	pods := podPerNode(ctx, t, l, netlab.Tunnel)
	streams := netlab.MustStreams(t, pods, 1000)
	toNative := netlab.MustSteps(t, netlab.Tunnel, netlab.Native)

	states := []struct {
		name  string
		apply func()
	}{
		{"tunnel", func() {}},
		{"prepared (loose rp_filter saved)", func() { netlab.MustStep(t, ctx, l.Nodes, toNative.Prepare) }},
		{"mixed (node-1 native, node-2 tunnel)", func() { netlab.MustStep(t, ctx, l.Nodes[:1], toNative.Switch) }},
		{"native", func() {
			netlab.MustStep(t, ctx, l.Nodes[1:], toNative.Switch)
			netlab.MustStep(t, ctx, l.Nodes, netlab.Native)
		}},
	}
	for _, st := range states {
		st.apply()
		for _, n := range l.Nodes {
			changes := restart(t, n)
			time.Sleep(200 * time.Millisecond) // traffic runs on the restarted node
			t.Logf("%s: %s restarted, %d changes", st.name, n.Name, len(changes))
			if len(changes) != 0 {
				t.Errorf("%s: restarted agent on %s made %d changes, want 0: %v", st.name, n.Name, len(changes), changes)
			}
		}
	}
	stats := streams.Stop()
	total := netlab.Total(stats)
	t.Logf("probes across the restarts: %s; echo responders' own loss: %v", total, streams.EchoLoss())
	if total.Lost != 0 || total.Sent == 0 {
		t.Errorf("lost %d of %d probes across agent restarts:\n%s", total.Lost, total.Sent, netlab.Report(stats))
	}
}

// TestDriftRepair deletes what the agent made behind its back, and a pod's
// route the CNI plugin made, and checks that the next reconcile repairs
// them, touching no route it does not own.
func TestDriftRepair(t *testing.T) {
	l := netlab.New(t, netlab.Spec{Nodes: 2, CNI: true, Agents: true, RPFilter: 1})
	ctx := netlab.Context(t, time.Minute)
	pods := podPerNode(ctx, t, l, netlab.Tunnel)
	n1 := l.Nodes[0]
	run := func(args ...string) {
		t.Helper()
		if out, err := netlab.IP(n1, args...); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	// Someone else's route, and a stale one of ours.
	run("route", "add", "10.9.0.0/24", "via", "192.168.0.1", "proto", "static")
	run("route", "add", "10.0.7.0/24", "via", "192.168.0.1", "proto", "181")
	// Drift: the route to node-2's pods, the one to node-1's own pod (the
	// CNI plugin's) and the tunnel device are gone.
	podRoute := pods[0].IP.String() + "/32"
	run("route", "del", "10.0.1.0/24")
	run("route", "del", podRoute)
	run("link", "del", "rm_vxlan")
	if err := (masq.Masq{NetNSFd: int(n1.NS.Fd())}).Delete(); err != nil {
		t.Fatal(err)
	}
	if _, err := pods[0].Ping(ctx, pods[1].EchoAddr(), 64, false); err == nil {
		t.Fatal("pod1 still reaches pod2 without route and tunnel: the drift did not break anything")
	}

	res := n1.Reconcile(ctx)
	t.Logf("repair:\n  %s", strings.Join(res.Changes, "\n  "))
	if ok, why := n1.Healthy(); !ok {
		t.Fatalf("after repair: %s", why)
	}
	for _, want := range []string{"create rm_vxlan", "route replace 10.0.1.0/24 via 10.0.1.0 dev rm_vxlan", "route del 10.0.7.0/24", "nftables",
		"route replace " + podRoute + " dev lxc"} {
		if !slices.ContainsFunc(res.Changes, func(c string) bool { return strings.Contains(c, want) }) {
			t.Errorf("repair lacks %q", want)
		}
	}
	// Repaired means answering again, not within one probe's second: one
	// attempt timed out once in a loaded make test.
	var err error
	for attempt, deadline := 1, time.Now().Add(10*time.Second); time.Now().Before(deadline); attempt++ {
		if _, err = pods[0].Ping(ctx, pods[1].EchoAddr(), 64, false); err == nil {
			if attempt > 1 {
				t.Logf("pod1→pod2 answered after the repair on attempt %d", attempt)
			}
			break
		}
	}
	if err != nil {
		t.Errorf("pod1→pod2 after repair: no answer within 10s: %v", err)
	}
	if got := routeTo(t, n1, "10.9.0.0/24"); !strings.Contains(got, "proto static") {
		t.Errorf("the agent touched a route it does not own: %q", got)
	}
	if got := routeTo(t, n1, "10.0.7.0/24"); got != "" {
		t.Errorf("stale owned route survived: %q", got)
	}
	if got := routeTo(t, n1, podRoute); !strings.Contains(got, "dev lxc") || !strings.Contains(got, "proto 182") || !strings.Contains(got, "scope link") {
		t.Errorf("the pod's route after the repair: %q; want it through its lxc device, proto 182, scope link", got)
	}
	if res := n1.Reconcile(ctx); len(res.Changes) != 0 {
		t.Errorf("second reconcile after repair changed %v", res.Changes)
	}
}

// snapshot is the node's IPv4 kernel state as ip prints it, without
// counters, neighbour states that age or IPv6 (whose duplicate address
// detection finishes on its own schedule), and without the tools'
// complaints about other namespaces, which come and go with other tests.
func snapshot(t *testing.T, n *netlab.Node) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{
		{"-d", "link", "show"}, {"-4", "addr", "show"}, {"-4", "route", "show", "table", "all"},
		{"-4", "neigh", "show", "nud", "permanent"},
	} {
		out, err := netlab.IP(n, args...)
		if err != nil {
			t.Fatalf("ip %v: %v", args, err)
		}
		b.WriteString(out)
	}
	out, err := exec.Command("ip", "netns", "exec", n.NSName, "sh", "-c",
		"bridge fdb show dev rm_vxlan; grep -H . /proc/sys/net/ipv4/conf/*/rp_filter /proc/sys/net/ipv4/ip_forward").Output()
	if err != nil {
		t.Fatalf("snapshot: %v: %s", err, out)
	}
	b.Write(out)
	return b.String()
}

// TestUnappliableSpecRefused hands the agent RoutingNode specs it cannot
// or must not apply, as an admin might write them by hand (the operator
// never does): a Geneve tunnel, which this kernel cannot build, and specs
// that pass the CRD but make no sense together. Each is refused with a
// reason and a message saying what to change, and the node's kernel state
// stays exactly as it was: pods keep talking.
func TestUnappliableSpecRefused(t *testing.T) {
	l := netlab.New(t, netlab.Spec{Nodes: 2, CNI: true, Agents: true, RPFilter: 1})
	ctx := netlab.Context(t, time.Minute)
	pods := podPerNode(ctx, t, l, netlab.Tunnel)
	n1 := l.Nodes[0]
	if n1.Status.Capabilities == nil || !n1.Status.Capabilities.VXLAN || n1.Status.Capabilities.Geneve {
		t.Fatalf("capabilities %+v: this test expects a kernel with VXLAN and without Geneve", n1.Status.Capabilities)
	}
	before := snapshot(t, n1)

	spec := func(f func(d *v1alpha1.NodeDatapath)) v1alpha1.NodeDatapath {
		d := netlab.Tunnel
		f(&d)
		return d
	}
	for _, tc := range []struct {
		name     string
		datapath v1alpha1.NodeDatapath
		reason   string
		message  string
	}{
		{"geneve", spec(func(d *v1alpha1.NodeDatapath) { d.Tunnel, d.TunnelPort = v1alpha1.TunnelGeneve, 6081 }),
			datapath.ReasonTunnelUnsupported, "CONFIG_GENEVE"},
		{"tunnel send without a tunnel", spec(func(d *v1alpha1.NodeDatapath) { d.Tunnel = v1alpha1.TunnelDisabled }),
			datapath.ReasonInvalidDatapath, "sendMode Tunnel needs a tunnel, but tunnel is disabled"},
		{"tunnel at full MTU", spec(func(d *v1alpha1.NodeDatapath) { d.RouteMTU = v1alpha1.RouteMTUFull }),
			datapath.ReasonInvalidDatapath, "use routeMTU Tunnel"},
		{"native CIDR without this node's pods", spec(func(d *v1alpha1.NodeDatapath) {
			d.SendMode, d.NativeRoutingCIDR = v1alpha1.SendNative, "10.1.0.0/16"
		}), datapath.ReasonInvalidDatapath, "does not hold node node-1's podCIDR 10.0.0.0/24; use a CIDR that holds every node's podCIDR"},
		{"native CIDR narrower than the podCIDR", spec(func(d *v1alpha1.NodeDatapath) { d.NativeRoutingCIDR = "10.0.0.0/25" }),
			datapath.ReasonInvalidDatapath, "does not hold node node-1's podCIDR"},
		{"IPv6 native CIDR", spec(func(d *v1alpha1.NodeDatapath) { d.NativeRoutingCIDR = "fd00::/64" }),
			datapath.ReasonInvalidDatapath, "is not an IPv4 CIDR"},
		{"unknown send mode", spec(func(d *v1alpha1.NodeDatapath) { d.SendMode = "Direct" }),
			datapath.ReasonInvalidDatapath, `unknown sendMode "Direct"`},
		{"unknown tunnel", spec(func(d *v1alpha1.NodeDatapath) { d.Tunnel = "ipip" }),
			datapath.ReasonInvalidDatapath, `unknown tunnel "ipip"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n1.SetDatapath(tc.datapath)
			res := n1.Reconcile(ctx)
			if len(res.Changes) != 0 {
				t.Errorf("refused spec changed the node: %v", res.Changes)
			}
			if res.Status.ObservedGeneration != n1.Generation {
				t.Errorf("observedGeneration %d, want %d", res.Status.ObservedGeneration, n1.Generation)
			}
			c := meta.FindStatusCondition(res.Status.Conditions, v1alpha1.ConditionDatapathApplied)
			if c == nil || c.Status != metav1.ConditionFalse || c.Reason != tc.reason || !strings.Contains(c.Message, tc.message) ||
				!strings.Contains(c.Message, "nothing was changed") {
				t.Fatalf("DatapathApplied = %+v, want False/%s saying %q and that nothing was changed", c, tc.reason, tc.message)
			}
			t.Logf("DatapathApplied=%s %s: %s", c.Status, c.Reason, c.Message)
			if after := snapshot(t, n1); after != before {
				t.Errorf("kernel state changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
	if _, err := pods[0].Ping(ctx, pods[1].EchoAddr(), 64, false); err != nil {
		t.Errorf("pod1→pod2 after the refusals: %v", err)
	}
}

// TestPeersChange covers peers joining and leaving, a peer whose node IP
// changes, and a peer that is not directly reachable.
func TestPeersChange(t *testing.T) {
	l := netlab.New(t, netlab.Spec{Nodes: 3, CNI: true, Agents: true, RPFilter: 1})
	ctx := netlab.Context(t, time.Minute)
	n1, n2, n3 := l.Nodes[0], l.Nodes[1], l.Nodes[2]
	l.Hide(n3, true)
	netlab.MustStep(t, ctx, l.Nodes[:2], netlab.Tunnel)
	if got := routeTo(t, n1, "10.0.2.0/24"); got != "" {
		t.Fatalf("route to a node that has not joined: %q", got)
	}

	// node-3 joins.
	l.Hide(n3, false)
	netlab.MustStep(t, ctx, l.Nodes, netlab.Tunnel)
	if got := routeTo(t, n1, "10.0.2.0/24"); !strings.Contains(got, "dev rm_vxlan") {
		t.Errorf("no tunnel route to the joined node-3: %q", got)
	}
	if s := n1.Status.PeerSummary; s == nil || s.Total != 2 {
		t.Errorf("node-1 reports %+v peers, want 2", s)
	}

	// node-3 leaves: its route, neighbour and FDB entry go.
	l.Hide(n3, true)
	netlab.MustConverge(t, ctx, l.Nodes[:2])
	if got := routeTo(t, n1, "10.0.2.0/24"); got != "" {
		t.Errorf("route to node-3 after it left: %q", got)
	}
	if out, _ := exec.Command("ip", "netns", "exec", n1.NSName, "sh", "-c", "ip neigh show dev rm_vxlan; bridge fdb show dev rm_vxlan").CombinedOutput(); strings.Contains(string(out), "10.0.2.0") || strings.Contains(string(out), "192.168.0.140") {
		t.Errorf("node-3's neighbour or FDB entry survived: %s", out)
	}

	// node-2's InternalIP changes: its tunnel device follows, node-1's FDB
	// entry follows, pods still talk.
	p1, p2 := netlab.MustAddPod(t, ctx, n1, "pod1"), netlab.MustAddPod(t, ctx, n2, "pod2")
	newIP := netip.MustParseAddr("192.168.0.131")
	if err := n2.Readdress(newIP); err != nil {
		t.Fatal(err)
	}
	netlab.MustConverge(t, ctx, l.Nodes[:2])
	out, _ := exec.Command("ip", "netns", "exec", n1.NSName, "bridge", "fdb", "show", "dev", "rm_vxlan").CombinedOutput()
	if !strings.Contains(string(out), "dst 192.168.0.131") {
		t.Errorf("node-1's FDB does not follow node-2's new IP: %s", out)
	}
	if _, err := p1.Ping(ctx, p2.EchoAddr(), 64, false); err != nil {
		t.Errorf("pod1→pod2 after node-2's IP changed: %v", err)
	}

	// A peer behind a gateway: reported not direct; with a tunnel it is
	// reached through the tunnel, without one it gets no route.
	if out, err := netlab.IP(n1, "route", "add", "192.168.5.0/24", "via", "192.168.0.1"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	l.SetExtraPeers(node.Peer{Name: "node-9", IP: netip.MustParseAddr("192.168.5.9"), PodCIDR: netip.MustParsePrefix("10.0.9.0/24")})
	n1.SetDatapath(netlab.MustSteps(t, netlab.Tunnel, netlab.Native).Switch)
	res := n1.Reconcile(ctx)
	if c := meta.FindStatusCondition(res.Status.Conditions, v1alpha1.ConditionDatapathApplied); c == nil || c.Status != metav1.ConditionTrue {
		t.Fatalf("DatapathApplied = %+v", c)
	}
	p9, ok := peerRow(n1.Agent, "node-9")
	if !ok || p9.Direct || p9.Reachable || !strings.Contains(p9.Message, "gateway 192.168.0.1") {
		t.Errorf("node-9 as seen by node-1: %+v, want direct=false naming the gateway", p9)
	}
	t.Logf("node-9 (behind a gateway), tunnel kept: %+v", p9)
	if got := routeTo(t, n1, "10.0.9.0/24"); !strings.Contains(got, "via 10.0.9.0 dev rm_vxlan") {
		t.Errorf("node-9 is not reached through the tunnel: %q", got)
	}
	if c := meta.FindStatusCondition(res.Status.Conditions, v1alpha1.ConditionPeersHealthy); c == nil || c.Status != metav1.ConditionFalse || !strings.Contains(c.Message, "node-9") {
		t.Errorf("PeersHealthy = %+v, want False naming node-9", c)
	}
	n1.SetDatapath(netlab.Native)
	res = n1.Reconcile(ctx)
	if got := routeTo(t, n1, "10.0.9.0/24"); got != "" {
		t.Errorf("route to node-9 without a tunnel: %q", got)
	}
	p9, _ = peerRow(n1.Agent, "node-9")
	t.Logf("node-9 (behind a gateway), no tunnel: %+v", p9)
	if !strings.Contains(p9.Message, "no route installed") {
		t.Errorf("node-9 without a tunnel: %+v, want a message saying it has no route", p9)
	}
}

// peerRow finds a peer in the agent's full peer table.
func peerRow(a *node.Agent, name string) (peertable.Row, bool) {
	for _, p := range a.PeerTable() {
		if p.Node == name {
			return p, true
		}
	}
	return peertable.Row{}, false
}
