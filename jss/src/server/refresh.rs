//! Tokens re-signed ahead of need, in the signer's idle time.
//!
//! Clients ask again at about half a token's life (spiffe-helper: exp/2 +
//! 1 s). With a TPM that signs in 25–200 ms, a client that finds no fresh
//! token waits behind every signature queued before it. So tokens of
//! workloads that asked within the last three lifetimes are re-signed before
//! the old token stops being handed out (the second after its half-life):
//! each refresh costs one signature per workload, so the later it lands the
//! more workloads one TPM keeps fresh (README, "Capacity").
//!
//! Every [`TICK`] a pass plans the refresh set earliest deadline first: a
//! token is released to the signer as late as the signatures queued now,
//! those of every token due before it, its own, one more in progress and a
//! tick still fit before its deadline, earlier by up to a sixtieth of its
//! life spread by its `jti` so that a node boot's burst does not stay in
//! step. The new token's `iat` is the second it is expected to be signed by
//! (at most the old token's deadline; when the signer is behind, the second
//! it is expected to be signed in); the cache keeps it beside the old one
//! until then, so a token is never handed out before its `iat` and each
//! refresh buys the most time. Refreshes queue behind every caller
//! (`signer::Priority::Refresh`) until within `signer::URGENT` of the
//! deadline, and at most `cache.refresh_max` wait at once. A refreshed token
//! is handed out only to a caller that attests as that container, like any
//! cached token, and never with less than half its life left.

use std::sync::Arc;
use std::time::Duration;

use super::App;
use crate::cache::{CachedToken, Due, TokenKind};
use crate::signer::{Priority, QueueError};
use crate::token::TokenEncoder;

/// How often the refresh set is planned.
pub const TICK: Duration = Duration::from_millis(100);
/// Entries asked for within this many token lifetimes are kept fresh.
pub const INTEREST_LIFETIMES: u64 = 3;

/// What a pass knows of the signer, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct SignerLoad {
    /// What the signatures queued now take.
    pub queued_ms: u64,
    /// One signature, as measured (at least 1).
    pub sign_ms: u64,
}

/// Milliseconds a token's refresh is brought forward by its `jti`:
/// 0..=life/60 s.
fn spread_ms(t: &CachedToken) -> u64 {
    let life_ms = t.exp.saturating_sub(t.iat) * 1000;
    // FNV-1a, then splitmix64's finaliser: jtis that differ in one
    // character land far apart.
    let mut h = t.jti.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (h ^ (h >> 31)) % (life_ms / 60 + 1)
}

/// The tokens of `set` to re-sign at `now_ms` (Unix milliseconds), at most
/// `room`, each with its new `iat` (Unix seconds). Earliest deadline first:
/// signed in that order from now, token k is done after the queued work
/// and k signatures; once that, a signature in progress and a tick no
/// longer fit before the deadline of k, k and every token due before it
/// are released.
pub fn plan(set: &[&CachedToken], now_ms: u64, load: SignerLoad, room: usize) -> Vec<(usize, u64)> {
    let sign_ms = load.sign_ms.max(1);
    let target = |t: &CachedToken| (t.stale_at() * 1000).saturating_sub(spread_ms(t));
    let mut order: Vec<usize> = (0..set.len()).collect();
    order.sort_by_key(|&i| target(set[i]));
    let margin = sign_ms + TICK.as_millis() as u64;
    // When each would be signed, and whether it (or one due after it) must start now.
    let done: Vec<u64> = (1..=order.len() as u64)
        .map(|k| now_ms + load.queued_ms + k * sign_ms)
        .collect();
    let mut must_start = vec![false; order.len()];
    let mut later = false;
    for (k, &i) in order.iter().enumerate().rev() {
        later |= done[k] + margin >= target(set[i]);
        must_start[k] = later;
    }
    let now_s = now_ms / 1000;
    let mut due = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        if due.len() >= room || !must_start[k] {
            break;
        }
        let t = set[i];
        // In time: issued in the second it is signed by, held back until
        // then. Late (the signer is behind): dated when it will be signed,
        // so it still has half its life when handed out and the next
        // refresh is not due at once, which would put the signer further
        // behind.
        let iat = match done[k].div_ceil(1000) {
            s if s <= t.stale_at() => s,
            _ => (done[k] / 1000).max(t.stale_at()),
        }
        .max(now_s);
        // A token re-signed within its own second would buy nothing.
        if iat > t.iat {
            due.push((i, iat));
        }
    }
    due
}

