//! daemonset/ overlays: only the legacy one grants `nodes/proxy`, the
//! privileged one, and the example app that gets TSI secrets.

use super::*;

/// Whether an RBAC object grants anything on `nodes/proxy` (by name or by a
/// wildcard that covers it).
fn grants_nodes_proxy(doc: &Value) -> bool {
    if doc["kind"] != "ClusterRole" && doc["kind"] != "Role" {
        return false;
    }
    // Rules without apiGroups or resources (nonResourceURLs) grant no node
    // subresource.
    let list = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    doc["rules"].as_array().into_iter().flatten().any(|rule| {
        let core = list(&rule["apiGroups"])
            .iter()
            .any(|g| g.is_empty() || g == "*");
        core && list(&rule["resources"])
            .iter()
            .any(|r| ["nodes/proxy", "nodes/*", "*"].contains(&r.as_str()))
    })
}

/// Every string value in a parsed YAML document.
fn all_strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|x| all_strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| all_strings(x, out)),
        _ => {}
    }
}

/// Every .yaml file under daemonset/, at any depth.
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
}

#[test]
fn nothing_outside_the_legacy_overlay_grants_nodes_proxy() {
    // `get` on nodes/proxy lets its holder exec into every container on every
    // node; the daemon needs only the kubelet's GET /pods (nodes/pods).
    // The check sees a wildcard too, and no grant where there is none.
    let role = |resources: &[&str]| {
        serde_json::json!({"kind": "ClusterRole",
            "rules": [{"apiGroups": [""], "resources": resources, "verbs": ["get"]}]})
    };
    assert!(grants_nodes_proxy(&role(&["*"])) && grants_nodes_proxy(&role(&["nodes/*"])));
    assert!(!grants_nodes_proxy(&role(&["nodes/pods"])));

    let legacy = daemonset_dir().join(LEGACY_OVERLAY);
    let mut files = Vec::new();
    yaml_files(&daemonset_dir(), &mut files);
    assert!(files.len() >= 10, "{files:?}");
    for file in files.iter().filter(|f| !f.starts_with(&legacy)) {
        for doc in yaml_docs(&fs::read(file).unwrap()) {
            let mut found = Vec::new();
            all_strings(&doc, &mut found);
            assert!(
                !found.iter().any(|s| s.contains("nodes/proxy")) && !grants_nodes_proxy(&doc),
                "{file:?} names nodes/proxy; only daemonset/{LEGACY_OVERLAY} may"
            );
        }
    }
    for sub in KUSTOMIZATIONS.iter().filter(|k| **k != LEGACY_OVERLAY) {
        let docs = yaml_docs(&render(sub));
        for doc in &docs {
            assert!(
                !grants_nodes_proxy(doc),
                "kustomization {sub} grants nodes/proxy: {doc}"
            );
        }
    }
}

#[test]
fn legacy_overlay_adds_nodes_proxy_and_says_what_it_allows() {
    let base = yaml_docs(&render("base"));
    let docs = yaml_docs(&render(LEGACY_OVERLAY));
    let role = find(&docs, "ClusterRole", "jss-kubelet-reader");
    assert!(grants_nodes_proxy(role), "{role}");
    assert_eq!(
        role["rules"],
        serde_json::json!([{
            "apiGroups": [""],
            "resources": ["nodes/pods", "nodes/proxy"],
            "verbs": ["get"]
        }])
    );
    // The warning reaches the cluster (`kubectl describe clusterrole`)...
    let note = role["metadata"]["annotations"]["kubernetes.io/description"]
        .as_str()
        .unwrap_or_else(|| panic!("no warning annotation: {role}"));
    for word in [
        "LEGACY",
        "exec",
        "attach",
        "port-forward",
        "every container",
    ] {
        assert!(note.contains(word), "annotation lacks {word:?}: {note}");
    }
    // ...and is the first thing in the overlay's kustomization.
    let kustomization = fs::read_to_string(
        daemonset_dir()
            .join(LEGACY_OVERLAY)
            .join("kustomization.yaml"),
    )
    .unwrap();
    for word in NODES_PROXY_WARNING {
        assert!(
            kustomization.contains(word),
            "{LEGACY_OVERLAY}/kustomization.yaml: warning lacks {word:?}"
        );
    }
    // Apart from the role, the overlay is the base.
    let others = |docs: &[Value]| -> Vec<Value> {
        docs.iter()
            .filter(|d| d["kind"] != "ClusterRole")
            .cloned()
            .collect()
    };
    assert_eq!(others(&docs), others(&base));
}

