//! The attested caller, as claims are built from it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

pub use crate::kubelet::{ContainerKind, OwnerReference};
use crate::kubelet::{Pod, PodMatch};

/// One container of the pod: its spec image and, once the runtime reports
/// them, its image's digests (README.md, "Token format").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerImage {
    pub name: String,
    pub image: String,
    /// Registry (manifest) digest `sha256:<hex>`.
    pub digest: Option<String>,
    /// Image ID (config digest) `sha256:<hex>`.
    pub image_id: Option<String>,
    pub kind: ContainerKind,
    /// The spec's `command` and `args` (how an injected container is told).
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub command: Arc<[String]>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub args: Arc<[String]>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub service_account: String,
    pub node_name: String,
    pub container_name: String,
    pub container_id: String,
    /// The calling container's image reference, from the spec.
    pub image: String,
    /// Registry (manifest) digest `sha256:<hex>` of the calling container's
    /// image, when its runtime reports one (`repo@sha256:<hex>`).
    pub image_digest: Option<String>,
    /// Image ID (config digest) `sha256:<hex>` of the calling container's
    /// image, when its runtime reports one (`sha256:<hex>`, bare hex).
    pub image_id: Option<String>,
    /// Containers, then init containers, then ephemeral ones, in spec order.
    pub images: Vec<ContainerImage>,
    pub labels: Arc<BTreeMap<String, String>>,
    pub owner_references: Arc<[OwnerReference]>,
}

impl Workload {
    pub fn from_match(m: PodMatch) -> Self {
        let pod = m.pod;
        let status = pod.status(m.kind, &m.container_name);
        // The spec's reference is what policies see; the status one only if the spec lacks it.
        let image = pod
            .spec(m.kind)
            .iter()
            .find(|c| c.name == m.container_name)
            .map(|c| c.image.clone())
            .filter(|i| !i.is_empty())
            .or_else(|| status.and_then(|s| s.image.clone()))
            .unwrap_or_default();
        let digests = status.map(|s| s.digests.clone()).unwrap_or_default();
        Workload {
            container_name: m.container_name,
            container_id: m.container_id,
            image,
            image_digest: digests.repo_digest,
            image_id: digests.image_id,
            ..Self::pod_level(&pod)
        }
    }

    /// The pod as a whole, no container: what a pod-level token describes
    /// (README.md, "Token mode"). The container fields are empty.
    pub fn pod_level(pod: &Pod) -> Self {
        let mut images = Vec::new();
        for kind in [
            ContainerKind::Container,
            ContainerKind::Init,
            ContainerKind::Ephemeral,
        ] {
            for c in pod.spec(kind) {
                let digests = pod
                    .status(kind, &c.name)
                    .map(|s| s.digests.clone())
                    .unwrap_or_default();
                images.push(ContainerImage {
                    name: c.name.clone(),
                    image: c.image.clone(),
                    digest: digests.repo_digest,
                    image_id: digests.image_id,
                    kind,
                    command: Arc::clone(&c.command),
                    args: Arc::clone(&c.args),
                });
            }
        }
        Workload {
            namespace: pod.namespace.clone(),
            pod_name: pod.name.clone(),
            pod_uid: pod.uid.clone(),
            service_account: pod.service_account.clone(),
            node_name: pod.node_name.clone(),
            container_name: String::new(),
            container_id: String::new(),
            image: String::new(),
            image_digest: None,
            image_id: None,
            images,
            labels: Arc::clone(&pod.labels),
            owner_references: Arc::clone(&pod.owner_references),
        }
    }
}
