//! The CSI driver's manifests (daemonset/csi) as kustomize renders them:
//! the plugin container and what it may touch, the registrar, the
//! CSIDriver, and the example pod against the Pod Security `restricted`
//! rules. tests/deploy/ validates the same files with kubernetes-validate and
//! yamllint.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use jss::csi::DRIVER_NAME;
use jss_tests::kube::{kustomize, strings, yaml_docs};
use jss_tests::pss::restricted_violations;
use serde_json::{Value, json};

fn render(sub: &str) -> Vec<Value> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../daemonset")
        .join(sub);
    yaml_docs(&kustomize(&dir))
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn by_name<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

#[test]
fn the_overlay_adds_plugin_registrar_and_driver_and_no_credential_reaches_the_plugin() {
    let docs = render("csi");
    let driver = find(&docs, "CSIDriver", DRIVER_NAME);
    assert_eq!(
        driver["spec"],
        json!({
            "attachRequired": false,
            "podInfoOnMount": true,
            "volumeLifecycleModes": ["Ephemeral"],
            "requiresRepublish": true,
            "fsGroupPolicy": "None",
        })
    );

    let ds = find(&docs, "DaemonSet", "jss");
    let spec = &ds["spec"]["template"]["spec"];
    let names: Vec<&str> = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["jss", "csi", "node-driver-registrar"]);

    let plugin = by_name(&spec["containers"], "csi");
    assert_eq!(plugin["image"], "registry.example.com/jss:0.1.0");
    assert_eq!(plugin["securityContext"]["privileged"], true);
    let cmd = strings(&plugin["command"]);
    assert_eq!(cmd[..2], ["jss", "csi"]);
    let arg = |flag: &str| cmd[cmd.iter().position(|a| *a == flag).unwrap() + 1];
    assert_eq!(arg("--endpoint"), "unix:///csi/csi.sock");
    assert_eq!(arg("--config"), "/etc/jss/config.toml");
    assert_eq!(arg("--kubelet-dir"), "/var/lib/kubelet");
    // Exactly these mounts: no state dir, no TPM, no Vault Secret, and the
    // pod's service-account token covered.
    let mounts: BTreeSet<(String, String)> = plugin["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["mountPath"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("config", "/etc/jss"),
        ("run", "/run/jss"),
        ("pod-token", "/run/jss-csi"),
        ("csi-plugin", "/csi"),
        ("kubelet-dir", "/var/lib/kubelet"),
        (
            "no-service-account-token",
            "/var/run/secrets/kubernetes.io/serviceaccount",
        ),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(mounts, want);
    let mounts = &plugin["volumeMounts"];
    assert_eq!(
        by_name(mounts, "kubelet-dir")["mountPropagation"],
        "Bidirectional"
    );
    assert_eq!(by_name(mounts, "run")["readOnly"], true);
    assert_eq!(
        by_name(mounts, "no-service-account-token")["readOnly"],
        true
    );
    assert_eq!(
        by_name(&spec["volumes"], "no-service-account-token")["emptyDir"]["sizeLimit"],
        "1Ki"
    );
    assert!(
        plugin["env"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["valueFrom"]["secretKeyRef"].is_null())
    );

    // The registrar: a pinned image, the plugin's socket, and the path the
    // kubelet reaches that socket at on the node.
    let reg = by_name(&spec["containers"], "node-driver-registrar");
    let image = reg["image"].as_str().unwrap();
    let tag = image
        .strip_prefix("registry.k8s.io/sig-storage/csi-node-driver-registrar:v")
        .unwrap_or_else(|| panic!("{image}"));
    assert!(
        tag.split('.').count() == 3 && tag.split('.').all(|n| n.parse::<u32>().is_ok()),
        "{image} is not pinned to a release"
    );
    let args = strings(&reg["args"]);
    assert!(args.contains(&"--csi-address=/csi/csi.sock"), "{args:?}");
    let plugin_dir = format!("/var/lib/kubelet/plugins/{DRIVER_NAME}");
    assert!(
        args.contains(&format!("--kubelet-registration-path={plugin_dir}/csi.sock").as_str()),
        "{args:?}"
    );
    assert_eq!(reg["securityContext"]["privileged"], false);
    assert_eq!(
        by_name(&spec["volumes"], "csi-plugin")["hostPath"]["path"],
        plugin_dir.as_str()
    );
    assert_eq!(
        by_name(&spec["volumes"], "plugins-registry")["hostPath"]["path"],
        "/var/lib/kubelet/plugins_registry"
    );
    assert_eq!(
        by_name(&reg["volumeMounts"], "plugins-registry")["mountPath"],
        "/registration"
    );
    // The daemon itself stays unprivileged, with its own mounts.
    let daemon = by_name(&spec["containers"], "jss");
    assert_eq!(daemon["securityContext"]["privileged"], false);
    assert!(
        daemon["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["name"] != "kubelet-dir"),
        "{daemon}"
    );
}

/// Token mode is on in the overlay: its config.toml is the base's with
/// `[csi] pod_token = true` and nothing else, and the pod-token socket's
/// directory is mounted into the daemon and the CSI plugin and nowhere else.
#[test]
fn the_overlay_turns_the_pod_token_socket_on_for_the_daemon_and_the_plugin_only() {
    use jss::config::Config;
    let docs = render("csi");
    let daemonset = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../daemonset");
    let parse = |text: &str| {
        Config::parse(text, &daemonset.join("config.toml"), Some("node-1".into()))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let cm = docs
        .iter()
        .find(|d| {
            d["kind"] == "ConfigMap"
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("jss-config-"))
        })
        .expect("the jss-config ConfigMap");
    let text = cm["data"]["config.toml"].as_str().unwrap();
    let cfg = parse(text);
    assert!(cfg.csi.pod_token);
    let base = std::fs::read_to_string(daemonset.join("base/config.toml")).unwrap();
    let mut want = parse(&base);
    assert!(!want.csi.pod_token);
    want.csi.pod_token = true;
    assert_eq!(format!("{cfg:?}"), format!("{want:?}"));

    let ds = find(&docs, "DaemonSet", "jss");
    let spec = &ds["spec"]["template"]["spec"];
    let dir = cfg.csi.pod_token_socket.parent().unwrap().to_str().unwrap();
    let vol = by_name(&spec["volumes"], "pod-token");
    assert_eq!(
        vol["hostPath"],
        json!({"path": dir, "type": "DirectoryOrCreate"})
    );
    let mut mounted: Vec<&str> = Vec::new();
    for c in spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(spec["initContainers"].as_array().unwrap())
    {
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            if m["name"] == "pod-token" {
                assert_eq!(m["mountPath"], dir, "{c}");
                assert!(
                    m["readOnly"].is_null(),
                    "the daemon binds, the plugin connects: {c}"
                );
                mounted.push(c["name"].as_str().unwrap());
            }
        }
    }
    assert_eq!(mounted, ["jss", "csi"]);
    // `jss csi` reads that same file.
    let plugin = by_name(&spec["containers"], "csi");
    let cmd = strings(&plugin["command"]);
    let config = cmd[cmd.iter().position(|a| *a == "--config").unwrap() + 1];
    let config_mount = by_name(&plugin["volumeMounts"], "config");
    assert_eq!(
        config,
        format!(
            "{}/config.toml",
            config_mount["mountPath"].as_str().unwrap()
        )
    );
    let daemon = by_name(&spec["containers"], "jss");
    assert_eq!(
        strings(&daemon["command"]),
        ["jss", "serve", "--config", config]
    );
}

