//! The kubelet's `/pods` answer, reduced to what attestation needs.
//!
//! Serde structs name only the fields we read; everything else (managed
//! fields, env, volumes, annotations…) is skipped by the parser without being
//! built, so a 110-pod list costs little more than its bytes.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};

use super::digests::ImageDigests;

/// Where in the pod a container is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerKind {
    Container,
    Init,
    Ephemeral,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerReference {
    pub kind: String,
    pub name: String,
    pub uid: String,
    #[serde(default, deserialize_with = "null_default")]
    pub controller: bool,
}

/// A container as the spec declares it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SpecContainer {
    pub name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub image: String,
    /// `command` and `args` tell a container the injector added
    /// (`claims::injected`); shared with the workloads, not copied.
    #[serde(default, deserialize_with = "null_default")]
    pub command: Arc<[String]>,
    #[serde(default, deserialize_with = "null_default")]
    pub args: Arc<[String]>,
}

/// A container as the kubelet last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    pub kind: ContainerKind,
    pub name: String,
    /// The ID after `://`, if the runtime has created the container yet.
    pub container_id: Option<String>,
    /// The status `imageID` as the runtime reported it.
    pub image_id: Option<String>,
    /// Registry digest and image ID from `imageID` and `image`, worked out once per list.
    pub digests: ImageDigests,
    pub image: Option<String>,
    /// `running`, `waiting`, `terminated` or `unknown`.
    pub state: &'static str,
}

impl ContainerStatus {
    pub fn running(&self) -> bool {
        self.state == "running"
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// Shared with the workloads attested from this pod (no copy per token).
    pub labels: Arc<BTreeMap<String, String>>,
    pub owner_references: Arc<[OwnerReference]>,
    pub node_name: String,
    pub service_account: String,
    pub containers: Vec<SpecContainer>,
    pub init_containers: Vec<SpecContainer>,
    pub ephemeral_containers: Vec<SpecContainer>,
    pub statuses: Vec<ContainerStatus>,
    /// `status.phase`: `Pending`, `Running`, `Succeeded`, `Failed`,
    /// `Unknown`, or empty when the kubelet has not reported one yet.
    pub phase: String,
}

impl Pod {
    pub fn spec(&self, kind: ContainerKind) -> &[SpecContainer] {
        match kind {
            ContainerKind::Container => &self.containers,
            ContainerKind::Init => &self.init_containers,
            ContainerKind::Ephemeral => &self.ephemeral_containers,
        }
    }

