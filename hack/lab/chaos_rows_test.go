package lab

import (
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/routemode/routemode/agent/hostrouting"
	"github.com/routemode/routemode/api/v1alpha1"
)

// The chaos rows that hit the nodes' kernels and underlay, and the
// RoutingMode itself, mid-rollout (chaos_test.go has the machinery and the
// process faults).

// chaosWays are the switches a row runs: both ways under make chaos, one
// way and back without the fault in make test's short form.
func (h *harness) chaosWays(row func(way struct{ name, spec string })) {
	h.t.Helper()
	if chaosFull() {
		for _, way := range switches {
			row(way)
		}
		return
	}
	row(switches[0])
	h.restore(tunnelSpec)
	h.everyPairAnswers("back to the tunnel")
}

// TestChaosNodeRebooted "reboots" the first node told to Switch: its agent
// is killed for good, everything the agent made in the node's kernel is
// wiped (its peer routes, its health endpoint's route, the VXLAN device,
// rm_host and rm_net, the eBPF programs with their pins, the masquerading
// table) and rp_filter is strict again, as the distribution boots it;
// then the agent is started again. It must
// rebuild the node from the API state and its state directory: the
// rollout completes, the peers lose only traffic to and from that node
// while it is down, and afterwards every pair is reachable again.
func TestChaosNodeRebooted(t *testing.T) {
	h := newHarness(t)
	h.chaosWays(func(way struct{ name, spec string }) {
		fault := "node rebooted: kernel state wiped, agent restarted (" + way.name + ")"
		o := h.chaosRun(chaosCase{fault: fault, spec: way.spec, at: FirstSwitching, hitsNode: true, inject: h.reboot})
		if o.err != nil {
			t.Fatalf("%s: %v", fault, o.err)
		}
		if lost := h.l.LostOutside(o.report, o.node); lost != 0 {
			t.Errorf("%s: %d probes lost between the other nodes; want none", fault, lost)
		}
		if err := h.kernelInvariant(); err != nil {
			t.Errorf("%s: after the rollout: %v", fault, err)
		}
		if way.spec == nativeSpec {
			if routes, err := hostrouting.ListDirectRoutes(hostrouting.DefaultPinDir(o.node)); err != nil || len(routes) != len(h.l.Nodes)-1 {
				t.Errorf("%s: the rebooted node's eBPF direct routes: %v %v; want one per peer", fault, routes, err)
			}
		}
		h.everyPairAnswers(fault)
	})
}

// everyPairAnswers runs fresh traffic between every pair until 300 more
// probes were answered and fails on any loss.
func (h *harness) everyPairAnswers(what string) {
	h.t.Helper()
	ctx := context.Background()
	tr, err := h.l.StartTraffic(ctx, 300, 8472)
	if err != nil {
		h.t.Fatalf("%s: afterwards: %v", what, err)
	}
	err = tr.Answered(ctx, 300, time.Minute)
	r := tr.Stop()
	if err != nil {
		h.t.Fatalf("%s: afterwards: %v", what, err)
	}
	h.noLoss(what+": afterwards", r)
}

// reboot stops node's agent for good, wipes what it made in the kernel and
// starts it again, returning how long the agent was down.
func (h *harness) reboot(node string) (time.Duration, string) {
	h.t.Helper()
	n := h.l.node(node)
	start := time.Now()
	if err := h.l.stopSupervised("agent-" + node); err != nil {
		h.t.Fatal(err)
	}
	if err := h.l.WipeNodeKernel(node); err != nil {
		h.t.Fatalf("wiping %s: %v", node, err)
	}
	if err := h.l.spawnAgent(*n); err != nil {
		h.t.Fatal(err)
	}
	return time.Since(start), ""
}

