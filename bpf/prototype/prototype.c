//go:build ignore

// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
/* Copyright 2026 The routemode Authors. */

/*
 * The hand-built eBPF host-routing prototype (docs/host-routing.md, "The
 * prototype it is measured against"), rebuilt from its description so the
 * benchmark can measure it beside routemode's programs: the target was to
 * beat it, and only a same-run comparison says whether they do. Benchmark use
 * only; it checks nothing it need not (no conntrack, no MTU, no options),
 * which is why it is not a datapath.
 *
 *   proto_from_netdev  underlay ingress: pod IP -> {lxc ifindex, pod MAC,
 *                      lxc MAC} hash lookup, TTL decrement, MAC rewrite,
 *                      bpf_redirect_peer.
 *   proto_from_lxc     lxc ingress: destinations in 10.0.0.0/16 that are
 *                      not local get bpf_fib_lookup, then bpf_redirect with
 *                      the looked-up MACs, or bpf_redirect_neigh on NO_NEIGH.
 */

#include "rm_uapi.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual MIT/GPL";

#define POD_NET bpf_htonl(0x0a000000)  /* 10.0.0.0 */
#define POD_MASK bpf_htonl(0xffff0000) /* /16 */

struct pod {
	__u32 ifindex;
	__u8 mac[6];
	__u8 lxc_mac[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __be32);
	__type(value, struct pod);
} proto_pods SEC(".maps");

/* Per-CPU packet counts: [0] redirected by proto_from_netdev, [1] by proto_from_lxc. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} proto_redirects SEC(".maps");

static __always_inline void count(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&proto_redirects, &slot);

	if (n)
		(*n)++;
}

static __always_inline int ipv4(struct __sk_buff *skb, struct ethhdr **eth, struct iphdr **ip)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	*eth = data;
	*ip = data + ETH_HLEN;
	if (data + ETH_HLEN + sizeof(struct iphdr) > data_end || (*eth)->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	return 0;
}

SEC("tc")
int proto_from_netdev(struct __sk_buff *skb)
{
	struct ethhdr *eth;
	struct iphdr *ip;
	struct pod *pod;
	__be32 daddr;
	__u32 check;

	if (ipv4(skb, &eth, &ip))
		return TC_ACT_OK;
	daddr = ip->daddr;
	pod = bpf_map_lookup_elem(&proto_pods, &daddr);
	if (!pod || ip->ttl <= 1)
		return TC_ACT_OK;
	check = (__u32)ip->check + (__u32)bpf_htons(0x0100);
	ip->check = (__sum16)(check + (check >= 0xFFFF));
	--ip->ttl;
	__builtin_memcpy(eth->h_dest, pod->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, pod->lxc_mac, ETH_ALEN);
	count(0);
	return bpf_redirect_peer(pod->ifindex, 0);
}

SEC("tc")
int proto_from_lxc(struct __sk_buff *skb)
{
	struct bpf_fib_lookup fib = {};
	struct ethhdr *eth;
	struct iphdr *ip;
	__be32 daddr;
	int rc;

	if (ipv4(skb, &eth, &ip))
		return TC_ACT_OK;
	daddr = ip->daddr;
	if ((daddr & POD_MASK) != POD_NET || bpf_map_lookup_elem(&proto_pods, &daddr))
		return TC_ACT_OK;

	fib.family = AF_INET;
	fib.tos = ip->tos;
	fib.l4_protocol = ip->protocol;
	fib.tot_len = bpf_ntohs(ip->tot_len);
	fib.ifindex = skb->ingress_ifindex;
	fib.ipv4_src = ip->saddr;
	fib.ipv4_dst = daddr;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		struct bpf_redir_neigh nh = { .nh_family = AF_INET, .ipv4_nh = fib.ipv4_dst };

		count(1);
		return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return TC_ACT_OK;
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	count(1);
	return bpf_redirect(fib.ifindex, 0);
}
