//! `smolder record` with the eBPF sampler, on programs built in the test,
//! against `perf record -g` on the same program and the official OTLP
//! decoder. These need root (CI runs as root): they fail, not skip, when
//! `CI` is set and eBPF is unavailable.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use smolder_e2e::{
    compile_c, cpu_scale, emulated, folded, perf_record_folded, python_check, require_ebpf,
    require_tool, run_ok, smolder, smolder_ok, with_cpu_budget,
};
use smolder_profiles_proto::{
    pprof::any_value_to_string, read_profile, sample_weight, ProfileView,
};

/// The tests of this file take turns: each measures CPU shares or sample
/// counts that a concurrent test would disturb (and `record -a` sees all).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

const FP_FLAGS: &[&str] = &[
    "-O2",
    "-g",
    "-fno-omit-frame-pointer",
    "-mno-omit-leaf-frame-pointer",
];

/// 60/30/10 over three leaf functions, under a 25-deep recursive chain,
/// for `argv[1]` seconds of CPU time (a time, not a number of rounds, so the
/// sample count does not depend on how fast the CPU is or how busy it is).
/// One `dispatch` is some 15 ms of CPU: at 1.5 ms (n = 100,000) it was near
/// the 999 Hz timer's period and the two aliased, `perf`'s own beta share
/// ranging from 23.5 % to 31.4 % over ten runs (29.7-30.3 % over eight now).
/// Each loop starts on a 64-byte boundary, as in `HOT_C`.
const DEEP_C: &str = r#"
#include <stdlib.h>
volatile unsigned long sink;
#define WORK(name) __attribute__((noinline, aligned(64))) void name(long n) { for (long i = 0; i < n; i++) sink += i * i; }
WORK(hot_alpha) WORK(hot_beta) WORK(hot_gamma)
__attribute__((noinline)) void dispatch(long n) { hot_alpha(6 * n); hot_beta(3 * n); hot_gamma(n); sink++; }
__attribute__((noinline)) void descend(int depth, long n) { if (depth == 0) dispatch(n); else descend(depth - 1, n); sink++; }
int main(int argc, char **argv) { cpu_budget(argc > 1 ? atof(argv[1]) : 1.5); while (!cpu_budget_spent) descend(24, 1000000); return 0; }
"#;

/// Share of each of `names` among the samples whose stack contains one of
/// them: the split itself, whatever share the program's start-up (the
/// dynamic loader, minutes long under emulation) takes.
fn shares(lines: &[(Vec<String>, u64)], names: &[&str]) -> BTreeMap<String, f64> {
    let in_any = samples_in_any(lines, names);
    names
        .iter()
        .map(|name| {
            let hits: u64 = lines
                .iter()
                .filter(|(f, _)| f.iter().any(|x| x == name))
                .map(|(_, n)| n)
                .sum();
            (name.to_string(), hits as f64 / in_any.max(1) as f64)
        })
        .collect()
}

/// Samples whose stack contains one of `names`: what [`shares`] divides by.
fn samples_in_any(lines: &[(Vec<String>, u64)], names: &[&str]) -> u64 {
    lines
        .iter()
        .filter(|(f, _)| f.iter().any(|x| names.contains(&x.as_str())))
        .map(|(_, n)| n)
        .sum()
}

/// How far two sampled shares of the same split may differ: four standard
/// deviations of the difference of two binomial proportions over `n1` and
/// `n2` samples (a 1-in-15,000 chance of failing by sampling alone), and
/// never less than 0.03. A fixed 0.03 was under two deviations for the 60 %
/// share at ~1,500 samples each, and failed now and then on a loaded host.
fn share_tolerance(share: f64, n1: u64, n2: u64) -> f64 {
    let p = share.clamp(0.01, 0.99);
    let deviation = (p * (1.0 - p) * (1.0 / n1.max(1) as f64 + 1.0 / n2.max(1) as f64)).sqrt();
    (4.0 * deviation).max(0.03)
}

