//! `discovery serve`: the cluster's OIDC discovery provider. It serves
//! `/.well-known/openid-configuration` and the JWKS (`/keys`) over HTTPS from
//! memory, rebuilt from the node registry every `--refresh` seconds; when
//! Vault is unreachable it keeps serving the last good copy (README, "Scale:
//! JWKS mode").
//!
//! Caps: connections (`--max-connections`, more are closed at accept), one
//! request rate for all clients (`--max-rate` per second, then 429), GET and
//! HEAD only, no body, 8 KiB of headers read within 5 s.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use reqwest::Method as VaultMethod;
use sha2::{Digest as _, Sha256};
use tokio::sync::{Semaphore, watch};

use crate::cli::{ClusterArgs, VaultArgs};
use crate::registry;
use crate::vault::Vault;

mod metrics;
use metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot read the TLS {what} {path}: {detail}")]
    Tls {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("cannot listen on {addr}: {source}; is another process using the port?")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Vault connection; the token only needs the jss-discovery-<mount> policy.
    #[command(flatten)]
    pub vault: VaultArgs,
    /// Address to serve HTTPS on, HOST:PORT.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Server certificate chain (PEM).
    #[arg(long)]
    pub tls_cert: PathBuf,
    /// Server private key (PEM, PKCS#8 or SEC1).
    #[arg(long)]
    pub tls_key: PathBuf,
    /// Issuer named in the discovery document [default: jss://<cluster>]
    #[arg(long)]
    pub issuer: Option<String>,
    /// Base URL clients reach this server at [default: https://<listen>]
    #[arg(long)]
    pub public_url: Option<String>,
    /// Seconds between registry reads.
    #[arg(long, default_value_t = 5)]
    pub refresh: u64,
    /// Open connections at most; more are closed at once.
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Requests per second, all clients together; more get 429.
    #[arg(long, default_value_t = 200)]
    pub max_rate: u32,
    /// Seconds between renewals of the Vault token.
    #[arg(long, default_value_t = 600)]
    pub renew_every: u64,
}

/// A served document: body, strong ETag, key count.
#[derive(Debug, Clone)]
struct Doc {
    jwks: Bytes,
    etag: String,
    keys: usize,
}

impl Doc {
    fn new(jwks: &serde_json::Value) -> Self {
        let body = jwks.to_string();
        let keys = jwks["keys"].as_array().map_or(0, Vec::len);
        let etag = format!("\"{}\"", hex_prefix(&Sha256::digest(body.as_bytes())));
        Self {
            jwks: Bytes::from(body),
            etag,
            keys,
        }
    }
}

