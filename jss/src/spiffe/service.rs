//! The `SpiffeWorkloadAPI` gRPC service: JWT-SVIDs, JWT bundles and
//! JWT-SVID validation; the X.509 RPCs answer Unimplemented.
//!
//! Every request must carry the metadata `workload.spiffe.io: true`
//! (SPIFFE Workload Endpoint, section 6.2). Refusals go through the same
//! count-audit-log path as `/v1/token` and map to gRPC codes by their class.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use super::bundle::BundleWatch;
use super::config::SpiffeConfig;
use super::proto::spiffe_workload_api_server::SpiffeWorkloadApi;
use super::proto::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svidRequest, X509svidResponse,
};
use super::validate::{ValidateError, validate};
use crate::attest::Peer;
use crate::server::http::{allowed_audience, record_refusal};
use crate::server::{App, Code, Form, Refusal};

/// The metadata key every Workload API request carries.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// The service over one [`App`].
pub struct Service {
    pub app: Arc<App>,
    pub spiffe: SpiffeConfig,
    pub bundle: Arc<BundleWatch>,
}

type Stream2<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The gRPC status for `r`: not in a pod (and other caller trouble) →
/// PermissionDenied, the request → InvalidArgument, the kubelet, signer or
/// a deadline → Unavailable, our own fault → Internal.
pub fn status_of(r: &Refusal) -> Status {
    let code = match r.status() {
        401 | 403 => tonic::Code::PermissionDenied,
        400..=499 => tonic::Code::InvalidArgument,
        503 => tonic::Code::Unavailable,
        _ => tonic::Code::Internal,
    };
    Status::new(code, format!("{}: {}", r.code, r.message))
}

impl Service {
    /// The caller as taken at accept, and the security header checked.
    fn caller<T>(&self, req: &Request<T>) -> Result<Arc<Peer>, Status> {
        let peer = req
            .extensions()
            .get::<Arc<Peer>>()
            .cloned()
            .ok_or_else(|| Status::internal("the connection carries no caller credentials"))?;
        let header_ok = req
            .metadata()
            .get(SECURITY_HEADER)
            .is_some_and(|v| v.as_bytes() == b"true");
        if !header_ok {
            return Err(self.refuse(
                &peer,
                Refusal::new(
                    Code::BadRequest,
                    format!(
                        "the request lacks the metadata `{SECURITY_HEADER}: true` every SPIFFE Workload API client sends"
                    ),
                ),
            ));
        }
        Ok(peer)
    }

    /// Counts, audits and logs `r` like every refusal, then answers it.
    fn refuse(&self, peer: &Peer, r: Refusal) -> Status {
        record_refusal(&self.app, peer, &r);
        status_of(&r)
    }

    async fn fetch_svid(&self, peer: &Peer, req: &JwtsvidRequest) -> Result<Jwtsvid, Refusal> {
        let asked = match req.audience.as_slice() {
            [a] if !a.is_empty() => a.as_str(),
            [] => {
                return Err(Refusal::new(
                    Code::BadAudience,
                    "JWTSVIDRequest.audience is empty; name one audience",
                ));
            }
            _ => {
                return Err(Refusal::new(
                    Code::BadAudience,
                    format!(
                        "JSS signs one audience per JWT-SVID; ask for each of {} separately",
                        req.audience.join(", ")
                    ),
                ));
            }
        };
        let audience = allowed_audience(&self.app.cfg.audiences, Some(asked))?;
        let asked_id = Some(req.spiffe_id.as_str()).filter(|s| !s.is_empty());
        let issued = self
            .app
            .issue_as(peer, audience, Form::Svid { asked: asked_id })
            .await
            .map_err(|r| r.for_audience(audience))?;
        Ok(Jwtsvid {
            spiffe_id: issued.spiffe_id.unwrap_or_default(),
            svid: issued.token,
            hint: String::new(),
        })
    }

    async fn check(
        &self,
        req: &ValidateJwtsvidRequest,
    ) -> Result<ValidateJwtsvidResponse, Refusal> {
        if req.audience.is_empty() || req.svid.is_empty() {
            return Err(Refusal::new(
                Code::BadRequest,
                "ValidateJWTSVIDRequest needs both audience and svid",
            ));
        }
        let td = &self.spiffe.trust_domain;
        let mut result = validate(&req.svid, &req.audience, &self.bundle.current(), td);
        if let Err(e) = &result
            && e.is_unknown_kid()
        {
            // A node registered since the last refresh: read the bundle again, once.
            let mut changed = self.bundle.subscribe();
            self.bundle.refresh_soon();
            let _ = tokio::time::timeout(Duration::from_secs(3), changed.changed()).await;
            result = validate(&req.svid, &req.audience, &self.bundle.current(), td);
        }
        let v = result.map_err(|e: ValidateError| {
            Refusal::new(Code::BadRequest, format!("invalid JWT-SVID: {e}"))
                .for_audience(&req.audience)
        })?;
        Ok(ValidateJwtsvidResponse {
            spiffe_id: v.spiffe_id,
            claims: Some(super::proto_json::to_struct(v.claims)),
        })
    }

    fn deadline(&self) -> Duration {
        Duration::from_millis(self.app.cfg.limits.request_timeout_ms)
    }
}

/// Runs `work` within `limits.request_timeout_ms`, refusing with `timeout` past it.
async fn within<T>(
    deadline: Duration,
    work: impl std::future::Future<Output = Result<T, Refusal>>,
) -> Result<T, Refusal> {
    tokio::time::timeout(deadline, work)
        .await
        .unwrap_or_else(|_| {
            Err(Refusal::new(
                Code::Timeout,
                format!(
                    "the request did not finish within {} ms (limits.request_timeout_ms)",
                    deadline.as_millis()
                ),
            ))
        })
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Service {
    type FetchX509SVIDStream = Stream2<X509svidResponse>;
    type FetchX509BundlesStream = Stream2<X509BundlesResponse>;
    type FetchJWTBundlesStream = Stream2<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        _: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        Err(Status::unimplemented(
            "JSS serves JWT-SVIDs only; configure the client for JWT-SVIDs",
        ))
    }

    async fn fetch_x509_bundles(
        &self,
        _: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        Err(Status::unimplemented(
            "JSS serves JWT bundles only; configure the client for JWT-SVIDs",
        ))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        let peer = self.caller(&req)?;
        let span = tracing::info_span!("svid", pid = peer.ids().0);
        let started = std::time::Instant::now();
        let answer = within(self.deadline(), self.fetch_svid(&peer, req.get_ref()))
            .instrument(span)
            .await;
        self.app
            .metrics
            .request_seconds
            .observe(started.elapsed().as_secs_f64());
        match answer {
            Ok(svid) => Ok(Response::new(JwtsvidResponse { svids: vec![svid] })),
            Err(r) => Err(self.refuse(&peer, r)),
        }
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        self.caller(&req)?;
        let td = self.spiffe.trust_domain_id();
        let stream =
            tokio_stream::wrappers::WatchStream::new(self.bundle.subscribe()).map(move |b| {
                Ok(JwtBundlesResponse {
                    bundles: HashMap::from([(td.clone(), b.jwks.clone())]),
                })
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        let peer = self.caller(&req)?;
        let span = tracing::info_span!("validate", pid = peer.ids().0);
        within(self.deadline(), self.check(req.get_ref()))
            .instrument(span)
            .await
            .map(Response::new)
            .map_err(|r| self.refuse(&peer, r))
    }
}
