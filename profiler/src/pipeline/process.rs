//! What smolder reports of a process: its OpenTelemetry resource attributes
//! (pid, executable name and path, command line, container id, service
//! name), made from the [`ProcessFacts`] the aggregator read once.

use smolder_profiles_proto::otlp::common::v1::KeyValue;
use smolder_profiles_proto::{int_value, key_value, string_value};
use smolder_symbolizer::ProcessFacts;

/// OpenTelemetry resource attributes of a process: `process.pid`,
/// `process.executable.name` (its `comm`, else the executable's file name),
/// `process.executable.path`, `process.command_line`, `container.id` and
/// `service.name` (its own `OTEL_SERVICE_NAME`), the last four when known.
pub fn resource_attributes(facts: &ProcessFacts) -> Vec<KeyValue> {
    let path = facts
        .exe
        .as_deref()
        .map(|p| p.trim_end_matches(" (deleted)"));
    let name = Some(facts.comm.as_str())
        .filter(|c| !c.is_empty())
        .or_else(|| path.and_then(|p| p.rsplit('/').next()))
        .unwrap_or_default();
    let mut attrs = vec![
        key_value("process.pid", int_value(i64::from(facts.pid))),
        key_value("process.executable.name", string_value(name)),
    ];
    if let Some(path) = path {
        attrs.push(key_value("process.executable.path", string_value(path)));
    }
    if !facts.cmdline.is_empty() {
        attrs.push(key_value(
            "process.command_line",
            string_value(&facts.cmdline.join(" ")),
        ));
    }
    if let Some(id) = facts.cgroup.as_deref().and_then(container_id) {
        attrs.push(key_value("container.id", string_value(&id)));
    }
    if let Some(service) = &facts.service_name {
        attrs.push(key_value("service.name", string_value(service)));
    }
    attrs
}

/// The container id in a cgroup path: the 64-hex-digit id that Docker,
/// containerd, CRI-O and Kubernetes put there (`/docker/<id>`,
/// `docker-<id>.scope`, `cri-containerd-<id>.scope`, …).
pub fn container_id(cgroup_path: &str) -> Option<String> {
    cgroup_path.split('/').rev().find_map(|part| {
        let part = part.strip_suffix(".scope").unwrap_or(part);
        let id = part.rsplit(['-', ':']).next()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_from_common_runtimes() {
        let id = "3f4c9a1e0b7d2c5a8e6f1d0c9b8a7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a09";
        for cgroup in [
            format!("/system.slice/docker-{id}.scope"),
            format!("/docker/{id}"),
            format!("/kubepods.slice/kubepods-burstable.slice/cri-containerd-{id}.scope"),
            format!("/kubepods/besteffort/pod1234/{id}"),
        ] {
            assert_eq!(container_id(&cgroup).as_deref(), Some(id), "{cgroup}");
        }
        assert_eq!(
            container_id("/user.slice/user-0.slice/session-1.scope"),
            None
        );
    }

    #[test]
    fn our_own_process() {
        let facts = ProcessFacts::read(std::process::id(), "x");
        let attrs = resource_attributes(&facts);
        assert_eq!(attrs[0].key, "process.pid");
        for key in ["process.executable.name", "process.executable.path"] {
            assert!(attrs.iter().any(|kv| kv.key == key), "{key}: {attrs:?}");
        }
    }

    #[test]
    fn service_name_from_the_process_environment() {
        let facts = ProcessFacts {
            pid: 7,
            comm: "api".into(),
            service_name: Some("checkout".into()),
            ..ProcessFacts::default()
        };
        let attrs = resource_attributes(&facts);
        assert!(attrs
            .iter()
            .any(|kv| kv.key == "service.name" && kv.value == Some(string_value("checkout"))));
    }
}
