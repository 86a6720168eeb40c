package node

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"testing"
	"time"

	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/routemode/routemode/agent/datapath"
	"github.com/routemode/routemode/agent/endpoint"
	"github.com/routemode/routemode/agent/health"
	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/peertable"
)

var (
	tunnelSpec = &v1alpha1.NodeDatapath{Tunnel: v1alpha1.TunnelVXLAN, SendMode: v1alpha1.SendTunnel, HostRouting: v1alpha1.HostRoutingLegacy}
	self       = datapath.Node{Name: "node-1", IP: netip.MustParseAddr("192.168.0.120"), PodCIDR: netip.MustParsePrefix("10.0.0.0/24")}
	peer2      = datapath.Peer{Node: datapath.Node{Name: "node-2", IP: netip.MustParseAddr("192.168.0.130"), PodCIDR: netip.MustParsePrefix("10.0.1.0/24")}, Direct: true}
	peer3      = datapath.Peer{Node: datapath.Node{Name: "node-3", IP: netip.MustParseAddr("10.9.0.3"), PodCIDR: netip.MustParsePrefix("10.0.2.0/24")}, Why: "via gateway 192.168.0.1"}
	healthEP   = endpoint.Endpoint{ContainerID: health.ContainerID, IfName: "eth0"}
	podEP      = endpoint.Endpoint{ContainerID: "pod-a", IfName: "eth0"}
)

// tunnelled is a node that applied tunnelSpec: its peer routes go through
// rm_vxlan.
func tunnelled() observation {
	return observation{
		Generation: 3, Spec: tunnelSpec, Self: self, Peers: []datapath.Peer{peer3, peer2},
		HostRouting: v1alpha1.HostRoutingLegacy,
		ReadBack: &readBack{RouteMTU: 1450, Endpoints: []endpoint.Endpoint{healthEP, podEP}, State: datapath.State{
			Tunnel: &datapath.Tunnel{Name: datapath.TunnelDevice},
			Routes: map[netip.Prefix]datapath.Route{
				peer2.PodCIDR: {Dst: peer2.PodCIDR, Dev: datapath.TunnelDevice},
				peer3.PodCIDR: {Dst: peer3.PodCIDR, Dev: datapath.TunnelDevice},
			},
		}},
		Probes: map[string]health.Result{
			"node-2": {Name: "node-2", Reachable: true, RTT: 300 * time.Microsecond},
			"node-3": {Name: "node-3", Reachable: true, RTT: 200 * time.Nanosecond},
		},
	}
}

func with(o observation, f func(*observation)) observation {
	f(&o)
	return o
}

type conditionCase struct {
	o               observation
	status          metav1.ConditionStatus
	reason, message string
}

func testCondition(t *testing.T, typ string, condition func(observation) metav1.Condition, cases map[string]conditionCase) {
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := condition(tc.o)
			if c.Type != typ || c.Status != tc.status || c.Reason != tc.reason || c.Message != tc.message {
				t.Errorf("got %s=%s %s %q, want %s %s %q", c.Type, c.Status, c.Reason, c.Message, tc.status, tc.reason, tc.message)
			}
		})
	}
}