#[test]
fn record_command_matches_perf_record_and_reaches_main() {
    if !require_ebpf() {
        return;
    }
    let _turn = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let prog = compile_c(dir.path(), "deep", &with_cpu_budget(DEEP_C), FP_FLAGS);
    let hot = ["hot_alpha", "hot_beta", "hot_gamma"];
    let secs = format!("{}", 1.5 * cpu_scale());

    let ours = dir.path().join("smolder.folded");
    let stderr = smolder_ok([
        "record".as_ref(),
        "-F".as_ref(),
        "999".as_ref(),
        "--format".as_ref(),
        "folded".as_ref(),
        "-o".as_ref(),
        ours.as_os_str(),
        "--".as_ref(),
        prog.as_os_str(),
        secs.as_ref(),
    ]);
    assert!(stderr.contains("samples (0 lost)"), "{stderr}");
    let ours = folded(&ours);
    let our_shares = shares(&ours, &hot);

    // perf record -g on the same program, collapsed by smolder's perf script reader.
    let perf_folded = folded(&perf_record_folded(
        dir.path(),
        "999",
        &[prog.as_os_str(), secs.as_ref()],
    ));
    let perf_shares = shares(&perf_folded, &hot);

    let mut heaviest = ours.clone();
    heaviest.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let heaviest: Vec<String> = heaviest
        .iter()
        .take(5)
        .map(|(f, n)| format!("{n} {}", f.join(";")))
        .collect();
    let total: u64 = ours.iter().map(|(_, n)| n).sum();
    // (perf's folded weights are nanoseconds: count its samples' headers.)
    let perf_total = std::fs::read_to_string(dir.path().join("perf.txt"))
        .unwrap()
        .lines()
        .filter(|l| l.contains(" cpu-clock"))
        .count() as u64;
    assert!(
        perf_total > 0,
        "no cpu-clock sample in perf script's output"
    );
    let perf_ns: u64 = perf_folded.iter().map(|(_, n)| n).sum();
    let (n_ours, n_perf) = (
        samples_in_any(&ours, &hot),
        // perf's samples in the hot functions, from their nanoseconds.
        (perf_total as f64 * samples_in_any(&perf_folded, &hot) as f64 / perf_ns.max(1) as f64)
            as u64,
    );
    // Under emulation the timer's handler
    // takes long enough to skip timer periods, so each sampler's shares
    // lean by its own handler's cost (perf's moved 2-3 points off the
    // split there, smolder's 1-2 the other way): smolder is held to the
    // known split instead, within 0.04 (the binomial noise of ~4,000
    // samples is under 0.01).
    for (name, split) in hot.iter().zip([0.6, 0.3, 0.1]) {
        let (a, b) = (our_shares[*name], perf_shares[*name]);
        let tolerance = share_tolerance((a + b) / 2.0, n_ours, n_perf);
        if emulated() {
            assert!(
                (a - split).abs() <= 0.04,
                "{name}: smolder {a:.3} (perf {b:.3}), more than 0.04 from {split} \
                 ({our_shares:?} vs {perf_shares:?}); smolder said: {stderr}; its heaviest \
                 stacks: {heaviest:#?}"
            );
            continue;
        }
        assert!(
            (a - b).abs() <= tolerance,
            "{name}: smolder {a:.3} vs perf {b:.3}, more than {tolerance:.3} apart over {n_ours} and {n_perf} samples ({our_shares:?} vs {perf_shares:?}); \
             smolder said: {stderr}; its heaviest stacks: {heaviest:#?}"
        );
    }
    assert!(
        (our_shares["hot_alpha"] - 0.6).abs() < 0.05,
        "{our_shares:?}"
    );

    // As many samples as perf's of the same CPU time at the same rate
    // (about 1,500 on hardware). Under emulation (everything but the timer
    // some ten times slower) the walk in the
    // timer's handler takes long enough for the timer to skip periods
    // (perf's handler is shorter): 0.6 of perf's there, a floor against
    // losing samples wholesale, not a rate (0.88-0.92 seen on one host;
    // on an AMD EPYC host Debian's 6.12 guest gave 0.786, then 0.717 in
    // two runs in a row, and at least 0.8 in the run before them).
    let least = if emulated() { 0.6 } else { 0.9 };
    assert!(
        total as f64 >= least * perf_total as f64,
        "too few samples: {total}, perf took {perf_total} (at least {least} of perf's)"
    );
    // Every stack in the program's own functions is walked to main (the
    // loader's start-up before main is no part of it).
    let own = |f: &Vec<String>| {
        f.iter()
            .any(|x| x == "descend" || x == "dispatch" || hot.contains(&x.as_str()))
    };
    let in_own: u64 = ours.iter().filter(|(f, _)| own(f)).map(|(_, n)| n).sum();
    let reach: u64 = ours
        .iter()
        .filter(|(f, _)| own(f) && f.iter().any(|x| x == "main"))
        .map(|(_, n)| n)
        .sum();
    assert!(
        in_own as f64 >= 0.9 * total as f64,
        "only {in_own} of {total} samples in the program's own functions: {heaviest:#?}"
    );
    assert!(
        reach as f64 >= 0.99 * in_own as f64,
        "only {reach} of {in_own} stacks in the program's functions reach main"
    );
    // The recursion is walked frame by frame.
    assert!(ours
        .iter()
        .any(|(f, _)| f.iter().filter(|x| *x == "descend").count() == 25));
}

