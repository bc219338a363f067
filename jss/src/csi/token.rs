//! mode=token: a pod-level token in a tmpfs at the target, kept fresh
//! (README.md, "Token mode").
//!
//! The plugin holds no key: it asks the daemon's root-only pod-token socket
//! for the pod the kubelet named in NodePublishVolume, and the daemon checks
//! that pod against its own kubelet pod list. Each published volume has a
//! refresher task that fetches a new token at 32–40 % of the current one's
//! life (before half-life: the daemon hands out a cached token only while
//! half its life remains), with backoff while the daemon does not answer.
//! A republish (the CSIDriver's `requiresRepublish`) fetches when the file's
//! token is due and restarts a refresher that is not running, so refreshing
//! resumes after a plugin restart. Unpublish stops the refresher first.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::client::{self, ClientError};
use crate::csi::mount::{self, MountError};
use crate::csi::token_mount::{self, Mounted};
use crate::csi::volume::VolumeRequest;
use crate::kubelet::PodRef;
use crate::state::{self, StateError};
use crate::workload::backoff::{Backoff, jitter};
use crate::workload::secret::Secret;
use crate::workload::unix_now;

/// The token file's mode: readable by the pod's user, whatever its uid
/// (the CSIDriver's fsGroupPolicy is None, so nothing else grants it).
const FILE_MODE: u32 = 0o644;

/// Why a token volume could not be published; each maps to a gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "mode=token needs the pod info the kubelet sends (is the CSIDriver's podInfoOnMount true?)"
    )]
    NoPodInfo,
    #[error("{target:?} has another volume mounted on it, not a JSS token tmpfs")]
    OtherVolume { target: PathBuf },
    #[error("cannot mount a tmpfs at {target:?}: {errno}")]
    Tmpfs { target: PathBuf, errno: nix::Error },
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("no pod-level token for {pod}: {source}")]
    Fetch {
        pod: String,
        #[source]
        source: ClientError,
    },
    #[error("cannot write the token file: {0}")]
    Write(#[from] StateError),
}

impl TokenError {
    /// The gRPC code: the daemon's refusals by their HTTP class, its
    /// absence as Unavailable (the kubelet publishes again).
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::NoPodInfo => Code::InvalidArgument,
            Self::OtherVolume { .. } => Code::AlreadyExists,
            Self::Fetch { source, .. } => match source {
                ClientError::Refused {
                    status: 401 | 403, ..
                } => Code::PermissionDenied,
                ClientError::Refused {
                    status: 400..=499, ..
                } => Code::InvalidArgument,
                ClientError::Refused {
                    status: 500..=502 | 504..,
                    ..
                } => Code::Internal,
                _ => Code::Unavailable,
            },
            Self::Tmpfs { .. } | Self::Mount(_) | Self::Write(_) => Code::Internal,
        }
    }
}

/// A token and its times (unix seconds).
struct Current {
    token: Secret,
    iat: u64,
    exp: u64,
    /// When to fetch the next one: 32–40 % into this one's life, at random.
    due: u64,
}

impl Current {
    /// `token` if it decodes with `iat` < `exp`.
    fn of(token: Secret) -> Option<Self> {
        let (_, claims) = crate::token::decode_unverified(token.expose()).ok()?;
        let (iat, exp) = (claims["iat"].as_u64()?, claims["exp"].as_u64()?);
        let life = Duration::from_secs(exp.checked_sub(iat).filter(|l| *l > 0)?);
        let due = iat + jitter(life * 2 / 5, 0.2).as_secs();
        Some(Self {
            token,
            iat,
            exp,
            due,
        })
    }

    fn half_life(&self) -> u64 {
        self.iat + (self.exp - self.iat) / 2
    }
}

/// The instant of unix time `at` (now if it has passed).
fn instant_at(at: u64) -> Instant {
    Instant::now() + Duration::from_secs(at.saturating_sub(unix_now()))
}

/// Where tokens come from: the pod-token socket, for one pod and audience.
#[derive(Debug, Clone)]
struct Source {
    socket: PathBuf,
    pod: PodRef,
    audience: Option<String>,
    timeout: Duration,
}

impl Source {
    async fn fetch(&self) -> Result<Current, TokenError> {
        let fail = |source| TokenError::Fetch {
            pod: self.pod.describe(),
            source,
        };
        let r = client::fetch_pod_token(
            &self.socket,
            &self.pod,
            self.audience.as_deref(),
            self.timeout,
        )
        .await
        .map_err(fail)?;
        Current::of(Secret::new(r.token)).ok_or_else(|| {
            fail(ClientError::Malformed(
                "the token has no iat before its exp".into(),
            ))
        })
    }
}

