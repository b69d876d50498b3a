// SPDX-License-Identifier: GPL-2.0
/*
 * smolder's kernel-side sampler: what each CPU runs, read from a software
 * cpu-clock perf event, plus the process events user space needs to map
 * those PCs (exec, exit) and to follow children when filtering by PID.
 *
 * Owns: the record layout on the EVENTS ring buffer (sampler.h), the user
 * stack walk (per frame: the .eh_frame-derived table row of the PC's
 * mapping when user space loaded one, the frame pointer otherwise) and the
 * per-CPU counters. Loaded by profiler/src/sampler (aya), which also fills
 * the unwind maps (profiler/src/sampler/unwinder.rs).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "sampler.h"
#include "python.h"

#define PF_KTHREAD 0x00200000
/* x86_64: user addresses live in the lower canonical half. pt_regs.cs is a
 * union on 6.18, so the mode is told from the IP. */
#define USER_ADDR_LIMIT 0x0000800000000000ULL

char LICENSE[] SEC("license") = "GPL";

/* 1: only sample tgids in FILTER_PIDS (set from user space before load). */
const volatile __u8 filter_enabled = 0;
/* Debug: also send a STACK_COPY record for every sample of this tgid. */
const volatile __u32 stack_copy_tgid = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); /* overridden from user space */
} EVENTS SEC(".maps");

/* Exec and exit events again, on their own small ring that user space reads
 * at once (each record wakes it up): the process prefetcher reads a new
 * image's mappings and opens its files while the process lives, however far
 * behind the EVENTS reader is (profiler/src/sampler/prefetch.rs). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 16);
} PROC_EVENTS SEC(".maps");

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

/* Rows of every loaded table; max_entries is set from user space (the table
 * memory cap). Memory-mapped by user space, which writes rows in place. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct smolder_unwind_row);
	__uint(max_entries, 1);
} UNWIND_ROWS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct smolder_unwind_table);
	__uint(max_entries, SMOLDER_MAX_TABLES);
} UNWIND_TABLES SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32); /* tgid */
	__type(value, struct smolder_proc_mappings);
	__uint(max_entries, 16384);
} PROC_MAPPINGS SEC(".maps");

static __always_inline void count_n(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&STATS, &idx);

	if (v)
		*v += n; /* per-CPU value, and no nesting on a CPU: no atomic needed */
}

