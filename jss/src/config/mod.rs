//! `jss serve` configuration: parsed and validated once, then passed down.
//!
//! Unknown keys are errors and every bad value is reported with its key and
//! the reason before anything starts. `config.example.toml` documents every key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::claims::injected::image_reference_problem;
use crate::claims::{DEFAULT_SUB_TEMPLATE, SubTemplate};
use crate::kubelet::KubeletConfig;
use crate::signer::{DEFAULT_TCTI, SignerConfig, SignerKind};
use crate::spiffe::{SpiffeConfig, SpiffeSection};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("config key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default = "d_socket")]
    socket: PathBuf,
    #[serde(default = "d_socket_mode")]
    socket_mode: String,
    #[serde(default = "d_state_dir")]
    state_dir: PathBuf,
    cluster_name: String,
    cluster_region: String,
    node_name: Option<String>,
    #[serde(default = "d_machine_id")]
    machine_id_path: PathBuf,
    #[serde(default = "d_proc")]
    proc_root: PathBuf,
    #[serde(default = "d_ttl")]
    token_ttl_seconds: u64,
    #[serde(default = "d_audiences")]
    audiences: Vec<String>,
    issuer: Option<String>,
    #[serde(default = "d_sub")]
    sub_template: String,
    audit_log: Option<PathBuf>,
    #[serde(default)]
    cache: CacheConfig,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    signer: SignerSection,
    #[serde(default)]
    kubelet: KubeletConfig,
    #[serde(default)]
    spiffe: SpiffeSection,
    #[serde(default)]
    csi: CsiConfig,
    #[serde(default)]
    injector: InjectorSection,
}

/// `[injector]`: what `jss-injector` writes into pods on this cluster.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectorSection {
    /// The JSS image reference of injected containers, exactly as the
    /// injector's `inject.image`; unset: no container is left out of `images`.
    image: Option<String>,
}

fn d_socket() -> PathBuf {
    "/run/jss/jss.sock".into()
}
fn d_socket_mode() -> String {
    "0666".into()
}
fn d_state_dir() -> PathBuf {
    "/var/lib/jss".into()
}
fn d_machine_id() -> PathBuf {
    "/etc/machine-id".into()
}
fn d_proc() -> PathBuf {
    "/proc".into()
}
/// `token_ttl_seconds` when the config leaves it out.
pub const DEFAULT_TOKEN_TTL_SECONDS: u64 = 60;

fn d_ttl() -> u64 {
    DEFAULT_TOKEN_TTL_SECONDS
}
fn d_audiences() -> Vec<String> {
    vec!["vault".into()]
}
fn d_sub() -> String {
    DEFAULT_SUB_TEMPLATE.into()
}

/// `[cache]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub enabled: bool,
    pub max_entries: usize,
    /// Re-sign tokens of workloads that asked within the last three token
    /// lifetimes before their half-life, in the signer's idle time.
    pub refresh_ahead: bool,
    /// Most refreshes waiting for the signer at once.
    pub refresh_max: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_entries: 4096,
            refresh_ahead: true,
            refresh_max: 1024,
        }
    }
}

/// `[limits]`: what one client can cost the daemon.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// A client must send its request headers within this time.
    pub header_timeout_ms: u64,
    /// A whole request (headers, body, attestation, signing) must finish within this time.
    pub request_timeout_ms: u64,
    /// Signing requests allowed to wait for the signer; more get 503.
    pub signer_queue: usize,
    /// How long SIGTERM waits for in-flight requests.
    pub drain_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_body_bytes: 4096,
            header_timeout_ms: 5_000,
            request_timeout_ms: 45_000,
            signer_queue: 256,
            drain_timeout_ms: 10_000,
        }
    }
}

/// `[csi]`: the daemon's side of the CSI plugin's token mode (README.md,
/// "Token mode"). `jss csi --config` reads the same section to find the socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CsiConfig {
    /// Serve pod-level tokens on `pod_token_socket` (off by default: a
    /// second way to get tokens exists only where the operator asks for it).
    pub pod_token: bool,
    /// The root-only socket (mode 0600) in a directory of its own (0700),
    /// mounted into the CSI plugin's container only.
    pub pod_token_socket: PathBuf,
}

impl Default for CsiConfig {
    fn default() -> Self {
        Self {
            pod_token: false,
            pod_token_socket: "/run/jss-csi/jss.sock".into(),
        }
    }
}

/// `[signer]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignerSection {
    pub kind: SignerKind,
    pub tcti: String,
}

