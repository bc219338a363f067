//! Who is calling: kernel peer credentials, cgroups, then the kubelet.
//!
//! Nothing the caller says is trusted. At accept the server takes the peer's
//! pid, uid and a pidfd from the kernel ([`PeerProcess::of_socket`]), kept
//! with its located container for the connection's life ([`Peer`]); the
//! [`Attestor`] reads the pid's cgroups for pod and container, asks the
//! kubelet ([`PodSource`]) which running pod holds that container, and then
//! checks that the pid still names the process that connected (PID-reuse
//! guard, see `peer`).

pub mod cgroup;
mod connection;
mod error;
mod locate;
mod peer;
pub mod proc_stat;
mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use connection::{Peer, Unattested};
pub use error::AttestError;
pub use locate::{Location, locate};
pub use peer::{PeerProcess, ReuseGuard, guard_supported};
pub use workload::{ContainerImage, ContainerKind, OwnerReference, Workload};

use crate::kubelet::{PodQuery, PodSource};

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
        peer.recheck(&self.proc_root)?;
        let workload = Workload::from_match(found?);
        tracing::debug!(
            pid = peer.pid,
            namespace = %workload.namespace,
            pod = %workload.pod_name,
            container = %workload.container_name,
            "attested"
        );
        Ok(workload)
    }
}
