//! The serving certificate, re-read when its files change (cert-manager
//! rewrites the Secret's files in place on renewal). Each handshake compares
//! the files' modification times with the loaded pair's (two `stat` calls);
//! a pair that fails to load is logged and the previous one kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the serving certificate {path}: {source}")]
    Cert {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("the serving certificate file {0} holds no certificate")]
    NoCert(PathBuf),
    #[error("cannot read the serving key {path} (PEM, PKCS#8, SEC1 or PKCS#1): {source}")]
    Key {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("the serving key {path} is not usable: {source}")]
    BadKey {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("the serving key {key} does not belong to the certificate {cert}: {source}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS setup: {0}")]
    Setup(#[source] rustls::Error),
}

type Stamp = (Option<SystemTime>, Option<SystemTime>);

struct Loaded {
    stamp: Stamp,
    key: Arc<CertifiedKey>,
}

/// A `ResolvesServerCert` that follows the certificate and key files.
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Cert {
            path: cert.into(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert(cert.into()));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.into(),
        source,
    })?;
    let ck = CertifiedKey::from_der(chain, der, provider).map_err(|source| match source {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
            cert: cert.into(),
            key: key.into(),
            source,
        },
        source => TlsError::BadKey {
            path: key.into(),
            source,
        },
    })?;
    Ok(ck)
}

impl ReloadingCert {
    /// Loads the pair now: a bad pair at start is an error, not a warning.
    pub fn new(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let stamp = (mtime(cert), mtime(key));
        let ck = load(cert, key, &provider)?;
        Ok(Self {
            cert: cert.into(),
            key: key.into(),
            provider,
            loaded: Mutex::new(Loaded {
                stamp,
                key: Arc::new(ck),
            }),
        })
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let stamp = (mtime(&self.cert), mtime(&self.key));
        let mut loaded = self.loaded.lock().ok()?;
        if loaded.stamp != stamp {
            // Noted even on failure: a half-written pair is retried on the next change.
            loaded.stamp = stamp;
            match load(&self.cert, &self.key, &self.provider) {
                Ok(ck) => {
                    tracing::info!(cert = %self.cert.display(), "serving certificate re-read");
                    loaded.key = Arc::new(ck);
                }
                Err(e) => tracing::warn!(
                    "keeping the previous serving certificate: {e}; it is re-read when the files change again"
                ),
            }
        }
        Some(loaded.key.clone())
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

/// The rustls server config (TLS 1.2/1.3, ALPN `http/1.1`).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let resolver = ReloadingCert::new(cert, key, provider.clone())?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
