package peertable

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/routemode/routemode/api/v1alpha1"
)

// table is n peers with realistic cloud node names, every one direct and
// answering except those in unreachable; rtt sets every round trip.
func table(n int, unreachable map[int]bool, rtt int64) []Row {
	rows := make([]Row, n)
	for i := range rows {
		rows[i] = Row{Node: fmt.Sprintf("ip-10-%d-%d-%d.eu-west-1.compute.internal", i/65536, i/256%256, i%256),
			NodeIP: fmt.Sprintf("10.%d.%d.%d", i/65536, i/256%256, i%256), Direct: true, Probed: true, Reachable: !unreachable[i],
			RTTMicroseconds: rtt + int64(i%7)}
		if unreachable[i] {
			rows[i].RTTMicroseconds, rows[i].Message = 0, "health endpoint 10.0.0.2 does not answer"
		}
	}
	return rows
}

func TestSummaryStaysUnder4KBWith5000Peers(t *testing.T) {
	down := map[int]bool{}
	for i := range 20 {
		down[i*250] = true
	}
	s := Summarize(table(5000, down, 400))
	if s.Total != 5000 || s.Probed != 5000 || s.Unreachable != 20 || s.NotDirect != 0 {
		t.Errorf("counts %+v, want 5000 peers, 20 unreachable", s)
	}
	if len(s.Problems) != v1alpha1.MaxListedPeers || s.ProblemsNotListed != 4 {
		t.Errorf("lists %d and counts %d more, want 16 and 4", len(s.Problems), s.ProblemsNotListed)
	}
	// The whole object as the API server stores it, with the agent's other
	// status fields at their largest realistic size.
	name := "ip-10-0-0-1.eu-west-1.compute.internal"
	rn := v1alpha1.RoutingNode{
		TypeMeta: metav1.TypeMeta{APIVersion: "routemode.io/v1alpha1", Kind: "RoutingNode"},
		ObjectMeta: metav1.ObjectMeta{Name: name, UID: "0f8e3c0a-5c4b-4bde-9a8f-3b1c2d4e5f60", ResourceVersion: "123456789", Generation: 42,
			CreationTimestamp: metav1.Now(),
			Annotations: map[string]string{"routemode.io/step-started": time.Now().UTC().Format(time.RFC3339Nano),
				"routemode.io/previous-datapath": `{"tunnel":"vxlan","tunnelPort":8472,"sendMode":"Tunnel","routeMTU":"Tunnel","hostRouting":"legacy"}`},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: name, UID: "1f8e3c0a-5c4b-4bde-9a8f-3b1c2d4e5f60"}}},
		Spec: v1alpha1.RoutingNodeSpec{NodeName: name, Step: v1alpha1.StepSwitch, TargetGeneration: 7, Datapath: &v1alpha1.NodeDatapath{
			Tunnel: v1alpha1.TunnelVXLAN, TunnelPort: 8472, SendMode: v1alpha1.SendNative, NativeRoutingCIDR: "10.0.0.0/8",
			AutoDirectNodeRoutes: true, RouteMTU: v1alpha1.RouteMTUTunnel, LooseRPFilter: true, HostRouting: v1alpha1.HostRoutingBPF}},
		Status: v1alpha1.RoutingNodeStatus{ObservedGeneration: 42, NodeIP: "10.0.0.1", PodCIDR: "10.128.0.0/24", VTEPMAC: "0e:72:0a:00:00:01",
			Capabilities: &v1alpha1.NodeCapabilities{Kernel: "6.18.44-generic", VXLAN: true, BPFHostRouting: true, TCX: true},
			Datapath:     v1alpha1.NodeDatapathStatus{TunnelDevice: "rm_vxlan", SendMode: v1alpha1.SendNative, RouteMTU: 1450, HostRouting: v1alpha1.HostRoutingBPF, Endpoints: 110},
			Conditions: []metav1.Condition{
				{Type: v1alpha1.ConditionDatapathApplied, Status: metav1.ConditionTrue, Reason: "Applied", ObservedGeneration: 42, LastTransitionTime: metav1.Now(),
					Message: "tunnel vxlan, sending Native, route MTU 1450, host routing bpf"},
				{Type: v1alpha1.ConditionPeersHealthy, Status: metav1.ConditionFalse, Reason: "PeersUnreachable", ObservedGeneration: 42, LastTransitionTime: metav1.Now(),
					Message: "20 of 5000 peers do not answer on the pod network: ip-10-0-0-0.eu-west-1.compute.internal, ip-10-0-0-250.eu-west-1.compute.internal, ip-10-0-1-244.eu-west-1.compute.internal and 17 more"}},
			PeerSummary: s},
	}
	raw, err := json.Marshal(rn)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("RoutingNode with 5,000 peers, 20 unreachable: %d bytes", len(raw))
	if len(raw) >= 4096 {
		t.Errorf("RoutingNode is %d bytes, want < 4 KB", len(raw))
	}
}

func TestSummaryListsProblemsOnly(t *testing.T) {
	rows := table(40, map[int]bool{3: true}, 400)
	rows[7].Direct = false
	rows[9].Probed, rows[9].Reachable = false, false // not probed: not a problem
	s := Summarize(rows)
	want := []v1alpha1.PeerStatus{
		{Node: rows[3].Node, NodeIP: rows[3].NodeIP, Direct: true},
		{Node: rows[7].Node, NodeIP: rows[7].NodeIP, Reachable: true},
	}
	if !reflect.DeepEqual(s.Problems, want) || s.NotDirect != 1 || s.Unreachable != 1 || s.Probed != 39 || s.ProblemsNotListed != 0 {
		t.Errorf("summary %+v, want the unreachable and the indirect peer only", s)
	}
	if Summarize(nil) != nil {
		t.Errorf("a node without peers reports a summary")
	}
}

// Round trips jitter on every probe; the status must not, or every resync
// would write it.
func TestSummaryIgnoresRTTJitter(t *testing.T) {
	down := map[int]bool{5: true}
	if a, b := Summarize(table(100, down, 300)), Summarize(table(100, down, 9000)); !reflect.DeepEqual(a, b) {
		t.Errorf("summaries differ with RTT alone:\n%+v\n%+v", a, b)
	}
}
