//! What a NodePublishVolume asks for: the volume capability and the volume
//! context (the pod's `volumeAttributes` plus the kubelet's
//! `csi.storage.k8s.io/` keys; README.md, "Pods in restricted namespaces:
//! the CSI driver").

use std::collections::HashMap;

use crate::csi::proto::VolumeCapability;
use crate::csi::proto::volume_capability::AccessType;
use crate::csi::proto::volume_capability::access_mode::Mode as AccessMode;

/// The kubelet's key prefix for what it adds to the volume context.
const KUBELET_PREFIX: &str = "csi.storage.k8s.io/";
/// Attributes a pod may set in `volumeAttributes`.
pub const MODE: &str = "mode";
pub const AUDIENCE: &str = "audience";
pub const FILE: &str = "file";
/// Keys the kubelet adds with `podInfoOnMount: true`.
pub const POD_NAME: &str = "csi.storage.k8s.io/pod.name";
pub const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
pub const POD_UID: &str = "csi.storage.k8s.io/pod.uid";
pub const SERVICE_ACCOUNT: &str = "csi.storage.k8s.io/serviceAccount.name";
pub const EPHEMERAL: &str = "csi.storage.k8s.io/ephemeral";
/// The token file's name when `file` is not set.
pub const DEFAULT_FILE: &str = "token";

/// A volume context or capability the plugin cannot serve; each names the
/// attribute or field so that the pod's author can fix the manifest.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(
        "volume attribute {key:?} is not one JSS knows (it knows mode, audience and file): fix the pod's volumeAttributes"
    )]
    UnknownAttribute { key: String },
    #[error("volume attribute mode={value:?} is neither \"socket\" nor \"token\"")]
    BadMode { value: String },
    #[error(
        "volume attribute {key:?} applies to mode=token only; with mode=socket the volume carries the JSS socket and nothing else"
    )]
    NotForSocket { key: &'static str },
    #[error("volume attribute {key:?} is empty")]
    Empty { key: &'static str },
    #[error("volume attribute file={value:?} must be a plain file name (no '/', not '.' or '..')")]
    BadFile { value: String },
    #[error(
        "volume context has {key}={value:?}: JSS volumes are inline ephemeral volumes only (the CSIDriver's volumeLifecycleModes is [Ephemeral])"
    )]
    NotEphemeral { key: &'static str, value: String },
    #[error(
        "volume context lacks {key}: mode=token needs the pod the kubelet names (is the CSIDriver's podInfoOnMount true?)"
    )]
    MissingPodInfo { key: &'static str },
    #[error("volume_capability has no access_type: JSS volumes are mount volumes")]
    NoAccessType,
    #[error(
        "volume_capability asks for a block volume: JSS volumes are mount volumes (a directory)"
    )]
    Block,
    #[error("volume_capability has no access_mode, or mode UNKNOWN")]
    NoAccessMode,
    #[error(
        "volume_capability access mode {mode} is for volumes on many nodes: a JSS volume lives on one node"
    )]
    MultiNode { mode: &'static str },
}

/// What the volume carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The node's JSS socket directory, bind-mounted read-only (default).
    Socket,
    /// A pod-level token file in a tmpfs, kept fresh by the plugin.
    Token,
}

/// The pod the kubelet names in the volume context (`podInfoOnMount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub service_account: String,
}

/// A parsed volume context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRequest {
    pub mode: Mode,
    /// `audience` (mode=token); `None`: the daemon's first audience.
    pub audience: Option<String>,
    /// `file` (mode=token): the token file's name in the volume.
    pub file: String,
    /// The pod, when the kubelet sent all four keys; mode=token requires it.
    pub pod: Option<PodInfo>,
}

impl VolumeRequest {
    /// Parses `volume_context`. Unknown attributes (outside the kubelet's
    /// `csi.storage.k8s.io/` keys) are refused rather than ignored: a
    /// misspelt `audience` would otherwise silently give another token.
    pub fn parse(ctx: &HashMap<String, String>) -> Result<Self, VolumeError> {
        if let Some(key) = ctx.keys().find(|k| {
            !k.starts_with(KUBELET_PREFIX) && ![MODE, AUDIENCE, FILE].contains(&k.as_str())
        }) {
            return Err(VolumeError::UnknownAttribute { key: key.clone() });
        }
        if let Some(v) = ctx.get(EPHEMERAL).filter(|v| v.as_str() != "true") {
            return Err(VolumeError::NotEphemeral {
                key: EPHEMERAL,
                value: v.clone(),
            });
        }
        let mode = match ctx.get(MODE).map(String::as_str) {
            None | Some("socket") => Mode::Socket,
            Some("token") => Mode::Token,
            Some(other) => {
                return Err(VolumeError::BadMode {
                    value: other.to_string(),
                });
            }
        };
        let pod = pod_info(ctx);
        if mode == Mode::Socket {
            for key in [AUDIENCE, FILE] {
                if ctx.contains_key(key) {
                    return Err(VolumeError::NotForSocket { key });
                }
            }
            return Ok(Self {
                mode,
                audience: None,
                file: DEFAULT_FILE.to_string(),
                pod,
            });
        }
        let audience = match ctx.get(AUDIENCE) {
            Some(a) if a.is_empty() => return Err(VolumeError::Empty { key: AUDIENCE }),
            a => a.cloned(),
        };
        let file = ctx.get(FILE).map_or(DEFAULT_FILE, String::as_str);
        if file.is_empty()
            || file == "."
            || file == ".."
            || file.contains('/')
            || file.contains('\0')
        {
            return Err(VolumeError::BadFile {
                value: file.to_string(),
            });
        }
        for key in [POD_NAME, POD_NAMESPACE, POD_UID, SERVICE_ACCOUNT] {
            if ctx.get(key).is_none_or(String::is_empty) {
                return Err(VolumeError::MissingPodInfo { key });
            }
        }
        Ok(Self {
            mode,
            audience,
            file: file.to_string(),
            pod,
        })
    }
}

/// The four pod keys, when all are present and non-empty.
fn pod_info(ctx: &HashMap<String, String>) -> Option<PodInfo> {
    let get = |k: &str| ctx.get(k).filter(|v| !v.is_empty()).cloned();
    Some(PodInfo {
        name: get(POD_NAME)?,
        namespace: get(POD_NAMESPACE)?,
        uid: get(POD_UID)?,
        service_account: get(SERVICE_ACCOUNT)?,
    })
}

/// A mount volume on this node. The access mode does not change what is
/// published (always read-only), but a multi-node mode is a CO asking for
/// something no JSS volume is.
pub fn check_capability(cap: &VolumeCapability) -> Result<(), VolumeError> {
    match cap.access_type {
        None => return Err(VolumeError::NoAccessType),
        Some(AccessType::Block(_)) => return Err(VolumeError::Block),
        Some(AccessType::Mount(_)) => {}
    }
    let mode = cap
        .access_mode
        .as_ref()
        .and_then(|m| AccessMode::try_from(m.mode).ok())
        .unwrap_or(AccessMode::Unknown);
    match mode {
        AccessMode::Unknown => Err(VolumeError::NoAccessMode),
        AccessMode::MultiNodeReaderOnly
        | AccessMode::MultiNodeSingleWriter
        | AccessMode::MultiNodeMultiWriter => Err(VolumeError::MultiNode {
            mode: mode.as_str_name(),
        }),
        AccessMode::SingleNodeWriter
        | AccessMode::SingleNodeReaderOnly
        | AccessMode::SingleNodeSingleWriter
        | AccessMode::SingleNodeMultiWriter => Ok(()),
    }
}

#[cfg(test)]
mod tests;
