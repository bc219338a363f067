//! The flags of `node register --rotate` (and of finishing a rotation on a
//! plain `node register`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::daemon::DaemonSpec;
use crate::rotate::RotateSpec;

#[derive(Args, Clone, Debug)]
pub struct RotateArgs {
    /// Replace the node key: a new key bound to the current PCRs, its
    /// certificate and registration, the daemon's switch (SIGHUP), then the
    /// old key's removal once its tokens have expired.
    #[arg(long)]
    pub rotate: bool,
    /// Wait for the old key's removal (the default with --rotate).
    #[arg(long, overrides_with = "no_wait")]
    pub wait: bool,
    /// Record the old key's removal in the state directory and return; the
    /// next `node register` completes it (the default without --rotate).
    #[arg(long, overrides_with = "wait")]
    pub no_wait: bool,
    /// How long the daemon's tokens live, in seconds [default: what the
    /// daemon on --socket reports, else 60].
    #[arg(long)]
    pub token_ttl: Option<u64>,
    /// The daemon's socket: asked which key it signs with.
    #[arg(long, env = "JSS_SOCKET", default_value = jss::client::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Send SIGHUP to this pid [default: the process serving --socket].
    #[arg(long)]
    pub daemon_pid: Option<i32>,
    /// Seconds to wait for the daemon to sign with the new key after SIGHUP.
    #[arg(long, default_value_t = 30)]
    pub switch_timeout: u64,
    /// JWKS mode: seconds to wait for the JWKS to add or drop a key.
    #[arg(long, default_value_t = 60)]
    pub jwks_wait: u64,
}

impl RotateArgs {
    pub fn spec(&self) -> RotateSpec {
        RotateSpec {
            token_ttl: self.token_ttl,
            daemon: DaemonSpec {
                socket: self.socket.clone(),
                pid: self.daemon_pid,
                timeout: Duration::from_secs(self.switch_timeout),
            },
            wait: if self.rotate {
                !self.no_wait
            } else {
                self.wait
            },
            jwks_wait: Duration::from_secs(self.jwks_wait),
        }
    }
}
