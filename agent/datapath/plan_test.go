package datapath

import (
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/routemode/routemode/api/v1alpha1"
)

func kinds(ops []Op) []OpKind {
	var k []OpKind
	for _, o := range ops {
		k = append(k, o.Kind)
	}
	return k
}

func render(t *testing.T, in Input) State {
	t.Helper()
	out, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	return out.State
}

// clone deep-copies the maps of s, as a kernel read would produce.
func clone(s State) State {
	c := s
	c.Routes = maps.Clone(s.Routes)
	c.Neighs = maps.Clone(s.Neighs)
	c.FDB = maps.Clone(s.FDB)
	c.Sysctls = maps.Clone(s.Sysctls)
	c.Saved = maps.Clone(s.Saved)
	c.PodMTU = maps.Clone(s.PodMTU)
	c.PodRoutes = maps.Clone(s.PodRoutes)
	if s.Tunnel != nil {
		t := *s.Tunnel
		c.Tunnel = &t
	}
	if s.Host != nil {
		h := *s.Host
		c.Host = &h
	}
	return c
}

func index(ops []Op, kind OpKind) int {
	return slices.IndexFunc(ops, func(o Op) bool { return o.Kind == kind })
}

func TestPlanFromScratchOrder(t *testing.T) {
	desired := render(t, input(tunnelSpec, peer2))
	actual := NewState()
	actual.PodMTU["pod-a/eth0"] = 1500
	ops := Plan(desired, actual)
	want := []OpKind{OpHostCreate, OpAddrAdd, OpTunnelCreate, OpAddrAdd, OpSysctl, OpPodMTU, OpNeighSet, OpFDBSet, OpRouteReplace}
	if !slices.Equal(kinds(ops), want) {
		t.Fatalf("plan %v, want %v", kinds(ops), want)
	}
}

// TestPlanPodRoute: a pod's route someone deleted, or pointed elsewhere,
// is put back as soon as the devices and sysctls are there, before any
// MTU or peer change; a pod whose device is gone (absent from actual) is
// going away and gets none; nothing ever deletes a pod's route.
func TestPlanPodRoute(t *testing.T) {
	desired := render(t, input(tunnelSpec, peer2))
	want := desired.PodRoutes["pod-a/eth0"]
	for name, tc := range map[string]struct {
		have    *PodRoute // nil: the pod's device is gone
		ops     []OpKind
		logLine string
	}{
		"deleted":        {have: &PodRoute{}, ops: []OpKind{OpPodRoute, OpPodMTU}, logLine: "route replace 10.0.0.5/32 dev lxc0123456789ab proto 182 scope link (pod pod-a/eth0) (missing)"},
		"other device":   {have: &PodRoute{Key: want.Key, IP: want.IP, Dev: "lxc-stale"}, ops: []OpKind{OpPodRoute, OpPodMTU}, logLine: "(was dev lxc-stale)"},
		"in place":       {have: &want, ops: []OpKind{OpPodMTU}},
		"device is gone": {ops: []OpKind{OpPodMTU}},
	} {
		t.Run(name, func(t *testing.T) {
			actual := clone(desired)
			actual.PodMTU["pod-a/eth0"] = 1500
			delete(actual.PodRoutes, "pod-a/eth0")
			if tc.have != nil {
				actual.PodRoutes["pod-a/eth0"] = *tc.have
			}
			ops := Plan(desired, actual)
			if !slices.Equal(kinds(ops), tc.ops) {
				t.Fatalf("plan %v, want %v", kinds(ops), tc.ops)
			}
			if tc.logLine != "" && !strings.Contains(ops[0].String(), tc.logLine) {
				t.Errorf("op %q, want it to say %q", ops[0], tc.logLine)
			}
		})
	}
	// From scratch the pod route comes after the devices and sysctls.
	actual := NewState()
	actual.PodRoutes["pod-a/eth0"] = PodRoute{}
	ops := Plan(desired, actual)
	if i, j := index(ops, OpSysctl), index(ops, OpPodRoute); i < 0 || j < i || j != index(ops, OpNeighSet)-1 {
		t.Errorf("plan %v: want the pod route after the sysctls, before the peers", kinds(ops))
	}
}

