#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report
//! `jss-bootstrap node register --rotate` against a serving daemon: real
//! OpenBao, swtpm behind the test tooling's TPM proxy (daemon, CLI and
//! tpm2-tools share it), pods as real processes in kubepods cgroups.

mod rotate_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jss::signer::{KeyPolicy, SignerConfig, SignerKind};
use jss_tests::cluster::{CLUSTER, Cluster, NodeKey, PodDef, REGION, unix_now};
use jss_tests::daemon::bin;
use jss_tests::discovery::Discovery;
use rotate_common::*;

/// A token like `template`, issued now, signed by the key in `dir`: what
/// the old key could still sign if it were still in use.
fn sign_like(template: &str, dir: &Path, kind: SignerKind, tcti: &str) -> String {
    let mut parts = template.split('.');
    let header = parts.next().unwrap();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&B64.decode(parts.next().unwrap()).unwrap()).unwrap();
    let now = unix_now();
    claims["iat"] = now.into();
    claims["nbf"] = now.into();
    claims["exp"] = (now + 10).into();
    claims["jti"] = format!("forged-{now}-{}", std::process::id()).into();
    let input = format!("{header}.{}", B64.encode(claims.to_string()));
    let cfg = SignerConfig {
        kind,
        tcti: tcti.into(),
        state_dir: dir.to_path_buf(),
        pcrs: None,
    };
    let (s, _) = jss::signer::open_in(&cfg, dir, KeyPolicy::MustExist).unwrap();
    let sig = s.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", B64.encode(sig))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Clients asking for tokens in a loop until stopped; counts answers.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn load(c: &Arc<Cluster>, pod: &PodDef, clients: usize) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let threads = (0..clients)
        .map(|_| {
            let (c, pod) = (Arc::clone(c), pod.clone());
            let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match token(&c, &pod) {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            failed.lock().unwrap().push(e);
                            0
                        }
                    };
                }
            })
        })
        .collect();
    Load {
        stop,
        ok,
        failed,
        threads,
    }
}

impl Load {
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let failed = self.failed.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failed)
    }
}

