/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package hostrouting attaches routemode's eBPF host-routing programs
// (bpf/hostrouting.c) to a node's devices and detaches them again, live and
// without losing packets: the equivalent of flipping Cilium's
// enable-host-legacy-routing on one node.
//
// With host routing "bpf":
//   - rm_from_netdev at tc ingress of the underlay device and rm_from_overlay
//     at tc ingress of the tunnel device deliver packets for local pods with
//     bpf_redirect_peer;
//   - rm_from_lxc at tc ingress of every pod's host-side veth delivers to
//     local pods the same way and sends traffic for remote pods inside the
//     native routing CIDR out past the node's netfilter hooks and forwarding
//     path: to the gateway of the agent's direct route with
//     bpf_redirect_neigh when Config.DirectRoutes has one for the
//     destination, else with bpf_fib_lookup + bpf_redirect(_neigh).
//
// Only TCP and UDP between pods take the shortcut: rm_from_netdev leaves
// packets from outside the native routing CIDR (a node's own stack, a
// NodePort masqueraded to another node's IP, a client outside the cluster)
// to the stack, whose conntrack must see them because the pod's answers
// go through it and its masquerading rule. And only while conntrack has
// not translated the flow: the programs look each packet up
// with the bpf_skb_ct_lookup kfunc and leave translated ones (kube-proxy's
// Service DNAT, masquerading) to the stack, which alone translates their
// replies back. ICMP (whose errors may belong to a translated flow), other
// protocols, fragments and packets with IP options take the stack too.
// Whatever the programs leave alone goes on with TC_ACT_UNSPEC, so other
// tc programs and filters on the device still see it.
//
// The direct-route map exists because the FIB lookup was the largest part
// of rm_from_lxc's cost: measured with kernel.bpf_stats_enabled on the
// development VM, the program took 430-510 ns per packet with the lookup
// and 175-230 ns with the map. It only holds routes through the underlay,
// which the agent never deletes: a stale entry (between a route change and
// the next Apply, milliseconds in the agent) sends a packet the native way,
// which every node accepts for as long as any node may still send that way.
// Each entry carries the route's MTU (the underlay's when the route has
// none), which ip_forward honours and bpf_fib_lookup does not when it is
// unlocked: a packet, or a TCP GSO packet's segments, bigger than that
// goes to the stack, which answers with ICMP fragmentation needed; so does
// UDP GSO, whose segments may carry a tunnel the program cannot size.
//
// With "legacy" the programs are detached and the host stack forwards.
//
// # API
//
//	h, err := nlsafe.NewHandleAtPath("/var/run/netns/node-1")
//	m := hostrouting.NewManager(hostrouting.Options{Handle: h, NetNS: "/var/run/netns/node-1"})
//	defer m.Close()
//	changes, err := m.Apply(ctx, v1alpha1.HostRoutingBPF, hostrouting.Config{
//		Underlay: "eth0", TunnelDevice: "rm_vxlan",
//		NativeRoutingCIDR: netip.MustParsePrefix("10.0.0.0/16"),
//		PinDir: hostrouting.DefaultPinDir("node-1"),
//		DirectRoutes: []hostrouting.DirectRoute{{
//			Dst: netip.MustParsePrefix("10.0.1.0/24"), Gateway: netip.MustParseAddr("192.168.0.130"), MTU: 0,
//		}},
//	}, endpoints)
//
// Apply is idempotent and level-based: call it with the full desired state
// (mode, devices, every local endpoint) on every change and periodically.
// A cancelled context stops it between two kernel changes.
// It syncs the endpoint and direct-route maps, attaches or atomically
// updates the programs, and detaches programs from devices no longer
// wanted; it returns what it changed, one line each ("tcx ingress eth0:
// attached rm_from_netdev", "endpoint map: delete 10.0.0.7"), none when the
// node already matched. Options.Disabled makes a Manager that never loads
// programs but still detaches them. A pod device that
// vanishes while Apply runs is skipped, and one that fails does not keep
// the others from their programs. Apply(legacy) detaches everything; a pin
// that is already gone counts as success. InForce reads from the pins
// which mode a node is in, also after a failed Apply.
// Probe reports whether the kernel can do eBPF host routing at all (the
// programs load only where the conntrack kfuncs exist, Linux 6.0+); Apply
// refuses "bpf" with ErrUnsupported before touching anything when it cannot.
//
// ListEndpoints, FormatEndpoint, ListDirectRoutes, FormatDirectRoute and
// ReadCounters work on the pins alone, for `routemodectl bpf endpoint list`,
// `bpf route list` and friends; Manager.Counters reads the node's counters
// (per program and reason: redirect_peer, redirect_direct_route,
// redirect_fib, redirect_neigh and the pass reasons, nat among them) and
// NewCollector exports them as Prometheus metrics
// (routemode_hostrouting_packets_total{program,verdict,reason} and
// _bytes_total, routemode_hostrouting_endpoints).
//
// # Kernels without TCX
//
// Below Linux 6.6 (or with Options.ClassicTC) the programs are classic tc
// filters on a clsact qdisc, swapped with an atomic filter replace. Adding
// a clsact qdisc deactivates the device for an instant and drops what it
// is sending, so Apply(legacy) adds the qdiscs ahead of time; the first
// switch to bpf is then as lossless as later ones.
//
// # Namespaces
//
// Netlink calls (devices, clsact qdiscs, classic tc filters) go through
// Options.Handle, the agent's retried netlink handle (agent/nlsafe) in the
// node's namespace. TCX resolves interface indexes in the calling thread's
// network namespace instead: with Options.NetNS set, attaching runs on a
// dedicated OS thread inside that namespace, which Go discards afterwards.
// With it empty, attaching runs in the caller's namespace: call from the
// node's process, or from a goroutine that has locked its OS thread and
// entered the node's namespace.
//
// # Pins and restarts
//
// Everything lives under one bpffs directory per node (DefaultPinDir:
// /sys/fs/bpf/routemode/<node>; the lab runs several nodes as namespaces on
// one host sharing one bpffs):
//
//	<pin dir>/rm_endpoints      endpoint map (pod IP -> ifindex, MACs, id)
//	<pin dir>/rm_direct_routes  direct-route map (peer pod CIDR -> underlay ifindex, gateway, MTU)
//	<pin dir>/rm_counters       per-CPU counters per (program, reason)
//	<pin dir>/rm_armed          set once every device has its program, cleared before any is detached
//	<pin dir>/links/<dev>_ingress  pinned TCX link per device
//	<pin dir>/tc/<dev>_ingress     empty dir: the classic tc filter on <dev> is ours (kernels < 6.6)
//	<pin dir>/rm_events, rm_monitor, rm_monitor_lost  monitor ring buffer, its on flag, lost events
//	<pin dir>/observe/<dev>_ingress  TCX link of an observe-only program (legacy, while a monitor runs)
//
// A monitor (OpenMonitor) holds an exclusive flock on the pin dir itself
// while it runs; Apply reads that lock to turn a killed monitor's events
// off and, in legacy, to attach or remove the observe-only programs.
//
// The pins keep the datapath running while the agent is down. A restarted
// agent (a new Manager) loads its programs and keeps a pinned link's
// running program when it is the same (instructions, maps, constants), so
// a restart changes nothing; a different one (an upgrade, new constants)
// it swaps in with link.Update, an atomic replacement with no detach gap. Only
// links under the pin dir and tc filters named with the "rm_" prefix are
// ever touched, so other programs on the same devices are left alone.
package hostrouting
