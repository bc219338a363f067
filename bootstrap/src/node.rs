//! Node commands: register, renew, deregister, status, and the split flow
//! (csr on the node, sign where the Vault credentials are, install-chain).
//!
//! Register is idempotent and resumable: each step checks whether it is
//! already done (a valid chain from the current root; the key in the mount),
//! so a run that died between two steps is completed by the next.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use jss::chain::{self, Chain, ChainError};
use jss::signer::{self, KeyOrigin, KeyPolicy, NodePublicKey, Signer, SignerConfig, SignerError};
use x509_cert::der::Encode as _;

use crate::csr::{self, CsrError, NodeIdentity};
use crate::jwks::JwksError;
use crate::pki;
use crate::register::{self, Change, MountConfig, RegisterError, Target};
use crate::registry::{NodeRecord, Put, RegistryError};
use crate::vault::{Vault, VaultError};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Signer(#[from] SignerError),
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Register(#[from] RegisterError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Jwks(#[from] JwksError),
    #[error(
        "no node {node:?} in the registry of auth/{mount}: `jss-bootstrap cluster status --cluster ...` lists the registered nodes"
    )]
    UnknownNode { node: String, mount: String },
    #[error("{mount}/ has no root CA: run `jss-bootstrap cluster init` first")]
    NoRoot { mount: String },
    #[error("Vault's root CA in {mount}/ is not a PEM certificate: {reason}")]
    BadRoot { mount: String, reason: String },
    #[error(
        "the CSR is for cluster {csr:?} but this command signs for cluster {cluster:?}; refusing"
    )]
    ClusterMismatch { csr: String, cluster: String },
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a P-256 public key (SPKI PEM): {reason}")]
    BadPublicKey { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    State {
        path: PathBuf,
        source: jss::state::StateError,
    },
    #[error(transparent)]
    Layout(#[from] jss::state::StateError),
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
}

/// The directory of the current key version (key file and chain.pem).
pub(crate) fn key_dir(cfg: &SignerConfig) -> Result<PathBuf, NodeError> {
    Ok(jss::state::layout::current(&cfg.state_dir)?.dir)
}

/// Writes one report line; a closed stdout must not fail a registration.
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {
        let _ = writeln!($out, $($arg)*);
    };
}
pub(crate) use say;

/// What register/renew/sign need beyond the Vault connection.
#[derive(Debug, Clone)]
pub struct SignSpec {
    pub pki_mount: String,
    pub ttl: String,
    pub target: Target,
}

/// Opens (or creates) the node key and says which.
pub fn open_key(
    cfg: &SignerConfig,
    policy: KeyPolicy,
    out: &mut dyn Write,
) -> Result<Arc<dyn Signer>, NodeError> {
    let (s, origin) = signer::open(cfg, policy)?;
    let verb = match origin {
        KeyOrigin::Created => "created",
        KeyOrigin::Loaded => "found",
    };
    say!(out, "{verb:<8} node key ({}, kid {})", s.backend(), s.kid());
    Ok(s)
}

/// Reads the root CA and checks the mount is initialised: the first Vault
/// calls, made before anything is written locally.
pub(crate) async fn preflight(
    v: &Vault,
    spec: &SignSpec,
) -> Result<(Vec<u8>, MountConfig), NodeError> {
    let root = pki::root_ca(v, &spec.pki_mount)
        .await?
        .ok_or_else(|| NodeError::NoRoot {
            mount: spec.pki_mount.clone(),
        })?;
    // Not `Certificate::from_pem`: der 0.7's streaming PEM reader spins on a
    // truncated body; the chain loader decodes each block to DER first.
    let bad_root = |reason: String| NodeError::BadRoot {
        mount: spec.pki_mount.clone(),
        reason,
    };
    let root_der = jss::chain::load_pem_chain(&root)
        .map_err(bad_root)?
        .first()
        .ok_or_else(|| bad_root("no certificate in the answer".into()))?
        .to_der()
        .map_err(|e| bad_root(e.to_string()))?;
    let cfg = register::read_initialised(v, &spec.target.mount).await?;
    Ok((root_der, cfg))
}

/// Whether the chain ends in the given root certificate.
pub(crate) fn chain_has_root(c: &Chain, root_der: &[u8]) -> bool {
    c.certificates()
        .last()
        .and_then(|r| r.to_der().ok())
        .is_some_and(|d| d == root_der)
}

