package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/routemode/routemode/api/v1alpha1"
)

func newStatusCommand(g *globalOptions) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the cluster's routing mode, the rollout and every node's state",
		Long: `Shows the RoutingMode named default: the requested mode, the routing the nodes'
agents report (Network: Tunnel, Native or Mixed; Host: BPF or Legacy), the
rollout phase and conditions, and one line per node from its RoutingNode.`,
		Example: `  routemodectl status
  kubectl routemode status -o yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := outputFormat(output, "text", "json", "yaml"); err != nil {
				return err
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
	return cmd
}
