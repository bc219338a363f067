//! The node registry: one KV-v2 record per node at
//! `<kv>/data/jss/registry/<auth mount>/<node>`, the source of the cluster's
//! JWKS (README, "Scale: JWKS mode").
//!
//! Each record is written with check-and-set on its own version, so
//! registrations of different nodes never wait on each other; two writers of
//! the same node race on one version and the loser re-reads.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jss::signer::{Jwk, NodePublicKey, PcrBinding, PcrSelection};
use serde::{Deserialize, Serialize};
use vaultrs::api::kv2::requests::SetSecretRequestOptions;
use vaultrs::kv2;

use crate::vault::{Vault, VaultError, absent_as_none};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "the registry record {path} changed under {attempts} writes in a row; another run is registering node {node} at the same time: let it finish"
    )]
    Contended {
        path: String,
        node: String,
        attempts: u32,
    },
    #[error("no node with kid {kid} in the registry of auth/{mount}")]
    UnknownKid { kid: String, mount: String },
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// One node as the registry holds it (a KV-v2 secret's `data`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node: String,
    /// RFC 7638 thumbprint of `jwk`.
    pub kid: String,
    /// The public key as served in the JWKS (ES256, use sig).
    pub jwk: Jwk,
    /// The node CA certificate (PEM, leaf of the node's chain); empty when
    /// the key was registered without one.
    #[serde(default)]
    pub certificate: String,
    /// Unix seconds: first registration of this key.
    pub registered: u64,
    /// Unix seconds: last registration or renewal.
    pub renewed: u64,
    /// Unix seconds: the certificate's notAfter (0 = unknown).
    #[serde(default)]
    pub not_after: u64,
    /// PCRs (SHA-256 bank) the TPM key is bound to; absent when unbound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcrs: Option<PcrSelection>,
    /// TPM2_PolicyPCR digest (lowercase hex); absent when unbound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_digest: Option<String>,
    /// Keys this node rotated away from whose tokens may still be alive:
    /// served in the JWKS (and kept in a static mount) until the rotation
    /// removes them (README, "Rotating the node key").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retiring: Vec<RetiringKey>,
}

/// A node's previous key, still registered until its tokens have expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiringKey {
    pub kid: String,
    pub jwk: Jwk,
    /// Unix seconds: when the node registered its next key.
    pub since: u64,
    /// Unix seconds: when the rotation may remove it (its last tokens have
    /// expired); absent until the daemon's switch to the next key is
    /// confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_after: Option<u64>,
}

impl RetiringKey {
    /// The key, if the JWK is a P-256 point whose thumbprint is `kid`.
    pub fn public_key(&self) -> Option<NodePublicKey> {
        key_of(&self.jwk, &self.kid)
    }
}

fn key_of(jwk: &Jwk, kid: &str) -> Option<NodePublicKey> {
    let x = B64.decode(&jwk.x).ok()?;
    let y = B64.decode(&jwk.y).ok()?;
    let k = NodePublicKey::from_coordinates(&x, &y).ok()?;
    (k.kid == kid && &k.jwk() == jwk).then_some(k)
}

impl NodeRecord {
    /// A record for `key` on `node`, registered now.
    pub fn new(
        node: &str,
        key: &NodePublicKey,
        certificate: String,
        not_after: u64,
        binding: Option<PcrBinding>,
    ) -> Self {
        let now = now_unix();
        let (pcrs, policy_digest) = match binding {
            Some(b) => (Some(b.pcrs), Some(b.policy_digest)),
            None => (None, None),
        };
        Self {
            node: node.into(),
            kid: key.kid.clone(),
            jwk: key.jwk(),
            certificate,
            registered: now,
            renewed: now,
            not_after,
            pcrs,
            policy_digest,
            retiring: Vec::new(),
        }
    }

    /// Equal but for the registration times.
    pub fn same_as(&self, other: &NodeRecord) -> bool {
        let times = |r: &NodeRecord| NodeRecord {
            registered: 0,
            renewed: 0,
            ..r.clone()
        };
        times(self) == times(other)
    }

    /// The key, if the JWK is a P-256 point whose thumbprint is `kid`.
    pub fn public_key(&self) -> Option<NodePublicKey> {
        key_of(&self.jwk, &self.kid)
    }

    /// The valid keys of the record: its key, then the retiring ones.
    pub fn public_keys(&self) -> Vec<NodePublicKey> {
        self.public_key()
            .into_iter()
            .chain(self.retiring.iter().filter_map(RetiringKey::public_key))
            .collect()
    }

    /// This record's key as a retiring key of the node's next one.
    pub fn retire(&self, since: u64) -> RetiringKey {
        RetiringKey {
            kid: self.kid.clone(),
            jwk: self.jwk.clone(),
            since,
            remove_after: None,
        }
    }
}

