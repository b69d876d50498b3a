//! The in-process profiler (`smolder::Profiler`) in a program that profiles
//! itself (profiler/examples/inprocess.rs), run as an unprivileged user:
//! the known functions carry their shares, every thread appears, labels
//! reach the samples, and at 999 Hz the samples account for at least 95% of
//! the CPU time the workload used. A traced service (profiler/examples/
//! traced_service.rs): samples carry their `tracing` span and its
//! OpenTelemetry link through OTLP (read by the official decoder), pprof
//! (`go tool pprof -tagfocus`) and `smolder flamegraph --trace-id`, and its
//! memory stays flat while it exports interval after interval.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use smolder_e2e::{require_tool, run_ok, smolder_ok, workspace_root};
use smolder_profiles_proto::{
    pprof::any_value_to_string, read_profile, sample_link, sample_weight, ProfileView,
};

/// Builds example `name` of the smolder crate with `features`.
fn build_example(name: &str, features: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run_ok(Command::new(cargo).current_dir(workspace_root()).args([
        "build",
        "--quiet",
        "-p",
        "smolder",
        "--features",
        features,
        "--example",
        name,
    ]));
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    // The unprivileged user must be able to run it from a copy it can read.
    let copy = std::env::temp_dir().join(format!("smolder-{name}-{}", std::process::id()));
    std::fs::copy(profile_dir.join("examples").join(name), &copy).unwrap();
    copy
}

fn example() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_example("inprocess", "exporter"))
}

fn traced_service() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_example("traced_service", "exporter,tracing"))
}

struct Run {
    summary: serde_json::Value,
    data: smolder_profiles_proto::otlp::profiles::v1development::ProfilesData,
}

