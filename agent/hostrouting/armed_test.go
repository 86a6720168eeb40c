package hostrouting_test

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/routemode/routemode/agent/hostrouting"
	"github.com/routemode/routemode/bpf"
	"github.com/routemode/routemode/internal/netlab"
	"github.com/routemode/routemode/internal/probe"
)

// stopWhen is a context that reports itself cancelled once stop says so:
// an Apply cut short between two attachments (the agent stopping, a
// reconcile's deadline), which is also where every Apply passes while it
// attaches to a node's devices one by one.
type stopWhen struct {
	context.Context
	stop func() bool
}

func (c stopWhen) Err() error {
	if c.stop() {
		return context.Canceled
	}
	return c.Context.Err()
}

// While a node's programs sit on some of its devices only, attaching or
// detaching, new TCP connections to its pods still open: the programs
// already attached leave every packet to the stack, or a SYN delivered
// around the stack would meet an answer that takes it through the pod's
// device, a SYN-ACK conntrack never saw the SYN of, which kube-proxy drops
// as invalid, every retransmission alike.
func TestPartlyAttachedProgramsLeaveFlowsToTheStack(t *testing.T) {
	e := newEnv(t, 1, hostrouting.Options{})
	e.cfgs[0].DirectRoutes, e.cfgs[1].DirectRoutes = unpack(e.native(t))
	n1 := e.lab.Nodes[0]
	if err := n1.KubeProxyRuleset(netlab.KubeProxyOptions{Services: 1}); err != nil {
		t.Fatal(err)
	}
	server, client := n1.Pods[0], e.lab.Nodes[1].Pods[0]
	echo, err := probe.StartTCPEcho(server.Path(), netip.AddrPortFrom(server.IP, 7400))
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	links := filepath.Join(e.cfgs[0].PinDir, "links")
	pinnedOn := func(dev string) bool {
		_, err := os.Stat(filepath.Join(links, dev+"_ingress"))
		return err == nil
	}
	lxc := server.Endpoint.LXCName
	connect := func(when string) {
		t.Helper()
		// Long enough for SYN retransmissions: a connection the
		// datapath drops every SYN-ACK of never opens.
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		c, err := probe.DialTCP(ctx, client.Path(), echo.Addr())
		if err != nil {
			t.Errorf("%s: new connection %s → %s: %v", when, client.IP, echo.Addr(), err)
			return
		}
		c.Close()
	}
	disarmed := func() uint64 {
		return count(e.counters(t, 0), bpf.ProgramNetdev, bpf.ReasonDisarmed)
	}

	// Attaching: the underlay has its program, the pod's device not yet.
	half := stopWhen{t.Context(), func() bool { return pinnedOn(netlab.UnderlayDev) }}
	if _, err := e.mgrs[0].Apply(half, bpfMode, e.cfgs[0], endpoints(n1)); err == nil {
		t.Fatal("Apply stopped after the underlay's program returned no error")
	}
	if !pinnedOn(netlab.UnderlayDev) || pinnedOn(lxc) {
		t.Fatalf("after the stopped Apply: underlay program %v, pod device program %v; want only the underlay's", pinnedOn(netlab.UnderlayDev), pinnedOn(lxc))
	}
	before := disarmed()
	connect("underlay attached, pod device not")
	if disarmed() == before {
		t.Errorf("the underlay program counted no packet it left to the stack disarmed")
	}

	// Attached everywhere: the programs forward.
	changes := e.apply(t, 0, bpfMode)
	if !slices.Contains(changes, "programs armed: every device has its program") {
		t.Errorf("attaching the rest: changes %q, want the programs armed", changes)
	}
	peer := count(e.counters(t, 0), bpf.ProgramNetdev, bpf.ReasonRedirectPeer)
	connect("every device attached")
	if count(e.counters(t, 0), bpf.ProgramNetdev, bpf.ReasonRedirectPeer) == peer {
		t.Errorf("with every device attached, the underlay program delivered none of the connection's packets with redirect_peer")
	}

	// Detaching: the pod's device has lost its program, the underlay not yet.
	half = stopWhen{t.Context(), func() bool { return !pinnedOn(lxc) }}
	if _, err := e.mgrs[0].Apply(half, legacyMode, e.cfgs[0], endpoints(n1)); err == nil {
		t.Fatal("Apply stopped after the pod device's program went returned no error")
	}
	if !pinnedOn(netlab.UnderlayDev) || pinnedOn(lxc) {
		t.Fatalf("after the stopped Apply: underlay program %v, pod device program %v; want only the underlay's", pinnedOn(netlab.UnderlayDev), pinnedOn(lxc))
	}
	connect("pod device detached, underlay not")
	e.apply(t, 0, legacyMode)
}
