//go:build linux

/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/routemode/routemode/internal/privileged"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The programs run with BPF_PROG_TEST_RUN against a throwaway network
// namespace that holds the routes and neighbours bpf_fib_lookup consults:
//
//	ul0  192.168.0.120/24, the "underlay"
//	     10.0.1.0/24 via 192.168.0.130 (neighbour resolved)
//	     10.0.2.0/24 via 192.168.0.140 (no neighbour)
//	     unreachable 10.0.3.0/24
//	     10.0.4.0/24 via 192.168.0.130 mtu lock 1400
//	lxc0 a pod's host-side veth, holding the router IP 10.0.0.1/32

var (
	podMAC    = mustMAC("c6:6d:95:cd:34:a2")
	nodeMAC   = mustMAC("2a:0a:d9:17:44:22")
	pod2MAC   = mustMAC("42:ef:f8:7a:9e:f7")
	node2MAC  = mustMAC("ca:0e:fa:6c:0f:30")
	gwMAC     = mustMAC("02:00:00:00:01:30")
	otherMAC  = mustMAC("02:00:00:00:99:99")
	broadcast = mustMAC("ff:ff:ff:ff:ff:ff")

	localPod  = netip.MustParseAddr("10.0.0.85")
	localPod2 = netip.MustParseAddr("10.0.0.86")
	remotePod = netip.MustParseAddr("10.0.1.124")
	noNeigh   = netip.MustParseAddr("10.0.2.7")
	unreach   = netip.MustParseAddr("10.0.3.7")
	smallMTU  = netip.MustParseAddr("10.0.4.9")
	routerIP  = netip.MustParseAddr("10.0.0.1")
	outside   = netip.MustParseAddr("192.0.2.10")
	cidr      = netip.MustParsePrefix("10.0.0.0/16")
)

// Direct routes in the map, none of them in the FIB: a packet that reaches
// their gateways did not consult the FIB.
var directRoutes = []struct {
	dst netip.Prefix
	gw  netip.Addr
	mtu int
}{
	{netip.MustParsePrefix("10.0.5.0/24"), netip.MustParseAddr("192.168.0.150"), 1500},
	{netip.MustParsePrefix("10.0.5.128/25"), netip.MustParseAddr("192.168.0.160"), 1500},
	{netip.MustParsePrefix("10.0.6.0/24"), netip.MustParseAddr("192.168.0.170"), 1400},
}

const (
	directRouteIfindex = 41
	lockedRouteMTU     = 1400
	localPodIfindex    = 34
	localPod2Ifindex   = 26
)

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

type testNet struct {
	ns            netns.NsHandle
	ul, lxc       int
	ulMAC, lxcMAC net.HardwareAddr
}

// inNS runs fn on a fresh OS thread inside ns. The thread is never
// unlocked, so Go discards it instead of reusing a thread in a foreign
// namespace.
func inNS(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func requireRoot(t testing.TB) {
	t.Helper()
	privileged.Require(t, "BPF_PROG_TEST_RUN and network namespaces")
}

func newTestNet(t testing.TB) *testNet {
	t.Helper()
	requireRoot(t)

	var ns netns.NsHandle
	err := func() error {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		ns, err = netns.New()
		if err != nil {
			return err
		}
		return netns.Set(orig)
	}()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() { ns.Close() })

	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()

	tn := &testNet{ns: ns}
	mk := func(name, peer string) netlink.Link {
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer}); err != nil {
			t.Fatalf("add veth %s: %v", name, err)
		}
		for _, n := range []string{name, peer} {
			l, err := h.LinkByName(n)
			if err != nil {
				t.Fatal(err)
			}
			if err := h.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
		}
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	ul := mk("ul0", "ul1")
	lxc := mk("lxc0", "lxc1")
	tn.ul, tn.ulMAC = ul.Attrs().Index, ul.Attrs().HardwareAddr
	tn.lxc, tn.lxcMAC = lxc.Attrs().Index, lxc.Attrs().HardwareAddr

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(h.AddrAdd(ul, &netlink.Addr{IPNet: mustNet("192.168.0.120/24")}))
	must(h.AddrAdd(lxc, &netlink.Addr{IPNet: mustNet("10.0.0.1/32")}))
	must(h.RouteAdd(&netlink.Route{Dst: mustNet("10.0.1.0/24"), Gw: net.ParseIP("192.168.0.130"), LinkIndex: tn.ul}))
	must(h.RouteAdd(&netlink.Route{Dst: mustNet("10.0.2.0/24"), Gw: net.ParseIP("192.168.0.140"), LinkIndex: tn.ul}))
	must(h.RouteAdd(&netlink.Route{Dst: mustNet("10.0.3.0/24"), Type: unix.RTN_UNREACHABLE}))
	must(h.RouteAdd(&netlink.Route{Dst: mustNet("10.0.4.0/24"), Gw: net.ParseIP("192.168.0.130"), LinkIndex: tn.ul, MTU: lockedRouteMTU, MTULock: true}))
	must(h.NeighSet(&netlink.Neigh{LinkIndex: tn.ul, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
		IP: net.ParseIP("192.168.0.130"), HardwareAddr: gwMAC}))
	must(inNS(ns, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/conf/all/forwarding", []byte("1"), 0o644)
	}))
	return tn
}

