//! One admission review: decide, then answer.

use serde_json::{Map, Value};

use crate::annotations;
use crate::config::Inject;
use crate::patch::{self, Plan};
use crate::review::{self, AdmissionRequest};

/// What the injector did with a review (the metrics' `outcome` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Another kind, operation or sub-resource: allowed unchanged.
    Ignored,
    /// A pod that asks for nothing, or already has everything: no patch.
    Unchanged,
    Patched,
    Refused,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ignored => "ignored",
            Outcome::Unchanged => "unchanged",
            Outcome::Patched => "patched",
            Outcome::Refused => "refused",
        }
    }
}

/// The pod's name for messages: name, else generateName…, in its namespace.
fn pod_label(req: &AdmissionRequest, pod: &Value) -> String {
    let meta = pod.get("metadata");
    let get = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
    let name = get("name")
        .map(str::to_string)
        .or_else(|| get("generateName").map(|g| format!("{g}…")))
        .or_else(|| req.name.clone())
        .unwrap_or_else(|| "(unnamed)".into());
    let ns = req
        .namespace
        .as_deref()
        .or_else(|| get("namespace"))
        .unwrap_or("default");
    format!("{ns}/{name}")
}

fn job_owned(pod: &Value) -> bool {
    pod.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|o| o.get("kind").and_then(Value::as_str) == Some("Job"))
}

