//! Reading another process's memory with `process_vm_readv`: exact reads
//! of caller-sized buffers only, so the process never sizes an allocation.

use std::io;

/// The memory of one process (by PID; nothing is held open).
#[derive(Clone, Copy, Debug)]
pub struct ProcessMemory {
    pid: u32,
}

impl ProcessMemory {
    /// The process read.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn new(pid: u32) -> ProcessMemory {
        ProcessMemory { pid }
    }

    /// Fills `buf` from `addr`; a short read is an error.
    pub fn read_exact(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as usize as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let pid = libc::pid_t::try_from(self.pid).map_err(io::Error::other)?;
        // SAFETY: one local iovec over `buf`, which we own and which has
        // iov_len bytes; the remote iovec is only read by the kernel.
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read {n} of {} bytes at {addr:#x}", buf.len()),
            ));
        }
        Ok(())
    }

    pub fn read_u64(&self, addr: u64) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.read_exact(addr, &mut b)?;
        Ok(u64::from_ne_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_memory_and_refuses_bad_addresses() {
        let value: u64 = 0x1234_5678_9abc_def0;
        let mem = ProcessMemory::new(std::process::id());
        assert_eq!(mem.read_u64(&value as *const u64 as u64).unwrap(), value);
        assert!(mem.read_u64(8).is_err());
    }
}