func TestPlanNothingToDo(t *testing.T) {
	for name, in := range map[string]Input{
		"tunnel":   input(tunnelSpec, peer2),
		"native":   input(nativeSpec, peer2, peer3),
		"switched": input(with(nativeSpec, func(d *v1alpha1.NodeDatapath) { d.Tunnel, d.LooseRPFilter = v1alpha1.TunnelVXLAN, true }), peer2, peer3),
	} {
		desired := render(t, in)
		actual := clone(desired)
		actual.Host.Exists = true
		if ops := Plan(desired, actual); len(ops) != 0 {
			t.Errorf("%s: kernel already right, plan %v", name, ops)
		}
	}
}

// TestPlanSwapIsOneReplace: switching a peer from tunnel to native is a
// single replace of the same route key, no delete in between.
func TestPlanSwapIsOneReplace(t *testing.T) {
	prepared := with(tunnelSpec, func(d *v1alpha1.NodeDatapath) { d.LooseRPFilter = true; d.NativeRoutingCIDR = "10.0.0.0/16" })
	switched := with(nativeSpec, func(d *v1alpha1.NodeDatapath) {
		d.Tunnel, d.RouteMTU, d.LooseRPFilter = v1alpha1.TunnelVXLAN, v1alpha1.RouteMTUTunnel, true
	})
	actual := clone(render(t, input(prepared, peer2)))
	actual.Saved = map[string]string{RPFilterKey("eth0"): "1", RPFilterKey(TunnelDevice): "1"}
	in := input(switched, peer2)
	in.Saved = actual.Saved
	ops := Plan(render(t, in), actual)
	if len(ops) != 1 || ops[0].Kind != OpRouteReplace || ops[0].Route.Gw != peer2.IP || ops[0].Route.MTU != 1450 {
		t.Fatalf("plan %v, want one route replace via %s mtu 1450", ops, peer2.IP)
	}
	// And back.
	ops = Plan(render(t, input(prepared, peer2)), clone(render(t, in)))
	if len(ops) != 1 || ops[0].Kind != OpRouteReplace || ops[0].Route.Dev != TunnelDevice {
		t.Fatalf("plan back %v, want one route replace via the tunnel", ops)
	}
}

// TestPlanMTUOrder: route MTU goes down before routes change (native →
// tunnel prepare) and up only after (finalize to native).
func TestPlanMTUOrder(t *testing.T) {
	native := render(t, input(nativeSpec, peer2))
	native.Host.Exists = true
	native.PodMTU["pod-a/eth0"] = 1500
	prepare := with(nativeSpec, func(d *v1alpha1.NodeDatapath) {
		d.Tunnel, d.RouteMTU, d.LooseRPFilter = v1alpha1.TunnelVXLAN, v1alpha1.RouteMTUTunnel, true
	})
	ops := Plan(render(t, input(prepare, peer2)), native)
	pod, route := index(ops, OpPodMTU), index(ops, OpRouteReplace)
	if pod < 0 || route < 0 || pod > route || ops[pod].Pod.MTU != 1450 {
		t.Fatalf("lowering: pod MTU must go down before the route changes: %v", ops)
	}
	if ops[route].Route.MTU != 1450 {
		t.Errorf("native route in the prepared state carries mtu %d, want 1450", ops[route].Route.MTU)
	}

	switched := clone(render(t, input(prepare, peer2)))
	switched.Saved = map[string]string{RPFilterKey("eth0"): "1", RPFilterKey(TunnelDevice): "1"}
	in := input(nativeSpec, peer2)
	in.Saved = switched.Saved
	ops = Plan(render(t, in), switched)
	pod, route = index(ops, OpPodMTU), index(ops, OpRouteReplace)
	del := index(ops, OpTunnelDelete)
	restore := slices.IndexFunc(ops, func(o Op) bool { return o.Kind == OpSysctl && o.Why == "restore" })
	if pod < 0 || route < 0 || del < 0 || restore < 0 || !(route < del && del < pod && pod < restore) || ops[pod].Pod.MTU != 1500 {
		t.Fatalf("finalize: want route → tunnel delete → pod MTU up → rp_filter restore, got %v", ops)
	}
	if ops[restore].Sysctl.Key != RPFilterKey("eth0") || ops[restore].Sysctl.Value != "1" {
		t.Errorf("restore %+v, want eth0 rp_filter back to 1", ops[restore].Sysctl)
	}
	forgets := 0
	for _, o := range ops {
		if o.Kind == OpSavedForget {
			forgets++
		}
		if o.Kind == OpNeighDel || o.Kind == OpFDBDel {
			t.Errorf("%s: entries on a deleted device go with it", o)
		}
	}
	if forgets != 2 || ops[len(ops)-1].Kind != OpSavedForget {
		t.Errorf("want both saved values forgotten last: %v", ops)
	}
}