#[test]
fn privileged_overlay_swaps_the_device_plugin_for_the_host_device() {
    let docs = yaml_docs(&render("privileged"));
    let ds = find(&docs, "DaemonSet", "jss");
    let spec = &ds["spec"]["template"]["spec"];
    let volumes = spec["volumes"].as_array().unwrap();
    let tpm = volumes.iter().find(|v| v["name"] == "tpm").unwrap();
    assert_eq!(tpm["hostPath"]["path"], "/dev/tpmrm0");
    assert_eq!(tpm["hostPath"]["type"], "CharDevice");
    for c in [&spec["initContainers"][0], &spec["containers"][0]] {
        let sc = &c["securityContext"];
        assert_eq!(sc["privileged"], true);
        // The API server rejects privileged with allowPrivilegeEscalation false.
        assert!(sc.get("allowPrivilegeEscalation").is_none(), "{sc}");
        assert!(c["resources"]["limits"].get("squat.ai/tpmrm").is_none());
        assert!(c["resources"]["requests"].get("squat.ai/tpmrm").is_none());
        assert!(
            c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == "tpm" && m["mountPath"] == "/dev/tpmrm0")
        );
    }
}

/// The example app (issue 14): `jss secrets --once` as an init container,
/// `jss secrets` as a native sidecar, the `tsi.secrets` annotation projected
/// by the downward API, secrets in a memory-backed emptyDir the app mounts
/// read-only.
#[test]
fn example_app_gets_tsi_secrets_from_an_init_container_and_a_native_sidecar() {
    let docs = yaml_docs(&render("example-app"));
    let pod = find(&docs, "Pod", "example-app");
    let spec = &pod["spec"];
    let volumes = spec["volumes"].as_array().unwrap();
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap();
    assert_eq!(volume("secrets")["emptyDir"]["medium"], "Memory");
    assert_eq!(volume("jss-socket")["hostPath"]["path"], "/run/jss");
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);

    // The annotation parses with the sidecar's own parser.
    let annotation = pod["metadata"]["annotations"]["tsi.secrets"]
        .as_str()
        .unwrap();
    let items = jss::workload::secrets::spec::parse(annotation).unwrap();
    assert_eq!(items.len(), 1);
    let item_file = Path::new("/tsi-secrets").join(&items[0].file);
    // The downward API projects exactly that annotation into the spec file.
    let projected = &volume("tsi-spec")["downwardAPI"]["items"][0];
    assert_eq!(
        projected["fieldRef"]["fieldPath"],
        "metadata.annotations['tsi.secrets']"
    );
    let mount = |c: &Value, name: &str| -> Value {
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{} does not mount {name}", c["name"]))
            .clone()
    };

    let inits = spec["initContainers"].as_array().unwrap();
    let (init, sidecar) = (&inits[0], &inits[1]);
    for c in [init, sidecar] {
        assert_eq!(c["image"], "registry.example.com/jss:0.1.0");
        let args = strings(&c["command"]);
        assert_eq!(args[..2], ["jss", "secrets"], "{args:?}");
        let flag = |f: &str| {
            let i = args.iter().position(|a| *a == f).unwrap();
            args[i + 1]
        };
        let spec_file = Path::new(mount(c, "tsi-spec")["mountPath"].as_str().unwrap())
            .join(projected["path"].as_str().unwrap());
        assert_eq!(Path::new(flag("--spec")), spec_file);
        assert_eq!(flag("--out"), mount(c, "secrets")["mountPath"]);
        assert_ne!(mount(c, "secrets")["readOnly"], true, "{}", c["name"]);
        assert_eq!(mount(c, "jss-socket")["mountPath"], "/run/jss");
        assert_eq!(env(c, "JSS_SOCKET")["value"], "/run/jss/jss.sock");
        let ca = env(c, "VAULT_CACERT")["value"].as_str().unwrap();
        let ca_dir = mount(c, "vault-ca")["mountPath"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(ca.starts_with(&ca_dir), "{ca}");
        assert!(
            env(c, "VAULT_ADDR")["value"]
                .as_str()
                .unwrap()
                .starts_with("https://")
        );
    }
    // Once, then as a native sidecar whose startupProbe waits for the ready file.
    assert!(strings(&init["command"]).contains(&"--once"));
    assert!(init["restartPolicy"].is_null());
    assert!(!strings(&sidecar["command"]).contains(&"--once"));
    assert_eq!(sidecar["restartPolicy"], "Always");
    let args = strings(&sidecar["command"]);
    let ready = args[args.iter().position(|a| *a == "--ready-file").unwrap() + 1];
    assert!(strings(&sidecar["startupProbe"]["exec"]["command"]).contains(&ready));

    // The app reads the file where TSI put it, from a read-only mount.
    let app = &spec["containers"][0];
    assert_eq!(mount(app, "secrets")["readOnly"], true);
    assert!(
        strings(&app["command"])
            .join(" ")
            .contains(item_file.to_str().unwrap()),
        "{item_file:?}"
    );
}