/// Decides a decoded review and returns the outcome and the response body.
pub fn respond(req: &AdmissionRequest, cfg: &Inject) -> (Outcome, Vec<u8>) {
    if !req.is_pod_create() {
        return (Outcome::Ignored, review::allow(&req.uid, None));
    }
    let Some(pod) = req.object.as_ref().filter(|o| o.is_object()) else {
        let msg = "jss-injector: the review of a pod CREATE carries no pod object";
        return (Outcome::Refused, review::deny(&req.uid, msg));
    };
    let refuse = |problem: String| {
        let msg = format!("jss-injector: pod {}: {problem}", pod_label(req, pod));
        (Outcome::Refused, review::deny(&req.uid, &msg))
    };
    let empty = Map::new();
    let ann = pod
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let asked = match annotations::parse(ann) {
        Ok(a) => a,
        Err(e) => return refuse(e.to_string()),
    };
    let ops = if patch::is_injected(pod) {
        patch::reinvocation(pod)
    } else if let Some(asked) = asked {
        let plan = Plan::new(&asked, cfg, job_owned(pod));
        patch::build(pod, &asked, &plan, cfg)
    } else {
        Ok(Vec::new())
    };
    match ops {
        Err(e) => refuse(e.to_string()),
        Ok(ops) if ops.is_empty() => (Outcome::Unchanged, review::allow(&req.uid, None)),
        Ok(ops) => (Outcome::Patched, review::allow(&req.uid, Some(&ops))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, FileConfig, Overrides};
    use serde_json::json;

    fn cfg() -> Inject {
        Config::build(FileConfig::default(), Overrides::default())
            .unwrap()
            .inject
    }

    fn review(object: Value) -> AdmissionRequest {
        serde_json::from_value(json!({
            "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE", "namespace": "ns", "object": object,
        }))
        .unwrap()
    }

    /// RFC 6902 `add` only (all the injector emits), for checking re-reviews.
    fn apply(doc: &mut Value, ops: &[Value]) {
        for op in ops {
            assert_eq!(op["op"], "add");
            let path = op["path"].as_str().unwrap();
            let (parent, last) = path.rsplit_once('/').unwrap();
            let last = last.replace("~1", "/").replace("~0", "~");
            let target = doc.pointer_mut(parent).unwrap();
            match target {
                Value::Array(a) if last == "-" => a.push(op["value"].clone()),
                Value::Array(a) => a.insert(last.parse().unwrap(), op["value"].clone()),
                Value::Object(o) => {
                    o.insert(last, op["value"].clone());
                }
                other => panic!("add into {other}"),
            }
        }
    }

    fn patch_of(body: &[u8]) -> Option<Vec<Value>> {
        use base64::Engine as _;
        let v: Value = serde_json::from_slice(body).unwrap();
        let p = v["response"]["patch"].as_str()?;
        let raw = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
        Some(serde_json::from_slice(&raw).unwrap())
    }

    fn annotated_pod() -> Value {
        json!({
            "metadata": {"generateName": "app-", "annotations": {
                "admission.trusted.identity/inject": "true",
                "tsi.secrets": "- {tsi.secret/name: s, tsi.secret/role: r, tsi.secret/vault-path: secret/ti-demo-all, tsi.secret/local-name: f}",
            }},
            "spec": {
                "initContainers": [{"name": "migrate", "image": "m"}],
                "containers": [{"name": "app", "image": "a", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}, {"name": "b", "image": "b"}],
                "volumes": [{"name": "data", "emptyDir": {}}],
            },
        })
    }

    #[test]
    fn patch_puts_secrets_first_and_is_idempotent() {
        let c = cfg();
        let mut pod = annotated_pod();
        let (outcome, body) = respond(&review(pod.clone()), &c);
        assert_eq!(outcome, Outcome::Patched);
        apply(&mut pod, &patch_of(&body).unwrap());
        let inits: Vec<&str> = pod["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(inits, ["jss-secrets-init", "jss-secrets", "migrate"]);
        for app in [
            "/spec/containers/0",
            "/spec/containers/1",
            "/spec/initContainers/2",
        ] {
            let mounts = pod.pointer(&format!("{app}/volumeMounts")).unwrap();
            assert!(
                mounts
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["mountPath"] == "/tsi-secrets" && m["readOnly"] == true),
                "{app}: {mounts}"
            );
        }
        assert_eq!(
            pod["metadata"]["annotations"]["jss.trusted.identity/status"],
            "injected"
        );
        // Reinvocation: nothing more.
        let (outcome, body) = respond(&review(pod.clone()), &c);
        assert_eq!((outcome, patch_of(&body)), (Outcome::Unchanged, None));
        // A container another webhook added since gets the mount, and only that.
        pod["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "late", "image": "l"}));
        let (outcome, body) = respond(&review(pod.clone()), &c);
        assert_eq!(outcome, Outcome::Patched);
        assert_eq!(
            patch_of(&body).unwrap(),
            vec![
                json!({"op": "add", "path": "/spec/containers/2/volumeMounts",
                "value": [{"name": "jss-secrets", "mountPath": "/tsi-secrets", "readOnly": true}]})
            ]
        );
    }

    #[test]
    fn jobs_run_init_only_and_old_clusters_get_a_plain_sidecar() {
        let c = cfg();
        let mut job = annotated_pod();
        job["metadata"]["ownerReferences"] =
            json!([{"kind": "Job", "name": "j", "apiVersion": "batch/v1", "uid": "x"}]);
        let ops = patch_of(&respond(&review(job.clone()), &c).1).unwrap();
        apply(&mut job, &ops);
        assert_eq!(job["spec"]["initContainers"].as_array().unwrap().len(), 2);
        assert_eq!(job["spec"]["containers"].as_array().unwrap().len(), 2);

        let mut old = annotated_pod();
        old["metadata"]["annotations"]["jss.trusted.identity/native-sidecar"] = json!("false");
        let ops = patch_of(&respond(&review(old.clone()), &c).1).unwrap();
        apply(&mut old, &ops);
        assert_eq!(old["spec"]["initContainers"].as_array().unwrap().len(), 2);
        assert_eq!(old["spec"]["containers"][2]["name"], "jss-secrets");
        assert!(old["spec"]["containers"][2].get("restartPolicy").is_none());
    }

    #[test]
    fn other_requests_pass_and_conflicts_are_refused() {
        let c = cfg();
        let mut r = review(annotated_pod());
        r.operation = "UPDATE".into();
        assert_eq!(respond(&r, &c).0, Outcome::Ignored);
        let plain = json!({"metadata": {}, "spec": {"containers": [{"name": "a", "image": "a"}]}});
        assert_eq!(respond(&review(plain), &c).0, Outcome::Unchanged);
        let mut taken = annotated_pod();
        taken["spec"]["volumes"][0]["name"] = json!("jss-secrets");
        let (o, body) = respond(&review(taken), &c);
        assert_eq!(o, Outcome::Refused);
        let msg: Value = serde_json::from_slice(&body).unwrap();
        let msg = msg["response"]["status"]["message"].as_str().unwrap();
        assert!(
            msg.contains("pod ns/app-…") && msg.contains("\"jss-secrets\""),
            "{msg}"
        );
    }
}
