//! Dropping every capability the agent does not need.
//!
//! Kept: CAP_BPF and CAP_PERFMON (load and attach the sampler, also on a
//! reload), CAP_SYSLOG (kernel addresses in `/proc/kallsyms`),
//! CAP_SYS_PTRACE (other users' `/proc/PID/{maps,environ,root}`),
//! CAP_DAC_READ_SEARCH (read their binaries). Everything else leaves the
//! effective, permitted, inheritable, ambient and (with CAP_SETPCAP)
//! bounding sets, and `no_new_privs` is set.
//!
//! Capabilities belong to threads: call [`drop_capabilities`] before any
//! other thread starts (before the tokio runtime), so that every thread
//! inherits the reduced sets. The threads that talk to the network (the
//! HTTP page, the OTLP exporter) need none: they run on an
//! [`UnprivilegedRuntime`], whose threads clear every set as they start.

use caps::{CapSet, Capability, CapsHashSet};

use super::AgentError;

/// What the agent keeps.
pub const NEEDED: [Capability; 5] = [
    Capability::CAP_BPF,
    Capability::CAP_PERFMON,
    Capability::CAP_SYSLOG,
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_DAC_READ_SEARCH,
];

fn caps_error(action: &str) -> impl FnOnce(caps::errors::CapsError) -> AgentError + '_ {
    move |e| AgentError::Privileges(format!("{action}: {e}"))
}

/// Reduces the calling thread's capabilities to [`NEEDED`] (those of them
/// it has); returns the names of the ones kept.
pub fn drop_capabilities() -> Result<Vec<String>, AgentError> {
    let permitted = caps::read(None, CapSet::Permitted)
        .map_err(caps_error("reading the permitted capabilities"))?;
    let keep: CapsHashSet = NEEDED
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    // The bounding set first: shrinking it needs CAP_SETPCAP, dropped below.
    let bounding = caps::read(None, CapSet::Bounding).unwrap_or_default();
    if permitted.contains(&Capability::CAP_SETPCAP) {
        for cap in bounding.iter().filter(|c| !keep.contains(c)) {
            caps::drop(None, CapSet::Bounding, *cap)
                .map_err(caps_error("shrinking the bounding set"))?;
        }
    }
    if let Err(e) = caps::clear(None, CapSet::Ambient) {
        tracing::debug!("clearing the ambient capabilities: {e}");
    }
    caps::clear(None, CapSet::Inheritable).map_err(caps_error("clearing inheritable"))?;
    caps::set(None, CapSet::Effective, &keep).map_err(caps_error("setting effective"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(caps_error("setting permitted"))?;
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) only sets a flag of this process.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        tracing::debug!("PR_SET_NO_NEW_PRIVS: {}", std::io::Error::last_os_error());
    }
    let mut names: Vec<String> = keep.iter().map(|c| c.to_string()).collect();
    names.sort();
    Ok(names)
}

/// The capability mask that [`NEEDED`] makes in `/proc/PID/status`.
pub fn needed_mask() -> u64 {
    NEEDED.iter().fold(0, |mask, c| mask | c.bitmask())
}

/// Clears every capability of the calling thread (effective, permitted,
/// inheritable, ambient), for good: `no_new_privs` keeps an `execve` from
/// giving any back.
pub fn drop_all_capabilities_of_this_thread() -> Result<(), AgentError> {
    if let Err(e) = caps::clear(None, CapSet::Ambient) {
        tracing::debug!("clearing the ambient capabilities: {e}");
    }
    caps::clear(None, CapSet::Inheritable).map_err(caps_error("clearing inheritable"))?;
    caps::clear(None, CapSet::Effective).map_err(caps_error("clearing effective"))?;
    caps::clear(None, CapSet::Permitted).map_err(caps_error("clearing permitted"))?;
    Ok(())
}

/// A tokio runtime for work that touches the network and nothing of the
/// host (the HTTP page, the OTLP exporter): its threads, named `name`, drop
/// every capability as they start (capabilities belong to threads; the
/// sampling threads keep [`NEEDED`]). A thread that cannot drop them
/// panics rather than serve with them.
pub struct UnprivilegedRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl UnprivilegedRuntime {
    pub fn start(name: &str) -> Result<UnprivilegedRuntime, AgentError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(2)
            .thread_name(name)
            .on_thread_start(|| {
                if let Err(e) = drop_all_capabilities_of_this_thread() {
                    panic!("a network thread kept its capabilities: {e}");
                }
            })
            .enable_all()
            .build()
            .map_err(|source| AgentError::Io {
                action: format!("starting the {name} threads"),
                source,
            })?;
        Ok(UnprivilegedRuntime {
            runtime: Some(runtime),
        })
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        match &self.runtime {
            Some(runtime) => runtime.handle(),
            None => unreachable!("the runtime is only taken on drop"),
        }
    }
}

impl Drop for UnprivilegedRuntime {
    fn drop(&mut self) {
        // Dropped from async code: a plain drop would block there.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_threads_hold_no_capabilities() {
        let runtime = UnprivilegedRuntime::start("smolder-test-net").unwrap();
        let (effective, permitted) = runtime
            .handle()
            .block_on(async {
                tokio::spawn(async {
                    (
                        caps::read(None, CapSet::Effective).unwrap(),
                        caps::read(None, CapSet::Permitted).unwrap(),
                    )
                })
                .await
            })
            .unwrap();
        assert!(effective.is_empty(), "{effective:?}");
        assert!(permitted.is_empty(), "{permitted:?}");
    }
}
