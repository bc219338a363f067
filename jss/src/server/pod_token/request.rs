//! The body of `POST /v1/pod-token`: the pod the kubelet named to the CSI
//! plugin and the audience of its volume.

use serde::Deserialize;

use crate::kubelet::PodRef;
use crate::server::{Code, Refusal};

/// `{"namespace", "pod", "pod_uid", "service_account"}` (strings, all
/// required: the volume context's `csi.storage.k8s.io/pod.namespace`,
/// `pod.name`, `pod.uid`, `serviceAccount.name`) and an optional
/// `"audience"` (absent or empty: the first of `audiences`). Unknown
/// fields are refused: a misspelt field must not pass unnoticed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    namespace: String,
    pod: String,
    pod_uid: String,
    service_account: String,
    #[serde(default)]
    audience: Option<String>,
}

/// The longest value a field may have: a DNS subdomain (253) is the
/// longest Kubernetes name.
const MAX_FIELD: usize = 253;

/// The pod and the audience asked for. Error: 400 `bad_request` naming
/// the field, for a body that is not such an object or a field that is
/// empty, longer than 253 bytes or holds whitespace or control characters.
pub fn parse(body: &[u8]) -> Result<(PodRef, Option<String>), Refusal> {
    let b: Body = serde_json::from_slice(body).map_err(|e| {
        Refusal::new(
            Code::BadRequest,
            format!(
                "the body is not a JSON object like {{\"namespace\":…,\"pod\":…,\"pod_uid\":…,\"service_account\":…,\"audience\":…}}: {e}"
            ),
        )
    })?;
    for (field, v) in [
        ("namespace", &b.namespace),
        ("pod", &b.pod),
        ("pod_uid", &b.pod_uid),
        ("service_account", &b.service_account),
    ] {
        if v.is_empty() || v.len() > MAX_FIELD || !v.bytes().all(|c| c.is_ascii_graphic()) {
            return Err(Refusal::new(
                Code::BadRequest,
                format!(
                    "field {field} is {v:?}: it must be a Kubernetes name (1 to {MAX_FIELD} printable characters, no spaces), as the kubelet passes it in the volume context"
                ),
            ));
        }
    }
    let pod = PodRef {
        namespace: b.namespace,
        name: b.pod,
        uid: b.pod_uid,
        service_account: b.service_account,
    };
    Ok((pod, b.audience))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"{"namespace":"shop","pod":"web-1","pod_uid":"5f0c1e2d-3b4a-4c5d-8e6f-7a8b9c0d1e2f","service_account":"web","audience":"vault"}"#;

    #[test]
    fn a_whole_body_names_the_pod_and_audience() {
        let (pod, aud) = parse(OK.as_bytes()).unwrap();
        assert_eq!(
            pod,
            PodRef {
                namespace: "shop".into(),
                name: "web-1".into(),
                uid: "5f0c1e2d-3b4a-4c5d-8e6f-7a8b9c0d1e2f".into(),
                service_account: "web".into(),
            }
        );
        assert_eq!(aud.as_deref(), Some("vault"));
        let no_aud = OK.replace(r#","audience":"vault""#, "");
        assert_eq!(parse(no_aud.as_bytes()).unwrap().1, None);
    }

    #[test]
    fn malformed_bodies_are_400_and_say_what_is_wrong() {
        let long = "a".repeat(254);
        for (body, says) in [
            ("".to_string(), "not a JSON object"),
            ("[]".to_string(), "not a JSON object"),
            (OK.replace(r#""pod":"web-1","#, ""), "missing field `pod`"),
            (OK.replace("pod_uid", "uid"), "unknown field `uid`"),
            (OK.replace(r#""web""#, "7"), "service_account"),
            (OK.replace("web-1", ""), "field pod is \"\""),
            (OK.replace("shop", "sh op"), "field namespace"),
            (OK.replace("shop", "shop\\n"), "field namespace"),
            (OK.replace("web-1", &long), "field pod"),
            (
                OK.replace(r#""vault""#, r#""vault","container":"app""#),
                "unknown field `container`",
            ),
        ] {
            let r = parse(body.as_bytes()).unwrap_err();
            assert_eq!(r.code, Code::BadRequest, "{body}");
            assert_eq!(r.status(), 400);
            assert!(r.message.contains(says), "{body}: {}", r.message);
        }
    }
}
