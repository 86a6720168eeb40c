/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

package bpf

import "fmt"

// Names of the objects in hostrouting.c. Programs and maps share the
// NamePrefix, which is how routemode recognises its own attachments among
// other tc programs on a device.
const (
	NamePrefix = "rm_"

	ProgFromNetdev  = "rm_from_netdev"
	ProgFromOverlay = "rm_from_overlay"
	ProgFromLXC     = "rm_from_lxc"

	// The observe-only programs, attached in legacy host routing while a
	// monitor runs: they report packets and leave them to the stack.
	ProgObserveNetdev  = "rm_observe_netdev"
	ProgObserveOverlay = "rm_observe_overlay"
	ProgObserveLXC     = "rm_observe_lxc"

	MapEndpoints    = "rm_endpoints"
	MapCounters     = "rm_counters"
	MapDirectRoutes = "rm_direct_routes"

	// MapEvents is the ring buffer of monitor events, MapMonitor the flag
	// that turns them on, MapMonitorLost the per-CPU count of events the
	// full ring buffer refused.
	MapEvents      = "rm_events"
	MapMonitor     = "rm_monitor"
	MapMonitorLost = "rm_monitor_lost"

	// MapArmed is the flag that lets the forwarding programs forward:
	// the agent sets it once they sit at every hook of the node, and
	// clears it before it detaches them.
	MapArmed = "rm_armed"
)

// PinnedMaps are the maps pinned in a node's pin directory.
var PinnedMaps = []string{MapEndpoints, MapCounters, MapDirectRoutes, MapEvents, MapMonitor, MapMonitorLost, MapArmed}

// Program identifies one of the host-routing programs in the counter map.
// The values are the C enum rm_prog.
type Program uint32

const (
	ProgramNetdev  Program = 0
	ProgramOverlay Program = 1
	ProgramLXC     Program = 2
)

// Programs lists the programs in counter-map order.
var Programs = []Program{ProgramNetdev, ProgramOverlay, ProgramLXC}

// String returns the program's name without the prefix, as used in metric
// labels.
func (p Program) String() string {
	switch p {
	case ProgramNetdev:
		return "from_netdev"
	case ProgramOverlay:
		return "from_overlay"
	case ProgramLXC:
		return "from_lxc"
	}
	return fmt.Sprintf("program_%d", uint32(p))
}

// ObjectName is the program's name in the ELF and in the kernel.
func (p Program) ObjectName() string { return NamePrefix + p.String() }

// Reason says why a packet got its verdict. The values are the C enum
// rm_reason and part of the pinned counter map's layout: append only.
type Reason uint32

const (
	ReasonRedirectPeer  Reason = 0  // delivered into a local pod with bpf_redirect_peer
	ReasonRedirectNeigh Reason = 1  // sent out with bpf_redirect_neigh (next hop not resolved yet)
	ReasonRedirectFIB   Reason = 2  // sent out with bpf_redirect and the MACs bpf_fib_lookup found
	ReasonNotIPv4       Reason = 3  // not IPv4 (ARP, IPv6, VLAN-tagged): the stack's
	ReasonMalformed     Reason = 4  // truncated or invalid IPv4 header: the stack drops or handles it
	ReasonNotForHost    Reason = 5  // broadcast, multicast, or unicast for another MAC
	ReasonNoEndpoint    Reason = 6  // underlay/tunnel packet for no local pod (node traffic)
	ReasonOutsideCIDR   Reason = 7  // destination outside the native routing CIDR (needs masquerade)
	ReasonTTL           Reason = 8  // TTL would expire: the stack sends ICMP time exceeded
	ReasonFIB           Reason = 9  // bpf_fib_lookup found no forwarding route (local, unreachable, MTU)
	ReasonTunnel        Reason = 10 // route leads into a flow-based tunnel device that needs the stack
	ReasonNAT           Reason = 11 // conntrack translated the flow (Service NAT, masquerade): the stack translates it back
	// ReasonRedirectDirectRoute: sent with bpf_redirect_neigh to the gateway
	// of the agent's direct route to the destination's node, no FIB lookup.
	ReasonRedirectDirectRoute Reason = 12
	ReasonNotTCPUDP           Reason = 13 // ICMP and other protocols conntrack cannot look up for the programs
	ReasonFragment            Reason = 14 // an IP fragment: only the stack's reassembly sees its ports
	ReasonIPOptions           Reason = 15 // IP options, which the forwarding code processes
	// ReasonMTU: bigger than the agent's direct route allows, or a GSO
	// packet the program cannot size: the stack applies the route's MTU.
	ReasonMTU Reason = 16
	// ReasonLegacy: seen by an observe-only program, in legacy host
	// routing; never counted.
	ReasonLegacy Reason = 17
	// ReasonSourceOutsideCIDR: from the underlay, for a local pod, but from
	// outside the native routing CIDR (a node, a NodePort masqueraded to
	// another node's IP, a client outside the cluster): the pod's answer
	// leaves through the stack, so the packet comes in that way too.
	ReasonSourceOutsideCIDR Reason = 18
	// ReasonDisarmed: the agent is attaching the programs to the node's
	// devices, or detaching them: until every device has its program, the
	// stack routes every packet, so that each flow takes one path both ways.
	ReasonDisarmed Reason = 19
)

// Slot counts of the counter map, fixed in the C source so that the pinned
// map survives upgrades that add reasons.
const (
	ProgramSlots = 4
	ReasonSlots  = 32
)