func TestDatapathAppliedCondition(t *testing.T) {
	refusal := &datapath.Refusal{Reason: datapath.ReasonTunnelUnsupported, Message: "no geneve"}
	testCondition(t, v1alpha1.ConditionDatapathApplied, datapathAppliedCondition, map[string]conditionCase{
		"no datapath": {
			o:      observation{Generation: 1},
			status: metav1.ConditionUnknown, reason: ReasonNoDatapath, message: "spec.datapath is unset: the kernel is left alone",
		},
		"refused": {
			o:      with(tunnelled(), func(o *observation) { o.Err = refusal }),
			status: metav1.ConditionFalse, reason: datapath.ReasonTunnelUnsupported, message: "no geneve",
		},
		"refusal wrapped by a step": {
			o:      with(tunnelled(), func(o *observation) { o.Err = fmt.Errorf("render: %w", refusal) }),
			status: metav1.ConditionFalse, reason: datapath.ReasonTunnelUnsupported, message: "render: no geneve",
		},
		"plain error": {
			o:      with(tunnelled(), func(o *observation) { o.Err = errors.New("netlink: EPERM") }),
			status: metav1.ConditionFalse, reason: ReasonApplyFailed, message: "netlink: EPERM",
		},
		"host routing failed": {
			o:      with(tunnelled(), func(o *observation) { o.Err = failed(ReasonHostRoutingFailed, errors.New("no bpf")) }),
			status: metav1.ConditionFalse, reason: ReasonHostRoutingFailed, message: "no bpf",
		},
		"applied": {
			o:      tunnelled(),
			status: metav1.ConditionTrue, reason: ReasonApplied, message: "tunnel vxlan, sending Tunnel, route MTU 1450, host routing legacy",
		},
	})
}

func TestPeersHealthyCondition(t *testing.T) {
	testCondition(t, v1alpha1.ConditionPeersHealthy, peersHealthyCondition, map[string]conditionCase{
		"no datapath": {
			o:      observation{Generation: 1, Peers: []datapath.Peer{peer2}},
			status: metav1.ConditionUnknown, reason: ReasonNoDatapath, message: "peers are probed once a datapath is applied",
		},
		"not applied": {
			o:      with(tunnelled(), func(o *observation) { o.Err, o.Probes = errors.New("boom"), nil }),
			status: metav1.ConditionUnknown, reason: ReasonNotApplied, message: "peers are probed once the datapath is applied",
		},
		"no peers": {
			o:      with(tunnelled(), func(o *observation) { o.Peers, o.Probes = nil, map[string]health.Result{} }),
			status: metav1.ConditionTrue, reason: ReasonNoPeers, message: "no peers to probe",
		},
		"all reachable": {
			o:      tunnelled(),
			status: metav1.ConditionTrue, reason: ReasonAllReachable, message: "all 2 peers answer on the pod network",
		},
		"some unreachable, named in order": {
			o: with(tunnelled(), func(o *observation) {
				o.Probes = map[string]health.Result{"node-3": {Name: "node-3"}, "node-2": {Name: "node-2"}, "node-4": {Name: "node-4", Reachable: true}}
			}),
			status: metav1.ConditionFalse, reason: ReasonPeersUnreachable, message: "2 of 3 peers do not answer on the pod network: node-2, node-3",
		},
	})
}