fn hex_prefix(d: &[u8]) -> String {
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// A token bucket shared by all connections.
struct Rate {
    per_sec: f64,
    state: Mutex<(f64, Instant)>,
}

impl Rate {
    fn new(per_sec: u32) -> Self {
        let per_sec = f64::from(per_sec.max(1));
        Self {
            per_sec,
            state: Mutex::new((per_sec, Instant::now())),
        }
    }

    fn allow(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(s.1).as_secs_f64() * self.per_sec;
        s.0 = (s.0 + refill).min(self.per_sec);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Shared {
    doc: watch::Receiver<Option<Doc>>,
    config: Bytes,
    cache_control: String,
    rate: Rate,
    metrics: Metrics,
}

fn tls_config(a: &ServeArgs) -> Result<Arc<rustls::ServerConfig>, DiscoveryError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what, path: &PathBuf, detail: String| DiscoveryError::Tls {
        what,
        path: path.clone(),
        detail,
    };
    let chain = CertificateDer::pem_file_iter(&a.tls_cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad("certificate", &a.tls_cert, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(&a.tls_key)
        .map_err(|e| bad("key", &a.tls_key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("setup", &a.tls_cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| bad("certificate and key", &a.tls_cert, e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Runs the server until the process is stopped.
pub async fn serve(v: Vault, a: &ServeArgs) -> Result<(), DiscoveryError> {
    let tls = tokio_rustls::TlsAcceptor::from(tls_config(a)?);
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .map_err(|source| DiscoveryError::Listen {
            addr: a.listen,
            source,
        })?;
    let base = a
        .public_url
        .clone()
        .unwrap_or_else(|| format!("https://{}", a.listen));
    let issuer = a
        .issuer
        .clone()
        .unwrap_or_else(|| format!("jss://{}", a.cluster.cluster));
    let config = serde_json::json!({
        "issuer": issuer,
        "jwks_uri": format!("{}/keys", base.trim_end_matches('/')),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    });
    let (tx, rx) = watch::channel(None);
    let shared = Arc::new(Shared {
        doc: rx,
        config: Bytes::from(config.to_string()),
        cache_control: format!("public, max-age={}", a.refresh),
        rate: Rate::new(a.max_rate),
        metrics: Metrics::new(),
    });
    tracing::info!(listen = %a.listen, %base, "discovery server listening");
    let reg = a.cluster.target("discovery").registry;
    let refresh = Duration::from_secs(a.refresh.max(1));
    let renew = Duration::from_secs(a.renew_every.max(10));
    let refresher = refresh_loop(&v, &reg, refresh, renew, &tx, &shared.metrics);
    let acceptor = accept_loop(listener, tls, a.max_connections, shared.clone());
    tokio::join!(refresher, acceptor);
    Ok(())
}

/// Every this many refreshes every record is read again (see
/// [`registry::Registry::sync`]); in between only new nodes are read.
const FULL_READ_EVERY: u64 = 12;

/// Rebuilds the JWKS from the registry; keeps the last good copy on errors.
async fn refresh_loop(
    v: &Vault,
    reg: &registry::Registry,
    every: Duration,
    renew_every: Duration,
    tx: &watch::Sender<Option<Doc>>,
    m: &Metrics,
) {
    let mut last_renew: Option<Instant> = None;
    let mut cache = std::collections::BTreeMap::new();
    let mut round: u64 = 0;
    loop {
        if last_renew.is_none_or(|t| t.elapsed() >= renew_every) {
            last_renew = Some(Instant::now());
            let body = serde_json::json!({});
            let r = v
                .raw(
                    "renew the discovery server's token",
                    VaultMethod::POST,
                    "auth/token/renew-self",
                    Some(&body),
                )
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "token renewal failed; it keeps working until it expires");
            }
        }
        let started = Instant::now();
        let full = round % FULL_READ_EVERY == 0;
        round += 1;
        match reg.sync(v, &mut cache, full).await {
            Ok(()) => {
                let doc = Doc::new(&registry::jwks(cache.values().cloned()));
                m.refreshed(doc.keys, started.elapsed());
                tx.send_if_modified(|cur| {
                    let changed = cur.as_ref().is_none_or(|c| c.etag != doc.etag);
                    if changed {
                        tracing::info!(keys = doc.keys, etag = %doc.etag, "JWKS changed");
                        *cur = Some(doc);
                    }
                    changed
                });
            }
            Err(e) => {
                m.refresh_failed();
                tracing::warn!(error = %e, "cannot read the node registry; serving the last good JWKS");
            }
        }
        tokio::time::sleep(every).await;
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    max_connections: usize,
    shared: Arc<Shared>,
) {
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: pause, do not spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared.metrics.connection_refused();
            continue;
        };
        let tls = tls.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let span = tracing::debug_span!("conn", %peer);
            let _ = tcp.set_nodelay(true);
            let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_secs(5), tls.accept(tcp)).await
            else {
                tracing::debug!(parent: &span, "TLS handshake failed or timed out");
                return;
            };
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req)) }
            });
            let r = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .max_buf_size(8 << 10)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
            if let Err(e) = r {
                tracing::debug!(parent: &span, error = %e, "connection ended with an error");
            }
        });
    }
}

fn reply(status: StatusCode, ctype: &str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(ctype) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn handle(s: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let _span = tracing::debug_span!("request", method = %req.method(), %path).entered();
    let resp = route(s, &req);
    s.metrics.request(&path, resp.status().as_u16());
    if req.method() == Method::HEAD {
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, Full::new(Bytes::new()));
    }
    resp
}

fn route(s: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if !s.rate.allow() {
        let mut r = reply(StatusCode::TOO_MANY_REQUESTS, TEXT, "rate limit\n".into());
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return r;
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n".into());
    }
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|l| l != "0")
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    if has_body {
        return reply(StatusCode::PAYLOAD_TOO_LARGE, TEXT, "no body\n".into());
    }
    match req.uri().path() {
        "/.well-known/openid-configuration" => {
            reply(StatusCode::OK, "application/json", s.config.clone())
        }
        "/keys" => {
            let Some(doc) = s.doc.borrow().clone() else {
                return reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    "the registry has not been read yet\n".into(),
                );
            };
            let fresh = req
                .headers()
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    v.split(',')
                        .any(|t| t.trim() == doc.etag || t.trim() == "*")
                });
            let mut r = if fresh {
                reply(StatusCode::NOT_MODIFIED, "application/json", Bytes::new())
            } else {
                reply(StatusCode::OK, "application/json", doc.jwks)
            };
            let h = r.headers_mut();
            if let Ok(v) = header::HeaderValue::from_str(&doc.etag) {
                h.insert(header::ETAG, v);
            }
            if let Ok(v) = header::HeaderValue::from_str(&s.cache_control) {
                h.insert(header::CACHE_CONTROL, v);
            }
            r
        }
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            s.metrics.encode().into(),
        ),
        "/healthz" => match s.doc.borrow().as_ref() {
            Some(_) => reply(StatusCode::OK, TEXT, "ok\n".into()),
            None => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                "no JWKS yet\n".into(),
            ),
        },
        _ => reply(StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
    }
}
