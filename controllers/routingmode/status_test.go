package routingmode

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/controllers/rollout"
)

func TestComputeStatus(t *testing.T) {
	type want struct {
		ready, reconciling, stalled metav1.ConditionStatus
		prepared, switched          metav1.ConditionStatus
		readyReason                 string
	}
	tests := map[string]struct {
		d    rollout.Decision
		want want
	}{
		"preflight waiting": {
			d:    rollout.Decision{Phase: v1alpha1.PhasePreflight, Preflight: rollout.PreflightResult{Waiting: true, Reason: rollout.ReasonWaitingForAgents}},
			want: want{metav1.ConditionFalse, metav1.ConditionTrue, metav1.ConditionFalse, metav1.ConditionFalse, metav1.ConditionFalse, "Preflight"},
		},
		"preparing": {
			d:    rollout.Decision{Phase: v1alpha1.PhasePreparing, Preflight: rollout.PreflightResult{Reason: rollout.ReasonPreflightPassed}},
			want: want{metav1.ConditionFalse, metav1.ConditionTrue, metav1.ConditionFalse, metav1.ConditionFalse, metav1.ConditionFalse, "Preparing"},
		},
		"switching": {
			d:    rollout.Decision{Phase: v1alpha1.PhaseSwitching},
			want: want{metav1.ConditionFalse, metav1.ConditionTrue, metav1.ConditionFalse, metav1.ConditionTrue, metav1.ConditionFalse, "Switching"},
		},
		"paused": {
			d:    rollout.Decision{Phase: v1alpha1.PhasePaused},
			want: want{metav1.ConditionFalse, metav1.ConditionFalse, metav1.ConditionFalse, metav1.ConditionTrue, metav1.ConditionFalse, "Paused"},
		},
		"stalled": {
			d:    rollout.Decision{Phase: v1alpha1.PhaseStalled, Stall: &rollout.Stall{Reason: rollout.ReasonNodeFailed, Message: "node-2 failed"}},
			want: want{metav1.ConditionFalse, metav1.ConditionFalse, metav1.ConditionTrue, metav1.ConditionFalse, metav1.ConditionFalse, "Stalled"},
		},
		"complete": {
			d:    rollout.Decision{Phase: v1alpha1.PhaseComplete, Counts: v1alpha1.NodeCounts{Total: 3, Updated: 3, Healthy: 3}},
			want: want{metav1.ConditionTrue, metav1.ConditionFalse, metav1.ConditionFalse, metav1.ConditionTrue, metav1.ConditionTrue, "Complete"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			rm := &v1alpha1.RoutingMode{ObjectMeta: metav1.ObjectMeta{Generation: 4}}
			computeStatus(rm, tc.d, nil, time.Unix(100, 0))
			if rm.Status.ObservedGeneration != 4 || rm.Status.Phase != tc.d.Phase {
				t.Errorf("observedGeneration %d phase %s", rm.Status.ObservedGeneration, rm.Status.Phase)
			}
			for typ, w := range map[string]metav1.ConditionStatus{
				v1alpha1.ConditionReady: tc.want.ready, v1alpha1.ConditionReconciling: tc.want.reconciling,
				v1alpha1.ConditionStalled: tc.want.stalled, v1alpha1.ConditionNodesPrepared: tc.want.prepared,
				v1alpha1.ConditionNodesSwitched: tc.want.switched,
			} {
				c := meta.FindStatusCondition(rm.Status.Conditions, typ)
				if c == nil || c.Status != w || c.ObservedGeneration != 4 {
					t.Errorf("%s = %+v, want %s", typ, c, w)
				}
			}
			if c := meta.FindStatusCondition(rm.Status.Conditions, v1alpha1.ConditionReady); c.Reason != tc.want.readyReason {
				t.Errorf("Ready reason %s, want %s", c.Reason, tc.want.readyReason)
			}
			// Every condition is set on the first visit, even when Unknown.
			if len(rm.Status.Conditions) != 7 {
				t.Errorf("%d conditions set", len(rm.Status.Conditions))
			}
		})
	}
}

func TestComputeStatusKeepsRolloutStart(t *testing.T) {
	rm := &v1alpha1.RoutingMode{ObjectMeta: metav1.ObjectMeta{Generation: 1}}
	computeStatus(rm, rollout.Decision{Phase: v1alpha1.PhasePreparing}, nil, time.Unix(100, 0))
	computeStatus(rm, rollout.Decision{Phase: v1alpha1.PhaseSwitching}, nil, time.Unix(200, 0))
	if got := rm.Status.RolloutStartTime.Unix(); got != 100 {
		t.Errorf("rollout start moved to %d within one generation", got)
	}
	rm.Generation = 2
	computeStatus(rm, rollout.Decision{Phase: v1alpha1.PhasePreparing}, nil, time.Unix(300, 0))
	if got := rm.Status.RolloutStartTime.Unix(); got != 300 {
		t.Errorf("rollout start %d not reset by a new generation", got)
	}
}

func TestSummarize(t *testing.T) {
	node := func(send v1alpha1.SendMode, host v1alpha1.HostRouting) rollout.Node {
		return rollout.Node{Status: v1alpha1.RoutingNodeStatus{Datapath: v1alpha1.NodeDatapathStatus{SendMode: send, HostRouting: host}}}
	}
	tests := map[string]struct {
		nodes []rollout.Node
		want  v1alpha1.DatapathSummary
	}{
		"no reports": {nil, v1alpha1.DatapathSummary{Routing: v1alpha1.ActualRoutingUnknown, HostRouting: "Unknown"}},
		"all native bpf": {[]rollout.Node{node("Native", "bpf"), node("Native", "bpf")},
			v1alpha1.DatapathSummary{Routing: v1alpha1.ActualRoutingNative, HostRouting: "bpf"}},
		"mid rollout": {[]rollout.Node{node("Native", "bpf"), node("Tunnel", "legacy")},
			v1alpha1.DatapathSummary{Routing: v1alpha1.ActualRoutingMixed, HostRouting: "Mixed"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := summarize(tc.nodes); got != tc.want {
				t.Errorf("summarize = %+v, want %+v", got, tc.want)
			}
		})
	}
}
