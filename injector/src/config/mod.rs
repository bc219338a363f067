//! The injector's settings: an optional TOML file, then command-line flags
//! over it, validated once at start. Every key has a default, so
//! `jss-injector serve --listen HOST:PORT --tls-cert PEM --tls-key PEM` runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use jss::claims::injected;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the injector config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "injector config {path}: {source} (unknown keys are errors; see README.md, \"The injector\")"
    )]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("injector config: `{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
}

/// Where the CA of Vault's listener comes from, in the pod's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VaultCa {
    /// No CA volume: `jss secrets` uses the image's system roots.
    None,
    ConfigMap {
        name: String,
        key: String,
    },
    Secret {
        name: String,
        key: String,
    },
}

/// How `jss secrets` keeps running next to the app after the first fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SidecarMode {
    /// An init container with `restartPolicy: Always` (Kubernetes ≥ 1.29).
    Native,
    /// A regular container, for clusters older than 1.29.
    Container,
}

/// Where the injected containers get the node's JSS socket directory from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum SocketVolume {
    /// A hostPath volume of `socket_dir`: Pod Security admits it only at
    /// the `privileged` level.
    #[serde(rename = "hostPath")]
    HostPath,
    /// An inline CSI volume of the JSS CSI driver (mode socket): admitted at
    /// `restricted`; the setting for clusters that run the driver.
    #[serde(rename = "csi")]
    Csi,
}

/// The JSS CSI driver's name (daemonset/csi).
pub const DEFAULT_CSI_DRIVER: &str = "csi.jss.dev";

/// Resource requests and limits of each injected container (Kubernetes quantities).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: String,
    pub memory_limit: String,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpu_request: "10m".into(),
            memory_request: "16Mi".into(),
            cpu_limit: "100m".into(),
            memory_limit: "32Mi".into(),
        }
    }
}

/// What the injector writes into pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inject {
    pub image: String,
    pub image_pull_policy: String,
    /// Host directory of the JSS socket (hostPath, mounted at the same path).
    pub socket_dir: String,
    /// Socket file name inside `socket_dir`.
    pub socket_name: String,
    /// hostPath of `socket_dir`, or the CSI driver's volume mounted there.
    pub socket_volume: SocketVolume,
    /// The CSI driver's name, for `socket_volume = "csi"`.
    pub csi_driver: String,
    pub sidecar: SidecarMode,
    pub refresh_seconds: u32,
    /// `json` or `raw` (`jss secrets --format`).
    pub format: String,
    /// Octal mode of the secret files (`jss secrets --file-mode`).
    pub file_mode: String,
    /// `jss secrets --auth-mount`; unset: its default.
    pub auth_mount: Option<String>,
    /// uid and gid of the injected containers (non-root).
    pub run_as_user: u32,
    /// sizeLimit of the memory emptyDir holding the secrets.
    pub secrets_size_limit: String,
    pub vault_addr: String,
    pub vault_ca: VaultCa,
    pub resources: Resources,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub inject: Inject,
}

/// The file's shape (every key optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub inject: FileInject,
    #[serde(default)]
    pub vault: FileVault,
    #[serde(default)]
    pub resources: Resources,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileInject {
    pub image: Option<String>,
    pub image_pull_policy: Option<String>,
    pub socket_dir: Option<String>,
    pub socket_name: Option<String>,
    pub socket_volume: Option<SocketVolume>,
    pub csi_driver: Option<String>,
    pub sidecar: Option<SidecarMode>,
    pub refresh_seconds: Option<u32>,
    pub format: Option<String>,
    pub file_mode: Option<String>,
    pub auth_mount: Option<String>,
    pub run_as_user: Option<u32>,
    pub secrets_size_limit: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileVault {
    pub addr: Option<String>,
    pub ca_config_map: Option<String>,
    pub ca_secret: Option<String>,
    pub ca_key: Option<String>,
}

/// Values given on the command line; each overrides the file's.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub image: Option<String>,
    pub sidecar: Option<SidecarMode>,
    pub socket_volume: Option<SocketVolume>,
    pub vault_addr: Option<String>,
    pub vault_ca_config_map: Option<String>,
    pub vault_ca_secret: Option<String>,
}

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";

