//! A workload's standing with Vault: a JSS token, one Vault login per role
//! (renewed, or replaced by a fresh login), and reads with them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::paths::{self, PathError};
use super::spec::{Item, Source};
use super::vault::{Login, SecretStore, VaultError};
use crate::client::{self, ClientError};
use crate::workload::secret::{Secret, SecretData};
use crate::workload::unix_now;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("JSS gave no token: {0}")]
    Jss(#[source] ClientError),
    #[error("the token from JSS cannot be decoded: {0}")]
    Token(#[source] crate::token::TokenError),
    #[error("the token from JSS has no cluster-name claim: pass --auth-mount")]
    NoCluster,
    #[error("login at auth/{mount} with role {role:?} failed: {source}")]
    Login {
        mount: String,
        role: String,
        #[source]
        source: VaultError,
    },
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Read(VaultError),
    /// Another item of the same role already failed to log in this pass.
    #[error("login with role {role:?} failed: {reason}")]
    SameLogin {
        role: String,
        reason: String,
        transport: bool,
    },
    #[error("the read task failed: {0}")]
    Task(String),
}

impl FetchError {
    /// JSS or Vault unreachable or unwell: keep files, retry with backoff.
    pub fn is_transport(&self) -> bool {
        match self {
            Self::Jss(e) => match e {
                ClientError::Refused { status, .. } => *status >= 500,
                _ => true,
            },
            Self::Login { source, .. } | Self::Read(source) => source.is_transport(),
            Self::SameLogin { transport, .. } => *transport,
            _ => false,
        }
    }

    /// Vault now refuses the secret (403) or no longer has it (404): TSI
    /// removes the file.
    pub fn is_revocation(&self) -> bool {
        matches!(
            self,
            Self::Read(VaultError::Denied { .. } | VaultError::NotFound { .. })
        )
    }
}

/// How the session reaches JSS and which mount it logs in at.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub socket: PathBuf,
    pub audience: Option<String>,
    /// `auth/<mount>`; `None`: `jss-<cluster-name claim>`.
    pub auth_mount: Option<String>,
    pub jss_timeout: Duration,
}

struct Held {
    login: Login,
    /// Half the lease: renew (or log in again) from then on.
    renew_at: Instant,
    /// The lease's end: past it the token is dead, not worth renewing or revoking.
    expires: Instant,
    first_lease: Duration,
}

impl Held {
    fn new(login: Login) -> Self {
        // Lease 0: a token without expiry (not what a JWT role gives, but valid).
        let lease = if login.lease.is_zero() {
            Duration::from_secs(365 * 24 * 3600)
        } else {
            login.lease
        };
        let now = Instant::now();
        Self {
            renew_at: now + lease / 2,
            expires: now + lease,
            first_lease: lease,
            login,
        }
    }

    fn alive(&self) -> bool {
        Instant::now() < self.expires
    }
}

/// Logins per role, kept across passes.
pub struct Session<S> {
    store: Arc<S>,
    cfg: SessionConfig,
    jwt: Option<(Secret, u64, String)>,
    logins: HashMap<String, Held>,
}

impl<S: SecretStore> Session<S> {
    pub fn new(store: S, cfg: SessionConfig) -> Self {
        Self {
            store: Arc::new(store),
            cfg,
            jwt: None,
            logins: HashMap::new(),
        }
    }

    /// A JSS token with at least 10 s left and the mount to log in at.
    async fn jwt(&mut self) -> Result<(Secret, String), FetchError> {
        if let Some((t, exp, mount)) = &self.jwt
            && *exp > unix_now() + 10
        {
            return Ok((t.clone(), mount.clone()));
        }
        let r = client::fetch_token(
            &self.cfg.socket,
            self.cfg.audience.as_deref(),
            self.cfg.jss_timeout,
        )
        .await
        .map_err(FetchError::Jss)?;
        let mount = match &self.cfg.auth_mount {
            Some(m) => m.trim_start_matches("auth/").trim_matches('/').to_string(),
            None => {
                let (_, claims) =
                    crate::token::decode_unverified(&r.token).map_err(FetchError::Token)?;
                let cluster = claims["cluster-name"]
                    .as_str()
                    .ok_or(FetchError::NoCluster)?;
                format!("jss-{cluster}")
            }
        };
        let t = Secret::new(r.token);
        self.jwt = Some((t.clone(), r.expires_at, mount.clone()));
        Ok((t, mount))
    }

    /// A fresh login for `role`, replacing (and revoking) any held one.
    async fn login(&mut self, role: &str) -> Result<&Login, FetchError> {
        let (jwt, mount) = self.jwt().await?;
        let login = self
            .store
            .login(&mount, role, &jwt)
            .await
            .map_err(|source| FetchError::Login {
                mount: mount.clone(),
                role: role.into(),
                source,
            })?;
        tracing::info!(role, mount, accessor = %login.accessor, lease_s = login.lease.as_secs(), "logged in to Vault");
        if let Some(old) = self.logins.insert(role.to_string(), Held::new(login))
            && old.alive()
        {
            self.revoke(role, &old.login).await;
        }
        Ok(&self.logins[role].login)
    }

    /// The login for `role`: the held one while it has half its lease left,
    /// else renewed, else a new login. `bool`: it is a fresh login.
    async fn ensure_login(&mut self, role: &str) -> Result<(Login, bool), FetchError> {
        if let Some(h) = self.logins.get_mut(role) {
            if Instant::now() < h.renew_at {
                return Ok((h.login.clone(), false));
            }
            if h.login.renewable && h.alive() {
                match self.store.renew_self(&h.login.token).await {
                    // Capped by the role's max TTL: a short lease means log in again.
                    Ok(lease) if lease >= h.first_lease / 2 && !lease.is_zero() => {
                        h.renew_at = Instant::now() + lease / 2;
                        h.expires = Instant::now() + lease;
                        h.login.lease = lease;
                        return Ok((h.login.clone(), false));
                    }
                    Err(e) if e.is_transport() => {
                        return Err(FetchError::Login {
                            mount: "token".into(),
                            role: role.into(),
                            source: e,
                        });
                    }
                    _ => {}
                }
            }
        }
        Ok((self.login(role).await?.clone(), true))
    }

