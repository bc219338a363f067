//! The SPIFFE Workload API of `jss serve` (swtpm key), driven by py-spiffe
//! (PyPI `spiffe`, a client nobody here wrote) running as processes in
//! kubepods cgroups: JWT-SVIDs, bundles, validation and refusals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jss::signer::SignerKind;
use jss_tests::daemon::Daemon;
use jss_tests::node::{NAMESPACE, Node, spawn_in};
use jss_tests::pods::{Layout, PodProcess, Qos};
use jss_tests::spiffe::{client_argv, py_client, require_py_spiffe};
use serde_json::Value;

const TD: &str = "example.org";

struct Env {
    node: Node,
    daemon: Daemon,
    spiffe_socket: PathBuf,
    _sock_dir: tempfile::TempDir,
}

/// A node whose daemon serves `[spiffe]` with `spiffe_extra` keys added.
fn start(top: &str, spiffe_extra: &str) -> Env {
    require_py_spiffe();
    let sock_dir = tempfile::tempdir().unwrap();
    let spiffe_socket = sock_dir.path().join("spiffe.sock");
    let extra = format!(
        "{top}\n[spiffe]\ntrust_domain = \"{TD}\"\nsocket = \"{}\"\n{spiffe_extra}\n",
        spiffe_socket.display()
    );
    let node = Node::new(SignerKind::Tpm, &extra);
    let daemon = Daemon::start(node.path(), &node.config);
    Env {
        node,
        daemon,
        spiffe_socket,
        _sock_dir: sock_dir,
    }
}

impl Env {
    fn pod(&self) -> PodProcess {
        PodProcess::spawn(
            Layout::V2Systemd(Qos::Burstable),
            &self.node.pod_uid,
            &self.node.app_id,
        )
    }

    /// Runs the py-spiffe client in `pod` (or on the host) and parses its JSON.
    fn client(&self, pod: Option<&PodProcess>, args: &[&str]) -> Value {
        py_client(&self.spiffe_socket, pod, args, &|| {
            format!("daemon:\n{}", self.daemon.stderr())
        })
    }
}

fn part(token: &str, i: usize) -> Value {
    let raw = B64.decode(token.split('.').nth(i).unwrap()).unwrap();
    serde_json::from_slice(&raw).unwrap()
}

fn pod_spiffe_id() -> String {
    format!("spiffe://{TD}/ns/{NAMESPACE}/sa/demo-sa")
}

#[test]
fn py_spiffe_fetches_a_jwt_svid_and_validates_it_both_ways() {
    let env = start("", "");
    let pod = env.pod();
    let r = env.client(Some(&pod), &["fetch", "vault"]);
    assert_eq!(r["spiffe_id"], pod_spiffe_id());
    assert_eq!(r["local_spiffe_id"], pod_spiffe_id());
    assert_eq!(r["remote_spiffe_id"], pod_spiffe_id());
    let token = r["token"].as_str().unwrap();
    let header = part(token, 0);
    let mut names: Vec<_> = header.as_object().unwrap().keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["alg", "kid", "typ"], "header {header}");
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(r["bundle_kids"], serde_json::json!([header["kid"]]));
    let claims = part(token, 1);
    assert_eq!(claims["sub"], pod_spiffe_id());
    assert_eq!(claims["aud"], "vault");
    assert_eq!(claims["namespace"], NAMESPACE);
    assert_eq!(claims["container"], "app");
    assert!(
        claims["jss-sub"].as_str().unwrap().contains(NAMESPACE),
        "JSS's own sub is kept: {claims}"
    );
    assert!(
        env.daemon
            .stderr()
            .contains("SVIDs of other nodes will not validate"),
        "no bundle source: the daemon warns at start"
    );
}