impl Config {
    /// Reads `path` (if any), applies `flags` and validates the result.
    pub fn load(path: Option<&Path>, flags: Overrides) -> Result<Self, ConfigError> {
        let file = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: p.to_path_buf(),
                    source,
                })?
            }
            None => FileConfig::default(),
        };
        Self::build(file, flags)
    }

    /// Merges and validates; errors name the key.
    pub fn build(file: FileConfig, flags: Overrides) -> Result<Self, ConfigError> {
        let listen_text = flags
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen = listen_text.parse().map_err(|e| ConfigError::Invalid {
            key: "listen",
            problem: format!("{listen_text:?} is not HOST:PORT with a numeric IP ({e})"),
        })?;
        let tls_cert = flags
            .tls_cert
            .or(file.tls_cert)
            .unwrap_or_else(|| "/etc/jss-injector/tls/tls.crt".into());
        let tls_key = flags
            .tls_key
            .or(file.tls_key)
            .unwrap_or_else(|| "/etc/jss-injector/tls/tls.key".into());
        let fi = file.inject;
        let fv = file.vault;
        let ca_config_map = flags.vault_ca_config_map.or(fv.ca_config_map);
        let ca_secret = flags.vault_ca_secret.or(fv.ca_secret);
        let ca_key = fv.ca_key.unwrap_or_else(|| "ca.crt".into());
        let vault_ca = match (ca_config_map, ca_secret) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "vault.ca_config_map",
                    "and `vault.ca_secret` are both set; choose one",
                ));
            }
            (Some(name), None) => VaultCa::ConfigMap { name, key: ca_key },
            (None, Some(name)) => VaultCa::Secret { name, key: ca_key },
            (None, None) => VaultCa::None,
        };
        let inject = Inject {
            image: flags
                .image
                .or(fi.image)
                .unwrap_or_else(|| format!("jss:{}", env!("CARGO_PKG_VERSION"))),
            image_pull_policy: fi
                .image_pull_policy
                .unwrap_or_else(|| "IfNotPresent".into()),
            socket_dir: fi.socket_dir.unwrap_or_else(|| "/run/jss".into()),
            socket_name: fi.socket_name.unwrap_or_else(|| "jss.sock".into()),
            socket_volume: flags
                .socket_volume
                .or(fi.socket_volume)
                .unwrap_or(SocketVolume::HostPath),
            csi_driver: fi.csi_driver.unwrap_or_else(|| DEFAULT_CSI_DRIVER.into()),
            sidecar: flags.sidecar.or(fi.sidecar).unwrap_or(SidecarMode::Native),
            refresh_seconds: fi.refresh_seconds.unwrap_or(600),
            format: fi.format.unwrap_or_else(|| "json".into()),
            file_mode: fi.file_mode.unwrap_or_else(|| "0644".into()),
            auth_mount: fi.auth_mount,
            run_as_user: fi.run_as_user.unwrap_or(65532),
            secrets_size_limit: fi.secrets_size_limit.unwrap_or_else(|| "4Mi".into()),
            vault_addr: flags
                .vault_addr
                .or(fv.addr)
                .unwrap_or_else(|| "https://vault.vault.svc:8200".into()),
            vault_ca,
            resources: file.resources,
        };
        inject.validate()?;
        Ok(Self {
            listen,
            tls_cert,
            tls_key,
            inject,
        })
    }
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

/// A Kubernetes object name (DNS-1123 subdomain).
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// A quantity as written in manifests: digits, an optional fraction, an
/// optional suffix (no exponents).
fn is_quantity(s: &str) -> bool {
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    num.parse::<f64>().is_ok()
        && !num.starts_with('.')
        && ["", "m", "k", "M", "G", "Ki", "Mi", "Gi"].contains(&suffix)
}

