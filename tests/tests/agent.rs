//! `smolder agent` end to end (needs root for eBPF; CI runs these as root):
//! against an OTLP receiver built from the official `opentelemetry-proto`
//! Python stubs and grpcio (`tests/oracles/otlp_receiver.py`), with a C
//! workload of known hot functions compiled here; the HTTP page in
//! headless Chromium; `/metrics` parsed by the Prometheus Python client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prost::Message;
use serde_json::Value;
use smolder_e2e::{
    assert_split, compile_c, profile_stacks, pyenv_python, python_check, require_ebpf,
    require_tool, run_ok, smolder_bin, split_script, split_shares, timeout_scale, workspace_root,
    KillOnDrop, Lines,
};
use smolder_profiles_proto::otlp::collector::profiles::v1development::ExportProfilesServiceRequest;
use smolder_profiles_proto::read_profile;

/// Loops forever in two known functions, 3:1.
const WORKLOAD_C: &str = r#"
volatile unsigned long sink;
__attribute__((noinline, aligned(64))) void hot_alpha(long n) { for (long i = 0; i < n; i++) sink += i * i; }
__attribute__((noinline, aligned(64))) void hot_beta(long n) { for (long i = 0; i < n; i++) sink += i * i; }
__attribute__((noinline)) void dispatch(void) { hot_alpha(3000000); hot_beta(1000000); }
int main(void) { for (;;) dispatch(); }
"#;

/// How long the agent may take to load its eBPF program (the verifier is
/// slow on a loaded machine).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the Python receiver may take to import grpcio and the stubs
/// (minutes, not seconds, from a guest kernel's 9p root under emulation:
/// `tests/kernels/run`).
const RECEIVER_START_TIMEOUT: Duration = Duration::from_secs(120);

fn sigterm(child: &Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

/// The workload, running until dropped.
fn workload(dir: &Path, env: &[(&str, &str)]) -> KillOnDrop {
    let bin = compile_c(
        dir,
        "smolder_hot",
        WORKLOAD_C,
        &["-O1", "-g", "-fno-omit-frame-pointer"],
    );
    let mut cmd = Command::new(bin);
    cmd.envs(env.iter().copied());
    KillOnDrop(cmd.spawn().expect("start the workload"))
}

/// The official-stubs receiver on loopback.
struct Receiver {
    child: KillOnDrop,
    port: u16,
    out: PathBuf,
    lines: Lines,
}

impl Receiver {
    fn start(out: &Path, fail_first: u32) -> Receiver {
        require_tool("python3", "python3");
        let mut child = Command::new("python3")
            .arg(workspace_root().join("tests/oracles/otlp_receiver.py"))
            .arg("--out")
            .arg(out)
            .args(["--fail-first", &fail_first.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the receiver");
        let lines = Lines::default();
        lines.follow(child.stdout.take().unwrap());
        let errors = Lines::default();
        errors.follow(child.stderr.take().unwrap());
        let child = KillOnDrop(child);
        let first = lines
            .wait_for(RECEIVER_START_TIMEOUT, |l| l.contains("\"port\""))
            .unwrap_or_else(|| {
                panic!(
                    "the receiver did not start (are grpcio and opentelemetry-proto installed? .ci/run installs them): {}",
                    errors.text()
                )
            });
        let port = serde_json::from_str::<Value>(&first).unwrap()["port"]
            .as_u64()
            .unwrap() as u16;
        Receiver {
            child,
            port,
            out: out.to_owned(),
            lines,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The JSON lines of Export calls so far.
    fn calls(&self) -> Vec<Value> {
        self.lines
            .all()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("seq").is_some())
            .collect()
    }

    fn accepted(&self) -> usize {
        self.calls().iter().filter(|c| c["status"] == "OK").count()
    }

    /// The accepted requests, in arrival order.
    fn request_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "bin"))
            .collect();
        files.sort();
        files
    }
}

struct Agent {
    child: KillOnDrop,
    stderr: Lines,
    http: Option<SocketAddr>,
}

impl Agent {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut child = Command::new(smolder_bin())
            .arg("agent")
            .args(args)
            .envs(env.iter().copied())
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start smolder agent");
        let stderr = Lines::default();
        stderr.follow(child.stderr.take().unwrap());
        let mut child = KillOnDrop(child);
        let deadline = Instant::now() + START_TIMEOUT;
        let line = loop {
            if let Some(line) = stderr.wait_for(Duration::from_millis(200), |l| {
                l.starts_with("smolder agent: running")
            }) {
                break line;
            }
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!("smolder agent exited ({status}): {}", stderr.text());
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not start: {}",
                stderr.text()
            );
        };
        let http = line
            .split(", ")
            .find_map(|part| part.strip_prefix("http://"))
            .map(|addr| addr.parse().unwrap());
        Agent {
            child,
            stderr,
            http,
        }
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// SIGTERM; returns how long the agent took to exit and its stderr.
    fn stop(mut self) -> (Duration, String) {
        let start = Instant::now();
        sigterm(&self.child.0);
        let status = loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs_f64(20.0 * timeout_scale()),
                "the agent ignored SIGTERM: {}",
                self.stderr.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = start.elapsed();
        std::thread::sleep(Duration::from_millis(100));
        let text = self.stderr.text();
        assert!(status.success(), "the agent failed ({status}): {text}");
        (took, text)
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(self.http.expect("the agent serves HTTP"), path)
    }
}

