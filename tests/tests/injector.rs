#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `jss-injector` as the API server sees it: real AdmissionReview bodies over
//! HTTPS to the real binary. Each patch is applied by python's `jsonpatch`
//! and the result checked with `kubernetes-validate --strict` and the Pod
//! Security `restricted` rules.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use jss_tests::injector::{Certs, Client, Injector, review_body};
use jss_tests::kube;
use jss_tests::pss::{RESTRICTED_VOLUMES, restricted_rules, restricted_violations};
use serde_json::{Value, json};

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/injector")
        .join(name);
    kube::yaml_to_json(&std::fs::read(&path).unwrap())
}

fn start(dir: &Path, args: &[&str]) -> (Certs, Injector) {
    let certs = Certs::issue(dir, "jss-injector test CA");
    let inj = Injector::start(dir, &certs, args);
    (certs, inj)
}

const WITH_CA: &[&str] = &[
    "--image",
    "registry.example.com/jss:0.1.0",
    "--vault-addr",
    "https://vault.example.internal:8200",
    "--vault-ca-config-map",
    "vault-ca",
];

/// The response's patch as JSON (None: allowed without one).
fn patch(resp: &Value) -> Option<Value> {
    assert_eq!(resp["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(resp["kind"], "AdmissionReview");
    assert_eq!(
        resp["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    assert_eq!(resp["response"]["allowed"], true, "{resp}");
    let p = resp["response"]["patch"].as_str()?;
    assert_eq!(resp["response"]["patchType"], "JSONPatch");
    let raw = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
    Some(serde_json::from_slice(&raw).unwrap())
}

fn refusal(resp: &Value) -> String {
    assert_eq!(resp["response"]["allowed"], false, "{resp}");
    resp["response"]["status"]["message"]
        .as_str()
        .unwrap()
        .to_string()
}

fn containers<'a>(pod: &'a Value, key: &str) -> Vec<&'a Value> {
    pod["spec"][key]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn names(pod: &Value, key: &str) -> Vec<String> {
    containers(pod, key)
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

fn is_injected(c: &Value) -> bool {
    c["name"].as_str().unwrap().starts_with("jss-secrets")
}

/// Checks a patched pod: valid for the Kubernetes schemas, the injected
/// containers `restricted`, secrets mounted read-only in every app container.
fn check_patched(dir: &Path, name: &str, pod: &Value) {
    let file: PathBuf = dir.join(format!("{name}.patched.yaml"));
    std::fs::write(&file, serde_json::to_vec_pretty(pod).unwrap()).unwrap();
    kube::validate(&file);

    let all: Vec<&Value> = containers(pod, "initContainers")
        .into_iter()
        .chain(containers(pod, "containers"))
        .collect();
    for c in all.iter().filter(|c| is_injected(c)) {
        for (rule, ok) in restricted_rules(pod, c) {
            assert!(ok, "{name}: {}: {rule}\n{c:#}", c["name"]);
        }
        let mounts = c["volumeMounts"].as_array().unwrap();
        let socket = mounts.iter().find(|m| m["name"] == "jss-socket").unwrap();
        assert_eq!(socket["readOnly"], true, "{name}: socket mount {socket}");
        let env: Vec<&str> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        for want in ["JSS_SOCKET", "VAULT_ADDR", "VAULT_CACERT"] {
            assert!(
                env.contains(&want),
                "{name}: {} lacks {want}: {env:?}",
                c["name"]
            );
        }
    }
    for c in all.iter().filter(|c| !is_injected(c)) {
        let mounts = c["volumeMounts"].as_array().unwrap();
        assert!(
            mounts.iter().any(|m| m["name"] == "jss-secrets"
                && m["mountPath"] == "/tsi-secrets"
                && m["readOnly"] == true),
            "{name}: app container {} has no read-only /tsi-secrets: {mounts:?}",
            c["name"]
        );
        assert!(
            !mounts.iter().any(|m| m["name"] == "jss-socket"),
            "{name}: the socket is for the injected containers only"
        );
    }
    for v in pod["spec"]["volumes"].as_array().unwrap() {
        let kind = v
            .as_object()
            .unwrap()
            .keys()
            .find(|k| *k != "name")
            .unwrap();
        // The one exception with socket_volume hostPath, the default; with
        // csi there is none (the test at the end of this file).
        let allowed = RESTRICTED_VOLUMES.contains(&kind.as_str()) || v["name"] == "jss-socket";
        if v["name"].as_str().unwrap().starts_with("jss-") {
            assert!(
                allowed,
                "{name}: injected volume {v} is not allowed by restricted"
            );
        }
    }
    let socket = volume(pod, "jss-socket");
    assert_eq!(
        socket["hostPath"],
        json!({"path": "/run/jss", "type": "Directory"})
    );
    let secrets = volume(pod, "jss-secrets");
    assert_eq!(secrets["emptyDir"]["medium"], "Memory");
}

fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

fn command(c: &Value) -> Vec<&str> {
    c["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect()
}

#[test]
fn real_shaped_pods_are_patched_into_valid_restricted_pods() {
    let dir = tempfile::tempdir().unwrap();
    let (certs, inj) = start(dir.path(), WITH_CA);
    // A connection per review: kubernetes-validate takes longer than the
    // server keeps an idle connection open.
    let review = |inj: &Injector, certs: &Certs, pod: &Value| {
        Client::connect(inj.port, certs).unwrap().review(pod)
    };

    // A Deployment's pod: native sidecar, secrets first, existing parts kept.
    let pod = fixture("deployment-pod.yaml");
    let patched = kube::json_patch(&pod, &patch(&review(&inj, &certs, &pod)).unwrap());
    assert_eq!(
        names(&patched, "initContainers"),
        ["jss-secrets-init", "jss-secrets", "migrate"]
    );
    assert_eq!(names(&patched, "containers"), ["web", "worker"]);
    let init = &patched["spec"]["initContainers"][0];
    assert_eq!(
        command(init),
        [
            "jss-agent",
            "secrets",
            "--spec",
            "/var/run/jss-secrets-spec/secrets.yaml",
            "--out",
            "/tsi-secrets",
            "--format",
            "json",
            "--file-mode",
            "0644",
            "--once"
        ]
    );
    let sidecar = &patched["spec"]["initContainers"][1];
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert!(
        command(sidecar)
            .windows(2)
            .any(|w| w == ["--refresh-seconds", "300"]),
        "{sidecar}"
    );
    assert_eq!(
        sidecar["startupProbe"]["exec"]["command"],
        json!(["test", "-f", "/var/run/jss-secrets-state/ready"])
    );
    assert_eq!(init["image"], "registry.example.com/jss:0.1.0");
    let vols = names(&patched, "volumes");
    assert_eq!(vols[..2], ["config", "cache"]);
    let spec_vol = volume(&patched, "jss-secrets-spec");
    assert_eq!(
        spec_vol["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
        "metadata.annotations['tsi.secrets']"
    );
    assert_eq!(
        patched["spec"]["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    check_patched(dir.path(), "deployment", &patched);

    // A Job's pod: init-only, nothing keeps running.
    let pod = fixture("job-pod.yaml");
    let patched = kube::json_patch(&pod, &patch(&review(&inj, &certs, &pod)).unwrap());
    assert_eq!(names(&patched, "initContainers"), ["jss-secrets-init"]);
    assert_eq!(names(&patched, "containers"), ["report"]);
    assert!(
        command(&patched["spec"]["initContainers"][0])
            .windows(2)
            .any(|w| w == ["--format", "raw"])
    );
    let spec_vol = volume(&patched, "jss-secrets-spec");
    assert_eq!(
        spec_vol["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
        "metadata.annotations['jss.trusted.identity/secrets']"
    );
    check_patched(dir.path(), "job", &patched);

    // TSI's article pod, annotation verbatim; a cluster older than 1.29 (plain sidecar).
    let dir2 = tempfile::tempdir().unwrap();
    let old_args: Vec<&str> = WITH_CA
        .iter()
        .copied()
        .chain(["--sidecar", "container"])
        .collect();
    let (certs2, inj2) = start(dir2.path(), &old_args);
    let pod = fixture("tsi-article-pod.yaml");
    let patched = kube::json_patch(&pod, &patch(&review(&inj2, &certs2, &pod)).unwrap());
    assert_eq!(names(&patched, "initContainers"), ["jss-secrets-init"]);
    assert_eq!(names(&patched, "containers"), ["myubuntu", "jss-secrets"]);
    assert!(patched["spec"]["containers"][1]["restartPolicy"].is_null());
    check_patched(dir.path(), "tsi-article", &patched);
    // The same pod on the default (native) injector.
    let patched = kube::json_patch(&pod, &patch(&review(&inj, &certs, &pod)).unwrap());
    assert_eq!(
        names(&patched, "initContainers"),
        ["jss-secrets-init", "jss-secrets"]
    );
    check_patched(dir.path(), "tsi-article-native", &patched);
}

#[test]
fn an_injected_pod_is_not_patched_again_and_plain_pods_pass() {
    let dir = tempfile::tempdir().unwrap();
    let (certs, inj) = start(dir.path(), WITH_CA);
    let mut client = Client::connect(inj.port, &certs).unwrap();
    let pod = fixture("deployment-pod.yaml");
    let once = kube::json_patch(&pod, &patch(&client.review(&pod)).unwrap());
    assert_eq!(
        patch(&client.review(&once)),
        None,
        "reinvocation patched again"
    );
    assert_eq!(
        once["metadata"]["annotations"]["jss.trusted.identity/status"],
        "injected"
    );

    let mut plain = fixture("deployment-pod.yaml");
    plain["metadata"]["annotations"] = json!({});
    assert_eq!(patch(&client.review(&plain)), None);
    let mut off = fixture("tsi-article-pod.yaml");
    off["metadata"]["annotations"]["admission.trusted.identity/inject"] = json!("false");
    assert_eq!(patch(&client.review(&off)), None);

    // Other kinds and operations pass unchanged.
    for (kind, op) in [
        ("Pod", "UPDATE"),
        ("Pod", "DELETE"),
        ("Deployment", "CREATE"),
    ] {
        let mut body: Value = serde_json::from_slice(&review_body(&pod)).unwrap();
        body["request"]["kind"]["kind"] = json!(kind);
        body["request"]["operation"] = json!(op);
        let (status, out) = client.request("POST", "/mutate", &serde_json::to_vec(&body).unwrap());
        assert_eq!(status, 200);
        assert_eq!(
            patch(&serde_json::from_slice(&out).unwrap()),
            None,
            "{kind} {op}"
        );
    }
}

#[test]
fn malformed_annotations_are_refused_with_their_reason_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (certs, inj) = start(dir.path(), WITH_CA);
    let mut client = Client::connect(inj.port, &certs).unwrap();
    let item = |extra: &str| {
        format!(
            "- tsi.secret/name: s1\n  tsi.secret/role: demo\n  tsi.secret/vault-path: secret/ti-demo-all\n{extra}"
        )
    };
    let cases: Vec<(String, &str)> = vec![
        (
            "- tsi.secret/name: [unclosed".into(),
            "annotation tsi.secrets: not a YAML list of maps",
        ),
        (
            "tsi.secret/name: s1".into(),
            "annotation tsi.secrets: not a YAML list of maps",
        ),
        (
            "- tsi.secret/role: demo\n  tsi.secret/vault-path: secret/ti-demo-all\n  tsi.secret/local-name: f"
                .into(),
            "annotation tsi.secrets, item 1: tsi.secret/name is missing",
        ),
        (
            "- tsi.secret/name: s1\n  tsi.secret/vault-path: secret/ti-demo-all\n  tsi.secret/local-name: f".into(),
            "item 1 (\"s1\"): tsi.secret/role is missing",
        ),
        (
            "- tsi.secret/name: s1\n  tsi.secret/role: demo\n  tsi.secret/local-name: f".into(),
            "item 1 (\"s1\"): tsi.secret/vault-path is missing",
        ),
        (
            item(""),
            "item 1 (\"s1\"): tsi.secret/local-path or tsi.secret/local-name is missing",
        ),
        (
            item("  tsi.secret/local-name: /etc/passwd"),
            "item 1 (\"s1\"): tsi.secret/local-name \"/etc/passwd\" is an absolute path outside /tsi-secrets",
        ),
        (
            item("  tsi.secret/local-path: mysecrets/../../etc"),
            "item 1 (\"s1\"): tsi.secret/local-path \"mysecrets/../../etc\" leaves /tsi-secrets",
        ),
        (
            format!(
                "{}\n{}",
                item("  tsi.secret/local-name: a"),
                item("  tsi.secret/local-path: /tsi-secrets/a").replacen("ti-demo-all", "ti-demo-ri", 1)
            ),
            "item 2 (\"s1\"): writes /tsi-secrets/a/s1 like an item before it",
        ),
        (
            item("  tsi.secret/local-name: a").replacen("secret/ti-demo-all", "/secret/x", 1),
            "item 1 (\"s1\"): tsi.secret/vault-path \"/secret/x\" must not start with /",
        ),
        (
            "- tsi.secret/name: s1\n  tsi.secret/constraints: images\n  tsi.secret/local-name: a".into(),
            "item 1 (\"s1\"): tsi.secret/constraints \"images\" is not one of TSI's",
        ),
    ];
    for (list, want) in &cases {
        let mut pod = fixture("tsi-article-pod.yaml");
        pod["metadata"]["annotations"]["tsi.secrets"] = json!(list);
        let msg = refusal(&client.review(&pod));
        assert!(msg.contains(want), "{list:?}\n  got: {msg}\n  want: {want}");
        assert!(
            msg.contains("pod trusted-identity/myubuntu-698b749889-…"),
            "{msg}"
        );
    }
    let mut pod = fixture("tsi-article-pod.yaml");
    pod["metadata"]["annotations"]["jss.trusted.identity/refresh-seconds"] = json!("often");
    assert!(
        refusal(&client.review(&pod))
            .contains("annotation jss.trusted.identity/refresh-seconds: \"often\"")
    );
    let mut pod = fixture("tsi-article-pod.yaml");
    pod["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove("tsi.secrets");
    assert!(refusal(&client.review(&pod)).contains("annotation tsi.secrets is missing"));
    let mut pod = fixture("deployment-pod.yaml");
    pod["spec"]["containers"][1]["volumeMounts"] =
        json!([{"name": "cache", "mountPath": "/tsi-secrets"}]);
    assert!(
        refusal(&client.review(&pod))
            .contains("container \"worker\" already mounts something at /tsi-secrets")
    );

    // Still serving, on the same connection and a new one.
    let good = fixture("tsi-article-pod.yaml");
    assert!(patch(&client.review(&good)).is_some());
    assert!(patch(&Client::connect(inj.port, &certs).unwrap().review(&good)).is_some());
    let (_, metrics) = client.get("/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    let refused = format!(
        "jss_injector_reviews_total{{outcome=\"refused\"}} {}",
        cases.len() + 3
    );
    assert!(metrics.contains(&refused), "{refused} not in\n{metrics}");
}

#[test]
fn bodies_that_are_not_reviews_get_400() {
    let dir = tempfile::tempdir().unwrap();
    let (certs, inj) = start(dir.path(), &[]);
    let mut client = Client::connect(inj.port, &certs).unwrap();
    let pod = fixture("tsi-article-pod.yaml");
    let mut v1beta1: Value = serde_json::from_slice(&review_body(&pod)).unwrap();
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let mut no_request: Value = serde_json::from_slice(&review_body(&pod)).unwrap();
    no_request.as_object_mut().unwrap().remove("request");
    let mut huge: Value = serde_json::from_slice(&review_body(&pod)).unwrap();
    huge["request"]["object"]["metadata"]["annotations"]["big"] =
        json!("x".repeat(3 * 1024 * 1024));
    for (what, body, want) in [
        ("not JSON", b"<xml/>".to_vec(), "not JSON"),
        (
            "a pod",
            serde_json::to_vec(&pod).unwrap(),
            "not an admission.k8s.io/v1 AdmissionReview",
        ),
        (
            "v1beta1",
            serde_json::to_vec(&v1beta1).unwrap(),
            "admission.k8s.io/v1beta1 AdmissionReview, not an",
        ),
        (
            "no request",
            serde_json::to_vec(&no_request).unwrap(),
            "no request",
        ),
        (
            "over 3 MiB",
            serde_json::to_vec(&huge).unwrap(),
            "body over 3145728 bytes",
        ),
    ] {
        // A refused oversize body may close the connection: one per case.
        let mut c = Client::connect(inj.port, &certs).unwrap();
        let (status, out) = c.request("POST", "/mutate", &body);
        let out = String::from_utf8_lossy(&out);
        assert_eq!(status, 400, "{what}: {out}");
        assert!(out.contains(want), "{what}: {out}");
    }
    assert_eq!(client.get("/mutate").0, 405);
    assert_eq!(client.get("/nope").0, 404);
    assert_eq!(client.get("/healthz"), (200, b"ok\n".to_vec()));
    assert!(patch(&client.review(&pod)).is_some(), "still serving");
}

#[test]
fn the_serving_certificate_is_re_read_when_its_files_change() {
    let dir = tempfile::tempdir().unwrap();
    let (old, inj) = start(dir.path(), &[]);
    // cert-manager's renewal: new files in place, from a new CA here so the
    // client can tell which pair the server presents.
    let new_dir = tempfile::tempdir().unwrap();
    let new = Certs::issue(new_dir.path(), "rotated CA");
    std::fs::copy(&new.key, &old.key).unwrap();
    std::fs::copy(&new.cert, &old.cert).unwrap();
    let mut c = Client::connect(inj.port, &new).unwrap();
    assert_eq!(c.get("/healthz").0, 200);
    assert!(
        Client::connect(inj.port, &old).is_err(),
        "still the old certificate"
    );
    // A broken pair is not taken: the last good one stays.
    std::fs::write(&old.cert, "not a certificate").unwrap();
    assert_eq!(
        Client::connect(inj.port, &new).unwrap().get("/healthz").0,
        200
    );
    assert!(
        inj.stderr()
            .contains("keeping the previous serving certificate"),
        "{}",
        inj.stderr()
    );
}

#[test]
fn start_errors_name_the_key_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::issue(dir.path(), "ca");
    let bin = jss_tests::daemon::bin("jss-injector");
    let config = dir.path().join("injector.toml");
    std::fs::write(
        &config,
        "[inject]\nsidecar = \"native\"\nrefresh_seconds = 0\n",
    )
    .unwrap();
    let missing = dir.path().join("missing.key");
    let cert = certs.cert.to_str().unwrap();
    let key = certs.key.to_str().unwrap();
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("--config", config.to_str().unwrap())],
            "`inject.refresh_seconds` must be at least 1",
        ),
        (vec![("--vault-addr", "vault:8200")], "`vault.addr`"),
        (vec![("--listen", "localhost:1")], "`listen`"),
        (
            vec![("--tls-key", missing.to_str().unwrap())],
            "cannot read the serving key",
        ),
    ];
    for (overrides, want) in cases {
        let mut flags = std::collections::BTreeMap::from([
            ("--listen", "127.0.0.1:1"),
            ("--tls-cert", cert),
            ("--tls-key", key),
        ]);
        flags.extend(overrides.iter().copied());
        let args: Vec<&str> = flags.iter().flat_map(|(k, v)| [*k, *v]).collect();
        let mut cmd = std::process::Command::new(&bin);
        cmd.arg("serve").args(&args);
        let out = kube::run(&mut cmd, b"");
        assert!(!out.status.success(), "{overrides:?}: {}", kube::text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(want),
            "{overrides:?}: {}",
            kube::text(&out)
        );
    }
}

#[test]
fn with_the_csi_socket_volume_patched_pods_pass_restricted_with_no_exception() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = WITH_CA.to_vec();
    args.extend(["--socket-volume", "csi"]);
    let (certs, inj) = start(dir.path(), &args);
    for name in ["deployment-pod.yaml", "job-pod.yaml"] {
        let pod = fixture(name);
        let resp = Client::connect(inj.port, &certs).unwrap().review(&pod);
        let patched = kube::json_patch(&pod, &patch(&resp).unwrap());
        let file = dir.path().join(format!("{name}.csi.json"));
        std::fs::write(&file, serde_json::to_vec_pretty(&patched).unwrap()).unwrap();
        kube::validate(&file);
        assert_eq!(
            volume(&patched, "jss-socket"),
            &json!({"name": "jss-socket", "csi": {
                "driver": "csi.jss.dev",
                "readOnly": true,
                "volumeAttributes": {"mode": "socket"},
            }})
        );
        // The socket still appears where JSS_SOCKET says.
        let init = &patched["spec"]["initContainers"][0];
        assert!(
            init["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == "jss-socket" && m["mountPath"] == "/run/jss"),
            "{init}"
        );
        // Every pod-level rule and every volume, and the injected containers
        // (the app's own containers are the app's business, and the fixtures'
        // are not all restricted).
        let mut ours = patched.clone();
        for key in ["initContainers", "containers"] {
            if let Some(list) = ours["spec"][key].as_array_mut() {
                list.retain(is_injected);
            }
        }
        let broken = restricted_violations(&ours);
        assert!(broken.is_empty(), "{name}: {broken:#?}");
        // With hostPath the same check fails, on the socket volume alone.
        ours["spec"]["volumes"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .filter(|v| v["name"] == "jss-socket")
            .for_each(|v| *v = json!({"name": "jss-socket", "hostPath": {"path": "/run/jss"}}));
        let broken = restricted_violations(&ours);
        assert_eq!(broken.len(), 1, "{broken:?}");
        assert!(broken[0].contains("jss-socket"), "{broken:?}");
    }
}
