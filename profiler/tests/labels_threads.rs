//! Scope labels under contention: 16 threads enter and leave labelled
//! scopes in a tight loop while the in-process profiler samples them at
//! 999 Hz; every sample taken in the labelled function carries the label of
//! its own thread, and no sample outside a scope carries one. Needs no
//! privileges (perf events on the process's own threads).

use std::hint::black_box;

use smolder::profiles::{pprof::any_value_to_string, ProfileView};

const THREADS: usize = 16;
/// CPU time each thread spends in the loop.
const CPU_NS_PER_THREAD: u64 = 300_000_000;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[inline(never)]
fn spin(n: u64) -> u64 {
    let mut x = 0u64;
    for i in 0..n {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
    }
    x
}

#[inline(never)]
fn scoped_work(n: u64) -> u64 {
    spin(black_box(n))
}

#[inline(never)]
fn unscoped_work(n: u64) -> u64 {
    spin(black_box(n))
}

#[test]
fn every_sample_carries_its_own_threads_label_under_16_threads() {
    let guard = smolder::Profiler::builder()
        .frequency_hz(999)
        .start()
        .expect("start the profiler");
    assert_eq!(guard.sampler(), smolder::SamplerKind::PerfEvents);
    let threads: Vec<_> = (0..THREADS)
        .map(|i| {
            std::thread::Builder::new()
                .name(format!("lw-{i}"))
                .spawn(move || {
                    let me = i.to_string();
                    let mut acc = 0;
                    while thread_cpu_ns() < CPU_NS_PER_THREAD {
                        // Short scopes: thousands of changes per second per thread.
                        acc ^= smolder::with_labels(&[("worker", &me)], || {
                            smolder::with_labels(&[("phase", "inner")], || scoped_work(300))
                        });
                        acc ^= unscoped_work(100);
                    }
                    black_box(acc)
                })
                .unwrap()
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let profile = guard.stop().expect("a profile");
    assert_eq!(profile.stats.label_log_overflows, 0);
    let view = ProfileView::new(&profile.data);
    let (mut labelled, mut unlabelled) = (0, 0);
    let mut threads_seen = std::collections::BTreeSet::new();
    for (_, p) in view.profiles() {
        for s in &p.samples {
            let functions: Vec<String> = view
                .stack(s.stack_index)
                .flat_map(|l| {
                    view.lines(l)
                        .map(|f| f.function.to_owned())
                        .collect::<Vec<_>>()
                })
                .collect();
            let attr = |key| {
                view.attribute(&s.attribute_indices, key)
                    .map(any_value_to_string)
            };
            let thread = attr("thread.name").unwrap_or_default();
            let Some(index) = thread.strip_prefix("lw-") else {
                continue;
            };
            let weight = smolder::profiles::sample_weight(s);
            if functions.iter().any(|f| f.ends_with("::scoped_work")) {
                assert!(!functions.iter().any(|f| f.ends_with("::unscoped_work")));
                assert_eq!(
                    attr("worker").as_deref(),
                    Some(index),
                    "a sample of {thread}"
                );
                assert_eq!(
                    attr("phase").as_deref(),
                    Some("inner"),
                    "a sample of {thread}"
                );
                labelled += weight;
                threads_seen.insert(thread);
            } else if functions.iter().any(|f| f.ends_with("::unscoped_work")) {
                assert_eq!(
                    attr("worker"),
                    None,
                    "a sample of {thread} outside the scope"
                );
                unlabelled += weight;
            }
        }
    }
    assert_eq!(threads_seen.len(), THREADS, "{threads_seen:?}");
    assert!(labelled > 0 && unlabelled > 0, "{labelled} / {unlabelled}");
}
