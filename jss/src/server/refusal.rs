//! The socket API's refusal contract: every error code it answers with, its
//! HTTP status and default `Retry-After`. README "API on the socket" lists
//! the same codes (checked by a test).
//!
//! Every refusal is a [`Refusal`] returned to `http::handle`, which counts
//! it (`jss_denials_total{reason}`), audits it and answers it: once each,
//! wherever it was decided.

use crate::attest::AttestError;
use crate::claims::ClaimsError;
use crate::kubelet::{KubeletError, LookupError};

macro_rules! codes {
    ($($variant:ident = $code:literal, $status:literal;)*) => {
        /// A refusal's machine code: the JSON `error` field and the metrics label.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $($variant,)*
        }

        impl Code {
            /// Every code the API can answer with.
            pub const ALL: &[Code] = &[$(Code::$variant,)*];

            /// The code as the caller sees it, e.g. `not_in_pod`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $code,)*
                }
            }

            /// The HTTP status it is answered with.
            pub fn status(self) -> u16 {
                match self {
                    $(Code::$variant => $status,)*
                }
            }
        }
    };
}

codes! {
    // The request itself.
    BadAudience = "bad_audience", 400;
    BadRequest = "bad_request", 400;
    NotFound = "not_found", 404;
    MethodNotAllowed = "method_not_allowed", 405;
    SlowBody = "slow_body", 408;
    TooLarge = "too_large", 413;
    // The caller is not (or no longer) the process that connected.
    ProcessGone = "process_gone", 401;
    ProcessChanged = "process_changed", 401;
    // The caller is not a running container of a pod on this node.
    NoPeerCredentials = "no_peer_credentials", 403;
    NoPeerPid = "no_peer_pid", 403;
    NotInPod = "not_in_pod", 403;
    CgroupConflict = "cgroup_conflict", 403;
    PodNotFound = "pod_not_found", 403;
    ContainerNotRunning = "container_not_running", 403;
    PodMismatch = "pod_mismatch", 403;
    // The pod-token socket serves uid 0 (the CSI plugin) only.
    NotRoot = "not_root", 403;
    // This node's own trouble.
    Internal = "internal", 500;
    ProcUnreadable = "proc_unreadable", 500;
    ProcMalformed = "proc_malformed", 500;
    DuplicateContainerId = "duplicate_container_id", 500;
    // Unavailable for now: answered with Retry-After.
    NoPidfd = "no_pidfd", 503;
    Overloaded = "overloaded", 503;
    SignerUnavailable = "signer_unavailable", 503;
    Timeout = "timeout", 503;
    KubeletUnavailable = "kubelet_unavailable", 503;
    KubeletTimeout = "kubelet_timeout", 503;
    KubeletUnauthorized = "kubelet_unauthorized", 503;
    KubeletForbidden = "kubelet_forbidden", 503;
    KubeletBadStatus = "kubelet_bad_status", 503;
    KubeletResponseTooLarge = "kubelet_response_too_large", 503;
    KubeletMalformed = "kubelet_malformed", 503;
    KubeletTokenUnreadable = "kubelet_token_unreadable", 503;
    KubeletClientConfig = "kubelet_client_config", 503;
}

impl Code {
    /// Seconds a caller should wait before asking again, when asking again
    /// can help (503s, but not a kubelet client the daemon cannot set up:
    /// that needs the operator); `None` otherwise.
    pub fn default_retry_after(self) -> Option<u32> {
        (self.status() == 503 && self != Code::KubeletClientConfig).then_some(1)
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused request: its code, a message for the operator (what failed,
/// for whom, what to do) and the `Retry-After` seconds for this refusal.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub code: Code,
    pub message: String,
    pub retry_after: Option<u32>,
    /// The audience asked for, once known (for the audit line).
    pub audience: Option<String>,
    /// The attested caller, when refused after attestation (for the audit line).
    pub workload: Option<Box<WorkloadNames>>,
}

/// Who an attested caller is, or which pod a pod-level token was asked
/// for, as the audit line names it.
#[derive(Debug, Clone)]
pub struct WorkloadNames {
    pub namespace: String,
    pub pod: String,
    /// `None` for a pod-level token.
    pub container: Option<String>,
}

impl Refusal {
    /// `Retry-After` is the code's default; see [`Self::retry_after`].
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: code.default_retry_after(),
            audience: None,
            workload: None,
        }
    }

    /// Overrides `Retry-After` for this one refusal (`None`: no header).
    pub fn retry_after(mut self, secs: Option<u32>) -> Self {
        self.retry_after = secs;
        self
    }

    /// Records the audience asked for (the audit line names it).
    pub fn for_audience(mut self, audience: &str) -> Self {
        self.audience = Some(audience.to_string());
        self
    }

    /// Records the attested caller (the audit line names it).
    pub fn for_workload(mut self, w: &crate::attest::Workload) -> Self {
        self.workload = Some(Box::new(WorkloadNames {
            namespace: w.namespace.clone(),
            pod: w.pod_name.clone(),
            container: Some(w.container_name.clone()),
        }));
        self
    }

    /// Records the pod a pod-level token was asked for (the audit line names it).
    pub fn for_pod(mut self, p: &crate::kubelet::PodRef) -> Self {
        self.workload = Some(Box::new(WorkloadNames {
            namespace: p.namespace.clone(),
            pod: p.name.clone(),
            container: None,
        }));
        self
    }

