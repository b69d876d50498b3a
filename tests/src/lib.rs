//! Helpers shared by smolder's end-to-end tests: the `smolder` binary,
//! external tools (which must be installed: `.ci/run` installs them, and a
//! missing tool fails the test rather than skipping it), and fixtures
//! compiled in the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `smolder` binary of this build profile, built once per test process;
/// `$SMOLDER_BIN` instead when set (a prebuilt binary, for test executables
/// run where cargo cannot build, such as the kernel matrix's guests, whose
/// root file system is the host's, read-only: `tests/kernels/run`).
pub fn smolder_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("SMOLDER_BIN") {
            let bin = PathBuf::from(bin);
            assert!(bin.is_file(), "SMOLDER_BIN={} is not a file", bin.display());
            return bin;
        }
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> -> target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>");
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root())
            .args(["build", "--quiet", "-p", "smolder", "--bin", "smolder"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building the smolder binary failed");
        profile_dir.join("smolder")
    })
}

/// Runs `smolder` with `args`.
pub fn smolder<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(smolder_bin())
        .args(args)
        .output()
        .expect("run smolder")
}

/// Runs `smolder` and insists that it succeeds; returns its stderr.
pub fn smolder_ok<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = smolder(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "smolder failed: {stderr}");
    stderr
}

/// The path of an external tool; panics with an install hint when absent.
pub fn require_tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is required by this test: install {package} (.ci/run does)")
        })
}

/// Folded lines of a folded-stacks file: (frames root first, count).
pub fn folded(path: &Path) -> Vec<(Vec<String>, u64)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (stack, n) = l.rsplit_once(' ')?;
            Some((
                stack.split(';').map(str::to_owned).collect(),
                n.parse().ok()?,
            ))
        })
        .collect()
}

/// `perf record -g -F HZ -- CMD` into `dir`, its `perf script` text
/// collapsed by smolder's reader: the path of the folded stacks.
pub fn perf_record_folded(dir: &Path, hz: &str, cmd: &[&std::ffi::OsStr]) -> PathBuf {
    require_tool("perf", "linux-perf");
    let data = dir.join("perf.data");
    run_ok(
        Command::new("perf")
            .args(["record", "-q", "-g", "-F", hz, "-o"])
            .arg(&data)
            .arg("--")
            .args(cmd),
    );
    let text = dir.join("perf.txt");
    std::fs::write(
        &text,
        run_ok(Command::new("perf").args(["script", "-i"]).arg(&data)).stdout,
    )
    .unwrap();
    let folded = dir.join("perf.folded");
    smolder_ok([
        "convert".as_ref(),
        text.as_os_str(),
        "-o".as_ref(),
        folded.as_os_str(),
        "-f".as_ref(),
        "folded".as_ref(),
    ]);
    folded
}

/// Runs a command and returns its output, panicking with stderr on failure.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Decodes an OTLP file with the official `opentelemetry-proto` Python
/// package (`tests/oracles/otlp_check.py`) as `kind` (`data`, `request` or
/// `json`), checking the schema's invariants from Python; returns its summary.
pub fn python_check(file: &Path, kind: &str) -> serde_json::Value {
    python_check_with(file, kind, &[])
}

/// [`python_check`] with more arguments for the checker (`--functions F,G`).
pub fn python_check_with(file: &Path, kind: &str, args: &[&str]) -> serde_json::Value {
    require_tool("python3", "python3");
    let script = workspace_root().join("tests/oracles/otlp_check.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(file)
        .args(["--as", kind])
        .args(args)
        .output()
        .expect("run python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the official decoder rejected {} as {kind}: {stderr}\n(is `opentelemetry-proto` installed? .ci/run installs it with pip)",
        file.display()
    );
    serde_json::from_slice(&out.stdout).expect("checker prints JSON")
}

/// True when this process may load eBPF programs (root). Otherwise: fails
/// the test when `CI` is set (CI runs as root, so eBPF must work there),
/// and prints why and returns false elsewhere.
pub fn require_ebpf() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("this test needs root for eBPF, and CI is set: it must not be skipped");
    }
    eprintln!("skipping: this test needs root for eBPF");
    false
}