func TestPlanTunnelRecreateRebuildsEntries(t *testing.T) {
	desired := render(t, input(tunnelSpec, peer2))
	actual := clone(desired)
	actual.Host.Exists = true
	actual.Tunnel.Local = netip.MustParseAddr("192.168.0.121")
	actual.Sysctls[RPFilterKey(TunnelDevice)] = "2"
	ops := Plan(desired, actual)
	want := []OpKind{OpTunnelRecreate, OpAddrAdd, OpNeighSet, OpFDBSet, OpRouteReplace}
	if !slices.Equal(kinds(ops), want) {
		t.Fatalf("plan %v, want %v", kinds(ops), want)
	}
	if !strings.Contains(ops[0].Why, "local 192.168.0.121") {
		t.Errorf("recreate reason %q", ops[0].Why)
	}
	// MTU and MAC change in place.
	actual = clone(desired)
	actual.Host.Exists = true
	actual.Tunnel.MTU, actual.Tunnel.MAC = 1400, "02:00:00:00:00:01"
	if ops := Plan(desired, actual); !slices.Equal(kinds(ops), []OpKind{OpTunnelUpdate}) {
		t.Errorf("plan %v, want one in-place update", ops)
	}
}

func TestPlanStaleAndDrift(t *testing.T) {
	desired := render(t, input(tunnelSpec, peer2))
	actual := clone(desired)
	actual.Host.Exists = true
	// A peer that left, a route deleted by hand, an address too many.
	stale := netip.MustParsePrefix("10.0.9.0/24")
	actual.Routes[stale] = Route{Dst: stale, Gw: netip.MustParseAddr("10.0.9.0"), Dev: TunnelDevice, OnLink: true, MTU: 1450}
	actual.Neighs[netip.MustParseAddr("10.0.9.0")] = Neigh{Dev: TunnelDevice, IP: netip.MustParseAddr("10.0.9.0"), MAC: "0e:72:c0:a8:00:09"}
	actual.FDB["0e:72:c0:a8:00:09"] = FDB{Dev: TunnelDevice, MAC: "0e:72:c0:a8:00:09", Dst: netip.MustParseAddr("192.168.0.9")}
	delete(actual.Routes, netip.MustParsePrefix("10.0.1.0/24"))
	actual.Host.Addrs = append(actual.Host.Addrs, netip.MustParsePrefix("10.0.5.1/32"))
	ops := Plan(desired, actual)
	want := []OpKind{OpAddrDel, OpRouteReplace, OpRouteDel, OpFDBDel, OpNeighDel}
	if !slices.Equal(kinds(ops), want) {
		t.Fatalf("plan %v, want %v", ops, want)
	}
}

func TestPlanDoesNotModifyArguments(t *testing.T) {
	desired := render(t, input(tunnelSpec, peer2))
	actual := clone(desired)
	actual.Tunnel.VNI = 7
	before := len(actual.Routes) + len(actual.Neighs) + len(actual.FDB)
	Plan(desired, actual)
	if after := len(actual.Routes) + len(actual.Neighs) + len(actual.FDB); after != before {
		t.Errorf("Plan modified actual: %d entries, had %d", after, before)
	}
}
