//! `smolder record --off-cpu` with the eBPF sampler, on programs built in
//! the test that measure their own waits with `clock_gettime`: where a
//! thread waits (the `off_cpu` profile), for how long, through the same
//! stack walker as on-CPU samples, next to the CPU profile, read back by
//! the official OTLP decoder. These need root (CI runs as root): they fail,
//! not skip, when `CI` is set and eBPF is unavailable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use smolder_e2e::{
    compile_c, emulated, python_check, require_ebpf, require_tool, run_ok, smolder_bin,
    with_cpu_budget, Halves,
};
use smolder_profiles_proto::{
    pprof::any_value_to_string, read_profile, sample_weight, ProfileView,
};

/// Each test measures shares of time that a concurrent test's load would
/// disturb (wake-up latencies): they take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The thread "waiter" waits, `argv[1]` rounds, in turn 6, 3 and 1 units of
/// `argv[2]` microseconds: asleep in `wait_sleep` (nanosleep), blocked on a
/// pipe in `wait_pipe` (the "writer" thread writes 3 units after it is
/// asked) and on a condition variable in `wait_cond` (a timed wait nobody
/// signals). It times each wait with clock_gettime and prints the sums.
/// It first sleeps 50 ms then 700 ms: the sampler loads the unwind tables of
/// a program's libraries on its first stack that needs them (here the end
/// of the first sleep), and until they are loaded stacks through libc (no
/// frame pointers) stop early.
const WAITS_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static int request[2], data[2];
static long unit_ns, rounds;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static long long waited[3];
static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}
static struct timespec span(long long ns) { struct timespec t = {ns / 1000000000LL, ns % 1000000000LL}; return t; }
__attribute__((noinline)) void wait_sleep(void) {
    struct timespec t = span(6 * unit_ns);
    long long t0 = now_ns();
    while (nanosleep(&t, &t) != 0 && errno == EINTR) {}
    waited[0] += now_ns() - t0;
}
__attribute__((noinline)) void wait_pipe(void) {
    char c = 1;
    if (write(request[1], &c, 1) != 1) exit(2);
    long long t0 = now_ns();
    if (read(data[0], &c, 1) != 1) exit(2);
    waited[1] += now_ns() - t0;
}
__attribute__((noinline)) void wait_cond(void) {
    struct timespec dl;
    long long t0 = now_ns();
    clock_gettime(CLOCK_REALTIME, &dl);
    dl = span(dl.tv_sec * 1000000000LL + dl.tv_nsec + unit_ns);
    pthread_mutex_lock(&mu);
    while (pthread_cond_timedwait(&cv, &mu, &dl) != ETIMEDOUT) {}
    pthread_mutex_unlock(&mu);
    waited[2] += now_ns() - t0;
}
static void *writer(void *arg) {
    char c;
    (void)arg;
    pthread_setname_np(pthread_self(), "writer");
    while (read(request[0], &c, 1) == 1) {
        struct timespec t = span(3 * unit_ns);
        while (nanosleep(&t, &t) != 0 && errno == EINTR) {}
        if (write(data[1], &c, 1) != 1) break;
    }
    return 0;
}
static void *waiter(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "waiter");
    for (long i = 0; i < rounds; i++) { wait_sleep(); wait_pipe(); wait_cond(); }
    return 0;
}
int main(int argc, char **argv) {
    pthread_t w, r;
    rounds = argc > 1 ? atol(argv[1]) : 30;
    unit_ns = (argc > 2 ? atol(argv[2]) : 10000) * 1000LL;
    if (pipe(request) || pipe(data)) return 1;
    usleep(50000);
    usleep(700000);
    pthread_create(&r, 0, writer, 0);
    pthread_create(&w, 0, waiter, 0);
    pthread_join(w, 0);
    close(request[1]);
    pthread_join(r, 0);
    printf("waited %lld %lld %lld\n", waited[0], waited[1], waited[2]);
    return 0;
}
"#;

const FP_FLAGS: &[&str] = &["-O2", "-g", "-pthread", "-fno-omit-frame-pointer"];
const NO_FP_FLAGS: &[&str] = &["-O2", "-g", "-pthread", "-fomit-frame-pointer"];

/// One sample of a profile: its thread, its functions (leaf first), its
/// weight (nanoseconds off-CPU, a count on-CPU) and how many observations
/// were merged into it.
struct OffCpuSample {
    thread: String,
    functions: Vec<String>,
    ns: i64,
    observations: usize,
    /// Unix ns of each observation.
    timestamps: Vec<u64>,
}

