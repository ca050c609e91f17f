/* SPDX-License-Identifier: GPL-2.0 */
/* The relay's kernel pump: after the handshake a plain-TCP relay pair (client socket, upstream
 * socket) enters relay_socks, and this stream verdict program sends every skb either socket
 * receives out of the other one: the payload never reaches user space.
 *
 * Hand-written and config-independent: dae-compile builds it into sockmap.o beside program.o
 * and the runtime loads it on its own (runtime/relay/sockmap.py), so a kernel that refuses it
 * costs the relay its fastest pump (splice takes over), never the datapath.
 *
 * Pairing without a slot allocator: each socket is stored under its *peer's* socket cookie, so
 * an skb's own socket cookie is the key of the socket it leaves by.
 *
 * Order and back-pressure. A redirected skb waits in the peer's psock queue, which the kernel
 * does not bound: a peer that stops reading would let the sender fill the gateway's memory. So
 * a way redirects only while its peer's psock queue holds at most RELAY_BACKLOG_MAX bytes (what
 * it redirected and user space wrote, minus what reached the peer's write queue: the peer's
 * write_seq). Past that, skbs pass to the socket's own receive queue: they are charged to its
 * receive buffer, the TCP window closes, the sender waits, and user space moves the passed
 * bytes with ordinary back-pressure (once the peer's psock queue is empty). Redirecting resumes
 * only when user space has written every passed byte (consumed == passed), so no byte
 * overtakes another.
 *
 * Map layouts are the contract with user space (runtime/relay/sockmap.py).
 */
#include <linux/bpf.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>

#ifndef RELAY_SOCKS_SIZE
#define RELAY_SOCKS_SIZE 65536  /* sockets, two per flow */
#endif
#ifndef RELAY_BACKLOG_MAX
#define RELAY_BACKLOG_MAX (4u << 20)  /* bytes a way may leave in its peer's psock queue */
#endif

/* peer's socket cookie -> the socket an skb leaves by (value: an fd on update) */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, RELAY_SOCKS_SIZE);
	__type(key, __u64);
	__type(value, __u64);
} relay_socks SEC(".maps");

/* One way of a flow, keyed by the cookie of the socket it reads; written by this program only
 * (user space creates it zeroed before the socket enters relay_socks and deletes it after). */
struct relay_way {
	__u64 redirected;  /* bytes sent to the peer's psock queue */
	__u64 passed;      /* bytes passed to this socket's receive queue, for user space */
	__u32 peer_base;   /* the peer's write_seq at this way's first skb, less consumed then */
	__u32 based;       /* peer_base is set */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RELAY_SOCKS_SIZE);
	__type(key, __u64);
	__type(value, struct relay_way);
} relay_ways SEC(".maps");

/* Same key: the passed bytes user space has written to the peer; written by user space only. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RELAY_SOCKS_SIZE);
	__type(key, __u64);
	__type(value, __u64);
} relay_consumed SEC(".maps");

/* The one field of the kernel's tcp_sock read here (CO-RE: placed by the running kernel's BTF). */
struct tcp_sock {
	__u32 write_seq;
} __attribute__((preserve_access_index));

/* Whether the peer's psock queue is short enough for another redirect. Errs towards passing:
 * a stale or torn count only sends bytes through user space, never out of order. */
static __always_inline int peer_has_room(struct relay_way *w, __u64 consumed, __u64 *cookie)
{
	struct bpf_sock *peer = bpf_map_lookup_elem(&relay_socks, cookie);
	struct tcp_sock *tp;
	__u32 seq = 0, queued;

	if (!peer)
		return 0;
	tp = bpf_skc_to_tcp_sock(peer);
	if (tp)
		seq = BPF_CORE_READ(tp, write_seq);
	bpf_sk_release(peer);
	if (!tp)
		return 0;
	if (!w->based) {  /* nothing of this way is queued yet: everything written so far is older */
		w->peer_base = seq - (__u32)consumed;
		w->based = 1;
	}
	/* 32-bit sequence space wraps; the difference does not */
	queued = (__u32)(w->redirected + consumed) - (seq - w->peer_base);
	return queued <= RELAY_BACKLOG_MAX;
}

SEC("sk_skb/stream_verdict")
int relay_verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct relay_way *w = bpf_map_lookup_elem(&relay_ways, &cookie);
	__u64 *consumed = bpf_map_lookup_elem(&relay_consumed, &cookie);
	__u64 done;

	if (!w || !consumed)
		return SK_PASS;  /* not (or no longer) a relay way: user space reads it */
	if (!skb->len)  /* a bare FIN: the psock worker would fail the peer on it (EPIPE); the */
		return SK_DROP;  /* socket reports the EOF to user space without the skb */
	done = *consumed;
	if (w->passed != done || !peer_has_room(w, done, &cookie))
		goto pass;
	if (bpf_sk_redirect_hash(skb, &relay_socks, &cookie, 0) != SK_PASS)
		goto pass;  /* the peer is not in relay_socks (yet, or any more) */
	__sync_fetch_and_add(&w->redirected, skb->len);
	return SK_PASS;
pass:
	__sync_fetch_and_add(&w->passed, skb->len);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
