#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The deployment files (systemd/, daemonset/) checked by the tools an
//! operator would use: systemd-analyze, systemd-sysusers, systemd-tmpfiles,
//! kubectl kustomize, kubernetes-validate and yamllint. A missing tool fails
//! the test (`swtpm-ci/install-deploy-deps` installs them); nothing is skipped.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use jss_tests::kube::{self, KUBERNETES_VERSIONS, strings};
use serde_json::Value;

/// `systemd-analyze security` exposure that jss.service must not exceed.
const MAX_EXPOSURE: f64 = 2.0;

/// The kustomizations and what each must render.
const KUSTOMIZATIONS: &[&str] = &[
    "base",
    "privileged",
    "legacy-nodes-proxy",
    "example-app",
    "prune",
    "csi",
    "csi/example",
];

/// JSON patches of the overlays: not manifests on their own.
const PATCHES: &[&str] = &[
    "privileged/privileged.yaml",
    "legacy-nodes-proxy/nodes-proxy.yaml",
    "csi/plugin.yaml",
];

/// The only kustomization that may grant `nodes/proxy` (kubelets without
/// fine-grained authorization), and what its warning must name.
const LEGACY_OVERLAY: &str = "legacy-nodes-proxy";
const NODES_PROXY_WARNING: &[&str] = &[
    "WARNING",
    "exec",
    "attach",
    "port-forward",
    "every container",
];

/// Every key the daemon's config.toml knows (the interface; unknown keys are errors).
const CONFIG_TOP_KEYS: &[&str] = &[
    "socket",
    "socket_mode",
    "state_dir",
    "cluster_name",
    "cluster_region",
    "node_name",
    "machine_id_path",
    "proc_root",
    "token_ttl_seconds",
    "audiences",
    "signer",
    "kubelet",
    // Shipped empty (off), its keys commented with their defaults.
    "spiffe",
    "csi",
];
const CONFIG_SIGNER_KEYS: &[&str] = &["kind", "tcti"];
const CONFIG_KUBELET_KEYS: &[&str] = &["url", "token_path", "ca_path", "insecure_skip_tls_verify"];
const CONFIG_CSI_KEYS: &[&str] = &["pod_token", "pod_token_socket"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs a command; a tool that is not installed fails the test with a hint.
fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    match cmd.stdin(Stdio::null()).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "{shown}: tool not found ({e}); run swtpm-ci/install-deploy-deps \
             (and put pip's script directory on PATH)"
        ),
        Err(e) => panic!("{shown}: {e}"),
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run_ok(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = run(cmd);
    assert!(out.status.success(), "{shown} failed: {}", text(&out));
    out
}

// ---------------------------------------------------------------- systemd ----

/// `jss` and `jss-bootstrap` built from this tree (one `cargo build` per test
/// binary; a no-op when `swtpm-ci/test` has built the workspace already).
fn built_binaries() -> &'static (PathBuf, PathBuf) {
    static BINS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINS.get_or_init(|| {
        // This test runs as target/<profile>/deps/deploy-<hash>.
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let profile = match profile_dir.file_name().unwrap().to_str().unwrap() {
            "debug" => "dev".to_string(),
            other => other.to_string(),
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        run_ok(
            Command::new(cargo)
                .current_dir(repo())
                .args([
                    "build",
                    "--quiet",
                    "--bins",
                    "-p",
                    "jss",
                    "-p",
                    "jss-bootstrap",
                ])
                .args(["--profile", &profile]),
        );
        let jss = profile_dir.join("jss");
        let boot = profile_dir.join("jss-bootstrap");
        assert!(
            jss.is_file() && boot.is_file(),
            "no binaries in {profile_dir:?}"
        );
        (jss, boot)
    })
}

const UNITS: &[&str] = &[
    "jss.service",
    "jss.socket",
    "jss-bootstrap.service",
    "jss-prune.service",
    "jss-prune.timer",
];

