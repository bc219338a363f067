#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report
//! The SPIFFE JWT bundle follows a node key rotation (`[spiffe]` without a
//! bundle source, so the bundle is this node's own keys): a real OpenBao,
//! `jss-bootstrap node register --rotate` switching a serving daemon, and
//! the Rust `spiffe` crate (a client nobody here wrote) in a kubepods cgroup
//! holding a FetchJWTBundles stream open across the switch; and a daemon
//! restarted inside the old key's window.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jss_tests::cluster::{Cluster, NodeKey, PodDef, unix_now};
use jss_tests::daemon::Daemon;
use jss_tests::node::spawn_in;
use jss_tests::spiffe::{rs_client, rs_client_argv};
use serde_json::Value;

const TD: &str = "example.org";
/// The daemon's default token (and JWT-SVID) life.
const TTL: u64 = 60;
/// `[spiffe] retire_leeway_seconds` here (default 60 s): short, to keep
/// the test short.
const LEEWAY: u64 = 15;
/// The daemon keeps a replaced key TTL + the leeway.
const RETIRE: u64 = TTL + LEEWAY;

/// `jss-bootstrap node register --rotate --no-wait` for the cluster's node
/// (software key); it sends the daemon SIGHUP and waits for the switch.
fn rotate(c: &Cluster) -> String {
    let ttl = TTL.to_string();
    let out = c
        .register_cmd("software", &["--rotate", "--no-wait", "--token-ttl", &ttl])
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "rotation failed: {text}");
    text
}

fn exp(token: &str) -> u64 {
    let claims = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&B64.decode(claims).unwrap()).unwrap();
    claims["exp"].as_u64().unwrap()
}

/// The kids of a client's `bundle_kids`, sorted (the library keeps no order).
fn kids(v: &Value) -> Vec<String> {
    let mut kids: Vec<String> = v["bundle_kids"]
        .as_array()
        .unwrap_or_else(|| panic!("no bundle_kids: {v}"))
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    kids.sort();
    kids
}

/// A registered node (software key) serving `[spiffe]` without a bundle
/// source, its SPIFFE socket `spiffe.sock` in the returned directory.
fn start() -> (Cluster, PodDef, tempfile::TempDir) {
    let sock_dir = tempfile::tempdir().unwrap();
    let socket = sock_dir.path().join("spiffe.sock");
    let pod = PodDef::tsi_demo();
    let c = Cluster::start_node(
        &[],
        &format!(
            "[spiffe]\ntrust_domain = \"{TD}\"\nsocket = \"{}\"\nretire_leeway_seconds = {LEEWAY}\n",
            socket.display()
        ),
        &[&pod],
        &NodeKey::software(),
    );
    (c, pod, sock_dir)
}

