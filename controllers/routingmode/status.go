package routingmode

import (
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/controllers/rollout"
	"github.com/routemode/routemode/internal/bounded"
)

// computeStatus sets every status field from one decision. It is the only
// place status is computed; each condition has its own function so each is
// tested on its own.
func computeStatus(rm *v1alpha1.RoutingMode, d rollout.Decision, nodes []rollout.Node, now time.Time) {
	st := &rm.Status
	if st.ObservedGeneration != rm.Generation || st.RolloutStartTime == nil {
		st.RolloutStartTime = &metav1.Time{Time: now}
	}
	st.ObservedGeneration = rm.Generation
	st.Phase = d.Phase
	st.Nodes = d.Counts
	st.Progress = fmt.Sprintf("%d/%d", d.Counts.Updated, d.Counts.Total)
	st.Datapath = summarize(nodes)
	for _, set := range []func(*v1alpha1.RoutingMode, rollout.Decision) metav1.Condition{
		readyCondition, reconcilingCondition, stalledCondition, preflightCondition,
		preparedCondition, switchedCondition, finalizedCondition,
	} {
		c := set(rm, d)
		c.ObservedGeneration = rm.Generation
		// Messages quote agents and the kernel; an unbounded one would make
		// the whole status unwritable.
		c.Message = bounded.Message(c.Message)
		meta.SetStatusCondition(&st.Conditions, c)
	}
}

func cond(t string, ok bool, reason, msg string) metav1.Condition {
	s := metav1.ConditionFalse
	if ok {
		s = metav1.ConditionTrue
	}
	return metav1.Condition{Type: t, Status: s, Reason: reason, Message: msg}
}

func describe(dp v1alpha1.NodeDatapath) string {
	routing := "native routing"
	if dp.SendMode == v1alpha1.SendTunnel {
		routing = string(dp.Tunnel) + " tunnel"
	}
	return fmt.Sprintf("%s, host routing %s", routing, dp.HostRouting)
}

func readyCondition(_ *v1alpha1.RoutingMode, d rollout.Decision) metav1.Condition {
	if d.Phase == v1alpha1.PhaseComplete {
		return cond(v1alpha1.ConditionReady, true, string(v1alpha1.PhaseComplete),
			fmt.Sprintf("all %d nodes run %s", d.Counts.Total, describe(d.Target)))
	}
	msg := d.Waiting
	if d.Stall != nil {
		msg = d.Stall.Message
	}
	return cond(v1alpha1.ConditionReady, false, string(d.Phase), msg)
}

func reconcilingCondition(_ *v1alpha1.RoutingMode, d rollout.Decision) metav1.Condition {
	switch d.Phase {
	case v1alpha1.PhaseComplete, v1alpha1.PhaseStalled, v1alpha1.PhasePaused:
		return cond(v1alpha1.ConditionReconciling, false, string(d.Phase), "")
	}
	return cond(v1alpha1.ConditionReconciling, true, string(d.Phase),
		fmt.Sprintf("%d/%d nodes updated: %s", d.Counts.Updated, d.Counts.Total, d.Waiting))
}

func stalledCondition(_ *v1alpha1.RoutingMode, d rollout.Decision) metav1.Condition {
	if d.Stall != nil {
		return cond(v1alpha1.ConditionStalled, true, d.Stall.Reason, d.Stall.Message)
	}
	return cond(v1alpha1.ConditionStalled, false, string(d.Phase), "")
}

// preflightCondition keeps the last verdict while there is nothing to
// check, so a finished rollout still says its checks passed.
func preflightCondition(rm *v1alpha1.RoutingMode, d rollout.Decision) metav1.Condition {
	p := d.Preflight
	switch {
	case p.Reason == "":
		// Nothing was checked this time: every node already runs the
		// requested mode, or a node failure holds the rollout. A verdict
		// that passed stands; a wait or failure that no longer applies
		// does not.
		if old := meta.FindStatusCondition(rm.Status.Conditions, v1alpha1.ConditionPreflightSucceeded); old != nil && old.Status == metav1.ConditionTrue {
			return *old
		}
		return cond(v1alpha1.ConditionPreflightSucceeded, true, rollout.ReasonPreflightPassed, "every node runs the requested mode")
	case p.Waiting:
		c := cond(v1alpha1.ConditionPreflightSucceeded, false, p.Reason, p.Message)
		c.Status = metav1.ConditionUnknown
		return c
	}
	return cond(v1alpha1.ConditionPreflightSucceeded, !p.Failed, p.Reason, p.Message)
}

func phaseCondition(t string, d rollout.Decision, doneFrom []v1alpha1.RolloutPhase, active v1alpha1.RolloutPhase, doneMsg string) metav1.Condition {
	for _, p := range doneFrom {
		if d.Phase == p {
			return cond(t, true, "Done", doneMsg)
		}
	}
	if d.Phase == active {
		return cond(t, false, "InProgress", d.Waiting)
	}
	return cond(t, false, "NotStarted", "")
}

func preparedCondition(_ *v1alpha1.RoutingMode, d rollout.Decision) metav1.Condition {
	return phaseCondition(v1alpha1.ConditionNodesPrepared, d,
		[]v1alpha1.RolloutPhase{v1alpha1.PhaseSwitching, v1alpha1.PhasePaused, v1alpha1.PhaseFinalizing, v1alpha1.PhaseComplete},
		v1alpha1.PhasePreparing, "every node receives both ways")
}

func switchedCondition(_ *v1alpha1.RoutingMode, d rollout.Decision) metav1.Condition {
	return phaseCondition(v1alpha1.ConditionNodesSwitched, d,
		[]v1alpha1.RolloutPhase{v1alpha1.PhaseFinalizing, v1alpha1.PhaseComplete},
		v1alpha1.PhaseSwitching, "every node sends the new way")
}

func finalizedCondition(_ *v1alpha1.RoutingMode, d rollout.Decision) metav1.Condition {
	return phaseCondition(v1alpha1.ConditionNodesFinalized, d,
		[]v1alpha1.RolloutPhase{v1alpha1.PhaseComplete},
		v1alpha1.PhaseFinalizing, "the old mode's state is gone from every node")
}

// summarize reports the datapath the agents say they run.
func summarize(nodes []rollout.Node) v1alpha1.DatapathSummary {
	routing, host := map[string]bool{}, map[string]bool{}
	for _, n := range nodes {
		if dp := n.Status.Datapath; dp.SendMode != "" {
			routing[string(dp.SendMode)] = true
			host[string(dp.HostRouting)] = true
		}
	}
	return v1alpha1.DatapathSummary{
		Routing:     v1alpha1.ActualRouting(one(routing, string(v1alpha1.ActualRoutingUnknown), string(v1alpha1.ActualRoutingMixed))),
		HostRouting: one(host, "Unknown", "Mixed"),
	}
}

func one(set map[string]bool, none, many string) string {
	switch len(set) {
	case 0:
		return none
	case 1:
		for k := range set {
			return k
		}
	}
	return many
}
