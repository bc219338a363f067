//! `jss token --out FILE [--refresh]`: the token in a file any agent can
//! read (Vault Agent / OpenBao Agent `auto_auth` method `jwt`, apps that
//! read a projected token file).
//!
//! The file is replaced atomically, so a reader never sees a partial or
//! empty file. With `--refresh` it is rewritten before the token's
//! half-life (with jitter), written again when a reader deletes it, and
//! JSS is retried with backoff while the current token is still valid.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::client::{self, ClientError};
use crate::state::{self, StateError};
use crate::workload::backoff::{Backoff, jitter};
use crate::workload::secret::Secret;
use crate::workload::shutdown::{Shutdown, ShutdownError};
use crate::workload::unix_now;

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error(
        "the directory of the token file {0} does not exist: create it or mount a volume there"
    )]
    NoDir(PathBuf),
    #[error(transparent)]
    Jss(#[from] ClientError),
    #[error(transparent)]
    Write(#[from] StateError),
    #[error(transparent)]
    Shutdown(#[from] ShutdownError),
}

/// Where the token comes from and where it goes.
#[derive(Debug, Clone)]
pub struct TokenFileConfig {
    pub socket: PathBuf,
    pub audience: Option<String>,
    pub out: PathBuf,
    /// File mode (0644 by default: the reader may be another uid).
    pub mode: u32,
    pub timeout: Duration,
}

impl TokenFileConfig {
    fn check_dir(&self) -> Result<(), TokenFileError> {
        let dir = match self.out.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if dir.is_dir() {
            Ok(())
        } else {
            Err(TokenFileError::NoDir(self.out.clone()))
        }
    }

    async fn fetch(&self) -> Result<(Secret, u64), ClientError> {
        let r = client::fetch_token(&self.socket, self.audience.as_deref(), self.timeout).await?;
        Ok((Secret::new(r.token), r.expires_at))
    }

    fn write(&self, token: &Secret) -> Result<(), StateError> {
        state::write_atomic(&self.out, token.expose().as_bytes(), self.mode)
    }
}

/// Gets one token and writes it (an init container).
pub async fn write_once(cfg: &TokenFileConfig) -> Result<(), TokenFileError> {
    cfg.check_dir()?;
    let (token, _) = cfg.fetch().await?;
    cfg.write(&token)?;
    Ok(())
}

/// How often a deleted file is noticed and written again.
const WATCH: Duration = Duration::from_secs(1);

/// Keeps the file fresh until SIGTERM/SIGINT, then returns `Ok`.
pub async fn refresh(cfg: &TokenFileConfig, mut shutdown: Shutdown) -> Result<(), TokenFileError> {
    cfg.check_dir()?;
    let mut current: Option<(Secret, u64)> = None;
    let mut next_fetch = Instant::now();
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
    let mut last_refusal: Option<String> = None;
    loop {
        if Instant::now() >= next_fetch {
            match cfg.fetch().await {
                Ok((token, exp)) => {
                    cfg.write(&token)?;
                    let left = Duration::from_secs(exp.saturating_sub(unix_now()));
                    // Before half-life, a little earlier on each node at random.
                    next_fetch = Instant::now() + jitter(left / 2, 0.2);
                    backoff.reset();
                    if last_refusal.take().is_some() {
                        tracing::info!(file = %cfg.out.display(), "JSS answers again: token file refreshed");
                    } else {
                        tracing::debug!(file = %cfg.out.display(), expires_at = exp, "token file written");
                    }
                    current = Some((token, exp));
                }
                Err(e) => {
                    let msg = e.to_string();
                    let valid = current.as_ref().is_some_and(|(_, exp)| *exp > unix_now());
                    // Once per distinct refusal, not once per retry.
                    if last_refusal.as_deref() != Some(msg.as_str()) {
                        tracing::warn!(error = %msg, current_token_valid = valid, "cannot refresh the token file; retrying with backoff");
                        last_refusal = Some(msg);
                    }
                    next_fetch = Instant::now() + backoff.next_delay();
                }
            }
        }
        // Agents delete the file after reading unless told not to.
        if let Some((token, _)) = &current
            && !cfg.out.exists()
        {
            cfg.write(token)?;
            tracing::info!(file = %cfg.out.display(), "token file was removed: written again");
        }
        let wait = next_fetch
            .saturating_duration_since(Instant::now())
            .min(WATCH);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait() => return Ok(()),
        }
    }
}
