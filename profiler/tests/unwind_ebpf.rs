//! Acceptance of the kernel stack walker on binaries without frame
//! pointers: C at `-O2 -fomit-frame-pointer` (deep recursion through frames
//! of different sizes), a Rust release build, and a C callback called from
//! glibc's `qsort`. Each program is sampled by the eBPF sampler and, in the
//! same test, by `perf record --call-graph dwarf`; the share of samples
//! whose stack reaches `main` is printed for both and must be at least 99%
//! for smolder. Then the kernel walk is compared with the user-space walk
//! over the same copied stacks.
//!
//! Needs root (or CAP_BPF + CAP_PERFMON), gcc, rustc and perf. Without
//! eBPF they print why and pass, except under CI (`CI` set), where they fail.
#![cfg(feature = "sampler")]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use object::{Object, ObjectSymbol};
use smolder::pipeline::ProcessMaps;
use smolder::pipeline::Sample;
use smolder::sampler::{SampleFlags, Sampler, SamplerConfig, SamplerEvent, StackCopy};

/// A sample with the kernel walker's flags.
#[derive(Debug)]
struct Seen {
    sample: Sample,
    flags: SampleFlags,
}

impl std::ops::Deref for Seen {
    type Target = Sample;
    fn deref(&self) -> &Sample {
        &self.sample
    }
}
use smolder::unwind::{StepEnd, TableCache, UnwindTable, UnwindTables};

static SERIAL: Mutex<()> = Mutex::new(());

const DEEP_C: &str = r#"
#include <stdlib.h>
volatile unsigned long sink;
__attribute__((noinline)) unsigned long work(unsigned long x) {
    for (int i = 0; i < 20000; i++) x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x;
}
__attribute__((noinline)) unsigned long f_small(int d, unsigned long x);
__attribute__((noinline)) unsigned long f_medium(int d, unsigned long x);
__attribute__((noinline)) unsigned long f_large(int d, unsigned long x);
unsigned long f_small(int d, unsigned long x) {
    volatile unsigned char buf[24];
    buf[d % 24] = (unsigned char)x;
    if (d <= 0) return work(x) + buf[1];
    return f_medium(d - 1, x + 1) + buf[3];
}
unsigned long f_medium(int d, unsigned long x) {
    volatile unsigned long buf[40];
    buf[d % 40] = x;
    if (d <= 0) return work(x) + buf[1];
    return f_large(d - 1, x ^ buf[d % 40]) * 3 + buf[2];
}
unsigned long f_large(int d, unsigned long x) {
    volatile unsigned long buf[150];
    buf[d % 150] = x;
    if (d <= 0) return work(x) + buf[1];
    return f_small(d - 1, x + buf[d % 150]) + buf[4];
}
int main(int argc, char **argv) {
    int depth = argc > 1 ? atoi(argv[1]) : 40;
    for (;;) sink += f_small(depth, sink);
}
"#;

const QSORT_C: &str = r#"
#include <stdlib.h>
volatile unsigned long sink;
static int compare(const void *a, const void *b) {
    unsigned long x = *(const unsigned long *)a, y = *(const unsigned long *)b;
    for (int i = 0; i < 40; i++) {
        x = x * 6364136223846793005UL + 1;
        y = y * 6364136223846793005UL + 1;
    }
    sink += x ^ y;
    return (*(const unsigned long *)a > *(const unsigned long *)b) - (*(const unsigned long *)a < *(const unsigned long *)b);
}
int main(void) {
    enum { N = 100000 };
    unsigned long *v = malloc(N * sizeof *v);
    unsigned long seed = 88172645463325252UL;
    for (;;) {
        for (int i = 0; i < N; i++) { seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17; v[i] = seed; }
        qsort(v, N, sizeof *v, compare);
    }
}
"#;

const RUST_SRC: &str = r#"
use std::hint::black_box;
#[inline(never)]
fn leaf(mut x: u64) -> u64 {
    for _ in 0..20000 { x = x.wrapping_mul(6364136223846793005).wrapping_add(1); }
    x
}
#[inline(never)]
fn recurse(depth: u32, x: u64) -> u64 {
    let pad = black_box([x; 12]);
    if depth == 0 { return leaf(x) ^ pad[1]; }
    black_box(recurse(depth - 1, x ^ pad[(depth % 12) as usize]).wrapping_add(pad[3]))
}
fn main() {
    let mut sink = 0u64;
    loop { sink = black_box(recurse(black_box(30), sink)); }
}
"#;

