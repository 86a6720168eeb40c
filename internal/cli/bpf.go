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

// resolvePinDir is --pin-dir, else the pin directory of --node, $NODE_NAME
// or the host name, in that order.
func resolvePinDir(g *globalOptions, node, pinDir string) (string, error) {
	if pinDir != "" {
		return pinDir, nil
	}
	if node == "" {
		node = os.Getenv("NODE_NAME")
	}
	if node == "" {
		h, err := g.deps.hostname()
		if err != nil {
			return "", fmt.Errorf("cannot tell this node's name (%v): pass --node NAME or --pin-dir DIR", err)
		}
		node = h
	}
	return defaultPinDir(node), nil
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

// directRoute is one entry of a node's pinned direct-route map, as printed
// by `bpf route list -o json|yaml`.
type directRoute struct {
	Destination string `json:"destination"`
	Gateway     string `json:"gateway"`
	IfIndex     int    `json:"ifindex"`
	MTU         int    `json:"mtu"`
	// Line is the entry as text: 10.0.1.0/24 via 192.168.0.130 ifindex=2 mtu=1500.
	Line string `json:"-"`
}

// directRouteLister reads the direct-route map pinned under pinDir. The real
// one (bpf_linux.go) wraps agent/hostrouting.ListDirectRoutes.
type directRouteLister func(pinDir string) ([]directRoute, error)

// metric is one nonzero counter of a node's host-routing programs, as
// printed by `bpf metrics list -o json|yaml`.
type metric struct {
	Program string `json:"program"`
	Verdict string `json:"verdict"`
	Reason  string `json:"reason"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// metricLister reads the counters pinned under pinDir. The real one
// (bpf_linux.go) wraps agent/hostrouting.ReadCounters.
type metricLister func(pinDir string) ([]metric, error)

func (e endpoint) line() string    { return e.Line }
func (r directRoute) line() string { return r.Line }
func (m metric) line() string {
	return fmt.Sprintf("%-13s %-9s %-22s %12d packets %15d bytes", m.Program, m.Verdict, m.Reason, m.Packets, m.Bytes)
}

// pinnedList describes a `bpf <noun> list` command over one pinned map.
type pinnedList[T interface{ line() string }] struct {
	noun, mapName, short, long, example, empty string
	list                                       func(pinDir string) ([]T, error)
}

func newBPFCommand(g *globalOptions) *cobra.Command {
	bpf := &cobra.Command{
		Use:   "bpf",
		Short: "Read the eBPF host-routing state of the node this runs on",
	}
	bpf.AddCommand(newPinnedListCommand(g, pinnedList[endpoint]{
		noun:    "endpoint",
		mapName: "endpoint map",
		short:   "Local pod endpoints known to the host-routing programs",
		long: `Lists the pods the eBPF host-routing programs deliver to on this node, read
from the endpoint map the routemode agent pins under
/sys/fs/bpf/routemode/<node>. Run it on the node (or in the agent's pod,
e.g. kubectl -n routemode-system exec ds/routemode-agent -- routemodectl bpf endpoint list);
it needs root to open the pinned map.`,
		example: `  routemodectl bpf endpoint list
  routemodectl bpf endpoint list --node worker-1 -o json`,
		empty: "No endpoints in %s: no local pod is served by eBPF host routing yet",
		list:  func(dir string) ([]endpoint, error) { return g.deps.listEndpoints(dir) },
	}))
	bpf.AddCommand(newPinnedListCommand(g, pinnedList[directRoute]{
		noun:    "route",
		mapName: "direct-route map",
		short:   "Direct routes to other nodes' pods used by the host-routing programs",
		long: `Lists the routes to other nodes' pod CIDRs that the eBPF host-routing
programs follow without a FIB lookup: the agent's direct routes through the
underlay (autoDirectNodeRoutes), mirrored into a map the agent pins under
/sys/fs/bpf/routemode/<node>. Pods' packets to other destinations in the
native routing CIDR are looked up in the kernel's FIB. Run it on the node
(or in the agent's pod); it needs root to open the pinned map.`,
		example: `  routemodectl bpf route list
  routemodectl bpf route list --node worker-1 -o yaml`,
		empty: "No direct routes in %s: the programs look every destination up in the FIB (tunnel mode, or no other node yet)",
		list:  func(dir string) ([]directRoute, error) { return g.deps.listDirectRoutes(dir) },
	}))
	bpf.AddCommand(newPinnedListCommand(g, pinnedList[metric]{
		noun:    "metrics",
		mapName: "counter map",
		short:   "What the host-routing programs did with packets, by program and reason",
		long: `Lists the nonzero counters of the eBPF host-routing programs on this node,
summed over CPUs since the programs were first loaded: per program
(from_netdev, from_overlay, from_lxc), the verdict (redirect, or pass to
the next tc program and the stack) and the reason, e.g. redirect_peer,
redirect_direct_route, or nat for a flow conntrack translated (a Service).
The agent serves the same counters on its metrics port as
routemode_hostrouting_packets_total and _bytes_total. Run it on the node (or in the agent's pod); it needs root
to open the pinned map.`,
		example: `  routemodectl bpf metrics list
  routemodectl bpf metrics list --node worker-1 -o json`,
		empty: "No packets counted in %s yet",
		list:  func(dir string) ([]metric, error) { return g.deps.listMetrics(dir) },
	}))
	return bpf
}

func newPinnedListCommand[T interface{ line() string }](g *globalOptions, pl pinnedList[T]) *cobra.Command {
	group := &cobra.Command{Use: pl.noun, Short: pl.short}
	var node, pinDir, output string
	list := &cobra.Command{
		Use:     "list",
		Short:   "List the " + pl.mapName + " pinned on this node's bpffs",
		Long:    pl.long,
		Example: pl.example,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := outputFormat(output, "text", "json", "yaml"); err != nil {
				return err
			}
			dir, err := resolvePinDir(g, node, pinDir)
			if err != nil {
				return err
			}
			items, err := pl.list(dir)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				return fmt.Errorf("no %s under %s: this node has not run eBPF host routing (hostRouting: bpf), or the node name is wrong (pass --node NAME as in kubectl get nodes, or --pin-dir DIR)", pl.mapName, dir)
			case errors.Is(err, fs.ErrPermission):
				return fmt.Errorf("not allowed to open the %s under %s: run as root on the node, or in the routemode agent's pod", pl.mapName, dir)
			case err != nil:
				return err
			}
			if items == nil {
				items = []T{}
			}
			switch output {
			case "json":
				return writeJSON(g.streams.Out, items)
			case "yaml":
				return writeYAML(g.streams.Out, items)
			}
			if len(items) == 0 {
				fmt.Fprintf(g.streams.Out, pl.empty+"\n", dir)
				return nil
			}
			for _, it := range items {
				fmt.Fprintln(g.streams.Out, it.line())
			}
			return nil
		},
	}
	list.Flags().StringVar(&node, "node", "", "node whose pins to read (default: $NODE_NAME, else the host name)")
	list.Flags().StringVar(&pinDir, "pin-dir", "", "bpffs directory holding the pins (default: /sys/fs/bpf/routemode/<node>)")
	list.Flags().StringVarP(&output, "output", "o", "text", "output format: text, json or yaml")
	group.AddCommand(list)
	return group
}
