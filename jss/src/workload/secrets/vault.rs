//! The narrow Vault/OpenBao client the workload commands need: JWT login,
//! KV reads (v2, or v1 where the mount is v1), token renew and revoke-self.
//!
//! Settings follow the Vault CLI: `VAULT_ADDR`, `VAULT_CACERT`,
//! `VAULT_NAMESPACE`, or their `BAO_` spellings. Calls go through `vaultrs`
//! except the KV mount lookup (`sys/internal/ui/mounts/<path>`, what the KV
//! CLI asks), which it does not cover.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use crate::workload::secret::{Secret, SecretData};

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("Vault unreachable at {addr} ({what}): {detail}")]
    Unreachable {
        addr: String,
        what: String,
        detail: String,
    },
    #[error("Vault refused {what} at {path} (403): the policy does not grant it")]
    Denied { what: String, path: String },
    #[error("no such secret at {path} (404)")]
    NotFound { path: String },
    #[error("Vault refused {what} at {path} (HTTP {code}): {errors}")]
    Api {
        what: String,
        path: String,
        code: u16,
        errors: String,
    },
    #[error("unexpected answer from Vault ({what}): {detail}")]
    Answer { what: String, detail: String },
    #[error(
        "no Vault address: set VAULT_ADDR (or BAO_ADDR) to the server's URL, e.g. https://vault.example:8200"
    )]
    NoAddress,
    #[error("cannot set up the Vault client for {addr}: {detail}")]
    Setup { addr: String, detail: String },
}

impl VaultError {
    /// Vault could not be asked or answered that it is unwell (5xx, 429):
    /// what a later attempt may cure. Files are never touched for these.
    pub fn is_transport(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Api { code, .. } => matches!(code, 429 | 500 | 502 | 503 | 504),
            _ => false,
        }
    }
}

/// Where Vault is, from the environment (`VAULT_*`, else `BAO_*`).
#[derive(Debug, Clone)]
pub struct VaultSettings {
    pub addr: String,
    pub cacert: Option<PathBuf>,
    pub namespace: Option<String>,
    /// Per HTTP request.
    pub timeout: Duration,
}

impl VaultSettings {
    /// Reads `VAULT_ADDR`/`BAO_ADDR`, `VAULT_CACERT`/`BAO_CACERT` and
    /// `VAULT_NAMESPACE`/`BAO_NAMESPACE`; an empty variable counts as unset.
    pub fn from_env(timeout: Duration) -> Result<Self, VaultError> {
        let var = |name: &str| {
            [format!("VAULT_{name}"), format!("BAO_{name}")]
                .iter()
                .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        };
        Ok(Self {
            addr: var("ADDR").ok_or(VaultError::NoAddress)?,
            cacert: var("CACERT").map(PathBuf::from),
            namespace: var("NAMESPACE"),
            timeout,
        })
    }
}

/// A successful login: the Vault token and the entity alias's metadata
/// (Vault's own view of the token's claims, keyed by claim name).
#[derive(Debug, Clone)]
pub struct Login {
    pub token: Secret,
    /// Not secret: names the token in Vault's audit log and in ours.
    pub accessor: String,
    pub metadata: HashMap<String, String>,
    pub lease: Duration,
    pub renewable: bool,
}

/// What the workload commands ask of Vault. Implemented by [`VaultrsStore`];
/// the seam keeps the sidecar's logic independent of the HTTP client.
pub trait SecretStore: Send + Sync {
    /// `auth/<mount>/login` with `role` and `jwt`.
    fn login(
        &self,
        mount: &str,
        role: &str,
        jwt: &Secret,
    ) -> impl Future<Output = Result<Login, VaultError>> + Send;
    /// A KV secret at `path` as the KV CLI takes it (`secret/app/db`).
    fn read(
        &self,
        token: &Secret,
        path: &str,
    ) -> impl Future<Output = Result<SecretData, VaultError>> + Send;
    /// `auth/token/renew-self`: the new lease.
    fn renew_self(
        &self,
        token: &Secret,
    ) -> impl Future<Output = Result<Duration, VaultError>> + Send;
    /// `auth/token/revoke-self`.
    fn revoke_self(&self, token: &Secret) -> impl Future<Output = Result<(), VaultError>> + Send;
}

/// [`SecretStore`] over `vaultrs`.
pub struct VaultrsStore {
    client: VaultClient,
    addr: String,
    namespace: Option<String>,
    /// KV mount path (with trailing `/`) → KV version, as looked up.
    mounts: Mutex<HashMap<String, u8>>,
}

