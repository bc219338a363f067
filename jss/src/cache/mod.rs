//! Token cache keyed by (pod UID, container ID, audience, JSS token or JWT-SVID).
//!
//! A token is handed out again while at least half its lifetime remains, so a
//! burst from one container costs one signature instead of queueing on the
//! TPM. The key includes the container ID: two containers of one pod never
//! share a token. Bounded: when full, expired entries go first, then the
//! oldest.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub pod_uid: String,
    pub container_id: String,
    pub audience: String,
    /// A JWT-SVID rather than a JSS token for the same audience.
    pub svid: bool,
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
pub struct TokenCache {
    max_entries: usize,
    map: Mutex<HashMap<CacheKey, CachedToken>>,
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

    pub fn get(&self, key: &CacheKey, now: u64) -> Option<CachedToken> {
        if !self.enabled() {
            return None;
        }
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).filter(|t| t.fresh(now)).cloned()
    }

    pub fn insert(&self, key: CacheKey, token: CachedToken, now: u64) {
        if !self.enabled() {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.max_entries && !map.contains_key(&key) {
            map.retain(|_, t| t.fresh(now));
            if map.len() >= self.max_entries {
                let oldest = map
                    .iter()
                    .min_by_key(|(_, t)| t.iat)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    map.remove(&k);
                }
            }
        }
        map.insert(key, token);
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
            svid: false,
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
        c.insert(key("a"), tok("t1", 100), 100);
        assert_eq!(c.get(&key("a"), 100).unwrap().token, "t1");
        assert_eq!(c.get(&key("a"), 130).unwrap().token, "t1");
        assert!(c.get(&key("a"), 131).is_none());
    }

    #[test]
    fn containers_do_not_share() {
        let c = TokenCache::new(10);
        c.insert(key("a"), tok("t1", 100), 100);
        assert!(c.get(&key("b"), 100).is_none());
    }

    #[test]
    fn bounded() {
        let c = TokenCache::new(3);
        for (i, k) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            c.insert(key(k), tok(k, 100 + i as u64), 100 + i as u64);
            assert!(c.len() <= 3);
        }
        assert!(c.get(&key("a"), 105).is_none());
        assert_eq!(c.get(&key("e"), 105).unwrap().token, "e");
    }

    #[test]
    fn disabled() {
        let c = TokenCache::new(0);
        c.insert(key("a"), tok("t1", 100), 100);
        assert!(c.get(&key("a"), 100).is_none());
    }
}
