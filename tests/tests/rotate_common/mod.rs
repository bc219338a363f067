//! Shared by the rotation tests: a node with a serving daemon, tokens for
//! its pod, logins at OpenBao, and `jss-bootstrap node register [--rotate]`
//! for the node.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jss_tests::bao::ROOT_TOKEN;
use jss_tests::cluster::{CLUSTER, Cluster, MOUNT, NodeKey, PodDef};

/// The daemon's token life here (the config's minimum), which a rotation
/// reads from it: the old key may go 10 s + the role's leeways (10 s +
/// 10 s) + 1 s after the switch.
pub const TTL: &str = "token_ttl_seconds = 10\n[cache]\nenabled = false\n";

pub fn start(key: NodeKey) -> (Cluster, PodDef) {
    let pod = PodDef::tsi_demo();
    let c = Cluster::start_node(&[], TTL, &[&pod], &key);
    (c, pod)
}

pub fn token(c: &Cluster, pod: &PodDef) -> Result<String, String> {
    let p = c.pod(pod);
    let out = c.spawn_jss(&p, &["token"], &[]).wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub fn kid(token: &str) -> String {
    let head = token.split('.').next().unwrap();
    let h: serde_json::Value = serde_json::from_slice(&B64.decode(head).unwrap()).unwrap();
    h["kid"].as_str().unwrap().to_string()
}

pub fn login(c: &Cluster, jwt: &str) -> Output {
    c.bao.run(
        ROOT_TOKEN,
        &[
            "write",
            &format!("auth/{MOUNT}/login"),
            "role=jss",
            &format!("jwt={jwt}"),
        ],
    )
}

/// `jss-bootstrap node register [--rotate] ARGS` for the cluster's node
/// (without `--token-ttl` in ARGS, a rotation asks the daemon).
pub fn register(c: &Cluster, signer: &str, rotate: bool, extra: &[&str]) -> Output {
    register_cmd(c, signer, rotate, extra).output().unwrap()
}

pub fn register_cmd(c: &Cluster, signer: &str, rotate: bool, extra: &[&str]) -> Command {
    let mut args = Vec::new();
    if rotate {
        args.push("--rotate");
    }
    args.extend_from_slice(extra);
    c.register_cmd(signer, &args)
}

pub fn ok(o: Output) -> String {
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{text}");
    text
}

/// `jss-bootstrap cluster status` for the test cluster.
pub fn cluster_status(c: &Cluster) -> String {
    jss_tests::cluster::bootstrap(&c.bao, &["cluster", "status", "--cluster", CLUSTER])
}
