//go:build linux

/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

package bpf

import (
	"bytes"
	_ "embed"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// beforeMonitor is bpf/hostrouting_bpfel.o as it was before the programs
// had a monitor (commit 8dbb432, the parent of d93b6da), built by the same
// pinned clang: the baseline BenchmarkMonitorCost compares against.
//
//go:embed testdata/hostrouting_before_monitor.o
var beforeMonitor []byte

// BenchmarkMonitorCost is what the monitor costs the programs per packet:
// the programs from before the monitor, today's with the flag off, and
// today's with it on and a reader draining the ring buffer, on the same
// packets, timed by the kernel's BPF_PROG_TEST_RUN (which stops its clock
// while the test is rescheduled, so a loaded machine disturbs it less
// than a wall clock). The variants alternate within each round of b.N
// rounds; the figures are each variant's median ns per packet and the
// ratios of the medians to the programs before the monitor.
func BenchmarkMonitorCost(b *testing.B) {
	tn := newTestNet(b)
	cfg := Config{NativeRoutingCIDR: cidr, RecordLastRedirect: true}
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(beforeMonitor))
	if err != nil {
		b.Fatal(err)
	}
	if err := configure(spec, cfg); err != nil {
		b.Fatal(err)
	}
	on := loadObjects(b, cfg)
	on.monitorOn(b, true)
	drained := drainForever(b, on)
	variants := []struct {
		name string
		objs *objects
	}{{"before", newObjects(b, spec)}, {"off", loadObjects(b, cfg)}, {"on", on}}

	for _, path := range []struct {
		name, prog string
		ifindex    int
		frame      []byte
	}{
		{"from-lxc to-network", ProgFromLXC, tn.lxc, udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: netip.MustParseAddr("10.0.5.9"), ttl: 64})},
		{"from-netdev to-endpoint", ProgFromNetdev, tn.ul, udpFrame(tn.ulMAC, gwMAC, ipv4{src: remotePod, dst: localPod2, ttl: 63})},
	} {
		b.Run(path.name, func(b *testing.B) {
			ns := make([][]float64, len(variants))
			for b.Loop() {
				for i, v := range variants {
					perRun, err := timedRun(tn, v.objs.coll.Programs[path.prog], path.frame, runContext(path.ifindex, 0), 20_000)
					if err != nil {
						b.Fatalf("%s: %v", v.name, err)
					}
					ns[i] = append(ns[i], perRun)
				}
			}
			for i, v := range variants {
				b.ReportMetric(median(ns[i]), "ns/pkt-"+v.name)
			}
			b.ReportMetric(median(ns[1])/median(ns[0]), "off/before")
			b.ReportMetric(median(ns[2])/median(ns[0]), "on/before")
		})
	}
	b.Logf("monitor on: %d events read, %d lost (ring buffer full)", drained(), on.lost(b))
}

// drainForever reads o's ring buffer until the benchmark ends, as a
// monitor would, and returns how many events it read so far.
func drainForever(b *testing.B, o *objects) func() uint64 {
	rd := o.reader(b)
	counts := make(chan uint64, 1)
	counts <- 0
	go func() {
		for {
			if _, err := rd.Read(); err != nil {
				return // closed by the reader's cleanup
			}
			counts <- <-counts + 1
		}
	}()
	return func() uint64 {
		n := <-counts
		counts <- n
		return n
	}
}

// timedRun runs prog on the packet runs times in the test network's
// namespace and returns the kernel's average time per run, failing if a
// run does not redirect: every variant must take the same path for the
// comparison to mean anything. cilium/ebpf's Program.Benchmark reports
// that time but takes no context (the device a packet arrives on), so
// this is the raw BPF_PROG_TEST_RUN. One packet per call: a repeated run
// reuses its skb, whose TTL the programs decrement until they stop
// redirecting it.
func timedRun(tn *testNet, prog *ebpf.Program, data, ctx []byte, runs int) (float64, error) {
	out := make([]byte, len(data)+256)
	var total uint64
	err := inNS(tn.ns, func() error {
		for range runs {
			attr := testRunAttr{progFD: uint32(prog.FD()), repeat: 1,
				dataIn: uint64(uintptr(unsafe.Pointer(&data[0]))), dataSizeIn: uint32(len(data)),
				dataOut: uint64(uintptr(unsafe.Pointer(&out[0]))), dataSizeOut: uint32(len(out)),
				ctxIn: uint64(uintptr(unsafe.Pointer(&ctx[0]))), ctxSizeIn: uint32(len(ctx))}
			_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_TEST_RUN, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
			if errno != 0 {
				return fmt.Errorf("BPF_PROG_TEST_RUN: %w", errno)
			}
			if attr.retval != 7 { // TC_ACT_REDIRECT
				return fmt.Errorf("returned %d, want TC_ACT_REDIRECT", int32(attr.retval))
			}
			total += uint64(attr.duration)
		}
		return nil
	})
	return float64(total) / float64(runs), err
}

// testRunAttr is struct bpf_attr's test member
// (include/uapi/linux/bpf.h).
type testRunAttr struct {
	progFD, retval, dataSizeIn, dataSizeOut uint32
	dataIn, dataOut                         uint64
	repeat, duration                        uint32
	ctxSizeIn, ctxSizeOut                   uint32
	ctxIn, ctxOut                           uint64
	flags, cpu, batchSize                   uint32
	_                                       uint32
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}
