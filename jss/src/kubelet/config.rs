//! The daemon's `[kubelet]` section.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How to reach the kubelet and how long to wait for a pod.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubeletConfig {
    /// The kubelet's secure port on this node.
    pub url: String,
    /// Service-account token, re-read every `token_refresh_secs`.
    pub token_path: PathBuf,
    /// CA that signed the kubelet's serving certificate.
    pub ca_path: PathBuf,
    /// Accept any kubelet certificate. Only for kubelets with self-signed
    /// serving certificates; the token is still sent.
    pub insecure_skip_tls_verify: bool,
    /// Client certificate and key (PEM), sent when both are set.
    pub client_cert_path: Option<PathBuf>,
    pub client_key_path: Option<PathBuf>,
    /// Plain-http read-only port (e.g. `http://127.0.0.1:10255`), used instead
    /// of `url` when set. Loopback only: the pod list would cross the network
    /// unauthenticated otherwise.
    pub read_only_url: Option<String>,
    pub connect_timeout_ms: u64,
    /// Whole request, body included.
    pub request_timeout_ms: u64,
    /// How long a caller whose pod is missing waits for newer lists.
    pub retry_window_ms: u64,
    /// Pause between those lists.
    pub retry_interval_ms: u64,
    /// A list this young answers a first lookup without a new fetch.
    pub max_list_age_ms: u64,
    pub token_refresh_secs: u64,
    /// Cap on the `/pods` body; a full node (110 pods) is a few MiB.
    pub max_response_bytes: u64,
}

impl Default for KubeletConfig {
    fn default() -> Self {
        Self {
            url: "https://127.0.0.1:10250".into(),
            token_path: PathBuf::from(format!("{SA_DIR}/token")),
            ca_path: PathBuf::from(format!("{SA_DIR}/ca.crt")),
            insecure_skip_tls_verify: false,
            client_cert_path: None,
            client_key_path: None,
            read_only_url: None,
            connect_timeout_ms: 3_000,
            request_timeout_ms: 10_000,
            retry_window_ms: 30_000,
            retry_interval_ms: 500,
            max_list_age_ms: 1_000,
            token_refresh_secs: 60,
            max_response_bytes: 32 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[kubelet] {key}: {reason}")]
pub struct KubeletConfigError {
    pub key: &'static str,
    pub reason: String,
}

fn bad(key: &'static str, reason: impl Into<String>) -> KubeletConfigError {
    KubeletConfigError {
        key,
        reason: reason.into(),
    }
}

impl KubeletConfig {
    pub fn validate(&self) -> Result<(), KubeletConfigError> {
        let url = reqwest::Url::parse(&self.url).map_err(|e| bad("url", e.to_string()))?;
        if url.scheme() != "https" {
            return Err(bad(
                "url",
                format!(
                    "{:?} must be https (use read_only_url for the plain-http port)",
                    self.url
                ),
            ));
        }
        if let Some(ro) = &self.read_only_url {
            let u = reqwest::Url::parse(ro).map_err(|e| bad("read_only_url", e.to_string()))?;
            if u.scheme() != "http" {
                return Err(bad("read_only_url", format!("{ro:?} must be plain http")));
            }
            let loopback = match u.host_str() {
                Some("localhost") => true,
                Some(h) => h
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback()),
                None => false,
            };
            if !loopback {
                return Err(bad(
                    "read_only_url",
                    format!("{ro:?} must be a loopback address (127.0.0.1, [::1], localhost)"),
                ));
            }
        }
        match (&self.client_cert_path, &self.client_key_path) {
            (Some(_), None) => {
                return Err(bad("client_key_path", "required with client_cert_path"));
            }
            (None, Some(_)) => {
                return Err(bad("client_cert_path", "required with client_key_path"));
            }
            _ => {}
        }
        for (key, v) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("retry_interval_ms", self.retry_interval_ms),
        ] {
            if v == 0 {
                return Err(bad(key, "must be greater than 0"));
            }
        }
        if self.retry_interval_ms > self.retry_window_ms && self.retry_window_ms > 0 {
            return Err(bad("retry_interval_ms", "must not exceed retry_window_ms"));
        }
        if !(1..=60).contains(&self.token_refresh_secs) {
            return Err(bad(
                "token_refresh_secs",
                "must be 1..=60: projected tokens rotate and must be re-read at least every minute",
            ));
        }
        if self.max_response_bytes < 64 << 10 {
            return Err(bad("max_response_bytes", "must be at least 65536"));
        }
        Ok(())
    }

    pub(crate) fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// The URL of the pod list actually used.
    pub fn pods_url(&self) -> String {
        let base = self.read_only_url.as_deref().unwrap_or(&self.url);
        format!("{}/pods", base.trim_end_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<KubeletConfig, toml::de::Error> {
        toml::from_str(s)
    }

    #[test]
    fn defaults_and_overrides() {
        let c = parse("").unwrap();
        assert_eq!(c, KubeletConfig::default());
        assert_eq!(c.pods_url(), "https://127.0.0.1:10250/pods");
        c.validate().unwrap();
        let c = parse(
            "url = \"https://node:10250/\"\nretry_window_ms = 2000\nretry_interval_ms = 100\n",
        )
        .unwrap();
        assert_eq!(c.pods_url(), "https://node:10250/pods");
        c.validate().unwrap();
    }

    #[test]
    fn unknown_key_is_refused() {
        let e = parse("urll = \"x\"").unwrap_err().to_string();
        assert!(e.contains("urll"), "{e}");
    }

    #[test]
    fn validation_names_the_key() {
        let cases = [
            ("url = \"http://127.0.0.1:10250\"", "url"),
            ("read_only_url = \"http://10.0.0.5:10255\"", "read_only_url"),
            (
                "read_only_url = \"https://127.0.0.1:10255\"",
                "read_only_url",
            ),
            ("client_cert_path = \"/c.pem\"", "client_key_path"),
            ("request_timeout_ms = 0", "request_timeout_ms"),
            ("token_refresh_secs = 3600", "token_refresh_secs"),
            (
                "retry_window_ms = 100\nretry_interval_ms = 500",
                "retry_interval_ms",
            ),
        ];
        for (toml, key) in cases {
            let e = parse(toml).unwrap().validate().unwrap_err();
            assert_eq!(e.key, key, "{toml}: {e}");
            assert!(e.to_string().starts_with(&format!("[kubelet] {key}:")));
        }
        for ok in [
            "read_only_url = \"http://127.0.0.1:10255\"",
            "read_only_url = \"http://[::1]:10255\"",
            "read_only_url = \"http://localhost:10255\"",
        ] {
            parse(ok).unwrap().validate().unwrap();
        }
    }
}
