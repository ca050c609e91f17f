/* SPDX-License-Identifier: GPL-2.0 */
/* Packet parsing: Ethernet (with 802.1Q / 802.1ad tags), IPv4, IPv6 (extension headers skipped),
 * TCP and UDP, into struct pkt (also from L3 devices without an Ethernet header). Returns 0 when the packet is a TCP or UDP packet we classify,
 * -1 otherwise (the datapath lets those through untouched).
 *
 * Parts the config does not use are compiled out: DAE_NEED_MAC and DAE_NEED_DSCP come from the
 * generated program.c.
 */
#ifndef DAE_PARSE_H
#define DAE_PARSE_H

#include "common.h"

#define IPV6_MAX_EXT_HEADERS 6

#ifndef NEXTHDR_HOP
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_AUTH 51
#define NEXTHDR_DEST 60
#endif

static __always_inline int parse_l4(struct __sk_buff *skb, __u32 off, __u8 proto, struct pkt *p)
{
	__be16 ports[2];

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return -1;
	if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)))
		return -1;
	p->l4proto = proto;
	p->sport = bpf_ntohs(ports[0]);
	p->dport = bpf_ntohs(ports[1]);
	if (proto == IPPROTO_TCP && bpf_skb_load_bytes(skb, off + 13, &p->tcp_flags, 1))
		return -1;
	return 0;
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, __u32 off, struct pkt *p)
{
	struct iphdr ip;

	if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) || ip.ihl < 5)
		return -1;
	/* Only the first fragment carries the ports. */
	if (ip.frag_off & bpf_htons(0x1FFF))
		return -1;
	p->ipversion = 4;
#if DAE_NEED_DSCP
	p->dscp = ip.tos >> 2;
#endif
	p->saddr_be[0] = ip.saddr;
	p->daddr_be[0] = ip.daddr;
	p->saddr[0] = bpf_ntohl(ip.saddr);
	p->daddr[0] = bpf_ntohl(ip.daddr);
	return parse_l4(skb, off + ip.ihl * 4, ip.protocol, p);
}

static __always_inline int parse_ipv6(struct __sk_buff *skb, __u32 off, struct pkt *p)
{
	struct ipv6hdr ip6;
	__u8 nexthdr;
	int i;

	if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)))
		return -1;
	p->ipversion = 6;
#if DAE_NEED_DSCP
	p->dscp = ((ip6.priority << 4) | (ip6.flow_lbl[0] >> 4)) >> 2;
#endif
	__builtin_memcpy(p->saddr_be, &ip6.saddr, 16);
	__builtin_memcpy(p->daddr_be, &ip6.daddr, 16);
#pragma unroll
	for (i = 0; i < 4; i++) {
		p->saddr[i] = bpf_ntohl(p->saddr_be[i]);
		p->daddr[i] = bpf_ntohl(p->daddr_be[i]);
	}
	nexthdr = ip6.nexthdr;
	off += sizeof(ip6);
#pragma unroll
	for (i = 0; i < IPV6_MAX_EXT_HEADERS; i++) {
		__u8 ext[2];

		switch (nexthdr) {
		case NEXTHDR_HOP:
		case NEXTHDR_ROUTING:
		case NEXTHDR_DEST:
			if (bpf_skb_load_bytes(skb, off, ext, 2))
				return -1;
			nexthdr = ext[0];
			off += (ext[1] + 1) * 8;
			break;
		case NEXTHDR_AUTH:
			if (bpf_skb_load_bytes(skb, off, ext, 2))
				return -1;
			nexthdr = ext[0];
			off += (ext[1] + 2) * 4;
			break;
		case NEXTHDR_FRAGMENT: {
			__be16 frag[2];

			if (bpf_skb_load_bytes(skb, off, frag, 4))
				return -1;
			if (frag[1] & bpf_htons(0xFFF8))  /* not the first fragment: no ports */
				return -1;
			nexthdr = ((__u8 *)frag)[0];
			off += 8;
			break;
		}
		default:
			return parse_l4(skb, off, nexthdr, p);
		}
	}
	return parse_l4(skb, off, nexthdr, p);
}

/* Parse an Ethernet frame. */
static __always_inline int parse_packet(struct __sk_buff *skb, struct pkt *p)
{
	struct ethhdr eth;
	__u32 off = sizeof(eth);
	__be16 proto;
	int i;

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)))
		return -1;
	proto = eth.h_proto;
#pragma unroll
	for (i = 0; i < 2; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		if (bpf_skb_load_bytes(skb, off + 2, &proto, sizeof(proto)))
			return -1;
		off += 4;
	}
#if DAE_NEED_MAC
	p->has_mac = 1;
	p->smac = ((__u64)eth.h_source[0] << 40) | ((__u64)eth.h_source[1] << 32) |
		  ((__u64)eth.h_source[2] << 24) | ((__u64)eth.h_source[3] << 16) |
		  ((__u64)eth.h_source[4] << 8) | (__u64)eth.h_source[5];
#endif
	if (proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(skb, off, p);
	if (proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(skb, off, p);
	return -1;
}

/* Parse a packet from an L3 device (tun, WireGuard, PPP): no Ethernet header, skb->protocol
 * says which IP version starts at offset 0. */
static __always_inline int parse_packet_l3(struct __sk_buff *skb, struct pkt *p)
{
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return parse_ipv4(skb, 0, p);
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(skb, 0, p);
	return -1;
}

#endif /* DAE_PARSE_H */
