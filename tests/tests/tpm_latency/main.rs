#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report
//! The slow-TPM proxy (`jss_tests::tpm_proxy`): the TPM signer works through
//! it unchanged, every signature is held for the added latency, commands of
//! several clients reach swtpm one at a time, and swtpm's control channel is
//! forwarded. Then the daemon on a TPM slowed to 40 ms per signature: a
//! burst of new pods is served in order ahead of refreshes, the refresh set
//! empties once workloads stop asking, and a TPM that stops answering gives
//! 503s and recovers with the signing queue in place.

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

mod daemon_on_a_slow_tpm;
