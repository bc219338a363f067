//! HTTP routing and request parsing for the socket API.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use tracing::Instrument as _;

use super::audit::AuditRecord;
use super::{App, Code, Refusal};
use crate::attest::Peer;
use crate::config::Limits;

pub type Body = Full<Bytes>;

pub(super) fn respond(
    status: u16,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A refusal as the caller gets it: its status, `Retry-After` when set, and
/// `{"error": "<code>", "message": "…"}`.
pub fn refusal_response(r: &Refusal) -> Response<Body> {
    let body = serde_json::json!({"error": r.code.as_str(), "message": r.message}).to_string();
    let mut resp = respond(r.status(), "application/json", body);
    if let Some(secs) = r.retry_after {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// Serves one request from `peer` (taken at accept). Every refusal, however
/// it came about, is counted, audited and answered here, once.
pub async fn handle(
    app: Arc<App>,
    peer: Arc<Peer>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let is_token = req.uri().path() == "/v1/token";
    let pid = peer.ids().0;
    let span = if is_token {
        tracing::info_span!("token", pid)
    } else {
        tracing::info_span!("request", pid)
    };
    let answer = within_timeout(&app, &peer, route(&app, &peer, req));
    let resp = answer.instrument(span).await;
    if is_token {
        app.metrics
            .request_seconds
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(resp)
}

/// The answer of `route`, or its refusal answered (counted, audited, logged)
/// — a refusal `timeout` past `limits.request_timeout_ms`.
pub(super) async fn within_timeout(
    app: &App,
    peer: &Peer,
    route: impl std::future::Future<Output = Result<Response<Body>, Refusal>>,
) -> Response<Body> {
    let timeout = Duration::from_millis(app.cfg.limits.request_timeout_ms);
    match tokio::time::timeout(timeout, route).await {
        Ok(Ok(r)) => r,
        Ok(Err(r)) => refuse(app, peer, &r),
        Err(_) => refuse(
            app,
            peer,
            &Refusal::new(
                Code::Timeout,
                format!(
                    "the request did not finish within {} ms (limits.request_timeout_ms)",
                    timeout.as_millis()
                ),
            ),
        ),
    }
}

/// Counts, audits and logs the refusal `r` of `peer`, and answers it.
fn refuse(app: &App, peer: &Peer, r: &Refusal) -> Response<Body> {
    record_refusal(app, peer, r);
    refusal_response(r)
}

/// Counts, audits and logs the refusal `r` of `peer`: once per refusal,
/// whichever API answers it.
pub(crate) fn record_refusal(app: &App, peer: &Peer, r: &Refusal) {
    let (pid, uid) = peer.ids();
    app.metrics.deny(r.code.as_str());
    app.audit.record(AuditRecord {
        pid,
        uid,
        namespace: r.workload.as_ref().map(|w| w.namespace.as_str()),
        pod: r.workload.as_ref().map(|w| w.pod.as_str()),
        container: r.workload.as_ref().and_then(|w| w.container.as_deref()),
        audience: r.audience.as_deref(),
        outcome: "denied",
        code: Some(r.code.as_str()),
        reason: Some(&r.message),
        ..Default::default()
    });
    // In the workload's span when the caller was attested, like its other lines.
    let _workload = r.workload.as_ref().map(|w| {
        tracing::info_span!(
            "workload",
            namespace = %w.namespace,
            pod = %w.pod,
            container = %w.container.as_deref().unwrap_or_default()
        )
        .entered()
    });
    tracing::warn!(uid, code = r.code.as_str(), "{}", r.message);
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/token`: audience from the JSON body, token as JSON.
    TokenPost,
    /// `GET /v1/token`: audience from the query, token as text.
    TokenGet,
    Bundle,
    Jwks,
    Healthz,
    Readyz,
    Metrics,
}

impl Endpoint {
    /// The endpoint `method path` names. Errors: 405 `method_not_allowed`
    /// for a known path, else 404 `not_found`.
    pub fn of(method: &Method, path: &str) -> Result<Self, Refusal> {
        Ok(match (method, path) {
            (&Method::POST, "/v1/token") => Endpoint::TokenPost,
            (&Method::GET, "/v1/token") => Endpoint::TokenGet,
            (&Method::GET, "/v1/bundle") => Endpoint::Bundle,
            (&Method::GET, "/v1/jwks") => Endpoint::Jwks,
            (&Method::GET, "/healthz") => Endpoint::Healthz,
            (&Method::GET, "/readyz") => Endpoint::Readyz,
            (&Method::GET, "/metrics") => Endpoint::Metrics,
            (_, "/v1/token" | "/v1/bundle" | "/v1/jwks" | "/healthz" | "/readyz" | "/metrics") => {
                return Err(Refusal::new(
                    Code::MethodNotAllowed,
                    format!("{method} is not allowed on {path}"),
                ));
            }
            (_, path) => {
                return Err(Refusal::new(
                    Code::NotFound,
                    format!("no such endpoint {path}; see /v1/token"),
                ));
            }
        })
    }
}

async fn route(
    app: &Arc<App>,
    peer: &Peer,
    req: Request<Incoming>,
) -> Result<Response<Body>, Refusal> {
    let endpoint = Endpoint::of(req.method(), req.uri().path())?;
    Ok(match endpoint {
        Endpoint::TokenPost | Endpoint::TokenGet => {
            let asked = requested_audience(req, &app.cfg.limits).await?;
            let audience = allowed_audience(&app.cfg.audiences, asked.as_deref())?;
            let issued = app
                .issue(peer, audience)
                .await
                .map_err(|r| r.for_audience(audience))?;
            if endpoint == Endpoint::TokenPost {
                respond(
                    200,
                    "application/json",
                    token_json(&issued.token, issued.exp),
                )
            } else {
                respond(200, "text/plain; charset=utf-8", issued.token + "\n")
            }
        }
        Endpoint::Bundle => respond(200, "application/x-pem-file", app.keys().chain_pem.clone()),
        Endpoint::Jwks => respond(200, "application/json", app.keys().jwks.clone()),
        Endpoint::Healthz => respond(200, "text/plain", "ok\n"),
        // A probe's answer, not a refused request: neither audited nor
        // counted as a denial (the signer error itself is counted).
        Endpoint::Readyz => match app.signer_ready().await {
            Ok(()) => respond(200, "text/plain", "ready\n"),
            Err(f) => respond(
                503,
                "application/json",
                serde_json::json!({"error": "signer_unavailable", "reason": f.reason, "message": f.message})
                    .to_string(),
            ),
        },
        Endpoint::Metrics => respond(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            app.metrics.render(),
        ),
    })
}

/// The audience to sign for: `asked` if it is in `audiences`, the first of
/// `audiences` when none (or empty) was asked. Error: 400 `bad_audience`.
pub fn allowed_audience<'a>(
    audiences: &'a [String],
    asked: Option<&str>,
) -> Result<&'a str, Refusal> {
    let first = audiences.first().map(String::as_str).unwrap_or_default();
    match asked {
        None | Some("") => Ok(first),
        Some(a) => audiences
            .iter()
            .find(|x| *x == a)
            .map(String::as_str)
            .ok_or_else(|| {
                Refusal::new(
                    Code::BadAudience,
                    format!(
                        "audience {a:?} is not allowed; allowed: {}",
                        audiences.join(", ")
                    ),
                )
                .for_audience(a)
            }),
    }
}

/// Only `audience` is read from the body; anything else the caller sends is
/// ignored, so no caller-chosen value can become a claim.
#[derive(serde::Deserialize, Default)]
struct TokenRequest {
    audience: Option<String>,
}

/// The audience a token request asks for, if any: from the query of a
/// `GET`, from the body of anything else, read within `limits`
/// (`max_body_bytes`; the body must arrive within `header_timeout_ms`).
///
/// Errors: 413 `too_large` (by `Content-Length` or once read), 408
/// `slow_body`, 400 `bad_request` (unreadable body, not a JSON object).
pub async fn requested_audience<B>(
    req: Request<B>,
    limits: &Limits,
) -> Result<Option<String>, Refusal>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if req.method() == Method::GET {
        return Ok(audience_from_query(req.uri().query()));
    }
    audience_from_body(&read_body(req, limits).await?)
}

/// A request's body, read within `limits` (`max_body_bytes`; it must
/// arrive within `header_timeout_ms`).
///
/// Errors: 413 `too_large` (by `Content-Length` or once read), 408
/// `slow_body`, 400 `bad_request` (unreadable body).
pub async fn read_body<B>(req: Request<B>, limits: &Limits) -> Result<Bytes, Refusal>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limit = limits.max_body_bytes;
    if let Some(len) = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(Refusal::new(
            Code::TooLarge,
            format!("request body of {len} bytes exceeds limits.max_body_bytes ({limit})"),
        ));
    }
    // A body that trickles in gets the same deadline as the headers.
    let deadline = Duration::from_millis(limits.header_timeout_ms);
    let collected = tokio::time::timeout(deadline, Limited::new(req.into_body(), limit).collect())
        .await
        .map_err(|_| {
            Refusal::new(
                Code::SlowBody,
                format!(
                    "the request body did not arrive within {} ms (limits.header_timeout_ms)",
                    deadline.as_millis()
                ),
            )
        })?;
    let body = match collected {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return Err(Refusal::new(
                Code::TooLarge,
                format!("request body exceeds limits.max_body_bytes ({limit})"),
            ));
        }
        Err(e) => {
            return Err(Refusal::new(
                Code::BadRequest,
                format!("cannot read the request body: {e}"),
            ));
        }
    };
    Ok(body)
}

/// `{"token":…,"expires_at":…}`. A compact JWS is base64url and dots, so it
/// is copied in as is: serde_json's escape scan of a ~3 KB token was a
/// measurable share of a request.
pub(super) fn token_json(token: &str, exp: u64) -> String {
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return serde_json::json!({"token": token, "expires_at": exp}).to_string();
    }
    let mut out = String::with_capacity(token.len() + 40);
    out.push_str("{\"token\":\"");
    out.push_str(token);
    out.push_str("\",\"expires_at\":");
    out.push_str(&exp.to_string());
    out.push('}');
    out
}

/// The audience of `GET /v1/token?audience=…`; other parameters are ignored.
pub fn audience_from_query(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "audience")
        .map(|(_, v)| v.into_owned())
}

/// The audience of a `POST /v1/token` body: empty, or a JSON object whose
/// only field read is `audience`.
pub fn audience_from_body(body: &[u8]) -> Result<Option<String>, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let r: TokenRequest = serde_json::from_slice(body).map_err(|e| {
        Refusal::new(
            Code::BadRequest,
            format!("body is not a JSON object like {{\"audience\":\"vault\"}}: {e}"),
        )
    })?;
    Ok(r.audience)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_body_is_the_json_serde_would_write() {
        for t in ["eyJh.eyJz.c2ln", "a-b_c.d", "not \"base64\"\n"] {
            let v: serde_json::Value = serde_json::from_str(&token_json(t, 17)).unwrap();
            assert_eq!(v, serde_json::json!({"token": t, "expires_at": 17}));
        }
    }

    #[test]
    fn audience_sources() {
        assert_eq!(audience_from_query(None), None);
        assert_eq!(
            audience_from_query(Some("x=1&audience=va%75lt")),
            Some("vault".into())
        );
        assert_eq!(audience_from_body(b"  \n").unwrap(), None);
        assert_eq!(
            audience_from_body(br#"{"audience":"vault","namespace":"kube-system"}"#).unwrap(),
            Some("vault".into())
        );
        assert_eq!(
            audience_from_body(b"[1]").unwrap_err().code,
            Code::BadRequest
        );
        assert_eq!(
            audience_from_body(br#"{"audience":7}"#)
                .unwrap_err()
                .status(),
            400
        );
    }
}
