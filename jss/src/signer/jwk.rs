//! The node's public key as JWK, SPKI PEM and RFC 7638 thumbprint.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use p256::pkcs8::EncodePublicKey as _;
use sha2::{Digest as _, Sha256};

/// A public JWK for an ES256 key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub y: String,
    pub kid: String,
    #[serde(rename = "use")]
    pub use_: String,
    pub alg: String,
}

/// The node's public key with its derived identifiers, computed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePublicKey {
    key: p256::PublicKey,
    pub kid: String,
    x: String,
    y: String,
}

impl NodePublicKey {
    pub fn new(key: p256::PublicKey) -> Self {
        let point = p256::EncodedPoint::from(key);
        // An uncompressed point of a valid public key always has both coordinates.
        let x = B64.encode(point.x().map(|c| &c[..]).unwrap_or_default());
        let y = B64.encode(point.y().map(|c| &c[..]).unwrap_or_default());
        let kid = thumbprint(&[("crv", "P-256"), ("kty", "EC"), ("x", &x), ("y", &y)]);
        Self { key, kid, x, y }
    }

    /// From big-endian affine coordinates (as a TPM reports them).
    pub fn from_coordinates(x: &[u8], y: &[u8]) -> Result<Self, String> {
        if x.len() > 32 || y.len() > 32 {
            return Err("coordinate longer than 32 bytes".into());
        }
        let mut sec1 = [0u8; 65];
        sec1[0] = 4;
        sec1[1 + 32 - x.len()..33].copy_from_slice(x);
        sec1[33 + 32 - y.len()..].copy_from_slice(y);
        p256::PublicKey::from_sec1_bytes(&sec1)
            .map(Self::new)
            .map_err(|_| "point is not on P-256".into())
    }

    pub fn key(&self) -> &p256::PublicKey {
        &self.key
    }

    pub fn jwk(&self) -> Jwk {
        Jwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: self.x.clone(),
            y: self.y.clone(),
            kid: self.kid.clone(),
            use_: "sig".into(),
            alg: "ES256".into(),
        }
    }

    /// SubjectPublicKeyInfo PEM, the form Vault's `jwt_validation_pubkeys` takes.
    pub fn spki_pem(&self) -> String {
        self.key
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap_or_default()
    }

    pub fn spki_der(&self) -> Vec<u8> {
        self.key
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default()
    }
}

/// RFC 7638 thumbprint: SHA-256 over the required members, sorted, in
/// compact JSON, base64url without padding. Member values must be JSON-safe
/// strings (base64url and curve names are).
pub fn thumbprint(members: &[(&str, &str)]) -> String {
    let mut sorted = members.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let body = sorted
        .iter()
        .map(|(k, v)| format!("\"{k}\":\"{v}\""))
        .collect::<Vec<_>>()
        .join(",");
    B64.encode(Sha256::digest(format!("{{{body}}}").as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7638 section 3.1: the published RSA example and its thumbprint.
    #[test]
    fn rfc7638_test_vector() {
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        assert_eq!(
            thumbprint(&[("e", "AQAB"), ("kty", "RSA"), ("n", n)]),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn ec_kid_is_thumbprint_of_sorted_members() {
        let sk = p256::SecretKey::random(&mut rand_core::OsRng);
        let k = NodePublicKey::new(sk.public_key());
        let jwk = k.jwk();
        let canon = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk.x, jwk.y
        );
        assert_eq!(k.kid, B64.encode(Sha256::digest(canon.as_bytes())));
        let point = p256::EncodedPoint::from(sk.public_key());
        let again =
            NodePublicKey::from_coordinates(point.x().unwrap(), point.y().unwrap()).unwrap();
        assert_eq!(again, k);
    }
}