/// `smolder record -F 499 --format folded -- PROG` into DIR/NAME.folded.
fn record_folded_499(dir: &Path, prog: &Path, name: &str, args: &[&str]) -> std::path::PathBuf {
    let out = dir.join(format!("{name}.folded"));
    let mut command: Vec<&std::ffi::OsStr> = vec![
        "record".as_ref(),
        "-F".as_ref(),
        "499".as_ref(),
        "--format".as_ref(),
        "folded".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
        "--".as_ref(),
        prog.as_os_str(),
    ];
    command.extend(args.iter().map(std::ffi::OsStr::new));
    smolder_ok(command);
    out
}

/// Reads the monotonic clock (a vDSO call, no system call) for one second
/// of CPU time.
const CLOCK_C: &str = r#"
#include <time.h>
__attribute__((noinline)) void read_clock(void) {
    struct timespec ts;
    while (!cpu_budget_spent) clock_gettime(CLOCK_MONOTONIC, &ts);
}
int main(void) { cpu_budget(1.0); read_clock(); return 0; }
"#;

/// The functions of the kernel's vDSO, as binutils `nm -D` lists them in a
/// dump of this process's vDSO (the oracle).
fn vdso_functions(dir: &Path) -> std::collections::HashSet<String> {
    // SAFETY: getauxval has no preconditions.
    let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps.lines().find(|l| l.ends_with("[vdso]")).unwrap();
    let (start, end) = line
        .split_whitespace()
        .next()
        .unwrap()
        .split_once('-')
        .unwrap();
    let (start, end) = (
        u64::from_str_radix(start, 16).unwrap(),
        u64::from_str_radix(end, 16).unwrap(),
    );
    assert_eq!(base, start);
    // SAFETY: the kernel keeps the vDSO mapped readable at AT_SYSINFO_EHDR.
    let image = unsafe { std::slice::from_raw_parts(base as *const u8, (end - start) as usize) };
    let dump = dir.join("vdso.so");
    std::fs::write(&dump, image).unwrap();
    let nm = run_ok(Command::new("nm").args(["-D", "--defined-only"]).arg(&dump));
    String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (_, kind, name) = (it.next()?, it.next()?, it.next()?);
            matches!(kind, "T" | "t" | "W" | "w")
                .then(|| name.split('@').next().unwrap().to_owned())
        })
        .collect()
}

#[test]
fn vdso_frames_are_named_from_the_kernels_image() {
    if !require_ebpf() {
        return;
    }
    let _turn = exclusive();
    require_tool("nm", "binutils");
    let dir = tempfile::tempdir().unwrap();
    let prog = compile_c(dir.path(), "clock", &with_cpu_budget(CLOCK_C), FP_FLAGS);
    let out = record_folded_499(dir.path(), &prog, "clock", &[]);
    let functions = vdso_functions(dir.path());
    assert!(
        functions.iter().any(|f| f.contains("clock_gettime")),
        "{functions:?}"
    );
    let lines = folded(&out);
    let total: u64 = lines.iter().map(|(_, n)| n).sum();
    let in_vdso: u64 = lines
        .iter()
        .filter(|(f, _)| f.last().is_some_and(|leaf| functions.contains(leaf)))
        .map(|(_, n)| n)
        .sum();
    // Most of the loop's time is spent inside the vDSO's clock_gettime.
    assert!(
        in_vdso as f64 >= 0.3 * total as f64,
        "{in_vdso} of {total} samples have a vDSO function as leaf: {lines:?}"
    );
}

