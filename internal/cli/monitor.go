package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/spf13/cobra"

	"github.com/routemode/routemode/bpf"
)

// monitorEvent is one decision of a host-routing program, as the programs
// report it while a monitor runs.
type monitorEvent struct {
	CPU        uint32
	Program    bpf.Program
	Reason     bpf.Reason
	Endpoint   uint32
	IfindexIn  uint32
	IfindexOut uint32
	Len        uint32
	Data       []byte // the packet's first bytes
}

// eventSource is a node's event stream. The real one (monitor_linux.go)
// wraps agent/hostrouting.Monitor.
type eventSource interface {
	// Read waits for the next event until deadline; an error wrapping
	// os.ErrDeadlineExceeded means none came.
	Read(deadline time.Time) (monitorEvent, error)
	// Lost is how many events the full ring buffer refused since opening.
	Lost() (uint64, error)
	// Close turns the events off.
	Close() error
}

// monitorOpener opens the event stream of the programs pinned in pinDir,
// calling waiting if it has to wait for the agent, until ctx ends.
type monitorOpener func(ctx context.Context, pinDir string, waiting func()) (eventSource, error)

// agentWait bounds the wait for the agent to load the maps: its resync
// period is 10 s.
const agentWait = 30 * time.Second

var errNoAgent = errors.New("no agent answered")

// monitorPoll bounds how late the monitor notices Ctrl-C and new losses.
const monitorPoll = 200 * time.Millisecond

type monitorOptions struct {
	node, pinDir, typ, relatedTo, output string
	fromEndpoint                         uint32
	verbose                              int
	related                              netip.Addr
}

