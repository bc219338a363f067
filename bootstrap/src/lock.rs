//! A lock in KV-v2 that serialises writers of a JWT mount's config.
//!
//! Vault has no compare-and-set on `auth/<mount>/config` (50 concurrent
//! appenders lost 33 of 51 keys on OpenBao 2.7.2), so registrants take a lock
//! document first: writes use KV-v2 `cas`, so exactly one of several racing
//! takers wins a given version. The document carries an expiry, so a
//! registrant that dies holding it blocks others for at most `ttl`; a re-run
//! on the same node takes over at once when it can see that the holder's
//! process is gone (same node, host, boot and pid namespace; pid not running).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use vaultrs::api::kv2::requests::SetSecretRequestOptions;
use vaultrs::kv2;

use crate::vault::{Vault, VaultError, absent_as_none};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "the registration lock {path} was held by {holder} for longer than {waited:?}; retry, or wait for it to expire (it carries an expiry)"
    )]
    Timeout {
        path: String,
        holder: String,
        waited: Duration,
    },
    #[error("registration lock: {0}")]
    Vault(#[from] VaultError),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LockDoc {
    /// Empty when released.
    #[serde(default)]
    holder: String,
    /// Unix seconds after which the lock is free even if not released.
    #[serde(default)]
    expires: u64,
}

/// Where the lock lives and how long it may be held.
#[derive(Debug, Clone)]
pub struct LockSpec {
    pub kv_mount: String,
    pub path: String,
    pub ttl: Duration,
    pub wait: Duration,
}

impl LockSpec {
    /// The lock for the JWT auth mount `auth_mount`.
    pub fn for_mount(kv_mount: &str, auth_mount: &str) -> Self {
        Self {
            kv_mount: kv_mount.into(),
            path: format!("jss/locks/{auth_mount}"),
            ttl: Duration::from_secs(30),
            wait: Duration::from_secs(120),
        }
    }

    fn full(&self) -> String {
        format!("{}/data/{}", self.kv_mount, self.path)
    }
}

/// A held lock: the version we wrote, and when we took it.
#[derive(Debug)]
pub struct Held {
    version: u64,
    taken: Instant,
    ttl: Duration,
}

