//! Compact JWS (ES256) encoding and decoding.
//!
//! The header is fixed for a given key and chain, so it is serialised and
//! base64url-encoded once; each token costs one claims serialisation and one
//! signature.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Serialize;

use crate::signer::{Signer, SignerError};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot serialise token {what}: {source}")]
    Serialize {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("signing the token failed: {0}")]
    Sign(#[from] SignerError),
    #[error("malformed token: {0}")]
    Malformed(String),
}

/// The JOSE header of every token (docs/design.md, "Token format").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Header {
    pub alg: String,
    pub typ: String,
    pub kid: String,
    /// Standard base64 DER certificates, node certificate first, then the root.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub x5c: Option<Vec<String>>,
}

/// Encodes tokens for one key and chain.
#[derive(Debug, Clone)]
pub struct TokenEncoder {
    header: Header,
    header_b64: String,
}

impl TokenEncoder {
    /// `x5c`: the chain as standard-base64 DER certificates, leaf first.
    pub fn new(kid: &str, x5c: Option<Vec<String>>) -> Result<Self, TokenError> {
        let header = Header {
            alg: "ES256".into(),
            typ: "JWT".into(),
            kid: kid.into(),
            x5c,
        };
        let json = serde_json::to_vec(&header).map_err(|source| TokenError::Serialize {
            what: "header",
            source,
        })?;
        Ok(Self {
            header_b64: B64.encode(json),
            header,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The signing input `base64url(header).base64url(claims)`.
    pub fn signing_input<C: Serialize>(&self, claims: &C) -> Result<String, TokenError> {
        // Claims run to ~700 bytes: one buffer, no regrowth.
        let mut json = Vec::with_capacity(1024);
        serde_json::to_writer(&mut json, claims).map_err(|source| TokenError::Serialize {
            what: "claims",
            source,
        })?;
        let mut out =
            String::with_capacity(self.header_b64.len() + 1 + json.len() * 4 / 3 + 4 + 90);
        out.push_str(&self.header_b64);
        out.push('.');
        B64.encode_string(json, &mut out);
        Ok(out)
    }

    /// Appends the signature to a signing input, completing the token.
    pub fn finish(mut signing_input: String, signature: &[u8; 64]) -> String {
        signing_input.push('.');
        B64.encode_string(signature, &mut signing_input);
        signing_input
    }

    /// Serialises, signs (blocking) and returns the compact token.
    pub fn encode<C: Serialize>(
        &self,
        signer: &dyn Signer,
        claims: &C,
    ) -> Result<String, TokenError> {
        let input = self.signing_input(claims)?;
        let sig = signer.sign(input.as_bytes())?;
        Ok(Self::finish(input, &sig))
    }
}

/// Splits a compact token into its decoded header and claims, without
/// verifying it (for display; verifiers use the public key).
pub fn decode_unverified(token: &str) -> Result<(Header, serde_json::Value), TokenError> {
    let mut parts = token.trim().split('.');
    let (Some(h), Some(c), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "expected three dot-separated parts".into(),
        ));
    };
    let dec = |s: &str, what: &str| {
        B64.decode(s)
            .map_err(|e| TokenError::Malformed(format!("{what} is not base64url: {e}")))
    };
    let header = serde_json::from_slice(&dec(h, "header")?)
        .map_err(|e| TokenError::Malformed(format!("header: {e}")))?;
    let claims = serde_json::from_slice(&dec(c, "claims")?)
        .map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
    Ok((header, claims))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::SoftwareSigner;

    #[test]
    fn header_has_x5c_only_when_present() {
        let e = TokenEncoder::new("k1", None).unwrap();
        let h: serde_json::Value =
            serde_json::from_slice(&B64.decode(&e.header_b64).unwrap()).unwrap();
        assert_eq!(h, serde_json::json!({"alg":"ES256","typ":"JWT","kid":"k1"}));
        let e = TokenEncoder::new("k1", Some(vec!["AAA=".into()])).unwrap();
        assert_eq!(e.header().x5c.as_deref(), Some(&["AAA=".to_string()][..]));
    }

    #[test]
    fn encode_then_decode() {
        let dir = tempfile::tempdir().unwrap();
        let s = SoftwareSigner::open(&dir.path().join("k.pem")).unwrap();
        let e = TokenEncoder::new(s.kid(), None).unwrap();
        let t = e.encode(&s, &serde_json::json!({"sub":"x"})).unwrap();
        let (h, c) = decode_unverified(&t).unwrap();
        assert_eq!(h.kid, s.kid());
        assert_eq!(c["sub"], "x");
        assert!(decode_unverified("a.b").is_err());
        assert!(decode_unverified("a.b.c.d").is_err());
    }
}
