//go:build linux

/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

package hostrouting

import (
	"errors"
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

// diffEndpoints returns the entries to write and the keys to delete to turn
// cur into want.
func diffEndpoints(cur, want map[netip.Addr]bpf.EndpointInfo) (put map[netip.Addr]bpf.EndpointInfo, del []netip.Addr) {
	put = make(map[netip.Addr]bpf.EndpointInfo)
	for ip, v := range want {
		if c, ok := cur[ip]; !ok || c != v {
			put[ip] = v
		}
	}
	for ip := range cur {
		if _, ok := want[ip]; !ok {
			del = append(del, ip)
		}
	}
	slices.SortFunc(del, netip.Addr.Compare)
	return put, del
}

func readEndpointMap(m *ebpf.Map) (map[netip.Addr]bpf.EndpointInfo, error) {
	cur := make(map[netip.Addr]bpf.EndpointInfo)
	var (
		k bpf.EndpointKey
		v bpf.EndpointInfo
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		cur[k.Addr()] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read endpoint map: %w", err)
	}
	return cur, nil
}

// syncEndpoints writes new and changed entries before deleting stale ones:
// an update is a single atomic map write, so a pod is never briefly
// missing.
func syncEndpoints(m *ebpf.Map, want map[netip.Addr]bpf.EndpointInfo) error {
	cur, err := readEndpointMap(m)
	if err != nil {
		return err
	}
	put, del := diffEndpoints(cur, want)
	for _, ip := range slices.SortedFunc(maps.Keys(put), netip.Addr.Compare) {
		k, err := bpf.KeyFromAddr(ip)
		if err != nil {
			return err
		}
		if err := m.Put(k, put[ip]); err != nil {
			return fmt.Errorf("write endpoint %s: %w", ip, err)
		}
	}
	for _, ip := range del {
		k, err := bpf.KeyFromAddr(ip)
		if err != nil {
			return err
		}
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete endpoint %s: %w", ip, err)
		}
	}
	return nil
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
