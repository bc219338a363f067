//! The key source `cluster init --keys` asks for, made safe to switch to on
//! a live cluster: the new source must already hold every key the old one
//! holds, so the one config write that switches refuses no valid token.

use std::time::Duration;

use crate::jwks::{self, JwksError};
use crate::register::{self, Keys};
use crate::registry::{Registry, RegistryError};
use crate::vault::{Vault, VaultError};

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "auth/{mount} holds {} node key(s) that are not in the registry (kids {kids}): their tokens would be refused in JWKS mode. Run `jss-bootstrap node register` on those nodes (it writes the record) or `node deregister --public-key` them, then switch again",
        kids.split(", ").count()
    )]
    Unregistered { mount: String, kids: String },
    #[error(transparent)]
    Jwks(#[from] JwksError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// Static keys: the registry's keys join whatever the mount holds.
pub async fn static_keys(v: &Vault, reg: &Registry) -> Result<Keys, MigrateError> {
    let registry = reg
        .all(v)
        .await?
        .into_values()
        .flat_map(|r| r.public_keys())
        .map(|k| k.spki_pem())
        .collect();
    Ok(Keys::Static { registry })
}

/// JWKS mode at `url`: checks that every key of a static mount is in the
/// registry, then waits until the JWKS serves every registry kid.
pub async fn jwks_keys(
    v: &Vault,
    reg: &Registry,
    url: &str,
    ca_pem: Option<&str>,
    wait: Duration,
) -> Result<Keys, MigrateError> {
    let records = reg.all(v).await?;
    let kids: std::collections::BTreeSet<String> = records
        .values()
        .flat_map(|r| r.public_keys())
        .map(|k| k.kid)
        .collect();
    if let Some(cfg) = register::read_config(v, &reg.mount).await?
        && cfg.jwks_url().is_none()
    {
        let missing: Vec<String> = cfg
            .node_keys()
            .into_iter()
            .filter_map(|pem| {
                use p256::pkcs8::DecodePublicKey as _;
                p256::PublicKey::from_public_key_pem(pem.trim()).ok()
            })
            .map(|k| jss::signer::NodePublicKey::new(k).kid)
            .filter(|kid| !kids.contains(kid))
            .collect();
        if !missing.is_empty() {
            return Err(MigrateError::Unregistered {
                mount: reg.mount.clone(),
                kids: missing.join(", "),
            });
        }
    }
    let goal = format!("serve all {} registered kids", kids.len());
    jwks::wait_until(url, ca_pem, &goal, wait, |served| kids.is_subset(served)).await?;
    Ok(Keys::Jwks {
        url: url.into(),
        ca_pem: ca_pem.map(String::from),
    })
}
