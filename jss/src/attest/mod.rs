//! Who is calling: kernel peer credentials, cgroups, then the kubelet.
//!
//! Nothing the caller says is trusted. At accept the server records the
//! peer's pid, uid and process start time ([`PeerProcess::at_accept`]); the
//! [`Attestor`] reads the pid's cgroups for pod and container, asks the
//! kubelet ([`PodSource`]) which running pod holds that container, and then
//! checks that the pid is still the same process (PID-reuse guard).

pub mod cgroup;
mod error;
mod locate;
pub mod mountinfo;
pub mod proc_stat;
mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use error::{AttestError, DenyClass};
pub use locate::{Location, Source, locate};
pub use workload::{ContainerImage, ContainerKind, OwnerReference, Workload};

use crate::kubelet::{PodQuery, PodSource};
use locate::read_proc;

/// The peer as it was when its connection was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerProcess {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
}

impl PeerProcess {
    /// Records the start time of the peer the kernel named (SO_PEERCRED).
    pub fn at_accept(proc_root: &Path, pid: i32, uid: u32, gid: u32) -> Result<Self, AttestError> {
        Ok(Self {
            pid,
            uid,
            gid,
            start_time: start_time(proc_root, pid)?,
        })
    }

    /// A peer known only by pid (`jss inspect`): uid and gid from its status file.
    pub fn from_proc(proc_root: &Path, pid: i32) -> Result<Self, AttestError> {
        let start_time = start_time(proc_root, pid)?;
        let ids = status_ids(proc_root, pid)?;
        Ok(Self {
            pid,
            uid: ids.euid,
            gid: ids.egid,
            start_time,
        })
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

/// Turns a peer into a [`Workload`].
pub struct Attestor {
    proc_root: PathBuf,
    pods: Arc<dyn PodSource>,
}

impl std::fmt::Debug for Attestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attestor")
            .field("proc_root", &self.proc_root)
            .finish_non_exhaustive()
    }
}

impl Attestor {
    pub fn new(proc_root: PathBuf, pods: Arc<dyn PodSource>) -> Self {
        Self { proc_root, pods }
    }

    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }

    pub fn pods(&self) -> &Arc<dyn PodSource> {
        &self.pods
    }

    /// Cgroup → pod lookup → match → the pid is still the same process.
    pub async fn attest(&self, peer: &PeerProcess) -> Result<Workload, AttestError> {
        let loc = locate(&self.proc_root, peer.pid)?;
        self.attest_located(peer, &loc).await
    }

    /// Like [`Self::attest`] for a peer already located: a connection's
    /// process keeps its container (Kubernetes never moves a process between
    /// pods), so the server locates once per connection; the pod lookup and
    /// the PID-reuse guard still run for every request.
    pub async fn attest_located(
        &self,
        peer: &PeerProcess,
        loc: &Location,
    ) -> Result<Workload, AttestError> {
        let query = PodQuery {
            pod_uid: loc.pod_uid().map(str::to_string),
            container_id: loc.container_id.clone(),
        };
        let found = self
            .pods
            .find(&query)
            .await
            .map_err(|source| AttestError::Lookup {
                pid: peer.pid,
                container_id: loc.container_id.clone(),
                source,
            });
        // Re-check even on failure: a reused PID must read as such, not as "no pod".
        self.recheck(peer)?;
        let workload = Workload::from_match(found?);
        tracing::debug!(
            pid = peer.pid,
            namespace = %workload.namespace,
            pod = %workload.pod_name,
            container = %workload.container_name,
            source = ?loc.source,
            "attested"
        );
        Ok(workload)
    }

    /// The PID-reuse guard: same start time and same uid as at accept.
    pub fn recheck(&self, peer: &PeerProcess) -> Result<(), AttestError> {
        let changed = |detail: String| AttestError::ProcessChanged {
            pid: peer.pid,
            detail,
        };
        // Gone now is reported as gone (401 as well).
        let now = start_time(&self.proc_root, peer.pid)?;
        if now != peer.start_time {
            return Err(changed(format!(
                "start time {} at accept, {now} now",
                peer.start_time
            )));
        }
        // /proc/<pid> belongs to the process's euid (to root if it is not
        // dumpable): one stat() answers the common case; status settles the rest.
        let dir_uid = std::fs::metadata(self.proc_root.join(peer.pid.to_string()))
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        if dir_uid.ok() != Some(peer.uid) {
            let ids = status_ids(&self.proc_root, peer.pid)?;
            if ids.euid != peer.uid {
                return Err(changed(format!(
                    "uid {} at accept, {} now",
                    peer.uid, ids.euid
                )));
            }
        }
        Ok(())
    }
}
