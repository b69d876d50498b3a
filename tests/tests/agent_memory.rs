//! The agent's memory limit on a busy, churning host (needs root for eBPF;
//! CI runs it as root): 60 s of a build-like load (gcc compiling over and
//! over) plus ~15 distinct short-lived programs started every second, with
//! the default `memory_limit` (64 MiB). The agent's peak resident memory
//! (`VmHWM`, read from the kernel, not from the agent) stays under the
//! limit plus [`MARGIN`], every interval reaches the OTLP receiver built
//! from the official `opentelemetry-proto` stubs
//! (`tests/oracles/otlp_receiver.py`), and every request passes the
//! official decoder (`tests/oracles/otlp_check.py`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use smolder_e2e::{
    compile_c, peak_rss, python_check, require_ebpf, require_tool, start_agent, workspace_root,
    KillOnDrop, Lines,
};

/// The default limit (`memory_limit`), and what the test allows above it:
/// the limit bounds the caches and tables, which are trimmed when resident
/// memory comes near it after an interval; within an interval, the
/// symbolization of that interval and an unwind table being built come on
/// top. The margin also covers a debug build's larger code and stacks.
const LIMIT: u64 = 64 << 20;
const MARGIN: u64 = 16 << 20;

const RUN: Duration = Duration::from_secs(60);
const INTERVAL: &str = "10s";
const PROGRAMS: usize = 60;
const STARTS_PER_SECOND: u64 = 15;

/// One of the short-lived programs: its own function (and build-id), 40 ms
/// of spinning (wall time, so that they never pile up on a loaded host).
fn program(i: usize) -> String {
    format!(
        r#"
#include <time.h>
__attribute__((noinline)) unsigned long churn_work_{i}(unsigned long n) {{
    volatile unsigned long s = {i};
    for (unsigned long k = 0; k < n; k++) s = s * 31 + k;
    return s;
}}
int main(void) {{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {{
        churn_work_{i}(100000);
        clock_gettime(CLOCK_MONOTONIC, &t);
    }} while ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < 40000000L);
    return 0;
}}
"#
    )
}

/// A C file of 2,000 small functions: a second or more of `gcc -O2`.
fn build_source() -> String {
    (0..2000)
        .map(|i| {
            format!(
                "int f{i}(int x) {{ int s = 0; for (int k = 0; k < x; k++) s += (k * {i}) ^ (s >> 3); return s; }}\n"
            )
        })
        .collect()
}

/// The churn: a compile loop and the program starter, until dropped.
struct Churn {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl Churn {
    fn start(dir: &Path) -> Churn {
        let programs: Vec<PathBuf> = (0..PROGRAMS)
            .map(|i| compile_c(dir, &format!("churn_{i}"), &program(i), &["-O2", "-g"]))
            .collect();
        let source = dir.join("build.c");
        std::fs::write(&source, build_source()).unwrap();
        let object = dir.join("build.o");
        let stop = Arc::new(AtomicBool::new(false));
        let compile = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let status = Command::new("gcc")
                        .args(["-O2", "-c"])
                        .arg(&source)
                        .arg("-o")
                        .arg(&object)
                        .status()
                        .expect("run gcc");
                    assert!(status.success(), "gcc failed");
                    n += 1;
                }
                n
            })
        };
        let starter = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let gap = Duration::from_nanos(1_000_000_000 / STARTS_PER_SECOND);
                let mut children: Vec<Child> = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let bin = &programs[n as usize % programs.len()];
                    children.push(Command::new(bin).spawn().expect("start a program"));
                    n += 1;
                    children.retain_mut(|c| c.try_wait().ok().flatten().is_none());
                    std::thread::sleep(gap);
                }
                for mut c in children {
                    let _ = c.wait();
                }
                n
            })
        };
        Churn {
            stop,
            threads: vec![compile, starter],
        }
    }

    /// Stops; returns (compiles, programs started).
    fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let mut counts = self
            .threads
            .drain(..)
            .map(|t| t.join().expect("load thread"));
        (counts.next().unwrap_or(0), counts.next().unwrap_or(0))
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits for a line of `lines` that `pred` holds for; fails the test
/// naming `what` after `timeout`.
fn wait_for(lines: &Lines, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
    lines
        .wait_for(timeout, pred)
        .unwrap_or_else(|| panic!("waiting for {what}: {:?}", lines.all()))
}

