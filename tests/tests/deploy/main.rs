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

mod interfaces;
mod manifests;
mod overlays;
mod systemd;

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
