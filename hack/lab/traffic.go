package lab

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/routemode/routemode/hack/lab/echostats"
	"github.com/routemode/routemode/internal/netlab"
	"github.com/routemode/routemode/internal/probe"
)

// Ports the traffic generator uses inside every pod.
const (
	udpEchoPort = 7000
	tcpEchoPort = 7001
)

// PodNativeCIDR holds every pod address of the lab.
var PodNativeCIDR = netip.MustParsePrefix("10.0.0.0/16")

// Traffic is the lab's traffic: a numbered UDP probe stream and a
// long-lived TCP connection between every pair of pods on different nodes,
// and a capture on every node's underlay device.
type Traffic struct {
	echoes   []*probe.Echo
	tcpEcho  []*probe.TCPEcho
	streams  map[string]*probe.Stream
	tcp      map[string]*probe.TCPCheck
	captures map[string]*probe.Capture
	// service reads the Service client's counts, on real nodes.
	service func() (echostats.Window, error)
	cancel  context.CancelFunc
	// backlog, unresolved and neighFailed are the machine's counters when
	// the traffic started (see TrafficReport).
	backlog, unresolved, neighFailed uint64
	// drops traces the machine's dropped packets; nil, with dropsErr,
	// when it could not start.
	drops    *netlab.DropTrace
	dropsErr error
	// echoWait is the Service workload's CPU wait then (see CPUWait).
	echoWait  func() time.Duration
	echoWait0 time.Duration
}

// TrafficReport is what the traffic saw.
type TrafficReport struct {
	UDP probe.Stats
	TCP probe.TCPStats
	// Pairs is the number of pod pairs.
	Pairs int
	// Capture is the sum over the nodes' underlay captures.
	Capture probe.CaptureStats
	// ByPair is UDP per pod pair, keyed "src->dst" by pod name, to tell
	// loss on paths through a faulty node from loss elsewhere.
	ByPair map[string]probe.Stats
	// EchoDrops counts probes the responders' own sockets dropped for
	// want of buffer (also in UDP.Lost): the tool's loss, not the
	// network's.
	EchoDrops int64
	// EchoSendErrors counts the responders' answers whose send failed
	// (also in UDP.Lost), EchoSendError says why the last one did: the
	// tool's loss too.
	EchoSendErrors int64
	EchoSendError  string
	// Service is what the Service workload's client counted, on real
	// nodes; nil otherwise.
	Service *ServiceReport
	// BacklogDrops counts the packets the kernel dropped, on any device of
	// the machine, because a CPU's input backlog was full
	// (netdev_max_backlog): a machine too busy to run its softirqs loses
	// packets there, whatever the datapath.
	BacklogDrops uint64
	// UnresolvedDiscards and NeighbourFailures count, machine-wide, the
	// packets dropped waiting for a neighbour (ARP) and the resolutions
	// that failed: a next hop that did not answer in time.
	UnresolvedDiscards, NeighbourFailures uint64
	// Drops is every packet the kernel dropped meanwhile, machine-wide,
	// with its reason and where (netlab.DropTrace): the counters above
	// say how many, this says which drop came when a probe was lost.
	// DropsErr says why it is missing or incomplete.
	Drops    []netlab.Drop
	DropsErr error
}

// ServiceReport is the requests to the ClusterIP Service over the
// traffic's time, or why they could not be read.
type ServiceReport struct {
	echostats.Window
	Err error
	// CPUWait is how long the threads of the workload's processes (the
	// client and the backends) waited, runnable, for a CPU meanwhile,
	// summed: a request the datapath carried but a starved backend did
	// not answer in time shows here. Processes that started or ended in
	// between count only in part.
	CPUWait time.Duration
}

// TrafficOptions narrow or relax the traffic.
type TrafficOptions struct {
	// Use selects the pods the traffic runs between; nil: all of them.
	Use func(PodState) bool
	// TCPTimeout is how long a TCP message may take to come back before
	// its connection counts as broken; 0: the probe's 2 s. Under a fault
	// TCP rides out by retransmitting (a cut, random loss), its waits
	// double each time and take an echo well past 2 s with nothing
	// broken.
	TCPTimeout time.Duration
}

