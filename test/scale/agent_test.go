package scale

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/routemode/routemode/agent/datapath"
	"github.com/routemode/routemode/agent/kernel"
	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/controllers/rollout"
	"github.com/routemode/routemode/internal/netlab"
)

// agentPeers is how many peers BenchmarkAgentConverge gives its node
// (AGENT_PEERS, default 5,000).
func agentPeers() int {
	if v := os.Getenv("AGENT_PEERS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 60000 {
			panic(fmt.Sprintf("AGENT_PEERS=%q: want a number of peers from 1 to 60000", v))
		}
		return n
	}
	return 5000
}

// peerNet holds the peers' underlay addresses: on the node's underlay
// device, so every peer is reached directly, as autoDirectNodeRoutes needs.
var peerNet = netip.MustParsePrefix("100.64.0.0/16")

// benchPeers are n peers with podCIDRs 10.1.0.0/24 onwards (the lab's own
// node has 10.0.0.0/24) and underlay addresses in peerNet.
func benchPeers(n int) []datapath.Node {
	peers := make([]datapath.Node, n)
	for i := range peers {
		ip := peerNet.Addr().As4()
		ip[2], ip[3] = byte((i+2)/256), byte((i+2)%256)
		peers[i] = datapath.Node{Name: fmt.Sprintf("peer-%04d", i), IP: netip.AddrFrom4(ip),
			PodCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(1 + i/256), byte(i % 256), 0}), 24)}
	}
	return peers
}

// A case is one change of the node's datapath: from (nil: nothing of
// routemode's) to to, with every peer.
type agentCase struct {
	name     string
	from, to *v1alpha1.NodeDatapath
}

// BenchmarkAgentConverge measures one node converging its kernel to a
// datapath with thousands of peers, in a network namespace the benchmark
// makes (internal/netlab), two ways in the same run:
//
//   - agent: the agent's own code (netlab's ApplyDatapathWith: render the
//     desired state, read the kernel, plan, apply through the agent's
//     netlink handle, logging every change as the agent does);
//   - raw: vishvananda/netlink writing the same entries the agent rendered
//     (the tunnel device, then per peer a neighbour, an FDB entry and a
//     route, or a route alone), one call each, nothing read first.
//
// Each iteration starts from the case's from state, set up untimed, and is
// checked afterwards: the kernel must hold exactly the rendered neighbours,
// FDB entries and routes. make bench-agent runs it; it reports each
// side's seconds per change and prints agent/raw.
func BenchmarkAgentConverge(b *testing.B) {
	lab := netlab.New(b, netlab.Spec{Nodes: 1, Log: zap.New(zap.WriteTo(io.Discard))})
	n := lab.Nodes[0]
	eth, err := n.Handle.LinkByName(n.Underlay)
	if err != nil {
		b.Fatal(err)
	}
	if err := n.Handle.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: peerNet.Addr().Next().AsSlice(), Mask: net.CIDRMask(peerNet.Bits(), 32)}}); err != nil {
		b.Fatal(err)
	}
	peers := benchPeers(agentPeers())
	// Every peer's pod CIDR is inside the native routing CIDR.
	native := rollout.Steady(v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelDisabled, NativeRoutingCIDR: "10.0.0.0/8", AutoDirectNodeRoutes: true})
	steps, err := netlab.RolloutSteps(netlab.Tunnel, native)
	if err != nil {
		b.Fatal(err)
	}
	cases := []agentCase{
		{"tunnel from nothing", nil, &netlab.Tunnel},
		{"native from nothing", nil, &native},
		// The Switch step: every route moves from the tunnel to the
		// underlay while the node still receives both ways.
		{"switch tunnel to native", &steps.Prepare, &steps.Switch},
		// Finalize: the tunnel device, its neighbours and FDB go.
		{"finalize", &steps.Switch, &native},
		// A resync with nothing to change: the agent reads the kernel and
		// plans; raw netlink has nothing to do.
		{"resync, nothing to change", &native, &native},
	}
	ctx := context.Background()
	type row struct{ agent, raw time.Duration }
	results := map[string]*row{}
	for _, c := range cases {
		results[c.name] = &row{}
		for _, side := range []string{"agent", "raw"} {
			b.Run(fmt.Sprintf("%s/%s/peers=%d", c.name, side, len(peers)), func(b *testing.B) {
				var best time.Duration
				for b.Loop() {
					b.StopTimer()
					have := reset(b, n, c.from, peers)
					want := rendered(b, n, *c.to, peers)
					b.StartTimer()
					start := time.Now()
					if side == "agent" {
						if _, err := n.ApplyDatapathWith(ctx, *c.to, peers); err != nil {
							b.Fatal(err)
						}
					} else if err := rawApply(n, have, want); err != nil {
						b.Fatal(err)
					}
					took := time.Since(start)
					b.StopTimer()
					if best == 0 || took < best {
						best = took
					}
					expectKernel(b, n, want)
					b.StartTimer()
				}
				b.ReportMetric(best.Seconds(), "best-s")
				if side == "agent" {
					results[c.name].agent = best
				} else {
					results[c.name].raw = best
				}
			})
		}
	}
	fmt.Printf("\n%d peers, best of each side's iterations:\n\n| change | agent | raw netlink | agent / raw |\n|---|---|---|---|\n", len(peers))
	for _, c := range cases {
		r := results[c.name]
		if r.agent == 0 && r.raw == 0 {
			continue // filtered out by -bench
		}
		ratio := "—"
		if r.raw >= 10*time.Millisecond {
			ratio = fmt.Sprintf("%.2f×", float64(r.agent)/float64(r.raw))
		}
		fmt.Printf("| %s | %s | %s | %s |\n", c.name, r.agent.Round(time.Millisecond), r.raw.Round(time.Millisecond), ratio)
	}
}

