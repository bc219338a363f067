//! The SPIFFE Workload API of `jss serve` (swtpm key) driven by the Rust
//! `spiffe` crate (crates.io, a client nobody here wrote), run as a process
//! in a kubepods cgroup: it fetches a JWT-SVID and the bundles, validates
//! the SVID locally with the library and through ValidateJWTSVID; outside
//! any pod it gets PermissionDenied.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use jss::signer::SignerKind;
use jss_tests::daemon::Daemon;
use jss_tests::node::{NAMESPACE, Node};
use jss_tests::pods::{Layout, PodProcess, Qos};
use jss_tests::spiffe::rs_client;

const TD: &str = "example.org";

#[test]
fn the_rust_spiffe_crate_fetches_validates_and_is_refused_outside_a_pod() {
    let sock_dir = tempfile::tempdir().unwrap();
    let socket = sock_dir.path().join("spiffe.sock");
    let node = Node::new(
        SignerKind::Tpm,
        &format!(
            "[spiffe]\ntrust_domain = \"{TD}\"\nsocket = \"{}\"\n",
            socket.display()
        ),
    );
    let daemon = Daemon::start(node.path(), &node.config);
    let log = || format!("daemon:\n{}", daemon.stderr());
    let pod = PodProcess::spawn(
        Layout::V2Systemd(Qos::Burstable),
        &node.pod_uid,
        &node.app_id,
    );

    let r = rs_client(&socket, Some(&pod), &["fetch", "vault"], &log);
    let id = format!("spiffe://{TD}/ns/{NAMESPACE}/sa/demo-sa");
    assert_eq!(r["code"], "OK", "{r}");
    assert_eq!(r["spiffe_id"], id);
    assert_eq!(r["local_sub"], id, "validated locally by the library");
    assert_eq!(r["remote_sub"], id, "validated by ValidateJWTSVID");
    assert_eq!(r["bundle_kids"], serde_json::json!([r["kid"]]));
    assert!(
        r["local_other_audience"].is_string(),
        "the library refuses another audience: {r}"
    );

    let outside = rs_client(&socket, None, &["fetch", "vault"], &log);
    assert_eq!(outside["code"], "PERMISSION_DENIED", "{outside}");
    assert!(
        outside["details"].as_str().unwrap().contains("not_in_pod"),
        "{outside}"
    );
}
