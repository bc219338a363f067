//! The CSI node plugin (`jss csi`): inline ephemeral volumes that carry the
//! JSS socket into pods that may not use hostPath (README.md, "Pods in
//! restricted namespaces: the CSI driver").
//!
//! gRPC on a unix socket, CSI v1.9.0's Identity and Node services
//! (`proto/csi.proto`). It runs in its own privileged container, apart from
//! the key-holding daemon, and reads the daemon's config for the socket
//! directory and the node name; it holds no key and no credential.

pub mod identity;
pub mod locks;
pub mod mount;
pub mod node;
pub mod target;
pub mod token;
pub mod token_mount;
pub mod volume;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
pub use identity::DRIVER_NAME;

/// Code generated from `proto/csi.proto` (package `csi.v1`): servers for
/// the plugin, clients for whoever speaks as the kubelet (the tests).
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, missing_docs)]
pub mod proto {
    tonic::include_proto!("csi.v1");
}

/// `jss csi`.
#[derive(Debug, Clone, clap::Args)]
pub struct CsiArgs {
    /// Where to serve CSI: `unix:///path/csi.sock` (or an absolute path).
    #[arg(long, env = "CSI_ENDPOINT")]
    pub endpoint: String,
    /// The daemon's config: its socket directory and node name.
    #[arg(long, default_value = "/etc/jss/config.toml")]
    pub config: PathBuf,
    /// The kubelet's root directory (its --root-dir); targets must lie in its pods/.
    #[arg(long, default_value = "/var/lib/kubelet")]
    pub kubelet_dir: PathBuf,
}

/// Why the plugin could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    #[error(
        "--endpoint {endpoint:?} is not unix:///<absolute path> (the CSI convention; CSI_ENDPOINT works too)"
    )]
    Endpoint { endpoint: String },
    #[error(
        "the kubelet directory {dir:?} has no usable pods/ ({source}): pass the kubelet's --root-dir as --kubelet-dir, mounted at the same path"
    )]
    KubeletDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("the daemon's socket {socket:?} has no parent directory to publish")]
    SocketDir { socket: PathBuf },
    #[error("cannot serve CSI on {path:?}")]
    Listen {
        path: PathBuf,
        source: Box<crate::server::ServerError>,
    },
    #[error("cannot set up signal handling: {0}")]
    Signals(std::io::Error),
    #[error("the CSI server task failed: {0}")]
    Task(tokio::task::JoinError),
    #[error("the CSI server on {path:?} failed: {source}")]
    Serve {
        path: PathBuf,
        source: tonic::transport::Error,
    },
}

/// What the services share: the daemon's config, where targets may lie, the
/// socket directory socket mode publishes, and a lock per target that
/// serialises the calls on one volume (and only on that one).
pub struct Plugin {
    pub config: Arc<Config>,
    pub pods: target::PodsDir,
    pub socket_dir: PathBuf,
    pub mounts: locks::TargetLocks,
    /// mode=token volumes and their refreshers.
    pub tokens: token::TokenVolumes,
}

impl Plugin {
    /// The plugin for `config` and the kubelet at `kubelet_dir`.
    pub fn new(config: Config, kubelet_dir: &Path) -> Result<Self, CsiError> {
        let pods = target::PodsDir::new(kubelet_dir).map_err(|source| CsiError::KubeletDir {
            dir: kubelet_dir.to_path_buf(),
            source,
        })?;
        let socket_dir = config
            .socket
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .ok_or_else(|| CsiError::SocketDir {
                socket: config.socket.clone(),
            })?
            .to_path_buf();
        // The daemon may wait its whole request timeout for a pod it does not list yet.
        let tokens = token::TokenVolumes::new(
            config.csi.pod_token_socket.clone(),
            std::time::Duration::from_millis(config.limits.request_timeout_ms + 5_000),
        );
        Ok(Self {
            config: Arc::new(config),
            pods,
            socket_dir,
            mounts: locks::TargetLocks::default(),
            tokens,
        })
    }
}

/// The socket path of a CSI endpoint: `unix:///abs/path`, `unix:/abs/path`
/// or `/abs/path`.
pub fn endpoint_path(endpoint: &str) -> Result<PathBuf, CsiError> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    let path = Path::new(path);
    if !path.is_absolute() || path.file_name().is_none() {
        return Err(CsiError::Endpoint {
            endpoint: endpoint.to_string(),
        });
    }
    Ok(path.to_path_buf())
}

/// Serves the Identity and Node services on `endpoint` until SIGTERM or
/// SIGINT, then removes the socket. A stale socket from an earlier run is
/// replaced; a live one (another plugin) is an error.
pub async fn run(config: Config, args: &CsiArgs) -> Result<(), CsiError> {
    let path = endpoint_path(&args.endpoint)?;
    let plugin = Arc::new(Plugin::new(config, &args.kubelet_dir)?);
    // Only the kubelet and the registrar (root) talk to the plugin.
    let listener = crate::server::bind_path(&path, 0o600).map_err(|source| CsiError::Listen {
        path: path.clone(),
        source: Box::new(source),
    })?;
    let mut term = signal(SignalKind::terminate()).map_err(CsiError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(CsiError::Signals)?;
    tracing::info!(
        endpoint = %path.display(),
        driver = DRIVER_NAME,
        node = %plugin.config.node_name,
        socket_dir = %plugin.socket_dir.display(),
        pods = %plugin.pods.real().display(),
        "CSI node plugin serving"
    );
    let drain = Duration::from_millis(plugin.config.limits.drain_timeout_ms);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(proto::identity_server::IdentityServer::new(
                identity::IdentityService {
                    plugin: Arc::clone(&plugin),
                },
            ))
            .add_service(proto::node_server::NodeServer::new(node::NodeService {
                plugin,
            }))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let ended = tokio::select! {
        r = &mut server => Some(r),
        _ = term.recv() => None,
        _ = int.recv() => None,
    };
    let served = match ended {
        Some(r) => r,
        None => stop_within(stop, server, drain).await,
    };
    let _ = std::fs::remove_file(&path);
    match served {
        Ok(r) => r.map_err(|source| CsiError::Serve { path, source }),
        Err(e) => Err(CsiError::Task(e)),
    }
}

/// Stops accepting and waits up to `drain` (`limits.drain_timeout_ms`) for
/// calls in flight. The kubelet keeps its connection open, so the server
/// never ends by itself once the calls are done: after `drain` it is dropped.
async fn stop_within(
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    drain: Duration,
) -> Result<Result<(), tonic::transport::Error>, tokio::task::JoinError> {
    tracing::info!("CSI node plugin stopping");
    let _ = stop.send(());
    let abort = server.abort_handle();
    match tokio::time::timeout(drain, server).await {
        Ok(r) => r,
        Err(_) => {
            abort.abort();
            Ok(Ok(()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_unix_socket_paths() {
        for (e, want) in [
            ("unix:///csi/csi.sock", "/csi/csi.sock"),
            ("unix:/csi/csi.sock", "/csi/csi.sock"),
            ("/csi/csi.sock", "/csi/csi.sock"),
        ] {
            assert_eq!(endpoint_path(e).unwrap(), Path::new(want));
        }
        for bad in [
            "unix://csi.sock",
            "tcp://127.0.0.1:10000",
            "csi.sock",
            "unix:///",
        ] {
            let e = endpoint_path(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("unix:///"), "{e}");
        }
    }
}