func mustNet(s string) *net.IPNet {
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	n.IP = ip
	return n
}

type objects struct {
	coll *ebpf.Collection
}

func loadObjects(t testing.TB, cfg Config) *objects {
	t.Helper()
	cfg.RecordLastRedirect = true
	spec, err := LoadSpec(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return newObjects(t, spec)
}

// newObjects loads spec unpinned, with the test's endpoints and direct
// routes in its maps.
func newObjects(t testing.TB, spec *ebpf.CollectionSpec) *objects {
	t.Helper()
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	coll, err := ebpf.NewCollection(spec)
	if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EPERM) {
		privileged.Unavailable(t, fmt.Sprintf("loading BPF programs: %v", err))
	}
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			t.Fatalf("verifier: %+v", ve)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { coll.Close() })

	eps := coll.Maps[MapEndpoints]
	put := func(a netip.Addr, info EndpointInfo) {
		k, err := KeyFromAddr(a)
		if err != nil {
			t.Fatal(err)
		}
		if err := eps.Put(k, info); err != nil {
			t.Fatal(err)
		}
	}
	put(localPod, EndpointInfo{Ifindex: localPodIfindex, Id: 1445, Mac: [6]byte(podMAC), NodeMac: [6]byte(nodeMAC)})
	put(localPod2, EndpointInfo{Ifindex: localPod2Ifindex, Id: 1580, Mac: [6]byte(pod2MAC), NodeMac: [6]byte(node2MAC)})
	for _, r := range directRoutes {
		k, err := KeyFromPrefix(r.dst)
		if err != nil {
			t.Fatal(err)
		}
		if err := coll.Maps[MapDirectRoutes].Put(k, NewDirectRoute(directRouteIfindex, r.gw, r.mtu)); err != nil {
			t.Fatal(err)
		}
	}
	// Armed, as the agent arms them once they sit at every hook.
	if err := coll.Maps[MapArmed].Put(uint32(0), uint32(1)); err != nil {
		t.Fatal(err)
	}
	return &objects{coll: coll}
}

func (o *objects) counter(t *testing.T, p Program, r Reason) uint64 {
	t.Helper()
	var per []Counter
	if err := o.coll.Maps[MapCounters].Lookup(CounterIndex(p, r), &per); err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, c := range per {
		n += c.Packets
	}
	return n
}

func (o *objects) last(t *testing.T) LastRedirect {
	t.Helper()
	var l LastRedirect
	if err := o.coll.Variables["rm_last"].Get(&l); err != nil {
		t.Fatal(err)
	}
	return l
}

// run executes prog on frame as if it arrived on ifindex; a nonzero
// gsoSize makes the frame a GSO skb of that segment payload size.
func (o *objects) run(t *testing.T, tn *testNet, prog string, ifindex int, frame []byte, gsoSize uint32) (uint32, []byte) {
	t.Helper()
	opts := &ebpf.RunOptions{
		Data:    frame,
		DataOut: make([]byte, len(frame)+256+2),
		Context: runContext(ifindex, gsoSize),
	}
	var ret uint32
	err := inNS(tn.ns, func() error {
		var err error
		ret, err = o.coll.Programs[prog].Run(opts)
		return err
	})
	if errors.Is(err, ebpf.ErrNotSupported) {
		privileged.Unavailable(t, fmt.Sprintf("BPF_PROG_TEST_RUN: %v", err))
	}
	if err != nil {
		t.Fatalf("run %s: %v", prog, err)
	}
	return ret, opts.DataOut
}

