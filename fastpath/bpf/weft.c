// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// weft's kernel data plane: flannel's udp wire format (outer IPv4, UDP to
// the backend port, one whole inner IPv4 packet) encapsulated at TC egress of
// weft's TUN and decapsulated at TC ingress of the underlay. Anything a
// program does not take goes on unchanged to weft's userspace path, which
// forwards it, or checks, counts and drops it: the kernel path only ever
// takes the common case. "Not taken" is TC_ACT_UNSPEC: the next program on
// the hook (Cilium's, a shaper's) runs, then the stack, in TCX and cls_bpf
// direct-action alike.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual MIT/GPL";

#define AF_INET 2
#define OVERHEAD (sizeof(struct iphdr) + sizeof(struct udphdr))
#define IP_DF 0x4000
#define IP_OFFSET_MF 0x3fff

// Source checks, as tunnel.SourceCheck.
enum source_check { SOURCE_STRICT = 0, SOURCE_NAT = 1, SOURCE_OFF = 2 };

// A peer that decapsulates in its kernel: only those get kernel-made
// datagrams (their inner checksums may be left to offloads).
#define PEER_KERNEL_DECAP 1

struct config {
	__be32 local;       // this node's underlay address (the lease's PublicIP)
	__be32 subnet;      // this node's subnet, masked
	__be32 subnet_mask;
	__be16 port;        // the backend port, both ends
	__u8 source_check;  // enum source_check
	__u8 flags;         // CFG_*
	__u32 underlay;     // ifindex the datagrams leave by
	__u32 tun;          // ifindex of weft's TUN
};

// Leave TCP super-packets (GSO) to the userspace path: set where the
// underlay cannot segment UDP tunnel packets itself, so that the kernel would
// do it in software, slower than the userspace path's UDP GSO.
#define CFG_GSO_TO_USERSPACE 1

struct lpm_key {
	__u32 prefixlen;
	__be32 addr;
};

struct peer {
	__be32 addr;  // the lease's PublicIP
	__u32 flags;  // PEER_*
};

// Counter indexes, per CPU.
enum counter {
	TX_PACKETS, TX_BYTES, RX_PACKETS, RX_BYTES,
	PASS_NO_PEER,      // encap: to userspace, no kernel-decap peer (or none)
	PASS_NO_NEIGH,     // encap: to userspace, next hop not resolved yet
	PASS_CHECK,        // decap: to userspace, for its checks and counters
	ERRORS,            // a helper failed: dropped
	PASS_GSO,          // encap: to userspace, a super-packet (CFG_GSO_TO_USERSPACE)
	NUM_COUNTERS,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_key);
	__type(value, struct peer);
} peers SEC(".maps");

struct counters {
	__u64 n[NUM_COUNTERS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct counters);
} counters SEC(".maps");

// What the programs would otherwise build on the stack: a map key and the
// route lookup's parameters. No program writes its stack: Linux 6.1's
// verifier, for a loader without CAP_PERFMON (the shipped unit's
// capabilities), refuses a narrow stack store into a slot it tracks as a
// spilled register ("attempt to corrupt spilled pointer on stack"), and
// where clang puts which store is its choice, not ours. Per CPU, and the
// programs never nest on one CPU (both run with bottom halves off), so one
// run's scratch is its own. fastpath_test.go checks the object for stack
// stores.
struct scratch {
	struct lpm_key key;
	struct bpf_fib_lookup fib;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__uint(value_size, sizeof(struct scratch)); // by size: bpf2go has no Go type for bpf_fib_lookup's unions
} scratch SEC(".maps");

// The key of the one-element arrays, in .rodata rather than on the stack.
static const __u32 zero = 0;

static __always_inline void count(struct counters *c, __u32 idx, __u64 n)
{
	if (idx < NUM_COUNTERS)
		c->n[idx] += n;
}

static __always_inline struct peer *peer_of(struct scratch *s, __be32 addr)
{
	s->key.prefixlen = 32;
	s->key.addr = addr;
	return bpf_map_lookup_elem(&peers, &s->key);
}

