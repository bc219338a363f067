//! The node key and the `Signer` seam.
//!
//! Two backends share one contract: [`TpmSigner`] keeps the key inside the TPM
//! (only a TPM-wrapped blob lives on disk); [`SoftwareSigner`] keeps a PKCS#8
//! key in the state directory for nodes without a TPM. Both return raw ES256
//! signatures (`r‖s`, 64 bytes). `sign` blocks: async callers go through
//! [`SignQueue`], which runs it where the backend needs, callers first.

mod jwk;
mod pcr;
mod queue;
mod software;
mod tpm;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

pub use jwk::{Jwk, NodePublicKey, thumbprint};
pub use pcr::{PCR_BANK, PcrSelection};
pub use queue::{Priority, QueueError, QueueStats, SignQueue, URGENT};
pub use software::SoftwareSigner;
pub use tpm::{TpmSigner, describe_blob, tpm_reachable};

use crate::state::StateError;

/// File name of the software key in the state directory.
pub const SOFTWARE_KEY_FILE: &str = "node-key.pem";
/// File name of the TPM-wrapped key blob in the state directory.
pub const TPM_KEY_FILE: &str = "node-key.tpm";
/// Default TCTI: the kernel's TPM resource manager.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// Which backend holds the node key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Tpm,
    Software,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Tpm => "tpm",
            Backend::Software => "software",
        })
    }
}

/// The configured choice: `tpm` fails closed, `auto` falls back to software.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignerKind {
    #[default]
    Tpm,
    Software,
    Auto,
}

impl FromStr for SignerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tpm" => Ok(Self::Tpm),
            "software" => Ok(Self::Software),
            "auto" => Ok(Self::Auto),
            other => Err(format!(
                "unknown signer kind {other:?}: use tpm, software or auto"
            )),
        }
    }
}

/// Holds the node key and signs with it.
pub trait Signer: Send + Sync + fmt::Debug {
    fn backend(&self) -> Backend;
    /// The node's public key, its JWK and RFC 7638 thumbprint.
    fn public_key(&self) -> &NodePublicKey;
    /// The key id: the RFC 7638 thumbprint of the public JWK.
    fn kid(&self) -> &str {
        &self.public_key().kid
    }
    /// ES256 over `signing_input` (SHA-256 then ECDSA P-256), as `r‖s`. Blocks.
    fn sign(&self, signing_input: &[u8]) -> Result<[u8; 64], SignerError>;
    /// The boot state the key is bound to (TPM PCR policy), if any.
    fn binding(&self) -> Option<PcrBinding> {
        None
    }
}