impl Held {
    /// Whether enough of the lease is left to do a write safely.
    pub fn still_ours(&self) -> bool {
        self.taken.elapsed() + Duration::from_secs(5) < self.ttl
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Takes the lock, waiting (with jitter) while someone else holds it.
pub async fn acquire(v: &Vault, spec: &LockSpec, holder: &str) -> Result<Held, LockError> {
    let start = Instant::now();
    let mut last_holder = String::new();
    let mut pause = Duration::from_millis(20);
    let full = spec.full();
    loop {
        let current = read(v, spec).await?;
        // Our own write whose answer was lost (then retried) still counts.
        if let Some((version, doc)) = &current
            && doc.holder == holder
        {
            return Ok(Held {
                version: *version,
                taken: Instant::now(),
                ttl: spec.ttl,
            });
        }
        let free = match &current {
            None => true,
            Some((_, doc)) => {
                doc.holder.is_empty()
                    || doc.expires < now_unix()
                    || holder_is_dead_sibling(&doc.holder, holder)
            }
        };
        if let Some((_, doc)) = &current
            && !doc.holder.is_empty()
            && doc.expires >= now_unix()
            && free
        {
            tracing::warn!(
                path = %full,
                previous = %doc.holder,
                "taking over the registration lock: its holder, an earlier run on this node, is gone"
            );
        }
        if free {
            let cas = current.as_ref().map(|(ver, _)| *ver).unwrap_or(0);
            let doc = LockDoc {
                holder: holder.into(),
                expires: now_unix() + spec.ttl.as_secs(),
            };
            match write(v, spec, &doc, cas).await {
                Ok(version) => {
                    return Ok(Held {
                        version,
                        taken: Instant::now(),
                        ttl: spec.ttl,
                    });
                }
                // Someone else won this version: look again.
                Err(VaultError::Api { code: 400, .. }) => {}
                Err(e) => return Err(e.into()),
            }
        } else if let Some((_, doc)) = &current {
            last_holder = doc.holder.clone();
        }
        if start.elapsed() > spec.wait {
            return Err(LockError::Timeout {
                path: full,
                holder: last_holder,
                waited: spec.wait,
            });
        }
        // Jitter keeps many nodes started together from retrying in step.
        let jitter = Duration::from_millis(u64::from(rand_u16() % 50));
        tokio::time::sleep(pause + jitter).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// Releases the lock if it is still ours (a newer version means it expired
/// and someone else took it: leave theirs alone).
pub async fn release(v: &Vault, spec: &LockSpec, held: Held) -> Result<(), LockError> {
    let released = LockDoc::default();
    match write(v, spec, &released, held.version).await {
        Ok(_) => Ok(()),
        Err(VaultError::Api { code: 400, .. }) => {
            tracing::warn!(
                path = %spec.full(),
                "the registration lock expired while held and was taken by another registrant"
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

async fn read(v: &Vault, spec: &LockSpec) -> Result<Option<(u64, LockDoc)>, VaultError> {
    let what = "read the registration lock";
    let full = spec.full();
    let meta = v
        .call(what, &full, || {
            kv2::read_metadata(v.client(), &spec.kv_mount, &spec.path)
        })
        .await;
    let version = match absent_as_none(meta)? {
        Some(m) if m.current_version > 0 => m.current_version,
        _ => return Ok(None),
    };
    let doc = v
        .call(what, &full, || {
            kv2::read_version::<LockDoc>(v.client(), &spec.kv_mount, &spec.path, version)
        })
        .await;
    // A deleted or destroyed version: treat as released at that version.
    Ok(Some((version, absent_as_none(doc)?.unwrap_or_default())))
}

/// Writes the lock document with `cas` (0 = must not exist yet).
async fn write(v: &Vault, spec: &LockSpec, doc: &LockDoc, cas: u64) -> Result<u64, VaultError> {
    let what = "write the registration lock";
    let full = spec.full();
    let cas32 = u32::try_from(cas).map_err(|_| VaultError::Answer {
        what: what.into(),
        detail: format!("lock version {cas} is out of range"),
    })?;
    let meta = v
        .call(what, &full, || {
            kv2::set_with_options(
                v.client(),
                &spec.kv_mount,
                &spec.path,
                doc,
                SetSecretRequestOptions { cas: cas32 },
            )
        })
        .await?;
    Ok(meta.version)
}

/// A lock holder id: `who@host:pid:random:boot:pidns`. The boot id and the
/// pid namespace let a later run on the same node tell whether the holder's
/// process still exists ([`holder_is_dead_sibling`]).
pub fn holder_id(who: &str) -> String {
    let mut b = [0u8; 6];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    let rand: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    format!(
        "{who}@{host}:{}:{rand}:{}:{}",
        std::process::id(),
        boot_id().unwrap_or_default(),
        pid_ns().unwrap_or_default()
    )
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().replace('-', ""))
        .filter(|s| !s.is_empty())
}

/// The inode of this process's pid namespace, if /proc is this namespace's
/// (otherwise a pid looked up in /proc could be another process's).
fn pid_ns() -> Option<String> {
    let own = std::fs::read_link("/proc/self").ok()?;
    if own.to_str()? != std::process::id().to_string() {
        return None;
    }
    let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let ns = ns.to_str()?;
    let inode = ns.strip_prefix("pid:[")?.strip_suffix(']')?;
    Some(inode.to_string())
}

struct HolderParts<'a> {
    who_host: &'a str,
    pid: u32,
    boot: &'a str,
    pidns: &'a str,
}

fn parse_holder(h: &str) -> Option<HolderParts<'_>> {
    let mut it = h.rsplitn(5, ':');
    let pidns = it.next()?;
    let boot = it.next()?;
    let _rand = it.next()?;
    let pid = it.next()?.parse().ok()?;
    let who_host = it.next()?;
    Some(HolderParts {
        who_host,
        pid,
        boot,
        pidns,
    })
}

/// Whether `other` was written by an earlier run on this node whose process
/// is gone: same `who@host`, same boot, same pid namespace (as seen through
/// a /proc of that namespace), another pid, and no process with that pid.
/// Anything unknown or different answers false: then the lock's expiry
/// applies. A reused pid also answers false (wait, never steal).
fn holder_is_dead_sibling(other: &str, me: &str) -> bool {
    let (Some(o), Some(m)) = (parse_holder(other), parse_holder(me)) else {
        return false;
    };
    o.who_host == m.who_host
        && !m.boot.is_empty()
        && o.boot == m.boot
        && !m.pidns.is_empty()
        && o.pidns == m.pidns
        && m.pidns == pid_ns().unwrap_or_default()
        && o.pid != m.pid
        && o.pid != 0
        && matches!(
            std::fs::symlink_metadata(format!("/proc/{}", o.pid)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound
        )
}

fn rand_u16() -> u16 {
    let mut b = [0u8; 2];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    u16::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `me` with its pid replaced.
    fn with_pid(me: &str, pid: u32) -> String {
        let p = parse_holder(me).unwrap();
        let own = std::process::id().to_string();
        let rest = &me[p.who_host.len() + 1 + own.len()..];
        format!("{}:{pid}{rest}", p.who_host)
    }

    #[test]
    fn a_dead_run_of_the_same_node_may_be_taken_over() {
        let me = holder_id("node-1");
        let p = parse_holder(&me).unwrap();
        assert_eq!(p.pid, std::process::id());
        assert!(!p.boot.is_empty() && !p.pidns.is_empty(), "{me}");

        // A process that has exited (and been reaped): its lock is stale.
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        dead.wait().unwrap();
        let stale = with_pid(&me, dead_pid);
        assert!(holder_is_dead_sibling(&stale, &me), "{stale} vs {me}");

        // A live process with the same node name: wait for it.
        let mut live = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let running = with_pid(&me, live.id());
        assert!(!holder_is_dead_sibling(&running, &me));
        live.kill().unwrap();
        live.wait().unwrap();

        // Another node, another boot, another pid namespace, or an old-style
        // or garbled id: never taken over before the expiry.
        let other_node = stale.replacen("node-1@", "node-2@", 1);
        assert!(!holder_is_dead_sibling(&other_node, &me));
        let sp = parse_holder(&stale).unwrap();
        let other_boot = stale.replace(sp.boot, "00000000000000000000000000000000");
        assert!(!holder_is_dead_sibling(&other_boot, &me));
        let other_ns = format!("{}1", &stale);
        assert!(!holder_is_dead_sibling(&other_ns, &me));
        let old_style = format!("node-1@{}:{dead_pid}:abcdef", "host");
        assert!(!holder_is_dead_sibling(&old_style, &me));
        assert!(!holder_is_dead_sibling("", &me));
        assert!(!holder_is_dead_sibling("node-1@h:x:y:z:w", &me));
    }
}
