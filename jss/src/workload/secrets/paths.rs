//! Paths: where a secret is read in Vault (TSI's layouts, or `{claim}`
//! placeholders) and where its file goes under the output directory.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error(
        "vault-path {0:?} is neither a TSI policy type (…/ti-demo-all, …/ti-demo-ri) nor has {{claim}} placeholders such as {{namespace}}"
    )]
    UnknownLayout(String),
    #[error("vault-path {path:?}: {problem}")]
    BadVaultPath { path: String, problem: String },
    #[error(
        "constraints {0:?} are not one of TSI's: region | region,images | region,cluster-name,namespace | region,cluster-name,namespace,images"
    )]
    BadConstraints(String),
    #[error(
        "local path {0:?} is absolute outside TSI's /tsi-secrets mount: give a directory relative to the output directory"
    )]
    Absolute(String),
    #[error("local path {0:?} contains `..`: a secret may not leave the output directory")]
    Escapes(String),
    #[error("name {0:?} must be one path segment (no `/`, not `.` or `..`)")]
    BadName(String),
    #[error(
        "Vault's login metadata has no {claim:?} (needed by {path:?}): is the role mapping that claim (claim_mappings)?"
    )]
    MissingClaim { claim: String, path: String },
    #[error("the {claim:?} claim is not usable as a path segment")]
    BadClaim { claim: String },
}

/// TSI's mount point, stripped from local paths so files land where the
/// app always saw them.
const TSI_MOUNT: &str = "tsi-secrets";

/// The file for `name` under a TSI `local-path`/`local-name` directory,
/// relative to the output directory: `<directory>/<name>`.
pub fn local_file(dir: &str, name: &str) -> Result<PathBuf, PathError> {
    let name_path = Path::new(name);
    if name.is_empty()
        || name.contains('/')
        || !matches!(name_path.components().next(), Some(Component::Normal(_)))
    {
        return Err(PathError::BadName(name.into()));
    }
    let trimmed = dir.trim_start_matches('/');
    let rel = if trimmed == TSI_MOUNT {
        ""
    } else if let Some(rest) = trimmed.strip_prefix(&format!("{TSI_MOUNT}/")) {
        rest
    } else if dir.starts_with('/') {
        return Err(PathError::Absolute(dir.into()));
    } else {
        dir
    };
    let mut out = PathBuf::new();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            Component::ParentDir => return Err(PathError::Escapes(dir.into())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(PathError::Absolute(dir.into()));
            }
        }
    }
    out.push(name);
    Ok(out)
}

/// TSI's `tsi.secret/constraints`: which claims the path (and role) bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Constraints {
    R,
    Ri,
    Rcn,
    Rcni,
}

impl Constraints {
    pub fn parse(s: &str) -> Result<Self, PathError> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        Ok(match parts.as_slice() {
            ["region"] => Self::R,
            ["region", "images"] => Self::Ri,
            ["region", "cluster-name", "namespace"] => Self::Rcn,
            ["region", "cluster-name", "namespace", "images"] => Self::Rcni,
            _ => return Err(PathError::BadConstraints(s.into())),
        })
    }

    /// `r`, `ri`, `rcn`, `rcni`.
    pub fn kind(self) -> &'static str {
        match self {
            Self::R => "r",
            Self::Ri => "ri",
            Self::Rcn => "rcn",
            Self::Rcni => "rcni",
        }
    }

    /// TSI's role name: `tsi-role-<kind>`.
    pub fn role(self) -> &'static str {
        match self {
            Self::R => "tsi-role-r",
            Self::Ri => "tsi-role-ri",
            Self::Rcn => "tsi-role-rcn",
            Self::Rcni => "tsi-role-rcni",
        }
    }

    /// The claims in path order.
    pub fn claims(self) -> &'static [&'static str] {
        match self {
            Self::R => &["cluster-region"],
            Self::Ri => &["cluster-region", "images"],
            Self::Rcn => &["cluster-region", "cluster-name", "namespace"],
            Self::Rcni => &["cluster-region", "cluster-name", "namespace", "images"],
        }
    }

    /// `secret/tsi-<kind>/<claims…>/<name>`.
    pub fn secret_path(
        self,
        meta: &HashMap<String, String>,
        name: &str,
    ) -> Result<String, PathError> {
        let base = format!("secret/tsi-{}", self.kind());
        join_claims(&base, self.claims(), meta, name)
    }
}

/// The claims TSI's policy types put between `vault-path` and the name.
fn policy_claims(vault_path: &str) -> Option<&'static [&'static str]> {
    match vault_path.trim_end_matches('/').rsplit('/').next() {
        Some("ti-demo-all") => Some(&["cluster-region", "cluster-name", "namespace", "images"]),
        Some("ti-demo-ri") => Some(&["cluster-region", "images"]),
        _ => None,
    }
}

/// Checks a `vault-path` before anything is fetched: a known layout, no
/// empty or `..` segments, placeholders closed.
pub fn check_vault_path(vault_path: &str) -> Result<(), PathError> {
    let bad = |problem: &str| PathError::BadVaultPath {
        path: vault_path.into(),
        problem: problem.into(),
    };
    if vault_path.starts_with('/') {
        return Err(bad(
            "must not start with `/` (write it as the KV CLI takes it, e.g. secret/ti-demo-all)",
        ));
    }
    if vault_path
        .trim_end_matches('/')
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(bad("has an empty, `.` or `..` segment"));
    }
    if vault_path.matches('{').count() != vault_path.matches('}').count() {
        return Err(bad("has an unclosed {placeholder}"));
    }
    if policy_claims(vault_path).is_none() && !vault_path.contains('{') {
        return Err(PathError::UnknownLayout(vault_path.into()));
    }
    Ok(())
}

