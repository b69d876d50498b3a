//! A small HTTP-like service that profiles itself continuously: a pool of
//! two workers serves `checkout` and `search` requests, each in a `tracing`
//! span that `tracing-opentelemetry` turns into an OpenTelemetry span, and
//! `smolder::TracingLayer` labels the samples taken in a request with the
//! span's name and route and links them to its trace.
//!
//! ```sh
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 \
//!   cargo run --release -p smolder --features tracing,exporter --example traced_service -- \
//!   --hz 99 --requests 200 --request-cpu-ms 20 --export-every 10 --out /tmp/svc
//! ```
//! Each request burns `--request-cpu-ms` of CPU time in its known hot
//! function (`price_cart` for checkout, `rank_results` for search). With
//! `--export-every SECONDS` every interval goes to the OTLP endpoint of
//! `OTEL_EXPORTER_OTLP_ENDPOINT`. At the end the profile of the last
//! interval is written as `profile.pb` (OTLP) and `profile.pprof`, and a
//! JSON summary is printed: each request's trace and span id, samples, and
//! the resident memory after each exported interval. `--intervals N` keeps
//! serving requests until N intervals were exported.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, TracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Checkout,
    Search,
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Spins until this thread used `cpu_ns` more CPU time.
#[inline(never)]
fn burn(cpu_ns: u64) -> u64 {
    let until = thread_cpu_ns() + cpu_ns;
    let mut x = 0u64;
    while thread_cpu_ns() < until {
        for i in 0..20_000 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
    x
}

#[inline(never)]
fn price_cart(cpu_ns: u64) -> u64 {
    burn(black_box(cpu_ns))
}

#[inline(never)]
fn rank_results(cpu_ns: u64) -> u64 {
    burn(black_box(cpu_ns))
}

/// Serves one request in its span; returns its (name, trace id, span id).
fn serve(kind: Kind, id: usize, cpu_ns: u64) -> (String, String, String) {
    let span = match kind {
        Kind::Checkout => tracing::info_span!("checkout", route = "/checkout", request = id),
        Kind::Search => tracing::info_span!("search", route = "/search", request = id),
    };
    let _entered = span.enter();
    black_box(match kind {
        Kind::Checkout => price_cart(cpu_ns),
        Kind::Search => rank_results(cpu_ns),
    });
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    let name = span.metadata().map_or("", |m| m.name()).to_owned();
    (name, sc.trace_id().to_string(), sc.span_id().to_string())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut hz = 99;
    let mut requests = 20;
    let mut request_cpu_ms = 20.0;
    let mut out = std::env::temp_dir();
    let mut export_every = None;
    let mut until_intervals = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--hz" => hz = args.next().ok_or("--hz N")?.parse()?,
            // Requests of each kind.
            "--requests" => requests = args.next().ok_or("--requests N")?.parse()?,
            "--request-cpu-ms" => {
                request_cpu_ms = args.next().ok_or("--request-cpu-ms MS")?.parse()?
            }
            "--out" => out = args.next().ok_or("--out DIR")?.into(),
            "--export-every" => {
                export_every = Some(Duration::from_secs_f64(
                    args.next().ok_or("--export-every SECONDS")?.parse()?,
                ))
            }
            // Serve requests (past --requests) until N intervals were exported.
            "--intervals" => until_intervals = Some(args.next().ok_or("--intervals N")?.parse()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }

    // Tracing: spans become OpenTelemetry spans (ids from the SDK), then
    // smolder's layer, after it, sees each span's context when it is entered.
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("traced_service")))
        .with(smolder::TracingLayer::default().keep_fields(["route"]));
    tracing::subscriber::set_global_default(subscriber)?;

    let mut builder = smolder::Profiler::builder().frequency_hz(hz);
    if let Some(every) = export_every {
        builder = builder.export_every(every, smolder::exporter::ExporterConfig::from_env()?);
    }
    let guard = builder.start()?;

    let queue: Arc<Mutex<VecDeque<(Kind, usize)>>> = Arc::new(Mutex::new(
        (0..requests)
            .flat_map(|i| [(Kind::Checkout, i), (Kind::Search, i)])
            .collect(),
    ));
    let cpu_ns = (request_cpu_ms * 1e6) as u64;
    let enough = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (1..=2)
        .map(|w| {
            let queue = queue.clone();
            let enough = enough.clone();
            std::thread::Builder::new()
                .name(format!("http-worker-{w}"))
                .spawn(move || {
                    let mut served = Vec::new();
                    loop {
                        let mut queue = queue.lock().unwrap_or_else(|e| e.into_inner());
                        let next = queue.pop_front();
                        if let (Some(request), Some(_)) = (next, until_intervals) {
                            // Served requests come back until there were enough intervals.
                            queue.push_back(request);
                        }
                        drop(queue);
                        let Some((kind, id)) = next else { break };
                        if enough.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        served.push(serve(kind, id, cpu_ns));
                    }
                    served
                })
        })
        .collect::<Result<_, _>>()?;
    // The resident memory after each exported interval.
    let mut rss_after_interval = Vec::new();
    while !workers.iter().all(|w| w.is_finished()) {
        if guard.intervals_exported() > rss_after_interval.len() as u64 {
            rss_after_interval.push(rss_kib());
        }
        if until_intervals.is_some_and(|n: u64| rss_after_interval.len() as u64 >= n) {
            enough.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut served = Vec::new();
    for w in workers {
        served.extend(w.join().map_err(|_| "a worker panicked")?);
    }
    let profile = guard.stop()?;
    profile.write_otlp(out.join("profile.pb"))?;
    profile.write_pprof(out.join("profile.pprof"))?;
    // The first 20 requests are enough to look up a trace.
    let requests: Vec<String> = served
        .iter()
        .take(20)
        .map(|(name, trace, span)| {
            format!("{{\"name\":\"{name}\",\"trace_id\":\"{trace}\",\"span_id\":\"{span}\"}}")
        })
        .collect();
    println!(
        "{{\"sampler\":\"{:?}\",\"samples\":{},\"intervals\":{},\"rss_kib_after_interval\":{:?},\"requests\":[{}]}}",
        profile.sampler,
        profile.stats.samples,
        rss_after_interval.len(),
        rss_after_interval,
        requests.join(",")
    );
    Ok(())
}
