//! The trust domain's JWT bundle: a JWKS (RFC 7517) with every node's key.
//!
//! Taken from the cluster JWKS (`bundle_file`, or `bundle_url` over HTTPS
//! verified against `bundle_ca`), re-read every `bundle_refresh_seconds` and
//! when a JWT-SVID names a `kid` the bundle lacks. This node's own key is
//! always in it. Subscribers (FetchJWTBundles streams) see each change.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::Jwk;
use tokio::sync::{Notify, watch};

use super::config::BundleSource;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read the JWT bundle file {path}: {source}; check [spiffe] bundle_file")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the bundle CA {path}: {source}; [spiffe] bundle_ca must name a PEM file")]
    Ca {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the bundle CA {path} is not a PEM certificate bundle: {source}; fix [spiffe] bundle_ca"
    )]
    CaPem {
        path: PathBuf,
        source: reqwest::Error,
    },
    #[error("cannot set up the HTTPS client for the JWT bundle: {0}")]
    Client(reqwest::Error),
    #[error(
        "cannot fetch the JWT bundle from {url}: {source}; check [spiffe] bundle_url and that the discovery server is up"
    )]
    Fetch { url: String, source: reqwest::Error },
    #[error(
        "the JWT bundle from {from} is not a JWKS document ({{\"keys\":[…]}} of JWKs with a kid): {reason}"
    )]
    Malformed { from: String, reason: String },
}

/// One version of the bundle: the JWKS document as served and its keys by `kid`.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    /// The JWKS document, `{"keys":[…]}`, as FetchJWTBundles hands it out.
    pub jwks: Vec<u8>,
    keys: BTreeMap<String, Jwk>,
}

impl Bundle {
    /// The bundle of `source_keys` plus `own` (replacing a key with its `kid`).
    pub fn new(mut keys: BTreeMap<String, Jwk>, own: &Jwk) -> Self {
        if let Some(kid) = own.common.key_id.clone() {
            keys.insert(kid, own.clone());
        }
        let list: Vec<&Jwk> = keys.values().collect();
        let jwks = serde_json::to_vec(&serde_json::json!({ "keys": list })).unwrap_or_default();
        Self { jwks, keys }
    }

    pub fn key(&self, kid: &str) -> Option<&Jwk> {
        self.keys.get(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Parses a JWKS document; keys without a `kid` are refused (go-spiffe looks keys up by it).
pub fn parse_jwks(text: &[u8], from: &str) -> Result<BTreeMap<String, Jwk>, BundleError> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<Jwk>,
    }
    let malformed = |reason: String| BundleError::Malformed {
        from: from.to_string(),
        reason,
    };
    let doc: Doc = serde_json::from_slice(text).map_err(|e| malformed(e.to_string()))?;
    let mut out = BTreeMap::new();
    for k in doc.keys {
        let kid = k
            .common
            .key_id
            .clone()
            .ok_or_else(|| malformed("a key has no kid".into()))?;
        out.insert(kid, k);
    }
    Ok(out)
}

/// Keeps the bundle current and tells subscribers when it changes.
pub struct BundleWatch {
    tx: watch::Sender<Arc<Bundle>>,
    refresh_now: Notify,
}

impl BundleWatch {
    /// Starts with this node's key only; call [`Self::run`] to follow `source`.
    pub fn new(own: &Jwk) -> Arc<Self> {
        let (tx, _) = watch::channel(Arc::new(Bundle::new(BTreeMap::new(), own)));
        Arc::new(Self {
            tx,
            refresh_now: Notify::new(),
        })
    }

    pub fn current(&self) -> Arc<Bundle> {
        Arc::clone(&self.tx.borrow())
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Bundle>> {
        self.tx.subscribe()
    }

    /// Asks the refresher to read the source now (an unknown `kid` was seen).
    pub fn refresh_soon(&self) {
        self.refresh_now.notify_one();
    }

    /// Reads `source` every `every` (and on [`Self::refresh_soon`]) until the
    /// process ends; a failed read keeps the last bundle and is logged.
    pub async fn run(self: Arc<Self>, source: BundleSource, own: Jwk, every: Duration) {
        let http = match &source {
            BundleSource::Url { ca, .. } => match https_client(ca) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "SPIFFE bundle: keeping only this node's key");
                    return;
                }
            },
            _ => None,
        };
        loop {
            match read(&source, http.as_ref()).await {
                Ok(Some(keys)) => {
                    let b = Bundle::new(keys, &own);
                    self.tx.send_if_modified(|cur| {
                        let changed = **cur != b;
                        if changed {
                            tracing::info!(keys = b.len(), "SPIFFE bundle changed");
                            *cur = Arc::new(b);
                        }
                        changed
                    });
                }
                Ok(None) => return,
                Err(e) => tracing::warn!(error = %e, "SPIFFE bundle: keeping the last one"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.refresh_now.notified() => {}
            }
        }
    }
}

fn https_client(ca: &std::path::Path) -> Result<reqwest::Client, BundleError> {
    let pem = std::fs::read(ca).map_err(|source| BundleError::Ca {
        path: ca.to_path_buf(),
        source,
    })?;
    let certs =
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| BundleError::CaPem {
            path: ca.to_path_buf(),
            source,
        })?;
    reqwest::Client::builder()
        .tls_certs_only(certs)
        .https_only(true)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(BundleError::Client)
}

/// The source's keys; `None` when there is no source to follow.
async fn read(
    source: &BundleSource,
    http: Option<&reqwest::Client>,
) -> Result<Option<BTreeMap<String, Jwk>>, BundleError> {
    match (source, http) {
        (BundleSource::File(path), _) => {
            let text = tokio::fs::read(path)
                .await
                .map_err(|source| BundleError::Read {
                    path: path.clone(),
                    source,
                })?;
            parse_jwks(&text, &path.display().to_string()).map(Some)
        }
        (BundleSource::Url { url, .. }, Some(http)) => {
            let fetch = |source| BundleError::Fetch {
                url: url.clone(),
                source,
            };
            let body = http
                .get(url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(fetch)?
                .bytes()
                .await
                .map_err(fetch)?;
            parse_jwks(&body, url).map(Some)
        }
        _ => Ok(None),
    }
}