// TestChaosUnderlayCut cuts the underlay of the last node not yet told to
// Switch once every node applied Prepare (its bridge port set down, as
// TestE2EUnhealthyNodeRolledBack does), then restores it. The health gate
// must hold the rollout while the cut is seen: no node is told to Switch
// until the link is back, and afterwards the rollout completes; only paths
// through the cut node lose traffic.
//
// The spec is applied paused and unpaused once the operator counts a node
// unhealthy: a gate can only hold on a failure a probe has seen, and
// without the pause a loaded machine let the whole Switch happen between
// the point being reached and the cut (node-1, node-2 and node-3 told to
// Switch within 370 ms, their probes answering before the link went
// down), so the row tested nothing.
func TestChaosUnderlayCut(t *testing.T) {
	h := newHarness(t)
	const cut = 10 * time.Second
	h.chaosWays(func(way struct{ name, spec string }) {
		fault := fmt.Sprintf("underlay of a node not yet switched cut for %s (%s)", cut, way.name)
		var w *PointWatch
		var during map[string][]v1alpha1.RolloutStep
		o := h.chaosRun(chaosCase{fault: fault, spec: way.spec + "  rollout:\n    paused: true\n", at: AfterPrepare, hitsNode: true,
			watch: func(pw *PointWatch) { w = pw },
			inject: func(node string) (time.Duration, string) {
				ctx := context.Background()
				healthy := func(want func(n int32) bool) func() (bool, error) {
					return func() (bool, error) {
						var rm v1alpha1.RoutingMode
						err := h.c.Get(ctx, client.ObjectKey{Name: "default"}, &rm)
						return err == nil && want(rm.Status.Nodes.Healthy), err
					}
				}
				// Every node healthy first, as the operator counts it: a
				// node whose Prepare probes are not in yet counts as not
				// healthy too, and would pass for the cut seen.
				all := int32(len(h.l.Nodes))
				if err := wait(ctx, time.Minute, "the operator to count every node healthy", healthy(func(n int32) bool { return n == all })); err != nil {
					h.t.Fatal(err)
				}
				h.setUnderlay(node, false)
				start := time.Now()
				if err := wait(ctx, time.Minute, "the operator to count a node unhealthy", healthy(func(n int32) bool { return n < all })); err != nil {
					h.setUnderlay(node, true)
					h.t.Fatal(err)
				}
				seen := time.Since(start)
				if out, err := h.apply(way.spec); err != nil {
					h.setUnderlay(node, true)
					h.t.Fatalf("unpausing: %v\n%s", err, out)
				}
				// The fault's own length, not a wait for something to happen.
				time.Sleep(cut)
				during = w.Snapshot()
				h.setUnderlay(node, true)
				return time.Since(start), fmt.Sprintf("the operator counted a node unhealthy %s into the cut, then the rollout was unpaused for %s of it", seen.Round(100*time.Millisecond), cut)
			}})
		if o.err != nil {
			t.Fatalf("%s: %v", fault, o.err)
		}
		for name, steps := range during {
			if slices.Contains(steps, v1alpha1.StepSwitch) {
				t.Errorf("%s: %s was told to Switch while %s was cut off (steps %v); want the rollout held until the link is back", fault, name, o.node, steps)
			}
		}
		t.Logf("%s: %d probes lost on paths through %s", fault, o.report.UDP.Lost, o.node)
		if lost := h.l.LostOutside(o.report, o.node); lost != 0 {
			t.Errorf("%s: %d probes lost between the other nodes; want none", fault, lost)
		}
		if err := h.kernelInvariant(); err != nil {
			t.Errorf("%s: after the rollout: %v", fault, err)
		}
		h.everyPairAnswers(fault)
	})
}

// setUnderlay sets node's underlay up or down; an underlay left down by a
// failing test is set up again.
func (h *harness) setUnderlay(node string, up bool) {
	h.t.Helper()
	if err := h.l.SetUnderlay(node, up); err != nil {
		h.t.Fatal(err)
	}
	if !up {
		h.t.Cleanup(func() { _ = h.l.SetUnderlay(node, true) })
	}
}

// lossPercent is the random loss TestChaosUnderlayLoss injects.
const lossPercent = 5