#[test]
fn the_example_pod_passes_restricted_in_a_restricted_namespace() {
    let docs = render("csi/example");
    let ns = find(&docs, "Namespace", "jss-csi-example");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    let pod = find(&docs, "Pod", "csi-example");
    assert_eq!(pod["metadata"]["namespace"], "jss-csi-example");
    let broken = restricted_violations(pod);
    assert!(broken.is_empty(), "{broken:#?}");
    let vol = by_name(&pod["spec"]["volumes"], "jss-socket");
    assert_eq!(
        vol["csi"],
        json!({"driver": DRIVER_NAME, "readOnly": true, "volumeAttributes": {"mode": "socket"}})
    );
    let c = &pod["spec"]["containers"][0];
    let mount = by_name(&c["volumeMounts"], "jss-socket");
    assert_eq!(mount["readOnly"], true);
    let cmd = strings(&c["command"]);
    let socket = cmd[cmd.iter().position(|a| *a == "--socket").unwrap() + 1];
    assert_eq!(
        socket,
        format!("{}/jss.sock", mount["mountPath"].as_str().unwrap())
    );

    // The check has teeth: the same pod with the hostPath volume it replaces
    // (daemonset/example-app's) is refused.
    let mut host = pod.clone();
    host["spec"]["volumes"][0] =
        json!({"name": "jss-socket", "hostPath": {"path": "/run/jss", "type": "Directory"}});
    assert!(!restricted_violations(&host).is_empty());
}
