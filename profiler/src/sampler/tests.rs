//! Tests of the loaded sampler against processes these tests start.
//!
//! They need root (or CAP_BPF + CAP_PERFMON) and a kernel with BTF. Where
//! the sampler cannot load for that reason they print why and pass, except
//! under CI (`CI` set), where they fail. Any other error always fails.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use super::*;

/// One sampler test at a time: they measure rates and count processes.
static SERIAL: Mutex<()> = Mutex::new(());

fn run<F: std::future::Future>(f: F) -> F::Output {
    let _guard = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

fn start_or_skip(config: SamplerConfig) -> Option<Sampler> {
    match Sampler::start(config) {
        Ok(s) => Some(s),
        Err(e) if e.is_unsupported() && std::env::var_os("CI").is_none() => {
            eprintln!("skipping: the eBPF sampler cannot run here: {e}");
            None
        }
        Err(e) => panic!(
            "starting the sampler: {e} ({:?})",
            std::error::Error::source(&e)
        ),
    }
}

async fn collect(sampler: &mut Sampler, for_how_long: Duration) -> Vec<SamplerEvent> {
    let end = Instant::now() + for_how_long;
    let mut all = Vec::new();
    while Instant::now() < end {
        all.extend(
            sampler
                .next_events()
                .await
                .expect("reading the ring buffer"),
        );
    }
    all
}

/// A sample with the kernel walker's flags.
#[derive(Debug)]
struct Seen<'a> {
    sample: &'a Sample,
    flags: SampleFlags,
}

impl std::ops::Deref for Seen<'_> {
    type Target = Sample;
    fn deref(&self) -> &Sample {
        self.sample
    }
}

fn samples(events: &[SamplerEvent]) -> impl Iterator<Item = Seen<'_>> {
    events.iter().filter_map(|e| match e {
        SamplerEvent::Sample { sample, flags } => Some(Seen {
            sample,
            flags: *flags,
        }),
        _ => None,
    })
}

// `inner` calls `touch` so that it is not a leaf: gcc 12 sets up no frame
// in a leaf that needs no stack, -mno-omit-leaf-frame-pointer or not, and a
// frame-pointer walk would then skip `middle`.
const BUSY_C: &str = r#"
volatile unsigned long sink;
__attribute__((noinline)) void touch(void) { sink++; }
__attribute__((noinline)) void inner(void) {
    for (unsigned long i = 0; i < 100000000UL; i++) sink = sink * 6364136223846793005UL + 1;
    touch();
}
__attribute__((noinline)) void middle(void) { inner(); sink++; }
__attribute__((noinline)) void outer(void) { middle(); sink++; }
int main(void) { for (;;) outer(); }
"#;

/// A busy-looping C program with frame pointers: main -> outer -> middle ->
/// inner, and the address ranges of those functions.
struct BusyProgram {
    dir: PathBuf,
    path: PathBuf,
    symbols: HashMap<String, (u64, u64)>,
}

impl BusyProgram {
    fn build() -> BusyProgram {
        static BUILDS: AtomicU32 = AtomicU32::new(0);
        let n = BUILDS.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("smolder-sampler-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let src = dir.join("busy.c");
        let path = dir.join("busy");
        std::fs::write(&src, BUSY_C).expect("write busy.c");
        let status = Command::new("gcc")
            .args([
                "-O1",
                "-fno-omit-frame-pointer",
                "-mno-omit-leaf-frame-pointer",
                "-no-pie",
                "-o",
            ])
            .arg(&path)
            .arg(&src)
            .status()
            .expect("running gcc (needed by the sampler tests)");
        assert!(status.success(), "gcc failed building {}", src.display());
        let nm = Command::new("nm")
            .args(["-S", "--defined-only"])
            .arg(&path)
            .output()
            .expect("running nm");
        let mut symbols = HashMap::new();
        for line in String::from_utf8_lossy(&nm.stdout).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let [addr, size, _kind, name] = f[..] {
                if let (Ok(a), Ok(s)) =
                    (u64::from_str_radix(addr, 16), u64::from_str_radix(size, 16))
                {
                    symbols.insert(name.to_string(), (a, a + s));
                }
            }
        }
        for f in ["main", "outer", "middle", "inner"] {
            assert!(
                symbols.contains_key(f),
                "nm found no {f} in {}",
                path.display()
            );
        }
        BusyProgram { dir, path, symbols }
    }

    fn spawn(&self) -> KillOnDrop {
        KillOnDrop(Command::new(&self.path).spawn().expect("spawn busy"))
    }

