//! Accepted connections of the SPIFFE socket, each carrying the caller as
//! taken at accept (SO_PEERCRED, pidfd) into tonic's request extensions, so
//! the gRPC handlers attest through the same `Peer` as `/v1/token`. What the
//! client sends passes through [`AuthorityRewriter`] on its way to h2.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::authority::AuthorityRewriter;
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

/// Accepts on `listener` (at most `max_connections` open at once) and
/// yields each connection with its `Peer`. Ends when the receiver is dropped.
pub fn accept_loop(
    listener: UnixListener,
    proc_root: std::path::PathBuf,
    max_connections: usize,
) -> ReceiverStream<std::io::Result<PeerConn>> {
    let (tx, rx) = mpsc::channel(16);
    let conns = Arc::new(Semaphore::new(max_connections));
    tokio::spawn(async move {
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
                _ = tx.closed() => return,
            };
            let peer = Arc::new(Peer::of_socket(&proc_root, &io));
            let conn = PeerConn {
                io,
                rewriter: AuthorityRewriter::default(),
                ready: Vec::new(),
                peer,
                _permit: permit,
            };
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}
