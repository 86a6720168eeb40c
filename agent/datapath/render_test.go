package datapath

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/routemode/routemode/api/v1alpha1"
)

var (
	tunnelSpec = v1alpha1.NodeDatapath{Tunnel: v1alpha1.TunnelVXLAN, TunnelPort: 8472, SendMode: v1alpha1.SendTunnel,
		RouteMTU: v1alpha1.RouteMTUTunnel, HostRouting: v1alpha1.HostRoutingLegacy}
	nativeSpec = v1alpha1.NodeDatapath{Tunnel: v1alpha1.TunnelDisabled, TunnelPort: 8472, SendMode: v1alpha1.SendNative,
		NativeRoutingCIDR: "10.0.0.0/16", AutoDirectNodeRoutes: true, RouteMTU: v1alpha1.RouteMTUFull, HostRouting: v1alpha1.HostRoutingLegacy}
	self  = Node{Name: "node-1", IP: netip.MustParseAddr("192.168.0.120"), PodCIDR: netip.MustParsePrefix("10.0.0.0/24")}
	peer2 = Peer{Node: Node{Name: "node-2", IP: netip.MustParseAddr("192.168.0.130"), PodCIDR: netip.MustParsePrefix("10.0.1.0/24")}, Direct: true, DirectDev: "eth0"}
	peer3 = Peer{Node: Node{Name: "node-3", IP: netip.MustParseAddr("192.168.7.140"), PodCIDR: netip.MustParsePrefix("10.0.2.0/24")}, Why: "via gateway 192.168.0.1"}
)

func input(spec v1alpha1.NodeDatapath, peers ...Peer) Input {
	return Input{Spec: spec, Self: self, Peers: peers, Underlay: "eth0", UnderlayMTU: 1500,
		Endpoints: []Endpoint{{Key: "pod-a/eth0", IP: netip.MustParseAddr("10.0.0.5"), Dev: "lxc0123456789ab"}}, Kernel: KernelCaps{Release: "6.18", VXLAN: true}}
}

func with(d v1alpha1.NodeDatapath, f func(*v1alpha1.NodeDatapath)) v1alpha1.NodeDatapath {
	f(&d)
	return d
}