// TestChaosUnderlayLoss drops 5% of the frames crossing the underlay
// bridge, at random, for a whole rollout: every node's underlay in both
// directions. (The rule sits on the bridge, not in the nodes' namespaces:
// with eBPF host routing the programs redirect pods' packets at tc,
// before any netfilter hook of the node sees them.) The rollout must
// complete, or halt with a message that says why; no probe may be lost
// beyond what the rule dropped: a probe crosses the bridge twice, so
// about 1-0.95² = 9.75% of them, and never more than the frames the
// rule's counter dropped.
func TestChaosUnderlayLoss(t *testing.T) {
	h := newHarness(t)
	h.chaosWays(func(way struct{ name, spec string }) {
		fault := fmt.Sprintf("%d%% random loss on every underlay (%s)", lossPercent, way.name)
		var dropped int64
		o := h.chaosRun(chaosCase{fault: fault, spec: way.spec, at: FromStart,
			// TCP retransmits what the rule drops, doubling its wait each
			// time: a few drops of one segment in a row take it past the
			// probe's usual 2 s on a loaded machine (a make test's
			// connection broke so, with no reset). A reset or an error
			// still counts.
			tcpTimeout: 30 * time.Second,
			inject: func(string) (time.Duration, string) {
				if err := h.l.StartRandomLoss(lossPercent); err != nil {
					h.t.Fatal(err)
				}
				h.t.Cleanup(func() { _ = h.l.StopRandomLoss() })
				return 0, ""
			},
			after: func() string {
				var err error
				if dropped, err = h.l.RandomLossDropped(); err != nil {
					h.t.Error(err)
				}
				return fmt.Sprintf("%d frames dropped by the rule", dropped)
			}})
		if err := h.l.StopRandomLoss(); err != nil {
			t.Error(err)
		}
		if o.err != nil {
			stalled := o.err.Error()
			if !strings.Contains(stalled, "stalled:") {
				t.Fatalf("%s: %v; want the rollout completed or halted with a message", fault, o.err)
			}
			t.Logf("%s: halted: %s", fault, stalled)
			h.restore(tunnelSpec)
		}
		r := o.report
		p := 1 - math.Pow(1-lossPercent/100.0, 2)
		bound := float64(r.UDP.Sent)*p + 5*math.Sqrt(float64(r.UDP.Sent)*p*(1-p))
		t.Logf("%s: %d of %d probes lost (%.2f%%; injected ≈ %.2f%%), %d frames dropped by the rule; TCP %s",
			fault, r.UDP.Lost, r.UDP.Sent, 100*float64(r.UDP.Lost)/float64(max(r.UDP.Sent, 1)), 100*p, dropped, r.TCP)
		if r.UDP.Sent == 0 || r.UDP.Lost > dropped || float64(r.UDP.Lost) > bound {
			t.Errorf("%s: %d of %d probes lost with %d frames dropped; want at most the dropped frames and %.0f (%.2f%% + 5σ)",
				fault, r.UDP.Lost, r.UDP.Sent, dropped, bound, 100*p)
		}
		if r.TCP.Messages == 0 || r.TCP.Resets != 0 || r.TCP.Errors != 0 {
			t.Errorf("%s: TCP %s; want no reset or error (TCP retransmits what the rule drops)", fault, r.TCP)
		}
		if err := h.kernelInvariant(); err != nil {
			t.Errorf("%s: after the rollout: %v", fault, err)
		}
	})
}

