package datapath

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
)

// OpKind names a kernel operation.
type OpKind string

// Operations, in the order Plan emits their groups.
const (
	OpHostCreate     OpKind = "host-create"
	OpHostUp         OpKind = "host-up"
	OpAddrAdd        OpKind = "addr-add"
	OpAddrDel        OpKind = "addr-del"
	OpTunnelCreate   OpKind = "tunnel-create"
	OpTunnelRecreate OpKind = "tunnel-recreate"
	OpTunnelUpdate   OpKind = "tunnel-update"
	OpSysctl         OpKind = "sysctl"
	OpPodRoute       OpKind = "pod-route"
	OpPodMTU         OpKind = "pod-mtu"
	OpNeighSet       OpKind = "neigh-set"
	OpFDBSet         OpKind = "fdb-set"
	OpRouteReplace   OpKind = "route-replace"
	OpRouteDel       OpKind = "route-del"
	OpFDBDel         OpKind = "fdb-del"
	OpNeighDel       OpKind = "neigh-del"
	OpTunnelDelete   OpKind = "tunnel-delete"
	OpSavedForget    OpKind = "saved-forget"
)

// Sysctl is one sysctl write. With Save, the value it replaces is saved
// first (unless one is saved already) so it can be restored later.
type Sysctl struct {
	Key, Value string
	Save       bool
}

// Op is one kernel operation; only the field of its kind is set.
type Op struct {
	Kind   OpKind
	Tunnel Tunnel
	// Addr is the address of OpAddrAdd and OpAddrDel, on device Dev.
	Addr   netip.Prefix
	Dev    string
	Sysctl Sysctl
	Pod    PodMTU
	// PodRoute is the route of OpPodRoute.
	PodRoute PodRoute
	Neigh    Neigh
	FDB      FDB
	Route    Route
	// Why explains the operation in the log.
	Why string
}

// KernelChange is false for operations that only touch the agent's own
// state files.
func (o Op) KernelChange() bool { return o.Kind != OpSavedForget }

func (o Op) String() string {
	var s string
	switch o.Kind {
	case OpHostCreate:
		s = fmt.Sprintf("create %s/%s", HostDevice, NetDevice)
	case OpHostUp:
		s = fmt.Sprintf("set %s/%s up", HostDevice, NetDevice)
	case OpAddrAdd:
		s = fmt.Sprintf("add address %s to %s", o.Addr, o.Dev)
	case OpAddrDel:
		s = fmt.Sprintf("delete address %s from %s", o.Addr, o.Dev)
	case OpTunnelCreate, OpTunnelRecreate, OpTunnelUpdate:
		t := o.Tunnel
		s = fmt.Sprintf("%s %s vxlan id %d dstport %d local %s dev %s mtu %d address %s nolearning",
			map[OpKind]string{OpTunnelCreate: "create", OpTunnelRecreate: "recreate", OpTunnelUpdate: "update"}[o.Kind],
			t.Name, t.VNI, t.Port, t.Local, t.Underlay, t.MTU, t.MAC)
	case OpTunnelDelete:
		s = fmt.Sprintf("delete %s", o.Tunnel.Name)
	case OpSysctl:
		s = fmt.Sprintf("sysctl %s=%s", o.Sysctl.Key, o.Sysctl.Value)
		if o.Sysctl.Save {
			s += " (previous value saved)"
		}
	case OpSavedForget:
		s = fmt.Sprintf("forget saved %s", o.Sysctl.Key)
	case OpPodRoute:
		s = fmt.Sprintf("route replace %s", o.PodRoute)
	case OpPodMTU:
		s = fmt.Sprintf("pod %s default route mtu %d", o.Pod.Key, o.Pod.MTU)
	case OpNeighSet:
		s = fmt.Sprintf("neigh replace %s lladdr %s dev %s nud permanent", o.Neigh.IP, o.Neigh.MAC, o.Neigh.Dev)
	case OpNeighDel:
		s = fmt.Sprintf("neigh del %s dev %s", o.Neigh.IP, o.Neigh.Dev)
	case OpFDBSet:
		s = fmt.Sprintf("fdb replace %s dev %s dst %s self permanent", o.FDB.MAC, o.FDB.Dev, o.FDB.Dst)
	case OpFDBDel:
		s = fmt.Sprintf("fdb del %s dev %s dst %s", o.FDB.MAC, o.FDB.Dev, o.FDB.Dst)
	case OpRouteReplace:
		s = fmt.Sprintf("route replace %s proto %d", o.Route, RouteProtocol)
	case OpRouteDel:
		s = fmt.Sprintf("route del %s proto %d", o.Route, RouteProtocol)
	default:
		s = string(o.Kind)
	}
	if o.Why != "" {
		s += " (" + o.Why + ")"
	}
	return s
}

