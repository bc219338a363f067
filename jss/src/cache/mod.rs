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
//! left to expire. A re-signed token whose `iat` is still ahead waits beside
//! the current one and takes over in the second of its `iat`: no token is
//! handed out before the time it says it was issued.

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

    /// The first Unix second in which the token is no longer handed out
    /// (the second after its half-life).
    pub fn stale_at(&self) -> u64 {
        let lifetime = self.exp.saturating_sub(self.iat);
        self.exp.saturating_sub(lifetime.div_ceil(2)) + 1
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
    /// A re-signed token whose `iat` has not come yet.
    next: Option<CachedToken>,
}

impl Entry {
    /// Puts the re-signed token in use once its `iat` has come.
    fn promote(&mut self, now: u64) {
        if let Some(next) = self.next.take_if(|n| n.iat <= now) {
            self.token = next;
        }
    }
}

/// A token due to be re-signed: its key and workload, when the old token
/// stops being handed out, and the `iat` the new one gets.
#[derive(Debug, Clone)]
pub struct Due {
    pub key: CacheKey,
    pub workload: Arc<Workload>,
    /// Unix seconds: [`CachedToken::stale_at`] of the old token.
    pub stale_at: u64,
    /// Unix seconds: `iat` of the new token (at most `stale_at`).
    pub iat: u64,
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
        e.promote(now);
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
            map.retain(|_, e| e.token.fresh(now) || e.next.is_some());
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
        // A refresh already on its way stays marked: unmarked, the next pass
        // would queue a second one for the same key (an overloaded signer
        // then spends itself on duplicates).
        let refreshing = map.get(&key).is_some_and(|e| e.refreshing);
        map.insert(
            key,
            Entry {
                token,
                source,
                asked: now,
                refreshing,
                next: None,
            },
        );
    }

    /// The tokens to re-sign now, as `plan` picks them from the refresh
    /// set: entries asked for since `asked_since` (Unix seconds) that have
    /// a workload, are not being refreshed and hold no re-signed token yet.
    /// `plan` gets their current tokens and returns `(index, new iat)` for
    /// each to re-sign; those are marked until [`Self::refreshed`] or
    /// [`Self::refresh_failed`].
    pub fn due(
        &self,
        asked_since: u64,
        plan: impl FnOnce(&[&CachedToken]) -> Vec<(usize, u64)>,
    ) -> Vec<Due> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let set: Vec<(&CacheKey, &CachedToken)> = map
            .iter()
            .filter(|(_, e)| {
                e.source.is_some() && !e.refreshing && e.next.is_none() && e.asked >= asked_since
            })
            .map(|(k, e)| (k, &e.token))
            .collect();
        let tokens: Vec<&CachedToken> = set.iter().map(|(_, t)| *t).collect();
        let picked: Vec<(CacheKey, u64)> = plan(&tokens)
            .into_iter()
            .filter_map(|(i, iat)| set.get(i).map(|(k, _)| ((*k).clone(), iat)))
            .collect();
        let mut due = Vec::with_capacity(picked.len());
        for (key, iat) in picked {
            let Some(e) = map.get_mut(&key) else { continue };
            let Some(w) = &e.source else { continue };
            e.refreshing = true;
            due.push(Due {
                workload: Arc::clone(w),
                stale_at: e.token.stale_at(),
                iat,
                key,
            });
        }
        due
    }

    /// Stores a re-signed token: in use at once if its `iat` has come by
    /// `now`, else beside the current one until then; dropped if a caller's
    /// token as new or newer took the entry meanwhile. Keeps when the entry
    /// was last asked for.
    pub fn refreshed(&self, key: &CacheKey, token: CachedToken, now: u64) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get_mut(key) {
            e.refreshing = false;
            // Not older than what a caller got signed meanwhile.
            if token.iat > e.token.iat {
                e.next = Some(token);
                e.promote(now);
            }
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
        map.retain(|_, e| {
            e.promote(now);
            now < e.token.exp
        });
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
    fn the_refresh_set_is_what_was_asked_for_recently_and_not_in_hand() {
        let c = TokenCache::new(100);
        for k in ["a", "b", "c", "d"] {
            c.insert(key(k), tok(k, 100), workload(), 100);
        }
        c.insert(key("nosrc"), tok("n", 100), None, 100);
        // "b" asked for again later; the others not since 100.
        assert!(c.get(&key("b"), 150).is_none(), "past half-life");
        let offered = |c: &TokenCache, since: u64| {
            let mut seen = Vec::new();
            c.due(since, |set| {
                seen = set.iter().map(|t| t.jti.clone()).collect();
                Vec::new()
            });
            seen.sort();
            seen
        };
        assert_eq!(offered(&c, 140), ["b"]);
        assert_eq!(offered(&c, 0), ["a", "b", "c", "d"]);
        // What the plan picks is marked while it is re-signed.
        let due = c.due(140, |_| vec![(0, 131)]);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].stale_at, due[0].iat), (131, 131));
        assert!(offered(&c, 140).is_empty());
        c.refresh_failed(&key("b"));
        assert_eq!(offered(&c, 140), ["b"]);
        c.expire(1000);
        assert!(c.is_empty());
    }

    #[test]
    fn a_re_signed_token_takes_over_in_the_second_of_its_iat() {
        let c = TokenCache::new(10);
        c.insert(key("a"), tok("t1", 100), workload(), 100);
        assert_eq!(tok("t1", 100).stale_at(), 131);
        c.due(0, |_| vec![(0, 131)]);
        // Signed at 129 for 131: the old token is handed out until then.
        c.refreshed(&key("a"), tok("t2", 131), 129);
        assert_eq!(c.get(&key("a"), 130).unwrap().token, "t1");
        assert_eq!(c.get(&key("a"), 131).unwrap().token, "t2");
        // Nothing more to plan until t2 nears its half-life.
        let mut offered = 0;
        c.due(0, |set| {
            offered = set.len();
            Vec::new()
        });
        assert_eq!(offered, 1, "t2 is in use, so the entry is back in the set");
        // A late refresh is in use at once.
        c.due(0, |_| vec![(0, 162)]);
        c.refreshed(&key("a"), tok("t3", 162), 170);
        assert_eq!(c.get(&key("a"), 170).unwrap().token, "t3");
        // Expiry promotes first: an entry whose next token has come stays.
        c.due(0, |_| vec![(0, 193)]);
        c.refreshed(&key("a"), tok("t4", 193), 190);
        c.expire(222);
        assert_eq!(c.get(&key("a"), 222).unwrap().token, "t4");
    }

    #[test]
    fn a_caller_token_meanwhile_neither_unmarks_nor_loses_to_the_refresh() {
        let c = TokenCache::new(10);
        c.insert(key("a"), tok("t1", 100), workload(), 100);
        assert_eq!(c.due(0, |_| vec![(0, 131)]).len(), 1);
        // The old token went stale before the refresh was signed: a caller
        // got its own, newer token.
        c.insert(key("a"), tok("caller", 132), workload(), 132);
        let mut offered = usize::MAX;
        c.due(0, |set| {
            offered = set.len();
            Vec::new()
        });
        assert_eq!(offered, 0, "still being refreshed: not queued twice");
        c.refreshed(&key("a"), tok("late", 131), 133);
        assert_eq!(c.get(&key("a"), 133).unwrap().token, "caller");
        // The marker is cleared: the entry is in the refresh set again.
        c.due(0, |set| {
            offered = set.len();
            Vec::new()
        });
        assert_eq!(offered, 1);
    }

    #[test]
    fn disabled() {
        let c = TokenCache::new(0);
        c.insert(key("a"), tok("t1", 100), None, 100);
        assert!(c.get(&key("a"), 100).is_none());
    }
}
