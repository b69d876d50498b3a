//! Resource attributes the exporter adds to every resource it ships:
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, and the host's
//! `host.name`, `host.arch`, `os.type`.
//!
//! Owns parsing those variables and merging into a `ProfilesData`; an
//! attribute a resource already carries (a process's own `service.name`)
//! is never overwritten.

use smolder_profiles_proto::otlp::common::v1::KeyValue;
use smolder_profiles_proto::otlp::profiles::v1development::ProfilesData;
use smolder_profiles_proto::otlp::resource::v1::Resource;
use smolder_profiles_proto::{key_value, string_value};

use super::config::percent_decode;

/// Attributes added to every resource, in precedence order (the first of
/// two with the same key wins).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourceAttributes {
    pub attributes: Vec<KeyValue>,
}

impl ResourceAttributes {
    /// From the process environment and the host.
    pub fn from_env() -> ResourceAttributes {
        ResourceAttributes::from_env_with(|k| std::env::var(k).ok())
    }

    /// From the variables `get` returns, plus the host attributes.
    /// `OTEL_SERVICE_NAME` wins over a `service.name` in
    /// `OTEL_RESOURCE_ATTRIBUTES`, as the OpenTelemetry specification says.
    pub fn from_env_with(get: impl Fn(&str) -> Option<String>) -> ResourceAttributes {
        let mut out = ResourceAttributes::default();
        if let Some(name) = get("OTEL_SERVICE_NAME").filter(|s| !s.trim().is_empty()) {
            out.push("service.name", name.trim());
        }
        if let Some(list) = get("OTEL_RESOURCE_ATTRIBUTES") {
            for (key, value) in parse_key_values(&list) {
                out.push(&key, &value);
            }
        }
        if let Some(host) = host_name() {
            out.push("host.name", &host);
        }
        out.push("host.arch", host_arch());
        out.push("os.type", "linux");
        out
    }

    /// Adds `key` unless an earlier attribute has it.
    pub fn push(&mut self, key: &str, value: &str) {
        if !self.attributes.iter().any(|kv| kv.key == key) {
            self.attributes.push(key_value(key, string_value(value)));
        }
    }

    /// Adds every attribute to every resource of `data` that lacks its key.
    /// Idempotent.
    pub fn apply(&self, data: &mut ProfilesData) {
        for rp in &mut data.resource_profiles {
            let resource = rp.resource.get_or_insert_with(Resource::default);
            for kv in &self.attributes {
                if !resource.attributes.iter().any(|have| have.key == kv.key) {
                    resource.attributes.push(kv.clone());
                }
            }
        }
    }
}

/// `key1=value1,key2=value2` with percent-encoded values (the W3C baggage
/// form the OpenTelemetry variables use). Entries without `=` or with an
/// empty key are skipped.
pub fn parse_key_values(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|entry| {
            let (key, value) = entry.split_once('=')?;
            let key = percent_decode(key.trim());
            (!key.is_empty()).then(|| (key, percent_decode(value.trim())))
        })
        .collect()
}

/// The host name in the agent's UTS namespace (a DaemonSet with
/// `hostNetwork: true` or `hostUTS` sees the node's).
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// `host.arch` as the semantic conventions spell it.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "x86",
        "arm" => "arm32",
        "powerpc64" => "ppc64",
        "s390x" => "s390x",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smolder_profiles_proto::otlp::profiles::v1development::ResourceProfiles;
    use smolder_profiles_proto::pprof::any_value_to_string;

    fn value(attrs: &[KeyValue], key: &str) -> Option<String> {
        attrs
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .map(any_value_to_string)
    }

    #[test]
    fn service_name_wins_and_values_are_decoded() {
        let env = |k: &str| match k {
            "OTEL_SERVICE_NAME" => Some("checkout".to_owned()),
            "OTEL_RESOURCE_ATTRIBUTES" => Some(
                "service.name=ignored, deployment.environment=prod,team=a%2Cb%20c,=x,broken"
                    .to_owned(),
            ),
            _ => None,
        };
        let attrs = ResourceAttributes::from_env_with(env).attributes;
        assert_eq!(value(&attrs, "service.name").as_deref(), Some("checkout"));
        assert_eq!(
            value(&attrs, "deployment.environment").as_deref(),
            Some("prod")
        );
        assert_eq!(value(&attrs, "team").as_deref(), Some("a,b c"));
        assert_eq!(value(&attrs, "os.type").as_deref(), Some("linux"));
        assert!(value(&attrs, "host.arch").is_some());
        assert!(value(&attrs, "host.name").is_some());
    }

    #[test]
    fn apply_keeps_what_a_resource_has() {
        let mut data = ProfilesData {
            resource_profiles: vec![
                ResourceProfiles {
                    resource: Some(Resource {
                        attributes: vec![key_value("service.name", string_value("own"))],
                        ..Resource::default()
                    }),
                    ..ResourceProfiles::default()
                },
                ResourceProfiles::default(),
            ],
            ..ProfilesData::default()
        };
        let mut extra = ResourceAttributes::default();
        extra.push("service.name", "agent-default");
        extra.push("host.name", "node-1");
        extra.apply(&mut data);
        extra.apply(&mut data);
        let first = &data.resource_profiles[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes;
        let second = &data.resource_profiles[1]
            .resource
            .as_ref()
            .unwrap()
            .attributes;
        assert_eq!(value(first, "service.name").as_deref(), Some("own"));
        assert_eq!(first.len(), 2);
        assert_eq!(
            value(second, "service.name").as_deref(),
            Some("agent-default")
        );
        assert_eq!(value(second, "host.name").as_deref(), Some("node-1"));
    }
}
