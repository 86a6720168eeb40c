//go:build linux

/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

package bpf

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
)

// monitorOn sets the flag the programs check before emitting.
func (o *objects) monitorOn(t testing.TB, on bool) {
	t.Helper()
	v := uint32(0)
	if on {
		v = 1
	}
	if err := o.coll.Maps[MapMonitor].Put(uint32(0), v); err != nil {
		t.Fatal(err)
	}
}

func (o *objects) reader(t testing.TB) *ringbuf.Reader {
	t.Helper()
	rd, err := ringbuf.NewReader(o.coll.Maps[MapEvents])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Close() })
	return rd
}

// drain returns the events in the ring buffer. Program.Run is synchronous,
// so everything the run emitted is there already: a deadline in the past
// makes Read return as soon as the buffer is empty.
func drain(t *testing.T, rd *ringbuf.Reader) []Event {
	t.Helper()
	rd.SetDeadline(time.Now())
	var evs []Event
	for {
		rec, err := rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return evs
		}
		if err != nil {
			t.Fatal(err)
		}
		e, err := ParseEvent(rec.RawSample)
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, e)
	}
}

func (o *objects) lost(t testing.TB) uint64 {
	t.Helper()
	var per []uint64
	if err := o.coll.Maps[MapMonitorLost].Lookup(uint32(0), &per); err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n
}

func TestMonitorEvents(t *testing.T) {
	tn := newTestNet(t)
	long := udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: remotePod, ttl: 64, totLen: 400})
	cases := map[string]struct {
		prog     string
		program  Program
		ifindex  int
		frame    []byte
		reason   Reason
		verdict  string
		endpoint uint32
		out      uint32 // redirect target
	}{
		"from-netdev to-endpoint names the receiving endpoint": {
			prog: ProgFromNetdev, program: ProgramNetdev, ifindex: tn.ul,
			frame:  udpFrame(tn.ulMAC, gwMAC, ipv4{src: remotePod, dst: localPod2, ttl: 63}),
			reason: ReasonRedirectPeer, verdict: "to-endpoint", endpoint: 1580, out: localPod2Ifindex,
		},
		"from-overlay to-stack for node traffic has no endpoint": {
			prog: ProgFromOverlay, program: ProgramOverlay, ifindex: tn.ul,
			frame:  udpFrame(tn.ulMAC, gwMAC, ipv4{src: remotePod, dst: netip.MustParseAddr("192.168.0.120"), ttl: 64}),
			reason: ReasonNoEndpoint, verdict: "to-stack",
		},
		"from-lxc to-endpoint names the receiving endpoint": {
			prog: ProgFromLXC, program: ProgramLXC, ifindex: tn.lxc,
			frame:  udpFrame(tn.lxcMAC, pod2MAC, ipv4{src: localPod2, dst: localPod, ttl: 64}),
			reason: ReasonRedirectPeer, verdict: "to-endpoint", endpoint: 1445, out: localPodIfindex,
		},
		"from-lxc to-network by direct route names the sending endpoint": {
			prog: ProgFromLXC, program: ProgramLXC, ifindex: tn.lxc,
			frame:  udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: netip.MustParseAddr("10.0.5.9"), ttl: 64}),
			reason: ReasonRedirectDirectRoute, verdict: "to-network", endpoint: 1445, out: directRouteIfindex,
		},
		"from-lxc to-network by FIB copies only the first 128 bytes": {
			prog: ProgFromLXC, program: ProgramLXC, ifindex: tn.lxc, frame: long,
			reason: ReasonRedirectFIB, verdict: "to-network", endpoint: 1445, out: uint32(tn.ul),
		},
		"from-lxc to-stack outside the CIDR": {
			prog: ProgFromLXC, program: ProgramLXC, ifindex: tn.lxc,
			frame:  udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: outside, ttl: 64}),
			reason: ReasonOutsideCIDR, verdict: "to-stack", endpoint: 1445,
		},
		"ARP to-stack is copied whole": {
			prog: ProgFromNetdev, program: ProgramNetdev, ifindex: tn.ul, frame: arpFrame(gwMAC),
			reason: ReasonNotIPv4, verdict: "to-stack",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			objs := loadObjects(t, Config{NativeRoutingCIDR: cidr})
			rd := objs.reader(t)

			objs.run(t, tn, tc.prog, tc.ifindex, tc.frame, 0)
			if evs := drain(t, rd); len(evs) != 0 {
				t.Fatalf("flag off: %d events, want none: %+v", len(evs), evs)
			}

			objs.monitorOn(t, true)
			_, out := objs.run(t, tn, tc.prog, tc.ifindex, tc.frame, 0)
			evs := drain(t, rd)
			if len(evs) != 1 {
				t.Fatalf("flag on: %d events, want 1", len(evs))
			}
			e := evs[0]
			if Program(e.Prog) != tc.program || Reason(e.Reason) != tc.reason || Reason(e.Reason).MonitorVerdict() != tc.verdict {
				t.Errorf("event is %s/%s (%s), want %s/%s (%s)", Program(e.Prog), Reason(e.Reason),
					Reason(e.Reason).MonitorVerdict(), tc.program, tc.reason, tc.verdict)
			}
			if e.Endpoint != tc.endpoint {
				t.Errorf("endpoint = %d, want %d", e.Endpoint, tc.endpoint)
			}
			if e.IfindexIn != uint32(tc.ifindex) || e.IfindexOut != tc.out {
				t.Errorf("ifindex in/out = %d/%d, want %d/%d", e.IfindexIn, e.IfindexOut, tc.ifindex, tc.out)
			}
			if e.Len != uint32(len(tc.frame)) {
				t.Errorf("len = %d, want %d", e.Len, len(tc.frame))
			}
			// The packet as the program handed it on: rewritten for a redirect.
			wantData := out[:min(len(tc.frame), 128)]
			if !bytes.Equal(e.Packet(), wantData) {
				t.Errorf("data:\n got %x\nwant %x", e.Packet(), wantData)
			}

			objs.monitorOn(t, false)
			objs.run(t, tn, tc.prog, tc.ifindex, tc.frame, 0)
			if evs := drain(t, rd); len(evs) != 0 {
				t.Fatalf("flag off again: %d events, want none", len(evs))
			}
			if n := objs.lost(t); n != 0 {
				t.Errorf("lost = %d, want 0", n)
			}
		})
	}
}

