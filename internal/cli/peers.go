package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"text/tabwriter"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	agentcontroller "github.com/routemode/routemode/agent/controller"
	"github.com/routemode/routemode/internal/peertable"
)

// DefaultAgentPort is the agent's metrics port (config/agent/daemonset.yaml),
// which also serves the peer table.
const DefaultAgentPort = 9878

// fetchPeers reads the agent's full peer table on node through the API
// server's node proxy (the agent runs on the host network, so the node's
// address and the agent's port reach it). It needs get on nodes/proxy.
func fetchPeers(ctx context.Context, cfg *rest.Config, node string, port int) ([]peertable.Row, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	raw, err := cs.CoreV1().RESTClient().Get().Resource("nodes").Name(node + ":" + strconv.Itoa(port)).
		SubResource("proxy").Suffix("peers").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("cannot read the peer table of the agent on %s (port %d, through the API server's node proxy; needs get on nodes/proxy, and an agent serving metrics over plain HTTP: with --metrics-secure it sees the proxied request as anonymous; then read it inside the agent's pod: kubectl exec -n routemode-system POD -- routemodectl status --peers --agent-socket %s): %w", node, port, DefaultAgentSocket, err)
	}
	return decodePeers(raw, node)
}

// DefaultAgentSocket is the agent's socket in the DaemonSet's state
// directory (config/agent/daemonset.yaml's --state-dir).
const DefaultAgentSocket = "/var/run/routemode/agent.sock"

// socketPeers reads the peer table from the agent's unix socket, as
// routemodectl does inside the agent's pod (kubectl exec): there it
// needs no credentials, only the root that may open the socket.
func socketPeers(ctx context.Context, path string) ([]peertable.Row, error) {
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent"+agentcontroller.PeersPath, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot read the peer table from the agent's socket %s (run this inside the agent's pod, kubectl exec -n routemode-system POD -- routemodectl status --peers --agent-socket %s): %w", path, DefaultAgentSocket, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("the agent's socket %s answered %s: %s", path, resp.Status, raw)
	}
	return decodePeers(raw, "this node")
}

// decodePeers reads an agent's answer.
func decodePeers(raw []byte, node string) ([]peertable.Row, error) {
	var rows []peertable.Row
	if err := json.Unmarshal(raw, &rows); err != nil {
		return nil, fmt.Errorf("the agent on %s answered something other than a peer table: %w", node, err)
	}
	return rows, nil
}

// formatPeers writes one line per peer.
func formatPeers(w io.Writer, node string, rows []peertable.Row) error {
	fmt.Fprintf(w, "Peers of %s: %d\n", node, len(rows))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  PEER\tNODE IP\tDIRECT\tREACHABLE\tRTT\tMESSAGE")
	for _, p := range rows {
		reach, rtt := "-", "-"
		if p.Probed {
			reach = strconv.FormatBool(p.Reachable)
		}
		if p.RTTMicroseconds > 0 {
			rtt = fmt.Sprintf("%dµs", p.RTTMicroseconds)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%t\t%s\t%s\t%s\n", p.Node, dash(p.NodeIP), p.Direct, reach, rtt, dash(oneLine(p.Message)))
	}
	return tw.Flush()
}