/// A plain HTTP/1.0 GET: status and body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

/// The agents of these tests take turns: each samples with eBPF and
/// measures time-bound behaviour that five agents on two CPUs would blur.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn decode_request(path: &Path) -> ExportProfilesServiceRequest {
    ExportProfilesServiceRequest::decode(std::fs::read(path).unwrap().as_slice()).unwrap()
}

/// The summary the official decoder gives of the resource of `pid`.
fn resource_of(summary: &Value, pid: u32) -> Option<Value> {
    summary["resources"].as_array()?.iter().find_map(|r| {
        (r["process.pid"]["intValue"].as_str() == Some(&pid.to_string())).then(|| r.clone())
    })
}

fn status_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default()
}

const NEEDED_CAPS: u64 = (1 << 39) | (1 << 38) | (1 << 34) | (1 << 19) | (1 << 2);

/// A thread of a process, with its capability sets.
#[derive(Debug)]
struct Thread {
    /// `Name:` of its status, then its id.
    name: String,
    cap_eff: u64,
    cap_prm: u64,
}

fn threads(pid: u32) -> Vec<Thread> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid: u32 = task.unwrap().file_name().to_str().unwrap().parse().unwrap();
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")) else {
            continue; // the thread ended meanwhile
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let mask = |name: &str| u64::from_str_radix(&field(name), 16).unwrap();
        out.push(Thread {
            name: format!("{} ({tid})", field("Name")),
            cap_eff: mask("CapEff"),
            cap_prm: mask("CapPrm"),
        });
    }
    out
}

