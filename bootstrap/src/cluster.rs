//! `cluster init`: the Vault side of one cluster, idempotent. It makes sure
//! the KV-v2 and PKI mounts and the root CA exist, enables the cluster's JWT
//! auth mount with its config, writes the role in full and the templated
//! policies, and reports what it created and what it found.

use std::collections::HashMap;

use reqwest::Method;
use serde_json::{Value, json};
use vaultrs::api::auth::oidc::requests::SetRoleRequest;
use vaultrs::api::sys::requests::{EnableEngineDataConfig, EnableEngineRequest};
use vaultrs::sys;

use crate::cli::KeysMode;
use crate::migrate::{self, MigrateError};
use crate::policy::{self, TI_DEMO_ALL, TI_DEMO_RI, TSI_CONSTRAINTS};
use crate::register::{self, RegisterError, Target};
use crate::vault::{Vault, VaultError, absent_as_none, strings};
use crate::{pki, policy::mapped_claims};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{path}/ is mounted as {found:?}, not {want}; choose another mount with {flag}")]
    WrongMountType {
        path: String,
        found: String,
        want: &'static str,
        flag: &'static str,
    },
    #[error(transparent)]
    Register(#[from] RegisterError),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// Everything `cluster init` sets up.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub cluster: String,
    pub region: String,
    pub mount: String,
    pub pki_mount: String,
    pub kv_mount: String,
    pub issuer: String,
    pub role: String,
    pub audience: String,
    pub token_ttl: String,
    pub root_cn: String,
    pub root_ttl: String,
    /// `None` keeps the mount's current key source.
    pub keys: Option<KeysMode>,
    /// Required with `KeysMode::Jwks`.
    pub jwks_url: Option<String>,
    /// PEM of the CA that verifies `jwks_url`.
    pub jwks_ca_pem: Option<String>,
    /// How long to wait for the JWKS to serve every registered key.
    pub jwks_wait: std::time::Duration,
    /// Also TSI's constraint roles `tsi-role-<kind>` and policies `tsi-<kind>`.
    pub tsi_compat: bool,
    /// Also a role `<role>-spiffe` for JWT-SVIDs of this SPIFFE trust domain.
    pub spiffe_trust_domain: Option<String>,
}

/// Who a role is for: JSS tokens, or JWT-SVIDs of a trust domain.
#[derive(Debug, Clone, Copy)]
enum Logins<'a> {
    Jss,
    /// `user_claim` is `jss-sub`, not `sub`: a SPIFFE ID is shared by every
    /// image of a service account, and Vault keys the entity alias (whose
    /// metadata templated policies read) by `user_claim`.
    Spiffe {
        trust_domain: &'a str,
    },
}

impl Logins<'_> {
    fn user_claim(self) -> &'static str {
        match self {
            Logins::Jss => "sub",
            Logins::Spiffe { .. } => "jss-sub",
        }
    }

    fn bound_claims(self, spec: &ClusterSpec) -> HashMap<String, String> {
        let mut b = HashMap::from([
            ("cluster-name".to_string(), spec.cluster.clone()),
            ("cluster-region".to_string(), spec.region.clone()),
        ]);
        if let Logins::Spiffe { trust_domain } = self {
            b.insert("sub".into(), format!("spiffe://{trust_domain}/*"));
        }
        b
    }
}

/// One line of the report: what, and whether it was created or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub what: String,
    pub outcome: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:<8} {}", self.outcome, self.what)?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

fn step(what: impl Into<String>, outcome: &'static str, detail: impl Into<String>) -> Step {
    Step {
        what: what.into(),
        outcome,
        detail: detail.into(),
    }
}

