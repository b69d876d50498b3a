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
#define SMOLDER_MAX_USER_FRAMES 512 /* walked with bpf_loop */
#define SMOLDER_MAX_FRAMES (SMOLDER_MAX_KERNEL_FRAMES + SMOLDER_MAX_USER_FRAMES)
#define SMOLDER_COMM_LEN 16

/* smolder_event_header.kind: every ring buffer record starts with the header. */
#define SMOLDER_EVENT_SAMPLE 1
#define SMOLDER_EVENT_EXEC 2
#define SMOLDER_EVENT_EXIT 3
#define SMOLDER_EVENT_STACK_COPY 4 /* debug: the user stack of a sample, copied */
#define SMOLDER_EVENT_OFF_CPU 5 /* a sample record: a thread blocked for header.value ns */

/* smolder_sample_header.flags */
#define SMOLDER_SAMPLE_KERNEL_MODE (1u << 0)       /* interrupted kernel mode: user regs from task_pt_regs */
#define SMOLDER_SAMPLE_KTHREAD (1u << 1)           /* kernel thread: no user stack */
#define SMOLDER_SAMPLE_USER_TRUNCATED (1u << 2)    /* user walk hit SMOLDER_MAX_USER_FRAMES */
#define SMOLDER_SAMPLE_USER_READ_FAULT (1u << 3)   /* user walk stopped: [fp] unreadable */
#define SMOLDER_SAMPLE_KERNEL_STACK_ERROR (1u << 4) /* bpf_get_stack failed */
#define SMOLDER_SAMPLE_USER_UNKNOWN_MAPPING (1u << 5) /* a PC in no loaded mapping: partial, user space loads the process */
#define SMOLDER_SAMPLE_USER_NO_UNWIND_INFO (1u << 6)  /* user walk stopped: no usable unwind row, or no progress */
#define SMOLDER_SAMPLE_USER_COMPLETE (1u << 7)        /* user walk reached the outermost frame */
#define SMOLDER_SAMPLE_USER_TABLE_MISSING (1u << 8)   /* a mapping's table was evicted: partial, user space reloads */
#define SMOLDER_SAMPLE_USER_NEW_FILE (1u << 9)        /* the unknown PC lies in an executable file mapping the walker lacks (a library loaded since): user space reloads at once */

/* Indexes of the per-CPU STATS array (__u64 counters). */
#define SMOLDER_STAT_SAMPLES 0          /* perf_event runs that passed the PID filter */
#define SMOLDER_STAT_RINGBUF_FULL 1     /* sample records lost: bpf_ringbuf_output failed */
#define SMOLDER_STAT_USER_READ_FAULTS 2 /* user walks stopped on a read fault */
#define SMOLDER_STAT_USER_TRUNCATED 3   /* user walks that hit the frame limit */
#define SMOLDER_STAT_KERNEL_STACK_ERRORS 4
#define SMOLDER_STAT_EVENTS_LOST 5      /* exec/exit records lost: ring buffer full */
#define SMOLDER_STAT_USER_UNKNOWN_MAPPING 6 /* samples with SMOLDER_SAMPLE_USER_UNKNOWN_MAPPING */
#define SMOLDER_STAT_USER_NO_UNWIND_INFO 7  /* samples with SMOLDER_SAMPLE_USER_NO_UNWIND_INFO */
#define SMOLDER_STAT_USER_TABLE_MISSING 8   /* samples with SMOLDER_SAMPLE_USER_TABLE_MISSING */
#define SMOLDER_STAT_TABLE_FRAMES 9         /* user frames unwound with a table row */
#define SMOLDER_STAT_FP_FRAMES 10           /* user frames unwound with the frame pointer */
#define SMOLDER_STAT_STACK_COPIES_LOST 11   /* debug stack copies lost: ring buffer full */
/* Off-CPU: switch-outs of sampled threads that blocked (not preemptions),
 * those left out by the recording probability, those that ran again before
 * the minimum blocked time, those recorded, and records lost (ring full). */
#define SMOLDER_STAT_OFF_CPU_SWITCHES 12
#define SMOLDER_STAT_OFF_CPU_SKIPPED_PROBABILITY 13
#define SMOLDER_STAT_OFF_CPU_SKIPPED_SHORT 14
#define SMOLDER_STAT_OFF_CPU_RECORDED 15
#define SMOLDER_STAT_OFF_CPU_LOST 16
/* Waits whose thread was back in user space with other registers than it
 * blocked with before its next system call returned (it blocked outside a
 * system call, e.g. in a page fault): its stack is unknown, not recorded. */