struct Refresher {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// The token volumes of this plugin and their refreshers, by target path.
pub struct TokenVolumes {
    socket: PathBuf,
    timeout: Duration,
    refreshers: Mutex<HashMap<PathBuf, Refresher>>,
}

impl TokenVolumes {
    /// Tokens from the pod-token `socket`; one request may take `timeout`
    /// (the daemon waits for a pod it does not list yet).
    pub fn new(socket: PathBuf, timeout: Duration) -> Self {
        Self {
            socket,
            timeout,
            refreshers: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes (or republishes) the token volume `vol` at `target`, a
    /// checked, existing directory: the tmpfs, the file `vol.file` with a
    /// token that is not due, and its refresher. A first publish that gets
    /// no token leaves nothing mounted; a republish whose fetch fails keeps
    /// the current token while it is valid and lets the refresher retry.
    pub async fn publish(&self, target: &Path, vol: &VolumeRequest) -> Result<(), TokenError> {
        let pod = vol.pod.as_ref().ok_or(TokenError::NoPodInfo)?;
        let source = Source {
            socket: self.socket.clone(),
            pod: PodRef {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                uid: pod.uid.clone(),
                service_account: pod.service_account.clone(),
            },
            audience: vol.audience.clone(),
            timeout: self.timeout,
        };
        let file = target.join(&vol.file);
        let fresh_mount = match token_mount::mounted(target)? {
            Mounted::TokenTmpfs => false,
            Mounted::Other => {
                return Err(TokenError::OtherVolume {
                    target: target.to_path_buf(),
                });
            }
            Mounted::Nothing => {
                token_mount::mount_tmpfs(target).map_err(|errno| TokenError::Tmpfs {
                    target: target.to_path_buf(),
                    errno,
                })?;
                true
            }
        };
        match self.fill(target, &file, &source).await {
            Ok(current) => {
                self.ensure_refresher(target, file, source, current);
                Ok(())
            }
            Err(e) => {
                // A first publish that failed leaves nothing behind.
                if fresh_mount && let Err(u) = mount::unmount_all(target) {
                    tracing::warn!(error = %u, "cannot unmount the token tmpfs after a failed publish");
                }
                Err(e)
            }
        }
    }

    /// The token in `file` if it is not due yet, else a new one written
    /// there; on a failed fetch, the file's token while it is valid.
    async fn fill(
        &self,
        target: &Path,
        file: &Path,
        source: &Source,
    ) -> Result<Current, TokenError> {
        let on_file = std::fs::read_to_string(file)
            .ok()
            .and_then(|t| Current::of(Secret::new(t)))
            .filter(|c| c.exp > unix_now());
        match on_file {
            Some(c) if unix_now() < c.due => Ok(c),
            on_file => match source.fetch().await {
                Ok(c) => {
                    state::write_atomic(file, c.token.expose().as_bytes(), FILE_MODE)?;
                    // A new token: a running refresher's schedule is stale.
                    self.stop(target);
                    Ok(c)
                }
                Err(e) => match on_file {
                    Some(c) => {
                        tracing::warn!(error = %e, "republish: keeping the current token, which is still valid");
                        Ok(c)
                    }
                    None => Err(e),
                },
            },
        }
    }

    /// Starts a refresher for `target` unless one runs.
    fn ensure_refresher(&self, target: &Path, file: PathBuf, source: Source, current: Current) {
        let mut map = self.refreshers.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(target).is_some_and(|r| !r.task.is_finished()) {
            return;
        }
        let (stop, stopped) = oneshot::channel();
        let span = tracing::info_span!(
            "token_refresh",
            namespace = %source.pod.namespace,
            pod = %source.pod.name,
            file = %file.display()
        );
        let task = tokio::spawn(refresh(file, source, current, stopped).instrument(span));
        map.insert(target.to_path_buf(), Refresher { stop, task });
    }

    /// Stops the refresher of `target`, if any (before it is unmounted).
    pub fn stop(&self, target: &Path) {
        let r = self
            .refreshers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(target);
        if let Some(r) = r {
            let _ = r.stop.send(());
            r.task.abort();
        }
    }
}

/// Keeps `file` fresh until `stop`: a new token at 32–40 % of the current
/// one's life; when the daemon hands back the same token (cached), again
/// halfway to its half-life; on failure, backoff from 1 s to 10 s (each
/// distinct failure logged once).
async fn refresh(
    file: PathBuf,
    source: Source,
    mut current: Current,
    mut stop: oneshot::Receiver<()>,
) {
    let mut next = instant_at(current.due);
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = &mut stop => return,
        }
        let outcome = match source.fetch().await {
            Ok(c) if c.iat > current.iat => {
                state::write_atomic(&file, c.token.expose().as_bytes(), FILE_MODE)
                    .map(|()| c)
                    .map_err(TokenError::from)
            }
            Ok(_) => {
                let to_half = current.half_life().saturating_sub(unix_now());
                next =
                    Instant::now() + Duration::from_secs(to_half / 2).max(Duration::from_secs(1));
                continue;
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(c) => {
                if last_error.take().is_some() {
                    tracing::info!("the pod-token socket answers again: token file refreshed");
                } else {
                    tracing::debug!(expires_at = c.exp, "token file refreshed");
                }
                current = c;
                backoff.reset();
                next = instant_at(current.due);
            }
            Err(e) => {
                let msg = e.to_string();
                if last_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(error = %msg, current_token_valid = current.exp > unix_now(), "cannot refresh the token file; retrying with backoff");
                    last_error = Some(msg);
                }
                next = Instant::now() + backoff.next_delay();
            }
        }
    }
}
