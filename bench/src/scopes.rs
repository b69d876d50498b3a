//! The cost of entering and leaving a labelled scope (issue 16; figures in
//! bench/README.md): `smolder::with_labels`, and a `tracing` span with
//! smolder's `TracingLayer` on against the same subscriber without it,
//! with and without `tracing-opentelemetry`, while the in-process profiler
//! runs (changes are logged) and while it does not. Each configuration
//! runs on 1 and on 16 threads, with the scope entered at nesting depth 1
//! and 8, so that a cost growing with threads or open scopes shows.
//!
//! Measured: CPU time per enter+leave (each thread's
//! `CLOCK_THREAD_CPUTIME_ID` over its loop, divided by its iterations; CPU
//! rather than wall time, so 16 threads on 2 CPUs compare with 1), median
//! of `--runs` (default 5).

use std::hint::black_box;
use std::sync::Arc;

use opentelemetry::trace::TracerProvider;
use tracing::Dispatch;
use tracing_subscriber::layer::SubscriberExt;

use crate::workload::thread_cpu_ns;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const ITERATIONS: u64 = 200_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scope {
    Labels,
    /// A `tracing` span under `registry()` (+ otel layer when `otel`),
    /// with smolder's layer when `layer`.
    Span {
        otel: bool,
        layer: bool,
    },
}

impl Scope {
    fn name(self) -> String {
        match self {
            Scope::Labels => "`with_labels`".into(),
            Scope::Span { otel, layer } => format!(
                "span, registry{}{}",
                if otel { " + otel" } else { "" },
                if layer { " + TracingLayer" } else { "" }
            ),
        }
    }

    fn dispatch(self) -> Option<Dispatch> {
        let Scope::Span {
            otel: otel_on,
            layer,
        } = self
        else {
            return None;
        };
        let registry = tracing_subscriber::registry();
        let smolder = smolder::TracingLayer::default;
        // (Not an `Option` layer: a `None` layer hints the level OFF and
        // would disable every span.)
        let otel = || {
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
            tracing_opentelemetry::layer().with_tracer(provider.tracer("bench"))
        };
        Some(match (otel_on, layer) {
            (false, false) => Dispatch::new(registry),
            (false, true) => Dispatch::new(registry.with(smolder())),
            (true, false) => Dispatch::new(registry.with(otel())),
            (true, true) => Dispatch::new(registry.with(otel()).with(smolder())),
        })
    }
}

/// Enters `depth - 1` scopes, then enters and leaves the innermost one
/// `ITERATIONS` times; returns CPU ns per enter+leave.
fn nested(scope: Scope, depth: usize) -> f64 {
    if depth > 1 {
        return match scope {
            Scope::Labels => smolder::with_labels(&[("outer", "x")], || nested(scope, depth - 1)),
            Scope::Span { .. } => {
                let _outer = tracing::info_span!("outer").entered();
                nested(scope, depth - 1)
            }
        };
    }
    let start = thread_cpu_ns();
    for i in 0..ITERATIONS {
        match scope {
            Scope::Labels => {
                smolder::with_labels(&[("endpoint", "/api")], || black_box(i));
            }
            Scope::Span { .. } => {
                let span = tracing::info_span!("request");
                let _entered = span.enter();
                black_box(i);
            }
        }
    }
    (thread_cpu_ns() - start) as f64 / ITERATIONS as f64
}

/// Median over threads of the CPU ns per enter+leave.
fn measure(scope: Scope, threads: usize, depth: usize) -> Result<f64> {
    let dispatch = Arc::new(scope.dispatch());
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let dispatch = dispatch.clone();
            std::thread::Builder::new().spawn(move || match &*dispatch {
                Some(d) => tracing::dispatcher::with_default(d, || nested(scope, depth)),
                None => nested(scope, depth),
            })
        })
        .collect::<std::io::Result<_>>()?;
    let mut per_op: Vec<f64> = handles
        .into_iter()
        .map(|h| h.join().map_err(|_| "a thread panicked"))
        .collect::<std::result::Result<_, _>>()?;
    per_op.sort_by(f64::total_cmp);
    Ok(per_op[per_op.len() / 2])
}

/// `smolder-bench scopes [--runs N]`.
pub fn main(mut args: impl Iterator<Item = String>) -> Result<()> {
    let mut runs = 5;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => runs = args.next().ok_or("--runs N")?.parse()?,
            other => return Err(format!("unknown argument {other:?}; see src/scopes.rs").into()),
        }
    }
    let scopes = [
        Scope::Labels,
        Scope::Span {
            otel: false,
            layer: false,
        },
        Scope::Span {
            otel: false,
            layer: true,
        },
        Scope::Span {
            otel: true,
            layer: false,
        },
        Scope::Span {
            otel: true,
            layer: true,
        },
    ];
    println!("## CPU ns per enter+leave of a scope: median over threads, median of {runs} runs");
    println!();
    println!("| scope | profiler | 1 thread, depth 1 | 1 thread, depth 8 | 16 threads, depth 1 | 16 threads, depth 8 |");
    println!("|---|---|---:|---:|---:|---:|");
    for profiling in [false, true] {
        let guard = match profiling {
            true => Some(smolder::Profiler::builder().frequency_hz(999).start()?),
            false => None,
        };
        for scope in scopes {
            let mut cells = Vec::new();
            for (threads, depth) in [(1, 1), (1, 8), (16, 1), (16, 8)] {
                let mut v = (0..runs)
                    .map(|_| measure(scope, threads, depth))
                    .collect::<Result<Vec<f64>>>()?;
                v.sort_by(f64::total_cmp);
                cells.push(format!("{:.0}", v[v.len() / 2]));
            }
            println!(
                "| {} | {} | {} |",
                scope.name(),
                if profiling { "running" } else { "off" },
                cells.join(" | ")
            );
        }
        if let Some(guard) = guard {
            let profile = guard.stop()?;
            println!(
                "| (profiler: {} samples, label log overflows {}) | | | | | |",
                profile.stats.samples, profile.stats.label_log_overflows
            );
        }
    }
    Ok(())
}
