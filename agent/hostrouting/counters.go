//go:build linux

/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

package hostrouting

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/routemode/routemode/bpf"
)

// Counter is the packet and byte count of one (program, reason), summed
// over CPUs.
type Counter struct {
	Program bpf.Program
	Reason  bpf.Reason
	Verdict bpf.Verdict
	Packets uint64
	Bytes   uint64
}

// ReadCounters reads a node's counters from the pinned map, one entry per
// (program, reason) the programs can report, zeros included. A node that
// never ran BPF host routing has no map: the error then wraps
// os.ErrNotExist.
func ReadCounters(pinDir string) ([]Counter, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, bpf.MapCounters), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("open counter map in %s: %w", pinDir, err)
	}
	defer m.Close()
	return readCounters(m)
}

func readCounters(m *ebpf.Map) ([]Counter, error) {
	out := make([]Counter, 0, len(bpf.Programs)*len(bpf.Reasons))
	var per []bpf.Counter
	for _, p := range bpf.Programs {
		for _, r := range bpf.Reasons {
			if err := m.Lookup(bpf.CounterIndex(p, r), &per); err != nil {
				return nil, fmt.Errorf("read counter %s/%s: %w", p, r, err)
			}
			c := Counter{Program: p, Reason: r, Verdict: r.Verdict()}
			for _, v := range per {
				c.Packets += v.Packets
				c.Bytes += v.Bytes
			}
			out = append(out, c)
		}
	}
	return out, nil
}

// Counters reads the counters of the node this Manager last applied to.
func (m *Manager) Counters() ([]Counter, error) {
	m.mu.Lock()
	dir := m.lastPinDir
	m.mu.Unlock()
	if dir == "" {
		return nil, errors.New("host routing was never applied")
	}
	return ReadCounters(dir)
}

// Sum adds up the packets of the counters that match, e.g. every redirect
// of the lxc program: Sum(cs, bpf.ProgramLXC, bpf.VerdictRedirect).
func Sum(cs []Counter, p bpf.Program, v bpf.Verdict) uint64 {
	var n uint64
	for _, c := range cs {
		if c.Program == p && c.Verdict == v {
			n += c.Packets
		}
	}
	return n
}

// Collector exports a node's host-routing counters, endpoint count and
// monitor state as Prometheus metrics, read from the pins at every scrape, so it keeps
// working across Manager restarts and reports nothing while the node has
// never run BPF host routing.
type Collector struct {
	pinDir    string
	packets   *prometheus.Desc
	bytes     *prometheus.Desc
	endpoints *prometheus.Desc
	errors    *prometheus.Desc
	// The monitor's: whether its events are on, and those it lost.
	monitorActive *prometheus.Desc
	monitorLost   *prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a Collector for the node whose pins are in pinDir.
// node becomes a constant label so that several nodes (lab namespaces) can
// share one registry.
func NewCollector(node, pinDir string) *Collector {
	labels := []string{"program", "verdict", "reason"}
	cl := prometheus.Labels{"node": node}
	return &Collector{
		pinDir: pinDir,
		packets: prometheus.NewDesc("routemode_hostrouting_packets_total",
			"Packets seen by the eBPF host-routing programs, by program, verdict and reason.", labels, cl),
		bytes: prometheus.NewDesc("routemode_hostrouting_bytes_total",
			"Bytes seen by the eBPF host-routing programs, by program, verdict and reason.", labels, cl),
		endpoints: prometheus.NewDesc("routemode_hostrouting_endpoints",
			"Entries in the host-routing endpoint map.", nil, cl),
		errors: prometheus.NewDesc("routemode_hostrouting_scrape_errors",
			"1 if the pinned host-routing maps exist but could not be read.", nil, cl),
		monitorActive: prometheus.NewDesc("routemode_monitor_active",
			"1 while the host-routing programs report events to a routemodectl monitor.", nil, cl),
		monitorLost: prometheus.NewDesc("routemode_monitor_lost_events_total",
			"Monitor events the programs could not write because the ring buffer was full.", nil, cl),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.packets
	ch <- c.bytes
	ch <- c.endpoints
	ch <- c.errors
	ch <- c.monitorActive
	ch <- c.monitorLost
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	failed := 0.0
	cs, err := ReadCounters(c.pinDir)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		failed = 1
	default:
		for _, k := range cs {
			lv := []string{k.Program.String(), string(k.Verdict), k.Reason.String()}
			ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(k.Packets), lv...)
			ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(k.Bytes), lv...)
		}
	}
	eps, err := ListEndpoints(c.pinDir)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		failed = 1
	default:
		ch <- prometheus.MustNewConstMetric(c.endpoints, prometheus.GaugeValue, float64(len(eps)))
	}
	active, lost, err := MonitorState(c.pinDir)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		failed = 1
	default:
		ch <- prometheus.MustNewConstMetric(c.monitorActive, prometheus.GaugeValue, map[bool]float64{false: 0, true: 1}[active])
		ch <- prometheus.MustNewConstMetric(c.monitorLost, prometheus.CounterValue, float64(lost))
	}
	ch <- prometheus.MustNewConstMetric(c.errors, prometheus.GaugeValue, failed)
}
