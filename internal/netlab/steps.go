package netlab

import (
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/controllers/rollout"
)

// Steady modes of the agents' tests, as the operator renders them.
var (
	// Tunnel is VXLAN tunnelling.
	Tunnel = rollout.Steady(v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelVXLAN})
	// Native is native routing with auto-direct-node-routes over the
	// lab's pod prefix.
	Native = rollout.Steady(v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelDisabled,
		NativeRoutingCIDR: PodPrefix.String(), AutoDirectNodeRoutes: true})
)

// Steps are the datapaths a rollout writes to each node, in order.
type Steps struct {
	// Prepare receives both ways, still sending the old way.
	Prepare v1alpha1.NodeDatapath
	// Switch sends the new way, still receiving both.
	Switch v1alpha1.NodeDatapath
	// Final is the new mode alone.
	Final v1alpha1.NodeDatapath
}

// RolloutSteps asks the operator's planner (controllers/rollout) for the
// steps from steady datapath from to steady datapath to, on two nodes
// that apply every step at once and reach each other directly: the agent
// tests walk the steps the operator would write, not a copy of its rules.
func RolloutSteps(from, to v1alpha1.NodeDatapath) (Steps, error) {
	spec := v1alpha1.RoutingModeSpec{Tunnel: to.Tunnel, TunnelPort: to.TunnelPort, NativeRoutingCIDR: to.NativeRoutingCIDR,
		AutoDirectNodeRoutes: to.AutoDirectNodeRoutes, HostRouting: to.HostRouting}
	if target := rollout.Steady(spec); !rollout.Equal(&target, &to) {
		return Steps{}, fmt.Errorf("%+v is not a steady datapath", to)
	}
	nodes := []rollout.Node{planNode("a", 1, from), planNode("b", 2, from)}
	var steps Steps
	var seen [3]bool
	for range 20 {
		d := rollout.Plan(rollout.Input{Spec: spec, Nodes: nodes, Generation: 1})
		if d.Stall != nil {
			return steps, fmt.Errorf("the planner stalled: %s", d.Stall.Message)
		}
		if d.Phase == v1alpha1.PhaseComplete {
			if !seen[0] || !seen[1] {
				return steps, fmt.Errorf("the planner went from %+v to %+v without a prepare and a switch step", from, to)
			}
			steps.Final = to
			return steps, nil
		}
		for _, u := range d.Updates {
			switch u.Step {
			case v1alpha1.StepPrepare:
				steps.Prepare, seen[0] = u.Datapath, true
			case v1alpha1.StepSwitch:
				steps.Switch, seen[1] = u.Datapath, true
			}
			for i := range nodes {
				if nodes[i].Name == u.Node {
					nodes[i] = applied(nodes[i], u)
				}
			}
		}
	}
	return steps, fmt.Errorf("the planner did not complete from %+v to %+v", from, to)
}

// planNode is a node running d whose agent reports it healthy.
func planNode(name string, i int, d v1alpha1.NodeDatapath) rollout.Node {
	n := rollout.Node{Name: name, PodCIDR: PodCIDR(i).String(), InternalIP: NodeIP(i).String(), HasRoutingNode: true, Step: v1alpha1.StepSteady}
	return applied(n, rollout.Update{Datapath: d, Step: v1alpha1.StepSteady})
}

func applied(n rollout.Node, u rollout.Update) rollout.Node {
	n.Generation++
	n.Datapath, n.Step, n.Previous = &u.Datapath, u.Step, u.Previous
	cond := func(typ string) metav1.Condition {
		return metav1.Condition{Type: typ, Status: metav1.ConditionTrue, ObservedGeneration: n.Generation, Reason: "Lab"}
	}
	n.Status = v1alpha1.RoutingNodeStatus{
		ObservedGeneration: n.Generation,
		Capabilities:       &v1alpha1.NodeCapabilities{VXLAN: true, Geneve: true, BPFHostRouting: true},
		PeerSummary:        &v1alpha1.PeerSummary{Total: 1},
		Conditions:         []metav1.Condition{cond(v1alpha1.ConditionDatapathApplied), cond(v1alpha1.ConditionPeersHealthy)},
	}
	return n
}
