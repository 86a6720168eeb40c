package node

import (
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/routemode/routemode/agent/health"
	"github.com/routemode/routemode/internal/peertable"
)

// peerTable is the latest table, shared with the HTTP handler.
type peerTable struct {
	mu   sync.Mutex
	rows []peertable.Row
}

// PeerTable returns the full per-peer table of the last reconcile, sorted by
// node name.
func (a *Agent) PeerTable() []peertable.Row {
	a.peerTable.mu.Lock()
	defer a.peerTable.mu.Unlock()
	return slices.Clone(a.peerTable.rows)
}

// peerStatus builds the full table (kept on the agent) and its bounded
// summary (written to status); probes is nil when nothing was probed.
func (r *run) peerStatus(probes map[string]health.Result) {
	rows := make([]peertable.Row, 0, len(r.peers))
	for _, p := range r.peers {
		row := peertable.Row{Node: p.Name, Direct: p.Direct}
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
	slices.SortFunc(rows, func(a, b peertable.Row) int { return strings.Compare(a.Node, b.Node) })
	r.a.peerTable.mu.Lock()
	r.a.peerTable.rows = rows
	r.a.peerTable.mu.Unlock()
	r.status.PeerSummary = peertable.Summarize(rows)
}
