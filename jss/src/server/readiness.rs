//! `/readyz`: can this node sign right now?
//!
//! `/healthz` (liveness, `jss health`) says the daemon serves its socket;
//! restarting a daemon whose TPM refuses the key would not help, so a probe
//! that restarts pods must not depend on the signer. `/readyz` (readiness,
//! `jss health --ready`) reports the signer: the outcome of the last
//! signature, or of a probe signature when none was made recently. A node
//! whose boot state no longer matches its key's PCR policy stays live and
//! not ready until an operator rotates the key (README, "Boot-state binding").

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::signer::SignerError;

/// A signature outcome younger than this answers a probe without signing.
pub const FRESH: Duration = Duration::from_secs(30);

/// The last signature's outcome.
#[derive(Debug, Default)]
pub struct SignerHealth {
    last: Mutex<Option<(Instant, Result<(), Failure>)>>,
}

/// Why the signer is not ready: the metric reason and the operator message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: &'static str,
    pub message: String,
}

impl SignerHealth {
    pub fn record(&self, outcome: Result<(), &SignerError>) {
        let outcome = outcome.map_err(|e| Failure {
            reason: e.reason(),
            message: e.to_string(),
        });
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), outcome));
    }

    /// Forgets the last outcome (it was another key's).
    pub fn clear(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The last outcome if it is younger than [`FRESH`].
    pub fn fresh(&self) -> Option<Result<(), Failure>> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match &*last {
            Some((at, outcome)) if at.elapsed() < FRESH => Some(outcome.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_reported_until_a_signature_succeeds() {
        let h = SignerHealth::default();
        assert_eq!(h.fresh(), None);
        let e = SignerError::PcrMismatch {
            pcrs: "sha256:7".into(),
        };
        h.record(Err(&e));
        let f = h.fresh().unwrap().unwrap_err();
        assert_eq!(f.reason, "pcr_mismatch");
        assert!(f.message.contains("boot state changed"), "{}", f.message);
        h.record(Ok(()));
        assert_eq!(h.fresh(), Some(Ok(())));
    }
}