/// Compiles a C source into `dir/name` with gcc and `flags`.
///
/// With `SMOLDER_FIXTURE_CACHE` set to a directory, a build of the same
/// source, flags and gcc found there is copied instead, and a new build is
/// stored there when the directory is writable: `.ci/run` fills it on the
/// host so that the guest kernels of `tests/kernels/run` (whose root is the
/// host's, read-only, and where gcc runs under emulation for minutes) run
/// the very binaries the host suite ran.
pub fn compile_c(dir: &Path, name: &str, source: &str, flags: &[&str]) -> PathBuf {
    let gcc = require_tool("gcc", "gcc");
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).expect("write C source");
    let bin = dir.join(name);
    let cached = std::env::var_os("SMOLDER_FIXTURE_CACHE")
        .map(|cache| PathBuf::from(cache).join(fixture_key(&gcc, name, source, flags)));
    if let Some(cached) = cached.as_ref().filter(|c| c.is_file()) {
        std::fs::copy(cached, &bin)
            .unwrap_or_else(|e| panic!("copying {} to {}: {e}", cached.display(), bin.display()));
        return bin;
    }
    run_ok(Command::new(&gcc).args(flags).arg("-o").arg(&bin).arg(&src));
    if let Some(cached) = cached {
        store_fixture(&bin, &cached);
    }
    bin
}

/// The cache's name for a build: gcc (its resolved path, size and mtime),
/// the flags, the source and the name, hashed.
fn fixture_key(gcc: &Path, name: &str, source: &str, flags: &[&str]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let gcc = std::fs::canonicalize(gcc).unwrap_or_else(|_| gcc.to_owned());
    gcc.hash(&mut h);
    if let Ok(meta) = std::fs::metadata(&gcc) {
        meta.len().hash(&mut h);
        meta.modified().ok().hash(&mut h);
    }
    (name, source, flags).hash(&mut h);
    format!("{:016x}-{name}", h.finish())
}