    pub fn status(&self) -> u16 {
        self.code.status()
    }
}

impl From<&AttestError> for Code {
    fn from(e: &AttestError) -> Self {
        match e {
            AttestError::ProcessGone { .. } | AttestError::ConnectorExited { .. } => {
                Code::ProcessGone
            }
            AttestError::ProcessChanged { .. } => Code::ProcessChanged,
            AttestError::NoPeerCredentials(_) => Code::NoPeerCredentials,
            AttestError::NoPeerPid => Code::NoPeerPid,
            AttestError::NoPidfd { .. } => Code::NoPidfd,
            AttestError::ProcRead { .. } => Code::ProcUnreadable,
            AttestError::ProcMalformed { .. } => Code::ProcMalformed,
            AttestError::NotInPod { .. } => Code::NotInPod,
            AttestError::CgroupConflict { .. } => Code::CgroupConflict,
            AttestError::Lookup { source, .. } => source.into(),
        }
    }
}

impl From<&LookupError> for Code {
    fn from(e: &LookupError) -> Self {
        match e {
            LookupError::NotFound { .. } => Code::PodNotFound,
            LookupError::NotRunning { .. } => Code::ContainerNotRunning,
            LookupError::Duplicate { .. } => Code::DuplicateContainerId,
            LookupError::PodMismatch { .. } => Code::PodMismatch,
            LookupError::PodNotListed { .. } => Code::PodNotFound,
            LookupError::PodNotAsNamed { .. } => Code::PodMismatch,
            LookupError::PodFinished { .. } => Code::ContainerNotRunning,
            LookupError::Kubelet(e) => e.as_ref().into(),
        }
    }
}

impl From<&KubeletError> for Code {
    fn from(e: &KubeletError) -> Self {
        match e {
            KubeletError::Unreachable { .. } => Code::KubeletUnavailable,
            KubeletError::Timeout { .. } => Code::KubeletTimeout,
            KubeletError::Unauthorized { .. } => Code::KubeletUnauthorized,
            KubeletError::Forbidden { .. } => Code::KubeletForbidden,
            KubeletError::Status { .. } => Code::KubeletBadStatus,
            KubeletError::TooLarge { .. } => Code::KubeletResponseTooLarge,
            KubeletError::Malformed { .. } => Code::KubeletMalformed,
            KubeletError::Token { .. } => Code::KubeletTokenUnreadable,
            KubeletError::File { .. } | KubeletError::Setup { .. } | KubeletError::Config(_) => {
                Code::KubeletClientConfig
            }
        }
    }
}

impl From<&ClaimsError> for Code {
    /// Per request only the random source can fail (the machine ID is read
    /// at start): our own trouble.
    fn from(_: &ClaimsError) -> Self {
        Code::Internal
    }
}

impl From<&AttestError> for Refusal {
    fn from(e: &AttestError) -> Self {
        Refusal::new(e.into(), e.to_string())
    }
}

impl From<&LookupError> for Refusal {
    fn from(e: &LookupError) -> Self {
        Refusal::new(e.into(), e.to_string())
    }
}

impl From<&ClaimsError> for Refusal {
    fn from(e: &ClaimsError) -> Self {
        Refusal::new(e.into(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for c in Code::ALL {
            assert!(seen.insert(c.as_str()), "{c} twice");
            assert!(
                c.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{c}"
            );
            assert!(matches!(c.status(), 400..=599), "{c}");
        }
    }

    #[test]
    fn retry_after_only_where_asking_again_can_help() {
        for c in Code::ALL {
            let can_help = c.status() == 503 && *c != Code::KubeletClientConfig;
            assert_eq!(c.default_retry_after().is_some(), can_help, "{c}");
        }
        let r = Refusal::new(Code::Overloaded, "busy").retry_after(Some(7));
        assert_eq!(r.retry_after, Some(7));
    }

    /// README's error table lists exactly the codes the API answers with.
    #[test]
    fn readme_lists_every_code() {
        let readme = include_str!("../../../README.md");
        let section = readme
            .split("### API on the socket")
            .nth(1)
            .and_then(|s| s.split("\n### ").next())
            .unwrap_or_default();
        let mut listed = std::collections::BTreeSet::new();
        // Rows look like `| 403 `not_in_pod`, `pod_not_found` | when |`.
        for cell in section.lines().filter_map(|l| l.split('|').nth(1)) {
            let cell = cell.trim();
            let Some(status) = cell.get(..3).and_then(|s| s.parse::<u16>().ok()) else {
                continue;
            };
            for code in cell.split('`').skip(1).step_by(2) {
                listed.insert((code.to_string(), status));
            }
        }
        let ours: std::collections::BTreeSet<_> = Code::ALL
            .iter()
            .map(|c| (c.as_str().to_string(), c.status()))
            .collect();
        let only_readme: Vec<_> = listed.difference(&ours).collect();
        let only_code: Vec<_> = ours.difference(&listed).collect();
        assert!(
            only_readme.is_empty() && only_code.is_empty(),
            "README's error table and refusal::Code differ: only in README {only_readme:?}, only in Code {only_code:?}"
        );
    }
}
