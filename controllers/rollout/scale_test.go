package rollout

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/routemode/routemode/api/v1alpha1"
)

// cluster is n nodes running spec, every agent reporting n-1 direct,
// answering peers.
func cluster(n int, spec v1alpha1.RoutingModeSpec) []Node {
	nodes := make([]Node, n)
	dp := Steady(spec)
	for i := range nodes {
		nodes[i] = Node{
			Name: fmt.Sprintf("node-%04d", i), PodCIDR: fmt.Sprintf("10.%d.%d.0/24", i/256, i%256),
			InternalIP: fmt.Sprintf("192.168.%d.%d", i/250, i%250+1), HasRoutingNode: true, Generation: 1,
			Datapath: &dp, Step: v1alpha1.StepSteady,
			Status: v1alpha1.RoutingNodeStatus{ObservedGeneration: 1, Capabilities: allCaps,
				PeerSummary: &v1alpha1.PeerSummary{Total: int32(n - 1), Probed: int32(n - 1)}},
		}
		for _, t := range []string{v1alpha1.ConditionDatapathApplied, v1alpha1.ConditionPeersHealthy} {
			meta.SetStatusCondition(&nodes[i].Status.Conditions, metav1.Condition{Type: t, Status: metav1.ConditionTrue, Reason: "OK", ObservedGeneration: 1})
		}
	}
	return nodes
}

func TestPreflightDecidesFromTheBoundedReportAt5000Nodes(t *testing.T) {
	wide := nativeSpec
	wide.NativeRoutingCIDR = "10.0.0.0/8"
	for name, tc := range map[string]struct {
		mutate func([]Node)
		reason string
		failed bool
		msg    []string
	}{
		"all adjacent": {reason: ReasonPreflightPassed},
		"20 peers behind a gateway, 16 listed": {mutate: func(n []Node) {
			s := n[17].Status.PeerSummary
			s.NotDirect = 20
			for i := range v1alpha1.MaxListedPeers {
				s.Problems = append(s.Problems, v1alpha1.PeerStatus{Node: fmt.Sprintf("node-%04d", 4000+i), NodeIP: "172.16.0.1", Reachable: true})
			}
			s.ProblemsNotListed = 4
		}, reason: ReasonPeerNotDirect, failed: true,
			msg: []string{"node node-0017 reaches node-4000 (172.16.0.1), node-4001 (172.16.0.1), node-4002 (172.16.0.1) and 17 more only through a gateway"}},
		"many nodes behind gateways": {mutate: func(n []Node) {
			for i := range n {
				n[i].Status.PeerSummary.NotDirect = 1
			}
		}, reason: ReasonPeerNotDirect, failed: true, msg: []string{"(5000 nodes report such peers: node-0000, node-0001, node-0002 and 4997 more)"}},
		"agents yet to see every peer": {mutate: func(n []Node) {
			for i := range n {
				n[i].Status.PeerSummary.Total = 10
			}
		}, reason: ReasonWaitingForAgents, msg: []string{"node-0000, node-0001, node-0002 and 4997 more", "all 4999 peers"}},
		"agents yet to report": {mutate: func(n []Node) {
			for i := range n {
				n[i].Status.Capabilities = nil
			}
		}, reason: ReasonWaitingForAgents, msg: []string{"on node-0000, node-0001, node-0002 and 4997 more to report"}},
	} {
		t.Run(name, func(t *testing.T) {
			nodes := cluster(5000, tunnelSpec)
			if tc.mutate != nil {
				tc.mutate(nodes)
			}
			r := Preflight(Steady(wide), nodes)
			if r.Reason != tc.reason || r.Failed != tc.failed {
				t.Fatalf("Preflight = %s (failed %v): %s; want %s (failed %v)", r.Reason, r.Failed, r.Message, tc.reason, tc.failed)
			}
			for _, m := range tc.msg {
				if !strings.Contains(r.Message, m) {
					t.Errorf("message %q does not contain %q", r.Message, m)
				}
			}
			if len(r.Message) > 1024 {
				t.Errorf("message is %d bytes at 5,000 nodes", len(r.Message))
			}
		})
	}
}