fn ci() -> bool {
    std::env::var_os("CI").is_some()
}

fn workdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("smolder-unwind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn build_c(name: &str, source: &str) -> PathBuf {
    build_c_with(name, source, &[])
}

/// [`build_c`] with more gcc arguments (`-shared -fPIC`: a library `name`).
fn build_c_with(name: &str, source: &str, extra: &[&str]) -> PathBuf {
    let dir = workdir();
    let src = dir.join(format!("{name}.c"));
    let exe = dir.join(name);
    std::fs::write(&src, source).expect("write source");
    let status = Command::new("gcc")
        .args(["-O2", "-fomit-frame-pointer", "-g"])
        .args(extra)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc (apt-get install gcc)");
    assert!(status.success(), "gcc failed on {name}");
    exe
}

fn build_rust(name: &str, source: &str) -> PathBuf {
    let dir = workdir();
    let src = dir.join(format!("{name}.rs"));
    let exe = dir.join(name);
    std::fs::write(&src, source).expect("write source");
    let status = Command::new("rustc")
        .args(["-C", "opt-level=3", "-g", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("rustc");
    assert!(status.success(), "rustc failed on {name}");
    exe
}

/// Where `main` lies in the process's address space.
fn main_range(exe: &Path, pid: u32) -> std::ops::Range<u64> {
    let data = std::fs::read(exe).expect("read exe");
    let obj = object::File::parse(&*data).expect("parse exe");
    let main = obj
        .symbols()
        .find(|s| s.name() == Ok("main"))
        .expect("main symbol");
    let table = UnwindTable::from_elf(&data, "exe").expect("table");
    let maps = ProcessMaps::read(pid).expect("maps");
    let canonical = std::fs::canonicalize(exe).expect("canonical exe path");
    let m = maps
        .entries()
        .iter()
        .find(|m| Path::new(&m.path) == canonical)
        .expect("exe mapping");
    let bias = table.load_bias(m.start, m.offset).expect("bias");
    bias + main.address()..bias + main.address() + main.size().max(1)
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(exe: &Path, args: &[&str]) -> Running {
    let child = Command::new(exe)
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .expect("start the test program");
    // Past the dynamic loader: its libraries are mapped.
    std::thread::sleep(Duration::from_millis(300));
    Running(child)
}

/// A sampler that follows only the processes it is given (none yet).
fn start_filtered() -> Option<Sampler> {
    start(SamplerConfig {
        frequency_hz: 199,
        pid_filter: Some(vec![]),
        ..SamplerConfig::default()
    })
}

fn start(config: SamplerConfig) -> Option<Sampler> {
    match Sampler::start(config) {
        Ok(s) => Some(s),
        Err(e) if e.is_unsupported() && !ci() => {
            eprintln!("skipping: the eBPF sampler cannot run here: {e}");
            None
        }
        Err(e) => panic!(
            "starting the sampler: {e} ({:?})",
            std::error::Error::source(&e)
        ),
    }
}

/// Samples `pid` for `how_long`; returns its samples and the stack copies.
/// CPU time (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no memory-safety preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Samples `pid` until it has run `cpu_time` on a CPU (a busy machine
/// gives it less of the clock), or a minute has passed.
fn sample(
    pid: u32,
    cpu_time: Duration,
    copy: bool,
    unwind_table_bytes: u64,
) -> Option<(Vec<Seen>, Vec<StackCopy>, smolder::sampler::SamplerStats)> {
    let mut sampler = start(SamplerConfig {
        frequency_hz: 199,
        pid_filter: Some(vec![]),
        stack_copy_pid: copy.then_some(pid),
        unwind_table_bytes,
        ..SamplerConfig::default()
    })?;
    sampler
        .load_process(pid)
        .expect("loading the unwind tables");
    sampler.add_pid(pid).expect("following the program");
    let give_up = Instant::now() + Duration::from_secs(60);
    let cpu_start = cpu_seconds(pid);
    let mut samples = Vec::new();
    let mut copies = Vec::new();
    while cpu_seconds(pid) - cpu_start < cpu_time.as_secs_f64() && Instant::now() < give_up {
        for event in sampler.next_events_blocking() {
            if let SamplerEvent::Sample { sample, flags } = event {
                if sample.pid == pid {
                    samples.push(Seen { sample, flags });
                }
            }
        }
        copies.extend(sampler.take_stack_copies());
    }
    let stats = sampler.stats();
    Some((samples, copies, stats))
}

/// perf's share of samples whose DWARF-unwound stack has `main`.
fn perf_share(pid: u32) -> f64 {
    let out = workdir().join(format!("perf-{pid}.data"));
    let status = Command::new("perf")
        .args(["record", "-q", "--call-graph", "dwarf", "-F", "199", "-p"])
        .arg(pid.to_string())
        .arg("-o")
        .arg(&out)
        .args(["--", "sleep", "3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("perf (apt-get install linux-perf)");
    assert!(status.success(), "perf record failed");
    let script = Command::new("perf")
        .args(["script", "-F", "ip,sym", "-i"])
        .arg(&out)
        .stderr(Stdio::null())
        .output()
        .expect("perf script");
    let text = String::from_utf8_lossy(&script.stdout);
    let (mut total, mut with_main) = (0u64, 0u64);
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        total += 1;
        if block
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("main"))
        {
            with_main += 1;
        }
    }
    if total == 0 {
        return 0.0;
    }
    with_main as f64 / total as f64
}

struct Outcome {
    samples: usize,
    reach_main: usize,
    complete: usize,
    max_depth: usize,
}

fn judge(samples: &[Seen], main: &std::ops::Range<u64>) -> Outcome {
    let mut o = Outcome {
        samples: samples.len(),
        reach_main: 0,
        complete: 0,
        max_depth: 0,
    };
    for s in samples {
        // Return addresses point just after the call inside main.
        if s.user.iter().skip(1).any(|pc| main.contains(&(pc - 1)))
            || s.user.first().is_some_and(|pc| main.contains(pc))
        {
            o.reach_main += 1;
        }
        if s.flags.contains(SampleFlags::USER_COMPLETE) {
            o.complete += 1;
        }
        o.max_depth = o.max_depth.max(s.user.len());
    }
    o
}

/// Samples the program with smolder, then with perf, and asserts 99%.
fn acceptance(name: &str, exe: &Path, args: &[&str]) -> Option<Outcome> {
    let _guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let running = spawn(exe, args);
    let pid = running.0.id();
    let main = main_range(exe, pid);
    let (samples, _, stats) = sample(pid, Duration::from_millis(1500), false, 64 << 20)?;
    let o = judge(&samples, &main);
    let perf = perf_share(pid);
    let share = o.reach_main as f64 / o.samples.max(1) as f64;
    eprintln!(
        "{name}: smolder {}/{} samples reach main ({:.2}%), {} complete, deepest {} frames; \
         perf --call-graph dwarf: {:.2}%; tables {} ({} KiB), table frames {}, fp frames {}",
        o.reach_main,
        o.samples,
        share * 100.0,
        o.complete,
        o.max_depth,
        perf * 100.0,
        stats.unwind_tables,
        stats.unwind_table_bytes / 1024,
        stats.table_frames,
        stats.fp_frames,
    );
    assert!(o.samples >= 100, "{name}: only {} samples", o.samples);
    assert!(
        share >= 0.99,
        "{name}: only {:.2}% of samples reach main",
        share * 100.0
    );
    assert!(stats.unwind_tables >= 2, "{name}: program and libc tables");
    Some(o)
}

#[test]
fn c_without_frame_pointers_reaches_main() {
    let exe = build_c("deep", DEEP_C);
    acceptance("C -O2 -fomit-frame-pointer, depth 40", &exe, &["40"]);
}

#[test]
fn stacks_deeper_than_200_frames_are_complete() {
    let exe = build_c("deeper", DEEP_C);
    if let Some(o) = acceptance("C -O2 -fomit-frame-pointer, depth 300", &exe, &["300"]) {
        assert!(o.max_depth > 300, "deepest stack {} frames", o.max_depth);
        assert!(
            o.complete as f64 >= 0.99 * o.samples as f64,
            "{} of {} complete",
            o.complete,
            o.samples
        );
    }
}

#[test]
fn rust_release_build_reaches_main() {
    let exe = build_rust("rusty", RUST_SRC);
    acceptance("Rust opt-level=3", &exe, &[]);
}

#[test]
fn qsort_callback_reaches_main_through_glibc() {
    let exe = build_c("sorter", QSORT_C);
    acceptance("qsort callback", &exe, &[]);
}

/// The kernel walk and the user-space walk over the same copied stack
/// give the same frames.
#[test]
fn kernel_walk_matches_user_space_walk() {
    let _guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    for (name, exe, args) in [
        ("deep", build_c("deep-copy", DEEP_C), vec!["20"]),
        ("qsort", build_c("sorter-copy", QSORT_C), vec![]),
    ] {
        let running = spawn(&exe, &args);
        let pid = running.0.id();
        let Some((samples, copies, _)) = sample(pid, Duration::from_secs(2), true, 64 << 20) else {
            return;
        };
        let mut cache = TableCache::default();
        let tables = UnwindTables::for_process(pid, &mut cache).expect("tables");
        let (mut compared, mut equal, mut prefix) = (0, 0, 0);
        for copy in &copies {
            let Some(sample) = samples
                .iter()
                .find(|s| s.tid == copy.tid && s.time_unix_nano == copy.time_ns)
            else {
                continue;
            };
            compared += 1;
            let walk = tables.unwind(copy.regs, &copy.stack, copy.regs.sp);
            if walk.frames == sample.user {
                equal += 1;
            } else {
                // Only a copy cut short may stop the user-space walk early.
                assert_eq!(walk.end, StepEnd::ReadFault, "{name}: walks differ");
                assert_eq!(
                    walk.frames,
                    sample.user[..walk.frames.len().min(sample.user.len())],
                    "{name}: user-space walk is not a prefix of the kernel's"
                );
                prefix += 1;
            }
        }
        eprintln!(
            "{name}: {compared} stack copies compared: {equal} identical walks, {prefix} cut short by the copy"
        );
        assert!(compared >= 50, "{name}: only {compared} copies paired");
        assert!(
            equal * 10 >= compared * 9,
            "{name}: {equal} of {compared} identical"
        );
    }
}

/// A process the sampler did not know: its first samples are partial and
/// flagged, its tables get loaded from them, and later samples are complete.
#[test]
fn tables_load_on_the_first_sample_of_an_unknown_process() {
    let _guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let exe = build_c("late", DEEP_C);
    let Some(mut sampler) = start_filtered() else {
        return;
    };
    let running = spawn(&exe, &["40"]);
    let pid = running.0.id();
    let main = main_range(&exe, pid);
    // No load_process: the sampler learns of the process from its samples.
    sampler.add_pid(pid).expect("following the program");
    // 1.5 s of the program's CPU time (more of the clock on a busy machine).
    let give_up = Instant::now() + Duration::from_secs(60);
    let cpu_start = cpu_seconds(pid);
    let mut samples = Vec::new();
    while cpu_seconds(pid) - cpu_start < 1.5 && Instant::now() < give_up {
        for event in sampler.next_events_blocking() {
            if let SamplerEvent::Sample { sample, flags } = event {
                if sample.pid == pid {
                    samples.push(Seen { sample, flags });
                }
            }
        }
    }
    let stats = sampler.stats();
    let late = &samples[samples.len() / 2..];
    let o = judge(late, &main);
    let partial = samples
        .iter()
        .filter(|s| s.flags.contains(SampleFlags::USER_UNKNOWN_MAPPING))
        .count();
    eprintln!(
        "late process: {} samples, {partial} partial (unknown mapping) before its tables loaded; \
         second half: {}/{} reach main; {} processes loaded",
        samples.len(),
        o.reach_main,
        o.samples,
        stats.unwind_processes_loaded
    );
    assert!(stats.unwind_processes_loaded >= 1);
    assert!(
        stats.user_unknown_mapping as usize >= partial,
        "partial samples are counted"
    );
    assert!(o.samples > 50 && o.reach_main as f64 >= 0.99 * o.samples as f64);
}

/// A program that waits for a line on stdin, then `dlopen`s the library
/// `argv[1]` and runs in it for 0.2 s of CPU time, then the library
/// `argv[2]` for `argv[3]` seconds.
const DLOPEN_MAIN_C: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
volatile unsigned long sink;
static int run_in(const char *path, double seconds) {
    void *lib = dlopen(path, RTLD_NOW);
    if (!lib) return 2;
    unsigned long (*outer)(unsigned long) = (unsigned long (*)(unsigned long))dlsym(lib, "lib_outer");
    if (!outer) return 3;
    clock_t end = clock() + (clock_t)(seconds * CLOCKS_PER_SEC);
    while (clock() < end) sink += outer(sink);
    return 0;
}
int main(int argc, char **argv) {
    char line[8];
    if (argc < 4 || !fgets(line, sizeof line, stdin)) return 1;
    int err = run_in(argv[1], 0.2);
    return err ? err : run_in(argv[2], atof(argv[3]));
}
"#;

/// Its library, without frame pointers: a walk through it needs its table.
const DLOPEN_LIB_C: &str = r#"
__attribute__((noinline)) unsigned long lib_leaf(unsigned long x) {
    volatile unsigned long buf[32];
    for (int i = 0; i < 20000; i++) { x = x * 6364136223846793005UL + 1; buf[i & 31] = x; }
    return x + buf[3];
}
__attribute__((noinline)) unsigned long lib_mid(unsigned long x) {
    volatile unsigned long buf[20];
    buf[x & 15] = x;
    return lib_leaf(x ^ buf[2]) + buf[5];
}
unsigned long lib_outer(unsigned long x) {
    volatile unsigned long pad[9];
    pad[x & 7] = x;
    return lib_mid(x + pad[1]) * 3 + pad[4];
}
"#;

/// Libraries `dlopen`ed one after the other while the process is sampled
/// (Python importing extension modules): the first sample in the first
/// one has the process's mappings read again; the first sample in the
/// second, 0.2 s later, finds it in no loaded mapping too, the kernel tells
/// that the PC lies in a file mapping, and the mappings are read again at
/// once, not after the half-second pause between two reloads that partial
/// samples of unknown code get. Before, a program that ran in a library
/// loaded just after another lost up to half a second of its stacks.
#[test]
fn a_library_loaded_while_sampled_is_walked_at_once() {
    let _guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let exe = build_c("dlopener", DLOPEN_MAIN_C);
    let libs: Vec<PathBuf> = ["libfirst.so", "libsecond.so"]
        .into_iter()
        .map(|name| build_c_with(name, DLOPEN_LIB_C, &["-shared", "-fPIC"]))
        .collect();
    let Some(mut sampler) = start_filtered() else {
        return;
    };
    let mut child = Command::new(&exe)
        .args(&libs)
        .arg("2")
        .stdin(Stdio::piped())
        .spawn()
        .expect("start the test program");
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let mut running = Running(child);
    std::thread::sleep(Duration::from_millis(300));
    let main = main_range(&exe, pid);
    sampler
        .load_process(pid)
        .expect("loading the unwind tables");
    sampler.add_pid(pid).expect("following the program");
    // Loaded without the library: now it may load it.
    std::io::Write::write_all(&mut stdin, b"go\n").expect("telling the program to go");
    let give_up = Instant::now() + Duration::from_secs(60);
    let canonical = std::fs::canonicalize(&libs[1]).unwrap();
    let mut lib_text: Option<std::ops::Range<u64>> = None;
    let mut samples = Vec::new();
    while Instant::now() < give_up {
        if lib_text.is_none() {
            lib_text = ProcessMaps::read(pid).ok().and_then(|maps| {
                maps.entries()
                    .iter()
                    .find(|m| Path::new(&m.path) == canonical)
                    .map(|m| m.start..m.end)
            });
        }
        for event in sampler.next_events_blocking() {
            if let SamplerEvent::Sample { sample, flags } = event {
                if sample.pid == pid {
                    samples.push(Seen { sample, flags });
                }
            }
        }
        if !matches!(running.0.try_wait(), Ok(None)) {
            break;
        }
    }
    drop(running);
    let lib_text = lib_text.expect("the program mapped the library");
    let in_lib: Vec<Seen> = samples
        .into_iter()
        .filter(|s| s.user.first().is_some_and(|pc| lib_text.contains(pc)))
        .collect();
    let o = judge(&in_lib, &main);
    let flagged = in_lib
        .iter()
        .filter(|s| s.flags.contains(SampleFlags::USER_NEW_FILE))
        .count();
    eprintln!(
        "dlopen: {} of {} samples in the second library reach main; {flagged} told of a new file",
        o.reach_main, o.samples
    );
    assert!(
        o.samples >= 100,
        "only {} samples in the second library",
        o.samples
    );
    assert!(
        flagged >= 1,
        "no sample was flagged as in a new file mapping"
    );
    // 2 s in it: the old half-second pause left up to a sixth partial.
    assert!(
        o.reach_main as f64 >= 0.95 * o.samples as f64,
        "only {} of {} samples in the second library reach main",
        o.reach_main,
        o.samples
    );
}
