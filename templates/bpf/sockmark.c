/* SPDX-License-Identifier: GPL-2.0 */
/* The relay's mark on sockets it does not open itself: attached at sock_create to a cgroup v2
 * directory of the runtime's own (runtime/datapath/sockmark.py), it gives every INET socket a
 * process of that cgroup creates the relay's so_mark, as the relay's setsockopt(SO_MARK) gives
 * its own. The processes are the SIP003 plugins (runtime/proxy/plugins.py): without the mark,
 * wan_egress takes a plugin's connection to its server for a local process's and may route it
 * into the proxy, that is back into the plugin.
 *
 * Hand-written and config-independent, like sockmap.o: dae-compile builds it into sockmark.o
 * beside program.o, and the runtime sets the mark in .rodata before it loads the object, so a
 * kernel that refuses it costs the plugins their mark (one warning), never the gateway.
 *
 * The mark is set at creation, before the process can use the socket, so no packet leaves
 * unmarked; a plugin may still set SO_MARK itself later (it then needs CAP_NET_ADMIN).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* The relay's so_mark; the runtime writes it before load (.rodata is frozen after). */
const volatile __u32 sock_mark = 0;

SEC("cgroup/sock_create")
int sockmark_create(struct bpf_sock *sk)
{
	if (sock_mark)
		sk->mark = sock_mark;
	return 1;  /* marks, never refuses */
}

char LICENSE[] SEC("license") = "GPL";
