#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report
//! JWKS mode against a real OpenBao and the real discovery server over
//! HTTPS: logins by kid, an unknown kid, a node registered after the switch,
//! deregistration, the live switch static → jwks → static, the server down.

mod bootstrap_common;
mod jwks_common;

use std::path::Path;
use std::time::{Duration, Instant};

use bootstrap_common::*;
use jss::signer::{self, KeyPolicy};
use jss::token::TokenEncoder;
use jss_tests::bao::Bao;
use jss_tests::discovery::Discovery;
use jwks_common::*;

fn register(bao: &Bao, cluster: &str, node: &str, dir: &Path) -> String {
    ok_v(&register_args(bao, cluster, node, dir))
}

fn kid_of(dir: &Path) -> String {
    let cfg = software(dir);
    signer::open(&cfg, KeyPolicy::MustExist)
        .unwrap()
        .0
        .kid()
        .to_string()
}

/// A token signed by a fresh key nobody registered (kid set, no x5c).
fn unregistered_token(cluster: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cfg = software(dir.path());
    let (s, _) = signer::open(&cfg, KeyPolicy::CreateIfMissing).unwrap();
    TokenEncoder::new(s.kid(), None)
        .unwrap()
        .encode(s.as_ref(), &claims(cluster, "rogue"))
        .unwrap()
}

