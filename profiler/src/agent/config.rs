//! The agent's settings: a TOML file, overridden by environment variables,
//! overridden by command-line flags (the CLI applies those last).
//!
//! Owns the file format, the `SMOLDER_*` and `OTEL_*` variables the agent
//! reads, defaults and validation; nothing here starts anything.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::exporter::{
    endpoint_from_env_with, parse_key_values, ExporterConfig, ResourceAttributes, RetryPolicy,
    TlsConfig,
};

use super::AgentError;
use crate::sampler::OffCpuConfig;

/// Everything the agent is told. `Default` is the embedded default: 19 Hz,
/// 10 s intervals, no endpoint, nothing kept on disk, no HTTP page.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Samples per second on each CPU.
    pub frequency_hz: u64,
    /// One profile per interval: `10s`, `500ms`, `1m`.
    #[serde(with = "duration_text")]
    pub interval: Duration,
    /// OTLP/gRPC endpoint; none keeps profiles local.
    pub endpoint: Option<String>,
    /// Keep each interval here as an OTLP file and a flamegraph SVG.
    pub output_dir: Option<PathBuf>,
    pub retention: Retention,
    /// Serve the page, `/metrics` and `/healthz` here.
    pub http: Option<SocketAddr>,
    /// Allow `http` on an address other than loopback.
    pub http_allow_remote: bool,
    pub filter: FilterConfig,
    pub exporter: ExporterSettings,
    /// Attributes added to every resource (`OTEL_RESOURCE_ATTRIBUTES` wins).
    pub resource_attributes: BTreeMap<String, String>,
    /// What the agent may hold in memory, in bytes (`"64MiB"` or a number
    /// in the file): every cache and table is sized from it
    /// ([`super::MemoryBudget`]), and the agent trims its caches when its
    /// resident memory comes near it.
    #[serde(with = "size_text")]
    pub memory_limit: u64,
    /// Byte budget of the symbolizer's cache of parsed binaries; by
    /// default its share of `memory_limit`, never more.
    pub symbol_cache_bytes: Option<usize>,
    /// Start afresh (closing every opened binary) every this many intervals.
    pub aggregator_reset_intervals: u32,
    /// Off-CPU profiling (where threads wait), off by default.
    pub off_cpu: OffCpuSettings,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            frequency_hz: 19,
            interval: Duration::from_secs(10),
            endpoint: None,
            output_dir: None,
            retention: Retention::default(),
            http: None,
            http_allow_remote: false,
            filter: FilterConfig::default(),
            exporter: ExporterSettings::default(),
            resource_attributes: BTreeMap::new(),
            memory_limit: DEFAULT_MEMORY_LIMIT,
            symbol_cache_bytes: None,
            aggregator_reset_intervals: 30,
            off_cpu: OffCpuSettings::default(),
        }
    }
}

/// The agent's memory limit unless told otherwise.
pub const DEFAULT_MEMORY_LIMIT: u64 = 64 << 20;
/// The smallest memory limit accepted: below it the agent's own code,
/// threads and buffers leave nothing for its caches.
pub const MIN_MEMORY_LIMIT: u64 = 32 << 20;

/// The `[off_cpu]` table: an `off_cpu` profile (nanoseconds waited, by
/// the stack a thread blocked with) beside the CPU one in every interval.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OffCpuSettings {
    pub enabled: bool,
    /// Waits shorter than this are not recorded.
    #[serde(with = "duration_text")]
    pub min_blocked: Duration,
    /// The chance that a wait is recorded, in (0, 1]; recorded waits count
    /// `1 / probability` times so that totals estimate real time.
    pub probability: f64,
    /// Threads blocked at once that can be followed (kernel memory: about
    /// 64 bytes each); beyond that the longest-blocked are forgotten.
    pub max_threads: u32,
}

impl Default for OffCpuSettings {
    fn default() -> Self {
        let sampler = OffCpuConfig::default();
        OffCpuSettings {
            enabled: false,
            min_blocked: sampler.min_blocked,
            probability: sampler.probability,
            max_threads: sampler.max_threads,
        }
    }
}

impl OffCpuSettings {
    /// The sampler's off-CPU configuration; `None` when disabled.
    pub fn sampler_config(&self) -> Option<OffCpuConfig> {
        self.enabled.then_some(OffCpuConfig {
            min_blocked: self.min_blocked,
            probability: self.probability,
            max_threads: self.max_threads,
        })
    }
}

