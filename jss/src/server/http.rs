//! HTTP routing and request parsing for the socket API.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};

use super::{App, Denial, Peer};

pub type Body = Full<Bytes>;

fn respond(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn error(d: &Denial) -> Response<Body> {
    let body = serde_json::json!({"error": d.code, "message": d.message}).to_string();
    let mut r = respond(d.status, "application/json", body);
    if let Some(secs) = d.retry_after {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

/// Serves one request from the peer `peer` (attested at accept).
pub async fn handle(
    app: Arc<App>,
    peer: Arc<Peer>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let is_token = req.uri().path() == "/v1/token";
    let timeout = Duration::from_millis(app.cfg.limits.request_timeout_ms);
    let resp = match tokio::time::timeout(timeout, route(&app, &peer, req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(d)) => error(&d),
        Err(_) => {
            app.metrics.deny("timeout");
            error(&Denial::unavailable(
                "timeout",
                format!(
                    "the request did not finish within {} ms",
                    timeout.as_millis()
                ),
            ))
        }
    };
    if is_token {
        app.metrics
            .request_seconds
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(resp)
}

async fn route(
    app: &Arc<App>,
    peer: &Peer,
    req: Request<Incoming>,
) -> Result<Response<Body>, Denial> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/v1/token") => {
            let audience = read_post_audience(app, req).await?;
            let issued = issue(app, peer, audience.as_deref()).await?;
            Ok(respond(
                200,
                "application/json",
                token_json(&issued.token, issued.exp),
            ))
        }
        (&Method::GET, "/v1/token") => {
            let audience = audience_from_query(req.uri().query());
            let issued = issue(app, peer, audience.as_deref()).await?;
            Ok(respond(
                200,
                "text/plain; charset=utf-8",
                issued.token + "\n",
            ))
        }
        (&Method::GET, "/v1/bundle") => Ok(respond(
            200,
            "application/x-pem-file",
            app.keys().chain_pem.clone(),
        )),
        (&Method::GET, "/v1/jwks") => Ok(respond(200, "application/json", app.keys().jwks.clone())),
        (&Method::GET, "/healthz") => Ok(respond(200, "text/plain", "ok\n")),
        (&Method::GET, "/metrics") => Ok(respond(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            app.metrics.render(),
        )),
        (_, "/v1/token" | "/v1/bundle" | "/v1/jwks" | "/healthz" | "/metrics") => Err(Denial::new(
            405,
            "method_not_allowed",
            format!("{} is not allowed here", req.method()),
        )),
        (_, path) => Err(Denial::new(
            404,
            "not_found",
            format!("no such endpoint {path}; see /v1/token"),
        )),
    }
}

async fn issue(
    app: &Arc<App>,
    peer: &Peer,
    audience: Option<&str>,
) -> Result<super::issue::Issued, Denial> {
    let audience = match audience {
        None | Some("") => app.cfg.audiences[0].as_str(),
        Some(a) => app
            .cfg
            .audiences
            .iter()
            .find(|x| *x == a)
            .map(String::as_str)
            .ok_or_else(|| {
                app.metrics.deny("bad_audience");
                Denial::new(
                    400,
                    "bad_audience",
                    format!(
                        "audience {a:?} is not allowed; allowed: {}",
                        app.cfg.audiences.join(", ")
                    ),
                )
            })?,
    };
    let process = match &peer.process {
        Ok(p) => p,
        Err(r) => return Err(app.refuse(r.pid, r.uid, audience, r.denial.clone())),
    };
    app.issue(process, &peer.location, audience).await
}

/// Only `audience` is read from the body; anything else the caller sends is
/// ignored, so no caller-chosen value can become a claim.
#[derive(serde::Deserialize, Default)]
struct TokenRequest {
    audience: Option<String>,
}

async fn read_post_audience(
    app: &Arc<App>,
    req: Request<Incoming>,
) -> Result<Option<String>, Denial> {
    let limit = app.cfg.limits.max_body_bytes;
    if let Some(len) = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        app.metrics.deny("too_large");
        return Err(Denial::new(
            413,
            "too_large",
            format!("request body of {len} bytes exceeds {limit}"),
        ));
    }
    // A body that trickles in gets the same deadline as the headers.
    let deadline = Duration::from_millis(app.cfg.limits.header_timeout_ms);
    let collected = tokio::time::timeout(deadline, Limited::new(req.into_body(), limit).collect())
        .await
        .map_err(|_| {
            app.metrics.deny("slow_body");
            Denial::new(
                408,
                "slow_body",
                format!(
                    "the request body did not arrive within {} ms",
                    deadline.as_millis()
                ),
            )
        })?;
    let body = match collected {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            app.metrics.deny("too_large");
            return Err(Denial::new(
                413,
                "too_large",
                format!("request body exceeds {limit} bytes"),
            ));
        }
        Err(e) => {
            return Err(Denial::new(
                400,
                "bad_request",
                format!("cannot read the request body: {e}"),
            ));
        }
    };
    audience_from_body(&body).inspect_err(|d| app.metrics.deny(d.code))
}

/// `{"token":…,"expires_at":…}`. A compact JWS is base64url and dots, so it
/// is copied in as is: serde_json's escape scan of a ~3 KB token was a
/// measurable share of a request.
fn token_json(token: &str, exp: u64) -> String {
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
pub fn audience_from_body(body: &[u8]) -> Result<Option<String>, Denial> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let r: TokenRequest = serde_json::from_slice(body).map_err(|e| {
        Denial::new(
            400,
            "bad_request",
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
        assert_eq!(audience_from_body(b"[1]").unwrap_err().code, "bad_request");
        assert_eq!(
            audience_from_body(br#"{"audience":7}"#).unwrap_err().status,
            400
        );
    }
}
