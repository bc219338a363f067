//! Software node key: P-256 PKCS#8 PEM in the state directory, mode 0600.

use std::fmt;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};

use super::{Backend, NodePublicKey, Signer, SignerError};
use crate::state;

pub struct SoftwareSigner {
    // aws-lc-rs is the backend jsonwebtoken uses; holding the parsed key pair
    // avoids re-parsing the PKCS#8 document on every sign.
    key: EcdsaKeyPair,
    rng: SystemRandom,
    public: NodePublicKey,
    path: PathBuf,
}

impl fmt::Debug for SoftwareSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftwareSigner")
            .field("path", &self.path)
            .field("kid", &self.public.kid)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl SoftwareSigner {
    /// Loads the key at `path`, generating it first if the file is absent.
    pub fn open(path: &Path) -> Result<Self, SignerError> {
        if !path.exists() {
            if let Some(dir) = path.parent() {
                state::ensure_dir(dir)?;
            }
            let sk = p256::SecretKey::random(&mut rand_core::OsRng);
            let pem = sk
                .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
                .map_err(|e| SignerError::Software(e.to_string()))?;
            state::write_atomic(path, pem.as_bytes(), 0o600)?;
            tracing::info!(path = %path.display(), "created software node key");
        }
        let bad = |reason: String| SignerError::BadSoftwareKey {
            path: path.to_path_buf(),
            reason,
        };
        let pem = state::read_private(path)?;
        let pem = std::str::from_utf8(&pem).map_err(|_| bad("not PEM text".into()))?;
        let sk = p256::SecretKey::from_pkcs8_pem(pem).map_err(|e| bad(e.to_string()))?;
        let der = sk.to_pkcs8_der().map_err(|e| bad(e.to_string()))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.as_bytes())
            .map_err(|e| bad(e.to_string()))?;
        let public = p256::PublicKey::from_sec1_bytes(key.public_key().as_ref())
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            key,
            rng: SystemRandom::new(),
            public: NodePublicKey::new(public),
            path: path.to_path_buf(),
        })
    }
}

impl Signer for SoftwareSigner {
    fn backend(&self) -> Backend {
        Backend::Software
    }

    fn public_key(&self) -> &NodePublicKey {
        &self.public
    }

    fn sign(&self, signing_input: &[u8]) -> Result<[u8; 64], SignerError> {
        let sig = self
            .key
            .sign(&self.rng, signing_input)
            .map_err(|e| SignerError::Software(e.to_string()))?;
        sig.as_ref()
            .try_into()
            .map_err(|_| SignerError::Software("signature is not 64 bytes".into()))
    }
}
