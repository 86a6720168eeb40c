package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/routemode/routemode/api/v1alpha1"
)

var now = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

func cond(t, status, reason, msg string, ago time.Duration) metav1.Condition {
	return metav1.Condition{Type: t, Status: metav1.ConditionStatus(status), Reason: reason, Message: msg,
		LastTransitionTime: metav1.NewTime(now.Add(-ago))}
}

func node(name string, gen, observed int64, step v1alpha1.RolloutStep, send v1alpha1.SendMode, hr v1alpha1.HostRouting, peers *v1alpha1.PeerSummary) v1alpha1.RoutingNode {
	n := v1alpha1.RoutingNode{
		ObjectMeta: metav1.ObjectMeta{Name: name, Generation: gen},
		Spec:       v1alpha1.RoutingNodeSpec{NodeName: name, Step: step},
		Status: v1alpha1.RoutingNodeStatus{
			ObservedGeneration: observed,
			Datapath:           v1alpha1.NodeDatapathStatus{SendMode: send, HostRouting: hr, RouteMTU: 1450, TunnelDevice: "routemode_vxlan"},
			Conditions:         []metav1.Condition{cond(v1alpha1.ConditionDatapathApplied, "True", "Applied", "", time.Minute)},
			PeerSummary:        peers,
		},
	}
	return n
}