// runContext is a zero __sk_buff except the device the packet arrives on
// (the kernel sets pkt_type from that device's MAC, and bpf_fib_lookup
// uses it as the input interface) and the GSO segment size.
func runContext(ifindex int, gsoSize uint32) []byte {
	ctx := make([]byte, 256)
	binary.NativeEndian.PutUint32(ctx[36:], uint32(ifindex)) // ingress_ifindex
	binary.NativeEndian.PutUint32(ctx[40:], uint32(ifindex)) // ifindex
	binary.NativeEndian.PutUint32(ctx[176:], gsoSize)        // gso_size
	return ctx
}

type ipv4 struct {
	src, dst   netip.Addr
	ttl        uint8
	versionIHL uint8  // 0 means 0x45
	totLen     int    // 0 means a short probe
	proto      uint8  // 0 means UDP
	fragOff    uint16 // flags and fragment offset
	claimLen   int    // nonzero: the IP total length to write instead of the real one
}

// udpFrame returns an Ethernet+IPv4+UDP frame with a valid IP checksum.
func udpFrame(dstMAC, srcMAC net.HardwareAddr, h ipv4) []byte {
	payload := []byte("routemode probe 0001")
	if h.totLen > 0 {
		payload = make([]byte, h.totLen-20-8)
	}
	b := make([]byte, 14+20+8+len(payload))
	copy(b[0:6], dstMAC)
	copy(b[6:12], srcMAC)
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:34]
	ip[0] = 0x45
	if h.versionIHL != 0 {
		ip[0] = h.versionIHL
	}
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	if h.claimLen != 0 {
		binary.BigEndian.PutUint16(ip[2:], uint16(h.claimLen))
	}
	binary.BigEndian.PutUint16(ip[4:], 0x1234)
	binary.BigEndian.PutUint16(ip[6:], h.fragOff)
	ip[8] = h.ttl
	ip[9] = unix.IPPROTO_UDP
	if h.proto != 0 {
		ip[9] = h.proto
	}

	s, d := h.src.As4(), h.dst.As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip))
	udp := b[34:42]
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], 7946)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	copy(b[42:], payload)
	if h.proto == unix.IPPROTO_TCP {
		b[34+12] = 8 << 4 // data offset: a 32-byte TCP header, timestamps included
	}
	return b
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		if i == 10 {
			continue
		}
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func arpFrame(src net.HardwareAddr) []byte {
	b := make([]byte, 42)
	copy(b[0:6], broadcast)
	copy(b[6:12], src)
	binary.BigEndian.PutUint16(b[12:], 0x0806)
	return b
}

type want struct {
	ret     uint32
	reason  Reason
	ifindex uint32 // redirect target
	dstMAC  net.HardwareAddr
	srcMAC  net.HardwareAddr
	nexthop netip.Addr // for redirect_neigh/fib
	fibRC   uint32     // bpf_fib_lookup's result, checked when nonzero
	ttlOnly bool       // redirect_neigh: MACs left to the kernel, TTL decremented
}

// fibRetFragNeeded is BPF_FIB_LKUP_RET_FRAG_NEEDED.
const fibRetFragNeeded = 8

func checkRewritten(t *testing.T, in, out []byte, w want) {
	t.Helper()
	if got := net.HardwareAddr(out[0:6]); got.String() != w.dstMAC.String() {
		t.Errorf("dst MAC = %s, want %s", got, w.dstMAC)
	}
	if got := net.HardwareAddr(out[6:12]); got.String() != w.srcMAC.String() {
		t.Errorf("src MAC = %s, want %s", got, w.srcMAC)
	}
	if out[14+8] != in[14+8]-1 {
		t.Errorf("TTL = %d, want %d", out[14+8], in[14+8]-1)
	}
	if got, want := binary.BigEndian.Uint16(out[14+10:]), ipChecksum(out[14:34]); got != want {
		t.Errorf("IP checksum = %#04x, want %#04x", got, want)
	}
	if string(out[12:14]) != string(in[12:14]) || string(out[14+9:14+10]) != string(in[14+9:14+10]) ||
		string(out[14+12:len(in)]) != string(in[14+12:]) {
		t.Errorf("bytes other than MACs, TTL and checksum changed:\n in %x\nout %x", in, out[:len(in)])
	}
}