/// Best effort (a read-only cache, as in a guest kernel, keeps nothing):
/// written under a temporary name and renamed, so that a concurrent test
/// never copies half a binary.
fn store_fixture(bin: &Path, cached: &Path) {
    let Some(cache) = cached.parent() else { return };
    if std::fs::create_dir_all(cache).is_err() {
        return;
    }
    let tmp = cache.join(format!(".{}.{}", std::process::id(), unique()));
    if std::fs::copy(bin, &tmp).is_ok() && std::fs::rename(&tmp, cached).is_ok() {
        return;
    }
    let _ = std::fs::remove_file(&tmp);
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// C code for a time budget: `cpu_budget(secs)` arms a timer of the
/// process's CPU time, after which `cpu_budget_spent` is set. A workload
/// that loops until then runs for a time, not a number of iterations, so
/// what it yields does not depend on the CPU's speed or on other load, and
/// its loop makes no system call that would show in a profile.
pub const CPU_BUDGET_C: &str = r#"
#include <signal.h>
#include <sys/time.h>
static volatile sig_atomic_t cpu_budget_spent;
static void on_cpu_budget(int sig) { (void)sig; cpu_budget_spent = 1; }
/* SIGPROF after `secs` of this process's CPU time: no syscall in the loop. */
static void cpu_budget(double secs) {
    struct itimerval t = {{0, 0}, {(long)secs, (long)((secs - (long)secs) * 1e6)}};
    signal(SIGPROF, on_cpu_budget); setitimer(ITIMER_PROF, &t, 0);
}
"#;

/// How many times its usual CPU time a workload runs where a test scales
/// it: `SMOLDER_TEST_CPU_SCALE` (a positive number), 1 when unset.
/// `tests/kernels/guest` raises it: under emulation the sampling timer
/// fires at a fraction of its rate, and shares need the samples back.
pub fn cpu_scale() -> f64 {
    match std::env::var("SMOLDER_TEST_CPU_SCALE") {
        Ok(v) => match v.parse::<f64>() {
            Ok(x) if x > 0.0 && x.is_finite() => x,
            _ => panic!("SMOLDER_TEST_CPU_SCALE={v:?}: not a positive number"),
        },
        Err(_) => 1.0,
    }
}

/// How much longer than on this machine kind the tests' deadlines for the
/// slow work (the agent symbolizing every process of the host, its last
/// interval at exit) should be: `SMOLDER_TEST_TIMEOUT_SCALE`, default 1.
/// `tests/kernels/guest` sets it under emulation, where everything but the
/// sampling timer runs some ten times slower.
pub fn timeout_scale() -> f64 {
    match std::env::var("SMOLDER_TEST_TIMEOUT_SCALE") {
        Ok(v) => match v.parse::<f64>() {
            Ok(x) if x >= 1.0 && x.is_finite() => x,
            _ => panic!("SMOLDER_TEST_TIMEOUT_SCALE={v:?}: not a number of at least 1"),
        },
        Err(_) => 1.0,
    }
}

/// Whether the tests run under emulation (a `tests/kernels` guest, which
/// sets [`timeout_scale`] above 1): the timer skips periods while the
/// walk runs in its handler, and a new process's start-up lasts as long
/// as the host makes it, so bounds that depend on either are the host's.
pub fn emulated() -> bool {
    timeout_scale() > 1.0
}

/// `source` with [`CPU_BUDGET_C`] in front.
pub fn with_cpu_budget(source: &str) -> String {
    format!("{CPU_BUDGET_C}{source}")
}

/// A C program whose CPU time splits about 60/30/10 over three leaf
/// functions under a small call chain, for `argv[1]` seconds of CPU time;
/// compile it [`with_cpu_budget`]. The three loops start on a 64-byte
/// boundary each: the same instructions at different alignments ran at
/// different speeds (an AMD EPYC ran `hot_alpha`'s loop twice as fast as
/// `hot_beta`'s, so 6:3:1 iterations came out 44/42/13 of perf's samples).
pub const HOT_C: &str = r#"
#include <stdlib.h>
volatile unsigned long sink;
__attribute__((noinline, aligned(64))) void hot_alpha(long n) { for (long i = 0; i < n; i++) sink += i * i; }
__attribute__((noinline, aligned(64))) void hot_beta(long n) { for (long i = 0; i < n; i++) sink += i * i; }
__attribute__((noinline, aligned(64))) void hot_gamma(long n) { for (long i = 0; i < n; i++) sink += i * i; }
__attribute__((noinline)) void dispatch(long n) { hot_alpha(6 * n); hot_beta(3 * n); hot_gamma(n); }
__attribute__((noinline)) void run(void) { while (!cpu_budget_spent) dispatch(100000); }
int main(int argc, char **argv) { cpu_budget(argc > 1 ? atof(argv[1]) : 1.0); run(); return 0; }
"#;

/// A profile that exercises every part of the model: two processes, named
/// threads, mappings with build-ids, inlined frames with files and lines,
/// kernel frames, and per-sample timestamps.
pub fn rich_profile() -> smolder_profiles_proto::otlp::profiles::v1development::ProfilesData {
    use smolder_profiles_proto::*;
    let start = 1_700_000_000_000_000_000u64;
    let mut b = ProfileBuilder::new(ProfileConfig::cpu(99, start, 10_000_000_000));
    let cpu = b.default_profile_type();
    let exe = MappingSpec {
        memory_start: 0x5555_0000_0000,
        memory_limit: 0x5555_0010_0000,
        file_offset: 0,
        filename: "/usr/bin/server".into(),
        build_id: Some("0123456789abcdef0123456789abcdef01234567".into()),
    };
    let line = |f: &str, file: &str, n: i64| SourceLine {
        function: f.into(),
        file: file.into(),
        line: n,
        ..SourceLine::default()
    };
    let loc = |b: &mut ProfileBuilder, addr: u64, lines: Vec<SourceLine>, kind: FrameType| {
        b.location(&LocationSpec {
            mapping: (kind != FrameType::Kernel).then(|| exe.clone()),
            address: addr,
            lines,
            frame_type: kind,
        })
    };
    let main = loc(
        &mut b,
        0x5555_0000_1000,
        vec![line("main", "src/main.c", 10)],
        FrameType::Native,
    );
    let handle = loc(
        &mut b,
        0x5555_0000_2000,
        vec![
            line("parse_header", "src/http.h", 44),
            line("handle_request", "src/server.c", 120),
        ],
        FrameType::Native,
    );
    let hash = loc(
        &mut b,
        0x5555_0000_3000,
        vec![line("hash_bytes", "src/hash.c", 7)],
        FrameType::Native,
    );
    let read = loc(
        &mut b,
        0x5555_0000_4000,
        vec![line("read", "io/read.c", 3)],
        FrameType::Native,
    );
    let ksys = loc(
        &mut b,
        0xffff_ffff_8100_0000,
        vec![SourceLine::function("ksys_read")],
        FrameType::Kernel,
    );
    let vfs = loc(
        &mut b,
        0xffff_ffff_8100_1000,
        vec![SourceLine::function("vfs_read")],
        FrameType::Kernel,
    );
    let stacks = [
        b.stack(&[hash, handle, main]),
        b.stack(&[handle, main]),
        b.stack(&[vfs, ksys, read, handle, main]),
    ];
    for (pid, name) in [(100, "server"), (200, "worker-pool")] {
        let process = b.resource(vec![
            key_value("process.pid", int_value(pid)),
            key_value("process.executable.name", string_value(name)),
        ]);
        for (t, thread) in ["main", "io"].iter().enumerate() {
            let attrs = [
                b.attribute("thread.id", int_value(pid + t as i64), ""),
                b.attribute("thread.name", string_value(thread), ""),
            ];
            for (i, &stack) in stacks.iter().enumerate() {
                for k in 0..(3 + i as u64 * 2 + t as u64) {
                    b.add_sample(
                        process,
                        cpu,
                        stack,
                        &attrs,
                        1,
                        Some(start + k * 10_000_000 + i as u64),
                    );
                }
            }
        }
    }
    b.finish()
}

/// (resource attributes, sample attributes, frames leaf first as
/// (function, file, line), weight).
pub type CanonicalSample = (
    Vec<(String, String)>,
    Vec<(String, String)>,
    Vec<(String, String, i64)>,
    i64,
);

/// Every sample of a profile as (resource attributes, sample attributes,
/// frames leaf first as (function, file, line), weight), sorted: two
/// profiles with the same canonical samples hold the same information.
pub fn canonical_samples(
    data: &smolder_profiles_proto::otlp::profiles::v1development::ProfilesData,
) -> Vec<CanonicalSample> {
    use smolder_profiles_proto::{pprof::any_value_to_string, sample_weight, ProfileView};
    let view = ProfileView::new(data);
    let mut out = std::collections::BTreeMap::new();
    for (resource, profile) in view.profiles() {
        let mut rattrs: Vec<(String, String)> = resource
            .map(|r| {
                r.attributes
                    .iter()
                    .map(|kv| {
                        (
                            kv.key.clone(),
                            kv.value
                                .as_ref()
                                .map(any_value_to_string)
                                .unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        rattrs.sort();
        for s in &profile.samples {
            let mut sattrs: Vec<(String, String)> = view
                .attributes(&s.attribute_indices)
                .map(|(k, v)| (k.to_owned(), any_value_to_string(v)))
                .collect();
            sattrs.sort();
            let frames: Vec<(String, String, i64)> = view
                .stack(s.stack_index)
                .flat_map(|l| {
                    view.lines(l)
                        .map(|fl| (fl.function.to_owned(), fl.file.to_owned(), fl.line))
                        .collect::<Vec<_>>()
                })
                .collect();
            *out.entry((rattrs.clone(), sattrs, frames)).or_insert(0) += sample_weight(s);
        }
    }
    out.into_iter().map(|((r, s, f), w)| (r, s, f, w)).collect()
}

/// The pyenv interpreter 3.`minor` (`~/.pyenv/versions/3.N.*/bin/python3.N`).
pub fn pyenv_python(minor: u8) -> PathBuf {
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".pyenv"));
    let prefix = format!("3.{minor}.");
    std::fs::read_dir(root.join("versions"))
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path().join(format!("bin/python3.{minor}")))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "CPython 3.{minor} is required under {}/versions (.ci/run checks for it)",
                root.display()
            )
        })
}