/// Every test here runs alone: each burns CPU (a workload, a service,
/// a build), and the shares one test checks drifted past their bound
/// when others ran beside it (work_alpha 0.566 against 0.6 at 99 Hz in a
/// CI run, 0.548 in one with more load on the host; four busy loops on
/// the two CPUs gave work_gamma 0.139 against 0.1).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the example as user `nobody` (perf_event_paranoid 2 allows it to
/// sample its own threads).
fn run_unprivileged(args: &[&str]) -> Run {
    let _turn = one_at_a_time();
    let setpriv = require_tool("setpriv", "util-linux");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let out = run_ok(
        Command::new(setpriv)
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(example())
            .args(args)
            .arg("--out")
            .arg(dir.path()),
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON summary");
    let data = read_profile(&std::fs::read(dir.path().join("profile.pb")).unwrap())
        .unwrap()
        .data;
    assert!(dir.path().join("profile.svg").exists());
    Run { summary, data }
}

/// Share of samples whose stack holds each work function, samples per
/// thread name, and the labels seen with each (thread, work function).
struct Shares {
    work: BTreeMap<&'static str, f64>,
    /// Samples in any work function (the shares' denominator).
    samples: i64,
    threads: BTreeMap<String, i64>,
    labelled: BTreeSet<(String, &'static str)>,
}

fn shares(data: &smolder_profiles_proto::otlp::profiles::v1development::ProfilesData) -> Shares {
    const WORK: [&str; 3] = ["work_alpha", "work_beta", "work_gamma"];
    let view = ProfileView::new(data);
    let mut counts: BTreeMap<&'static str, i64> = BTreeMap::new();
    let mut threads = BTreeMap::new();
    let mut labelled = BTreeSet::new();
    let mut total = 0;
    for (_, profile) in view.profiles() {
        for s in &profile.samples {
            let w = sample_weight(s);
            let functions: Vec<String> = view
                .stack(s.stack_index)
                .flat_map(|l| {
                    view.lines(l)
                        .map(|f| f.function.to_owned())
                        .collect::<Vec<_>>()
                })
                .collect();
            let thread = view
                .attribute(&s.attribute_indices, "thread.name")
                .map(any_value_to_string)
                .unwrap_or_default();
            *threads.entry(thread.clone()).or_insert(0) += w;
            let endpoint = view
                .attribute(&s.attribute_indices, "endpoint")
                .map(any_value_to_string);
            for name in WORK {
                if functions.iter().any(|f| f.ends_with(name)) {
                    *counts.entry(name).or_insert(0) += w;
                    total += w;
                    if endpoint.as_deref() == Some("/api") {
                        labelled.insert((thread.clone(), name));
                    }
                }
            }
        }
    }
    Shares {
        work: counts
            .into_iter()
            .map(|(k, v)| (k, v as f64 / total.max(1) as f64))
            .collect(),
        samples: total,
        threads,
        labelled,
    }
}

fn check_shares_threads_labels(run: &Run) {
    assert_eq!(run.summary["sampler"], "PerfEvents", "{}", run.summary);
    let s = shares(&run.data);
    // A share estimated from n samples is off by about sqrt(p(1-p)/n): at
    // 99 Hz for 3 CPU-seconds (about 880 samples) that is 0.017 for
    // work_alpha, and a fixed bound of 0.03 failed a CI run (0.566; eight
    // runs beside two busy loops gave 0.578 to 0.611). The bound is 3.5
    // of those, and never under 0.03.
    let n = s.samples as f64;
    for (name, want) in [("work_alpha", 0.6), ("work_beta", 0.3), ("work_gamma", 0.1)] {
        let got = s.work.get(name).copied().unwrap_or(0.0);
        let bound = (3.5 * (want * (1.0 - want) / n.max(1.0)).sqrt()).max(0.03);
        assert!(
            (got - want).abs() <= bound,
            "{name}: {got:.3} (want {want} ± {bound:.3}) in {:?} ({})",
            s.work,
            run.summary
        );
    }
    for worker in ["worker-1", "worker-2", "worker-3"] {
        assert!(
            s.threads.get(worker).is_some_and(|&n| n > 0),
            "{worker} missing: {:?}",
            s.threads
        );
    }
    // Worker 1 runs work_beta under `endpoint=/api`; nothing else is labelled.
    assert_eq!(
        s.labelled,
        BTreeSet::from([("worker-1".to_owned(), "work_beta")]),
        "{}",
        run.summary
    );
}

#[test]
fn in_process_at_99_hz_without_root() {
    let run = run_unprivileged(&["--hz", "99", "--cpu-seconds", "3"]);
    check_shares_threads_labels(&run);
}

#[test]
fn in_process_at_999_hz_captures_95_percent_of_cpu_time() {
    let run = run_unprivileged(&["--hz", "999", "--cpu-seconds", "1"]);
    check_shares_threads_labels(&run);
    let sampled = run.summary["sampled_cpu_ns"].as_f64().unwrap();
    let used = run.summary["workload_cpu_ns"].as_f64().unwrap();
    assert!(
        sampled >= 0.95 * used,
        "captured {:.1}% of the CPU time: {}",
        100.0 * sampled / used,
        run.summary
    );
}

#[test]
fn signal_fallback_still_gives_a_profile() {
    let run = run_unprivileged(&["--hz", "99", "--seconds", "1", "--fallback"]);
    assert_eq!(run.summary["sampler"], "SignalFallback", "{}", run.summary);
    let s = shares(&run.data);
    assert!(
        s.work.get("work_alpha").is_some_and(|&x| x > 0.3),
        "{:?}",
        s.work
    );
}

#[test]
fn without_default_features_there_is_no_aya_clap_or_agent() {
    let _turn = one_at_a_time();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = run_ok(Command::new(cargo).current_dir(workspace_root()).args([
        "tree",
        "-p",
        "smolder",
        "--no-default-features",
        "-e",
        "normal",
        "--prefix",
        "none",
        "--offline",
    ]));
    let tree = String::from_utf8_lossy(&out.stdout);
    // (tonic comes with the OTLP types of smolder-profiles-proto, gen-tonic.)
    for banned in ["aya ", "clap ", "axum ", "caps ", "toml ", "indicatif "] {
        assert!(
            !tree.lines().any(|l| l.starts_with(banned)),
            "{banned}found in the tree:\n{tree}"
        );
    }
}

/// Starts the OTLP receiver (tests/oracles/otlp_receiver.py) writing each
/// request into `dir`; returns it and its port.
fn start_receiver(dir: &Path) -> (std::process::Child, u64) {
    require_tool("python3", "python3");
    let mut receiver = Command::new("python3")
        .arg(workspace_root().join("tests/oracles/otlp_receiver.py"))
        .arg("--out")
        .arg(dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the receiver");
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(receiver.stdout.take().unwrap()));
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    (
        receiver,
        first["port"].as_u64().expect("the receiver's port"),
    )
}

#[test]
fn long_running_mode_exports_every_interval_over_otlp() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (mut receiver, port) = start_receiver(dir.path());
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(example())
        .args([
            "--hz",
            "99",
            "--cpu-seconds",
            "4",
            "--export-every",
            "1",
            "--out",
        ])
        .arg(out.path())
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        )
        .env("OTEL_SERVICE_NAME", "inprocess-example")
        .output()
        .unwrap();
    let _ = receiver.kill();
    let _ = receiver.wait();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mut requests: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    requests.sort();
    // 4 s of CPU per worker in 1 s intervals, and the last part at stop. An interval ends
    // only once the previous one is symbolized (the first parses the debug
    // info of this debug build, seconds on a busy machine), so how many
    // there are depends on the CPU; that every sample arrives does not.
    assert!(
        requests.len() >= 2,
        "only {} exports arrived",
        requests.len()
    );
    let mut total = 0;
    for request in &requests {
        let summary = smolder_e2e::python_check(request, "request");
        total += summary["total"].as_i64().unwrap_or(0);
        let resource = &summary["resources"][0];
        assert_eq!(
            resource["service.name"]["stringValue"], "inprocess-example",
            "{summary}"
        );
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&run.stdout).expect("the example prints a JSON summary");
    let taken = summary["samples"].as_i64().expect("samples in the summary");
    assert!(taken > 0, "{summary}");
    assert_eq!(total, taken, "exported samples vs samples taken: {summary}");
}