/// Records `prog args` with `record --off-cpu extra` to an OTLP file;
/// returns the file and what the program printed.
fn record(dir: &Path, prog: &Path, args: &[&str], extra: &[&str]) -> (PathBuf, String) {
    let out = dir.join("profile.pb");
    let result = run_ok(
        Command::new(smolder_bin())
            .args(["record", "--off-cpu", "--format", "otlp", "-o"])
            .arg(&out)
            .args(extra)
            .arg("--")
            .arg(prog)
            .args(args),
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("off-CPU:"), "no off-CPU summary: {stderr}");
    eprintln!("{stderr}");
    (out, String::from_utf8_lossy(&result.stdout).into_owned())
}

/// The samples of the profiles of sample type `sample_type`/`unit`.
fn samples_of(path: &Path, sample_type: (&str, &str)) -> Vec<OffCpuSample> {
    let data = read_profile(&std::fs::read(path).unwrap()).unwrap().data;
    let view = ProfileView::new(&data);
    let mut out = Vec::new();
    for (_, profile) in view.profiles() {
        let (t, u) = view.value_type(profile.sample_type.as_ref());
        if (t.as_str(), u.as_str()) != sample_type {
            continue;
        }
        for s in &profile.samples {
            let thread = view
                .attribute(&s.attribute_indices, "thread.name")
                .map(any_value_to_string)
                .unwrap_or_default();
            let functions = view
                .stack(s.stack_index)
                .flat_map(|l| view.lines(l).map(|line| line.function.to_owned()))
                .collect();
            out.push(OffCpuSample {
                thread,
                functions,
                ns: sample_weight(s),
                observations: s.values.len().max(s.timestamps_unix_nano.len()),
                timestamps: s.timestamps_unix_nano.clone(),
            });
        }
    }
    out
}

fn off_cpu_samples(path: &Path) -> Vec<OffCpuSample> {
    samples_of(path, ("off_cpu", "nanoseconds"))
}

/// The three waits the program measured, in ns.
fn measured(stdout: &str) -> [f64; 3] {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("waited "))
        .unwrap_or_else(|| panic!("no `waited` line in {stdout:?}"));
    let v: Vec<f64> = line.split(' ').map(|n| n.parse().unwrap()).collect();
    [v[0], v[1], v[2]]
}

const WAIT_FUNCTIONS: [&str; 3] = ["wait_sleep", "wait_pipe", "wait_cond"];

/// The waiter's off-CPU nanoseconds in each wait function and in total.
fn waiter_time(samples: &[OffCpuSample]) -> ([f64; 3], f64) {
    let mut per = [0f64; 3];
    let mut total = 0f64;
    for s in samples.iter().filter(|s| s.thread == "waiter") {
        total += s.ns as f64;
        for (i, f) in WAIT_FUNCTIONS.iter().enumerate() {
            if s.functions.iter().any(|x| x == f) {
                per[i] += s.ns as f64;
            }
        }
    }
    (per, total)
}

/// Asserts the waiter's shares of off-CPU time per wait function within
/// `points` of 60/30/10, or with `against_measured` of the shares the
/// program measured itself (at sub-millisecond waits, wake-up latency on a
/// loaded machine moves those away from 60/30/10), and its total against
/// what it measured within `tolerance` (a fraction).
fn assert_waits(out: &Path, stdout: &str, points: f64, tolerance: f64, against_measured: bool) {
    let samples = off_cpu_samples(out);
    let (per, total) = waiter_time(&samples);
    let each = measured(stdout);
    let waited: f64 = each.iter().sum();
    let wanted = if against_measured {
        each.map(|ns| 100.0 * ns / waited.max(1.0))
    } else {
        [60.0, 30.0, 10.0]
    };
    let shares: BTreeMap<&str, f64> = WAIT_FUNCTIONS
        .iter()
        .zip(per)
        .map(|(f, ns)| (*f, 100.0 * ns / total.max(1.0)))
        .collect();
    eprintln!(
        "waiter off-CPU {:.1} ms (measured {:.1} ms), shares {shares:?}",
        total / 1e6,
        waited / 1e6
    );
    for (f, want) in WAIT_FUNCTIONS.iter().zip(wanted) {
        let got = shares[f];
        assert!(
            (got - want).abs() <= points,
            "{f}: {got:.1}% of the waiter's off-CPU time, want {want:.1} +- {points}: {shares:?}"
        );
    }
    assert!(
        (total - waited).abs() <= tolerance * waited,
        "waiter off-CPU total {:.1} ms, it measured {:.1} ms waiting (+- {}%)",
        total / 1e6,
        waited / 1e6,
        tolerance * 100.0
    );
}

#[test]
fn known_waits_get_their_shares_and_their_time() {
    if !require_ebpf() {
        return;
    }
    let _turn = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let prog = compile_c(dir.path(), "waits", WAITS_C, FP_FLAGS);
    // 30 rounds of 60 + 30 + 10 ms: 3 s of waiting.
    let (out, stdout) = record(dir.path(), &prog, &["30", "10000"], &[]);
    assert_waits(&out, &stdout, 3.0, 0.10, false);
}

