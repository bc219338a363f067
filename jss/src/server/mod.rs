//! `jss serve`: the socket server.
//!
//! At accept the kernel tells us who is calling (SO_PEERCRED) and hands us a
//! pidfd for that process (SO_PEERPIDFD); each token request then runs
//! attest → kubelet → cache → claims → signer (see `issue`): a cached token
//! for the same pod, container and audience is handed out before any claims
//! are built. TPM signatures run on blocking threads behind a bounded queue,
//! never on the async runtime. Every refusal is answered, counted and
//! audited in one place (see `refusal`).

mod audit;
pub mod http;
mod issue;
mod listener;
mod metrics;
pub mod pod_token;
pub mod readiness;
pub mod refresh;
mod refusal;
mod reload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Semaphore, watch};

use crate::attest::{Attestor, Peer};
use crate::cache::TokenCache;
use crate::chain::{Chain, ChainError};
use crate::claims::{ClaimsBuilder, ClaimsError, InjectedContainers, NodeFacts, read_machine_id};
use crate::config::Config;
use crate::kubelet::PodSource;
use crate::signer::{KeyPolicy, SignQueue, Signer, SignerError};
use crate::token::{TokenEncoder, TokenError};

pub use audit::AuditRecord;
pub(crate) use issue::now_unix;
pub use issue::{Form, Issued};
pub use listener::bind_path;
pub use metrics::{Metrics, TOKEN_TTL_METRIC};
pub use refusal::{Code, Refusal};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot load the node key: {0}")]
    Signer(#[from] SignerError),
    #[error("{0}")]
    Chain(#[from] ChainError),
    #[error("cannot read node facts: {0}")]
    Claims(#[from] ClaimsError),
    #[error("cannot build the token header: {0}")]
    Token(#[from] TokenError),
    #[error("socket {path}: {reason}")]
    Socket { path: PathBuf, reason: String },
    #[error("cannot open the audit log {path}: {source}")]
    Audit {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set up signal handling: {0}")]
    Signals(std::io::Error),
    #[error("cannot set up the kubelet client: {0}")]
    Kubelet(#[from] crate::kubelet::KubeletError),
    #[error("opening the node key failed: {0}")]
    SignerTask(#[from] tokio::task::JoinError),
    #[error("cannot start the SPIFFE server's threads: {0}")]
    Threads(std::io::Error),
}

/// The node key, its signing queue and what depends on its chain: swapped
/// as a whole on SIGHUP, so a token's header and signature always come
/// from one key version.
pub struct Keys {
    pub signer: Arc<dyn Signer>,
    pub signing: Arc<SignQueue>,
    pub encoder: Arc<TokenEncoder>,
    /// JWT-SVIDs: the same key, header `alg`/`kid`/`typ` only (no `x5c`).
    pub svid_encoder: Arc<TokenEncoder>,
    pub chain_pem: String,
    pub jwks: String,
}

/// Everything a request needs, built once from the config.
pub struct App {
    pub cfg: Config,
    pub attestor: Attestor,
    pub claims: ClaimsBuilder,
    pub cache: TokenCache,
    pub metrics: Metrics,
    audit: audit::Audit,
    /// The keys in use; subscribers ([`App::key_changes`]) see each install.
    keys: watch::Sender<Arc<Keys>>,
    signer_health: readiness::SignerHealth,
    /// One SIGHUP reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

impl App {
    /// Loads the key, chain and node facts; fails before serving anything.
    pub fn new(
        cfg: Config,
        signer: Arc<dyn Signer>,
        pods: Arc<dyn PodSource>,
    ) -> Result<Self, ServerError> {
        let signing = Arc::new(SignQueue::new(
            Arc::clone(&signer),
            cfg.limits.signer_queue,
            cfg.cache.refresh_max,
        ));
        let stats = signing.stats();
        let dir = crate::state::layout::current(&cfg.state_dir)
            .map_err(SignerError::from)?
            .dir;
        let keys = load_keys(&dir, signer, signing)?;
        let facts = NodeFacts {
            issuer: cfg.issuer.clone(),
            cluster_name: cfg.cluster_name.clone(),
            cluster_region: cfg.cluster_region.clone(),
            node_name: cfg.node_name.clone(),
            machine_id: read_machine_id(&cfg.machine_id_path)?,
        };
        let audit =
            audit::Audit::open(cfg.audit_log.as_deref()).map_err(|source| ServerError::Audit {
                path: cfg.audit_log.clone().unwrap_or_default(),
                source,
            })?;
        Ok(Self {
            attestor: Attestor::new(cfg.proc_root.clone(), Arc::clone(&pods)),
            claims: ClaimsBuilder::new(facts, cfg.sub_template.clone(), cfg.token_ttl_seconds)
                .leaving_out(InjectedContainers::new(cfg.injector_image.clone())),
            cache: TokenCache::new(if cfg.cache.enabled {
                cfg.cache.max_entries
            } else {
                0
            }),
            metrics: Metrics::new(
                pods,
                crate::attest::guard_supported(),
                stats,
                cfg.token_ttl_seconds,
            ),
            audit,
            keys: watch::Sender::new(Arc::new(keys)),
            signer_health: readiness::SignerHealth::default(),
            reloading: tokio::sync::Mutex::new(()),
            cfg,
        })
    }

    pub fn keys(&self) -> Arc<Keys> {
        Arc::clone(&self.keys.borrow())
    }

    /// Sees every [`Keys`] put in use from now on: a key switch, or the
    /// same key with its chain read again.
    pub fn key_changes(&self) -> watch::Receiver<Arc<Keys>> {
        self.keys.subscribe()
    }

    /// The node key in use now.
    pub fn signer(&self) -> Arc<dyn Signer> {
        Arc::clone(&self.keys().signer)
    }

    /// Re-reads the current version's chain.pem for the key in use. On
    /// error the old chain stays in use.
    pub fn reload_chain(&self) -> Result<(), ServerError> {
        let old = self.keys();
        let dir = crate::state::layout::current(&self.cfg.state_dir)
            .map_err(SignerError::from)?
            .dir;
        let keys = load_keys(&dir, Arc::clone(&old.signer), Arc::clone(&old.signing))?;
        self.install(keys);
        Ok(())
    }

    /// Puts `keys` in use for every request that starts from now on;
    /// cached tokens of the previous keys are dropped.
    fn install(&self, keys: Keys) {
        self.keys.send_replace(Arc::new(keys));
        self.cache.clear();
    }
}

/// The keys of `signer` with the chain in the version directory `dir`.
fn load_keys(
    dir: &std::path::Path,
    signer: Arc<dyn Signer>,
    signing: Arc<SignQueue>,
) -> Result<Keys, ServerError> {
    let chain = Chain::load(dir, signer.public_key())?;
    let left = chain.remaining_fraction(SystemTime::now());
    if left < 0.2 {
        tracing::warn!(
            subject = chain.subject(),
            remaining = format!("{:.0}%", left * 100.0),
            "the node certificate has less than 20% of its lifetime left: run `jss-bootstrap node renew`"
        );
    }
    let jwks = serde_json::json!({"keys": [signer.public_key().jwk()]}).to_string();
    Ok(Keys {
        encoder: Arc::new(TokenEncoder::new(signer.kid(), Some(chain.x5c()))?),
        svid_encoder: Arc::new(TokenEncoder::new(signer.kid(), None)?),
        chain_pem: chain.pem().to_string(),
        jwks,
        signer,
        signing,
    })
}

/// Opens the key (it must exist), the chain and the kubelet client, in that
/// order so a node that is not bootstrapped says so first; then serves until SIGTERM.
pub async fn run(cfg: Config) -> Result<(), ServerError> {
    let signer_cfg = cfg.signer.clone();
    let (signer, _) =
        tokio::task::spawn_blocking(move || crate::signer::open(&signer_cfg, KeyPolicy::MustExist))
            .await??;
    let dir = crate::state::layout::current(&cfg.state_dir)
        .map_err(SignerError::from)?
        .dir;
    Chain::load(&dir, signer.public_key())?;
    let pods = crate::kubelet::KubeletPods::from_config(&cfg.kubelet)?;
    let app = Arc::new(App::new(cfg, signer, Arc::new(pods))?);
    serve(app).await
}

/// Serves `app` on its socket until SIGTERM/SIGINT, then drains.
pub async fn serve(app: Arc<App>) -> Result<(), ServerError> {
    // Each connection holds descriptors: lift the soft limit (often 1024) to
    // the hard one so `limits.max_connections` is reachable.
    match rlimit::increase_nofile_limit(u64::MAX) {
        // Two per connection: the socket and the caller's pidfd.
        Ok(n) if n < 2 * app.cfg.limits.max_connections as u64 + 64 => tracing::warn!(
            nofile = n,
            max_connections = app.cfg.limits.max_connections,
            "the open-file limit is below 2 × limits.max_connections (a socket and a pidfd each); raise LimitNOFILE"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let (listener, activated) = listener::bind(&app.cfg)?;
    let spiffe = crate::spiffe::start(&app)?;
    let pod_tokens = pod_token::start(&app)?;
    let mut term = signal(SignalKind::terminate()).map_err(ServerError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServerError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(ServerError::Signals)?;
    let conns = Arc::new(Semaphore::new(app.cfg.limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tracing::info!(
        socket = %app.cfg.socket.display(),
        systemd_socket = activated,
        backend = %app.signer().backend(),
        kid = app.signer().kid(),
        "jss serving"
    );
    if crate::attest::guard_supported() != "pidfd" {
        tracing::warn!(
            "this kernel has no SO_PEERPIDFD (Linux < 6.5): the PID-reuse guard falls back to comparing process start times, which leaves a short race at accept"
        );
    }
    let refresher = (app.cache.enabled() && app.cfg.cache.refresh_ahead)
        .then(|| tokio::spawn(refresh::run(Arc::clone(&app))));
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&conns).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                // Off the accept loop: opening a TPM key may take a while.
                tokio::spawn(Arc::clone(&app).reload());
                continue;
            }
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
            // Also while waiting for a connection: a quiet daemon must
            // still switch keys when told.
            _ = hup.recv() => {
                tokio::spawn(Arc::clone(&app).reload());
                continue;
            }
        };
        let peer = Peer::of_socket(&app.cfg.proc_root, &stream);
        let conn = graceful.watch(connection(Arc::clone(&app), peer, stream));
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    if let Some(r) = refresher {
        r.abort();
    }
    drop(listener);
    if !app.cfg.socket.as_os_str().is_empty() && !activated {
        let _ = std::fs::remove_file(&app.cfg.socket);
    }
    tracing::info!("draining in-flight requests");
    let drain = Duration::from_millis(app.cfg.limits.drain_timeout_ms);
    if let Some(s) = spiffe {
        s.shutdown(drain).await;
    }
    if let Some(p) = pod_tokens {
        p.shutdown(drain).await;
    }
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing remaining connections");
    }
    Ok(())
}

/// The daemon's HTTP/1.1 settings for one connection: headers within
/// `limits.header_timeout_ms`, at most 16 KiB buffered.
pub fn http1(limits: &crate::config::Limits) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_timeout_ms))
        .max_buf_size(16 * 1024);
    b
}

/// Serves one accepted connection from `peer` until it closes (or is shut
/// down gracefully), every request through [`http::handle`].
pub fn connection<I>(
    app: Arc<App>,
    peer: Peer,
    io: I,
) -> impl hyper_util::server::graceful::GracefulConnection<Error = hyper::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = Arc::new(peer);
    let builder = http1(&app.cfg.limits);
    let svc = hyper::service::service_fn(move |req| {
        http::handle(Arc::clone(&app), Arc::clone(&peer), req)
    });
    builder.serve_connection(TokioIo::new(io), svc)
}
