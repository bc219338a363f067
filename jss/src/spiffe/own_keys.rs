//! This node's own keys in the JWT bundle: the key in use now and, after a
//! key switch (SIGHUP; README.md, "Rotating the node key"), each key it
//! replaced for as long as JWT-SVIDs that key signed can still be valid.
//!
//! A JWT-SVID of the old key was built before the switch (the token cache
//! is dropped at the switch), so its `exp` is at most the switch time plus
//! `token_ttl_seconds`. The old key stays that long plus
//! `[spiffe] retire_leeway_seconds` (default 60 s, go-spiffe's leeway).
//! A daemon started inside that window (a restart after a rotation) takes
//! the old key from `rotation.json`, which `node register --rotate` keeps
//! until the old key is removed.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::Jwk;
use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt as _};

use crate::server::{App, Keys, now_unix};
use crate::signer::NodePublicKey;

#[derive(Debug, thiserror::Error)]
pub enum OwnKeyError {
    #[error(
        "cannot express the node key {kid} as a JWK for the SPIFFE JWT bundle: {source}; this is a bug in jss"
    )]
    Jwk {
        kid: String,
        source: serde_json::Error,
    },
    #[error(
        "the rotation record's old_public_key (kid {kid}) is not a P-256 SPKI PEM: {source}; JWT-SVIDs of that key will not validate here (check rotation.json in the state dir)"
    )]
    OldKey {
        kid: String,
        source: p256::pkcs8::spki::Error,
    },
}

/// `key` as the JWK the bundle holds (`kty` EC, `crv` P-256, `kid` the
/// RFC 7638 thumbprint).
pub fn jwk_of(key: &NodePublicKey) -> Result<Jwk, OwnKeyError> {
    serde_json::to_value(key.jwk())
        .and_then(serde_json::from_value)
        .map_err(|source| OwnKeyError::Jwk {
            kid: key.kid.clone(),
            source,
        })
}

/// This node's keys as `jss serve` starts: the key in use, a replaced key
/// `token_ttl_seconds` + `leeway` after its switch. A rotation
/// record that cannot be read is logged and left out.
pub fn at_start(app: &App, leeway: Duration) -> Result<OwnKeys, OwnKeyError> {
    let current = jwk_of(app.signer().public_key())?;
    let retire_after = Duration::from_secs(app.cfg.token_ttl_seconds) + leeway;
    let rotation = crate::state::rotation::read(&app.cfg.state_dir)
        .inspect_err(|e| tracing::warn!(error = %e, "SPIFFE bundle: a key replaced before this start is left out"))
        .ok()
        .flatten();
    OwnKeys::after_restart(current.clone(), retire_after, rotation.as_ref(), now_unix())
        .or_else(|e| {
            tracing::warn!(error = %e, "SPIFFE bundle: a key replaced before this start is left out");
            Ok(OwnKeys::new(current, retire_after))
        })
}

/// The node key in use after each change of `App`'s keys (a chain reload
/// yields the same key again). Holds no `Keys` between items, so an old
/// signer is closed as soon as its last request is done.
pub fn switches(
    keys: tokio::sync::watch::Receiver<Arc<Keys>>,
) -> impl Stream<Item = Jwk> + Send + Unpin + 'static {
    tokio_stream::wrappers::WatchStream::from_changes(keys).filter_map(|k| {
        jwk_of(k.signer.public_key())
            .inspect_err(|e| tracing::error!(error = %e, "SPIFFE bundle: keeping the old key set"))
            .ok()
    })
}

/// The key in use and the retiring ones, each with the time it leaves.
#[derive(Debug, Clone)]
pub struct OwnKeys {
    current: Jwk,
    retiring: Vec<(Jwk, Instant)>,
    retire_after: Duration,
}

impl OwnKeys {
    /// `current` alone; a key replaced later stays `retire_after` (token
    /// life plus the leeway) after its switch.
    pub fn new(current: Jwk, retire_after: Duration) -> Self {
        Self {
            current,
            retiring: Vec::new(),
            retire_after,
        }
    }

    /// `current`, plus the key a rotation replaced while its time lasts:
    /// `rotation` is the state dir's record, `now_unix` seconds since the
    /// epoch. A record of another switch, or one whose window has passed,
    /// adds nothing.
    pub fn after_restart(
        current: Jwk,
        retire_after: Duration,
        rotation: Option<&crate::state::rotation::Rotation>,
        now_unix: u64,
    ) -> Result<Self, OwnKeyError> {
        use p256::pkcs8::DecodePublicKey as _;
        let mut own = Self::new(current, retire_after);
        let Some(r) = rotation else {
            return Ok(own);
        };
        let Some(switched_at) = r.switched_at else {
            return Ok(own);
        };
        let ends = switched_at.saturating_add(retire_after.as_secs());
        if r.new_kid.as_deref() != Some(own.current_kid()) || ends <= now_unix {
            return Ok(own);
        }
        let old =
            p256::PublicKey::from_public_key_pem(r.old_public_key.trim()).map_err(|source| {
                OwnKeyError::OldKey {
                    kid: r.old_kid.clone(),
                    source,
                }
            })?;
        let until = Instant::now() + Duration::from_secs(ends - now_unix);
        own.retiring
            .push((jwk_of(&NodePublicKey::new(old))?, until));
        Ok(own)
    }