/// A throw-away root for `systemd-analyze --root`.
///
/// Why a root and not the host: `verify` checks that every Exec*= binary
/// exists and is executable, and /usr/bin/jss is not installed on a build
/// machine. Rewriting ExecStart= in a generated copy would verify a unit we do
/// not ship; installing into the host's /usr/bin would change the machine.
/// So the units go in byte for byte, next to the real binaries built from this
/// tree at the paths the units name (/usr/bin/jss, /usr/bin/jss-bootstrap),
/// plus the host's own units (sysinit.target, ...) and the host's copy of any
/// other program a unit runs (/bin/kill for ExecReload=).
fn systemd_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    fs::create_dir_all(r.join("usr/bin")).unwrap();
    fs::create_dir_all(r.join("usr/lib/systemd/system")).unwrap();
    fs::create_dir_all(r.join("etc/systemd/system")).unwrap();
    // Merged /usr, as on Debian 12.
    for d in ["bin", "sbin"] {
        std::os::unix::fs::symlink("usr/bin", r.join(d)).unwrap();
    }
    for entry in fs::read_dir("/usr/lib/systemd/system")
        .expect("/usr/lib/systemd/system: is systemd installed?")
    {
        let entry = entry.unwrap();
        let path = entry.path();
        let dest = r.join("usr/lib/systemd/system").join(entry.file_name());
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&path).unwrap(), dest).unwrap();
        } else if meta.is_file() {
            fs::copy(&path, dest).unwrap();
        }
    }
    let (jss, boot) = built_binaries();
    let units_dir = repo().join("systemd");
    for unit in UNITS {
        let src = units_dir.join(unit);
        let body = fs::read_to_string(&src).unwrap();
        fs::write(r.join("etc/systemd/system").join(unit), &body).unwrap();
        for line in body.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            if !key.starts_with("Exec") {
                continue;
            }
            let prog = value
                .trim_start_matches(['@', '-', ':', '+', '!'])
                .split_whitespace()
                .next()
                .unwrap();
            assert!(
                prog.starts_with('/'),
                "{unit}: {key}= should name an absolute path"
            );
            let dest = r.join(prog.trim_start_matches('/'));
            let src = match prog {
                "/usr/bin/jss" => jss.clone(),
                "/usr/bin/jss-bootstrap" => boot.clone(),
                other => PathBuf::from(other),
            };
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            fs::copy(&src, &dest).unwrap_or_else(|e| panic!("{src:?} -> {dest:?}: {e}"));
        }
    }
    assert!(r.join("usr/bin/jss").is_file() && r.join("usr/bin/jss-bootstrap").is_file());
    root
}

fn verify(root: &Path) -> Output {
    run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(UNITS))
}

#[test]
fn systemd_units_verify_cleanly() {
    let root = systemd_root();
    let out = verify(root.path());
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}",
        text(&out)
    );
    // verify exits 0 on many mistakes (unknown keys, bad values) and only
    // prints them, so any output at all is a failure.
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze verify complained: {}",
        text(&out)
    );

    // The same check does catch a mistake: a unit with an unknown key and a
    // bad value, and one whose ExecStart= binary is missing.
    let unit = root.path().join("etc/systemd/system/jss.service");
    let good = fs::read_to_string(&unit).unwrap();
    fs::write(
        &unit,
        good.replace("ProtectProc=default", "ProtectProc=bogus") + "NoSuchKey=1\n",
    )
    .unwrap();
    let out = verify(root.path());
    let all = text(&out);
    assert!(all.contains("bogus") && all.contains("NoSuchKey"), "{all}");
    fs::write(&unit, &good).unwrap();
    fs::remove_file(root.path().join("usr/bin/jss")).unwrap();
    let out = verify(root.path());
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("/usr/bin/jss"), "{}", text(&out));
}

