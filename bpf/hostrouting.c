//go:build ignore

// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
/* Copyright 2026 The routemode Authors. */

/*
 * eBPF host routing: forward pod traffic at tc ingress so that it skips the
 * node's netfilter hooks and IP forwarding path (Cilium's
 * enable-host-legacy-routing=false).
 *
 *   rm_from_netdev  underlay ingress: packets for a local pod go straight into
 *                   the pod with bpf_redirect_peer.
 *   rm_from_overlay VXLAN device ingress, after the kernel decapsulated the
 *                   packet: same as the underlay.
 *   rm_from_lxc     ingress of a pod's host-side veth (traffic leaving the
 *                   pod): local pods get bpf_redirect_peer; remote pods in the
 *                   native routing CIDR go to the next hop of the agent's
 *                   direct route with bpf_redirect_neigh, or, without one,
 *                   get bpf_fib_lookup + bpf_redirect (bpf_redirect_neigh
 *                   while the next hop is unresolved).
 *
 * While `routemodectl monitor` runs, every decision is also reported as an
 * event in the rm_events ring buffer (see emit()).
 *
 * Anything the programs do not handle goes on untouched (TC_ACT_UNSPEC:
 * to the next tc program or filter on the device, then the stack), so
 * attaching them can never break what legacy routing already delivers: it
 * can only shortcut it. That includes every flow conntrack has translated
 * (kube-proxy's Service NAT, masquerading): only the stack translates it
 * back.
 */

#include "rm_uapi.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual MIT/GPL";

/* Program identities, the first index into rm_counters. */
enum rm_prog {
	RM_PROG_NETDEV = 0,
	RM_PROG_OVERLAY = 1,
	RM_PROG_LXC = 2,
};

/*
 * Why a packet got its verdict, the second index into rm_counters. Values
 * are ABI with the Go side (bpf/reasons.go) and the pinned counter map:
 * append only.
 */
enum rm_reason {
	RM_REDIRECT_PEER = 0,
	RM_REDIRECT_NEIGH = 1,
	RM_REDIRECT_FIB = 2,
	RM_PASS_NOT_IPV4 = 3,
	RM_PASS_MALFORMED = 4,
	RM_PASS_NOT_FOR_HOST = 5,
	RM_PASS_NO_ENDPOINT = 6,
	RM_PASS_OUTSIDE_CIDR = 7,
	RM_PASS_TTL = 8,
	RM_PASS_FIB = 9,
	RM_PASS_TUNNEL = 10,
	/*
	 * 11 counted failed redirect helpers, which with these arguments
	 * cannot fail (a bad ifindex drops the packet later, in the core):
	 * it was never non-zero, so it is safe to reuse.
	 */
	RM_PASS_NAT = 11,
	RM_REDIRECT_DIRECT_ROUTE = 12,
	RM_PASS_NOT_TCP_UDP = 13,
	RM_PASS_FRAGMENT = 14,
	RM_PASS_IP_OPTIONS = 15,
	RM_PASS_MTU = 16,
	/* Seen by an observe-only program: legacy host routing, the stack routes. */
	RM_PASS_LEGACY = 17,
	RM_PASS_SOURCE_OUTSIDE_CIDR = 18,
	RM_PASS_DISARMED = 19,
};

/*
 * Fixed slot counts rather than the current enum sizes, so a newer build
 * that adds a reason can still reuse the pinned counter map of an older one
 * (one with fewer slots is replaced, and its counts start over).
 */
#define RM_PROG_SLOTS 4
#define RM_REASON_SLOTS 32

struct endpoint_key {
	__be32 ip;
};

struct endpoint_info {
	__u32 ifindex;   /* host-side (lxc) veth in the node's netns */
	__u32 id;        /* endpoint id, for humans */
	__u16 flags;     /* reserved, shown by `bpf endpoint list` */
	__u8 mac[6];     /* pod's eth0 */
	__u8 node_mac[6]; /* lxc, the pod's gateway MAC */
	__u16 pad;
};

/* A peer node's pod CIDR, longest prefix match. */
struct direct_route_key {
	__u32 prefixlen;
	__be32 addr;
};

/*
 * The next hop of the agent's route to a peer's pod CIDR through the
 * underlay, and the largest IP packet that route forwards without
 * fragmenting.
 */