/// Logs in with a fresh token from `dir` until it works or `wait` passes;
/// returns how long it took.
fn login_within(bao: &Bao, cluster: &str, node: &str, dir: &Path, wait: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let jwt = mint(dir, &claims(cluster, node));
        match login(bao, &format!("jss-{cluster}"), &jwt) {
            Ok(_) => return start.elapsed(),
            Err(e) if start.elapsed() > wait => panic!("{node} cannot log in after {wait:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn jwks_mode_logins_new_nodes_deregistration_and_the_switch_back() {
    let bao = Bao::start();
    let c = "jw1";
    let mount = "jss-jw1";
    cluster_init(&bao, c);
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    register(&bao, c, "node-0", dirs[0].path());
    register(&bao, c, "node-1", dirs[1].path());

    let d = Discovery::start(&bao, c, 1, &[]);
    let mut served = d.kids();
    served.sort();
    let mut want = vec![kid_of(dirs[0].path()), kid_of(dirs[1].path())];
    want.sort();
    assert_eq!(served, want, "the JWKS holds exactly the registered kids");

    // Same document from the CLI, and the discovery document names /keys.
    let printed = ok_v(&with(
        &["cluster", "jwks", "--cluster", c],
        &vault_args(&bao),
    ));
    let printed: serde_json::Value = serde_json::from_str(&printed).unwrap();
    let served_doc: serde_json::Value =
        serde_json::from_slice(&d.get("/keys").unwrap().body).unwrap();
    assert_eq!(printed, served_doc);
    let oidc = d.get("/.well-known/openid-configuration").unwrap();
    let oidc: serde_json::Value = serde_json::from_slice(&oidc.body).unwrap();
    assert_eq!(oidc["jwks_uri"], d.url());
    assert_eq!(oidc["issuer"], "jss://jw1");

    // Strong ETag, Cache-Control, 304 on a match.
    let r = d.get("/keys").unwrap();
    let etag = r.header("etag").expect("ETag");
    assert!(etag.starts_with('"') && !etag.starts_with("W/"), "{etag}");
    assert!(r.header("cache-control").unwrap().contains("max-age="));
    let r304 = d
        .get_with("/keys", &format!("If-None-Match: {etag}\r\n"))
        .unwrap();
    assert_eq!(r304.status, 304);

    // A token minted under static keys, used after the switch.
    let before = mint(dirs[0].path(), &claims(c, "node-0"));
    let report = init_jwks(&bao, c, &d);
    assert!(
        report.contains(&format!("keys from {}", d.url())),
        "{report}"
    );
    login(&bao, mount, &before).expect("a token issued before the switch logs in");
    for (i, dir) in dirs.iter().take(2).enumerate() {
        let node = format!("node-{i}");
        login(&bao, mount, &mint(dir.path(), &claims(c, &node)))
            .unwrap_or_else(|e| panic!("{node}: {e}"));
    }
    let refused = login(&bao, mount, &unregistered_token(c)).unwrap_err();
    eprintln!("unknown kid: {refused}");

    // A node registered after the switch: OpenBao fetches the JWKS again.
    let out = register(&bao, c, "node-2", dirs[2].path());
    assert!(out.contains("reads the keys from"), "{out}");
    let took = login_within(&bao, c, "node-2", dirs[2].path(), Duration::from_secs(30));
    eprintln!("node registered in JWKS mode logged in after {took:?}");

    // Deregister node-1 by name: refused once the CLI returns.
    let t1 = mint(dirs[1].path(), &claims(c, "node-1"));
    login(&bao, mount, &t1).expect("node-1 logs in before deregistration");
    let start = Instant::now();
    let out = ok_v(&with(
        &["node", "deregister", "--cluster", c, "--node", "node-1"],
        &vault_args(&bao),
    ));
    let took = start.elapsed();
    assert!(out.contains("rewrote"), "{out}");
    let err = login(&bao, mount, &t1).expect_err("a deregistered node's token is refused");
    eprintln!("deregistered node refused {took:?} after `node deregister` started: {err}");
    let status = ok_v(&with(
        &["cluster", "status", "--cluster", c],
        &vault_args(&bao),
    ));
    assert!(
        status.contains("nodes:     2") && !status.contains("node-1 "),
        "{status}"
    );
    assert!(status.contains("keys:      jwks"), "{status}");

    // Back to static keys, live: node-0 and node-2 keep logging in.
    let t0 = mint(dirs[0].path(), &claims(c, "node-0"));
    // A re-run without --keys keeps JWKS mode (and writes nothing).
    let report = cluster_init(&bao, c);
    assert!(
        report.contains(&format!("found    auth/{mount}/config")),
        "{report}"
    );
    assert!(report.contains("keys from"), "{report}");
    let report = ok_v(&with(
        &[
            "cluster",
            "init",
            "--cluster",
            c,
            "--region",
            REGION,
            "--keys",
            "static",
        ],
        &vault_args(&bao),
    ));
    assert!(report.contains("static keys"), "{report}");
    login(&bao, mount, &t0).expect("a token minted in JWKS mode logs in after the switch back");
    login_within(&bao, c, "node-2", dirs[2].path(), Duration::from_secs(1));
    assert!(login(&bao, mount, &t1).is_err(), "node-1 stays out");
    assert_eq!(mount_keys(&bao, mount).len(), 2);
}

#[test]
fn discovery_server_down_known_kids_keep_working_new_nodes_wait() {
    let bao = Bao::start();
    let c = "jw2";
    let mount = "jss-jw2";
    cluster_init(&bao, c);
    let a = tempfile::tempdir().unwrap();
    register(&bao, c, "node-a", a.path());
    let mut d = Discovery::start(&bao, c, 1, &[]);
    init_jwks(&bao, c, &d);
    login(&bao, mount, &mint(a.path(), &claims(c, "node-a"))).unwrap();

    d.stop();
    login(&bao, mount, &mint(a.path(), &claims(c, "node-a")))
        .expect("a known kid logs in from OpenBao's cached key set");
    let b = tempfile::tempdir().unwrap();
    register(&bao, c, "node-b", b.path());
    let err = login(&bao, mount, &mint(b.path(), &claims(c, "node-b")))
        .expect_err("a new node cannot log in while the JWKS is unreachable");
    eprintln!("new node, discovery down: {err}");

    d.restart();
    let took = login_within(&bao, c, "node-b", b.path(), Duration::from_secs(30));
    eprintln!("new node logged in {took:?} after the discovery server came back");
}

#[test]
fn node_deregister_by_kid_needs_no_tpm_and_status_shows_the_record() {
    let bao = Bao::start();
    let c = "jw3";
    cluster_init(&bao, c);
    let a = tempfile::tempdir().unwrap();
    register(&bao, c, "node-a", a.path());
    let st = ok_v(&with(
        &[
            "node",
            "status",
            "--signer",
            "software",
            "--state-dir",
            &a.path().display().to_string(),
            "--cluster",
            c,
        ],
        &vault_args(&bao),
    ));
    assert!(st.contains("registered:   yes"), "{st}");
    assert!(st.contains("registry:     node-a since"), "{st}");
    assert!(st.contains("pcrs none"), "{st}");
    let kid = kid_of(a.path());
    let out = ok_v(&with(
        &["node", "deregister", "--cluster", c, "--kid", &kid],
        &vault_args(&bao),
    ));
    assert!(out.contains("removed  registry record node-a"), "{out}");
    assert!(out.contains("removed  key"), "{out}");
    assert!(
        mount_keys(&bao, "jss-jw3")
            .iter()
            .all(|k| *k != spki_of(a.path()))
    );
    let err = run_v(&with(
        &["node", "deregister", "--cluster", c, "--node", "node-a"],
        &vault_args(&bao),
    ))
    .unwrap_err();
    assert!(err.contains("no node \"node-a\" in the registry"), "{err}");
}