#[test]
fn systemd_units_wire_socket_bootstrap_and_hardening() {
    let dir = repo().join("systemd");
    let service = fs::read_to_string(dir.join("jss.service")).unwrap();
    let socket = fs::read_to_string(dir.join("jss.socket")).unwrap();
    let boot = fs::read_to_string(dir.join("jss-bootstrap.service")).unwrap();
    let has = |unit: &str, line: &str| unit.lines().any(|l| l.trim() == line);
    for line in [
        "Type=notify",
        "ExecStart=/usr/bin/jss serve --config /etc/jss/config.toml",
        "User=jss",
        "SupplementaryGroups=tss",
        "DeviceAllow=/dev/tpmrm0 rw",
        "StateDirectory=jss",
        "RuntimeDirectory=jss",
        // Stopping jss.service must not delete the socket jss.socket owns.
        "RuntimeDirectoryPreserve=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        // Attestation reads other users' /proc/<pid>: never hidepid.
        "ProtectProc=default",
        "Requires=jss-bootstrap.service",
        "After=jss-bootstrap.service",
        "Requires=jss.socket",
    ] {
        assert!(has(&service, line), "jss.service lacks `{line}`");
    }
    assert!(!has(&service, "ProtectProc=invisible"));
    for line in [
        "ListenStream=/run/jss/jss.sock",
        "SocketMode=0666",
        "Service=jss.service",
    ] {
        assert!(has(&socket, line), "jss.socket lacks `{line}`");
    }
    for line in [
        "Type=oneshot",
        "ConditionPathExists=!/var/lib/jss/chain.pem",
        "ConditionPathExists=!/var/lib/jss/current",
        "Before=jss.service",
        "LoadCredential=vault-token:/etc/jss/vault-token",
    ] {
        assert!(has(&boot, line), "jss-bootstrap.service lacks `{line}`");
    }
    let exec = boot
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    assert!(
        exec.starts_with("/usr/bin/jss-bootstrap node register --state-dir /var/lib/jss "),
        "{exec}"
    );
    assert!(exec.contains("--token-file %d/vault-token"), "{exec}");
    // The daemon's socket settings agree with the socket unit.
    let cfg = toml_json(&dir.join("config.toml"));
    assert_eq!(cfg["socket"], "/run/jss/jss.sock");
    assert_eq!(cfg["socket_mode"], "0666");
    assert_eq!(cfg["state_dir"], "/var/lib/jss");
}

fn exposure(root: &Path, unit: &str) -> f64 {
    let out = run_ok(
        Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(format!("--root={}", root.display()))
            .arg(unit),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let marker = format!("Overall exposure level for {unit}: ");
    let rest = stdout
        .lines()
        .find_map(|l| l.split_once(&marker).map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no exposure figure in: {}", text(&out)));
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn systemd_security_exposure_is_low_and_recorded() {
    let root = systemd_root();
    let jss = exposure(root.path(), "jss.service");
    let boot = exposure(root.path(), "jss-bootstrap.service");
    eprintln!("exposure: jss.service {jss}, jss-bootstrap.service {boot}");
    assert!(
        jss <= MAX_EXPOSURE,
        "jss.service exposure {jss} > {MAX_EXPOSURE}"
    );
    assert!(
        boot <= MAX_EXPOSURE,
        "jss-bootstrap.service exposure {boot} > {MAX_EXPOSURE}"
    );
    // The README states the measured figure; keep it true.
    let readme = fs::read_to_string(repo().join("README.md")).unwrap();
    let line = format!("Overall exposure level for jss.service: {jss:.1}");
    assert!(readme.contains(&line), "README.md should record `{line}`");
}

#[test]
fn sysusers_and_tmpfiles_create_the_user_and_directories() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    fs::create_dir_all(r.join("etc")).unwrap();
    let dir = repo().join("systemd");
    run_ok(
        Command::new("systemd-sysusers")
            .arg(format!("--root={}", r.display()))
            .arg(dir.join("sysusers.d/jss.conf")),
    );
    let passwd = fs::read_to_string(r.join("etc/passwd")).unwrap();
    let jss: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("jss:"))
        .expect("no jss user")
        .split(':')
        .collect();
    assert_eq!(jss[6], "/usr/sbin/nologin");
    let uid: u32 = jss[2].parse().unwrap();
    assert!(uid < 1000, "jss must be a system user, got uid {uid}");
    let group = fs::read_to_string(r.join("etc/group")).unwrap();
    let tss = group.lines().find(|l| l.starts_with("tss:")).unwrap();
    assert!(
        tss.rsplit(':')
            .next()
            .unwrap()
            .split(',')
            .any(|m| m == "jss"),
        "jss is not in group tss: {tss}"
    );

    run_ok(
        Command::new("systemd-tmpfiles")
            .arg(format!("--root={}", r.display()))
            .arg("--create")
            .arg(dir.join("tmpfiles.d/jss.conf")),
    );
    for (path, mode, owner) in [
        ("var/lib/jss", 0o700, uid),
        ("run/jss", 0o755, uid),
        ("etc/jss", 0o750, 0),
    ] {
        let meta = fs::metadata(r.join(path)).unwrap();
        assert!(meta.is_dir(), "{path}");
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{path} mode");
        assert_eq!(meta.uid(), owner, "{path} owner");
    }
}

// ------------------------------------------------------------- kubernetes ----

fn daemonset_dir() -> PathBuf {
    repo().join("daemonset")
}

/// config.toml as JSON, parsed by Python's tomllib (a real TOML parser).
fn toml_json(path: &Path) -> Value {
    let out = run_ok(
        Command::new("python3")
            .args([
                "-c",
                "import json,sys,tomllib; print(json.dumps(tomllib.load(open(sys.argv[1],'rb'))))",
            ])
            .arg(path),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// YAML documents as JSON, parsed by PyYAML (yamllint's own parser).
fn yaml_docs(yaml: &[u8]) -> Vec<Value> {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import json,sys,yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d is not None]))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), yaml).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "PyYAML: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

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

