/* SPDX-License-Identifier: GPL-2.0 */
/* Process names for pname(): cgroup v2 socket hooks that record, per socket cookie, which
 * process opened or used a socket, so that wan_egress (a tc program, which runs where no
 * process context is reliable) can route by it.
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
 * Hooks: sock_create (every new socket), connect4/6 and sendmsg4/6 (a socket inherited across
 * fork/exec or created before the hooks were attached gets its user's name on first use),
 * sock_release (drop the entry). Each returns 1: they observe, never refuse.
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

/* The basename of current's executable into name[16] (zeroed when there is none: kernel
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

static __always_inline void record_current(__u64 cookie)
{
	struct pname_value v = {};

	if (!cookie)
		return;
	bpf_get_current_comm(&v.comm_lo, 16);
	current_exe((char *)&v.exe_lo);
	v.pid = bpf_get_current_pid_tgid() >> 32;
	bpf_map_update_elem(&sock_pname, &cookie, &v, BPF_ANY);
}

/* connect/sendmsg: only when the socket has no entry yet or another process uses it now (a
 * socket passed to a child); a UDP socket's every datagram passes here, so the common case is
 * one lookup. */
static __always_inline void record_if_new(__u64 cookie)
{
	const struct pname_value *v = bpf_map_lookup_elem(&sock_pname, &cookie);

	if (v && v->pid == (__u32)(bpf_get_current_pid_tgid() >> 32))
		return;
	record_current(cookie);
}

SEC("cgroup/sock_create")
int pname_sock_create(struct bpf_sock *sk)
{
	record_current(bpf_get_socket_cookie(sk));
	return 1;
}

SEC("cgroup/sock_release")
int pname_sock_release(struct bpf_sock *sk)
{
	__u64 cookie = bpf_get_socket_cookie(sk);

	bpf_map_delete_elem(&sock_pname, &cookie);
	return 1;
}

SEC("cgroup/connect4")
int pname_connect4(struct bpf_sock_addr *ctx)
{
	record_if_new(bpf_get_socket_cookie(ctx));
	return 1;
}

SEC("cgroup/connect6")
int pname_connect6(struct bpf_sock_addr *ctx)
{
	record_if_new(bpf_get_socket_cookie(ctx));
	return 1;
}

SEC("cgroup/sendmsg4")
int pname_sendmsg4(struct bpf_sock_addr *ctx)
{
	record_if_new(bpf_get_socket_cookie(ctx));
	return 1;
}

SEC("cgroup/sendmsg6")
int pname_sendmsg6(struct bpf_sock_addr *ctx)
{
	record_if_new(bpf_get_socket_cookie(ctx));
	return 1;
}

#endif /* DAE_CGROUP_H */