struct direct_route {
	__u32 ifindex;
	__be32 gateway;
	__u32 mtu;
	__u32 pad;
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

/*
 * One decision, as `routemodectl monitor` shows it: the reason says the
 * verdict (redirect_peer: to-endpoint; the other redirects: to-network;
 * the rest: to-stack). data holds the first cap_len bytes of the packet as
 * the program hands it on (MACs and TTL rewritten for a redirect). Layout
 * is ABI with bpf/monitor.go: append only.
 */
#define RM_EVENT_DATA 128

struct rm_event {
	__u64 ktime_ns;
	__u32 cpu;
	__u32 prog;
	__u32 reason;
	__u32 endpoint; /* destination endpoint for to-endpoint and the network programs, source for from-lxc; 0: none */
	__u32 ifindex_in;
	__u32 ifindex_out; /* redirect target; 0 for to-stack */
	__u32 len;         /* skb->len */
	__u32 cap_len;     /* bytes of data that are the packet's */
	__u8 data[RM_EVENT_DATA];
};

/*
 * The programs only use rm_event through pointers the verifier inlines, so
 * nothing else puts it in the BTF that bpf2go's -type rm_event reads.
 */
const struct rm_event *rm_event_btf __attribute__((unused));

/* Last redirect decision, written only when cfg_record is set (tests). */
struct last_redirect {
	__u32 ifindex;
	__u32 reason;
	__be32 nexthop;
	__u32 fib_rc;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rm_endpoints SEC(".maps");

/*
 * Filled by the agent from the direct routes it installs
 * (auto-direct-node-routes), updated right after it changes them. A hit
 * spares the packet bpf_fib_lookup, the largest part of rm_from_lxc's cost.
 * Only routes through the underlay, which the agent never deletes, are
 * here: a stale entry can only send a packet natively, which the
 * make-before-break rollout keeps working until every node has switched.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct direct_route_key);
	__type(value, struct direct_route);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rm_direct_routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RM_PROG_SLOTS * RM_REASON_SLOTS);
	__type(key, __u32);
	__type(value, struct counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rm_counters SEC(".maps");

/*
 * Monitor events. 1 MiB holds about 6000 events: a reader that falls
 * further behind loses events, which rm_monitor_lost counts.
 */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rm_events SEC(".maps");

/*
 * Slot 0 non-zero while a monitor reads rm_events: a pinned map rather
 * than a load-time constant, so a reader can turn events on and off
 * without reloading the programs, and the programs pay one array lookup
 * per packet (inlined by the verifier) while nobody watches.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rm_monitor SEC(".maps");

/*
 * Slot 0 non-zero once the programs sit at every hook of the node. Until
 * then (and from the moment the agent starts detaching them) they leave
 * every packet to the stack: a flow must take the same path through the
 * node both ways. Its first packet delivered around the stack by a program
 * attached already, while its answer leaves through a device that has no
 * program yet, reaches conntrack as a SYN-ACK for a SYN it never saw,
 * which it calls invalid and kube-proxy drops. The agent attaches to a
 * node's devices one by one, so without the flag that window lasts as
 * long as attaching to all of them.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rm_armed SEC(".maps");

/* Events that found the ring buffer full, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rm_monitor_lost SEC(".maps");

/*
 * Load-time configuration, set from Go with VariableSpec.Set. The verifier
 * sees them as constants, so disabled branches cost nothing.
 */
volatile const __be32 cfg_cidr_addr = 0;
volatile const __be32 cfg_cidr_mask = 0;
/* Zero disables the FIB path: without a native routing CIDR nothing is routed. */
volatile const __u8 cfg_fib_enabled = 0;
/*
 * A flow-based (collect_md) VXLAN device needs a tunnel key that only the
 * stack's route knows, so packets the FIB sends there go to the stack.
 */
volatile const __u32 cfg_flowbased_tunnel_ifindex = 0;
volatile const __u8 cfg_record = 0;

struct last_redirect rm_last = {};

/*
 * Conntrack kfuncs (net/netfilter/nf_conntrack_bpf.c, Linux 6.0 and later).
 * The 12-byte options are the layout every such kernel accepts.
 */
struct bpf_ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u8 reserved[2];
};

struct nf_conn {
	unsigned long status;
} __attribute__((preserve_access_index));

#define IPS_SRC_NAT (1 << 4)
#define IPS_DST_NAT (1 << 5)

extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *skb, struct bpf_sock_tuple *tuple, __u32 tuple__sz,
					 struct bpf_ct_opts *opts, __u32 opts__sz) __ksym;