/// Capabilities are per thread: the agent's HTTP server and OTLP exporter
/// run on threads of their own that hold none, while the sampling threads
/// keep the five the sampler needs.
#[test]
fn http_and_exporter_threads_hold_no_capabilities() {
    if !require_ebpf() {
        return;
    }
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&dir.path().join("received"), 0);
    let work = workload(dir.path(), &[]);
    let agent = Agent::start(
        &[
            "--endpoint",
            &receiver.endpoint(),
            "--http",
            "127.0.0.1:0",
            "-i",
            "1s",
            "--pid",
            &work.0.id().to_string(),
        ],
        &[],
    );
    // The page answers and an export arrives: both kinds of thread work.
    assert_eq!(agent.get("/healthz").0, 200);
    wait_until(Duration::from_secs(30), "an export", || {
        receiver.accepted() >= 1
    });
    let threads = threads(agent.pid());
    for prefix in ["smolder-http", "smolder-export"] {
        let named: Vec<&Thread> = threads
            .iter()
            .filter(|t| t.name.starts_with(prefix))
            .collect();
        assert!(!named.is_empty(), "no {prefix} thread in {threads:?}");
        for t in named {
            assert_eq!((t.cap_eff, t.cap_prm), (0, 0), "{t:?}");
        }
    }
    let others: Vec<&Thread> = threads
        .iter()
        .filter(|t| !t.name.starts_with("smolder-http") && !t.name.starts_with("smolder-export"))
        .collect();
    assert!(!others.is_empty());
    for t in others {
        assert_eq!(t.cap_eff, NEEDED_CAPS, "{t:?}");
    }
    let (took, stderr) = agent.stop();
    assert!(
        took < Duration::from_secs(5),
        "exit took {took:?}: {stderr}"
    );
    drop(receiver.child);
    drop(work);
}

#[test]
fn exports_the_workload_to_the_official_receiver() {
    if !require_ebpf() {
        return;
    }
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&dir.path().join("received"), 0);
    let work = workload(dir.path(), &[("OTEL_SERVICE_NAME", "hot-service")]);
    let agent = Agent::start(
        &["--endpoint", &receiver.endpoint(), "-i", "1s", "-F", "99"],
        &[
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-smolder-test=yes%20indeed"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=e2e"),
        ],
    );
    // Only the capabilities it needs in the sampling threads, none in the
    // exporter's.
    for thread in threads(agent.pid()) {
        let want = if thread.name.starts_with("smolder-export") {
            0
        } else {
            NEEDED_CAPS
        };
        assert_eq!(thread.cap_eff, want, "CapEff of {thread:?}");
        assert_eq!(thread.cap_prm, want, "CapPrm of {thread:?}");
    }
    // Whole-host symbolization is slow the first time in a debug build.
    let deadline = Instant::now() + Duration::from_secs_f64(90.0 * timeout_scale());
    while receiver.accepted() < 2 {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for two accepted exports; the receiver saw {:?}; the agent said: {}",
            receiver.calls(),
            agent.stderr.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, stderr) = agent.stop();
    let work_pid = work.0.id();

    let calls = receiver.calls();
    assert!(
        calls
            .iter()
            .all(|c| c["metadata"]["x-smolder-test"] == "yes indeed"),
        "headers from OTEL_EXPORTER_OTLP_HEADERS: {calls:?}"
    );
    let mut found = 0;
    let mut leaves = std::collections::BTreeMap::<String, i64>::new();
    for file in receiver.request_files() {
        let summary = python_check(&file, "request");
        assert!(
            summary["resources"].as_array().unwrap().len() > 1,
            "one resource per process"
        );
        for r in summary["resources"].as_array().unwrap() {
            assert!(r.get("host.name").is_some(), "{r}");
            assert_eq!(r["os.type"]["stringValue"], "linux");
            assert_eq!(r["deployment.environment"]["stringValue"], "e2e");
        }
        if let Some(r) = resource_of(&summary, work_pid) {
            found += 1;
            assert_eq!(r["service.name"]["stringValue"], "hot-service", "{r}");
            assert_eq!(r["process.executable.name"]["stringValue"], "smolder_hot");
        }
        for (name, weight) in summary["leaves"].as_object().unwrap() {
            *leaves.entry(name.clone()).or_default() += weight.as_i64().unwrap();
        }
    }
    assert!(
        found >= 2,
        "the workload in every interval: {found}\n{stderr}"
    );
    let alpha = leaves.get("hot_alpha").copied().unwrap_or(0);
    let beta = leaves.get("hot_beta").copied().unwrap_or(0);
    assert!(alpha > 0 && beta > 0, "hot functions: {leaves:?}");
    assert!(
        alpha > beta,
        "hot_alpha does 3x the work of hot_beta: {leaves:?}"
    );
    drop(work);
}

