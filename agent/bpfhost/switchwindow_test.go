package bpfhost_test

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/routemode/routemode/agent/bpfhost"
	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/netlab"
	"github.com/routemode/routemode/internal/probe"
)

// TestNewConnectionsDuringSwitchToBPF walks two nodes from VXLAN to native
// routing with eBPF host routing, step by step as the operator orders it
// (while one node has switched and the other has not, they disagree on
// both the way they send and host routing), and opens new TCP connections
// all along: from a pod on each node to a ClusterIP (kube-proxy's DNAT on
// the client's node, under its ruleset) whose backend is on the other
// node, and to the other node's pod directly. Every one must open and get
// its message echoed before the first SYN retransmission (1 s) is due.
func TestNewConnectionsDuringSwitchToBPF(t *testing.T) {
	routers := map[string]*bpfhost.Router{}
	l := bpfLab(t, routers, func(*netlab.Node) string { return "" })
	ctx := netlab.Context(t, 2*time.Minute)
	withBPF := netlab.Native
	withBPF.HostRouting = v1alpha1.HostRoutingBPF
	steps := netlab.MustSteps(t, netlab.Tunnel, withBPF)
	netlab.MustStep(t, ctx, l.Nodes, netlab.Tunnel)
	n1, n2 := l.Nodes[0], l.Nodes[1]
	pods := []*netlab.Pod{netlab.MustAddPod(t, ctx, n1, "pod1"), netlab.MustAddPod(t, ctx, n2, "pod2")}
	// The Service's backend listens on a port of its own: a connection
	// to the ClusterIP and one straight to the pod never share a tuple.
	const port, backendPort = 7300, 7301
	var vips []netip.AddrPort
	for i, p := range pods {
		for _, pt := range []uint16{port, backendPort} {
			echo, err := probe.StartTCPEcho(p.Path(), netip.AddrPortFrom(p.IP, pt))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = echo.Close() })
		}
		// kube-proxy's rules are on every node: pod i is the backend of
		// ClusterIP 10.96.1.i everywhere.
		vip := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, 1, byte(i)}), 80)
		vips = append(vips, vip)
		for _, n := range l.Nodes {
			if err := n.ServiceDNAT(vip, netip.AddrPortFrom(p.IP, backendPort)); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, n := range l.Nodes {
		if err := n.KubeProxyRuleset(netlab.KubeProxyOptions{Services: 1}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.RemoveKubeProxyRuleset() })
	}

	type flow struct {
		name   string
		client *netlab.Pod
		target netip.AddrPort
	}
	flows := []flow{
		{"pod on node-1 → ClusterIP of node-2's pod", pods[0], vips[1]},
		{"pod on node-2 → ClusterIP of node-1's pod", pods[1], vips[0]},
		{"pod on node-1 → node-2's pod", pods[0], netip.AddrPortFrom(pods[1].IP, port)},
		{"pod on node-2 → node-1's pod", pods[1], netip.AddrPortFrom(pods[0].IP, port)},
	}
	var (
		mu       sync.Mutex
		opened   = make([]int, len(flows)) // connections begun and ended
		failures []string
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	begin := time.Now()
	for i, f := range flows {
		for range 3 { // a few at once, as a client with concurrent requests
			wg.Add(1)
			go func() {
				defer wg.Done()
				// 100 connections a second each: enough to meet every
				// state, few enough that no ephemeral port comes back
				// while conntrack remembers it.
				tick := time.NewTicker(10 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-stop:
						return
					case <-tick.C:
					}
					at := time.Since(begin)
					err := exchangeOnce(ctx, f.client.Path(), f.target, 900*time.Millisecond)
					mu.Lock()
					opened[i]++
					if err != nil {
						failures = append(failures, fmt.Sprintf("%s, begun at %s: %v", f.name, at.Round(time.Millisecond), err))
					}
					mu.Unlock()
				}
			}()
		}
	}
	// After each step, every flow opens connections in the state it left
	// before the next one comes.
	settle := func(name string) {
		t.Helper()
		mu.Lock()
		from := append([]int(nil), opened...)
		mu.Unlock()
		deadline := time.Now().Add(30 * time.Second)
		for {
			mu.Lock()
			done := true
			for i := range opened {
				done = done && opened[i] >= from[i]+20
			}
			mu.Unlock()
			if done {
				t.Logf("%s at %s", name, time.Since(begin).Round(time.Millisecond))
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the flows opened no 20 connections each in 30 s", name)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	settle("before the switch")
	netlab.MustStep(t, ctx, l.Nodes, steps.Prepare)
	settle("both nodes prepared")
	netlab.MustStep(t, ctx, []*netlab.Node{n1}, steps.Switch)
	settle("node-1 switched, node-2 not")
	netlab.MustStep(t, ctx, []*netlab.Node{n2}, steps.Switch)
	settle("both nodes switched")
	netlab.MustStep(t, ctx, l.Nodes, steps.Final)
	settle("both nodes final")
	close(stop)
	wg.Wait()
	t.Logf("new connections per flow: %v", opened)
	for _, f := range failures {
		t.Errorf("new connection failed: %s", f)
	}
}

// exchangeOnce opens a TCP connection to target from the namespace at
// nsPath and gets one message echoed on it, all within timeout.
func exchangeOnce(ctx context.Context, nsPath string, target netip.AddrPort, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := probe.DialTCP(ctx, nsPath, target)
	if err != nil {
		return err
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	if err := c.SetDeadline(deadline); err != nil {
		return err
	}
	msg := []byte("ping")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := c.Read(got); err != nil {
		return err
	}
	if string(got) != string(msg) {
		return fmt.Errorf("echoed %q, want %q", got, msg)
	}
	return nil
}