/// Three functions splitting CPU time 60/30/10 for `argv[1]` seconds of
/// CPU time (not a number of rounds: the split does not depend on how fast
/// or busy the CPU is); the benchmark runs the same file.
pub fn split_script() -> PathBuf {
    workspace_root().join("tests/fixtures/split.py")
}

/// One frame of a recorded stack.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StackFrame {
    pub function: String,
    pub file: String,
    pub line: i64,
    /// A CPython frame (`profile.frame.type` `cpython`).
    pub python: bool,
}

/// Every sampled stack of a profile, root first, with its weight; only
/// those of process `pid` (its resource's `process.pid`) when given.
pub fn profile_stacks(
    data: &smolder_profiles_proto::otlp::profiles::v1development::ProfilesData,
    pid: Option<u32>,
) -> Vec<(Vec<StackFrame>, i64)> {
    timed_profile_stacks(data, pid)
        .into_iter()
        .map(|s| (s.frames, s.weight))
        .collect()
}

/// One sample of [`timed_profile_stacks`].
#[derive(Clone, Debug)]
pub struct TimedStack {
    /// Root first.
    pub frames: Vec<StackFrame>,
    /// Sum of the sample's values (its count when it has none).
    pub weight: i64,
    /// When each observation was taken (Unix ns); empty when the profile
    /// keeps none.
    pub timestamps: Vec<u64>,
}

