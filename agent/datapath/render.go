package datapath

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/routemode/routemode/api/v1alpha1"
)

// Refusal is a spec the agent will not apply; nothing is changed. Reason is
// a condition reason, Message names the limit.
type Refusal struct {
	Reason  string
	Message string
}

func (r *Refusal) Error() string { return r.Message }

// Refusal reasons.
const (
	ReasonTunnelUnsupported = "TunnelUnsupported"
	ReasonInvalidDatapath   = "InvalidDatapath"
	ReasonNodeMissingFacts  = "NodeMissingFacts"
)

// Input is everything Render needs.
type Input struct {
	Spec v1alpha1.NodeDatapath
	Self Node
	// Peers are the other nodes, with Direct classified by a route lookup.
	Peers []Peer
	// Underlay is the device holding the node IP; UnderlayMTU its MTU.
	Underlay    string
	UnderlayMTU int
	// Endpoints are the local endpoints.
	Endpoints []Endpoint
	// Saved are the sysctl values saved before loosening.
	Saved map[string]string
	// Kernel is what the kernel can do.
	Kernel KernelCaps
}

// KernelCaps is the part of the kernel's capabilities Render checks.
type KernelCaps struct {
	Release string
	VXLAN   bool
	Geneve  bool
}

// Via says how a peer's pod CIDR is reached.
type Via string

const (
	ViaTunnel Via = "tunnel"
	ViaDirect Via = "direct"
	// ViaUnderlay means no route of the agent: the underlay's own routing
	// (native routing without autoDirectNodeRoutes).
	ViaUnderlay Via = "underlay"
	// ViaNone means the peer cannot be reached as asked.
	ViaNone Via = "none"
)

// PeerRoute is how Render routes one peer.
type PeerRoute struct {
	Name    string
	Via     Via
	Message string
}

// Rendered is Render's result.
type Rendered struct {
	State State
	// RouteMTU is the pods' default route MTU.
	RouteMTU int
	// TunnelMTU is the MTU of routes through the tunnel.
	TunnelMTU int
	Peers     []PeerRoute
}

// RouteMTUFor is the pods' route MTU for mode on an underlay of mtu.
func RouteMTUFor(mode v1alpha1.RouteMTU, underlayMTU int) int {
	if mode == v1alpha1.RouteMTUFull {
		return underlayMTU
	}
	return underlayMTU - TunnelOverhead
}

