//! Token cache keyed by (pod UID, container ID, audience, kind of token).
//!
//! A token is handed out again while at least half its lifetime remains, so a
//! burst from one container costs one signature instead of queueing on the
//! TPM. The key includes the container ID: two containers of one pod never
//! share a token. Bounded: when full, expired entries go first, then the
//! oldest.
//!
//! Entries also remember when they were last asked for and the workload they
//! describe, so tokens of workloads that keep asking can be re-signed ahead
//! of need (see `server::refresh`); an entry nobody asked for in a while is
//! left to expire.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::attest::Workload;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub pod_uid: String,
    pub container_id: String,
    pub audience: String,
    pub kind: TokenKind,
}

/// Which token of a workload an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// A JSS token for one container (`/v1/token`).
    Jss,
    /// A JWT-SVID for one container (the SPIFFE Workload API).
    Svid,
    /// A pod-level JSS token (the pod-token socket); its key's
    /// `container_id` is empty.
    Pod,
}

#[derive(Clone)]
pub struct CachedToken {
    pub token: String,
    pub jti: String,
    pub iat: u64,
    pub exp: u64,
}

impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken")
            .field("token", &"<redacted>")
            .field("jti", &self.jti)
            .field("exp", &self.exp)
            .finish()
    }
}

impl CachedToken {
    /// Still worth handing out at `now`: at least half the lifetime remains.
    fn fresh(&self, now: u64) -> bool {
        let lifetime = self.exp.saturating_sub(self.iat);
        self.exp.saturating_sub(now) * 2 >= lifetime && now < self.exp
    }
}

#[derive(Debug)]
struct Entry {
    token: CachedToken,
    /// What the token describes: enough to sign it again.
    source: Option<Arc<Workload>>,
    /// Unix seconds of the last request for this key.
    asked: u64,
    refreshing: bool,
}

/// A token due to be re-signed: its key, workload and the old token's times.
#[derive(Debug, Clone)]
pub struct Due {
    pub key: CacheKey,
    pub workload: Arc<Workload>,
    pub iat: u64,
    pub exp: u64,
}

#[derive(Debug)]
pub struct TokenCache {
    max_entries: usize,
    map: Mutex<HashMap<CacheKey, Entry>>,
}

impl TokenCache {
    /// `max_entries == 0` disables caching.
    pub fn new(max_entries: usize) -> Self {
        Self {
            max_entries,
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.max_entries > 0
    }

    /// The token for `key` if at least half its life remains; records the
    /// request either way (it keeps the entry in the refresh set).
    pub fn get(&self, key: &CacheKey, now: u64) -> Option<CachedToken> {
        if !self.enabled() {
            return None;
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.get_mut(key)?;
        e.asked = now;
        e.token.fresh(now).then(|| e.token.clone())
    }

    /// Stores a token signed for a request at `now`; `source` is the
    /// workload it describes (for refreshes).
    pub fn insert(
        &self,
        key: CacheKey,
        token: CachedToken,
        source: Option<Arc<Workload>>,
        now: u64,
    ) {
        if !self.enabled() {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.max_entries && !map.contains_key(&key) {
            map.retain(|_, e| e.token.fresh(now));
            if map.len() >= self.max_entries {
                let oldest = map
                    .iter()
                    .min_by_key(|(_, e)| e.token.iat)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    map.remove(&k);
                }
            }
        }
        map.insert(
            key,
            Entry {
                token,
                source,
                asked: now,
                refreshing: false,
            },
        );
    }

    /// Up to `max` tokens to re-sign now: asked for since `asked_since`,
    /// past their refresh point (`refresh_at(iat, exp)`), not already being
    /// refreshed. Each is marked until [`Self::refreshed`] or
    /// [`Self::refresh_failed`].
    pub fn due(
        &self,
        now: u64,
        asked_since: u64,
        max: usize,
        refresh_at: impl Fn(&CachedToken) -> u64,
    ) -> Vec<Due> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut due = Vec::new();
        for (k, e) in map.iter_mut() {
            if due.len() >= max {
                break;
            }
            let Some(w) = &e.source else { continue };
            if e.refreshing || e.asked < asked_since || now < refresh_at(&e.token) {
                continue;
            }
            e.refreshing = true;
            due.push(Due {
                key: k.clone(),
                workload: Arc::clone(w),
                iat: e.token.iat,
                exp: e.token.exp,
            });
        }
        due
    }

    /// Replaces a refreshed entry's token, keeping when it was last asked for.
    pub fn refreshed(&self, key: &CacheKey, token: CachedToken) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get_mut(key) {
            e.token = token;
            e.refreshing = false;
        }
    }

