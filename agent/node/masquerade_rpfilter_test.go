package node_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/routemode/routemode/agent/cniconf"
	"github.com/routemode/routemode/agent/nsutil"
	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/netlab"
	"github.com/routemode/routemode/internal/probe"
)

// sourceSeen sends one datagram from the namespace at from to to and
// returns the source address it arrives with, read by a listener in the
// namespace at at.
func sourceSeen(t *testing.T, from, at string, to netip.AddrPort) netip.Addr {
	t.Helper()
	l, err := probe.ListenUDP(at, to)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := probe.ListenUDP(from, netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	for range 5 {
		if _, err := c.WriteToUDPAddrPort([]byte("who am i"), to); err != nil {
			t.Fatal(err)
		}
		_ = l.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, src, err := l.ReadFromUDPAddrPort(buf); err == nil {
			return src.Addr()
		}
	}
	t.Fatalf("nothing arrived at %s", to)
	return netip.Addr{}
}

// TestMasquerade: pod traffic to the outside leaves with the node IP, pod
// traffic inside nativeRoutingCIDR keeps the pod IP, in both modes; so does
// pod traffic to another node in native routing, but not through a tunnel.
func TestMasquerade(t *testing.T) {
	l := netlab.New(t, netlab.Spec{Nodes: 2, CNI: true, Agents: true, RPFilter: 1})
	ctx := netlab.Context(t, time.Minute)
	pods := podPerNode(ctx, t, l, netlab.Tunnel)
	outside := netip.AddrPortFrom(netlab.OutsideIP, 7100)
	for _, mode := range []struct {
		name string
		d    v1alpha1.NodeDatapath
	}{{"tunnel", netlab.Tunnel}, {"native", netlab.Native}} {
		netlab.MustStep(t, ctx, l.Nodes, mode.d)
		if src := sourceSeen(t, pods[0].Path(), pods[1].Path(), netip.AddrPortFrom(pods[1].IP, 7100)); src != pods[0].IP {
			t.Errorf("%s: pod1→pod2 arrives from %s, want pod1's %s (no masquerade inside the pod network)", mode.name, src, pods[0].IP)
		}
		// A node whose pods this node reaches over the underlay is not the
		// outside: to it, the pod keeps its address, as a pod's answers to a
		// node that connected to it must. One reached through the tunnel
		// routes its answers back through it, and its strict rp_filter
		// would drop the pod's address on the underlay.
		wantSrc := map[string]netip.Addr{"tunnel": l.Nodes[0].IP, "native": pods[0].IP}[mode.name]
		if src := sourceSeen(t, pods[0].Path(), l.Nodes[1].Path(), netip.AddrPortFrom(l.Nodes[1].IP, 7100)); src != wantSrc {
			t.Errorf("%s: pod1→node-2 arrives from %s, want %s", mode.name, src, wantSrc)
		}
		if src := sourceSeen(t, pods[0].Path(), l.UnderlayPath(), outside); src != l.Nodes[0].IP {
			t.Errorf("%s: pod1→outside arrives from %s, want node-1's %s (masqueraded)", mode.name, src, l.Nodes[0].IP)
		}
	}
}

// TestNoDatapathLeavesKernelAlone: before the operator sets a datapath the
// agent changes nothing and reports only what the preflight needs.
func TestNoDatapathLeavesKernelAlone(t *testing.T) {
	l := netlab.New(t, netlab.Spec{Nodes: 2, Agents: true, RPFilter: 1})
	ctx := netlab.Context(t, time.Minute)
	n1 := l.Nodes[0]
	before := snapshot(t, n1)
	res := n1.Reconcile(ctx)
	if len(res.Changes) != 0 {
		t.Errorf("changes without a datapath: %v", res.Changes)
	}
	if after := snapshot(t, n1); after != before {
		t.Errorf("kernel changed without a datapath")
	}
	if nsutil.Exists(n1.Agent.HealthNS()) {
		t.Errorf("health namespace created without a datapath")
	}
	if _, err := os.Stat(filepath.Join(n1.CNIConfDir, cniconf.FileName)); err == nil {
		t.Errorf("CNI configuration written without a datapath")
	}
	st := res.Status
	if st.Capabilities == nil || !st.Capabilities.VXLAN || st.NodeIP != "192.168.0.120" || st.PodCIDR != "10.0.0.0/24" {
		t.Errorf("status lacks preflight facts: %+v", st)
	}
	// This lab's agent has no host router: the status says so, for the
	// operator's preflight to quote.
	if c := st.Capabilities; c != nil && (c.BPFHostRouting || !strings.Contains(c.BPFHostRoutingReason, "no eBPF host router")) {
		t.Errorf("capabilities of an agent without eBPF host routing: %+v", c)
	}
	if p, ok := peerRow(n1.Agent, "node-2"); !ok || !p.Direct || p.NodeIP != "192.168.0.130" {
		t.Errorf("peer node-2: %+v, want direct", p)
	}
	if c := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionDatapathApplied); c == nil || c.Status != metav1.ConditionUnknown {
		t.Errorf("DatapathApplied = %+v, want Unknown", c)
	}
}

// TestStrictRPFilterLosesProbes is the negative control of the zero-loss
// test: switching one node to native routing without the Prepare step
// (rp_filter stays strict) must lose probes, proving the lab and the probe
// counters can see a broken switch.
func TestStrictRPFilterLosesProbes(t *testing.T) {
	l := netlab.New(t, netlab.Spec{Nodes: 2, CNI: true, Agents: true, RPFilter: 1})
	ctx := netlab.Context(t, time.Minute)
	pods := podPerNode(ctx, t, l, netlab.Tunnel)
	streams := netlab.MustStreams(t, pods, 1000)
	time.Sleep(200 * time.Millisecond)
	unprepared := netlab.MustSteps(t, netlab.Tunnel, netlab.Native).Switch
	unprepared.LooseRPFilter = false
	l.Nodes[0].SetDatapath(unprepared)
	l.Nodes[0].Reconcile(ctx)
	time.Sleep(500 * time.Millisecond)
	stats := streams.Stop()
	total := netlab.Total(stats)
	t.Logf("node-1 native, node-2 tunnel, strict rp_filter: %s", total)
	if total.Lost == 0 {
		t.Errorf("no probe lost with strict rp_filter in the mixed state; the lab cannot see a broken switch")
	}
}