/// The whole rotation of `key` while the daemon serves under load: new kid,
/// both keys log in until the removal, the old one not after.
fn rotate_while_serving(key: NodeKey, kind: SignerKind, jwks: bool) {
    let signer = key.signer;
    let (c, pod) = start(key);
    // JWKS mode: the discovery server serves the registry (full reads
    // every 12 s at --refresh 1).
    let discovery = jwks.then(|| {
        let d = Discovery::start(&c.bao, CLUSTER, 1, &[]);
        let ca = d.ca_file().display().to_string();
        let url = d.url();
        jss_tests::cluster::bootstrap(
            &c.bao,
            &[
                "cluster",
                "init",
                "--cluster",
                CLUSTER,
                "--region",
                REGION,
                "--keys",
                "jwks",
                "--jwks-url",
                &url,
                "--jwks-ca-pem",
                &ca,
            ],
        );
        d
    });
    let c = Arc::new(c);
    let t1 = token(&c, &pod).unwrap();
    let old_kid = kid(&t1);
    ok(login(&c, &t1));

    let l = load(&c, &pod, 3);
    let out = ok(register(&c, signer, true, &["--no-wait"]));
    std::thread::sleep(Duration::from_millis(500));
    let (served, failed) = l.finish();
    assert!(
        failed.is_empty(),
        "requests failed across the switch: {failed:?}"
    );
    assert!(served > 0);
    assert!(out.contains("sighup"), "{out}");
    assert!(out.contains("pending  removal"), "{out}");

    let t2 = token(&c, &pod).unwrap();
    let new_kid = kid(&t2);
    assert_ne!(new_kid, old_kid, "{out}");
    ok(login(&c, &t2));
    if let Some(d) = &discovery {
        let served = d.kids();
        assert!(
            served.contains(&old_kid) && served.contains(&new_kid),
            "both kids in the JWKS during the window: {served:?}"
        );
    }
    let state = c.path().join("state");
    assert_eq!(
        std::fs::read_to_string(state.join("current"))
            .unwrap()
            .trim(),
        new_kid
    );
    let audit = std::fs::read_to_string(c.path().join("audit.log")).unwrap();
    assert!(audit.contains("key_switched"), "{audit}");

    // Until the removal the old key's tokens still log in.
    let old_dir: PathBuf = c.path().join("old-key");
    copy_dir(&state.join("keys").join(&old_kid), &old_dir);
    let forged = sign_like(&t1, &old_dir, kind, &c.tcti);
    assert_eq!(kid(&forged), old_kid);
    ok(login(&c, &forged));

    // Too early: the removal stays pending.
    let early = ok(register(&c, signer, false, &[]));
    assert!(early.contains("pending  removal"), "{early}");
    let rot: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("rotation.json")).unwrap()).unwrap();
    let due = rot["remove_after"].as_u64().unwrap();
    // The old key goes after the daemon's own token life (no --token-ttl
    // given), the role's clock skew and expiration leeways (10 s each, from
    // `cluster init`) and a second.
    assert!(
        out.contains("tokens   the daemon's tokens live 10 s"),
        "{out}"
    );
    let switched = rot["switched_at"].as_u64().unwrap();
    assert_eq!(due - switched, 10 + 10 + 10 + 1, "{rot}");
    // `jss inspect --config` and `node status` show the pending removal.
    let p = c.pod(&pod);
    let cfg = c.path().join("config.toml").display().to_string();
    let inspect = ok(Command::new(bin("jss"))
        .args(["inspect", "--config", &cfg, "--pid", &p.pid().to_string()])
        .output()
        .unwrap());
    assert!(
        inspect.contains(&format!("\"old_kid\": \"{old_kid}\"")),
        "{inspect}"
    );
    assert!(
        inspect.contains(&format!("\"remove_after\": {due}")),
        "{inspect}"
    );
    let removal = x509_cert::der::DateTime::from_unix_duration(Duration::from_secs(due)).unwrap();
    // `node status --cluster`: the local rotation, and the registry record
    // with the old key retiring until its removal time.
    let status = jss_tests::cluster::bootstrap(
        &c.bao,
        &[
            "node",
            "status",
            "--state-dir",
            &state.display().to_string(),
            "--signer",
            signer,
            "--tcti",
            &c.tcti,
            "--cluster",
            CLUSTER,
        ],
    );
    assert!(
        status.contains(&format!("rotation:     from kid {old_kid} to {new_kid}")),
        "{status}"
    );
    assert!(
        status.contains(&format!("kid:          {new_kid}")),
        "{status}"
    );
    assert!(
        status.contains(&format!("retiring:     kid {old_kid} since "))
            && status.contains(&format!("(removable after {removal})")),
        "{status}"
    );
    // `cluster status` shows the same per node and counts it.
    let listed = cluster_status(&c);
    assert!(listed.contains("retiring:  1 "), "{listed}");
    assert!(
        listed.contains(&format!("node-1  retiring kid={old_kid}  since="))
            && listed.contains(&format!("(removable after {removal})")),
        "{listed}"
    );
    assert!(!listed.contains("REMOVAL-DUE"), "{listed}");
    while unix_now() <= due {
        std::thread::sleep(Duration::from_millis(500));
    }
    // Due, and not yet removed: flagged until the node's next run.
    let listed = cluster_status(&c);
    assert!(
        listed.contains("; 1 past their removal time")
            && listed.contains(&format!("(removable after {removal}) REMOVAL-DUE")),
        "{listed}"
    );
    let done = ok(register(&c, signer, false, &[]));
    assert!(done.contains("rotated  to kid"), "{done}");
    let listed = cluster_status(&c);
    assert!(
        listed.contains("retiring:  0 ") && !listed.contains("retiring kid="),
        "{listed}"
    );
    assert!(!state.join("rotation.json").exists());
    assert!(!state.join("keys").join(&old_kid).exists());

    let forged = sign_like(&t1, &old_dir, kind, &c.tcti);
    let refused = login(&c, &forged);
    assert!(
        !refused.status.success(),
        "the old key still logs in after its removal"
    );
    ok(login(&c, &token(&c, &pod).unwrap()));
    if let Some(d) = &discovery {
        assert_eq!(d.kids(), vec![new_kid]);
    }
}

