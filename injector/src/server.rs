//! HTTPS: `POST /mutate`, `GET /healthz`, `GET /metrics`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument as _;

use crate::config::{Config, Inject};
use crate::metrics::Metrics;
use crate::review::{self, MAX_BODY_BYTES};
use crate::{mutate, tls};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The API server gives up after the webhook's timeoutSeconds (at most 30).
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install the SIGTERM handler: {0}")]
    Signal(#[source] std::io::Error),
}

struct App {
    inject: Inject,
    metrics: Metrics,
}

type Body = Full<Bytes>;

fn answer(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn bad_request(app: &App, message: String) -> Response<Body> {
    app.metrics.bad_request();
    tracing::info!("400: {message}");
    answer(
        StatusCode::BAD_REQUEST,
        "text/plain; charset=utf-8",
        format!("{message}\n"),
    )
}

/// How much of an oversize body is read and dropped before the 400, so the
/// client, still sending, sees the answer rather than a reset connection.
const DRAIN_CAP: u64 = 16 * 1024 * 1024;

enum BodyError {
    TooLarge,
    Read(hyper::Error),
}

/// The body, up to [`MAX_BODY_BYTES`]; past it, the rest (up to
/// [`DRAIN_CAP`]) is read and dropped.
async fn read_body(mut body: Incoming) -> Result<Bytes, BodyError> {
    let mut buf = Vec::new();
    let mut seen: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Read)?;
        if let Ok(data) = frame.into_data() {
            seen += data.len() as u64;
            if seen > DRAIN_CAP {
                break;
            }
            if seen <= MAX_BODY_BYTES as u64 {
                buf.extend_from_slice(&data);
            }
        }
    }
    if seen > MAX_BODY_BYTES as u64 {
        return Err(BodyError::TooLarge);
    }
    Ok(Bytes::from(buf))
}

async fn mutate(app: &App, req: Request<Incoming>) -> Response<Body> {
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || format!("body over {MAX_BODY_BYTES} bytes");
    if declared.is_some_and(|n| n > DRAIN_CAP) {
        return bad_request(app, too_large());
    }
    let body = match tokio::time::timeout(BODY_TIMEOUT, read_body(req.into_body())).await {
        Err(_) => return bad_request(app, "the body did not arrive in time".into()),
        Ok(Err(BodyError::TooLarge)) => return bad_request(app, too_large()),
        Ok(Err(BodyError::Read(e))) => return bad_request(app, format!("reading the body: {e}")),
        Ok(Ok(b)) => b,
    };
    let start = Instant::now();
    let review = match review::decode(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(app, e.to_string()),
    };
    let span = tracing::info_span!("review", uid = %review.uid, namespace = review.namespace.as_deref().unwrap_or(""));
    let (outcome, out) = span.in_scope(|| {
        let (outcome, out) = mutate::respond(&review, &app.inject);
        tracing::debug!(outcome = outcome.label(), "answered");
        (outcome, out)
    });
    app.metrics.review(outcome, start.elapsed().as_secs_f64());
    answer(StatusCode::OK, "application/json", out)
}

async fn route(
    app: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let text = "text/plain; charset=utf-8";
    Ok(match (req.method(), req.uri().path()) {
        (&Method::POST, "/mutate") => mutate(&app, req).await,
        (&Method::GET, "/healthz") => answer(StatusCode::OK, text, "ok\n"),
        (&Method::GET, "/metrics") => answer(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            app.metrics.encode(),
        ),
        (_, "/mutate" | "/healthz" | "/metrics") => {
            answer(StatusCode::METHOD_NOT_ALLOWED, text, "method not allowed\n")
        }
        _ => answer(
            StatusCode::NOT_FOUND,
            text,
            "not found: /mutate, /healthz, /metrics\n",
        ),
    })
}

/// Serves until SIGTERM or SIGINT, then drains open connections.
pub async fn serve(cfg: Config) -> Result<(), ServerError> {
    let acceptor = TlsAcceptor::from(tls::server_config(&cfg.tls_cert, &cfg.tls_key)?);
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let app = Arc::new(App {
        inject: cfg.inject,
        metrics: Metrics::new(),
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ServerError::Signal)?;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tracing::info!(listen = %cfg.listen, "jss-injector serving /mutate");
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(
            async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return tracing::debug!("TLS handshake failed: {e}"),
                    Err(_) => return tracing::debug!("TLS handshake timed out"),
                };
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(
                        TokioIo::new(tls),
                        hyper::service::service_fn(move |req| route(app.clone(), req)),
                    );
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!("connection ended: {e}");
                }
            }
            .instrument(tracing::debug_span!("conn", %peer)),
        );
    }
    tracing::info!("stopping: draining open connections");
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
    Ok(())
}
