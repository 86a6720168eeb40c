//go:build linux

/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

package bpf

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// EndpointKey is the endpoint map's key: a pod's IPv4 address, stored in
// network byte order as the program reads it from the IP header.
type EndpointKey = hostroutingEndpointKey

// EndpointInfo is the endpoint map's value.
type EndpointInfo = hostroutingEndpointInfo

// DirectRouteKey is the direct-route map's key: a peer's pod CIDR.
type DirectRouteKey = hostroutingDirectRouteKey

// DirectRoute is the direct-route map's value: where packets to the CIDR go.
type DirectRoute = hostroutingDirectRoute

// KeyFromPrefix returns the direct-route map key of an IPv4 prefix.
func KeyFromPrefix(p netip.Prefix) (DirectRouteKey, error) {
	if !p.IsValid() || !p.Addr().Is4() {
		return DirectRouteKey{}, fmt.Errorf("direct route destination %s is not an IPv4 prefix", p)
	}
	p = p.Masked()
	return DirectRouteKey{Prefixlen: uint32(p.Bits()), Addr: be32(p.Addr().As4())}, nil
}

// Prefix returns the key's prefix.
func (k hostroutingDirectRouteKey) Prefix() netip.Prefix {
	return netip.PrefixFrom(addrFrombe32(k.Addr), int(k.Prefixlen))
}

// NewDirectRoute returns the map value sending packets out of ifindex to
// an IPv4 gateway, for IP packets of up to mtu bytes.
func NewDirectRoute(ifindex int, gateway netip.Addr, mtu int) DirectRoute {
	return DirectRoute{Ifindex: uint32(ifindex), Gateway: be32(gateway.As4()), Mtu: uint32(mtu)}
}

// GatewayAddr returns the route's gateway.
func (r hostroutingDirectRoute) GatewayAddr() netip.Addr { return addrFrombe32(r.Gateway) }

// Counter is one CPU's packet and byte count of one (program, reason) slot.
type Counter = hostroutingCounter

// LastRedirect is the program's last decision, recorded only when
// Config.RecordLastRedirect is set: a test run does not perform the
// redirect, so this is how tests see where a packet would have gone.
type LastRedirect = hostroutingLastRedirect

// KeyFromAddr returns the endpoint map key of an IPv4 address.
func KeyFromAddr(a netip.Addr) (EndpointKey, error) {
	if !a.Is4() {
		return EndpointKey{}, fmt.Errorf("endpoint address %s is not IPv4", a)
	}
	return EndpointKey{Ip: be32(a.As4())}, nil
}

// Addr returns the key's IPv4 address.
func (k hostroutingEndpointKey) Addr() netip.Addr { return addrFrombe32(k.Ip) }

// Nexthop returns the recorded next hop (zero for local delivery).
func (l hostroutingLastRedirect) NexthopAddr() netip.Addr { return addrFrombe32(l.Nexthop) }

// be32 turns address bytes into the uint32 whose in-memory representation
// is those bytes, i.e. a __be32 as the C side sees it.
func be32(b [4]byte) uint32 { return binary.NativeEndian.Uint32(b[:]) }

func addrFrombe32(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// Config holds the programs' load-time constants. Changing any of them
// means loading new programs (which the attach manager swaps in atomically).
type Config struct {
	// NativeRoutingCIDR enables bpf_fib_lookup forwarding from pods to
	// destinations inside it. The zero value disables it: pods' traffic to
	// other nodes then goes through the stack.
	NativeRoutingCIDR netip.Prefix
	// FlowBasedTunnelIfindex is the ifindex of a collect_md tunnel device,
	// whose encapsulation needs the stack; 0 if there is none.
	FlowBasedTunnelIfindex uint32
	// RecordLastRedirect makes the programs store their last decision in the
	// rm_last variable. For tests; off, the code is removed at load.
	RecordLastRedirect bool
}

// LoadSpec returns the embedded programs with cfg applied, ready for
// ebpf.NewCollectionWithOptions.
func LoadSpec(cfg Config) (*ebpf.CollectionSpec, error) {
	spec, err := loadHostrouting()
	if err != nil {
		return nil, err
	}
	if err := configure(spec, cfg); err != nil {
		return nil, err
	}
	return spec, nil
}

// configure sets cfg in spec's load-time variables.
func configure(spec *ebpf.CollectionSpec, cfg Config) error {
	vars := map[string]any{
		hostroutingVarCfgCidrAddr:               uint32(0),
		hostroutingVarCfgCidrMask:               uint32(0),
		hostroutingVarCfgFibEnabled:             uint8(0),
		hostroutingVarCfgFlowbasedTunnelIfindex: cfg.FlowBasedTunnelIfindex,
		hostroutingVarCfgRecord:                 boolByte(cfg.RecordLastRedirect),
	}
	if p := cfg.NativeRoutingCIDR; p.IsValid() {
		if !p.Addr().Is4() {
			return fmt.Errorf("native routing CIDR %s is not IPv4", p)
		}
		p = p.Masked()
		var mask [4]byte
		binary.BigEndian.PutUint32(mask[:], ^uint32(0)<<(32-p.Bits()))
		vars[hostroutingVarCfgCidrAddr] = be32(p.Addr().As4())
		vars[hostroutingVarCfgCidrMask] = be32(mask)
		vars[hostroutingVarCfgFibEnabled] = uint8(1)
	}
	for name, v := range vars {
		vs, ok := spec.Variables[name]
		if !ok {
			return fmt.Errorf("variable %s missing from the BPF object", name)
		}
		if err := vs.Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	return nil
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}
