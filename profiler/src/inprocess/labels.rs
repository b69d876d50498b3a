//! What a thread is doing, for its samples: the labels of the scopes it is
//! in (`smolder::with_labels`, `tracing` spans through `TracingLayer`) and
//! the trace link of the innermost span that has one.
//!
//! Samples are read after the fact, so each thread logs the changes of its
//! context (time on the samples' clock, CLOCK_MONOTONIC, and the new
//! context) into a log of its own; the reader thread drains every log into
//! a per-thread timeline (`Timeline`) after it read the rings, and a sample
//! takes the context its thread had at its time. A change costs a clock
//! read and the thread's own lock, which only the reader ever contends
//! for: it does not grow with the number of threads or of open scopes.
//! Changes are logged only while a profiler runs; otherwise a scope costs
//! a thread-local swap.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use smolder_profiles_proto::TraceLink;

/// A thread's context: its labels, outermost scope first (an inner scope
/// replaces an outer label with the same key), and its trace link.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScopeContext {
    pub labels: Vec<(String, String)>,
    pub link: Option<TraceLink>,
}

/// `None` is "no labels, no link".
pub(crate) type Context = Option<Arc<ScopeContext>>;

/// A thread's log holds at most this many changes between two reads by
/// the reader (~10 ms apart; 4 MiB). Past it, older changes are dropped
/// and counted (`Timeline::overflows`): a thread would have to change its
/// context 26 million times a second.
const LOG_CAP: usize = 1 << 18;

struct ThreadLog {
    tid: u32,
    changes: Mutex<Vec<(u64, Context)>>,
    /// Times the log hit [`LOG_CAP`].
    overflows: AtomicU64,
}

static RECORDING: AtomicBool = AtomicBool::new(false);
/// Every thread that logged a change. A thread registers once; the reader
/// forgets logs of threads that exited once it drained them.
static LOGS: Mutex<Vec<Arc<ThreadLog>>> = Mutex::new(Vec::new());

thread_local! {
    static CURRENT: RefCell<Context> = const { RefCell::new(None) };
    static LOG: RefCell<Option<Arc<ThreadLog>>> = const { RefCell::new(None) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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

/// Logs that this thread's context became `context` now.
fn log_change(context: &Context) {
    if !RECORDING.load(Ordering::Relaxed) {
        return;
    }
    LOG.with(|log| {
        let mut log = log.borrow_mut();
        let log = log.get_or_insert_with(|| {
            let new = Arc::new(ThreadLog {
                tid: gettid(),
                changes: Mutex::new(Vec::new()),
                overflows: AtomicU64::new(0),
            });
            lock(&LOGS).push(new.clone());
            new
        });
        let mut changes = lock(&log.changes);
        if changes.len() >= LOG_CAP {
            changes.clear();
            log.overflows.fetch_add(1, Ordering::Relaxed);
        }
        // The time is read under the lock: a change the reader did not
        // drain is later than every sample it read before draining.
        changes.push((monotonic_ns(), context.clone()));
    });
}

/// Makes `context` this thread's context; returns the one it replaces.
pub(crate) fn replace_context(context: Context) -> Context {
    log_change(&context);
    CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), context))
}

/// This thread's context with `labels` added over it and, when given,
/// `link` as its link.
pub(crate) fn nested_context<'a>(
    labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    link: Option<TraceLink>,
) -> Context {
    CURRENT.with(|c| {
        let c = c.borrow();
        let outer = c.as_deref();
        let mut merged = outer.map(|o| o.labels.clone()).unwrap_or_default();
        for (k, v) in labels {
            match merged.iter_mut().find(|(key, _)| key == k) {
                Some(slot) => slot.1 = v.to_owned(),
                None => merged.push((k.to_owned(), v.to_owned())),
            }
        }
        let link = link.or_else(|| outer.and_then(|o| o.link));
        (!merged.is_empty() || link.is_some()).then(|| {
            Arc::new(ScopeContext {
                labels: merged,
                link,
            })
        })
    })
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
    // Restores the outer context even when `f` panics.
    struct Restore(Context);
    impl Drop for Restore {
        fn drop(&mut self) {
            replace_context(self.0.take());
        }
    }
    let _restore = Restore(replace_context(nested_context(
        labels.iter().copied(),
        None,
    )));
    f()
}