/// One request of the traced service: its span name, trace id, span id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Request {
    name: String,
    trace_id: String,
    span_id: String,
}

fn requests(summary: &serde_json::Value) -> Vec<Request> {
    summary["requests"]
        .as_array()
        .expect("requests in the summary")
        .iter()
        .map(|r| Request {
            name: r["name"].as_str().unwrap().to_owned(),
            trace_id: r["trace_id"].as_str().unwrap().to_owned(),
            span_id: r["span_id"].as_str().unwrap().to_owned(),
        })
        .collect()
}

/// Functions named in `go tool pprof -top` output.
fn go_pprof_top(pprof: &Path, tagfocus: &str) -> String {
    require_tool("go", "golang-go");
    let out = run_ok(
        Command::new("go")
            .args(["tool", "pprof", "-top", "-nodecount=1000"])
            .arg(format!("-tagfocus={tagfocus}"))
            .arg(pprof)
            .env("HOME", std::env::temp_dir())
            .env("PPROF_TMPDIR", std::env::temp_dir()),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn samples_in_traced_requests_carry_span_names_and_links() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let out = run_ok(
        Command::new(traced_service())
            .args([
                "--hz",
                "999",
                "--requests",
                "1",
                "--request-cpu-ms",
                "800",
                "--out",
            ])
            .arg(dir.path()),
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON summary");
    assert_eq!(summary["sampler"], "PerfEvents", "{summary}");
    let mut reqs = requests(&summary);
    reqs.sort();
    let names: Vec<&str> = reqs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["checkout", "search"], "{summary}");
    assert_ne!(reqs[0].trace_id, reqs[1].trace_id);
    let hot = [("checkout", "price_cart"), ("search", "rank_results")];

    // smolder's own reading: every sample in a hot function carries its
    // request's span name, route and link.
    let pb = dir.path().join("profile.pb");
    let data = read_profile(&std::fs::read(&pb).unwrap()).unwrap().data;
    let view = ProfileView::new(&data);
    let mut seen = BTreeMap::new();
    for (_, profile) in view.profiles() {
        for s in &profile.samples {
            let functions: Vec<String> = view
                .stack(s.stack_index)
                .flat_map(|l| {
                    view.lines(l)
                        .map(|f| f.function.to_owned())
                        .collect::<Vec<_>>()
                })
                .collect();
            for (request, function) in hot {
                if !functions.iter().any(|f| f.ends_with(function)) {
                    continue;
                }
                let want = reqs.iter().find(|r| r.name == request).unwrap();
                let attr = |key| {
                    view.attribute(&s.attribute_indices, key)
                        .map(any_value_to_string)
                        .unwrap_or_default()
                };
                assert_eq!(attr("span.name"), request, "a sample in {function}");
                assert_eq!(
                    attr("route"),
                    format!("/{request}"),
                    "a sample in {function}"
                );
                let link = sample_link(&view, s)
                    .unwrap_or_else(|| panic!("a sample in {function} has no link"));
                assert_eq!(
                    (link.trace_id_hex(), link.span_id_hex()),
                    (want.trace_id.clone(), want.span_id.clone()),
                    "the link of a sample in {function}"
                );
                *seen.entry(function).or_insert(0) += sample_weight(s);
            }
        }
    }
    for (_, function) in hot {
        assert!(
            seen.get(function).is_some_and(|&n| n > 0),
            "no sample in {function}: {seen:?}"
        );
    }

    // The official decoder reads the same links.
    let checked =
        smolder_e2e::python_check_with(&pb, "data", &["--functions", "price_cart,rank_results"]);
    for (request, function) in hot {
        let want = reqs.iter().find(|r| r.name == request).unwrap();
        let by_link = checked["links_by_function"][function]
            .as_object()
            .unwrap_or_else(|| panic!("{checked}"));
        let keys: Vec<&String> = by_link.keys().collect();
        assert_eq!(
            keys,
            [&format!("{}/{}", want.trace_id, want.span_id)],
            "links of the samples in {function}: {checked}"
        );
        assert_eq!(
            by_link.values().next().unwrap().as_i64(),
            seen.get(function).copied()
        );
    }

    // go tool pprof selects one request's samples by its trace_id label.
    let pprof = dir.path().join("profile.pprof");
    for (request, function) in hot {
        let want = reqs.iter().find(|r| r.name == request).unwrap();
        let other = hot.iter().find(|(r, _)| *r != request).unwrap().1;
        let top = go_pprof_top(&pprof, &format!("trace_id={}", want.trace_id));
        assert!(top.contains(function), "{function} missing:\n{top}");
        assert!(
            !top.contains(other),
            "{other} selected with {request}'s trace:\n{top}"
        );
    }

    // smolder flamegraph --trace-id draws one request.
    for (request, function) in hot {
        let want = reqs.iter().find(|r| r.name == request).unwrap();
        let other = hot.iter().find(|(r, _)| *r != request).unwrap().1;
        for input in [&pb, &pprof] {
            let svg = dir.path().join(format!("{request}.svg"));
            smolder_ok([
                "flamegraph".as_ref(),
                "--trace-id".as_ref(),
                want.trace_id.as_ref(),
                input.as_os_str(),
                "-o".as_ref(),
                svg.as_os_str(),
            ]);
            let text = std::fs::read_to_string(&svg).unwrap();
            assert!(
                text.contains(function) && !text.contains(other),
                "{}",
                input.display()
            );
        }
    }
}

/// Resident memory of the traced service after each exported interval
/// (0.5 s of its requests), while it exports over OTLP to a receiver.
#[test]
fn long_running_mode_keeps_memory_flat_over_ten_intervals() {
    let _turn = one_at_a_time();
    let receiver_dir = tempfile::tempdir().unwrap();
    let (mut receiver, port) = start_receiver(receiver_dir.path());
    let out = tempfile::tempdir().unwrap();
    // Requests are served until ten intervals were exported, however long
    // each takes to symbolize on a busy machine.
    let run = Command::new(traced_service())
        .args([
            "--hz",
            "999",
            "--requests",
            "50",
            "--request-cpu-ms",
            "10",
            "--export-every",
            "0.5",
            "--intervals",
            "10",
            "--out",
        ])
        .arg(out.path())
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        )
        .output()
        .unwrap();
    let _ = receiver.kill();
    let _ = receiver.wait();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let rss: Vec<u64> = summary["rss_kib_after_interval"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(rss.len() >= 10, "only {} intervals: {summary}", rss.len());
    // From the third interval on, what the profiler keeps is bounded: the
    // parsed debug info it keeps may grow by 16 MiB (`PARSED_BYTES`) before
    // it is dropped, plus allocator noise; not with the intervals.
    let base = rss[2];
    let peak = *rss[2..10].iter().max().unwrap();
    assert!(
        peak <= base + 16 * 1024 + 2048,
        "RSS grew from {base} KiB to {peak} KiB over intervals 3-10: {rss:?}"
    );
}