/// A run split at the middle of its observations' time span: the first
/// half takes the start-up (a new process's unwind tables being built, for
/// seconds on a slow or emulated CPU), the second is the steady state.
#[derive(Clone, Copy, Debug)]
pub struct Halves {
    pub first: u64,
    pub middle: u64,
}

impl Halves {
    /// The halves of the observations of `samples`; panics when none has
    /// a timestamp.
    pub fn of(samples: &[TimedStack]) -> Halves {
        Halves::of_times(samples.iter().flat_map(|s| s.timestamps.iter().copied()))
    }

    /// The halves of a run with observations at `times`; panics when
    /// there are none.
    pub fn of_times(times: impl IntoIterator<Item = u64>) -> Halves {
        let (first, last) = times
            .into_iter()
            .fold((u64::MAX, 0), |(lo, hi), t| (lo.min(t), hi.max(t)));
        assert!(first <= last, "no timestamped samples");
        Halves {
            first,
            middle: first + (last - first) / 2,
        }
    }

    /// How many of `timestamps` lie in the run (its second half only when
    /// `late`).
    pub fn observations(&self, timestamps: &[u64], late: bool) -> usize {
        let from = if late { self.middle } else { self.first };
        timestamps.iter().filter(|&&t| t >= from).count()
    }

    /// Observations of samples that are `matching`, and all observations:
    /// in the second half only when `late`.
    pub fn count(
        &self,
        samples: &[TimedStack],
        matching: impl Fn(&TimedStack) -> bool,
        late: bool,
    ) -> (usize, usize) {
        let observations = |s: &TimedStack| self.observations(&s.timestamps, late);
        let all = samples.iter().map(observations).sum();
        let matched = samples
            .iter()
            .filter(|s| matching(s))
            .map(observations)
            .sum();
        (matched, all)
    }

    /// Seconds from the first observation to `t`.
    pub fn seconds(&self, t: u64) -> f64 {
        t.saturating_sub(self.first) as f64 / 1e9
    }

    /// The earliest 20 of `times`, as seconds from the first observation
    /// (for messages).
    pub fn earliest<'a>(&self, times: impl IntoIterator<Item = &'a u64>) -> Vec<String> {
        times
            .into_iter()
            .copied()
            .collect::<std::collections::BTreeSet<u64>>()
            .into_iter()
            .take(20)
            .map(|t| format!("{:.2}", self.seconds(t)))
            .collect()
    }
}

/// [`profile_stacks`] with each sample's timestamps.
pub fn timed_profile_stacks(
    data: &smolder_profiles_proto::otlp::profiles::v1development::ProfilesData,
    pid: Option<u32>,
) -> Vec<TimedStack> {
    use smolder_profiles_proto::otlp::common::v1::any_value::Value;
    use smolder_profiles_proto::{sample_weight, FrameType, ProfileView};
    let view = ProfileView::new(data);
    let mut out = Vec::new();
    for (resource, profile) in view.profiles() {
        if let Some(pid) = pid {
            let of_pid = resource.is_some_and(|r| {
                r.attributes.iter().any(|kv| {
                    kv.key == "process.pid"
                        && matches!(
                            kv.value.as_ref().and_then(|v| v.value.as_ref()),
                            Some(Value::IntValue(p)) if *p == i64::from(pid)
                        )
                })
            });
            if !of_pid {
                continue;
            }
        }
        for s in &profile.samples {
            let mut frames = Vec::new();
            for location in view.stack(s.stack_index) {
                let python = view.frame_type(location) == FrameType::CPython;
                for l in view.lines(location) {
                    frames.push(StackFrame {
                        function: l.function.to_owned(),
                        file: l.file.to_owned(),
                        line: l.line,
                        python,
                    });
                }
                if location.lines.is_empty() {
                    frames.push(StackFrame {
                        function: format!("{:#x}", location.address),
                        file: String::new(),
                        line: 0,
                        python,
                    });
                }
            }
            frames.reverse();
            out.push(TimedStack {
                frames,
                weight: sample_weight(s),
                timestamps: s.timestamps_unix_nano.clone(),
            });
        }
    }
    out
}