static __always_inline void count(__u32 idx)
{
	count_n(idx, 1);
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

/* The walker's state between bpf_loop steps (on the program's stack). */
struct walk_ctx {
	struct smolder_sample *rec;
	struct smolder_proc_mappings *maps; /* NULL: the process is not loaded */
	__u64 ip;
	__u64 sp;
	__u64 bp;
	__u64 now;
	__u32 nk;
	__u32 nu; /* set when the walk is over (during it: rec->header.user_frames) */
	__u32 flags;
	__u32 past_leaf; /* 1 once a native frame was stepped: the first one is the leaf
			  * (not a count: the verifier would follow the walk once per value) */
	struct python_walk py;
};

/*
 * The two binary searches run as bpf_loop callbacks too: as plain loops the
 * verifier follows every path through them with exact indexes and gives up
 * (1M instructions); a callback is verified once.
 */
struct mapping_search {
	struct smolder_proc_mappings *pm;
	__u64 pc;
	__u32 lo; /* ends as the number of mappings starting at or below pc */
	__u32 hi;
};

static long mapping_search_step(__u32 i, void *data)
{
	struct mapping_search *s = data;
	struct smolder_proc_mappings *pm = s->pm;
	__u32 mid;

	if (!pm || s->lo >= s->hi)
		return 1;
	mid = (s->lo + s->hi) / 2;
	if (mid >= SMOLDER_MAX_MAPPINGS)
		return 1;
	if (pm->mappings[mid].start <= s->pc)
		s->lo = mid + 1;
	else
		s->hi = mid;
	return 0;
}

/* The mapping holding pc, from the process's sorted mappings. */
static __always_inline struct smolder_mapping *find_mapping(struct smolder_proc_mappings *pm,
							     __u64 pc)
{
	struct mapping_search s = { .pm = pm, .pc = pc, .lo = 0, .hi = pm->count };
	__u32 i;

	if (s.hi > SMOLDER_MAX_MAPPINGS)
		s.hi = SMOLDER_MAX_MAPPINGS;
	bpf_loop(9, mapping_search_step, &s, 0);
	if (s.lo == 0)
		return NULL;
	i = s.lo - 1;
	if (i >= SMOLDER_MAX_MAPPINGS)
		return NULL;
	return pc < pm->mappings[i].end ? &pm->mappings[i] : NULL;
}

/* The last row with row.pc <= svma in [lo, lo + n): each step halves n. */
struct row_search {
	__u64 svma;
	__u32 lo;
	__u32 n;
	__u32 failed;
	__u32 _pad;
};

static long row_search_step(__u32 i, void *data)
{
	struct row_search *s = data;
	struct smolder_unwind_row *row;
	__u32 half, mid;

	if (s->n <= 1)
		return 1;
	half = s->n / 2;
	mid = s->lo + half;
	row = bpf_map_lookup_elem(&UNWIND_ROWS, &mid);
	if (!row) {
		s->failed = 1;
		return 1;
	}
	if (row->pc <= s->svma) {
		s->lo = mid;
		s->n -= half;
	} else {
		s->n = half;
	}
	return 0;
}

/* 24 halvings cover 16M rows per table. */
static __always_inline struct smolder_unwind_row *find_row(struct smolder_unwind_table *t,
							    __u64 svma)
{
	struct row_search s = { .svma = svma, .lo = t->row_start, .n = t->row_count };
	struct smolder_unwind_row *row;
	__u32 lo;

	bpf_loop(24, row_search_step, &s, 0);
	if (s.failed)
		return NULL;
	lo = s.lo;
	row = bpf_map_lookup_elem(&UNWIND_ROWS, &lo);
	if (!row || row->pc > svma)
		return NULL;
	return row;
}

static __always_inline int read_user_u64(__u64 *dst, __u64 addr)
{
	return bpf_probe_read_user(dst, sizeof(*dst), (void *)addr);
}

/* One frame-pointer step: [bp] is the caller's bp, [bp + 8] the return
 * address. Returns 1 when the walk ends. */
static __always_inline long fp_step(struct walk_ctx *c)
{
	__u64 next_bp, ra;

	if (c->bp == 0) {
		c->flags |= SMOLDER_SAMPLE_USER_COMPLETE;
		return 1;
	}
	if ((c->bp & 7) || c->bp >= USER_ADDR_LIMIT || c->bp < c->sp) {
		c->flags |= SMOLDER_SAMPLE_USER_NO_UNWIND_INFO;
		return 1;
	}
	if (read_user_u64(&next_bp, c->bp) || read_user_u64(&ra, c->bp + 8)) {
		c->flags |= SMOLDER_SAMPLE_USER_READ_FAULT;
		return 1;
	}
	c->ip = ra;
	c->sp = c->bp + 16;
	c->bp = next_bp;
	count(SMOLDER_STAT_FP_FRAMES);
	return 0;
}

/* One step by a table row. Returns 1 when the walk ends. */
static __always_inline long table_step(struct walk_ctx *c, struct smolder_unwind_row *row)
{
	__u64 cfa, ra, bp = c->bp;

	switch (row->cfa_type) {
	case SMOLDER_CFA_SP:
		cfa = c->sp + (__s64)row->cfa_offset;
		break;
	case SMOLDER_CFA_FP:
		cfa = c->bp + (__s64)row->cfa_offset;
		break;
	case SMOLDER_CFA_PLT:
		cfa = c->sp + (__s64)row->cfa_offset + (((c->ip & 15) >= (__u64)row->fp_offset) ? 8 : 0);
		break;
	case SMOLDER_CFA_END:
		c->flags |= SMOLDER_SAMPLE_USER_COMPLETE;
		return 1;
	default:
		c->flags |= SMOLDER_SAMPLE_USER_NO_UNWIND_INFO;
		return 1;
	}
	if (cfa <= c->sp || cfa >= USER_ADDR_LIMIT) {
		c->flags |= SMOLDER_SAMPLE_USER_NO_UNWIND_INFO;
		return 1;
	}
	if (read_user_u64(&ra, cfa - 8)) {
		c->flags |= SMOLDER_SAMPLE_USER_READ_FAULT;
		return 1;
	}
	if (row->fp_type == SMOLDER_FP_AT_CFA && row->cfa_type != SMOLDER_CFA_PLT &&
	    read_user_u64(&bp, cfa + (__s64)row->fp_offset)) {
		c->flags |= SMOLDER_SAMPLE_USER_READ_FAULT;
		return 1;
	}
	c->ip = ra;
	c->sp = cfa;
	c->bp = bp;
	count(SMOLDER_STAT_TABLE_FRAMES);
	return 0;
}

/*
 * One user frame (a bpf_loop callback): record the PC, then find the
 * caller's registers, with the table of the PC's mapping if it has one and
 * by the frame pointer otherwise. Mirrored step for step by
 * profiler/src/unwind/walk.rs (the test oracle). Returns 1 to stop.
 */
static __always_inline long unwind_step_body(void *data, const int python)
{
	struct walk_ctx *c = data;
	struct smolder_sample *rec = c->rec;
	struct smolder_mapping *m = NULL;
	struct smolder_unwind_table *t;
	struct smolder_unwind_row *row;
	__u32 idx, table_id, nu;
	__u64 lookup, frame;
	int py;

	if (!rec)
		return 1;
	if (c->ip == 0) {
		c->flags |= SMOLDER_SAMPLE_USER_COMPLETE;
		return 1;
	}
	/* A return address points after its call: look up the call. */
	lookup = c->past_leaf ? c->ip - 1 : c->ip;
	/* An interpreter's eval frame: its Python frames in its place. */
	frame = c->ip;
	py = python ? python_step(&c->py, lookup, &frame) : PY_NATIVE;
	if (py != PY_REPLACED) {
		/* The count lives in the record (map memory), not in c: there
		 * the verifier would know its exact value at each step and
		 * follow the walk once per value. */
		nu = rec->header.user_frames;
		idx = c->nk + nu;
		if (idx >= SMOLDER_MAX_FRAMES)
			return 1;
		rec->pcs[idx] = frame;
		rec->header.user_frames = ++nu;
		if (nu >= SMOLDER_MAX_USER_FRAMES) {
			c->flags |= SMOLDER_SAMPLE_USER_TRUNCATED;
			return 1;
		}
		if (py == PY_EMITTED)
			return 0;
	}
	c->past_leaf = 1;
	if (c->maps)
		m = find_mapping(c->maps, lookup);
	if (!m) {
		c->flags |= SMOLDER_SAMPLE_USER_UNKNOWN_MAPPING;
		return fp_step(c);
	}
	table_id = m->table_id;
	if (table_id == 0)
		return fp_step(c);
	t = bpf_map_lookup_elem(&UNWIND_TABLES, &table_id);
	if (!t || t->row_count == 0 || t->generation != m->generation) {
		c->flags |= SMOLDER_SAMPLE_USER_TABLE_MISSING;
		return fp_step(c);
	}
	t->last_used_ns = c->now;
	row = find_row(t, lookup - m->bias);
	/* Code the table does not cover (a gap between FDEs: hand-written or
	 * generated code such as V8's embedded builtins): by frame pointer,
	 * back to the table at the next PC it covers. */
	if (!row || row->cfa_type == SMOLDER_CFA_INVALID)
		return fp_step(c);
	return table_step(c, row);
}

/* The walk with Python frames (on-CPU samples) and without (off-CPU
 * samples: the verifier's complexity limit leaves no room for both there):
 * two callbacks, so that the native one has no Python code at all. */
static long unwind_step(__u32 i, void *data)
{
	return unwind_step_body(data, 1);
}

static long unwind_step_native(__u32 i, void *data)
{
	return unwind_step_body(data, 0);
}

#define VM_EXEC 0x00000004

/* bpf_find_vma callback: is the VMA an executable file mapping? */
static long file_exec_vma(struct task_struct *task, struct vm_area_struct *vma, void *data)
{
	__u32 *found = data;

	*found = vma->vm_file && (vma->vm_flags & VM_EXEC);
	return 0;
}

/* One recorded user frame, leaf first (a bpf_loop callback): at the first
 * one in no loaded mapping, ask whether it lies in an executable file
 * mapping, and stop. */
static long new_file_step(__u32 i, void *data)
{
	struct walk_ctx *c = data;
	struct smolder_sample *rec = c->rec;
	__u32 idx = c->nk + i, found = 0;
	__u64 pc;

	if (!rec || i >= c->nu || idx >= SMOLDER_MAX_FRAMES)
		return 1;
	pc = rec->pcs[idx];
	/* Python frames (tagged, above user addresses) have no mapping. */
	if (pc == 0 || pc >= USER_ADDR_LIMIT)
		return 0;
	if (i > 0)
		pc--; /* a return address: its call */
	if (c->maps && find_mapping(c->maps, pc))
		return 0;
	if (bpf_find_vma(bpf_get_current_task_btf(), pc, file_exec_vma, &found, 0) == 0 && found)
		c->flags |= SMOLDER_SAMPLE_USER_NEW_FILE;
	return 1;
}

/*
 * After a walk that met a PC in no loaded mapping (a bpf_loop callback run
 * once, so that the verifier does not follow it again after every way out
 * of the walk's loop; the frames are scanned again here rather than the PC
 * kept during the walk, where any added state multiplies the verifier's
 * work): is the first such PC in an executable file mapping, a library
 * loaded since the process's mappings were last read, every sample in it
 * partial until they are read again, rather than a bad return address or
 * anonymous code? Not when the mappings are full (SMOLDER_MAX_MAPPINGS):
 * reading them again would not add it.
 */
static long check_new_file(__u32 i, void *data)
{
	struct walk_ctx *c = data;

	if (!(c->flags & SMOLDER_SAMPLE_USER_UNKNOWN_MAPPING) ||
	    (c->maps && c->maps->count >= SMOLDER_MAX_MAPPINGS))
		return 1;
	bpf_loop(SMOLDER_MAX_USER_FRAMES, new_file_step, c, 0);
	return 1;
}

/* Walks the user stack from (ip, sp, bp), writing PCs at pcs[nk ..];
 * Python frames only with `python` (a constant at each call site: without
 * it the verifier prunes the Python walk, which the off-CPU program cannot
 * afford within the verifier's complexity limit). */
static __always_inline __u32 walk_user_stack(struct smolder_sample *rec, struct task_struct *task,
					     __u32 tgid, __u32 nk, __u64 ip, __u64 sp, __u64 bp,
					     __u32 *flags, const int python)
{
	struct walk_ctx c = {
		.rec = rec,
		.maps = bpf_map_lookup_elem(&PROC_MAPPINGS, &tgid),
		.ip = ip,
		.sp = sp,
		.bp = bp,
		.nk = nk,
	};

	if (nk > SMOLDER_MAX_KERNEL_FRAMES)
		return 0;
	c.now = bpf_ktime_get_ns();
	/*
	 * The walk's state starts from values the verifier does not know
	 * (user_frames, written and read back through map memory): the
	 * verifier of kernels without "verify callbacks as if they are called
	 * unknown number of times" (Debian's 6.1) checks the loop's callback
	 * once, from the state of its first call, and removed as dead code
	 * what a known 0 there never reaches, such as the branch that puts
	 * an eval frame's Python frames in its place: every stack showed
	 * _PyEval_EvalFrameDefault.
	 */
	rec->header.user_frames = 0;
	c.past_leaf = rec->header.user_frames;
	if (python) {
		python_begin(&c.py, task, tgid, &rec->header.user_frames);
		bpf_loop(SMOLDER_MAX_USER_FRAMES, unwind_step, &c, 0);
	} else {
		bpf_loop(SMOLDER_MAX_USER_FRAMES, unwind_step_native, &c, 0);
	}
	c.nu = rec->header.user_frames;
	bpf_loop(1, check_new_file, &c, 0);
	*flags |= c.flags;
	return c.nu;
}

struct stack_copy_args {
	__u64 time_ns;
	__u64 ip;
	__u64 sp;
	__u64 bp;
	__u32 tgid;
	__u32 tid;
};

/* Debug: send the user stack from sp (up to SMOLDER_STACK_COPY_BYTES, less
 * near the top of the stack) with the registers the walk started from. A
 * bpf_loop callback run once: inline, the verifier would follow it again
 * for every way out of the walk's loop. */
static long copy_user_stack(__u32 i, void *data)
{
	struct stack_copy_args *a = data;
	struct task_struct *task = bpf_get_current_task_btf();
	struct smolder_stack_copy *copy;
	__u64 top = BPF_CORE_READ(task, mm, start_stack), sp = a->sp;
	__u32 len = SMOLDER_STACK_COPY_BYTES;

	copy = bpf_ringbuf_reserve(&EVENTS, sizeof(*copy), 0);
	if (!copy) {
		count(SMOLDER_STAT_STACK_COPIES_LOST);
		return 1;
	}
	/* The main thread's frames all lie below start_stack. */
	if (top > sp && top - sp < SMOLDER_STACK_COPY_BYTES)
		len = top - sp;
	for (int k = 0; k < 16; k++) {
		__u64 n = len;

		if (n == 0)
			break;
		/* 1 ..= SMOLDER_STACK_COPY_BYTES (a power of two), in a form the
		 * verifier can bound. */
		asm volatile("" : "+r"(n));
		n = ((n - 1) & (SMOLDER_STACK_COPY_BYTES - 1)) + 1;
		if (bpf_probe_read_user(copy->stack, n, (void *)sp) == 0) {
			len = n;
			break;
		}
		len = n > 4096 ? n - 4096 : n / 2;
		if (k == 15)
			len = 0;
	}
	copy->event.kind = SMOLDER_EVENT_STACK_COPY;
	copy->event.pid = a->tgid;
	copy->event.time_ns = a->time_ns;
	copy->tid = a->tid;
	copy->len = len;
	copy->ip = a->ip;
	copy->sp = sp;
	copy->bp = a->bp;
	bpf_ringbuf_submit(copy, BPF_RB_FORCE_WAKEUP);
	return 1;
}

/*
 * Takes the current task's stacks into rec and sends the record: the one
 * stack taker of both the on-CPU and the off-CPU sample. The kernel stack
 * is the nk_saved PCs at kstack when given (taken earlier), else
 * bpf_get_stack(ctx) when ip (the interrupted IP) is a kernel address; the
 * user stack is walked from ip/sp/bp, or from the registers saved at
 * kernel entry when ip is a kernel address. Returns what
 * bpf_ringbuf_output returned.
 */
static __always_inline long send_stack_sample(void *ctx, struct smolder_sample *rec, __u32 kind,
					      __u64 id, __u64 time_ns, __u64 value, __u64 ip,
					      __u64 sp, __u64 bp, const __u64 *kstack,
					      __u32 nk_saved)
{
	__u32 tgid = id >> 32;
	struct task_struct *task = bpf_get_current_task_btf();
	__u32 flags = 0, nk = 0, nu = 0;
	long err;

	rec->header.event.kind = kind;
	rec->header.event.pid = tgid;
	rec->header.event.time_ns = time_ns;
	rec->header.tid = (__u32)id;
	rec->header.cpu = bpf_get_smp_processor_id();
	rec->header.value = value;
	bpf_get_current_comm(rec->header.comm, sizeof(rec->header.comm));

	if (kstack) {
		nk = nk_saved;
		if (nk > SMOLDER_MAX_KERNEL_FRAMES)
			nk = SMOLDER_MAX_KERNEL_FRAMES;
		if (nk && bpf_probe_read_kernel(rec->pcs, nk * sizeof(__u64), kstack))
			nk = 0;
	} else if (ip >= USER_ADDR_LIMIT) {
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
			sp = uregs ? BPF_CORE_READ(uregs, sp) : 0;
			bp = uregs ? BPF_CORE_READ(uregs, bp) : 0;
		}
		nu = walk_user_stack(rec, task, tgid, nk, ip, sp, bp, &flags,
				     kind == SMOLDER_EVENT_SAMPLE);
		if (flags & SMOLDER_SAMPLE_USER_READ_FAULT)
			count(SMOLDER_STAT_USER_READ_FAULTS);
		if (flags & SMOLDER_SAMPLE_USER_TRUNCATED)
			count(SMOLDER_STAT_USER_TRUNCATED);
		if (flags & SMOLDER_SAMPLE_USER_UNKNOWN_MAPPING)
			count(SMOLDER_STAT_USER_UNKNOWN_MAPPING);
		if (flags & SMOLDER_SAMPLE_USER_NO_UNWIND_INFO)
			count(SMOLDER_STAT_USER_NO_UNWIND_INFO);
		if (flags & SMOLDER_SAMPLE_USER_TABLE_MISSING)
			count(SMOLDER_STAT_USER_TABLE_MISSING);
	}

	rec->header.flags = flags;
	rec->header.kernel_frames = nk;
	rec->header.user_frames = nu;

	__u64 size = sizeof(rec->header) + (__u64)(nk + nu) * sizeof(__u64);
	if (size > sizeof(*rec))
		size = sizeof(*rec);
	err = bpf_ringbuf_output(&EVENTS, rec, size, wakeup_flags());
	if (!err && stack_copy_tgid && stack_copy_tgid == tgid && !(flags & SMOLDER_SAMPLE_KTHREAD)) {
		struct stack_copy_args args = {
			.time_ns = time_ns,
			.ip = ip,
			.sp = sp,
			.bp = bp,
			.tgid = tgid,
			.tid = rec->header.tid,
		};

		bpf_loop(1, copy_user_stack, &args, 0);
	}
	return err;
}

