//! On-disk form of the TPM-wrapped node key.
//!
//! JSON with the parent's TPM name (to tell "another TPM" from "corrupt"), the
//! marshalled public area, the TPM-encrypted private area and a SHA-256 over
//! all three. The private area is useless outside the TPM that wrapped it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest as _, Sha256};
use tss_esapi::structures::{Private, Public};

pub(super) struct KeyBlob {
    pub parent_name: Vec<u8>,
    pub public: Public,
    pub private: Private,
}

const FORMAT: &str = "jss-tpm-key/1";

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: String,
    parent_name: String,
    public: String,
    private: String,
    sha256: String,
}

fn checksum(parent: &[u8], public: &[u8], private: &[u8]) -> String {
    let mut h = Sha256::new();
    for part in [parent, public, private] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part);
    }
    hex::encode(h.finalize())
}

pub(super) fn encode(parent: &[u8], public: &[u8], private: &[u8]) -> Vec<u8> {
    let f = File {
        format: FORMAT.into(),
        parent_name: hex::encode(parent),
        public: B64.encode(public),
        private: B64.encode(private),
        sha256: checksum(parent, public, private),
    };
    let mut out = serde_json::to_vec_pretty(&f).unwrap_or_default();
    out.push(b'\n');
    out
}

pub(super) type Parts = (Vec<u8>, Vec<u8>, Vec<u8>);

pub(super) fn decode(bytes: &[u8]) -> Result<Parts, String> {
    let f: File = serde_json::from_slice(bytes).map_err(|e| format!("not a JSS key blob: {e}"))?;
    if f.format != FORMAT {
        return Err(format!(
            "unknown format {:?}, expected {FORMAT:?}",
            f.format
        ));
    }
    let parent = hex::decode(&f.parent_name).map_err(|e| format!("parent_name: {e}"))?;
    let public = B64.decode(&f.public).map_err(|e| format!("public: {e}"))?;
    let private = B64
        .decode(&f.private)
        .map_err(|e| format!("private: {e}"))?;
    if checksum(&parent, &public, &private) != f.sha256 {
        return Err("checksum mismatch".into());
    }
    Ok((parent, public, private))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_checksum() {
        let enc = encode(b"parent", b"pub", b"priv");
        assert_eq!(
            decode(&enc).unwrap(),
            (b"parent".to_vec(), b"pub".to_vec(), b"priv".to_vec())
        );
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
}
