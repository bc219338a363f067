//! The connection to Vault/OpenBao: settings from the usual environment,
//! the token (optionally response-wrapped), error classification, retries.
//!
//! `vaultrs` covers most endpoints; the rest go through the same reqwest
//! client (`raw`), so TLS, namespace and token handling are identical.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(
        "cannot reach Vault at {addr} while trying to {what}: {detail}\n  check VAULT_ADDR (or BAO_ADDR), VAULT_CACERT and that the server is up and unsealed"
    )]
    Unreachable {
        addr: String,
        what: String,
        detail: String,
    },
    #[error(
        "Vault denied {what} (403 at {path}): the token is missing a capability, or it expired.\nThis command needs at least this Vault policy:\n\n{policy}"
    )]
    Forbidden {
        what: String,
        path: String,
        policy: String,
    },
    #[error("Vault refused to {what} (HTTP {code}): {errors}")]
    Api {
        what: String,
        code: u16,
        errors: String,
    },
    #[error("unexpected answer from Vault while trying to {what}: {detail}")]
    Answer { what: String, detail: String },
    #[error("no Vault token: set VAULT_TOKEN (or BAO_TOKEN) or pass --token-file")]
    NoToken,
    #[error("cannot read the Vault token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set up the Vault client: {0}")]
    Setup(String),
}

impl VaultError {
    /// Failures a retry may cure: the server is briefly away or overloaded.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Api { code, .. } => matches!(code, 429 | 500 | 502 | 503 | 504),
            _ => false,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Api { code: 404, .. })
    }
}

/// A read whose 404 means "not there (yet)": `Ok(None)`; other errors stay.
pub fn absent_as_none<T>(r: Result<T, VaultError>) -> Result<Option<T>, VaultError> {
    match r {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The strings of a JSON array (Vault's lists of names); others skipped.
pub fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// A secret string whose Debug never shows it.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Self(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<empty>"
        } else {
            "<redacted>"
        })
    }
}

/// Where Vault is and how to authenticate, resolved from flags and environment.
#[derive(Debug, Clone)]
pub struct VaultSettings {
    pub addr: String,
    pub token: Secret,
    /// The token is a response-wrapping token: unwrap it first.
    pub wrapped: bool,
    pub cacert: Option<PathBuf>,
    pub namespace: Option<String>,
    /// Attempts for transient failures (1 = no retry).
    pub attempts: u32,
}

/// A connected client plus the policy to print when Vault says 403.
pub struct Vault {
    client: VaultClient,
    http: reqwest::Client,
    addr: String,
    namespace: Option<String>,
    token: Secret,
    attempts: u32,
    policy: String,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("addr", &self.addr)
            .field("namespace", &self.namespace)
            .field("token", &self.token)
            .finish()
    }
}