extern void bpf_ct_release(struct nf_conn *ct) __ksym;

/*
 * The endpoint an event is about, found from the copied header: the
 * destination pod for to-endpoint and for the network programs, the
 * sending pod for everything else from-lxc sees.
 */
static __always_inline __u32 event_endpoint(const struct rm_event *e)
{
	struct endpoint_key key = {};
	struct endpoint_info *ep;
	/* IPv4 source at 26, destination at 30, behind the Ethernet header. */
	__u32 off = (e->reason == RM_REDIRECT_PEER || e->prog != RM_PROG_LXC) ? 30 : 26;

	if (e->cap_len < ETH_HLEN + sizeof(struct iphdr) || e->data[12] != 0x08 || e->data[13] != 0x00)
		return 0;
	__builtin_memcpy(&key.ip, &e->data[off], 4);
	ep = bpf_map_lookup_elem(&rm_endpoints, &key);
	return ep ? ep->id : 0;
}

/*
 * Reports the decision to a running monitor. The flag is checked before
 * anything else, so with no monitor the cost is one array lookup.
 */
static __always_inline void emit(struct __sk_buff *skb, __u32 prog, __u32 reason, __u32 ifindex_out)
{
	__u32 zero = 0;
	__u32 *on = bpf_map_lookup_elem(&rm_monitor, &zero);
	struct rm_event *e;
	__u32 cap;

	if (!on || !*on)
		return;
	e = bpf_ringbuf_reserve(&rm_events, sizeof(*e), 0);
	if (!e) {
		__u64 *lost = bpf_map_lookup_elem(&rm_monitor_lost, &zero);

		if (lost)
			(*lost)++;
		return;
	}
	e->ktime_ns = bpf_ktime_get_ns();
	e->cpu = bpf_get_smp_processor_id();
	e->prog = prog;
	e->reason = reason;
	e->ifindex_in = skb->ifindex;
	e->ifindex_out = ifindex_out;
	e->len = skb->len;
	e->cap_len = 0;
	cap = skb->len;
	if (cap > RM_EVENT_DATA)
		cap = RM_EVENT_DATA;
	/* bpf_skb_load_bytes needs a length the verifier can bound, and not 0. */
	if (cap > 0 && cap <= RM_EVENT_DATA && !bpf_skb_load_bytes(skb, 0, e->data, cap))
		e->cap_len = cap;
	e->endpoint = event_endpoint(e);
	bpf_ringbuf_submit(e, 0);
}

/* Counts the decision and reports it to a running monitor. */
static __always_inline void count(struct __sk_buff *skb, __u32 prog, __u32 reason, __u32 ifindex_out)
{
	__u32 key = prog * RM_REASON_SLOTS + reason;
	struct counter *c = bpf_map_lookup_elem(&rm_counters, &key);

	if (c) {
		c->packets++;
		c->bytes += skb->len;
	}
	emit(skb, prog, reason, ifindex_out);
}

static __always_inline void record(__u32 ifindex, __u32 reason, __be32 nexthop, __u32 fib_rc)
{
	if (!cfg_record)
		return;
	rm_last.ifindex = ifindex;
	rm_last.reason = reason;
	rm_last.nexthop = nexthop;
	rm_last.fib_rc = fib_rc;
}

static __always_inline int pass(struct __sk_buff *skb, __u32 prog, __u32 reason)
{
	count(skb, prog, reason, 0);
	record(0, reason, 0, 0);
	return TC_ACT_UNSPEC;
}

static __always_inline int armed(void)
{
	__u32 zero = 0;
	__u32 *on = bpf_map_lookup_elem(&rm_armed, &zero);

	return on && *on;
}

/*
 * The forwarding code we skip would decrement the TTL. Updating the checksum
 * incrementally keeps the header's one's-complement sum unchanged, so a
 * CHECKSUM_COMPLETE skb->csum stays valid without a helper call.
 */