// TestChaosSpecChangedMidRollout edits the RoutingMode back to the tunnel
// while the last node switches to native, and deletes it while the first
// node switches. Documented behaviour (docs/reliability.md): an edit
// reverses the rollout from where it is, and it completes in the new
// mode; a deletion stops the rollout where it is, every node keeping its
// last step (the switching node finishes it), which is safe because every
// node already receives both ways. Neither may leave a pair unable to
// reach each other: nothing is lost, the kernels hold the invariant in the
// state the deletion left and after the RoutingMode is applied again.
func TestChaosSpecChangedMidRollout(t *testing.T) {
	h := newHarness(t)
	// Each edit starts from the mode it then returns to.
	type edit struct {
		fault, spec, back string
		at                RolloutPoint
	}
	edits := []edit{{"RoutingMode edited back to the tunnel (tunnel→native+bpf→tunnel)", nativeSpec, tunnelSpec, LastSwitching}}
	if chaosFull() {
		edits = append(edits,
			edit{"RoutingMode edited back to the tunnel (tunnel→native+bpf→tunnel)", nativeSpec, tunnelSpec, FirstSwitching},
			edit{"RoutingMode edited back to native (native+bpf→tunnel→native+bpf)", tunnelSpec, nativeSpec, LastSwitching})
	}
	for _, e := range edits {
		h.restore(e.back)
		h.chaosSwitch(chaosCase{fault: e.fault, spec: e.spec, at: e.at, inject: func(string) (time.Duration, string) {
			if out, err := h.apply(e.back); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			return 0, ""
		}})
		h.allSendVia(e.back == tunnelSpec)
	}
	h.restore(tunnelSpec)
	var left string
	h.chaosSwitch(chaosCase{fault: "RoutingMode deleted, then the tunnel applied again (tunnel→native+bpf)", spec: nativeSpec, at: FirstSwitching,
		inject: func(string) (time.Duration, string) {
			if _, err := h.l.Kubectl("delete", "routingmode", "default"); err != nil {
				t.Fatal(err)
			}
			return 0, ""
		},
		settle: func(_ *PointWatch, tr *Traffic) error {
			ctx := context.Background()
			var steps []string
			if err := wait(ctx, time.Minute, "every node to apply its last step", func() (bool, error) {
				var rns v1alpha1.RoutingNodeList
				if err := h.c.List(ctx, &rns); err != nil {
					return false, err
				}
				steps = nil
				for _, rn := range rns.Items {
					if !appliedStep(&rn) {
						return false, nil
					}
					steps = append(steps, fmt.Sprintf("%s %s→%s", rn.Name, rn.Spec.Step, rn.Spec.Datapath.SendMode))
				}
				return true, nil
			}); err != nil {
				return err
			}
			if err := tr.Answered(ctx, 300, time.Minute); err != nil {
				return err
			}
			if err := h.kernelInvariant(); err != nil {
				return fmt.Errorf("in the state the deletion left (%s): %w", strings.Join(steps, ", "), err)
			}
			left = "stopped with " + strings.Join(steps, ", ") + "; the tunnel applied again: completed"
			if out, err := h.apply(tunnelSpec); err != nil {
				return fmt.Errorf("%w\n%s", err, out)
			}
			_, err := h.l.WaitRollout(ctx, h.c, 3*time.Minute, func(line string) { t.Logf("after the deletion: %s", line) })
			return err
		},
		after: func() string { return left }})
	h.allSendVia(true)
}

// allSendVia fails unless every node routes every peer into the tunnel
// (tunnel true) or none does, read from the kernels.
func (h *harness) allSendVia(tunnel bool) {
	h.t.Helper()
	for _, n := range h.l.Nodes {
		v, err := h.readKernel(n)
		if err != nil {
			h.t.Fatal(err)
		}
		for peer, via := range v.viaTunnel {
			if via != tunnel {
				h.t.Errorf("%s routes %s into the tunnel: %v; want %v", n.NS, peer, via, tunnel)
			}
		}
	}
}

