//! The node keys of a cluster in its JWT auth mount's
//! `jwt_validation_pubkeys`, changed only under the registration lock.
//!
//! Vault replaces the whole config on every write, so each write sends back
//! every field it read, with the keys as ONE comma-joined string (a JSON array
//! of ~1,000 keys is refused as too complex). The mount refuses a config
//! without keys, so an empty cluster holds one placeholder key that nobody
//! can sign for (see [`placeholder_key`]).

use jss::signer::NodePublicKey;
use p256::pkcs8::DecodePublicKey as _;
use reqwest::Method;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

use crate::lock::{self, LockError, LockSpec};
use crate::vault::{Vault, VaultError, absent_as_none};

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(
        "auth/{mount} has no config yet: run `jss-bootstrap cluster init` for this cluster first"
    )]
    NotInitialised { mount: String },
    #[error(
        "the registration lock on auth/{mount} ran out before the write; nothing was written, retry"
    )]
    LockLost { mount: String },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// The JWT mount of one cluster and the lock that guards its config.
#[derive(Debug, Clone)]
pub struct Target {
    pub mount: String,
    pub lock: LockSpec,
    /// Identifies this registrant in the lock document.
    pub holder: String,
    /// The cluster's node registry.
    pub registry: crate::registry::Registry,
}

/// The mount's config as read: every field, and the keys split out.
#[derive(Debug, Clone)]
pub struct MountConfig {
    fields: Map<String, Value>,
    pub keys: Vec<String>,
}

impl MountConfig {
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.fields.get(name)
    }

    /// Node keys, without the placeholder.
    pub fn node_keys(&self) -> Vec<&String> {
        let ph = placeholder_key();
        self.keys.iter().filter(|k| !same_key(k, &ph)).collect()
    }

    pub fn contains(&self, key: &NodePublicKey) -> bool {
        self.keys.iter().any(|k| same_key(k, key))
    }

    /// The JWKS URL when the mount validates tokens against one (JWKS mode).
    pub fn jwks_url(&self) -> Option<&str> {
        self.fields
            .get("jwks_url")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
    }
}

/// Where a mount's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keys {
    /// `jwt_validation_pubkeys`; these registry keys (SPKI PEM) are added.
    Static { registry: Vec<String> },
    /// `jwks_url` (and the CA that verifies it, PEM).
    Jwks { url: String, ca_pem: Option<String> },
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added { total: usize },
    AlreadyPresent { total: usize },
    Removed { total: usize },
    WasAbsent { total: usize },
}

/// Compares a PEM from the mount with a key (as points, not text).
fn same_key(pem: &str, key: &NodePublicKey) -> bool {
    p256::PublicKey::from_public_key_pem(pem.trim()).is_ok_and(|k| &k == key.key())
}

/// A P-256 point with no known private key: x is a hash of a fixed label
/// (try-and-increment), so nobody can sign for it. It keeps the mount's
/// config valid while the cluster has no node keys.
pub fn placeholder_key() -> NodePublicKey {
    for counter in 0u32.. {
        let mut h = Sha256::new();
        h.update(b"jss: placeholder for an empty jwt_validation_pubkeys; no private key exists");
        h.update(counter.to_be_bytes());
        let mut sec1 = [0u8; 33];
        sec1[0] = 0x02;
        sec1[1..].copy_from_slice(&h.finalize());
        if let Ok(k) = p256::PublicKey::from_sec1_bytes(&sec1) {
            return NodePublicKey::new(k);
        }
    }
    unreachable!("about half of all x coordinates are on the curve")
}

/// Reads `auth/<mount>/config`; `None` if it was never written.
pub async fn read_config(v: &Vault, mount: &str) -> Result<Option<MountConfig>, VaultError> {
    let path = format!("auth/{mount}/config");
    let what = format!("read {path}");
    let body = absent_as_none(v.raw(&what, Method::GET, &path, None).await)?.flatten();
    let Some(Value::Object(fields)) = body.and_then(|mut b| b.get_mut("data").map(Value::take))
    else {
        return Ok(None);
    };
    let keys = match fields.get("jwt_validation_pubkeys") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        Some(Value::String(s)) => split_pems(s),
        _ => Vec::new(),
    };
    Ok(Some(MountConfig { fields, keys }))
}

/// Reads the config of a mount `cluster init` has set up.
pub async fn read_initialised(v: &Vault, mount: &str) -> Result<MountConfig, RegisterError> {
    read_config(v, mount)
        .await?
        .ok_or_else(|| RegisterError::NotInitialised {
            mount: mount.to_string(),
        })
}