func TestFromNetwork(t *testing.T) {
	tn := newTestNet(t)

	for _, prog := range []struct {
		name string
		id   Program
	}{{ProgFromNetdev, ProgramNetdev}, {ProgFromOverlay, ProgramOverlay}} {
		cases := map[string]struct {
			frame []byte
			want  want
		}{
			"local pod is delivered with redirect_peer": {
				frame: udpFrame(tn.ulMAC, gwMAC, ipv4{src: remotePod, dst: localPod, ttl: 63}),
				want:  want{ret: TCActRedirect, reason: ReasonRedirectPeer, ifindex: localPodIfindex, dstMAC: podMAC, srcMAC: nodeMAC},
			},
			"second local pod gets its own MACs": {
				frame: udpFrame(tn.ulMAC, gwMAC, ipv4{src: remotePod, dst: localPod2, ttl: 2}),
				want:  want{ret: TCActRedirect, reason: ReasonRedirectPeer, ifindex: localPod2Ifindex, dstMAC: pod2MAC, srcMAC: node2MAC},
			},
			"remote pod passes": {
				frame: udpFrame(tn.ulMAC, gwMAC, ipv4{src: localPod, dst: remotePod, ttl: 64}),
				want:  want{ret: TCActUnspec, reason: ReasonNoEndpoint},
			},
			"node address passes": {
				frame: udpFrame(tn.ulMAC, gwMAC, ipv4{src: netip.MustParseAddr("192.168.0.130"), dst: netip.MustParseAddr("192.168.0.120"), ttl: 64}),
				want:  want{ret: TCActUnspec, reason: ReasonNoEndpoint},
			},
			"expiring TTL passes for ICMP time exceeded": {
				frame: udpFrame(tn.ulMAC, gwMAC, ipv4{src: remotePod, dst: localPod, ttl: 1}),
				want:  want{ret: TCActUnspec, reason: ReasonTTL},
			},
			"ARP passes": {
				frame: arpFrame(gwMAC),
				want:  want{ret: TCActUnspec, reason: ReasonNotIPv4},
			},
			"IPv6 ethertype passes": {
				frame: func() []byte {
					f := udpFrame(tn.ulMAC, gwMAC, ipv4{src: remotePod, dst: localPod, ttl: 64})
					binary.BigEndian.PutUint16(f[12:], 0x86dd)
					return f
				}(),
				want: want{ret: TCActUnspec, reason: ReasonNotIPv4},
			},
			"IP version 6 in an IPv4 frame is malformed": {
				frame: udpFrame(tn.ulMAC, gwMAC, ipv4{src: remotePod, dst: localPod, ttl: 64, versionIHL: 0x65}),
				want:  want{ret: TCActUnspec, reason: ReasonMalformed},
			},
			"IHL below 5 is malformed": {
				frame: udpFrame(tn.ulMAC, gwMAC, ipv4{src: remotePod, dst: localPod, ttl: 64, versionIHL: 0x44}),
				want:  want{ret: TCActUnspec, reason: ReasonMalformed},
			},
		}
		// The stack drops a frame for another MAC, decapsulated or not.
		cases["unicast for another MAC passes"] = struct {
			frame []byte
			want  want
		}{
			frame: udpFrame(otherMAC, gwMAC, ipv4{src: remotePod, dst: localPod, ttl: 64}),
			want:  want{ret: TCActUnspec, reason: ReasonNotForHost},
		}
		// A node's own stack, say, whose answers the stack sees: from the
		// underlay the packet takes the stack too. The tunnel's native
		// routing CIDR may hold only the node's own pods, so there the
		// check does not apply.
		fromNode := struct {
			frame []byte
			want  want
		}{
			frame: udpFrame(tn.ulMAC, gwMAC, ipv4{src: netip.MustParseAddr("192.168.0.130"), dst: localPod, ttl: 64}),
			want:  want{ret: TCActUnspec, reason: ReasonSourceOutsideCIDR},
		}
		if prog.id == ProgramOverlay {
			fromNode.want = want{ret: TCActRedirect, reason: ReasonRedirectPeer, ifindex: localPodIfindex, dstMAC: podMAC, srcMAC: nodeMAC}
		}
		cases["source outside the CIDR for a local pod"] = fromNode
		for name, tc := range cases {
			t.Run(prog.name+"/"+name, func(t *testing.T) {
				objs := loadObjects(t, Config{NativeRoutingCIDR: cidr})
				ret, out := objs.run(t, tn, prog.name, tn.ul, tc.frame, 0)
				checkVerdict(t, objs, prog.id, tc.frame, ret, out, tc.want)
			})
		}
	}
}

