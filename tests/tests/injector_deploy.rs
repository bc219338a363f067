#![allow(clippy::unwrap_used, clippy::expect_used)]
//! daemonset/injector/ checked by the tools an operator would use (kubectl
//! kustomize, kubernetes-validate --strict; yamllint runs over all of
//! daemonset/ in deploy.rs), and the parts that only fit together by name
//! (Service → pods, webhook → Service, cert-manager objects → Secret →
//! volume) checked here. kubernetes-validate has no schema for cert-manager's
//! kinds, so their fields are checked by hand.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use jss_tests::kube;
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("daemonset/injector")
}

fn rendered() -> Vec<Value> {
    kube::yaml_docs(&kube::kustomize(&dir()))
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn is_cert_manager(d: &Value) -> bool {
    d["apiVersion"]
        .as_str()
        .is_some_and(|a| a.starts_with("cert-manager.io/"))
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

#[test]
fn injector_manifests_validate_against_kubernetes_schemas() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.ends_with(".yaml") && name != "kustomization.yaml" && name != "certificate.yaml" {
            files.push(path);
        }
    }
    assert_eq!(files.len(), 5, "{files:?}");
    // What kustomize makes of them, without the cert-manager kinds (checked below).
    let docs: Vec<Value> = rendered()
        .into_iter()
        .filter(|d| !is_cert_manager(d))
        .collect();
    assert_eq!(docs.len(), 6, "{docs:?}");
    let all = tmp.path().join("rendered.yaml");
    let text: Vec<String> = docs
        .iter()
        .map(|d| format!("---\n{}\n", serde_json::to_string(d).unwrap()))
        .collect();
    std::fs::write(&all, text.concat()).unwrap();
    files.push(all);
    kube::validate_all(&files);
}

#[test]
fn webhook_sends_only_annotated_pods_and_fails_closed() {
    let docs = rendered();
    let cfg = find(&docs, "MutatingWebhookConfiguration", "jss-injector");
    let hooks = cfg["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 1);
    let w = &hooks[0];
    assert_eq!(w["failurePolicy"], "Fail");
    assert_eq!(w["sideEffects"], "None");
    assert_eq!(w["admissionReviewVersions"], serde_json::json!(["v1"]));
    assert_eq!(w["reinvocationPolicy"], "IfNeeded");
    let timeout = w["timeoutSeconds"].as_u64().unwrap();
    assert!((1..=30).contains(&timeout), "{timeout}");
    assert_eq!(
        w["rules"],
        serde_json::json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
            "resources": ["pods"], "scope": "Namespaced"}])
    );
    let sel = &w["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(sel["key"], "kubernetes.io/metadata.name");
    assert_eq!(sel["operator"], "NotIn");
    let excluded: BTreeSet<&str> = sel["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(excluded.contains("jss-system") && excluded.contains("kube-system"));
    // The CEL names both inject annotations with the value the injector takes.
    let cel = w["matchConditions"][0]["expression"].as_str().unwrap();
    for want in [
        "'admission.trusted.identity/inject'",
        "'jss.trusted.identity/inject'",
        "== 'true'",
        "has(object.metadata.annotations)",
    ] {
        assert!(cel.contains(want), "{want} not in {cel}");
    }
    assert_eq!(
        cel.matches('(').count(),
        cel.matches(')').count(),
        "unbalanced CEL: {cel}"
    );
    // Webhook → Service → the Deployment's pods and port.
    let svc_ref = &w["clientConfig"]["service"];
    assert_eq!(svc_ref["path"], "/mutate");
    let svc = find(&docs, "Service", svc_ref["name"].as_str().unwrap());
    assert_eq!(svc["metadata"]["namespace"], svc_ref["namespace"]);
    let port = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == svc_ref["port"])
        .unwrap();
    let dep = find(&docs, "Deployment", "jss-injector");
    let pod = &dep["spec"]["template"];
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod["metadata"]["labels"][k], v, "Service selector {k}");
    }
    let c = &pod["spec"]["containers"][0];
    assert!(
        c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == port["targetPort"]),
        "Service targets {} which the container does not name",
        port["targetPort"]
    );
    // caBundle from the serving Certificate.
    let ca_from = cfg["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        .as_str()
        .unwrap();
    let (ns, name) = ca_from.split_once('/').unwrap();
    let cert = find(&docs, "Certificate", name);
    assert_eq!(cert["metadata"]["namespace"], ns);
}