func TestDatapathStatus(t *testing.T) {
	native := map[netip.Prefix]datapath.Route{
		peer2.PodCIDR: {Dst: peer2.PodCIDR, Dev: "eth0"},
		peer3.PodCIDR: {Dst: peer3.PodCIDR, Dev: datapath.TunnelDevice},
	}
	for name, tc := range map[string]struct {
		o    observation
		want v1alpha1.NodeDatapathStatus
	}{
		"not read back: only the host routing in force": {
			o:    with(tunnelled(), func(o *observation) { o.ReadBack, o.HostRouting = nil, v1alpha1.HostRoutingBPF }),
			want: v1alpha1.NodeDatapathStatus{HostRouting: v1alpha1.HostRoutingBPF},
		},
		"tunnel routes only": {
			o:    tunnelled(),
			want: v1alpha1.NodeDatapathStatus{TunnelDevice: datapath.TunnelDevice, SendMode: v1alpha1.SendTunnel, RouteMTU: 1450, HostRouting: v1alpha1.HostRoutingLegacy, Endpoints: 1},
		},
		"any direct route means native": {
			o:    with(tunnelled(), func(o *observation) { o.ReadBack.State.Routes = native }),
			want: v1alpha1.NodeDatapathStatus{TunnelDevice: datapath.TunnelDevice, SendMode: v1alpha1.SendNative, RouteMTU: 1450, HostRouting: v1alpha1.HostRoutingLegacy, Endpoints: 1},
		},
		"no routes: the spec's send mode": {
			o: with(tunnelled(), func(o *observation) {
				o.ReadBack = &readBack{RouteMTU: 1500}
			}),
			want: v1alpha1.NodeDatapathStatus{SendMode: v1alpha1.SendTunnel, RouteMTU: 1500, HostRouting: v1alpha1.HostRoutingLegacy},
		},
		"the health endpoint's route MTU is the one pods have": {
			o: with(tunnelled(), func(o *observation) {
				o.ReadBack.State.PodMTU = map[string]int{"routemode-health/eth0": 1500, "pod-a/eth0": 1400}
			}),
			want: v1alpha1.NodeDatapathStatus{TunnelDevice: datapath.TunnelDevice, SendMode: v1alpha1.SendTunnel, RouteMTU: 1500, HostRouting: v1alpha1.HostRoutingLegacy, Endpoints: 1},
		},
	} {
		t.Run(name, func(t *testing.T) {
			if got := datapathStatus(tc.o); got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestPeerRows(t *testing.T) {
	noCIDR := datapath.Peer{Node: datapath.Node{Name: "node-0", IP: netip.MustParseAddr("192.168.0.110")}, Direct: true}
	for name, tc := range map[string]struct {
		o    observation
		want []peertable.Row
	}{
		"none": {o: observation{Spec: tunnelSpec}, want: []peertable.Row{}},
		"probed, sorted by name, RTT at least 1 µs": {
			o: tunnelled(),
			want: []peertable.Row{
				{Node: "node-2", NodeIP: "192.168.0.130", Direct: true, Probed: true, Reachable: true, RTTMicroseconds: 300},
				{Node: "node-3", NodeIP: "10.9.0.3", Probed: true, Reachable: true, RTTMicroseconds: 1, Message: "not directly reachable: via gateway 192.168.0.1"},
			},
		},
		"not probed: why each cannot be": {
			o: with(tunnelled(), func(o *observation) {
				o.Err, o.Probes = errors.New("boom"), nil
				o.Peers = append(o.Peers, noCIDR)
			}),
			want: []peertable.Row{
				{Node: "node-0", NodeIP: "192.168.0.110", Direct: true, Message: "no podCIDR"},
				{Node: "node-2", NodeIP: "192.168.0.130", Direct: true},
				{Node: "node-3", NodeIP: "10.9.0.3", Message: "not directly reachable: via gateway 192.168.0.1"},
			},
		},
		"the rendered route's message first, then the probe's": {
			o: with(tunnelled(), func(o *observation) {
				o.Routes = map[string]datapath.PeerRoute{"node-3": {Name: "node-3", Message: "tunnelled: not direct"}}
				o.Probes = map[string]health.Result{"node-2": {Name: "node-2", Reachable: true, RTT: time.Millisecond}, "node-3": {Name: "node-3"}}
			}),
			want: []peertable.Row{
				{Node: "node-2", NodeIP: "192.168.0.130", Direct: true, Probed: true, Reachable: true, RTTMicroseconds: 1000},
				{Node: "node-3", NodeIP: "10.9.0.3", Probed: true, Message: "tunnelled: not direct; health endpoint 10.0.2.2 does not answer"},
			},
		},
	} {
		t.Run(name, func(t *testing.T) {
			if got := peerRows(tc.o); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestComputeStatus(t *testing.T) {
	o := tunnelled()
	st := computeStatus(v1alpha1.RoutingNodeStatus{}, o)
	if st.ObservedGeneration != 3 || st.NodeIP != "192.168.0.120" || st.PodCIDR != "10.0.0.0/24" ||
		st.VTEPMAC != datapath.VTEPMAC(self.IP).String() || st.Capabilities == nil || st.PeerSummary == nil || st.PeerSummary.Total != 2 || st.PeerSummary.NotDirect != 1 {
		t.Fatalf("status: %+v", st)
	}
	if len(st.Conditions) != 2 {
		t.Fatalf("conditions: %+v", st.Conditions)
	}
	for _, c := range st.Conditions {
		if c.ObservedGeneration != 3 || c.Status != metav1.ConditionTrue {
			t.Errorf("condition %s: %+v", c.Type, c)
		}
	}

	// A later reconcile with the same outcome keeps the transition times;
	// one whose outcome changes moves only the condition that changed.
	long := metav1.NewTime(time.Now().Add(-time.Hour).Truncate(time.Second))
	for i := range st.Conditions {
		st.Conditions[i].LastTransitionTime = long
	}
	again := computeStatus(st, with(o, func(o *observation) { o.Generation = 4 }))
	for _, c := range again.Conditions {
		if !c.LastTransitionTime.Equal(&long) || c.ObservedGeneration != 4 {
			t.Errorf("unchanged %s: transition %s, observed generation %d", c.Type, c.LastTransitionTime, c.ObservedGeneration)
		}
	}
	down := computeStatus(st, with(o, func(o *observation) { o.Probes = map[string]health.Result{"node-2": {Name: "node-2"}} }))
	if c := meta.FindStatusCondition(down.Conditions, v1alpha1.ConditionPeersHealthy); c.Status != metav1.ConditionFalse || c.LastTransitionTime.Equal(&long) {
		t.Errorf("PeersHealthy after a peer went away: %+v", c)
	}
	if c := meta.FindStatusCondition(down.Conditions, v1alpha1.ConditionDatapathApplied); !c.LastTransitionTime.Equal(&long) {
		t.Errorf("DatapathApplied moved: %+v", c)
	}

	// Without a spec, the node's facts are still reported.
	none := computeStatus(v1alpha1.RoutingNodeStatus{}, observation{Generation: 1, Self: self, Peers: []datapath.Peer{peer2}})
	if none.ObservedGeneration != 1 || none.NodeIP == "" || none.PeerSummary == nil || none.PeerSummary.Total != 1 || none.Datapath != (v1alpha1.NodeDatapathStatus{}) {
		t.Errorf("status without a spec: %+v", none)
	}
}

func TestRequeueAfter(t *testing.T) {
	ok := v1alpha1.RoutingNodeStatus{Conditions: []metav1.Condition{{Type: "A", Status: metav1.ConditionTrue}}}
	notYet := v1alpha1.RoutingNodeStatus{Conditions: []metav1.Condition{{Type: "A", Status: metav1.ConditionTrue}, {Type: "B", Status: metav1.ConditionUnknown}}}
	for _, tc := range []struct {
		st     v1alpha1.RoutingNodeStatus
		resync time.Duration
		want   time.Duration
	}{
		{ok, 10 * time.Second, 10 * time.Second},
		{notYet, 10 * time.Second, 2 * time.Second},
		{notYet, time.Second, time.Second},
	} {
		if got := requeueAfter(tc.st, tc.resync); got != tc.want {
			t.Errorf("requeueAfter(%v, %s) = %s, want %s", tc.st.Conditions, tc.resync, got, tc.want)
		}
	}
}

// A resync whose probes answer with other round trips must produce the same
// status, or every resync would write it.
func TestComputeStatusIgnoresRTTJitter(t *testing.T) {
	o := tunnelled()
	fast := computeStatus(v1alpha1.RoutingNodeStatus{}, o)
	slow := computeStatus(fast, with(o, func(o *observation) {
		o.Probes = map[string]health.Result{}
		for _, p := range o.Peers {
			o.Probes[p.Name] = health.Result{Name: p.Name, Reachable: true, RTT: 37 * time.Millisecond}
		}
	}))
	if !apiequality.Semantic.DeepEqual(fast, slow) {
		t.Errorf("status changed with the round trips alone:\n%+v\n%+v", fast, slow)
	}
}
