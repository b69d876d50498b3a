//! User-defined labels for a scope (`smolder::with_labels`), carried as
//! sample attributes. Samples are read after the fact, so each labelled
//! scope is logged as a span (thread, start, end, labels) on the clock the
//! samples carry (CLOCK_MONOTONIC), and a sample takes the labels of the
//! span its thread was in at its time. Spans are logged only while a
//! profiler runs; otherwise a scope costs a thread-local push and pop.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A set of labels, outermost scope first.
pub type LabelSet = Arc<[(String, String)]>;

#[derive(Clone, Debug)]
struct Span {
    tid: u32,
    start: u64,
    end: u64,
    labels: LabelSet,
}

static RECORDING: AtomicBool = AtomicBool::new(false);
static SPANS: Mutex<Vec<Span>> = Mutex::new(Vec::new());

thread_local! {
    static CURRENT: RefCell<Vec<(String, String)>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// Logs that this thread's labels became `labels` now.
fn log_change(labels: &[(String, String)]) {
    if !RECORDING.load(Ordering::Relaxed) {
        return;
    }
    let (tid, now) = (gettid(), monotonic_ns());
    let mut spans = SPANS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(open) = spans
        .iter_mut()
        .rev()
        .find(|s| s.tid == tid && s.end == u64::MAX)
    {
        open.end = now;
    }
    if !labels.is_empty() {
        spans.push(Span {
            tid,
            start: now,
            end: u64::MAX,
            labels: labels.to_vec().into(),
        });
    }
}

/// Runs `f` with `labels` added to the current thread's labels; samples
/// taken meanwhile carry them as attributes (inner scopes override outer
/// ones with the same key).
///
/// ```
/// let total = smolder::with_labels(&[("endpoint", "/api")], || (1..=10).sum::<u64>());
/// assert_eq!(total, 55);
/// ```
pub fn with_labels<R>(labels: &[(&str, &str)], f: impl FnOnce() -> R) -> R {
    let before = CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        let before = c.clone();
        for (k, v) in labels {
            c.retain(|(key, _)| key != k);
            c.push(((*k).to_owned(), (*v).to_owned()));
        }
        log_change(&c);
        before
    });
    // Restores the outer labels even when `f` panics.
    struct Restore(Vec<(String, String)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| {
                let mut c = c.borrow_mut();
                *c = std::mem::take(&mut self.0);
                log_change(&c);
            });
        }
    }
    let _restore = Restore(before);
    f()
}

/// Starts logging spans (a profiler started).
pub(crate) fn start_recording() {
    SPANS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    RECORDING.store(true, Ordering::Relaxed);
}

pub(crate) fn stop_recording() {
    RECORDING.store(false, Ordering::Relaxed);
}

/// The labels thread `tid` had at `time`.
pub(crate) fn labels_at(tid: u32, time: u64) -> Option<LabelSet> {
    let spans = SPANS.lock().unwrap_or_else(|e| e.into_inner());
    spans
        .iter()
        .rev()
        .find(|s| s.tid == tid && s.start <= time && time < s.end)
        .map(|s| s.labels.clone())
}

/// Forgets spans that ended before `time` (every sample up to it is read).
pub(crate) fn prune_before(time: u64) {
    SPANS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|s| s.end >= time);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_scopes_log_spans_and_restore() {
        start_recording();
        let tid = gettid();
        let (t_outer, t_inner) = with_labels(&[("endpoint", "/api"), ("tenant", "a")], || {
            let outer = monotonic_ns();
            let inner = with_labels(&[("tenant", "b")], monotonic_ns);
            (outer, inner)
        });
        let after = monotonic_ns();
        stop_recording();
        let outer = labels_at(tid, t_outer).unwrap();
        assert_eq!(
            &*outer,
            &[
                ("endpoint".to_owned(), "/api".to_owned()),
                ("tenant".to_owned(), "a".to_owned())
            ]
        );
        let inner = labels_at(tid, t_inner).unwrap();
        assert!(inner.contains(&("tenant".to_owned(), "b".to_owned())));
        assert!(inner.contains(&("endpoint".to_owned(), "/api".to_owned())));
        assert!(labels_at(tid, after).is_none());
        CURRENT.with(|c| assert!(c.borrow().is_empty()));
    }
}
