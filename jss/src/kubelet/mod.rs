//! The kubelet as the source of truth about pods on this node.
//!
//! [`PodSource`] is the seam the attestor uses: "which running pod holds this
//! container?". [`KubeletPods`] answers it from the kubelet's `/pods` over
//! HTTPS, with one fetch in flight shared by all callers and versioned
//! results: a miss waits for a strictly newer list, about every 500 ms for up
//! to about 30 s (pods that just started). [`StaticPods`] answers it from a
//! pod list saved in a file (`jss inspect --pods-json`).

mod cache;
mod client;
mod config;
mod digests;
mod error;
mod pod_ref;
pub mod podlist;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use cache::{FetchPods, KubeletPods, SharedPodList, StaticPods, Timing};
pub use client::KubeletClient;
pub use config::{KubeletConfig, KubeletConfigError};
pub use digests::{DigestKind, ImageDigests};
pub use error::{KubeletError, LookupError};
pub use pod_ref::PodRef;
pub use podlist::{ContainerKind, ContainerStatus, OwnerReference, Pod, PodList, SpecContainer};

/// A boxed future: keeps [`PodSource`] object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the cgroup told us about the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodQuery {
    /// `None` for CRI-O paths without a pod and for static pods (config hash).
    pub pod_uid: Option<String>,
    pub container_id: String,
}

/// The pod and the caller's container in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMatch {
    pub pod: Arc<Pod>,
    pub kind: ContainerKind,
    pub container_name: String,
    pub container_id: String,
    /// Version of the pod list the answer came from.
    pub list_version: u64,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodSourceStats {
    /// Pod lists fetched from the kubelet (successful or not).
    pub fetches: u64,
    /// Fetches that failed.
    pub fetch_errors: u64,
    /// Pods in the newest list.
    pub pods: u64,
    /// List items skipped so far, summed over the lists fetched: not pod
    /// objects, or without a UID, name or namespace.
    pub pods_skipped: u64,
}

/// Finds the running pod and container for a caller.
pub trait PodSource: Send + Sync {
    fn find<'a>(&'a self, query: &'a PodQuery) -> BoxFuture<'a, Result<PodMatch, LookupError>>;

    /// The pod `pod` names, checked against it (see [`PodRef`]): for a
    /// pod-level token, asked for by the CSI plugin on the kubelet's word.
    fn find_pod<'a>(&'a self, pod: &'a PodRef) -> BoxFuture<'a, Result<Arc<Pod>, LookupError>>;

    fn stats(&self) -> PodSourceStats;

    /// Kubelet fetches so far, for the "kubelet fetches" metric.
    fn fetches(&self) -> u64 {
        self.stats().fetches
    }
}

/// One list's answer to a query: a container's match, or a pod
/// ([`PodList::lookup_pod`]).
#[derive(Debug)]
pub(crate) enum Outcome<T = Box<PodMatch>> {
    Found(T),
    /// Not (yet) in this list: a newer one may have it.
    Miss,
    Denied(LookupError),
}

impl PodList {
    /// Looks the container up in every pod's container, init-container and
    /// ephemeral-container statuses.
    pub(crate) fn lookup(&self, q: &PodQuery, version: u64) -> Outcome {
        let mut hit: Option<(&Arc<Pod>, &ContainerStatus)> = None;
        for pod in &self.pods {
            let Some(st) = pod
                .statuses
                .iter()
                .find(|s| s.container_id.as_deref() == Some(q.container_id.as_str()))
            else {
                continue;
            };
            if let Some((first, _)) = hit {
                return Outcome::Denied(LookupError::Duplicate {
                    container_id: q.container_id.clone(),
                    pods: [first, pod]
                        .iter()
                        .map(|p| format!("{}/{} ({})", p.namespace, p.name, p.uid))
                        .collect(),
                });
            }
            hit = Some((pod, st));
        }
        let Some((pod, st)) = hit else {
            return Outcome::Miss;
        };
        if let Some(uid) = &q.pod_uid
            && *uid != pod.uid
        {
            return Outcome::Denied(LookupError::PodMismatch {
                container_id: q.container_id.clone(),
                cgroup_pod: uid.clone(),
                kubelet_pod: format!("{}/{} ({})", pod.namespace, pod.name, pod.uid),
            });
        }
        if !st.running() {
            return Outcome::Denied(LookupError::NotRunning {
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
                container: st.name.clone(),
                state: st.state,
            });
        }
        Outcome::Found(Box::new(PodMatch {
            pod: Arc::clone(pod),
            kind: st.kind,
            container_name: st.name.clone(),
            container_id: q.container_id.clone(),
            list_version: version,
        }))
    }
}

#[cfg(test)]
mod tests;
