//! Shared by the JWKS-mode tests: claims of one workload, a software signer
//! config, and `cluster init --keys jwks` against a discovery server.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use jss::signer::{SignerConfig, SignerKind};
use jss_tests::bao::Bao;
use jss_tests::discovery::Discovery;

use super::bootstrap_common::*;

pub const IMG: &str = "us.icr.io/tsi/myubuntu@sha256:1111111111111111111111111111111111111111111111111111111111111111";
pub const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// The claims of one workload in `team-a` on `node`.
pub fn claims(cluster: &str, node: &str) -> serde_json::Value {
    Workload {
        cluster,
        region: REGION,
        node,
        namespace: "team-a",
        images_names: IMG,
        image: DIGEST,
    }
    .claims()
}

/// A software key in `dir`.
pub fn software(dir: &Path) -> SignerConfig {
    SignerConfig {
        kind: SignerKind::Software,
        tcti: String::new(),
        state_dir: dir.to_path_buf(),
        pcrs: None,
    }
}

/// `cluster init --keys jwks` with the discovery server's URL and CA.
pub fn init_jwks(bao: &Bao, cluster: &str, d: &Discovery) -> String {
    ok_v(&with(
        &[
            "cluster",
            "init",
            "--cluster",
            cluster,
            "--region",
            REGION,
            "--keys",
            "jwks",
            "--jwks-url",
            &d.url(),
            "--jwks-ca-pem",
            &d.ca_file().display().to_string(),
        ],
        &vault_args(bao),
    ))
}

pub fn port_of(bao: &Bao) -> u16 {
    bao.addr().rsplit(':').next().unwrap().parse().unwrap()
}
