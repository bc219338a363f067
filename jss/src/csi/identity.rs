//! The CSI Identity service: who the plugin is, what it offers, whether it
//! is ready.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::csi::Plugin;
use crate::csi::proto;

/// The driver name: the CSIDriver object's name, the pods' `csi.driver`,
/// and the kubelet's plugin registration (daemonset/csi).
pub const DRIVER_NAME: &str = "csi.jss.dev";

/// The Identity service of one plugin.
pub struct IdentityService {
    pub plugin: Arc<Plugin>,
}

#[tonic::async_trait]
impl proto::identity_server::Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<proto::GetPluginInfoRequest>,
    ) -> Result<Response<proto::GetPluginInfoResponse>, Status> {
        Ok(Response::new(proto::GetPluginInfoResponse {
            name: DRIVER_NAME.to_string(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: Default::default(),
        }))
    }

    /// None: no CONTROLLER_SERVICE (inline ephemeral volumes are neither
    /// provisioned nor attached, only published on the node), no
    /// VOLUME_ACCESSIBILITY_CONSTRAINTS (the plugin runs on every node),
    /// no volume expansion.
    async fn get_plugin_capabilities(
        &self,
        _: Request<proto::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<proto::GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(proto::GetPluginCapabilitiesResponse {
            capabilities: Vec::new(),
        }))
    }

    /// Ready once the JSS socket directory is there to publish (the
    /// DaemonSet's hostPath creates it; the daemon binds its socket in it).
    async fn probe(
        &self,
        _: Request<proto::ProbeRequest>,
    ) -> Result<Response<proto::ProbeResponse>, Status> {
        Ok(Response::new(proto::ProbeResponse {
            ready: Some(self.plugin.socket_dir.is_dir()),
        }))
    }
}
