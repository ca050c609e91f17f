// Test program for runtime.bpf: a tc classifier whose verdict depends on four map kinds.
//   1. dst_verdict (HASH, key = IPv4 daddr in network order)      -> verdict
//   2. prefix_verdict (LPM_TRIE, key = {prefixlen, IPv4 daddr})    -> verdict
//   3. config (ARRAY, index 0)                                     -> default verdict
// and counts every packet in pkt_count (PERCPU_ARRAY, index 0).
// Non IPv4/TCP frames get TC_ACT_UNSPEC (-1).
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct lpm_v4_key {
	__u32 prefixlen;
	__u32 addr;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);  /* the tests raise it with set_map_max_entries */
	__type(key, __u32);
	__type(value, __u32);
} dst_verdict SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v4_key);
	__type(value, __u32);
} prefix_verdict SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u32);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} pkt_count SEC(".maps");

static __always_inline void count_packet(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&pkt_count, &zero);

	if (n)
		*n += 1;
}

static __always_inline struct iphdr *ipv4_tcp(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);

	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	if (ip->protocol != IPPROTO_TCP)
		return 0;
	return ip;
}

SEC("tc")
int classify(struct __sk_buff *skb)
{
	struct lpm_v4_key lpm = { .prefixlen = 32 };
	__u32 zero = 0, *verdict;
	struct iphdr *ip;

	count_packet();
	ip = ipv4_tcp(skb);
	if (!ip)
		return TC_ACT_UNSPEC;
	verdict = bpf_map_lookup_elem(&dst_verdict, &ip->daddr);
	if (verdict)
		return *verdict;
	lpm.addr = ip->daddr;
	verdict = bpf_map_lookup_elem(&prefix_verdict, &lpm);
	if (verdict)
		return *verdict;
	verdict = bpf_map_lookup_elem(&config, &zero);
	return verdict ? *verdict : TC_ACT_OK;
}

// Rewrites the IPv4 TOS byte to 0x10, so tests can see data_out differ from data_in.
SEC("tc")
int set_tos(struct __sk_buff *skb)
{
	struct iphdr *ip = ipv4_tcp(skb);

	if (!ip)
		return TC_ACT_UNSPEC;
	ip->tos = 0x10;
	return TC_ACT_OK;
}

// Returns skb->mark and bumps it, so tests can pass a context in and read it back.
SEC("tc")
int bump_mark(struct __sk_buff *skb)
{
	__u32 mark = skb->mark;

	skb->mark = mark + 1;
	return mark;
}

char LICENSE[] SEC("license") = "GPL";
