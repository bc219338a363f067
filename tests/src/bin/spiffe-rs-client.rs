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

use anyhow::{Context as _, bail};
use serde_json::json;
use spiffe::{JwtSvid, TrustDomain, WorkloadApiClient, WorkloadApiError};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cmd, audience] = args.as_slice() else {
        bail!("usage: spiffe-rs-client fetch AUDIENCE");
    };
    if cmd != "fetch" {
        bail!("unknown command {cmd:?}; usage: spiffe-rs-client fetch AUDIENCE");
    }
    let client = WorkloadApiClient::connect_env()
        .await
        .context("connect to SPIFFE_ENDPOINT_SOCKET")?;
    let svid = match client.fetch_jwt_svid([audience.as_str()], None).await {
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
    let local = JwtSvid::parse_and_validate(svid.token(), &bundles, &[audience.as_str()])
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
