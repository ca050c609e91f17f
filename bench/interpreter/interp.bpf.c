/* SPDX-License-Identifier: GPL-2.0 */
/* The benchmark baseline: a rule *interpreter* in dae's style (not part of the product).
 *
 * dae (v2.0) classifies a new flow by walking an array map of "match sets" with bpf_loop: each
 * entry is one parameter of one rule function (an IP set, a port range, an l4proto mask, ...);
 * entries of one function are ORed (outbound == OUT_OR), functions of one rule are ANDed
 * (outbound == OUT_AND), and the last entry of a rule carries the rule's real outbound. First
 * match wins; the last entry of the table is a FALLBACK entry that always matches. CIDR sets are
 * LPM tries reached through an ARRAY_OF_MAPS, one trie per dip()/sip() call, as in dae.
 *
 * This file is hand-written for the benchmark and shares no code with templates/bpf/: it parses
 * the frame itself (Ethernet with optional 802.1Q/802.1ad tags, IPv4, IPv6 with extension headers
 * skipped, TCP, UDP) and bench/interpreter/encoder.py turns the compiler's IR into the entries,
 * so both programs see the same rules. Differences from dae, all of which make this baseline a
 * little *faster* or more correct than dae, never slower:
 *   - the domain bitmap is looked up once per packet (at the first domain entry), not per entry;
 *   - LPM keys carry an address-family byte, so a v4 CIDR never matches a v6 flow (dae maps v4
 *     to ::ffff:a.b.c.d in a 128-bit key: same lookup cost, but '::/0' would match v4 flows);
 *   - the table holds up to INTERP_MAX_ENTRIES entries (dae: 1024), so 1,000 real rules fit;
 *   - each entry also carries its rule's index, which the program returns (like classify_only).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define INTERP_MAX_ENTRIES 16384
#define INTERP_MAX_LPM_SETS 4096
#define INTERP_DOMAIN_WORDS 16 /* 1024 domain sets */
#define IPV6_MAX_EXT 6

/* Special outbound values (dae's encoding). User outbounds are 0..0xFB. */
#define OUT_MUST_RULES 0xFC
#define OUT_OR 0xFE
#define OUT_AND 0xFF
#define OUT_LOGICAL_MASK 0xFE

enum match_type {
	M_DOMAIN = 0,
	M_DIP = 1,
	M_SIP = 2,
	M_DPORT = 3,
	M_SPORT = 4,
	M_L4PROTO = 5,
	M_IPVERSION = 6,
	M_MAC = 7,
	M_PNAME = 8,
	M_DSCP = 9,
	M_FALLBACK = 10,
};

#define L4_TCP_BIT 1
#define L4_UDP_BIT 2
#define IPV4_BIT 1
#define IPV6_BIT 2

/* One match entry: 32 bytes. Layout mirrored by encoder.py (ENTRY_FORMAT). */
struct match_entry {
	union {
		__u8 raw[16];
		__u32 index;          /* M_DIP / M_SIP: slot in lpm_sets */
		struct {
			__u16 lo;
			__u16 hi;
		} port;               /* M_DPORT / M_SPORT: inclusive range */
		__u8 mask;            /* M_L4PROTO / M_IPVERSION: bit mask */
		__u64 mac;            /* M_MAC: 48-bit, first octet most significant */
		__u64 comm[2];        /* M_PNAME: comm as two little-endian words */
		__u8 dscp;            /* M_DSCP */
		__u32 bit;            /* M_DOMAIN: bit in the domain bitmap */
	};
	__u8 negated;  /* applies to the whole function (checked at its last entry) */
	__u8 type;
	__u8 outbound; /* OUT_OR / OUT_AND inside a rule, the real outbound on its last entry */
	__u8 must;
	__u32 mark;
	__u16 rule;    /* rule index reported when this entry ends a matching rule */
	__u16 _pad;
	__u32 _pad2;   /* explicit: the union's __u64 members align the struct to 8 */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, INTERP_MAX_ENTRIES);
	__type(key, __u32);
	__type(value, struct match_entry);
} routing SEC(".maps");

/* LPM key: family byte then the address (v4 in the first 4 bytes); prefixlen counts the family
 * byte, i.e. 8 + CIDR length. */
struct lpm_key {
	__u32 prefixlen;
	__u8 family;
	__u8 addr[16];
} __attribute__((packed));

struct lpm_inner {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1); /* user space creates the real tries with their own size */
	__type(key, struct lpm_key);
	__type(value, __u32);
} lpm_inner_template SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, INTERP_MAX_LPM_SETS);
	__type(key, __u32);
	__array(values, struct lpm_inner);
} lpm_sets SEC(".maps");

/* Domain bitmap per destination IP (key: IPv4 as ::ffff:a.b.c.d), filled by user space. */
struct ip_key {
	__be32 addr[4];
};

struct domain_bits {
	__u64 w[INTERP_DOMAIN_WORDS];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ip_key);
	__type(value, struct domain_bits);
} interp_domain SEC(".maps");

