//! The trust domain's JWT bundle: a JWKS (RFC 7517) with every node's key.
//!
//! Taken from the cluster JWKS (`bundle_file`, or `bundle_url` over HTTPS
//! verified against `bundle_ca`), re-read every `bundle_refresh_seconds` and
//! when a JWT-SVID names a `kid` the bundle lacks. This node's own keys are
//! always in it: the key in use and, after a key switch, the old key while
//! it retires (`own_keys`). Subscribers (FetchJWTBundles streams) see each
//! change.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::Jwk;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt as _};

use super::config::BundleSource;
use super::own_keys::OwnKeys;

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
    /// The bundle of `source` keys plus this node's `own` keys (an own key
    /// replaces a source key with its `kid`).
    pub fn new<'a>(source: &BTreeMap<String, Jwk>, own: impl IntoIterator<Item = &'a Jwk>) -> Self {
        let mut keys = source.clone();
        for k in own {
            if let Some(kid) = k.common.key_id.clone() {
                keys.insert(kid, k.clone());
            }
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
    /// Starts with this node's `own` keys only; call [`Self::run`] to
    /// follow the source and key switches.
    pub fn new(own: &OwnKeys) -> Arc<Self> {
        let (tx, _) = watch::channel(Arc::new(Bundle::new(&BTreeMap::new(), own.keys())));
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

    /// Until the process ends: reads `source` every `every` (and on
    /// [`Self::refresh_soon`]), follows the node key through `switches`
    /// (the key in use after each change), and drops each replaced key when
    /// its retirement ends. Each change is one new bundle for subscribers;
    /// a failed read keeps the last source keys and is logged.
    pub async fn run(
        self: Arc<Self>,
        source: BundleSource,
        every: Duration,
        mut own: OwnKeys,
        mut switches: impl Stream<Item = Jwk> + Unpin,
    ) {
        let http = match &source {
            BundleSource::Url { ca, .. } => match https_client(ca) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "SPIFFE bundle: keeping only this node's keys");
                    None
                }
            },
            _ => None,
        };
        let follows_source = match source {
            BundleSource::OwnKey => false,
            BundleSource::File(_) => true,
            BundleSource::Url { .. } => http.is_some(),
        };
        let mut from_source = BTreeMap::new();
        let mut next_read = follows_source.then(Instant::now);
        let mut following_switches = true;
        loop {
            if next_read.is_some_and(|t| t <= Instant::now()) {
                match read(&source, http.as_ref()).await {
                    Ok(Some(keys)) => from_source = keys,
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "SPIFFE bundle: keeping the last one"),
                }
                next_read = Some(Instant::now() + every);
            }
            self.publish(Bundle::new(&from_source, own.keys()));
            let retire_at = own.next_expiry();
            tokio::select! {
                _ = sleep_until_or_never(next_read) => {}
                _ = self.refresh_now.notified(), if follows_source => next_read = Some(Instant::now()),
                switched = switches.next(), if following_switches => match switched {
                    Some(jwk) => {
                        let from = own.current_kid().to_string();
                        if own.switch(jwk, Instant::now()) {
                            tracing::info!(from = %from, to = own.current_kid(), "SPIFFE bundle: node key switched; the old key stays while its JWT-SVIDs can be valid");
                        }
                    }
                    None => following_switches = false,
                },
                _ = sleep_until_or_never(retire_at) => {
                    for kid in own.expire(Instant::now()) {
                        tracing::info!(kid = %kid, "SPIFFE bundle: retired node key dropped");
                    }
                }
            }
        }
    }

    fn publish(&self, b: Bundle) {
        self.tx.send_if_modified(|cur| {
            let changed = **cur != b;
            if changed {
                tracing::info!(keys = b.len(), "SPIFFE bundle changed");
                *cur = Arc::new(b);
            }
            changed
        });
    }
}

async fn sleep_until_or_never(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spiffe::own_keys::tests::random_jwk;

    fn kid(k: &Jwk) -> String {
        k.common.key_id.clone().unwrap()
    }

    /// The next bundle subscribers see, as its kids.
    async fn next(rx: &mut watch::Receiver<Arc<Bundle>>) -> Vec<String> {
        tokio::time::timeout(Duration::from_secs(60), rx.changed())
            .await
            .expect("no new bundle within a minute")
            .unwrap();
        rx.borrow_and_update().keys.keys().cloned().collect()
    }

    fn sorted(mut kids: Vec<String>) -> Vec<String> {
        kids.sort();
        kids
    }

    #[tokio::test]
    async fn a_key_switch_reaches_subscribers_and_the_old_key_leaves_after_its_window() {
        let (other, a, b) = (random_jwk(), random_jwk(), random_jwk());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwks.json");
        std::fs::write(&file, serde_json::json!({ "keys": [&other] }).to_string()).unwrap();
        // Long enough that the bundle holding both keys is seen before the
        // old one leaves, whatever the load.
        let own = OwnKeys::new(a.clone(), Duration::from_secs(3));
        let watch = BundleWatch::new(&own);
        let mut rx = watch.subscribe();
        let (tx, switches) = tokio::sync::mpsc::channel(1);
        tokio::spawn(Arc::clone(&watch).run(
            BundleSource::File(file),
            Duration::from_secs(3600),
            own,
            tokio_stream::wrappers::ReceiverStream::new(switches),
        ));
        assert_eq!(next(&mut rx).await, sorted(vec![kid(&other), kid(&a)]));

        // A chain reload hands the same key again: no new bundle.
        tx.send(a.clone()).await.unwrap();
        tx.send(b.clone()).await.unwrap();
        assert_eq!(
            next(&mut rx).await,
            sorted(vec![kid(&other), kid(&a), kid(&b)]),
            "the new key joins, the old one retires"
        );
        assert_eq!(
            next(&mut rx).await,
            sorted(vec![kid(&other), kid(&b)]),
            "the old key leaves after its window"
        );
    }
}
