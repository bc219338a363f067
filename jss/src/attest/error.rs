//! Attestation errors: what failed, for which process, and what to do.

use std::path::PathBuf;

use super::cgroup::CgroupError;
use crate::kubelet::LookupError;

#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error(
        "process {pid} is gone ({path}): it exited before it could be attested; call again from a live process"
    )]
    ProcessGone {
        pid: i32,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "process {pid}, which opened this connection, has exited (the connection outlived it, or was passed on); connect again from a live process"
    )]
    ConnectorExited {
        pid: i32,
        #[source]
        source: Option<std::io::Error>,
    },
    #[error(
        "cannot get a pidfd for process {pid}: {source}; the daemon may be out of file descriptors (raise LimitNOFILE)"
    )]
    NoPidfd {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the caller's SO_PEERCRED: {0}")]
    NoPeerCredentials(#[source] std::io::Error),
    #[error(
        "the kernel reported no pid for the caller (is it in another pid namespace without hostPID?)"
    )]
    NoPeerPid,
    #[error(
        "cannot read {path} for process {pid}: {source}; JSS needs the host's /proc (check proc_root and that the daemon runs in the host PID namespace)"
    )]
    ProcRead {
        pid: i32,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "malformed {path} for process {pid}: {reason}; JSS cannot tell which container the process is in (check proc_root points at the host's /proc)"
    )]
    ProcMalformed {
        pid: i32,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "process {pid} is not in a Kubernetes pod container (cgroup {cgroup}); only pod containers on this node get tokens"
    )]
    NotInPod { pid: i32, cgroup: String },
    #[error(
        "process {pid}: its cgroups name more than one pod or container (cgroup {cgroup}); JSS will not pick one, so a process in such cgroups gets no token"
    )]
    CgroupConflict {
        pid: i32,
        cgroup: String,
        #[source]
        source: CgroupError,
    },
    #[error(
        "process {pid} changed while it was attested ({detail}): the PID was reused or the caller changed identity; connect again"
    )]
    ProcessChanged { pid: i32, detail: String },
    #[error("process {pid} (container {container_id}): {source}")]
    Lookup {
        pid: i32,
        container_id: String,
        #[source]
        source: LookupError,
    },
}

impl AttestError {
    /// The refusal code the socket API answers with (the contract, with
    /// statuses, is `server::refusal`).
    pub fn code(&self) -> &'static str {
        crate::server::Code::from(self).as_str()
    }
}
