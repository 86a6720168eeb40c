package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"

	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/peertable"
)

func newStatusCommand(g *globalOptions) *cobra.Command {
	var (
		output, node, socket string
		peers                bool
		agentPort            int
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the cluster's routing mode, the rollout and every node's state",
		Long: `Shows the RoutingMode named default: the requested mode, the routing the nodes'
agents report (Network: Tunnel, Native or Mixed; Host: BPF or Legacy), the
rollout phase and conditions, and one line per node from its RoutingNode.

A RoutingNode counts its peers and names at most 16 that are not directly
reachable or do not answer; --peers reads the full per-peer table (address,
direct, reachable, round trip, why) from one node's agent: with --node NODE
through the API server's node proxy, which reaches an agent serving its
metrics over plain HTTP (--metrics-secure=false) only, since the API server
does not pass the caller's credentials on; or, inside the agent's pod on the
node (kubectl exec), from the agent's socket with --agent-socket.`,
		Example: `  routemodectl status
  kubectl routemode status -o yaml
  kubectl exec -n routemode-system POD -- routemodectl status --peers --agent-socket /var/run/routemode/agent.sock
  routemodectl status --node worker-1 --peers`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := outputFormat(output, "text", "json", "yaml"); err != nil {
				return err
			}
			if peers != (node != "" || socket != "") || (node != "" && socket != "") {
				return fmt.Errorf("--peers needs one of --node NODE (through the API server) or --agent-socket PATH (inside the agent's pod): routemodectl status --node NODE --peers")
			}
			if peers {
				var rows []peertable.Row
				var err error
				if socket != "" {
					node = "this node"
					rows, err = socketPeers(cmd.Context(), socket)
				} else {
					var cfg *rest.Config
					if cfg, err = g.restConfig(); err != nil {
						return err
					}
					rows, err = fetchPeers(cmd.Context(), cfg, node, agentPort)
				}
				if err != nil {
					return err
				}
				switch output {
				case "json":
					return writeJSON(g.streams.Out, rows)
				case "yaml":
					return writeYAML(g.streams.Out, rows)
				}
				return formatPeers(g.streams.Out, node, rows)
			}
			c, host, err := g.client()
			if err != nil {
				return err
			}
			rm, err := getRoutingMode(cmd.Context(), c, host)
			if err != nil {
				return err
			}
			var nodes v1alpha1.RoutingNodeList
			if err := c.List(cmd.Context(), &nodes); err != nil {
				return fmt.Errorf("cannot list RoutingNodes: %w", explainGetError(err, host))
			}
			switch output {
			case "json", "yaml":
				// Typed reads drop apiVersion and kind; put them back so the
				// output can be read as manifests. managedFields is noise here.
				rm.ManagedFields = nil
				rm.SetGroupVersionKind(v1alpha1.GroupVersion.WithKind("RoutingMode"))
				items := nodes.Items
				for i := range items {
					items[i].ManagedFields = nil
					items[i].SetGroupVersionKind(v1alpha1.GroupVersion.WithKind("RoutingNode"))
				}
				if items == nil {
					items = []v1alpha1.RoutingNode{}
				}
				rep := statusReport{RoutingMode: rm, Nodes: items}
				if output == "json" {
					return writeJSON(g.streams.Out, rep)
				}
				return writeYAML(g.streams.Out, rep)
			default:
				return formatStatus(g.streams.Out, rm, nodes.Items, time.Now())
			}
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text, json or yaml")
	cmd.Flags().StringVar(&node, "node", "", "with --peers: the node whose agent to ask")
	cmd.Flags().BoolVar(&peers, "peers", false, "show the full per-peer table from the agent on --node")
	cmd.Flags().IntVar(&agentPort, "agent-port", DefaultAgentPort, "the agent's metrics port, which serves the peer table")
	cmd.Flags().StringVar(&socket, "agent-socket", "", "with --peers, inside the agent's pod: the agent's socket ("+DefaultAgentSocket+")")
	return cmd
}
