//! `node deregister` and `node status`: a node's membership in the cluster,
//! read from and removed from the registry and the mount (README,
//! "Registering nodes with Vault/OpenBao").

use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use jss::chain::Chain;
use jss::signer::{self, KeyPolicy, NodePublicKey, SignerConfig};
use p256::pkcs8::DecodePublicKey as _;

use crate::jwks;
use crate::node::{NodeError, open_key, removal_to_string, report_change, say, unix_to_string};
use crate::register::{self, Target};
use crate::registry::{NodeRecord, RegistryError};
use crate::vault::Vault;

/// Which node `node deregister` removes.
#[derive(Debug, Clone)]
pub enum Which {
    Node(String),
    Kid(String),
    Key(NodePublicKey),
}

/// The key to deregister: from a PEM file, or the node key in the state dir.
pub fn key_for_deregister(
    public_key: Option<&Path>,
    key_cfg: &SignerConfig,
    out: &mut dyn Write,
) -> Result<NodePublicKey, NodeError> {
    match public_key {
        Some(p) => {
            let pem = std::fs::read_to_string(p).map_err(|source| NodeError::Io {
                what: "read",
                path: p.to_path_buf(),
                source,
            })?;
            p256::PublicKey::from_public_key_pem(pem.trim())
                .map(NodePublicKey::new)
                .map_err(|e| NodeError::BadPublicKey {
                    path: p.to_path_buf(),
                    reason: e.to_string(),
                })
        }
        None => Ok(open_key(key_cfg, KeyPolicy::MustExist, out)?
            .public_key()
            .clone()),
    }
}

/// `node deregister`: deletes the registry record, then takes the key out
/// of the mount (static mode), or (JWKS mode) waits until the JWKS no longer
/// serves it and rewrites the mount config, which drops OpenBao's cached
/// key set: the node's tokens are refused from then on.
pub async fn deregister(
    v: &Vault,
    target: &Target,
    which: Which,
    wait: std::time::Duration,
    out: &mut dyn Write,
) -> Result<(), NodeError> {
    let reg = &target.registry;
    let (rec, given) = match which {
        Which::Node(n) => match reg.get(v, &n).await? {
            Some((_, r)) => (Some(r), None),
            None => {
                return Err(NodeError::UnknownNode {
                    node: n,
                    mount: target.mount.clone(),
                });
            }
        },
        Which::Kid(kid) => (Some(reg.by_kid(v, &kid).await?), None),
        Which::Key(k) => match reg.by_kid(v, &k.kid).await {
            Ok(r) => (Some(r), Some(k)),
            Err(RegistryError::UnknownKid { .. }) => (None, Some(k)),
            Err(e) => return Err(e.into()),
        },
    };
    let key = given.or_else(|| rec.as_ref().and_then(NodeRecord::public_key));
    if let Some(r) = &rec {
        reg.delete(v, &r.node).await?;
        say!(out, "removed  registry record {} (kid {})", r.node, r.kid);
    }
    let cfg = register::read_initialised(v, &target.mount).await?;
    if let Some(url) = cfg.jwks_url() {
        let Some(kid) = key.map(|k| k.kid).or(rec.map(|r| r.kid)) else {
            return Ok(());
        };
        let ca = cfg.field("jwks_ca_pem").and_then(serde_json::Value::as_str);
        let goal = format!("drop kid {kid}");
        jwks::wait_until(url, ca, &goal, wait, |kids| !kids.contains(&kid)).await?;
        say!(out, "gone     kid {kid} from {url}");
        register::rewrite(v, target).await?;
        say!(
            out,
            "rewrote  auth/{}/config: OpenBao fetches the JWKS again at the next login",
            target.mount
        );
    } else if let Some(key) = key {
        let change = register::remove(v, target, &key).await?;
        report_change(out, &target.mount, &key, change);
    }
    Ok(())
}

/// `node status`: the local facts, then Vault's view if a connection is given.
pub async fn status(
    key_cfg: &SignerConfig,
    vault: Option<(&Vault, &Target)>,
    out: &mut dyn Write,
) -> Result<(), NodeError> {
    let (s, _) = signer::open(key_cfg, KeyPolicy::MustExist)?;
    say!(out, "backend:      {}", s.backend());
    say!(out, "kid:          {}", s.kid());
    match s.binding() {
        Some(b) => {
            say!(
                out,
                "pcrs:         {} (policy digest {})",
                b.pcrs,
                b.policy_digest
            );
        }
        None => {
            say!(out, "pcrs:         none");
        }
    }
    if let Some(r) = jss::state::rotation::read(&key_cfg.state_dir)? {
        say!(
            out,
            "rotation:     from kid {} to {} ({}): `jss-bootstrap node register` completes it",
            r.old_kid,
            r.new_kid.as_deref().unwrap_or("(not created yet)"),
            removal_to_string(r.remove_after)
        );
    }
    match Chain::load(&crate::node::key_dir(key_cfg)?, s.public_key()) {
        Ok(c) => {
            let left = c.remaining_fraction(SystemTime::now()) * 100.0;
            say!(out, "certificate:  {}", c.subject());
            say!(
                out,
                "valid:        {} to {} ({left:.0}% left)",
                unix_to_string(c.not_before_unix()),
                unix_to_string(c.not_after_unix())
            );
        }
        Err(e) => {
            say!(out, "certificate:  none ({e})");
        }
    }
    let Some((v, target)) = vault else {
        say!(
            out,
            "registered:   unknown (pass --cluster and a Vault token to check)"
        );
        return Ok(());
    };
    let mount = &target.mount;
    let cfg = register::read_initialised(v, mount).await?;
    let rec = match target.registry.by_kid(v, s.kid()).await {
        Ok(r) => Some(r),
        Err(RegistryError::UnknownKid { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let registered = match cfg.jwks_url() {
        Some(_) => rec.is_some(),
        None => cfg.contains(s.public_key()),
    };
    say!(
        out,
        "registered:   {} (auth/{mount}, {})",
        if registered { "yes" } else { "no" },
        cfg.jwks_url()
            .map_or("static keys".to_string(), |u| format!("JWKS at {u}"))
    );
    match rec {
        Some(r) => {
            say!(
                out,
                "registry:     {} since {}, renewed {}, pcrs {}{}",
                r.node,
                unix_to_string(r.registered),
                unix_to_string(r.renewed),
                r.pcrs.map_or("none".to_string(), |p| p.to_string()),
                r.policy_digest
                    .map(|d| format!(" (policy digest {d})"))
                    .unwrap_or_default()
            );
            for k in &r.retiring {
                say!(
                    out,
                    "retiring:     kid {} since {} ({})",
                    k.kid,
                    unix_to_string(k.since),
                    removal_to_string(k.remove_after)
                );
            }
        }
        None => {
            say!(
                out,
                "registry:     no record (run `node register` to write it)"
            );
        }
    }
    Ok(())
}
