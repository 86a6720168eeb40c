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
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/routemode/routemode/bpf"
)

var directRouteKey = mapKey[netip.Prefix, bpf.DirectRouteKey]{
	to: bpf.KeyFromPrefix, from: bpf.DirectRouteKey.Prefix, cmp: netip.Prefix.Compare, what: "direct route",
}

// directRouteEntries turns validated direct routes into map values. The MTU
// is the route's, else the underlay's, as ip_forward applies them (the
// agent lowers its routes' MTU while a rollout needs it).
func directRouteEntries(routes []DirectRoute, underlay device) map[netip.Prefix]bpf.DirectRoute {
	out := make(map[netip.Prefix]bpf.DirectRoute, len(routes))
	for _, r := range routes {
		mtu := underlay.MTU
		if r.MTU > 0 {
			mtu = r.MTU
		}
		out[r.Dst] = bpf.NewDirectRoute(underlay.Index, r.Gateway, mtu)
	}
	return out
}

// clearDirectRoutes empties the pinned direct-route map, if there is one:
// with the programs detached nothing follows those routes, and `bpf route
// list` must not suggest otherwise. (The endpoint map stays: it describes
// the pods, not a forwarding decision.)
func clearDirectRoutes(j *journal, pinDir string) error {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, bpf.MapDirectRoutes), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open direct-route map in %s: %w", pinDir, err)
	}
	defer m.Close()
	return syncMap(j, m, map[netip.Prefix]bpf.DirectRoute{}, directRouteKey)
}

// ListDirectRoutes reads a node's direct-route map from its pin, sorted by
// destination, for `routemodectl bpf route list`. A node that never ran
// BPF host routing has no map: the error then wraps os.ErrNotExist.
func ListDirectRoutes(pinDir string) ([]DirectRouteEntry, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, bpf.MapDirectRoutes), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("open direct-route map in %s: %w", pinDir, err)
	}
	defer m.Close()
	cur, err := readMap[netip.Prefix, bpf.DirectRouteKey, bpf.DirectRoute](m, directRouteKey.from)
	if err != nil {
		return nil, err
	}
	out := make([]DirectRouteEntry, 0, len(cur))
	for _, p := range slices.SortedFunc(maps.Keys(cur), netip.Prefix.Compare) {
		v := cur[p]
		out = append(out, DirectRouteEntry{
			DirectRoute: DirectRoute{Dst: p, Gateway: v.GatewayAddr()},
			IfIndex:     int(v.Ifindex),
			MTU:         int(v.Mtu),
		})
	}
	return out, nil
}

// DirectRouteEntry is a direct route as the programs see it.
type DirectRouteEntry struct {
	DirectRoute
	IfIndex int
	MTU     int
}

// FormatDirectRoute renders e in the style of `bpf endpoint list`:
//
//	10.0.1.0/24 via 192.168.0.130 ifindex=2 mtu=1500
func FormatDirectRoute(e DirectRouteEntry) string {
	return fmt.Sprintf("%s via %s ifindex=%d mtu=%d", e.Dst, e.Gateway, e.IfIndex, e.MTU)
}
