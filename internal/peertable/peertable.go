// Package peertable is a node's full view of its peers, which the agent
// keeps and serves (it grows with the cluster), and its bounded summary,
// which the agent writes to its RoutingNode (it does not).
package peertable

import "github.com/routemode/routemode/api/v1alpha1"

// Row is one row of the agent's full peer table: what `routemodectl
// status --node NODE --peers` shows. The table grows with the cluster, so it
// stays on the node and is served on request; the RoutingNode carries only
// its summary.
type Row struct {
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
func (p Row) problem() bool { return !p.Direct || (p.Probed && !p.Reachable) }

// Summarize counts the peers and lists the first MaxListedPeers with a
// problem, so the status has the same size at 3 nodes and at 5,000. It
// holds no round-trip times: a resync whose RTTs jitter writes nothing.
func Summarize(rows []Row) *v1alpha1.PeerSummary {
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