#[test]
fn with_probability_a_tenth_totals_are_scaled_estimates() {
    if !require_ebpf() {
        return;
    }
    let _turn = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let prog = compile_c(dir.path(), "waits", WAITS_C, FP_FLAGS);
    // About a tenth of 12000 waits is recorded: 4000 rounds of 3 + 1.5 +
    // 0.5 ms, 20 s of waiting; the minimum is below the shortest wait.
    let (out, stdout) = record(
        dir.path(),
        &prog,
        &["4000", "500"],
        &["--off-cpu-probability", "0.1", "--off-cpu-min", "0.1ms"],
    );
    assert_waits(&out, &stdout, 5.0, 0.20, true);
}

#[test]
fn off_cpu_stacks_of_a_build_without_frame_pointers_reach_the_thread_start() {
    if !require_ebpf() {
        return;
    }
    let _turn = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let prog = compile_c(dir.path(), "waits", WAITS_C, NO_FP_FLAGS);
    // 200 rounds of 12 + 6 + 2 ms: some 1000 waits over 4 s, every thread's.
    let (out, _) = record(dir.path(), &prog, &["200", "2000"], &[]);
    let samples = off_cpu_samples(&out);
    let reaches = |s: &&OffCpuSample| {
        s.functions
            .iter()
            .any(|f| f == "main" || f == "start_thread")
    };
    let total: usize = samples.iter().map(|s| s.observations).sum();
    let complete: usize = samples.iter().filter(reaches).map(|s| s.observations).sum();
    let broken: Vec<&Vec<String>> = samples
        .iter()
        .filter(|s| !reaches(s))
        .map(|s| &s.functions)
        .take(5)
        .collect();
    // Until smolder has built the new process's unwind tables (libc's:
    // 20 ms here, 0.8 s under emulation, where it outlasts the program's
    // 0.75 s before its threads start) its waits stop in libc: the first
    // half of the run takes that start-up, the second is the steady state.
    let half = Halves::of_times(samples.iter().flat_map(|s| s.timestamps.iter().copied()));
    let late = |s: &OffCpuSample| half.observations(&s.timestamps, true);
    let late_total: usize = samples.iter().map(late).sum();
    let late_complete: usize = samples.iter().filter(reaches).map(late).sum();
    let broken_at = half.earliest(
        samples
            .iter()
            .filter(|s| !reaches(s))
            .flat_map(|s| s.timestamps.iter()),
    );
    eprintln!(
        "{complete} of {total} off-CPU samples reach main or start_thread, {late_complete} of \
         {late_total} in the run's second half (from {:.2} s on); those that do not at \
         {broken_at:?} s",
        half.seconds(half.middle)
    );
    assert!(total >= 500, "only {total} off-CPU samples");
    // The start-up window's length is the host's: judged on real hardware
    // only (under emulation it took 0.8 s on
    // an idle host and 1.6 s beside two busy loops).
    assert!(
        emulated() || complete as f64 >= 0.95 * total as f64,
        "{complete} of {total} off-CPU samples reach main or start_thread; some that do not: {broken:?}"
    );
    let broken_late: Vec<&Vec<String>> = samples
        .iter()
        .filter(|s| !reaches(s) && late(s) > 0)
        .map(|s| &s.functions)
        .take(5)
        .collect();
    assert!(
        late_complete as f64 >= 0.99 * late_total as f64,
        "{late_complete} of {late_total} off-CPU samples of the run's second half reach main \
         or start_thread; some that do not: {broken_late:?}"
    );
}

/// Computes in `compute_hot` for `argv[1]` seconds of CPU time on the main
/// thread while the thread "sleeper" sleeps in `sleep_cold`, 20 ms at a
/// time, until the main thread is done.
const COMPUTE_AND_WAIT_C: &str = r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
volatile unsigned long sink;
static volatile int done;
__attribute__((noinline)) void compute_hot(void) { while (!cpu_budget_spent) for (int i = 0; i < 100000; i++) sink += i * i; }
__attribute__((noinline)) void sleep_cold(void) { struct timespec t = {0, 20000000}; nanosleep(&t, 0); }
static void *sleeper(void *arg) { (void)arg; pthread_setname_np(pthread_self(), "sleeper"); while (!done) sleep_cold(); return 0; }
int main(int argc, char **argv) {
    pthread_t t;
    cpu_budget(argc > 1 ? atof(argv[1]) : 1.0);
    pthread_create(&t, 0, sleeper, 0);
    compute_hot();
    done = 1;
    pthread_join(t, 0);
    return 0;
}
"#;