#[test]
fn refusals_map_to_grpc_codes_and_are_audited() {
    let env = start("", "");
    let pod = env.pod();
    // Outside any pod.
    let r = env.client(None, &["raw-fetch", "vault"]);
    assert_eq!(r["code"], "PERMISSION_DENIED", "{r}");
    assert!(r["details"].as_str().unwrap().contains("not_in_pod"), "{r}");
    // No `workload.spiffe.io` metadata.
    let r = env.client(Some(&pod), &["raw-fetch", "vault", "--no-header"]);
    assert_eq!(r["code"], "INVALID_ARGUMENT", "{r}");
    // An audience not in `audiences`.
    let r = env.client(Some(&pod), &["raw-fetch", "elsewhere"]);
    assert_eq!(r["code"], "INVALID_ARGUMENT", "{r}");
    assert!(
        r["details"].as_str().unwrap().contains("bad_audience"),
        "{r}"
    );
    let denied: Vec<_> = env
        .daemon
        .audit_lines()
        .into_iter()
        .filter(|l| l["outcome"] == "denied")
        .map(|l| l["code"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(denied, ["not_in_pod", "bad_request", "bad_audience"]);
    // The same pod is still served.
    let r = env.client(Some(&pod), &["raw-fetch", "vault"]);
    assert_eq!(r["code"], "OK", "{r}");
}

#[test]
fn tampered_wrong_audience_and_expired_svids_are_refused_by_validate() {
    // 10 s SVIDs, so one expires during the test.
    let env = start("token_ttl_seconds = 10\n[cache]\nenabled = false", "");
    let pod = env.pod();
    let r = env.client(Some(&pod), &["raw-fetch", "vault"]);
    let token = r["token"].as_str().unwrap().to_string();
    let ok = env.client(Some(&pod), &["validate", "vault", &token]);
    assert_eq!(ok["code"], "OK", "{ok}");
    assert_eq!(ok["sub"], pod_spiffe_id());

    let wrong_aud = env.client(Some(&pod), &["validate", "other", &token]);
    assert_eq!(wrong_aud["code"], "INVALID_ARGUMENT", "{wrong_aud}");

    let mut claims = part(&token, 1);
    claims["namespace"] = "kube-system".into();
    let parts: Vec<&str> = token.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(serde_json::to_vec(&claims).unwrap()),
        parts[2]
    );
    let r = env.client(Some(&pod), &["validate", "vault", &tampered]);
    assert_eq!(r["code"], "INVALID_ARGUMENT", "{r}");

    // An x5c header (a JSS token's) is not allowed in a JWT-SVID.
    let mut header = part(&token, 0);
    header["x5c"] = serde_json::json!(["MII"]);
    let extra_header = format!(
        "{}.{}.{}",
        B64.encode(serde_json::to_vec(&header).unwrap()),
        parts[1],
        parts[2]
    );
    let r = env.client(Some(&pod), &["validate", "vault", &extra_header]);
    assert_eq!(r["code"], "INVALID_ARGUMENT", "{r}");
    assert!(r["details"].as_str().unwrap().contains("x5c"), "{r}");

    let exp = part(&token, 1)["exp"].as_u64().unwrap();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    while now() <= exp {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let r = env.client(Some(&pod), &["validate", "vault", &token]);
    assert_eq!(r["code"], "INVALID_ARGUMENT", "{r}");
    assert!(r["details"].as_str().unwrap().contains("xpired"), "{r}");
}

#[test]
fn a_new_node_key_reaches_an_open_bundle_stream() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, r#"{"keys":[]}"#).unwrap();
    let env = start(
        "",
        &format!(
            "bundle_file = \"{}\"\nbundle_refresh_seconds = 1",
            file.display()
        ),
    );
    let pod = env.pod();
    let argv = client_argv(&env.spiffe_socket, &["watch", "2"]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut watcher = spawn_in(&pod, Path::new("env"), &argv, Stdio::piped());
    let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
    let key_count = |line: String| -> Value {
        serde_json::from_str::<Value>(&line).unwrap()["keys"][format!("spiffe://{TD}")].clone()
    };
    // The stream is open: its first message holds this node's key only.
    let first = lines.next().unwrap().unwrap();
    assert_eq!(key_count(first), 1);
    // A second node registers.
    let other = p256::SecretKey::random(&mut rand_core::OsRng).public_key();
    let jwk = jss::signer::NodePublicKey::new(other).jwk();
    let doc = serde_json::json!({ "keys": [jwk] });
    jss::state::write_atomic(&file, doc.to_string().as_bytes(), 0o644).unwrap();
    let second = lines.next().unwrap().unwrap();
    assert_eq!(key_count(second), 2);
    assert!(watcher.wait().unwrap().success());
}

/// A cached JWT-SVID refreshed ahead of need is still a JWT-SVID (the
/// refresher once re-signed every entry as a JSS token, `x5c` and all).
#[test]
fn a_refreshed_jwt_svid_stays_a_jwt_svid() {
    let env = start("token_ttl_seconds = 10", "");
    let pod = env.pod();
    let first = env.client(Some(&pod), &["raw-fetch", "vault"]);
    let first = first["token"].as_str().unwrap().to_string();
    let claims = part(&first, 1);
    let half_life = (claims["iat"].as_u64().unwrap() + claims["exp"].as_u64().unwrap()) / 2;
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    // Past half-life the first one is no longer handed out; the refresher
    // has re-signed it by then on an idle machine, and is waited for on a
    // busy one.
    while now() <= half_life {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let refreshed = || jss_tests::daemon::metric(&env.daemon.metrics(), "jss_refreshes_total");
    jss_tests::watch::wait_for(30, "the refresh", &|| env.daemon.stderr(), || {
        refreshed() >= 1.0
    });
    let second = env.client(Some(&pod), &["raw-fetch", "vault"]);
    let second = second["token"].as_str().unwrap();
    assert_ne!(second, first);
    let header = part(second, 0);
    let mut names: Vec<_> = header.as_object().unwrap().keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["alg", "kid", "typ"], "header {header}");
    assert_eq!(part(second, 1)["sub"], pod_spiffe_id());
    let last = env.daemon.audit_lines().pop().unwrap();
    assert_eq!(
        last["outcome"], "cached",
        "the refreshed SVID was handed out: {last}"
    );
}
