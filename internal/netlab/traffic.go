package netlab

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/routemode/routemode/agent/nsutil"
	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/probe"
)

// Streams are probe streams between pods.
type Streams struct {
	names   []string
	streams []*probe.Stream
	pods    []*Pod
}

// StartStreams starts a probe stream from every pod to every pod on
// another node (answered by the target's echo responder) at rate probes
// per second each, once every pair has answered one probe. The caller
// stops them.
func StartStreams(pods []*Pod, rate int) (*Streams, error) {
	s := &Streams{pods: pods}
	for _, a := range pods {
		for _, b := range pods {
			if a.Node == b.Node {
				continue
			}
			if err := probe.Warm(context.Background(), a.Path(), b.EchoAddr(), 30); err != nil {
				s.Stop()
				return nil, fmt.Errorf("%s(%s) → %s(%s): %w", a.Name, a.IP, b.Name, b.IP, err)
			}
			st, err := probe.StartStream(probe.StreamConfig{NSPath: a.Path(), Target: b.EchoAddr(), Rate: rate})
			if err != nil {
				s.Stop()
				return nil, fmt.Errorf("starting stream %s→%s: %w", a.Name, b.Name, err)
			}
			s.names = append(s.names, fmt.Sprintf("%s(%s)→%s(%s)", a.Name, a.IP, b.Name, b.IP))
			s.streams = append(s.streams, st)
		}
	}
	return s, nil
}

// Stop stops every stream (concurrently, so their drains overlap) and
// returns the final counts by stream name.
func (s *Streams) Stop() map[string]probe.Stats {
	stats := make([]probe.Stats, len(s.streams))
	var wg sync.WaitGroup
	for i, st := range s.streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stats[i] = st.Stop()
		}()
	}
	wg.Wait()
	out := map[string]probe.Stats{}
	for i := range s.streams {
		out[s.names[i]] = stats[i]
	}
	return out
}

// EchoLoss says, per pod, what its echo responder lost itself (see
// Pod.EchoLoss): the tool's loss, not the network's.
func (s *Streams) EchoLoss() map[string]string {
	out := map[string]string{}
	for _, p := range s.pods {
		out[p.Name] = p.EchoLoss()
	}
	return out
}

// Total adds up stats.
func Total(stats map[string]probe.Stats) probe.Stats {
	var t probe.Stats
	for _, s := range stats {
		t.Add(s)
	}
	return t
}

// Report formats stats one stream per line, sorted.
func Report(stats map[string]probe.Stats) string {
	var lines []string
	for name, s := range stats {
		lines = append(lines, fmt.Sprintf("  %s: %s", name, s))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// Capture starts counting frames on the underlay bridge's ports:
// encapsulated (UDP to the tunnel port carrying pod addresses) and plain
// pod packets. The caller stops it.
func (l *Lab) Capture() (*probe.Capture, error) {
	return probe.StartCapture(probe.CaptureConfig{NSPath: l.UnderlayPath(), TunnelPort: v1alpha1.DefaultTunnelPort, Inner: PodPrefix})
}

// UnresolvedDiscards is the kernel's count of packets dropped while waiting
// for a neighbour to resolve (unresolved_discards in
// /proc/net/stat/arp_cache, summed over CPUs). It is one counter for the
// whole machine, every namespace included: log its change around a test to
// tell neighbour-resolution losses from others.
func UnresolvedDiscards() uint64 { return arpCacheStat("unresolved_discards") }

// NeighbourFailures is the kernel's count of neighbour resolutions that
// failed (res_failed in /proc/net/stat/arp_cache), whose queued packets
// were dropped: machine-wide, like UnresolvedDiscards.
func NeighbourFailures() uint64 { return arpCacheStat("res_failed") }

// arpCacheStat sums one column of /proc/net/stat/arp_cache over the CPUs,
// 0 when it cannot be read.
func arpCacheStat(column string) uint64 {
	b, err := os.ReadFile("/proc/net/stat/arp_cache")
	if err != nil {
		return 0
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) < 2 {
		return 0
	}
	col := slices.Index(strings.Fields(lines[0]), column)
	if col < 0 {
		return 0
	}
	var total uint64
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if col < len(f) {
			v, _ := strconv.ParseUint(f[col], 16, 64)
			total += v
		}
	}
	return total
}

// BacklogDrops is the kernel's count of packets dropped because a CPU's
// input backlog was full (netdev_max_backlog; the dropped column of
// /proc/net/softnet_stat, summed over CPUs): a machine too busy to run its
// softirqs loses packets there, on any device, whatever the datapath. One
// counter for the whole machine: log its change around a test.
func BacklogDrops() uint64 {
	b, err := os.ReadFile("/proc/net/softnet_stat")
	if err != nil {
		return 0
	}
	var total uint64
	for l := range strings.SplitSeq(strings.TrimSpace(string(b)), "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			v, _ := strconv.ParseUint(f[1], 16, 64)
			total += v
		}
	}
	return total
}

// SNMP reads one counter of /proc/net/snmp (proto "Ip:", "Udp:", ...) in
// the namespace at nsPath.
func SNMP(nsPath, proto, field string) (uint64, error) {
	var v uint64
	err := nsutil.RunIn(nsPath, func() error {
		b, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		var head []string
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 || f[0] != proto {
				continue
			}
			if head == nil {
				head = f
				continue
			}
			if i := slices.Index(head, field); i > 0 && i < len(f) {
				v, err = strconv.ParseUint(f[i], 10, 64)
				return err
			}
		}
		return fmt.Errorf("no %s %s in /proc/net/snmp", proto, field)
	})
	return v, err
}
