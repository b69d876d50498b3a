//! Which processes the agent keeps, and what it learns of each from
//! `/proc/PID` once: whether it matches the configured cgroups or
//! executable names, and its `service.name` (`OTEL_SERVICE_NAME` in its
//! environment).
//!
//! PID lists are filtered in the kernel by the sampler; cgroup and name
//! filters are applied here, in user space, to samples the kernel sent
//! (the kernel program has no such filter yet).

use std::collections::HashMap;
use std::io::Read as _;

use super::config::FilterConfig;

/// `/proc/PID/environ` is read up to this many bytes.
const ENVIRON_LIMIT: u64 = 256 << 10;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessFacts {
    pub keep: bool,
    pub service_name: Option<String>,
}

/// Per-process decisions, cached until the process execs or exits.
#[derive(Debug, Default)]
pub struct ProcessSelector {
    config: FilterConfig,
    known: HashMap<u32, ProcessFacts>,
}

impl ProcessSelector {
    pub fn new(config: FilterConfig) -> ProcessSelector {
        ProcessSelector {
            config,
            known: HashMap::new(),
        }
    }

    /// True when the kernel's PID filter does the whole job.
    pub fn kernel_only(&self) -> bool {
        self.config.cgroups.is_empty() && self.config.executables.is_empty()
    }

    /// What is known of `pid`, read on first sight; `comm` names a process
    /// that is already gone.
    pub fn facts(&mut self, pid: u32, comm: &str) -> &ProcessFacts {
        let config = &self.config;
        self.known
            .entry(pid)
            .or_insert_with(|| read_facts(config, pid, comm))
    }

    /// The process replaced its image: its name and environment changed.
    pub fn forget(&mut self, pid: u32) {
        self.known.remove(&pid);
    }

    /// Keeps only the processes for which `alive` holds (run after each
    /// interval, so that facts of exited processes do not pile up).
    pub fn retain(&mut self, alive: impl Fn(u32) -> bool) {
        self.known.retain(|&pid, _| alive(pid));
    }

    /// The service name of a process seen before, if it has one.
    pub fn service_name(&self, pid: u32) -> Option<&str> {
        self.known.get(&pid)?.service_name.as_deref()
    }
}

fn read_facts(config: &FilterConfig, pid: u32, comm: &str) -> ProcessFacts {
    let proc = format!("/proc/{pid}");
    let service_name = read_environ_var(pid, "OTEL_SERVICE_NAME");
    let keep = config.is_empty() || config.pids.contains(&pid) || {
        let name_matches = !config.executables.is_empty() && {
            let comm_now = std::fs::read_to_string(format!("{proc}/comm"))
                .map(|s| s.trim_end().to_owned())
                .unwrap_or_else(|_| comm.to_owned());
            let exe = std::fs::read_link(format!("{proc}/exe"))
                .ok()
                .and_then(|p| {
                    p.file_name().map(|n| {
                        n.to_string_lossy()
                            .trim_end_matches(" (deleted)")
                            .to_owned()
                    })
                });
            config
                .executables
                .iter()
                .any(|want| *want == comm_now || *want == comm || exe.as_deref() == Some(want))
        };
        let cgroup_matches = !config.cgroups.is_empty()
            && std::fs::read_to_string(format!("{proc}/cgroup")).is_ok_and(|text| {
                text.lines()
                    .filter_map(|line| line.splitn(3, ':').nth(2))
                    .any(|path| {
                        config
                            .cgroups
                            .iter()
                            .any(|want| path.contains(want.as_str()))
                    })
            });
        name_matches || cgroup_matches
    };
    ProcessFacts { keep, service_name }
}

/// A variable of another process's environment (needs the right to
/// ptrace-read it: same user, or CAP_SYS_PTRACE).
pub fn read_environ_var(pid: u32, name: &str) -> Option<String> {
    let mut raw = Vec::new();
    std::fs::File::open(format!("/proc/{pid}/environ"))
        .ok()?
        .take(ENVIRON_LIMIT)
        .read_to_end(&mut raw)
        .ok()?;
    environ_var(&raw, name)
}

fn environ_var(raw: &[u8], name: &str) -> Option<String> {
    raw.split(|&b| b == 0).find_map(|entry| {
        let rest = entry.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        let value = String::from_utf8_lossy(rest).trim().to_owned();
        (!value.is_empty()).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_entries() {
        let raw = b"PATH=/bin\0OTEL_SERVICE_NAME_X=no\0OTEL_SERVICE_NAME=checkout\0";
        assert_eq!(
            environ_var(raw, "OTEL_SERVICE_NAME").as_deref(),
            Some("checkout")
        );
        assert_eq!(
            environ_var(b"OTEL_SERVICE_NAME=\0", "OTEL_SERVICE_NAME"),
            None
        );
        assert_eq!(environ_var(b"", "PATH"), None);
    }

    #[test]
    fn our_own_process_by_name_and_cgroup() {
        let me = std::process::id();
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        let comm = comm.trim_end();
        let mut by_name = ProcessSelector::new(FilterConfig {
            executables: vec![comm.to_owned()],
            ..FilterConfig::default()
        });
        assert!(by_name.facts(me, comm).keep);
        assert!(!by_name.kernel_only());
        let mut other = ProcessSelector::new(FilterConfig {
            executables: vec!["surely-not-this-one".into()],
            ..FilterConfig::default()
        });
        assert!(!other.facts(me, comm).keep);
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = cgroup
            .lines()
            .next()
            .unwrap()
            .splitn(3, ':')
            .nth(2)
            .unwrap();
        let mut by_cgroup = ProcessSelector::new(FilterConfig {
            cgroups: vec![path.to_owned()],
            ..FilterConfig::default()
        });
        assert!(by_cgroup.facts(me, comm).keep);
        let mut everything = ProcessSelector::new(FilterConfig::default());
        assert!(everything.facts(me, comm).keep);
        assert!(everything.kernel_only());
    }
}
