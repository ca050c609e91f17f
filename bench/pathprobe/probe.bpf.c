/* SPDX-License-Identifier: GPL-2.0 */
/* Bench only (bench/path_harness.py): what hijack() finds under BPF_PROG_TEST_RUN.
 *
 * The same socket lookups as templates/bpf/hijack.h for an IPv4 frame without options (as
 * dae_py.runtime.packets.frame builds them): TCP by the packet's own 4-tuple, then the listener
 * on PROBE_PORT; UDP the socket on PROBE_PORT. Then bpf_sk_assign. Returns -1 when no socket
 * was found, else (socket state << 8) | -(bpf_sk_assign's return), so a caller can tell an
 * established socket (state 1) from a listener (10) or a UDP socket (0xff), and see the helper's
 * error (95, EOPNOTSUPP: test-run's skb is not at tc ingress).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define PROBE_UDP 0xff

#ifndef PROBE_PORT
#define PROBE_PORT 12345
#endif

SEC("tc")
int probe(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_HLEN;
	__be16 *ports = data + ETH_HLEN + sizeof(*ip);
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	__u32 state = 0;
	long err;

	if ((void *)(ports + 2) > end || ip->ihl != 5)
		return -2;
	t.ipv4.saddr = ip->saddr;
	t.ipv4.daddr = ip->daddr;
	t.ipv4.sport = ports[0];
	t.ipv4.dport = ports[1];
	if (ip->protocol == IPPROTO_TCP) {
		sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (sk && sk->state == BPF_TCP_LISTEN) {
			bpf_sk_release(sk);
			sk = 0;
		}
		if (!sk) {
			t.ipv4.dport = bpf_htons(PROBE_PORT);
			sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		}
		if (sk)
			state = sk->state;
	} else {
		t.ipv4.dport = bpf_htons(PROBE_PORT);
		sk = bpf_sk_lookup_udp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		state = PROBE_UDP;  /* not read from the socket: one load may not see two pointer types */
	}
	if (!sk)
		return -1;
	err = bpf_sk_assign(skb, sk, 0);
	err = (state << 8) | (-err & 0xff);
	bpf_sk_release(sk);
	return err;
}

char _license[] SEC("license") = "GPL";