// reset puts the node into from (nothing of routemode's when nil) through
// the agent's code, untimed, and returns the state it rendered for it.
func reset(b *testing.B, n *netlab.Node, from *v1alpha1.NodeDatapath, peers []datapath.Node) datapath.State {
	if l, err := n.Handle.LinkByName(datapath.TunnelDevice); err == nil {
		if err := n.Handle.LinkDel(l); err != nil {
			b.Fatal(err)
		}
	}
	routes, err := n.Handle.RouteListFiltered(unix.AF_INET, &netlink.Route{Protocol: datapath.RouteProtocol, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		b.Fatal(err)
	}
	for i := range routes {
		if err := n.Handle.RouteDel(&routes[i]); err != nil {
			b.Fatal(err)
		}
	}
	if from == nil {
		return datapath.NewState()
	}
	if _, err := n.ApplyDatapathWith(context.Background(), *from, peers); err != nil {
		b.Fatal(err)
	}
	have := rendered(b, n, *from, peers)
	expectKernel(b, n, have)
	return have
}

// rendered is the state the agent's datapath model wants for d.
func rendered(b *testing.B, n *netlab.Node, d v1alpha1.NodeDatapath, peers []datapath.Node) datapath.State {
	in := datapath.Input{Spec: d, Self: datapath.Node{Name: n.Name, IP: n.IP, PodCIDR: n.PodCIDR}, Underlay: n.Underlay, UnderlayMTU: 1500,
		Kernel: datapath.KernelCaps{VXLAN: true}}
	for _, p := range peers {
		in.Peers = append(in.Peers, datapath.Peer{Node: p, VTEPMAC: datapath.VTEPMAC(p.IP), Direct: true, DirectDev: n.Underlay})
	}
	r, err := datapath.Render(in)
	if err != nil {
		b.Fatal(err)
	}
	return r.State
}

// rawApply changes the kernel from have to want with one netlink call per
// entry that differs (the tunnel device, neighbours, FDB entries, routes;
// deleting the tunnel device takes its neighbours and FDB with it): what
// any agent must at least do. Sysctls and the host device are left out (a
// handful of writes, not per peer).
func rawApply(n *netlab.Node, have, want datapath.State) error {
	h := n.Handle.Handle
	links := map[string]int{}
	for _, name := range []string{n.Underlay, datapath.TunnelDevice} {
		if l, err := h.LinkByName(name); err == nil {
			links[name] = l.Attrs().Index
		}
	}
	if t := want.Tunnel; t != nil && have.Tunnel == nil {
		v := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: t.Name, MTU: t.MTU, HardwareAddr: mustMAC(t.MAC)}, VxlanId: t.VNI,
			VtepDevIndex: links[t.Underlay], SrcAddr: t.Local.AsSlice(), Port: t.Port}
		if err := h.LinkAdd(v); err != nil {
			return err
		}
		if err := h.LinkSetUp(v); err != nil {
			return err
		}
		links[t.Name] = v.Index
	}
	// A neighbour and an FDB entry are both one RTM_NEWNEIGH.
	var neighs []*netlink.Neigh
	for ip, ne := range want.Neighs {
		if have.Neighs[ip] != ne {
			neighs = append(neighs, &netlink.Neigh{LinkIndex: links[ne.Dev], Family: unix.AF_INET, Type: unix.RTN_UNICAST, IP: ne.IP.AsSlice(),
				HardwareAddr: mustMAC(ne.MAC)})
		}
	}
	for key, f := range want.FDB {
		if have.FDB[key] != f {
			neighs = append(neighs, &netlink.Neigh{LinkIndex: links[f.Dev], Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF, IP: f.Dst.AsSlice(),
				HardwareAddr: mustMAC(f.MAC)})
		}
	}
	for _, ne := range neighs {
		ne.State = netlink.NUD_PERMANENT
		if err := h.NeighSet(ne); err != nil {
			return err
		}
	}
	for dst, r := range want.Routes {
		if have.Routes[dst] == r {
			continue
		}
		nr := &netlink.Route{Dst: &net.IPNet{IP: r.Dst.Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), 32)}, LinkIndex: links[r.Dev],
			MTU: r.MTU, Protocol: datapath.RouteProtocol, Table: unix.RT_TABLE_MAIN}
		if r.Gw.IsValid() {
			nr.Gw = r.Gw.AsSlice()
		}
		if r.OnLink {
			nr.Flags = int(netlink.FLAG_ONLINK)
		}
		if err := h.RouteReplace(nr); err != nil {
			return err
		}
	}
	if want.Tunnel == nil && have.Tunnel != nil {
		return h.LinkDel(&netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Index: links[datapath.TunnelDevice]}})
	}
	return nil
}

// mustMAC parses a MAC the agent's own model rendered.
func mustMAC(s string) net.HardwareAddr {
	mac, err := net.ParseMAC(s)
	if err != nil {
		panic(fmt.Sprintf("the datapath model rendered MAC %q: %v", s, err))
	}
	return mac
}

// expectKernel fails unless the node's kernel holds exactly want's
// neighbours, FDB entries and routes, read back by the agent's reader.
func expectKernel(b *testing.B, n *netlab.Node, want datapath.State) {
	k := &kernel.Kernel{H: n.Handle, NS: n.NS, StateDir: n.StateDir}
	got, err := k.Read(kernel.ReadRequest{})
	if err != nil {
		b.Fatal(err)
	}
	if !maps.Equal(got.Routes, want.Routes) || !maps.Equal(got.Neighs, want.Neighs) || !maps.Equal(got.FDB, want.FDB) {
		b.Fatalf("kernel: %d routes, %d neighbours, %d FDB entries; want %d, %d, %d (or different ones)",
			len(got.Routes), len(got.Neighs), len(got.FDB), len(want.Routes), len(want.Neighs), len(want.FDB))
	}
}
