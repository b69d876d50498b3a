/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * The one declaration of every record and map value shared by
 * sampler.bpf.c and its Rust mirror, profiler/src/sampler/raw.rs.
 * Changing anything here means changing raw.rs (its size and offset
 * assertions catch a mismatch) and rebuilding sampler.bpf.o (build.sh).
 *
 * Types carry the smolder_ prefix so that they never clash with vmlinux.h.
 * Only fixed-width types; every struct is a multiple of 8 bytes with
 * explicit padding, so C and Rust agree on the layout.
 */
#ifndef SMOLDER_SAMPLER_H
#define SMOLDER_SAMPLER_H

#define SMOLDER_MAX_KERNEL_FRAMES 127 /* PERF_MAX_STACK_DEPTH default */
#define SMOLDER_MAX_USER_FRAMES 127
#define SMOLDER_MAX_FRAMES (SMOLDER_MAX_KERNEL_FRAMES + SMOLDER_MAX_USER_FRAMES)
#define SMOLDER_COMM_LEN 16

/* smolder_event_header.kind: every ring buffer record starts with the header. */
#define SMOLDER_EVENT_SAMPLE 1
#define SMOLDER_EVENT_EXEC 2
#define SMOLDER_EVENT_EXIT 3

/* smolder_sample_header.flags */
#define SMOLDER_SAMPLE_KERNEL_MODE (1u << 0)       /* interrupted kernel mode: user regs from task_pt_regs */
#define SMOLDER_SAMPLE_KTHREAD (1u << 1)           /* kernel thread: no user stack */
#define SMOLDER_SAMPLE_USER_TRUNCATED (1u << 2)    /* user walk hit SMOLDER_MAX_USER_FRAMES */
#define SMOLDER_SAMPLE_USER_READ_FAULT (1u << 3)   /* user walk stopped: [fp] unreadable */
#define SMOLDER_SAMPLE_KERNEL_STACK_ERROR (1u << 4) /* bpf_get_stack failed */

/* Indexes of the per-CPU STATS array (__u64 counters). */
#define SMOLDER_STAT_SAMPLES 0          /* perf_event runs that passed the PID filter */
#define SMOLDER_STAT_RINGBUF_FULL 1     /* sample records lost: bpf_ringbuf_output failed */
#define SMOLDER_STAT_USER_READ_FAULTS 2 /* user walks stopped on a read fault */
#define SMOLDER_STAT_USER_TRUNCATED 3   /* user walks that hit the frame limit */
#define SMOLDER_STAT_KERNEL_STACK_ERRORS 4
#define SMOLDER_STAT_EVENTS_LOST 5      /* exec/exit records lost: ring buffer full */
#define SMOLDER_STAT_COUNT 6

struct smolder_event_header {
	__u32 kind; /* SMOLDER_EVENT_* */
	__u32 pid;  /* tgid */
	__u64 time_ns; /* bpf_ktime_get_boot_ns(): CLOCK_BOOTTIME */
};

/*
 * A SAMPLE record on the ring buffer is this header followed by
 * kernel_frames kernel PCs (leaf first), then user_frames user PCs (leaf
 * first, the first one is the user IP): 48 + 8 * (kernel_frames +
 * user_frames) bytes. Only the used length is sent.
 */
struct smolder_sample_header {
	struct smolder_event_header event;
	__u32 tid;
	__u32 cpu;
	__u32 flags; /* SMOLDER_SAMPLE_* */
	__u16 kernel_frames;
	__u16 user_frames;
	char comm[SMOLDER_COMM_LEN];
};

/* The per-CPU scratch record the sample is assembled in. */
struct smolder_sample {
	struct smolder_sample_header header;
	__u64 pcs[SMOLDER_MAX_FRAMES];
};

/* EXEC: the process image changed (user space re-reads /proc/PID/maps). */
struct smolder_exec_event {
	struct smolder_event_header event;
	char comm[SMOLDER_COMM_LEN];
};

/* EXIT: the last thread of the process exited; only the header. */
struct smolder_exit_event {
	struct smolder_event_header event;
};

/*
 * Reserved for the .eh_frame unwinder (next issue): the walker state kept in
 * a per-CPU map between the steps of a bpf_loop, so that frames without a
 * frame pointer can be unwound from CFA rules looked up in tables loaded
 * from user space. Not used yet.
 */
struct smolder_unwind_state {
	__u64 ip;
	__u64 sp;
	__u64 bp;
	__u64 cfa;
	__u32 frames;
	__u32 flags;
};

#endif /* SMOLDER_SAMPLER_H */