pub async fn init(
    v: &Vault,
    spec: &ClusterSpec,
    target: &Target,
) -> Result<Vec<Step>, ClusterError> {
    let mut steps = Vec::new();
    let mounts = v
        .call("list secret mounts", "sys/mounts", || {
            sys::mount::list(v.client())
        })
        .await?;

    // KV-v2: the lock documents and the secrets the policies grant.
    match mounts.get(&format!("{}/", spec.kv_mount)) {
        Some(m) => {
            let version = m.options.as_ref().and_then(|o| o.get("version"));
            if m.mount_type != "kv" || version.map(String::as_str) != Some("2") {
                return Err(ClusterError::WrongMountType {
                    path: spec.kv_mount.clone(),
                    found: format!("{} (version {version:?})", m.mount_type),
                    want: "kv version 2",
                    flag: "--kv-mount",
                });
            }
            steps.push(step(format!("kv-v2 mount {}/", spec.kv_mount), "found", ""));
        }
        None => {
            let opts = HashMap::from([("version".to_string(), "2".to_string())]);
            enable_engine(v, &spec.kv_mount, "kv", Some(opts), None).await?;
            steps.push(step(
                format!("kv-v2 mount {}/", spec.kv_mount),
                "created",
                "",
            ));
        }
    }

    // PKI mount and root.
    match mounts.get(&format!("{}/", spec.pki_mount)) {
        Some(m) if m.mount_type != "pki" => {
            return Err(ClusterError::WrongMountType {
                path: spec.pki_mount.clone(),
                found: m.mount_type.clone(),
                want: "pki",
                flag: "--pki-mount",
            });
        }
        Some(_) => steps.push(step(format!("pki mount {}/", spec.pki_mount), "found", "")),
        None => {
            // The mount's max TTL caps both the root and the node certificates.
            let cfg = EnableEngineDataConfig {
                max_lease_ttl: Some(spec.root_ttl.clone()),
                ..Default::default()
            };
            enable_engine(v, &spec.pki_mount, "pki", None, Some(cfg)).await?;
            steps.push(step(
                format!("pki mount {}/", spec.pki_mount),
                "created",
                "",
            ));
        }
    }
    match pki::root_ca(v, &spec.pki_mount).await? {
        Some(_) => steps.push(step(format!("root CA in {}/", spec.pki_mount), "found", "")),
        None => {
            pki::generate_root(v, &spec.pki_mount, &spec.root_cn, &spec.root_ttl).await?;
            steps.push(step(
                format!("root CA in {}/", spec.pki_mount),
                "created",
                format!("P-256, CN={}, ttl {}", spec.root_cn, spec.root_ttl),
            ));
        }
    }

    // The cluster's JWT auth mount.
    let accessor = ensure_auth_mount(v, spec, &mut steps).await?;

    // Config: issuer, algorithms and the key source, switched in one write.
    let fields = register::base_fields(&spec.issuer, &spec.role);
    let current = register::read_config(v, &spec.mount).await?;
    let (keys, source) = match (spec.keys, &spec.jwks_url) {
        (Some(KeysMode::Jwks), Some(url)) => {
            let ca = spec.jwks_ca_pem.as_deref();
            let k = migrate::jwks_keys(v, &target.registry, url, ca, spec.jwks_wait).await?;
            (k, format!("keys from {url}"))
        }
        // No --keys on a JWKS-mode mount: stay there, same URL and CA.
        (None, _) if current.as_ref().is_some_and(|c| c.jwks_url().is_some()) => {
            let c = current.as_ref();
            let field = |k| {
                c.and_then(|c| c.field(k))
                    .and_then(Value::as_str)
                    .map(String::from)
            };
            let url = field("jwks_url").unwrap_or_default();
            let ca_pem = field("jwks_ca_pem").filter(|p| !p.is_empty());
            let source = format!("keys from {url}");
            (register::Keys::Jwks { url, ca_pem }, source)
        }
        _ => (
            migrate::static_keys(v, &target.registry).await?,
            "static keys".to_string(),
        ),
    };
    let outcome = register::ensure_config(v, target, &fields, &keys).await?;
    steps.push(step(
        format!("auth/{}/config", spec.mount),
        outcome,
        format!("ES256, bound_issuer {}, {source}", spec.issuer),
    ));

    let main = [TI_DEMO_ALL.to_string(), TI_DEMO_RI.to_string()];
    steps.push(ensure_role(v, spec, &spec.role, &main, Logins::Jss).await?);
    if let Some(td) = &spec.spiffe_trust_domain {
        let role = format!("{}-spiffe", spec.role);
        let logins = Logins::Spiffe { trust_domain: td };
        steps.push(ensure_role(v, spec, &role, &main, logins).await?);
    }
    let mut policies = main.to_vec();
    if spec.tsi_compat {
        for c in TSI_CONSTRAINTS {
            let p = policy::tsi_policy(c);
            let one = std::slice::from_ref(&p);
            steps.push(ensure_role(v, spec, c.role(), one, Logins::Jss).await?);
            policies.push(p);
        }
    }

    // The discovery server's token reads the registry and nothing else.
    let paths = policy::Paths {
        mount: spec.mount.clone(),
        pki_mount: spec.pki_mount.clone(),
        kv_mount: spec.kv_mount.clone(),
        lock_path: String::new(),
    };
    let name = paths.discovery_policy_name();
    let text = paths.discovery();
    steps.push(ensure_policy(v, &name, |_| text.clone(), "reads the node registry").await?);

    // Templated policies, one block per cluster mount accessor.
    for name in &policies {
        let name = name.as_str();
        let merge = |cur: &str| policy::merge(cur, name, &spec.kv_mount, &accessor);
        steps.push(ensure_policy(v, name, merge, &format!("accessor {accessor}")).await?);
    }
    Ok(steps)
}