impl Vault {
    /// Builds the client; unwraps a wrapped token. `policy` is the minimal
    /// policy the running command needs, shown on 403.
    pub async fn connect(s: &VaultSettings, policy: String) -> Result<Self, VaultError> {
        if s.token.expose().is_empty() {
            return Err(VaultError::NoToken);
        }
        let url = reqwest::Url::parse(&s.addr)
            .map_err(|e| VaultError::Setup(format!("invalid Vault address {:?}: {e}", s.addr)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(VaultError::Setup(format!(
                "Vault address {:?} must start with http:// or https://",
                s.addr
            )));
        }
        let mut b = VaultClientSettingsBuilder::default();
        b.address(&s.addr)
            .token(s.token.expose())
            .timeout(Some(Duration::from_secs(30)))
            .verify(true)
            .ca_certs(s.cacert.iter().map(|p| p.display().to_string()).collect())
            .namespace(s.namespace.clone());
        let settings = b.build().map_err(|e| VaultError::Setup(e.to_string()))?;
        let client = VaultClient::new(settings).map_err(|e| VaultError::Setup(e.to_string()))?;
        let mut v = Self {
            http: client.http.http.clone(),
            client,
            addr: s.addr.trim_end_matches('/').to_string(),
            namespace: s.namespace.clone(),
            token: s.token.clone(),
            attempts: s.attempts.max(1),
            policy,
        };
        if s.wrapped {
            let token = v.unwrap_token().await?;
            v.client.set_token(token.expose());
            v.token = token;
        }
        Ok(v)
    }

    pub fn client(&self) -> &VaultClient {
        &self.client
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Exchanges the wrapping token for the token it wraps (single use).
    async fn unwrap_token(&self) -> Result<Secret, VaultError> {
        let what = "unwrap the response-wrapped token";
        let body = self
            .raw(what, Method::POST, "sys/wrapping/unwrap", None)
            .await?
            .unwrap_or_default();
        let tok = body
            .pointer("/auth/client_token")
            .or_else(|| body.pointer("/data/token"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty());
        match tok {
            Some(t) => Ok(Secret::new(t.to_string())),
            None => Err(VaultError::Answer {
                what: what.into(),
                detail: "the unwrapped response holds no token (auth.client_token or data.token)"
                    .into(),
            }),
        }
    }

    /// Runs `op` (one Vault call), retrying transient failures with
    /// exponential backoff.
    async fn retry<T, F, Fut>(&self, mut op: F) -> Result<T, VaultError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, VaultError>>,
    {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            match op().await {
                Err(e) if e.is_transient() && attempt < self.attempts => {
                    tracing::warn!(error = %e, attempt, "transient Vault failure; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// One vaultrs call, `what` on `path` (for messages: "read a policy",
    /// `sys/policy/NAME`): transient failures retried as [`Self::retry`] does,
    /// errors mapped by [`Self::classify`].
    pub async fn call<T, F, Fut>(&self, what: &str, path: &str, mut op: F) -> Result<T, VaultError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        self.retry(|| {
            let call = op();
            async move { call.await.map_err(|e| self.classify(e, what, path)) }
        })
        .await
    }

    /// Maps a vaultrs error for the call `what` on `path`.
    fn classify(&self, e: ClientError, what: &str, path: &str) -> VaultError {
        use rustify::errors as re;
        let (code, errors) = match e {
            ClientError::APIError { code, errors } => (code, errors.join("; ")),
            ClientError::RestClientError { source } => match source {
                re::ClientError::ServerResponseError { code, content } => {
                    (code, content.unwrap_or_default())
                }
                re::ClientError::RequestError { source, .. } => {
                    return self.unreachable(what, &source.to_string());
                }
                other => {
                    return VaultError::Answer {
                        what: what.into(),
                        detail: chain_text(&other),
                    };
                }
            },
            other => {
                return VaultError::Answer {
                    what: what.into(),
                    detail: chain_text(&other),
                };
            }
        };
        self.status_error(code, errors, what, path)
    }

    fn status_error(&self, code: u16, errors: String, what: &str, path: &str) -> VaultError {
        if code == 403 {
            VaultError::Forbidden {
                what: what.into(),
                path: path.into(),
                policy: self.policy.clone(),
            }
        } else {
            VaultError::Api {
                what: what.into(),
                code,
                errors,
            }
        }
    }

    fn unreachable(&self, what: &str, detail: &str) -> VaultError {
        VaultError::Unreachable {
            addr: self.addr.clone(),
            what: what.into(),
            detail: detail.into(),
        }
    }

    /// One HTTP call to `/v1/<path>` with the client's token and namespace,
    /// retried on transient failures. `Ok(None)` for an empty (204) answer.
    pub async fn raw(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, VaultError> {
        self.retry(|| self.raw_once(what, method.clone(), path, body))
            .await
    }

    async fn raw_once(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, VaultError> {
        let url = format!("{}/v1/{}", self.addr, path.trim_start_matches('/'));
        let mut req = self
            .http
            .request(method, &url)
            .header("X-Vault-Token", self.token.expose())
            .header("X-Vault-Request", "true");
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.unreachable(what, &chain_text(&e)))?;
        let code = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| self.unreachable(what, &chain_text(&e)))?;
        if !(200..300).contains(&code) {
            let errors = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("errors").cloned())
                .and_then(|e| serde_json::from_value::<Vec<String>>(e).ok())
                .map(|e| e.join("; "))
                .unwrap_or(text);
            return Err(self.status_error(code, errors, what, path));
        }
        if text.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| VaultError::Answer {
                what: what.into(),
                detail: format!("not JSON: {e}"),
            })
    }
}

/// An error and its sources, one line.
fn chain_text(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
