//! `cluster prune`: deletes the Vault identity entities of workloads that
//! stopped logging in (README, "Vault identity entities").
//!
//! JWT auth creates one entity per distinct `sub` and never deletes it, so
//! every rollout of a new image adds one for good. An entity is pruned only
//! when all of this holds:
//! - its one alias is on the cluster's mount (an entity with aliases on other
//!   mounts, or none, is someone else's);
//! - nobody attached policies or groups to it by hand;
//! - the alias's `last_update_time` is older than `--older-than`. The role
//!   maps `jti`, which changes at every login, so Vault rewrites the alias
//!   and that time is the last login; the age must exceed every role's token
//!   max TTL, so no Vault token from that login can still be alive.
//!
//! Each deletion is one Vault call that removes the entity with its alias
//! whole; an interrupted prune leaves deleted and untouched entities only,
//! and a second run finishes. Reads and deletions are paced (`--rate`).

use std::io::Write;
use std::time::{Duration, SystemTime};

use reqwest::Method;
use serde_json::Value;
use vaultrs::sys;

use crate::policy::LAST_USE_CLAIM;
use crate::vault::{Vault, VaultError, absent_as_none, strings};

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("auth/{mount} is not enabled in this Vault: check --cluster / --mount")]
    NoMount { mount: String },
    #[error(
        "role {role} on auth/{mount} does not map `{LAST_USE_CLAIM}`, so Vault does not record each login and idle entities cannot be told from busy ones: run `jss-bootstrap cluster init` for this cluster (it writes the mapping), then prune no earlier than the role's token max TTL later"
    )]
    NoLastUseEvidence { mount: String, role: String },
    #[error(
        "role {role} on auth/{mount} gives tokens without a bounded lifetime (token_max_ttl 0 or token_period set), so an entity unused for any age may still hold a live Vault token: set token_max_ttl on the role"
    )]
    UnboundedTokens { mount: String, role: String },
    #[error(
        "--older-than {older_than} is not above the longest token lifetime of auth/{mount} ({max_ttl}): entities of workloads still holding a Vault token would be deleted; choose a longer age"
    )]
    TooYoung {
        mount: String,
        older_than: String,
        max_ttl: String,
    },
    #[error("Vault's answer for entity {id} has no usable {field}; nothing was deleted for it")]
    Malformed { id: String, field: &'static str },
    #[error(
        "prune of auth/{mount} stopped after deleting {deleted} entities: {source}\n  every deletion is whole (entity and alias); run the same command again once Vault answers to finish"
    )]
    Interrupted {
        mount: String,
        deleted: usize,
        #[source]
        source: VaultError,
    },
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// What to prune and how fast.
#[derive(Debug, Clone)]
pub struct PruneSpec {
    pub mount: String,
    /// An entity whose last login is at least this old goes.
    pub older_than: Duration,
    pub dry_run: bool,
    /// Vault calls per second for the per-entity reads and deletions.
    pub rate: u32,
}

/// Counts of what a prune found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PruneReport {
    /// Entities in Vault (all mounts).
    pub entities: usize,
    /// Entities whose only alias is on the mount.
    pub candidates: usize,
    /// Candidates that logged in within `older_than`.
    pub in_use: usize,
    /// Candidates with policies or groups attached by hand: kept.
    pub managed: usize,
    /// Deleted (or, with `dry_run`, that would be).
    pub pruned: usize,
}