#[test]
fn the_bundle_follows_a_key_rotation_and_keeps_the_old_key_while_its_svids_live() {
    let (c, pod, sock_dir) = start();
    let socket = sock_dir.path().join("spiffe.sock");
    let log = || format!("daemon:\n{}", c.daemon.stderr());
    let p = c.pod(&pod);
    let client = |args: &[&str]| rs_client(&socket, Some(&p), args, &log);

    // The stream, open across the switch: its messages as they come.
    let argv = rs_client_argv(&socket, &["watch", "3"]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut watcher = spawn_in(&p, Path::new("env"), &argv, Stdio::piped());
    let (tx, messages) = mpsc::channel();
    let out = watcher.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str::<Value>(&line).unwrap());
        }
    });
    // A deadline for a stuck test, not a timing assertion.
    let next = |what: &str, secs: u64| -> Value {
        messages
            .recv_timeout(Duration::from_secs(secs))
            .unwrap_or_else(|_| panic!("no FetchJWTBundles message with {what}; {}", log()))
    };

    let first = next("the node key", 60);
    let before = client(&["fetch", "vault"]);
    assert_eq!(before["code"], "OK", "{before}");
    let old_kid = before["kid"].as_str().unwrap().to_string();
    let old_svid = before["token"].as_str().unwrap().to_string();
    assert_eq!(kids(&first), vec![old_kid.clone()]);

    let out = rotate(&c);
    assert!(out.contains("sighup"), "{out}");

    // The new key reaches the open stream; the old one stays beside it.
    let switched = next("the new key", 60);
    let both = kids(&switched);
    assert_eq!(both.len(), 2, "{switched}\n{}", log());
    assert!(both.contains(&old_kid), "{switched}");
    let new_kid = both.iter().find(|k| **k != old_kid).unwrap().clone();
    let jwks = switched["jwks"].to_string();

    // An SVID fetched now (the cache was dropped) has the new kid and
    // validates through ValidateJWTSVID and locally against the stream's bundle.
    let after = client(&["fetch", "vault"]);
    assert_eq!(after["code"], "OK", "{after}");
    assert_eq!(after["kid"], new_kid, "{after}");
    assert_eq!(after["remote_sub"], after["spiffe_id"], "{after}");
    assert_eq!(after["local_sub"], after["spiffe_id"], "{after}");
    assert_eq!(kids(&after), both);
    let new_svid = after["token"].as_str().unwrap();
    let local = client(&["validate-local", "vault", new_svid, TD, &jwks]);
    assert_eq!(local["code"], "OK", "{local}");
    assert_eq!(local["kid"], new_kid);

    // The SVID of the old key, fetched before the switch, still validates
    // until it expires (the rotation took less than its 60 s life).
    let old_exp = exp(&old_svid);
    assert!(
        unix_now() < old_exp,
        "the rotation outlasted the SVID's life; {}",
        log()
    );
    let remote = client(&["validate", "vault", &old_svid]);
    assert_eq!(remote["code"], "OK", "{remote}\n{}", log());
    assert_eq!(remote["sub"], before["spiffe_id"]);
    let local = client(&["validate-local", "vault", &old_svid, TD, &jwks]);
    assert_eq!(local["code"], "OK", "{local}");
    assert_eq!(local["kid"], old_kid);

    // Past its exp it is refused for that, while the old key is still in
    // the bundle (the leeway): no message has dropped it yet.
    while unix_now() <= old_exp + 1 {
        std::thread::sleep(Duration::from_millis(500));
    }
    let remote = client(&["validate", "vault", &old_svid]);
    assert_eq!(remote["code"], "INVALID_ARGUMENT", "{remote}");
    let why = remote["details"].as_str().unwrap();
    assert!(
        why.contains("Expired") && !why.contains("not in the trust domain's bundle"),
        "refused as expired, its key still known: {remote}"
    );
    assert!(
        messages.try_recv().is_err(),
        "the old key left before its retirement ended"
    );

    // The retirement ends: a message without the old key.
    let dropped = next("the old key dropped", RETIRE + 60);
    assert_eq!(kids(&dropped), vec![new_kid.clone()], "{}", log());
    assert!(watcher.wait().unwrap().success());
    let jwks = dropped["jwks"].to_string();
    let local = client(&["validate-local", "vault", &old_svid, TD, &jwks]);
    assert_eq!(local["code"], "INVALID", "{local}");
    let fresh = client(&["fetch", "vault"]);
    assert_eq!(fresh["code"], "OK", "{fresh}");
    assert_eq!(fresh["kid"], new_kid);
    assert_eq!(kids(&fresh), vec![new_kid.clone()]);
    let local = client(&[
        "validate-local",
        "vault",
        fresh["token"].as_str().unwrap(),
        TD,
        &jwks,
    ]);
    assert_eq!(local["code"], "OK", "{local}");
}

/// A daemon restarted inside the old key's window (the rotation record is
/// still there) starts with both keys in its bundle.
#[test]
fn a_daemon_restarted_after_a_rotation_keeps_the_old_key_in_its_bundle() {
    let (mut c, pod, sock_dir) = start();
    let socket = sock_dir.path().join("spiffe.sock");
    let p = c.pod(&pod);
    let before = rs_client(&socket, Some(&p), &["fetch", "vault"], &|| String::new());
    assert_eq!(before["code"], "OK", "{before}");
    let old_kid = before["kid"].as_str().unwrap().to_string();
    let old_svid = before["token"].as_str().unwrap().to_string();
    rotate(&c);
    assert!(c.daemon.terminate(Duration::from_secs(30)).is_some());
    let config = std::fs::read_to_string(&c.daemon.config).unwrap();
    c.daemon = Daemon::start(c.path(), &config);
    let log = || format!("daemon:\n{}", c.daemon.stderr());

    let after = rs_client(&socket, Some(&p), &["fetch", "vault"], &log);
    assert_eq!(after["code"], "OK", "{after}");
    let new_kid = after["kid"].as_str().unwrap().to_string();
    assert_ne!(new_kid, old_kid);
    let mut both = vec![old_kid, new_kid];
    both.sort();
    assert_eq!(kids(&after), both, "{}", log());
    assert!(
        unix_now() < exp(&old_svid),
        "the rotation and restart outlasted the SVID's life; {}",
        log()
    );
    let remote = rs_client(&socket, Some(&p), &["validate", "vault", &old_svid], &log);
    assert_eq!(remote["code"], "OK", "{remote}\n{}", log());
}