// A reader that does not keep up loses events, and every one is counted:
// each run leaves either an event or a lost count.
func TestMonitorCountsLostEvents(t *testing.T) {
	tn := newTestNet(t)
	objs := loadObjects(t, Config{NativeRoutingCIDR: cidr})
	rd := objs.reader(t)
	objs.monitorOn(t, true)

	const runs = 20000 // 1 MiB holds about 6000 events
	frame := udpFrame(tn.ulMAC, gwMAC, ipv4{src: remotePod, dst: localPod, ttl: 64})
	opts := &ebpf.RunOptions{Data: frame, Repeat: runs, Context: runContext(tn.ul, 0)}
	if err := inNS(tn.ns, func() error { _, err := objs.coll.Programs[ProgFromNetdev].Run(opts); return err }); err != nil {
		t.Fatal(err)
	}
	evs := drain(t, rd)
	lost := objs.lost(t)
	t.Logf("%d runs: %d events read, %d lost", runs, len(evs), lost)
	if lost == 0 {
		t.Errorf("no event lost with %d events and nobody reading", runs)
	}
	if uint64(len(evs))+lost != runs {
		t.Errorf("events %d + lost %d != runs %d", len(evs), lost, runs)
	}
}

// The observe-only programs report the packet while the flag is on and
// otherwise do nothing: the packet goes on unchanged, nothing is counted.
func TestObserveOnly(t *testing.T) {
	tn := newTestNet(t)
	for _, c := range []struct {
		prog    string
		program Program
		ifindex int
	}{{ProgObserveNetdev, ProgramNetdev, tn.ul}, {ProgObserveOverlay, ProgramOverlay, tn.ul}, {ProgObserveLXC, ProgramLXC, tn.lxc}} {
		t.Run(c.prog, func(t *testing.T) {
			objs := loadObjects(t, Config{})
			rd := objs.reader(t)
			frame := udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: localPod2, ttl: 64})
			for _, on := range []bool{false, true} {
				objs.monitorOn(t, on)
				ret, out := objs.run(t, tn, c.prog, c.ifindex, frame, 0)
				if ret != TCActUnspec || !bytes.Equal(out[:len(frame)], frame) {
					t.Errorf("monitor %v: verdict %d, packet changed: %v", on, ret, !bytes.Equal(out[:len(frame)], frame))
				}
				evs := drain(t, rd)
				if !on {
					if len(evs) != 0 {
						t.Errorf("flag off: %d events", len(evs))
					}
					continue
				}
				if len(evs) != 1 {
					t.Fatalf("flag on: %d events, want 1", len(evs))
				}
				e := evs[0]
				// from-lxc names the sender, the network programs the receiver.
				wantEP := uint32(1580)
				if c.program == ProgramLXC {
					wantEP = 1445
				}
				if Program(e.Prog) != c.program || Reason(e.Reason) != ReasonLegacy || e.Endpoint != wantEP ||
					e.IfindexOut != 0 || !bytes.Equal(e.Packet(), frame) {
					t.Errorf("event %s/%s endpoint %d out %d, want %s/legacy endpoint %d out 0 with the frame",
						Program(e.Prog), Reason(e.Reason), e.Endpoint, e.IfindexOut, c.program, wantEP)
				}
			}
			for _, r := range Reasons {
				if n := objs.counter(t, c.program, r); n != 0 {
					t.Errorf("counter %s/%s = %d, want 0", c.program, r, n)
				}
			}
		})
	}
}
