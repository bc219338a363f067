//! Where a signature runs: the choice belongs to the backend.

use std::sync::Arc;

use super::{Backend, Signer, SignerError};

/// Runs `job` with `signer` on the thread its backend needs and returns what
/// `job` returns.
///
/// Software: inline on the caller's thread (an ES256 signature is ~20 µs of
/// CPU, less than the hop to tokio's blocking pool costs). TPM: on a blocking
/// thread, since it waits ~1 ms or more on a device or socket and must never
/// hold an async worker. Needs a tokio runtime for the TPM.
///
/// Errors: what `job` returns, or [`SignerError::JobFailed`] when the
/// blocking thread panicked or the runtime is shutting down.
pub async fn sign_job<T, F>(signer: &Arc<dyn Signer>, job: F) -> Result<T, SignerError>
where
    F: FnOnce(&dyn Signer) -> Result<T, SignerError> + Send + 'static,
    T: Send + 'static,
{
    match signer.backend() {
        Backend::Software => job(signer.as_ref()),
        Backend::Tpm => {
            let signer = Arc::clone(signer);
            tokio::task::spawn_blocking(move || job(signer.as_ref()))
                .await
                .map_err(|source| SignerError::JobFailed { source })?
        }
    }
}