static __always_inline void ip_decrease_ttl(struct iphdr *ip)
{
	__u32 check = (__u32)ip->check;

	check += (__u32)bpf_htons(0x0100);
	ip->check = (__sum16)(check + (check >= 0xFFFF));
	--ip->ttl;
}

/*
 * Headers must be in the linear part of the skb for direct access; GRO'd or
 * paged skbs may need a pull first.
 */
static __always_inline int linear_ipv4(struct __sk_buff *skb, struct ethhdr **eth, struct iphdr **ip)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	const __u32 need = ETH_HLEN + sizeof(struct iphdr);

	if (data + need > data_end) {
		if (skb->len < need || bpf_skb_pull_data(skb, need))
			return -1;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		if (data + need > data_end)
			return -1;
	}
	*eth = data;
	*ip = data + ETH_HLEN;
	return 0;
}

/* Returns the reason to pass, or -1 when eth/ip point at a routable IPv4 packet. */
static __always_inline int parse(struct __sk_buff *skb, struct ethhdr **eth, struct iphdr **ip)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *e = data;

	if (data + ETH_HLEN > data_end)
		return RM_PASS_MALFORMED;
	/* A hardware-accelerated VLAN tag would be lost on redirect. */
	if (e->h_proto != bpf_htons(ETH_P_IP) || skb->vlan_present)
		return RM_PASS_NOT_IPV4;
	if (linear_ipv4(skb, eth, ip))
		return RM_PASS_MALFORMED;
	if ((*ip)->version != 4 || (*ip)->ihl < 5)
		return RM_PASS_MALFORMED;
	/* Options (router alert, source routes) are the forwarding code's job. */
	if ((*ip)->ihl != 5)
		return RM_PASS_IP_OPTIONS;
	/* Let the stack send ICMP time exceeded. */
	if ((*ip)->ttl <= 1)
		return RM_PASS_TTL;
	return -1;
}

/*
 * Returns the reason to leave a packet to the stack because of its flow, or
 * -1. A flow whose addresses conntrack translated (a Service's DNAT, a
 * masquerade) must be translated back by the stack: delivered around it, a
 * reply reaches the pod from an address it never talked to. Conntrack looks
 * up TCP and UDP only, so other protocols take the stack too (ICMP errors
 * may belong to a translated flow), and so do fragments, whose ports only
 * the stack's reassembly sees.
 */
static __always_inline int translated_flow(struct __sk_buff *skb, struct iphdr *ip)
{
	struct bpf_sock_tuple tuple = {};
	struct bpf_ct_opts opts = { .netns_id = BPF_F_CURRENT_NETNS };
	struct nf_conn *ct;
	unsigned long status;

	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return RM_PASS_NOT_TCP_UDP;
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return RM_PASS_FRAGMENT;
	opts.l4proto = ip->protocol;
	tuple.ipv4.saddr = ip->saddr;
	tuple.ipv4.daddr = ip->daddr;
	/* The ports: the first four bytes of the TCP or UDP header. */
	if (bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(struct iphdr), &tuple.ipv4.sport, 4))
		return RM_PASS_MALFORMED;
	ct = bpf_skb_ct_lookup(skb, &tuple, sizeof(tuple.ipv4), &opts, sizeof(opts));
	if (!ct)
		return -1;
	status = ct->status;
	bpf_ct_release(ct);
	return status & (IPS_SRC_NAT | IPS_DST_NAT) ? RM_PASS_NAT : -1;
}

/*
 * The largest IP packet the skb puts on the wire: the packet itself, or for
 * a TCP GSO skb each segment, headers included, as ip_forward checks it.
 * Zero when it cannot tell: a UDP GSO skb may carry a tunnel whose inner
 * headers the program does not see (__sk_buff has no gso_type).
 */
static __always_inline __u32 wire_len(struct __sk_buff *skb, struct iphdr *ip)
{
	/* One load: the verifier refuses a context pointer clang offset. */
	__u32 gso_size = skb->gso_size;
	__u8 doff;

	if (!gso_size)
		return skb->len - ETH_HLEN;
	if (ip->protocol != IPPROTO_TCP ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(struct iphdr) + 12, &doff, 1))
		return 0;
	return sizeof(struct iphdr) + (doff >> 4) * 4 + gso_size;
}

static __always_inline int deliver_local(struct __sk_buff *skb, __u32 prog, struct ethhdr *eth,
					 struct iphdr *ip, const struct endpoint_info *ep)
{
	__u32 ifindex = ep->ifindex;

