package routingmode

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/controllers/rollout"
)

var (
	rolloutSteps = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "routemode_rollout_node_steps_total",
		Help: "Datapath steps written to nodes, by step (Prepare, Switch, Finalize, Rollback, Steady).",
	}, []string{"step"})
	rolloutNodes = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "routemode_rollout_nodes",
		Help: "Nodes of the current rollout by state (total, updated, healthy, failed).",
	}, []string{"state"})
	rolloutPhase = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "routemode_rollout_phase",
		Help: "1 for the phase the rollout is in, 0 for the others.",
	}, []string{"phase"})
	rolloutDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "routemode_rollout_duration_seconds",
		Help:    "Time from a spec change to its rollout completing.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 14),
	})
	rolloutFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "routemode_rollout_failures_total",
		Help: "Rollouts that halted, by reason.",
	}, []string{"reason"})
)

func init() {
	metrics.Registry.MustRegister(rolloutSteps, rolloutNodes, rolloutPhase, rolloutDuration, rolloutFailures)
	// Exported at zero from the start, so a dashboard or an alert on them
	// finds the series before the first step or halt.
	for _, step := range []v1alpha1.RolloutStep{v1alpha1.StepSteady, v1alpha1.StepPrepare, v1alpha1.StepSwitch, v1alpha1.StepFinalize, v1alpha1.StepRollback} {
		rolloutSteps.WithLabelValues(string(step))
	}
	for _, reason := range []string{rollout.ReasonNodeFailed, rollout.ReasonAgentTimeout} {
		rolloutFailures.WithLabelValues(reason)
	}
}

var phases = []v1alpha1.RolloutPhase{
	v1alpha1.PhasePreflight, v1alpha1.PhasePreparing, v1alpha1.PhaseSwitching, v1alpha1.PhaseFinalizing,
	v1alpha1.PhasePaused, v1alpha1.PhaseStalled, v1alpha1.PhaseComplete,
}

// observeMetrics exports the new status, counting transitions against the old.
func observeMetrics(rm, old *v1alpha1.RoutingMode, now time.Time) {
	st := rm.Status
	rolloutNodes.WithLabelValues("total").Set(float64(st.Nodes.Total))
	rolloutNodes.WithLabelValues("updated").Set(float64(st.Nodes.Updated))
	rolloutNodes.WithLabelValues("healthy").Set(float64(st.Nodes.Healthy))
	rolloutNodes.WithLabelValues("failed").Set(float64(st.Nodes.Failed))
	for _, p := range phases {
		v := 0.0
		if p == st.Phase {
			v = 1
		}
		rolloutPhase.WithLabelValues(string(p)).Set(v)
	}
	if st.Phase == old.Status.Phase {
		return
	}
	switch st.Phase {
	case v1alpha1.PhaseComplete:
		if st.RolloutStartTime != nil {
			rolloutDuration.Observe(now.Sub(st.RolloutStartTime.Time).Seconds())
		}
	case v1alpha1.PhaseStalled:
		for _, c := range st.Conditions {
			if c.Type == v1alpha1.ConditionStalled {
				rolloutFailures.WithLabelValues(c.Reason).Inc()
			}
		}
	}
}
