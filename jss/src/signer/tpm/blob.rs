//! On-disk form of the TPM-wrapped node key.
//!
//! JSON with the parent's TPM name (to tell "another TPM" from "corrupt"), the
//! marshalled public area, the TPM-encrypted private area and a SHA-256 over
//! all of it. The private area is useless outside the TPM that wrapped it.
//! A PCR-bound key (format `/2`) also records its PCR selection and policy
//! digest; the TPM enforces them (the digest is inside the public area), the
//! copy here is for the operator and for the policy session's selection.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest as _, Sha256};
use tss_esapi::structures::{Private, Public};

use crate::signer::PcrSelection;

pub(super) struct KeyBlob {
    pub parent_name: Vec<u8>,
    pub public: Public,
    pub private: Private,
    /// Empty for a key that is not bound to PCRs.
    pub pcrs: PcrSelection,
    pub policy_digest: Vec<u8>,
}

const FORMAT: &str = "jss-tpm-key/1";
const FORMAT_PCR: &str = "jss-tpm-key/2";

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: String,
    parent_name: String,
    public: String,
    private: String,
    #[serde(default, skip_serializing_if = "PcrSelection::is_empty")]
    pcrs: PcrSelection,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    policy_digest: String,
    sha256: String,
}

/// The blob's contents, undecoded.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Parts {
    pub parent: Vec<u8>,
    pub public: Vec<u8>,
    pub private: Vec<u8>,
    pub pcrs: PcrSelection,
    pub policy_digest: Vec<u8>,
}

fn checksum(p: &Parts) -> String {
    let mut h = Sha256::new();
    let mut parts = vec![&p.parent[..], &p.public[..], &p.private[..]];
    if !p.pcrs.is_empty() {
        parts.extend([p.pcrs.indices(), &p.policy_digest[..]]);
    }
    for part in parts {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part);
    }
    hex::encode(h.finalize())
}

pub(super) fn encode(p: &Parts) -> Vec<u8> {
    let f = File {
        format: if p.pcrs.is_empty() {
            FORMAT
        } else {
            FORMAT_PCR
        }
        .into(),
        parent_name: hex::encode(&p.parent),
        public: B64.encode(&p.public),
        private: B64.encode(&p.private),
        pcrs: p.pcrs.clone(),
        policy_digest: hex::encode(&p.policy_digest),
        sha256: checksum(p),
    };
    let mut out = serde_json::to_vec_pretty(&f).unwrap_or_default();
    out.push(b'\n');
    out
}

pub(super) fn decode(bytes: &[u8]) -> Result<Parts, String> {
    let f: File = serde_json::from_slice(bytes).map_err(|e| format!("not a JSS key blob: {e}"))?;
    let bound = match f.format.as_str() {
        FORMAT => false,
        FORMAT_PCR => true,
        other => {
            return Err(format!(
                "unknown format {other:?}, expected {FORMAT:?} or {FORMAT_PCR:?}"
            ));
        }
    };
    if bound == f.pcrs.is_empty() || bound == f.policy_digest.is_empty() {
        return Err(format!(
            "format {:?} with {} PCR selection and policy digest",
            f.format,
            if bound { "no" } else { "a" }
        ));
    }
    let parts = Parts {
        parent: hex::decode(&f.parent_name).map_err(|e| format!("parent_name: {e}"))?,
        public: B64.decode(&f.public).map_err(|e| format!("public: {e}"))?,
        private: B64
            .decode(&f.private)
            .map_err(|e| format!("private: {e}"))?,
        pcrs: f.pcrs,
        policy_digest: hex::decode(&f.policy_digest).map_err(|e| format!("policy_digest: {e}"))?,
    };
    if checksum(&parts) != f.sha256 {
        return Err("checksum mismatch".into());
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(pcrs: &str, digest: &[u8]) -> Parts {
        Parts {
            parent: b"parent".to_vec(),
            public: b"pub".to_vec(),
            private: b"priv".to_vec(),
            pcrs: pcrs.parse().unwrap(),
            policy_digest: digest.to_vec(),
        }
    }

    #[test]
    fn roundtrip_and_checksum() {
        let enc = encode(&parts("none", b""));
        assert!(String::from_utf8_lossy(&enc).contains("jss-tpm-key/1"));
        assert_eq!(decode(&enc).unwrap(), parts("none", b""));
        let tampered = String::from_utf8(enc)
            .unwrap()
            .replace(&B64.encode(b"priv"), &B64.encode(b"prix"));
        assert_eq!(
            decode(tampered.as_bytes()).unwrap_err(),
            "checksum mismatch"
        );
        assert!(
            decode(b"\x00garbage")
                .unwrap_err()
                .starts_with("not a JSS key blob")
        );
    }

    #[test]
    fn a_bound_key_records_and_protects_its_selection() {
        let enc = encode(&parts("0,7", b"\x01\x02"));
        let text = String::from_utf8(enc).unwrap();
        assert!(text.contains("jss-tpm-key/2"), "{text}");
        assert_eq!(decode(text.as_bytes()).unwrap(), parts("0,7", b"\x01\x02"));
        // Dropping PCR 0 from the record is caught, as is losing the binding.
        let fewer = text.replace("0,\n", "").replace("    0,\n", "");
        let fewer = fewer.replacen("[\n    0,", "[", 1);
        assert!(decode(fewer.as_bytes()).is_err(), "{fewer}");
        let unbound = text.replace("jss-tpm-key/2", "jss-tpm-key/1");
        assert!(decode(unbound.as_bytes()).is_err());
    }
}