/// Check-and-set writes of one record before giving up as contended.
const ATTEMPTS: u32 = 5;

/// Where one cluster's records live.
#[derive(Debug, Clone)]
pub struct Registry {
    pub kv_mount: String,
    /// The cluster's JWT auth mount (the records' folder).
    pub mount: String,
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// The same key, certificate and binding were there: nothing written.
    Found,
    Created,
    Renewed,
    Replaced,
}

impl Registry {
    pub fn new(kv_mount: &str, mount: &str) -> Self {
        Self {
            kv_mount: kv_mount.into(),
            mount: mount.into(),
        }
    }

    /// The folder under the KV mount (no `data/`).
    pub fn folder(&self) -> String {
        format!("jss/registry/{}", self.mount)
    }

    fn rel(&self, node: &str) -> String {
        format!("{}/{node}", self.folder())
    }

    fn full(&self, node: &str) -> String {
        format!("{}/data/{}", self.kv_mount, self.rel(node))
    }

    /// Reads a node's record and its version; `None` if absent or deleted.
    pub async fn get(
        &self,
        v: &Vault,
        node: &str,
    ) -> Result<Option<(u64, NodeRecord)>, VaultError> {
        let rel = self.rel(node);
        let full = self.full(node);
        let meta = absent_as_none(
            v.call("read a registry record's metadata", &full, || {
                kv2::read_metadata(v.client(), &self.kv_mount, &rel)
            })
            .await,
        )?;
        let version = match meta {
            Some(m) if m.current_version > 0 => m.current_version,
            _ => return Ok(None),
        };
        let rec = absent_as_none(
            v.call("read a registry record", &full, || {
                kv2::read_version::<NodeRecord>(v.client(), &self.kv_mount, &rel, version)
            })
            .await,
        )?;
        Ok(rec.map(|r| (version, r)))
    }

    /// Writes `rec` for its node with check-and-set; keeps `registered`
    /// when the node keeps its key.
    pub async fn put(&self, v: &Vault, mut rec: NodeRecord) -> Result<Put, RegistryError> {
        let full = self.full(&rec.node);
        for _ in 0..ATTEMPTS {
            let current = self.get(v, &rec.node).await?;
            let (cas, outcome) = match &current {
                None => (0, Put::Created),
                Some((_, old))
                    if old.kid == rec.kid && rec.retiring.is_empty() && {
                        // The same key keeps the keys it is retiring.
                        rec.retiring.clone_from(&old.retiring);
                        old.same_as(&rec)
                    } =>
                {
                    return Ok(Put::Found);
                }
                Some((_, old)) if old.same_as(&rec) => return Ok(Put::Found),
                Some((ver, old)) if old.kid == rec.kid => {
                    rec.registered = old.registered;
                    (*ver, Put::Renewed)
                }
                Some((ver, _)) => (*ver, Put::Replaced),
            };
            if self.write_at(v, &rec, cas).await? {
                return Ok(outcome);
            }
        }
        Err(RegistryError::Contended {
            path: full,
            node: rec.node.clone(),
            attempts: ATTEMPTS,
        })
    }

    /// Takes `kid` out of `node`'s retiring keys (check-and-set); false if
    /// it was not there.
    pub async fn drop_retiring(
        &self,
        v: &Vault,
        node: &str,
        kid: &str,
    ) -> Result<bool, RegistryError> {
        self.edit_retiring(v, node, |keys| {
            let before = keys.len();
            keys.retain(|r| r.kid != kid);
            keys.len() != before
        })
        .await
    }

    /// Records when `node`'s retiring key `kid` may be removed (unix
    /// seconds; check-and-set), so `cluster status` can show it; false if
    /// the key is not retiring or already has that time.
    pub async fn schedule_removal(
        &self,
        v: &Vault,
        node: &str,
        kid: &str,
        remove_after: u64,
    ) -> Result<bool, RegistryError> {
        self.edit_retiring(v, node, |keys| {
            match keys.iter_mut().find(|r| r.kid == kid) {
                Some(r) if r.remove_after != Some(remove_after) => {
                    r.remove_after = Some(remove_after);
                    true
                }
                _ => false,
            }
        })
        .await
    }

    /// Applies `change` to `node`'s retiring keys and writes the record
    /// with check-and-set when it says it changed them; false when it did
    /// not (or there is no record).
    async fn edit_retiring(
        &self,
        v: &Vault,
        node: &str,
        change: impl Fn(&mut Vec<RetiringKey>) -> bool,
    ) -> Result<bool, RegistryError> {
        for _ in 0..ATTEMPTS {
            let Some((ver, mut rec)) = self.get(v, node).await? else {
                return Ok(false);
            };
            if !change(&mut rec.retiring) {
                return Ok(false);
            }
            if self.write_at(v, &rec, ver).await? {
                return Ok(true);
            }
        }
        Err(RegistryError::Contended {
            path: self.full(node),
            node: node.into(),
            attempts: ATTEMPTS,
        })
    }

