#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report
//! TPM mode end to end: the node key lives in a real swtpm, the TPM signs
//! the CSR, Vault signs the certificate, and TPM-signed tokens log in.

mod bootstrap_common;

use bootstrap_common::*;
use jss::signer::SignerKind;
use jss_tests::bao::Bao;
use jss_tests::swtpm::Swtpm;

#[test]
fn tpm_node_registers_and_its_tokens_log_in() {
    let tpm = Swtpm::start();
    let bao = Bao::start();
    cluster_init(&bao, "c1");
    let dir = tempfile::tempdir().unwrap();
    let sd = dir.path().display().to_string();
    let tcti = tpm.tcti();
    let args = with(
        &[
            "node",
            "register",
            "--signer",
            "tpm",
            "--tcti",
            &tcti,
            "--state-dir",
            &sd,
            "--cluster",
            "c1",
            "--region",
            REGION,
            "--node",
            "tpm-node",
        ],
        &vault_args(&bao),
    );
    let r = ok_v(&args);
    assert!(r.contains("created  node key (tpm"), "{r}");
    assert!(r.contains("created  key"), "{r}");
    // Only the TPM-wrapped blob is on disk, never a software key.
    assert!(dir.path().join(jss::signer::TPM_KEY_FILE).exists());
    assert!(!dir.path().join(jss::signer::SOFTWARE_KEY_FILE).exists());
    // Idempotent in TPM mode too.
    let again = ok_v(&args);
    assert!(again.lines().all(|l| l.starts_with("found")), "{again}");

    let status = ok(&[
        "node",
        "status",
        "--signer",
        "tpm",
        "--tcti",
        &tcti,
        "--state-dir",
        &sd,
    ]);
    assert!(status.contains("backend:      tpm"), "{status}");
    assert!(status.contains("CN=tpm-node,OU=c1"), "{status}");

    let w = Workload {
        cluster: "c1",
        region: REGION,
        node: "tpm-node",
        namespace: "team-a",
        images_names: "docker.io/library/nginx:1.27",
        image: "sha256:2222222222222222222222222222222222222222222222222222222222222222",
    };
    bao.ok(&["kv", "put", &w.all_path("k"), "v=from-tpm"]);
    let jwt = mint_in(dir.path(), SignerKind::Tpm, &tcti, &w.claims());
    let vt = login(&bao, "jss-c1", &jwt).unwrap();
    assert_eq!(
        read_secret(&bao, &vt, &w.all_path("k")).unwrap(),
        "from-tpm"
    );
}
