// Test program the verifier must reject: it dereferences a map lookup result without the
// NULL check, so the verifier complains "invalid mem access 'map_value_or_null'".
// (A hash map: since 6.x the verifier knows a constant in-range ARRAY lookup is never NULL.)
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} values SEC(".maps");

SEC("tc")
int unchecked_lookup(struct __sk_buff *skb)
{
	__u32 zero = 0;
	__u32 *v = bpf_map_lookup_elem(&values, &zero);

	return *v;
}

char LICENSE[] SEC("license") = "GPL";
