package node_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/netlab"
	"github.com/routemode/routemode/internal/probe"
)

// podPerNode brings the lab up in mode d and adds one pod per node.
func podPerNode(ctx context.Context, t *testing.T, l *netlab.Lab, d v1alpha1.NodeDatapath) []*netlab.Pod {
	t.Helper()
	netlab.MustStep(t, ctx, l.Nodes, d)
	var pods []*netlab.Pod
	for i, n := range l.Nodes {
		pods = append(pods, netlab.MustAddPod(t, ctx, n, "pod"+string(rune('1'+i))))
	}
	return pods
}

// rollout moves every node from steady mode from to steady mode to with
// the steps the operator's planner writes: prepare all, switch node by
// node, finalize all.
func rollout(ctx context.Context, t *testing.T, l *netlab.Lab, from, to v1alpha1.NodeDatapath) {
	t.Helper()
	steps := netlab.MustSteps(t, from, to)
	step := func(name string, nodes []*netlab.Node, d v1alpha1.NodeDatapath) {
		t.Helper()
		start := time.Now()
		netlab.MustStep(t, ctx, nodes, d)
		t.Logf("%s: %s took %s", time.Now().Format("15:04:05.000"), name, time.Since(start).Round(time.Millisecond))
	}
	step("prepare all", l.Nodes, steps.Prepare)
	for _, n := range l.Nodes {
		step("switch "+n.Name, []*netlab.Node{n}, steps.Switch)
		time.Sleep(500 * time.Millisecond) // let traffic run in the mixed state
	}
	step("finalize all", l.Nodes, steps.Final)
}

func routeTo(t *testing.T, n *netlab.Node, dst string) string {
	t.Helper()
	out, err := netlab.IP(n, "route", "show", dst)
	if err != nil {
		t.Fatalf("ip route show %s: %v: %s", dst, err, out)
	}
	return strings.TrimSpace(out)
}

// window counts underlay frames for d while the streams run.
func window(c *probe.Capture, d time.Duration) probe.CaptureStats {
	c.Reset()
	time.Sleep(d)
	return c.Snapshot()
}

// TestLiveSwitchZeroLoss switches three nodes from VXLAN to native routing
// and back, step by step as the operator orders it, while every pod streams
// probes to every pod on another node and a TCP connection stays open; not
// a single probe may be lost.
func TestLiveSwitchZeroLoss(t *testing.T) {
	l := netlab.New(t, netlab.Spec{Nodes: 3, CNI: true, Agents: true, RPFilter: 1})
	ctx := netlab.Context(t, 2*time.Minute)
	pods := podPerNode(ctx, t, l, netlab.Tunnel)
	capture := netlab.MustCapture(t, l)

	tcpEcho, err := probe.StartTCPEcho(pods[1].Path(), pods[1].EchoAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer tcpEcho.Close()
	tcp, err := probe.StartTCPCheck(ctx, probe.TCPCheckConfig{NSPath: pods[0].Path(), Target: tcpEcho.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	discards, backlog := netlab.UnresolvedDiscards(), netlab.BacklogDrops()
	streams := netlab.MustStreams(t, pods, 1000)
	t.Logf("%s: streams started", time.Now().Format("15:04:05.000"))

	tun := window(capture, 300*time.Millisecond)
	t.Logf("tunnel mode on the underlay: %s", tun)
	if tun.Encapsulated == 0 || tun.Plain != 0 {
		t.Errorf("tunnel mode: want only encapsulated pod packets on the underlay, got %s", tun)
	}

	rollout(ctx, t, l, netlab.Tunnel, netlab.Native)
	nat := window(capture, 300*time.Millisecond)
	t.Logf("native mode on the underlay: %s", nat)
	if nat.TunnelUDP != 0 || nat.Plain == 0 {
		t.Errorf("native mode: want only plain pod packets on the underlay, got %s", nat)
	}
	if got := routeTo(t, l.Nodes[0], "10.0.1.0/24"); !strings.Contains(got, "via 192.168.0.130 dev eth0") {
		t.Errorf("node-1 route to node-2's pods: %q, want via 192.168.0.130 dev eth0", got)
	}
	if out, err := netlab.IP(l.Nodes[0], "link", "show", "rm_vxlan"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("native mode keeps rm_vxlan: %s %v", out, err)
	}
	// Full-size packets with DF pass in native mode.
	if _, err := pods[0].Ping(ctx, pods[1].EchoAddr(), 1500-28, true); err != nil {
		t.Errorf("native mode: 1472-byte DF probe: %v", err)
	}

	rollout(ctx, t, l, netlab.Native, netlab.Tunnel)
	back := window(capture, 300*time.Millisecond)
	t.Logf("back in tunnel mode on the underlay: %s", back)
	if back.Encapsulated == 0 || back.Plain != 0 {
		t.Errorf("tunnel mode again: want only encapsulated pod packets, got %s", back)
	}
	if got := routeTo(t, l.Nodes[0], "10.0.1.0/24"); !strings.Contains(got, "via 10.0.1.0 dev rm_vxlan") || !strings.Contains(got, "mtu 1450") {
		t.Errorf("node-1 route to node-2's pods: %q, want via 10.0.1.0 dev rm_vxlan onlink mtu 1450", got)
	}
	// Tunnel-sized DF packets pass; full-size ones are refused in the pod.
	if _, err := pods[0].Ping(ctx, pods[1].EchoAddr(), 1450-28, true); err != nil {
		t.Errorf("tunnel mode: 1422-byte DF probe: %v", err)
	}
	if _, err := pods[0].Ping(ctx, pods[1].EchoAddr(), 1500-28, true); err == nil {
		t.Errorf("tunnel mode: a 1472-byte DF probe left the pod, whose route MTU must be 1450")
	}

	stats := streams.Stop()
	tcpStats := tcp.Stop()
	total := netlab.Total(stats)
	t.Logf("probe streams during tunnel→native→tunnel (%d streams at 1000/s):\n%s", len(stats), netlab.Report(stats))
	t.Logf("total: %s; echo responders' own loss: %v", total, streams.EchoLoss())
	t.Logf("tcp connection pod1→pod2: %s", tcpStats)
	t.Logf("machine-wide packets discarded awaiting neighbour resolution meanwhile: %d; dropped for a full CPU backlog: %d", netlab.UnresolvedDiscards()-discards, netlab.BacklogDrops()-backlog)
	for name, s := range stats {
		if s.Lost != 0 || s.Sent == 0 {
			t.Errorf("stream %s: sent %d, lost %d; want 0 lost", name, s.Sent, s.Lost)
		}
	}
	if tcpStats.Resets != 0 || tcpStats.Errors != 0 || tcpStats.Reconnects != 0 || tcpStats.Messages == 0 {
		t.Errorf("tcp connection: %s; want no reset, error or reconnect", tcpStats)
	}
}
