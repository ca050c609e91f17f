// Trivial tc program for the datapath tests. It only needs to load as
// BPF_PROG_TYPE_SCHED_CLS and let every packet through, so attaching,
// replacing and detaching it never disturbs the test network.
// Built twice: -DVARIANT_B gives a program with different instructions, so a
// replace is observable as a different program (id and tag) on the filter.
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("tc")
int pass(struct __sk_buff *skb)
{
#ifdef VARIANT_B
	if (skb->len == 0)
		return TC_ACT_UNSPEC;
#endif
	return TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
