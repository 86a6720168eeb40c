package node

import (
	"slices"
	"sync"

	"github.com/routemode/routemode/internal/peertable"
)

// peerTable is the latest full table, shared with the HTTP handler.
type peerTable struct {
	mu   sync.Mutex
	rows []peertable.Row
}

func (t *peerTable) set(rows []peertable.Row) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.rows = rows
}

// PeerTable returns the full per-peer table of the last reconcile, sorted by
// node name.
func (a *Agent) PeerTable() []peertable.Row {
	a.peerTable.mu.Lock()
	defer a.peerTable.mu.Unlock()
	return slices.Clone(a.peerTable.rows)
}
