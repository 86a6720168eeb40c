//go:build linux

/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

package bench

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/routemode/routemode/agent/hostrouting"
	"github.com/routemode/routemode/agent/hostrouting/internal/hrlab"
	"github.com/routemode/routemode/agent/nlsafe"
	"github.com/routemode/routemode/api/v1alpha1"
)

var (
	rounds   = flag.Int("datapath.rounds", 30, "interleaved rounds over all paths")
	duration = flag.Duration("datapath.duration", 150*time.Millisecond, "measured time per path, test and round")
	warmup   = flag.Duration("datapath.warmup", 30*time.Millisecond, "unmeasured time before each measurement")
	services = flag.Int("datapath.services", 1000, "ClusterIP services in the kube-proxy-sized ruleset")
	realtime = flag.Bool("datapath.realtime", true, "run tcp_rr's client and server threads SCHED_FIFO")
	only     = flag.String("datapath.paths", "", "comma-separated subset of paths to measure (default all)")
	kindsArg = flag.String("datapath.tests", "", "comma-separated subset of tests: tcp_rr,tcp_rr_poll,udp64,udp64_batch,tcp_stream (default all)")
	sameCPU  = flag.Bool("datapath.samecpu", false, "pin client and server to the same CPU (no cross-CPU wake-ups)")
)

// path is one configuration of the lab.
type path struct {
	name   string
	desc   string
	node   bool // node-to-node over the underlay, no pods
	tunnel bool
	mode   v1alpha1.HostRouting
	rules  *hrlab.KubeProxyOptions
	// fibOnly leaves the direct-route map empty: every packet leaving a pod
	// takes bpf_fib_lookup, as the hand-built prototype did.
	fibOnly bool
	// prototype runs the hand-built prototype (bpf/prototype; see
	// docs/host-routing.md) instead of routemode's programs.
	prototype bool
}

func paths() []path {
	kp := &hrlab.KubeProxyOptions{Services: *services}
	kpPP := &hrlab.KubeProxyOptions{Services: *services, PerPacket: true}
	return []path{
		{name: "node", desc: "node-to-node, underlay IPs", node: true},
		{name: "legacy", desc: "native, legacy host routing, no netfilter rules", mode: v1alpha1.HostRoutingLegacy},
		{name: "legacy+kp", desc: fmt.Sprintf("native, legacy, kube-proxy ruleset (%d services, nat + conntrack)", *services), mode: v1alpha1.HostRoutingLegacy, rules: kp},
		{name: "legacy+kp-pp", desc: fmt.Sprintf("native, legacy, kube-proxy ruleset walked per packet (%d rules)", 2**services), mode: v1alpha1.HostRoutingLegacy, rules: kpPP},
		{name: "bpf", desc: "native, eBPF host routing, no netfilter rules", mode: v1alpha1.HostRoutingBPF},
		{name: "bpf-fib", desc: "native, eBPF host routing without the direct-route map (FIB lookup per packet)", mode: v1alpha1.HostRoutingBPF, fibOnly: true},
		{name: "prototype", desc: "native, the hand-built prototype rebuilt (bpf/prototype): no conntrack check, FIB lookup per packet", mode: v1alpha1.HostRoutingLegacy, prototype: true},
		{name: "bpf+kp-pp", desc: "native, eBPF host routing, per-packet kube-proxy ruleset installed", mode: v1alpha1.HostRoutingBPF, rules: kpPP},
		{name: "tunnel", desc: "VXLAN, legacy host routing, no netfilter rules", tunnel: true, mode: v1alpha1.HostRoutingLegacy},
		{name: "tunnel+bpf", desc: "VXLAN, eBPF host routing, no netfilter rules", tunnel: true, mode: v1alpha1.HostRoutingBPF},
	}
}

var kinds = []Kind{TCPRR, TCPRRPoll, UDP64, UDP64Batch, TCPStream}

// rig is one lab per path, set up once: measurements alternate between
// paths every few hundred milliseconds instead of reconfiguring one lab,
// so that samples taken close together in time can be compared even on a
// machine whose background load drifts.
type rig struct {
	path    path
	lab     *hrlab.Lab
	handles [2]nlsafe.Handle
	mgrs    [2]*hostrouting.Manager
	cfgs    [2]hostrouting.Config
	// prototype holds the prototype path's programs and links.
	prototype []io.Closer
}

