//! `admission.k8s.io/v1` `AdmissionReview`: the request fields the injector
//! needs (unknown fields are ignored) and the response it sends back.
//! Format: Kubernetes "Dynamic Admission Control", webhook request and response.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

pub const API_VERSION: &str = "admission.k8s.io/v1";
/// The API server sends at most this much (its request body limit).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("the body is a {api_version} {kind}, not an {API_VERSION} AdmissionReview")]
    NotReview { api_version: String, kind: String },
    #[error("the AdmissionReview has no request (or its uid is empty)")]
    NoRequest,
}

#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<AdmissionRequest>,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub kind: String,
}

/// The request part of a review; `object` stays JSON (the patch is built on it).
#[derive(Debug, Deserialize)]
pub struct AdmissionRequest {
    pub uid: String,
    #[serde(default)]
    pub kind: GroupVersionKind,
    #[serde(rename = "subResource", default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub operation: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub object: Option<Value>,
}

impl AdmissionRequest {
    /// A new pod: the only thing the injector changes.
    pub fn is_pod_create(&self) -> bool {
        self.kind.group.is_empty()
            && self.kind.kind == "Pod"
            && self.operation == "CREATE"
            && self.sub_resource.as_deref().unwrap_or("").is_empty()
    }
}

/// Decodes a review body (already capped at [`MAX_BODY_BYTES`]).
pub fn decode(body: &[u8]) -> Result<AdmissionRequest, ReviewError> {
    let env: Envelope = serde_json::from_slice(body).map_err(ReviewError::NotJson)?;
    if env.api_version != API_VERSION || env.kind != "AdmissionReview" {
        return Err(ReviewError::NotReview {
            api_version: env.api_version,
            kind: env.kind,
        });
    }
    match env.request {
        Some(r) if !r.uid.is_empty() => Ok(r),
        _ => Err(ReviewError::NoRequest),
    }
}

/// `allowed: true`, with the JSON Patch (RFC 6902) when there is one.
pub fn allow(uid: &str, patch: Option<&[Value]>) -> Vec<u8> {
    let mut response = json!({"uid": uid, "allowed": true});
    if let Some(ops) = patch {
        let raw = serde_json::to_vec(ops).unwrap_or_default();
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(raw));
    }
    wrap(response)
}

/// `allowed: false`; `message` is what `kubectl apply` prints.
pub fn deny(uid: &str, message: &str) -> Vec<u8> {
    wrap(json!({
        "uid": uid,
        "allowed": false,
        "status": {"code": 400, "reason": "BadRequest", "message": message},
    }))
}

fn wrap(response: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": API_VERSION,
        "kind": "AdmissionReview",
        "response": response,
    }))
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_only_reviews() {
        let ok = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","extra":1,
            "request":{"uid":"u1","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","object":{}}}"#;
        let r = decode(ok).unwrap();
        assert!(r.is_pod_create());
        assert!(matches!(decode(b"{"), Err(ReviewError::NotJson(_))));
        assert!(matches!(
            decode(br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}"#),
            Err(ReviewError::NotReview { .. })
        ));
        assert!(matches!(
            decode(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#),
            Err(ReviewError::NoRequest)
        ));
        assert!(matches!(decode(b"[1]"), Err(ReviewError::NotJson(_))));
    }

    #[test]
    fn responses_carry_uid_and_base64_patch() {
        let v: Value = serde_json::from_slice(&allow("u", Some(&[json!({"op":"add"})]))).unwrap();
        assert_eq!(v["response"]["uid"], "u");
        assert_eq!(v["response"]["patch"], "W3sib3AiOiJhZGQifV0=");
        let v: Value = serde_json::from_slice(&deny("u", "no")).unwrap();
        assert_eq!(v["response"]["allowed"], false);
        assert_eq!(v["response"]["status"]["message"], "no");
    }
}
