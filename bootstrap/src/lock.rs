//! A lock in KV-v2 that serialises writers of a JWT mount's config.
//!
//! Vault has no compare-and-set on `auth/<mount>/config` (50 concurrent
//! appenders lost 33 of 51 keys on OpenBao 2.7.2), so registrants take a lock
//! document first: writes use KV-v2 `cas`, so exactly one of several racing
//! takers wins a given version. The document carries an expiry, so a
//! registrant that dies holding it blocks others for at most `ttl`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use vaultrs::api::kv2::requests::SetSecretRequestOptions;
use vaultrs::kv2;

use crate::vault::{Vault, VaultError};

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
            Some((_, doc)) => doc.holder.is_empty() || doc.expires < now_unix(),
        };
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
        .retry(|| async {
            kv2::read_metadata(v.client(), &spec.kv_mount, &spec.path)
                .await
                .map_err(|e| v.classify(e, what, &full))
        })
        .await;
    let version = match meta {
        Ok(m) if m.current_version > 0 => m.current_version,
        Ok(_) => return Ok(None),
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    let doc = v
        .retry(|| async {
            kv2::read_version::<LockDoc>(v.client(), &spec.kv_mount, &spec.path, version)
                .await
                .map_err(|e| v.classify(e, what, &full))
        })
        .await;
    match doc {
        Ok(d) => Ok(Some((version, d))),
        // A deleted or destroyed version: treat as released at that version.
        Err(e) if e.is_not_found() => Ok(Some((version, LockDoc::default()))),
        Err(e) => Err(e),
    }
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
        .retry(|| async {
            kv2::set_with_options(
                v.client(),
                &spec.kv_mount,
                &spec.path,
                doc,
                SetSecretRequestOptions { cas: cas32 },
            )
            .await
            .map_err(|e| v.classify(e, what, &full))
        })
        .await?;
    Ok(meta.version)
}

fn rand_u16() -> u16 {
    let mut b = [0u8; 2];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    u16::from_le_bytes(b)
}
