//! The caller of one connection: what the kernel said of it at accept, and
//! its container once located.

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::OnceLock;

use nix::sys::socket::{getsockopt, sockopt};

use super::{AttestError, Location, PeerProcess, locate};

/// The process at the other end of a connection, for as long as it lasts.
///
/// Located at most once: Kubernetes never moves a process between pods, so
/// the cgroup read at the first token request holds for the connection; the
/// pod lookup and the PID-reuse guard still run for every request.
#[derive(Debug)]
pub struct Peer {
    process: Result<PeerProcess, Unattested>,
    location: OnceLock<Location>,
}

/// A caller the kernel could not vouch for at accept: the error, and the pid
/// and uid SO_PEERCRED gave (0 where it gave none), for the audit log.
#[derive(Debug)]
pub struct Unattested {
    pub pid: i32,
    pub uid: u32,
    pub error: AttestError,
}

impl Peer {
    /// The peer of `socket`, taken at accept (see [`PeerProcess::of_socket`]).
    pub fn of_socket(proc_root: &Path, socket: impl AsFd) -> Self {
        let process = PeerProcess::of_socket(proc_root, &socket).map_err(|error| {
            let cred = getsockopt(&socket, sockopt::PeerCredentials).ok();
            Unattested {
                pid: cred.map_or(0, |c| c.pid()),
                uid: cred.map_or(0, |c| c.uid()),
                error,
            }
        });
        Self::new(process)
    }

    pub fn new(process: Result<PeerProcess, Unattested>) -> Self {
        Self {
            process,
            location: OnceLock::new(),
        }
    }

    /// The process, or why it was refused at accept.
    pub fn process(&self) -> Result<&PeerProcess, &Unattested> {
        self.process.as_ref()
    }

    /// Pid and uid as the kernel gave them (0 where it gave none).
    pub fn ids(&self) -> (i32, u32) {
        match &self.process {
            Ok(p) => (p.pid, p.uid),
            Err(u) => (u.pid, u.uid),
        }
    }

    /// The caller's container: read from its cgroups under `proc_root` on
    /// the first call, then kept. A failed read is not kept.
    pub fn locate(&self, proc_root: &Path, pid: i32) -> Result<&Location, AttestError> {
        if let Some(l) = self.location.get() {
            return Ok(l);
        }
        let l = locate(proc_root, pid)?;
        Ok(self.location.get_or_init(|| l))
    }
}
