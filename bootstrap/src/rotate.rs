//! `node register --rotate`: a new node key bound to the current PCRs, its
//! certificate and registration, the daemon's switch, and the old key's
//! removal once every token it signed has expired (README, "Rotating the
//! node key").
//!
//! Every step checks whether it is done, and `rotation.json` in the state
//! directory records what cannot be read back (which key is old, which new,
//! when the daemon switched), so a run killed anywhere is completed by the
//! next one. Until the removal the node has two registered keys: the old
//! one in the registry record's `retiring` list (JWKS mode) and in the
//! mount (static mode).

use std::io::Write;
use std::time::Duration;

use jss::chain::{Chain, ChainError};
use jss::signer::{self, Backend, KeyPolicy, NodePublicKey, SignerConfig, SignerKind};
use jss::state::{layout, rotation, rotation::Rotation};
use p256::pkcs8::DecodePublicKey as _;

use crate::csr::{self, NodeIdentity};
use crate::daemon::{self, DaemonSpec, Switch};
use crate::node::{self, NodeError, SignSpec, say, unix_to_string};
use crate::register::{self, MountConfig};
use crate::registry::now_unix;
use crate::vault::Vault;

/// Vault's leeways when a role leaves them at 0 (its defaults): clock skew
/// 60 s, expiration 150 s.
const DEFAULT_CLOCK_SKEW: u64 = 60;
const DEFAULT_EXPIRATION: u64 = 150;

/// What `--rotate` needs beyond registration.
#[derive(Debug, Clone)]
pub struct RotateSpec {
    /// How long the daemon's tokens live (`--token-ttl`); `None`: ask the
    /// daemon.
    pub token_ttl: Option<u64>,
    pub daemon: DaemonSpec,
    /// Wait for the old key's removal (else record it for the next run).
    pub wait: bool,
    /// JWKS mode: how long to wait for the JWKS to add or drop a key.
    pub jwks_wait: Duration,
}

/// Starts a rotation, or resumes the one `rotation.json` records.
pub async fn rotate(
    v: &Vault,
    key_cfg: &SignerConfig,
    id: &NodeIdentity,
    spec: &SignSpec,
    r: &RotateSpec,
    out: &mut dyn Write,
) -> Result<(), NodeError> {
    let (root_der, cfg) = node::preflight(v, spec).await?;
    let state = &key_cfg.state_dir;
    let mut rot = match rotation::read(state)? {
        Some(rot) => {
            say!(out, "resume   rotation from kid {}", rot.old_kid);
            rot
        }
        None => start(key_cfg, out)?,
    };
    let new_cfg = new_key_config(key_cfg)?;
    let new = new_key(&new_cfg, &mut rot, out)?;
    let dir = layout::version_dir(state, &new.kid);
    let chain = certificate(v, spec, id, &new_cfg, &dir, &root_der, out).await?;
    register_new(v, spec, &cfg, id, &new, &dir, &chain, &rot, r, out).await?;
    if layout::current(state)?.kid.as_deref() != Some(new.kid.as_str()) {
        layout::switch(state, &new.kid)?;
        say!(
            out,
            "switched {} to kid {}",
            state.join(layout::CURRENT_FILE).display(),
            new.kid
        );
    }
    finish(v, key_cfg, spec, &cfg, id, rot, r, out).await
}

/// `node register` without `--rotate`: completes a rotation's switch and
/// removal if one is recorded.
pub async fn finish_pending(
    v: &Vault,
    key_cfg: &SignerConfig,
    id: &NodeIdentity,
    spec: &SignSpec,
    r: &RotateSpec,
    out: &mut dyn Write,
) -> Result<(), NodeError> {
    let Some(rot) = rotation::read(&key_cfg.state_dir)? else {
        return Ok(());
    };
    let cfg = register::read_initialised(v, &spec.target.mount).await?;
    finish(v, key_cfg, spec, &cfg, id, rot, r, out).await
}