impl Default for SignerSection {
    fn default() -> Self {
        Self {
            kind: SignerKind::Tpm,
            tcti: DEFAULT_TCTI.into(),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub socket_mode: u32,
    pub state_dir: PathBuf,
    pub cluster_name: String,
    pub cluster_region: String,
    pub node_name: String,
    pub machine_id_path: PathBuf,
    pub proc_root: PathBuf,
    pub token_ttl_seconds: u64,
    pub audiences: Vec<String>,
    pub issuer: String,
    pub sub_template: SubTemplate,
    pub audit_log: Option<PathBuf>,
    pub cache: CacheConfig,
    pub limits: Limits,
    pub signer: SignerConfig,
    pub kubelet: KubeletConfig,
    /// `[spiffe]`; `None` when `trust_domain` is not set.
    pub spiffe: Option<SpiffeConfig>,
    pub csi: CsiConfig,
    /// `[injector] image`: containers the injector adds with this image
    /// are left out of `images` (`claims::injected`); `None`: none is.
    pub injector_image: Option<String>,
}

impl Config {
    /// Reads and validates `path`. `NODE_NAME` is the default `node_name`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path, std::env::var("NODE_NAME").ok())
    }

    pub fn parse(
        text: &str,
        path: &Path,
        env_node_name: Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut raw: Raw = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        let socket_mode = parse_mode(&raw.socket_mode).ok_or_else(|| {
            invalid(
                "socket_mode",
                format!(
                    "{:?} is not an octal mode such as \"0666\"",
                    raw.socket_mode
                ),
            )
        })?;
        for (key, v) in [
            ("cluster_name", &raw.cluster_name),
            ("cluster_region", &raw.cluster_region),
        ] {
            if v.is_empty() || v.contains(['/', '#']) || v.chars().any(char::is_whitespace) {
                return Err(invalid(
                    key,
                    format!(
                        "{v:?} must be non-empty without '/', '#' or spaces (it becomes part of Vault paths and `sub`)"
                    ),
                ));
            }
        }
        let node_name = raw
            .node_name
            .or(env_node_name)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                invalid(
                    "node_name",
                    "not set, and NODE_NAME is not in the environment",
                )
            })?;
        if !(10..=3600).contains(&raw.token_ttl_seconds) {
            return Err(invalid(
                "token_ttl_seconds",
                format!(
                    "{} is outside 10..=3600 (tokens are meant to be short-lived)",
                    raw.token_ttl_seconds
                ),
            ));
        }
        if raw.audiences.is_empty() || raw.audiences.iter().any(|a| a.is_empty()) {
            return Err(invalid(
                "audiences",
                "must list at least one non-empty audience",
            ));
        }
        let sub_template = SubTemplate::parse(&raw.sub_template)
            .map_err(|e| invalid("sub_template", e.to_string()))?;
        if raw.limits.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        if raw.limits.signer_queue == 0 {
            return Err(invalid("limits.signer_queue", "must be at least 1"));
        }
        if !raw.socket.is_absolute() {
            return Err(invalid("socket", "must be an absolute path"));
        }
        let issuer = raw
            .issuer
            .unwrap_or_else(|| format!("jss://{}", raw.cluster_name));
        // The kubelet's serving certificate names the node, not 127.0.0.1:
        // let a DaemonSet say `url = "https://${NODE_NAME}:10250"`.
        raw.kubelet.url = raw.kubelet.url.replace("${NODE_NAME}", &node_name);
        raw.kubelet
            .validate()
            .map_err(|e| invalid("kubelet", e.to_string()))?;
        let spiffe = crate::spiffe::config::validate(raw.spiffe).map_err(|(k, r)| invalid(k, r))?;
        check_pod_token_socket(&raw.csi, &raw.socket, spiffe.as_ref())?;
        if let Some(image) = &raw.injector.image
            && let Some(problem) = image_reference_problem(image)
        {
            return Err(invalid(
                "injector.image",
                format!("{image:?} {problem}; set it to jss-injector's inject.image"),
            ));
        }
        Ok(Self {
            socket: raw.socket,
            socket_mode,
            signer: SignerConfig {
                kind: raw.signer.kind,
                tcti: raw.signer.tcti,
                state_dir: raw.state_dir.clone(),
                // The daemon never creates a key (bootstrap does).
                pcrs: None,
            },
            state_dir: raw.state_dir,
            cluster_name: raw.cluster_name,
            cluster_region: raw.cluster_region,
            node_name,
            machine_id_path: raw.machine_id_path,
            proc_root: raw.proc_root,
            token_ttl_seconds: raw.token_ttl_seconds,
            audiences: raw.audiences,
            issuer,
            sub_template,
            audit_log: raw.audit_log,
            cache: raw.cache,
            limits: raw.limits,
            kubelet: raw.kubelet,
            spiffe,
            csi: raw.csi,
            injector_image: raw.injector.image,
        })
    }
}

/// The pod-token socket must be absolute and alone in its directory: the
/// directory of `jss.sock` (and of the SPIFFE socket) is mounted into pods.
fn check_pod_token_socket(
    csi: &CsiConfig,
    socket: &Path,
    spiffe: Option<&SpiffeConfig>,
) -> Result<(), ConfigError> {
    const KEY: &str = "csi.pod_token_socket";
    let path = &csi.pod_token_socket;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let Some(dir) = dir.filter(|_| path.is_absolute()) else {
        return Err(invalid(KEY, "must be an absolute path to a socket file"));
    };
    for (other_key, other) in std::iter::once(("socket", socket))
        .chain(spiffe.map(|s| ("spiffe.socket", s.socket.as_path())))
    {
        if other.parent() == Some(dir) {
            return Err(invalid(
                KEY,
                format!(
                    "{} shares its directory with `{other_key}`, which pods mount; give it a directory of its own such as /run/jss-csi",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// An octal file mode such as `"0666"` (or `"0o666"`), at most `0o777`.
pub fn parse_mode(text: &str) -> Option<u32> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
}

#[cfg(test)]
mod tests;
