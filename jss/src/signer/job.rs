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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::{KeyPolicy, NodePublicKey, SignerConfig, SignerKind, open};

    /// The software key, reporting `backend`.
    #[derive(Debug)]
    struct As(Backend, Arc<dyn Signer>);

    impl Signer for As {
        fn backend(&self) -> Backend {
            self.0
        }
        fn public_key(&self) -> &NodePublicKey {
            self.1.public_key()
        }
        fn sign(&self, input: &[u8]) -> Result<[u8; 64], SignerError> {
            self.1.sign(input)
        }
    }

    #[test]
    fn software_signs_inline_and_the_tpm_on_a_blocking_thread() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SignerConfig {
            kind: SignerKind::Software,
            tcti: String::new(),
            state_dir: dir.path().to_path_buf(),
            pcrs: None,
        };
        let key = open(&cfg, KeyPolicy::CreateIfMissing).unwrap().0;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let here = std::thread::current().id();
        for (backend, inline) in [(Backend::Software, true), (Backend::Tpm, false)] {
            let s: Arc<dyn Signer> = Arc::new(As(backend, Arc::clone(&key)));
            let (thread, sig) = rt
                .block_on(sign_job(&s, |s| {
                    Ok((std::thread::current().id(), s.sign(b"input")?))
                }))
                .unwrap();
            assert_eq!(thread == here, inline, "{backend}");
            assert_eq!(sig.len(), 64);
        }
    }
}
