//! One token request, top down: attest → kubelet → cache → claims → signer.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::Instrument as _;

use super::audit::AuditRecord;
use super::{App, Code, Keys, Refusal};
use crate::attest::{Peer, PeerProcess, Workload};
use crate::cache::{CacheKey, CachedToken, TokenKind};
use crate::claims::Scope;
use crate::kubelet::PodRef;
use crate::signer::{Priority, QueueError};
use crate::spiffe::SvidClaims;
use crate::token::TokenEncoder;

/// A token handed to the caller.
pub struct Issued {
    pub token: String,
    pub exp: u64,
    /// The JWT-SVID's SPIFFE ID (its `sub`); `None` for a JSS token.
    pub spiffe_id: Option<String>,
}

/// The kind of token asked for.
#[derive(Debug, Clone, Copy)]
pub enum Form<'a> {
    /// A JSS token (`/v1/token`): header with `x5c`, JSS's `sub`.
    Jss,
    /// A JWT-SVID (SPIFFE Workload API): header `alg`/`kid`/`typ` only,
    /// `sub` the caller's SPIFFE ID, which must equal `asked` when set.
    Svid { asked: Option<&'a str> },
}

/// A signing input with the claims the cache and audit line need.
pub(super) struct Unsigned {
    pub input: String,
    pub jti: String,
    pub exp: u64,
    /// The key version whose header `input` carries: it must sign it.
    pub keys: Arc<Keys>,
}

pub(crate) fn now_unix() -> u64 {
    now_unix_ms() / 1000
}

