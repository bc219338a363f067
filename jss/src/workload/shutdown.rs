//! SIGTERM / SIGINT for the long-running workload commands.

use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, thiserror::Error)]
#[error("cannot install the SIGTERM/SIGINT handler: {0}")]
pub struct ShutdownError(#[source] std::io::Error);

/// Completes when SIGTERM or SIGINT arrives. Install it before the work
/// starts, so a signal that comes early is not lost.
pub struct Shutdown {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Shutdown {
    pub fn install() -> Result<Self, ShutdownError> {
        Ok(Self {
            term: signal(SignalKind::terminate()).map_err(ShutdownError)?,
            int: signal(SignalKind::interrupt()).map_err(ShutdownError)?,
        })
    }

    pub async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