// Reasons lists every reason the programs can report.
var Reasons = []Reason{
	ReasonRedirectPeer, ReasonRedirectNeigh, ReasonRedirectFIB,
	ReasonNotIPv4, ReasonMalformed, ReasonNotForHost, ReasonNoEndpoint,
	ReasonOutsideCIDR, ReasonTTL, ReasonFIB, ReasonTunnel, ReasonNAT,
	ReasonRedirectDirectRoute, ReasonNotTCPUDP, ReasonFragment, ReasonIPOptions, ReasonMTU, ReasonLegacy,
	ReasonSourceOutsideCIDR, ReasonDisarmed,
}

var reasonNames = map[Reason]string{
	ReasonRedirectPeer:  "redirect_peer",
	ReasonRedirectNeigh: "redirect_neigh",
	ReasonRedirectFIB:   "redirect_fib",
	ReasonNotIPv4:       "not_ipv4",
	ReasonMalformed:     "malformed",
	ReasonNotForHost:    "not_for_host",
	ReasonNoEndpoint:    "no_endpoint",
	ReasonOutsideCIDR:   "outside_cidr",
	ReasonTTL:           "ttl",
	ReasonFIB:           "fib",
	ReasonTunnel:        "tunnel",
	ReasonNAT:           "nat",

	ReasonRedirectDirectRoute: "redirect_direct_route",
	ReasonNotTCPUDP:           "not_tcp_udp",
	ReasonFragment:            "fragment",
	ReasonIPOptions:           "ip_options",
	ReasonMTU:                 "mtu",
	ReasonLegacy:              "legacy",
	ReasonSourceOutsideCIDR:   "source_outside_cidr",
	ReasonDisarmed:            "disarmed",
}

// reasonWords say why, for people: `routemodectl monitor` prints them.
var reasonWords = map[Reason]string{
	ReasonRedirectPeer:        "delivered into the local pod with bpf_redirect_peer",
	ReasonRedirectNeigh:       "sent to the next hop with bpf_redirect_neigh (neighbour not resolved yet)",
	ReasonRedirectFIB:         "sent to the next hop with bpf_redirect and the MACs bpf_fib_lookup found",
	ReasonNotIPv4:             "not IPv4 (ARP, IPv6, VLAN-tagged)",
	ReasonMalformed:           "truncated or invalid IPv4 header",
	ReasonNotForHost:          "broadcast, multicast, or unicast for another MAC",
	ReasonNoEndpoint:          "no local pod has the destination address",
	ReasonOutsideCIDR:         "destination outside the native routing CIDR, which needs masquerading",
	ReasonTTL:                 "TTL would expire: the stack sends ICMP time exceeded",
	ReasonFIB:                 "no forwarding route (local, unreachable, or over the MTU)",
	ReasonTunnel:              "the route leads into a flow-based tunnel device",
	ReasonNAT:                 "conntrack translated the flow (Service NAT, masquerade)",
	ReasonRedirectDirectRoute: "sent to the gateway of the agent's direct route with bpf_redirect_neigh",
	ReasonNotTCPUDP:           "not TCP or UDP, which conntrack cannot look up for the programs",
	ReasonFragment:            "an IP fragment, whose ports only the stack's reassembly sees",
	ReasonIPOptions:           "IP options, which the forwarding code processes",
	ReasonMTU:                 "over the direct route's MTU, or a GSO packet the program cannot size",
	ReasonLegacy:              "legacy host routing: the stack routes every packet",
	ReasonSourceOutsideCIDR:   "source outside the native routing CIDR, whose answers the stack sees and may masquerade",
	ReasonDisarmed:            "not every device of the node has its program yet (or any longer): the stack routes",
}

// Words says why a packet got its verdict, in a sentence fragment.
func (r Reason) Words() string {
	if w, ok := reasonWords[r]; ok {
		return w
	}
	return r.String()
}

func (r Reason) String() string {
	if n, ok := reasonNames[r]; ok {
		return n
	}
	return fmt.Sprintf("reason_%d", uint32(r))
}

// Verdict is what happened to a packet.
type Verdict string

const (
	VerdictRedirect Verdict = "redirect"
	VerdictPass     Verdict = "pass"
)

// Verdict is the tc verdict that goes with the reason.
func (r Reason) Verdict() Verdict {
	switch r {
	case ReasonRedirectPeer, ReasonRedirectNeigh, ReasonRedirectFIB, ReasonRedirectDirectRoute:
		return VerdictRedirect
	}
	return VerdictPass
}

// MonitorVerdict is the verdict as `routemodectl monitor` names it, after
// Cilium's trace points: to-endpoint (into a local pod), to-network (out
// to the next hop) or to-stack (left to the kernel's routing).
func (r Reason) MonitorVerdict() string {
	switch r {
	case ReasonRedirectPeer:
		return "to-endpoint"
	case ReasonRedirectNeigh, ReasonRedirectFIB, ReasonRedirectDirectRoute:
		return "to-network"
	}
	return "to-stack"
}

// CounterIndex is the key of (program, reason) in the counter map.
func CounterIndex(p Program, r Reason) uint32 {
	return uint32(p)*ReasonSlots + uint32(r)
}

// tc verdicts returned by the programs, as BPF_PROG_TEST_RUN reports
// them. A packet the programs leave alone gets TC_ACT_UNSPEC (TCX_NEXT):
// the device's next tc program or filter sees it, then the stack.
const (
	TCActUnspec   = ^uint32(0)
	TCActRedirect = 7
)