impl Inject {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(problem) = injected::image_reference_problem(&self.image) {
            return Err(invalid(
                "inject.image",
                format!("{:?} is not an image reference: it {problem}", self.image),
            ));
        }
        if !["Always", "IfNotPresent", "Never"].contains(&self.image_pull_policy.as_str()) {
            return Err(invalid(
                "inject.image_pull_policy",
                format!(
                    "{:?} must be Always, IfNotPresent or Never",
                    self.image_pull_policy
                ),
            ));
        }
        if !self.socket_dir.starts_with('/') || self.socket_dir.split('/').any(|c| c == "..") {
            return Err(invalid(
                "inject.socket_dir",
                format!("{:?} must be an absolute path without ..", self.socket_dir),
            ));
        }
        // A CSI driver name: a DNS subdomain of at most 63 characters.
        if self.csi_driver.len() > 63 || !is_dns_subdomain(&self.csi_driver) {
            return Err(invalid(
                "inject.csi_driver",
                format!(
                    "{:?} is not a CSI driver name (lowercase DNS name, at most 63 characters)",
                    self.csi_driver
                ),
            ));
        }
        if self.socket_name.is_empty() || self.socket_name.contains('/') {
            return Err(invalid(
                "inject.socket_name",
                format!("{:?} must be a file name", self.socket_name),
            ));
        }
        if self.refresh_seconds == 0 {
            return Err(invalid("inject.refresh_seconds", "must be at least 1"));
        }
        if !injected::valid_format(&self.format) {
            return Err(invalid(
                "inject.format",
                format!("{:?} must be json or raw", self.format),
            ));
        }
        if !injected::valid_file_mode(&self.file_mode) {
            return Err(invalid(
                "inject.file_mode",
                format!("{:?} must be an octal mode such as 0640", self.file_mode),
            ));
        }
        if let Some(m) = &self.auth_mount
            && !injected::valid_auth_mount(m)
        {
            return Err(invalid(
                "inject.auth_mount",
                format!("{m:?} must be a mount path such as jss-prod-1, not empty or a flag"),
            ));
        }
        if self.run_as_user == 0 {
            return Err(invalid(
                "inject.run_as_user",
                "must not be 0: injected containers run as non-root",
            ));
        }
        if !is_quantity(&self.secrets_size_limit) {
            return Err(invalid(
                "inject.secrets_size_limit",
                format!(
                    "{:?} is not a quantity such as 4Mi",
                    self.secrets_size_limit
                ),
            ));
        }
        if !(self.vault_addr.starts_with("https://") || self.vault_addr.starts_with("http://"))
            || self.vault_addr.contains(char::is_whitespace)
        {
            return Err(invalid(
                "vault.addr",
                format!("{:?} must be an http(s):// URL", self.vault_addr),
            ));
        }
        match &self.vault_ca {
            VaultCa::ConfigMap { name, key } | VaultCa::Secret { name, key } => {
                if !is_dns_subdomain(name) {
                    let k = if matches!(self.vault_ca, VaultCa::Secret { .. }) {
                        "vault.ca_secret"
                    } else {
                        "vault.ca_config_map"
                    };
                    return Err(invalid(
                        k,
                        format!("{name:?} is not a Kubernetes object name"),
                    ));
                }
                let key_ok = !key.is_empty()
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
                if !key_ok {
                    return Err(invalid(
                        "vault.ca_key",
                        format!("{key:?} is not a ConfigMap/Secret key"),
                    ));
                }
            }
            VaultCa::None => {}
        }
        let r = &self.resources;
        for (key, v) in [
            ("resources.cpu_request", &r.cpu_request),
            ("resources.memory_request", &r.memory_request),
            ("resources.cpu_limit", &r.cpu_limit),
            ("resources.memory_limit", &r.memory_limit),
        ] {
            if !is_quantity(v) {
                return Err(invalid(
                    key,
                    format!("{v:?} is not a Kubernetes quantity (e.g. 10m, 32Mi)"),
                ));
            }
        }
        Ok(())
    }

    /// `JSS_SOCKET` inside the injected containers.
    pub fn socket_path(&self) -> String {
        format!(
            "{}/{}",
            self.socket_dir.trim_end_matches('/'),
            self.socket_name
        )
    }
}

#[cfg(test)]
mod tests;
