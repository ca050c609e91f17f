/* SPDX-License-Identifier: GPL-2.0 */
/* The gateway's own traffic: classified at the egress of the WAN interfaces, and when proxied
 * bounced back into the same interface's ingress, where wan_ingress hands it to the tproxy
 * listener exactly as hijack() does for a LAN client (docs/local-routing.md says why this design).
 *
 * What the bounce has to get right:
 *   - only sockets of local processes: a forwarded packet (a LAN client's flow, already decided
 *     at LAN ingress) has no socket, so its cookie is 0 and it passes untouched; the runtime's
 *     own sockets carry so_mark_from_dae or the mark of a group(mark: N) rule
 *     (DAE_IS_RUNTIME_MARK, generated) and pass untouched too, so nothing is captured twice;
 *   - the Ethernet destination: at egress it is the next hop's MAC, and a frame re-entering an
 *     ingress for another MAC is PACKET_OTHERHOST and dropped by IP; it becomes the source MAC
 *     (the interface's own);
 *   - the mark: DAE_FWMARK, so that wan_ingress knows the packet is one it bounced (nothing on
 *     the wire carries a mark), the policy route delivers it locally and the tproxy guard lets
 *     it through;
 *   - checksums and GSO need nothing: a locally built packet is CHECKSUM_PARTIAL, which the
 *     receive path takes as verified, and a GSO packet may enter an ingress whole (as after GRO);
 *   - the source address is local: IPv4 drops it as a martian unless accept_local=1 on the
 *     interface (the datapath sets it there: runtime/datapath/sysctls.py measured this).
 */
#ifndef DAE_WAN_H
#define DAE_WAN_H

#include "common.h"
#include "hijack.h"

#ifndef BPF_F_INGRESS
#define BPF_F_INGRESS 1
#endif

static __always_inline int wan_bounce(struct __sk_buff *skb, const struct pkt *p, const struct decision *d, int l3)
{
	__u8 mac[ETH_ALEN];

	(void)p;
	(void)d;
	if (!l3) {
		if (bpf_skb_load_bytes(skb, ETH_ALEN, mac, ETH_ALEN))
			return TC_ACT_OK;
		if (bpf_skb_store_bytes(skb, 0, mac, ETH_ALEN, 0))
			return TC_ACT_OK;
	}
	skb->mark = DAE_FWMARK;
	return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}

/* Packets from the gateway's own sockets; everything else passes as it came. */
static __always_inline int wan_local_origin(struct __sk_buff *skb)
{
	if (DAE_IS_RUNTIME_MARK(skb->mark))
		return 0;
	return bpf_get_socket_cookie(skb) != 0;
}

/* The bounced packets, back at the WAN interface's ingress: to the tproxy listener. */
static __always_inline int wan_deliver(struct __sk_buff *skb, int l3)
{
	struct pkt p = {};
	struct decision d = {};

	if ((skb->mark & DAE_FWMARK) != DAE_FWMARK)
		return TC_ACT_OK;  /* from the wire */
	if (l3 ? parse_packet_l3(skb, &p) : parse_packet(skb, &p))
		return TC_ACT_OK;
	return DAE_HIJACK(skb, &p, &d);
}

SEC("tc")
int wan_ingress(struct __sk_buff *skb)
{
	return wan_deliver(skb, 0);
}

#endif /* DAE_WAN_H */