#[test]
fn under_churn_the_agent_stays_within_its_default_memory_limit() {
    if !require_ebpf() {
        return;
    }
    require_tool("gcc", "gcc");
    require_tool("python3", "python3");
    let dir = tempfile::tempdir().unwrap();
    let received = dir.path().join("received");

    let mut receiver = Command::new("python3")
        .arg(workspace_root().join("tests/oracles/otlp_receiver.py"))
        .arg("--out")
        .arg(&received)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the receiver");
    let receiver_lines = Lines::default();
    receiver_lines.follow(receiver.stdout.take().unwrap());
    let receiver = KillOnDrop(receiver);
    let first = wait_for(
        &receiver_lines,
        Duration::from_secs(120),
        "the receiver's port (are grpcio and opentelemetry-proto installed? .ci/run installs them)",
        |l| l.contains("\"port\""),
    );
    let port = serde_json::from_str::<Value>(&first).unwrap()["port"]
        .as_u64()
        .unwrap();

    let churn = Churn::start(dir.path());
    let mut agent = start_agent([
        "-i",
        INTERVAL,
        "--endpoint",
        &format!("http://127.0.0.1:{port}"),
    ]);
    let agent_lines = Lines::default();
    agent_lines.follow(agent.stderr.take().unwrap());
    let agent = KillOnDrop(agent);
    wait_for(
        &agent_lines,
        Duration::from_secs(120),
        "the agent to start",
        |l| l.starts_with("smolder agent: running"),
    );
    std::thread::sleep(RUN);
    let peak = peak_rss(agent.0.id());
    eprintln!("the agent's peak resident memory: {} MiB", peak >> 20);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    let mut agent = agent;
    let status = agent.0.wait().expect("wait for the agent");
    let (compiles, started) = churn.stop();
    std::thread::sleep(Duration::from_millis(200));
    let log = agent_lines.text();
    assert!(status.success(), "the agent failed ({status}): {log}");
    assert!(
        compiles >= 2 && started >= 15 * 30,
        "the churn ran: {compiles} compiles, {started} programs"
    );

    assert!(
        peak < LIMIT + MARGIN,
        "peak RSS {} MiB over the limit of {} MiB + {} MiB margin\n{log}",
        peak >> 20,
        LIMIT >> 20,
        MARGIN >> 20
    );

    // Every interval the agent finished (the last one included: SIGTERM
    // flushes it) reached the receiver, and each passes the decoder.
    let intervals = log
        .lines()
        .filter(|l| l.contains(" interval ") && l.contains(" samples, "))
        .count();
    assert!(
        intervals >= 4,
        "intervals finished in {RUN:?} at {INTERVAL}: {intervals}\n{log}"
    );
    // The receiver writes a request file once it has answered.
    std::thread::sleep(Duration::from_secs(1));
    let mut requests: Vec<PathBuf> = std::fs::read_dir(&received)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    requests.sort();
    assert_eq!(
        requests.len(),
        intervals,
        "one export per interval finished\n{log}"
    );
    let mut churn_frames = 0;
    for request in &requests {
        let summary = python_check(request, "request");
        let resources = summary["resources"].as_array().expect("resources");
        assert!(resources.len() > 1, "one resource per process: {summary}");
        churn_frames += summary["leaves"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|name| name.starts_with("churn_work_"))
            .count();
    }
    assert!(
        churn_frames > 0,
        "the short-lived programs' functions are named"
    );
    drop(receiver);
}
