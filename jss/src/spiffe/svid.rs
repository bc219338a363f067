//! JWT-SVID claims: JSS's claims with `sub` the SPIFFE ID.
//!
//! The JWT-SVID specification allows extra claims, so the workload claims
//! stay (Vault policies template on them); JSS's own `sub` moves to
//! `jss-sub`, the per-claim-set name a Vault role uses as `user_claim` so
//! two images of one service account never share an entity (README.md,
//! "Using JSS from SPIFFE clients").

use serde::Serialize;

use crate::claims::Claims;

/// The claim that carries JSS's own `sub` in a JWT-SVID.
pub const JSS_SUB_CLAIM: &str = "jss-sub";

/// The payload of a JWT-SVID.
#[derive(Debug, Serialize)]
pub struct SvidClaims<'a> {
    #[serde(flatten)]
    pub claims: Claims<'a>,
    #[serde(rename = "jss-sub")]
    pub jss_sub: String,
}

impl<'a> SvidClaims<'a> {
    /// `claims` with `sub` replaced by `spiffe_id`, the old `sub` kept as `jss-sub`.
    pub fn new(mut claims: Claims<'a>, spiffe_id: String) -> Self {
        let jss_sub = std::mem::replace(&mut claims.sub, spiffe_id);
        Self { claims, jss_sub }
    }
}
