// A minimal tc tproxy, for the datapath tests that establish what the kernel needs around
// bpf_sk_assign (policy routing, sysctls). Not the project's datapath program.
//
// tproxy_ingress: TCP/UDP to port 8080 is handed to the transparent socket on port 15000
// (an established TCP socket of the same 4-tuple first, else the listener) with
// bpf_sk_assign, and marked 0x1 so the fwmark rule routes it to local delivery.
// bounce_egress: the gateway's own packets to port 8080 are turned around at the egress
// into the same device's ingress (destination MAC := own MAC, so the stack takes them as
// PACKET_HOST), where tproxy_ingress picks them up: the "local-origin" path.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define INTERCEPT_PORT 8080
#define PROXY_PORT 15000
#define MARK 0x1

static __always_inline int assign(struct __sk_buff *skb, struct bpf_sock_tuple *t, __u32 tlen, int is_v4, __u8 proto)
{
	struct bpf_sock *sk;
	if (proto == IPPROTO_TCP) {
		sk = bpf_skc_lookup_tcp(skb, t, tlen, BPF_F_CURRENT_NETNS, 0);
		if (sk) {
			if (sk->state != BPF_TCP_LISTEN)
				goto do_assign;
			bpf_sk_release(sk);
		}
		if (is_v4) t->ipv4.dport = bpf_htons(PROXY_PORT); else t->ipv6.dport = bpf_htons(PROXY_PORT);
		sk = bpf_skc_lookup_tcp(skb, t, tlen, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return TC_ACT_SHOT;
		if (sk->state != BPF_TCP_LISTEN) {
			bpf_sk_release(sk);
			return TC_ACT_SHOT;
		}
	} else {
		if (is_v4) t->ipv4.dport = bpf_htons(PROXY_PORT); else t->ipv6.dport = bpf_htons(PROXY_PORT);
		sk = bpf_sk_lookup_udp(skb, t, tlen, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return TC_ACT_SHOT;
	}
do_assign:;
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	skb->mark = MARK;
	return err ? TC_ACT_SHOT : TC_ACT_OK;
}

static __always_inline int parse(struct __sk_buff *skb, struct bpf_sock_tuple *t, __u32 *tlen, int *is_v4, __u8 *proto)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	void *l4;
	if ((void *)(eth + 1) > end)
		return -1;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->ihl != 5)
			return -1;
		*proto = ip->protocol;
		t->ipv4.saddr = ip->saddr;
		t->ipv4.daddr = ip->daddr;
		*tlen = sizeof(t->ipv4);
		*is_v4 = 1;
		l4 = ip + 1;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return -1;
		*proto = ip6->nexthdr;
		__builtin_memcpy(t->ipv6.saddr, &ip6->saddr, 16);
		__builtin_memcpy(t->ipv6.daddr, &ip6->daddr, 16);
		*tlen = sizeof(t->ipv6);
		*is_v4 = 0;
		l4 = ip6 + 1;
	} else
		return -1;
	if (*proto != IPPROTO_TCP && *proto != IPPROTO_UDP)
		return -1;
	__be16 *ports = l4;
	if ((void *)(ports + 2) > end)
		return -1;
	if (ports[1] != bpf_htons(INTERCEPT_PORT))
		return -1;
	if (*is_v4) { t->ipv4.sport = ports[0]; t->ipv4.dport = ports[1]; }
	else { t->ipv6.sport = ports[0]; t->ipv6.dport = ports[1]; }
	return 0;
}

SEC("tc")
int tproxy_ingress(struct __sk_buff *skb)
{
	struct bpf_sock_tuple t = {};
	__u32 tlen; int is_v4; __u8 proto;
	if (parse(skb, &t, &tlen, &is_v4, &proto))
		return TC_ACT_OK;
	return assign(skb, &t, tlen, is_v4, proto);
}

SEC("tc")
int bounce_egress(struct __sk_buff *skb)
{
	struct bpf_sock_tuple t = {};
	__u32 tlen; int is_v4; __u8 proto;
	if (parse(skb, &t, &tlen, &is_v4, &proto))
		return TC_ACT_OK;
	unsigned char mac[ETH_ALEN];
	if (bpf_skb_load_bytes(skb, ETH_ALEN, mac, ETH_ALEN))
		return TC_ACT_OK;
	bpf_skb_store_bytes(skb, 0, mac, ETH_ALEN, 0);
	return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}

char _license[] SEC("license") = "GPL";
