#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report
//! The slow-TPM proxy (`jss_tests::tpm_proxy`): the TPM signer works through
//! it unchanged, every signature is held for the added latency, commands of
//! several clients reach swtpm one at a time, and swtpm's control channel is
//! forwarded.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jss::signer::{self, KeyPolicy, Signer, SignerConfig, SignerKind};
use jss_tests::swtpm::Swtpm;
use jss_tests::tpm_proxy::{TPM2_CC_SIGN, TpmProxy};

fn open(tcti: &str, dir: &std::path::Path) -> Arc<dyn Signer> {
    signer::open(
        &SignerConfig {
            kind: SignerKind::Tpm,
            tcti: tcti.into(),
            state_dir: dir.into(),
            pcrs: None,
        },
        KeyPolicy::CreateIfMissing,
    )
    .unwrap()
    .0
}

#[test]
fn signatures_through_the_proxy_are_slowed_and_serialised() {
    let tpm = Swtpm::start();
    let latency = Duration::from_millis(40);
    let proxy = TpmProxy::start(tpm.port(), latency, &[TPM2_CC_SIGN]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = open(&proxy.tcti(), dir.path());
    let c = &proxy.counters;
    let before = c.commands.load(Ordering::Relaxed);
    assert!(before > 0, "key creation went through the proxy");
    // Opening the key signs once to check it; only signatures are slowed.
    let signed = c.slowed.load(Ordering::Relaxed);
    assert!(signed < before, "{signed} of {before} commands slowed");

    // Four threads sign at once; the TPM takes them one at a time, so the
    // last one is done no sooner than 8 × latency after the first began.
    let started = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                for j in 0..2 {
                    let sig = s.sign(format!("msg {i} {j}").as_bytes()).unwrap();
                    assert_eq!(sig.len(), 64);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(started.elapsed() >= 8 * latency, "{:?}", started.elapsed());
    assert_eq!(c.slowed.load(Ordering::Relaxed), signed + 8);

    // Another client (tpm2-tools) is served between the signer's commands,
    // and its control commands (tcti-swtpm sets the locality on every
    // command through the control port) are forwarded.
    let out = Command::new("tpm2_getrandom")
        .args(["--hex", "8", "-T", &proxy.tcti()])
        .output()
        .expect("tpm2_getrandom (tpm2-tools) is installed by swtpm-ci/install-deps");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex = String::from_utf8_lossy(&out.stdout);
    assert_eq!(hex.trim().len(), 16, "{hex}");
    s.sign(b"after another client").unwrap();
    assert_eq!(c.slowed.load(Ordering::Relaxed), signed + 9);
}

#[test]
fn a_proxy_without_latency_adds_nothing_but_the_hop() {
    let tpm = Swtpm::start();
    let proxy = TpmProxy::start(tpm.port(), Duration::ZERO, &[TPM2_CC_SIGN]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = open(&proxy.tcti(), dir.path());
    let signed = proxy.counters.slowed.load(Ordering::Relaxed);
    for _ in 0..20 {
        s.sign(b"x").unwrap();
    }
    assert_eq!(proxy.counters.slowed.load(Ordering::Relaxed), signed + 20);
    assert_eq!(proxy.counters.max_waiting.load(Ordering::Relaxed), 1);
}

/// A node with a TPM that takes 40 ms per signature: a burst of 60 new pods
/// all get tokens (none shed), and a workload that keeps asking gets a
/// cached token after its first token's half-life (re-signed ahead of need
/// in the signer's idle time, behind the burst), not a wait for the TPM.
#[test]
fn a_burst_of_new_pods_on_a_slow_tpm_is_served_and_refreshes_wait_their_turn() {
    use jss::signer::SignerKind;
    use jss_tests::daemon::{Daemon, bin};
    use jss_tests::kubelet::{Ctr, PodBuilder, pod_list};
    use jss_tests::node::{Node, pod_json, run_in, spawn_in};
    use jss_tests::pods::{Layout, PodProcess, Qos, random_container_id, random_pod_uid};
    use std::process::Stdio;

    const BURST: usize = 60;
    let node = Node::new(SignerKind::Tpm, "token_ttl_seconds = 20\n");
    let tpm = node.tpm.as_ref().unwrap();
    let proxy = TpmProxy::start(tpm.port(), Duration::from_millis(40), &[TPM2_CC_SIGN]).unwrap();
    let config = node.config.replace(&tpm.tcti(), &proxy.tcti());
    assert_ne!(config, node.config, "the daemon must use the slow TPM");
    let burst: Vec<(String, String)> = (0..BURST)
        .map(|_| (random_pod_uid(), random_container_id()))
        .collect();
    let mut pods = vec![pod_json(&node.pod_uid, &node.app_id, &node.side_id)];
    for (i, (uid, id)) in burst.iter().enumerate() {
        pods.push(
            PodBuilder::new(uid, "burst", &format!("app-{i}"))
                .container(Ctr::running("app", "registry.example.com/app:1", id))
                .json(),
        );
    }
    node.kubelet.set_pods(pod_list(&pods));
    let d = Daemon::start(node.path(), &config);
    let sock = d.socket.to_str().unwrap().to_string();
    let token = |pod: &PodProcess| {
        let out = run_in(pod, &["token", "--socket", &sock, "--decode"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["claims"].clone()
    };

    // The steady workload asks once; its token is due for a refresh 6–9 s on.
    let steady = PodProcess::spawn(
        Layout::V2Systemd(Qos::Burstable),
        &node.pod_uid,
        &node.app_id,
    );
    let first = token(&steady);
    let (iat, exp) = (
        first["iat"].as_u64().unwrap(),
        first["exp"].as_u64().unwrap(),
    );

    // The burst arrives around the steady workload's refresh point.
    let procs: Vec<PodProcess> = burst
        .iter()
        .map(|(uid, id)| PodProcess::spawn(Layout::V2Systemd(Qos::BestEffort), uid, id))
        .collect();
    let children: Vec<_> = procs
        .iter()
        .map(|p| {
            spawn_in(
                p,
                &bin("jss"),
                &["token", "--socket", &sock],
                Stdio::piped(),
            )
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a new pod was refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(proxy.counters.slowed.load(Ordering::Relaxed) > BURST as u64);

    // Past the first token's half-life the steady workload gets a token that
    // was re-signed ahead of need: handed out from the cache, not signed for it.
    let half = iat + (exp - iat) / 2;
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        <= half
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let later = token(&steady);
    assert_ne!(later["jti"], first["jti"]);
    let audit = d.audit_lines();
    let line = audit
        .iter()
        .rev()
        .find(|l| l["jti"] == later["jti"])
        .unwrap();
    assert_eq!(line["outcome"], "cached", "{line}");
    assert!(
        audit.iter().all(|l| l["outcome"] != "denied"),
        "nothing was refused: {audit:?}"
    );
    let metrics = {
        use std::io::{Read as _, Write as _};
        let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: j\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut m = String::new();
        s.read_to_string(&mut m).unwrap();
        m
    };
    assert!(metrics.contains("jss_refreshes_total"), "{metrics}");
    assert!(!metrics.contains("jss_refreshes_total 0\n"), "{metrics}");
}
