package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

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

// SocketName is the agent's unix socket in its state directory, serving
// PeersPath to whoever may open it (root on the node: the socket is 0600),
// as cilium-health status reads cilium.sock. Through the API server's node
// proxy the table cannot be read from an agent whose metrics are served
// over HTTPS with authentication: the API server does not pass the
// caller's credentials on, so the agent sees an anonymous request. Inside
// the agent's pod, routemodectl status --peers --agent-socket reads it
// here instead (kubectl exec).
const SocketName = "agent.sock"

// ServePeersSocket serves table() on PeersPath at the unix socket path
// until ctx ends, replacing a socket a previous agent left.
func ServePeersSocket(ctx context.Context, path string, table func() []peertable.Row) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing the old socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = ln.Close()
		return err
	}
	mux := http.NewServeMux()
	mux.Handle(PeersPath, PeerTableHandler(table))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	// Closing the listener removes the socket.
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
