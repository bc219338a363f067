//! The PKI root: find or create it, and have it sign node CA certificates.

use reqwest::Method;
use serde_json::{Value, json};
use vaultrs::pki;

use crate::vault::{Vault, VaultError};

/// Key usages of a node CA certificate (docs/design.md, "Trust chain").
pub const NODE_KEY_USAGE: &str = "DigitalSignature,CertSign,CRLSign";

/// The root CA certificate (PEM) of `mount`, or `None` if it has none yet.
pub async fn root_ca(v: &Vault, mount: &str) -> Result<Option<String>, VaultError> {
    let what = format!("read the root CA of {mount}/");
    let path = format!("{mount}/cert/ca");
    let r = v
        .call(&what, &path, || pki::cert::read(v.client(), mount, "ca"))
        .await;
    match r {
        Ok(c) if !c.certificate.trim().is_empty() => Ok(Some(c.certificate)),
        Ok(_) => Ok(None),
        // No issuer yet: Vault answers 400/404 or an empty data field.
        Err(VaultError::Api {
            code: 400 | 404, ..
        }) => Ok(None),
        Err(VaultError::Answer { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Generates an internal P-256 root CA in `mount`.
pub async fn generate_root(
    v: &Vault,
    mount: &str,
    common_name: &str,
    ttl: &str,
) -> Result<String, VaultError> {
    let what = format!("generate a root CA in {mount}/");
    let path = format!("{mount}/root/generate/internal");
    let r = v
        .call(&what, &path, || async {
            pki::cert::ca::generate(
                v.client(),
                mount,
                "internal",
                Some(
                    vaultrs::api::pki::requests::GenerateRootRequest::builder()
                        .common_name(common_name)
                        .key_type("ec")
                        .key_bits(256u64)
                        .ttl(ttl),
                ),
            )
            .await
        })
        .await?;
    r.map(|g| g.certificate).ok_or_else(|| VaultError::Answer {
        what,
        detail: "no certificate in the answer".into(),
    })
}

/// Has the root sign a node CSR as an intermediate CA (pathlen 0) and
/// returns the chain: node certificate, then its issuers (PEM).
///
/// Raw call: vaultrs has no `key_usage` on this endpoint.
pub async fn sign_node(
    v: &Vault,
    mount: &str,
    csr_pem: &str,
    common_name: &str,
    ttl: &str,
) -> Result<String, VaultError> {
    let path = format!("{mount}/root/sign-intermediate");
    let what = format!("sign the node CSR at {path}");
    let body = json!({
        "csr": csr_pem,
        "common_name": common_name,
        "use_csr_values": true,
        "max_path_length": 0,
        "key_usage": NODE_KEY_USAGE,
        "ttl": ttl,
        "format": "pem",
    });
    let answer = v
        .raw(&what, Method::POST, &path, Some(&body))
        .await?
        .unwrap_or_default();
    let data = answer.get("data").cloned().unwrap_or_default();
    let cert = data
        .get("certificate")
        .and_then(Value::as_str)
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| VaultError::Answer {
            what: what.clone(),
            detail: "no certificate in the answer".into(),
        })?;
    let mut parts = vec![cert.trim().to_string()];
    let issuers: Vec<String> = match data.get("ca_chain") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(|s| s.trim().to_string())
            .collect(),
        _ => data
            .get("issuing_ca")
            .and_then(Value::as_str)
            .map(|s| vec![s.trim().to_string()])
            .unwrap_or_default(),
    };
    for c in issuers {
        if !c.is_empty() && !parts.contains(&c) {
            parts.push(c);
        }
    }
    Ok(parts.join("\n") + "\n")
}