/// A key's PCR policy: the selection (SHA-256 bank) and the policy digest
/// (lowercase hex, TPM2_PolicyPCR over the PCR values at creation).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PcrBinding {
    pub pcrs: PcrSelection,
    pub policy_digest: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error(
        "TPM unreachable at {tcti:?}: {source}; check that the device exists and this user may open it (group tss), or set signer.kind = \"auto\" to allow a software key"
    )]
    TpmUnreachable {
        tcti: String,
        source: tss_esapi::Error,
    },
    #[error("TPM {op} failed: {source}")]
    Tpm {
        op: &'static str,
        source: tss_esapi::Error,
    },
    #[error("TPM {op} gave an unexpected answer: {what}")]
    TpmAnswer {
        op: &'static str,
        what: &'static str,
    },
    #[error("invalid TCTI {tcti:?}: use device:/dev/tpmrm0, swtpm:host=H,port=P or tabrmd")]
    BadTcti { tcti: String },
    #[error(
        "key blob {path} is corrupt ({reason}); restore it from backup, or move it away and re-run `jss-bootstrap node register` to enrol a new key"
    )]
    CorruptKeyBlob { path: PathBuf, reason: String },
    #[error(
        "key blob {path} was made by another TPM (or this TPM's owner hierarchy was cleared): its parent key is not this TPM's storage key; move it away and re-run `jss-bootstrap node register` to enrol a new key"
    )]
    ForeignKeyBlob { path: PathBuf },
    #[error(
        "software key {path} is not a usable P-256 PKCS#8 key ({reason}); move it away and re-run `jss-bootstrap node register`"
    )]
    BadSoftwareKey { path: PathBuf, reason: String },
    #[error(
        "the node key in {dir} is held by the TPM ({TPM_KEY_FILE}), but the TPM is unreachable: {source}"
    )]
    TpmKeyButNoTpm {
        dir: PathBuf,
        source: Box<SignerError>,
    },
    #[error("no node key in {dir}; create one with `jss-bootstrap node init --state-dir {dir}`")]
    NoKey { dir: PathBuf },
    #[error(
        "the TPM refused to sign: the node's boot state changed since the node key was created (PCRs {pcrs} no longer hold the values the key is bound to). After an intended firmware, Secure Boot or bootloader update, run `jss-bootstrap node register --rotate` to bind a new key to the new state; otherwise investigate the node's boot chain before trusting it"
    )]
    PcrMismatch { pcrs: String },
    #[error(
        "a software node key cannot be bound to PCRs ({pcrs} requested): only a TPM enforces that; use signer kind tpm, or --pcrs none"
    )]
    SoftwareCannotBind { pcrs: String },
    #[error("ECDSA signing failed: {0}")]
    Software(String),
    #[error(transparent)]
    State(#[from] StateError),
}

impl SignerError {
    /// Errors a retry may cure (the TPM went away); the rest need an operator.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::TpmUnreachable { .. } | Self::Tpm { .. } | Self::TpmAnswer { .. }
        )
    }

    /// A short label for metrics (`jss_signer_errors_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::PcrMismatch { .. } => "pcr_mismatch",
            Self::TpmUnreachable { .. } | Self::TpmKeyButNoTpm { .. } => "tpm_unreachable",
            Self::Tpm { .. } | Self::TpmAnswer { .. } => "tpm_error",
            Self::Software(_) => "software",
            _ => "key",
        }
    }
}

/// Where the node key lives and how to reach the TPM.
#[derive(Debug, Clone)]
pub struct SignerConfig {
    pub kind: SignerKind,
    pub tcti: String,
    pub state_dir: PathBuf,
    /// PCRs a key created now is bound to; `None` is the backend's default
    /// (PCR 7 for a TPM key, nothing for a software one). Keys that exist
    /// keep their own binding.
    pub pcrs: Option<PcrSelection>,
}

/// Whether [`open`] may create a missing key (bootstrap) or must find one (daemon).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPolicy {
    CreateIfMissing,
    MustExist,
}

/// What [`open`] did, for the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    Created,
    Loaded,
}

/// Opens the node key with the configured backend.
///
/// `auto` keeps whichever key already exists (a TPM-held key never silently
/// turns into a software one); with no key yet it uses the TPM when one
/// answers and software otherwise, with a loud warning.
pub fn open(
    cfg: &SignerConfig,
    policy: KeyPolicy,
) -> Result<(Arc<dyn Signer>, KeyOrigin), SignerError> {
    let version = crate::state::layout::current(&cfg.state_dir)?;
    open_in(cfg, &version.dir, policy)
}

