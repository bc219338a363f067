//! The tools an operator would check Kubernetes objects with, run as
//! processes: PyYAML, python `jsonpatch`, `kubernetes-validate --strict`.
//! A missing tool fails the caller (swtpm-ci/install-deploy-deps installs them).

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// Kubernetes versions manifests and patched pods must validate against
/// (strict schemas of kubernetes-validate 1.37.0, pinned in
/// swtpm-ci/install-deploy-deps): the oldest and the newest it ships.
pub const KUBERNETES_VERSIONS: &[&str] = &["1.34.0", "1.37.0"];

/// Runs `cmd` with `stdin`; a tool that is not installed panics with a hint.
pub fn run(cmd: &mut Command, stdin: &[u8]) -> Output {
    let shown = format!("{cmd:?}");
    let mut child = match cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "{shown}: tool not found ({e}); run swtpm-ci/install-deploy-deps \
             (and put pip's script directory on PATH)"
        ),
        Err(e) => panic!("{shown}: {e}"),
    };
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin)
            .unwrap_or_else(|e| panic!("{shown}: stdin: {e}"));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{shown}: {e}"))
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn python_json(script: &str, args: &[&str], stdin: &[u8]) -> Value {
    let out = run(
        Command::new("python3").arg("-c").arg(script).args(args),
        stdin,
    );
    assert!(out.status.success(), "python3: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("python3 output: {e}"))
}

/// The first YAML document of `yaml`, as JSON (PyYAML).
pub fn yaml_to_json(yaml: &[u8]) -> Value {
    python_json(
        "import json,sys,yaml; print(json.dumps(yaml.safe_load(sys.stdin)))",
        &[],
        yaml,
    )
}

/// Every non-empty YAML document of `yaml`, as JSON (PyYAML).
pub fn yaml_docs(yaml: &[u8]) -> Vec<Value> {
    let v = python_json(
        "import json,sys,yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d is not None]))",
        &[],
        yaml,
    );
    match v {
        Value::Array(a) => a,
        other => panic!("PyYAML gave {other}"),
    }
}

/// `kubectl kustomize DIR`, which must succeed.
pub fn kustomize(dir: &Path) -> Vec<u8> {
    let out = run(Command::new("kubectl").arg("kustomize").arg(dir), b"");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir:?}: {}",
        text(&out)
    );
    out.stdout
}

/// `patch` (RFC 6902) applied to `doc` by python's `jsonpatch`, an
/// implementation independent of the one that wrote the patch.
pub fn json_patch(doc: &Value, patch: &Value) -> Value {
    let input = serde_json::to_vec(&serde_json::json!([doc, patch])).unwrap_or_default();
    python_json(
        "import json,sys,jsonpatch; d,p=json.load(sys.stdin); print(json.dumps(jsonpatch.JsonPatch(p).apply(d)))",
        &[],
        &input,
    )
}

/// `kubernetes-validate --strict` of one file for every version in
/// [`KUBERNETES_VERSIONS`]; panics with the tool's output on any error or warning.
pub fn validate(path: &Path) {
    validate_all(&[path]);
}

/// [`validate`] for many files: one run per Kubernetes version (the tool
/// loads its schemas once per run, about a second), its output naming the
/// file that failed.
pub fn validate_all<P: AsRef<Path>>(paths: &[P]) {
    for version in KUBERNETES_VERSIONS {
        let out = run(
            Command::new("kubernetes-validate")
                .args(["--strict", "--quiet", "-k", version])
                .args(paths.iter().map(AsRef::as_ref)),
            b"",
        );
        let all = text(&out);
        assert!(
            out.status.success() && !all.contains("ERROR") && !all.contains("WARN"),
            "{} files do not validate against Kubernetes {version}: {all}",
            paths.len()
        );
    }
}

/// A JSON array of strings (a command, an argument list) as `&str`s.
pub fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}
