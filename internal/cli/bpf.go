package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/spf13/cobra"
)

// endpoint is one entry of a node's pinned endpoint map, as printed by
// `bpf endpoint list -o json|yaml`.
type endpoint struct {
	IP      string `json:"ip"`
	ID      uint32 `json:"id"`
	Flags   uint16 `json:"flags"`
	IfIndex int    `json:"ifindex"`
	MAC     string `json:"mac"`
	NodeMAC string `json:"nodeMAC"`
	// Line is the entry in cilium bpf endpoint list's format.
	Line string `json:"-"`
}

// endpointLister reads the endpoint map pinned under pinDir. The real one
// (bpf_linux.go) wraps agent/hostrouting.ListEndpoints.
type endpointLister func(pinDir string) ([]endpoint, error)

// defaultPinDir mirrors agent/hostrouting.DefaultPinDir, kept here so that
// the flag's help text works on every platform.
func defaultPinDir(node string) string {
	return "/sys/fs/bpf/routemode/" + sanitizeNode(node)
}

func sanitizeNode(node string) string {
	out := []rune(node)
	for i, r := range out {
		if r == '/' {
			out[i] = '_'
		}
	}
	return string(out)
}

func newBPFCommand(g *globalOptions) *cobra.Command {
	bpf := &cobra.Command{
		Use:   "bpf",
		Short: "Read the eBPF host-routing state of the node this runs on",
	}
	ep := &cobra.Command{
		Use:   "endpoint",
		Short: "Local pod endpoints known to the host-routing programs",
	}
	var node, pinDir, output string
	list := &cobra.Command{
		Use:   "list",
		Short: "List the endpoint map pinned on this node's bpffs",
		Long: `Lists the pods the eBPF host-routing programs deliver to on this node, read
from the endpoint map the routemode agent pins under
/sys/fs/bpf/routemode/<node>. Run it on the node (or in the agent's pod,
e.g. kubectl -n routemode-system exec ds/routemode-agent -- routemodectl bpf endpoint list);
it needs root to open the pinned map.`,
		Example: `  routemodectl bpf endpoint list
  routemodectl bpf endpoint list --node worker-1 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := outputFormat(output, "text", "json", "yaml"); err != nil {
				return err
			}
			dir := pinDir
			if dir == "" {
				if node == "" {
					node = os.Getenv("NODE_NAME")
				}
				if node == "" {
					h, err := g.deps.hostname()
					if err != nil {
						return fmt.Errorf("cannot tell this node's name (%v): pass --node NAME or --pin-dir DIR", err)
					}
					node = h
				}
				dir = defaultPinDir(node)
			}
			eps, err := g.deps.listEndpoints(dir)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				return fmt.Errorf("no endpoint map under %s: this node has not run eBPF host routing (hostRouting: bpf), or the node name is wrong (pass --node NAME as in kubectl get nodes, or --pin-dir DIR)", dir)
			case errors.Is(err, fs.ErrPermission):
				return fmt.Errorf("not allowed to open the endpoint map under %s: run as root on the node, or in the routemode agent's pod", dir)
			case err != nil:
				return err
			}
			switch output {
			case "json":
				if eps == nil {
					eps = []endpoint{}
				}
				return writeJSON(g.streams.Out, eps)
			case "yaml":
				if eps == nil {
					eps = []endpoint{}
				}
				return writeYAML(g.streams.Out, eps)
			}
			if len(eps) == 0 {
				fmt.Fprintf(g.streams.Out, "No endpoints in %s: no local pod is served by eBPF host routing yet\n", dir)
				return nil
			}
			for _, e := range eps {
				fmt.Fprintln(g.streams.Out, e.Line)
			}
			return nil
		},
	}
	list.Flags().StringVar(&node, "node", "", "node whose pins to read (default: $NODE_NAME, else the host name)")
	list.Flags().StringVar(&pinDir, "pin-dir", "", "bpffs directory holding the pins (default: /sys/fs/bpf/routemode/<node>)")
	list.Flags().StringVarP(&output, "output", "o", "text", "output format: text, json or yaml")
	ep.AddCommand(list)
	bpf.AddCommand(ep)
	return bpf
}