func newRig(b *testing.B, i int, p path) *rig {
	lab := hrlab.New(b, hrlab.Options{PodsPerNode: 1, Prefix: fmt.Sprintf("rmb%d", i)})
	r := &rig{path: p, lab: lab}
	pinRoot := filepath.Join(hostrouting.BPFFSRoot, "routemode-bench", lab.ID)
	for i, n := range lab.Nodes {
		r.cfgs[i] = hostrouting.Config{
			Underlay: hrlab.UnderlayDev, TunnelDevice: hrlab.TunnelDev,
			NativeRoutingCIDR: hrlab.NativeRoutingCIDR, PinDir: filepath.Join(pinRoot, n.Name),
		}
		h, err := nlsafe.NewHandleAtPath(n.NSPath)
		if err != nil {
			b.Fatal(err)
		}
		r.handles[i] = h
		r.mgrs[i] = hostrouting.NewManager(hostrouting.Options{Handle: h, NetNS: n.NSPath})
	}
	b.Cleanup(func() {
		for _, c := range r.prototype {
			_ = c.Close()
		}
		for i, m := range r.mgrs {
			_ = m.Remove(r.cfgs[i].PinDir)
			m.Close()
			r.handles[i].Close()
		}
		_ = os.RemoveAll(pinRoot)
		_ = os.Remove(filepath.Dir(pinRoot)) // only if no other lab uses it
	})
	if err := r.setup(b.Context()); err != nil {
		b.Fatalf("%s: %v", p.name, err)
	}
	return r
}

func (r *rig) setup(ctx context.Context) error {
	p := r.path
	if p.node {
		return nil
	}
	mtu := 1500
	route := r.lab.Native
	if p.tunnel {
		mtu, route = hrlab.TunnelMTU, r.lab.Tunnel
	}
	if err := r.lab.SetPodRouteMTU(mtu); err != nil {
		return err
	}
	if err := route(); err != nil {
		return err
	}
	for i, n := range r.lab.Nodes {
		eps := []hostrouting.Endpoint{{IP: n.Pods[0].IP, ID: uint32(i + 1), IfIndex: n.Pods[0].LXCIndex, MAC: n.Pods[0].MAC, NodeMAC: n.Pods[0].LXCMAC}}
		if !p.tunnel && !p.fibOnly {
			r.cfgs[i].DirectRoutes = n.DirectRoutes()
		}
		if _, err := r.mgrs[i].Apply(ctx, p.mode, r.cfgs[i], eps); err != nil {
			return err
		}
		if p.rules != nil {
			if err := n.KubeProxyRuleset(*p.rules); err != nil {
				return err
			}
		}
		if p.prototype {
			if err := r.attachPrototype(n); err != nil {
				return err
			}
		}
	}
	return nil
}

func (r *rig) peers() (client, server Peer) {
	cpuC, cpuS := 0, 1
	if *sameCPU {
		cpuS = 0
	}
	if runtime.NumCPU() < 2 {
		cpuC, cpuS = -1, -1
	}
	n1, n2 := r.lab.Nodes[0], r.lab.Nodes[1]
	if r.path.node {
		return Peer{NSPath: n1.NSPath, IP: n1.UnderlayIP, CPU: cpuC, RealTime: *realtime},
			Peer{NSPath: n2.NSPath, IP: n2.UnderlayIP, CPU: cpuS, RealTime: *realtime}
	}
	return Peer{NSPath: n1.Pods[0].NSPath, IP: n1.Pods[0].IP, CPU: cpuC, RealTime: *realtime},
		Peer{NSPath: n2.Pods[0].NSPath, IP: n2.Pods[0].IP, CPU: cpuS, RealTime: *realtime}
}

// forwarded reads Ip ForwDatagrams of both nodes: it must not move on BPF
// paths, the proof that the fast path was taken.
func (r *rig) forwarded() (uint64, error) {
	var total uint64
	for _, n := range r.lab.Nodes {
		err := n.Run(func() error {
			v, err := hrlab.SNMP("Ip:", "ForwDatagrams")
			total += v
			return err
		})
		if err != nil {
			return 0, err
		}
	}
	return total, nil
}

