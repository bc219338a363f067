//! `[spiffe] bundle_url` end to end: the daemon reads the cluster JWKS from
//! the real discovery server (`jss-bootstrap discovery serve`) over HTTPS,
//! checked against `bundle_ca`, with the registry in a real OpenBao. With a
//! long `bundle_refresh_seconds`, a second node registered with
//! `jss-bootstrap node register` reaches the daemon only when an SVID signed
//! by its key is asked to validate (unknown `kid`): the daemon re-reads the
//! bundle, validates the SVID, and the open FetchJWTBundles stream (py-spiffe
//! in a kubepods cgroup) gets the new bundle.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::Stdio;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jss::signer::SignerKind;
use jss_tests::bao::Bao;
use jss_tests::cluster::{CLUSTER, REGION, bootstrap, register_args, unix_now};
use jss_tests::daemon::Daemon;
use jss_tests::discovery::Discovery;
use jss_tests::node::{Node, spawn_in};
use jss_tests::pods::{Layout, PodProcess, Qos};
use jss_tests::spiffe::{client_argv, py_client, require_py_spiffe};
use jss_tests::watch::wait_for;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::DecodePrivateKey as _;
use serde_json::{Value, json};

const TD: &str = "example.org";

/// `node register --signer software` of `node` into `dir`; its signing key.
fn register(bao: &Bao, dir: &Path, node: &str) -> p256::ecdsa::SigningKey {
    let state = dir.display().to_string();
    bootstrap(bao, &register_args(&state, node, "software"));
    let pem = std::fs::read_to_string(dir.join("node-key.pem")).unwrap();
    p256::ecdsa::SigningKey::from_pkcs8_pem(&pem).unwrap()
}

/// A JWT-SVID for `vault` signed by `key`, as another node's daemon signs one.
fn svid(key: &p256::ecdsa::SigningKey, kid: &str) -> String {
    let header = json!({"alg": "ES256", "kid": kid, "typ": "JWT"});
    let now = unix_now();
    let claims = json!({"sub": format!("spiffe://{TD}/ns/team-a/sa/app"), "aud": "vault",
        "iat": now, "exp": now + 60});
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
    format!("{input}.{}", B64.encode(sig.to_bytes()))
}

fn kid_of(key: &p256::ecdsa::SigningKey) -> String {
    let public = p256::PublicKey::from(key.verifying_key());
    jss::signer::NodePublicKey::new(public).kid
}

#[test]
fn a_node_registered_later_is_read_on_its_first_svid_and_reaches_the_stream() {
    require_py_spiffe();
    let bao = Bao::start();
    bootstrap(
        &bao,
        &["cluster", "init", "--cluster", CLUSTER, "--region", REGION],
    );
    let keys = tempfile::tempdir().unwrap();
    let first = register(&bao, &keys.path().join("node-1"), "node-1");
    let discovery = Discovery::start(&bao, CLUSTER, 1, &[]);
    wait_for(
        60,
        "the discovery server to serve node-1",
        &|| discovery.log(),
        || discovery.kids().contains(&kid_of(&first)),
    );

    let sock_dir = tempfile::tempdir().unwrap();
    let socket = sock_dir.path().join("spiffe.sock");
    let node = Node::new(
        SignerKind::Software,
        &format!(
            "[spiffe]\ntrust_domain = \"{TD}\"\nsocket = \"{}\"\nbundle_url = \"{}\"\nbundle_ca = \"{}\"\nbundle_refresh_seconds = 3600\n",
            socket.display(),
            discovery.url(),
            discovery.ca_file().display()
        ),
    );
    let daemon = Daemon::start(node.path(), &node.config);
    let log = || {
        format!(
            "daemon:\n{}\ndiscovery:\n{}",
            daemon.stderr(),
            discovery.log()
        )
    };
    let pod = PodProcess::spawn(
        Layout::V2Systemd(Qos::Burstable),
        &node.pod_uid,
        &node.app_id,
    );

    // The bundle starts with this node's key; node-1's comes with the
    // first read of the discovery server, a moment after the daemon starts.
    wait_for(60, "the first bundle read", &log, || {
        daemon
            .stderr()
            .lines()
            .any(|l| l.contains("SPIFFE bundle changed") && l.contains("keys=2"))
    });
    // The stream opens with this node's key and node-1's.
    let argv = client_argv(&socket, &["watch", "2"]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut watcher = spawn_in(&pod, Path::new("env"), &argv, Stdio::piped());
    let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
    let count = |line: String| -> Value {
        serde_json::from_str::<Value>(&line).unwrap()["keys"][format!("spiffe://{TD}")].clone()
    };
    assert_eq!(count(lines.next().unwrap().unwrap()), 2, "{}", log());
    let r = py_client(
        &socket,
        Some(&pod),
        &["validate", "vault", &svid(&first, &kid_of(&first))],
        &log,
    );
    assert_eq!(r["code"], "OK", "node-1's SVID validates: {r}");

    // A second node registers; the discovery server serves it, the daemon
    // (refreshing hourly) does not know it yet.
    let second = register(&bao, &keys.path().join("node-2"), "node-2");
    let kid2 = kid_of(&second);
    wait_for(60, "the discovery server to serve node-2", &log, || {
        discovery.kids().contains(&kid2)
    });
    // Its first SVID names an unknown kid: the daemon re-reads the bundle and validates.
    let r = py_client(
        &socket,
        Some(&pod),
        &["validate", "vault", &svid(&second, &kid2)],
        &log,
    );
    assert_eq!(r["code"], "OK", "{r}\n{}", log());
    assert_eq!(r["spiffe_id"], format!("spiffe://{TD}/ns/team-a/sa/app"));
    // The open stream gets the new bundle.
    assert_eq!(count(lines.next().unwrap().unwrap()), 3, "{}", log());
    assert!(watcher.wait().unwrap().success());

    // A key nobody registered stays unknown after the re-read.
    let stranger = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let r = py_client(
        &socket,
        Some(&pod),
        &["validate", "vault", &svid(&stranger, &kid_of(&stranger))],
        &log,
    );
    assert_eq!(r["code"], "INVALID_ARGUMENT", "{r}");
}