/// Runs refresh passes every [`TICK`] until the runtime stops.
pub async fn run(app: Arc<App>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_expire = 0;
    loop {
        tick.tick().await;
        let now_ms = super::issue::now_unix_ms();
        if now_ms / 1000 != last_expire {
            last_expire = now_ms / 1000;
            app.cache.expire(last_expire);
        }
        app.refresh_pass(now_ms);
    }
}

impl App {
    /// Queues the refreshes [`plan`] picks (as many as the queue has room for).
    pub fn refresh_pass(self: &Arc<Self>, now_ms: u64) {
        let signing = &self.keys().signing;
        let room = signing.refresh_room();
        if room == 0 {
            return;
        }
        let since = (now_ms / 1000).saturating_sub(INTEREST_LIFETIMES * self.cfg.token_ttl_seconds);
        let load = SignerLoad {
            queued_ms: signing.queued_wait().as_millis() as u64,
            sign_ms: signing.sign_estimate().as_millis() as u64,
        };
        for due in self.cache.due(since, |set| plan(set, now_ms, load, room)) {
            let app = Arc::clone(self);
            tokio::spawn(async move { app.refresh(due).await });
        }
    }

    async fn refresh(&self, due: Due) {
        let signed = async {
            // The same form as the cached token: a JWT-SVID stays one.
            let spiffe_id = (due.key.kind == TokenKind::Svid)
                .then(|| self.spiffe_id(&due.workload, None))
                .transpose()
                .map_err(|r| r.message)?;
            let unsigned = self
                .unsigned(
                    &due.workload,
                    &due.key.audience,
                    due.key.kind,
                    spiffe_id.as_deref(),
                    due.iat,
                )
                .map_err(|r| r.message)?;
            // The old token is handed out until `stale_at`.
            let left_ms = (due.stale_at * 1000).saturating_sub(super::issue::now_unix_ms());
            let deadline = std::time::Instant::now() + Duration::from_millis(left_ms);
            let priority = Priority::Refresh { deadline };
            let signing = &unsigned.keys.signing;
            let (input, sig) = match signing.sign(unsigned.input, priority).await {
                Ok(s) => s,
                Err(QueueError::Signer(e)) => {
                    self.metrics.signer_error(e.reason());
                    return Err(e.to_string());
                }
                Err(e) => return Err(e.to_string()),
            };
            Ok(CachedToken {
                token: TokenEncoder::finish(input, &sig),
                jti: unsigned.jti,
                iat: due.iat,
                exp: unsigned.exp,
            })
        }
        .await;
        match signed {
            Ok(token) => {
                let now = super::issue::now_unix();
                self.cache.refreshed(&due.key, token, now);
                self.metrics.refreshes.inc();
                // Done after the old token stopped being handed out: a caller
                // in between had to wait for a signature of its own.
                if now >= due.stale_at {
                    self.metrics.refreshes_late.inc();
                }
            }
            Err(reason) => {
                self.cache.refresh_failed(&due.key);
                tracing::debug!(namespace = %due.workload.namespace, pod = %due.workload.pod_name, %reason, "refresh skipped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(i: usize, iat: u64, life: u64) -> CachedToken {
        CachedToken {
            token: String::new(),
            jti: format!("jti-{i}"),
            iat,
            exp: iat + life,
        }
    }

    const IDLE: SignerLoad = SignerLoad {
        queued_ms: 0,
        sign_ms: 70,
    };

    /// The ms at which `t` is first released on an idle signer, and its iat.
    fn release(t: &CachedToken, load: SignerLoad) -> (u64, u64) {
        let life_ms = (t.exp - t.iat) * 1000;
        let from = t.stale_at() * 1000 - life_ms / 60 - load.queued_ms - 1000;
        (from..t.exp * 1000)
            .step_by(10)
            .find_map(|ms| plan(&[t], ms, load, 10).first().map(|&(_, iat)| (ms, iat)))
            .unwrap()
    }

    #[test]
    fn a_lone_token_is_re_signed_just_before_its_deadline_and_issued_then() {
        // 60 s tokens from 1000: handed out until 1030, stale from 1031.
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..200 {
            let t = tok(i, 1000, 60);
            assert_eq!(t.stale_at(), 1031);
            let (at, iat) = release(&t, IDLE);
            // Within a second (the spread) and a tick + two signatures of it.
            assert!((1_029_760..=1_030_760).contains(&at), "{at}");
            assert!(iat == 1031 || iat == 1030, "{iat}");
            seen.insert(at / 100);
        }
        assert!(seen.len() >= 8, "spread by jti: {seen:?}");
        // One-hour tokens spread over a minute.
        let seen: std::collections::BTreeSet<u64> = (0..200)
            .map(|i| release(&tok(i, 1000, 3600), IDLE).0 / 1000)
            .collect();
        assert!(seen.iter().all(|s| (2739..=2800).contains(s)), "{seen:?}");
        assert!(seen.len() >= 30, "{seen:?}");
    }

    #[test]
    fn queued_work_brings_a_refresh_forward_but_never_into_its_own_second() {
        let t = tok(7, 1000, 60);
        let (idle, _) = release(&t, IDLE);
        let busy = SignerLoad {
            queued_ms: 5_000,
            sign_ms: 70,
        };
        let (at, iat) = release(&t, busy);
        assert_eq!(idle - at, 5_000);
        // Expected to be signed 5 s later: issued in that second, not before.
        assert_eq!(iat, (at + 5_070).div_ceil(1000));
        // A backlog past the deadline: dated when it will be signed (the
        // second it starts in), not at the deadline it will miss.
        let swamped = SignerLoad {
            queued_ms: 100_000,
            sign_ms: 70,
        };
        assert_eq!(plan(&[&t], 1_000_500, swamped, 10), [(0, 1100)]);
        let behind = SignerLoad {
            queued_ms: 30_400,
            sign_ms: 70,
        };
        assert_eq!(plan(&[&t], 1_000_500, behind, 10), [(0, 1031)]);
    }

    #[test]
    fn tokens_due_together_are_released_earliest_deadline_first_and_spread() {
        // A node boot: 100 tokens with one deadline need 7 s of signing;
        // they are released together 7 s ahead, earliest deadline first,
        // and their new iats follow the expected signing times, so the
        // burst comes apart.
        let toks: Vec<CachedToken> = (0..100).map(|i| tok(i, 1000, 60)).collect();
        let set: Vec<&CachedToken> = toks.iter().collect();
        let early = plan(&set, 1_022_000, IDLE, 1000);
        assert!(early.is_empty(), "{early:?}");
        let all = plan(&set, 1_024_500, IDLE, 1000);
        assert_eq!(all.len(), 100);
        let targets: Vec<u64> = all
            .iter()
            .map(|&(i, _)| toks[i].stale_at() * 1000 - spread_ms(&toks[i]))
            .collect();
        assert!(targets.is_sorted(), "earliest deadline first");
        let iats: Vec<u64> = all.iter().map(|&(_, iat)| iat).collect();
        assert!(iats.is_sorted(), "{iats:?}");
        assert_eq!((iats[0], iats[99]), (1025, 1031), "{iats:?}");
        // At most `room`, the earliest deadlines.
        assert_eq!(plan(&set, 1_024_500, IDLE, 5), all[..5]);
    }
}
