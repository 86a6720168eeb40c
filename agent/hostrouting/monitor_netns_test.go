//go:build linux

/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

package hostrouting_test

import (
	"bufio"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/routemode/routemode/agent/hostrouting"
	"github.com/routemode/routemode/bpf"
)

// monitorHelperEnv makes the test binary a monitor process for the pin
// directory it names (see TestMain): a process the tests can kill.
const monitorHelperEnv = "ROUTEMODE_TEST_MONITOR_PIN_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(monitorHelperEnv); dir != "" {
		os.Exit(monitorHelper(dir))
	}
	os.Exit(m.Run())
}

// monitorHelper reads events until killed, saying "ready" once the events
// are on and one line per event.
func monitorHelper(dir string) int {
	mon, err := hostrouting.OpenMonitor(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	for {
		ev, err := mon.Read(time.Time{})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Printf("event %s %s\n", bpf.Program(ev.Prog), bpf.Reason(ev.Reason))
	}
}

func openMonitor(t *testing.T, dir string) *hostrouting.Monitor {
	t.Helper()
	mon, err := hostrouting.OpenMonitor(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mon.Close() })
	return mon
}

// drainEvents returns the events already in the ring buffer.
func drainEvents(t *testing.T, mon *hostrouting.Monitor) []bpf.Event {
	t.Helper()
	var evs []bpf.Event
	for {
		ev, err := mon.Read(time.Now())
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return evs
		}
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
	}
}

// udpEvent finds the event of prog and verdict for a UDP packet from src to
// dst, decoding the copied bytes with gopacket as the CLI does.
func udpEvent(evs []bpf.Event, prog bpf.Program, verdict string, src, dst netip.AddrPort) (bpf.Event, *layers.IPv4, bool) {
	for _, ev := range evs {
		if bpf.Program(ev.Prog) != prog || bpf.Reason(ev.Reason).MonitorVerdict() != verdict {
			continue
		}
		p := gopacket.NewPacket(ev.Packet(), layers.LayerTypeEthernet, gopacket.Default)
		ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		udp, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if ip == nil || udp == nil {
			continue
		}
		if ip.SrcIP.Equal(src.Addr().AsSlice()) && ip.DstIP.Equal(dst.Addr().AsSlice()) &&
			(src.Port() == 0 || int(udp.SrcPort) == int(src.Port())) && (dst.Port() == 0 || int(udp.DstPort) == int(dst.Port())) {
			return ev, ip, true
		}
	}
	return bpf.Event{}, nil, false
}

