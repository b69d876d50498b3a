// SPDX-License-Identifier: GPL-2.0
/*
 * smolder's kernel-side sampler: what each CPU runs, read from a software
 * cpu-clock perf event, plus the process events user space needs to map
 * those PCs (exec, exit) and to follow children when filtering by PID.
 *
 * Owns: the record layout on the EVENTS ring buffer (sampler.h), the user
 * stack walk (frame pointers now; .eh_frame tables in the next issue) and
 * the per-CPU drop counters. Loaded by profiler/src/sampler (aya).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "sampler.h"

#define PF_KTHREAD 0x00200000
/* x86_64: user addresses live in the lower canonical half. pt_regs.cs is a
 * union on 6.18, so the mode is told from the IP. */
#define USER_ADDR_LIMIT 0x0000800000000000ULL

char LICENSE[] SEC("license") = "GPL";

/* 1: only sample tgids in FILTER_PIDS (set from user space before load). */
const volatile __u8 filter_enabled = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); /* overridden from user space */
} EVENTS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);  /* tgid */
	__type(value, __u8); /* unused */
	__uint(max_entries, 16384);
} FILTER_PIDS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, SMOLDER_STAT_COUNT);
} STATS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct smolder_sample);
	__uint(max_entries, 1);
} SCRATCH SEC(".maps");

/*
 * Next issue: a per-CPU SMOLDER_UNWIND_STATE map (struct smolder_unwind_state)
 * and the unwind-table maps go here; the .eh_frame walker continues where the
 * frame-pointer walk in walk_user_stack() stops.
 */

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&STATS, &idx);

	if (v)
		*v += 1; /* per-CPU value, and no nesting on a CPU: no atomic needed */
}

static __always_inline int tgid_wanted(__u32 tgid)
{
	return !filter_enabled || bpf_map_lookup_elem(&FILTER_PIDS, &tgid);
}

/* Batch wakeups: user space polls on a timer (pitfall 6) unless the ring is
 * more than half full. */