    /// Puts `new` in use at `now`; the key it replaces retires. `false`
    /// when `new` is already the key in use (a chain reload).
    pub fn switch(&mut self, new: Jwk, now: Instant) -> bool {
        if new.common.key_id == self.current.common.key_id {
            return false;
        }
        self.retiring
            .retain(|(k, _)| k.common.key_id != new.common.key_id);
        let old = std::mem::replace(&mut self.current, new);
        self.retiring.push((old, now + self.retire_after));
        true
    }

    /// Drops the retiring keys whose time has come; their kids.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut gone = Vec::new();
        self.retiring.retain(|(k, until)| {
            let keep = *until > now;
            if !keep {
                gone.push(k.common.key_id.clone().unwrap_or_default());
            }
            keep
        });
        gone
    }

    /// When the next retiring key leaves; `None` when none is retiring.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.retiring.iter().map(|(_, until)| *until).min()
    }

    /// The retiring keys, then the key in use.
    pub fn keys(&self) -> impl Iterator<Item = &Jwk> {
        self.retiring
            .iter()
            .map(|(k, _)| k)
            .chain(std::iter::once(&self.current))
    }

    pub fn current_kid(&self) -> &str {
        self.current.common.key_id.as_deref().unwrap_or_default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn random_jwk() -> Jwk {
        let key = p256::SecretKey::random(&mut rand_core::OsRng);
        jwk_of(&NodePublicKey::new(key.public_key())).unwrap()
    }

    fn kids(own: &OwnKeys) -> Vec<String> {
        own.keys()
            .map(|k| k.common.key_id.clone().unwrap())
            .collect()
    }

    #[test]
    fn a_switched_key_retires_for_its_window_then_leaves() {
        let (a, b) = (random_jwk(), random_jwk());
        let (ka, kb) = (
            a.common.key_id.clone().unwrap(),
            b.common.key_id.clone().unwrap(),
        );
        let t0 = Instant::now();
        let window = Duration::from_secs(120);
        let mut own = OwnKeys::new(a.clone(), window);
        assert!(!own.switch(a, t0), "the same key is no switch");
        assert_eq!(own.next_expiry(), None);
        assert!(own.switch(b, t0));
        assert_eq!(own.current_kid(), kb);
        assert_eq!(kids(&own), vec![ka.clone(), kb.clone()]);
        assert_eq!(own.next_expiry(), Some(t0 + window));
        assert!(own.expire(t0 + window - Duration::from_secs(1)).is_empty());
        assert_eq!(own.expire(t0 + window), vec![ka]);
        assert_eq!(kids(&own), vec![kb]);
        assert_eq!(own.next_expiry(), None);
    }

    #[test]
    fn a_restart_inside_the_window_keeps_the_old_key_from_the_rotation_record() {
        use p256::pkcs8::EncodePublicKey as _;
        let old = p256::SecretKey::random(&mut rand_core::OsRng).public_key();
        let old_kid = NodePublicKey::new(old).kid;
        let new = random_jwk();
        let rotation = |switched_at| crate::state::rotation::Rotation {
            old_kid: old_kid.clone(),
            old_public_key: old.to_public_key_pem(Default::default()).unwrap(),
            new_kid: new.common.key_id.clone(),
            switched_at: Some(switched_at),
            remove_after: None,
        };
        let window = Duration::from_secs(120);
        let now = 1_000_000;
        let own =
            OwnKeys::after_restart(new.clone(), window, Some(&rotation(now - 30)), now).unwrap();
        assert_eq!(
            kids(&own),
            vec![old_kid.clone(), own.current_kid().to_string()]
        );
        let left = own.next_expiry().unwrap() - Instant::now();
        assert!(left <= Duration::from_secs(90), "{left:?}");
        // The window has passed, or the record is of another switch: the key in use alone.
        let own =
            OwnKeys::after_restart(new.clone(), window, Some(&rotation(now - 120)), now).unwrap();
        assert_eq!(own.keys().count(), 1);
        let other =
            OwnKeys::after_restart(random_jwk(), window, Some(&rotation(now)), now).unwrap();
        assert_eq!(other.keys().count(), 1);
        assert_eq!(
            OwnKeys::after_restart(new, window, None, now)
                .unwrap()
                .keys()
                .count(),
            1
        );
    }

    #[test]
    fn two_switches_retire_each_key_on_its_own_time() {
        let (a, b, c) = (random_jwk(), random_jwk(), random_jwk());
        let t0 = Instant::now();
        let window = Duration::from_secs(100);
        let mut own = OwnKeys::new(a.clone(), window);
        own.switch(b.clone(), t0);
        own.switch(c, t0 + Duration::from_secs(30));
        assert_eq!(own.keys().count(), 3);
        assert_eq!(own.expire(t0 + window), vec![a.common.key_id.unwrap()]);
        assert_eq!(
            own.expire(t0 + window + Duration::from_secs(30)),
            vec![b.common.key_id.unwrap()]
        );
        assert_eq!(own.keys().count(), 1);
    }
}
