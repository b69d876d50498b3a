//! `smolder-bench-pyroscope inprocess --child pyroscope HZ ROUNDS`: one run
//! of the in-process benchmark's workload under pyroscope-rs 2.1.5 (its
//! pprof-rs backend, SIGPROF from `ITIMER_PROF`), reported on stdout in the
//! line `smolder-bench inprocess` reads (`ChildReport::line`). Started by
//! `smolder-bench inprocess --pyroscope BIN` (see `bench/inprocess.sh`).
//!
//! pyroscope-rs sends its profiles to a server; here the server is a
//! receiver on 127.0.0.1 in this process, started before the agent, that
//! answers 200 and keeps the bodies. They are decoded after the run: gzip,
//! a `push.v1.PushRequest` holding pprof `Profile`s, whose values are
//! samples x period (period = 10^9 / HZ ns).
//!
//! "stop" is `PyroscopeAgent::stop()` (the last report is built and handed
//! to the agent's upload thread) until the receiver has that upload's body:
//! what it takes until the profile has left, as smolder's `stop()` returns
//! the profile. `shutdown()` is not called: it joins the upload timer's
//! thread, which returns only at the timer's next tick (up to one upload
//! interval later); the process exits instead. The upload interval is one hour,
//! so that, as for the other profilers, one profile covers the whole run
//! (the interval is aligned to the clock: a run across a full hour would
//! upload twice; the receiver adds up every profile it got).

#[path = "../../src/workload.rs"]
#[allow(dead_code)] // DEFAULT_ROUNDS is the driver's
mod workload;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use pyroscope::backend::{pprof_backend, BackendConfig, PprofConfig};
use pyroscope::encode::gen::google::Profile;
use pyroscope::encode::gen::push::PushRequest;
use pyroscope::pyroscope::PyroscopeAgentBuilder;
use workload::{peak_rss_kib, shares, spawn_workers, ChildReport};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The largest request the receiver takes (headers and body).
const MAX_REQUEST: usize = 64 << 20;

