//! daemonset/: every manifest and rendered kustomization validated against
//! the Kubernetes schemas and yamllint, and the base DaemonSet as designed.

use super::*;

/// Manifests in the tree: every .yaml except kustomizations and the JSON patch.
fn manifest_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for sub in KUSTOMIZATIONS {
        for entry in fs::read_dir(daemonset_dir().join(sub)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let patch = PATCHES.contains(&format!("{sub}/{name}").as_str());
            if name.ends_with(".yaml") && name != "kustomization.yaml" && !patch {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn kubernetes_validate_catches_a_bad_field() {
    // Guards the check below: strict validation really rejects a typo.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let ds = fs::read_to_string(daemonset_dir().join("base/daemonset.yaml")).unwrap();
    fs::write(&bad, ds.replace("hostPID: true", "hostPid: true")).unwrap();
    let out = run(Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", KUBERNETES_VERSIONS[0]])
        .arg(&bad));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("hostPid"), "{}", text(&out));
}

#[test]
fn every_manifest_validates_against_kubernetes_schemas() {
    let files = manifest_files();
    let names: BTreeSet<String> = files
        .iter()
        .map(|p| {
            p.strip_prefix(daemonset_dir())
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    for want in [
        "base/namespace.yaml",
        "base/rbac.yaml",
        "base/daemonset.yaml",
        "base/vault-secret.example.yaml",
        "example-app/namespace.yaml",
        "example-app/pod.yaml",
        "csi/csidriver.yaml",
        "csi/example/namespace.yaml",
        "csi/example/pod.yaml",
    ] {
        assert!(names.contains(want), "{want} missing from {names:?}");
    }
    // And what kustomize makes of them (generated ConfigMaps, patched
    // DaemonSet); all in one run per Kubernetes version.
    let dir = tempfile::tempdir().unwrap();
    let mut all = files.clone();
    for sub in KUSTOMIZATIONS {
        let rendered = dir.path().join(format!("{}.yaml", sub.replace('/', "-")));
        fs::write(&rendered, render(sub)).unwrap();
        all.push(rendered);
    }
    kube::validate_all(&all);
}

#[test]
fn yamllint_is_clean() {
    let config = daemonset_dir().join(".yamllint");
    assert!(config.is_file());
    let out = run(Command::new("yamllint")
        .args(["--strict", "-f", "parsable", "-c"])
        .arg(&config)
        .arg(daemonset_dir()));
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "yamllint: {}",
        text(&out)
    );
}

#[test]
fn base_kustomization_renders_the_daemonset_as_designed() {
    let docs = yaml_docs(&render("base"));
    let kinds: BTreeSet<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    let want: BTreeSet<&str> = [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
    ]
    .into();
    assert_eq!(kinds, want);
    for d in &docs {
        if d["kind"] != "Namespace"
            && d["kind"] != "ClusterRole"
            && d["kind"] != "ClusterRoleBinding"
        {
            assert_eq!(
                d["metadata"]["namespace"], "jss-system",
                "{}",
                d["metadata"]
            );
        }
    }

    // RBAC: nodes/pods get (the kubelet's GET /pods), nothing more, bound to
    // the DaemonSet's account.
    let role = find(&docs, "ClusterRole", "jss-kubelet-reader");
    assert_eq!(
        role["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["nodes/pods"], "verbs": ["get"]}])
    );
    let binding = find(&docs, "ClusterRoleBinding", "jss-kubelet-reader");
    assert_eq!(binding["roleRef"]["name"], "jss-kubelet-reader");
    assert_eq!(
        binding["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": "jss", "namespace": "jss-system"}])
    );

    // The generated ConfigMap carries config.toml byte for byte.
    let cm = find_prefix(&docs, "ConfigMap", "jss-config-");
    let config_file = daemonset_dir().join("base/config.toml");
    assert_eq!(
        cm["data"]["config.toml"].as_str().unwrap(),
        fs::read_to_string(&config_file).unwrap()
    );
    let cluster = find_prefix(&docs, "ConfigMap", "jss-cluster-");
    let cfg = toml_json(&config_file);
    assert_eq!(cluster["data"]["CLUSTER_NAME"], cfg["cluster_name"]);
    assert_eq!(cluster["data"]["CLUSTER_REGION"], cfg["cluster_region"]);

    let ds = find(&docs, "DaemonSet", "jss");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostPID"], true);
    // The kubelet is reached by the node's name (its serving certificate
    // names the node), so the pod stays off the host network.
    assert!(spec.get("hostNetwork").is_none(), "{}", spec["hostNetwork"]);
    assert!(spec.get("dnsPolicy").is_none(), "{}", spec["dnsPolicy"]);
    assert_eq!(cfg["kubelet"]["url"], "https://${NODE_NAME}:10250");
    assert_eq!(spec["serviceAccountName"], "jss");
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert_eq!(
        spec["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(ds["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"], 0);

    let volumes = spec["volumes"].as_array().unwrap();
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap();
    assert_eq!(volume("run")["hostPath"]["path"], "/run/jss");
    assert_eq!(volume("state")["hostPath"]["path"], "/var/lib/jss");
    assert_eq!(volume("machine-id")["hostPath"]["path"], "/etc/machine-id");
    assert_eq!(
        volume("config")["configMap"]["name"],
        cm["metadata"]["name"]
    );
    assert_eq!(volume("vault")["secret"]["secretName"], "jss-vault");

    let init = &spec["initContainers"][0];
    let cmd = strings(&init["command"]);
    assert_eq!(&cmd[..3], ["jss-bootstrap", "node", "register"]);
    for flag in [
        "--state-dir",
        "--cluster",
        "--region",
        "--node",
        "--token-file",
    ] {
        assert!(cmd.contains(&flag), "init container lacks {flag}: {cmd:?}");
    }
    assert_eq!(
        env(init, "VAULT_ADDR")["valueFrom"]["secretKeyRef"]["name"],
        "jss-vault"
    );
    assert_eq!(
        env(init, "CLUSTER_NAME")["valueFrom"]["configMapKeyRef"]["name"],
        cluster["metadata"]["name"]
    );

    let main = &spec["containers"][0];
    assert_eq!(
        strings(&main["command"]),
        ["jss", "serve", "--config", "/etc/jss/config.toml"]
    );
    for c in [init, main] {
        assert_eq!(
            env(c, "NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
            "spec.nodeName"
        );
        assert_eq!(c["image"], "registry.example.com/jss:0.1.0");
        let sc = &c["securityContext"];
        assert_eq!(sc["privileged"], false);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert_eq!(c["resources"]["limits"]["squat.ai/tpmrm"], "1");
        assert!(c["resources"]["requests"]["memory"].is_string());
        assert!(c["resources"]["limits"]["memory"].is_string());
    }
    let socket = cfg["socket"].as_str().unwrap();
    // Liveness and startup: the daemon serves. Readiness: it can also sign
    // (a key whose PCR policy no longer matches is live, not ready).
    assert_eq!(
        strings(&main["readinessProbe"]["exec"]["command"]),
        ["jss", "health", "--ready", "--socket", socket]
    );
    for probe in ["startupProbe", "livenessProbe"] {
        assert_eq!(
            strings(&main[probe]["exec"]["command"]),
            ["jss", "health", "--socket", socket],
            "{probe}"
        );
    }
    let mounts = main["volumeMounts"].as_array().unwrap();
    let mount = |name: &str| mounts.iter().find(|m| m["name"] == name).unwrap();
    assert_eq!(mount("run")["mountPath"], "/run/jss");
    assert_eq!(mount("state")["mountPath"], cfg["state_dir"]);
    assert_eq!(mount("machine-id")["mountPath"], cfg["machine_id_path"]);
    assert_eq!(mount("machine-id")["readOnly"], true);
    assert_eq!(mount("config")["mountPath"], "/etc/jss");
    assert!(socket.starts_with("/run/jss/"));
}