#[test]
fn unavailable_then_recovers_without_losing_an_interval() {
    if !require_ebpf() {
        return;
    }
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&dir.path().join("received"), 3);
    let work = workload(dir.path(), &[]);
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "interval = \"1s\"\nfrequency_hz = 49\nendpoint = \"{}\"\n[filter]\npids = [{}]\n\
             [exporter]\ninitial_backoff = \"100ms\"\nmax_backoff = \"400ms\"\n",
            receiver.endpoint(),
            work.0.id()
        ),
    )
    .unwrap();
    let agent = Agent::start(&["--config", config.to_str().unwrap()], &[]);
    wait_until(Duration::from_secs(60), "4 accepted exports", || {
        receiver.accepted() >= 4
    });
    let (_, stderr) = agent.stop();
    let intervals: usize = stderr
        .lines()
        .find_map(|l| l.split("stopped after ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary line: {stderr}"));

    let calls = receiver.calls();
    let refused = calls
        .iter()
        .filter(|c| c["status"] == "UNAVAILABLE")
        .count();
    assert_eq!(refused, 3, "{calls:?}");
    // Every interval arrived once, and together they cover the run without a gap.
    let mut spans: Vec<(u64, u64)> = receiver
        .request_files()
        .iter()
        .map(|f| {
            let request = decode_request(f);
            let profile = &request.resource_profiles[0].scope_profiles[0].profiles[0];
            (profile.time_unix_nano, profile.duration_nano)
        })
        .collect();
    let exports: usize = stderr
        .lines()
        .find_map(|l| l.split(" intervals: ").nth(1))
        .and_then(|rest| rest.split(", ").nth(1))
        .and_then(|n| n.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no export count: {stderr}"));
    assert_eq!(spans.len(), exports, "every export arrived once: {stderr}");
    // The last interval (the flush) may be too short to hold a sample.
    assert!(
        spans.len() + 1 >= intervals,
        "{} exports for {intervals} intervals: {stderr}",
        spans.len()
    );
    spans.sort();
    for pair in spans.windows(2) {
        let (start, duration) = pair[0];
        let gap = pair[1].0 as i64 - (start + duration) as i64;
        assert!(
            gap.abs() < 100_000_000,
            "a gap of {gap} ns between intervals: {spans:?}"
        );
    }
    assert!(
        stderr.contains("retry"),
        "the refusals were logged: {stderr}"
    );
}

#[test]
fn a_long_outage_drops_the_oldest_and_memory_stays_bounded() {
    if !require_ebpf() {
        return;
    }
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let work = workload(dir.path(), &[]);
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let agent = Agent::start(
        &[
            "--endpoint",
            &format!("http://127.0.0.1:{port}"),
            "--http",
            "127.0.0.1:0",
            "-i",
            "500ms",
            "--queue-bytes",
            "20000",
            "--pid",
            &work.0.id().to_string(),
        ],
        &[],
    );
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    wait_until(Duration::from_secs(30), "dropped batches", || {
        metric(
            &agent.get("/metrics").1,
            "smolder_export_dropped_batches_total",
        ) >= 3.0
    });
    let rss_early: u64 = status_field(agent.pid(), "VmRSS")
        .trim_end_matches(" kB")
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let text = agent.get("/metrics").1;
    let rss_late: u64 = status_field(agent.pid(), "VmRSS")
        .trim_end_matches(" kB")
        .parse()
        .unwrap();
    let peak: u64 = status_field(agent.pid(), "VmHWM")
        .trim_end_matches(" kB")
        .parse()
        .unwrap();
    assert!(
        metric(&text, "smolder_export_queue_bytes") <= 20000.0,
        "{text}"
    );
    assert_eq!(metric(&text, "smolder_export_queue_limit_bytes"), 20000.0);
    assert!(metric(&text, "smolder_export_dropped_bytes_total") > 0.0);
    assert_eq!(
        metric(&text, "smolder_exports_total{result=\"success\"}"),
        0.0
    );
    assert!(metric(&text, "smolder_export_failed_attempts_total") >= 1.0);
    assert!(
        rss_late < rss_early + 16 * 1024,
        "RSS grew from {rss_early} kB to {rss_late} kB during the outage"
    );
    assert!(peak < 200 * 1024, "peak RSS {peak} kB");
    agent.stop();
    drop(work);
}

