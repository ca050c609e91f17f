/* SPDX-License-Identifier: GPL-2.0 */
/* The datapath around classify(): flow state, actions, counters and the tc entry points.
 *
 * Only the first packet of a flow is classified; the decision is kept in `flows` for the flow's
 * life so later packets reuse it (and a reload that swaps the program keeps flow state when the
 * runtime re-uses the pinned map). The generated program.c defines classify() and the constants
 * used here before including this file.
 */
#ifndef DAE_DATAPATH_H
#define DAE_DATAPATH_H

#include "common.h"
#include "hijack.h"
#include "wan.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DAE_FLOW_TABLE_SIZE);
	__type(key, struct flow_key);
	__type(value, struct flow_value);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DAE_N_OUTBOUNDS);
	__type(key, __u32);
	__type(value, struct outbound_stats);
} outbound_stats SEC(".maps");

static __always_inline void flow_key_of(const struct pkt *p, struct flow_key *k)
{
	__builtin_memcpy(k->saddr, p->saddr_be, sizeof(k->saddr));
	__builtin_memcpy(k->daddr, p->daddr_be, sizeof(k->daddr));
	k->sport = bpf_htons(p->sport);
	k->dport = bpf_htons(p->dport);
	k->l4proto = p->l4proto;
	k->ipversion = p->ipversion;
	k->_pad = 0;
}

static __always_inline void count(__u32 outbound, __u32 len)
{
	struct outbound_stats *s = bpf_map_lookup_elem(&outbound_stats, &outbound);

	if (s) {
		s->packets++;
		s->bytes += len;
	}
}

/* What happens to a packet once its flow's decision is known: block drops, direct goes on
 * through the kernel's routing (with its mark), proxied flows go to the tproxy listener. */
static __always_inline int apply(struct __sk_buff *skb, const struct pkt *p, const struct decision *d,
				 int from_wan, int l3)
{
	count(d->outbound, skb->len);
#ifdef DAE_DNS_HIJACK
	if (!from_wan && DAE_DNS_HIJACK(skb, p, d) == 0)
		return TC_ACT_OK;  /* LAN DNS: the DNS module answers (dns_hijack.h) */
#endif
	if (d->outbound == OUTBOUND_BLOCK)
		return TC_ACT_SHOT;
	if (d->mark)
		skb->mark = d->mark;
	if (d->outbound >= OUTBOUND_FIRST_GROUP)
		return from_wan ? wan_bounce(skb, p, d, l3) : DAE_HIJACK(skb, p, d);
	return TC_ACT_OK;
}

/* Only a TCP SYN (without ACK) opens a flow. Any other TCP segment with no entry is not the
 * start of a LAN client's connection: the reply of an inbound connection to a LAN host (its
 * SYN came in from the WAN, past this hook), a connection that predates the gateway, or a
 * stray/forged segment. Classifying it would hand a SYN-ACK to the tproxy listener (which
 * resets it) and let a flood of ACKs evict real flows from the table. */
static __always_inline int tcp_opens_flow(__u8 flags)
{
	return (flags & (DAE_TCP_SYN | DAE_TCP_ACK)) == DAE_TCP_SYN;
}

/* A LAN segment with no flow entry that is not a SYN: if the relay holds a socket for its
 * 4-tuple (a proxied flow whose entry the LRU evicted), that socket gets it as before;
 * otherwise it is routed as a direct packet and no entry is made. */
static __always_inline int resume_orphan(struct __sk_buff *skb, const struct pkt *p)
{
	struct bpf_sock_tuple t = {};
	__u32 size = sock_tuple(p, &t);
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
	long err;

	if (!sk)
		return TC_ACT_OK;
	if (sk->state == BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return TC_ACT_OK;
	}
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (!err)
		skb->mark = DAE_FWMARK;
	return TC_ACT_OK;
}

static __always_inline int handle(struct __sk_buff *skb, int from_wan, int l3)
{
	/* The gateway's own sockets carry so_mark_from_dae: never capture them again. */
	if (DAE_SO_MARK && skb->mark == DAE_SO_MARK)
		return TC_ACT_OK;

	struct pkt p = {};
	struct flow_key key;
	struct flow_value fresh = {};
	struct flow_value *flow;
	__u64 now = bpf_ktime_get_ns();

	if (l3 ? parse_packet_l3(skb, &p) : parse_packet(skb, &p))
		return TC_ACT_OK;
	flow_key_of(&p, &key);
	flow = bpf_map_lookup_elem(&flows, &key);
	if (flow) {
		flow->last_seen_ns = now;
		return apply(skb, &p, &flow->decision, from_wan, l3);
	}
	if (p.l4proto == IPPROTO_TCP && !tcp_opens_flow(p.tcp_flags))
		return from_wan ? TC_ACT_OK : resume_orphan(skb, &p);
	classify(skb, &p, from_wan, &fresh.decision);
	fresh.last_seen_ns = now;
	bpf_map_update_elem(&flows, &key, &fresh, BPF_ANY);
	return apply(skb, &p, &fresh.decision, from_wan, l3);
}

/* Packets from LAN clients entering the gateway. */
SEC("tc")
int lan_ingress(struct __sk_buff *skb)
{
	return handle(skb, 0, 0);
}

/* The same on L3 LAN devices (tun, WireGuard, PPP): no Ethernet header, no MAC. */
SEC("tc")
int lan_ingress_l3(struct __sk_buff *skb)
{
	return handle(skb, 0, 1);
}

/* Packets the gateway itself sends out of its WAN interfaces (pname() applies here); forwarded
 * packets and the runtime's own pass untouched (wan.h). */
SEC("tc")
int wan_egress(struct __sk_buff *skb)
{
	if (!wan_local_origin(skb))
		return TC_ACT_OK;
	return handle(skb, 1, 0);
}

/* tproxy port protection: the runtime attaches this socket filter (SO_ATTACH_BPF) to its
 * tproxy listeners and UDP reply sockets, and the sockets a listener accepts inherit it. Only
 * packets hijack() delivered carry DAE_FWMARK (tested as the policy rule `fwmark X/X` tests
 * it), so a packet sent to the port from anywhere else (LAN or WAN, v4 or v6) is dropped before
 * the socket sees it: a SYN gets no answer, a datagram is never read. A socket filter returns
 * how many bytes to keep; 0 drops. */
SEC("socket")
int tproxy_guard(struct __sk_buff *skb)
{
	return (skb->mark & DAE_FWMARK) == DAE_FWMARK ? skb->len : 0;
}

/* Parse and classify only, no flow state: returns the rule index (RULE_FALLBACK when none
 * matched). Used by benchmarks to time classification itself; never attached. */
SEC("tc")
int classify_only(struct __sk_buff *skb)
{
	struct pkt p = {};
	struct decision d = {};

	if (parse_packet(skb, &p))
		return -1;
	classify(skb, &p, 0, &d);
	return d.rule;
}

char _license[] SEC("license") = "GPL";

#endif /* DAE_DATAPATH_H */
