//! Token claims, built from the attested workload and the node's own facts.
//!
//! Nothing the caller sends becomes a claim except the audience, which the
//! server has already checked against the allow-list.

mod images;
mod sub;

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Serialize;

pub use images::{images_hash, images_names};
pub use sub::{DEFAULT_SUB_TEMPLATE, SubTemplate, SubTemplateError};

use crate::attest::{ContainerKind, Workload};

#[derive(Debug, thiserror::Error)]
pub enum ClaimsError {
    #[error("cannot read the machine ID from {path}: {source}")]
    MachineId {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("machine ID in {path} is empty or not 32 hex digits")]
    BadMachineId { path: std::path::PathBuf },
    #[error(
        "container {container} of pod {namespace}/{pod} has no image digest (imageID) in the kubelet's status yet; retry once it is running"
    )]
    NoImageDigest {
        namespace: String,
        pod: String,
        container: String,
    },
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
];

/// The registered JWT claims every token carries besides [`WORKLOAD_CLAIMS`].
pub const REGISTERED_CLAIMS: &[&str] = &["iss", "sub", "aud", "iat", "nbf", "exp", "jti"];

/// The token payload (DESIGN.md, "Token format").
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
    #[serde(rename = "cluster-name")]
    pub cluster_name: String,
    #[serde(rename = "cluster-region")]
    pub cluster_region: String,
    pub machineid: String,
    pub node: String,
    pub namespace: String,
    pub pod: String,
    #[serde(rename = "pod-uid")]
    pub pod_uid: String,
    #[serde(rename = "service-account")]
    pub service_account: String,
    pub container: String,
    #[serde(rename = "images-names")]
    pub images_names: String,
    pub images: String,
    pub image: String,
}

/// Builds claims for one node.
#[derive(Debug, Clone)]
pub struct ClaimsBuilder {
    facts: NodeFacts,
    sub: SubTemplate,
    ttl_seconds: u64,
}

impl ClaimsBuilder {
    pub fn new(facts: NodeFacts, sub: SubTemplate, ttl_seconds: u64) -> Self {
        Self {
            facts,
            sub,
            ttl_seconds,
        }
    }

    pub fn ttl_seconds(&self) -> u64 {
        self.ttl_seconds
    }

    pub fn facts(&self) -> &NodeFacts {
        &self.facts
    }

    /// Claims for `w` asking for `audience` at unix time `now`.
    pub fn build(&self, w: &Workload, audience: &str, now: u64) -> Result<Claims, ClaimsError> {
        let image = w
            .image_digest
            .clone()
            .ok_or_else(|| ClaimsError::NoImageDigest {
                namespace: w.namespace.clone(),
                pod: w.pod_name.clone(),
                container: w.container_name.clone(),
            })?;
        // Spec image names: containers in spec order, then init containers (as TSI).
        let names: Vec<&str> = [ContainerKind::Container, ContainerKind::Init]
            .iter()
            .flat_map(|k| w.images.iter().filter(move |c| c.kind == *k))
            .map(|c| c.image.as_str())
            .collect();
        let mut claims = Claims {
            iss: self.facts.issuer.clone(),
            sub: String::new(),
            aud: audience.to_string(),
            iat: now,
            nbf: now,
            exp: now + self.ttl_seconds,
            jti: new_jti()?,
            cluster_name: self.facts.cluster_name.clone(),
            cluster_region: self.facts.cluster_region.clone(),
            machineid: self.facts.machine_id.clone(),
            node: self.facts.node_name.clone(),
            namespace: w.namespace.clone(),
            pod: w.pod_name.clone(),
            pod_uid: w.pod_uid.clone(),
            service_account: w.service_account.clone(),
            container: w.container_name.clone(),
            images_names: images_names(&names),
            images: images_hash(&names),
            image,
        };
        claims.sub = self.sub.render(&claims);
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
mod tests;
