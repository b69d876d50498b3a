//! What smolder reports of a process: its resource attributes (pid,
//! executable name and path, command line, container id), read from
//! `/proc/PID` once, best effort.

use smolder_profiles_proto::otlp::common::v1::KeyValue;
use smolder_profiles_proto::{int_value, key_value, string_value};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// `comm` of the main thread (up to 15 bytes), or the executable's file name.
    pub name: String,
    pub executable_path: Option<String>,
    pub command_line: Option<String>,
    pub container_id: Option<String>,
}

impl ProcessInfo {
    /// Reads what `/proc/PID` still tells; `fallback_name` (the comm of a
    /// sample) names a process that has already gone.
    pub fn read(pid: u32, fallback_name: &str) -> ProcessInfo {
        let proc = format!("/proc/{pid}");
        let executable_path = std::fs::read_link(format!("{proc}/exe")).ok().map(|p| {
            p.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_owned()
        });
        let name = std::fs::read_to_string(format!("{proc}/comm"))
            .ok()
            .map(|s| s.trim_end().to_owned())
            .filter(|s| !s.is_empty())
            .or_else(|| {
                executable_path
                    .as_deref()
                    .and_then(|p| p.rsplit('/').next())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| fallback_name.to_owned());
        let command_line = std::fs::read(format!("{proc}/cmdline"))
            .ok()
            .and_then(|raw| {
                let args: Vec<String> = raw
                    .split(|&b| b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                (!args.is_empty()).then(|| args.join(" "))
            });
        let container_id = std::fs::read_to_string(format!("{proc}/cgroup"))
            .ok()
            .and_then(|text| container_id(&text));
        ProcessInfo {
            pid,
            name,
            executable_path,
            command_line,
            container_id,
        }
    }

    /// OpenTelemetry resource attributes of the process.
    pub fn resource_attributes(&self) -> Vec<KeyValue> {
        let mut attrs = vec![
            key_value("process.pid", int_value(i64::from(self.pid))),
            key_value("process.executable.name", string_value(&self.name)),
        ];
        if let Some(path) = &self.executable_path {
            attrs.push(key_value("process.executable.path", string_value(path)));
        }
        if let Some(cmd) = &self.command_line {
            attrs.push(key_value("process.command_line", string_value(cmd)));
        }
        if let Some(id) = &self.container_id {
            attrs.push(key_value("container.id", string_value(id)));
        }
        attrs
    }
}

/// The container id in `/proc/PID/cgroup`: the 64-hex-digit id that Docker,
/// containerd, CRI-O and Kubernetes put in the cgroup path
/// (`/docker/<id>`, `docker-<id>.scope`, `cri-containerd-<id>.scope`, …).
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        path.split('/').rev().find_map(|part| {
            let part = part.strip_suffix(".scope").unwrap_or(part);
            let id = part.rsplit(['-', ':']).next()?;
            (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_from_common_runtimes() {
        let id = "3f4c9a1e0b7d2c5a8e6f1d0c9b8a7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a09";
        for cgroup in [
            format!("0::/system.slice/docker-{id}.scope\n"),
            format!("12:cpu:/docker/{id}\n"),
            format!("0::/kubepods.slice/kubepods-burstable.slice/cri-containerd-{id}.scope\n"),
            format!("0::/kubepods/besteffort/pod1234/{id}\n"),
        ] {
            assert_eq!(container_id(&cgroup).as_deref(), Some(id), "{cgroup}");
        }
        assert_eq!(
            container_id("0::/user.slice/user-0.slice/session-1.scope\n"),
            None
        );
    }

    #[test]
    fn our_own_process() {
        let me = ProcessInfo::read(std::process::id(), "x");
        assert!(me.executable_path.is_some());
        assert!(!me.name.is_empty());
        let attrs = me.resource_attributes();
        assert_eq!(attrs[0].key, "process.pid");
    }
}
