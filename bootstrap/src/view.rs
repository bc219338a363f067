//! `cluster status`: the mount's key source and the registry, one line per
//! node, with certificates that expire soon flagged, and a line per key a
//! rotation keeps registered until its removal.

use std::io::Write;
use std::time::Duration;

use crate::node::{removal_to_string, unix_to_string};
use crate::register::{self, RegisterError, Target};
use crate::registry::now_unix;
use crate::vault::VaultError;

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error(transparent)]
    Register(#[from] RegisterError),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// Writes the report to `out`; `within` is the "expiring soon" horizon.
pub async fn status(
    v: &crate::vault::Vault,
    target: &Target,
    within: Duration,
    out: &mut dyn Write,
) -> Result<(), ViewError> {
    let mount = &target.mount;
    let cfg = register::read_initialised(v, mount).await?;
    let records = target.registry.all(v).await?;
    let _ = match cfg.jwks_url() {
        Some(url) => writeln!(out, "keys:      jwks ({url})"),
        None => writeln!(
            out,
            "keys:      static ({} keys in auth/{mount}/config)",
            cfg.node_keys().len()
        ),
    };
    let now = now_unix();
    let soon = now + within.as_secs();
    let expiring = records
        .values()
        .filter(|r| r.not_after != 0 && r.not_after <= soon)
        .count();
    let retiring: Vec<_> = records.values().flat_map(|r| &r.retiring).collect();
    let due = |t: Option<u64>| t.is_some_and(|t| t <= now);
    let overdue = retiring.iter().filter(|k| due(k.remove_after)).count();
    let _ = writeln!(out, "nodes:     {}", records.len());
    let _ = writeln!(
        out,
        "expiring:  {expiring} (certificates ending within {}h)",
        within.as_secs() / 3600
    );
    let _ = writeln!(
        out,
        "retiring:  {} (old keys of rotated nodes, registered until their tokens expire; {overdue} past their removal time: `node register` on their node removes them)",
        retiring.len()
    );
    for r in records.values() {
        let flag = if r.not_after != 0 && r.not_after <= now {
            " EXPIRED"
        } else if r.not_after != 0 && r.not_after <= soon {
            " EXPIRING"
        } else {
            ""
        };
        let in_mount = match cfg.jwks_url() {
            Some(_) => "",
            None => match r.public_key() {
                Some(k) if cfg.contains(&k) => "",
                _ => " NOT-IN-MOUNT",
            },
        };
        let pcrs = r
            .pcrs
            .as_ref()
            .map_or("none".to_string(), |p| p.to_string());
        let digest = r
            .policy_digest
            .as_deref()
            .map(|d| format!(" policy_digest={d}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{}  kid={}  cert_until={}  renewed={}  pcrs={pcrs}{digest}{flag}{in_mount}",
            r.node,
            r.kid,
            if r.not_after == 0 {
                "unknown".to_string()
            } else {
                unix_to_string(r.not_after)
            },
            unix_to_string(r.renewed)
        );
        for k in &r.retiring {
            let _ = writeln!(
                out,
                "{}  retiring kid={}  since={}  ({}){}",
                r.node,
                k.kid,
                unix_to_string(k.since),
                removal_to_string(k.remove_after),
                if due(k.remove_after) {
                    " REMOVAL-DUE"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}