/// Completes what a rotation left: the daemon's switch and the old key's
/// removal.
#[allow(clippy::too_many_arguments)]
pub async fn finish(
    v: &Vault,
    key_cfg: &SignerConfig,
    spec: &SignSpec,
    cfg: &MountConfig,
    id: &NodeIdentity,
    mut rot: Rotation,
    r: &RotateSpec,
    out: &mut dyn Write,
) -> Result<(), NodeError> {
    let state = &key_cfg.state_dir;
    let Some(new_kid) = rot.new_kid.clone() else {
        say!(
            out,
            "pending  rotation from kid {}: run `node register --rotate` to finish it",
            rot.old_kid
        );
        return Ok(());
    };
    if layout::current(state)?.kid.as_deref() != Some(new_kid.as_str()) {
        say!(
            out,
            "pending  rotation to kid {new_kid}: run `node register --rotate` to finish it"
        );
        return Ok(());
    }
    let remove_after = match rot.remove_after {
        Some(t) => t,
        None => {
            let now = match daemon::switch(&r.daemon, &new_kid).await? {
                Switch::Serving { signalled } => {
                    if let Some(pid) = signalled {
                        say!(out, "sighup   jss (pid {pid}): it signs with kid {new_kid}");
                    } else {
                        say!(out, "found    jss signing with kid {new_kid}");
                    }
                    now_unix()
                }
                Switch::NotRunning => {
                    say!(
                        out,
                        "absent   no daemon answers at {}: it will use kid {new_kid} when it starts",
                        r.daemon.socket.display()
                    );
                    now_unix()
                }
            };
            let leeway = leeway(v, &spec.target.mount).await?;
            let t = now + token_life(r, out).await + leeway + 1;
            // The registry first: a run killed between the two writes
            // computes and records a time again.
            spec.target
                .registry
                .schedule_removal(v, &id.node, &rot.old_kid, t)
                .await?;
            rot.switched_at = Some(now);
            rot.remove_after = Some(t);
            rotation::write(state, &rot)?;
            t
        }
    };
    let now = now_unix();
    if now < remove_after {
        if !r.wait {
            say!(
                out,
                "pending  removal of kid {} after {} (its last tokens expire then): run `jss-bootstrap node register` again after that",
                rot.old_kid,
                unix_to_string(remove_after)
            );
            return Ok(());
        }
        say!(
            out,
            "waiting  until {} to remove kid {} (its last tokens expire then)",
            unix_to_string(remove_after),
            rot.old_kid
        );
        tokio::time::sleep(Duration::from_secs(remove_after - now)).await;
    }
    remove_old(v, spec, cfg, id, &rot, r, out).await?;
    layout::remove_version(state, &rot.old_kid)?;
    rotation::clear(state)?;
    say!(
        out,
        "rotated  to kid {new_kid}; kid {} is gone",
        rot.old_kid
    );
    Ok(())
}

/// How long the old key's last tokens live, in seconds: `--token-ttl`, else
/// what the daemon reports (its `jss_token_ttl_seconds`), else the daemon's
/// default. A `--token-ttl` shorter than the daemon's is used, with a
/// warning: the operator said so.
async fn token_life(r: &RotateSpec, out: &mut dyn Write) -> u64 {
    let reported = daemon::token_ttl(&r.daemon.socket).await;
    match (r.token_ttl, reported) {
        (Some(given), Some(d)) if given < d => {
            say!(
                out,
                "warning  --token-ttl {given} is shorter than the {d} s the daemon's tokens live: its last tokens from the old key will fail to log in once that key is removed"
            );
            given
        }
        (Some(given), _) => given,
        (None, Some(d)) => {
            say!(out, "tokens   the daemon's tokens live {d} s");
            d
        }
        (None, None) => {
            let d = jss::config::DEFAULT_TOKEN_TTL_SECONDS;
            say!(
                out,
                "tokens   no daemon at {} reports its token life: assuming {d} s (--token-ttl sets it)",
                r.daemon.socket.display()
            );
            d
        }
    }
}