/// What `output_dir` keeps: intervals younger than `max_age`, at most
/// `count` of them and `bytes` in all; those older than `compact_after`
/// merged into one file per 5 minutes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Intervals kept (each an OTLP file, and an SVG until compacted).
    pub count: usize,
    /// Bytes kept, all files together.
    pub bytes: u64,
    /// Intervals that started longer than this before the newest one go.
    #[serde(with = "duration_text")]
    pub max_age: Duration,
    /// Intervals that started longer than this before the newest one are
    /// merged into one file per 5 minutes (their SVGs go).
    #[serde(with = "duration_text")]
    pub compact_after: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            count: 10_000,
            bytes: 512 << 20,
            max_age: Duration::from_secs(24 * 3600),
            compact_after: Duration::from_secs(3600),
        }
    }
}

/// Which processes are profiled: those matching any of the lists; all of
/// them when every list is empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    /// These processes and the ones they start (filtered in the kernel).
    pub pids: Vec<u32>,
    /// Processes whose cgroup path (`/proc/PID/cgroup`) contains one of these.
    pub cgroups: Vec<String>,
    /// Processes whose name (`comm`) or executable file name is one of these.
    pub executables: Vec<String>,
}

impl FilterConfig {
    /// True when every process is profiled.
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty() && self.cgroups.is_empty() && self.executables.is_empty()
    }
}

/// The `[exporter]` table.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExporterSettings {
    pub headers: BTreeMap<String, String>,
    pub gzip: bool,
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub queue_bytes: usize,
    #[serde(with = "duration_text")]
    pub initial_backoff: Duration,
    #[serde(with = "duration_text")]
    pub max_backoff: Duration,
}

impl Default for ExporterSettings {
    fn default() -> Self {
        let exporter = ExporterConfig::default();
        ExporterSettings {
            headers: BTreeMap::new(),
            gzip: exporter.gzip,
            timeout: exporter.timeout,
            ca_file: None,
            client_cert: None,
            client_key: None,
            queue_bytes: exporter.queue_bytes,
            initial_backoff: exporter.retry.initial_backoff,
            max_backoff: exporter.retry.max_backoff,
        }
    }
}

impl AgentConfig {
    /// How `memory_limit` is shared out.
    pub fn budget(&self) -> super::MemoryBudget {
        super::MemoryBudget::new(self.memory_limit)
    }