/// `kubectl kustomize DIR`, with stderr allowed to carry only kustomize v5's
/// deprecation notes for the two fields that keep the overlay renderable by
/// kustomize v2.0.3 (Debian's kubectl) as well.
fn render(sub: &str) -> Vec<u8> {
    let out = run_ok(
        Command::new("kubectl")
            .arg("kustomize")
            .arg(daemonset_dir().join(sub)),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            line.starts_with("# Warning: 'bases' is deprecated")
                || line.starts_with("# Warning: 'patchesJson6902' is deprecated"),
            "kubectl kustomize {sub}: unexpected message: {line}"
        );
    }
    assert!(
        !out.stdout.is_empty(),
        "kubectl kustomize {sub} rendered nothing"
    );
    out.stdout
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

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn find_prefix<'a>(docs: &'a [Value], kind: &str, prefix: &str) -> &'a Value {
    docs.iter()
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .unwrap_or_else(|| panic!("no {kind} {prefix}*"))
}

fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("{} has no env {name}", container["name"]))
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

#[test]
fn config_examples_use_exactly_the_daemons_keys() {
    let top: BTreeSet<&str> = CONFIG_TOP_KEYS.iter().copied().collect();
    let signer: BTreeSet<&str> = CONFIG_SIGNER_KEYS.iter().copied().collect();
    let kubelet: BTreeSet<&str> = CONFIG_KUBELET_KEYS.iter().copied().collect();
    for (path, has_node_name) in [
        (repo().join("systemd/config.toml"), true),
        // In the DaemonSet node_name comes from $NODE_NAME (downward API).
        (daemonset_dir().join("base/config.toml"), false),
    ] {
        let cfg = toml_json(&path);
        let keys =
            |v: &Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
        let mut want: BTreeSet<String> = top.iter().map(|s| s.to_string()).collect();
        if !has_node_name {
            want.remove("node_name");
        }
        assert_eq!(keys(&cfg), want, "{path:?}");
        let s: BTreeSet<String> = signer.iter().map(|s| s.to_string()).collect();
        let k: BTreeSet<String> = kubelet.iter().map(|s| s.to_string()).collect();
        assert_eq!(keys(&cfg["signer"]), s, "{path:?}");
        assert_eq!(keys(&cfg["kubelet"]), k, "{path:?}");
        let c: BTreeSet<String> = CONFIG_CSI_KEYS.iter().map(|s| s.to_string()).collect();
        assert_eq!(keys(&cfg["csi"]), c, "{path:?}");
        // Off: only daemonset/csi (csi_deploy.rs) turns the pod-token socket on.
        assert_eq!(cfg["csi"]["pod_token"], false, "{path:?}");
        assert!(
            keys(&cfg["spiffe"]).is_empty(),
            "{path:?}: SPIFFE is off by default"
        );
        assert_eq!(cfg["signer"]["kind"], "tpm");
        assert_eq!(cfg["token_ttl_seconds"], 60);
        assert_eq!(cfg["kubelet"]["insecure_skip_tls_verify"], false);
    }
}

// ------------------------------------------------------------- Containerfile --