SEC("perf_event")
int smolder_sample(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 zero = 0;
	struct smolder_sample *rec;

	if (!tgid_wanted(id >> 32))
		return 0;
	count(SMOLDER_STAT_SAMPLES);
	rec = bpf_map_lookup_elem(&SCRATCH, &zero);
	if (!rec)
		return 0;
	if (send_stack_sample(ctx, rec, SMOLDER_EVENT_SAMPLE, id, bpf_ktime_get_boot_ns(), 0,
			      ctx->regs.ip, ctx->regs.sp, ctx->regs.bp, NULL, 0))
		count(SMOLDER_STAT_RINGBUF_FULL);
	return 0;
}

/*
 * Off-CPU, in three steps, with tracepoints only (kernels built without
 * kprobes have no fentry/kprobe on the switch path either):
 *  1. sched_switch, the thread as prev: a sampled thread that blocks (is
 *     switched out other than by preemption) is chosen with the recording
 *     probability; its switch-out time and user ip/sp go to OFF_CPU_WAITS.
 *  2. sched_switch, the thread as next: it was off the CPU until now. A
 *     wait shorter than the minimum is dropped here; a longer one gets its
 *     kernel stack (bpf_get_task_stack: the thread is not running, its
 *     stack is still the one it blocked with) and moves to OFF_CPU_RESUMED.
 *  3. sys_exit, in the thread's own context: if its user registers are the
 *     ones it blocked with, no user code ran in between and the user stack
 *     is still the one it blocked with: walk it and send the sample.
 * A wait shorter than the minimum costs no stack walk, and only resumed
 * threads (a few per CPU) hold a kernel stack.
 */
