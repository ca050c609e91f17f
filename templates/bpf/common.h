/* SPDX-License-Identifier: GPL-2.0 */
/* Types shared by the packet parser, the generated classifier and the datapath.
 *
 * Hand-written; the per-config parts (constants, maps, the classify() body) are generated into
 * program.c, which includes this file first. Map layouts here are the contract with user space:
 * see docs/maps.md before changing one.
 */
#ifndef DAE_COMMON_H
#define DAE_COMMON_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef ETH_P_8021Q
#define ETH_P_8021Q 0x8100
#endif
#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

/* A parsed packet: everything a rule can look at. Addresses are kept twice: host-order words
 * for the generated compares (IPv4 in word 0) and network order for map keys. */
struct pkt {
	__u32 saddr[4];
	__u32 daddr[4];
	__be32 saddr_be[4];
	__be32 daddr_be[4];
	__u64 smac;      /* source MAC, first octet most significant; valid when has_mac */
	__u16 sport;     /* host order */
	__u16 dport;
	__u8 ipversion;  /* 4 or 6 */
	__u8 l4proto;    /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 dscp;       /* the 6-bit DSCP of the IP header */
	__u8 has_mac;
	__u8 tcp_flags;  /* TCP flag byte (FIN=0x01 SYN=0x02 RST=0x04 ACK=0x10), 0 for UDP */
	__u8 _pad[7];
};

/* The flow table's key: the 5-tuple plus family, in network order (v4 in word 0, rest zero). */
struct flow_key {
	__be32 saddr[4];
	__be32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 l4proto;
	__u8 ipversion;
	__u16 _pad;
};

/* struct pkt's tcp_flags bits (the TCP header's flag byte) */
#define DAE_TCP_SYN 0x02
#define DAE_TCP_ACK 0x10

#define DECISION_MUST 0x01  /* do not hijack this flow's DNS */

/* What classify() decides for a flow. rule == RULE_FALLBACK when no rule matched. */
struct decision {
	__u32 mark;
	__u16 rule;
	__u8 outbound;
	__u8 flags;
};

struct flow_value {
	struct decision decision;
	__u64 last_seen_ns;
};

/* Domain map key: the destination address, IPv4 as ::ffff:a.b.c.d (network order). */
struct ip_key {
	__be32 addr[4];
};

/* Per-socket process identity, filled by the cgroup hooks (cgroup.h), keyed by socket cookie.
 * comm (the task's name) and exe (the basename of its executable) are each split in two
 * little-endian u64 so that a name compare is two integer compares; pname() matches either. */
struct pname_value {
	__u64 comm_lo;
	__u64 comm_hi;
	__u32 pid;
	__u32 _pad;
	__u64 exe_lo;
	__u64 exe_hi;
};

struct outbound_stats {
	__u64 packets;
	__u64 bytes;
};

/* rule_hits' per-CPU value, one per rule index (RULE_FALLBACK last): flows each rule decided. */
struct rule_hits {
	__u64 flows;
};

/* Constant tables go to .rodata explicitly: clang 14 otherwise puts small ones in mergeable
 * .rodata.cstN sections whose BTF libbpf 1.1 cannot load. */
#define DAE_RODATA __attribute__((section(".rodata")))
/* Tables the verifier must not read as constants (see classify_bitvector.c.j2) go to .data. */
#define DAE_DATA __attribute__((section(".data")))

/* Stop clang from reasoning about a value, so its bounds stay as the verifier sees them. */
#define DAE_OPAQUE(x) asm volatile("" : "+r"(x))

#define IP4_IN(addr, net, mask) (((addr) & (mask)) == (net))

#endif /* DAE_COMMON_H */
