//! The node's running `jss serve`, as `node register --rotate` needs it:
//! which key it signs with (`GET /v1/jwks` on its socket), how long its
//! tokens live (`GET /metrics`), its pid (the socket's peer credentials, or
//! `--daemon-pid`), and SIGHUP to make it switch to the key the state
//! directory's pointer names.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "the daemon at {socket} still signs with kid {serving} {waited:?} after SIGHUP to pid {pid}, not the new kid {want}: its log says why (`journalctl -u jss` or `kubectl logs`); the old key stays registered until it switches, so run this command again once it does"
    )]
    NotSwitched {
        socket: PathBuf,
        pid: i32,
        serving: String,
        want: String,
        waited: Duration,
    },
    #[error(
        "cannot signal the daemon at {socket} ({why}): send it SIGHUP yourself (`systemctl reload jss`, or `kubectl exec <jss pod> -- kill -HUP 1`) and run this command again to finish the rotation"
    )]
    NoSignal { socket: PathBuf, why: String },
}

/// How to find the daemon.
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    pub socket: PathBuf,
    /// Signal this pid instead of the socket's peer.
    pub pid: Option<i32>,
    /// How long to wait for the daemon to serve the new key.
    pub timeout: Duration,
}

/// What the daemon did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switch {
    /// It serves the new kid (signalled by us, or already).
    Serving { signalled: Option<i32> },
    /// Nothing answers on the socket: no daemon signs with the old key, and
    /// one that starts reads the pointer.
    NotRunning,
}

/// The kid the daemon at `socket` signs with; `None` when nothing answers.
async fn serving_kid(socket: &Path) -> Option<String> {
    let body = jss::client::get(socket, "/v1/jwks", Duration::from_secs(5))
        .await
        .ok()?;
    let doc: serde_json::Value = serde_json::from_slice(&body).ok()?;
    doc.pointer("/keys/0/kid")
        .and_then(serde_json::Value::as_str)
        .map(String::from)
}

/// How long the tokens of the daemon at `socket` live, in seconds (its
/// `jss_token_ttl_seconds` gauge on `GET /metrics`); `None` when nothing
/// answers or the daemon predates the gauge.
pub async fn token_ttl(socket: &Path) -> Option<u64> {
    let body = jss::client::get(socket, "/metrics", Duration::from_secs(5))
        .await
        .ok()?;
    sample(
        std::str::from_utf8(&body).ok()?,
        jss::server::TOKEN_TTL_METRIC,
    )
}

/// The value of the unlabelled sample `name` in a Prometheus text
/// exposition, as a whole number.
fn sample(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// The pid of the process serving `socket` (its peer credentials); `None`
/// where the kernel gives none (another pid namespace).
fn peer_pid(socket: &Path) -> Result<Option<i32>, String> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| e.to_string())?;
    let cred = getsockopt(&s, PeerCredentials).map_err(|e| e.to_string())?;
    Ok((cred.pid() > 0).then_some(cred.pid()))
}

/// Makes the daemon sign with `want`: nothing if it already does, else
/// SIGHUP and wait until `/v1/jwks` shows it.
///
/// Errors: the daemon cannot be signalled, or does not switch within
/// `spec.timeout` (a reload it refused: missing files, the TPM refusing
/// the new key); the message says what to do.
pub async fn switch(spec: &DaemonSpec, want: &str) -> Result<Switch, DaemonError> {
    let Some(serving) = serving_kid(&spec.socket).await else {
        return Ok(Switch::NotRunning);
    };
    if serving == want {
        return Ok(Switch::Serving { signalled: None });
    }
    let no_signal = |why: String| DaemonError::NoSignal {
        socket: spec.socket.clone(),
        why,
    };
    let pid = match spec.pid {
        Some(p) => p,
        None => peer_pid(&spec.socket)
            .map_err(no_signal)?
            .ok_or_else(|| no_signal("its pid is not visible from here".into()))?,
    };
    kill(Pid::from_raw(pid), Signal::SIGHUP).map_err(|e| no_signal(format!("pid {pid}: {e}")))?;
    let started = Instant::now();
    let mut last = serving;
    while started.elapsed() < spec.timeout {
        tokio::time::sleep(Duration::from_millis(100)).await;
        match serving_kid(&spec.socket).await {
            Some(k) if k == want => {
                return Ok(Switch::Serving {
                    signalled: Some(pid),
                });
            }
            Some(k) => last = k,
            None => {}
        }
    }
    Err(DaemonError::NotSwitched {
        socket: spec.socket.clone(),
        pid,
        serving: last,
        want: want.into(),
        waited: spec.timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::sample;

    #[test]
    fn a_gauge_is_read_from_the_text_exposition() {
        let text = "# HELP jss_token_ttl_seconds How long\n\
                    # TYPE jss_token_ttl_seconds gauge\n\
                    jss_token_ttl_seconds_other 5\n\
                    jss_token_ttl_seconds 300\n";
        assert_eq!(sample(text, "jss_token_ttl_seconds"), Some(300));
        assert_eq!(sample(text, "jss_missing"), None);
        assert_eq!(
            sample("jss_token_ttl_seconds x\n", "jss_token_ttl_seconds"),
            None
        );
    }
}
