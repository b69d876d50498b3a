//! How the exporter connects: endpoint, headers, compression, TLS, timeout,
//! queue bound and retry policy, with the OpenTelemetry environment
//! variables (`OTEL_EXPORTER_OTLP_[PROFILES_]*`) read in one place.

use std::path::PathBuf;
use std::time::Duration;

use super::resource::{parse_key_values, ResourceAttributes};
use super::ExporterError;

/// Where an OTLP/gRPC exporter sends when nothing says otherwise.
pub const DEFAULT_ENDPOINT: &str = "http://localhost:4317";

/// TLS settings; used when the endpoint is `https://` or a file is given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file of the CA(s) that signed the collector's certificate; the
    /// system roots are used without one.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS, with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

impl TlsConfig {
    /// True when any TLS file is set.
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.client_cert.is_some() || self.client_key.is_some()
    }
}

/// Exponential backoff with jitter between attempts of one batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// The wait after the first failure.
    pub initial_backoff: Duration,
    /// The wait never grows beyond this (a server's `RetryInfo` may ask for more).
    pub max_backoff: Duration,
    /// Growth per attempt.
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
        }
    }
}

/// Everything the exporter needs; `Default` is the OpenTelemetry default
/// endpoint with gzip, a 10 s timeout and a 64 MiB queue.
#[derive(Clone, Debug, PartialEq)]
pub struct ExporterConfig {
    /// `http://host:port` or `https://host:port`.
    pub endpoint: String,
    /// gRPC metadata sent with every export (e.g. an authorization token).
    pub headers: Vec<(String, String)>,
    /// gzip-compress requests.
    pub gzip: bool,
    /// Deadline of one export attempt (and of connecting).
    pub timeout: Duration,
    pub tls: TlsConfig,
    /// Batches waiting to be sent are bounded by this many bytes (their
    /// encoded, uncompressed size); the oldest batch goes when a new one
    /// does not fit.
    pub queue_bytes: usize,
    pub retry: RetryPolicy,
    /// Added to every resource of every batch.
    pub resource: ResourceAttributes,
}

impl Default for ExporterConfig {
    fn default() -> Self {
        ExporterConfig {
            endpoint: DEFAULT_ENDPOINT.to_owned(),
            headers: Vec::new(),
            gzip: true,
            timeout: Duration::from_secs(10),
            tls: TlsConfig::default(),
            queue_bytes: 64 << 20,
            retry: RetryPolicy::default(),
            resource: ResourceAttributes::default(),
        }
    }
}

/// The value of `OTEL_EXPORTER_OTLP_PROFILES_<name>`, else of
/// `OTEL_EXPORTER_OTLP_<name>`; empty values count as unset.
fn otlp_var(get: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    get(&format!("OTEL_EXPORTER_OTLP_PROFILES_{name}"))
        .or_else(|| get(&format!("OTEL_EXPORTER_OTLP_{name}")))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The endpoint the environment names, if any.
pub fn endpoint_from_env_with(get: impl Fn(&str) -> Option<String>) -> Option<String> {
    otlp_var(&get, "ENDPOINT")
}

impl ExporterConfig {
    /// The defaults overridden by the process environment.
    pub fn from_env() -> Result<ExporterConfig, ExporterError> {
        ExporterConfig::from_env_with(|k| std::env::var(k).ok())
    }

    /// The defaults overridden by the variables `get` returns:
    /// `OTEL_EXPORTER_OTLP_[PROFILES_]{ENDPOINT,HEADERS,COMPRESSION,TIMEOUT,
    /// CERTIFICATE,CLIENT_CERTIFICATE,CLIENT_KEY}` (the `PROFILES_` one wins),
    /// `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`.
    pub fn from_env_with(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<ExporterConfig, ExporterError> {
        let mut config = ExporterConfig {
            resource: ResourceAttributes::from_env_with(&get),
            ..ExporterConfig::default()
        };
        if let Some(endpoint) = otlp_var(&get, "ENDPOINT") {
            config.endpoint = endpoint;
        }
        // Generic headers first; a profiles-specific header of the same key replaces it.
        for name in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_PROFILES_HEADERS",
        ] {
            if let Some(list) = get(name) {
                for (key, value) in parse_key_values(&list) {
                    config.set_header(&key, &value);
                }
            }
        }
        if let Some(compression) = otlp_var(&get, "COMPRESSION") {
            config.gzip = match compression.to_ascii_lowercase().as_str() {
                "gzip" => true,
                "none" => false,
                other => {
                    return Err(ExporterError::Config(format!(
                        "OTEL_EXPORTER_OTLP_COMPRESSION={other:?}: use gzip or none"
                    )))
                }
            };
        }
        if let Some(ms) = otlp_var(&get, "TIMEOUT") {
            let ms: u64 = ms.parse().map_err(|_| {
                ExporterError::Config(format!(
                    "OTEL_EXPORTER_OTLP_TIMEOUT={ms:?}: expected milliseconds"
                ))
            })?;
            config.timeout = Duration::from_millis(ms.max(1));
        }
        if let Some(path) = otlp_var(&get, "CERTIFICATE") {
            config.tls.ca_file = Some(path.into());
        }
        if let Some(path) = otlp_var(&get, "CLIENT_CERTIFICATE") {
            config.tls.client_cert = Some(path.into());
        }
        if let Some(path) = otlp_var(&get, "CLIENT_KEY") {
            config.tls.client_key = Some(path.into());
        }
        Ok(config)
    }

    /// Sets a header, replacing one with the same (case-insensitive) key.
    pub fn set_header(&mut self, key: &str, value: &str) {
        let key = key.to_ascii_lowercase();
        self.headers.retain(|(k, _)| *k != key);
        self.headers.push((key, value.to_owned()));
    }
}

/// Decodes `%XX` escapes; malformed escapes stay as they are.
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn profiles_variables_win_over_generic_ones() {
        let config = ExporterConfig::from_env_with(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317"),
            (
                "OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT",
                "https://profiles:4317",
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "Authorization=Bearer%20abc,x-team=a",
            ),
            ("OTEL_EXPORTER_OTLP_PROFILES_HEADERS", "x-team=b"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
        ]))
        .unwrap();
        assert_eq!(config.endpoint, "https://profiles:4317");
        assert_eq!(
            config.headers,
            vec![
                ("authorization".to_owned(), "Bearer abc".to_owned()),
                ("x-team".to_owned(), "b".to_owned())
            ]
        );
        assert!(!config.gzip);
        assert_eq!(config.timeout, Duration::from_millis(2500));
        assert_eq!(config.tls.ca_file, Some(PathBuf::from("/etc/ca.pem")));
    }

    #[test]
    fn defaults_and_bad_values() {
        let config = ExporterConfig::from_env_with(env(&[])).unwrap();
        assert_eq!(config.endpoint, DEFAULT_ENDPOINT);
        assert!(config.gzip);
        assert!(
            ExporterConfig::from_env_with(env(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")])).is_err()
        );
        assert!(
            ExporterConfig::from_env_with(env(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")]))
                .is_err()
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%2C%zz%4"), "a b,%zz%4");
        assert_eq!(percent_decode("%41"), "A");
        assert_eq!(percent_decode(""), "");
    }
}
