//! A command started for the sampler to follow from its first instruction:
//! forked and held before `exec` until the caller has added its pid to the
//! sampler's filter, so that not one of its samples is missed
//! (`std::process::Command` cannot do this: its `spawn` waits for the
//! `exec`).

use std::ffi::CString;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// Why the command could not be started or waited for.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("no command given")]
    NoCommand,
    #[error("{0:?} contains a NUL byte")]
    Nul(String),
    #[error("{action}: {source}")]
    Os {
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {program}: {source}")]
    Exec {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

fn os(action: &'static str) -> impl FnOnce(std::io::Error) -> ChildError {
    move |source| ChildError::Os { action, source }
}

/// A forked command waiting at its gate (until [`GatedChild::release`]).
pub struct GatedChild {
    pid: libc::pid_t,
    /// Writing a byte lets the child go on to `exec`.
    gate: Option<OwnedFd>,
    /// Carries the child's errno when `exec` fails; closed by a successful `exec`.
    exec_error: Option<OwnedFd>,
    program: String,
}

fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd), ChildError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os("creating a pipe")(std::io::Error::last_os_error()));
    }
    // SAFETY: both fds were just created and are owned only here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl GatedChild {
    /// Forks `command` (looked up in `PATH`) and holds it before `exec`.
    pub fn spawn(command: &[String]) -> Result<GatedChild, ChildError> {
        let args = command
            .iter()
            .map(|a| CString::new(a.as_str()).map_err(|_| ChildError::Nul(a.clone())))
            .collect::<Result<Vec<CString>, ChildError>>()?;
        if args.is_empty() {
            return Err(ChildError::NoCommand);
        }
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let (gate_read, gate_write) = cloexec_pipe()?;
        let (error_read, error_write) = cloexec_pipe()?;
        // SAFETY: between fork and exec the child calls only async-signal-safe
        // functions (read, write, execvp, _exit) on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(os("fork")(std::io::Error::last_os_error()));
        }
        if pid == 0 {
            unsafe {
                let mut byte = 0u8;
                libc::read(gate_read.as_raw_fd(), (&mut byte as *mut u8).cast(), 1);
                libc::execvp(argv[0], argv.as_ptr());
                let errno = *libc::__errno_location();
                libc::write(error_write.as_raw_fd(), (&errno as *const i32).cast(), 4);
                libc::_exit(127);
            }
        }
        drop(gate_read);
        drop(error_write);
        Ok(GatedChild {
            pid,
            gate: Some(gate_write),
            exec_error: Some(error_read),
            program: command[0].clone(),
        })
    }

    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Lets the child `exec` the command; fails if the `exec` failed.
    pub fn release(&mut self) -> Result<(), ChildError> {
        if let Some(gate) = self.gate.take() {
            std::fs::File::from(gate)
                .write_all(b"g")
                .map_err(os("releasing the command"))?;
        }
        if let Some(error) = self.exec_error.take() {
            let mut errno = [0u8; 4];
            if std::fs::File::from(error).read_exact(&mut errno).is_ok() {
                let _ = self.wait();
                return Err(ChildError::Exec {
                    program: self.program.clone(),
                    source: std::io::Error::from_raw_os_error(i32::from_ne_bytes(errno)),
                });
            }
        }
        Ok(())
    }

    /// The exit status, if the command has ended.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, ChildError> {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid out-pointer.
        match unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) } {
            0 => Ok(None),
            p if p == self.pid => Ok(Some(ExitStatus::from_raw(status))),
            _ => Err(os("waiting for the command")(
                std::io::Error::last_os_error(),
            )),
        }
    }

    /// Waits for the command to end.
    pub fn wait(&mut self) -> Result<ExitStatus, ChildError> {
        let mut status = 0;
        loop {
            // SAFETY: as in try_wait.
            match unsafe { libc::waitpid(self.pid, &mut status, 0) } {
                p if p == self.pid => return Ok(ExitStatus::from_raw(status)),
                _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {
                    continue
                }
                _ => {
                    return Err(os("waiting for the command")(
                        std::io::Error::last_os_error(),
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_after_release_and_reports_its_status() {
        let mut child = GatedChild::spawn(&["sh".into(), "-c".into(), "exit 3".into()]).unwrap();
        // Held at the gate: it cannot have exited.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(child.try_wait().unwrap().is_none());
        child.release().unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(3));
    }

    #[test]
    fn a_missing_program_is_an_exec_error() {
        let mut child = GatedChild::spawn(&["/nonexistent/smolder-test".into()]).unwrap();
        let err = child.release().unwrap_err();
        assert!(matches!(err, ChildError::Exec { .. }), "{err}");
        assert!(err
            .to_string()
            .contains("cannot run /nonexistent/smolder-test"));
    }
}
