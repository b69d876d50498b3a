/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * CPython frames in the kernel walker. Included by sampler.bpf.c, which
 * calls python_begin() once per sample (find the thread's current
 * interpreter frame) and python_step() once per native frame (emit the
 * Python frames of an eval-loop frame in its place).
 *
 * Owns: the per-process layout (PYTHON_PROCS, filled by user space from
 * profiler/src/python, mirrored in profiler/src/sampler/python.rs) and the
 * encoding of a Python frame in the sample's user PCs. Reads nothing but
 * the profiled process's memory, every read checked; a layout that does not
 * match (a code object whose type is not PyCode_Type) ends the Python walk
 * for the sample, so a wrong layout gives native frames, never a wrong name.
 */
#ifndef SMOLDER_PYTHON_H
#define SMOLDER_PYTHON_H

/*
 * A Python frame in the user PCs: bit 63 set (no user address has it),
 * bits 47..62 the instruction index (code units; 0xffff: unknown), bits
 * 0..46 the code object's address.
 */
#define SMOLDER_PY_FRAME_TAG (1ULL << 63)
#define SMOLDER_PY_INSTR_SHIFT 47
#define SMOLDER_PY_INSTR_UNKNOWN 0xffffULL
#define SMOLDER_PY_ADDR_MASK ((1ULL << 47) - 1)

#define SMOLDER_PY_NONE 0xffff /* a field the layout does not have */
#define SMOLDER_PY_MAX_THREADS 64 /* thread states searched per sample */
#define SMOLDER_PY_OWNED_BY_CSTACK 3 /* 3.12+: the entry frame of an eval call */

/* PYTHON_PROCS[tgid]: where the interpreter of one process keeps its state. */
struct smolder_python_proc {
	__u64 runtime;    /* address of _PyRuntime */
	__u64 eval_start; /* _PyEval_EvalFrameDefault: [eval_start, eval_end) */
	__u64 eval_end;
	__u64 code_type;  /* address of PyCode_Type */
	__u16 runtime_interpreters_head; /* _PyRuntime.interpreters.head */
	__u16 interp_threads_head;       /* PyInterpreterState.tstate_head / threads.head */
	__u16 tstate_next;
	__u16 tstate_thread_id;          /* pthread_self() of the thread: its fs base */
	__u16 tstate_frame;              /* frame (<= 3.10), cframe (3.11, 3.12), current_frame (3.13) */
	__u16 cframe_current_frame;      /* SMOLDER_PY_NONE: tstate_frame is the frame */
	__u16 frame_code;                /* f_code / f_executable */
	__u16 frame_previous;            /* f_back / previous */
	__u16 frame_instr;               /* f_lasti (int) or prev_instr / instr_ptr (pointer) */
	__u16 code_adaptive;             /* SMOLDER_PY_NONE: frame_instr is an int index */
	__u16 frame_is_entry;            /* 3.11: last frame of its eval call; else NONE */
	__u16 frame_owner;               /* 3.12+: SMOLDER_PY_OWNED_BY_CSTACK ends an eval call; else NONE */
	__u16 one_frame_per_eval;        /* <= 3.10: each eval call runs one frame */
	__u16 _pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); /* tgid */
	__type(value, struct smolder_python_proc);
	__uint(max_entries, 4096);
} PYTHON_PROCS SEC(".maps");

/* PYTHON_STATS (per-CPU __u64): what the Python walk did. */
#define SMOLDER_PY_STAT_FRAMES 0        /* Python frames emitted */
#define SMOLDER_PY_STAT_LAYOUT_STOPS 1  /* walks ended: memory not laid out as told */
#define SMOLDER_PY_STAT_COUNT 2

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, SMOLDER_PY_STAT_COUNT);
} PYTHON_STATS SEC(".maps");

static __always_inline void python_count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&PYTHON_STATS, &idx);

	if (v)
		*v += 1;
}

/* The Python walk's state, kept in the walker's context. */
struct python_walk {
	struct smolder_python_proc *cfg; /* NULL: not a Python process, or no frame */
	__u64 frame;   /* the next interpreter frame to emit; 0: none left */
	__u32 emitted; /* Python frames emitted for the current eval frame */
	__u32 segment_done;
};

/* python_step() results. */
#define PY_NATIVE 0   /* not an eval frame (or nothing to put in its place): record it */
#define PY_EMITTED 1  /* *out is a Python frame; the native frame stays current */
#define PY_REPLACED 2 /* the eval frame's Python frames are out: unwind it, unrecorded */

struct python_thread_search {
	struct smolder_python_proc *cfg;
	__u64 tstate;
	__u64 fsbase;
	__u64 found;
};

static long python_thread_search_step(__u32 i, void *data)
{
	struct python_thread_search *s = data;
	__u64 thread_id = 0, next = 0;

	if (!s->cfg || !s->tstate)
		return 1;
	if (bpf_probe_read_user(&thread_id, sizeof(thread_id),
				(void *)(s->tstate + s->cfg->tstate_thread_id)))
		return 1;
	if (thread_id == s->fsbase) {
		s->found = s->tstate;
		return 1;
	}
	if (bpf_probe_read_user(&next, sizeof(next), (void *)(s->tstate + s->cfg->tstate_next)))
		return 1;
	s->tstate = next;
	return 0;
}

