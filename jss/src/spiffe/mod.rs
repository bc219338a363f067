//! The SPIFFE Workload API on its own socket (`[spiffe]`): JWT-SVIDs signed
//! by the node key for attested callers, the trust domain's JWT bundle, and
//! JWT-SVID validation (README.md, "Using JSS from SPIFFE clients").
//!
//! One attestation path: each accepted connection carries its `Peer` (taken
//! at accept, PID-reuse guard included) into the handlers, which issue
//! through `App::issue_as` like `/v1/token`.

mod authority;
pub mod bundle;
pub mod config;
mod incoming;
pub mod own_keys;
mod proto_json;
pub mod service;
pub mod svid;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::{BundleSource, SpiffeConfig, SpiffeSection};
pub use svid::{JSS_SUB_CLAIM, SvidClaims};

use crate::server::{App, ServerError};

/// Code generated from `proto/workload.proto` (no package).
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, missing_docs)]
pub mod proto {
    tonic::include_proto!("_");
}

/// The running SPIFFE server.
pub struct SpiffeServer {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    socket: std::path::PathBuf,
}

/// Binds the SPIFFE socket and serves the Workload API for `app` until
/// [`SpiffeServer::shutdown`]; `None` when `[spiffe]` is off.
pub fn start(app: &Arc<App>) -> Result<Option<SpiffeServer>, ServerError> {
    let Some(spiffe) = app.cfg.spiffe.clone() else {
        return Ok(None);
    };
    let listener = crate::server::bind_path(&spiffe.socket, spiffe.socket_mode)?;
    // Subscribed before the key is read: a switch in between comes again
    // through the stream (a repeat of the same key is no switch).
    let switches = own_keys::switches(app.key_changes());
    let own = own_keys::at_start(app, spiffe.retire_leeway).map_err(|e| ServerError::Socket {
        path: spiffe.socket.clone(),
        reason: e.to_string(),
    })?;
    let bundle = bundle::BundleWatch::new(&own);
    if spiffe.bundle == BundleSource::OwnKey {
        tracing::warn!(
            "[spiffe] has no bundle_url or bundle_file: the JWT bundle holds only this node's keys, so JWT-SVIDs of other nodes will not validate"
        );
    }
    tokio::spawn(Arc::clone(&bundle).run(
        spiffe.bundle.clone(),
        spiffe.bundle_refresh,
        own,
        switches,
    ));
    let incoming = incoming::accept_loop(
        listener,
        app.cfg.proc_root.clone(),
        app.cfg.limits.max_connections,
    );
    tracing::info!(
        socket = %spiffe.socket.display(),
        trust_domain = %spiffe.trust_domain,
        "SPIFFE Workload API serving"
    );
    let socket = spiffe.socket.clone();
    let svc = service::Service {
        app: Arc::clone(app),
        spiffe,
        bundle,
    };
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(proto::spiffe_workload_api_server::SpiffeWorkloadApiServer::new(svc))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );
    Ok(Some(SpiffeServer { stop, task, socket }))
}

impl SpiffeServer {
    /// Stops accepting, lets in-flight requests finish within `drain`, removes the socket.
    pub async fn shutdown(self, drain: Duration) {
        let _ = self.stop.send(());
        match tokio::time::timeout(drain, self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "SPIFFE server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "SPIFFE server task failed"),
            Err(_) => tracing::warn!("SPIFFE drain timed out"),
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}
