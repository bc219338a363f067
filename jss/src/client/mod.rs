//! A client for the socket API: `jss token` and `jss health`, and the CSI
//! plugin's call on the pod-token socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use hyperlocal::{UnixConnector, Uri};

/// Where the daemon listens unless `--socket` or `JSS_SOCKET` say otherwise.
pub const DEFAULT_SOCKET: &str = "/run/jss/jss.sock";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no JSS socket at {0}: is jss running on this node, and is the socket mounted into this container?"
    )]
    NoSocket(PathBuf),
    #[error("cannot reach JSS at {path}: {reason}")]
    Connect { path: PathBuf, reason: String },
    #[error("JSS refused the request ({status} {code}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error("JSS did not answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected answer from JSS: {0}")]
    Malformed(String),
}

/// A token as the server returned it.
#[derive(Debug, serde::Deserialize)]
pub struct TokenResponse {
    pub token: String,
    pub expires_at: u64,
}

async fn request(
    socket: &Path,
    method: hyper::Method,
    path_and_query: &str,
    body: Option<String>,
    timeout: Duration,
) -> Result<(u16, Bytes), ClientError> {
    if !socket.exists() {
        return Err(ClientError::NoSocket(socket.to_path_buf()));
    }
    let client: Client<UnixConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(UnixConnector);
    let req = hyper::Request::builder()
        .method(method)
        .uri(hyper::Uri::from(Uri::new(socket, path_and_query)))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| ClientError::Malformed(e.to_string()))?;
    let fut = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| ClientError::Connect {
                path: socket.to_path_buf(),
                reason: format!(
                    "{e}: {}",
                    std::error::Error::source(&e)
                        .map(|s| s.to_string())
                        .unwrap_or_default()
                ),
            })?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Malformed(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
}

fn refused(status: u16, body: &[u8]) -> ClientError {
    #[derive(serde::Deserialize)]
    struct E {
        error: String,
        message: String,
    }
    match serde_json::from_slice::<E>(body) {
        Ok(e) => ClientError::Refused {
            status,
            code: e.error,
            message: e.message,
        },
        Err(_) => ClientError::Refused {
            status,
            code: "unknown".into(),
            message: String::from_utf8_lossy(body).into_owned(),
        },
    }
}

/// Asks for a token (POST /v1/token).
pub async fn fetch_token(
    socket: &Path,
    audience: Option<&str>,
    timeout: Duration,
) -> Result<TokenResponse, ClientError> {
    let body = serde_json::json!({ "audience": audience });
    post_for_token(socket, "/v1/token", &body, timeout).await
}

/// Asks the daemon's root-only pod-token socket for a pod-level token for
/// `pod` (POST /v1/pod-token; README.md, "Token mode"): the CSI plugin's call.
pub async fn fetch_pod_token(
    socket: &Path,
    pod: &crate::kubelet::PodRef,
    audience: Option<&str>,
    timeout: Duration,
) -> Result<TokenResponse, ClientError> {
    let body = serde_json::json!({
        "namespace": pod.namespace,
        "pod": pod.name,
        "pod_uid": pod.uid,
        "service_account": pod.service_account,
        "audience": audience,
    });
    post_for_token(socket, "/v1/pod-token", &body, timeout).await
}

async fn post_for_token(
    socket: &Path,
    path: &str,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<TokenResponse, ClientError> {
    let (status, body) = request(
        socket,
        hyper::Method::POST,
        path,
        Some(body.to_string()),
        timeout,
    )
    .await?;
    if status != 200 {
        return Err(refused(status, &body));
    }
    serde_json::from_slice(&body).map_err(|e| ClientError::Malformed(e.to_string()))
}

/// GET `path` and return the body of a 200 answer.
pub async fn get(socket: &Path, path: &str, timeout: Duration) -> Result<Bytes, ClientError> {
    let (status, body) = request(socket, hyper::Method::GET, path, None, timeout).await?;
    if status != 200 {
        return Err(refused(status, &body));
    }
    Ok(body)
}
