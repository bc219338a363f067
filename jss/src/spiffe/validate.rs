//! JWT-SVID validation (SPIFFE JWT-SVID specification, sections 2 and 3):
//! header exactly `alg`/`kid`/`typ`, `kid` in the trust domain's bundle, a
//! valid signature, `exp` in the future, the audience in `aud`, and `sub`
//! a SPIFFE ID of the trust domain.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::bundle::Bundle;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidateError {
    #[error("the JWT-SVID is not a compact JWS with a JSON header: {0}")]
    Malformed(String),
    #[error("the JWT-SVID header has {0:?}; only alg, kid and typ are allowed")]
    ExtraHeader(String),
    #[error("the JWT-SVID header has no kid")]
    NoKid,
    #[error("alg {0:?} is not one of RS/ES/PS 256/384/512")]
    BadAlg(String),
    #[error("kid {0:?} is not in the trust domain's bundle")]
    UnknownKid(String),
    #[error("the JWT-SVID does not verify: {0}")]
    Invalid(String),
    #[error("sub {sub:?} is not a SPIFFE ID of trust domain {trust_domain}")]
    ForeignSub { sub: String, trust_domain: String },
}

impl ValidateError {
    /// An unknown `kid` may be a node registered since the last refresh.
    pub fn is_unknown_kid(&self) -> bool {
        matches!(self, Self::UnknownKid(_))
    }
}

/// The parts of a validated JWT-SVID.
#[derive(Debug)]
pub struct Validated {
    pub spiffe_id: String,
    pub claims: Map<String, Value>,
}

/// Validates `svid` for `audience` against `bundle` of `trust_domain`
/// (e.g. `example.org`). No leeway on `exp`.
pub fn validate(
    svid: &str,
    audience: &str,
    bundle: &Bundle,
    trust_domain: &str,
) -> Result<Validated, ValidateError> {
    let header_b64 = svid
        .split('.')
        .next()
        .filter(|_| svid.split('.').count() == 3)
        .ok_or_else(|| ValidateError::Malformed("expected three '.'-separated parts".into()))?;
    let header: Map<String, Value> = B64
        .decode(header_b64)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| ValidateError::Malformed("header is not base64url JSON".into()))?;
    if let Some(k) = header
        .keys()
        .find(|k| !matches!(k.as_str(), "alg" | "kid" | "typ"))
    {
        return Err(ValidateError::ExtraHeader(k.clone()));
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .ok_or(ValidateError::NoKid)?;
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let alg = match alg_name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        other => return Err(ValidateError::BadAlg(other.to_string())),
    };
    let jwk = bundle
        .key(kid)
        .ok_or_else(|| ValidateError::UnknownKid(kid.to_string()))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| ValidateError::Invalid(e.to_string()))?;
    let mut v = Validation::new(alg);
    v.leeway = 0;
    v.set_required_spec_claims(&["exp", "aud", "sub"]);
    v.set_audience(&[audience]);
    let data = jsonwebtoken::decode::<Map<String, Value>>(svid, &key, &v)
        .map_err(|e| ValidateError::Invalid(e.to_string()))?;
    let sub = data
        .claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let prefix = format!("spiffe://{trust_domain}/");
    if !sub.starts_with(&prefix) || sub.len() == prefix.len() {
        return Err(ValidateError::ForeignSub {
            sub: sub.to_string(),
            trust_domain: trust_domain.to_string(),
        });
    }
    Ok(Validated {
        spiffe_id: sub.to_string(),
        claims: data.claims,
    })
}
