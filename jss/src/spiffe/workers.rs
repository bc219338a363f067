//! The SPIFFE socket's connections are served on threads of their own, a
//! current-thread runtime each (one per core the daemon may use), and each
//! connection lives wholly on one of them.
//!
//! Why: a unary gRPC answer is h2's connection task and a task per stream
//! waking each other several times. On the daemon's multi-thread runtime
//! those wake-ups cross threads (a futex or an IPI each); on one thread
//! they are a queue push. The daemon's CPU per cached JWT-SVID fell from
//! 79–95 to 59–64 µs, JWT-SVIDs/s from 0.62 to 0.86 × tokens/s over HTTP
//! (README.md, "Benchmarks").

use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

use super::incoming::PeerConn;
use super::proto::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use super::service::Service;
use crate::attest::Peer;

/// A connection accepted on the main runtime, on its way to a worker.
pub struct Accepted {
    /// Non-blocking, registered with no runtime yet.
    pub io: StdUnixStream,
    pub peer: Arc<Peer>,
    pub permit: OwnedSemaphorePermit,
}

/// The worker threads, each serving the connections sent to it.
pub struct Workers {
    stop: watch::Sender<bool>,
    done: Vec<oneshot::Receiver<Result<(), tonic::transport::Error>>>,
}

/// How many workers: the cores this process may use (a cgroup CPU limit
/// counts), at least one.
pub fn count() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Starts `n` workers serving `svc`; the senders to hand them connections.
///
/// # Errors
/// A runtime or thread that cannot be created (out of memory, or of
/// threads under `RLIMIT_NPROC`).
pub fn start(
    n: usize,
    svc: &Arc<Service>,
) -> Result<(Workers, Vec<mpsc::Sender<Accepted>>), std::io::Error> {
    let (stop, _) = watch::channel(false);
    let mut done = Vec::with_capacity(n);
    let mut senders = Vec::with_capacity(n);
    for k in 0..n {
        // Built here, not in the thread, so a failure is the caller's error.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = mpsc::channel(16);
        let (done_tx, done_rx) = oneshot::channel();
        let (svc, stopped) = (Arc::clone(svc), stop.subscribe());
        std::thread::Builder::new()
            .name(format!("jss-spiffe-{k}"))
            .spawn(move || {
                let served = rt.block_on(serve(rx, svc, stopped));
                let _ = done_tx.send(served);
            })?;
        senders.push(tx);
        done.push(done_rx);
    }
    Ok((Workers { stop, done }, senders))
}

/// One worker: tonic over the connections arriving on `rx` until `stopped`.
async fn serve(
    rx: mpsc::Receiver<Accepted>,
    svc: Arc<Service>,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let incoming = ReceiverStream::new(rx).map(|a| {
        // Registers the stream with this thread's runtime.
        tokio::net::UnixStream::from_std(a.io).map(|io| PeerConn::new(io, a.peer, a.permit))
    });
    tonic::transport::Server::builder()
        .add_service(SpiffeWorkloadApiServer::from_arc(svc))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .await
}

impl Workers {
    /// A receiver that sees `true` once [`Workers::shutdown`] began.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Stops every worker and lets in-flight requests finish within `drain`.
    pub async fn shutdown(self, drain: Duration) {
        let _ = self.stop.send(true);
        let all = async {
            for d in self.done {
                match d.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "SPIFFE server ended with an error"),
                    Err(_) => tracing::warn!("a SPIFFE worker thread stopped early"),
                }
            }
        };
        if tokio::time::timeout(drain, all).await.is_err() {
            tracing::warn!("SPIFFE drain timed out");
        }
    }
}