impl std::fmt::Debug for VaultrsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultrsStore")
            .field("addr", &self.addr)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl VaultrsStore {
    pub fn new(s: &VaultSettings) -> Result<Self, VaultError> {
        let setup = |detail: String| VaultError::Setup {
            addr: s.addr.clone(),
            detail,
        };
        let mut b = VaultClientSettingsBuilder::default();
        b.address(&s.addr)
            .token("")
            .timeout(Some(s.timeout))
            .verify(true)
            .ca_certs(s.cacert.iter().map(|p| p.display().to_string()).collect())
            .namespace(s.namespace.clone());
        let settings = b.build().map_err(|e| setup(e.to_string()))?;
        let client = VaultClient::new(settings).map_err(|e| setup(e.to_string()))?;
        Ok(Self {
            client,
            addr: s.addr.trim_end_matches('/').to_string(),
            namespace: s.namespace.clone(),
            mounts: Mutex::new(HashMap::new()),
        })
    }

    fn with_token(&self, token: &Secret) -> VaultClient {
        // VaultClient is not Clone; its parts are, and share one connection pool.
        let mut c = VaultClient {
            http: rustify::clients::reqwest::Client::new(
                &self.client.http.base,
                self.client.http.http.clone(),
            ),
            middle: self.client.middle.clone(),
            settings: self.client.settings.clone(),
        };
        c.set_token(token.expose());
        c
    }

    fn classify(&self, e: ClientError, what: &str, path: &str) -> VaultError {
        use rustify::errors as re;
        let (code, errors) = match e {
            ClientError::APIError { code, errors } => (code, errors.join("; ")),
            ClientError::RestClientError {
                source: re::ClientError::ServerResponseError { code, content },
            } => (code, content.unwrap_or_default()),
            ClientError::RestClientError {
                source: re::ClientError::RequestError { source, .. },
            } => {
                return VaultError::Unreachable {
                    addr: self.addr.clone(),
                    what: what.into(),
                    detail: format!("{source:#}"),
                };
            }
            other => {
                return VaultError::Answer {
                    what: what.into(),
                    detail: chain_text(&other),
                };
            }
        };
        status_error(code, errors, what, path)
    }

    /// The KV mount holding `path` and its version: from the cache, else
    /// `sys/internal/ui/mounts/<path>`; where that is not answered (older
    /// servers, restricted tokens) the first segment, as KV v2.
    async fn kv_mount(&self, token: &Secret, path: &str) -> Result<(String, u8), VaultError> {
        if let Ok(m) = self.mounts.lock()
            && let Some((mount, v)) = m.iter().find(|(mount, _)| path.starts_with(mount.as_str()))
        {
            return Ok((mount.clone(), *v));
        }
        let what = "look up the KV mount";
        let mut req = self
            .client
            .http
            .http
            .get(format!("{}/v1/sys/internal/ui/mounts/{path}", self.addr))
            .header("X-Vault-Token", token.expose())
            .header("X-Vault-Request", "true");
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        let resp = req.send().await.map_err(|e| VaultError::Unreachable {
            addr: self.addr.clone(),
            what: what.into(),
            detail: chain_text(&e),
        })?;
        let code = resp.status().as_u16();
        if code == 429 || code >= 500 {
            return Err(status_error(code, String::new(), what, path));
        }
        let body: Value = resp
            .text()
            .await
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let found = body.pointer("/data/path").and_then(Value::as_str);
        let (mount, version) = match found {
            Some(m) if code == 200 && !m.is_empty() => {
                let v = body
                    .pointer("/data/options/version")
                    .and_then(Value::as_str)
                    .unwrap_or("1");
                (m.to_string(), if v == "2" { 2 } else { 1 })
            }
            _ => match path.split_once('/') {
                Some((first, _)) => (format!("{first}/"), 2),
                None => {
                    return Err(VaultError::Answer {
                        what: what.into(),
                        detail: format!("{path:?} names no KV mount: use <mount>/<path>"),
                    });
                }
            },
        };
        if let Ok(mut m) = self.mounts.lock() {
            m.insert(mount.clone(), version);
        }
        Ok((mount, version))
    }
}

impl SecretStore for VaultrsStore {
    async fn login(&self, mount: &str, role: &str, jwt: &Secret) -> Result<Login, VaultError> {
        let path = format!("auth/{mount}/login");
        let a = vaultrs::auth::oidc::login(&self.client, mount, jwt.expose(), Some(role.into()))
            .await
            .map_err(|e| self.classify(e, &format!("login with role {role:?}"), &path))?;
        Ok(Login {
            token: Secret::new(a.client_token),
            accessor: a.accessor,
            metadata: a.metadata.unwrap_or_default(),
            lease: Duration::from_secs(a.lease_duration),
            renewable: a.renewable,
        })
    }

    async fn read(&self, token: &Secret, path: &str) -> Result<SecretData, VaultError> {
        let (mount, version) = self.kv_mount(token, path).await?;
        let rest = path.strip_prefix(mount.as_str()).unwrap_or(path);
        let mount = mount.trim_end_matches('/');
        let c = self.with_token(token);
        let data: Result<Value, _> = if version == 2 {
            vaultrs::kv2::read(&c, mount, rest).await
        } else {
            vaultrs::kv1::get(&c, mount, rest).await
        };
        match data.map_err(|e| self.classify(e, "read the secret", path))? {
            Value::Object(m) => Ok(SecretData(m)),
            _ => Err(VaultError::Answer {
                what: format!("read {path}"),
                detail: "the secret's data is not a key/value object".into(),
            }),
        }
    }

    async fn renew_self(&self, token: &Secret) -> Result<Duration, VaultError> {
        let a = vaultrs::token::renew_self(&self.with_token(token), None)
            .await
            .map_err(|e| self.classify(e, "renew the token", "auth/token/renew-self"))?;
        Ok(Duration::from_secs(a.lease_duration))
    }

    async fn revoke_self(&self, token: &Secret) -> Result<(), VaultError> {
        vaultrs::token::revoke_self(&self.with_token(token))
            .await
            .map_err(|e| self.classify(e, "revoke the token", "auth/token/revoke-self"))
    }
}

fn status_error(code: u16, errors: String, what: &str, path: &str) -> VaultError {
    match code {
        403 => VaultError::Denied {
            what: what.into(),
            path: path.into(),
        },
        404 => VaultError::NotFound { path: path.into() },
        _ => VaultError::Api {
            what: what.into(),
            path: path.into(),
            code,
            errors,
        },
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