/// Writes policy `name` as `text(current)` unless it already is that.
async fn ensure_policy(
    v: &Vault,
    name: &str,
    text: impl Fn(&str) -> String,
    detail: &str,
) -> Result<Step, ClusterError> {
    let path = format!("sys/policy/{name}");
    let current = absent_as_none(
        v.call("read a policy", &path, || {
            sys::policy::read(v.client(), name)
        })
        .await,
    )?
    .map(|p| p.rules);
    let text = text(current.as_deref().unwrap_or(""));
    let outcome = match &current {
        Some(c) if c.trim() == text.trim() => "found",
        Some(_) => "updated",
        None => "created",
    };
    if outcome != "found" {
        v.call("write a policy", &path, || {
            sys::policy::set(v.client(), name, &text)
        })
        .await?;
    }
    Ok(step(format!("policy {name}"), outcome, detail))
}

/// The role `role` with `policies`, written in full unless Vault already
/// holds exactly that (a partial write would reset omitted fields).
async fn ensure_role(
    v: &Vault,
    spec: &ClusterSpec,
    role: &str,
    policies: &[String],
    logins: Logins<'_>,
) -> Result<Step, ClusterError> {
    let role_path = format!("auth/{}/role/{role}", spec.mount);
    let current = absent_as_none(
        v.raw(&format!("read {role_path}"), Method::GET, &role_path, None)
            .await,
    )?
    .flatten()
    .and_then(|mut b| b.get_mut("data").map(Value::take));
    let outcome = match &current {
        Some(cur) if role_matches(cur, spec, policies, logins) => "found",
        Some(_) => "updated",
        None => "created",
    };
    if outcome != "found" {
        write_role(v, spec, role, policies, logins, &role_path).await?;
    }
    Ok(step(
        role_path,
        outcome,
        format!(
            "jwt, user_claim {}, aud {}, pinned to cluster-name={} cluster-region={}{}, token_ttl {}, policies {}",
            logins.user_claim(),
            spec.audience,
            spec.cluster,
            spec.region,
            match logins {
                Logins::Jss => String::new(),
                Logins::Spiffe { trust_domain } => format!(" sub=spiffe://{trust_domain}/*"),
            },
            spec.token_ttl,
            policies.join(",")
        ),
    ))
}

async fn enable_engine(
    v: &Vault,
    path: &str,
    kind: &str,
    options: Option<HashMap<String, String>>,
    config: Option<EnableEngineDataConfig>,
) -> Result<(), VaultError> {
    let api_path = format!("sys/mounts/{path}");
    v.call("enable a secrets engine", &api_path, || async {
        let mut b = EnableEngineRequest::builder();
        if let Some(o) = &options {
            b.options(o.clone());
        }
        if let Some(c) = &config {
            b.config(c.clone());
        }
        sys::mount::enable(v.client(), path, kind, Some(&mut b)).await
    })
    .await
}

/// Enables the JWT auth mount if absent; returns its accessor.
async fn ensure_auth_mount(
    v: &Vault,
    spec: &ClusterSpec,
    steps: &mut Vec<Step>,
) -> Result<String, ClusterError> {
    let list = || {
        v.call("list auth mounts", "sys/auth", || {
            sys::auth::list(v.client())
        })
    };
    let key = format!("{}/", spec.mount);
    if let Some(m) = list().await?.get(&key) {
        if m.mount_type != "jwt" {
            return Err(ClusterError::WrongMountType {
                path: format!("auth/{}", spec.mount),
                found: m.mount_type.clone(),
                want: "jwt",
                flag: "--mount",
            });
        }
        steps.push(step(format!("auth/{}/ (jwt)", spec.mount), "found", ""));
        return Ok(m.accessor.clone());
    }
    let api_path = format!("sys/auth/{}", spec.mount);
    v.call("enable the JWT auth mount", &api_path, || {
        sys::auth::enable(v.client(), &spec.mount, "jwt", None)
    })
    .await?;
    let accessor = list()
        .await?
        .get(&key)
        .map(|m| m.accessor.clone())
        .ok_or_else(|| VaultError::Answer {
            what: "enable the JWT auth mount".into(),
            detail: format!("auth/{} is not listed after enabling it", spec.mount),
        })?;
    steps.push(step(format!("auth/{}/ (jwt)", spec.mount), "created", ""));
    Ok(accessor)
}

