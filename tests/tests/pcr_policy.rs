#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report
//! The node key bound to the boot state, seen from the daemon: when PCR 7
//! changes under a running `jss serve`, the TPM refuses the key and the
//! daemon says so (503, metric, audit, readiness), never falling back.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;

use jss::signer::{PcrSelection, SignerKind};
use jss_tests::daemon::{Daemon, bin};
use jss_tests::node::{Node, run_in};
use jss_tests::pods::{Layout, PodProcess, Qos};

fn get(socket: &Path, path: &str) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: jss\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn health(socket: &Path, ready: bool) -> std::process::Output {
    let mut c = Command::new(bin("jss"));
    c.args(["health", "--socket", socket.to_str().unwrap()]);
    if ready {
        c.arg("--ready");
    }
    c.output().unwrap()
}

#[test]
fn a_changed_boot_state_stops_tokens_and_the_daemon_says_why() {
    let node = Node::with_pcrs(
        SignerKind::Tpm,
        PcrSelection::secure_boot(),
        "[cache]\nenabled = false\n",
    );
    let tcti = node.tpm.as_ref().unwrap().tcti();
    let mut d = Daemon::start(node.path(), &node.config);
    let sock = d.socket.clone();
    let pod = PodProcess::spawn(
        Layout::V2Systemd(Qos::Burstable),
        &node.pod_uid,
        &node.app_id,
    );
    let ok = run_in(&pod, &["token", "--socket", sock.to_str().unwrap()]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(health(&sock, true).status.success());

    // The boot state changes (as a new bootloader or Secure Boot db would).
    let out = Command::new("tpm2_pcrextend")
        .args(["-T", &tcti, &format!("7:sha256={}", "cd".repeat(32))])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let refused = run_in(&pod, &["token", "--socket", sock.to_str().unwrap()]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("503") && err.contains("signer_unavailable"),
        "{err}"
    );
    assert!(
        err.contains("boot state changed") && err.contains("--rotate"),
        "{err}"
    );
    let metrics = get(&sock, "/metrics");
    assert!(
        metrics.contains("jss_signer_errors_total{reason=\"pcr_mismatch\"} 1"),
        "{metrics}"
    );
    let audit = d.audit_lines();
    let last = audit.last().unwrap();
    assert_eq!(
        (&last["outcome"], &last["code"]),
        (&"denied".into(), &"signer_unavailable".into())
    );
    // Live, not ready: a restart cannot help, so the liveness probe passes.
    assert!(health(&sock, false).status.success());
    let ready = health(&sock, true);
    assert!(!ready.status.success());
    assert!(String::from_utf8_lossy(&ready.stderr).contains("boot state changed"));

    // A fresh daemon on the same blob: the key loads, the TPM still refuses.
    d.terminate(std::time::Duration::from_secs(5));
    let d = Daemon::start(node.path(), &node.config);
    let ready = health(&d.socket, true);
    assert!(!ready.status.success(), "ready after restart");
    let refused = run_in(&pod, &["token", "--socket", d.socket.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("boot state changed"));
    assert!(
        !d.stderr().contains("software"),
        "no fallback: {}",
        d.stderr()
    );
}