	__builtin_memcpy(eth->h_dest, ep->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, ep->node_mac, ETH_ALEN);
	ip_decrease_ttl(ip);
	record(ifindex, RM_REDIRECT_PEER, 0, 0);
	count(skb, prog, RM_REDIRECT_PEER, ifindex);
	/*
	 * With flags 0 the helper only records the target; an ifindex that is
	 * gone by then makes the core drop the packet.
	 */
	return bpf_redirect_peer(ifindex, 0);
}

/* Underlay and tunnel ingress: shortcut packets for local pods, nothing else. */
static __always_inline int from_network(struct __sk_buff *skb, __u32 prog)
{
	struct endpoint_key key = {};
	struct endpoint_info *ep;
	struct ethhdr *eth;
	struct iphdr *ip;
	int reason;

	if (!armed())
		return pass(skb, prog, RM_PASS_DISARMED);
	reason = parse(skb, &eth, &ip);
	if (reason >= 0)
		return pass(skb, prog, reason);

	key.ip = ip->daddr;
	ep = bpf_map_lookup_elem(&rm_endpoints, &key);
	if (!ep)
		return pass(skb, prog, RM_PASS_NO_ENDPOINT);
	/*
	 * A frame for another MAC, decapsulated ones included, is one the stack
	 * would drop; broadcasts and multicasts are its business.
	 */
	if (skb->pkt_type != PACKET_HOST)
		return pass(skb, prog, RM_PASS_NOT_FOR_HOST);
	/*
	 * Only pod-to-pod traffic skips the stack. The answer to a packet from
	 * outside the pod network (a node's own stack, a NodePort kube-proxy
	 * forwarded after masquerading it to its node's IP, a client routed to
	 * pod addresses) leaves through the stack, netfilter and the
	 * masquerading rule: the packet must come in that way too. Delivered
	 * around it, conntrack meets the flow first in the pod's answers, calls
	 * the first one (a SYN-ACK) invalid, which kube-proxy drops, and takes
	 * the next ones for a new flow, which the masquerading rule rewrites.
	 * On the tunnel device the native routing CIDR may be the node's own
	 * pod CIDR only (tunnel mode needs no other), so the check would send
	 * the other nodes' pods there too: it is the underlay's alone.
	 */
	if (prog == RM_PROG_NETDEV && (ip->saddr & cfg_cidr_mask) != cfg_cidr_addr)
		return pass(skb, prog, RM_PASS_SOURCE_OUTSIDE_CIDR);
	reason = translated_flow(skb, ip);
	if (reason >= 0)
		return pass(skb, prog, reason);
	return deliver_local(skb, prog, eth, ip, ep);
}

SEC("tc")
int rm_from_netdev(struct __sk_buff *skb)
{
	return from_network(skb, RM_PROG_NETDEV);
}

SEC("tc")
int rm_from_overlay(struct __sk_buff *skb)
{
	return from_network(skb, RM_PROG_OVERLAY);
}

/* Remote pods with a direct route: straight to its gateway. */
static __always_inline int redirect_direct_route(struct __sk_buff *skb, struct iphdr *ip,
						 const struct direct_route *rt)
{
	struct bpf_redir_neigh nh = {
		.nh_family = AF_INET,
		.ipv4_nh = rt->gateway,
	};

	ip_decrease_ttl(ip);
	record(rt->ifindex, RM_REDIRECT_DIRECT_ROUTE, rt->gateway, 0);
	count(skb, RM_PROG_LXC, RM_REDIRECT_DIRECT_ROUTE, rt->ifindex);
	return bpf_redirect_neigh(rt->ifindex, &nh, sizeof(nh), 0);
}

