//! `smolder agent`: the always-on node agent. Reads the configuration
//! (TOML file, then environment, then these flags), drops capabilities,
//! and runs [`smolder::agent::run`] with SIGTERM/SIGINT as stop and SIGHUP
//! as reload.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use smolder::agent::{self, AgentConfig, Control};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// TOML configuration file (re-read on SIGHUP)
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// OTLP/gRPC endpoint (http:// or https://); without one, profiles stay local
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Keep each interval here as an OTLP file and a flamegraph SVG
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Remove stored intervals older than this (default 24h)
    #[arg(long, value_name = "DURATION", value_parser = smolder::agent::config::parse_duration)]
    pub retention_max_age: Option<Duration>,
    /// Serve the page, /metrics and /healthz on this address (e.g. 127.0.0.1:7070)
    #[arg(long, value_name = "ADDR:PORT")]
    pub http: Option<SocketAddr>,
    /// Allow --http on an address other than loopback (the page has no authentication)
    #[arg(long)]
    pub http_allow_remote: bool,
    /// Samples per second on each CPU (default 19)
    #[arg(short = 'F', long, value_parser = smolder::agent::config::parse_frequency)]
    pub frequency: Option<u64>,
    /// One profile per interval (default 10s)
    #[arg(short, long, value_parser = smolder::agent::config::parse_duration)]
    pub interval: Option<Duration>,
    /// Profile only these processes (and what they start)
    #[arg(short, long, value_delimiter = ',', value_name = "PID[,PID...]")]
    pub pid: Vec<u32>,
    /// Profile only processes with this name (comm or executable file name)
    #[arg(long = "exe", value_name = "NAME")]
    pub executables: Vec<String>,
    /// Profile only processes whose cgroup path contains this
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<String>,
    /// Export queue bound in bytes
    #[arg(long, value_name = "BYTES")]
    pub queue_bytes: Option<usize>,
    /// What the agent may hold in memory (64M by default): every cache and
    /// table is sized from it, and caches are emptied when resident memory
    /// comes near it
    #[arg(long, value_name = "SIZE", value_parser = smolder::agent::config::parse_size)]
    pub memory_limit: Option<u64>,
    /// Keep every capability (by default all but CAP_BPF, CAP_PERFMON,
    /// CAP_SYSLOG, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH are dropped)
    #[arg(long)]
    pub keep_capabilities: bool,
}

impl AgentArgs {
    /// File, then environment, then these flags.
    fn load(&self) -> Result<AgentConfig> {
        let mut config = AgentConfig::load(self.config.as_deref())?;
        if let Some(endpoint) = &self.endpoint {
            config.endpoint = Some(endpoint.clone());
        }
        if let Some(dir) = &self.output_dir {
            config.output_dir = Some(dir.clone());
        }
        if let Some(age) = self.retention_max_age {
            config.retention.max_age = age;
        }
        if let Some(addr) = self.http {
            config.http = Some(addr);
        }
        config.http_allow_remote |= self.http_allow_remote;
        if let Some(hz) = self.frequency {
            config.frequency_hz = hz;
        }
        if let Some(interval) = self.interval {
            config.interval = interval;
        }
        if !self.pid.is_empty() {
            config.filter.pids = self.pid.clone();
        }
        if !self.executables.is_empty() {
            config.filter.executables = self.executables.clone();
        }
        if !self.cgroups.is_empty() {
            config.filter.cgroups = self.cgroups.clone();
        }
        if let Some(bytes) = self.queue_bytes {
            config.exporter.queue_bytes = bytes;
        }
        if let Some(bytes) = self.memory_limit {
            config.memory_limit = bytes;
        }
        config.validate()?;
        Ok(config)
    }
}

pub fn run(args: &AgentArgs) -> Result<()> {
    super::init_log(Some("info"));
    let config = args.load()?;
    // Before any thread starts: threads share two allocator arenas.
    agent::budget::limit_allocator_arenas();
    if !args.keep_capabilities {
        // Before the runtime starts its threads: capabilities are per thread.
        let kept = agent::drop_capabilities().context("cannot drop capabilities")?;
        tracing::info!("capabilities kept: {}", kept.join(", "));
    }
    // The sampling loop on this one thread (symbolizing runs on a blocking
    // thread of its own; the page and the exporter on runtimes of their own):
    // a wakeup is not handed between worker threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let result = runtime.block_on(serve(args, config));
    // A symbolization cut short by the shutdown deadline may still run.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

async fn serve(args: &AgentArgs, config: AgentConfig) -> Result<()> {
    let (control, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let reload_args = args.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { let _ = control.send(Control::Stop); break; }
                _ = int.recv() => { let _ = control.send(Control::Stop); break; }
                _ = hup.recv() => match reload_args.load() {
                    Ok(config) => { let _ = control.send(Control::Reload(Box::new(config))); }
                    Err(e) => tracing::error!("SIGHUP: the configuration stays as it was: {e:#}"),
                },
            }
        }
    });
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if let Ok(started) = started_rx.await {
            // One line for scripts and tests to wait for.
            let started: agent::Started = started;
            eprintln!(
                "smolder agent: running{}{}",
                started
                    .http
                    .map_or(String::new(), |a| format!(", http://{a}")),
                started
                    .exporter_endpoint
                    .map_or(String::new(), |e| format!(", exporting to {e}")),
            );
        }
    });
    let summary = agent::run(config, rx, Some(started_tx))
        .await
        .map_err(|e| match e {
            agent::AgentError::Sampler(s) if s.is_unsupported() => {
                anyhow::anyhow!("cannot start the eBPF sampler: {s}")
            }
            other => anyhow::Error::new(other),
        })?;
    let c = summary.counters;
    let exported = summary.exporter.map_or(String::new(), |e| {
        format!(
            ", {} exports ({} failed, {} batches dropped)",
            e.exported_batches, e.failed_batches, e.dropped_batches
        )
    });
    eprintln!(
        "smolder agent: stopped after {} intervals: {} samples ({} lost){exported}",
        summary.intervals, c.samples_kept, c.samples_lost
    );
    Ok(())
}