const volatile __u64 off_cpu_min_ns = 1000000;
/* A blocking switch-out is recorded when bpf_get_prandom_u32() < this:
 * probability * 2^32 (2^32: always). */
const volatile __u64 off_cpu_threshold = 1ULL << 32;

struct off_cpu_wait {
	__u64 out_ns; /* switched out, bpf_ktime_get_boot_ns() */
	__u64 user_ip; /* user registers at switch-out */
	__u64 user_sp;
};

struct off_cpu_resumed {
	struct off_cpu_wait wait;
	__u64 in_ns; /* switched in again */
	__u32 kernel_frames;
	__u32 _pad;
	__u64 kernel[SMOLDER_MAX_KERNEL_FRAMES];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u32); /* tid */
	__type(value, struct off_cpu_wait);
	__uint(max_entries, 16384); /* overridden from user space */
} OFF_CPU_WAITS SEC(".maps");

/* Threads between switch-in and their return to user space: a few per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u32); /* tid */
	__type(value, struct off_cpu_resumed);
	__uint(max_entries, 1024);
} OFF_CPU_RESUMED SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct off_cpu_resumed);
	__uint(max_entries, 1);
} RESUMED_SCRATCH SEC(".maps");

/* Its own sample scratch: the perf_event program may interrupt a tracing
 * program (they do not block it) and uses SCRATCH. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct smolder_sample);
	__uint(max_entries, 1);
} OFF_CPU_SCRATCH SEC(".maps");

#define TASK_RUNNING 0

static __always_inline void off_cpu_resume(struct task_struct *next)
{
	__u32 tid = next->pid, zero = 0;
	struct off_cpu_wait *found = bpf_map_lookup_elem(&OFF_CPU_WAITS, &tid);
	struct off_cpu_resumed *r;
	__u64 now;
	long n;

	if (!found)
		return;
	now = bpf_ktime_get_boot_ns();
	if (now < found->out_ns || now - found->out_ns < off_cpu_min_ns) {
		bpf_map_delete_elem(&OFF_CPU_WAITS, &tid);
		count(SMOLDER_STAT_OFF_CPU_SKIPPED_SHORT);
		return;
	}
	r = bpf_map_lookup_elem(&RESUMED_SCRATCH, &zero);
	if (!r)
		return;
	r->wait = *found;
	bpf_map_delete_elem(&OFF_CPU_WAITS, &tid);
	r->in_ns = now;
	n = bpf_get_task_stack(next, r->kernel, sizeof(r->kernel), 0);
	r->kernel_frames = n > 0 ? (__u64)n / sizeof(__u64) : 0;
	bpf_map_update_elem(&OFF_CPU_RESUMED, &tid, r, BPF_ANY);
}

SEC("tp_btf/sched_switch")
int BPF_PROG(smolder_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u32 tgid = prev->tgid, tid = prev->pid;
	struct off_cpu_wait wait = {};
	struct pt_regs *uregs;

	off_cpu_resume(next);
	if (preempt || tid == 0 || (prev->flags & PF_KTHREAD) ||
	    BPF_CORE_READ(prev, __state) == TASK_RUNNING)
		return 0;
	if (!tgid_wanted(tgid))
		return 0;
	count(SMOLDER_STAT_OFF_CPU_SWITCHES);
	if ((__u64)bpf_get_prandom_u32() >= off_cpu_threshold) {
		count(SMOLDER_STAT_OFF_CPU_SKIPPED_PROBABILITY);
		return 0;
	}
	uregs = (struct pt_regs *)bpf_task_pt_regs(prev);
	if (!uregs)
		return 0;
	wait.out_ns = bpf_ktime_get_boot_ns();
	wait.user_ip = BPF_CORE_READ(uregs, ip);
	wait.user_sp = BPF_CORE_READ(uregs, sp);
	bpf_map_update_elem(&OFF_CPU_WAITS, &tid, &wait, BPF_ANY);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(smolder_off_cpu_sample)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id, zero = 0;
	struct off_cpu_resumed *r = bpf_map_lookup_elem(&OFF_CPU_RESUMED, &tid);
	struct task_struct *task;
	struct pt_regs *uregs;
	struct smolder_sample *rec;
	__u64 ip, sp, bp;

	if (!r)
		return 0;
	task = bpf_get_current_task_btf();
	uregs = (struct pt_regs *)bpf_task_pt_regs(task);
	rec = bpf_map_lookup_elem(&OFF_CPU_SCRATCH, &zero);
	if (!uregs || !rec)
		goto out;
	ip = BPF_CORE_READ(uregs, ip);
	sp = BPF_CORE_READ(uregs, sp);
	bp = BPF_CORE_READ(uregs, bp);
	if (ip != r->wait.user_ip || sp != r->wait.user_sp) {
		count(SMOLDER_STAT_OFF_CPU_UNMATCHED);
		goto out;
	}
	count(SMOLDER_STAT_OFF_CPU_RECORDED);
	if (send_stack_sample(ctx, rec, SMOLDER_EVENT_OFF_CPU, id, r->wait.out_ns,
			      r->in_ns - r->wait.out_ns, ip, sp, bp, r->kernel, r->kernel_frames))
		count(SMOLDER_STAT_OFF_CPU_LOST);
out:
	bpf_map_delete_elem(&OFF_CPU_RESUMED, &tid);
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
	if (bpf_ringbuf_output(&PROC_EVENTS, &ev, sizeof(ev), BPF_RB_FORCE_WAKEUP))
		count(SMOLDER_STAT_PREFETCH_EVENTS_LOST);
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
	if (bpf_ringbuf_output(&PROC_EVENTS, &ev, sizeof(ev), BPF_RB_FORCE_WAKEUP))
		count(SMOLDER_STAT_PREFETCH_EVENTS_LOST);
	if (filter_enabled)
		bpf_map_delete_elem(&FILTER_PIDS, &tgid);
	return 0;
}