/// `node register` (and `node renew` with `force`).
#[allow(clippy::too_many_arguments)]
pub async fn register(
    v: &Vault,
    key_cfg: &SignerConfig,
    id: &NodeIdentity,
    spec: &SignSpec,
    renew_below: f64,
    force: bool,
    out: &mut dyn Write,
) -> Result<(), NodeError> {
    let (root_der, cfg) = preflight(v, spec).await?;
    let signer = open_key(key_cfg, KeyPolicy::CreateIfMissing, out)?;
    let key = signer.public_key().clone();
    let dir = &key_dir(key_cfg)?;
    let existing = match Chain::load(dir, &key) {
        Ok(c) => Some(c),
        Err(ChainError::Missing { .. }) => None,
        Err(e) => {
            say!(
                out,
                "replace  {} ({e})",
                dir.join(chain::CHAIN_FILE).display()
            );
            None
        }
    };
    let now = SystemTime::now();
    let keep = existing.as_ref().and_then(|c| {
        let why_not = if force {
            Some("renewal requested".to_string())
        } else if !chain_has_root(c, &root_der) {
            Some("issued by another root".into())
        } else if !same_subject(c, id) {
            Some(format!("subject {} differs", c.subject()))
        } else if c.remaining_fraction(now) <= renew_below {
            Some(format!(
                "{:.0}% of its lifetime left",
                c.remaining_fraction(now) * 100.0
            ))
        } else {
            None
        };
        match why_not {
            None => Some(c),
            Some(reason) => {
                say!(out, "renew    node certificate: {reason}");
                None
            }
        }
    });
    let chain = match keep {
        Some(c) => {
            say!(
                out,
                "found    node certificate {} (valid until {})",
                c.subject(),
                unix_to_string(c.not_after_unix())
            );
            c.clone()
        }
        None => {
            // The TPM signs here: blocking, but this is a one-shot CLI.
            let csr_pem = csr::build(signer.as_ref(), id)?;
            let c = sign_and_check(v, spec, &csr_pem, &id.node, &key).await?;
            c.write(dir)?;
            say!(
                out,
                "created  node certificate {} (valid until {}) in {}",
                c.subject(),
                unix_to_string(c.not_after_unix()),
                dir.join(chain::CHAIN_FILE).display()
            );
            c
        }
    };
    let rec = record(&id.node, &key, &chain, signer.binding());
    publish(v, &spec.target, &cfg, rec, out).await
}

/// The registry record of a node key and its chain.
pub(crate) fn record(
    node: &str,
    key: &NodePublicKey,
    c: &Chain,
    binding: Option<signer::PcrBinding>,
) -> NodeRecord {
    use x509_cert::der::EncodePem as _;
    let leaf = c
        .certificates()
        .first()
        .and_then(|l| l.to_pem(x509_cert::der::pem::LineEnding::LF).ok())
        .unwrap_or_default();
    NodeRecord::new(node, key, leaf, c.not_after_unix(), binding)
}

/// Writes the registry record, then (static mode) adds the key to the mount.
/// In JWKS mode the record is all: the discovery server serves it.
pub(crate) async fn publish(
    v: &Vault,
    target: &Target,
    cfg: &MountConfig,
    rec: NodeRecord,
    out: &mut dyn Write,
) -> Result<(), NodeError> {
    let key = rec.public_key();
    let (node, kid) = (rec.node.clone(), rec.kid.clone());
    let put = target.registry.put(v, rec).await?;
    let verb = match put {
        Put::Found => "found   ",
        Put::Created => "created ",
        Put::Renewed => "renewed ",
        Put::Replaced => "replaced",
    };
    say!(
        out,
        "{verb} registry record {node} (kid {kid}) in {}/{}",
        target.registry.kv_mount,
        target.registry.folder()
    );
    match (cfg.jwks_url(), key) {
        (Some(url), _) => {
            say!(
                out,
                "jwks     auth/{} reads the keys from {url}",
                target.mount
            );
        }
        (None, Some(key)) => {
            let change = register::add(v, target, &key).await?;
            report_change(out, &target.mount, &key, change);
        }
        (None, None) => {}
    }
    Ok(())
}

fn same_subject(c: &Chain, id: &NodeIdentity) -> bool {
    use std::str::FromStr as _;
    x509_cert::name::Name::from_str(&id.subject())
        .map(|n| n.to_string() == c.subject())
        .unwrap_or(false)
}

/// Has Vault sign the CSR and checks the answer: the chain must verify and
/// its certificate must hold exactly `key`.
pub(crate) async fn sign_and_check(
    v: &Vault,
    spec: &SignSpec,
    csr_pem: &str,
    cn: &str,
    key: &NodePublicKey,
) -> Result<Chain, NodeError> {
    let pem = pki::sign_node(v, &spec.pki_mount, csr_pem, cn, &spec.ttl).await?;
    Ok(Chain::from_pem(&pem, key)?)
}