// Render computes the desired state. It refuses (with *Refusal) a spec the
// agent cannot or must not apply.
func Render(in Input) (Rendered, error) {
	spec := in.Spec
	if err := validate(in); err != nil {
		return Rendered{}, err
	}
	port := int(spec.TunnelPort)
	if port == 0 {
		port = v1alpha1.DefaultTunnelPort
	}
	tunnelMTU := in.UnderlayMTU - TunnelOverhead
	routeMTU := RouteMTUFor(spec.RouteMTU, in.UnderlayMTU)
	nativeMTU := 0
	if spec.RouteMTU != v1alpha1.RouteMTUFull {
		nativeMTU = tunnelMTU
	}
	hasTunnel := spec.Tunnel == v1alpha1.TunnelVXLAN

	st := NewState()
	st.Host = &HostDev{Exists: true, Up: true, Addrs: []netip.Prefix{netip.PrefixFrom(RouterIP(in.Self.PodCIDR), 32)}}
	if hasTunnel {
		st.Tunnel = &Tunnel{
			Name: TunnelDevice, VNI: VNI, Port: port, Local: in.Self.IP, Underlay: in.Underlay,
			MTU: tunnelMTU, MAC: VTEPMAC(in.Self.IP).String(), Up: true,
			Addrs: []netip.Prefix{netip.PrefixFrom(VTEPIP(in.Self.PodCIDR), 32)},
		}
	}

	out := Rendered{RouteMTU: routeMTU, TunnelMTU: tunnelMTU}
	for _, p := range usablePeers(in) {
		tunnelRoute := Route{Dst: p.PodCIDR.Masked(), Gw: VTEPIP(p.PodCIDR), Dev: TunnelDevice, OnLink: true, MTU: tunnelMTU}
		pr := PeerRoute{Name: p.Name}
		if hasTunnel {
			mac := p.VTEPMAC.String()
			if len(p.VTEPMAC) == 0 {
				mac = VTEPMAC(p.IP).String()
			}
			st.Neighs[VTEPIP(p.PodCIDR)] = Neigh{Dev: TunnelDevice, IP: VTEPIP(p.PodCIDR), MAC: mac}
			st.FDB[mac] = FDB{Dev: TunnelDevice, MAC: mac, Dst: p.IP}
		}
		switch {
		case spec.SendMode == v1alpha1.SendTunnel:
			st.Routes[tunnelRoute.Dst] = tunnelRoute
			pr.Via = ViaTunnel
		case !spec.AutoDirectNodeRoutes:
			pr.Via = ViaUnderlay
		case p.Direct:
			st.Routes[p.PodCIDR.Masked()] = Route{Dst: p.PodCIDR.Masked(), Gw: p.IP, Dev: p.DirectDev, MTU: nativeMTU}
			pr.Via = ViaDirect
		case hasTunnel:
			// Cilium's direct-routing-skip-unreachable, with the tunnel
			// still there to carry what cannot go direct.
			st.Routes[tunnelRoute.Dst] = tunnelRoute
			pr.Via = ViaTunnel
			pr.Message = fmt.Sprintf("not directly reachable (%s): sent through the tunnel", p.Why)
		default:
			pr.Via = ViaNone
			pr.Message = fmt.Sprintf("not directly reachable (%s) and no tunnel to fall back to: no route installed", p.Why)
		}
		out.Peers = append(out.Peers, pr)
	}

	st.Sysctls[ForwardingKey] = "1"
	loose := map[string]bool{}
	if spec.LooseRPFilter {
		loose[RPFilterKey(in.Underlay)] = true
		if hasTunnel {
			loose[RPFilterKey(TunnelDevice)] = true
		}
	}
	for k := range loose {
		st.Sysctls[k] = RPFilterLoose
		st.Saved[k] = in.Saved[k]
	}
	for k, v := range in.Saved {
		if loose[k] || (k == RPFilterKey(TunnelDevice) && !hasTunnel) {
			continue
		}
		st.Sysctls[k] = v
	}
	for _, ep := range in.Endpoints {
		st.PodMTU[ep.Key] = routeMTU
		st.PodRoutes[ep.Key] = PodRoute{Key: ep.Key, IP: ep.IP, Dev: ep.Dev}
	}
	out.State = st
	return out, nil
}

func validate(in Input) error {
	spec := in.Spec
	refuse := func(reason, format string, args ...any) error {
		return &Refusal{Reason: reason, Message: fmt.Sprintf(format, args...)}
	}
	switch spec.Tunnel {
	case v1alpha1.TunnelVXLAN:
		if !in.Kernel.VXLAN {
			return refuse(ReasonTunnelUnsupported, "tunnel vxlan: this kernel (%s) cannot create VXLAN devices (CONFIG_VXLAN is not set); nothing was changed", in.Kernel.Release)
		}
	case v1alpha1.TunnelDisabled:
		if spec.SendMode == v1alpha1.SendTunnel {
			return refuse(ReasonInvalidDatapath, "sendMode Tunnel needs a tunnel, but tunnel is disabled; nothing was changed")
		}
	case v1alpha1.TunnelGeneve:
		if !in.Kernel.Geneve {
			return refuse(ReasonTunnelUnsupported, "tunnel geneve: this kernel (%s) cannot create Geneve devices (CONFIG_GENEVE is not set); use tunnel vxlan; nothing was changed", in.Kernel.Release)
		}
		return refuse(ReasonTunnelUnsupported, "tunnel geneve: the routemode agent builds VXLAN tunnels only; use tunnel vxlan; nothing was changed")
	default:
		return refuse(ReasonInvalidDatapath, "unknown tunnel %q; nothing was changed", spec.Tunnel)
	}
	if spec.TunnelPort < 0 || spec.TunnelPort > 65535 {
		return refuse(ReasonInvalidDatapath, "tunnelPort %d is not a port", spec.TunnelPort)
	}
	if spec.SendMode != v1alpha1.SendTunnel && spec.SendMode != v1alpha1.SendNative {
		return refuse(ReasonInvalidDatapath, "unknown sendMode %q; nothing was changed", spec.SendMode)
	}
	if spec.RouteMTU != v1alpha1.RouteMTUTunnel && spec.RouteMTU != v1alpha1.RouteMTUFull {
		return refuse(ReasonInvalidDatapath, "unknown routeMTU %q; nothing was changed", spec.RouteMTU)
	}
	// The operator never asks for this (it lowers the MTU before anyone
	// encapsulates); a hand-written spec might, and pods would then send
	// packets the tunnel cannot carry without the 50 bytes it adds.
	if spec.SendMode == v1alpha1.SendTunnel && spec.RouteMTU == v1alpha1.RouteMTUFull {
		return refuse(ReasonInvalidDatapath, "sendMode Tunnel with routeMTU Full would give pods an MTU the tunnel cannot carry; use routeMTU Tunnel; nothing was changed")
	}
	var nativeCIDR netip.Prefix
	if spec.NativeRoutingCIDR != "" {
		p, err := netip.ParsePrefix(spec.NativeRoutingCIDR)
		if err != nil || !p.Addr().Is4() {
			return refuse(ReasonInvalidDatapath, "nativeRoutingCIDR %q is not an IPv4 CIDR; nothing was changed", spec.NativeRoutingCIDR)
		}
		nativeCIDR = p.Masked()
	}
	if !in.Self.IP.Is4() {
		return refuse(ReasonNodeMissingFacts, "node %s has no IPv4 InternalIP", in.Self.Name)
	}
	if !in.Self.PodCIDR.IsValid() || !in.Self.PodCIDR.Addr().Is4() || in.Self.PodCIDR.Bits() > 29 {
		return refuse(ReasonNodeMissingFacts, "node %s has no IPv4 podCIDR of at least 8 addresses", in.Self.Name)
	}
	// Traffic from this node's pods to destinations outside the CIDR is
	// masqueraded, so its own pods must be inside it.
	if nativeCIDR.IsValid() && (!nativeCIDR.Contains(in.Self.PodCIDR.Addr()) || nativeCIDR.Bits() > in.Self.PodCIDR.Bits()) {
		return refuse(ReasonInvalidDatapath, "nativeRoutingCIDR %s does not hold node %s's podCIDR %s; use a CIDR that holds every node's podCIDR; nothing was changed",
			spec.NativeRoutingCIDR, in.Self.Name, in.Self.PodCIDR)
	}
	if in.Underlay == "" || in.UnderlayMTU < 576+TunnelOverhead {
		return refuse(ReasonNodeMissingFacts, "underlay device %q with MTU %d is unusable", in.Underlay, in.UnderlayMTU)
	}
	return nil
}

