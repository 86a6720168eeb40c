package bpfhost_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/routemode/routemode/agent/bpfhost"
	"github.com/routemode/routemode/agent/hostrouting"
	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/bpf"
	"github.com/routemode/routemode/internal/netlab"
	"github.com/routemode/routemode/internal/probe"
)

// TestNodeToPodOnAnotherNode: with native routing and eBPF host routing, a
// node's own stack (source: its node IP) holds a TCP connection to a pod
// on the other node and exchanges messages over it, also under kube-proxy's
// rules, and gets a UDP datagram answered by the pod's address. The pod's
// answers leave through its node's stack, so the node's packets must come
// in that way (the underlay program's counter shows they did): delivered
// with bpf_redirect_peer, conntrack met the flows first in the answers and
// the masquerading rule rewrote them, or kube-proxy dropped the SYN-ACK.
func TestNodeToPodOnAnotherNode(t *testing.T) {
	routers := map[string]*bpfhost.Router{}
	l := bpfLab(t, routers, func(*netlab.Node) string { return "" })
	ctx := netlab.Context(t, time.Minute)
	n1, n2 := l.Nodes[0], l.Nodes[1]
	netlab.MustStep(t, ctx, l.Nodes, netlab.Native)
	pod := netlab.MustAddPod(t, ctx, n2, "pod2")
	withBPF := netlab.Native
	withBPF.HostRouting = v1alpha1.HostRoutingBPF
	netlab.MustStep(t, ctx, l.Nodes, withBPF)

	target := netip.AddrPortFrom(pod.IP, 7200)
	echo, err := probe.StartTCPEcho(pod.Path(), target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = echo.Close() })
	exchangeThroughStack := func(what string) {
		t.Helper()
		before := countedOn(t, routers[n2.Name].PinDir, bpf.ProgramNetdev, bpf.ReasonSourceOutsideCIDR)
		st, err := probe.Exchange(ctx, probe.TCPCheckConfig{NSPath: n1.Path(), Target: target}, 200, 30*time.Second)
		if err != nil {
			t.Fatalf("%s: connecting %s to %s: %v", what, n1.Name, target, err)
		}
		passed := countedOn(t, routers[n2.Name].PinDir, bpf.ProgramNetdev, bpf.ReasonSourceOutsideCIDR) - before
		t.Logf("%s: TCP %s → %s on %s: %s; %s's underlay program passed %d of the node's packets to the stack", what, n1.Name, target, n2.Name, st, n2.Name, passed)
		if st.Messages < 200 || st.Resets+st.Errors+st.Reconnects != 0 {
			t.Errorf("%s: TCP %s → %s on %s: %s; want 200 messages on one connection", what, n1.Name, target, n2.Name, st)
		}
		if passed < 200 {
			t.Errorf("%s: %s's underlay program passed %d packets from outside the pod network to the stack; want every one of the node's", what, n2.Name, passed)
		}
	}
	exchangeThroughStack("no other rules")
	// kube-proxy in iptables mode (without nf_conntrack_tcp_be_liberal)
	// drops in the forward hook what conntrack calls invalid: a SYN-ACK
	// whose SYN conntrack never saw, say.
	for _, n := range l.Nodes {
		if err := n.KubeProxyRuleset(netlab.KubeProxyOptions{Services: 1}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.RemoveKubeProxyRuleset() })
	}
	exchangeThroughStack("kube-proxy's rules")

	if src, err := probe.AnswerSource(n1.Path(), pod.EchoAddr(), 5, 500*time.Millisecond); err != nil || src != pod.EchoAddr() {
		t.Errorf("UDP %s → %s on %s: answer from %s (%v); want from %s", n1.Name, pod.EchoAddr(), n2.Name, src, err, pod.EchoAddr())
	}
}

// countedOn is the packets program p counted with reason r, on all CPUs.
func countedOn(t *testing.T, pinDir string, p bpf.Program, r bpf.Reason) uint64 {
	t.Helper()
	counters, err := hostrouting.ReadCounters(pinDir)
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, c := range counters {
		if c.Program == p && c.Reason == r {
			n += c.Packets
		}
	}
	return n
}
