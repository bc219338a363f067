//! The node certificate chain: `<state_dir>/chain.pem`, the node CA
//! certificate first, then its issuers up to the root (PEM).
//!
//! `jss-bootstrap node register` writes it; the daemon loads it and puts it in
//! every token header as `x5c`. Loading checks what a verifier would: the leaf
//! holds *this* node's key and each certificate is signed by the next.

mod verify;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64STD;
use x509_cert::Certificate;
use x509_cert::der::{Decode as _, Encode as _};

use crate::signer::NodePublicKey;
use crate::state::{self, StateError};

/// File name of the chain in the state directory.
pub const CHAIN_FILE: &str = "chain.pem";

/// OID of EC public keys (`id-ecPublicKey`).
const EC_PUBLIC_KEY: x509_cert::der::asn1::ObjectIdentifier =
    x509_cert::der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error(
        "no node certificate chain at {path}; register the node with `jss-bootstrap node register --state-dir {dir}` (or install a signed chain with `jss-bootstrap node install-chain`)",
        dir = path.parent().map(|p| p.display().to_string()).unwrap_or_default()
    )]
    Missing { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin} is not a PEM certificate chain: {reason}")]
    Parse { origin: String, reason: String },
    #[error(
        "{origin} holds {count} certificate(s); expected the node certificate followed by the root (re-run `jss-bootstrap node register`)"
    )]
    TooShort { origin: String, count: usize },
    #[error(
        "the certificate in {origin} is for another key than this node's (kid {kid}); the node key changed since it was issued: re-run `jss-bootstrap node register`"
    )]
    KeyMismatch { origin: String, kid: String },
    #[error(
        "{origin}: certificate {index} ({subject}) is not issued by certificate {next} ({next_subject}): {reason}"
    )]
    BrokenLink {
        origin: String,
        index: usize,
        subject: String,
        next: usize,
        next_subject: String,
        reason: String,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

/// A verified chain for one node key.
#[derive(Clone)]
pub struct Chain {
    pem: String,
    certs: Vec<Certificate>,
    x5c: Vec<String>,
    not_before: SystemTime,
    not_after: SystemTime,
    subject: String,
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chain")
            .field("subject", &self.subject)
            .field("certs", &self.certs.len())
            .field("not_before", &unix(self.not_before))
            .field("not_after", &unix(self.not_after))
            .finish()
    }
}

impl Chain {
    /// Loads and checks `<state_dir>/chain.pem` against the node key.
    pub fn load(state_dir: &Path, node_key: &NodePublicKey) -> Result<Self, ChainError> {
        let path = state_dir.join(CHAIN_FILE);
        let pem = match std::fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ChainError::Missing { path });
            }
            Err(source) => return Err(ChainError::Read { path, source }),
        };
        Self::parse(pem, node_key, &path.display().to_string())
    }

    /// Parses and checks a PEM chain against the node key.
    pub fn from_pem(pem: &str, node_key: &NodePublicKey) -> Result<Self, ChainError> {
        Self::parse(pem.to_string(), node_key, "the certificate chain")
    }

    fn parse(pem: String, node_key: &NodePublicKey, origin: &str) -> Result<Self, ChainError> {
        let certs = load_pem_chain(&pem).map_err(|e| ChainError::Parse {
            origin: origin.to_string(),
            reason: e.to_string(),
        })?;
        if certs.len() < 2 {
            return Err(ChainError::TooShort {
                origin: origin.to_string(),
                count: certs.len(),
            });
        }
        let leaf = &certs[0];
        if !holds_key(leaf, node_key) {
            return Err(ChainError::KeyMismatch {
                origin: origin.to_string(),
                kid: node_key.kid.clone(),
            });
        }
        for (i, pair) in certs.windows(2).enumerate() {
            let (cert, issuer) = (&pair[0], &pair[1]);
            let link = if cert.tbs_certificate.issuer != issuer.tbs_certificate.subject {
                Err(format!("its issuer is {}", cert.tbs_certificate.issuer))
            } else {
                verify::signed_by(cert, issuer)
            };
            link.map_err(|reason| ChainError::BrokenLink {
                origin: origin.to_string(),
                index: i,
                subject: cert.tbs_certificate.subject.to_string(),
                next: i + 1,
                next_subject: issuer.tbs_certificate.subject.to_string(),
                reason,
            })?;
        }
        let x5c = certs
            .iter()
            .map(|c| c.to_der().map(|d| B64STD.encode(d)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ChainError::Parse {
                origin: origin.to_string(),
                reason: e.to_string(),
            })?;
        let validity = &leaf.tbs_certificate.validity;
        Ok(Self {
            not_before: validity.not_before.to_system_time(),
            not_after: validity.not_after.to_system_time(),
            subject: leaf.tbs_certificate.subject.to_string(),
            x5c,
            certs,
            pem,
        })
    }

    /// The chain as `x5c`: standard base64 DER, node certificate first.
    pub fn x5c(&self) -> Vec<String> {
        self.x5c.clone()
    }

    /// The chain as read (PEM).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The parsed certificates, node certificate first.
    pub fn certificates(&self) -> &[Certificate] {
        &self.certs
    }

    /// Start of the node certificate's validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of the node certificate's validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// `not_before` in seconds since the epoch.
    pub fn not_before_unix(&self) -> u64 {
        unix(self.not_before)
    }

    /// `not_after` in seconds since the epoch.
    pub fn not_after_unix(&self) -> u64 {
        unix(self.not_after)
    }

    /// The node certificate's subject (RFC 4514).
    pub fn subject(&self) -> String {
        self.subject.clone()
    }

    /// Whether the node certificate has expired (or is not valid yet) at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }

    /// The share of the node certificate's lifetime left at `now`, in 0..=1
    /// (0 once expired; 1 before it starts).
    pub fn remaining_fraction(&self, now: SystemTime) -> f64 {
        let total = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        if total.is_zero() {
            return 0.0;
        }
        if now < self.not_before {
            return 1.0;
        }
        let left = self.not_after.duration_since(now).unwrap_or(Duration::ZERO);
        (left.as_secs_f64() / total.as_secs_f64()).clamp(0.0, 1.0)
    }

    /// Writes this chain to `<state_dir>/chain.pem` atomically.
    pub fn write(&self, state_dir: &Path) -> Result<(), ChainError> {
        write(state_dir, &self.pem)
    }
}

