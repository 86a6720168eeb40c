//go:build linux

/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

package hostrouting

import (
	"context"
	"errors"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/routemode/routemode/agent/nlsafe"
	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/bpf"
)

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func TestFormatEndpointMatchesCilium(t *testing.T) {
	got := FormatEndpoint(Endpoint{
		IP: netip.MustParseAddr("10.0.0.85"), ID: 1445, IfIndex: 34,
		MAC: mac("c6:6d:95:cd:34:a2"), NodeMAC: mac("2a:0a:d9:17:44:22"),
	})
	want := "10.0.0.85:0 id=1445 flags=0x0000 ifindex=34 mac=C6:6D:95:CD:34:A2 nodemac=2A:0A:D9:17:44:22"
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestPlanOrdersNetworkSideFirst(t *testing.T) {
	ul := device{Name: "eth0", Index: 2}
	vx := &device{Name: "rm_vxlan", Index: 9}
	lxcs := []device{{Name: "lxcb", Index: 30}, {Name: "lxca", Index: 12}, {Name: "lxca", Index: 12}}

	got := plan(ul, vx, lxcs)
	want := []attachment{
		{Dev: "eth0", Ifindex: 2, Role: roleNetdev},
		{Dev: "rm_vxlan", Ifindex: 9, Role: roleOverlay},
		{Dev: "lxca", Ifindex: 12, Role: roleLXC},
		{Dev: "lxcb", Ifindex: 30, Role: roleLXC},
	}
	if !slices.Equal(got, want) {
		t.Errorf("plan = %+v\nwant %+v", got, want)
	}
	if got := plan(ul, nil, nil); len(got) != 1 || got[0].Role != roleNetdev {
		t.Errorf("plan without tunnel or pods = %+v", got)
	}
}

func TestEndpointEntries(t *testing.T) {
	links := map[int]device{
		34: {Name: "lxc1", Index: 34, MAC: mac("2a:0a:d9:17:44:22")},
		35: {Name: "lxc2", Index: 35, MAC: mac("2a:0a:d9:17:44:23")},
	}
	eps := []Endpoint{
		{IP: netip.MustParseAddr("10.0.0.85"), ID: 1, IfIndex: 34, MAC: mac("c6:6d:95:cd:34:a2")},
		{IP: netip.MustParseAddr("10.0.0.86"), ID: 2, IfIndex: 35, MAC: mac("c6:6d:95:cd:34:a3"), NodeMAC: mac("02:00:00:00:00:01")},
		{IP: netip.MustParseAddr("10.0.0.87"), ID: 3, IfIndex: 99, MAC: mac("c6:6d:95:cd:34:a4")}, // device gone
		{IP: netip.MustParseAddr("fd00::1"), ID: 4, IfIndex: 34, MAC: mac("c6:6d:95:cd:34:a5")},   // IPv6
		{IP: netip.MustParseAddr("10.0.0.88"), ID: 5, IfIndex: 35},                                // no pod MAC
		{IP: netip.MustParseAddr("10.0.0.85"), ID: 6, IfIndex: 35, MAC: mac("c6:6d:95:cd:34:a6")}, // IP claimed twice
		// A record that outlived its pod, its ifindex now another device's.
		{IP: netip.MustParseAddr("10.0.0.89"), ID: 7, IfIndex: 34, IfName: "lxcgone", MAC: mac("c6:6d:95:cd:34:a7")},
	}
	entries, lxcs, problems := endpointEntries(eps, links)
	if len(entries) != 2 {
		t.Fatalf("entries = %v", entries)
	}
	e := entries[netip.MustParseAddr("10.0.0.85")]
	if e.Ifindex != 34 || e.Id != 1 || e.NodeMac != [6]byte(mac("2a:0a:d9:17:44:22")) || e.Mac != [6]byte(mac("c6:6d:95:cd:34:a2")) {
		t.Errorf("entry filled from the device = %+v", e)
	}
	if e := entries[netip.MustParseAddr("10.0.0.86")]; e.NodeMac != [6]byte(mac("02:00:00:00:00:01")) {
		t.Errorf("explicit node MAC not kept: %+v", e)
	}
	if len(lxcs) != 2 {
		t.Errorf("lxcs = %v", lxcs)
	}
	if len(problems) != 5 {
		t.Errorf("problems = %v", problems)
	}
	for _, want := range []string{"10.0.0.87", "fd00::1", "10.0.0.88", "claimed", "ifindex 34 is lxc1, not its device lxcgone"} {
		if !strings.Contains(errors.Join(problems...).Error(), want) {
			t.Errorf("no problem mentions %q: %v", want, problems)
		}
	}
}

func TestDirectRouteEntriesTakeTheRouteMTU(t *testing.T) {
	p, a := netip.MustParsePrefix, netip.MustParseAddr
	got := directRouteEntries([]DirectRoute{
		{Dst: p("10.0.1.0/24"), Gateway: a("192.168.0.130")},
		{Dst: p("10.0.2.0/24"), Gateway: a("192.168.0.140"), MTU: 1450},
	}, device{Name: "eth0", Index: 2, MTU: 1500})
	want := map[netip.Prefix]bpf.DirectRoute{
		p("10.0.1.0/24"): bpf.NewDirectRoute(2, a("192.168.0.130"), 1500),
		p("10.0.2.0/24"): bpf.NewDirectRoute(2, a("192.168.0.140"), 1450),
	}
	if !maps.Equal(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func TestDiffMap(t *testing.T) {
	a, b, c := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")
	cur := map[netip.Addr]bpf.EndpointInfo{a: {Ifindex: 1}, b: {Ifindex: 2}}
	want := map[netip.Addr]bpf.EndpointInfo{a: {Ifindex: 1}, b: {Ifindex: 20}, c: {Ifindex: 3}}
	put, del := diffMap(cur, want, netip.Addr.Compare)
	if !slices.Equal(put, []netip.Addr{b, c}) || len(del) != 0 {
		t.Errorf("put=%v del=%v", put, del)
	}
	put, del = diffMap(want, map[netip.Addr]bpf.EndpointInfo{c: {Ifindex: 3}}, netip.Addr.Compare)
	if len(put) != 0 || !slices.Equal(del, []netip.Addr{a, b}) {
		t.Errorf("put=%v del=%v", put, del)
	}
}

func TestConfigValidate(t *testing.T) {
	cidr := netip.MustParsePrefix("10.0.0.0/16")
	route := func(dst, gw string) []DirectRoute {
		return []DirectRoute{{Dst: netip.MustParsePrefix(dst), Gateway: netip.MustParseAddr(gw)}}
	}
	ok := Config{Underlay: "eth0", PinDir: "/sys/fs/bpf/routemode/n1", NativeRoutingCIDR: cidr,
		DirectRoutes: route("10.0.1.0/24", "192.168.0.130")}
	if err := ok.validate(true); err != nil {
		t.Errorf("valid config: %v", err)
	}
	withRoutes := func(r []DirectRoute) Config {
		return Config{Underlay: "eth0", PinDir: "/sys/fs/bpf/x", NativeRoutingCIDR: cidr, DirectRoutes: r}
	}
	for name, c := range map[string]Config{
		"route outside the CIDR":     withRoutes(route("10.1.0.0/24", "192.168.0.130")),
		"route wider than the CIDR":  withRoutes(route("10.0.0.0/8", "192.168.0.130")),
		"route with host bits":       withRoutes(route("10.0.1.1/24", "192.168.0.130")),
		"route with an IPv6 gateway": withRoutes(route("10.0.1.0/24", "fd00::1")),
		"route without a gateway":    withRoutes([]DirectRoute{{Dst: netip.MustParsePrefix("10.0.1.0/24")}}),
		"routes without a CIDR":      {Underlay: "eth0", PinDir: "/sys/fs/bpf/x", DirectRoutes: route("10.0.1.0/24", "192.168.0.130")},
		"no underlay":                {PinDir: "/sys/fs/bpf/x"},
		"relative pin":               {Underlay: "eth0", PinDir: "x"},
		"host bits":                  {Underlay: "eth0", PinDir: "/sys/fs/bpf/x", NativeRoutingCIDR: netip.MustParsePrefix("10.0.0.1/16")},
		"IPv6 CIDR":                  {Underlay: "eth0", PinDir: "/sys/fs/bpf/x", NativeRoutingCIDR: netip.MustParsePrefix("fd00::/64")},
		"empty pin dir":              {Underlay: "eth0"},
	} {
		if err := c.validate(true); err == nil {
			t.Errorf("%s: want error", name)
		}
	}
	if err := (Config{PinDir: "/sys/fs/bpf/x"}).validate(false); err != nil {
		t.Errorf("legacy needs only the pin dir: %v", err)
	}
}

func TestOrderForDetachPutsPodsFirst(t *testing.T) {
	got := orderForDetach([]string{"eth0_ingress", "lxc01_ingress", "rm_vxlan_ingress", "lxc00_ingress"})
	want := []string{"lxc01_ingress", "lxc00_ingress", "eth0_ingress", "rm_vxlan_ingress"}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestDefaultPinDir(t *testing.T) {
	if got := DefaultPinDir("node-1"); got != "/sys/fs/bpf/routemode/node-1" {
		t.Errorf("got %s", got)
	}
	if got := DefaultPinDir("a/b"); got != "/sys/fs/bpf/routemode/a_b" {
		t.Errorf("got %s", got)
	}
}

// A kernel without the helpers gets a clear refusal, before anything is
// created or attached.
func TestApplyRefusesBPFWithoutKernelSupport(t *testing.T) {
	m := NewManager(Options{Handle: callerHandle(t), NetNS: "/nonexistent/netns"})
	m.probe = func() Capabilities { return Capabilities{Reason: "helper FnRedirectPeer not supported by the kernel"} }
	pinDir := filepath.Join(t.TempDir(), "node-1")
	changes, err := m.Apply(t.Context(), v1alpha1.HostRoutingBPF, Config{Underlay: "eth0", PinDir: pinDir}, nil)
	if !errors.Is(err, ErrUnsupported) || len(changes) != 0 || !strings.Contains(err.Error(), "FnRedirectPeer") {
		t.Fatalf("err = %v, changes %q; want ErrUnsupported naming the helper, and no change", err, changes)
	}
	if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin dir touched: %v", err)
	}
	// Legacy needs nothing from the kernel and nothing is attached.
	if changes, err := m.Apply(t.Context(), v1alpha1.HostRoutingLegacy, Config{PinDir: pinDir}, nil); err != nil || len(changes) != 0 {
		t.Errorf("legacy: changes %q, error %v; want neither", changes, err)
	}
}

// A cancelled Apply changes nothing, and a Manager without a netlink
// handle refuses to start.
func TestApplyHonoursContextAndNeedsHandle(t *testing.T) {
	pinDir := filepath.Join(t.TempDir(), "node-1")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	m := NewManager(Options{Handle: callerHandle(t)})
	for _, mode := range []v1alpha1.HostRouting{v1alpha1.HostRoutingBPF, v1alpha1.HostRoutingLegacy} {
		if changes, err := m.Apply(ctx, mode, Config{Underlay: "eth0", PinDir: pinDir}, nil); !errors.Is(err, context.Canceled) || len(changes) != 0 {
			t.Errorf("%s with a cancelled context: changes %q, error %v; want context.Canceled and no change", mode, changes, err)
		}
	}
	if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin dir touched: %v", err)
	}
	if _, err := NewManager(Options{}).Apply(t.Context(), v1alpha1.HostRoutingLegacy, Config{PinDir: pinDir}, nil); !errors.Is(err, errNoHandle) {
		t.Errorf("without a handle: %v, want errNoHandle", err)
	}
}

// callerHandle is a netlink handle in the test's own namespace, which the
// tests above never change.
func callerHandle(t *testing.T) nlsafe.Handle {
	h, err := netlink.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return nlsafe.Wrap(h)
}