#[test]
fn deployment_pdb_and_certificates_fit_together() {
    let docs = rendered();
    let dep = find(&docs, "Deployment", "jss-injector");
    assert_eq!(dep["spec"]["replicas"], 2);
    let pod = &dep["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    let anti = &pod["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        [0];
    assert_eq!(
        anti["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    for (k, v) in anti["podAffinityTerm"]["labelSelector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&labels[k], v);
    }
    let pdb = find(&docs, "PodDisruptionBudget", "jss-injector");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    for (k, v) in pdb["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&labels[k], v);
    }
    // The serving certificate's Secret is the pod's tls volume, mounted as a
    // directory (subPath files would never see a renewal).
    let cert = find(&docs, "Certificate", "jss-injector");
    let secret = cert["spec"]["secretName"].as_str().unwrap();
    let vol = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["secret"]["secretName"] == secret)
        .unwrap_or_else(|| panic!("no volume of Secret {secret}"));
    let c = &pod["spec"]["containers"][0];
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == vol["name"])
        .unwrap();
    assert!(mount["subPath"].is_null(), "{mount}");

    // cert-manager's fields (no schema in kubernetes-validate).
    let certificate_keys: BTreeSet<&str> = [
        "secretName",
        "dnsNames",
        "commonName",
        "duration",
        "renewBefore",
        "isCA",
        "privateKey",
        "usages",
        "issuerRef",
    ]
    .into();
    for d in docs.iter().filter(|d| is_cert_manager(d)) {
        assert_eq!(d["apiVersion"], "cert-manager.io/v1", "{d}");
        assert_eq!(d["metadata"]["namespace"], "jss-system", "{d}");
        match d["kind"].as_str().unwrap() {
            "Certificate" => {
                let spec = keys(&d["spec"]);
                assert!(spec.is_subset(&certificate_keys), "{spec:?}");
                assert!(
                    keys(&d["spec"]["privateKey"])
                        .is_subset(&["algorithm", "size", "rotationPolicy", "encoding"].into())
                );
                let r = &d["spec"]["issuerRef"];
                assert_eq!(
                    (r["kind"].as_str(), r["group"].as_str()),
                    (Some("Issuer"), Some("cert-manager.io"))
                );
                find(&docs, "Issuer", r["name"].as_str().unwrap());
            }
            "Issuer" => {
                let spec = keys(&d["spec"]);
                assert!(
                    spec == ["selfSigned"].into() || spec == ["ca"].into(),
                    "{spec:?}"
                );
                if let Some(ca) = d["spec"]["ca"].as_object() {
                    // A CA issuer signs with a Secret that a Certificate with isCA makes.
                    let from = docs
                        .iter()
                        .find(|c| {
                            c["kind"] == "Certificate"
                                && c["spec"]["secretName"] == ca["secretName"]
                        })
                        .unwrap_or_else(|| panic!("no Certificate makes {}", ca["secretName"]));
                    assert_eq!(from["spec"]["isCA"], true);
                }
            }
            other => panic!("unexpected cert-manager kind {other}"),
        }
    }
    let dns: Vec<&str> = cert["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(dns.contains(&"jss-injector.jss-system.svc"), "{dns:?}");
    assert_eq!(cert["spec"]["usages"], serde_json::json!(["server auth"]));
}

#[test]
fn shipped_config_and_flags_are_the_injectors() {
    let toml = dir().join("injector.toml");
    let cfg = jss_injector::config::Config::load(Some(&toml), Default::default()).unwrap();
    // The file names where the Deployment mounts the Secret.
    let docs = rendered();
    let c = &find(&docs, "Deployment", "jss-injector")["spec"]["template"]["spec"]["containers"][0];
    let tls_mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "tls")
        .unwrap()["mountPath"]
        .as_str()
        .unwrap();
    assert!(cfg.tls_cert.starts_with(tls_mount) && cfg.tls_key.starts_with(tls_mount));
    assert_eq!(cfg.listen.port(), 8443);
    assert_eq!(c["ports"][0]["containerPort"], 8443);
    // A misspelt key fails.
    let text = std::fs::read_to_string(&toml).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let typo = tmp.path().join("typo.toml");
    std::fs::write(&typo, text.replace("refresh_seconds", "refresh_second")).unwrap();
    assert!(jss_injector::config::Config::load(Some(&typo), Default::default()).is_err());

    // Every flag of the container's command exists in `jss-injector serve --help`.
    let cmd: Vec<&str> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(cmd[..2], ["jss-injector", "serve"]);
    let bin = jss_tests::daemon::bin("jss-injector");
    let out = kube::run(Command::new(bin).args(["serve", "--help"]), b"");
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in cmd.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.lines()
                .any(|l| l.trim_start().split([' ', ',']).next() == Some(flag)),
            "{flag} not in jss-injector serve --help:\n{help}"
        );
    }
    // The mounted config file path is the one the command reads.
    let cfg_mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "config")
        .unwrap();
    assert_eq!(cfg_mount["mountPath"], cmd[3]);
}