#[test]
fn tpm_key_bound_to_pcr_7_rotates_while_serving() {
    rotate_while_serving(
        NodeKey {
            signer: "tpm",
            pcrs: Some("7"),
            shared_tpm: true,
        },
        SignerKind::Tpm,
        false,
    );
}

#[test]
fn software_key_rotates_while_serving() {
    rotate_while_serving(
        NodeKey {
            signer: "software",
            pcrs: None,
            shared_tpm: false,
        },
        SignerKind::Software,
        false,
    );
}

#[test]
fn software_key_rotates_in_jwks_mode() {
    rotate_while_serving(NodeKey::software(), SignerKind::Software, true);
}

#[test]
fn tpm_key_without_pcrs_rotates_while_serving() {
    rotate_while_serving(
        NodeKey {
            signer: "tpm",
            pcrs: Some("none"),
            shared_tpm: true,
        },
        SignerKind::Tpm,
        false,
    );
}

/// A pointer to a version the daemon cannot use (no chain): SIGHUP keeps
/// the old key serving, and the daemon logs and audits why.
#[test]
fn a_failed_switch_keeps_the_old_key_serving() {
    let (c, pod) = start(NodeKey::software());
    let old_kid = kid(&token(&c, &pod).unwrap());
    let state = c.path().join("state");
    let staged = state.join("keys").join(".new");
    let cfg = SignerConfig {
        kind: SignerKind::Software,
        tcti: String::new(),
        state_dir: state.clone(),
        pcrs: None,
    };
    let (k, _) = jss::signer::open_in(&cfg, &staged, KeyPolicy::CreateIfMissing).unwrap();
    let bad_kid = k.kid().to_string();
    std::fs::rename(&staged, state.join("keys").join(&bad_kid)).unwrap();
    jss::state::layout::switch(&state, &bad_kid).unwrap();
    c.daemon.signal("HUP");
    let audit = c.path().join("audit.log");
    let mut waited = 0;
    while !std::fs::read_to_string(&audit)
        .unwrap()
        .contains("reload_failed")
    {
        assert!(
            waited < 200,
            "no reload_failed audit line: {}",
            c.daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    let line = std::fs::read_to_string(&audit).unwrap();
    assert!(line.contains(&format!("kept kid {old_kid}")), "{line}");
    assert!(line.contains("chain"), "{line}");
    assert!(
        c.daemon
            .stderr()
            .contains("keeping the key and chain in use")
    );
    let t = token(&c, &pod).unwrap();
    assert_eq!(kid(&t), old_kid);
    ok(login(&c, &t));
}

/// The intended use: PCR 7 changes (a Secure Boot update), the daemon
/// refuses to sign with the old key, and a rotation binds a new key to the
/// new state while the daemon runs.
#[test]
fn a_changed_boot_state_is_recovered_by_rotating() {
    let (c, pod) = start(NodeKey {
        signer: "tpm",
        pcrs: Some("7"),
        shared_tpm: true,
    });
    let old_kid = kid(&token(&c, &pod).unwrap());
    let extend = Command::new("tpm2_pcrextend")
        .args(["-T", &c.tcti, &format!("7:sha256={}", "cd".repeat(32))])
        .output()
        .unwrap();
    assert!(
        extend.status.success(),
        "{}",
        String::from_utf8_lossy(&extend.stderr)
    );
    let refused = token(&c, &pod).unwrap_err();
    assert!(refused.contains("boot state changed"), "{refused}");

    let out = ok(register(&c, "tpm", true, &["--no-wait"]));
    assert!(
        out.contains("pcrs sha256:7") || out.contains("pcrs 7"),
        "{out}"
    );
    let t = token(&c, &pod).unwrap();
    assert_ne!(kid(&t), old_kid);
    ok(login(&c, &t));
}
