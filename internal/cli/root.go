// Package cli implements routemodectl, also installable as the kubectl
// plugin kubectl-routemode. Each file holds one command; the formatting of
// what a command prints lives in pure functions, tested without a cluster.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
)

// Streams are the command's standard streams, replaced in tests.
type Streams struct {
	In     io.Reader
	Out    io.Writer
	ErrOut io.Writer
}

// Main runs routemodectl with args (without the program name) and returns
// the process exit code. name is how the program was invoked, so that help
// says "kubectl routemode" when run as a kubectl plugin.
func Main(ctx context.Context, name string, args []string, s Streams) int {
	cmd := NewRootCommand(s, defaultDeps())
	if strings.HasPrefix(filepath.Base(name), "kubectl-") {
		cmd.Annotations = map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl routemode"}
	}
	cmd.SetArgs(args)
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(s.ErrOut, "Error: %v\n", err)
		return 1
	}
	return 0
}

// deps are what commands reach outside the process for, other than the
// cluster: replaced in tests.
type deps struct {
	listEndpoints    endpointLister
	listDirectRoutes directRouteLister
	listMetrics      metricLister
	openMonitor      monitorOpener
	ifName           func(ifindex int) (string, error)
	hostname         func() (string, error)
}

func defaultDeps() deps {
	return deps{
		listEndpoints: listPinnedEndpoints, listDirectRoutes: listPinnedDirectRoutes, listMetrics: listPinnedMetrics,
		openMonitor: openPinnedMonitor, ifName: interfaceName, hostname: os.Hostname,
	}
}

// globalOptions are the flags every command has.
type globalOptions struct {
	kubeconfig string
	context    string
	streams    Streams
	deps       deps
}

// NewRootCommand builds the command tree.
func NewRootCommand(s Streams, d deps) *cobra.Command {
	g := &globalOptions{streams: s, deps: d}
	root := &cobra.Command{
		Use:   "routemodectl",
		Short: "Inspect and steer routemode's live switch between tunnel and native pod routing",
		Long: `routemodectl shows and steers routemode: the cluster's RoutingMode (named
default), its node-by-node rollout, and the per-node RoutingNode objects.
It also translates Cilium's cilium-config to and from a RoutingMode.

Install it as kubectl-routemode on your PATH to use it as "kubectl routemode".`,
		SilenceErrors: true, // Main prints the error once
		SilenceUsage:  true, // a usage dump would bury the error
	}
	root.SetIn(s.In)
	root.SetOut(s.Out)
	root.SetErr(s.ErrOut)
	pf := root.PersistentFlags()
	pf.StringVar(&g.kubeconfig, "kubeconfig", "", "path to the kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	pf.StringVar(&g.context, "context", "", "kubeconfig context to use (default: the current context)")

	root.AddCommand(
		newStatusCommand(g),
		newImportCommand(g),
		newExportCommand(g),
		newRolloutCommand(g),
		newBPFCommand(g),
		newMonitorCommand(g),
	)
	return root
}

// errUsage marks errors in the command line itself.
var errUsage = errors.New("usage")

// outputFormat validates -o.
func outputFormat(v string, allowed ...string) error {
	for _, a := range allowed {
		if v == a {
			return nil
		}
	}
	return fmt.Errorf("%w: unknown output format %q: use one of %s", errUsage, v, strings.Join(allowed, ", "))
}