/// Every shared library the built binaries load is in the image: shipped by a
/// package the Containerfile's runtime stage installs, or by debian:12-slim.
#[test]
fn containerfile_runtime_stage_installs_every_linked_library() {
    let containerfile = fs::read_to_string(daemonset_dir().join("Containerfile")).unwrap();
    let runtime = containerfile
        .split("FROM docker.io/library/debian:12-slim")
        .nth(1)
        .expect("runtime stage on debian:12-slim");
    let installed: BTreeSet<&str> = runtime
        .split("--no-install-recommends")
        .nth(1)
        .unwrap()
        .split("&&")
        .next()
        .unwrap()
        .split_whitespace()
        .filter(|w| *w != "\\")
        .collect();
    // Packages of the debian:12-slim base image itself.
    let base = ["libc6", "libgcc-s1"];
    let (jss, boot) = built_binaries();
    let mut needed = BTreeSet::new();
    for bin in [jss, boot] {
        let out = run_ok(Command::new("ldd").arg(bin));
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some((_, rest)) = line.split_once("=> ") else {
                continue;
            };
            let lib = rest.split_whitespace().next().unwrap();
            needed.insert(PathBuf::from(lib));
        }
    }
    // libtss2-tctildr loads the device TCTI at run time (dlopen), which ldd
    // does not show; the DaemonSet's tcti is device:/dev/tpmrm0.
    let tcti = Path::new("/usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0");
    if needed
        .iter()
        .any(|p| p.to_string_lossy().contains("libtss2-tctildr"))
    {
        needed.insert(tcti.to_path_buf());
    }
    for lib in needed {
        let line = owning_package(&lib);
        let pkg = line.split(':').next().unwrap().trim();
        assert!(
            installed.contains(pkg) || base.contains(&pkg),
            "{lib:?} comes from {pkg}, which the Containerfile's runtime stage does not install \
             (it installs {installed:?})"
        );
    }
}

/// `dpkg-query -S` for a library, under the name dpkg recorded: with merged
/// /usr, ldd may say /lib/... where dpkg has /usr/lib/... or the other way
/// round, and a symlink's target may be the only name dpkg knows.
fn owning_package(lib: &Path) -> String {
    let shown = lib.display().to_string();
    let real = fs::canonicalize(lib).unwrap().display().to_string();
    let mut candidates = Vec::new();
    for p in [shown, real] {
        let toggled = match p.strip_prefix("/usr") {
            Some(rest) => rest.to_string(),
            None => format!("/usr{p}"),
        };
        candidates.push(p);
        candidates.push(toggled);
    }
    for c in &candidates {
        let out = run(Command::new("dpkg-query").arg("-S").arg(c));
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
    }
    panic!("no Debian package owns {lib:?} (tried {candidates:?})");
}

/// `--flags` in an argument list.
fn flags<'a>(args: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    args.into_iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap().to_string())
        .collect()
}