    /// The file's settings (defaults when `path` is `None`) overridden by
    /// the process environment.
    pub fn load(path: Option<&Path>) -> Result<AgentConfig, AgentError> {
        let mut config = match path {
            Some(path) => AgentConfig::from_file(path)?,
            None => AgentConfig::default(),
        };
        config.apply_env(|k| std::env::var(k).ok())?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<AgentConfig, AgentError> {
        let text = std::fs::read_to_string(path).map_err(|source| AgentError::Io {
            action: format!("reading the config file {}", path.display()),
            source,
        })?;
        toml::from_str(&text).map_err(|e| AgentError::Config(format!("{}: {e}", path.display())))
    }

    /// Overrides settings from `SMOLDER_FREQUENCY`, `SMOLDER_INTERVAL`,
    /// `SMOLDER_MEMORY_LIMIT`,
    /// `SMOLDER_OUTPUT_DIR`, `SMOLDER_HTTP`, and the OTLP endpoint from
    /// `OTEL_EXPORTER_OTLP_[PROFILES_]ENDPOINT`. (The other `OTEL_*`
    /// variables are read by [`Self::exporter_config`].)
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), AgentError> {
        let var = |name: &str| {
            get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if let Some(hz) = var("SMOLDER_FREQUENCY") {
            self.frequency_hz = parse_frequency(&hz)
                .map_err(|e| AgentError::Config(format!("SMOLDER_FREQUENCY: {e}")))?;
        }
        if let Some(interval) = var("SMOLDER_INTERVAL") {
            self.interval = parse_duration(&interval)
                .map_err(|e| AgentError::Config(format!("SMOLDER_INTERVAL: {e}")))?;
        }
        if let Some(limit) = var("SMOLDER_MEMORY_LIMIT") {
            self.memory_limit = parse_size(&limit)
                .map_err(|e| AgentError::Config(format!("SMOLDER_MEMORY_LIMIT: {e}")))?;
        }
        if let Some(dir) = var("SMOLDER_OUTPUT_DIR") {
            self.output_dir = Some(dir.into());
        }
        if let Some(addr) = var("SMOLDER_HTTP") {
            self.http = Some(addr.parse().map_err(|_| {
                AgentError::Config(format!("SMOLDER_HTTP={addr:?}: expected ADDRESS:PORT"))
            })?);
        }
        if let Some(endpoint) = endpoint_from_env_with(&get) {
            self.endpoint = Some(endpoint);
        }
        Ok(())
    }

    /// Checks the settings that the file's types cannot.
    pub fn validate(&self) -> Result<(), AgentError> {
        let bad = |m: String| Err(AgentError::Config(m));
        if !(1..=10_000).contains(&self.frequency_hz) {
            return bad(format!(
                "frequency_hz = {}: use 1..=10000",
                self.frequency_hz
            ));
        }
        if self.interval < Duration::from_millis(100) {
            return bad(format!("interval = {:?}: at least 100ms", self.interval));
        }
        if let Some(addr) = self.http {
            if !addr.ip().is_loopback() && !self.http_allow_remote {
                return bad(format!(
                    "http = {addr} is not a loopback address: the page and /metrics are not \
                     authenticated; set http_allow_remote = true (or --http-allow-remote) to serve it"
                ));
            }
        }
        if self.memory_limit < MIN_MEMORY_LIMIT {
            return bad(format!(
                "memory_limit = {} bytes: at least {} MiB",
                self.memory_limit,
                MIN_MEMORY_LIMIT >> 20
            ));
        }
        if self.exporter.queue_bytes == 0 {
            return bad("exporter.queue_bytes must be > 0".into());
        }
        if self.retention.count == 0 {
            return bad("retention.count must be > 0".into());
        }
        if self.retention.max_age.is_zero() {
            return bad("retention.max_age must be > 0".into());
        }
        let p = self.off_cpu.probability;
        if !(p > 0.0 && p <= 1.0) {
            return bad(format!("off_cpu.probability = {p}: must be in (0, 1]"));
        }
        if self.off_cpu.max_threads == 0 {
            return bad("off_cpu.max_threads must be > 0".into());
        }
        Ok(())
    }

    /// The exporter's settings: the `[exporter]` table overridden by the
    /// `OTEL_EXPORTER_OTLP_*` variables; `None` without an endpoint.
    pub fn exporter_config(
        &self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<ExporterConfig>, AgentError> {
        let Some(endpoint) = &self.endpoint else {
            return Ok(None);
        };
        let from_env = ExporterConfig::from_env_with(&get).map_err(AgentError::Exporter)?;
        let set = |name: &str| {
            get(&format!("OTEL_EXPORTER_OTLP_PROFILES_{name}"))
                .or_else(|| get(&format!("OTEL_EXPORTER_OTLP_{name}")))
                .is_some_and(|v| !v.trim().is_empty())
        };
        let s = &self.exporter;
        let mut config = ExporterConfig {
            endpoint: endpoint.clone(),
            headers: Vec::new(),
            gzip: if set("COMPRESSION") {
                from_env.gzip
            } else {
                s.gzip
            },
            timeout: if set("TIMEOUT") {
                from_env.timeout
            } else {
                s.timeout
            },
            tls: TlsConfig {
                ca_file: from_env.tls.ca_file.or_else(|| s.ca_file.clone()),
                client_cert: from_env.tls.client_cert.or_else(|| s.client_cert.clone()),
                client_key: from_env.tls.client_key.or_else(|| s.client_key.clone()),
            },
            queue_bytes: s.queue_bytes.min(self.budget().export_queue_bytes()),
            retry: RetryPolicy {
                initial_backoff: s.initial_backoff,
                max_backoff: s.max_backoff.max(s.initial_backoff),
                ..RetryPolicy::default()
            },
            resource: self.resource(&get),
        };
        for (key, value) in &s.headers {
            config.set_header(key, value);
        }
        for (key, value) in &from_env.headers {
            config.set_header(key, value);
        }
        Ok(Some(config))
    }

    /// The attributes added to every resource: `OTEL_SERVICE_NAME`,
    /// `OTEL_RESOURCE_ATTRIBUTES`, the file's `resource_attributes`, the host's.
    pub fn resource(&self, get: impl Fn(&str) -> Option<String>) -> ResourceAttributes {
        let mut attrs = ResourceAttributes::default();
        if let Some(name) = get("OTEL_SERVICE_NAME").filter(|s| !s.trim().is_empty()) {
            attrs.push("service.name", name.trim());
        }
        for (key, value) in get("OTEL_RESOURCE_ATTRIBUTES")
            .map(|list| parse_key_values(&list))
            .unwrap_or_default()
        {
            attrs.push(&key, &value);
        }
        for (key, value) in &self.resource_attributes {
            attrs.push(key, value);
        }
        // Host attributes last: the ones above may name the host themselves.
        for kv in ResourceAttributes::from_env_with(|_| None).attributes {
            if let Some(value) = kv.value.as_ref() {
                attrs.push(
                    &kv.key,
                    &smolder_profiles_proto::pprof::any_value_to_string(value),
                );
            }
        }
        attrs
    }
}

/// The longest duration accepted anywhere (a recording, an interval).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// `30s`, `500ms`, `2m`, `1h`, `1.5s`, `1e3ms`, or plain seconds; positive,
/// finite and at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, seconds_per_unit) = [
        ("ms", 1e-3),
        ("min", 60.0),
        ("s", 1.0),
        ("m", 60.0),
        ("h", 3600.0),
    ]
    .iter()
    .find_map(|&(unit, scale)| text.strip_suffix(unit).map(|n| (n, scale)))
    .unwrap_or((text, 1.0));
    let number = number.trim();
    if number.contains(|c: char| c.is_alphabetic() && !matches!(c, 'e' | 'E')) {
        return Err(format!("unknown unit in {text:?}: use ms, s, m or h"));
    }
    // f64's parser also takes "inf" and "NaN"; a duration is digits.
    if !number.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        || !number
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
    {
        return Err(format!(
            "{text:?} is not a duration like 30s or 500ms (units: ms, s, m, h)"
        ));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s or 500ms"))?;
    let seconds = value * seconds_per_unit;
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("{text:?} is not a positive duration"));
    }
    match Duration::try_from_secs_f64(seconds) {
        Ok(d) if d.is_zero() => Err(format!("{text:?} is shorter than a nanosecond")),
        Ok(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!("{text:?} is too long: at most 365 days")),
    }
}