fn split_pems(s: &str) -> Vec<String> {
    s.split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Writes the config: the fields read (or given), the keys as one string.
pub async fn write_config(
    v: &Vault,
    mount: &str,
    fields: &Map<String, Value>,
    keys: &[String],
) -> Result<(), VaultError> {
    let mut body: Map<String, Value> = fields
        .iter()
        .filter(|(_, val)| match val {
            Value::Null => false,
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            _ => true,
        })
        .map(|(k, val)| (k.clone(), val.clone()))
        .collect();
    // The mount takes exactly one key source: a JWKS URL or the key list.
    if body.contains_key("jwks_url") {
        body.remove("jwt_validation_pubkeys");
    } else {
        let joined = if keys.is_empty() {
            placeholder_key().spki_pem()
        } else {
            keys.iter().map(|k| k.trim()).collect::<Vec<_>>().join(",")
        };
        body.insert("jwt_validation_pubkeys".into(), Value::String(joined));
    }
    let path = format!("auth/{mount}/config");
    v.raw(
        &format!("write {path}"),
        Method::POST,
        &path,
        Some(&Value::Object(body)),
    )
    .await?;
    Ok(())
}

/// The fields `cluster init` sets on a new or existing config.
pub fn base_fields(issuer: &str, default_role: &str) -> Map<String, Value> {
    let v = json!({
        "bound_issuer": issuer,
        "jwt_supported_algs": "ES256",
        "default_role": default_role,
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Runs `f` on the current config under the lock; writes what it returns.
async fn modify<F>(v: &Vault, t: &Target, f: F) -> Result<Change, RegisterError>
where
    F: FnOnce(&MountConfig) -> (Option<Vec<String>>, Change),
{
    let held = lock::acquire(v, &t.lock, &t.holder).await?;
    let result = async {
        let cfg = read_initialised(v, &t.mount).await?;
        let (new_keys, change) = f(&cfg);
        if let Some(keys) = new_keys {
            if !held.still_ours() {
                return Err(RegisterError::LockLost {
                    mount: t.mount.clone(),
                });
            }
            write_config(v, &t.mount, &cfg.fields, &keys).await?;
        }
        Ok(change)
    }
    .await;
    // Release even after a failure; a failed release only delays others.
    let released = lock::release(v, &t.lock, held).await;
    let change = result?;
    released?;
    Ok(change)
}

/// Adds `key` to the mount (idempotent), dropping the placeholder.
pub async fn add(v: &Vault, t: &Target, key: &NodePublicKey) -> Result<Change, RegisterError> {
    modify(v, t, |cfg| {
        let mut keys: Vec<String> = cfg.node_keys().into_iter().cloned().collect();
        if cfg.contains(key) {
            (None, Change::AlreadyPresent { total: keys.len() })
        } else {
            keys.push(key.spki_pem().trim().to_string());
            let total = keys.len();
            (Some(keys), Change::Added { total })
        }
    })
    .await
}

/// Removes `key` from the mount (idempotent).
pub async fn remove(v: &Vault, t: &Target, key: &NodePublicKey) -> Result<Change, RegisterError> {
    modify(v, t, |cfg| {
        let keys: Vec<String> = cfg
            .node_keys()
            .into_iter()
            .filter(|k| !same_key(k, key))
            .cloned()
            .collect();
        if cfg.contains(key) {
            let total = keys.len();
            (Some(keys), Change::Removed { total })
        } else {
            (None, Change::WasAbsent { total: keys.len() })
        }
    })
    .await
}

/// Rewrites the config unchanged (under the lock): OpenBao then drops the
/// key set it fetched from `jwks_url` and fetches it again at the next login.
pub async fn rewrite(v: &Vault, t: &Target) -> Result<(), RegisterError> {
    modify(v, t, |cfg| {
        let keys: Vec<String> = cfg.node_keys().into_iter().cloned().collect();
        let total = keys.len();
        (Some(keys), Change::AlreadyPresent { total })
    })
    .await
    .map(|_| ())
}

/// The fields of `cfg` with `fields` and the key source `keys` applied, the
/// keys to write, and whether that differs from `cfg`.
fn apply(
    cfg: &MountConfig,
    fields: &Map<String, Value>,
    keys: &Keys,
) -> (Map<String, Value>, Vec<String>, bool) {
    let mut merged = cfg.fields.clone();
    merged.extend(fields.clone());
    let mut node_keys: Vec<String> = cfg.node_keys().into_iter().cloned().collect();
    let mut changed = !fields
        .iter()
        .all(|(k, want)| same_field(cfg.field(k), want));
    match keys {
        Keys::Jwks { url, ca_pem } => {
            changed |= cfg.jwks_url() != Some(url.as_str());
            merged.insert("jwks_url".into(), Value::String(url.clone()));
            let ca = ca_pem.clone().unwrap_or_default();
            changed |= cfg
                .field("jwks_ca_pem")
                .and_then(Value::as_str)
                .unwrap_or("")
                != ca;
            merged.insert("jwks_ca_pem".into(), Value::String(ca));
            merged.remove("jwt_validation_pubkeys");
        }
        Keys::Static { registry } => {
            changed |= cfg.jwks_url().is_some();
            merged.remove("jwks_url");
            merged.remove("jwks_ca_pem");
            for pem in registry {
                let present = p256::PublicKey::from_public_key_pem(pem.trim())
                    .is_ok_and(|k| cfg.contains(&NodePublicKey::new(k)));
                if !present {
                    node_keys.push(pem.trim().to_string());
                    changed = true;
                }
            }
        }
    }
    (merged, node_keys, changed)
}

/// A field as Vault reports it (lists as arrays) against the string written.
fn same_field(got: Option<&Value>, want: &Value) -> bool {
    match got {
        Some(Value::Array(a)) => {
            let joined: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
            Some(joined.join(",").as_str()) == want.as_str()
        }
        got => got == Some(want),
    }
}

/// Creates the config or brings `fields` and the key source up to date, in
/// one write (so no valid token is refused by a switch), under the lock.
/// Returns "created", "updated" or "found".
pub async fn ensure_config(
    v: &Vault,
    t: &Target,
    fields: &Map<String, Value>,
    keys: &Keys,
) -> Result<&'static str, RegisterError> {
    let held = lock::acquire(v, &t.lock, &t.holder).await?;
    let result = async {
        let cfg = read_config(v, &t.mount).await?;
        let (outcome, cfg) = match cfg {
            None => (
                "created",
                MountConfig {
                    fields: Map::new(),
                    keys: Vec::new(),
                },
            ),
            Some(cfg) => ("updated", cfg),
        };
        let (merged, node_keys, changed) = apply(&cfg, fields, keys);
        if outcome == "updated" && !changed {
            return Ok("found");
        }
        if !held.still_ours() {
            return Err(RegisterError::LockLost {
                mount: t.mount.clone(),
            });
        }
        write_config(v, &t.mount, &merged, &node_keys).await?;
        Ok::<_, RegisterError>(outcome)
    }
    .await;
    let released = lock::release(v, &t.lock, held).await;
    let outcome = result?;
    released?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_is_stable_and_recognised() {
        let a = placeholder_key();
        assert_eq!(a, placeholder_key());
        let cfg = MountConfig {
            fields: Map::new(),
            keys: vec![a.spki_pem()],
        };
        assert!(cfg.contains(&a));
        assert!(cfg.node_keys().is_empty());
    }

    #[test]
    fn switching_the_key_source_changes_exactly_the_key_fields() {
        let key = NodePublicKey::new(p256::SecretKey::random(&mut rand_core::OsRng).public_key());
        let base = base_fields("jss://c", "jss");
        let mut fields = base.clone();
        fields.insert("jwt_validation_pubkeys".into(), json!([key.spki_pem()]));
        let static_cfg = MountConfig {
            fields,
            keys: vec![key.spki_pem()],
        };
        let jwks = Keys::Jwks {
            url: "https://d/keys".into(),
            ca_pem: Some("CA".into()),
        };
        let (merged, _, changed) = apply(&static_cfg, &base, &jwks);
        assert!(changed);
        assert_eq!(merged["jwks_url"], "https://d/keys");
        assert_eq!(merged["jwks_ca_pem"], "CA");
        assert!(!merged.contains_key("jwt_validation_pubkeys"));

        let jwks_cfg = MountConfig {
            fields: merged,
            keys: Vec::new(),
        };
        assert!(
            !apply(&jwks_cfg, &base, &jwks).2,
            "same URL and CA: nothing to write"
        );
        let back = Keys::Static {
            registry: vec![key.spki_pem()],
        };
        let (merged, keys, changed) = apply(&jwks_cfg, &base, &back);
        assert!(changed);
        assert!(!merged.contains_key("jwks_url") && !merged.contains_key("jwks_ca_pem"));
        assert_eq!(keys, vec![key.spki_pem().trim().to_string()]);
        // Static with every registry key present: nothing to write.
        assert!(!apply(&static_cfg, &base, &back).2);
    }

    #[test]
    fn comma_joined_keys_split_back() {
        let k1 = placeholder_key().spki_pem();
        let joined = format!("{},{}", k1.trim(), k1.trim());
        assert_eq!(split_pems(&joined).len(), 2);
    }
}