func TestUnreachablePeerInTheReportBlocksTheNextBatch(t *testing.T) {
	s := newSim(t, 4, tunnelSpec)
	s.setSpec(nativeSpec)
	var switching string
	for range 20 {
		d := s.step()
		for _, u := range d.Updates {
			if u.Step == v1alpha1.StepSwitch {
				switching = u.Node
			}
		}
		s.report()
		if switching != "" {
			break
		}
	}
	if switching == "" {
		t.Fatalf("no node was switched; phases %v", s.phases)
	}
	// The agent's condition says healthy, but its bounded report counts an
	// unreachable peer: that must hold the batch, as the condition would.
	i := slices.IndexFunc(s.nodes, func(n Node) bool { return n.Name == switching })
	s.nodes[i].Status.PeerSummary = &v1alpha1.PeerSummary{Total: 3, Probed: 3, Unreachable: 1,
		Problems: []v1alpha1.PeerStatus{{Node: "node-9", Direct: true}}}
	d := s.step()
	for _, u := range d.Updates {
		if u.Step == v1alpha1.StepSwitch {
			t.Fatalf("switched %s while %s reports an unreachable peer", u.Node, switching)
		}
	}
	if want := switching + " does not reach node-9"; !strings.Contains(d.Waiting, want) {
		t.Errorf("waiting %q, want it to say %q", d.Waiting, want)
	}
	s.report() // the peer answers again
	if d := s.step(); !hasStep(d.Updates, v1alpha1.StepSwitch) {
		t.Errorf("the next batch did not start once the peer answered: %s %q", d.Phase, d.Waiting)
	}
}

func hasStep(us []Update, step v1alpha1.RolloutStep) bool {
	for _, u := range us {
		if u.Step == step {
			return true
		}
	}
	return false
}

// BenchmarkPlan is one reconcile's decision in the middle of a 10% batch
// rollout: it must stay O(N log N) or better in the number of nodes.
func BenchmarkPlan(b *testing.B) {
	for _, n := range []int{100, 1000, 5000} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			spec := nativeSpec
			spec.NativeRoutingCIDR = "10.0.0.0/8"
			spec.Rollout.MaxUnavailable = new(intstr.FromString("10%"))
			nodes := cluster(n, tunnelSpec)
			in := Input{Spec: spec, Nodes: nodes, Now: time.Unix(1_800_000_000, 0), Generation: 2}
			b.ReportAllocs()
			for b.Loop() {
				Plan(in)
			}
		})
	}
}

// A finalize whose writes were cut short (a reconcile that timed out, or
// the operator's cap on writes per reconcile) resumes finalizing: the
// nodes that dropped the tunnel already are not prepared again.
func TestFinalizeCutShortResumes(t *testing.T) {
	s := newSim(t, 4, tunnelSpec)
	s.setSpec(nativeSpec)
	var d Decision
	for range 30 {
		d = s.plan()
		if hasStep(d.Updates, v1alpha1.StepFinalize) {
			break
		}
		s.apply(d)
		s.report()
	}
	if !hasStep(d.Updates, v1alpha1.StepFinalize) || len(d.Updates) != 4 {
		t.Fatalf("no finalize of 4 nodes; phases %v, last updates %v", s.phases, names(d.Updates))
	}
	d.Updates = d.Updates[:2]
	s.apply(d)
	s.report()
	next := s.plan()
	if hasStep(next.Updates, v1alpha1.StepPrepare) || len(next.Updates) != 2 || next.Phase != v1alpha1.PhaseFinalizing {
		t.Errorf("after half a finalize: %s %v, want the other 2 finalized", next.Phase, names(next.Updates))
	}
}
