//! The SPIFFE Workload API on its own socket (`[spiffe]`): JWT-SVIDs signed
//! by the node key for attested callers, the trust domain's JWT bundle, and
//! JWT-SVID validation (README.md, "Using JSS from SPIFFE clients").
//!
//! One attestation path: each accepted connection carries its `Peer` (taken
//! at accept, PID-reuse guard included) into the handlers, which issue
//! through `App::issue_as` like `/v1/token`. Connections are served on
//! threads of their own (`workers`: why, and what it saves).

mod authority;
pub mod bundle;
pub mod config;
mod incoming;
pub mod own_keys;
mod proto_json;
pub mod service;
pub mod svid;
pub mod validate;
mod workers;

use std::sync::Arc;
use std::time::Duration;

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
    workers: workers::Workers,
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
    let svc = Arc::new(service::Service {
        app: Arc::clone(app),
        spiffe: spiffe.clone(),
        bundle,
    });
    let n = workers::count();
    let (workers, senders) = workers::start(n, &svc).map_err(ServerError::Threads)?;
    incoming::accept_loop(
        listener,
        app.cfg.proc_root.clone(),
        app.cfg.limits.max_connections,
        senders,
        workers.stopping(),
    );
    tracing::info!(
        socket = %spiffe.socket.display(),
        trust_domain = %spiffe.trust_domain,
        threads = n,
        "SPIFFE Workload API serving"
    );
    Ok(Some(SpiffeServer {
        workers,
        socket: spiffe.socket,
    }))
}

impl SpiffeServer {
    /// Stops accepting, lets in-flight requests finish within `drain`, removes the socket.
    pub async fn shutdown(self, drain: Duration) {
        self.workers.shutdown(drain).await;
        let _ = std::fs::remove_file(&self.socket);
    }
}