/// Writes a PEM chain to `<state_dir>/chain.pem` atomically (mode 0644: it is
/// public). Callers check it with [`Chain::from_pem`] first.
pub fn write(state_dir: &Path, pem: &str) -> Result<(), ChainError> {
    state::ensure_dir(state_dir)?;
    state::write_atomic(&state_dir.join(CHAIN_FILE), pem.as_bytes(), 0o644)?;
    Ok(())
}

/// The certificates of a PEM chain, each block decoded to DER before it is
/// parsed. Not x509-cert 0.2's `Certificate::load_pem_chain`: it underflows
/// on a blank file, and der 0.7's streaming PEM reader behind it spins
/// forever on a block whose body is shorter than its DER header says
/// (both found by fuzzing).
pub fn load_pem_chain(pem: &str) -> Result<Vec<Certificate>, String> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut certs = Vec::new();
    let mut rest = pem.trim();
    while !rest.is_empty() {
        let end = rest
            .find(END)
            .ok_or_else(|| format!("no {END} line after certificate {}", certs.len() + 1))?
            + END.len();
        let (label, der) = x509_cert::der::pem::decode_vec(&rest.as_bytes()[..end])
            .map_err(|e| format!("certificate {}: {e}", certs.len() + 1))?;
        if label != "CERTIFICATE" {
            return Err(format!(
                "certificate {}: a PEM block labelled {label}",
                certs.len() + 1
            ));
        }
        certs.push(
            Certificate::from_der(&der)
                .map_err(|e| format!("certificate {}: {e}", certs.len() + 1))?,
        );
        rest = rest[end..].trim_start();
    }
    Ok(certs)
}

/// Whether `cert`'s subject public key is the node key (compared as points,
/// so encoding details of the algorithm parameters do not matter).
fn holds_key(cert: &Certificate, node_key: &NodePublicKey) -> bool {
    let spki = &cert.tbs_certificate.subject_public_key_info;
    if spki.algorithm.oid != EC_PUBLIC_KEY {
        return false;
    }
    spki.subject_public_key
        .as_bytes()
        .and_then(|b| p256::PublicKey::from_sec1_bytes(b).ok())
        .is_some_and(|k| &k == node_key.key())
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> NodePublicKey {
        NodePublicKey::new(
            p256::SecretKey::from_slice(&[7; 32])
                .expect("a valid scalar")
                .public_key(),
        )
    }

    #[test]
    fn empty_chain_is_too_short() {
        // Found by fuzzing: only line breaks underflowed inside x509-cert.
        let key = key();
        for pem in ["", "\n", "\r\n\r\n", " \n"] {
            match Chain::from_pem(pem, &key) {
                Err(ChainError::TooShort { count: 0, .. }) => {}
                other => panic!("{pem:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn truncated_certificate_is_an_error_not_a_hang() {
        // Found by fuzzing: one byte of DER (`aQ==`) where the header asks
        // for more sent der 0.7's streaming PEM reader into an endless loop.
        let block = "-----BEGIN CERTIFICATE-----\naQ==\n-----END CERTIFICATE-----\n";
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = Chain::from_pem(&format!("{block}{block}"), &key()).map(|_| ());
            let _ = tx.send(r);
        });
        match rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(Err(ChainError::Parse { .. })) => {}
            Ok(other) => panic!("{other:?}"),
            Err(_) => panic!("Chain::from_pem did not return within 10 s"),
        }
    }

    #[test]
    fn blocks_other_than_certificates_are_refused() {
        let pem =
            "-----BEGIN PUBLIC KEY-----\naQ==\n-----END PUBLIC KEY-----\n-----END CERTIFICATE-----";
        assert!(matches!(
            Chain::from_pem(pem, &key()),
            Err(ChainError::Parse { .. })
        ));
    }
}
