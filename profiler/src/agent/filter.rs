//! Which processes the agent keeps, decided from the facts the recording
//! read once of each process (the symbolizer's [`ProcessFacts`]): whether
//! it matches the configured PIDs, cgroups or executable names.
//!
//! PID lists alone are filtered in the kernel by the sampler; cgroup and
//! name filters are applied here, in user space, to samples the kernel sent
//! (the kernel program has no such filter yet).

use std::sync::Arc;

use smolder_symbolizer::ProcessFacts;

use super::config::FilterConfig;
use crate::pipeline::ProcessFilter;

impl FilterConfig {
    /// True when the kernel's PID filter does the whole job.
    pub fn kernel_only(&self) -> bool {
        self.cgroups.is_empty() && self.executables.is_empty()
    }

    /// Whether a process with these facts is profiled.
    pub fn keeps(&self, facts: &ProcessFacts) -> bool {
        if self.is_empty() || self.pids.contains(&facts.pid) {
            return true;
        }
        let exe_name = facts.exe.as_deref().and_then(|p| {
            p.trim_end_matches(" (deleted)")
                .rsplit('/')
                .next()
                .map(str::to_owned)
        });
        let name_matches = self
            .executables
            .iter()
            .any(|want| *want == facts.comm || exe_name.as_deref() == Some(want));
        let cgroup_matches = facts
            .cgroup
            .as_deref()
            .is_some_and(|path| self.cgroups.iter().any(|want| path.contains(want.as_str())));
        name_matches || cgroup_matches
    }

    /// The recording's filter: none when every process is kept, or when
    /// the kernel filters by PID alone.
    pub fn process_filter(&self) -> Option<ProcessFilter> {
        if self.is_empty() || self.kernel_only() {
            return None;
        }
        let config = self.clone();
        Some(Arc::new(move |facts: &ProcessFacts| config.keeps(facts)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_by_name_and_cgroup() {
        let me = ProcessFacts::read(std::process::id(), "");
        let by_name = FilterConfig {
            executables: vec![me.comm.clone()],
            ..FilterConfig::default()
        };
        assert!(by_name.keeps(&me));
        assert!(!by_name.kernel_only());
        assert!(by_name.process_filter().is_some());
        let other = FilterConfig {
            executables: vec!["surely-not-this-one".into()],
            ..FilterConfig::default()
        };
        assert!(!other.keeps(&me));
        let path = me.cgroup.clone().expect("our own cgroup");
        let by_cgroup = FilterConfig {
            cgroups: vec![path],
            ..FilterConfig::default()
        };
        assert!(by_cgroup.keeps(&me));
        let everything = FilterConfig::default();
        assert!(everything.keeps(&me));
        assert!(everything.kernel_only());
        assert!(everything.process_filter().is_none());
        let pids_only = FilterConfig {
            pids: vec![1],
            ..FilterConfig::default()
        };
        assert!(pids_only.process_filter().is_none());
    }
}