func TestFormatStatus(t *testing.T) {
	switching := &v1alpha1.RoutingMode{
		ObjectMeta: metav1.ObjectMeta{Name: "default", Generation: 2},
		Spec: v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelDisabled, TunnelPort: 8472, NativeRoutingCIDR: "10.0.0.0/16",
			AutoDirectNodeRoutes: true, HostRouting: v1alpha1.HostRoutingBPF},
		Status: v1alpha1.RoutingModeStatus{
			ObservedGeneration: 2,
			Phase:              v1alpha1.PhaseSwitching,
			Nodes:              v1alpha1.NodeCounts{Total: 3, Updated: 1, Healthy: 3},
			Datapath:           v1alpha1.DatapathSummary{Routing: v1alpha1.ActualRoutingMixed, HostRouting: "Mixed"},
			Conditions: []metav1.Condition{
				cond(v1alpha1.ConditionNodesSwitched, "False", "Switching", "1/3 nodes send natively", 2*time.Minute),
				cond(v1alpha1.ConditionReconciling, "True", "Switching", "Switching: 1/3 nodes\nsend natively", 3*time.Minute),
				cond(v1alpha1.ConditionReady, "False", "Switching", "Switching: 1/3 nodes send natively", 5*time.Minute),
				cond(v1alpha1.ConditionStalled, "False", "Switching", "", 5*time.Minute),
			},
		},
	}
	tests := map[string]struct {
		rm    *v1alpha1.RoutingMode
		nodes []v1alpha1.RoutingNode
		want  []string
		not   []string
	}{
		"switching, nodes sorted and summarised": {
			rm: switching,
			nodes: []v1alpha1.RoutingNode{
				node("worker-2", 3, 3, v1alpha1.StepPrepare, v1alpha1.SendTunnel, v1alpha1.HostRoutingLegacy,
					&v1alpha1.PeerSummary{Total: 2, Probed: 2, Unreachable: 1, Problems: []v1alpha1.PeerStatus{{Node: "worker-1", Direct: true}}}),
				node("worker-1", 4, 4, v1alpha1.StepSwitch, v1alpha1.SendNative, v1alpha1.HostRoutingBPF, &v1alpha1.PeerSummary{Total: 2, Probed: 2}),
				node("worker-3", 5, 4, v1alpha1.StepPrepare, v1alpha1.SendTunnel, v1alpha1.HostRoutingLegacy, nil),
			},
			want: []string{
				"RoutingMode:  default (generation 2, observed 2)",
				"Requested:    native routing, native routing CIDR 10.0.0.0/16, auto direct node routes, host routing bpf",
				"Routing:      Network: Mixed   Host: Mixed",
				"Rollout:      Switching, 1/3 nodes updated, 3 healthy, 0 failed",
				"  Ready          False   Switching  5m   Switching: 1/3 nodes send natively",
				"Switching: 1/3 nodes send natively", // newline folded
				"  worker-1  Switch   Native  routemode_vxlan  1450       bpf           True     2/2    -",
				"peers unreachable: worker-1 (routemodectl status --node worker-2 --peers has the full table)",
				"agent has not applied generation 5 yet",
			},
			not: []string{"Note:", "nodes\nsend"},
		},
		"fresh object, no status, no nodes": {
			rm: &v1alpha1.RoutingMode{ObjectMeta: metav1.ObjectMeta{Name: "default", Generation: 1}},
			want: []string{
				"Requested:    tunnel vxlan (UDP 8472), host routing legacy",
				"Routing:      Network: Unknown   Host: Unknown",
				"Rollout:      not started",
				"Note:         the operator has not yet seen generation 1",
				"none yet: the routemode operator has not reported",
				"no RoutingNode objects yet",
			},
		},
		"paused geneve with legacy host routing": {
			rm: &v1alpha1.RoutingMode{
				ObjectMeta: metav1.ObjectMeta{Name: "default", Generation: 3},
				Spec: v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelGeneve, TunnelPort: 6081,
					Rollout: v1alpha1.RolloutSpec{Paused: true}},
				Status: v1alpha1.RoutingModeStatus{ObservedGeneration: 3, Phase: v1alpha1.PhasePaused,
					Datapath: v1alpha1.DatapathSummary{Routing: v1alpha1.ActualRoutingTunnel, HostRouting: "legacy"}},
			},
			want: []string{
				"tunnel geneve (UDP 6081)",
				"Network: Tunnel   Host: Legacy",
				"Rollout:      Paused (resume with routemodectl rollout resume)",
			},
		},
		"pause requested while a batch runs": {
			rm: &v1alpha1.RoutingMode{
				ObjectMeta: metav1.ObjectMeta{Name: "default", Generation: 3},
				Spec:       v1alpha1.RoutingModeSpec{Rollout: v1alpha1.RolloutSpec{Paused: true}},
				Status:     v1alpha1.RoutingModeStatus{ObservedGeneration: 3, Phase: v1alpha1.PhaseSwitching},
			},
			want: []string{"Switching (pause requested: nodes finish their step, no new batch starts)"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var b bytes.Buffer
			if err := formatStatus(&b, tc.rm, tc.nodes, now); err != nil {
				t.Fatal(err)
			}
			out := b.String()
			mustContain(t, "status", out, tc.want...)
			for _, n := range tc.not {
				if strings.Contains(out, n) {
					t.Errorf("status contains %q:\n%s", n, out)
				}
			}
		})
	}
}

func TestFormatStatusOrders(t *testing.T) {
	var b bytes.Buffer
	rm := &v1alpha1.RoutingMode{ObjectMeta: metav1.ObjectMeta{Name: "default"}, Status: v1alpha1.RoutingModeStatus{
		Conditions: []metav1.Condition{
			cond("Zebra", "True", "Custom", "", time.Second),
			cond(v1alpha1.ConditionNodesFinalized, "True", "Done", "", time.Second),
			cond(v1alpha1.ConditionReady, "True", "Complete", "", time.Second),
		},
	}}
	nodes := []v1alpha1.RoutingNode{node("b", 1, 1, v1alpha1.StepSteady, v1alpha1.SendNative, "", nil), node("a", 1, 1, v1alpha1.StepSteady, v1alpha1.SendNative, "", nil)}
	if err := formatStatus(&b, rm, nodes, now); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	order := []string{"  Ready ", "  NodesFinalized ", "  Zebra ", "  a ", "  b "}
	last := -1
	for _, s := range order {
		i := strings.Index(out, s)
		if i < last {
			t.Fatalf("%q out of order in:\n%s", s, out)
		}
		last = i
	}
}