/* The last decision of interp_record (for the correctness check; not used when timing). */
struct decision {
	__u32 mark;
	__u16 rule;
	__u8 outbound;
	__u8 flags; /* 1 = must */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct decision);
} last_decision SEC(".maps");

/* What the walk looks at, prepared once per packet (dae: struct route_params + route_ctx). */
struct packet {
	struct lpm_key dkey;
	struct lpm_key skey;
	struct ip_key domain_key;
	__u64 smac;
	__u16 sport;
	__u16 dport;
	__u8 l4bit;
	__u8 ipvbit;
	__u8 dscp;
	__u8 _pad;
};

#define ST_BAD_RULE 0x01
#define ST_GOOD_SUBRULE 0x02
#define ST_MUST 0x04

#define DOM_UNKNOWN 0
#define DOM_FOUND 1
#define DOM_NONE 2

struct walk {
	struct packet pkt;
	struct domain_bits dom;
	__u8 dom_state;
	__u8 state;
	__u8 outbound;
	__u8 must;
	__u32 mark;
	__s32 rule; /* -1 until decided; < -1 on an error */
};

/* ---- parsing ------------------------------------------------------------------------------- */

static __always_inline int parse_ports(struct __sk_buff *skb, __u32 off, __u8 proto, struct packet *p)
{
	__be16 ports[2];

	if (proto == IPPROTO_TCP)
		p->l4bit = L4_TCP_BIT;
	else if (proto == IPPROTO_UDP)
		p->l4bit = L4_UDP_BIT;
	else
		return -1;
	if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)))
		return -1;
	p->sport = bpf_ntohs(ports[0]);
	p->dport = bpf_ntohs(ports[1]);
	return 0;
}

static __always_inline int parse_frame(struct __sk_buff *skb, struct packet *p)
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
		if (proto != bpf_htons(0x8100) && proto != bpf_htons(0x88A8))
			break;
		if (bpf_skb_load_bytes(skb, off + 2, &proto, sizeof(proto)))
			return -1;
		off += 4;
	}
	p->smac = ((__u64)eth.h_source[0] << 40) | ((__u64)eth.h_source[1] << 32) |
		  ((__u64)eth.h_source[2] << 24) | ((__u64)eth.h_source[3] << 16) |
		  ((__u64)eth.h_source[4] << 8) | (__u64)eth.h_source[5];

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) || ip.ihl < 5)
			return -1;
		if (ip.frag_off & bpf_htons(0x1FFF))
			return -1;
		p->ipvbit = IPV4_BIT;
		p->dscp = ip.tos >> 2;
		p->dkey.prefixlen = 8 + 32;
		p->dkey.family = 4;
		__builtin_memcpy(p->dkey.addr, &ip.daddr, 4);
		p->skey.prefixlen = 8 + 32;
		p->skey.family = 4;
		__builtin_memcpy(p->skey.addr, &ip.saddr, 4);
		p->domain_key.addr[2] = bpf_htonl(0x0000FFFF);
		p->domain_key.addr[3] = ip.daddr;
		return parse_ports(skb, off + ip.ihl * 4, ip.protocol, p);
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		__u8 nexthdr;

		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)))
			return -1;
		p->ipvbit = IPV6_BIT;
		p->dscp = ((ip6.priority << 4) | (ip6.flow_lbl[0] >> 4)) >> 2;
		p->dkey.prefixlen = 8 + 128;
		p->dkey.family = 6;
		__builtin_memcpy(p->dkey.addr, &ip6.daddr, 16);
		p->skey.prefixlen = 8 + 128;
		p->skey.family = 6;
		__builtin_memcpy(p->skey.addr, &ip6.saddr, 16);
		__builtin_memcpy(p->domain_key.addr, &ip6.daddr, 16);
		nexthdr = ip6.nexthdr;
		off += sizeof(ip6);
#pragma unroll
		for (i = 0; i < IPV6_MAX_EXT; i++) {
			__u8 ext[2];

			if (nexthdr == 0 || nexthdr == 43 || nexthdr == 60) { /* hop, routing, dest */
				if (bpf_skb_load_bytes(skb, off, ext, 2))
					return -1;
				nexthdr = ext[0];
				off += (ext[1] + 1) * 8;
			} else if (nexthdr == 51) { /* AH */
				if (bpf_skb_load_bytes(skb, off, ext, 2))
					return -1;
				nexthdr = ext[0];
				off += (ext[1] + 2) * 4;
			} else if (nexthdr == 44) { /* fragment */
				__be16 frag[2];

				if (bpf_skb_load_bytes(skb, off, frag, 4))
					return -1;
				if (frag[1] & bpf_htons(0xFFF8))
					return -1;
				nexthdr = ((__u8 *)frag)[0];
				off += 8;
			} else {
				break;
			}
		}
		return parse_ports(skb, off, nexthdr, p);
	}
	return -1;
}

/* ---- the walk (one bpf_loop iteration per match entry) ------------------------------------ */