/// The secret's path for `vault_path` and `name`, the claims taken from the
/// login's metadata: a TSI policy type appends its claims then the name;
/// otherwise each `{claim}` is replaced (and `{name}` by the name, which is
/// appended as the last segment when the path has no `{name}`).
pub fn secret_path(
    vault_path: &str,
    meta: &HashMap<String, String>,
    name: &str,
) -> Result<String, PathError> {
    let base = vault_path.trim_end_matches('/');
    if let Some(claims) = policy_claims(base) {
        return join_claims(base, claims, meta, name);
    }
    let mut out = String::new();
    let mut rest = base;
    let mut named = false;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| PathError::BadVaultPath {
            path: vault_path.into(),
            problem: "has an unclosed {placeholder}".into(),
        })?;
        let claim = &after[..close];
        if claim == "name" {
            out.push_str(name);
            named = true;
        } else {
            out.push_str(claim_value(meta, claim, vault_path)?);
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    if !named {
        out.push('/');
        out.push_str(name);
    }
    Ok(out)
}

fn join_claims(
    base: &str,
    claims: &[&str],
    meta: &HashMap<String, String>,
    name: &str,
) -> Result<String, PathError> {
    let mut out = base.to_string();
    for c in claims {
        out.push('/');
        out.push_str(claim_value(meta, c, base)?);
    }
    out.push('/');
    out.push_str(name);
    Ok(out)
}

/// A claim's value from the metadata, refused when it could change the
/// path's shape (empty, `/`, `..`).
fn claim_value<'a>(
    meta: &'a HashMap<String, String>,
    claim: &str,
    path: &str,
) -> Result<&'a str, PathError> {
    let v = meta.get(claim).ok_or_else(|| PathError::MissingClaim {
        claim: claim.into(),
        path: path.into(),
    })?;
    if v.is_empty() || v.contains('/') || v == "." || v == ".." {
        return Err(PathError::BadClaim {
            claim: claim.into(),
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> HashMap<String, String> {
        [
            ("cluster-region", "eu-de"),
            ("cluster-name", "EUCluster"),
            ("namespace", "trusted-identity"),
            ("images", "abc123"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn tsi_policy_types_build_tsis_paths() {
        assert_eq!(
            secret_path("secret/ti-demo-all", &meta(), "mysecret1").unwrap(),
            "secret/ti-demo-all/eu-de/EUCluster/trusted-identity/abc123/mysecret1"
        );
        assert_eq!(
            secret_path("secret/ti-demo-ri/", &meta(), "mysecret2").unwrap(),
            "secret/ti-demo-ri/eu-de/abc123/mysecret2"
        );
    }

    #[test]
    fn placeholders_expand_from_metadata() {
        assert_eq!(
            secret_path("kv/apps/{namespace}/{images}", &meta(), "db").unwrap(),
            "kv/apps/trusted-identity/abc123/db"
        );
        assert_eq!(
            secret_path("kv/{namespace}/{name}/current", &meta(), "db").unwrap(),
            "kv/trusted-identity/db/current"
        );
        let e = secret_path("kv/{pod}", &meta(), "db").unwrap_err();
        assert!(matches!(e, PathError::MissingClaim { .. }), "{e}");
        let mut m = meta();
        m.insert("namespace".into(), "../x".into());
        assert!(secret_path("kv/{namespace}", &m, "db").is_err());
    }

    #[test]
    fn vault_paths_without_a_layout_are_refused() {
        assert!(matches!(
            check_vault_path("secret/myapp"),
            Err(PathError::UnknownLayout(_))
        ));
        assert!(check_vault_path("secret/../ti-demo-all").is_err());
        assert!(check_vault_path("/secret/ti-demo-all").is_err());
        assert!(check_vault_path("secret/{namespace").is_err());
        check_vault_path("secret/ti-demo-all").unwrap();
        check_vault_path("kv/{namespace}").unwrap();
    }

    #[test]
    fn constraints_map_to_tsis_roles_and_paths() {
        let c = Constraints::parse("region,cluster-name,namespace,images").unwrap();
        assert_eq!(c.role(), "tsi-role-rcni");
        assert_eq!(
            c.secret_path(&meta(), "s").unwrap(),
            "secret/tsi-rcni/eu-de/EUCluster/trusted-identity/abc123/s"
        );
        assert_eq!(
            Constraints::parse("region")
                .unwrap()
                .secret_path(&meta(), "s")
                .unwrap(),
            "secret/tsi-r/eu-de/s"
        );
        assert!(Constraints::parse("images,region").is_err());
    }

    #[test]
    fn local_paths_stay_inside_the_output_directory() {
        assert_eq!(
            local_file("mysecrets/myubuntu-mysecret1", "mysecret1").unwrap(),
            PathBuf::from("mysecrets/myubuntu-mysecret1/mysecret1")
        );
        // TSI's mount point as a prefix, in both spellings, is stripped.
        for d in ["/tsi-secrets/mysecrets", "tsi-secrets/mysecrets"] {
            assert_eq!(local_file(d, "s").unwrap(), PathBuf::from("mysecrets/s"));
        }
        assert_eq!(local_file("/tsi-secrets", "s").unwrap(), PathBuf::from("s"));
        assert!(matches!(
            local_file("/etc", "s"),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(
            local_file("/tsi-secretsX/a", "s"),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(
            local_file("a/../../b", "s"),
            Err(PathError::Escapes(_))
        ));
        assert!(matches!(
            local_file("/tsi-secrets/../etc", "s"),
            Err(PathError::Escapes(_))
        ));
        for n in ["", "..", ".", "a/b"] {
            assert!(
                matches!(local_file("d", n), Err(PathError::BadName(_))),
                "{n}"
            );
        }
    }
}
