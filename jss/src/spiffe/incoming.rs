//! Accepted connections of the SPIFFE socket, each carrying the caller as
//! taken at accept (SO_PEERCRED, pidfd) into tonic's request extensions, so
//! the gRPC handlers attest through the same `Peer` as `/v1/token`. What the
//! client sends passes through [`AuthorityRewriter`] on its way to h2.
//! Accepted on the main runtime, served on a worker (`workers`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tonic::transport::server::Connected;

use super::authority::AuthorityRewriter;
use super::workers::Accepted;
use crate::attest::Peer;

/// One accepted connection: the stream, its caller, and its slot of
/// `limits.max_connections`.
pub struct PeerConn {
    io: UnixStream,
    rewriter: AuthorityRewriter,
    /// Rewritten bytes h2 has not read yet.
    ready: Vec<u8>,
    peer: Arc<Peer>,
    _permit: OwnedSemaphorePermit,
}

impl PeerConn {
    pub fn new(io: UnixStream, peer: Arc<Peer>, permit: OwnedSemaphorePermit) -> PeerConn {
        PeerConn {
            io,
            rewriter: AuthorityRewriter::default(),
            ready: Vec::new(),
            peer,
            _permit: permit,
        }
    }
}

impl Connected for PeerConn {
    type ConnectInfo = Arc<Peer>;

    fn connect_info(&self) -> Arc<Peer> {
        Arc::clone(&self.peer)
    }
}

impl AsyncRead for PeerConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.drain(..n);
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 8192];
            let mut read = ReadBuf::new(&mut tmp);
            std::task::ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return Poll::Ready(Ok(())); // end of stream
            }
            this.ready = this.rewriter.feed(read.filled());
        }
    }
}

impl AsyncWrite for PeerConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    // h2 writes a frame's head and its payload as one vector; without this
    // it falls back to a write per slice (three per JWT-SVID answer).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Accepts on `listener` (at most `max_connections` open at once), takes
/// each caller's `Peer` and hands the connection to the next of `workers`
/// in turn. Ends at `stopping` or when every worker is gone.
pub fn accept_loop(
    listener: UnixListener,
    proc_root: std::path::PathBuf,
    max_connections: usize,
    workers: Vec<mpsc::Sender<Accepted>>,
    mut stopping: watch::Receiver<bool>,
) {
    let conns = Arc::new(Semaphore::new(max_connections));
    tokio::spawn(async move {
        let mut next = 0usize;
        loop {
            let Ok(permit) = Arc::clone(&conns).acquire_owned().await else {
                return;
            };
            let io = tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "SPIFFE socket: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = stopped(&mut stopping) => return,
            };
            let peer = Arc::new(Peer::of_socket(&proc_root, &io));
            let io = match io.into_std() {
                Ok(io) => io,
                Err(e) => {
                    tracing::warn!(error = %e, "SPIFFE socket: cannot hand a connection to a worker");
                    continue;
                }
            };
            let mut conn = Accepted { io, peer, permit };
            // The next live worker; a worker whose thread ended is skipped.
            let mut tries = 0;
            loop {
                let w = &workers[next % workers.len()];
                next = next.wrapping_add(1);
                match w.send(conn).await {
                    Ok(()) => break,
                    Err(mpsc::error::SendError(back)) => conn = back,
                }
                tries += 1;
                if tries == workers.len() {
                    tracing::error!("every SPIFFE worker has stopped; no longer accepting");
                    return;
                }
            }
        }
    });
}

/// Returns once `stopping` is `true` (or its sender is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn listener(dir: &tempfile::TempDir) -> (UnixListener, std::path::PathBuf) {
        let path = dir.path().join("s.sock");
        (UnixListener::bind(&path).unwrap(), path)
    }

    #[tokio::test]
    async fn connections_take_turns_and_skip_a_stopped_worker() {
        let dir = tempfile::tempdir().unwrap();
        let (l, path) = listener(&dir);
        let (tx0, mut rx0) = mpsc::channel(16);
        let (tx1, rx1) = mpsc::channel(16);
        let (tx2, mut rx2) = mpsc::channel(16);
        drop(rx1); // worker 1's thread has ended
        let (_stop, stopping) = watch::channel(false);
        accept_loop(l, "/proc".into(), 8, vec![tx0, tx1, tx2], stopping);
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(UnixStream::connect(&path).await.unwrap());
        }
        // 0, (1 gone) 2, 0, (1 gone) 2: two each, none lost.
        for rx in [&mut rx0, &mut rx2] {
            for _ in 0..2 {
                let a = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(
                    a.peer.ids().0,
                    std::process::id() as i32,
                    "the caller is us"
                );
            }
            assert!(rx.try_recv().is_err(), "no third connection");
        }
    }

    /// Connecting fails within 10 s: the accept loop has ended.
    async fn closes(path: &std::path::Path) -> bool {
        for _ in 0..200 {
            if UnixStream::connect(path).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    #[tokio::test]
    async fn stopping_ends_the_accept_loop_and_every_worker_gone_too() {
        let dir = tempfile::tempdir().unwrap();
        let (l, path) = listener(&dir);
        let (tx, rx) = mpsc::channel(16);
        let (stop, stopping) = watch::channel(false);
        accept_loop(l, "/proc".into(), 8, vec![tx], stopping);
        stop.send(true).unwrap();
        assert!(
            closes(&path).await,
            "the listener is closed once the loop ends"
        );
        drop(rx);

        let dir = tempfile::tempdir().unwrap();
        let (l, path) = listener(&dir);
        let (tx, rx) = mpsc::channel(16);
        drop(rx);
        let (_stop, stopping) = watch::channel(false);
        accept_loop(l, "/proc".into(), 8, vec![tx], stopping);
        let _first = UnixStream::connect(&path).await.unwrap();
        assert!(closes(&path).await, "no worker left to serve");
    }
}