#[test]
fn bootstrap_flags_in_units_and_daemonset_exist() {
    let (_, boot) = built_binaries();
    let out = run_ok(Command::new(boot).args(["node", "register", "--help"]));
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let known = |flag: &str| {
        help.lines()
            .any(|l| l.trim_start().split([' ', ',']).next() == Some(flag))
    };

    let unit = fs::read_to_string(repo().join("systemd/jss-bootstrap.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let docs = yaml_docs(&render("base"));
    let ds = find(&docs, "DaemonSet", "jss");
    let init = &ds["spec"]["template"]["spec"]["initContainers"][0];
    for (what, used) in [
        ("jss-bootstrap.service", flags(exec.split_whitespace())),
        (
            "the DaemonSet's init container",
            flags(strings(&init["command"])),
        ),
    ] {
        assert!(used.len() >= 5, "{what}: {used:?}");
        for flag in used {
            assert!(
                known(&flag),
                "{what} passes {flag}, which `jss-bootstrap node register` does not know:\n{help}"
            );
        }
    }
    assert!(!known("--no-such-flag"));
}

// ------------------------------------------------- jss config and commands --

#[test]
fn shipped_configs_parse_with_the_daemons_parser() {
    use jss::config::Config;
    let systemd = repo().join("systemd/config.toml");
    let text = fs::read_to_string(&systemd).unwrap();
    let cfg = Config::parse(&text, &systemd, Some("node-1".into()))
        .unwrap_or_else(|e| panic!("{}: {e}", systemd.display()));
    // The unit's paths: StateDirectory=jss, the socket unit's ListenStream.
    assert_eq!(cfg.state_dir, Path::new("/var/lib/jss"));
    assert_eq!(cfg.socket, Path::new("/run/jss/jss.sock"));
    let socket_unit = fs::read_to_string(repo().join("systemd/jss.socket")).unwrap();
    assert!(
        socket_unit
            .lines()
            .any(|l| l.trim() == format!("ListenStream={}", cfg.socket.display())),
        "jss.socket does not listen on {}",
        cfg.socket.display()
    );

    // The DaemonSet's config: node_name and the kubelet's host come from
    // $NODE_NAME; without it the daemon refuses to start.
    let ds = daemonset_dir().join("base/config.toml");
    let text = fs::read_to_string(&ds).unwrap();
    let cfg = Config::parse(&text, &ds, Some("node-1".into()))
        .unwrap_or_else(|e| panic!("{}: {e}", ds.display()));
    assert_eq!(cfg.node_name, "node-1");
    assert_eq!(cfg.kubelet.url, "https://node-1:10250");
    assert_eq!(cfg.socket, Path::new("/run/jss/jss.sock"));
    assert_eq!(cfg.state_dir, Path::new("/var/lib/jss"));
    let e = Config::parse(&text, &ds, None).unwrap_err().to_string();
    assert!(e.contains("NODE_NAME"), "{e}");
    // The parser is not lenient: a misspelt key in the shipped file fails.
    let typo = text.replace("token_ttl_seconds", "token_tll_seconds");
    assert!(Config::parse(&typo, &ds, Some("node-1".into())).is_err());
}

/// `jss <sub> <flags>` as written in a unit, manifest or script: the
/// subcommand and its `--flags`.
fn jss_invocations(words: &[&str]) -> Vec<(String, BTreeSet<String>)> {
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if *w == "jss" || w.ends_with("/jss") {
            let sub = words[i + 1].to_string();
            let args = words[i + 2..]
                .iter()
                .take_while(|a| !["&&", "||", ";", "|", ">", "<"].contains(*a))
                .copied();
            out.push((sub, flags(args)));
        }
    }
    out
}

#[test]
fn jss_subcommands_and_flags_in_units_and_manifests_exist() {
    let (jss, _) = built_binaries();
    let unit = fs::read_to_string(repo().join("systemd/jss.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let mut uses: Vec<(String, String, BTreeSet<String>)> = Vec::new();
    let mut add = |what: &str, words: Vec<&str>| {
        let found = jss_invocations(&words);
        assert!(!found.is_empty(), "{what}: no jss command in {words:?}");
        for (sub, f) in found {
            uses.push((what.to_string(), sub, f));
        }
    };
    add("jss.service", exec.split_whitespace().collect());

    let docs = yaml_docs(&render("base"));
    let ds = find(&docs, "DaemonSet", "jss");
    let main = &ds["spec"]["template"]["spec"]["containers"][0];
    add("the DaemonSet's container", strings(&main["command"]));
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        add(probe, strings(&main[probe]["exec"]["command"]));
    }
    let app = yaml_docs(&render("example-app"));
    let pod = find(&app, "Pod", "example-app");
    for c in pod["spec"]["initContainers"].as_array().unwrap() {
        add("the example app", strings(&c["command"]));
    }
    let csi = yaml_docs(&render("csi"));
    let ds = find(&csi, "DaemonSet", "jss");
    let plugin = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "csi")
        .unwrap();
    add("the CSI plugin's container", strings(&plugin["command"]));
    let example = yaml_docs(&render("csi/example"));
    let pod = find(&example, "Pod", "csi-example");
    add(
        "the CSI example pod",
        strings(&pod["spec"]["containers"][0]["command"]),
    );
    let containerfile = fs::read_to_string(daemonset_dir().join("Containerfile")).unwrap();
    let cmd = containerfile
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .unwrap();
    let cmd: Vec<String> = serde_json::from_str(cmd).unwrap();
    add(
        "the Containerfile",
        cmd.iter().map(String::as_str).collect(),
    );

    let subs: BTreeSet<&str> = uses.iter().map(|(_, s, _)| s.as_str()).collect();
    assert_eq!(
        subs,
        BTreeSet::from(["csi", "health", "secrets", "serve", "token"]),
        "{uses:?}"
    );
    for (what, sub, used) in &uses {
        // An unknown subcommand makes --help fail.
        let out = run_ok(Command::new(jss).args([sub.as_str(), "--help"]));
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        let known = |flag: &str| {
            help.lines()
                .any(|l| l.trim_start().split([' ', ',']).next() == Some(flag))
        };
        assert!(!used.is_empty(), "{what}: jss {sub} without flags");
        for flag in used {
            assert!(
                known(flag),
                "{what} passes {flag}, which `jss {sub}` does not know:\n{help}"
            );
        }
        assert!(!known("--no-such-flag"));
    }
    let bad = run(Command::new(jss).args(["no-such-subcommand", "--help"]));
    assert!(!bad.status.success());
}