static __always_inline int lpm_hit(__u32 index, struct lpm_key *key)
{
	void *trie = bpf_map_lookup_elem(&lpm_sets, &index);

	if (!trie)
		return -1;
	return bpf_map_lookup_elem(trie, key) != 0;
}

static int walk_entry(__u32 i, void *data)
{
	struct walk *w = data;
	struct packet *p = &w->pkt;
	const struct match_entry *e;
	__u32 k = i;
	int hit = 0;

	e = bpf_map_lookup_elem(&routing, &k);
	if (!e) {
		w->rule = -2;
		return 1;
	}
	/* The function already matched (an earlier OR entry) or the rule already failed: skip to
	 * the bookkeeping, as dae does. */
	if (w->state & (ST_GOOD_SUBRULE | ST_BAD_RULE))
		goto bookkeeping;

	switch (e->type) {
	case M_DIP:
		hit = lpm_hit(e->index, &p->dkey);
		break;
	case M_SIP:
		hit = lpm_hit(e->index, &p->skey);
		break;
	case M_DPORT:
		hit = e->port.lo <= p->dport && p->dport <= e->port.hi;
		break;
	case M_SPORT:
		hit = e->port.lo <= p->sport && p->sport <= e->port.hi;
		break;
	case M_L4PROTO:
		hit = (e->mask & p->l4bit) != 0;
		break;
	case M_IPVERSION:
		hit = (e->mask & p->ipvbit) != 0;
		break;
	case M_MAC:
		hit = e->mac == p->smac;
		break;
	case M_PNAME:
		/* Process names are known only for the gateway's own sockets (WAN side, via a
		 * cgroup hook); these entry points are the LAN path, where no name ever matches
		 * (the compiled classify_only does the same with from_wan = 0). */
		hit = 0;
		break;
	case M_DSCP:
		hit = e->dscp == p->dscp;
		break;
	case M_DOMAIN: {
		__u32 bit = e->bit;

		if (w->dom_state == DOM_UNKNOWN) {
			const struct domain_bits *d = bpf_map_lookup_elem(&interp_domain, &p->domain_key);

			if (d) {
				__builtin_memcpy(&w->dom, d, sizeof(w->dom));
				w->dom_state = DOM_FOUND;
			} else {
				w->dom_state = DOM_NONE;
			}
		}
		if (w->dom_state == DOM_FOUND)
			hit = (w->dom.w[(bit / 64) & (INTERP_DOMAIN_WORDS - 1)] >> (bit % 64)) & 1;
		break;
	}
	case M_FALLBACK:
		hit = 1;
		break;
	default:
		w->rule = -3;
		return 1;
	}
	if (hit < 0) {
		w->rule = -4;
		return 1;
	}
	if (hit)
		w->state |= ST_GOOD_SUBRULE;

bookkeeping:
	if (e->outbound != OUT_OR) {
		/* Last entry of a function: the function's result, with its negation, decides
		 * whether the rule is still alive. */
		if (!!(w->state & ST_GOOD_SUBRULE) == !!e->negated)
			w->state |= ST_BAD_RULE;
		w->state &= ~ST_GOOD_SUBRULE;
	}
	if ((e->outbound & OUT_LOGICAL_MASK) != OUT_LOGICAL_MASK) {
		/* Last entry of a rule. */
		if (!(w->state & ST_BAD_RULE)) {
			if (e->outbound == OUT_MUST_RULES) {
				w->state |= ST_MUST;
			} else {
				w->rule = e->rule;
				w->outbound = e->outbound;
				w->mark = e->mark;
				w->must = (w->state & ST_MUST) || e->must;
				return 1;
			}
		}
		w->state &= ~ST_BAD_RULE;
	}
	return 0;
}

static __always_inline int interpret(struct __sk_buff *skb, struct walk *w)
{
	if (parse_frame(skb, &w->pkt))
		return -1;
	w->rule = -1;
	bpf_loop(INTERP_MAX_ENTRIES, walk_entry, w, 0);
	return w->rule;
}

/* Timing entry point: parse + walk, returns the matched rule index (like classify_only). */
SEC("tc")
int interp_classify(struct __sk_buff *skb)
{
	struct walk w = {};

	return interpret(skb, &w);
}

/* Correctness entry point: same, and records the whole decision in last_decision[0]. */
SEC("tc")
int interp_record(struct __sk_buff *skb)
{
	struct walk w = {};
	struct decision d = {};
	__u32 zero = 0;
	int rule = interpret(skb, &w);

	d.rule = rule;
	d.outbound = w.outbound;
	d.mark = w.mark;
	d.flags = w.must ? 1 : 0;
	bpf_map_update_elem(&last_decision, &zero, &d, BPF_ANY);
	return rule;
}

/* Floors for the tables: parsing alone, and a program that does nothing. */
SEC("tc")
int parse_only(struct __sk_buff *skb)
{
	struct walk w = {};

	return parse_frame(skb, &w.pkt) ? -1 : w.pkt.dport;
}

SEC("tc")
int trivial(struct __sk_buff *skb)
{
	(void)skb;
	return 0;
}

char _license[] SEC("license") = "GPL";
