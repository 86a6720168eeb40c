package controller

import (
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/routemode/routemode/agent/node"
)

// The agent's own metrics, served with controller-runtime's on the agent's
// metrics port beside the host-routing programs' (hostrouting.Collector).
var (
	reconcileSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "routemode_agent_reconcile_duration_seconds",
		Help:    "Time the agent took to apply its RoutingNode's datapath to the node, per reconcile.",
		Buckets: prometheus.ExponentialBuckets(0.001, 4, 9), // 1 ms to 65 s
	})
	changes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "routemode_agent_changes_total",
		Help: "Changes the agent made to the node (kernel, nftables, files), by kind: the first word of the change line.",
	}, []string{"kind"})
	peers = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "routemode_agent_peers",
		Help: "Peers by the answer to the last health probe over the pod network.",
	}, []string{"state"})
	peerRTT = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "routemode_agent_peer_rtt_seconds",
		Help:    "Round trips of the answered health probes to peers.",
		Buckets: prometheus.ExponentialBuckets(0.00005, 4, 9), // 50 us to 3.3 s
	})
)

func init() {
	metrics.Registry.MustRegister(reconcileSeconds, changes, peers, peerRTT)
}

// record accounts for one reconcile that took d and returned res: the
// round trips of the probes it sent (at most the probe budget in steady
// state), and the peer counts of its status.
func record(d time.Duration, res node.Result) {
	reconcileSeconds.Observe(d.Seconds())
	for _, c := range res.Changes {
		kind, _, _ := strings.Cut(c, " ")
		changes.WithLabelValues(kind).Inc()
	}
	for _, p := range res.Probes {
		if p.Reachable {
			peerRTT.Observe(p.RTT.Seconds())
		}
	}
	var up, down float64
	if s := res.Status.PeerSummary; s != nil {
		up, down = float64(s.Probed-s.Unreachable), float64(s.Unreachable)
	}
	peers.WithLabelValues("reachable").Set(up)
	peers.WithLabelValues("unreachable").Set(down)
}