// Plan returns the operations that turn actual into desired, in an order
// that never leaves a peer without a route nor lets a packet be too big
// (see the package documentation). It does not modify its arguments.
func Plan(desired, actual State) []Op {
	var (
		early, podRoutes, lower, neighSet, fdbSet, routeSet []Op
		routeDel, fdbDel, neighDel, tunnelDel, raise, late  []Op
		forget                                              []Op
	)
	actualRoutes := maps.Clone(actual.Routes)
	actualNeighs := maps.Clone(actual.Neighs)
	actualFDB := maps.Clone(actual.FDB)
	actualSysctls := maps.Clone(actual.Sysctls)

	if d := desired.Host; d != nil {
		a := actual.Host
		var have []netip.Prefix
		switch {
		case a == nil || !a.Exists:
			early = append(early, Op{Kind: OpHostCreate})
		case !a.Up:
			early = append(early, Op{Kind: OpHostUp})
			have = a.Addrs
		default:
			have = a.Addrs
		}
		early = append(early, addrOps(HostDevice, d.Addrs, have)...)
	}

	if d := desired.Tunnel; d != nil {
		recreated := false
		switch a := actual.Tunnel; {
		case a == nil:
			early = append(early, Op{Kind: OpTunnelCreate, Tunnel: *d})
			recreated = true
		case Incompatible(*a, *d) != "":
			early = append(early, Op{Kind: OpTunnelRecreate, Tunnel: *d, Why: Incompatible(*a, *d)})
			recreated = true
		case a.MTU != d.MTU || a.MAC != d.MAC || !a.Up:
			early = append(early, Op{Kind: OpTunnelUpdate, Tunnel: *d})
		}
		var have []netip.Prefix
		if !recreated {
			have = actual.Tunnel.Addrs
		}
		early = append(early, addrOps(d.Name, d.Addrs, have)...)
		if recreated {
			// A new device starts empty: nothing of the old one survives.
			clear(actualNeighs)
			clear(actualFDB)
			maps.DeleteFunc(actualRoutes, func(_ netip.Prefix, r Route) bool { return r.Dev == d.Name })
			delete(actualSysctls, RPFilterKey(d.Name))
		}
	}

	for _, k := range SortedKeys(desired.Sysctls) {
		v := desired.Sysctls[k]
		if a, ok := actualSysctls[k]; ok && a == v {
			continue
		}
		_, keep := desired.Saved[k]
		_, saved := actual.Saved[k]
		op := Op{Kind: OpSysctl, Sysctl: Sysctl{Key: k, Value: v, Save: keep}}
		if saved && !keep {
			op.Why = "restore"
			late = append(late, op)
		} else {
			early = append(early, op)
		}
	}
	for _, k := range SortedKeys(actual.Saved) {
		if _, keep := desired.Saved[k]; !keep {
			forget = append(forget, Op{Kind: OpSavedForget, Sysctl: Sysctl{Key: k}})
		}
	}

	for _, k := range SortedKeys(desired.PodRoutes) {
		d := desired.PodRoutes[k]
		// An endpoint without its device is absent: the pod is going away.
		if a, ok := actual.PodRoutes[k]; ok && a != d {
			why := "missing"
			if a.Dev != "" {
				why = "was dev " + a.Dev
			}
			podRoutes = append(podRoutes, Op{Kind: OpPodRoute, PodRoute: d, Why: why})
		}
	}

	for _, k := range SortedKeys(desired.PodMTU) {
		v := desired.PodMTU[k]
		a, ok := actual.PodMTU[k]
		if !ok || a == v {
			continue // an endpoint that cannot be read is going away
		}
		op := Op{Kind: OpPodMTU, Pod: PodMTU{Key: k, MTU: v}}
		if a == 0 || v < a {
			lower = append(lower, op)
		} else {
			raise = append(raise, op)
		}
	}

	for _, ip := range sortedAddrs(desired.Neighs) {
		if d := desired.Neighs[ip]; actualNeighs[ip] != d {
			neighSet = append(neighSet, Op{Kind: OpNeighSet, Neigh: d})
		}
	}
	for _, mac := range SortedKeys(desired.FDB) {
		if d := desired.FDB[mac]; actualFDB[mac] != d {
			fdbSet = append(fdbSet, Op{Kind: OpFDBSet, FDB: d})
		}
	}
	for _, dst := range sortedPrefixes(desired.Routes) {
		d := desired.Routes[dst]
		if a, ok := actualRoutes[dst]; !ok || a != d {
			why := ""
			if ok {
				why = "was " + a.String()
			}
			routeSet = append(routeSet, Op{Kind: OpRouteReplace, Route: d, Why: why})
		}
	}
	for _, dst := range sortedPrefixes(actualRoutes) {
		if _, ok := desired.Routes[dst]; !ok {
			routeDel = append(routeDel, Op{Kind: OpRouteDel, Route: actualRoutes[dst], Why: "stale"})
		}
	}
	tunnelGoes := desired.Tunnel == nil && actual.Tunnel != nil
	if !tunnelGoes {
		// Entries on a device being deleted go with it.
		for _, mac := range SortedKeys(actualFDB) {
			if _, ok := desired.FDB[mac]; !ok {
				fdbDel = append(fdbDel, Op{Kind: OpFDBDel, FDB: actualFDB[mac], Why: "stale"})
			}
		}
		for _, ip := range sortedAddrs(actualNeighs) {
			if _, ok := desired.Neighs[ip]; !ok {
				neighDel = append(neighDel, Op{Kind: OpNeighDel, Neigh: actualNeighs[ip], Why: "stale"})
			}
		}
	}
	if tunnelGoes {
		tunnelDel = append(tunnelDel, Op{Kind: OpTunnelDelete, Tunnel: *actual.Tunnel})
	}

	return slices.Concat(early, podRoutes, lower, neighSet, fdbSet, routeSet, routeDel, fdbDel, neighDel, tunnelDel, raise, late, forget)
}

// addrOps adds the addresses of want that dev lacks and deletes the ones it
// has beyond want.
func addrOps(dev string, want, have []netip.Prefix) []Op {
	var ops []Op
	for _, p := range want {
		if !slices.Contains(have, p) {
			ops = append(ops, Op{Kind: OpAddrAdd, Addr: p, Dev: dev})
		}
	}
	for _, p := range have {
		if !slices.Contains(want, p) {
			ops = append(ops, Op{Kind: OpAddrDel, Addr: p, Dev: dev})
		}
	}
	return ops
}

func sortedAddrs[V any](m map[netip.Addr]V) []netip.Addr {
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, netip.Addr.Compare)
	return keys
}

func sortedPrefixes[V any](m map[netip.Prefix]V) []netip.Prefix {
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return keys
}