    pub fn status(&self, kind: ContainerKind, name: &str) -> Option<&ContainerStatus> {
        self.statuses
            .iter()
            .find(|s| s.kind == kind && s.name == name)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodList {
    /// Shared with the lookups that match them: a token request copies no pod.
    pub pods: Vec<Arc<Pod>>,
    /// Items skipped: not a pod object, or without a UID, name or namespace.
    pub skipped: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("unable to parse kubelet response: {0}")]
pub struct ParseError(#[from] pub serde_json::Error);

/// Why items were left out of one list, for its single log line.
#[derive(Debug, Default)]
struct Skips {
    null: usize,
    not_a_pod: usize,
    no_uid: usize,
    no_name: usize,
    /// `namespace/name` of the first pod skipped for a missing field.
    first: Option<String>,
}

impl PodList {
    /// Parses a `/pods` body: an object whose `items` is an array (or
    /// `null`). Items that are not pod objects, or lack a UID, name or
    /// namespace, are skipped and counted in [`PodList::skipped`] (one
    /// warning per list); a body that is not such an object is an error.
    pub fn parse(body: &[u8]) -> Result<Self, ParseError> {
        // The common case in one pass; only a list with an item that is not
        // a pod object is parsed again, item by item. `Some(None)` is a
        // `null` item, `None` one that is not a pod object.
        let items: Vec<Option<Option<RawPod>>> =
            match serde_json::from_slice::<RawList<Option<RawPod>>>(body) {
                Ok(raw) => raw.items.into_iter().map(Some).collect(),
                Err(_) => serde_json::from_slice::<RawList<Lenient>>(body)?
                    .items
                    .into_iter()
                    .map(|l| l.0)
                    .collect(),
            };
        let mut list = PodList::default();
        let mut skips = Skips::default();
        for item in items {
            let mut p = match item {
                Some(Some(p)) => p,
                Some(None) => {
                    skips.null += 1;
                    continue;
                }
                None => {
                    skips.not_a_pod += 1;
                    continue;
                }
            };
            let uid = p.metadata.uid.take().filter(|u| !u.is_empty());
            let named = !p.metadata.name.is_empty() && !p.metadata.namespace.is_empty();
            let Some(uid) = uid.filter(|_| named) else {
                if named {
                    skips.no_uid += 1;
                } else {
                    skips.no_name += 1;
                }
                skips
                    .first
                    .get_or_insert_with(|| format!("{}/{}", p.metadata.namespace, p.metadata.name));
                continue;
            };
            list.pods.push(Arc::new(p.into_pod(uid)));
        }
        list.skipped = skips.null + skips.not_a_pod + skips.no_uid + skips.no_name;
        if list.skipped > 0 {
            tracing::warn!(
                skipped = list.skipped,
                null = skips.null,
                not_a_pod = skips.not_a_pod,
                no_uid = skips.no_uid,
                no_name_or_namespace = skips.no_name,
                pods = list.pods.len(),
                first = skips.first.as_deref().unwrap_or(""),
                "kubelet pod list holds items that are not pods with a UID, name and namespace; skipped them (jss_kubelet_pods_skipped_total)"
            );
        }
        Ok(list)
    }
}

impl RawPod {
    fn into_pod(self, uid: String) -> Pod {
        let RawPod {
            metadata,
            spec,
            status,
        } = self;
        let mut statuses = Vec::new();
        for (kind, v) in [
            (ContainerKind::Container, status.container_statuses),
            (ContainerKind::Init, status.init_container_statuses),
            (
                ContainerKind::Ephemeral,
                status.ephemeral_container_statuses,
            ),
        ] {
            statuses.extend(v.into_iter().map(|s| s.into_status(kind)));
        }
        Pod {
            uid,
            name: metadata.name,
            namespace: metadata.namespace,
            labels: Arc::new(metadata.labels),
            owner_references: metadata.owner_references.into(),
            node_name: spec.node_name,
            service_account: spec
                .service_account_name
                .or(spec.service_account)
                .unwrap_or_default(),
            containers: spec.containers,
            init_containers: spec.init_containers,
            ephemeral_containers: spec.ephemeral_containers,
            statuses,
            phase: status.phase,
        }
    }
}

/// One entry of `items` in the item-by-item pass: `None` when it is not an
/// object, or an object whose fields do not have a pod's types.
struct Lenient(Option<Option<RawPod>>);

impl<'de> Deserialize<'de> for Lenient {
    /// The item as a JSON value first, so a bad one is skipped without
    /// losing the place in the list.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        Ok(Lenient(Option::<RawPod>::deserialize(&v).ok()))
    }
}

/// `null` reads as the type's default, like a missing field.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize)]
#[serde(bound = "T: Deserialize<'de>")]
struct RawList<T> {
    // Required: `{}` is not a pod list. `null` is an empty one.
    #[serde(deserialize_with = "null_default")]
    items: Vec<T>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawPod {
    #[serde(deserialize_with = "null_default")]
    metadata: RawMeta,
    #[serde(deserialize_with = "null_default")]
    spec: RawSpec,
    #[serde(deserialize_with = "null_default")]
    status: RawStatus,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawMeta {
    #[serde(deserialize_with = "null_default")]
    name: String,
    #[serde(deserialize_with = "null_default")]
    namespace: String,
    uid: Option<String>,
    #[serde(deserialize_with = "null_default")]
    labels: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_default")]
    owner_references: Vec<OwnerReference>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawSpec {
    #[serde(deserialize_with = "null_default")]
    node_name: String,
    service_account_name: Option<String>,
    /// Deprecated alias, still set by older API servers.
    service_account: Option<String>,
    #[serde(deserialize_with = "null_default")]
    containers: Vec<SpecContainer>,
    #[serde(deserialize_with = "null_default")]
    init_containers: Vec<SpecContainer>,
    #[serde(deserialize_with = "null_default")]
    ephemeral_containers: Vec<SpecContainer>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawStatus {
    #[serde(deserialize_with = "null_default")]
    phase: String,
    #[serde(deserialize_with = "null_default")]
    container_statuses: Vec<RawContainerStatus>,
    #[serde(deserialize_with = "null_default")]
    init_container_statuses: Vec<RawContainerStatus>,
    #[serde(deserialize_with = "null_default")]
    ephemeral_container_statuses: Vec<RawContainerStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawContainerStatus {
    name: String,
    #[serde(rename = "containerID", default)]
    container_id: Option<String>,
    #[serde(rename = "imageID", default)]
    image_id: Option<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    state: Option<RawState>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawState {
    running: Option<serde::de::IgnoredAny>,
    waiting: Option<serde::de::IgnoredAny>,
    terminated: Option<serde::de::IgnoredAny>,
}

impl RawContainerStatus {
    fn into_status(self, kind: ContainerKind) -> ContainerStatus {
        let state = match self.state {
            Some(RawState {
                running: Some(_), ..
            }) => "running",
            Some(RawState {
                terminated: Some(_),
                ..
            }) => "terminated",
            Some(RawState {
                waiting: Some(_), ..
            }) => "waiting",
            _ => "unknown",
        };
        // `containerd://<id>`, `cri-o://<id>`, `docker://<id>`: compare the ID only.
        let container_id =
            self.container_id
                .filter(|c| !c.is_empty())
                .map(|c| match c.split_once("://") {
                    Some((_, id)) => id.to_string(),
                    None => c,
                });
        let image_id = self.image_id.filter(|s| !s.is_empty());
        let image = self.image.filter(|s| !s.is_empty());
        ContainerStatus {
            kind,
            name: self.name,
            container_id,
            digests: ImageDigests::from_status(image_id.as_deref(), image.as_deref()),
            image_id,
            image,
            state,
        }
    }
}