#[test]
fn page_in_headless_chromium_metrics_and_local_files() {
    if !require_ebpf() {
        return;
    }
    let _turn = one_at_a_time();
    let chromium = require_tool("chromium", "Debian chromium");
    let dir = tempfile::tempdir().unwrap();
    let work = workload(dir.path(), &[]);
    let out = dir.path().join("intervals");
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "[retention]\ncount = 2\n").unwrap();
    let agent = Agent::start(
        &[
            "--config",
            config.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
            "--output-dir",
            out.to_str().unwrap(),
            "-i",
            "1s",
            "-F",
            "99",
            "--exe",
            "smolder_hot",
        ],
        &[],
    );
    let addr = agent.http.unwrap();
    assert_eq!(agent.get("/healthz").0, 200);
    wait_until(Duration::from_secs(30), "the workload on the page", || {
        agent.get("/").1.contains("smolder_hot")
    });

    let profile_dir = tempfile::tempdir().unwrap();
    let screenshot = dir.path().join("page.png");
    let browse = |extra: &[&str]| {
        let out = Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1400,1600",
            ])
            .arg(format!("--user-data-dir={}", profile_dir.path().display()))
            .args(extra)
            .arg(format!("http://{addr}/"))
            .output()
            .expect("run chromium");
        assert!(
            out.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = browse(&["--dump-dom"]);
    let table = dom.find("id=\"processes\"").expect("the process table");
    assert!(
        dom[table..].contains("smolder_hot"),
        "the workload is listed"
    );
    let graph = dom
        .find("id=\"host-flamegraph\"")
        .expect("the host flamegraph");
    let svg = &dom[graph..];
    assert!(svg.contains("<svg"), "the flamegraph is drawn inline");
    assert!(
        svg.contains("hot_alpha") && svg.contains("hot_beta"),
        "the workload's functions are in the graph"
    );
    assert!(svg.contains("smolder_hot ["), "a root per process");
    assert!(
        !dom.contains("python3"),
        "the name filter keeps only the workload"
    );
    browse(&[&format!("--screenshot={}", screenshot.display())]);
    let png = std::fs::read(&screenshot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);

    let pid = work.0.id();
    let (status, page) = agent.get(&format!("/process/{pid}"));
    assert_eq!(status, 200);
    assert!(page.contains("hot_alpha"));
    let (status, svg) = agent.get(&format!("/process/{pid}/flamegraph.svg"));
    assert_eq!(status, 200);
    assert!(svg.starts_with("<?xml") && svg.contains("hot_beta"));

    // /metrics as the Prometheus client library reads it.
    let metrics = agent.get("/metrics").1;
    let parsed = Command::new("python3")
        .args([
            "-c",
            "import json,sys\nfrom prometheus_client.parser import text_string_to_metric_families as f\n\
             print(json.dumps({s.name + json.dumps(s.labels, sort_keys=True): s.value for m in f(sys.stdin.read()) for s in m.samples}))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(metrics.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        parsed.status.success(),
        "the Prometheus parser rejected /metrics (is prometheus-client installed? .ci/run installs it): {}\n{metrics}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let samples: Value = serde_json::from_slice(&parsed.stdout).unwrap();
    for name in [
        "smolder_samples_total{}",
        "smolder_samples_lost_total{}",
        "smolder_samples_held_back_dropped_total{}",
        "smolder_unwind_failures_total{}",
        "smolder_symbolization_errors_total{}",
        "smolder_export_queue_bytes{}",
        "smolder_unwind_tables_loaded{}",
        "smolder_exports_total{\"result\": \"failure\"}",
    ] {
        assert!(samples.get(name).is_some(), "{name} missing: {samples}");
    }
    assert!(samples["smolder_samples_total{}"].as_f64().unwrap() > 0.0);
    assert!(samples["smolder_intervals_total{}"].as_f64().unwrap() >= 1.0);

    // The local store keeps the newest two intervals, each as OTLP + SVG.
    wait_until(Duration::from_secs(10), "three intervals", || {
        samples_of(&agent.get("/metrics").1, "smolder_intervals_total") >= 3.0
    });
    agent.stop();
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 4, "{names:?}");
    let otlp = out.join(&names[0]);
    assert!(
        names[0].ends_with(".otlp") && names[1].ends_with(".svg"),
        "{names:?}"
    );
    let summary = python_check(&otlp, "data");
    assert!(summary["samples"].as_i64().unwrap() > 0);
    drop(work);
}

fn samples_of(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn sigterm_flushes_the_last_interval() {
    if !require_ebpf() {
        return;
    }
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&dir.path().join("received"), 0);
    let work = workload(dir.path(), &[]);
    let agent = Agent::start(
        &[
            "--endpoint",
            &receiver.endpoint(),
            "-i",
            "1s",
            "-F",
            "99",
            "--pid",
            &work.0.id().to_string(),
        ],
        &[],
    );
    wait_until(Duration::from_secs(30), "two exports", || {
        receiver.accepted() >= 2
    });
    // Half-way through an interval: what it holds arrives only by the flush.
    std::thread::sleep(Duration::from_millis(500));
    let stopped_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let (took, stderr) = agent.stop();
    assert!(
        took < Duration::from_secs(5),
        "exit took {took:?}: {stderr}"
    );
    let files = receiver.request_files();
    let last = decode_request(files.last().unwrap());
    let profile = &last.resource_profiles[0].scope_profiles[0].profiles[0];
    let end = profile.time_unix_nano + profile.duration_nano;
    assert!(
        end + 50_000_000 >= stopped_at,
        "the last export ends {} ms before SIGTERM: the partial interval was lost\n{stderr}",
        (stopped_at - end) / 1_000_000
    );
    let summary = python_check(files.last().unwrap(), "request");
    let r = resource_of(&summary, work.0.id()).expect("the workload's resource");
    assert_eq!(r["process.executable.name"]["stringValue"], "smolder_hot");
    assert!(
        summary["leaves"]["hot_alpha"].as_i64().unwrap_or(0) > 0,
        "{summary}"
    );
    drop(receiver.child);
    drop(work);
}

/// Burns CPU in a shared library, and once running deletes the library and
/// puts a FIFO at its path (user nobody can do this in its own directory).
const FIFO_LIB_C: &str = r#"
volatile unsigned long sink;
__attribute__((noinline)) void lib_hot(void) { for (long i = 0; i < 1000000; i++) sink += i * i; }
"#;
const FIFO_MAIN_C: &str = r#"
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
void lib_hot(void);
int main(int argc, char **argv) {
    unlink(argv[1]);
    mkfifo(argv[1], 0666);
    printf("ready\n");
    fflush(stdout);
    for (;;) lib_hot();
}
"#;

/// A process (user nobody) maps a file, deletes it and puts a FIFO at its
/// path: the agent (root) keeps writing intervals, `/healthz` stays 200 and
/// SIGTERM ends it within its budget.
#[test]
fn a_fifo_at_a_deleted_mapped_path_does_not_stall_the_agent() {
    if !require_ebpf() {
        return;
    }
    let _turn = one_at_a_time();
    require_tool("setpriv", "util-linux");
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
    let lib = dir.path().join("libvictim.so");
    run_ok(
        Command::new("gcc")
            .args(["-O1", "-shared", "-fPIC", "-o"])
            .arg(&lib)
            .arg({
                let src = dir.path().join("victim.c");
                std::fs::write(&src, FIFO_LIB_C).unwrap();
                src
            }),
    );
    let main = dir.path().join("fifo_main");
    run_ok(
        Command::new("gcc")
            .args(["-O1", "-o"])
            .arg(&main)
            .arg({
                let src = dir.path().join("main.c");
                std::fs::write(&src, FIFO_MAIN_C).unwrap();
                src
            })
            .arg(format!("-L{}", dir.path().display()))
            .arg(format!("-Wl,-rpath,{}", dir.path().display()))
            .arg("-lvictim"),
    );
    let mut child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&main)
        .arg(&lib)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let work = KillOnDrop(child);
    assert_eq!(line.trim(), "ready");
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&lib)
        .unwrap()
        .file_type()
        .is_fifo());

    // Root's own directory: the agent keeps no CAP_DAC_OVERRIDE.
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("intervals");
    let agent = Agent::start(
        &[
            "--http",
            "127.0.0.1:0",
            "--output-dir",
            out.to_str().unwrap(),
            "-i",
            "1s",
            "-F",
            "99",
            "--pid",
            &work.0.id().to_string(),
        ],
        &[],
    );
    let intervals = || {
        std::fs::read_dir(&out)
            .map(|d| d.filter_map(Result::ok).count())
            .unwrap_or(0)
    };
    wait_until(Duration::from_secs(30), "three intervals written", || {
        intervals() >= 3
    });
    assert_eq!(agent.get("/healthz").0, 200);
    let (took, stderr) = agent.stop();
    assert!(
        took < Duration::from_secs(5),
        "exit took {took:?}: {stderr}"
    );
    drop(work);
}