/// Copies /dev/zero to /dev/null for `argv[1]` seconds of CPU time.
const SYSCALLS_C: &str = r#"
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((noinline)) void copy_zeroes(int in, int out) {
    static char buf[1 << 16];
    while (!cpu_budget_spent) { if (read(in, buf, sizeof buf) <= 0) return; write(out, buf, sizeof buf); }
}
int main(int argc, char **argv) { cpu_budget(atof(argv[1])); int in = open("/dev/zero", O_RDONLY), out = open("/dev/null", O_WRONLY); copy_zeroes(in, out); return 0; }
"#;

#[test]
fn kernel_frames_sit_under_user_frames_with_kallsyms_names() {
    if !require_ebpf() {
        return;
    }
    let _turn = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let prog = compile_c(
        dir.path(),
        "syscalls",
        &with_cpu_budget(SYSCALLS_C),
        FP_FLAGS,
    );
    // One second of CPU time, longer where the timer fires less often
    // (SMOLDER_TEST_CPU_SCALE): writes to /dev/null are short, and a few
    // samples must land in them.
    let secs = format!("{}", cpu_scale());
    let out = record_folded_499(dir.path(), &prog, "sys", &[&secs]);
    let lines = folded(&out);
    let total: u64 = lines.iter().map(|(_, n)| n).sum();
    // Stacks main -> libc read/write -> kernel. (The frame-pointer walk
    // cannot see copy_zeroes: glibc's wrappers keep no frame pointer; the
    // .eh_frame walker will.)
    let with_kernel: Vec<(&Vec<String>, u64)> = lines
        .iter()
        .filter(|(f, _)| {
            f.iter().any(|x| x == "main") && f.last().is_some_and(|x| x.ends_with("_[k]"))
        })
        .map(|(f, n)| (f, *n))
        .collect();
    let kernel_samples: u64 = with_kernel.iter().map(|(_, n)| n).sum();
    assert!(
        kernel_samples as f64 >= 0.5 * total as f64,
        "only {kernel_samples} of {total} samples have kernel frames under main"
    );
    // Nearly all of them sit under read or write; the rest are the
    // program's few other system calls (open, the timer's signal).
    let mut under_read_write = 0;
    for (frames, n) in &with_kernel {
        let first_kernel = frames.iter().position(|x| x.ends_with("_[k]")).unwrap();
        assert!(
            frames[first_kernel..].iter().all(|x| x.ends_with("_[k]")),
            "kernel frames must be the leaves: {frames:?}"
        );
        let caller = &frames[first_kernel - 1];
        if caller.contains("read") || caller.contains("write") {
            under_read_write += n;
        }
    }
    assert!(
        under_read_write as f64 >= 0.98 * kernel_samples as f64,
        "only {under_read_write} of {kernel_samples} kernel stacks under read/write: {with_kernel:?}"
    );
    let kernel_names: Vec<&str> = with_kernel
        .iter()
        .flat_map(|(f, _)| f.iter())
        .filter_map(|x| x.strip_suffix("_[k]"))
        .collect();
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap();
    let known: std::collections::HashSet<&str> = kallsyms
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    let named = kernel_names.iter().filter(|n| known.contains(*n)).count();
    assert!(
        named as f64 >= 0.95 * kernel_names.len() as f64,
        "kernel frames not from kallsyms: {kernel_names:?}"
    );
    for syscall in ["ksys_read", "ksys_write"] {
        assert!(
            kernel_names.contains(&syscall),
            "{syscall} missing: {kernel_names:?}"
        );
    }
}

const THREADS_C: &str = r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
volatile unsigned long sink;
__attribute__((noinline)) void burn(void) { for (;;) sink++; }
static void *worker(void *arg) { char name[16]; snprintf(name, sizeof name, "worker-%ld", (long)arg); pthread_setname_np(pthread_self(), name); burn(); return 0; }
int main(void) { pthread_t t[3]; for (long i = 0; i < 3; i++) pthread_create(&t[i], 0, worker, (void *)(i + 1)); printf("ready\n"); fflush(stdout); burn(); }
"#;