type sample struct {
	rate      float64
	cpu       float64 // ns per transaction, packet or KiB
	forwarded uint64
}

// BenchmarkDatapath measures every path in interleaved rounds and reports
// medians and ratios. One invocation is the whole measurement: run it with
// -benchtime=1x (hack/bpf/bench.sh).
func BenchmarkDatapath(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	if caps := hostrouting.Probe(); !caps.BPFHostRouting {
		b.Skipf("no eBPF host routing: %s", caps.Reason)
	}
	// The measurement threads block in raw system calls that keep their P;
	// leave Ps for everything else.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(max(4, runtime.GOMAXPROCS(0))))
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	ps := paths()
	if *only != "" {
		want := strings.Split(*only, ",")
		ps = slices.DeleteFunc(ps, func(p path) bool { return !slices.Contains(want, p.name) })
	}
	if *kindsArg != "" {
		kinds = nil
		for _, k := range strings.Split(*kindsArg, ",") {
			kinds = append(kinds, Kind(k))
		}
	}
	rigs := make([]*rig, len(ps))
	res := map[string]map[Kind][]sample{}
	for i, p := range ps {
		rigs[i] = newRig(b, i, p)
		res[p.name] = map[Kind][]sample{}
	}
	port := 20000
	b.ResetTimer()
	for round := range *rounds {
		for _, k := range kinds {
			// Rotate the order so no path always runs first or last.
			for j := range rigs {
				r := rigs[(j+round)%len(rigs)]
				client, server := r.peers()
				port++
				f0, err := r.forwarded()
				if err != nil {
					b.Fatal(err)
				}
				v, err := Measure(k, client, server, port, *warmup, *duration)
				if err != nil {
					b.Fatalf("round %d %s %s: %v", round+1, r.path.name, k, err)
				}
				f1, err := r.forwarded()
				if err != nil {
					b.Fatal(err)
				}
				res[r.path.name][k] = append(res[r.path.name][k], sample{rate: v.Rate, cpu: float64(v.CPU.Nanoseconds()), forwarded: f1 - f0})
			}
		}
	}
	b.StopTimer()
	report(b, ps, res)
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// pairedRatio is the median over rounds of a/b measured in the same round,
// for rates.
func pairedRatio(a, b []sample) float64 {
	return pairedMedian(a, b, func(x, y sample) float64 { return x.rate / y.rate })
}

// costRatio is the median over rounds of b's CPU cost over a's: above 1
// means a needs less CPU per transaction (packet, KiB) than b.
func costRatio(a, b []sample) float64 {
	return pairedMedian(a, b, func(x, y sample) float64 { return y.cpu / x.cpu })
}

func pairedMedian(a, b []sample, f func(x, y sample) float64) float64 {
	var rs []float64
	for i := range min(len(a), len(b)) {
		if a[i].rate > 0 && b[i].rate > 0 && a[i].cpu > 0 && b[i].cpu > 0 {
			rs = append(rs, f(a[i], b[i]))
		}
	}
	return median(rs)
}

func values(ss []sample, f func(sample) float64) []float64 {
	out := make([]float64, len(ss))
	for i, s := range ss {
		out[i] = f(s)
	}
	return out
}

func rateOf(s sample) float64 { return s.rate }
func cpuOf(s sample) float64  { return s.cpu }

var units = map[Kind]string{TCPRR: "trans/s", TCPRRPoll: "trans/s", UDP64: "pkt/s", UDP64Batch: "pkt/s", TCPStream: "Gbit/s"}
var cpuUnits = map[Kind]string{TCPRR: "ns/trans", TCPRRPoll: "ns/trans", UDP64: "ns/pkt", UDP64Batch: "ns/pkt", TCPStream: "ns/KiB"}

// comparisons are the ratios reported: every path against the node-to-node
// baseline and against native+legacy, then the pairs that isolate one
// change.
var comparisons = [][2]string{
	{"bpf", "node"}, {"legacy", "node"}, {"legacy+kp", "node"}, {"tunnel", "node"}, {"tunnel+bpf", "node"},
	{"bpf", "legacy"}, {"bpf-fib", "legacy"}, {"legacy+kp", "legacy"}, {"tunnel", "legacy"},
	{"prototype", "legacy"}, {"bpf", "prototype"},
	{"bpf", "bpf-fib"}, {"bpf", "legacy+kp"}, {"bpf", "legacy+kp-pp"},
	{"bpf+kp-pp", "legacy+kp-pp"}, {"tunnel+bpf", "tunnel"},
}

func report(b *testing.B, ps []path, res map[string]map[Kind][]sample) {
	var sb strings.Builder
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Fprintf(&sb, "\nDatapath benchmark: %d interleaved rounds x %s per path and test (after %s warm-up), one lab per path, client CPU 0, server CPU %d, SCHED_FIFO %v, load average now %s",
		*rounds, *duration, *warmup, map[bool]int{false: 1, true: 0}[*sameCPU], *realtime, strings.Join(strings.Fields(string(load))[:3], " "))
	fmt.Fprintf(&sb, "\nMedians over rounds. CPU = CPU time of client+server threads (datapath runs in their softirq context) per transaction / packet / KiB.\n\n")
	fmt.Fprintf(&sb, "%-13s", "path")
	for _, k := range kinds {
		fmt.Fprintf(&sb, " %12s %12s", string(k), cpuUnits[k])
	}
	fmt.Fprintf(&sb, "  %s\n", "IP-forwarded packets (max per sample)")
	for _, p := range ps {
		m := res[p.name]
		var fw uint64
		fmt.Fprintf(&sb, "%-13s", p.name)
		for _, k := range kinds {
			for _, s := range m[k] {
				fw = max(fw, s.forwarded)
			}
			format := " %12.0f %12.0f"
			if k == TCPStream {
				format = " %12.2f %12.0f"
			}
			fmt.Fprintf(&sb, format, median(values(m[k], rateOf)), median(values(m[k], cpuOf)))
		}
		fmt.Fprintf(&sb, "  %d\n", fw)
	}
	fmt.Fprintf(&sb, "\nPaths:\n")
	for _, p := range ps {
		fmt.Fprintf(&sb, "  %-13s %s\n", p.name, p.desc)
	}
	fmt.Fprintf(&sb, "\nRatios, medians of per-round ratios: rate = a/b rate; cpu = b/a CPU per op (>1: a is cheaper)\n")
	for _, c := range comparisons {
		a, okA := res[c[0]]
		bb, okB := res[c[1]]
		if !okA || !okB {
			continue
		}
		fmt.Fprintf(&sb, "  %-10s / %-13s", c[0], c[1])
		for _, k := range kinds {
			fmt.Fprintf(&sb, " | %s %.2fx cpu %.2fx", k, pairedRatio(a[k], bb[k]), costRatio(a[k], bb[k]))
		}
		sb.WriteString("\n")
	}
	fmt.Fprintf(&sb, "\nPer-round samples (rate, CPU):\n")
	for _, p := range ps {
		for _, k := range kinds {
			fmt.Fprintf(&sb, "  %-13s %-10s %s:", p.name, k, units[k])
			for _, s := range res[p.name][k] {
				fmt.Fprintf(&sb, " %.4g", s.rate)
			}
			fmt.Fprintf(&sb, "\n  %-13s %-10s %s:", "", "", cpuUnits[k])
			for _, s := range res[p.name][k] {
				fmt.Fprintf(&sb, " %.0f", s.cpu)
			}
			sb.WriteString("\n")
		}
	}
	fmt.Print(sb.String())

	for _, c := range [][2]string{{"bpf", "legacy"}, {"bpf", "prototype"}, {"bpf", "legacy+kp"}, {"bpf", "legacy+kp-pp"}} {
		if _, ok := res[c[0]]; !ok {
			continue
		}
		if _, ok := res[c[1]]; !ok {
			continue
		}
		for _, k := range kinds {
			name := c[0] + "/" + c[1] + "-" + string(k)
			b.ReportMetric(pairedRatio(res[c[0]][k], res[c[1]][k]), name+"-rate")
			b.ReportMetric(costRatio(res[c[0]][k], res[c[1]][k]), name+"-cpu")
		}
	}
}
