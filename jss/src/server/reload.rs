//! SIGHUP: switch to the key version `current` names, or re-read the chain.
//!
//! `jss-bootstrap node register --rotate` writes a new key and chain under
//! `keys/<kid>/`, switches the pointer and sends SIGHUP (README, "Rotating
//! the node key"). The new key is opened and made to sign once on a blocking
//! thread; only then are its key, queue and chain put in use, in one swap.
//! Requests that already built their signing input finish on the old key
//! and its queue (see `issue::Unsigned`); the old queue's thread, and with
//! it the old TPM context, ends when the last of them is done. Cached
//! tokens are dropped, so callers get the new kid at once. Whatever fails
//! leaves the old key serving; the outcome is logged and audited.

use std::path::PathBuf;
use std::sync::Arc;

use super::audit::AuditRecord;
use super::{App, ServerError, load_keys};
use crate::signer::{self, KeyPolicy, SignQueue, SignerError};

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// Same key; its chain was read again.
    Chain,
    /// Now signing with the key `to` (was `from`).
    Key { from: String, to: String },
}

impl App {
    /// Handles one SIGHUP; never fails the daemon.
    pub async fn reload(self: Arc<Self>) {
        let _one = self.reloading.lock().await;
        let from = self.signer().kid().to_string();
        let (outcome, reason) = match self.switch().await {
            Ok(Reloaded::Chain) => {
                tracing::info!("SIGHUP: reloaded chain.pem");
                ("chain_reloaded", format!("kid {from}"))
            }
            Ok(Reloaded::Key { from, to }) => {
                tracing::info!(from = %from, to = %to, "SIGHUP: switched to the new node key");
                ("key_switched", format!("kid {from} -> {to}"))
            }
            Err(e) => {
                tracing::error!(error = %e, kid = %from, "SIGHUP: keeping the key and chain in use");
                ("reload_failed", format!("kept kid {from}: {e}"))
            }
        };
        self.audit.record(AuditRecord {
            outcome,
            reason: Some(&reason),
            ..Default::default()
        });
    }

    /// Reads the pointer; opens and tests the key it names if that is not
    /// the key in use, then swaps.
    async fn switch(&self) -> Result<Reloaded, ServerError> {
        let version =
            crate::state::layout::current(&self.cfg.state_dir).map_err(SignerError::from)?;
        let old = self.keys();
        let on_disk = signer::describe_in(&version.dir)?.kid;
        if on_disk == old.signer.kid() {
            self.reload_chain()?;
            return Ok(Reloaded::Chain);
        }
        let cfg = self.cfg.signer.clone();
        let dir: PathBuf = version.dir.clone();
        // Opening loads the key into the TPM; the probe signature shows the
        // TPM will use it (a PCR policy that no longer matches fails here).
        let new = tokio::task::spawn_blocking(move || {
            let (s, _) = signer::open_in(&cfg, &dir, KeyPolicy::MustExist)?;
            s.sign(b"jss key switch probe")?;
            Ok::<_, SignerError>(s)
        })
        .await??;
        let signing = Arc::new(SignQueue::with_stats(
            Arc::clone(&new),
            self.cfg.limits.signer_queue,
            self.cfg.cache.refresh_max,
            old.signing.stats(),
        ));
        let keys = load_keys(&version.dir, Arc::clone(&new), signing)?;
        self.install(keys);
        self.signer_health.clear();
        Ok(Reloaded::Key {
            from: old.signer.kid().to_string(),
            to: new.kid().to_string(),
        })
    }
}