static __always_inline __u64 wakeup_flags(void)
{
	__u64 avail = bpf_ringbuf_query(&EVENTS, BPF_RB_AVAIL_DATA);
	__u64 size = bpf_ringbuf_query(&EVENTS, BPF_RB_RING_SIZE);

	return avail > size / 2 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

struct user_frame {
	__u64 next_bp;
	__u64 ret;
};

/*
 * Frame-pointer walk from the user registers: the first frame is the IP,
 * then [bp + 8] (return address) while [bp] (the caller's bp) climbs up the
 * stack. Writes at pcs[nk ..], returns the number of user frames.
 */
static __always_inline __u32 walk_user_stack(struct smolder_sample *rec, __u32 nk, __u64 ip,
					     __u64 bp, __u32 *flags)
{
	struct user_frame frame;
	__u32 nu = 0, idx;
	int more = 1;

	if (nk > SMOLDER_MAX_KERNEL_FRAMES)
		return 0;
	if (ip == 0)
		return 0;
	rec->pcs[nk] = ip;
	nu = 1;

#pragma clang loop unroll(disable)
	for (__u32 i = 1; i < SMOLDER_MAX_USER_FRAMES; i++) {
		if (bp == 0 || bp >= USER_ADDR_LIMIT || (bp & 7)) {
			more = 0;
			break;
		}
		if (bpf_probe_read_user(&frame, sizeof(frame), (void *)bp)) {
			*flags |= SMOLDER_SAMPLE_USER_READ_FAULT;
			more = 0;
			break;
		}
		if (frame.ret == 0) {
			more = 0;
			break;
		}
		idx = nk + i;
		if (idx >= SMOLDER_MAX_FRAMES) {
			more = 0;
			break;
		}
		rec->pcs[idx] = frame.ret;
		nu = i + 1;
		/* The stack grows down: a caller's frame is above its callee's. */
		if (frame.next_bp <= bp) {
			more = 0;
			break;
		}
		bp = frame.next_bp;
	}
	if (more)
		*flags |= SMOLDER_SAMPLE_USER_TRUNCATED;
	return nu;
}

SEC("perf_event")
int smolder_sample(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	__u32 zero = 0;

	if (!tgid_wanted(tgid))
		return 0;
	count(SMOLDER_STAT_SAMPLES);

	struct smolder_sample *rec = bpf_map_lookup_elem(&SCRATCH, &zero);
	if (!rec)
		return 0;

	struct task_struct *task = bpf_get_current_task_btf();
	__u32 flags = 0, nk = 0, nu = 0;
	__u64 ip = ctx->regs.ip, bp = ctx->regs.bp;

	rec->header.event.kind = SMOLDER_EVENT_SAMPLE;
	rec->header.event.pid = tgid;
	rec->header.event.time_ns = bpf_ktime_get_boot_ns();
	rec->header.tid = (__u32)id;
	rec->header.cpu = bpf_get_smp_processor_id();
	bpf_get_current_comm(rec->header.comm, sizeof(rec->header.comm));

	if (ip >= USER_ADDR_LIMIT) {
		flags |= SMOLDER_SAMPLE_KERNEL_MODE;
		long n = bpf_get_stack(ctx, rec->pcs, SMOLDER_MAX_KERNEL_FRAMES * sizeof(__u64), 0);
		if (n < 0) {
			flags |= SMOLDER_SAMPLE_KERNEL_STACK_ERROR;
			count(SMOLDER_STAT_KERNEL_STACK_ERRORS);
		} else {
			nk = (__u64)n / sizeof(__u64);
			if (nk > SMOLDER_MAX_KERNEL_FRAMES)
				nk = SMOLDER_MAX_KERNEL_FRAMES;
		}
	}

	if (task->flags & PF_KTHREAD) {
		flags |= SMOLDER_SAMPLE_KTHREAD;
	} else {
		if (flags & SMOLDER_SAMPLE_KERNEL_MODE) {
			struct pt_regs *uregs = (struct pt_regs *)bpf_task_pt_regs(task);
			ip = uregs ? BPF_CORE_READ(uregs, ip) : 0;
			bp = uregs ? BPF_CORE_READ(uregs, bp) : 0;
		}
		nu = walk_user_stack(rec, nk, ip, bp, &flags);
		if (flags & SMOLDER_SAMPLE_USER_READ_FAULT)
			count(SMOLDER_STAT_USER_READ_FAULTS);
		if (flags & SMOLDER_SAMPLE_USER_TRUNCATED)
			count(SMOLDER_STAT_USER_TRUNCATED);
	}

	rec->header.flags = flags;
	rec->header.kernel_frames = nk;
	rec->header.user_frames = nu;

	__u64 size = sizeof(rec->header) + (__u64)(nk + nu) * sizeof(__u64);
	if (size > sizeof(*rec))
		size = sizeof(*rec);
	if (bpf_ringbuf_output(&EVENTS, rec, size, wakeup_flags()))
		count(SMOLDER_STAT_RINGBUF_FULL);
	return 0;
}

/* Follow children: a new process whose parent is sampled is sampled too.
 * Threads share their tgid and need nothing. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(smolder_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 parent_tgid = parent->tgid, child_tgid = child->tgid;
	__u8 one = 1;

	if (!filter_enabled || parent_tgid == child_tgid)
		return 0;
	if (bpf_map_lookup_elem(&FILTER_PIDS, &parent_tgid))
		bpf_map_update_elem(&FILTER_PIDS, &child_tgid, &one, BPF_ANY);
	return 0;
}

/* Raw BTF tracepoints (not tracepoint/): they need no tracefs mounted. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(smolder_exec, struct task_struct *task)
{
	__u32 tgid = task->tgid;
	struct smolder_exec_event ev = {};

	if (!tgid_wanted(tgid))
		return 0;
	ev.event.kind = SMOLDER_EVENT_EXEC;
	ev.event.pid = tgid;
	ev.event.time_ns = bpf_ktime_get_boot_ns();
	bpf_get_current_comm(ev.comm, sizeof(ev.comm));
	if (bpf_ringbuf_output(&EVENTS, &ev, sizeof(ev), wakeup_flags()))
		count(SMOLDER_STAT_EVENTS_LOST);
	return 0;
}

/* One EXIT per process: when its last thread exits (signal->live reached
 * zero), whichever thread that is. Two threads exiting at once may both see
 * zero: user space tolerates a duplicate. */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(smolder_exit, struct task_struct *task)
{
	__u32 tgid = task->tgid;
	struct smolder_exit_event ev = {};

	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	if (!tgid_wanted(tgid))
		return 0;
	ev.event.kind = SMOLDER_EVENT_EXIT;
	ev.event.pid = tgid;
	ev.event.time_ns = bpf_ktime_get_boot_ns();
	if (bpf_ringbuf_output(&EVENTS, &ev, sizeof(ev), wakeup_flags()))
		count(SMOLDER_STAT_EVENTS_LOST);
	if (filter_enabled)
		bpf_map_delete_elem(&FILTER_PIDS, &tgid);
	return 0;
}