#[test]
fn cpu_and_off_cpu_profiles_each_show_their_function_to_the_official_decoder() {
    if !require_ebpf() {
        return;
    }
    let _turn = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let prog = compile_c(
        dir.path(),
        "mixed",
        &with_cpu_budget(COMPUTE_AND_WAIT_C),
        FP_FLAGS,
    );
    let (out, _) = record(dir.path(), &prog, &["1.0"], &[]);

    // Each profile has its own known function, and not the other's.
    let weight = |samples: &[OffCpuSample], name: &str| -> i64 {
        samples
            .iter()
            .filter(|s| s.functions.iter().any(|f| f == name))
            .map(|s| s.ns)
            .sum()
    };
    let cpu = samples_of(&out, ("samples", "count"));
    let off = off_cpu_samples(&out);
    let (cpu_total, off_total) = (
        cpu.iter().map(|s| s.ns).sum::<i64>(),
        off.iter().map(|s| s.ns).sum::<i64>(),
    );
    assert!(
        weight(&cpu, "compute_hot") as f64 >= 0.8 * cpu_total as f64,
        "compute_hot has {} of {cpu_total} CPU samples",
        weight(&cpu, "compute_hot")
    );
    // A sample may catch the sleeper entering or leaving nanosleep (50
    // wakeups a second). Under two busy loops the hot thread gets half a
    // CPU, so those few samples weigh more: 4 of 103 were seen.
    assert!(
        weight(&cpu, "sleep_cold") as f64 <= 0.05 * cpu_total as f64,
        "sleep_cold has {} of {cpu_total} CPU samples",
        weight(&cpu, "sleep_cold")
    );
    assert!(
        weight(&off, "sleep_cold") as f64 >= 0.5 * off_total as f64,
        "sleep_cold has {} of {off_total} off-CPU ns",
        weight(&off, "sleep_cold")
    );
    assert_eq!(
        weight(&off, "compute_hot"),
        0,
        "a computing function off CPU"
    );

    // The official decoder reads both profiles, with one dictionary.
    let summary = python_check(&out, "data");
    let by_type = &summary["by_sample_type"];
    let cpu_functions = &by_type["samples/count"]["functions"];
    let off_functions = &by_type["off_cpu/nanoseconds"]["functions"];
    assert!(cpu_functions["compute_hot"].as_i64() > Some(0), "{summary}");
    let cpu_total = by_type["samples/count"]["total"].as_i64().unwrap();
    assert!(
        cpu_functions["sleep_cold"].as_i64().unwrap_or(0) as f64 <= 0.05 * cpu_total as f64,
        "{summary}"
    );
    assert!(
        off_functions["sleep_cold"].as_i64() > Some(20_000_000),
        "{summary}"
    );
    assert!(off_functions.get("compute_hot").is_none(), "{summary}");
    assert_eq!(
        by_type["off_cpu/nanoseconds"]["period_type"], "off_cpu/nanoseconds",
        "{summary}"
    );

    // `convert` writes it to pprof as a second sample type, which go tool
    // pprof reads as such.
    let pprof = dir.path().join("profile.pprof");
    run_ok(
        Command::new(smolder_bin())
            .arg("convert")
            .arg(&out)
            .args(["-f", "pprof", "-o"])
            .arg(&pprof),
    );
    let raw = go_pprof(&pprof, &["-raw"]);
    assert!(
        raw.lines()
            .any(|l| l.trim() == "samples/count cpu/nanoseconds off_cpu/nanoseconds"),
        "sample types in go tool pprof -raw:\n{raw}"
    );
    let functions = |sample_index: &str| -> Vec<String> {
        let top = go_pprof(
            &pprof,
            &[
                "-top",
                "-cum",
                "-nodecount=1000",
                &format!("-sample_index={sample_index}"),
            ],
        );
        // Rows: flat flat% sum% cum cum% name; rows with a zero cum are not listed.
        top.lines()
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.len() >= 6 && cols[4].ends_with('%')).then(|| cols[5].to_owned())
            })
            .collect()
    };
    let off = functions("off_cpu");
    assert!(off.iter().any(|f| f == "sleep_cold"), "{off:?}");
    assert!(!off.iter().any(|f| f == "compute_hot"), "{off:?}");
    let on = functions("samples");
    assert!(on.iter().any(|f| f == "compute_hot"), "{on:?}");
}

/// `go tool pprof ARGS FILE`'s standard output.
fn go_pprof(file: &Path, args: &[&str]) -> String {
    require_tool("go", "golang-go");
    let out = run_ok(
        Command::new("go")
            .args(["tool", "pprof"])
            .args(args)
            .arg(file)
            .env("HOME", std::env::temp_dir())
            .env("PPROF_TMPDIR", std::env::temp_dir()),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
