//go:build linux

/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

package hostrouting_test

import (
	"bufio"
	"context"
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
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/routemode/routemode/agent/hostrouting"
	"github.com/routemode/routemode/bpf"
	"github.com/routemode/routemode/internal/netlab"
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

// monitorHelper reads events until killed, saying "waiting" while it waits
// for the agent, "ready" once the events are on, and one line per event.
func monitorHelper(dir string) int {
	mon, err := hostrouting.OpenMonitor(context.Background(), dir, func() { fmt.Println("waiting") })
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
	mon, err := hostrouting.OpenMonitor(context.Background(), dir, nil)
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

	// The agent's metrics say so too.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(hostrouting.NewCollector("node-2", e.cfgs[1].PinDir))
	if n, err := testutil.GatherAndCount(reg, "routemode_monitor_lost_events_total"); err != nil || n != 1 {
		t.Fatalf("lost events metric: %d series, %v", n, err)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(fmt.Sprintf(`
# HELP routemode_monitor_active 1 while the host-routing programs report events to a routemodectl monitor.
# TYPE routemode_monitor_active gauge
routemode_monitor_active{node="node-2"} 1
# HELP routemode_monitor_lost_events_total Monitor events the programs could not write because the ring buffer was full.
# TYPE routemode_monitor_lost_events_total counter
routemode_monitor_lost_events_total{node="node-2"} %d
`, lost)), "routemode_monitor_active", "routemode_monitor_lost_events_total"); err != nil {
		t.Error(err)
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

	cmd, lines := startMonitorProcess(t, dir)
	expectLine(t, lines, "ready")
	if _, err := hostrouting.OpenMonitor(context.Background(), dir, nil); !errors.Is(err, hostrouting.ErrMonitorBusy) {
		t.Fatalf("second monitor: %v, want ErrMonitorBusy", err)
	}

	// Mid-stream: the process has printed an event.
	if _, err := p1.Ping(t.Context(), p2.EchoAddr(), 64, false); err != nil {
		t.Fatal(err)
	}
	expectLine(t, lines, "event ")
	kill(t, cmd)
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

// startMonitorProcess starts a monitor process on dir and returns it and
// its output lines.
func startMonitorProcess(t *testing.T, dir string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
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
	return cmd, bufio.NewScanner(stdout)
}

// expectLine waits for the monitor process's next line, which must start
// with prefix.
func expectLine(t *testing.T, lines *bufio.Scanner, prefix string) {
	t.Helper()
	if !lines.Scan() || !strings.HasPrefix(lines.Text(), prefix) {
		t.Fatalf("monitor process printed %q (%v), want %q", lines.Text(), lines.Err(), prefix)
	}
}

func kill(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
}

func observePins(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "observe"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// Legacy host routing has no programs: while a monitor runs, the agent
// attaches observe-only ones, which report the packets the stack routes,
// and they are gone when the monitor ends.
func TestMonitorInLegacyAttachesObserveOnly(t *testing.T) {
	e, p1, p2, dir := legacyEnv(t)

	waiting := make(chan struct{})
	type opened struct {
		mon *hostrouting.Monitor
		err error
	}
	done := make(chan opened, 1)
	go func() {
		mon, err := hostrouting.OpenMonitor(t.Context(), dir, func() { close(waiting) })
		done <- opened{mon, err}
	}()
	select {
	case <-waiting:
	case o := <-done:
		t.Fatalf("monitor opened without waiting for the agent: %v", o.err)
	}
	changes := e.apply(t, 0, legacyMode)
	for _, want := range []string{
		"tcx ingress eth0: attached " + bpf.ProgObserveNetdev,
		"tcx ingress " + p1.Endpoint.LXCName + ": attached " + bpf.ProgObserveLXC,
	} {
		if !containsLine(changes, want) {
			t.Errorf("apply changes %q lack %q", changes, want)
		}
	}
	o := <-done
	if o.err != nil {
		t.Fatal(o.err)
	}
	mon := o.mon
	t.Cleanup(func() { mon.Close() })
	if got := hostrouting.InForce(dir); got != legacyMode {
		t.Errorf("host routing in force with observe-only programs: %s, want legacy", got)
	}

	if _, err := p1.Ping(t.Context(), p2.EchoAddr(), 64, false); err != nil {
		t.Fatal(err)
	}
	evs := drainEvents(t, mon)
	t.Logf("node 1: %d events", len(evs))
	echo := p2.EchoAddr()
	for _, c := range []struct {
		prog     bpf.Program
		src, dst netip.AddrPort
		what     string
	}{
		{bpf.ProgramLXC, netip.AddrPortFrom(p1.IP, 0), echo, "request from-lxc"},
		{bpf.ProgramNetdev, echo, netip.AddrPortFrom(p1.IP, 0), "reply from-netdev"},
	} {
		ev, ip, ok := udpEvent(evs, c.prog, "to-stack", c.src, c.dst)
		if !ok {
			t.Errorf("no %s to-stack event", c.what)
			continue
		}
		t.Logf("%s: %s/%s endpoint %d, %s -> %s", c.what, bpf.Program(ev.Prog), bpf.Reason(ev.Reason), ev.Endpoint, ip.SrcIP, ip.DstIP)
		if bpf.Reason(ev.Reason) != bpf.ReasonLegacy || ev.Endpoint != uint32(p1.Endpoint.ID) {
			t.Errorf("%s: reason %s endpoint %d, want legacy and %d", c.what, bpf.Reason(ev.Reason), ev.Endpoint, p1.Endpoint.ID)
		}
	}
	if cs := e.counters(t, 0); count(cs, bpf.ProgramLXC, bpf.Reasons...)+count(cs, bpf.ProgramNetdev, bpf.Reasons...) != 0 {
		t.Error("observe-only programs counted packets")
	}

	if err := mon.Close(); err != nil {
		t.Fatal(err)
	}
	if pins := observePins(t, dir); len(pins) != 0 {
		t.Errorf("observe-only programs left after the monitor closed: %v", pins)
	}
	if again := e.apply(t, 0, legacyMode); len(again) != 0 {
		t.Errorf("apply after the monitor closed changed %q, want nothing", again)
	}
}

// A monitor killed in legacy host routing leaves the observe-only programs
// attached until the agent's next Apply removes them.
func TestKilledMonitorInLegacyLeavesNoProgram(t *testing.T) {
	e, p1, p2, dir := legacyEnv(t)

	cmd, lines := startMonitorProcess(t, dir)
	expectLine(t, lines, "waiting")
	e.apply(t, 0, legacyMode)
	expectLine(t, lines, "ready")
	if _, err := p1.Ping(t.Context(), p2.EchoAddr(), 64, false); err != nil {
		t.Fatal(err)
	}
	expectLine(t, lines, "event ")
	kill(t, cmd)
	if pins := observePins(t, dir); len(pins) == 0 {
		t.Fatal("no observe-only program attached before the kill")
	}

	changes := e.apply(t, 0, legacyMode)
	t.Logf("apply after the kill: %q", changes)
	if pins := observePins(t, dir); len(pins) != 0 {
		t.Errorf("observe-only programs left after apply: %v", pins)
	}
	if !containsLine(changes, "tcx ingress eth0: detached") {
		t.Errorf("apply changes %q lack the observe-only program's detach", changes)
	}
}

// legacyEnv is two natively routed nodes in legacy host routing, a pod on
// each, and node 1's pin directory.
func legacyEnv(t *testing.T) (e *env, p1, p2 *netlab.Pod, dir string) {
	t.Helper()
	e = newEnv(t, 1, hostrouting.Options{})
	e.native(t)
	e.apply(t, 0, legacyMode)
	e.apply(t, 1, legacyMode)
	return e, e.lab.Nodes[0].Pods[0], e.lab.Nodes[1].Pods[0], e.cfgs[0].PinDir
}
