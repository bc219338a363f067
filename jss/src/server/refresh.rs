//! Tokens re-signed ahead of need, in the signer's idle time.
//!
//! Clients ask again at about half a token's life (spiffe-helper: exp/2 +
//! 1 s). With a TPM that signs in 25–200 ms, a client that finds no fresh
//! token waits behind every signature queued before it. So tokens of
//! workloads that asked within the last three lifetimes are re-signed just
//! before half-life: each refresh costs one signature per workload, so the
//! later it lands the more workloads one TPM keeps fresh (README,
//! "Capacity"). A token falls due as its urgent window opens, earlier by the
//! time the signatures already queued are measured to take, and by up to a
//! fortieth of its life spread by its `jti` so that a node boot's burst does
//! not stay in step. (A second earlier, outside the urgent window, cost a
//! fifth of the TPM with 20 s tokens: refresh points are whole seconds.)
//! Refreshes queue behind every caller (`signer::Priority::Refresh`) until
//! within `signer::URGENT` of the old token's half-life, and at most
//! `cache.refresh_max` wait at once. A refreshed token is handed out only to
//! a caller that attests as that container, like any cached token, and never
//! with less than half its life left.

use std::sync::Arc;
use std::time::Duration;

use super::App;
use crate::cache::{CachedToken, Due, TokenKind};
use crate::signer::{Priority, QueueError, URGENT};
use crate::token::TokenEncoder;

/// How often the cache is scanned for due tokens.
pub const TICK: Duration = Duration::from_secs(1);
/// Entries asked for within this many token lifetimes are kept fresh.
pub const INTEREST_LIFETIMES: u64 = 3;

/// When `t` is due, in Unix seconds: as its urgent window opens
/// (`signer::URGENT` before its half-life), less `queued_s` (seconds the
/// signatures queued now take) and 0..=life/40 s spread by its `jti`.
pub fn refresh_at(t: &CachedToken, queued_s: u64) -> u64 {
    let life = t.exp.saturating_sub(t.iat);
    let spread = t
        .jti
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
        % (life / 40 + 1);
    let half = t.iat + life / 2;
    half.saturating_sub(URGENT.as_secs() + queued_s + spread)
        .max(t.iat)
}

/// Runs refresh passes every [`TICK`] until the runtime stops.
pub async fn run(app: Arc<App>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        app.refresh_pass(super::issue::now_unix());
    }
}

impl App {
    /// Queues a refresh for each due token (as many as the queue has room
    /// for) and drops expired entries.
    pub fn refresh_pass(self: &Arc<Self>, now: u64) {
        self.cache.expire(now);
        let room = self.keys().signing.refresh_room();
        if room == 0 {
            return;
        }
        let since = now.saturating_sub(INTEREST_LIFETIMES * self.cfg.token_ttl_seconds);
        let queued_s = self.keys().signing.queued_wait().as_secs();
        let at = |t: &CachedToken| refresh_at(t, queued_s);
        for due in self.cache.due(now, since, room, at) {
            let app = Arc::clone(self);
            tokio::spawn(async move { app.refresh(due).await });
        }
    }

    async fn refresh(&self, due: Due) {
        let now = super::issue::now_unix();
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
                    now,
                )
                .map_err(|r| r.message)?;
            // The old token is handed out until its half-life.
            let left = (due.iat + due.exp).div_ceil(2).saturating_sub(now);
            let deadline = std::time::Instant::now() + Duration::from_secs(left);
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
                iat: now,
                exp: unsigned.exp,
            })
        }
        .await;
        match signed {
            Ok(token) => {
                self.cache.refreshed(&due.key, token);
                self.metrics.refreshes.inc();
                // Done after the old token stopped being handed out: a caller
                // in between had to wait for a signature of its own.
                if super::issue::now_unix() * 2 > due.iat + due.exp {
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

    fn tok(i: usize, life: u64) -> CachedToken {
        CachedToken {
            token: String::new(),
            jti: format!("jti-{i}"),
            iat: 1000,
            exp: 1000 + life,
        }
    }

    #[test]
    fn refresh_points_fall_as_the_urgent_window_opens_and_spread() {
        // 60 s tokens: half-life 1030, urgent from 1029; due 1028..=1029.
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..200 {
            let at = refresh_at(&tok(i, 60), 0);
            assert!((1028..=1029).contains(&at), "{at}");
            seen.insert(at);
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
        // One-hour tokens spread over 90 s before 2799.
        let seen: std::collections::BTreeSet<u64> =
            (0..400).map(|i| refresh_at(&tok(i, 3600), 0)).collect();
        assert!(seen.iter().all(|at| (2709..=2799).contains(at)), "{seen:?}");
        assert!(seen.len() >= 30, "{seen:?}");
        // 20 s tokens: no room for a spread; due 1 s before half-life.
        assert_eq!(refresh_at(&tok(0, 20), 0), 1009);
    }

    #[test]
    fn a_queued_signer_brings_refreshes_forward_but_not_before_issue() {
        let t = tok(7, 60);
        assert_eq!(refresh_at(&t, 5), refresh_at(&t, 0) - 5);
        assert_eq!(refresh_at(&t, 1_000), 1000);
    }
}
