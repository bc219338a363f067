//! One token request, top down: attest → kubelet → cache → claims → signer.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::Instrument as _;

use super::audit::AuditRecord;
use super::{App, Code, Refusal};
use crate::attest::{Peer, PeerProcess, Workload};
use crate::cache::{CacheKey, CachedToken};
use crate::signer::{SignerError, sign_job};
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

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
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
        self.token_for(caller, &workload, audience, form)
            .instrument(span)
            .await
            .map_err(|r| r.for_workload(&workload))
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
    fn spiffe_id(&self, workload: &Workload, asked: Option<&str>) -> Result<String, Refusal> {
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

    /// Cache → claims → signer for an attested workload.
    async fn token_for(
        &self,
        caller: &PeerProcess,
        workload: &Workload,
        audience: &str,
        form: Form<'_>,
    ) -> Result<Issued, Refusal> {
        let spiffe_id = match form {
            Form::Jss => None,
            Form::Svid { asked } => Some(self.spiffe_id(workload, asked)?),
        };
        let now = now_unix();
        let key = self.cache.enabled().then(|| CacheKey {
            pod_uid: workload.pod_uid.clone(),
            container_id: workload.container_id.clone(),
            audience: audience.to_string(),
            svid: spiffe_id.is_some(),
        });
        if let Some(t) = key.as_ref().and_then(|k| self.cache.get(k, now)) {
            self.metrics.cache_hits.inc();
            return Ok(self.hand_out("cached", caller, workload, audience, t, spiffe_id));
        }
        let claims = self
            .claims
            .build(workload, audience, now)
            .map_err(|e| Refusal::from(&e))?;
        let (jti, exp) = (claims.jti.clone(), claims.exp);
        // Serialised here, so only owned bytes cross to a blocking thread.
        let keys = self.keys();
        let input = match &spiffe_id {
            None => keys.encoder.signing_input(&claims),
            Some(id) => keys
                .svid_encoder
                .signing_input(&SvidClaims::new(claims, id.clone())),
        }
        .map_err(|e| Refusal::new(Code::Internal, e.to_string()))?;
        let token = CachedToken {
            token: self.sign(input).await?,
            jti,
            iat: now,
            exp,
        };
        if let Some(key) = key {
            self.cache.insert(key, token.clone(), now);
        }
        Ok(self.hand_out("issued", caller, workload, audience, token, spiffe_id))
    }

    /// Signs the signing `input` through the bounded signer queue: past
    /// `limits.signer_queue` waiting, 503 `overloaded` rather than queueing
    /// without limit.
    async fn sign(&self, input: String) -> Result<String, Refusal> {
        let Ok(permit) = Arc::clone(&self.sign_queue).try_acquire_owned() else {
            return Err(Refusal::new(
                Code::Overloaded,
                "too many requests are waiting for the signer; retry shortly",
            ));
        };
        let signed = sign_job(&self.signer, move |signer| {
            let _permit = permit;
            let sig = signer.sign(input.as_bytes())?;
            Ok(TokenEncoder::finish(input, &sig))
        })
        .await;
        signed.map_err(|e| {
            self.metrics.signer_errors.inc();
            match e {
                SignerError::JobFailed { .. } => Refusal::new(Code::Internal, e.to_string()),
                // Retry-After only where asking again can help (the TPM went
                // away), not for a key that will never sign (a PCR mismatch).
                _ => Refusal::new(
                    Code::SignerUnavailable,
                    format!("cannot sign the token: {e}"),
                )
                .retry_after(e.is_transient().then_some(1)),
            }
        })
    }

    /// Audits and counts a token handed to `caller` (`outcome`: issued or cached).
    fn hand_out(
        &self,
        outcome: &'static str,
        caller: &PeerProcess,
        workload: &Workload,
        audience: &str,
        t: CachedToken,
        spiffe_id: Option<String>,
    ) -> Issued {
        self.audit.record(AuditRecord {
            pid: caller.pid,
            uid: caller.uid,
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
        Issued {
            token: t.token,
            exp: t.exp,
            spiffe_id,
        }
    }
}
