//! `jss secrets`: one pass over the items (fetch, write, remove what Vault
//! revoked), run once (`--once`) or as TSI's sidecar: every
//! `--refresh-seconds`, every 10 s until the first complete success, with
//! backoff while JSS or Vault is unreachable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::output::{self, Format};
use super::session::Session;
use super::spec::Item;
use super::vault::SecretStore;
use crate::workload::backoff::{Backoff, jitter};
use crate::workload::shutdown::Shutdown;

/// What became of one item in a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Written,
    Unchanged,
    /// Vault refused (403) or no longer has (404) the secret: file removed.
    Removed(String),
    /// The file stays as it was.
    Failed {
        reason: String,
        transport: bool,
    },
}

/// The outcomes of one pass, in item order.
#[derive(Debug, Clone)]
pub struct PassReport(pub Vec<(String, Outcome)>);

impl PassReport {
    /// Every item's file holds the current secret.
    pub fn complete(&self) -> bool {
        self.0
            .iter()
            .all(|(_, o)| matches!(o, Outcome::Written | Outcome::Unchanged))
    }

    pub fn changed(&self) -> bool {
        self.0
            .iter()
            .any(|(_, o)| matches!(o, Outcome::Written | Outcome::Removed(_)))
    }

    pub fn transport_failure(&self) -> bool {
        self.0.iter().any(|(_, o)| {
            matches!(
                o,
                Outcome::Failed {
                    transport: true,
                    ..
                }
            )
        })
    }

    /// One line per item whose file does not hold its secret.
    pub fn failures(&self) -> Vec<String> {
        self.0
            .iter()
            .filter_map(|(name, o)| match o {
                Outcome::Removed(r) | Outcome::Failed { reason: r, .. } => {
                    Some(format!("secret {name}: {r}"))
                }
                _ => None,
            })
            .collect()
    }
}

/// Where the files go and how.
#[derive(Debug, Clone)]
pub struct OutputConfig {
    pub dir: PathBuf,
    pub format: Format,
    pub file_mode: u32,
}

/// Fetches every item and brings its file up to date.
pub async fn pass<S: SecretStore + 'static>(
    session: &mut Session<S>,
    items: &[Item],
    out: &OutputConfig,
) -> PassReport {
    let mut report = Vec::with_capacity(items.len());
    let fetched = session.fetch_all(items).await;
    for (item, result) in items.iter().zip(fetched) {
        let span = tracing::info_span!("secret", name = %item.name, role = item.role());
        let _g = span.enter();
        let outcome = match result {
            Ok((path, data)) => match output::render(&data, out.format)
                .and_then(|b| output::write_if_changed(&out.dir, &item.file, &b, out.file_mode))
            {
                Ok(true) => {
                    tracing::info!(path, file = %item.file.display(), "secret written");
                    Outcome::Written
                }
                Ok(false) => Outcome::Unchanged,
                Err(e) => Outcome::Failed {
                    reason: e.to_string(),
                    transport: false,
                },
            },
            Err(e) if e.is_revocation() => {
                match output::remove(&out.dir, &item.file) {
                    Ok(true) => {
                        tracing::warn!(error = %e, file = %item.file.display(), "secret revoked: file removed")
                    }
                    Ok(false) => tracing::warn!(error = %e, "secret refused"),
                    Err(re) => {
                        tracing::error!(error = %re, "cannot remove a revoked secret's file")
                    }
                }
                Outcome::Removed(e.to_string())
            }
            Err(e) => {
                tracing::warn!(error = %e, "secret not fetched; its file is left as it is");
                Outcome::Failed {
                    transport: e.is_transport(),
                    reason: e.to_string(),
                }
            }
        };
        report.push((item.name.clone(), outcome));
    }
    PassReport(report)
}

/// The sidecar's timing and hooks.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    pub refresh: Duration,
    /// Until the first complete success (TSI: 10 s).
    pub retry: Duration,
    pub ready_file: Option<PathBuf>,
    /// Run with `sh -c` after a pass that changed a file.
    pub on_change: Option<String>,
}

/// Runs passes until SIGTERM/SIGINT, then revokes the Vault tokens.
pub async fn run<S: SecretStore + 'static>(
    mut session: Session<S>,
    items: &[Item],
    out: &OutputConfig,
    cfg: &SidecarConfig,
    mut shutdown: Shutdown,
) {
    let mut ready = false;
    let mut backoff = Backoff::new(Duration::from_secs(1), cfg.refresh);
    loop {
        let report = pass(&mut session, items, out).await;
        if report.changed()
            && let Some(cmd) = &cfg.on_change
        {
            on_change(cmd).await;
        }
        let wait = if report.complete() {
            backoff.reset();
            if !ready {
                ready = true;
                mark_ready(cfg.ready_file.as_deref());
            }
            jitter(cfg.refresh, 0.1)
        } else if report.transport_failure() {
            let d = backoff.next_delay();
            if ready { d } else { d.min(cfg.retry) }
        } else if ready {
            cfg.refresh
        } else {
            cfg.retry
        };
        tracing::debug!(wait_ms = wait.as_millis() as u64, "next pass");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait() => break,
        }
    }
    tracing::info!("stopping: revoking the Vault tokens");
    session.revoke_all().await;
}

fn mark_ready(path: Option<&Path>) {
    let Some(p) = path else { return };
    match crate::state::write_atomic(p, b"", 0o644) {
        Ok(()) => tracing::info!(file = %p.display(), "every secret written: ready"),
        Err(e) => tracing::error!(error = %e, "cannot create the ready file"),
    }
}

async fn on_change(cmd: &str) {
    match tokio::process::Command::new("sh")
        .args(["-c", cmd])
        .status()
        .await
    {
        Ok(s) if s.success() => tracing::info!(command = cmd, "on-change command ran"),
        Ok(s) => tracing::warn!(command = cmd, status = %s, "on-change command failed"),
        Err(e) => tracing::warn!(command = cmd, error = %e, "cannot run the on-change command"),
    }
}
