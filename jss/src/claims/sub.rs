//! The `sub` claim template.
//!
//! Vault keys an entity alias by `user_claim` (`sub`) and templated policies
//! read the alias's *current* metadata, so two workloads sharing a `sub`
//! overwrite each other's metadata and may read each other's secrets. The
//! template therefore names claims explicitly and must include every claim a
//! policy templates on; it must not be per pod (one Vault entity per pod ever run).

use super::Claims;

/// The default (README.md, "Token format").
pub const DEFAULT_SUB_TEMPLATE: &str =
    "{cluster-region}/{cluster-name}/{namespace}/{service-account}/{images}/{image}/{image-id}";

/// Ends the `sub` of every pod-level token (README.md, "Token mode"), so it
/// is never a container's: `#` is in no Kubernetes name, digest or hash,
/// and the config refuses it in the template, cluster name and region.
pub const POD_SUB_SUFFIX: &str = "#pod";

/// Claims a template may name. `pod`, `pod-uid`, `jti` and times are left out
/// on purpose: they would make one Vault entity per pod or per token.
const ALLOWED: &[&str] = &[
    "cluster-region",
    "cluster-name",
    "namespace",
    "service-account",
    "images",
    "image",
    "image-id",
    "container",
    "node",
    "machineid",
];

#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    Claim(String),
}

#[derive(Debug, Clone)]
pub struct SubTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubTemplateError {
    #[error("unclosed '{{' in sub template {0:?}")]
    Unclosed(String),
    #[error("sub template names {name:?}, which is not a claim it may use (allowed: {allowed})")]
    Unknown { name: String, allowed: String },
    #[error(
        "sub template {0:?} must include {{namespace}} and {{images}} (policies template on them)"
    )]
    MissingRequired(String),
    #[error(
        "sub template {0:?} contains '#', which marks pod-level tokens' sub (README.md, \"Token mode\"); use another separator"
    )]
    Hash(String),
}

impl SubTemplate {
    pub fn parse(template: &str) -> Result<Self, SubTemplateError> {
        if template.contains('#') {
            return Err(SubTemplateError::Hash(template.to_string()));
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_string()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(SubTemplateError::Unclosed(template.to_string()));
            };
            let name = &rest[open + 1..open + close];
            if !ALLOWED.contains(&name) {
                return Err(SubTemplateError::Unknown {
                    name: name.to_string(),
                    allowed: ALLOWED.join(", "),
                });
            }
            parts.push(Part::Claim(name.to_string()));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        let names = |n: &str| parts.iter().any(|p| matches!(p, Part::Claim(c) if c == n));
        if !names("namespace") || !names("images") {
            return Err(SubTemplateError::MissingRequired(template.to_string()));
        }
        Ok(Self { parts })
    }

    pub fn render(&self, c: &Claims<'_>) -> String {
        let mut out = String::with_capacity(160);
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Claim(name) => out.push_str(match name.as_str() {
                    "cluster-region" => c.cluster_region,
                    "cluster-name" => c.cluster_name,
                    "namespace" => c.namespace,
                    "service-account" => c.service_account,
                    "images" => &c.images,
                    // Absent digests render empty: a digest is never empty.
                    "image" => c.image.unwrap_or_default(),
                    "image-id" => c.image_id.unwrap_or_default(),
                    "container" => c.container.unwrap_or_default(),
                    "node" => c.node,
                    "machineid" => c.machineid,
                    _ => "",
                }),
            }
        }
        out
    }
}

impl Default for SubTemplate {
    fn default() -> Self {
        // The default is a constant known to parse.
        Self::parse(DEFAULT_SUB_TEMPLATE).unwrap_or(Self { parts: Vec::new() })
    }
}
