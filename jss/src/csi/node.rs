//! The CSI Node service: NodeGetInfo, NodeGetCapabilities, and publishing
//! JSS volumes at the kubelet's target paths. Both publish and unpublish
//! are idempotent (the kubelet retries, and with `requiresRepublish`
//! publishes a mounted volume again periodically).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::{Code, Request, Response, Status};
use tracing::Instrument as _;

use crate::csi::Plugin;
use crate::csi::mount::{self, MountError};
use crate::csi::proto;
use crate::csi::target::TargetError;
use crate::csi::volume::{self, Mode, VolumeError, VolumeRequest};

/// Why a Node RPC failed; each maps to the gRPC code the CSI specification
/// gives for it.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{rpc} needs {field}")]
    Missing {
        rpc: &'static str,
        field: &'static str,
    },
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(
        "{target:?} already has another directory mounted on it, not the JSS socket directory {socket_dir:?}"
    )]
    OtherVolume {
        target: PathBuf,
        socket_dir: PathBuf,
    },
    #[error(
        "the JSS socket directory {dir:?} does not exist in the plugin's container: mount the node's {dir:?} into it (daemonset/csi), and check that jss runs on this node"
    )]
    SocketDirMissing { dir: PathBuf },
    #[error(transparent)]
    Token(#[from] crate::csi::token::TokenError),
    #[error("cannot remove the target directory {target:?} after unmounting it: {source}")]
    Remove {
        target: PathBuf,
        source: std::io::Error,
    },
}

impl NodeError {
    /// The code per the CSI specification's error tables for
    /// NodePublishVolume and NodeUnpublishVolume.
    pub fn code(&self) -> Code {
        match self {
            Self::Missing { .. } | Self::Volume(_) => Code::InvalidArgument,
            Self::Target(TargetError::ParentMissing { .. }) => Code::FailedPrecondition,
            Self::Target(TargetError::Io { .. }) => Code::Internal,
            Self::Target(_) => Code::InvalidArgument,
            // "Volume published but is incompatible".
            Self::OtherVolume { .. } => Code::AlreadyExists,
            Self::SocketDirMissing { .. } => Code::FailedPrecondition,
            Self::Token(e) => e.code(),
            Self::Mount(_) | Self::Remove { .. } => Code::Internal,
        }
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

/// The Node service of one plugin.
pub struct NodeService {
    pub plugin: Arc<Plugin>,
}

fn required(value: &str, rpc: &'static str, field: &'static str) -> Result<(), NodeError> {
    if value.is_empty() {
        return Err(NodeError::Missing { rpc, field });
    }
    Ok(())
}

impl NodeService {
    async fn publish(
        &self,
        req: proto::NodePublishVolumeRequest,
    ) -> Result<proto::NodePublishVolumeResponse, NodeError> {
        const RPC: &str = "NodePublishVolume";
        required(&req.volume_id, RPC, "volume_id")?;
        required(&req.target_path, RPC, "target_path")?;
        let cap = req.volume_capability.as_ref().ok_or(NodeError::Missing {
            rpc: RPC,
            field: "volume_capability",
        })?;
        volume::check_capability(cap)?;
        let vol = VolumeRequest::parse(&req.volume_context)?;
        // This target only: a token fetch may wait on the daemon for long.
        let _serial = self.plugin.mounts.lock(Path::new(&req.target_path)).await;
        let target = self
            .plugin
            .pods
            .resolve(Path::new(&req.target_path), true)?
            .ok_or(NodeError::Missing {
                rpc: RPC,
                field: "target_path",
            })?;
        match vol.mode {
            Mode::Socket => self.publish_socket(&target)?,
            Mode::Token => self.plugin.tokens.publish(&target, &vol).await?,
        }
        let pod = vol.pod.as_ref();
        tracing::info!(
            mode = ?vol.mode,
            namespace = pod.map_or("", |p| p.namespace.as_str()),
            pod = pod.map_or("", |p| p.name.as_str()),
            "volume published"
        );
        Ok(proto::NodePublishVolumeResponse {})
    }

    /// The JSS socket directory, read-only, at `target`; a target that
    /// already shows that directory is published already.
    fn publish_socket(&self, target: &Path) -> Result<(), NodeError> {
        let dir = &self.plugin.socket_dir;
        if !dir.is_dir() {
            return Err(NodeError::SocketDirMissing { dir: dir.clone() });
        }
        if mount::is_mount_point(target)? {
            if mount::same_directory(dir, target)? {
                return Ok(());
            }
            return Err(NodeError::OtherVolume {
                target: target.to_path_buf(),
                socket_dir: dir.clone(),
            });
        }
        mount::bind_read_only(dir, target)?;
        Ok(())
    }

    async fn unpublish(
        &self,
        req: proto::NodeUnpublishVolumeRequest,
    ) -> Result<proto::NodeUnpublishVolumeResponse, NodeError> {
        const RPC: &str = "NodeUnpublishVolume";
        required(&req.volume_id, RPC, "volume_id")?;
        required(&req.target_path, RPC, "target_path")?;
        let _serial = self.plugin.mounts.lock(Path::new(&req.target_path)).await;
        // Not there: unpublished already (a retry, or never published).
        let Some(target) = self
            .plugin
            .pods
            .resolve(Path::new(&req.target_path), false)?
        else {
            return Ok(proto::NodeUnpublishVolumeResponse {});
        };
        // A token volume's refresher must not write into the target once unmounted.
        self.plugin.tokens.stop(&target);
        mount::unmount_all(&target)?;
        // The specification: the plugin deletes the directory it created.
        match std::fs::remove_dir(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(NodeError::Remove { target, source }),
        }
        tracing::info!("volume unpublished");
        Ok(proto::NodeUnpublishVolumeResponse {})
    }
}

/// A span per request: the RPC, the volume and its target (never secrets).
fn span(rpc: &'static str, volume_id: &str, target: &str) -> tracing::Span {
    tracing::info_span!("csi", rpc, volume_id, target)
}

/// Logs a refusal once, with the request's span, and hands it to gRPC.
fn answer<T>(r: Result<T, NodeError>) -> Result<Response<T>, Status> {
    match r {
        Ok(v) => Ok(Response::new(v)),
        Err(e) => {
            tracing::warn!(code = ?e.code(), error = %e, "refused");
            Err(e.into())
        }
    }
}

#[tonic::async_trait]
impl proto::node_server::Node for NodeService {
    async fn node_publish_volume(
        &self,
        request: Request<proto::NodePublishVolumeRequest>,
    ) -> Result<Response<proto::NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let span = span("NodePublishVolume", &req.volume_id, &req.target_path);
        async { answer(self.publish(req).await) }
            .instrument(span)
            .await
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<proto::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<proto::NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let span = span("NodeUnpublishVolume", &req.volume_id, &req.target_path);
        async { answer(self.unpublish(req).await) }
            .instrument(span)
            .await
    }

    /// None of the optional node capabilities: no staging (nothing to
    /// attach), no stats or expansion (a socket directory or a token file).
    async fn node_get_capabilities(
        &self,
        _: Request<proto::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<proto::NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(proto::NodeGetCapabilitiesResponse {
            capabilities: Vec::new(),
        }))
    }

    /// `node_id` is the daemon's node name (`node_name`, or `NODE_NAME`):
    /// the name the kubelet registers the driver under.
    async fn node_get_info(
        &self,
        _: Request<proto::NodeGetInfoRequest>,
    ) -> Result<Response<proto::NodeGetInfoResponse>, Status> {
        Ok(Response::new(proto::NodeGetInfoResponse {
            node_id: self.plugin.config.node_name.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}