func checkVerdict(t *testing.T, objs *objects, p Program, in []byte, ret uint32, out []byte, w want) {
	t.Helper()
	if ret != w.ret {
		t.Fatalf("verdict = %d, want %d", ret, w.ret)
	}
	if got := objs.counter(t, p, w.reason); got != 1 {
		t.Errorf("counter %s/%s = %d, want 1", p, w.reason, got)
	}
	l := objs.last(t)
	if Reason(l.Reason) != w.reason {
		t.Errorf("recorded reason = %s, want %s", Reason(l.Reason), w.reason)
	}
	if w.fibRC != 0 && l.FibRc != w.fibRC {
		t.Errorf("fib lookup result = %d, want %d", l.FibRc, w.fibRC)
	}
	if w.ret != TCActRedirect {
		if string(out[:len(in)]) != string(in) {
			t.Errorf("passed frame was modified:\n in %x\nout %x", in, out[:len(in)])
		}
		return
	}
	if l.Ifindex != w.ifindex {
		t.Errorf("redirect ifindex = %d, want %d", l.Ifindex, w.ifindex)
	}
	if w.nexthop.IsValid() && l.NexthopAddr() != w.nexthop {
		t.Errorf("next hop = %s, want %s", l.NexthopAddr(), w.nexthop)
	}
	if w.dstMAC != nil {
		checkRewritten(t, in, out, w)
	}
	if w.ttlOnly {
		w.dstMAC, w.srcMAC = in[0:6], in[6:12]
		checkRewritten(t, in, out, w)
	}
}

