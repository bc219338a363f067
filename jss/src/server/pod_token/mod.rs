//! The pod-token socket (`[csi] pod_token`): pod-level tokens for the CSI
//! plugin's token mode (README.md, "Token mode"; SECURITY.md says what it
//! trusts).
//!
//! One call, `POST /v1/pod-token`, from uid 0 only (SO_PEERCRED at accept):
//! the plugin names the pod the kubelet named to it, the daemon checks that
//! pod against its own kubelet pod list and signs a pod-level token through
//! the same cache and signing queue as `/v1/token`. Every refusal, the
//! non-root caller's included, goes through the refusal contract.

mod request;

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use super::http::{Body, allowed_audience, read_body, respond, token_json, within_timeout};
use super::{App, Code, Refusal, ServerError};
use crate::attest::Peer;

pub use request::parse;

/// The one path this socket serves.
pub const PATH: &str = "/v1/pod-token";

/// The running pod-token server.
pub struct PodTokenServer {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    socket: PathBuf,
}

/// Binds the pod-token socket (0600, in its directory made 0700) and serves
/// it until [`PodTokenServer::shutdown`]; `None` unless `[csi] pod_token`.
pub fn start(app: &Arc<App>) -> Result<Option<PodTokenServer>, ServerError> {
    if !app.cfg.csi.pod_token {
        return Ok(None);
    }
    let socket = app.cfg.csi.pod_token_socket.clone();
    private_dir(&socket)?;
    let listener = super::bind_path(&socket, 0o600)?;
    tracing::info!(socket = %socket.display(), "pod-token socket serving (uid 0 only)");
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(accept_loop(Arc::clone(app), listener, stopped));
    Ok(Some(PodTokenServer { stop, task, socket }))
}

/// Creates the socket's directory 0700, or narrows it to 0700: only root
/// (the CSI plugin) has any business in it.
fn private_dir(socket: &Path) -> Result<(), ServerError> {
    let err = |path: &Path, e: &dyn std::fmt::Display| ServerError::Socket {
        path: path.to_path_buf(),
        reason: format!("cannot make the pod-token socket's directory private (0700): {e}"),
    };
    let Some(dir) = socket.parent() else {
        return Err(err(socket, &"it has no directory"));
    };
    crate::state::ensure_dir(dir).map_err(|e| err(dir, &e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| err(dir, &e))
}

impl PodTokenServer {
    /// Stops accepting, lets in-flight requests finish within `drain`, removes the socket.
    pub async fn shutdown(self, drain: Duration) {
        let _ = self.stop.send(());
        if tokio::time::timeout(drain, self.task).await.is_err() {
            tracing::warn!("pod-token socket: drain timed out");
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

async fn accept_loop(app: Arc<App>, listener: UnixListener, mut stopped: oneshot::Receiver<()>) {
    let conns = Arc::new(Semaphore::new(app.cfg.limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&conns).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = &mut stopped => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "pod-token socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        let peer = Arc::new(Peer::of_socket(&app.cfg.proc_root, &stream));
        let app2 = Arc::clone(&app);
        let svc = hyper::service::service_fn(move |req| {
            handle(Arc::clone(&app2), Arc::clone(&peer), req)
        });
        let conn = graceful
            .watch(super::http1(&app.cfg.limits).serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "pod-token connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Serves one request; refusals are counted, audited and answered once.
async fn handle(
    app: Arc<App>,
    peer: Arc<Peer>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let span = tracing::info_span!("pod_token", pid = peer.ids().0);
    Ok(within_timeout(&app, &peer, route(&app, &peer, req))
        .instrument(span)
        .await)
}

async fn route(
    app: &Arc<App>,
    peer: &Peer,
    req: Request<Incoming>,
) -> Result<Response<Body>, Refusal> {
    // Who asks comes first: a caller that is not root learns nothing more.
    let caller = peer.process().map_err(|u| Refusal::from(&u.error))?;
    if caller.uid != 0 {
        return Err(Refusal::new(
            Code::NotRoot,
            format!(
                "uid {} (pid {}) asked the pod-token socket, which serves uid 0 only (the CSI plugin); workloads ask the main socket",
                caller.uid, caller.pid
            ),
        ));
    }
    match (req.method(), req.uri().path()) {
        (&Method::POST, PATH) => {}
        (m, PATH) => {
            return Err(Refusal::new(
                Code::MethodNotAllowed,
                format!("{m} is not allowed on {PATH}; POST the pod as JSON"),
            ));
        }
        (_, path) => {
            return Err(Refusal::new(
                Code::NotFound,
                format!("no such endpoint {path} on the pod-token socket; see POST {PATH}"),
            ));
        }
    }
    let body = read_body(req, &app.cfg.limits).await?;
    let (pod, asked) = parse(&body)?;
    let audience =
        allowed_audience(&app.cfg.audiences, asked.as_deref()).map_err(|r| r.for_pod(&pod))?;
    let issued = app
        .issue_for_pod(caller, &pod, audience)
        .await
        .map_err(|r| r.for_audience(audience))?;
    Ok(respond(
        200,
        "application/json",
        token_json(&issued.token, issued.exp),
    ))
}