// StartTraffic starts the traffic at rate probes per second in all,
// between every pod of the lab.
func (l *Lab) StartTraffic(ctx context.Context, rate int, tunnelPort int) (*Traffic, error) {
	return l.StartTrafficWith(ctx, rate, tunnelPort, TrafficOptions{})
}

// StartTrafficWith is StartTraffic as o narrows or relaxes it.
func (l *Lab) StartTrafficWith(ctx context.Context, rate int, tunnelPort int, o TrafficOptions) (_ *Traffic, err error) {
	use := o.Use
	if use == nil {
		use = func(PodState) bool { return true }
	}
	ctx, cancel := context.WithCancel(ctx)
	// Not the named result, which an error return sets to nil: this is
	// what the deferred Stop must stop.
	t := &Traffic{streams: map[string]*probe.Stream{}, tcp: map[string]*probe.TCPCheck{}, captures: map[string]*probe.Capture{}, cancel: cancel,
		backlog: netlab.BacklogDrops(), unresolved: netlab.UnresolvedDiscards(), neighFailed: netlab.NeighbourFailures()}
	t.drops, t.dropsErr = netlab.StartDropTrace()
	defer func() {
		if err != nil {
			t.Stop()
		}
	}()
	pairs := l.podPairs(use)
	for _, p := range l.state.Pods {
		if !use(p) {
			continue
		}
		e, err := probe.StartEcho(p.netns(), netip.AddrPortFrom(p.IP, udpEchoPort))
		if err != nil {
			return nil, fmt.Errorf("starting the UDP echo in %s: %w", p.Name, err)
		}
		t.echoes = append(t.echoes, e)
		te, err := probe.StartTCPEcho(p.netns(), netip.AddrPortFrom(p.IP, tcpEchoPort))
		if err != nil {
			return nil, fmt.Errorf("starting the TCP echo in %s: %w", p.Name, err)
		}
		t.tcpEcho = append(t.tcpEcho, te)
	}
	for _, n := range l.Nodes {
		c, err := probe.StartCapture(probe.CaptureConfig{NSPath: nsPath(n.NS), Interface: "eth0", TunnelPort: tunnelPort, Inner: PodNativeCIDR})
		if err != nil {
			return nil, fmt.Errorf("capturing on %s: %w", n.NS, err)
		}
		t.captures[n.NS] = c
	}
	for _, pr := range pairs {
		key := pr[0].Name + "->" + pr[1].Name
		if err := probe.Warm(ctx, pr[0].netns(), netip.AddrPortFrom(pr[1].IP, udpEchoPort), 30); err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		s, err := probe.StartStream(probe.StreamConfig{NSPath: pr[0].netns(), Target: netip.AddrPortFrom(pr[1].IP, udpEchoPort), Rate: max(1, rate/len(pairs))})
		if err != nil {
			return nil, fmt.Errorf("starting the probe stream %s: %w", key, err)
		}
		t.streams[key] = s
		c, err := probe.StartTCPCheck(ctx, probe.TCPCheckConfig{NSPath: pr[0].netns(), Target: netip.AddrPortFrom(pr[1].IP, tcpEchoPort), Timeout: o.TCPTimeout})
		if err != nil {
			return nil, fmt.Errorf("connecting %s over TCP: %w", key, err)
		}
		t.tcp[key] = c
	}
	if l.state.Echo != nil {
		// The client runs all the time: its counts start now.
		t.service = func() (echostats.Window, error) { return l.ServiceWindow(ctx) }
		t.echoWait = l.echoCPUWait
		t.echoWait0 = t.echoWait()
		if _, err := t.service(); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// Troubled lists, one per line, the pairs that lost probes or went a
// second without an answer, and the responders' socket drops: what a
// failure report needs to tell the network's loss from the tool's.
func (r TrafficReport) Troubled() string {
	var lines []string
	for _, key := range slices.Sorted(maps.Keys(r.ByPair)) {
		if st := r.ByPair[key]; st.Lost > 0 || st.LargestGap > time.Second {
			lines = append(lines, fmt.Sprintf("  %s: %s", key, st))
		}
	}
	lines = append(lines, fmt.Sprintf("  responders' socket drops: %d; answers they failed to send: %d %s", r.EchoDrops, r.EchoSendErrors, r.EchoSendError),
		fmt.Sprintf("  the machine's drops meanwhile (any device, any lab): %d for a full CPU backlog, %d awaiting a neighbour, %d failed neighbour resolutions",
			r.BacklogDrops, r.UnresolvedDiscards, r.NeighbourFailures))
	if r.DropsErr != nil {
		lines = append(lines, fmt.Sprintf("  the kernel's drop trace: %v", r.DropsErr))
	}
	var lost []time.Time
	for _, st := range r.ByPair {
		lost = append(lost, st.LostSent...)
	}
	sum := netlab.SummarizeDrops(r.Drops)
	lines = append(lines, fmt.Sprintf("  packets the kernel dropped meanwhile (any device, any lab), by reason and place: %d", len(r.Drops)))
	for i, s := range sum {
		if i == 10 {
			lines = append(lines, fmt.Sprintf("    … and %d more reasons and places", len(sum)-i))
			break
		}
		lines = append(lines, "    "+s)
	}
	if len(lost) > 0 {
		near := netlab.DropsAround(r.Drops, lost, time.Second)
		lines = append(lines, fmt.Sprintf("  of them within 1 s of a lost probe's send: %d", len(near)))
		for i, d := range near {
			if i == 20 {
				lines = append(lines, fmt.Sprintf("    … and %d more", len(near)-i))
				break
			}
			lines = append(lines, "    "+d.String())
		}
	}
	return strings.Join(lines, "\n")
}

func nsPath(name string) string { return filepath.Join("/var/run/netns", name) }

// podPairs is every ordered pair of used pods on different nodes.
func (l *Lab) podPairs(use func(PodState) bool) [][2]PodState {
	var out [][2]PodState
	for _, a := range l.state.Pods {
		for _, b := range l.state.Pods {
			if a.Node != b.Node && use(a) && use(b) {
				out = append(out, [2]PodState{a, b})
			}
		}
	}
	return out
}

// Capture returns the summed capture counters and starts counting afresh,
// so each phase of a demo reports its own packets.
func (t *Traffic) Capture() probe.CaptureStats {
	sum := t.captured()
	for _, c := range t.captures {
		c.Reset()
	}
	return sum
}

// captured sums the capture counters.
func (t *Traffic) captured() probe.CaptureStats {
	var sum probe.CaptureStats
	for _, c := range t.captures {
		s := c.Snapshot()
		sum.Frames += s.Frames
		sum.TunnelUDP += s.TunnelUDP
		sum.Encapsulated += s.Encapsulated
		sum.Plain += s.Plain
	}
	return sum
}

// Stop ends the traffic and reports it; loss is counted once the last
// answers had time to arrive.
func (t *Traffic) Stop() TrafficReport {
	r := TrafficReport{Pairs: len(t.streams), ByPair: map[string]probe.Stats{}, BacklogDrops: netlab.BacklogDrops() - t.backlog,
		UnresolvedDiscards: netlab.UnresolvedDiscards() - t.unresolved, NeighbourFailures: netlab.NeighbourFailures() - t.neighFailed}
	for key, s := range t.streams {
		st := s.Stop()
		r.ByPair[key] = st
		r.UDP.Add(st)
	}
	for _, e := range t.echoes {
		r.EchoDrops += int64(e.Drops())
		if n, last := e.SendErrors(); n > 0 {
			r.EchoSendErrors += n
			r.EchoSendError = "(last: " + last + ")"
		}
	}
	for _, c := range t.tcp {
		st := c.Stop()
		r.TCP.Messages += st.Messages
		r.TCP.Resets += st.Resets
		r.TCP.Errors += st.Errors
		r.TCP.Reconnects += st.Reconnects
		r.TCP.LargestGap = max(r.TCP.LargestGap, st.LargestGap)
		if st.LastError != "" {
			r.TCP.LastError = st.LastError
		}
	}
	if t.service != nil {
		w, err := t.service()
		r.Service = &ServiceReport{Window: w, Err: err, CPUWait: max(t.echoWait()-t.echoWait0, 0)}
	}
	r.DropsErr = t.dropsErr
	if t.drops != nil {
		r.Drops, r.DropsErr = t.drops.Stop()
		t.drops = nil
	}
	r.Capture = t.Capture()
	for _, c := range t.captures {
		c.Stop()
	}
	var errs []error
	for _, e := range t.echoes {
		errs = append(errs, e.Close())
	}
	for _, e := range t.tcpEcho {
		errs = append(errs, e.Close())
	}
	_ = errors.Join(errs...)
	t.cancel()
	return r
}

// Sample starts counting afresh and returns the capture counters once the
// underlays have carried at least n pod packets, so which way traffic goes
// is judged on a sample of a known size however slow the machine is.
func (t *Traffic) Sample(ctx context.Context, n int64, limit time.Duration) (probe.CaptureStats, error) {
	t.Capture()
	var sum probe.CaptureStats
	err := wait(ctx, limit, fmt.Sprintf("%d pod packets on the underlays", n), func() (bool, error) {
		sum = t.captured()
		return sum.Encapsulated+sum.Plain >= n, nil
	})
	return sum, err
}

// Answered waits until the probe streams have had n more answers, so a
// check that follows runs over traffic that really flowed.
func (t *Traffic) Answered(ctx context.Context, n int64, limit time.Duration) error {
	received := func() int64 {
		var sum int64
		for _, s := range t.streams {
			sum += s.Snapshot().Received
		}
		return sum
	}
	from := received()
	return wait(ctx, limit, fmt.Sprintf("%d more probes answered", n), func() (bool, error) { return received()-from >= n, nil })
}

// Ports NodeToPod's responders listen on in the pods, apart from the
// traffic's so both can run at once.
const (
	nodeCheckTCPPort = 7002
	nodeCheckUDPPort = 7003
)

// NodeToPod checks every node's own network namespace (its host stack,
// source address the node IP) against every lab pod on another node: a new
// TCP connection must carry that many messages, and a UDP probe must be
// answered from the pod's address, not rewritten on the way. It returns one line
// per failed check, and an error when the checks could not run.
func (l *Lab) NodeToPod(ctx context.Context, messages int64) ([]string, error) {
	var closers []func() error
	defer func() {
		for _, c := range closers {
			_ = c()
		}
	}()
	for _, p := range l.state.Pods {
		te, err := probe.StartTCPEcho(p.netns(), netip.AddrPortFrom(p.IP, nodeCheckTCPPort))
		if err != nil {
			return nil, fmt.Errorf("starting a TCP echo in %s: %w", p.Name, err)
		}
		closers = append(closers, te.Close)
		e, err := probe.StartEcho(p.netns(), netip.AddrPortFrom(p.IP, nodeCheckUDPPort))
		if err != nil {
			return nil, fmt.Errorf("starting a UDP echo in %s: %w", p.Name, err)
		}
		closers = append(closers, e.Close)
	}
	var failed []string
	for _, n := range l.Nodes {
		for _, p := range l.state.Pods {
			if p.Node == n.NS {
				continue
			}
			what := fmt.Sprintf("%s → pod %s (%s on %s)", n.NS, p.Name, p.IP, p.Node)
			tcp := netip.AddrPortFrom(p.IP, nodeCheckTCPPort)
			st, err := probe.Exchange(ctx, probe.TCPCheckConfig{NSPath: nsPath(n.NS), Target: tcp}, messages, 30*time.Second)
			if err != nil || st.Messages < messages || st.Resets+st.Errors+st.Reconnects != 0 {
				failed = append(failed, fmt.Sprintf("%s: TCP %s (%v); want %d messages on one connection", what, st, err, messages))
			}
			udp := netip.AddrPortFrom(p.IP, nodeCheckUDPPort)
			if src, err := probe.AnswerSource(nsPath(n.NS), udp, 5, time.Second); err != nil || src != udp {
				failed = append(failed, fmt.Sprintf("%s: UDP answer from %s (%v); want from %s", what, src, err, udp))
			}
		}
	}
	return failed, nil
}
