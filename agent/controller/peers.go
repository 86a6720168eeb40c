package controller

import (
	"encoding/json"
	"net/http"

	"github.com/routemode/routemode/internal/peertable"
)

// PeersPath is where the agent serves its full peer table, on its metrics
// port: the table grows with the cluster, so it is read from the node on
// request (routemodectl status --node NODE --peers, through the API
// server's node proxy) instead of being written to the RoutingNode.
const PeersPath = "/peers"

// PeerTableHandler serves table() as a JSON array, sorted by node name.
func PeerTableHandler(table func() []peertable.Row) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "only GET", http.StatusMethodNotAllowed)
			return
		}
		rows := table()
		if rows == nil {
			rows = []peertable.Row{}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(rows) // a client gone away is no error of ours
	})
}