func newMonitorCommand(g *globalOptions) *cobra.Command {
	var o monitorOptions
	var fromEndpoint string
	cmd := &cobra.Command{
		Use:   "monitor",
		Short: "Show every decision of the eBPF host-routing programs on this node, packet by packet",
		Long: `Prints one line per packet per program, like cilium monitor: the CPU, the
endpoint, the verdict (to-endpoint: into a local pod; to-network: out to the
next hop; to-stack: left to the kernel, with the reason in words), the
packet's length, the interface and the sender's address. -v adds the program
and both interfaces, -vv the decoded headers of the packet's first 128 bytes.

The programs report events only while a monitor runs, and to one monitor
per node at a time. Events the monitor does not read fast enough are lost;
the count of lost events is printed as it grows. Ctrl-C ends it.

Run it on the node (or in the agent's pod, e.g. kubectl -n routemode-system
exec ds/routemode-agent -- routemodectl monitor); it needs root to open the
pinned maps under /sys/fs/bpf/routemode/<node>.`,
		Example: `  routemodectl monitor
  routemodectl monitor -vv --related-to 10.0.1.124
  routemodectl monitor --from-endpoint 1580 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := outputFormat(o.output, "text", "json"); err != nil {
				return err
			}
			switch o.typ {
			case "", "trace":
			case "drop":
				return fmt.Errorf("%w: --type drop: the host-routing programs never drop a packet (what they do not forward goes to the stack, shown as to-stack with the reason); use --type trace", errUsage)
			default:
				return fmt.Errorf("%w: unknown --type %q: use trace", errUsage, o.typ)
			}
			if fromEndpoint != "" {
				id, err := strconv.ParseUint(fromEndpoint, 10, 32)
				if err != nil {
					return fmt.Errorf("%w: --from-endpoint %q is not an endpoint id", errUsage, fromEndpoint)
				}
				o.fromEndpoint = uint32(id)
			}
			if o.relatedTo != "" {
				a, err := netip.ParseAddr(o.relatedTo)
				if err != nil || !a.Is4() {
					return fmt.Errorf("%w: --related-to %q is not an IPv4 address", errUsage, o.relatedTo)
				}
				o.related = a
			}
			dir, err := resolvePinDir(g, o.node, o.pinDir)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeoutCause(cmd.Context(), agentWait, errNoAgent)
			defer cancel()
			src, err := g.deps.openMonitor(ctx, dir, func() {
				fmt.Fprintf(g.streams.ErrOut, "Waiting for the agent to load the programs' maps in %s (in legacy host routing it attaches observe-only programs on its next resync)\n", dir)
			})
			switch {
			case err != nil && cmd.Context().Err() != nil:
				return nil // Ctrl-C while waiting
			case errors.Is(err, errNoAgent):
				return fmt.Errorf("%w: no monitor maps appeared under %s in %s: the agent is not running on this node, runs a routemode without the monitor, or the node name is wrong (pass --node NAME as in kubectl get nodes, or --pin-dir DIR)", err, dir, agentWait)
			case errors.Is(err, fs.ErrPermission):
				return fmt.Errorf("not allowed to open the monitor maps under %s: run as root on the node, or in the routemode agent's pod", dir)
			case err != nil:
				return err
			}
			return runMonitor(cmd, g, src, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.node, "node", "", "node whose programs to watch (default: $NODE_NAME, else the host name)")
	f.StringVar(&o.pinDir, "pin-dir", "", "bpffs directory holding the pins (default: /sys/fs/bpf/routemode/<node>)")
	f.StringVar(&o.typ, "type", "", "event type to show: trace (the only type the programs report)")
	f.StringVar(&fromEndpoint, "from-endpoint", "", "show only events about this endpoint id")
	f.StringVar(&o.relatedTo, "related-to", "", "show only packets from or to this IPv4 address")
	f.CountVarP(&o.verbose, "verbose", "v", "more detail: -v the program and interfaces, -vv also the decoded headers")
	f.StringVarP(&o.output, "output", "o", "text", "output format: text or json (one object per line)")
	return cmd
}

// runMonitor prints events until the command's context ends, then turns
// the events off.
func runMonitor(cmd *cobra.Command, g *globalOptions, src eventSource, o monitorOptions) (err error) {
	defer func() {
		if cerr := src.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	ctx := cmd.Context()
	out := g.streams.Out
	names := ifNamer{lookup: g.deps.ifName, cache: map[uint32]string{}}
	var seen, shown, lost uint64
	fmt.Fprintln(g.streams.ErrOut, "Listening for events on this node's host-routing programs. Press Ctrl-C to quit")
	for ctx.Err() == nil {
		ev, err := src.Read(time.Now().Add(monitorPoll))
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
		case err != nil:
			return err
		default:
			seen++
			pkt := decode(ev.Data)
			if o.matches(ev, pkt) {
				shown++
				if err := writeEvent(out, o, ev, pkt, &names); err != nil {
					return err
				}
			}
		}
		n, err := src.Lost()
		if err != nil {
			return err
		}
		if n > lost {
			if err := writeLost(out, o.output, n-lost); err != nil {
				return err
			}
			lost = n
		}
	}
	fmt.Fprintf(g.streams.ErrOut, "Received %d events (%d shown), lost %d\n", seen, shown, lost)
	return nil
}

// packet is what the filters and the line need from the decoded packet.
type packet struct {
	gopacket.Packet
	src, dst netip.Addr
}

func decode(data []byte) packet {
	p := packet{Packet: gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.DecodeOptions{NoCopy: true})}
	if ip, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
		p.src, _ = netip.AddrFromSlice(ip.SrcIP.To4())
		p.dst, _ = netip.AddrFromSlice(ip.DstIP.To4())
	}
	return p
}

func (o monitorOptions) matches(ev monitorEvent, p packet) bool {
	if o.fromEndpoint != 0 && ev.Endpoint != o.fromEndpoint {
		return false
	}
	if o.related.IsValid() && p.src != o.related && p.dst != o.related {
		return false
	}
	return true
}

// ifNamer names ifindexes in the node's namespace, where the monitor runs.
type ifNamer struct {
	lookup func(int) (string, error)
	cache  map[uint32]string
}

func (n *ifNamer) name(ifindex uint32) string {
	if s, ok := n.cache[ifindex]; ok {
		return s
	}
	s, err := n.lookup(int(ifindex))
	if err != nil {
		s = "ifindex " + strconv.FormatUint(uint64(ifindex), 10)
	}
	n.cache[ifindex] = s
	return s
}

func programName(p bpf.Program) string { return strings.ReplaceAll(p.String(), "_", "-") }

// monitorJSON is an event with -o json, one object per line.
type monitorJSON struct {
	Type       string `json:"type"` // trace, or lost
	CPU        uint32 `json:"cpu"`
	Program    string `json:"program"`
	Verdict    string `json:"verdict"`
	Reason     string `json:"reason"`
	Why        string `json:"why"`
	Endpoint   uint32 `json:"endpoint"`
	IfindexIn  uint32 `json:"ifindexIn"`
	IfindexOut uint32 `json:"ifindexOut,omitempty"`
	Interface  string `json:"interface"`
	Bytes      uint32 `json:"bytes"`
	SrcIP      string `json:"srcIP,omitempty"`
	DstIP      string `json:"dstIP,omitempty"`
	Data       []byte `json:"data"` // the first bytes, base64
}

type lostJSON struct {
	Type string `json:"type"`
	Lost uint64 `json:"lost"`
}

// iface is the interface an event is about: where a redirect sends the
// packet, or where a packet left to the stack came in.
func iface(ev monitorEvent) uint32 {
	if ev.IfindexOut != 0 {
		return ev.IfindexOut
	}
	return ev.IfindexIn
}

func writeEvent(w io.Writer, o monitorOptions, ev monitorEvent, p packet, names *ifNamer) error {
	if o.output == "json" {
		j := monitorJSON{
			Type: "trace", CPU: ev.CPU, Program: programName(ev.Program), Verdict: ev.Reason.MonitorVerdict(),
			Reason: ev.Reason.String(), Why: ev.Reason.Words(), Endpoint: ev.Endpoint,
			IfindexIn: ev.IfindexIn, IfindexOut: ev.IfindexOut, Interface: names.name(iface(ev)),
			Bytes: ev.Len, Data: ev.Data,
		}
		if p.src.IsValid() {
			j.SrcIP, j.DstIP = p.src.String(), p.dst.String()
		}
		b, err := json.Marshal(j)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	var sb strings.Builder
	if o.verbose >= 2 {
		sb.WriteString("------------------------------------------------------------------------------\n")
		// LayerString is "<type>\t{fields}", as cilium monitor prints it.
		for _, l := range p.Layers() {
			sb.WriteString(gopacket.LayerString(l))
			sb.WriteByte('\n')
		}
	}
	sb.WriteString(eventLine(ev, p, o.verbose, names))
	sb.WriteByte('\n')
	_, err := io.WriteString(w, sb.String())
	return err
}

// eventLine is the event in cilium monitor's shape:
//
//	CPU 03: FROM 1580 to-endpoint: 98 bytes, interface lxc5f949d4fd7fa, orig-ip 10.0.0.85, to endpoint 1580
func eventLine(ev monitorEvent, p packet, verbose int, names *ifNamer) string {
	verdict := ev.Reason.MonitorVerdict()
	s := fmt.Sprintf("CPU %02d: FROM %d %s: %d bytes, interface %s", ev.CPU, ev.Endpoint, verdict, ev.Len, names.name(iface(ev)))
	if p.src.IsValid() {
		s += ", orig-ip " + p.src.String()
	}
	switch verdict {
	case "to-endpoint":
		s += fmt.Sprintf(", to endpoint %d", ev.Endpoint)
	case "to-stack":
		s += fmt.Sprintf(", reason %s: %s", ev.Reason, ev.Reason.Words())
	}
	if verbose >= 1 {
		s += fmt.Sprintf(", program %s, in %s", programName(ev.Program), names.name(ev.IfindexIn))
		if ev.IfindexOut != 0 {
			s += ", out " + names.name(ev.IfindexOut)
		}
		if p.src.IsValid() {
			s += fmt.Sprintf(", %s -> %s", p.src, p.dst)
		}
	}
	return s
}

func writeLost(w io.Writer, output string, n uint64) error {
	if output == "json" {
		b, err := json.Marshal(lostJSON{Type: "lost", Lost: n})
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	_, err := fmt.Fprintf(w, "Lost %d events: the ring buffer was full\n", n)
	return err
}
