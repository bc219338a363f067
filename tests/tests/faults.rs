//! Broken neighbours and hostile clients: the daemon answers 503 with the
//! reason while a dependency is down, recovers without a restart, and sheds
//! clients that hold connections or send too much.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::process::Output;
use std::time::{Duration, Instant};

use jss::signer::SignerKind;
use jss_tests::daemon::Daemon;
use jss_tests::kubelet::Fault;
use jss_tests::node::{Node, run_in};
use jss_tests::pods::{Layout, PodProcess, Qos};

fn start(extra: &str) -> (Node, Daemon) {
    let node = Node::new(SignerKind::Tpm, extra);
    let daemon = Daemon::start(node.path(), &node.config);
    (node, daemon)
}

fn token(pod: &PodProcess, d: &Daemon) -> Output {
    run_in(pod, &["token", "--socket", d.socket.to_str().unwrap()])
}

fn refused_with(o: &Output, status: &str, code: &str) {
    assert!(!o.status.success(), "expected a refusal, got a token");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(status) && err.contains(code),
        "want {status} {code}: {err}"
    );
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn swtpm_killed_while_serving_then_back() {
    let (mut node, d) = start("[cache]\nenabled = false\n");
    let pod = PodProcess::spawn(
        Layout::V2Systemd(Qos::Burstable),
        &node.pod_uid,
        &node.app_id,
    );
    ok(&token(&pod, &d));
    let tpm = node.tpm.as_mut().unwrap();
    tpm.kill();
    refused_with(&token(&pod, &d), "503", "signer_unavailable");
    refused_with(&token(&pod, &d), "503", "signer_unavailable");
    tpm.restart();
    ok(&token(&pod, &d));
    let metrics = std::fs::read_to_string(&d.audit_log).unwrap();
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"denied\"")).count(),
        2
    );
}

#[test]
fn kubelet_faults_answer_503_with_the_reason_then_recover() {
    let (node, d) = start("[cache]\nenabled = false\n");
    let pod = PodProcess::spawn(
        Layout::V1Cgroupfs(Qos::Guaranteed),
        &node.pod_uid,
        &node.app_id,
    );
    ok(&token(&pod, &d));
    for (fault, words) in [
        (Fault::Status(401), "401"),
        (Fault::Status(403), "403"),
        (Fault::Garbage, "malformed"),
        (Fault::Hangup, "kubelet"),
        (Fault::Status(500), "500"),
    ] {
        node.kubelet.set_fault(fault.clone());
        let o = token(&pod, &d);
        refused_with(&o, "503", "kubelet");
        let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
        assert!(err.contains(&words.to_lowercase()), "{fault:?}: {err}");
        node.kubelet.set_fault(Fault::None);
        ok(&token(&pod, &d));
    }
    // A kubelet slower than the client's timeout: 503 timeout, then fine.
    node.kubelet.set_fault(Fault::Delay(Duration::from_secs(4)));
    refused_with(&token(&pod, &d), "503", "kubelet");
    node.kubelet.set_fault(Fault::None);
    ok(&token(&pod, &d));
}

#[test]
fn kubelet_down() {
    let (mut node, d) = start("[cache]\nenabled = false\n");
    let pod = PodProcess::spawn(
        Layout::V2Systemd(Qos::BestEffort),
        &node.pod_uid,
        &node.app_id,
    );
    node.kubelet.stop();
    let o = token(&pod, &d);
    refused_with(&o, "503", "kubelet");
    // The daemon itself is fine and says so.
    assert!(d.audit_lines().iter().any(|l| l["outcome"] == "denied"));
}

#[test]
fn a_thousand_idle_connections_do_not_starve_a_new_client() {
    // Idle connections are dropped after a minute here: a server that
    // served them one at a time would keep the new client waiting that long.
    let (node, d) = start("[limits]\nmax_connections = 1100\nheader_timeout_ms = 60000\n");
    let pod = PodProcess::spawn(
        Layout::V2Systemd(Qos::Burstable),
        &node.pod_uid,
        &node.app_id,
    );
    let idle: Vec<UnixStream> = (0..1000)
        .map(|_| UnixStream::connect(&d.socket).unwrap())
        .collect();
    let t = Instant::now();
    ok(&token(&pod, &d));
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "took {:?} with 1000 idle connections",
        t.elapsed()
    );
    drop(idle);
}

#[test]
fn slow_drip_and_oversize_requests_are_dropped() {
    let (node, d) = start("[limits]\nheader_timeout_ms = 800\n");
    // Headers one byte at a time, slower than the header timeout allows.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    let mut closed = false;
    for b in b"GET /healthz HTTP/1.1\r\nHost: jss\r\nX-Slow: 1\r\n\r\n" {
        if s.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(150));
        if t.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let answer = String::from_utf8_lossy(&buf);
    assert!(
        closed || !answer.contains("200 OK"),
        "slow client was served: {answer}"
    );
    assert!(t.elapsed() < Duration::from_secs(5));

    // A body that trickles in: 408.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(b"POST /v1/token HTTP/1.1\r\nHost: jss\r\nContent-Length: 20\r\n\r\n{\"aud")
        .unwrap();
    let mut buf = String::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_string(&mut buf);
    assert!(buf.starts_with("HTTP/1.1 408"), "{buf}");

    // 64 KiB of headers: refused without reading them all into memory.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: jss\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = s.write_all(big.as_bytes());
    let mut buf = String::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_string(&mut buf);
    assert!(!buf.contains("200 OK"), "{buf}");

    // The daemon still serves.
    let pod = PodProcess::spawn(
        Layout::V2Systemd(Qos::Burstable),
        &node.pod_uid,
        &node.app_id,
    );
    ok(&token(&pod, &d));
}