    pub fn refresh_failed(&self, key: &CacheKey) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get_mut(key) {
            e.refreshing = false;
        }
    }

    /// Drops entries whose token has expired (none of them can be handed out).
    pub fn expire(&self, now: u64) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, e| now < e.token.exp);
    }

    /// Drops every entry (the chain changed: new tokens carry the new x5c).
    pub fn clear(&self) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &str) -> CacheKey {
        CacheKey {
            pod_uid: "p".into(),
            container_id: c.into(),
            audience: "vault".into(),
            kind: TokenKind::Jss,
        }
    }
    fn tok(t: &str, iat: u64) -> CachedToken {
        CachedToken {
            token: t.into(),
            jti: t.into(),
            iat,
            exp: iat + 60,
        }
    }

    #[test]
    fn reused_until_half_life() {
        let c = TokenCache::new(10);
        c.insert(key("a"), tok("t1", 100), None, 100);
        assert_eq!(c.get(&key("a"), 100).unwrap().token, "t1");
        assert_eq!(c.get(&key("a"), 130).unwrap().token, "t1");
        assert!(c.get(&key("a"), 131).is_none());
    }

    #[test]
    fn containers_do_not_share() {
        let c = TokenCache::new(10);
        c.insert(key("a"), tok("t1", 100), None, 100);
        assert!(c.get(&key("b"), 100).is_none());
    }

    #[test]
    fn bounded() {
        let c = TokenCache::new(3);
        for (i, k) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            c.insert(key(k), tok(k, 100 + i as u64), None, 100 + i as u64);
            assert!(c.len() <= 3);
        }
        assert!(c.get(&key("a"), 105).is_none());
        assert_eq!(c.get(&key("e"), 105).unwrap().token, "e");
    }

    fn workload() -> Option<Arc<Workload>> {
        Some(Arc::new(crate::claims::tests::workload()))
    }

    #[test]
    fn only_entries_asked_for_recently_are_due_and_at_most_max() {
        let c = TokenCache::new(100);
        for k in ["a", "b", "c", "d"] {
            c.insert(key(k), tok(k, 100), workload(), 100);
        }
        c.insert(key("nosrc"), tok("n", 100), None, 100);
        // "b" asked for again later; the others not since 100.
        assert!(c.get(&key("b"), 150).is_none(), "past half-life");
        let at = |t: &CachedToken| t.iat + 20;
        assert!(c.due(119, 0, 10, at).is_empty(), "before the refresh point");
        let due = c.due(120, 140, 10, at);
        assert_eq!(
            due.iter()
                .map(|d| d.key.container_id.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        // Marked while refreshing; every recently asked entry, at most `max`.
        assert!(c.due(121, 140, 10, at).is_empty());
        assert_eq!(c.due(121, 0, 2, at).len(), 2);
        c.refreshed(&key("b"), tok("b2", 150));
        assert_eq!(c.get(&key("b"), 150).unwrap().token, "b2");
        c.expire(1000);
        assert!(c.is_empty());
    }

    #[test]
    fn disabled() {
        let c = TokenCache::new(0);
        c.insert(key("a"), tok("t1", 100), None, 100);
        assert!(c.get(&key("a"), 100).is_none());
    }
}