func TestRender(t *testing.T) {
	p10 := netip.MustParsePrefix("10.0.1.0/24")
	p20 := netip.MustParsePrefix("10.0.2.0/24")
	tunnelRoute1 := Route{Dst: p10, Gw: netip.MustParseAddr("10.0.1.0"), Dev: TunnelDevice, OnLink: true, MTU: 1450}
	tunnelRoute3 := Route{Dst: p20, Gw: netip.MustParseAddr("10.0.2.0"), Dev: TunnelDevice, OnLink: true, MTU: 1450}
	cases := map[string]struct {
		in         Input
		routes     map[netip.Prefix]Route
		tunnel     bool
		routeMTU   int
		sysctls    map[string]string
		saved      []string
		neighs     int
		peerVia    map[string]Via
		refuseWith string
	}{
		"tunnel": {
			in:       input(tunnelSpec, peer2),
			routes:   map[netip.Prefix]Route{p10: tunnelRoute1},
			tunnel:   true,
			routeMTU: 1450,
			sysctls:  map[string]string{ForwardingKey: "1"},
			neighs:   1,
			peerVia:  map[string]Via{"node-2": ViaTunnel},
		},
		"native with direct routes": {
			in:       input(nativeSpec, peer2),
			routes:   map[netip.Prefix]Route{p10: {Dst: p10, Gw: peer2.IP, Dev: "eth0"}},
			routeMTU: 1500,
			sysctls:  map[string]string{ForwardingKey: "1"},
			peerVia:  map[string]Via{"node-2": ViaDirect},
		},
		"native without autoDirectNodeRoutes installs nothing": {
			in:       input(with(nativeSpec, func(d *v1alpha1.NodeDatapath) { d.AutoDirectNodeRoutes = false }), peer2),
			routes:   map[netip.Prefix]Route{},
			routeMTU: 1500,
			sysctls:  map[string]string{ForwardingKey: "1"},
			peerVia:  map[string]Via{"node-2": ViaUnderlay},
		},
		"switched: native while receiving both ways, unreachable peer stays on the tunnel": {
			in: input(with(nativeSpec, func(d *v1alpha1.NodeDatapath) {
				d.Tunnel, d.RouteMTU, d.LooseRPFilter = v1alpha1.TunnelVXLAN, v1alpha1.RouteMTUTunnel, true
			}), peer2, peer3),
			routes:   map[netip.Prefix]Route{p10: {Dst: p10, Gw: peer2.IP, Dev: "eth0", MTU: 1450}, p20: tunnelRoute3},
			tunnel:   true,
			routeMTU: 1450,
			sysctls:  map[string]string{ForwardingKey: "1", RPFilterKey("eth0"): "2", RPFilterKey(TunnelDevice): "2"},
			saved:    []string{RPFilterKey("eth0"), RPFilterKey(TunnelDevice)},
			neighs:   2,
			peerVia:  map[string]Via{"node-2": ViaDirect, "node-3": ViaTunnel},
		},
		"native, unreachable peer without tunnel gets no route": {
			in:       input(nativeSpec, peer2, peer3),
			routes:   map[netip.Prefix]Route{p10: {Dst: p10, Gw: peer2.IP, Dev: "eth0"}},
			routeMTU: 1500,
			sysctls:  map[string]string{ForwardingKey: "1"},
			peerVia:  map[string]Via{"node-2": ViaDirect, "node-3": ViaNone},
		},
		"restore saved rp_filter, forget the tunnel's when it goes": {
			in: func() Input {
				in := input(nativeSpec, peer2)
				in.Saved = map[string]string{RPFilterKey("eth0"): "1", RPFilterKey(TunnelDevice): "1"}
				return in
			}(),
			routes:   map[netip.Prefix]Route{p10: {Dst: p10, Gw: peer2.IP, Dev: "eth0"}},
			routeMTU: 1500,
			sysctls:  map[string]string{ForwardingKey: "1", RPFilterKey("eth0"): "1"},
			peerVia:  map[string]Via{"node-2": ViaDirect},
		},
		"self, overlapping and incomplete peers are skipped": {
			in: input(tunnelSpec, peer2,
				Peer{Node: Node{Name: "node-1", IP: self.IP, PodCIDR: self.PodCIDR}},
				Peer{Node: Node{Name: "node-x", IP: netip.MustParseAddr("192.168.0.99"), PodCIDR: netip.MustParsePrefix("10.0.1.128/25")}},
				Peer{Node: Node{Name: "node-y", PodCIDR: netip.MustParsePrefix("10.0.5.0/24")}}),
			routes:   map[netip.Prefix]Route{p10: tunnelRoute1},
			tunnel:   true,
			routeMTU: 1450,
			sysctls:  map[string]string{ForwardingKey: "1"},
			neighs:   1,
			peerVia:  map[string]Via{"node-2": ViaTunnel},
		},
		"geneve refused naming the kernel limit": {
			in:         input(with(tunnelSpec, func(d *v1alpha1.NodeDatapath) { d.Tunnel = v1alpha1.TunnelGeneve })),
			refuseWith: "CONFIG_GENEVE",
		},
		"vxlan refused on a kernel without it": {
			in: func() Input {
				in := input(tunnelSpec)
				in.Kernel.VXLAN = false
				return in
			}(),
			refuseWith: "CONFIG_VXLAN",
		},
		"tunnel send without a tunnel refused": {
			in:         input(with(tunnelSpec, func(d *v1alpha1.NodeDatapath) { d.Tunnel = v1alpha1.TunnelDisabled })),
			refuseWith: "sendMode Tunnel needs a tunnel",
		},
		"bad nativeRoutingCIDR refused": {
			in:         input(with(nativeSpec, func(d *v1alpha1.NodeDatapath) { d.NativeRoutingCIDR = "10.0.0.0" })),
			refuseWith: "nativeRoutingCIDR",
		},
		"tunnel at full MTU refused": {
			in:         input(with(tunnelSpec, func(d *v1alpha1.NodeDatapath) { d.RouteMTU = v1alpha1.RouteMTUFull })),
			refuseWith: "use routeMTU Tunnel",
		},
		"nativeRoutingCIDR without the node's pods refused": {
			in:         input(with(nativeSpec, func(d *v1alpha1.NodeDatapath) { d.NativeRoutingCIDR = "10.1.0.0/16" })),
			refuseWith: "does not hold node",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			out, err := Render(tc.in)
			if tc.refuseWith != "" {
				var ref *Refusal
				if !errors.As(err, &ref) || !strings.Contains(ref.Message, tc.refuseWith) {
					t.Fatalf("err = %v, want a refusal naming %q", err, tc.refuseWith)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			st := out.State
			if len(st.Routes) != len(tc.routes) {
				t.Errorf("routes %v, want %v", st.Routes, tc.routes)
			}
			for dst, want := range tc.routes {
				if got := st.Routes[dst]; got != want {
					t.Errorf("route %s = %s, want %s", dst, got, want)
				}
			}
			if (st.Tunnel != nil) != tc.tunnel {
				t.Errorf("tunnel %+v, want present=%v", st.Tunnel, tc.tunnel)
			}
			if st.Tunnel != nil {
				want := Tunnel{Name: TunnelDevice, VNI: 1, Port: 8472, Local: self.IP, Underlay: "eth0", MTU: 1450,
					MAC: "0e:72:c0:a8:00:78", Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/32")}}
				if st.Tunnel.String() != want.String() {
					t.Errorf("tunnel %+v, want %+v", *st.Tunnel, want)
				}
			}
			if out.RouteMTU != tc.routeMTU || st.PodMTU["pod-a/eth0"] != tc.routeMTU {
				t.Errorf("route MTU %d (pod %d), want %d", out.RouteMTU, st.PodMTU["pod-a/eth0"], tc.routeMTU)
			}
			if len(st.Sysctls) != len(tc.sysctls) {
				t.Errorf("sysctls %v, want %v", st.Sysctls, tc.sysctls)
			}
			for k, v := range tc.sysctls {
				if st.Sysctls[k] != v {
					t.Errorf("sysctl %s = %q, want %q", k, st.Sysctls[k], v)
				}
			}
			if len(st.Saved) != len(tc.saved) {
				t.Errorf("saved %v, want keys %v", st.Saved, tc.saved)
			}
			if len(st.Neighs) != tc.neighs || len(st.FDB) != tc.neighs {
				t.Errorf("%d neighbours and %d FDB entries, want %d", len(st.Neighs), len(st.FDB), tc.neighs)
			}
			if len(out.Peers) != len(tc.peerVia) {
				t.Errorf("peers %+v, want %v", out.Peers, tc.peerVia)
			}
			for _, p := range out.Peers {
				if p.Via != tc.peerVia[p.Name] {
					t.Errorf("peer %s via %s, want %s", p.Name, p.Via, tc.peerVia[p.Name])
				}
				if (p.Via == ViaNone || (p.Via == ViaTunnel && tc.in.Spec.SendMode == v1alpha1.SendNative)) && !strings.Contains(p.Message, "not directly reachable") {
					t.Errorf("peer %s: message %q should say why it is not direct", p.Name, p.Message)
				}
			}
			if st.Host == nil || len(st.Host.Addrs) != 1 || st.Host.Addrs[0] != netip.MustParsePrefix("10.0.0.1/32") {
				t.Errorf("host device %+v, want router IP 10.0.0.1/32", st.Host)
			}
		})
	}
}

func TestVTEPMACStable(t *testing.T) {
	a := VTEPMAC(netip.MustParseAddr("192.168.0.120"))
	if a.String() != "0e:72:c0:a8:00:78" || a[0]&1 != 0 || a[0]&2 == 0 {
		t.Errorf("VTEPMAC = %s, want a locally administered unicast 0e:72:c0:a8:00:78", a)
	}
	if VTEPMAC(netip.MustParseAddr("192.168.0.130")).String() == a.String() {
		t.Error("two node IPs share a VTEP MAC")
	}
}

// TestDisjointPrefixesAgreesWithPairwiseOverlaps feeds prefixes of every
// length, nested and disjoint, to the set usablePeers uses and to the
// pairwise check it replaced: they must accept the same prefixes.
func TestDisjointPrefixesAgreesWithPairwiseOverlaps(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 5000))
	var set disjointPrefixes
	var taken []netip.Prefix
	accepted := 0
	for range 20000 {
		// Addresses under 10.0.0.0/14 so that prefixes often nest.
		a := netip.AddrFrom4([4]byte{10, byte(rng.IntN(4)), byte(rng.IntN(256)), byte(rng.IntN(256))})
		p := netip.PrefixFrom(a, 8+rng.IntN(25)).Masked()
		want := !slices.ContainsFunc(taken, p.Overlaps)
		if got := !set.overlaps(p); got != want {
			t.Fatalf("%s after %d accepted: the set says free=%v, the pairwise check %v", p, len(taken), got, want)
		}
		if want {
			set.add(p)
			taken = append(taken, p)
			accepted++
		}
	}
	if accepted < 100 {
		t.Errorf("only %d prefixes accepted: the test barely exercised the set", accepted)
	}
}