fn main() {
    if let Err(e) = run() {
        eprintln!("smolder-bench-pyroscope: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["inprocess", "--child", "pyroscope", hz, rounds] => child(hz.parse()?, rounds.parse()?),
        _ => Err("usage: smolder-bench-pyroscope inprocess --child pyroscope HZ ROUNDS".into()),
    }
}

fn child(hz: u32, rounds: u64) -> Result<()> {
    let bodies: Arc<Bodies> = Arc::default();
    let url = receiver(Arc::clone(&bodies))?;
    let agent = PyroscopeAgentBuilder::new(
        &url,
        "smolder-bench",
        hz,
        "pyroscope-rs",
        "2.1.5",
        pprof_backend(
            PprofConfig { sample_rate: hz },
            BackendConfig {
                report_thread_id: true,
                ..BackendConfig::default()
            },
        ),
    )
    .upload_interval(Duration::from_secs(3600))
    .build()?;
    let running = agent.start()?;

    let mut r = ChildReport::default();
    let (wall, cpu) = spawn_workers(rounds)?;
    r.hwm_kib = peak_rss_kib();
    let before = bodies.received()?;
    let stopping = Instant::now();
    let _ready = running.stop()?;
    bodies.wait_for_more_than(before, Duration::from_secs(60))?;
    r.stop_ns = stopping.elapsed().as_nanos() as u64;
    r.wall_ns = wall.as_nanos() as u64;
    r.cpu_ns = cpu;

    let bodies = std::mem::take(&mut *bodies.list.lock().map_err(|_| "receiver panicked")?);
    let period = i64::from(1_000_000_000 / hz);
    let mut threads = std::collections::HashSet::new();
    let mut stacks = Vec::new();
    for body in bodies {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(body.as_slice()).read_to_end(&mut raw)?;
        let push = PushRequest::decode(raw.as_slice())?;
        for sample in push.series.iter().flat_map(|s| &s.samples) {
            let profile = Profile::decode(sample.raw_profile.as_slice())?;
            fold(&profile, &mut stacks, &mut threads)?;
        }
    }
    let total: i64 = stacks.iter().map(|(_, w)| w).sum();
    r.sampled_ns = u64::try_from(total)?;
    r.samples = u64::try_from(total / period)?;
    r.threads = threads.len() as u64;
    r.shares = shares(stacks.iter().map(|(s, w)| (s.as_str(), *w)));
    println!("{}", r.line());
    Ok(())
}

/// The stacks of `profile` as `;`-joined function names with their value,
/// and the `thread_id` labels seen.
fn fold(
    profile: &Profile,
    stacks: &mut Vec<(String, i64)>,
    threads: &mut std::collections::HashSet<String>,
) -> Result<()> {
    let string = |i: i64| -> Result<&str> {
        usize::try_from(i)
            .ok()
            .and_then(|i| profile.string_table.get(i))
            .map(String::as_str)
            .ok_or_else(|| format!("string {i} out of the table").into())
    };
    let functions: std::collections::HashMap<u64, &str> = profile
        .function
        .iter()
        .map(|f| Ok((f.id, string(f.name)?)))
        .collect::<Result<_>>()?;
    let locations: std::collections::HashMap<u64, Vec<&str>> = profile
        .location
        .iter()
        .map(|l| {
            let names = l
                .line
                .iter()
                .map(|line| functions.get(&line.function_id).copied().unwrap_or(""))
                .collect();
            (l.id, names)
        })
        .collect();
    for sample in &profile.sample {
        let mut names = Vec::new();
        for id in &sample.location_id {
            names.extend(locations.get(id).into_iter().flatten().copied());
        }
        for label in &sample.label {
            if string(label.key)? == "thread_id" {
                threads.insert(string(label.str)?.to_owned());
            }
        }
        let value = sample.value.first().copied().unwrap_or(0);
        stacks.push((names.join(";"), value));
    }
    Ok(())
}

/// The request bodies the receiver got.
#[derive(Default)]
struct Bodies {
    list: Mutex<Vec<Vec<u8>>>,
    arrived: Condvar,
}

impl Bodies {
    fn received(&self) -> Result<usize> {
        Ok(self.list.lock().map_err(|_| "receiver panicked")?.len())
    }

    fn push(&self, body: Vec<u8>) {
        self.list
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(body);
        self.arrived.notify_all();
    }

    /// Waits until more than `n` bodies came, at most `timeout`.
    fn wait_for_more_than(&self, n: usize, timeout: Duration) -> Result<()> {
        let list = self.list.lock().map_err(|_| "receiver panicked")?;
        let (list, _) = self
            .arrived
            .wait_timeout_while(list, timeout, |l| l.len() <= n)
            .map_err(|_| "receiver panicked")?;
        if list.len() <= n {
            return Err(
                format!("pyroscope-rs uploaded nothing within {timeout:?} of stop()").into(),
            );
        }
        Ok(())
    }
}

/// A loopback HTTP receiver for pyroscope-rs's uploads: keeps each request
/// body, answers 200 and closes. Returns its URL.
fn receiver(bodies: Arc<Bodies>) -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    std::thread::Builder::new()
        .name("receiver".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                match receive(stream) {
                    Ok(body) => bodies.push(body),
                    Err(e) => eprintln!("smolder-bench-pyroscope: receiver: {e}"),
                }
            }
        })?;
    Ok(url)
}

fn receive(mut stream: TcpStream) -> Result<Vec<u8>> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    let (head_len, body_len) = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err("connection closed before the headers ended".into());
        }
        bytes.extend_from_slice(&chunk[..n]);
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&bytes[..end])?;
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length").then(|| v.trim())
                })
                .ok_or("no Content-Length")?
                .parse::<usize>()?;
            break (end + 4, len);
        }
        if bytes.len() > MAX_REQUEST {
            return Err("headers too long".into());
        }
    };
    if head_len + body_len > MAX_REQUEST {
        return Err("request too large".into());
    }
    while bytes.len() < head_len + body_len {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err("connection closed in the body".into());
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    bytes.truncate(head_len + body_len);
    Ok(bytes.split_off(head_len))
}