func monitorFlag(t *testing.T, dir string) uint32 {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, bpf.MapMonitor), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var v uint32
	if err := m.Lookup(uint32(0), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// A UDP exchange between pods on two nodes in native routing with eBPF
// host routing: the sender's node reports the request to-network from its
// pod's endpoint, the receiver's node to-endpoint into its pod, and the
// reply the other way round, with the packet's headers intact.
func TestMonitorSeesPodTraffic(t *testing.T) {
	e := newEnv(t, 1, hostrouting.Options{})
	e.nativeBPF(t)
	p1, p2 := e.lab.Nodes[0].Pods[0], e.lab.Nodes[1].Pods[0]
	mons := [2]*hostrouting.Monitor{openMonitor(t, e.cfgs[0].PinDir), openMonitor(t, e.cfgs[1].PinDir)}

	// Every event of the exchange is in the ring buffers once the reply
	// reached p1: the programs emit before they hand the packet on.
	if _, err := p1.Ping(t.Context(), p2.EchoAddr(), 64, false); err != nil {
		t.Fatal(err)
	}
	sender, receiver := drainEvents(t, mons[0]), drainEvents(t, mons[1])
	t.Logf("node 1: %d events, node 2: %d events", len(sender), len(receiver))

	echo := p2.EchoAddr()
	req := func(ev bpf.Event, ip *layers.IPv4, ok bool, node int, what string, ep uint16, in, out int) {
		t.Helper()
		if !ok {
			t.Errorf("node %d: no %s event for the request", node, what)
			return
		}
		t.Logf("node %d: %s/%s endpoint %d ifindex %d -> %d, %d bytes, %s -> %s ttl %d",
			node, bpf.Program(ev.Prog), bpf.Reason(ev.Reason), ev.Endpoint, ev.IfindexIn, ev.IfindexOut, ev.Len, ip.SrcIP, ip.DstIP, ip.TTL)
		if ev.Endpoint != uint32(ep) {
			t.Errorf("node %d %s: endpoint %d, want %d", node, what, ev.Endpoint, ep)
		}
		if in != 0 && ev.IfindexIn != uint32(in) || out != 0 && ev.IfindexOut != uint32(out) {
			t.Errorf("node %d %s: ifindex %d -> %d, want %d -> %d", node, what, ev.IfindexIn, ev.IfindexOut, in, out)
		}
		if ev.Len < 14+20+8+64 {
			t.Errorf("node %d %s: %d bytes, want the whole probe", node, what, ev.Len)
		}
	}
	ev, ip, ok := udpEvent(sender, bpf.ProgramLXC, "to-network", netip.AddrPortFrom(p1.IP, 0), echo)
	req(ev, ip, ok, 1, "from-lxc to-network", p1.Endpoint.ID, p1.Endpoint.LXCIndex, 0)
	ev, ip, ok = udpEvent(receiver, bpf.ProgramNetdev, "to-endpoint", netip.AddrPortFrom(p1.IP, 0), echo)
	req(ev, ip, ok, 2, "from-netdev to-endpoint", p2.Endpoint.ID, 0, p2.Endpoint.LXCIndex)
	// The reply.
	ev, ip, ok = udpEvent(receiver, bpf.ProgramLXC, "to-network", echo, netip.AddrPortFrom(p1.IP, 0))
	req(ev, ip, ok, 2, "reply from-lxc to-network", p2.Endpoint.ID, p2.Endpoint.LXCIndex, 0)
	ev, ip, ok = udpEvent(sender, bpf.ProgramNetdev, "to-endpoint", echo, netip.AddrPortFrom(p1.IP, 0))
	req(ev, ip, ok, 1, "reply from-netdev to-endpoint", p1.Endpoint.ID, 0, p1.Endpoint.LXCIndex)

	// Closing turns the events off.
	for i, m := range mons {
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		if f := monitorFlag(t, e.cfgs[i].PinDir); f != 0 {
			t.Errorf("node %d: monitor flag %d after Close, want 0", i+1, f)
		}
	}
}

// A reader that falls behind a flood loses events, and is told how many.
func TestMonitorReportsLostEvents(t *testing.T) {
	e := newEnv(t, 1, hostrouting.Options{})
	e.nativeBPF(t)
	p1, p2 := e.lab.Nodes[0].Pods[0], e.lab.Nodes[1].Pods[0]
	mon := openMonitor(t, e.cfgs[1].PinDir)

	// Nobody reads while the probes flow: the 1 MiB buffer holds about
	// 6000 events, two per probe on this node.
	s := stream(t, p1, p2.EchoAddr(), false)
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var lost uint64
	for lost == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no event lost after 30 s of probes (%s)", s.Snapshot())
		}
		<-tick.C
		var err error
		if lost, err = mon.Lost(); err != nil {
			t.Fatal(err)
		}
	}
	st := s.Stop()
	evs := drainEvents(t, mon)
	lost, err := mon.Lost()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s; monitor read %d events, lost %d", st, len(evs), lost)
	if len(evs) == 0 {
		t.Error("no event read from the full buffer")
	}
}

// A monitor killed mid-stream leaves the events on; the next Apply, which
// the agent runs on every resync, turns them off because no monitor holds
// the node's lock any more. While it runs, a second monitor is refused.
func TestKilledMonitorIsCleanedUp(t *testing.T) {
	e := newEnv(t, 1, hostrouting.Options{})
	e.nativeBPF(t)
	p1, p2 := e.lab.Nodes[0].Pods[0], e.lab.Nodes[1].Pods[0]
	dir := e.cfgs[0].PinDir

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), monitorHelperEnv+"="+dir)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() || lines.Text() != "ready" {
		t.Fatalf("monitor process did not start: %q %v", lines.Text(), lines.Err())
	}
	if _, err := hostrouting.OpenMonitor(dir); !errors.Is(err, hostrouting.ErrMonitorBusy) {
		t.Fatalf("second monitor: %v, want ErrMonitorBusy", err)
	}

	// Mid-stream: the process has printed an event.
	if _, err := p1.Ping(t.Context(), p2.EchoAddr(), 64, false); err != nil {
		t.Fatal(err)
	}
	if !lines.Scan() || !strings.HasPrefix(lines.Text(), "event ") {
		t.Fatalf("monitor process printed %q %v, want an event", lines.Text(), lines.Err())
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if f := monitorFlag(t, dir); f != 1 {
		t.Fatalf("monitor flag %d after the kill, want 1 (left on)", f)
	}

	changes := e.apply(t, 0, bpfMode)
	if !containsLine(changes, "monitor events: turned off") {
		t.Errorf("apply changes %q lack the monitor flag's reset", changes)
	}
	if f := monitorFlag(t, dir); f != 0 {
		t.Errorf("monitor flag %d after apply, want 0", f)
	}
	if again := e.apply(t, 0, bpfMode); len(again) != 0 {
		t.Errorf("second apply changed %q, want nothing", again)
	}
	openMonitor(t, dir) // the lock is free again
}

func containsLine(lines []string, prefix string) bool {
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			return true
		}
	}
	return false
}