SEC("tc")
int rm_from_lxc(struct __sk_buff *skb)
{
	struct direct_route_key rkey = { .prefixlen = 32 };
	struct direct_route *rt;
	struct bpf_fib_lookup fib = {};
	struct endpoint_key key = {};
	struct endpoint_info *ep;
	struct ethhdr *eth;
	struct iphdr *ip;
	__u32 len;
	int reason, rc;

	if (!armed())
		return pass(skb, RM_PROG_LXC, RM_PASS_DISARMED);
	/* Broadcasts and frames not for the gateway MAC belong to the stack. */
	if (skb->pkt_type != PACKET_HOST)
		return pass(skb, RM_PROG_LXC, RM_PASS_NOT_FOR_HOST);

	reason = parse(skb, &eth, &ip);
	if (reason >= 0)
		return pass(skb, RM_PROG_LXC, reason);

	key.ip = ip->daddr;
	ep = bpf_map_lookup_elem(&rm_endpoints, &key);
	/*
	 * Outside the native routing CIDR the packet needs masquerading,
	 * which only the stack's netfilter does.
	 */
	if (!ep && (!cfg_fib_enabled || (ip->daddr & cfg_cidr_mask) != cfg_cidr_addr))
		return pass(skb, RM_PROG_LXC, RM_PASS_OUTSIDE_CIDR);
	reason = translated_flow(skb, ip);
	if (reason >= 0)
		return pass(skb, RM_PROG_LXC, reason);
	if (ep)
		return deliver_local(skb, RM_PROG_LXC, eth, ip, ep);

	/*
	 * The stack takes what the route would not forward whole, and what
	 * the program cannot size: bpf_redirect_neigh checks no size, the
	 * core lets any GSO skb through, and bpf_fib_lookup ignores a route's
	 * MTU unless it is locked, while ip_forward applies it (the agent
	 * lowers its routes' MTU while a rollout needs it).
	 */
	len = wire_len(skb, ip);
	if (!len)
		return pass(skb, RM_PROG_LXC, RM_PASS_MTU);
	rkey.addr = ip->daddr;
	rt = bpf_map_lookup_elem(&rm_direct_routes, &rkey);
	if (rt) {
		if (len > rt->mtu)
			return pass(skb, RM_PROG_LXC, RM_PASS_MTU);
		return redirect_direct_route(skb, ip, rt);
	}

	fib.family = AF_INET;
	fib.tos = ip->tos;
	fib.l4_protocol = ip->protocol;
	/* Given a length, the lookup checks it against the device's MTU, or the route's when locked. */
	fib.tot_len = len;
	fib.ifindex = skb->ingress_ifindex;
	fib.ipv4_src = ip->saddr;
	fib.ipv4_dst = ip->daddr;

	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* Unreachable, local, too big: the stack answers with ICMP. */
		count(skb, RM_PROG_LXC, RM_PASS_FIB, 0);
		record(0, RM_PASS_FIB, 0, rc);
		return TC_ACT_UNSPEC;
	}
	if (cfg_flowbased_tunnel_ifindex && fib.ifindex == cfg_flowbased_tunnel_ifindex)
		return pass(skb, RM_PROG_LXC, RM_PASS_TUNNEL);

	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* fib.ipv4_dst now holds the next hop (the gateway, if any). */
		struct bpf_redir_neigh nh = {
			.nh_family = AF_INET,
			.ipv4_nh = fib.ipv4_dst,
		};

		ip_decrease_ttl(ip);
		record(fib.ifindex, RM_REDIRECT_NEIGH, fib.ipv4_dst, rc);
		count(skb, RM_PROG_LXC, RM_REDIRECT_NEIGH, fib.ifindex);
		return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	}

	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	ip_decrease_ttl(ip);
	record(fib.ifindex, RM_REDIRECT_FIB, fib.ipv4_dst, rc);
	count(skb, RM_PROG_LXC, RM_REDIRECT_FIB, fib.ifindex);
	return bpf_redirect(fib.ifindex, 0);
}

/*
 * Observe-only programs. Legacy host routing has no programs, yet that is
 * where a monitor is most wanted: while one runs, the agent attaches these
 * at the same hooks. They report the packet and leave it to the stack,
 * changing nothing else (not even the counters).
 */
static __always_inline int observe(struct __sk_buff *skb, __u32 prog)
{
	emit(skb, prog, RM_PASS_LEGACY, 0);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int rm_observe_netdev(struct __sk_buff *skb)
{
	return observe(skb, RM_PROG_NETDEV);
}

SEC("tc")
int rm_observe_overlay(struct __sk_buff *skb)
{
	return observe(skb, RM_PROG_OVERLAY);
}

SEC("tc")
int rm_observe_lxc(struct __sk_buff *skb)
{
	return observe(skb, RM_PROG_LXC);
}
