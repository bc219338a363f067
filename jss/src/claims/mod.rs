//! Token claims, built from the attested workload and the node's own facts.
//!
//! Nothing the caller sends becomes a claim except the audience, which the
//! server has already checked against the allow-list.

mod images;
pub mod injected;
mod sub;

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Serialize;

pub use images::{images_hash, images_names};
pub use injected::InjectedContainers;
pub use sub::{DEFAULT_SUB_TEMPLATE, POD_SUB_SUFFIX, SubTemplate, SubTemplateError};

use crate::attest::{ContainerKind, Workload};

#[derive(Debug, thiserror::Error)]
pub enum ClaimsError {
    #[error(
        "cannot read the machine ID from {path}: {source}; set machine_id_path to the node's /etc/machine-id"
    )]
    MachineId {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "machine ID in {path} is empty or not 32 hex digits; machine_id_path must name the node's /etc/machine-id (systemd-machine-id-setup writes one)"
    )]
    BadMachineId { path: std::path::PathBuf },
    #[error("the random number generator failed while making a token ID")]
    Random,
}

/// The node's own facts, read once at start.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub issuer: String,
    pub cluster_name: String,
    pub cluster_region: String,
    pub node_name: String,
    pub machine_id: String,
}

/// Reads `/etc/machine-id` (or the configured path).
pub fn read_machine_id(path: &Path) -> Result<String, ClaimsError> {
    let raw = std::fs::read_to_string(path).map_err(|source| ClaimsError::MachineId {
        path: path.to_path_buf(),
        source,
    })?;
    let id = raw.trim().to_string();
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ClaimsError::BadMachineId {
            path: path.to_path_buf(),
        });
    }
    Ok(id)
}

/// The string claims that describe the node and the workload: what a Vault
/// role maps into entity-alias metadata for policies to template on.
/// `image` and `image-id` are left out of a token whose container's runtime
/// did not report that kind of digest (README.md, "Token format").
pub const WORKLOAD_CLAIMS: &[&str] = &[
    "cluster-name",
    "cluster-region",
    "machineid",
    "node",
    "namespace",
    "pod",
    "pod-uid",
    "service-account",
    "container",
    "images-names",
    "images",
    "image",
    "image-id",
];

/// The registered JWT claims every token carries besides [`WORKLOAD_CLAIMS`].
pub const REGISTERED_CLAIMS: &[&str] = &["iss", "sub", "aud", "iat", "nbf", "exp", "jti"];

/// The token payload (README.md, "Token format").
/// Node and workload fields borrow from the builder and the workload: a
/// token costs no copies of them.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Claims<'a> {
    pub iss: &'a str,
    pub sub: String,
    pub aud: &'a str,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
    #[serde(rename = "cluster-name")]
    pub cluster_name: &'a str,
    #[serde(rename = "cluster-region")]
    pub cluster_region: &'a str,
    pub machineid: &'a str,
    pub node: &'a str,
    pub namespace: &'a str,
    pub pod: &'a str,
    #[serde(rename = "pod-uid")]
    pub pod_uid: &'a str,
    #[serde(rename = "service-account")]
    pub service_account: &'a str,
    /// The calling container; omitted from a pod-level token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<&'a str>,
    #[serde(rename = "images-names")]
    pub images_names: String,
    pub images: String,
    /// Registry (manifest) digest `sha256:<hex>`; omitted when not reported,
    /// so a policy templated on it grants nothing (an empty value would
    /// put every such workload on one path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<&'a str>,
    /// Image ID (config digest) `sha256:<hex>`; omitted when not reported.
    #[serde(rename = "image-id", skip_serializing_if = "Option::is_none")]
    pub image_id: Option<&'a str>,
}

/// What a token describes: the calling container (`/v1/token`, JWT-SVIDs),
/// or a whole pod (the CSI plugin's token mode, README.md "Token mode").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Container,
    /// No `container`, `image` or `image-id`; `sub` ends in [`POD_SUB_SUFFIX`].
    Pod,
}

/// Builds claims for one node.
#[derive(Debug, Clone)]
pub struct ClaimsBuilder {
    facts: NodeFacts,
    sub: SubTemplate,
    ttl_seconds: u64,
    injected: InjectedContainers,
}

impl ClaimsBuilder {
    pub fn new(facts: NodeFacts, sub: SubTemplate, ttl_seconds: u64) -> Self {
        Self {
            facts,
            sub,
            ttl_seconds,
            injected: InjectedContainers::default(),
        }
    }

    /// Leaves the containers `injected` recognises out of `images-names`
    /// and `images` (by default none).
    pub fn leaving_out(mut self, injected: InjectedContainers) -> Self {
        self.injected = injected;
        self
    }

    pub fn ttl_seconds(&self) -> u64 {
        self.ttl_seconds
    }

    pub fn facts(&self) -> &NodeFacts {
        &self.facts
    }

    /// Claims for `w` asking for `audience` at unix time `now`. Any running
    /// container gets them, whatever digests its runtime reported; the only
    /// error is a failed random number generator.
    pub fn build<'a>(
        &'a self,
        w: &'a Workload,
        audience: &'a str,
        now: u64,
    ) -> Result<Claims<'a>, ClaimsError> {
        self.build_as(w, Scope::Container, audience, now)
    }

    /// Claims of `scope` for `w` (for [`Scope::Pod`], a
    /// [`Workload::pod_level`]); errors as [`Self::build`].
    pub fn build_as<'a>(
        &'a self,
        w: &'a Workload,
        scope: Scope,
        audience: &'a str,
        now: u64,
    ) -> Result<Claims<'a>, ClaimsError> {
        // Spec image names: containers in spec order, then init containers
        // (as TSI), without the injector's own: the app's images.
        let names: Vec<&str> = [ContainerKind::Container, ContainerKind::Init]
            .iter()
            .flat_map(|k| w.images.iter().filter(move |c| c.kind == *k))
            .filter(|c| {
                !self.injected.is_injected(injected::SpecView {
                    kind: c.kind,
                    name: &c.name,
                    image: &c.image,
                    command: &c.command,
                    args: &c.args,
                })
            })
            .map(|c| c.image.as_str())
            .collect();
        let container = scope == Scope::Container;
        let mut claims = Claims {
            iss: &self.facts.issuer,
            sub: String::new(),
            aud: audience,
            iat: now,
            nbf: now,
            exp: now + self.ttl_seconds,
            jti: new_jti()?,
            cluster_name: &self.facts.cluster_name,
            cluster_region: &self.facts.cluster_region,
            machineid: &self.facts.machine_id,
            node: &self.facts.node_name,
            namespace: &w.namespace,
            pod: &w.pod_name,
            pod_uid: &w.pod_uid,
            service_account: &w.service_account,
            container: container.then_some(w.container_name.as_str()),
            images_names: images_names(&names),
            images: images_hash(&names),
            image: w.image_digest.as_deref().filter(|_| container),
            image_id: w.image_id.as_deref().filter(|_| container),
        };
        claims.sub = self.sub.render(&claims);
        if !container {
            claims.sub.push_str(POD_SUB_SUFFIX);
        }
        Ok(claims)
    }
}

/// 128 random bits, base64url: unique per token so replays can be spotted.
/// From aws-lc's DRBG (seeded by the kernel) rather than a getrandom call per token.
fn new_jti() -> Result<String, ClaimsError> {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| ClaimsError::Random)?;
    Ok(B64.encode(b))
}

#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_injected;