/// As [`open`], with the key file in `dir` (one version of
/// `crate::state::layout`) rather than the current one.
pub fn open_in(
    cfg: &SignerConfig,
    dir: &Path,
    policy: KeyPolicy,
) -> Result<(Arc<dyn Signer>, KeyOrigin), SignerError> {
    let dir = &dir.to_path_buf();
    let tpm_blob = dir.join(TPM_KEY_FILE);
    let sw_key = dir.join(SOFTWARE_KEY_FILE);
    let backend = match cfg.kind {
        SignerKind::Tpm => Backend::Tpm,
        SignerKind::Software => Backend::Software,
        SignerKind::Auto if tpm_blob.exists() => Backend::Tpm,
        SignerKind::Auto if sw_key.exists() => Backend::Software,
        SignerKind::Auto => match tpm_reachable(&cfg.tcti) {
            Ok(()) => Backend::Tpm,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "NO TPM: signer.kind = auto is falling back to a SOFTWARE node key; anyone who can read {} can impersonate this node",
                    sw_key.display()
                );
                Backend::Software
            }
        },
    };
    let exists = match backend {
        Backend::Tpm => tpm_blob.exists(),
        Backend::Software => sw_key.exists(),
    };
    if !exists && policy == KeyPolicy::MustExist {
        return Err(SignerError::NoKey { dir: dir.clone() });
    }
    let origin = if exists {
        KeyOrigin::Loaded
    } else {
        KeyOrigin::Created
    };
    let signer: Arc<dyn Signer> = match backend {
        Backend::Software => match &cfg.pcrs {
            Some(p) if !p.is_empty() && !exists => {
                return Err(SignerError::SoftwareCannotBind {
                    pcrs: p.to_string(),
                });
            }
            _ => Arc::new(SoftwareSigner::open(&sw_key)?),
        },
        Backend::Tpm => {
            let pcrs = cfg.pcrs.clone().unwrap_or_else(PcrSelection::secure_boot);
            let s = TpmSigner::open(&cfg.tcti, &tpm_blob, &pcrs);
            match s {
                Err(e @ (SignerError::TpmUnreachable { .. } | SignerError::BadTcti { .. }))
                    if cfg.kind == SignerKind::Auto && exists =>
                {
                    return Err(SignerError::TpmKeyButNoTpm {
                        dir: dir.clone(),
                        source: Box::new(e),
                    });
                }
                other => Arc::new(other?),
            }
        }
    };
    tracing::info!(backend = %signer.backend(), kid = signer.kid(), ?origin, "node key ready");
    Ok((signer, origin))
}

/// The node key in `state_dir` as its files describe it, without opening a
/// TPM: backend, kid, and the PCR binding of a TPM key.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyInfo {
    pub backend: String,
    pub kid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binding: Option<PcrBinding>,
    /// A rotation in progress: the old key and when it may be removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation: Option<crate::state::rotation::Rotation>,
}

/// Reads [`KeyInfo`] for the current key in `state_dir` (the TPM blob if
/// present, else the software key).
pub fn describe(state_dir: &Path) -> Result<KeyInfo, SignerError> {
    let mut info = describe_in(&crate::state::layout::current(state_dir)?.dir)?;
    info.rotation = crate::state::rotation::read(state_dir)?;
    Ok(info)
}

/// Reads [`KeyInfo`] for the key in the version directory `dir`.
pub fn describe_in(dir: &Path) -> Result<KeyInfo, SignerError> {
    let state_dir = dir;
    let blob = state_dir.join(TPM_KEY_FILE);
    if blob.exists() {
        let (kid, binding) = describe_blob(&blob)?;
        return Ok(KeyInfo {
            backend: Backend::Tpm.to_string(),
            kid,
            binding,
            rotation: None,
        });
    }
    let sw = state_dir.join(SOFTWARE_KEY_FILE);
    if sw.exists() {
        let s = SoftwareSigner::open(&sw)?;
        return Ok(KeyInfo {
            backend: Backend::Software.to_string(),
            kid: s.kid().to_string(),
            binding: None,
            rotation: None,
        });
    }
    Err(SignerError::NoKey {
        dir: state_dir.to_path_buf(),
    })
}

/// Path of the key file a backend uses in `state_dir`.
pub fn key_path(state_dir: &Path, backend: Backend) -> PathBuf {
    state_dir.join(match backend {
        Backend::Tpm => TPM_KEY_FILE,
        Backend::Software => SOFTWARE_KEY_FILE,
    })
}
