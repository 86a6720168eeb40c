package node

import (
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/routemode/routemode/agent/health"
	"github.com/routemode/routemode/api/v1alpha1"
)

// PeerReport is one row of the agent's full peer table: what `routemodectl
// status --node NODE --peers` shows. The table grows with the cluster, so it
// stays on the node and is served on request; the RoutingNode carries only
// its summary.
type PeerReport struct {
	Node      string `json:"node"`
	NodeIP    string `json:"nodeIP,omitempty"`
	Direct    bool   `json:"direct"`
	Probed    bool   `json:"probed"`
	Reachable bool   `json:"reachable"`
	// RTTMicroseconds is the last answered probe's round trip.
	RTTMicroseconds int64 `json:"rttMicroseconds,omitempty"`
	// Message says why the peer is not direct or does not answer.
	Message string `json:"message,omitempty"`
}

// problem reports whether the peer belongs in the status's bounded list.
func (p PeerReport) problem() bool { return !p.Direct || (p.Probed && !p.Reachable) }

// peerTable is the latest table, shared with the HTTP handler.
type peerTable struct {
	mu   sync.Mutex
	rows []PeerReport
}

// PeerTable returns the full per-peer table of the last reconcile, sorted by
// node name.
func (a *Agent) PeerTable() []PeerReport {
	a.peerTable.mu.Lock()
	defer a.peerTable.mu.Unlock()
	return slices.Clone(a.peerTable.rows)
}

// peerStatus builds the full table (kept on the agent) and its bounded
// summary (written to status); probes is nil when nothing was probed.
func (r *run) peerStatus(probes map[string]health.Result) {
	rows := make([]PeerReport, 0, len(r.peers))
	for _, p := range r.peers {
		row := PeerReport{Node: p.Name, Direct: p.Direct}
		if p.IP.IsValid() {
			row.NodeIP = p.IP.String()
		}
		var msgs []string
		if rt, ok := r.routes[p.Name]; ok && rt.Message != "" {
			msgs = append(msgs, rt.Message)
		} else if !p.Direct && p.Why != "" {
			msgs = append(msgs, "not directly reachable: "+p.Why)
		}
		if res, ok := probes[p.Name]; ok {
			row.Probed, row.Reachable = true, res.Reachable
			if res.Reachable {
				row.RTTMicroseconds = max(res.RTT.Microseconds(), 1)
			} else {
				msgs = append(msgs, fmt.Sprintf("health endpoint %s does not answer", healthIP(p.PodCIDR)))
			}
		} else if !p.PodCIDR.IsValid() {
			msgs = append(msgs, "no podCIDR")
		}
		row.Message = strings.Join(msgs, "; ")
		rows = append(rows, row)
	}
	slices.SortFunc(rows, func(a, b PeerReport) int { return strings.Compare(a.Node, b.Node) })
	r.a.peerTable.mu.Lock()
	r.a.peerTable.rows = rows
	r.a.peerTable.mu.Unlock()
	r.status.PeerSummary = Summarize(rows)
}

// Summarize counts the peers and lists the first MaxListedPeers with a
// problem, so the status has the same size at 3 nodes and at 5,000. It
// holds no round-trip times: a resync whose RTTs jitter writes nothing.
func Summarize(rows []PeerReport) *v1alpha1.PeerSummary {
	if len(rows) == 0 {
		return nil
	}
	s := &v1alpha1.PeerSummary{Total: int32(len(rows))}
	for _, p := range rows {
		if !p.Direct {
			s.NotDirect++
		}
		if p.Probed {
			s.Probed++
			if !p.Reachable {
				s.Unreachable++
			}
		}
		if !p.problem() {
			continue
		}
		if len(s.Problems) == v1alpha1.MaxListedPeers {
			s.ProblemsNotListed++
			continue
		}
		s.Problems = append(s.Problems, v1alpha1.PeerStatus{Node: p.Node, NodeIP: p.NodeIP, Direct: p.Direct, Reachable: p.Reachable})
	}
	return s
}
