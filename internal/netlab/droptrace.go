package netlab

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// DropTrace records every packet the kernel frees as dropped, on the whole
// machine, with its drop reason and the function that dropped it: the
// skb:kfree_skb tracepoint, in a tracefs instance of its own on a tracefs
// mount of its own, so the machine's other tracing is left as it is.
// Counters say how many packets a cause took; the trace says which drop
// happened when, which is what a single lost probe needs. The kernel
// frees packets it delivered through consume_skb, another tracepoint, so
// an idle machine records nothing here.
type DropTrace struct {
	mnt, inst string
	// wallMinusMono turns the instance's CLOCK_MONOTONIC stamps into
	// wall-clock times, which the lab's logs and probes use.
	wallMinusMono time.Duration
}

// Drop is one packet the kernel dropped.
type Drop struct {
	At time.Time
	// Reason is the kernel's skb_drop_reason, e.g. IP_RPFILTER.
	Reason string
	// Location is where the packet was dropped, e.g.
	// ip_rcv_finish_core+0x1a4/0x4c0.
	Location string
	// Protocol is the packet's ethertype (2048 for IPv4).
	Protocol int
}

func (d Drop) String() string {
	return fmt.Sprintf("%s %s at %s (ethertype %#04x)", d.At.Format("15:04:05.000000"), d.Reason, d.Location, d.Protocol)
}

// dropTraceName starts the names of the tracefs mounts and instances
// DropTrace makes, followed by the pid of the process that made them.
const dropTraceName = "routemode-drops-"

var dropTraces atomic.Int64

// StartDropTrace starts recording drops; the caller stops it. It first
// removes what traces of processes that are gone (a test binary killed)
// left behind.
func StartDropTrace() (*DropTrace, error) {
	removeStaleDropTraces()
	mnt, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", dropTraceName, os.Getpid()))
	if err != nil {
		return nil, err
	}
	if err := unix.Mount("nodev", mnt, "tracefs", 0, ""); err != nil {
		os.Remove(mnt)
		return nil, fmt.Errorf("mounting tracefs on %s: %w", mnt, err)
	}
	d := &DropTrace{mnt: mnt, inst: filepath.Join(mnt, "instances", fmt.Sprintf("%s%d-%d", dropTraceName, os.Getpid(), dropTraces.Add(1)))}
	if err := d.start(); err != nil {
		_, _ = d.Stop()
		return nil, err
	}
	return d, nil
}

func (d *DropTrace) start() error {
	if err := os.Mkdir(d.inst, 0o755); err != nil {
		return fmt.Errorf("making a tracefs instance: %w", err)
	}
	var mono unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &mono); err != nil {
		return err
	}
	d.wallMinusMono = time.Duration(time.Now().UnixNano() - mono.Nano())
	for _, w := range [][2]string{{"trace_clock", "mono"}, {"events/skb/kfree_skb/enable", "1"}} {
		if err := os.WriteFile(filepath.Join(d.inst, w[0]), []byte(w[1]), 0o644); err != nil {
			return fmt.Errorf("tracefs %s: %w", w[0], err)
		}
	}
	return nil
}

// Stop ends the recording, removes the instance and the mount, and
// returns the drops recorded, oldest first (the newest ones only, if so
// many came that the instance's buffer wrapped).
func (d *DropTrace) Stop() ([]Drop, error) {
	var drops []Drop
	var errs []error
	if _, err := os.Stat(d.inst); err == nil {
		errs = append(errs, os.WriteFile(filepath.Join(d.inst, "events/skb/kfree_skb/enable"), []byte("0"), 0o644))
		b, err := os.ReadFile(filepath.Join(d.inst, "trace"))
		errs = append(errs, err)
		drops = parseDrops(string(b), d.wallMinusMono)
		errs = append(errs, os.Remove(d.inst))
	}
	errs = append(errs, unix.Unmount(d.mnt, unix.MNT_DETACH), os.Remove(d.mnt))
	return drops, errors.Join(errs...)
}

// parseDrops reads kfree_skb events from a trace file:
//
//	<idle>-0  [001] ..s1.  5678.123456: kfree_skb: skbaddr=… rx_sk=… protocol=2048 location=ip_rcv_finish_core+0x1a4/0x4c0 reason: IP_RPFILTER
func parseDrops(trace string, wallMinusMono time.Duration) []Drop {
	var out []Drop
	for line := range strings.SplitSeq(trace, "\n") {
		head, ev, ok := strings.Cut(line, ": kfree_skb: ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(head)
		if len(f) == 0 {
			continue
		}
		sec, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			continue
		}
		d := Drop{At: time.Unix(0, int64(sec*1e9)+int64(wallMinusMono))}
		ev, d.Reason, _ = strings.Cut(ev, " reason: ")
		d.Reason = strings.TrimSpace(d.Reason)
		for kv := range strings.FieldsSeq(ev) {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "protocol":
				d.Protocol, _ = strconv.Atoi(v)
			case "location":
				d.Location = v
			}
		}
		out = append(out, d)
	}
	return out
}

// SummarizeDrops counts drops by reason and location, most first, one
// "N REASON at location" per entry.
func SummarizeDrops(drops []Drop) []string {
	n := map[string]int{}
	for _, d := range drops {
		n[d.Reason+" at "+d.Location]++
	}
	keys := slices.Collect(maps.Keys(n))
	slices.SortFunc(keys, func(a, b string) int {
		if n[a] != n[b] {
			return n[b] - n[a]
		}
		return strings.Compare(a, b)
	})
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = fmt.Sprintf("%d %s", n[k], k)
	}
	return out
}

// DropsAround returns the drops within d of any of times, oldest first.
func DropsAround(drops []Drop, times []time.Time, d time.Duration) []Drop {
	var out []Drop
	for _, dr := range drops {
		if slices.ContainsFunc(times, func(t time.Time) bool { return dr.At.Sub(t).Abs() <= d }) {
			out = append(out, dr)
		}
	}
	return out
}

// removeStaleDropTraces removes what DropTraces of processes no longer
// running left behind: their instances (the kernel's, seen through every
// tracefs mount, and kept until removed), then their mounts.
func removeStaleDropTraces() {
	mnts, _ := filepath.Glob(filepath.Join(os.TempDir(), dropTraceName+"*"))
	for _, mnt := range mnts {
		pid, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(mnt), dropTraceName), "-")
		if _, err := os.Stat("/proc/" + pid); err == nil || pid == "" {
			continue
		}
		insts, _ := filepath.Glob(filepath.Join(mnt, "instances", dropTraceName+pid+"-*"))
		for _, inst := range insts {
			_ = os.Remove(inst)
		}
		_ = unix.Unmount(mnt, unix.MNT_DETACH)
		_ = os.Remove(mnt)
	}
}
