package controller

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/routemode/routemode/agent/health"
	"github.com/routemode/routemode/agent/node"
	"github.com/routemode/routemode/api/v1alpha1"
)

func TestRecordReconcile(t *testing.T) {
	rtts, reconciles := samples(t, peerRTT), samples(t, reconcileSeconds)
	routes := testutil.ToFloat64(changes.WithLabelValues("route"))
	tcx := testutil.ToFloat64(changes.WithLabelValues("tcx"))
	res := node.Result{
		Changes: []string{
			"route replace 10.0.1.0/24 via 192.168.0.130 dev eth0 proto 181",
			"route replace 10.0.2.0/24 via 192.168.0.140 dev eth0 proto 181",
			"tcx ingress eth0: attached rm_from_netdev",
		},
		Status: v1alpha1.RoutingNodeStatus{PeerSummary: &v1alpha1.PeerSummary{Total: 4, Probed: 3, Unreachable: 1}},
		// The probes this reconcile sent: only the answered ones have a
		// round trip to count.
		Probes: []health.Result{
			{Name: "node-2", Reachable: true, RTT: 250 * time.Microsecond},
			{Name: "node-3", Reachable: true, RTT: 900 * time.Microsecond},
			{Name: "node-4"},
		},
	}
	record(40*time.Millisecond, res)
	if d := testutil.ToFloat64(changes.WithLabelValues("route")) - routes; d != 2 {
		t.Errorf("route changes +%v, want +2", d)
	}
	if d := testutil.ToFloat64(changes.WithLabelValues("tcx")) - tcx; d != 1 {
		t.Errorf("tcx changes +%v, want +1", d)
	}
	if up, down := testutil.ToFloat64(peers.WithLabelValues("reachable")), testutil.ToFloat64(peers.WithLabelValues("unreachable")); up != 2 || down != 1 {
		t.Errorf("peers reachable %v unreachable %v, want 2 and 1", up, down)
	}
	// One round trip per answered peer, one duration per reconcile.
	if d := samples(t, peerRTT) - rtts; d != 2 {
		t.Errorf("peer RTT samples +%d, want +2", d)
	}
	if d := samples(t, reconcileSeconds) - reconciles; d != 1 {
		t.Errorf("reconcile duration samples +%d, want +1", d)
	}
}

func samples(t *testing.T, h prometheus.Histogram) uint64 {
	t.Helper()
	var m dto.Metric
	if err := h.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount()
}