// TestChaosNodeRemovedAndAdded takes the last node out of the cluster
// while the first batch switches to native (its agent stopped for good and
// its Node deleted, as a drained machine leaves), and brings it back as a
// new node while the first batch of the switch back to the tunnel
// switches (its kernel wiped as a fresh machine's, its Node registered
// again, its agent started). The traffic runs between the other nodes'
// pods, which must lose nothing. Removed: its RoutingNode is deleted, the
// rollout completes on the others and their kernels drop its routes.
// Added: the rollout is held mid-way until the node was given its first
// datapath, so that a peer still sends natively when it joins; that
// datapath receives both ways (the tunnel device, loose rp_filter), the
// rollout completes with it, and afterwards every pair, its pod's
// included, answers.
func TestChaosNodeRemovedAndAdded(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	gone := h.l.Nodes[len(h.l.Nodes)-1]
	others := h.l.Nodes[:len(h.l.Nodes)-1]
	elsewhere := func(p PodState) bool { return p.Node != gone.NS }
	removed := false
	t.Cleanup(func() {
		// Whatever happened, the lab's other tests need the node.
		if removed {
			if err := h.l.addNode(ctx, gone); err != nil {
				t.Errorf("adding %s again: %v", gone.NS, err)
			}
			h.restore(tunnelSpec)
		}
	})
	fault := "node removed: agent stopped, Node deleted (tunnel→native+bpf)"
	h.chaosSwitch(chaosCase{fault: fault, spec: nativeSpec, at: FirstSwitching, use: elsewhere,
		inject: func(string) (time.Duration, string) {
			if err := h.l.removeNode(ctx, gone); err != nil {
				t.Fatal(err)
			}
			removed = true
			return 0, ""
		}})
	var rn v1alpha1.RoutingNode
	if err := h.c.Get(ctx, client.ObjectKey{Name: gone.Name}, &rn); !apierrors.IsNotFound(err) {
		t.Errorf("%s: %s's RoutingNode: %v; want it deleted", fault, gone.Name, err)
	}
	for _, n := range others {
		out, err := run("ip", "-n", n.NS, "route", "show", gone.PodCIDR.String())
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(out) != "" {
			t.Errorf("%s: %s still routes the removed node's pods: %s", fault, n.NS, out)
		}
	}

	fault = "node added: kernel wiped, Node registered, agent started (native+bpf→tunnel)"
	var w *PointWatch
	var joined FirstDatapath
	h.chaosSwitch(chaosCase{fault: fault, spec: tunnelSpec, at: FirstSwitching, use: elsewhere,
		watch: func(pw *PointWatch) { w = pw },
		inject: func(first string) (time.Duration, string) {
			held := h.holdNotSwitched(others, first)
			if err := h.l.WipeNodeKernel(gone.NS); err != nil {
				t.Fatal(err)
			}
			if err := h.l.addNode(ctx, gone); err != nil {
				t.Fatal(err)
			}
			removed = false
			var err error
			if joined, err = w.Joined(gone.Name, time.Minute); err != nil {
				t.Fatal(err)
			}
			for _, resume := range held {
				resume()
			}
			return 0, fmt.Sprintf("%s joined while %s sent natively (agents of %s held until it had its first datapath)",
				gone.Name, strings.Join(joined.NativePeers, ", "), strings.Join(slices.Sorted(maps.Keys(held)), ", "))
		}})
	if err := joined.ReceivesBothWays(gone.Name); err != nil {
		t.Errorf("%s: %v", fault, err)
	}
	if err := h.kernelInvariant(); err != nil {
		t.Errorf("%s: after the rollout: %v", fault, err)
	}
	h.everyPairAnswers(fault)
}

// holdNotSwitched holds a rollout whose first batch, first, was just told
// to switch: the agents of the other nodes among nodes are suspended, so
// none of them can apply a Switch or answer the switching node's health
// probes, and the operator cannot move past the first batch. It fails
// unless each held node's kernel still routes first's pods natively, i.e.
// the hold came before the rollout reached it. The agents continue when the
// returned functions are called, or when the test ends.
func (h *harness) holdNotSwitched(nodes []Node, first string) map[string]func() {
	h.t.Helper()
	held := map[string]func(){}
	for _, n := range nodes {
		if n.NS == first {
			continue
		}
		held[n.NS] = h.suspend("agent-" + n.NS)
		v, err := h.readKernel(n)
		if err != nil {
			h.t.Fatal(err)
		}
		if v.viaTunnel[first] {
			h.t.Fatalf("%s already routes %s into the tunnel: the rollout was past it before it could be held", n.NS, first)
		}
	}
	return held
}