/// Leeway the role grants on `exp`, `nbf` and `iat`: tokens live 60 s, so
/// Vault's 60 s default would double their useful life.
const LEEWAY_SECONDS: u64 = 10;

async fn write_role(
    v: &Vault,
    spec: &ClusterSpec,
    role: &str,
    policies: &[String],
    logins: Logins<'_>,
    role_path: &str,
) -> Result<(), VaultError> {
    let claim_mappings: HashMap<String, String> = mapped_claims()
        .map(|c| (c.to_string(), c.to_string()))
        .collect();
    let bound_claims = logins.bound_claims(spec);
    v.call("write the role", role_path, || async {
        let mut b = SetRoleRequest::builder();
        b.role_type("jwt")
            .bound_audiences(vec![spec.audience.clone()])
            .bound_claims_type("glob")
            .bound_claims(bound_claims.clone())
            .claim_mappings(claim_mappings.clone())
            .token_ttl(spec.token_ttl.clone())
            .token_max_ttl(spec.token_ttl.clone())
            // 0 means "the default" (60 s) to Vault: name the small
            // allowance for node clock skew explicitly.
            .clock_skew_leeway(LEEWAY_SECONDS.to_string())
            .expiration_leeway(LEEWAY_SECONDS.to_string())
            .not_before_leeway(LEEWAY_SECONDS.to_string())
            .token_policies(policies.to_vec());
        vaultrs::auth::oidc::role::set(
            v.client(),
            &spec.mount,
            role,
            logins.user_claim(),
            vec![],
            Some(&mut b),
        )
        .await
    })
    .await
}

/// Whether the role read from Vault already is what `write_role` writes.
fn role_matches(cur: &Value, spec: &ClusterSpec, policies: &[String], logins: Logins<'_>) -> bool {
    let mappings: serde_json::Map<String, Value> =
        mapped_claims().map(|c| (c.to_string(), json!(c))).collect();
    let ttl = parse_ttl(&spec.token_ttl);
    let sorted = |v: Option<&Value>| {
        let mut a = strings(v);
        a.sort();
        a
    };
    cur.get("role_type") == Some(&json!("jwt"))
        && cur.get("user_claim") == Some(&json!(logins.user_claim()))
        && sorted(cur.get("bound_audiences")) == vec![spec.audience.clone()]
        && cur.get("bound_claims_type") == Some(&json!("glob"))
        && cur.get("bound_claims") == Some(&json!(logins.bound_claims(spec)))
        && cur.get("claim_mappings") == Some(&Value::Object(mappings))
        && ttl.is_some()
        && cur.get("token_ttl").and_then(Value::as_u64) == ttl
        && cur.get("token_max_ttl").and_then(Value::as_u64) == ttl
        && [
            "clock_skew_leeway",
            "expiration_leeway",
            "not_before_leeway",
        ]
        .iter()
        .all(|k| cur.get(*k).and_then(Value::as_u64) == Some(LEEWAY_SECONDS))
        && sorted(cur.get("token_policies")) == {
            let mut p = policies.to_vec();
            p.sort();
            p
        }
}

/// `90`, `90s`, `5m`, `2h` as seconds (the forms Vault reports back as numbers).
fn parse_ttl(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let n: u64 = num.parse().ok()?;
    match unit {
        's' => Some(n),
        'm' => n.checked_mul(60),
        'h' => n.checked_mul(3600),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse_like_vault_reports_them() {
        assert_eq!(parse_ttl("5m"), Some(300));
        assert_eq!(parse_ttl("90"), Some(90));
        assert_eq!(parse_ttl("2h"), Some(7200));
        assert_eq!(parse_ttl("1d"), None);
    }
}