// usablePeers are the peers with an IPv4 node IP and podCIDR, other than
// this node and not overlapping its podCIDR, sorted by name; of two peers
// claiming overlapping podCIDRs only the first by name is used.
func usablePeers(in Input) []Peer {
	peers := slices.Clone(in.Peers)
	slices.SortFunc(peers, func(a, b Peer) int { return cmp.Compare(a.Name, b.Name) })
	var out []Peer
	var taken disjointPrefixes
	taken.add(in.Self.PodCIDR.Masked())
	for _, p := range peers {
		if p.Name == in.Self.Name || !p.IP.Is4() || !p.PodCIDR.IsValid() || !p.PodCIDR.Addr().Is4() || p.IP == in.Self.IP {
			continue
		}
		if taken.overlaps(p.PodCIDR.Masked()) {
			continue
		}
		taken.add(p.PodCIDR.Masked())
		out = append(out, p)
	}
	return out
}

// disjointPrefixes is a set of IPv4 prefixes none of which overlaps
// another, answering whether a new one overlaps any in at most 33 lookups:
// checking every taken prefix made rendering 5,000 peers take 25 million
// comparisons. Two prefixes overlap when one holds the other.
type disjointPrefixes struct {
	// taken are the prefixes added; within holds every shorter prefix
	// that holds one of them.
	taken, within map[netip.Prefix]bool
}

func (d *disjointPrefixes) add(p netip.Prefix) {
	if d.taken == nil {
		d.taken, d.within = map[netip.Prefix]bool{}, map[netip.Prefix]bool{}
	}
	d.taken[p] = true
	for bits := range p.Bits() {
		d.within[netip.PrefixFrom(p.Addr(), bits).Masked()] = true
	}
}

// overlaps reports whether masked prefix p holds, or is held by, a prefix
// in the set.
func (d *disjointPrefixes) overlaps(p netip.Prefix) bool {
	if d.within[p] {
		return true
	}
	for bits := range p.Bits() + 1 {
		if d.taken[netip.PrefixFrom(p.Addr(), bits).Masked()] {
			return true
		}
	}
	return false
}

// RouterIP is the pods' gateway: the first address of podCIDR.
func RouterIP(podCIDR netip.Prefix) netip.Addr { return podCIDR.Masked().Addr().Next() }