func TestFromLXC(t *testing.T) {
	tn := newTestNet(t)

	cases := map[string]struct {
		cfg   *Config // nil: the native routing CIDR only
		frame []byte
		gso   uint32 // nonzero: a GSO skb of segments of this payload size
		want  want
	}{
		// A GSO skb's segments, headers included, are what must fit:
		// 20 + 32 + 1448 = 1500.
		"TCP GSO whose segments fit the direct route takes it": {
			frame: udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: netip.MustParseAddr("10.0.5.9"), ttl: 64, proto: unix.IPPROTO_TCP}),
			gso:   1448,
			want: want{ret: TCActRedirect, reason: ReasonRedirectDirectRoute, ifindex: directRouteIfindex,
				nexthop: netip.MustParseAddr("192.168.0.150"), ttlOnly: true},
		},
		"TCP GSO whose segments exceed the direct route is left to the stack": {
			frame: udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: netip.MustParseAddr("10.0.5.9"), ttl: 64, proto: unix.IPPROTO_TCP}),
			gso:   1449,
			want:  want{ret: TCActUnspec, reason: ReasonMTU},
		},
		// It may carry a tunnel whose inner headers the program cannot see.
		"UDP GSO is left to the stack": {
			frame: udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: netip.MustParseAddr("10.0.5.9"), ttl: 64}),
			gso:   1000,
			want:  want{ret: TCActUnspec, reason: ReasonMTU},
		},
		"local pod is delivered with redirect_peer": {
			frame: udpFrame(tn.lxcMAC, pod2MAC, ipv4{src: localPod2, dst: localPod, ttl: 64}),
			want:  want{ret: TCActRedirect, reason: ReasonRedirectPeer, ifindex: localPodIfindex, dstMAC: podMAC, srcMAC: nodeMAC},
		},
		"remote pod with a direct route goes to its gateway without a FIB lookup": {
			frame: udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: netip.MustParseAddr("10.0.5.9"), ttl: 64}),
			want: want{ret: TCActRedirect, reason: ReasonRedirectDirectRoute, ifindex: directRouteIfindex,
				nexthop: netip.MustParseAddr("192.168.0.150"), ttlOnly: true},
		},
		"the longest direct route wins": {
			frame: udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: netip.MustParseAddr("10.0.5.200"), ttl: 64}),
			want: want{ret: TCActRedirect, reason: ReasonRedirectDirectRoute, ifindex: directRouteIfindex,
				nexthop: netip.MustParseAddr("192.168.0.160"), ttlOnly: true},
		},
		"packet within a direct route's MTU takes it": {
			frame: udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: netip.MustParseAddr("10.0.6.9"), ttl: 64, totLen: 1400}),
			want: want{ret: TCActRedirect, reason: ReasonRedirectDirectRoute, ifindex: directRouteIfindex,
				nexthop: netip.MustParseAddr("192.168.0.170"), ttlOnly: true},
		},
		// bpf_redirect_neigh checks no size and bpf_fib_lookup ignores an
		// unlocked route MTU: the stack, which applies it, takes the packet.
		"packet over a direct route's MTU is left to the stack": {
			frame: udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: netip.MustParseAddr("10.0.6.9"), ttl: 64, totLen: 1401}),
			want:  want{ret: TCActUnspec, reason: ReasonMTU},
		},
		"packet over the device MTU passes for ICMP fragmentation needed": {
			frame: udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: remotePod, ttl: 64, totLen: 1501}),
			want:  want{ret: TCActUnspec, reason: ReasonFIB, fibRC: fibRetFragNeeded},
		},
		"remote pod with resolved next hop uses redirect and the FIB's MACs": {
			frame: udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: remotePod, ttl: 64}),
			want: want{ret: TCActRedirect, reason: ReasonRedirectFIB, ifindex: uint32(tn.ul),
				dstMAC: gwMAC, srcMAC: tn.ulMAC, nexthop: netip.MustParseAddr("192.168.0.130")},
		},
		"remote pod with unresolved next hop uses redirect_neigh": {
			frame: udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: noNeigh, ttl: 64}),
			want: want{ret: TCActRedirect, reason: ReasonRedirectNeigh, ifindex: uint32(tn.ul),
				nexthop: netip.MustParseAddr("192.168.0.140")},
		},
		"unreachable destination in the CIDR passes for ICMP": {
			frame: udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: unreach, ttl: 64}),
			want:  want{ret: TCActUnspec, reason: ReasonFIB},
		},
		"router IP passes to the node": {
			frame: udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: routerIP, ttl: 64}),
			want:  want{ret: TCActUnspec, reason: ReasonFIB},
		},
		// bpf_fib_lookup applies a route's MTU only when it is locked;
		// otherwise the device's. (ip_forward applies an unlocked one too:
		// the agent's own routes, the only ones it lowers, are sized by
		// the direct-route map, which carries their MTU.)
		"packet within a locked route MTU is forwarded": {
			frame: udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: smallMTU, ttl: 64, totLen: lockedRouteMTU}),
			want: want{ret: TCActRedirect, reason: ReasonRedirectFIB, ifindex: uint32(tn.ul),
				dstMAC: gwMAC, srcMAC: tn.ulMAC, nexthop: netip.MustParseAddr("192.168.0.130")},
		},
		"packet over a locked route MTU passes for ICMP fragmentation needed": {
			frame: udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: smallMTU, ttl: 64, totLen: lockedRouteMTU + 1}),
			want:  want{ret: TCActUnspec, reason: ReasonFIB, fibRC: fibRetFragNeeded},
		},
		"destination outside the CIDR passes for masquerade": {
			frame: udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: outside, ttl: 64}),
			want:  want{ret: TCActUnspec, reason: ReasonOutsideCIDR},
		},
		"without a native routing CIDR remote pods pass": {
			cfg:   &Config{},
			frame: udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: remotePod, ttl: 64}),
			want:  want{ret: TCActUnspec, reason: ReasonOutsideCIDR},
		},
		"route into a flow-based tunnel passes": {
			cfg:   &Config{NativeRoutingCIDR: cidr, FlowBasedTunnelIfindex: uint32(tn.ul)},
			frame: udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: remotePod, ttl: 64}),
			want:  want{ret: TCActUnspec, reason: ReasonTunnel},
		},
		"expiring TTL passes": {
			frame: udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: remotePod, ttl: 1}),
			want:  want{ret: TCActUnspec, reason: ReasonTTL},
		},
		"broadcast passes": {
			frame: udpFrame(broadcast, podMAC, ipv4{src: localPod, dst: netip.MustParseAddr("255.255.255.255"), ttl: 64}),
			want:  want{ret: TCActUnspec, reason: ReasonNotForHost},
		},
		"ARP passes": {
			frame: arpFrame(podMAC),
			want:  want{ret: TCActUnspec, reason: ReasonNotForHost},
		},
		"ARP reply to the gateway MAC passes": {
			frame: func() []byte { f := arpFrame(podMAC); copy(f, tn.lxcMAC); return f }(),
			want:  want{ret: TCActUnspec, reason: ReasonNotIPv4},
		},
		"IHL below 5 is malformed": {
			frame: udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: remotePod, ttl: 64, versionIHL: 0x43}),
			want:  want{ret: TCActUnspec, reason: ReasonMalformed},
		},
		"IP options are left to the forwarding code": {
			frame: udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: remotePod, ttl: 64, versionIHL: 0x46}),
			want:  want{ret: TCActUnspec, reason: ReasonIPOptions},
		},
		// Conntrack, which says whether a flow was translated, looks up TCP
		// and UDP only; ICMP errors may belong to a translated flow.
		"ICMP takes the stack": {
			frame: udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: localPod2, ttl: 64, proto: unix.IPPROTO_ICMP}),
			want:  want{ret: TCActUnspec, reason: ReasonNotTCPUDP},
		},
		"a fragment takes the stack": {
			frame: udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: netip.MustParseAddr("10.0.5.9"), ttl: 64, fragOff: 0x2000}),
			want:  want{ret: TCActUnspec, reason: ReasonFragment},
		},
		// The size on the wire is the frame's, whatever the header claims.
		"a frame over a direct route's MTU that claims a small total length is left to the stack": {
			frame: udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: netip.MustParseAddr("10.0.6.9"), ttl: 64, totLen: 1401, claimLen: 100}),
			want:  want{ret: TCActUnspec, reason: ReasonMTU},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := Config{NativeRoutingCIDR: cidr}
			if tc.cfg != nil {
				cfg = *tc.cfg
			}
			objs := loadObjects(t, cfg)
			ret, out := objs.run(t, tn, ProgFromLXC, tn.lxc, tc.frame, tc.gso)
			checkVerdict(t, objs, ProgramLXC, tc.frame, ret, out, tc.want)
		})
	}
}

