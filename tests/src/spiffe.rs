//! SPIFFE Workload API clients nobody here wrote, run as pod processes:
//! py-spiffe (PyPI `spiffe`) through `tests/spiffe/py_client.py`, and the
//! Rust `spiffe` crate through `spiffe-rs-client` (src/bin).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::daemon::bin;
use crate::node::spawn_in;
use crate::pods::PodProcess;

/// The client script.
pub fn client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("spiffe/py_client.py")
}

/// py-spiffe must be installed (swtpm-ci/install-deps): fail, never skip.
pub fn require_py_spiffe() {
    let ok = Command::new("python3")
        .args(["-c", "import spiffe"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "py-spiffe is missing: run swtpm-ci/install-deps (pip install spiffe)"
    );
}

/// `env SPIFFE_ENDPOINT_SOCKET=unix://SOCKET python3 py_client.py ARGS…`
pub fn client_argv(socket: &Path, args: &[&str]) -> Vec<String> {
    let mut argv = vec![
        format!("SPIFFE_ENDPOINT_SOCKET=unix://{}", socket.display()),
        "python3".into(),
        client_script().display().to_string(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    argv
}

/// `env SPIFFE_ENDPOINT_SOCKET=unix://SOCKET spiffe-rs-client ARGS…`
pub fn rs_client_argv(socket: &Path, args: &[&str]) -> Vec<String> {
    let mut argv = vec![
        format!("SPIFFE_ENDPOINT_SOCKET=unix://{}", socket.display()),
        bin("spiffe-rs-client").display().to_string(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    argv
}

/// Runs the py-spiffe client in `pod` (or on the host) against `socket`
/// and parses the JSON line it prints; panics with its output (and
/// `context`) on failure.
pub fn py_client(
    socket: &Path,
    pod: Option<&PodProcess>,
    args: &[&str],
    context: &dyn Fn() -> String,
) -> Value {
    run_client(&client_argv(socket, args), pod, context)
}

/// As [`py_client`], with the Rust `spiffe` crate's client.
pub fn rs_client(
    socket: &Path,
    pod: Option<&PodProcess>,
    args: &[&str],
    context: &dyn Fn() -> String,
) -> Value {
    run_client(&rs_client_argv(socket, args), pod, context)
}

/// `env ARGV…` in `pod` (or on the host); the last line of its output as JSON.
fn run_client(argv: &[String], pod: Option<&PodProcess>, context: &dyn Fn() -> String) -> Value {
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = match pod {
        Some(p) => spawn_in(p, Path::new("env"), &argv, Stdio::piped())
            .wait_with_output()
            .unwrap_or_else(|e| panic!("wait for SPIFFE client: {e}")),
        None => Command::new("env")
            .args(&argv)
            .output()
            .unwrap_or_else(|e| panic!("run SPIFFE client: {e}")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "SPIFFE client {argv:?} failed: {}\n{stdout}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        context()
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("client printed no JSON ({e}): {stdout}"))
}
