package controller

import (
	"fmt"
	"net/http"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"

	"github.com/routemode/routemode/api/v1alpha1"
)

// Ready is the agent's readiness check (a healthz.Checker): ready once the
// kernel matches the generation of the node's RoutingNode spec that the
// agent reads now, so a pod that is Ready has applied what it was asked,
// and a DaemonSet rollout of the agent waits for it.
func (r *Reconciler) Ready(req *http.Request) error {
	var rn v1alpha1.RoutingNode
	if err := r.Client.Get(req.Context(), types.NamespacedName{Name: r.NodeName}, &rn); err != nil {
		return fmt.Errorf("reading RoutingNode %s: %w", r.NodeName, err)
	}
	if applied := r.applied.Load(); applied != rn.Generation {
		return fmt.Errorf("RoutingNode %s generation %d is not applied to the kernel yet (last applied: %d)", r.NodeName, rn.Generation, applied)
	}
	return nil
}

// recordApplied remembers which generation the kernel matches, 0 when the
// last reconcile could not apply it.
func (r *Reconciler) recordApplied(generation int64, st v1alpha1.RoutingNodeStatus) {
	c := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionDatapathApplied)
	if c != nil && c.Status == "True" && st.ObservedGeneration == generation {
		r.applied.Store(generation)
		return
	}
	r.applied.Store(0)
}