/// A sampling frequency in Hz: 1 to 10000 per CPU.
pub fn parse_frequency(text: &str) -> Result<u64, String> {
    let hz: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number of samples per second"))?;
    if !(1..=10_000).contains(&hz) {
        return Err(format!("{hz} Hz: use 1 to 10000 samples per second"));
    }
    Ok(hz)
}

/// `4096`, `64K`, `512M`, `2G` (also `KiB`, `MB`, ...: all binary units).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 512M or 2G"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use K, M, G or T"
            ))
        }
    };
    match number.checked_mul(1 << shift) {
        Some(0) => Err("the size must be above 0".into()),
        Some(size) => Ok(size),
        None => Err(format!("{text:?} is too large")),
    }
}

/// Sizes in the file are a number of bytes or text (`"64MiB"`).
mod size_text {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Size::deserialize(d)? {
            Size::Bytes(n) => Ok(n),
            Size::Text(text) => super::parse_size(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// Durations in the file are text (`"10s"`) as in the flags.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
frequency_hz = 49
interval = "2s"
endpoint = "http://file:4317"
http = "127.0.0.1:7070"
resource_attributes = { "deployment.environment" = "staging" }

memory_limit = "48MiB"

[retention]
count = 5

[filter]
executables = ["nginx"]
cgroups = ["/system.slice/nginx.service"]

[exporter]
headers = { authorization = "Bearer file" }
timeout = "3s"
queue_bytes = 1048576
initial_backoff = "200ms"
"#;

    #[test]
    fn file_then_environment() {
        let mut config: AgentConfig = toml::from_str(FILE).unwrap();
        assert_eq!(config.frequency_hz, 49);
        assert_eq!(config.memory_limit, 48 << 20);
        assert_eq!(config.interval, Duration::from_secs(2));
        assert_eq!(config.retention.count, 5);
        assert_eq!(config.retention.bytes, Retention::default().bytes);
        assert_eq!(config.filter.executables, ["nginx"]);
        let env = |k: &str| match k {
            "SMOLDER_INTERVAL" => Some("500ms".to_owned()),
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://env:4317".to_owned()),
            "OTEL_EXPORTER_OTLP_HEADERS" => Some("x-tenant=t1".to_owned()),
            "OTEL_EXPORTER_OTLP_TIMEOUT" => Some("1500".to_owned()),
            _ => None,
        };
        config.apply_env(env).unwrap();
        config.validate().unwrap();
        assert_eq!(config.interval, Duration::from_millis(500));
        assert_eq!(config.endpoint.as_deref(), Some("http://env:4317"));
        let exporter = config.exporter_config(env).unwrap().unwrap();
        assert_eq!(exporter.endpoint, "http://env:4317");
        assert_eq!(exporter.timeout, Duration::from_millis(1500));
        assert_eq!(exporter.queue_bytes, 1 << 20);
        assert_eq!(exporter.retry.initial_backoff, Duration::from_millis(200));
        assert_eq!(
            exporter.headers,
            [
                ("authorization".to_owned(), "Bearer file".to_owned()),
                ("x-tenant".to_owned(), "t1".to_owned())
            ]
        );
        let keys: Vec<&str> = exporter
            .resource
            .attributes
            .iter()
            .map(|kv| kv.key.as_str())
            .collect();
        assert!(keys.contains(&"deployment.environment"));
        assert!(keys.contains(&"host.name"));
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let config: AgentConfig = toml::from_str(include_str!("../../deploy/agent.toml")).unwrap();
        config.validate().unwrap();
        assert_eq!(config.frequency_hz, 19);
    }

    #[test]
    fn bad_settings_say_what_is_wrong() {
        assert!(toml::from_str::<AgentConfig>("interval = \"10y\"")
            .unwrap_err()
            .to_string()
            .contains("unknown unit"));
        assert!(toml::from_str::<AgentConfig>("frequency = 19").is_err());
        let remote = AgentConfig {
            http: Some("0.0.0.0:7070".parse().unwrap()),
            ..AgentConfig::default()
        };
        assert!(remote
            .validate()
            .unwrap_err()
            .to_string()
            .contains("loopback"));
        assert!(AgentConfig {
            http_allow_remote: true,
            ..remote
        }
        .validate()
        .is_ok());
        assert_eq!(
            AgentConfig::default().exporter_config(|_| None).unwrap(),
            None
        );
        for p in ["0.0", "1.5", "-1.0", "nan"] {
            let config: AgentConfig =
                toml::from_str(&format!("[off_cpu]\nenabled = true\nprobability = {p}")).unwrap();
            assert!(
                config
                    .validate()
                    .unwrap_err()
                    .to_string()
                    .contains("off_cpu.probability"),
                "{p}"
            );
        }
    }

    #[test]
    fn off_cpu_is_off_by_default_and_read_from_its_table() {
        assert_eq!(AgentConfig::default().off_cpu.sampler_config(), None);
        let config: AgentConfig =
            toml::from_str("[off_cpu]\nenabled = true\nmin_blocked = \"5ms\"\nprobability = 0.25")
                .unwrap();
        config.validate().unwrap();
        let off_cpu = config.off_cpu.sampler_config().unwrap();
        assert_eq!(off_cpu.min_blocked, Duration::from_millis(5));
        assert_eq!(off_cpu.probability, 0.25);
        assert!(toml::from_str::<AgentConfig>("[off_cpu]\nenable = true").is_err());
    }

    #[test]
    fn durations_parse_or_are_refused_without_panicking() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1e3ms"), Ok(Duration::from_secs(1)));
        for bad in [
            "1e20",
            "1e20s",
            "1e400",
            "inf",
            "NaN",
            "-1s",
            "0",
            "0s",
            "1e-12s",
            "",
            "s",
            "5x",
            "100000000000000000000",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(!err.contains('\n'), "{bad}: {err}");
        }
        assert!(parse_duration("1e20")
            .unwrap_err()
            .contains("at most 365 days"));
    }

    #[test]
    fn frequencies_are_checked_when_parsed() {
        assert_eq!(parse_frequency("99"), Ok(99));
        for bad in ["0", "10001", "18446744073709551616", "-1", "fast", "1.5"] {
            assert!(parse_frequency(bad).is_err(), "{bad}");
        }
        let mut config = AgentConfig::default();
        assert!(config
            .apply_env(|k| (k == "SMOLDER_FREQUENCY").then(|| "0".into()))
            .is_err());
    }
}
