package scale

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/routemode/routemode/agent/health"
	"github.com/routemode/routemode/agent/node"
	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/controllers/rollout"
	"github.com/routemode/routemode/internal/netlab"
	"github.com/routemode/routemode/internal/probe"
)

// sweepNet holds the podCIDRs of the sweep's peers: one /24 each, all
// answered by node-2.
var sweepNet = netip.MustParsePrefix("10.64.0.0/11")

// BenchmarkHealthSweep measures the health gate's full sweep: after its
// datapath changes, a switching node's agent probes every peer's health
// endpoint before it reports healthy, and the operator's next batch waits
// for that report. Node-1 runs the real agent (agent/node: classify,
// render, apply, then probe through its health endpoint's namespace, over
// its routes and the underlay) with AGENT_PEERS peers whose health
// endpoints are real addresses on node-2: node-2's kernel takes the whole
// of sweepNet as local and one responder answers on every address, so
// each probe is a real UDP round trip between namespaces. Each iteration
// bumps the generation with the datapath unchanged (the gate's full sweep,
// nothing to apply), then reconciles once more at that generation (the
// steady state's rotating budget).
func BenchmarkHealthSweep(b *testing.B) {
	lab := netlab.New(b, netlab.Spec{Nodes: 2, Agents: true, Log: zap.New(zap.WriteTo(io.Discard))})
	n1, n2 := lab.Nodes[0], lab.Nodes[1]
	echo, err := probe.StartEcho(n2.Path(), netip.AddrPortFrom(netip.IPv4Unspecified(), health.Port))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = echo.Close() })
	lo, err := n2.Handle.LinkByName("lo")
	if err != nil {
		b.Fatal(err)
	}
	local := &netlink.Route{Dst: ipNet(sweepNet), LinkIndex: lo.Attrs().Index, Type: unix.RTN_LOCAL, Table: unix.RT_TABLE_LOCAL, Scope: netlink.SCOPE_HOST}
	back := &netlink.Route{Dst: ipNet(n1.PodCIDR), Gw: n1.IP.AsSlice()}
	for _, r := range []*netlink.Route{local, back} {
		if err := n2.Handle.RouteAdd(r); err != nil {
			b.Fatal(err)
		}
	}
	// Node-2 only answers; its agent's peers are not measured.
	lab.Hide(n2, true)
	count := agentPeers()
	if count > 1<<(24-sweepNet.Bits()) {
		b.Fatalf("AGENT_PEERS=%d: the sweep has room for %d peers", count, 1<<(24-sweepNet.Bits()))
	}
	peers := make([]node.Peer, count)
	base := sweepNet.Addr().As4()
	for i := range peers {
		a := base
		a[1] += byte(i / 256)
		a[2] = byte(i % 256)
		peers[i] = node.Peer{Name: fmt.Sprintf("peer-%04d", i), IP: n2.IP, PodCIDR: netip.PrefixFrom(netip.AddrFrom4(a), 24)}
	}
	lab.SetExtraPeers(peers...)
	native := rollout.Steady(v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelDisabled, NativeRoutingCIDR: "10.0.0.0/8", AutoDirectNodeRoutes: true})
	ctx := context.Background()
	n1.SetDatapath(native)
	if res := n1.Reconcile(ctx); !healthy(n1) {
		b.Fatalf("node-1 did not converge with %d peers: %+v", count, res.Status.Conditions)
	}
	var sweep, steady time.Duration
	var steadyProbes int
	for b.Loop() {
		n1.SetDatapath(native)
		start := time.Now()
		res := n1.Reconcile(ctx)
		took := time.Since(start)
		if len(res.Probes) != count || !healthy(n1) {
			b.Fatalf("the full sweep probed %d of %d peers; healthy: %v", len(res.Probes), count, healthy(n1))
		}
		if sweep == 0 || took < sweep {
			sweep = took
		}
		b.StopTimer()
		start = time.Now()
		res = n1.Reconcile(ctx)
		if took := time.Since(start); steady == 0 || took < steady {
			steady = took
		}
		steadyProbes = len(res.Probes)
		b.StartTimer()
	}
	b.ReportMetric(sweep.Seconds(), "sweep-s")
	rotation := (count + max(steadyProbes, 1) - 1) / max(steadyProbes, 1)
	fmt.Printf("\n%d peers: full sweep (reconcile at a new generation, nothing to apply) %s, best of %d; steady reconcile %s probing %d peers, so a full rotation takes %d reconciles (%s at the 10 s resync, computed)\n",
		count, sweep.Round(time.Millisecond), b.N, steady.Round(time.Millisecond), steadyProbes, rotation, time.Duration(rotation)*10*time.Second)
}

// healthy is the operator's gate on the node's current step.
func healthy(n *netlab.Node) bool {
	ok, _ := n.Healthy()
	return ok
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}
}
