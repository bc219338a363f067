//! This node's own keys in the JWT bundle: the key in use now and, after a
//! key switch (SIGHUP; README.md, "Rotating the node key"), each key it
//! replaced for as long as JWT-SVIDs that key signed can still be valid.
//!
//! A JWT-SVID of the old key was built before the switch (the token cache
//! is dropped at the switch), so its `exp` is at most the switch time plus
//! `token_ttl_seconds`. The old key stays that long plus [`RETIRE_LEEWAY`].

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::Jwk;
use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt as _};

use crate::server::Keys;
use crate::signer::NodePublicKey;

/// How long past `exp` a verifier may still accept a JWT-SVID: go-spiffe
/// validates with 60 s of clock skew allowed, so the key stays that long.
pub const RETIRE_LEEWAY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum OwnKeyError {
    #[error(
        "cannot express the node key {kid} as a JWK for the SPIFFE JWT bundle: {source}; this is a bug in jss"
    )]
    Jwk {
        kid: String,
        source: serde_json::Error,
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
    /// life plus [`RETIRE_LEEWAY`]) after its switch.
    pub fn new(current: Jwk, retire_after: Duration) -> Self {
        Self {
            current,
            retiring: Vec::new(),
            retire_after,
        }
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