    /// Reads `item`'s secret; returns its path and data.
    pub async fn fetch(&mut self, item: &Item) -> Result<(String, SecretData), FetchError> {
        let role = item.role().to_string();
        let (login, fresh) = self.ensure_login(&role).await?;
        let path = item_path(item, &login)?;
        match self.store.read(&login.token, &path).await {
            // A held token may have been revoked or expired early: a
            // refusal counts only for a fresh login.
            Err(VaultError::Denied { .. }) if !fresh => {
                let login = self.login(&role).await?.clone();
                let path = item_path(item, &login)?;
                let data = self.store.read(&login.token, &path).await;
                data.map(|d| (path, d)).map_err(FetchError::Read)
            }
            r => r.map(|d| (path, d)).map_err(FetchError::Read),
        }
    }

    /// Reads every item's secret, in item order: one login per role first,
    /// then the reads concurrently. A refusal with a held (not fresh) login
    /// is retried once with a new login, as in [`Self::fetch`].
    pub async fn fetch_all(
        &mut self,
        items: &[Item],
    ) -> Vec<Result<(String, SecretData), FetchError>>
    where
        S: 'static,
    {
        let mut results: Vec<Option<Result<(String, SecretData), FetchError>>> =
            items.iter().map(|_| None).collect();
        let mut logins: HashMap<String, (Login, bool)> = HashMap::new();
        let mut failed: HashMap<String, (String, bool)> = HashMap::new();
        let mut reads = tokio::task::JoinSet::new();
        let mut retry = Vec::new();
        let mut primed = false;
        for (i, item) in items.iter().enumerate() {
            let role = item.role();
            if !logins.contains_key(role) && !failed.contains_key(role) {
                match self.ensure_login(role).await {
                    Ok(l) => {
                        logins.insert(role.to_string(), l);
                    }
                    Err(e) => {
                        failed.insert(role.to_string(), (e.to_string(), e.is_transport()));
                        results[i] = Some(Err(e));
                        continue;
                    }
                }
            }
            let Some((login, _)) = logins.get(role) else {
                let (reason, transport) = failed.get(role).cloned().unwrap_or_default();
                results[i] = Some(Err(FetchError::SameLogin {
                    role: role.to_string(),
                    reason,
                    transport,
                }));
                continue;
            };
            match item_path(item, login) {
                Err(e) => results[i] = Some(Err(e.into())),
                // The first read alone: it learns the KV mount the others reuse.
                Ok(path) if !primed => {
                    primed = true;
                    match self.store.read(&login.token, &path).await {
                        Err(VaultError::Denied { .. }) if !login_fresh(&logins, role) => {
                            retry.push(i)
                        }
                        r => results[i] = Some(r.map(|d| (path, d)).map_err(FetchError::Read)),
                    }
                }
                Ok(path) => {
                    let store = Arc::clone(&self.store);
                    let token = login.token.clone();
                    reads.spawn(async move {
                        let r = store.read(&token, &path).await;
                        (i, path, r)
                    });
                }
            }
        }
        while let Some(joined) = reads.join_next().await {
            match joined {
                Ok((i, _, Err(VaultError::Denied { .. })))
                    if !login_fresh(&logins, items[i].role()) =>
                {
                    retry.push(i);
                }
                Ok((i, path, r)) => {
                    results[i] = Some(r.map(|d| (path, d)).map_err(FetchError::Read))
                }
                Err(e) => tracing::error!(error = %e, "a secret read task failed"),
            }
        }
        // A held token may have been revoked or expired early.
        retry.sort_unstable();
        for i in retry {
            results[i] = Some(self.fetch(&items[i]).await);
        }
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            out.push(match r {
                Some(r) => r,
                None => Err(FetchError::Task("it panicked".into())),
            });
        }
        out
    }

    /// Reads a secret at a literal path with `role` (for `exec`).
    pub async fn read_path(&mut self, role: &str, path: &str) -> Result<SecretData, FetchError> {
        let (login, _) = self.ensure_login(role).await?;
        self.store
            .read(&login.token, path)
            .await
            .map_err(FetchError::Read)
    }

    async fn revoke(&self, role: &str, login: &Login) {
        match self.store.revoke_self(&login.token).await {
            Ok(()) => tracing::info!(role, accessor = %login.accessor, "revoked the Vault token"),
            Err(e) => {
                tracing::warn!(role, accessor = %login.accessor, error = %e, "could not revoke the Vault token; it expires with its lease")
            }
        }
    }

    /// Revokes every held Vault token (on exit).
    pub async fn revoke_all(&mut self) {
        let held: Vec<(String, Held)> = self.logins.drain().collect();
        for (role, h) in held.iter().filter(|(_, h)| h.alive()) {
            self.revoke(role, &h.login).await;
        }
    }
}

/// Whether `role`'s login in this pass is a fresh one.
fn login_fresh(logins: &HashMap<String, (Login, bool)>, role: &str) -> bool {
    logins.get(role).is_some_and(|(_, fresh)| *fresh)
}

fn item_path(item: &Item, login: &Login) -> Result<String, PathError> {
    match &item.source {
        Source::Path { vault_path, .. } => {
            paths::secret_path(vault_path, &login.metadata, &item.name)
        }
        Source::Constraints(c) => c.secret_path(&login.metadata, &item.name),
    }
}