/// Unix time in milliseconds.
pub(super) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl App {
    /// Attests `peer` and returns a token for `audience` (already allow-listed).
    pub async fn issue(self: &Arc<Self>, peer: &Peer, audience: &str) -> Result<Issued, Refusal> {
        self.issue_as(peer, audience, Form::Jss).await
    }

    /// Attests `peer` and returns a token of `form` for `audience` (already allow-listed).
    pub async fn issue_as(
        self: &Arc<Self>,
        peer: &Peer,
        audience: &str,
        form: Form<'_>,
    ) -> Result<Issued, Refusal> {
        let (caller, workload) = self.attest(peer).await?;
        // A child span with all three fields at once: cheaper to format than
        // recording them one by one into the request's span.
        let span = tracing::info_span!(
            "workload",
            namespace = %workload.namespace,
            pod = %workload.pod_name,
            container = %workload.container_name
        );
        async {
            let (kind, spiffe_id) = match form {
                Form::Jss => (TokenKind::Jss, None),
                Form::Svid { asked } => (TokenKind::Svid, Some(self.spiffe_id(&workload, asked)?)),
            };
            self.token_for(caller, &workload, audience, kind, spiffe_id)
                .await
        }
        .instrument(span)
        .await
        .map_err(|r| r.for_workload(&workload))
    }

    /// A pod-level token for `audience` (already allow-listed) for the pod
    /// `pod` names, once the kubelet's pod list confirms it (see
    /// [`PodRef`]); `caller` is the pod-token socket's root peer, for the
    /// audit line. Refusals: the pod lookup's codes (`pod_not_found`,
    /// `pod_mismatch`, `container_not_running`, `kubelet_*`), then signing's.
    pub async fn issue_for_pod(
        self: &Arc<Self>,
        caller: &PeerProcess,
        pod: &PodRef,
        audience: &str,
    ) -> Result<Issued, Refusal> {
        let found = self
            .attestor
            .pods()
            .find_pod(pod)
            .await
            .map_err(|e| Refusal::from(&e).for_pod(pod))?;
        let workload = Workload::pod_level(&found);
        let span = tracing::info_span!(
            "pod",
            namespace = %workload.namespace,
            pod = %workload.pod_name
        );
        self.token_for(caller, &workload, audience, TokenKind::Pod, None)
            .instrument(span)
            .await
            .map_err(|r| r.for_pod(pod))
    }

    /// The caller's workload: its process as taken at accept, its container
    /// (located once per connection), the kubelet's pod, the PID-reuse guard.
    async fn attest<'p>(&self, peer: &'p Peer) -> Result<(&'p PeerProcess, Workload), Refusal> {
        let caller = peer.process().map_err(|u| Refusal::from(&u.error))?;
        let located = peer
            .locate(self.attestor.proc_root(), caller.pid)
            .map_err(|e| Refusal::from(&e))?;
        let workload = self
            .attestor
            .attest_located(caller, located)
            .await
            .map_err(|e| Refusal::from(&e))?;
        Ok((caller, workload))
    }

    /// The SPIFFE ID of `workload`, checked against the one `asked` for.
    pub(super) fn spiffe_id(
        &self,
        workload: &Workload,
        asked: Option<&str>,
    ) -> Result<String, Refusal> {
        let Some(spiffe) = &self.cfg.spiffe else {
            return Err(Refusal::new(
                Code::Internal,
                "a JWT-SVID was asked for but [spiffe] is not configured",
            ));
        };
        let id = spiffe.spiffe_id(workload);
        match asked {
            Some(a) if !a.is_empty() && a != id => Err(Refusal::new(
                Code::BadRequest,
                format!("the caller's SPIFFE ID is {id}, not the {a} asked for"),
            )),
            _ => Ok(id),
        }
    }

    /// The signing input of a token of `kind` for `workload` at `now`: a
    /// JSS token (pod-level for [`TokenKind::Pod`]), or a JWT-SVID (no
    /// `x5c`, `sub` the SPIFFE ID) when `spiffe_id` is set.
    pub(super) fn unsigned(
        &self,
        workload: &Workload,
        audience: &str,
        kind: TokenKind,
        spiffe_id: Option<&str>,
        now: u64,
    ) -> Result<Unsigned, Refusal> {
        let scope = match kind {
            TokenKind::Pod => Scope::Pod,
            TokenKind::Jss | TokenKind::Svid => Scope::Container,
        };
        let claims = self
            .claims
            .build_as(workload, scope, audience, now)
            .map_err(|e| Refusal::from(&e))?;
        let (jti, exp) = (claims.jti.clone(), claims.exp);
        let keys = self.keys();
        let input = match spiffe_id {
            None => keys.encoder.signing_input(&claims),
            Some(id) => keys
                .svid_encoder
                .signing_input(&SvidClaims::new(claims, id.to_string())),
        }
        .map_err(|e| Refusal::new(Code::Internal, e.to_string()))?;
        Ok(Unsigned {
            input,
            jti,
            exp,
            keys,
        })
    }

    /// Cache → claims → signer for a checked workload.
    async fn token_for(
        &self,
        caller: &PeerProcess,
        workload: &Workload,
        audience: &str,
        kind: TokenKind,
        spiffe_id: Option<String>,
    ) -> Result<Issued, Refusal> {
        let now = now_unix();
        let key = self.cache.enabled().then(|| CacheKey {
            pod_uid: workload.pod_uid.clone(),
            container_id: workload.container_id.clone(),
            audience: audience.to_string(),
            kind,
        });
        if let Some(t) = key.as_ref().and_then(|k| self.cache.get(k, now)) {
            self.metrics.cache_hits.inc();
            return Ok(self.hand_out("cached", caller, workload, audience, kind, t, spiffe_id));
        }
        let unsigned = self.unsigned(workload, audience, kind, spiffe_id.as_deref(), now)?;
        let token = CachedToken {
            token: self.sign(&unsigned.keys, unsigned.input).await?,
            jti: unsigned.jti,
            iat: now,
            exp: unsigned.exp,
        };
        if let Some(key) = key {
            let source = self
                .cfg
                .cache
                .refresh_ahead
                .then(|| Arc::new(workload.clone()));
            self.cache.insert(key, token.clone(), source, now);
        }
        Ok(self.hand_out("issued", caller, workload, audience, kind, token, spiffe_id))
    }

    /// Signs the signing `input` ahead of any refresh. Past
    /// `limits.signer_queue` callers waiting: 503 `overloaded`, Retry-After
    /// the measured time the queue ahead needs.
    async fn sign(&self, keys: &Keys, input: String) -> Result<String, Refusal> {
        match keys.signing.sign(input, Priority::Caller).await {
            Ok((input, sig)) => {
                self.signer_health.record(Ok(()));
                Ok(TokenEncoder::finish(input, &sig))
            }
            Err(e @ QueueError::Full { retry_after_s, .. }) => Err(Refusal::new(
                Code::Overloaded,
                format!("{e}; ask again after Retry-After"),
            )
            .retry_after(Some(retry_after_s))),
            Err(QueueError::Signer(e)) => {
                self.signer_health.record(Err(&e));
                self.metrics.signer_error(e.reason());
                // Retry-After only where asking again can help (the TPM went
                // away), not for a key that will never sign (a PCR mismatch).
                Err(Refusal::new(
                    Code::SignerUnavailable,
                    format!("cannot sign the token: {e}"),
                )
                .retry_after(e.is_transient().then_some(1)))
            }
        }
    }

    /// The signer's readiness: the last signature's outcome when recent,
    /// else that of a probe signature, queued behind callers (a full queue
    /// means the signer is busy signing: ready).
    pub async fn signer_ready(&self) -> Result<(), super::readiness::Failure> {
        if let Some(outcome) = self.signer_health.fresh() {
            return outcome;
        }
        match self
            .keys()
            .signing
            .sign(
                "jss readiness probe".into(),
                Priority::Refresh {
                    deadline: std::time::Instant::now() + std::time::Duration::from_secs(60),
                },
            )
            .await
        {
            Ok(_) => self.signer_health.record(Ok(())),
            Err(QueueError::Full { .. }) => return Ok(()),
            Err(QueueError::Signer(e)) => {
                self.metrics.signer_error(e.reason());
                self.signer_health.record(Err(&e));
            }
        }
        self.signer_health.fresh().unwrap_or(Ok(()))
    }

    /// Audits and counts a token handed to `caller` (`outcome`: issued or cached).
    #[allow(clippy::too_many_arguments)]
    fn hand_out(
        &self,
        outcome: &'static str,
        caller: &PeerProcess,
        workload: &Workload,
        audience: &str,
        kind: TokenKind,
        t: CachedToken,
        spiffe_id: Option<String>,
    ) -> Issued {
        self.audit.record(AuditRecord {
            pid: caller.pid,
            uid: caller.uid,
            namespace: Some(&workload.namespace),
            pod: Some(&workload.pod_name),
            container: (kind != TokenKind::Pod).then_some(workload.container_name.as_str()),
            audience: Some(audience),
            jti: Some(&t.jti),
            exp: Some(t.exp),
            outcome,
            ..Default::default()
        });
        self.metrics.tokens_issued.inc();
        Issued {
            token: t.token,
            exp: t.exp,
            spiffe_id,
        }
    }
}