#define SMOLDER_STAT_OFF_CPU_UNMATCHED 17
/* exec/exit records lost on PROC_EVENTS (the prefetcher's ring): full */
#define SMOLDER_STAT_PREFETCH_EVENTS_LOST 18
#define SMOLDER_STAT_COUNT 19

struct smolder_event_header {
	__u32 kind; /* SMOLDER_EVENT_* */
	__u32 pid;  /* tgid */
	__u64 time_ns; /* bpf_ktime_get_boot_ns(): CLOCK_BOOTTIME */
};

/*
 * A SAMPLE or OFF_CPU record on the ring buffer is this header followed by
 * kernel_frames kernel PCs (leaf first), then user_frames user PCs (leaf
 * first, the first one is the user IP): 56 + 8 * (kernel_frames +
 * user_frames) bytes. Only the used length is sent. An OFF_CPU record's
 * event.time_ns is when the thread was switched out and value how long it
 * stayed off the CPU (ns, not scaled by the recording probability).
 */
struct smolder_sample_header {
	struct smolder_event_header event;
	__u32 tid;
	__u32 cpu;
	__u32 flags; /* SMOLDER_SAMPLE_* */
	__u16 kernel_frames;
	__u16 user_frames;
	char comm[SMOLDER_COMM_LEN];
	__u64 value; /* OFF_CPU: ns off the CPU; SAMPLE: 0 */
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
 * Unwind tables (built in user space from .eh_frame by profiler/src/unwind,
 * mirrored there as UnwindRow). One row per PC range of one binary: the rule
 * holds from pc (an ELF virtual address: runtime PC - load bias) to the next
 * row's pc. The return address is always at CFA - 8.
 */
#define SMOLDER_CFA_INVALID 0 /* no rule the walker follows: stop */
#define SMOLDER_CFA_SP 1      /* CFA = sp + cfa_offset */
#define SMOLDER_CFA_FP 2      /* CFA = bp + cfa_offset */
#define SMOLDER_CFA_PLT 3     /* CFA = sp + cfa_offset + ((ip & 15) >= fp_offset ? 8 : 0) */
#define SMOLDER_CFA_END 4     /* outermost frame: the stack is complete */

#define SMOLDER_FP_SAME 0   /* the caller's bp is the current bp */
#define SMOLDER_FP_AT_CFA 1 /* the caller's bp is at CFA + fp_offset */

struct smolder_unwind_row {
	__u64 pc;
	__s32 cfa_offset;
	__s16 fp_offset;
	__u8 cfa_type; /* SMOLDER_CFA_* */
	__u8 fp_type;  /* SMOLDER_FP_* */
};

/* UNWIND_TABLES[id]: where table id's rows sit in UNWIND_ROWS. Id 0 is never
 * used (a mapping with table_id 0 is walked with frame pointers). A table
 * is live while row_count > 0 and its generation matches the mapping's. */
#define SMOLDER_MAX_TABLES 4096
struct smolder_unwind_table {
	__u32 row_start;
	__u32 row_count;
	__u32 generation;
	__u32 _pad;
	__u64 last_used_ns; /* written by the walker: what eviction looks at */
};

/* PROC_MAPPINGS[tgid]: the executable mappings of one process, sorted by
 * start, non-overlapping. */
#define SMOLDER_MAX_MAPPINGS 256
struct smolder_mapping {
	__u64 start;
	__u64 end;
	__u64 bias; /* runtime address - ELF virtual address */
	__u32 table_id;
	__u32 generation;
};

struct smolder_proc_mappings {
	__u32 count;
	__u32 _pad;
	struct smolder_mapping mappings[SMOLDER_MAX_MAPPINGS];
};

/*
 * STACK_COPY (debug, one process chosen at load): the user registers and
 * stack of a sample, sent right after its SAMPLE record with the same tid
 * and time, so user space can walk the same stack and compare. The record
 * always has SMOLDER_STACK_COPY_BYTES of stack room; len bytes are valid.
 */
#define SMOLDER_STACK_COPY_BYTES 65536
struct smolder_stack_copy {
	struct smolder_event_header event;
	__u32 tid;
	__u32 len;
	__u64 ip;
	__u64 sp;
	__u64 bp;
	__u8 stack[SMOLDER_STACK_COPY_BYTES];
};

#endif /* SMOLDER_SAMPLER_H */