#[test]
fn every_thread_of_a_process_appears_with_id_and_name() {
    if !require_ebpf() {
        return;
    }
    let _turn = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let prog = compile_c(
        dir.path(),
        "threads",
        THREADS_C,
        &["-O2", "-g", "-pthread", "-fno-omit-frame-pointer"],
    );
    let mut child = Command::new(&prog).stdout(Stdio::piped()).spawn().unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    let pid = child.id().to_string();
    let out = dir.path().join("threads.json");
    let result = smolder([
        "record",
        "-p",
        &pid,
        "-d",
        "2s",
        "--format",
        "otlp-json",
        "-o",
        out.to_str().unwrap(),
    ]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );

    let data = read_profile(&std::fs::read(&out).unwrap()).unwrap().data;
    let view = ProfileView::new(&data);
    let mut threads: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for (resource, profile) in view.profiles() {
        let attrs = &resource.unwrap().attributes;
        assert!(attrs.iter().any(|kv| kv.key == "process.pid"
            && kv.value.as_ref().map(any_value_to_string) == Some(pid.clone())));
        for s in &profile.samples {
            let name = view
                .attribute(&s.attribute_indices, "thread.name")
                .map(any_value_to_string)
                .unwrap_or_default();
            let tid = view
                .attribute(&s.attribute_indices, "thread.id")
                .map(any_value_to_string)
                .expect("thread.id");
            threads.entry(name).or_default().insert(tid);
        }
    }
    for name in ["threads", "worker-1", "worker-2", "worker-3"] {
        assert_eq!(
            threads.get(name).map(|t| t.len()),
            Some(1),
            "thread {name} missing or split: {threads:?}"
        );
    }
    let tids: std::collections::BTreeSet<&String> = threads.values().flatten().collect();
    assert_eq!(tids.len(), 4, "{threads:?}");
}

/// Burns 50 ms of CPU time (longer on the clock when the CPUs are busy).
const SHORT_C: &str = r#"
volatile unsigned long sink;
/* A call keeps short_lived_burn from being a leaf: gcc gives a leaf no
   frame, and a process this short is walked by frame pointers. */
__attribute__((noinline)) void touch(void) { sink++; }
__attribute__((noinline)) void short_lived_burn(void) { while (!cpu_budget_spent) { for (int i = 0; i < 1000; i++) sink++; touch(); } }
int main(void) { cpu_budget(0.05); short_lived_burn(); return 0; }
"#;

#[test]
fn a_program_that_lives_50ms_during_record_all_is_symbolized() {
    if !require_ebpf() {
        return;
    }
    let _turn = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let prog = compile_c(
        dir.path(),
        "shortlived",
        &with_cpu_budget(SHORT_C),
        FP_FLAGS,
    );
    let out = dir.path().join("host.pb");
    let mut recorder = Command::new(smolder_e2e::smolder_bin())
        .args([
            "record", "-a", "-F", "999", "-d", "4s", "--format", "otlp", "-o",
        ])
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The program runs again and again while the recording lasts: on a busy
    // machine the sampler may take a while to load, and the runs before it
    // attached are simply not seen.
    let mut runs = 0;
    while recorder.try_wait().unwrap().is_none() {
        let status = Command::new(&prog).status().unwrap();
        assert!(status.success());
        runs += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let result = recorder.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");

    let data = read_profile(&std::fs::read(&out).unwrap()).unwrap().data;
    let view = ProfileView::new(&data);
    // Per run (process): samples, and samples symbolized to the burn in main.
    let mut per_run: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for (resource, profile) in view.profiles() {
        let attrs = &resource.unwrap().attributes;
        let attr = |key: &str| {
            attrs
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.as_ref().map(any_value_to_string))
        };
        if attr("process.executable.name").as_deref() != Some("shortlived") {
            continue;
        }
        let run = per_run
            .entry(attr("process.pid").unwrap_or_default())
            .or_default();
        for s in &profile.samples {
            let frames: Vec<String> = view
                .stack(s.stack_index)
                .flat_map(|l| {
                    view.lines(l)
                        .map(|fl| fl.function.to_owned())
                        .collect::<Vec<_>>()
                })
                .collect();
            run.0 += sample_weight(s);
            if frames.iter().any(|f| f == "short_lived_burn") && frames.iter().any(|f| f == "main")
            {
                run.1 += sample_weight(s);
            }
        }
    }
    let vanished: i64 = stderr
        .split(", ")
        .find_map(|part| {
            part.strip_suffix(" samples of processes that exited before they could be read")
        })
        .map_or(0, |n| n.parse().unwrap());
    let (taken, symbolized) = per_run
        .values()
        .fold((0, 0), |(t, s), run| (t + run.0, s + run.1));
    eprintln!("{runs} runs, sampled {per_run:?}; {vanished} samples of vanished processes");
    // Each run is 50 ms of CPU, about 50 samples at 999 Hz; a few land in
    // exec or exit. Those of runs that exited before smolder could read
    // them are reported as such, never silently lost.
    assert!(
        per_run.values().any(|run| run.1 >= 20),
        "no run of the short-lived program was symbolized: {per_run:?}\n{stderr}"
    );
    assert!(
        symbolized as f64 >= 0.8 * (taken - vanished) as f64,
        "only {symbolized} of {taken} samples symbolized ({vanished} reported vanished)"
    );
}

