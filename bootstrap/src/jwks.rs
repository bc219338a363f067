//! Reading the cluster's JWKS where Vault reads it (`jwks_url`, verified
//! with `jwks_ca_pem`), to wait until a registry change is served.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("the mount's jwks_ca_pem is not a PEM certificate: {0}")]
    BadCa(String),
    #[error("cannot set up the HTTPS client for {url}: {detail}")]
    Setup { url: String, detail: String },
    #[error(
        "the JWKS at {url} did not {goal} within {waited:?} (last: {last}); check that `jss-bootstrap discovery serve` runs and reads this cluster's registry"
    )]
    Timeout {
        url: String,
        goal: String,
        waited: Duration,
        last: String,
    },
}

/// An HTTPS client for `url` trusting `ca_pem` (PEM) when given, else the
/// system roots.
pub fn client(url: &str, ca_pem: Option<&str>) -> Result<reqwest::Client, JwksError> {
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(5));
    if let Some(pem) = ca_pem.filter(|p| !p.trim().is_empty()) {
        let ca = reqwest::Certificate::from_pem(pem.as_bytes())
            .map_err(|e| JwksError::BadCa(e.to_string()))?;
        b = b.add_root_certificate(ca);
    }
    b.build().map_err(|e| JwksError::Setup {
        url: url.into(),
        detail: e.to_string(),
    })
}

/// The kids in the JWKS at `url`, or why it could not be read.
pub async fn kids(http: &reqwest::Client, url: &str) -> Result<BTreeSet<String>, String> {
    let resp = http.get(url).send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    let text = resp.text().await.map_err(|e| e.to_string())?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    Ok(doc
        .get("keys")
        .and_then(Value::as_array)
        .map(|ks| {
            ks.iter()
                .filter_map(|k| k.get("kid").and_then(Value::as_str))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default())
}

/// Polls the JWKS until `done(kids)` holds; `goal` names it for the error.
pub async fn wait_until(
    url: &str,
    ca_pem: Option<&str>,
    goal: &str,
    wait: Duration,
    done: impl Fn(&BTreeSet<String>) -> bool,
) -> Result<(), JwksError> {
    let http = client(url, ca_pem)?;
    let start = Instant::now();
    loop {
        let last = match kids(&http, url).await {
            Ok(k) if done(&k) => return Ok(()),
            Ok(k) => format!("{} keys, not yet", k.len()),
            Err(e) => e,
        };
        if start.elapsed() >= wait {
            return Err(JwksError::Timeout {
                url: url.into(),
                goal: goal.into(),
                waited: wait,
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