/* Finds the current interpreter frame of this thread: the thread state of
 * the main interpreter whose thread id is this thread's fs base. */
static __always_inline void python_begin(struct python_walk *py, struct task_struct *task,
					 __u32 tgid, const __u16 *zero)
{
	struct smolder_python_proc *cfg = bpf_map_lookup_elem(&PYTHON_PROCS, &tgid);
	struct python_thread_search s = {};
	__u64 interp = 0, p = 0;

	/* 0, read from map memory: a value the verifier does not know (see
	 * walk_user_stack). */
	py->emitted = *zero;
	py->segment_done = *zero;
	py->cfg = NULL;
	py->frame = 0;
	if (!cfg)
		return;
	if (bpf_probe_read_user(&interp, sizeof(interp),
				(void *)(cfg->runtime + cfg->runtime_interpreters_head)) ||
	    !interp)
		return;
	s.cfg = cfg;
	s.fsbase = BPF_CORE_READ(task, thread.fsbase);
	if (bpf_probe_read_user(&s.tstate, sizeof(s.tstate),
				(void *)(interp + cfg->interp_threads_head)))
		return;
	bpf_loop(SMOLDER_PY_MAX_THREADS, python_thread_search_step, &s, 0);
	if (!s.found)
		return;
	if (bpf_probe_read_user(&p, sizeof(p), (void *)(s.found + cfg->tstate_frame)) || !p)
		return;
	if (cfg->cframe_current_frame != SMOLDER_PY_NONE &&
	    (bpf_probe_read_user(&p, sizeof(p), (void *)(p + cfg->cframe_current_frame)) || !p))
		return;
	py->cfg = cfg;
	py->frame = p;
}

/* Ends the current eval frame's run of Python frames. */
static __always_inline int python_segment_end(struct python_walk *py)
{
	int had = py->emitted > 0;

	py->emitted = 0;
	py->segment_done = 0;
	return had ? PY_REPLACED : PY_NATIVE;
}

/*
 * Called for each native frame with its lookup PC. In an eval frame, emits
 * its Python frames one per call (innermost first) into *out, then asks
 * for the eval frame itself to be skipped.
 */
static __always_inline int python_step(struct python_walk *py, __u64 lookup, __u64 *out)
{
	struct smolder_python_proc *cfg = py->cfg;
	__u64 frame = py->frame, code = 0, previous = 0, code_type = 0, instr = ~0ULL, ptr = 0;
	__u8 flag = 0;

	if (!cfg || lookup < cfg->eval_start || lookup >= cfg->eval_end)
		return PY_NATIVE;
	if (py->segment_done || !frame)
		return python_segment_end(py);
	/* A frame that is its own caller is forged: longer cycles end at the frame limit. */
	if (bpf_probe_read_user(&previous, sizeof(previous), (void *)(frame + cfg->frame_previous)) ||
	    previous == frame)
		goto stop;
	if (cfg->frame_owner != SMOLDER_PY_NONE) {
		if (bpf_probe_read_user(&flag, 1, (void *)(frame + cfg->frame_owner)))
			goto stop;
		if (flag == SMOLDER_PY_OWNED_BY_CSTACK) {
			/* The entry frame of this eval call: its frames are all out. */
			py->frame = previous;
			return python_segment_end(py);
		}
	}
	if (bpf_probe_read_user(&code, sizeof(code), (void *)(frame + cfg->frame_code)) ||
	    bpf_probe_read_user(&code_type, sizeof(code_type), (void *)(code + 8)) ||
	    code_type != cfg->code_type || code > SMOLDER_PY_ADDR_MASK)
		goto stop;
	if (cfg->code_adaptive == SMOLDER_PY_NONE) {
		__s32 lasti = -1;

		if (!bpf_probe_read_user(&lasti, sizeof(lasti), (void *)(frame + cfg->frame_instr)) &&
		    lasti >= 0)
			instr = (__u64)lasti;
	} else if (!bpf_probe_read_user(&ptr, sizeof(ptr), (void *)(frame + cfg->frame_instr)) &&
		   ptr >= code + cfg->code_adaptive) {
		instr = (ptr - code - cfg->code_adaptive) / 2;
	}
	if (instr > SMOLDER_PY_INSTR_UNKNOWN)
		instr = SMOLDER_PY_INSTR_UNKNOWN;
	*out = SMOLDER_PY_FRAME_TAG | (instr << SMOLDER_PY_INSTR_SHIFT) | code;
	py->frame = previous;
	py->emitted++;
	python_count(SMOLDER_PY_STAT_FRAMES);
	if (cfg->one_frame_per_eval)
		py->segment_done = 1;
	if (cfg->frame_is_entry != SMOLDER_PY_NONE &&
	    (bpf_probe_read_user(&flag, 1, (void *)(frame + cfg->frame_is_entry)) || flag))
		py->segment_done = 1;
	return PY_EMITTED;
stop:
	/* Not the layout we were told: no Python frame from here on. */
	py->cfg = NULL;
	python_count(SMOLDER_PY_STAT_LAYOUT_STOPS);
	return python_segment_end(py);
}

#endif /* SMOLDER_PYTHON_H */