#[test]
fn recorded_otlp_passes_the_official_decoder() {
    if !require_ebpf() {
        return;
    }
    let _turn = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let prog = compile_c(dir.path(), "deep", &with_cpu_budget(DEEP_C), FP_FLAGS);
    let out = dir.path().join("deep.pb");
    smolder_ok([
        "record".as_ref(),
        "--format".as_ref(),
        "otlp".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
        "--".as_ref(),
        prog.as_os_str(),
        "0.5".as_ref(),
    ]);
    for kind in ["data", "request"] {
        let summary = python_check(&out, kind);
        // 0.5 s of CPU at 99 Hz is about 50 samples.
        assert!(summary["total"].as_i64().unwrap() >= 25, "{summary}");
        assert!(
            summary["leaves"]["hot_alpha"].as_i64().unwrap() > 0,
            "{summary}"
        );
        let resource = &summary["resources"][0];
        assert_eq!(
            resource["process.executable.name"]["stringValue"], "deep",
            "{summary}"
        );
        assert!(
            resource["process.command_line"]["stringValue"]
                .as_str()
                .unwrap()
                .ends_with("deep 0.5"),
            "{summary}"
        );
    }
}

#[test]
fn record_passes_the_exit_status_through_and_explains_bad_targets() {
    if !require_ebpf() {
        return;
    }
    let _turn = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.folded");
    let r = smolder([
        "record",
        "--format",
        "folded",
        "-o",
        out.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(
        r.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    for args in [
        vec!["record", "-p", "4000000000"],
        vec!["record", "--", "/nonexistent/program"],
        vec!["record", "-a", "-d", "soon"],
    ] {
        let r = smolder(&args);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert_ne!(r.status.code(), Some(0), "{args:?}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// A kernel without BTF (simulated: the loader pointed at a missing BTF
/// file): `record` and `agent` stop before loading anything, with one line
/// that names what is missing, not a verifier or loader dump.
#[test]
fn missing_btf_is_one_line_naming_it() {
    let missing = "/nonexistent/smolder-test/vmlinux";
    for (what, args) in [
        (
            "record",
            vec!["record", "-a", "-d", "1s", "-o", "/dev/null"],
        ),
        (
            "agent",
            vec!["agent", "--output-dir", "/nonexistent/smolder-test"],
        ),
    ] {
        let out = Command::new(smolder_e2e::smolder_bin())
            .args(&args)
            .env("SMOLDER_BTF_PATH", missing)
            .env("SMOLDER_LOG", "error")
            .stdin(Stdio::null())
            .output()
            .expect("run smolder");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{what}: one line, got: {stderr}");
        assert!(
            lines[0].starts_with(
                "smolder: error: cannot start the eBPF sampler: the kernel has no BTF:"
            ) && lines[0].contains(missing)
                && lines[0].contains("CONFIG_DEBUG_INFO_BTF"),
            "{what}: {stderr}"
        );
    }
}