/// Starts logging changes (a profiler started); what older runs logged
/// and nobody read is dropped.
pub(crate) fn start_recording() {
    for log in lock(&LOGS).iter() {
        lock(&log.changes).clear();
    }
    RECORDING.store(true, Ordering::Relaxed);
}

pub(crate) fn stop_recording() {
    RECORDING.store(false, Ordering::Relaxed);
}

/// The reader's view of every thread's context over time.
#[derive(Default)]
pub(crate) struct Timeline {
    /// Per thread, its changes in time order.
    threads: HashMap<u32, VecDeque<(u64, Context)>>,
    /// Times a thread's log overflowed (its older changes were lost).
    pub overflows: u64,
}

impl Timeline {
    /// Drains every thread's log. Called after the rings were read, so
    /// every change earlier than a sample read is here.
    pub fn collect(&mut self) {
        let mut logs = lock(&LOGS);
        logs.retain(|log| {
            // Drained in place: the thread's log keeps its capacity, so its
            // next changes do not grow a fresh vector (page faults on the
            // thread that changes its context).
            let mut changes = lock(&log.changes);
            if !changes.is_empty() {
                self.threads
                    .entry(log.tid)
                    .or_default()
                    .extend(changes.drain(..));
            }
            drop(changes);
            self.overflows += log.overflows.swap(0, Ordering::Relaxed);
            // Only the registry holds it: the thread exited.
            Arc::strong_count(log) > 1
        });
    }

    /// The context thread `tid` had at `time`.
    pub fn at(&self, tid: u32, time: u64) -> Option<&ScopeContext> {
        let changes = self.threads.get(&tid)?;
        let after = changes.partition_point(|(t, _)| *t <= time);
        changes.get(after.checked_sub(1)?)?.1.as_deref()
    }

    /// Forgets what no sample earlier than `time` can need: changes
    /// before it, except the last one (the context at `time`).
    pub fn prune_before(&mut self, time: u64) {
        self.threads.retain(|_, changes| {
            while changes.len() >= 2 && changes[1].0 <= time {
                changes.pop_front();
            }
            !(changes.len() == 1 && changes[0].0 <= time && changes[0].1.is_none())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(cx: Option<&ScopeContext>) -> Vec<(&str, &str)> {
        cx.map(|c| {
            c.labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect()
        })
        .unwrap_or_default()
    }

    #[test]
    fn nested_scopes_log_changes_and_restore() {
        start_recording();
        let tid = gettid();
        let before = monotonic_ns();
        let (t_outer, t_inner) = with_labels(&[("endpoint", "/api"), ("tenant", "a")], || {
            let outer = monotonic_ns();
            let inner = with_labels(&[("tenant", "b")], monotonic_ns);
            (outer, inner)
        });
        let after = monotonic_ns();
        stop_recording();
        let mut timeline = Timeline::default();
        timeline.collect();
        assert!(timeline.at(tid, before).is_none());
        assert_eq!(
            labels(timeline.at(tid, t_outer)),
            [("endpoint", "/api"), ("tenant", "a")]
        );
        assert_eq!(
            labels(timeline.at(tid, t_inner)),
            [("endpoint", "/api"), ("tenant", "b")]
        );
        assert!(timeline.at(tid, after).is_none());
        CURRENT.with(|c| assert!(c.borrow().is_none()));
        // Pruning keeps the context in force at the cut.
        timeline.prune_before(t_inner);
        assert_eq!(
            labels(timeline.at(tid, t_inner)),
            [("endpoint", "/api"), ("tenant", "b")]
        );
        timeline.prune_before(after);
        assert!(timeline.threads.is_empty());
    }

    #[test]
    fn a_link_is_inherited_by_inner_scopes() {
        let link = TraceLink {
            trace_id: [1; 16],
            span_id: [2; 8],
        };
        let outer = replace_context(nested_context([("span.name", "req")], Some(link)));
        let inner = nested_context([("k", "v")], None);
        assert_eq!(inner.as_deref().and_then(|c| c.link), Some(link));
        replace_context(outer);
        assert!(nested_context([], None).is_none());
    }
}
