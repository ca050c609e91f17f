/* SPDX-License-Identifier: GPL-2.0 */
/* Delivery of proxied flows to the runtime's tproxy listeners, from tc ingress.
 *
 * bpf_sk_assign() hands the packet to a local socket without rewriting it: an established
 * socket of the flow if there is one (found by the packet's own 4-tuple), else the transparent
 * listener on DAE_TPROXY_PORT. The fwmark makes the policy route (`ip rule fwmark X lookup T`,
 * `local default dev lo table T`) treat the packet as local. When no listener exists (the
 * runtime died without cleaning up) nothing is assigned and the packet is routed as a direct
 * flow: fail-open rather than a black hole.
 */
#ifndef DAE_HIJACK_H
#define DAE_HIJACK_H

#include "common.h"

#ifndef BPF_F_CURRENT_NETNS
#define BPF_F_CURRENT_NETNS (-1L)
#endif

static __always_inline __u32 sock_tuple(const struct pkt *p, struct bpf_sock_tuple *t)
{
	if (p->ipversion == 4) {
		t->ipv4.saddr = p->saddr_be[0];
		t->ipv4.daddr = p->daddr_be[0];
		t->ipv4.sport = bpf_htons(p->sport);
		t->ipv4.dport = bpf_htons(p->dport);
		return sizeof(t->ipv4);
	}
	__builtin_memcpy(t->ipv6.saddr, p->saddr_be, 16);
	__builtin_memcpy(t->ipv6.daddr, p->daddr_be, 16);
	t->ipv6.sport = bpf_htons(p->sport);
	t->ipv6.dport = bpf_htons(p->dport);
	return sizeof(t->ipv6);
}

static __always_inline void tuple_to_listener(const struct pkt *p, struct bpf_sock_tuple *t, __u16 port)
{
	if (p->ipversion == 4)
		t->ipv4.dport = bpf_htons(port);
	else
		t->ipv6.dport = bpf_htons(port);
}

/* Deliver the packet to a socket of its flow, else to the transparent listener on `port`.
 * Returns 0 when assigned (the packet then carries DAE_FWMARK), -1 when no socket took it. */
static __always_inline int assign_to_port(struct __sk_buff *skb, const struct pkt *p, __u16 port)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	__u32 size = sock_tuple(p, &t);
	long err;

	if (p->l4proto == IPPROTO_TCP) {
		sk = bpf_skc_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
		if (sk && sk->state != BPF_TCP_LISTEN)
			goto assign;  /* an accepted (or half-open) socket of this flow */
		if (sk)
			bpf_sk_release(sk);
		tuple_to_listener(p, &t, port);
		sk = bpf_skc_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return -1;  /* no listener */
		if (sk->state != BPF_TCP_LISTEN) {
			bpf_sk_release(sk);
			return -1;
		}
	} else {
		tuple_to_listener(p, &t, port);
		sk = bpf_sk_lookup_udp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return -1;
	}
assign:
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return -1;
	skb->mark = DAE_FWMARK;
	return 0;
}

static __always_inline int hijack(struct __sk_buff *skb, const struct pkt *p, const struct decision *d)
{
	(void)d;
	assign_to_port(skb, p, DAE_TPROXY_PORT);  /* no listener: fail open, route directly */
	return TC_ACT_OK;
}

#define DAE_HIJACK hijack

#endif /* DAE_HIJACK_H */
