package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

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
		return nil, fmt.Errorf("cannot read the peer table of the agent on %s (port %d, through the API server's node proxy; needs get on nodes/proxy and the agent's --metrics-bind-address): %w", node, port, err)
	}
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
