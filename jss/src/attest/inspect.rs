//! `jss inspect`: "why does my pod get no token?" for operators.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::cgroup::PodRef;
use super::{AttestError, Attestor, PeerProcess, Source, Workload, locate};
use crate::kubelet::{KubeletConfig, KubeletError, KubeletPods, PodSource, StaticPods};

#[derive(Debug, Clone, clap::Args)]
pub struct InspectArgs {
    /// Process to inspect (a host PID).
    #[arg(long)]
    pub pid: i32,
    /// Where the host's /proc is mounted.
    #[arg(long)]
    pub proc_root: Option<PathBuf>,
    /// A saved kubelet `/pods` answer to match against instead of the kubelet.
    #[arg(long)]
    pub pods_json: Option<PathBuf>,
    /// The daemon's config file: its `[kubelet]` section and `proc_root` are used.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{0} [{code}]", code = .0.code())]
    Attest(#[from] AttestError),
    #[error("{0} [{code}]", code = .0.code())]
    Kubelet(#[from] KubeletError),
    #[error("cannot read config {path}: {source}")]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config {path}: {source}")]
    ConfigParse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub start_time: u64,
    pub pod_uid: Option<String>,
    /// Set for static pods: the cgroup carries the config hash, not a UID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub static_pod_hash: Option<String>,
    pub container_id: String,
    pub source: Source,
    pub cgroup: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
}

// Only what inspect needs from the daemon's file; everything else is ignored.
// Kept private and small so it can give way to `crate::config` later.
#[derive(Debug, Default, Deserialize)]
struct InspectConfig {
    proc_root: Option<PathBuf>,
    #[serde(default)]
    attest: AttestSection,
    kubelet: Option<KubeletConfig>,
}

#[derive(Debug, Default, Deserialize)]
struct AttestSection {
    proc_root: Option<PathBuf>,
}

fn load_config(path: &Path) -> Result<InspectConfig, InspectError> {
    let text = std::fs::read_to_string(path).map_err(|source| InspectError::ConfigRead {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| InspectError::ConfigParse {
        path: path.to_path_buf(),
        source,
    })
}

/// Runs the inspection; the report is printed as JSON by the caller.
pub fn run(args: &InspectArgs) -> Result<Report, InspectError> {
    let cfg = match &args.config {
        Some(p) => load_config(p)?,
        None => InspectConfig::default(),
    };
    let proc_root = args
        .proc_root
        .clone()
        .or(cfg.proc_root)
        .or(cfg.attest.proc_root)
        .unwrap_or_else(|| PathBuf::from("/proc"));
    let peer = PeerProcess::from_proc(&proc_root, args.pid)?;
    let loc = locate(&proc_root, args.pid)?;
    let pods: Option<Arc<dyn PodSource>> = match (&args.pods_json, cfg.kubelet) {
        (Some(file), _) => Some(Arc::new(StaticPods::from_file(file)?)),
        (None, Some(k)) => Some(Arc::new(KubeletPods::from_config(&k)?)),
        (None, None) => None,
    };
    let workload = match pods {
        None => None,
        Some(pods) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(InspectError::Runtime)?;
            let attestor = Attestor::new(proc_root.clone(), pods);
            Some(rt.block_on(attestor.attest(&peer))?)
        }
    };
    Ok(Report {
        pid: peer.pid,
        uid: peer.uid,
        gid: peer.gid,
        start_time: peer.start_time,
        pod_uid: loc.pod_uid().map(str::to_string),
        static_pod_hash: match &loc.pod {
            Some(PodRef::ConfigHash(h)) => Some(h.clone()),
            _ => None,
        },
        container_id: loc.container_id,
        source: loc.source,
        cgroup: loc.cgroup,
        workload,
    })
}
