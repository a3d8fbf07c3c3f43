// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only)
/*
 * verdict's kernel-side probes. Built by probes/build.rs with
 *   clang -target bpf -D__TARGET_ARCH_x86 -O2 -g -I probes/bpf -c verdict.bpf.c
 * and loaded by aya (probes/src/lib.rs). Every program only updates per-CPU maps; user space
 * (the control thread) reads them. Groups (see lib.rs): runqueue, io_uring, tcp_retransmit,
 * softirq, syscalls. Each program is loaded and attached separately from Rust, so a missing
 * tracepoint disables only its group.
 *
 * Map layouts are mirrored in lib.rs: keep them in sync.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define LOG2_BUCKETS 40
#define MAX_THREADS 16384
#define TASK_RUNNING 0

/* The process whose threads we follow; patched at load time (EbpfLoader::override_global). */
const volatile __u32 target_tgid = 0;

struct log2_hist {
	__u64 slots[LOG2_BUCKETS];
};

struct iou_stats {
	__u64 submits;
	__u64 completions;
};

struct softirq_stats {
	__u64 ns;
	__u64 count;
};

/* ---- runqueue ---------------------------------------------------------------------------- */

/* thread id -> ktime (ns) when it became runnable (woken or preempted). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_THREADS);
	__type(key, __u32);
	__type(value, __u64);
} runq_start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct log2_hist);
} runq_hist SEC(".maps");

/* ---- io_uring ---------------------------------------------------------------------------- */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct iou_stats);
} iou_counts SEC(".maps");

/* ---- tcp_retransmit ---------------------------------------------------------------------- */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} tcp_retx SEC(".maps");

/* ---- softirq ----------------------------------------------------------------------------- */

/* Per-CPU entry time of the softirq running now (softirqs do not nest on one CPU). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} softirq_start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct softirq_stats);
} softirq_time SEC(".maps");

/* ---- syscalls (opt-in) ------------------------------------------------------------------- */

/* thread id -> ktime (ns) at syscall entry. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_THREADS);
	__type(key, __u32);
	__type(value, __u64);
} sys_start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct log2_hist);
} sys_hist SEC(".maps");

/* ---- helpers ----------------------------------------------------------------------------- */

/* floor(log2(v)) for v >= 2, 0 for v <= 1, capped at LOG2_BUCKETS - 1. */
static __always_inline __u32 log2_bucket(__u64 v)
{
	__u32 r = 0, shift;

	shift = (v > 0xFFFFFFFFULL) << 5;
	v >>= shift;
	r |= shift;
	shift = (v > 0xFFFF) << 4;
	v >>= shift;
	r |= shift;
	shift = (v > 0xFF) << 3;
	v >>= shift;
	r |= shift;
	shift = (v > 0xF) << 2;
	v >>= shift;
	r |= shift;
	shift = (v > 0x3) << 1;
	v >>= shift;
	r |= shift;
	r |= (__u32)(v >> 1);
	if (r > LOG2_BUCKETS - 1)
		r = LOG2_BUCKETS - 1;
	return r;
}

static __always_inline void hist_add(void *map, __u64 delta_ns)
{
	__u32 zero = 0;
	struct log2_hist *h = bpf_map_lookup_elem(map, &zero);
	__u32 b = log2_bucket(delta_ns);

	if (!h || b >= LOG2_BUCKETS)
		return;
	/* Atomic even though per-CPU: a preemptible program (syscall tracepoints are faultable
	 * since 6.13) can be interrupted by another instance on the same CPU. */
	__sync_fetch_and_add(&h->slots[b], 1);
}

static __always_inline int is_target(const struct task_struct *t)
{
	return target_tgid != 0 && BPF_CORE_READ(t, tgid) == (int)target_tgid;
}

static __always_inline void runq_mark(const struct task_struct *t)
{
	__u32 tid = BPF_CORE_READ(t, pid);
	__u64 now = bpf_ktime_get_ns();

	bpf_map_update_elem(&runq_start, &tid, &now, BPF_ANY);
}

/* ---- runqueue programs ------------------------------------------------------------------- */

