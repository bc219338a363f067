//! HTTPS client for the kubelet's `/pods`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::cache::FetchPods;
use super::{BoxFuture, KubeletConfig, KubeletError, PodList};

/// Fetches the pod list; one request per call, no caching (see `SharedPodList`).
pub struct KubeletClient {
    http: reqwest::Client,
    pods_url: String,
    token: Option<TokenFile>,
    max_bytes: u64,
    request_timeout: Duration,
}

impl fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeletClient")
            .field("pods_url", &self.pods_url)
            .field("token", &self.token)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

/// The bearer token, re-read when older than `refresh` (projected tokens rotate).
struct TokenFile {
    path: PathBuf,
    refresh: Duration,
    /// A missing file is not an error when a client certificate authenticates us.
    optional: bool,
    cached: Mutex<Option<(Instant, Option<String>)>>,
}

impl fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenFile")
            .field("path", &self.path)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl TokenFile {
    fn get(&self) -> Result<Option<String>, KubeletError> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, tok)) = cached.as_ref()
            && at.elapsed() < self.refresh
        {
            return Ok(tok.clone());
        }
        let tok = match std::fs::read_to_string(&self.path) {
            Ok(s) => Some(s.trim().to_string()).filter(|t| !t.is_empty()),
            Err(e) if self.optional && e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(KubeletError::Token {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        if tok.is_none() && !self.optional {
            return Err(KubeletError::Token {
                path: self.path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "token file is empty"),
            });
        }
        *cached = Some((Instant::now(), tok.clone()));
        Ok(tok)
    }
}

fn read(what: &'static str, path: &PathBuf) -> Result<Vec<u8>, KubeletError> {
    std::fs::read(path).map_err(|source| KubeletError::File {
        what,
        path: path.clone(),
        source,
    })
}

impl KubeletClient {
    pub fn new(cfg: &KubeletConfig) -> Result<Self, KubeletError> {
        cfg.validate()?;
        let request_timeout = KubeletConfig::ms(cfg.request_timeout_ms);
        let mut b = reqwest::Client::builder()
            .connect_timeout(KubeletConfig::ms(cfg.connect_timeout_ms))
            .timeout(request_timeout)
            // The kubelet is on this node: never route it through a proxy from the env.
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(30));
        let token = if cfg.read_only_url.is_some() {
            None
        } else {
            if cfg.insecure_skip_tls_verify {
                tracing::warn!(
                    url = %cfg.url,
                    "insecure_skip_tls_verify is set: the kubelet's certificate is not checked"
                );
                b = b.tls_danger_accept_invalid_certs(true);
            } else {
                let pem = read("the kubelet CA file ([kubelet] ca_path)", &cfg.ca_path)?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                    KubeletError::Setup {
                        what: "ca_path is not a PEM certificate bundle",
                        source,
                    }
                })?;
                b = b.tls_certs_only(certs);
            }
            if let (Some(c), Some(k)) = (&cfg.client_cert_path, &cfg.client_key_path) {
                let mut pem = read("the client certificate ([kubelet] client_cert_path)", c)?;
                pem.push(b'\n');
                pem.extend(read("the client key ([kubelet] client_key_path)", k)?);
                let id =
                    reqwest::Identity::from_pem(&pem).map_err(|source| KubeletError::Setup {
                        what: "client_cert_path/client_key_path are not a PEM certificate and key",
                        source,
                    })?;
                b = b.identity(id);
            }
            Some(TokenFile {
                path: cfg.token_path.clone(),
                refresh: Duration::from_secs(cfg.token_refresh_secs),
                optional: cfg.client_cert_path.is_some(),
                cached: Mutex::new(None),
            })
        };
        let http = b.build().map_err(|source| KubeletError::Setup {
            what: "TLS client",
            source,
        })?;
        Ok(Self {
            http,
            pods_url: cfg.pods_url(),
            token,
            max_bytes: cfg.max_response_bytes,
            request_timeout,
        })
    }

    pub fn pods_url(&self) -> &str {
        &self.pods_url
    }

    /// One `GET /pods`, parsed.
    pub async fn fetch_pods(&self) -> Result<PodList, KubeletError> {
        let body = self.fetch_body().await?;
        PodList::parse(&body).map_err(|source| KubeletError::Malformed {
            url: self.pods_url.clone(),
            source,
        })
    }

    async fn fetch_body(&self) -> Result<Vec<u8>, KubeletError> {
        let url = &self.pods_url;
        let net = |e: reqwest::Error| {
            if e.is_timeout() {
                KubeletError::Timeout {
                    url: url.clone(),
                    after: self.request_timeout,
                }
            } else {
                KubeletError::Unreachable {
                    url: url.clone(),
                    source: e,
                }
            }
        };
        let mut req = self.http.get(url).header("Accept", "application/json");
        if let Some(t) = &self.token
            && let Some(tok) = t.get()?
        {
            req = req.bearer_auth(tok);
        }
        let mut resp = req.send().await.map_err(net)?;
        match resp.status().as_u16() {
            200 => {}
            401 => return Err(KubeletError::Unauthorized { url: url.clone() }),
            403 => return Err(KubeletError::Forbidden { url: url.clone() }),
            status => {
                return Err(KubeletError::Status {
                    url: url.clone(),
                    status,
                });
            }
        }
        let too_large = || KubeletError::TooLarge {
            url: url.clone(),
            limit: self.max_bytes,
        };
        if resp.content_length().is_some_and(|n| n > self.max_bytes) {
            return Err(too_large());
        }
        // Read in chunks so a runaway body stops at the cap.
        let hint = resp
            .content_length()
            .unwrap_or(64 << 10)
            .min(self.max_bytes);
        let mut body = Vec::with_capacity(usize::try_from(hint).unwrap_or(64 << 10));
        while let Some(chunk) = resp.chunk().await.map_err(net)? {
            if (body.len() + chunk.len()) as u64 > self.max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

impl FetchPods for KubeletClient {
    fn fetch(&self) -> BoxFuture<'_, Result<PodList, KubeletError>> {
        Box::pin(self.fetch_pods())
    }
}
