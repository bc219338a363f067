//! `jss inspect`: "why does my pod get no token?" for operators.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::attest::cgroup::PodRef;
use crate::attest::{AttestError, Attestor, PeerProcess, Workload, locate};
use crate::config::{Config, ConfigError};
use crate::kubelet::{KubeletError, KubeletPods, PodSource, StaticPods};

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
    /// The daemon's config file: its `proc_root` and `[kubelet]` are used.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{0} [{code}]", code = .0.code())]
    Attest(#[from] AttestError),
    #[error("{0} [{code}]", code = .0.code())]
    Kubelet(#[from] KubeletError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub start_time: Option<u64>,
    pub pod_uid: Option<String>,
    /// Set for static pods: the cgroup carries the config hash, not a UID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub static_pod_hash: Option<String>,
    pub container_id: String,
    pub cgroup: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
    /// With `--config`: the node key that would sign (kid, PCR binding).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_key: Option<crate::signer::KeyInfo>,
}

/// Runs the inspection; the report is printed as JSON by the caller.
pub fn run(args: &InspectArgs) -> Result<Report, InspectError> {
    // The daemon's own parser: the same checks, the same `${NODE_NAME}` expansion.
    let cfg = args.config.as_deref().map(Config::load).transpose()?;
    let proc_root = args
        .proc_root
        .clone()
        .or_else(|| cfg.as_ref().map(|c| c.proc_root.clone()))
        .unwrap_or_else(|| PathBuf::from("/proc"));
    let peer = PeerProcess::from_proc(&proc_root, args.pid)?;
    let loc = locate(&proc_root, args.pid)?;
    let pods: Option<Arc<dyn PodSource>> = match (&args.pods_json, &cfg) {
        (Some(file), _) => Some(Arc::new(StaticPods::from_file(file)?)),
        (None, Some(c)) => Some(Arc::new(KubeletPods::from_config(&c.kubelet)?)),
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
        start_time: peer.start_time(),
        pod_uid: loc.pod_uid().map(str::to_string),
        static_pod_hash: match &loc.pod {
            Some(PodRef::ConfigHash(h)) => Some(h.clone()),
            _ => None,
        },
        container_id: loc.container_id,
        cgroup: loc.cgroup,
        workload,
        // A key that cannot be read says so in the daemon's own start-up;
        // here it only adds to the report.
        node_key: cfg
            .as_ref()
            .and_then(|c| crate::signer::describe(&c.state_dir).ok()),
    })
}