    fn function_of(&self, pc: u64) -> Option<&str> {
        self.symbols
            .iter()
            .find(|(_, &(start, end))| pc >= start && pc < end)
            .map(|(name, _)| name.as_str())
    }
}

impl Drop for BusyProgram {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct KillOnDrop(Child);

impl KillOnDrop {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// utime + stime of a process, from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading /proc/PID/stat");
    // Fields after the parenthesised comm: state is field 3, utime 14, stime 15.
    let after_comm = stat.rsplit_once(')').expect("stat has a comm").1;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// The executable mappings of `path` in `/proc/PID/maps`.
fn text_mappings(pid: u32, path: &Path) -> Vec<(u64, u64)> {
    let maps =
        std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("reading /proc/PID/maps");
    let path = path.to_string_lossy();
    maps.lines()
        .filter(|l| l.ends_with(path.as_ref()))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (range, perms) = (f.next()?, f.next()?);
            let (s, e) = range.split_once('-')?;
            perms.contains('x').then(|| {
                Some((
                    u64::from_str_radix(s, 16).ok()?,
                    u64::from_str_radix(e, 16).ok()?,
                ))
            })?
        })
        .collect()
}

#[test]
fn samples_a_filtered_busy_process_with_frame_pointer_stacks() {
    let program = BusyProgram::build();
    run(async {
        let child = program.spawn();
        let pid = child.pid();
        let config = SamplerConfig {
            frequency_hz: 99,
            pid_filter: Some(vec![pid]),
            bpf_stats: true,
            ..SamplerConfig::default()
        };
        let Some(mut sampler) = start_or_skip(config) else {
            return;
        };
        // What was sampled while the program attached is not measured.
        collect(&mut sampler, Duration::from_millis(100)).await;
        let started = Instant::now();
        let cpu_before = cpu_seconds(pid);
        let events = collect(&mut sampler, Duration::from_millis(1500)).await;
        let elapsed = started.elapsed().as_secs_f64();
        let on_cpu = cpu_seconds(pid) - cpu_before;
        let text = text_mappings(pid, &program.path);
        assert!(
            !text.is_empty(),
            "no executable mapping of {} in /proc/{pid}/maps",
            program.path.display()
        );

        let all: Vec<Seen> = samples(&events).collect();
        // The event ticks per CPU: the process gets 99 samples per second
        // it spends on a CPU, however busy the machine is with other tests.
        let rate = all.len() as f64 / on_cpu;
        let stats = sampler.stats();
        println!(
            "filtered busy process: {} samples in {elapsed:.2}s ({:.1}/s), on CPU {on_cpu:.2}s: {rate:.1} samples per CPU second; {stats:?}",
            all.len(),
            all.len() as f64 / elapsed
        );
        if let Some((ns, runs)) = sampler.bpf_run_stats() {
            // run_cnt also counts the runs on other processes that the
            // filter turned away at once.
            println!(
                "BPF program cost, filtered: {:.0} ns per run ({ns} ns / {runs} runs), {:.0} ns per sample taken",
                ns as f64 / runs.max(1) as f64,
                ns as f64 / stats.samples.max(1) as f64
            );
        }
        // The timer ticks per CPU in wall time, so a process that shares
        // its CPU with others (a busy machine) is sampled with the
        // scheduler's aliasing: ±30%, where a quiet machine gives ±5%.
        assert!(
            (99.0 * 0.7..=99.0 * 1.3).contains(&rate),
            "{rate:.1} samples per CPU second, expected 99 ±30%"
        );
        assert!(
            all.iter().all(|s| s.pid == pid),
            "a sample from another process passed the filter"
        );
        assert_eq!(stats.events_malformed, 0);

        let in_text = |pc: u64| text.iter().any(|&(s, e)| pc >= s && pc < e);
        let mut good = 0;
        for s in &all {
            assert!(!s.flags.contains(SampleFlags::KTHREAD));
            let names: Vec<&str> = s
                .user
                .iter()
                .map(|&pc| program.function_of(pc).unwrap_or("?"))
                .collect();
            if s.user.len() >= 3 && s.user[..3].iter().all(|&pc| in_text(pc)) {
                good += 1;
            }
            // Return addresses point just after the call: look up pc - 1.
            let callers: Vec<&str> = s
                .user
                .iter()
                .skip(1)
                .map(|&pc| program.function_of(pc - 1).unwrap_or("?"))
                .collect();
            if names.first() == Some(&"inner") {
                assert_eq!(callers[..3], ["middle", "outer", "main"], "stack {names:?}");
            }
        }
        assert!(
            good * 100 >= all.len() * 95,
            "{good} of {} samples have >= 3 user frames inside the text mapping",
            all.len()
        );
    });
}