/// Records the rotation from the current key, moving a single-file layout
/// into `keys/<kid>/` first.
fn start(key_cfg: &SignerConfig, out: &mut dyn Write) -> Result<Rotation, NodeError> {
    let info = signer::describe(&key_cfg.state_dir)?;
    let old = node::open_key(key_cfg, KeyPolicy::MustExist, out)?;
    let old_public_key = old.public_key().spki_pem();
    drop(old);
    if layout::migrate(&key_cfg.state_dir, &info.kid)? {
        say!(
            out,
            "moved    kid {} into {}",
            info.kid,
            layout::version_dir(&key_cfg.state_dir, &info.kid).display()
        );
    }
    let rot = Rotation {
        old_kid: info.kid,
        old_public_key,
        new_kid: None,
        switched_at: None,
        remove_after: None,
    };
    rotation::write(&key_cfg.state_dir, &rot)?;
    say!(out, "started  rotation from kid {}", rot.old_kid);
    Ok(rot)
}

/// The new key is made by the old key's backend (`auto` does not switch).
fn new_key_config(key_cfg: &SignerConfig) -> Result<SignerConfig, NodeError> {
    let mut c = key_cfg.clone();
    if c.kind == SignerKind::Auto {
        c.kind = match signer::describe(&key_cfg.state_dir)?.backend.as_str() {
            "software" => SignerKind::Software,
            _ => SignerKind::Tpm,
        };
    }
    Ok(c)
}

/// The rotation's new key: created in the staging directory (reused when a
/// killed run left one), recorded, then moved to `keys/<kid>/`.
fn new_key(
    cfg: &SignerConfig,
    rot: &mut Rotation,
    out: &mut dyn Write,
) -> Result<NodePublicKey, NodeError> {
    let state = &cfg.state_dir;
    let dir = match &rot.new_kid {
        Some(kid) if layout::version_dir(state, kid).is_dir() => layout::version_dir(state, kid),
        Some(kid) => layout::adopt_staging(state, kid)?,
        None => layout::staging_dir(state),
    };
    let (s, origin) = signer::open_in(cfg, &dir, KeyPolicy::CreateIfMissing)?;
    let key = s.public_key().clone();
    let verb = if origin == signer::KeyOrigin::Created {
        "created"
    } else {
        "found"
    };
    say!(
        out,
        "{verb:<8} new node key ({}, kid {}{})",
        s.backend(),
        key.kid,
        match (s.backend(), s.binding()) {
            (Backend::Tpm, Some(b)) => format!(", pcrs {}", b.pcrs),
            _ => String::new(),
        }
    );
    drop(s);
    if rot.new_kid.is_none() {
        rot.new_kid = Some(key.kid.clone());
        rotation::write(state, rot)?;
        layout::adopt_staging(state, &key.kid)?;
    }
    Ok(key)
}

/// The new key's certificate in its version directory, issued once.
async fn certificate(
    v: &Vault,
    spec: &SignSpec,
    id: &NodeIdentity,
    cfg: &SignerConfig,
    dir: &std::path::Path,
    root_der: &[u8],
    out: &mut dyn Write,
) -> Result<Chain, NodeError> {
    let (s, _) = signer::open_in(cfg, dir, KeyPolicy::MustExist)?;
    let key = s.public_key().clone();
    match Chain::load(dir, &key) {
        Ok(c) if node::chain_has_root(&c, root_der) => {
            say!(out, "found    new node certificate {}", c.subject());
            return Ok(c);
        }
        Ok(_) | Err(ChainError::Missing { .. }) => {}
        Err(e) => {
            say!(out, "replace  {} ({e})", dir.display());
        }
    }
    let csr_pem = csr::build(s.as_ref(), id)?;
    drop(s);
    let c = node::sign_and_check(v, spec, &csr_pem, &id.node, &key).await?;
    c.write(dir)?;
    say!(
        out,
        "created  new node certificate {} (valid until {})",
        c.subject(),
        unix_to_string(c.not_after_unix())
    );
    Ok(c)
}

