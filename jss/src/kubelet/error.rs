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
    #[error(
        "kubelet at {url} answered HTTP {status} to GET /pods instead of the pod list; check that [kubelet] url names this node's kubelet"
    )]
    Status { url: String, status: u16 },
    #[error(
        "kubelet at {url} sent more than {limit} bytes; raise [kubelet] max_response_bytes if the node really runs that many pods"
    )]
    TooLarge { url: String, limit: u64 },
    #[error(
        "kubelet at {url} sent a malformed pod list (JSON object with an `items` array expected): {source}; no caller on this node can be attested until it does; check that [kubelet] url names this node's kubelet"
    )]
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
    #[error("the kubelet lists no pod with container {container_id}{} (waited {waited:?}, {lists} pod list(s)): the caller is not a container of a pod this kubelet runs; a container started moments ago may appear in a later list, anything else never will (check that [kubelet] url names this node's kubelet)", pod_uid.as_ref().map(|u| format!(" (pod UID {u} from the cgroup)")).unwrap_or_default())]
    NotFound {
        container_id: String,
        pod_uid: Option<String>,
        waited: Duration,
        lists: u64,
    },
    #[error(
        "the kubelet reports container {container} of pod {namespace}/{pod} as {state}, not running; tokens go only to running containers{}",
        not_running_hint(state)
    )]
    NotRunning {
        namespace: String,
        pod: String,
        container: String,
        state: &'static str,
    },
    #[error("container {container_id} is listed by two pods in the kubelet's pod list ({}); JSS will not guess which is the caller's: a fault of the kubelet or runtime on this node, not of the caller", pods.join(", "))]
    Duplicate {
        container_id: String,
        pods: Vec<String>,
    },
    #[error(
        "container {container_id} is in pod {cgroup_pod} by its cgroup but in pod {kubelet_pod} by the kubelet; no token while the two disagree (a fault of this node's runtime or kubelet, not of the caller)"
    )]
    PodMismatch {
        container_id: String,
        cgroup_pod: String,
        kubelet_pod: String,
    },
    #[error(
        "the kubelet lists no pod {}/{} with UID {} (waited {waited:?}, {lists} pod list(s)): no pod-level token for a pod this node does not run; check the pod info the kubelet sent to the CSI plugin and that [kubelet] url names this node's kubelet",
        pod.namespace, pod.name, pod.uid
    )]
    PodNotListed {
        pod: Box<super::PodRef>,
        waited: Duration,
        lists: u64,
    },
    #[error(
        "pod UID {pod_uid} is {kubelet} in the kubelet's pod list, not the {asked} asked for; no pod-level token while the two disagree"
    )]
    PodNotAsNamed {
        pod_uid: String,
        asked: String,
        kubelet: String,
    },
    #[error(
        "pod {namespace}/{pod} has phase {phase} in the kubelet's pod list: its containers have finished, so it gets no pod-level token"
    )]
    PodFinished {
        namespace: String,
        pod: String,
        phase: String,
    },
    #[error(transparent)]
    Kubelet(Arc<KubeletError>),
}

/// What a caller in a container that is not running can expect.
fn not_running_hint(state: &str) -> &'static str {
    match state {
        "terminated" => "; a terminated container gets none",
        _ => {
            "; the kubelet's status lags the runtime, so ask again once it reports the container running"
        }
    }
}

impl LookupError {
    /// The refusal code the socket API answers with (see `server::refusal`).
    pub fn code(&self) -> &'static str {
        crate::server::Code::from(self).as_str()
    }
}
