//go:build linux

/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

package hostrouting

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"path/filepath"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/routemode/routemode/bpf"
)

// endpointEntries turns the endpoints into endpoint-map values, checked
// against the node's devices (by ifindex). Endpoints that cannot be used
// are left out and reported, so one bad record does not keep the others
// from being served; their packets keep taking the stack.
func endpointEntries(eps []Endpoint, links map[int]device) (map[netip.Addr]bpf.EndpointInfo, []device, []error) {
	entries := make(map[netip.Addr]bpf.EndpointInfo, len(eps))
	var (
		lxcs     []device
		problems []error
	)
	for _, ep := range eps {
		if !ep.IP.Is4() {
			problems = append(problems, fmt.Errorf("endpoint %s: not an IPv4 address", ep.IP))
			continue
		}
		dev, ok := links[ep.IfIndex]
		if !ok {
			problems = append(problems, fmt.Errorf("endpoint %s: no device with ifindex %d", ep.IP, ep.IfIndex))
			continue
		}
		if ep.IfName != "" && dev.Name != ep.IfName {
			problems = append(problems, fmt.Errorf("endpoint %s: ifindex %d is %s, not its device %s", ep.IP, ep.IfIndex, dev.Name, ep.IfName))
			continue
		}
		nodeMAC := ep.NodeMAC
		if len(nodeMAC) == 0 {
			nodeMAC = dev.MAC
		}
		if len(ep.MAC) != 6 || len(nodeMAC) != 6 {
			problems = append(problems, fmt.Errorf("endpoint %s: pod MAC %q or node MAC %q is not an Ethernet address", ep.IP, ep.MAC, nodeMAC))
			continue
		}
		if prev, dup := entries[ep.IP]; dup && prev.Ifindex != uint32(ep.IfIndex) {
			problems = append(problems, fmt.Errorf("endpoint %s: claimed by ifindex %d and %d", ep.IP, prev.Ifindex, ep.IfIndex))
			continue
		}
		entries[ep.IP] = bpf.EndpointInfo{
			Ifindex: uint32(ep.IfIndex),
			Id:      ep.ID,
			Flags:   ep.Flags,
			Mac:     [6]byte(ep.MAC),
			NodeMac: [6]byte(nodeMAC),
		}
		lxcs = append(lxcs, dev)
	}
	return entries, lxcs, problems
}

var endpointKey = mapKey[netip.Addr, bpf.EndpointKey]{
	to: bpf.KeyFromAddr, from: bpf.EndpointKey.Addr, cmp: netip.Addr.Compare, what: "endpoint",
}

func readEndpointMap(m *ebpf.Map) (map[netip.Addr]bpf.EndpointInfo, error) {
	return readMap[netip.Addr, bpf.EndpointKey, bpf.EndpointInfo](m, endpointKey.from)
}

// ListEndpoints reads a node's endpoint map from its pin, sorted by IP.
// It needs no Manager and no namespace: for `routemodectl bpf endpoint
// list`. A node that never ran BPF host routing has no map: the error then
// wraps os.ErrNotExist.
func ListEndpoints(pinDir string) ([]Endpoint, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, bpf.MapEndpoints), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("open endpoint map in %s: %w", pinDir, err)
	}
	defer m.Close()
	cur, err := readEndpointMap(m)
	if err != nil {
		return nil, err
	}
	eps := make([]Endpoint, 0, len(cur))
	for _, ip := range slices.SortedFunc(maps.Keys(cur), netip.Addr.Compare) {
		v := cur[ip]
		eps = append(eps, Endpoint{
			IP:      ip,
			ID:      v.Id,
			Flags:   v.Flags,
			IfIndex: int(v.Ifindex),
			MAC:     net.HardwareAddr(v.Mac[:]),
			NodeMAC: net.HardwareAddr(v.NodeMac[:]),
		})
	}
	return eps, nil
}
