//! One token request, top down: attest → kubelet → claims → cache → signer.

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::Instrument as _;

use super::audit::AuditRecord;
use super::{App, Denial};
use crate::attest::{Location, PeerProcess, Workload, locate};
use crate::cache::{CacheKey, CachedToken};
use crate::claims::ClaimsError;
use crate::signer::Backend;
use crate::token::TokenEncoder;

/// A token handed to the caller.
pub struct Issued {
    pub token: String,
    pub exp: u64,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl App {
    /// Attests `peer` and returns a token for `audience` (already allow-listed).
    pub async fn issue(
        self: &Arc<Self>,
        peer: &PeerProcess,
        location: &OnceLock<Location>,
        audience: &str,
    ) -> Result<Issued, Denial> {
        let span = tracing::info_span!("token", pid = peer.pid);
        self.issue_inner(peer, location, audience)
            .instrument(span)
            .await
    }

    /// Counts, audits and logs a refusal of the caller `pid` (running as `uid`).
    pub(super) fn refuse(&self, pid: i32, uid: u32, audience: &str, d: Denial) -> Denial {
        self.metrics.deny(d.code);
        self.audit.record(AuditRecord {
            pid,
            uid,
            audience: Some(audience),
            outcome: "denied",
            code: Some(d.code),
            reason: Some(&d.message),
            ..Default::default()
        });
        tracing::warn!(code = d.code, "{}", d.message);
        d
    }

    async fn issue_inner(
        self: &Arc<Self>,
        peer: &PeerProcess,
        location: &OnceLock<Location>,
        audience: &str,
    ) -> Result<Issued, Denial> {
        let deny = |d: Denial| self.refuse(peer.pid, peer.uid, audience, d);
        let loc = match location.get() {
            Some(l) => l,
            None => match locate(self.attestor.proc_root(), peer.pid) {
                Ok(l) => location.get_or_init(|| l),
                Err(e) => return Err(deny(Denial::from(&e))),
            },
        };
        let workload = match self.attestor.attest_located(peer, loc).await {
            Ok(w) => w,
            Err(e) => return Err(deny(Denial::from(&e))),
        };
        // A child span with all three fields at once: cheaper to format than
        // recording them one by one into the request's span.
        let span = tracing::info_span!(
            "workload",
            namespace = %workload.namespace,
            pod = %workload.pod_name,
            container = %workload.container_name
        );
        self.token_for(peer, &workload, audience)
            .instrument(span)
            .await
    }

    /// Cache → claims → signer for an attested workload.
    async fn token_for(
        self: &Arc<Self>,
        peer: &PeerProcess,
        workload: &Workload,
        audience: &str,
    ) -> Result<Issued, Denial> {
        let deny = |d: Denial| self.refuse(peer.pid, peer.uid, audience, d);
        let record = |outcome: &'static str, t: &CachedToken| {
            self.audit.record(AuditRecord {
                pid: peer.pid,
                uid: peer.uid,
                namespace: Some(&workload.namespace),
                pod: Some(&workload.pod_name),
                container: Some(&workload.container_name),
                audience: Some(audience),
                jti: Some(&t.jti),
                exp: Some(t.exp),
                outcome,
                ..Default::default()
            });
            self.metrics.tokens_issued.inc();
        };

        let now = now_unix();
        let key = self.cache.enabled().then(|| CacheKey {
            pod_uid: workload.pod_uid.clone(),
            container_id: workload.container_id.clone(),
            audience: audience.to_string(),
        });
        if let Some(t) = key.as_ref().and_then(|k| self.cache.get(k, now)) {
            self.metrics.cache_hits.inc();
            record("cached", &t);
            return Ok(Issued {
                token: t.token,
                exp: t.exp,
            });
        }

        let claims = self.claims.build(workload, audience, now).map_err(|e| {
            deny(match e {
                ClaimsError::Random => Denial::new(500, "internal", e.to_string()),
                _ => Denial::new(403, "claims_unavailable", e.to_string()),
            })
        })?;
        // Bound the work waiting for the signer: past it, shed load with 503
        // rather than queue without limit.
        let Ok(permit) = Arc::clone(&self.sign_queue).try_acquire_owned() else {
            return Err(deny(Denial::unavailable(
                "overloaded",
                "too many requests are waiting for the signer; retry shortly".into(),
            )));
        };
        // Serialised here, so only owned bytes cross to a blocking thread.
        let input = match self.encoder().signing_input(&claims) {
            Ok(i) => i,
            Err(e) => return Err(deny(Denial::new(500, "internal", e.to_string()))),
        };
        let (jti, exp) = (claims.jti, claims.exp);
        let signer = Arc::clone(&self.signer);
        let sign = move || {
            let _permit = permit;
            let sig = signer.sign(input.as_bytes())?;
            Ok::<_, crate::signer::SignerError>(TokenEncoder::finish(input, &sig))
        };
        // A software signature is ~20 µs of CPU, less than handing it to the
        // blocking pool costs; the TPM waits on a device or socket for ~1 ms
        // or more, so it never runs on the async workers.
        let signed = match self.signer.backend() {
            Backend::Software => Ok(sign()),
            Backend::Tpm => tokio::task::spawn_blocking(sign).await,
        };
        let token = match signed {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                self.metrics.signer_errors.inc();
                return Err(deny(Denial::unavailable(
                    "signer_unavailable",
                    format!("cannot sign the token: {e}"),
                )));
            }
            Err(e) => {
                self.metrics.signer_errors.inc();
                return Err(deny(Denial::new(
                    500,
                    "internal",
                    format!("signing task failed: {e}"),
                )));
            }
        };
        let cached = CachedToken {
            token,
            jti,
            iat: now,
            exp,
        };
        record("issued", &cached);
        if let Some(key) = key {
            self.cache.insert(key, cached.clone(), now);
        }
        Ok(Issued {
            token: cached.token,
            exp,
        })
    }
}