// Until the agent arms them (once every device has its program) and from
// the moment it disarms them (before it detaches any), the programs leave
// every packet to the stack, even one they would deliver to a local pod or
// send along a direct route: a flow must take one path through the node
// both ways.
func TestDisarmedProgramsPassEverything(t *testing.T) {
	tn := newTestNet(t)
	objs := loadObjects(t, Config{NativeRoutingCIDR: cidr})
	if err := objs.coll.Maps[MapArmed].Put(uint32(0), uint32(0)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		prog    string
		id      Program
		ifindex int
		frame   []byte
	}{
		{ProgFromNetdev, ProgramNetdev, tn.ul, udpFrame(tn.ulMAC, gwMAC, ipv4{src: remotePod, dst: localPod, ttl: 64})},
		{ProgFromOverlay, ProgramOverlay, tn.ul, udpFrame(tn.ulMAC, gwMAC, ipv4{src: remotePod, dst: localPod, ttl: 64})},
		{ProgFromLXC, ProgramLXC, tn.lxc, udpFrame(tn.lxcMAC, podMAC, ipv4{src: localPod, dst: remotePod, ttl: 64})},
	} {
		ret, out := objs.run(t, tn, tc.prog, tc.ifindex, tc.frame, 0)
		checkVerdict(t, objs, tc.id, tc.frame, ret, out, want{ret: TCActUnspec, reason: ReasonDisarmed})
	}
}

// The byte counters feed the Prometheus metrics, so check they add up.
func TestCountersAccumulate(t *testing.T) {
	tn := newTestNet(t)
	objs := loadObjects(t, Config{NativeRoutingCIDR: cidr})
	f := udpFrame(tn.ulMAC, gwMAC, ipv4{src: remotePod, dst: localPod, ttl: 64})
	for range 5 {
		if ret, _ := objs.run(t, tn, ProgFromNetdev, tn.ul, f, 0); ret != TCActRedirect {
			t.Fatalf("verdict = %d", ret)
		}
	}
	var per []Counter
	if err := objs.coll.Maps[MapCounters].Lookup(CounterIndex(ProgramNetdev, ReasonRedirectPeer), &per); err != nil {
		t.Fatal(err)
	}
	var pk, by uint64
	for _, c := range per {
		pk += c.Packets
		by += c.Bytes
	}
	if pk != 5 || by != uint64(5*len(f)) {
		t.Errorf("packets=%d bytes=%d, want 5 and %d", pk, by, 5*len(f))
	}
}

func TestLoadSpecRejectsIPv6CIDR(t *testing.T) {
	if _, err := LoadSpec(Config{NativeRoutingCIDR: netip.MustParsePrefix("fd00::/64")}); err == nil {
		t.Fatal("want error for an IPv6 CIDR")
	}
}