#[test]
fn samples_every_process_without_a_filter() {
    let program = BusyProgram::build();
    run(async {
        // A user-mode spinner and a syscall-bound process (kernel-mode samples).
        let a = program.spawn();
        let b = KillOnDrop(
            Command::new("dd")
                .args(["if=/dev/zero", "of=/dev/null", "bs=1"])
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn dd"),
        );
        let config = SamplerConfig {
            bpf_stats: true,
            ..SamplerConfig::default()
        };
        let Some(mut sampler) = start_or_skip(config) else {
            return;
        };
        let events = collect(&mut sampler, Duration::from_millis(1000)).await;
        let pids: HashSet<u32> = samples(&events).map(|s| s.pid).collect();
        let stats = sampler.stats();
        println!(
            "unfiltered: {} samples from {} processes; {stats:?}",
            samples(&events).count(),
            pids.len()
        );
        if let Some((ns, runs)) = sampler.bpf_run_stats() {
            println!(
                "BPF program cost per sample, unfiltered: {:.0} ns ({ns} ns / {runs} runs)",
                ns as f64 / runs.max(1) as f64
            );
        }
        assert!(
            pids.contains(&a.pid()) && pids.contains(&b.pid()),
            "pids seen: {pids:?}"
        );
        let dd_in_kernel: Vec<Seen> = samples(&events)
            .filter(|s| s.pid == b.pid() && s.flags.contains(SampleFlags::KERNEL_MODE))
            .collect();
        assert!(!dd_in_kernel.is_empty(), "no kernel-mode sample of dd");
        for s in dd_in_kernel {
            assert!(
                !s.kernel.is_empty(),
                "kernel-mode sample without a kernel stack: {s:?}"
            );
            assert!(
                s.kernel.iter().all(|&pc| pc >= 0xffff_8000_0000_0000),
                "{s:?}"
            );
            // User registers saved at kernel entry: the IP is in user space.
            assert!(
                s.user
                    .first()
                    .is_some_and(|&ip| ip > 0 && ip < 0x8000_0000_0000),
                "{s:?}"
            );
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after the epoch")
            .as_nanos() as u64;
        for s in samples(&events) {
            assert!(
                now.abs_diff(s.time_unix_nano) < 10_000_000_000,
                "sample time {} vs now {now}",
                s.time_unix_nano
            );
            assert!(s.cpu < 4096);
            if s.flags.contains(SampleFlags::KTHREAD) {
                assert!(s.user.is_empty());
            }
            if !s.flags.contains(SampleFlags::KERNEL_MODE) {
                assert!(s.kernel.is_empty());
            }
        }
    });
}

#[test]
fn reports_exec_and_exit_of_a_followed_child() {
    run(async {
        // Filter on this test process: /bin/true is its child, followed
        // through the fork program.
        let config = SamplerConfig {
            pid_filter: Some(vec![std::process::id()]),
            ..SamplerConfig::default()
        };
        let Some(mut sampler) = start_or_skip(config) else {
            return;
        };
        let status = Command::new("/bin/true")
            .status()
            .expect("running /bin/true");
        assert!(status.success());
        let events = collect(&mut sampler, Duration::from_millis(200)).await;
        let exec = events.iter().find_map(|e| match e {
            SamplerEvent::Exec { pid, comm, time_ns } if comm == "true" => Some((*pid, *time_ns)),
            _ => None,
        });
        let Some((child, exec_time)) = exec else {
            panic!("no exec event for /bin/true in {events:?}");
        };
        let exit_time = events.iter().find_map(|e| match e {
            SamplerEvent::Exit { pid, time_ns } if *pid == child => Some(*time_ns),
            _ => None,
        });
        let Some(exit_time) = exit_time else {
            panic!("no exit event for pid {child} in {events:?}");
        };
        assert!(exit_time >= exec_time);
        assert!(events
            .iter()
            .all(|e| !matches!(e, SamplerEvent::Exit { pid, .. } if *pid == std::process::id())));
    });
}

#[test]
fn wakes_up_early_when_the_ring_buffer_is_half_full() {
    let program = BusyProgram::build();
    run(async {
        let _busy = program.spawn();
        let config = SamplerConfig {
            frequency_hz: 999,
            ring_buffer_bytes: 4096,
            poll_interval: Duration::from_secs(30),
            ..SamplerConfig::default()
        };
        let Some(mut sampler) = start_or_skip(config) else {
            return;
        };
        // The first call returns at once: a newly registered fd starts ready.
        sampler
            .next_events()
            .await
            .expect("reading the ring buffer");
        let started = Instant::now();
        let events = sampler
            .next_events()
            .await
            .expect("reading the ring buffer");
        let waited = started.elapsed();
        println!(
            "half-full wakeup after {waited:?} with {} events",
            events.len()
        );
        assert!(
            waited < Duration::from_secs(5),
            "no early wakeup: waited {waited:?}"
        );
        assert!(!events.is_empty());
    });
}

#[test]
fn rejects_bad_configuration() {
    let bad = SamplerConfig {
        ring_buffer_bytes: 3000,
        ..SamplerConfig::default()
    };
    assert!(matches!(Sampler::start(bad), Err(SamplerError::Config(_))));
    let bad = SamplerConfig {
        frequency_hz: 0,
        ..SamplerConfig::default()
    };
    assert!(matches!(Sampler::start(bad), Err(SamplerError::Config(_))));
}

#[test]
fn off_cpu_settings_are_checked_and_scaled() {
    for probability in [0.0, -0.5, 1.5, f64::NAN] {
        let bad = SamplerConfig {
            off_cpu: Some(OffCpuConfig {
                probability,
                ..OffCpuConfig::default()
            }),
            ..SamplerConfig::default()
        };
        assert!(
            matches!(Sampler::start(bad), Err(SamplerError::Config(_))),
            "{probability}"
        );
    }
    let always = OffCpuConfig::default();
    assert_eq!(always.threshold(), 1 << 32, "every u32 is below it");
    assert_eq!(always.scale(1_234), 1_234);
    let tenth = OffCpuConfig {
        probability: 0.1,
        ..OffCpuConfig::default()
    };
    assert_eq!(tenth.threshold(), 429_496_730);
    assert_eq!(tenth.scale(2_000_000), 20_000_000);
    // The smallest probability still records something.
    let tiny = OffCpuConfig {
        probability: 1e-12,
        ..OffCpuConfig::default()
    };
    assert_eq!(tiny.threshold(), 1);
}

/// The feature check's verdicts on kernels played by the probes' answers
/// (no root needed): each older kernel gets one line naming the newest
/// feature it lacks, with the version that brought it.
#[test]
fn an_older_kernel_is_told_in_one_line_which_feature_it_lacks() {
    let release = || "5.15.0-91-generic".to_owned();
    let lacking = |absent: &'static [BpfHelper]| {
        move |h: BpfHelper| Ok::<bool, io::Error>(!absent.contains(&h))
    };
    let ring = || Ok::<bool, io::Error>(true);
    let cases: [(&'static [BpfHelper], &str); 3] = [
        // Ubuntu 22.04's 5.15: everything but bpf_loop.
        (
            &[BpfHelper::BPF_FUNC_loop],
            "the kernel (5.15.0-91-generic) lacks the bpf_loop helper, which the eBPF \
             sampler needs (Linux 5.17 or later; the minimum kernel is 5.17)",
        ),
        // 5.10: neither bpf_loop nor bpf_task_pt_regs; the newest is named.
        (
            &[BpfHelper::BPF_FUNC_loop, BpfHelper::BPF_FUNC_task_pt_regs],
            "the kernel (5.15.0-91-generic) lacks the bpf_loop helper",
        ),
        // A kernel with bpf_loop whose task_pt_regs is missing (a backport).
        (
            &[BpfHelper::BPF_FUNC_task_pt_regs],
            "lacks the bpf_task_pt_regs helper, which the eBPF sampler needs (Linux 5.15 or later",
        ),
    ];
    for (absent, want) in cases {
        let err = check_kernel_features(lacking(absent), ring, release).unwrap_err();
        assert!(err.is_unsupported(), "{err:?}");
        let text = err.to_string();
        assert!(!text.contains('\n'), "one line: {text}");
        assert!(text.contains(want), "{absent:?}: {text}");
    }
    let no_ring = check_kernel_features(lacking(&[]), || Ok::<bool, io::Error>(false), release)
        .unwrap_err()
        .to_string();
    assert!(
        no_ring.contains("lacks the BPF ring buffer map") && no_ring.contains("Linux 5.8"),
        "{no_ring}"
    );
    check_kernel_features(lacking(&[]), ring, release).expect("every feature present");
    // A probe that itself fails is an error about probing, not a verdict.
    let failed = check_kernel_features(
        |_| Err(io::Error::from_raw_os_error(libc::EINVAL)),
        ring,
        release,
    )
    .unwrap_err()
    .to_string();
    assert!(
        failed.starts_with("probing the kernel for the bpf_loop helper"),
        "{failed}"
    );
}