SEC("tp_btf/sched_wakeup")
int BPF_PROG(verdict_sched_wakeup, struct task_struct *p)
{
	if (is_target(p))
		runq_mark(p);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(verdict_sched_wakeup_new, struct task_struct *p)
{
	if (is_target(p))
		runq_mark(p);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(verdict_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	/* prev was preempted but is still runnable: its wait starts now. */
	if (is_target(prev) && BPF_CORE_READ(prev, __state) == TASK_RUNNING)
		runq_mark(prev);

	if (!is_target(next))
		return 0;

	__u32 tid = BPF_CORE_READ(next, pid);
	__u64 *ts = bpf_map_lookup_elem(&runq_start, &tid);
	if (!ts)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 start = *ts;
	bpf_map_delete_elem(&runq_start, &tid);
	if (now >= start)
		hist_add(&runq_hist, now - start);
	return 0;
}

/* ---- io_uring programs ------------------------------------------------------------------- */

static __always_inline struct iou_stats *iou_mine(void)
{
	__u32 zero = 0;

	if (target_tgid == 0 || (bpf_get_current_pid_tgid() >> 32) != target_tgid)
		return 0;
	return bpf_map_lookup_elem(&iou_counts, &zero);
}

SEC("tp_btf/io_uring_submit_req")
int BPF_PROG(verdict_io_uring_submit_req)
{
	struct iou_stats *s = iou_mine();

	if (s)
		__sync_fetch_and_add(&s->submits, 1);
	return 0;
}

SEC("tp_btf/io_uring_complete")
int BPF_PROG(verdict_io_uring_complete)
{
	struct iou_stats *s = iou_mine();

	if (s)
		__sync_fetch_and_add(&s->completions, 1);
	return 0;
}

/* ---- tcp_retransmit program (host-wide) -------------------------------------------------- */

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(verdict_tcp_retransmit_skb)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&tcp_retx, &zero);

	if (n)
		__sync_fetch_and_add(n, 1);
	return 0;
}

/* ---- softirq programs (host-wide) -------------------------------------------------------- */

SEC("tp_btf/softirq_entry")
int BPF_PROG(verdict_softirq_entry, unsigned int vec_nr)
{
	__u32 zero = 0;
	__u64 *start = bpf_map_lookup_elem(&softirq_start, &zero);

	if (start)
		*start = bpf_ktime_get_ns();
	return 0;
}

SEC("tp_btf/softirq_exit")
int BPF_PROG(verdict_softirq_exit, unsigned int vec_nr)
{
	__u32 zero = 0;
	__u64 *start = bpf_map_lookup_elem(&softirq_start, &zero);
	struct softirq_stats *s = bpf_map_lookup_elem(&softirq_time, &zero);

	/* start == 0: the probe was attached while this softirq was already running. */
	if (!start || !s || *start == 0)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	if (now >= *start) {
		__sync_fetch_and_add(&s->ns, now - *start);
		__sync_fetch_and_add(&s->count, 1);
	}
	*start = 0;
	return 0;
}

/* ---- syscalls programs (opt-in, target process only) ------------------------------------- */

SEC("tp_btf/sys_enter")
int BPF_PROG(verdict_sys_enter)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (target_tgid == 0 || (id >> 32) != target_tgid)
		return 0;
	__u32 tid = (__u32)id;
	__u64 now = bpf_ktime_get_ns();
	bpf_map_update_elem(&sys_start, &tid, &now, BPF_ANY);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(verdict_sys_exit)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (target_tgid == 0 || (id >> 32) != target_tgid)
		return 0;
	__u32 tid = (__u32)id;
	__u64 *ts = bpf_map_lookup_elem(&sys_start, &tid);
	if (!ts)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 start = *ts;
	bpf_map_delete_elem(&sys_start, &tid);
	if (now >= start)
		hist_add(&sys_hist, now - start);
	return 0;
}

/* The kernel needs a GPL-compatible licence string: BPF_CORE_READ uses bpf_probe_read_kernel
 * (GPL-only). This file is dual licensed (SPDX line at the top); "GPL" names the GPL side. */
char LICENSE[] SEC("license") = "GPL";