    /// Writes `rec` if its node's record is still at `version` (0: absent);
    /// false when another writer won that version (read again).
    async fn write_at(
        &self,
        v: &Vault,
        rec: &NodeRecord,
        version: u64,
    ) -> Result<bool, RegistryError> {
        let (rel, full) = (self.rel(&rec.node), self.full(&rec.node));
        let cas = u32::try_from(version).map_err(|_| VaultError::Answer {
            what: "write a registry record".into(),
            detail: format!("version {version} of {full} is out of range"),
        })?;
        let r = v
            .call("write a registry record", &full, || {
                kv2::set_with_options(
                    v.client(),
                    &self.kv_mount,
                    &rel,
                    rec,
                    SetSecretRequestOptions { cas },
                )
            })
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(VaultError::Api { code: 400, .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes a node's record with all its versions; false if it was absent.
    pub async fn delete(&self, v: &Vault, node: &str) -> Result<bool, VaultError> {
        if self.get(v, node).await?.is_none() {
            return Ok(false);
        }
        let rel = self.rel(node);
        let path = format!("{}/metadata/{rel}", self.kv_mount);
        absent_as_none(
            v.call("delete a registry record", &path, || {
                kv2::delete_metadata(v.client(), &self.kv_mount, &rel)
            })
            .await,
        )?;
        Ok(true)
    }

    /// Node names with a record.
    pub async fn names(&self, v: &Vault) -> Result<Vec<String>, VaultError> {
        let folder = self.folder();
        let path = format!("{}/metadata/{folder}", self.kv_mount);
        let names = absent_as_none(
            v.call("list the node registry", &path, || {
                kv2::list(v.client(), &self.kv_mount, &folder)
            })
            .await,
        )?
        .unwrap_or_default();
        Ok(names.into_iter().filter(|n| !n.ends_with('/')).collect())
    }

    /// Every record, by node name (one read per node).
    pub async fn all(&self, v: &Vault) -> Result<BTreeMap<String, NodeRecord>, VaultError> {
        let mut out = BTreeMap::new();
        for name in self.names(v).await? {
            // A record deleted between the list and the read is simply gone.
            if let Some((_, rec)) = self.get(v, &name).await? {
                out.insert(name, rec);
            }
        }
        Ok(out)
    }

    /// Brings `cache` (records by node name) up to date: drops nodes no
    /// longer listed and reads the new ones, or every one when `full`. One
    /// list plus one read per new node, so a large registry costs Vault
    /// little between full reads; a record rewritten under the same name (a
    /// node re-registered with a new key) is seen at the next full read.
    pub async fn sync(
        &self,
        v: &Vault,
        cache: &mut BTreeMap<String, NodeRecord>,
        full: bool,
    ) -> Result<(), VaultError> {
        let names = self.names(v).await?;
        let listed: std::collections::BTreeSet<&String> = names.iter().collect();
        cache.retain(|n, _| listed.contains(n));
        for name in &names {
            if !full && cache.contains_key(name) {
                continue;
            }
            match self.get(v, name).await? {
                Some((_, rec)) => cache.insert(name.clone(), rec),
                None => cache.remove(name),
            };
        }
        Ok(())
    }

    /// The record holding `kid`.
    pub async fn by_kid(&self, v: &Vault, kid: &str) -> Result<NodeRecord, RegistryError> {
        self.all(v)
            .await?
            .into_values()
            .find(|r| r.kid == kid)
            .ok_or_else(|| RegistryError::UnknownKid {
                kid: kid.into(),
                mount: self.mount.clone(),
            })
    }
}

/// The JWKS document (RFC 7517 `{"keys": [...]}`) of `records`: valid keys
/// only, sorted by kid, so equal registries give byte-equal documents.
pub fn jwks(records: impl IntoIterator<Item = NodeRecord>) -> serde_json::Value {
    let mut keys: Vec<Jwk> = records
        .into_iter()
        .flat_map(|r| {
            if r.public_key().is_none() {
                tracing::warn!(node = %r.node, kid = %r.kid, "registry record with an invalid JWK left out of the JWKS");
            }
            r.public_keys().into_iter().map(|k| k.jwk())
        })
        .collect();
    keys.sort_by(|a, b| a.kid.cmp(&b.kid));
    keys.dedup_by(|a, b| a.kid == b.kid);
    serde_json::json!({ "keys": keys })
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
