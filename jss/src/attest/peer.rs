//! The caller as the kernel names it, and the PID-reuse guard.
//!
//! A pid is only a number: the process behind it can exit and the number go
//! to another process, in another pod, while we read its /proc files. On
//! Linux ≥ 6.5 the kernel hands us a pidfd for the very process that
//! connected (SO_PEERPIDFD); it can never name another process, and it
//! turns readable once that process has exited. So: read /proc/<pid>, then
//! check the pidfd — alive means what we read was the caller's. Older
//! kernels fall back to comparing the process start time (and owner) with
//! what was read at accept.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{getsockopt, sockopt};

use super::locate::read_proc;
use super::{AttestError, proc_stat};

/// How the caller is told apart from a later process with the same pid.
#[derive(Debug)]
pub enum ReuseGuard {
    /// The kernel's handle on the process that connected.
    Pidfd(OwnedFd),
    /// Clock ticks since boot (`/proc/<pid>/stat` field 22), read at accept.
    StartTime(u64),
}

impl ReuseGuard {
    /// For logs and metrics: `pidfd` or `start_time`.
    pub fn name(&self) -> &'static str {
        match self {
            ReuseGuard::Pidfd(_) => "pidfd",
            ReuseGuard::StartTime(_) => "start_time",
        }
    }
}

/// The peer as it was when its connection was accepted.
#[derive(Debug)]
pub struct PeerProcess {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub guard: ReuseGuard,
}

impl PeerProcess {
    /// The process at the other end of a unix socket: SO_PEERCRED for pid,
    /// uid and gid, SO_PEERPIDFD to pin the process (start time where the
    /// kernel has no SO_PEERPIDFD).
    pub fn of_socket(proc_root: &Path, socket: impl AsFd) -> Result<Self, AttestError> {
        let cred = getsockopt(&socket, sockopt::PeerCredentials)
            .map_err(|e| AttestError::NoPeerCredentials(e.into()))?;
        let (pid, uid, gid) = (cred.pid(), cred.uid(), cred.gid());
        if pid <= 0 {
            return Err(AttestError::NoPeerPid);
        }
        let guard = match getsockopt(&socket, sockopt::PeerPidfd) {
            Ok(fd) => ReuseGuard::Pidfd(fd),
            // Linux < 6.5 (or a sandbox that filters it).
            Err(Errno::ENOPROTOOPT | Errno::EOPNOTSUPP) => {
                ReuseGuard::StartTime(start_time(proc_root, pid)?)
            }
            // Kernels before 6.16 give no pidfd for a connector that has exited.
            Err(e @ (Errno::EINVAL | Errno::ESRCH)) => {
                return Err(AttestError::ConnectorExited {
                    pid,
                    source: Some(e.into()),
                });
            }
            Err(Errno::ENODATA) => return Err(AttestError::NoPeerPid),
            // Out of descriptors or memory: our trouble, not the caller's.
            Err(e) => {
                return Err(AttestError::NoPidfd {
                    pid,
                    source: e.into(),
                });
            }
        };
        Ok(Self {
            pid,
            uid,
            gid,
            guard,
        })
    }

    /// A peer guarded by its start time, read now from `proc_root`.
    pub fn by_start_time(
        proc_root: &Path,
        pid: i32,
        uid: u32,
        gid: u32,
    ) -> Result<Self, AttestError> {
        Ok(Self {
            pid,
            uid,
            gid,
            guard: ReuseGuard::StartTime(start_time(proc_root, pid)?),
        })
    }

    /// A peer known only by pid (`jss inspect`): uid and gid from its status file.
    pub fn from_proc(proc_root: &Path, pid: i32) -> Result<Self, AttestError> {
        let start = start_time(proc_root, pid)?;
        let ids = status_ids(proc_root, pid)?;
        Ok(Self {
            pid,
            uid: ids.euid,
            gid: ids.egid,
            guard: ReuseGuard::StartTime(start),
        })
    }

    /// The start time, where that is the guard.
    pub fn start_time(&self) -> Option<u64> {
        match self.guard {
            ReuseGuard::StartTime(t) => Some(t),
            ReuseGuard::Pidfd(_) => None,
        }
    }

    /// The PID-reuse guard: fails unless `pid` still names the process that
    /// connected. Call it after reading the /proc files it vouches for.
    pub fn recheck(&self, proc_root: &Path) -> Result<(), AttestError> {
        match &self.guard {
            ReuseGuard::Pidfd(fd) => {
                // One poll, no /proc read: a pidfd is readable once its process exits.
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::ZERO) {
                    Ok(0) => Ok(()),
                    Ok(_) => Err(AttestError::ConnectorExited {
                        pid: self.pid,
                        source: None,
                    }),
                    Err(e) => Err(AttestError::ProcRead {
                        pid: self.pid,
                        path: "pidfd".into(),
                        source: e.into(),
                    }),
                }
            }
            ReuseGuard::StartTime(at_accept) => self.recheck_start_time(proc_root, *at_accept),
        }
    }

    fn recheck_start_time(&self, proc_root: &Path, at_accept: u64) -> Result<(), AttestError> {
        let changed = |detail: String| AttestError::ProcessChanged {
            pid: self.pid,
            detail,
        };
        // Gone now is reported as gone (401 as well).
        let now = start_time(proc_root, self.pid)?;
        if now != at_accept {
            return Err(changed(format!(
                "start time {at_accept} at accept, {now} now"
            )));
        }
        // /proc/<pid> belongs to the process's euid (to root if it is not
        // dumpable): one stat() answers the common case; status settles the rest.
        let dir_uid = std::fs::metadata(proc_root.join(self.pid.to_string()))
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        if dir_uid.ok() != Some(self.uid) {
            let ids = status_ids(proc_root, self.pid)?;
            if ids.euid != self.uid {
                return Err(changed(format!(
                    "uid {} at accept, {} now",
                    self.uid, ids.euid
                )));
            }
        }
        Ok(())
    }
}

/// Which guard this kernel gives connections: probed once at startup on a
/// socket pair, for the log and the metrics.
pub fn guard_supported() -> &'static str {
    match std::os::unix::net::UnixStream::pair() {
        Ok((a, _b)) => match getsockopt(&a, sockopt::PeerPidfd) {
            Ok(_) => "pidfd",
            Err(_) => "start_time",
        },
        Err(_) => "start_time",
    }
}

fn start_time(proc_root: &Path, pid: i32) -> Result<u64, AttestError> {
    let stat = read_proc(proc_root, pid, "stat")?;
    proc_stat::start_time(&stat).map_err(|reason| AttestError::ProcMalformed {
        pid,
        path: proc_root.join(pid.to_string()).join("stat"),
        reason,
    })
}

fn status_ids(proc_root: &Path, pid: i32) -> Result<proc_stat::Ids, AttestError> {
    let status = read_proc(proc_root, pid, "status")?;
    proc_stat::ids(&status).map_err(|reason| AttestError::ProcMalformed {
        pid,
        path: proc_root.join(pid.to_string()).join("status"),
        reason,
    })
}