/// Asserts what [`split_shares`] found: each of `sixty`, `thirty`, `ten`
/// within `tolerance` of 60/30/10, and at least 95 % of those stacks
/// complete. `what` names the run in the messages.
pub fn assert_split(
    shares: &std::collections::BTreeMap<&'static str, f64>,
    complete: f64,
    tolerance: f64,
    what: &str,
) {
    for (name, want) in [("sixty", 0.6), ("thirty", 0.3), ("ten", 0.1)] {
        let got = shares.get(name).copied().unwrap_or(0.0);
        assert!(
            (got - want).abs() <= tolerance,
            "{what}: {name} {got:.3}, want {want} ({shares:?})"
        );
    }
    assert!(
        complete >= 0.95,
        "{what}: only {:.1}% of stacks are <module> -> main -> f -> work",
        complete * 100.0
    );
}

/// The `n` heaviest stacks of [`split_script`]'s run that are in none of
/// its three functions, root first, for a failure message.
pub fn outside_split(stacks: &[(Vec<StackFrame>, i64)], n: usize) -> String {
    let mut outside: Vec<&(Vec<StackFrame>, i64)> = stacks
        .iter()
        .filter(|(frames, _)| {
            !frames
                .iter()
                .any(|f| f.python && ["sixty", "thirty", "ten"].contains(&f.function.as_str()))
        })
        .collect();
    outside.sort_by_key(|(_, weight)| std::cmp::Reverse(*weight));
    outside
        .iter()
        .take(n)
        .map(|(frames, weight)| {
            let names: Vec<&str> = frames.iter().map(|f| f.function.as_str()).collect();
            format!("\n  {weight} {}", names.join(";"))
        })
        .collect()
}

/// For stacks of [`split_script`]: shares of `sixty`, `thirty`, `ten`
/// among the samples in any of them, the share of those whose Python
/// frames are exactly `<module>` -> `main` -> the function -> `work`, and
/// their total weight.
pub fn split_shares(
    stacks: &[(Vec<StackFrame>, i64)],
) -> (std::collections::BTreeMap<&'static str, f64>, f64, i64) {
    let mut per: std::collections::BTreeMap<&'static str, i64> = Default::default();
    let (mut total, mut complete) = (0i64, 0i64);
    for (frames, n) in stacks {
        let python: Vec<&str> = frames
            .iter()
            .filter(|f| f.python)
            .map(|f| f.function.as_str())
            .collect();
        let Some(name) = ["sixty", "thirty", "ten"]
            .into_iter()
            .find(|name| python.contains(name))
        else {
            continue;
        };
        *per.entry(name).or_default() += n;
        total += n;
        if python == ["<module>", "main", name, "work"] {
            complete += n;
        }
    }
    let shares = per
        .into_iter()
        .map(|(k, v)| (k, v as f64 / total.max(1) as f64))
        .collect();
    (shares, complete as f64 / total.max(1) as f64, total)
}

/// Lines a child writes, collected by a thread.
#[derive(Clone, Default)]
pub struct Lines(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Lines {
    /// Collects the lines of `stream` from now on.
    pub fn follow(&self, stream: impl std::io::Read + Send + 'static) {
        use std::io::BufRead;
        let lines = self.0.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
    }

    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    pub fn text(&self) -> String {
        self.all().join("\n")
    }

    /// Waits until `pred` holds for some line; returns it.
    pub fn wait_for(
        &self,
        timeout: std::time::Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(line) = self.all().into_iter().find(|l| pred(l)) {
                return Some(line);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// A child killed and reaped when dropped (a failing test leaves none).
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `smolder agent` with `args`, its OTLP endpoint and memory limit left to
/// the arguments (not to this environment's variables), stdout discarded
/// and stderr piped, started.
pub fn start_agent<I, S>(args: I) -> std::process::Child
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(smolder_bin())
        .arg("agent")
        .args(args)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT")
        .env_remove("SMOLDER_MEMORY_LIMIT")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start smolder agent")
}

/// `VmHWM` (peak resident memory) of `pid`, in bytes, as the kernel reports it.
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in status");
    kib << 10
}