static __always_inline __u16 ip_csum(struct iphdr *ip)
{
	__u32 sum = 0;
	__u16 *p = (__u16 *)ip;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += p[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

// weft_encap runs at egress of weft's TUN, where a packet starts at its
// IPv4 header. A packet for a peer that decapsulates in its kernel, whose
// next hop is resolved, leaves as one datagram (a GSO packet as one per
// segment: the room is marked as a UDP tunnel) straight from the underlay.
SEC("tc")
int weft_encap(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct iphdr *inner = data;
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);
	struct counters *c = bpf_map_lookup_elem(&counters, &zero);
	struct scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	if (!cfg || !c || !s || (void *)(inner + 1) > end || inner->version != 4)
		return TC_ACT_UNSPEC;
	struct peer *p = peer_of(s, inner->daddr);
	if (!p || !(p->flags & PEER_KERNEL_DECAP)) {
		count(c, PASS_NO_PEER, 1);
		return TC_ACT_UNSPEC;
	}
	if ((cfg->flags & CFG_GSO_TO_USERSPACE) && skb->gso_size) {
		count(c, PASS_GSO, 1);
		return TC_ACT_UNSPEC;
	}
	__be32 to = p->addr;
	struct bpf_fib_lookup *fib = &s->fib;
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = AF_INET;
	fib->ipv4_src = cfg->local;
	fib->ipv4_dst = to;
	fib->ifindex = cfg->underlay;
	if (bpf_fib_lookup(skb, fib, sizeof(*fib), BPF_FIB_LOOKUP_OUTPUT) != BPF_FIB_LKUP_RET_SUCCESS) {
		// Not resolved (or no route, or forwarding off on the underlay,
		// which the lookup requires): weft's socket sends it, and that
		// resolves the neighbour for the next packets.
		count(c, PASS_NO_NEIGH, 1);
		return TC_ACT_UNSPEC;
	}
	__u32 len = skb->len; // the inner packet (for a GSO packet, all of it)
	// FIXED_GSO: a GSO packet keeps its segment size. The TUN's MTU already
	// leaves room for the 28 bytes, so each segment fits the underlay as
	// it is (without the flag the kernel would shrink every segment by 28).
	if (bpf_skb_adjust_room(skb, OVERHEAD, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 |
					BPF_F_ADJ_ROOM_ENCAP_L4_UDP) ||
	    bpf_skb_change_head(skb, sizeof(struct ethhdr), 0)) {
		count(c, ERRORS, 1);
		return TC_ACT_SHOT;
	}
	// The outer headers, every byte of the room, written in the packet.
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > end) {
		count(c, ERRORS, 1);
		return TC_ACT_SHOT;
	}
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	*(__u8 *)ip = 0x45; // version 4, five words of header
	ip->tos = 0;
	ip->tot_len = bpf_htons(len + OVERHEAD);
	ip->id = 0;
	ip->frag_off = bpf_htons(IP_DF); // as weft's connected socket sends
	ip->ttl = 64;
	ip->protocol = IPPROTO_UDP;
	ip->check = 0;
	ip->saddr = cfg->local;
	ip->daddr = to;
	ip->check = ip_csum(ip);
	udp->source = cfg->port;
	udp->dest = cfg->port;
	udp->len = bpf_htons(len + sizeof(struct udphdr));
	udp->check = 0; // valid on IPv4: the inner packet carries its own
	count(c, TX_PACKETS, 1);
	count(c, TX_BYTES, len);
	return bpf_redirect(fib->ifindex, 0);
}
// weft_decap runs at ingress of the underlay. A datagram to this node's
// address and backend port that passes weft's ingress policy exactly as
// the userspace path applies it (one whole, well-formed IPv4 packet; its
// source in a lease held by the outer source, as -source-check says; its
// destination in this node's subnet) loses its outer headers and enters
// weft's TUN as if written there. Everything else goes on to the socket,
// where weft's userspace path checks, counts and drops it.
SEC("tc")
int weft_decap(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	struct iphdr *inner = (void *)(udp + 1);
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);
	struct counters *c = bpf_map_lookup_elem(&counters, &zero);
	struct scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	if (!cfg || !c || !s || (void *)(inner + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_UNSPEC;
	if (ip->version != 4 || ip->ihl != 5 || (ip->frag_off & bpf_htons(IP_OFFSET_MF)) ||
	    ip->protocol != IPPROTO_UDP || ip->daddr != cfg->local || udp->dest != cfg->port)
		return TC_ACT_UNSPEC; // not ours, or unusual: the stack's
	__u32 payload = skb->len - sizeof(struct ethhdr) - OVERHEAD;
	if (inner->version != 4 || inner->ihl < 5 || bpf_ntohs(inner->tot_len) != payload ||
	    inner->ihl * 4 > payload || inner->ttl <= 1 ||
	    (inner->daddr & cfg->subnet_mask) != cfg->subnet)
		goto pass;
	if (cfg->source_check != SOURCE_OFF) {
		struct peer *owner = peer_of(s, inner->saddr);
		if (!owner || (cfg->source_check == SOURCE_STRICT && owner->addr != ip->saddr))
			goto pass;
	}
	// FIXED_GSO: segments stay the size the sender made them, which fit
	// the TUN's MTU (and so the pods').
	if (bpf_skb_adjust_room(skb, -(__s32)OVERHEAD, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO)) {
		count(c, ERRORS, 1);
		return TC_ACT_SHOT;
	}
	count(c, RX_PACKETS, 1);
	count(c, RX_BYTES, payload);
	return bpf_redirect(cfg->tun, BPF_F_INGRESS);
pass:
	count(c, PASS_CHECK, 1);
	return TC_ACT_UNSPEC;
}