/// Registers the new key with the old one kept as retiring; in JWKS mode
/// waits until the JWKS serves the new kid, so the switch refuses nothing.
#[allow(clippy::too_many_arguments)]
async fn register_new(
    v: &Vault,
    spec: &SignSpec,
    cfg: &MountConfig,
    id: &NodeIdentity,
    new: &NodePublicKey,
    dir: &std::path::Path,
    chain: &Chain,
    rot: &Rotation,
    r: &RotateSpec,
    out: &mut dyn Write,
) -> Result<(), NodeError> {
    let reg = &spec.target.registry;
    let binding = signer::describe_in(dir).ok().and_then(|i| i.binding);
    let mut rec = node::record(&id.node, new, chain, binding);
    if let Some((_, old)) = reg.get(v, &id.node).await? {
        if old.kid != new.kid {
            rec.retiring = old.retiring.clone();
            rec.retiring.retain(|k| k.kid != new.kid);
            if old.kid == rot.old_kid {
                rec.retiring.push(old.retire(now_unix()));
            }
        }
    }
    node::publish(v, &spec.target, cfg, rec, out).await?;
    if let Some(url) = cfg.jwks_url() {
        let ca = cfg.field("jwks_ca_pem").and_then(serde_json::Value::as_str);
        let kid = new.kid.clone();
        crate::jwks::wait_until(url, ca, &format!("serve kid {kid}"), r.jwks_wait, |kids| {
            kids.contains(&kid)
        })
        .await?;
        say!(out, "served   kid {kid} at {url}");
    }
    Ok(())
}

/// Takes the old key out of the registry record and (static mode) the
/// mount; in JWKS mode waits until the JWKS drops it and rewrites the mount
/// config so OpenBao forgets its cached copy.
async fn remove_old(
    v: &Vault,
    spec: &SignSpec,
    cfg: &MountConfig,
    id: &NodeIdentity,
    rot: &Rotation,
    r: &RotateSpec,
    out: &mut dyn Write,
) -> Result<(), NodeError> {
    let target = &spec.target;
    if target
        .registry
        .drop_retiring(v, &id.node, &rot.old_kid)
        .await?
    {
        say!(
            out,
            "removed  kid {} from registry record {}",
            rot.old_kid,
            id.node
        );
    }
    if let Some(url) = cfg.jwks_url() {
        let ca = cfg.field("jwks_ca_pem").and_then(serde_json::Value::as_str);
        let kid = rot.old_kid.clone();
        let goal = format!("drop kid {kid}");
        crate::jwks::wait_until(url, ca, &goal, r.jwks_wait, |kids| !kids.contains(&kid)).await?;
        register::rewrite(v, target).await?;
        say!(
            out,
            "gone     kid {kid} from {url}; rewrote auth/{}/config",
            target.mount
        );
    } else if let Ok(k) = p256::PublicKey::from_public_key_pem(rot.old_public_key.trim()) {
        let key = NodePublicKey::new(k);
        let change = register::remove(v, target, &key).await?;
        node::report_change(out, &target.mount, &key, change);
    }
    Ok(())
}

/// The longest time past `exp` any role of the mount still accepts a token:
/// clock skew plus expiration leeway (0 is Vault's default, below 0 none).
async fn leeway(v: &Vault, mount: &str) -> Result<u64, NodeError> {
    let roles = crate::prune::roles(v, mount).await?;
    let secs = |body: &serde_json::Value, key: &str, default: u64| match body
        .get(key)
        .and_then(serde_json::Value::as_i64)
    {
        Some(n) if n < 0 => 0,
        Some(0) | None => default,
        Some(n) => n.unsigned_abs(),
    };
    Ok(roles
        .iter()
        .map(|(_, b)| {
            secs(b, "clock_skew_leeway", DEFAULT_CLOCK_SKEW)
                + secs(b, "expiration_leeway", DEFAULT_EXPIRATION)
        })
        .max()
        .unwrap_or(DEFAULT_CLOCK_SKEW + DEFAULT_EXPIRATION))
}