/// The agent names the Python frames of an interpreter it finds running
/// (CPython 3.12 on the split script): the intervals it exports to the
/// official receiver, decoded by the official stubs, hold the interpreter's
/// samples with `<module>` -> `main` -> `sixty`/`thirty`/`ten` -> `work`
/// in about the script's split.
#[test]
fn python_frames_are_exported_with_their_split() {
    if !require_ebpf() {
        return;
    }
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&dir.path().join("received"), 0);
    // More CPU time than the test lasts: killed at the end.
    let python = KillOnDrop(
        Command::new(pyenv_python(12))
            .arg(split_script())
            .arg("600")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the split script"),
    );
    let pid = python.0.id();
    let agent = Agent::start(
        &["--endpoint", &receiver.endpoint(), "-i", "2s", "-F", "199"],
        &[],
    );
    // Intervals until 300 samples of the interpreter carry Python frames.
    let mut stacks = Vec::new();
    let mut seen = 0;
    wait_until(
        Duration::from_secs(180),
        "300 samples with Python frames",
        || {
            let files = receiver.request_files();
            for file in &files[seen..] {
                // The official decoder accepts each request.
                python_check(file, "request");
                let data = read_profile(&std::fs::read(file).unwrap()).unwrap().data;
                stacks.extend(profile_stacks(&data, Some(pid)));
            }
            seen = files.len();
            split_shares(&stacks).2 >= 300
        },
    );
    // What was exported is all this test reads: no need to wait for the
    // last interval's flush (whole-host symbolization in a debug build on a
    // busy machine can take longer than `Agent::stop` allows).
    let stderr = agent.stderr.text();
    drop(agent);
    drop(python);
    let all: i64 = stacks.iter().map(|(_, n)| n).sum();
    let (shares, complete, total) = split_shares(&stacks);
    eprintln!(
        "agent: {total} of {all} samples of the interpreter with Python frames, {:.1}% complete, {shares:?}",
        complete * 100.0
    );
    assert_split(
        &shares,
        complete,
        0.05,
        &format!("agent (it said: {stderr})"),
    );
    // Python frames carry the script's file and a line in it.
    let script = split_script();
    assert!(stacks
        .iter()
        .flat_map(|(f, _)| f.iter())
        .filter(|f| f.python && f.function == "sixty")
        .all(|f| f.file == script.to_str().unwrap() && f.line == 9));
}
