#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report
//! `jss-bootstrap node register --rotate` killed with SIGKILL at each of its
//! Vault calls and while it waits to remove the old key, against a serving
//! daemon and a real OpenBao (README, "Rotating the node key").

mod rotate_common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use jss_tests::cluster::{Cluster, MOUNT, NodeKey, PodDef};
use jss_tests::freeze_proxy::{FreezeProxy, Frozen, kill_running};
use rotate_common::*;

/// The end of a rotation away from `old_kid`: the daemon serves the new
/// key and its tokens log in; one key version in the state dir, no
/// rotation.json, one registered key, and the registry record holds the
/// new kid with nothing retiring. Returns the new kid.
fn assert_rotated(c: &Cluster, pod: &PodDef, old_kid: &str, ctx: &str) -> String {
    let state = c.path().join("state");
    let t = token(c, pod).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    let new_kid = kid(&t);
    assert_ne!(new_kid, old_kid, "{ctx}");
    ok(login(c, &t));
    let versions: Vec<String> = std::fs::read_dir(state.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        versions,
        vec![new_kid.clone()],
        "{ctx}: orphan key versions"
    );
    assert!(!state.join("rotation.json").exists(), "{ctx}");
    let cfg = c
        .bao
        .ok(&["read", "-format=json", &format!("auth/{MOUNT}/config")]);
    let cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    let keys = cfg["data"]["jwt_validation_pubkeys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{ctx}: one registered key: {keys:?}");
    let rec = c.bao.ok(&[
        "kv",
        "get",
        "-format=json",
        &format!("secret/jss/registry/{MOUNT}/node-1"),
    ]);
    let rec: serde_json::Value = serde_json::from_str(&rec).unwrap();
    assert_eq!(rec["data"]["data"]["kid"], new_kid.as_str(), "{ctx}");
    assert!(
        rec["data"]["data"].get("retiring").is_none(),
        "{ctx}: {rec}"
    );
    new_kid
}

/// What a killed run left, for the test's log: its last line of output,
/// the key versions and what rotation.json records.
fn left_by(state: &Path, log: &Path) -> String {
    let out = std::fs::read_to_string(log).unwrap_or_default();
    let last = out.lines().last().unwrap_or("(no output)").to_string();
    let versions = std::fs::read_dir(state.join("keys")).map_or(0, |d| d.count());
    let rot = match std::fs::read(state.join("rotation.json")) {
        Ok(b) => {
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            let has = |k: &str| if v[k].is_null() { "no" } else { "a" };
            format!(
                "rotation.json with {} new kid, {} removal time",
                has("new_kid"),
                has("remove_after")
            )
        }
        Err(_) => "no rotation.json".into(),
    };
    format!("after {last:?}: {versions} key versions, {rot}")
}

/// `jss-bootstrap node register --rotate` as a child with its output in
/// `log`, talking to Vault at `vault`.
fn spawn_rotation(c: &Cluster, vault: &str, extra: &[&str], log: &Path) -> Child {
    let f = std::fs::File::create(log).unwrap();
    register_cmd(c, "software", true, extra)
        .env("VAULT_ADDR", vault)
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap()
}

/// Waits until `done()` holds while `child` (output in `log`) runs.
fn wait_while_running(child: &mut Child, log: &Path, ctx: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        let log = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            child.try_wait().unwrap().is_none(),
            "{ctx}: the run ended first:\n{log}"
        );
        assert!(
            Instant::now() < deadline,
            "{ctx}: not there after 60 s:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A rotation SIGKILLed at each of its Vault calls in turn (OpenBao frozen
/// at that call by the test proxy, so the kill lands there and nowhere
/// else), and once while it waits to remove the old key: the daemon keeps
/// serving a registered key, and the next run completes the rotation.
///
/// The kill points each start from a completed rotation. To keep that
/// short, the roles get no leeway and the runs say `--token-ttl 0`: the old
/// key may go 1 s after the switch. The kill in the wait uses the daemon's
/// real token life (10 s).
#[test]
fn a_rotation_killed_at_every_vault_call_is_completed_by_the_next_run() {
    let (c, pod) = start(NodeKey::software());
    c.bao.ok(&[
        "write",
        &format!("auth/{MOUNT}/role/jss"),
        "role_type=jwt",
        "clock_skew_leeway=-1",
        "expiration_leeway=-1",
    ]);
    let state = c.path().join("state");
    let fast = ["--wait", "--token-ttl", "0"];

    // A whole rotation through a counting proxy: its Vault calls.
    let mut old_kid = kid(&token(&c, &pod).unwrap());
    let counter = FreezeProxy::counting(&c.bao);
    let log = c.path().join("rotate-count.log");
    let mut run = spawn_rotation(&c, &counter.addr(), &fast, &log);
    assert!(
        run.wait().unwrap().success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("warning  --token-ttl 0 is shorter than the 10 s the daemon's tokens live"),
        "{text}"
    );
    let calls = counter.requests();
    assert!(calls >= 8, "only {calls} Vault calls?");
    old_kid = assert_rotated(&c, &pod, &old_kid, "the counted run");

    for k in 1..=calls {
        let ctx = format!("killed at Vault call {k} of {calls}");
        let proxy = FreezeProxy::freezing(&c.bao, k);
        let log = c.path().join(format!("rotate-{k}.log"));
        let mut run = spawn_rotation(&c, &proxy.addr(), &fast, &log);
        wait_while_running(&mut run, &log, &ctx, || proxy.frozen());
        let frozen = Frozen(c.bao.pid());
        kill_running(&mut run, &log, &ctx);
        // OpenBao wakes up and may still act on the dead run's last call.
        drop(frozen);
        let left = left_by(&state, &log);
        let t = token(&c, &pod).unwrap_or_else(|e| panic!("{ctx}: no token: {e}"));
        let o = login(&c, &t);
        assert!(
            o.status.success(),
            "{ctx}: the served token (kid {}) does not log in ({left}): {}",
            kid(&t),
            String::from_utf8_lossy(&o.stderr)
        );
        let out = register(&c, "software", true, &fast);
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        let text = format!("{}{text}", String::from_utf8_lossy(&out.stdout));
        assert!(
            out.status.success() && text.contains("rotated  to kid"),
            "{ctx}: the re-run did not complete it (left {left}):\n{text}"
        );
        eprintln!("{ctx}: left {left}");
        old_kid = assert_rotated(&c, &pod, &old_kid, &ctx);
    }

    // Killed while it waits out the old key's tokens: the daemon switched,
    // the old key is retiring, and the removal time is recorded.
    let ctx = "killed while waiting to remove the old key";
    let log = c.path().join("rotate-wait.log");
    let mut run = spawn_rotation(&c, &c.bao.addr(), &["--wait"], &log);
    wait_while_running(&mut run, &log, ctx, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("waiting  until")
    });
    kill_running(&mut run, &log, ctx);
    let t = token(&c, &pod).unwrap();
    assert_ne!(kid(&t), old_kid, "{ctx}: the daemon did not switch");
    ok(login(&c, &t));
    let rot: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("rotation.json")).unwrap()).unwrap();
    assert_eq!(rot["old_kid"], old_kid.as_str(), "{ctx}: {rot}");
    assert!(rot["remove_after"].as_u64().is_some(), "{ctx}: {rot}");
    let out = ok(register(&c, "software", true, &["--wait"]));
    assert!(out.contains("rotated  to kid"), "{ctx}: {out}");
    assert_rotated(&c, &pod, &old_kid, ctx);
}
