//! The `tsi.secrets` annotation: a YAML list, exactly as TSI's users wrote it.
//!
//! ```yaml
//! - tsi.secret/name: "mysecret1"
//!   tsi.secret/role: "demo"
//!   tsi.secret/vault-path: "secret/ti-demo-all"
//!   tsi.secret/local-name: "mysecrets/myubuntu-mysecret1"
//! ```
//!
//! Keys: `tsi.secret/name` (the file name and the last path segment),
//! `tsi.secret/role` and `tsi.secret/vault-path`, or in their place TSI's
//! later `tsi.secret/constraints`; a directory in `tsi.secret/local-path`
//! (TSI's later spelling) or `tsi.secret/local-name` (the TSI article's).
//! Every item is checked before anything is fetched (see README.md,
//! "Getting secrets into a pod").

use std::path::PathBuf;

use serde::Deserialize;

use super::paths::{self, PathError};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("the secrets spec is not the YAML list TSI's tsi.secrets annotation holds: {0}")]
    Yaml(#[source] serde_norway::Error),
    #[error("the secrets spec lists no secrets")]
    Empty,
    #[error("secret {item}: {problem}")]
    Item { item: String, problem: String },
    #[error("secret {item}: {source}")]
    Path {
        item: String,
        #[source]
        source: PathError,
    },
    #[error("secrets {first} and {second} would both be written to {path}")]
    SameFile {
        first: String,
        second: String,
        path: PathBuf,
    },
}

/// One annotation item as written; checked into an [`Item`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawItem {
    #[serde(rename = "tsi.secret/name")]
    name: Option<String>,
    #[serde(rename = "tsi.secret/role")]
    role: Option<String>,
    #[serde(rename = "tsi.secret/vault-path")]
    vault_path: Option<String>,
    #[serde(rename = "tsi.secret/constraints")]
    constraints: Option<String>,
    #[serde(rename = "tsi.secret/local-path")]
    local_path: Option<String>,
    #[serde(rename = "tsi.secret/local-name")]
    local_name: Option<String>,
}

/// Where the secret is read, and with which role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `role` + `vault-path` (a TSI policy type, or `{claim}` placeholders).
    Path { role: String, vault_path: String },
    /// `constraints`: TSI's role `tsi-role-<kind>` and path `secret/tsi-<kind>/…`.
    Constraints(paths::Constraints),
}

/// A checked item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub name: String,
    pub source: Source,
    /// Relative to the output directory: `<directory>/<name>`.
    pub file: PathBuf,
}

impl Item {
    pub fn role(&self) -> &str {
        match &self.source {
            Source::Path { role, .. } => role,
            Source::Constraints(c) => c.role(),
        }
    }
}

/// Parses and checks the annotation text; any problem is an error naming
/// the item, before anything is fetched or written.
pub fn parse(text: &str) -> Result<Vec<Item>, SpecError> {
    let raw: Vec<RawItem> = serde_norway::from_str(text).map_err(SpecError::Yaml)?;
    if raw.is_empty() {
        return Err(SpecError::Empty);
    }
    let mut items: Vec<Item> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let item = check(i, r)?;
        if let Some(other) = items.iter().find(|o| o.file == item.file) {
            return Err(SpecError::SameFile {
                first: other.name.clone(),
                second: item.name,
                path: other.file.clone(),
            });
        }
        items.push(item);
    }
    Ok(items)
}

fn check(index: usize, r: RawItem) -> Result<Item, SpecError> {
    let label = match &r.name {
        Some(n) if !n.is_empty() => format!("{n:?} (item {})", index + 1),
        _ => format!("item {}", index + 1),
    };
    let bad = |problem: &str| SpecError::Item {
        item: label.clone(),
        problem: problem.into(),
    };
    let name = r
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad("has no tsi.secret/name"))?;
    let source = match (r.constraints, r.role, r.vault_path) {
        (Some(c), None, None) => {
            Source::Constraints(paths::Constraints::parse(&c).map_err(|source| {
                SpecError::Path {
                    item: label.clone(),
                    source,
                }
            })?)
        }
        (Some(_), _, _) => {
            return Err(bad(
                "has tsi.secret/constraints and also tsi.secret/role or vault-path: use one or the other",
            ));
        }
        (None, None, _) => {
            return Err(bad(
                "has no tsi.secret/role (or tsi.secret/constraints in place of role and vault-path)",
            ));
        }
        (None, Some(_), None) => return Err(bad("has no tsi.secret/vault-path")),
        (None, Some(role), Some(vault_path)) => {
            if role.is_empty() {
                return Err(bad("has an empty tsi.secret/role"));
            }
            paths::check_vault_path(&vault_path).map_err(|source| SpecError::Path {
                item: label.clone(),
                source,
            })?;
            Source::Path { role, vault_path }
        }
    };
    let dir = match (r.local_path, r.local_name) {
        (Some(p), None) | (None, Some(p)) => p,
        (Some(_), Some(_)) => {
            return Err(bad(
                "has both tsi.secret/local-path and tsi.secret/local-name: keep one",
            ));
        }
        (None, None) => {
            return Err(bad(
                "has no directory: set tsi.secret/local-path (or tsi.secret/local-name)",
            ));
        }
    };
    let file = paths::local_file(&dir, &name).map_err(|source| SpecError::Path {
        item: label.clone(),
        source,
    })?;
    Ok(Item { name, source, file })
}

#[cfg(test)]
mod tests;
