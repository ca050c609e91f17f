/* SPDX-License-Identifier: GPL-2.0 */
/* DNS hijack: LAN queries to port 53 (UDP and TCP, IPv4 and IPv6, to any resolver address)
 * are assigned to the DNS module's own transparent listener on DAE_DNS_HIJACK_PORT, unless the
 * flow's rule is a must_* one (DECISION_MUST: dae's "do not hijack this flow's DNS").
 *
 * The packet is not rewritten: the listener reads the resolver the client asked from
 * IP_ORIGDSTADDR (UDP) or the accepted socket's local address (TCP) and answers from it, so
 * clients need no change. A separate port (not the relay's tproxy port) keeps the relay free
 * of DNS and lets the module read queries without a per-client association (docs/dns.md).
 * With no listener (the module is not running) the flow goes by its decision: fail open. A query
 * to an address of the gateway's own where one of its resolvers listens is left to it.
 *
 * program.c defines DAE_DNS_HIJACK_PORT before including this file, only for configs with a
 * DNS module; datapath.h calls DAE_DNS_HIJACK when it is defined.
 */
#ifndef DAE_DNS_HIJACK_H
#define DAE_DNS_HIJACK_H

#include "common.h"
#include "hijack.h"

#define DNS_PORT 53
#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* Is the destination one of the gateway's own addresses? A FIB lookup says so by not
 * forwarding (RTN_LOCAL), with the routing rules applied (flags 0: the local table first). */
static __always_inline int dst_is_local(struct __sk_buff *skb, const struct pkt *p)
{
	struct bpf_fib_lookup fib = {};

	fib.l4_protocol = p->l4proto;
	fib.sport = bpf_htons(p->sport);
	fib.dport = bpf_htons(p->dport);
	fib.ifindex = skb->ingress_ifindex;
	if (p->ipversion == 4) {
		fib.family = AF_INET;
		fib.ipv4_src = p->saddr_be[0];
		fib.ipv4_dst = p->daddr_be[0];
	} else {
		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_src, p->saddr_be, 16);
		__builtin_memcpy(fib.ipv6_dst, p->daddr_be, 16);
	}
	return bpf_fib_lookup(skb, &fib, sizeof(fib), 0) == BPF_FIB_LKUP_RET_NOT_FWDED;
}

/* A resolver of the gateway's own (a local dnsmasq, or dns.bind) listening on the address the
 * client asked answers for itself: the module could not answer as that address without taking
 * its port. Such a socket is one the original tuple finds (a TCP listener; a UDP socket that is
 * not one of the runtime's own reply sockets, which carry DAE_SO_MARK) when the destination is
 * local. A wildcard-bound socket matches any address, hence the FIB check. */
static __always_inline int local_resolver(struct __sk_buff *skb, const struct pkt *p)
{
	struct bpf_sock_tuple t = {};
	__u32 size = sock_tuple(p, &t);
	struct bpf_sock *sk;
	int theirs;

	if (p->l4proto == IPPROTO_TCP) {
		sk = bpf_skc_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return 0;
		theirs = sk->state == BPF_TCP_LISTEN;
	} else {
		sk = bpf_sk_lookup_udp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return 0;
		theirs = sk->mark != DAE_SO_MARK;
	}
	bpf_sk_release(sk);
	return theirs && dst_is_local(skb, p);
}

/* 0: the packet is handled (assigned to the module's listener, or left to a resolver of the
 * gateway's own at its address); -1: handle it by its decision (not DNS, a must_* rule, or no
 * listener: fail open). */
static __always_inline int dns_hijack(struct __sk_buff *skb, const struct pkt *p, const struct decision *d)
{
	if (p->dport != DNS_PORT || (d->flags & DECISION_MUST))
		return -1;
	if (local_resolver(skb, p))
		return 0;
	return assign_to_port(skb, p, DAE_DNS_HIJACK_PORT);
}

#define DAE_DNS_HIJACK dns_hijack

#endif /* DAE_DNS_HIJACK_H */