pub(crate) fn report_change(out: &mut dyn Write, mount: &str, key: &NodePublicKey, change: Change) {
    match change {
        Change::Added { total } => {
            say!(
                out,
                "created  key {} in auth/{mount} ({total} node keys)",
                key.kid
            );
        }
        Change::AlreadyPresent { total } => {
            say!(
                out,
                "found    key {} in auth/{mount} ({total} node keys)",
                key.kid
            );
        }
        Change::Removed { total } => {
            say!(
                out,
                "removed  key {} from auth/{mount} ({total} node keys left)",
                key.kid
            );
        }
        Change::WasAbsent { total } => {
            say!(
                out,
                "absent   key {} was not in auth/{mount} ({total} node keys)",
                key.kid
            );
        }
    }
}

/// `node csr`: on the node, without Vault credentials.
pub fn make_csr(
    key_cfg: &SignerConfig,
    id: &NodeIdentity,
    out_path: &Path,
    out: &mut dyn Write,
) -> Result<(), NodeError> {
    let signer = open_key(key_cfg, KeyPolicy::CreateIfMissing, out)?;
    let pem = csr::build(signer.as_ref(), id)?;
    jss::state::write_atomic(out_path, pem.as_bytes(), 0o644).map_err(|source| {
        NodeError::State {
            path: out_path.to_path_buf(),
            source,
        }
    })?;
    say!(
        out,
        "created  CSR {} for {} in {}",
        id.subject(),
        signer.kid(),
        out_path.display()
    );
    Ok(())
}

/// `node sign`: where the Vault credentials are. Signs and registers.
pub async fn sign(
    v: &Vault,
    csr_path: &Path,
    cluster: &str,
    spec: &SignSpec,
    out_path: &Path,
    out: &mut dyn Write,
) -> Result<(), NodeError> {
    let pem = std::fs::read_to_string(csr_path).map_err(|source| NodeError::Io {
        what: "read",
        path: csr_path.to_path_buf(),
        source,
    })?;
    let req = csr::verify(&pem, &csr_path.display().to_string())?;
    if req.identity.cluster != cluster {
        return Err(NodeError::ClusterMismatch {
            csr: req.identity.cluster,
            cluster: cluster.into(),
        });
    }
    let (_, cfg) = preflight(v, spec).await?;
    let c = sign_and_check(v, spec, &req.pem, &req.identity.node, &req.key).await?;
    jss::state::write_atomic(out_path, c.pem().as_bytes(), 0o644).map_err(|source| {
        NodeError::State {
            path: out_path.to_path_buf(),
            source,
        }
    })?;
    say!(
        out,
        "created  node certificate {} (valid until {}) in {}",
        c.subject(),
        unix_to_string(c.not_after_unix()),
        out_path.display()
    );
    // The CSR does not say whether the key is bound to PCRs.
    let rec = record(&req.identity.node, &req.key, &c, None);
    publish(v, &spec.target, &cfg, rec, out).await
}

/// `node install-chain`: back on the node.
pub fn install_chain(
    key_cfg: &SignerConfig,
    chain_path: &Path,
    out: &mut dyn Write,
) -> Result<(), NodeError> {
    let signer = open_key(key_cfg, KeyPolicy::MustExist, out)?;
    let pem = std::fs::read_to_string(chain_path).map_err(|source| NodeError::Io {
        what: "read",
        path: chain_path.to_path_buf(),
        source,
    })?;
    let c = Chain::from_pem(&pem, signer.public_key())?;
    let dir = key_dir(key_cfg)?;
    c.write(&dir)?;
    say!(
        out,
        "created  {} with {} (valid until {})",
        dir.join(chain::CHAIN_FILE).display(),
        c.subject(),
        unix_to_string(c.not_after_unix())
    );
    Ok(())
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn unix_to_string(secs: u64) -> String {
    x509_cert::der::DateTime::from_unix_duration(std::time::Duration::from_secs(secs))
        .map(|d| d.to_string())
        .unwrap_or_else(|_| format!("@{secs}"))
}

/// When a rotation's old key may go, as `node status` and `cluster status`
/// say it: `removable after <time>`, or that no time is set yet because
/// the daemon's switch to the new key is not confirmed.
pub fn removal_to_string(remove_after: Option<u64>) -> String {
    match remove_after {
        Some(t) => format!("removable after {}", unix_to_string(t)),
        None => "daemon switch not confirmed yet".into(),
    }
}
