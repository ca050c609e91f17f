/* SPDX-License-Identifier: GPL-2.0 */
/* Process names for pname(): cgroup v2 socket hooks that record which process uses a socket,
 * in the socket's own storage (sock_pname, BPF_MAP_TYPE_SK_STORAGE), so that wan_egress (a tc
 * program, which runs where no process context is reliable) can route by it (lookup_pname).
 *
 * Two names are kept per socket, both truncated to 15 bytes as the kernel truncates comm:
 *   - comm: bpf_get_current_comm(), the thread's name (the basename of what was exec'd, unless
 *     the program renamed itself with prctl(PR_SET_NAME));
 *   - exe: the basename of the task's executable (mm->exe_file), read with CO-RE relocated
 *     bpf_probe_read_kernel() (kernel >= 6.x gives cgroup programs that helper under CAP_PERFMON).
 *     For a script it names the interpreter (python3.11), for a renamed thread the binary.
 * A rule's pname(NAME) matches either. dae matches the basename of argv[0]; comm is that name
 * for every program that did not rename itself, and exe covers the ones that did.
 *
 * Hooks: connect4/6 and sendmsg4/6 only. Every socket that sends to the WAN on its own passes one
 * of them first (TCP connects; UDP connects or names its destination per datagram), so nothing
 * needs recording at socket() time, and the storage dies with the socket, so nothing needs
 * deleting at close: one program run per connect, where sock_create + connect + sock_release
 * with an LRU hash keyed by cookie took three (bench/RESULTS.md, "Local routing"). A socket
 * used by another process than the one recorded (passed across fork/exec) is recorded again.
 * A destination on loopback (127/8, ::1, ::ffff:127/104) is skipped: such a socket never sends
 * through a WAN interface, so wan_egress never asks for its process, and local IPC (a DNS stub
 * on 127.0.0.53, a database) is much of what connects on a gateway. Storing costs a storage
 * allocation per socket (and its free at close); the check costs a compare.
 * Each returns 1: they observe, never refuse.
 *
 * program.c defines the sock_pname map before including this file.
 */
#ifndef DAE_CGROUP_H
#define DAE_CGROUP_H

#include "common.h"
#include <bpf/bpf_core_read.h>

/* Just the members we read; CO-RE relocates them against the running kernel's BTF (the
 * ___dae suffix is ignored when libbpf matches the type names). */
struct qstr___dae {
	const unsigned char *name;
} __attribute__((preserve_access_index));

struct dentry___dae {
	struct qstr___dae d_name;
} __attribute__((preserve_access_index));

struct path___dae {
	struct dentry___dae *dentry;
} __attribute__((preserve_access_index));

struct file___dae {
	struct path___dae f_path;
} __attribute__((preserve_access_index));

struct mm_struct___dae {
	struct file___dae *exe_file;
} __attribute__((preserve_access_index));

struct task_struct___dae {
	struct mm_struct___dae *mm;
} __attribute__((preserve_access_index));

/* The basename of current's executable into name[16] (left as it is when there is none: kernel
 * threads have no mm). */
static __always_inline void current_exe(char name[16])
{
	struct task_struct___dae *task = (void *)bpf_get_current_task();
	struct file___dae *exe = BPF_CORE_READ(task, mm, exe_file);
	const unsigned char *s;

	if (!exe)
		return;
	s = BPF_CORE_READ(exe, f_path.dentry, d_name.name);
	if (s)
		bpf_probe_read_kernel_str(name, 16, s);
}

/* Record the current process in the socket's storage, unless it is already the one recorded
 * (a UDP socket's every datagram passes here: the common case is one storage lookup). A fresh
 * storage is zeroed, and no user process has pid 0. */
static __always_inline void record_current(struct bpf_sock *sk)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct pname_value *v;

	if (!sk)
		return;
	v = bpf_sk_storage_get(&sock_pname, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!v || v->pid == pid)
		return;
	v->comm_lo = v->comm_hi = v->exe_lo = v->exe_hi = 0;
	bpf_get_current_comm(&v->comm_lo, 16);
	current_exe((char *)&v->exe_lo);
	v->pid = pid;
}

/* 127.0.0.0/8 */
static __always_inline int loopback4(__u32 addr_be)
{
	return (bpf_ntohl(addr_be) >> 24) == 127;
}

/* ::1, or an IPv4 loopback address mapped (::ffff:127.0.0.0/104) on an IPv6 socket */
static __always_inline int loopback6(const struct bpf_sock_addr *ctx)
{
	if (ctx->user_ip6[0] || ctx->user_ip6[1])
		return 0;
	if (!ctx->user_ip6[2])
		return ctx->user_ip6[3] == bpf_htonl(1);
	return ctx->user_ip6[2] == bpf_htonl(0xffff) && loopback4(ctx->user_ip6[3]);
}

SEC("cgroup/connect4")
int pname_connect4(struct bpf_sock_addr *ctx)
{
	if (!loopback4(ctx->user_ip4))
		record_current(ctx->sk);
	return 1;
}

SEC("cgroup/connect6")
int pname_connect6(struct bpf_sock_addr *ctx)
{
	if (!loopback6(ctx))
		record_current(ctx->sk);
	return 1;
}

SEC("cgroup/sendmsg4")
int pname_sendmsg4(struct bpf_sock_addr *ctx)
{
	if (!loopback4(ctx->user_ip4))
		record_current(ctx->sk);
	return 1;
}

SEC("cgroup/sendmsg6")
int pname_sendmsg6(struct bpf_sock_addr *ctx)
{
	if (!loopback6(ctx))
		record_current(ctx->sk);
	return 1;
}

#endif /* DAE_CGROUP_H */
