//! Kubelet and lookup errors, each with a short machine code.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Talking to the kubelet failed. Every variant maps to HTTP 503 upstream.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error(
        "kubelet at {url} is unreachable: {source}; check that the kubelet runs and [kubelet] url points at this node"
    )]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "kubelet at {url} did not answer within {after:?}; it may be overloaded ([kubelet] request_timeout_ms)"
    )]
    Timeout { url: String, after: Duration },
    #[error(
        "kubelet at {url} refused the service-account token (401); check [kubelet] token_path and that the token is current"
    )]
    Unauthorized { url: String },
    #[error(
        "kubelet at {url} forbids listing pods (403); grant the service account `get` on `nodes/proxy` (or nodes/pods)"
    )]
    Forbidden { url: String },
    #[error("kubelet at {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error(
        "kubelet at {url} sent more than {limit} bytes; raise [kubelet] max_response_bytes if the node really runs that many pods"
    )]
    TooLarge { url: String, limit: u64 },
    #[error("kubelet at {url} sent a malformed pod list: {source}")]
    Malformed {
        url: String,
        #[source]
        source: super::podlist::ParseError,
    },
    #[error("cannot read the kubelet bearer token {path}: {source}; check [kubelet] token_path")]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {what} {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the kubelet client ({what}): {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("invalid kubelet configuration: {0}")]
    Config(#[from] super::KubeletConfigError),
}

impl KubeletError {
    /// The refusal code the socket API answers with (see `server::refusal`).
    pub fn code(&self) -> &'static str {
        crate::server::Code::from(self).as_str()
    }
}

/// Why no pod could be matched.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("no pod on this node lists container {container_id}{} after {waited:?} and {lists} pod list(s) from the kubelet; if the pod just started, retry; otherwise check that [kubelet] url is this node's kubelet", pod_uid.as_ref().map(|u| format!(" (pod UID {u} from the cgroup)")).unwrap_or_default())]
    NotFound {
        container_id: String,
        pod_uid: Option<String>,
        waited: Duration,
        lists: u64,
    },
    #[error("container {container} of pod {namespace}/{pod} is {state}, not running")]
    NotRunning {
        namespace: String,
        pod: String,
        container: String,
        state: &'static str,
    },
    #[error("container {container_id} is listed by two pods ({}); refusing to pick one", pods.join(", "))]
    Duplicate {
        container_id: String,
        pods: Vec<String>,
    },
    #[error(
        "container {container_id} is in pod {cgroup_pod} by its cgroup but in pod {kubelet_pod} by the kubelet"
    )]
    PodMismatch {
        container_id: String,
        cgroup_pod: String,
        kubelet_pod: String,
    },
    #[error(transparent)]
    Kubelet(Arc<KubeletError>),
}

impl LookupError {
    /// The refusal code the socket API answers with (see `server::refusal`).
    pub fn code(&self) -> &'static str {
        crate::server::Code::from(self).as_str()
    }
}
