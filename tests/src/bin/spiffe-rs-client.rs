//! The Rust `spiffe` crate's Workload API client, run by the tests as a pod
//! process: finds the socket through `SPIFFE_ENDPOINT_SOCKET`, as every
//! SPIFFE client does, and prints one JSON line.
//!
//! `spiffe-rs-client fetch AUDIENCE`: fetches a JWT-SVID and the bundles,
//! validates the SVID locally with the library (for AUDIENCE, and for
//! another audience, which must fail) and through ValidateJWTSVID.
//! `{"code": "OK", "spiffe_id", "kid", "bundle_kids", "local_sub",
//! "local_other_audience", "remote_sub"}`, or `{"code":
//! "PERMISSION_DENIED", "details"}` when the fetch is refused so.
//!
//! `spiffe-rs-client validate AUDIENCE TOKEN`: ValidateJWTSVID only:
//! `{"code": "OK", "sub"}`, or `{"code": "INVALID_ARGUMENT" or "ERROR",
//! "details"}` when refused.
//!
//! `spiffe-rs-client watch N`: the first N FetchJWTBundles messages, one
//! line each: `{"message", "bundle_kids", "jwks"}`, `jwks` the trust
//! domain's bundle as the library holds it (`{"keys":[…]}`).
//!
//! `spiffe-rs-client validate-local AUDIENCE TOKEN TRUST_DOMAIN JWKS`:
//! validates TOKEN with the library against the bundle JWKS of
//! TRUST_DOMAIN: `{"code": "OK", "sub", "kid"}` or `{"code": "INVALID",
//! "error"}`.

use anyhow::{Context as _, bail};
use serde_json::json;
use spiffe::{JwtBundle, JwtBundleSet, JwtSvid, TrustDomain, WorkloadApiClient, WorkloadApiError};
use tokio_stream::StreamExt as _;

const USAGE: &str = "usage: spiffe-rs-client fetch AUDIENCE | validate AUDIENCE TOKEN | watch N | validate-local AUDIENCE TOKEN TRUST_DOMAIN JWKS";

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["fetch", audience] => fetch(audience).await,
        ["validate", audience, token] => validate(audience, token).await,
        ["watch", n] => watch(n.parse().context("N must be a count")?).await,
        ["validate-local", audience, token, td, jwks] => validate_local(audience, token, td, jwks),
        _ => bail!("{USAGE}"),
    }
}

async fn fetch(audience: &str) -> anyhow::Result<()> {
    let client = WorkloadApiClient::connect_env()
        .await
        .context("connect to SPIFFE_ENDPOINT_SOCKET")?;
    let svid = match client.fetch_jwt_svid([audience], None).await {
        Ok(s) => s,
        Err(WorkloadApiError::PermissionDenied(details)) => {
            println!(
                "{}",
                json!({"code": "PERMISSION_DENIED", "details": details})
            );
            return Ok(());
        }
        Err(e) => return Err(e).context("FetchJWTSVID"),
    };
    let bundles = client
        .fetch_jwt_bundles()
        .await
        .context("FetchJWTBundles")?;
    let td = TrustDomain::new(svid.spiffe_id().trust_domain_name())
        .context("the SVID's trust domain")?;
    let bundle_kids: Vec<String> = bundles
        .get(&td)
        .map(|b| {
            b.jwt_authorities()
                .map(|a| a.key_id().to_string())
                .collect()
        })
        .unwrap_or_default();
    let local = JwtSvid::parse_and_validate(svid.token(), &bundles, &[audience])
        .context("validate the JWT-SVID locally against the bundles")?;
    let other = JwtSvid::parse_and_validate(svid.token(), &bundles, &["not-the-audience"])
        .err()
        .map(|e| e.to_string());
    let remote = client
        .validate_jwt_token(audience, svid.token())
        .await
        .context("ValidateJWTSVID")?;
    println!(
        "{}",
        json!({
            "code": "OK",
            "spiffe_id": svid.spiffe_id().to_string(),
            "kid": svid.key_id(),
            "bundle_kids": bundle_kids,
            "local_sub": local.claims().sub(),
            "local_other_audience": other,
            "remote_sub": remote.claims().sub(),
            "token": svid.token(),
        })
    );
    Ok(())
}

async fn validate(audience: &str, token: &str) -> anyhow::Result<()> {
    let client = WorkloadApiClient::connect_env()
        .await
        .context("connect to SPIFFE_ENDPOINT_SOCKET")?;
    match client.validate_jwt_token(audience, token).await {
        Ok(svid) => println!("{}", json!({"code": "OK", "sub": svid.claims().sub()})),
        Err(e) => {
            let code = if e.is_invalid_argument() {
                "INVALID_ARGUMENT"
            } else {
                "ERROR"
            };
            println!("{}", json!({"code": code, "details": format!("{e:?}")}));
        }
    }
    Ok(())
}

async fn watch(n: usize) -> anyhow::Result<()> {
    let client = WorkloadApiClient::connect_env()
        .await
        .context("connect to SPIFFE_ENDPOINT_SOCKET")?;
    let stream = client
        .stream_jwt_bundles()
        .await
        .context("FetchJWTBundles")?;
    let mut stream = std::pin::pin!(stream);
    for i in 0..n {
        let set = stream
            .next()
            .await
            .context("the FetchJWTBundles stream ended")?
            .context("a FetchJWTBundles message")?;
        for (_, bundle) in set.iter() {
            let mut kids: Vec<&str> = bundle.jwt_authorities().map(|a| a.key_id()).collect();
            kids.sort();
            let keys = bundle
                .jwt_authorities()
                .map(|a| serde_json::from_slice(a.jwk_json()))
                .collect::<Result<Vec<serde_json::Value>, _>>()
                .context("a JWK the library holds")?;
            println!(
                "{}",
                json!({"message": i, "bundle_kids": kids, "jwks": {"keys": keys}})
            );
        }
    }
    Ok(())
}

fn validate_local(audience: &str, token: &str, td: &str, jwks: &str) -> anyhow::Result<()> {
    let td = TrustDomain::new(td).context("TRUST_DOMAIN")?;
    let bundle = JwtBundle::from_jwt_authorities(td, jwks.as_bytes()).context("JWKS")?;
    let bundles: JwtBundleSet = std::iter::once(bundle).collect();
    match JwtSvid::parse_and_validate(token, &bundles, &[audience]) {
        Ok(svid) => println!(
            "{}",
            json!({"code": "OK", "sub": svid.claims().sub(), "kid": svid.key_id()})
        ),
        Err(e) => println!("{}", json!({"code": "INVALID", "error": e.to_string()})),
    }
    Ok(())
}