/// Runs the prune, writing one line per pruned entity and a summary to `out`.
#[tracing::instrument(skip_all, fields(mount = %spec.mount, dry_run = spec.dry_run))]
pub async fn prune(
    v: &Vault,
    spec: &PruneSpec,
    out: &mut dyn Write,
) -> Result<PruneReport, PruneError> {
    let accessor = mount_accessor(v, &spec.mount).await?;
    check_roles(v, spec).await?;
    let now = SystemTime::now();
    let cutoff = now
        .checked_sub(spec.older_than)
        .unwrap_or(SystemTime::UNIX_EPOCH);

    let listed = absent_as_none(
        v.raw(
            "list identity entities",
            Method::GET,
            "identity/entity/id?list=true",
            None,
        )
        .await,
    )?
    .flatten();
    let key_info = listed
        .as_ref()
        .and_then(|b| b.pointer("/data/key_info"))
        .and_then(Value::as_object);
    let mut report = PruneReport {
        entities: key_info.map_or(0, |k| k.len()),
        ..PruneReport::default()
    };
    let candidates: Vec<&String> = key_info
        .into_iter()
        .flatten()
        .filter(|(_, info)| only_alias_on(info, &accessor))
        .map(|(id, _)| id)
        .collect();
    report.candidates = candidates.len();

    let mut pace = tokio::time::interval(Duration::from_secs(1) / spec.rate.max(1));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let verb = if spec.dry_run {
        "would prune"
    } else {
        "pruned"
    };
    for id in candidates {
        pace.tick().await;
        let path = format!("identity/entity/id/{id}");
        let read = v
            .raw("read an identity entity", Method::GET, &path, None)
            .await;
        let entity = match absent_as_none(read) {
            Ok(Some(Some(b))) => b.get("data").cloned().unwrap_or(Value::Null),
            Ok(_) => continue, // deleted meanwhile
            Err(source) => return Err(interrupted(spec, &report, source)),
        };
        // Re-checked on the full entity: an alias may have been added since the list.
        if !only_alias_on(&entity, &accessor) {
            report.candidates -= 1;
            continue;
        }
        if hand_managed(&entity) {
            report.managed += 1;
            continue;
        }
        let last_login = last_login(&entity, id)?;
        if last_login > cutoff {
            report.in_use += 1;
            continue;
        }
        if !spec.dry_run {
            pace.tick().await;
            let deleted = v
                .raw("delete an identity entity", Method::DELETE, &path, None)
                .await;
            if let Err(source) = absent_as_none(deleted) {
                return Err(interrupted(spec, &report, source));
            }
        }
        report.pruned += 1;
        let sub = entity
            .pointer("/aliases/0/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let idle = now.duration_since(last_login).unwrap_or_default().as_secs();
        let _ = writeln!(
            out,
            "{verb} entity {id} (sub {sub}, last login {}, {} ago)",
            humantime::format_rfc3339_seconds(last_login),
            humantime::format_duration(Duration::from_secs(idle)),
        );
        tracing::debug!(entity = %id, "entity pruned");
    }
    let _ = writeln!(
        out,
        "auth/{}: {} entities in Vault, {} only on this mount: {} in use (login within {}), {} managed by hand (kept), {} {verb}",
        spec.mount,
        report.entities,
        report.candidates,
        report.in_use,
        humantime::format_duration(spec.older_than),
        report.managed,
        report.pruned,
    );
    Ok(report)
}

fn interrupted(spec: &PruneSpec, report: &PruneReport, source: VaultError) -> PruneError {
    PruneError::Interrupted {
        mount: spec.mount.clone(),
        deleted: if spec.dry_run { 0 } else { report.pruned },
        source,
    }
}

async fn mount_accessor(v: &Vault, mount: &str) -> Result<String, PruneError> {
    let mounts = v
        .call("list auth mounts", "sys/auth", || {
            sys::auth::list(v.client())
        })
        .await?;
    mounts
        .get(&format!("{mount}/"))
        .map(|m| m.accessor.clone())
        .ok_or_else(|| PruneError::NoMount {
            mount: mount.to_string(),
        })
}

/// Every role of the JWT mount `mount`, with its settings (Vault's `data`).
pub(crate) async fn roles(v: &Vault, mount: &str) -> Result<Vec<(String, Value)>, VaultError> {
    let list_path = format!("auth/{mount}/role");
    let listed = absent_as_none(
        v.raw(
            "list the roles of the cluster's mount",
            Method::GET,
            &format!("{list_path}?list=true"),
            None,
        )
        .await,
    )?
    .flatten();
    let mut out = Vec::new();
    for role in strings(listed.as_ref().and_then(|b| b.pointer("/data/keys"))) {
        let path = format!("{list_path}/{role}");
        let body = v
            .raw(
                "read a role of the cluster's mount",
                Method::GET,
                &path,
                None,
            )
            .await?
            .and_then(|mut b| b.get_mut("data").map(Value::take))
            .unwrap_or(Value::Null);
        out.push((role, body));
    }
    Ok(out)
}

/// Every role on the mount must record logins (maps the last-use claim) and
/// bound its tokens' life below `older_than`.
async fn check_roles(v: &Vault, spec: &PruneSpec) -> Result<(), PruneError> {
    let mut longest = 0;
    for (role, body) in roles(v, &spec.mount).await? {
        let maps_last_use = body
            .pointer("/claim_mappings")
            .and_then(Value::as_object)
            .is_some_and(|m| m.contains_key(LAST_USE_CLAIM));
        if !maps_last_use {
            return Err(PruneError::NoLastUseEvidence {
                mount: spec.mount.clone(),
                role,
            });
        }
        let secs = |k: &str| body.get(k).and_then(Value::as_u64).unwrap_or(0);
        let max_ttl = secs("token_max_ttl").max(secs("token_explicit_max_ttl"));
        if max_ttl == 0 || secs("token_period") > 0 {
            return Err(PruneError::UnboundedTokens {
                mount: spec.mount.clone(),
                role,
            });
        }
        longest = longest.max(max_ttl);
    }
    let longest = Duration::from_secs(longest);
    if spec.older_than <= longest {
        return Err(PruneError::TooYoung {
            mount: spec.mount.clone(),
            older_than: humantime::format_duration(spec.older_than).to_string(),
            max_ttl: humantime::format_duration(longest).to_string(),
        });
    }
    Ok(())
}

/// Whether an entity (list `key_info` or full read) has exactly one alias,
/// on `accessor`.
fn only_alias_on(entity: &Value, accessor: &str) -> bool {
    match entity.get("aliases").and_then(Value::as_array) {
        Some(a) => {
            a.len() == 1 && a[0].get("mount_accessor").and_then(Value::as_str) == Some(accessor)
        }
        None => false,
    }
}

/// Policies or group memberships someone attached to the entity: a login
/// never sets them, so the entity is deliberately kept.
fn hand_managed(entity: &Value) -> bool {
    let non_empty = |k: &str| {
        entity
            .get(k)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    non_empty("policies") || non_empty("direct_group_ids")
}

/// The alias's `last_update_time` (RFC 3339, as Vault writes it).
fn last_login(entity: &Value, id: &str) -> Result<SystemTime, PruneError> {
    entity
        .pointer("/aliases/0/last_update_time")
        .and_then(Value::as_str)
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .ok_or_else(|| PruneError::Malformed {
            id: id.to_string(),
            field: "aliases[0].last_update_time",
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_entities_whose_one_alias_is_on_the_mount_are_candidates() {
        let on = |acc: &str| json!({"mount_accessor": acc, "name": "s"});
        assert!(only_alias_on(&json!({"aliases": [on("a")]}), "a"));
        assert!(!only_alias_on(&json!({"aliases": [on("b")]}), "a"));
        assert!(!only_alias_on(&json!({"aliases": [on("a"), on("b")]}), "a"));
        assert!(!only_alias_on(&json!({"aliases": []}), "a"));
        assert!(!only_alias_on(&json!({"name": "e"}), "a"));
    }

    #[test]
    fn hand_attached_policies_or_groups_keep_an_entity() {
        assert!(!hand_managed(
            &json!({"policies": [], "direct_group_ids": []})
        ));
        assert!(hand_managed(&json!({"policies": ["p"]})));
        assert!(hand_managed(&json!({"direct_group_ids": ["g"]})));
    }

    #[test]
    fn last_login_reads_vaults_nanosecond_timestamps() {
        let e = json!({"aliases": [{"last_update_time": "2026-11-29T12:13:42.140100703Z"}]});
        let t = last_login(&e, "x").unwrap();
        let want = humantime::parse_rfc3339("2026-11-29T12:13:42Z").unwrap();
        assert_eq!(t.duration_since(want).unwrap().as_millis(), 140);
        assert!(matches!(
            last_login(&json!({"aliases": [{}]}), "x"),
            Err(PruneError::Malformed { .. })
        ));
    }
}