func TestKeyRoundTrip(t *testing.T) {
	k, err := KeyFromAddr(localPod)
	if err != nil {
		t.Fatal(err)
	}
	if k.Addr() != localPod {
		t.Fatalf("round trip = %s", k.Addr())
	}
	if _, err := KeyFromAddr(netip.MustParseAddr("fd00::1")); err == nil {
		t.Fatal("want error for IPv6")
	}
}

// Kernel 6.18 refuses BPF_PROG_TEST_RUN for an IPv4 frame shorter than
// Ethernet + 20 bytes (EINVAL), so truncated frames go over a real veth
// with the programs attached instead.
func TestTruncatedFramesOnDevice(t *testing.T) {
	tn := newTestNet(t)
	objs := loadObjects(t, Config{NativeRoutingCIDR: cidr})

	for _, tc := range []struct {
		prog    string
		id      Program
		ifindex int // where the program is attached
		from    string
		dstMAC  net.HardwareAddr
	}{
		{ProgFromNetdev, ProgramNetdev, tn.ul, "ul1", tn.ulMAC},
		// The VXLAN device's program parses the same way; a veth stands in
		// for the VXLAN device, as the truncation happens before any
		// tunnel state is read.
		{ProgFromOverlay, ProgramOverlay, tn.ul, "ul1", tn.ulMAC},
		{ProgFromLXC, ProgramLXC, tn.lxc, "lxc1", tn.lxcMAC},
	} {
		t.Run(tc.prog, func(t *testing.T) {
			var l link.Link
			err := inNS(tn.ns, func() error {
				var err error
				l, err = link.AttachTCX(link.TCXOptions{Interface: tc.ifindex, Program: objs.coll.Programs[tc.prog], Attach: ebpf.AttachTCXIngress})
				return err
			})
			if errors.Is(err, ebpf.ErrNotSupported) {
				privileged.Unavailable(t, "TCX")
			}
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()

			full := udpFrame(tc.dstMAC, podMAC, ipv4{src: localPod, dst: remotePod, ttl: 64})
			frames := [][]byte{full[:14], full[:14+12], full[:14+19]}
			if err := inNS(tn.ns, func() error { return sendRaw(tc.from, frames) }); err != nil {
				t.Fatal(err)
			}
			if got := objs.counter(t, tc.id, ReasonMalformed); got != uint64(len(frames)) {
				t.Errorf("malformed counter = %d, want %d", got, len(frames))
			}
			for _, r := range []Reason{ReasonRedirectPeer, ReasonRedirectFIB, ReasonRedirectNeigh, ReasonRedirectDirectRoute} {
				if got := objs.counter(t, tc.id, r); got != 0 {
					t.Errorf("counter %s = %d, want 0", r, got)
				}
			}
		})
	}
}

// sendRaw writes frames as they are to dev with an AF_PACKET socket; the
// veth peer receives them at ingress.
func sendRaw(dev string, frames [][]byte) error {
	ifi, err := net.InterfaceByName(dev)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	sa := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6}
	for _, f := range frames {
		if err := unix.Sendto(fd, f, 0, sa); err != nil {
			return err
		}
	}
	return nil
}

// The verifier's work bounds per-packet cost and load time; the prototype
// needed about 220 and 120 instructions.
func TestVerifierComplexity(t *testing.T) {
	requireRoot(t)
	objs := loadObjects(t, Config{NativeRoutingCIDR: cidr})
	unrecorded, err := LoadSpec(Config{NativeRoutingCIDR: cidr})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range unrecorded.Maps {
		m.Pinning = ebpf.PinNone
	}
	coll, err := ebpf.NewCollection(unrecorded)
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	for _, name := range []string{ProgFromNetdev, ProgFromOverlay, ProgFromLXC} {
		for label, c := range map[string]*ebpf.Collection{"production": coll, "recording": objs.coll} {
			info, err := c.Programs[name].Info()
			if err != nil {
				t.Fatal(err)
			}
			n, ok := info.VerifiedInstructions()
			if !ok {
				t.Skip("kernel does not report verified instructions")
			}
			t.Logf("%s (%s): %d instructions verified", name, label, n)
			if n > 4000 {
				t.Errorf("%s (%s): %d instructions verified, the programs grew out of hand", name, label, n)
			}
		}
	}
}
