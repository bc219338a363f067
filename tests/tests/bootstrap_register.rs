#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report
//! `jss-bootstrap node register` and friends against a real OpenBao: many
//! nodes at once, tokens that log in and read (or are refused) secrets,
//! deregistration, a crashed run completed by the next, Vault down.

mod bootstrap_common;

use std::time::Instant;

use bootstrap_common::*;
use jss::chain::{CHAIN_FILE, Chain};
use jss_tests::bao::Bao;
use jss_tests::daemon::bin;

const IMG: &str = "us.icr.io/tsi/myubuntu@sha256:1111111111111111111111111111111111111111111111111111111111111111";
const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

#[test]
fn twenty_nodes_register_at_once_and_their_tokens_work() {
    let bao = Bao::start();
    cluster_init(&bao, "c1");
    let dirs: Vec<tempfile::TempDir> = (0..20).map(|_| tempfile::tempdir().unwrap()).collect();

    let start = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = dirs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let args = register_args(&bao, "c1", &format!("node-{i}"), d.path());
                s.spawn(move || run_v(&args))
            })
            .collect();
        for h in handles {
            let r = h.join().unwrap();
            assert!(r.is_ok(), "{}", r.unwrap_err());
        }
    });
    let took = start.elapsed();
    let keys = mount_keys(&bao, "jss-c1");
    eprintln!(
        "20 concurrent registrations took {took:?}; {} keys in the mount",
        keys.len()
    );
    assert_eq!(keys.len(), 20, "lost updates: {keys:#?}");
    for d in &dirs {
        assert!(keys.contains(&spki_of(d.path())), "a node key is missing");
    }

    // Secrets at the paths the templated policies grant.
    let w = |node: &'static str, namespace: &'static str, images_names: &'static str| Workload {
        cluster: "c1",
        region: REGION,
        node,
        namespace,
        images_names,
        image: DIGEST,
    };
    let mine = w("node-0", "team-a", IMG);
    bao.ok(&["kv", "put", &mine.all_path("db"), "v=all-secret"]);
    bao.ok(&["kv", "put", &mine.ri_path("db"), "v=ri-secret"]);

    // Every registered node's tokens log in and read the secret.
    for (i, d) in dirs.iter().enumerate() {
        let node: &'static str = Box::leak(format!("node-{i}").into_boxed_str());
        let jwt = mint(d.path(), &w(node, "team-a", IMG).claims());
        let vt = login(&bao, "jss-c1", &jwt).unwrap_or_else(|e| panic!("node-{i}: {e}"));
        assert_eq!(
            read_secret(&bao, &vt, &mine.all_path("db")).unwrap(),
            "all-secret"
        );
        assert_eq!(
            read_secret(&bao, &vt, &mine.ri_path("db")).unwrap(),
            "ri-secret"
        );
    }

    // Another namespace: logs in, but the templated path does not match.
    let other_ns = w("node-1", "team-b", IMG);
    let vt = login(&bao, "jss-c1", &mint(dirs[1].path(), &other_ns.claims())).unwrap();
    let e = read_secret(&bao, &vt, &mine.all_path("db")).unwrap_err();
    assert!(e.contains("permission denied") || e.contains("403"), "{e}");
    // ti-demo-ri does not depend on the namespace: same images, same secret.
    assert_eq!(
        read_secret(&bao, &vt, &mine.ri_path("db")).unwrap(),
        "ri-secret"
    );

    // Another image: refused on both paths.
    let other_img = w("node-2", "team-a", "docker.io/library/busybox:latest");
    let vt = login(&bao, "jss-c1", &mint(dirs[2].path(), &other_img.claims())).unwrap();
    assert!(read_secret(&bao, &vt, &mine.all_path("db")).is_err());
    assert!(read_secret(&bao, &vt, &mine.ri_path("db")).is_err());

    // Another cluster's claims are refused at login (bound_claims).
    let mut foreign = mine.claims();
    foreign["cluster-name"] = "c9".into();
    assert!(login(&bao, "jss-c1", &mint(dirs[3].path(), &foreign)).is_err());
    // A wrong issuer too (bound_issuer).
    let mut wrong_iss = mine.claims();
    wrong_iss["iss"] = "jss://someone-else".into();
    assert!(login(&bao, "jss-c1", &mint(dirs[3].path(), &wrong_iss)).is_err());

    // Deregistering node-0 makes its tokens fail; the others still work.
    let dereg = ok_v(&with(
        &[
            "node",
            "deregister",
            "--signer",
            "software",
            "--state-dir",
            &dirs[0].path().display().to_string(),
            "--cluster",
            "c1",
        ],
        &vault_args(&bao),
    ));
    assert!(dereg.contains("removed  key"), "{dereg}");
    assert_eq!(mount_keys(&bao, "jss-c1").len(), 19);
    let e = login(&bao, "jss-c1", &mint(dirs[0].path(), &mine.claims())).unwrap_err();
    assert!(e.to_lowercase().contains("error"), "{e}");
    login(
        &bao,
        "jss-c1",
        &mint(dirs[4].path(), &w("node-4", "team-a", IMG).claims()),
    )
    .unwrap();
    // Deregistering again is a no-op.
    let again = ok_v(&with(
        &[
            "node",
            "deregister",
            "--signer",
            "software",
            "--state-dir",
            &dirs[0].path().display().to_string(),
            "--cluster",
            "c1",
        ],
        &vault_args(&bao),
    ));
    assert!(again.contains("absent"), "{again}");
}

#[test]
fn register_is_idempotent_and_status_reports() {
    let bao = Bao::start();
    cluster_init(&bao, "c1");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let first = ok_v(&register_args(&bao, "c1", "n1", &state));
    assert!(first.contains("created  node key"), "{first}");
    assert!(
        first.contains("created  node certificate CN=n1,OU=c1,L=eu-de,O=JSS"),
        "{first}"
    );
    assert!(first.contains("created  key"), "{first}");
    let chain_before = std::fs::read_to_string(state.join(CHAIN_FILE)).unwrap();
    let second = ok_v(&register_args(&bao, "c1", "n1", &state));
    for line in second.lines() {
        assert!(
            line.starts_with("found"),
            "second run changed something: {line}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(state.join(CHAIN_FILE)).unwrap(),
        chain_before
    );
    assert_eq!(mount_keys(&bao, "jss-c1").len(), 1);

    // The chain: node CA (pathlen 0) for this key, issued by Vault's root.
    let spki = spki_of(&state);
    let key = p256::PublicKey::from_public_key_pem_compat(&spki);
    let chain = Chain::from_pem(&chain_before, &key).unwrap();
    assert_eq!(chain.x5c().len(), 2);
    let root = bao.ok(&["read", "-field=certificate", "pki/cert/ca"]);
    assert!(
        chain_before.contains(root.trim()),
        "chain does not end in Vault's root"
    );
    let leaf = &chain.certificates()[0];
    let bc = leaf
        .tbs_certificate
        .extensions
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.extn_id.to_string() == "2.5.29.19")
        .unwrap();
    // BasicConstraints CA:TRUE, pathLen 0.
    assert_eq!(
        bc.extn_value.as_bytes(),
        &[0x30, 0x06, 0x01, 0x01, 0xff, 0x02, 0x01, 0x00]
    );

    // renew: a new certificate for the same key; still registered once.
    let renew = ok_v(&with(
        &["node", "renew"],
        &register_args(&bao, "c1", "n1", &state)[2..],
    ));
    assert!(
        renew.contains("renew    node certificate: renewal requested"),
        "{renew}"
    );
    assert!(renew.contains("found    key"), "{renew}");
    assert_ne!(
        std::fs::read_to_string(state.join(CHAIN_FILE)).unwrap(),
        chain_before
    );
    assert_eq!(spki_of(&state), spki);
    // renew --if-below: nothing to do on a fresh certificate.
    let mut lazy = with(
        &["node", "renew"],
        &register_args(&bao, "c1", "n1", &state)[2..],
    );
    lazy.extend(["--if-below".to_string(), "0.2".to_string()]);
    assert!(ok_v(&lazy).contains("found    node certificate"));

    let status = ok_v(&with(
        &[
            "node",
            "status",
            "--signer",
            "software",
            "--state-dir",
            &state.display().to_string(),
            "--cluster",
            "c1",
        ],
        &vault_args(&bao),
    ));
    assert!(status.contains("backend:      software"), "{status}");
    assert!(
        status.contains("certificate:  CN=n1,OU=c1,L=eu-de,O=JSS"),
        "{status}"
    );
    assert!(status.contains("registered:   yes"), "{status}");
}

#[test]
fn a_run_that_died_after_the_pki_step_is_completed_by_the_next() {
    let bao = Bao::start();
    cluster_init(&bao, "c1");
    // A token that may sign and take the lock but not write the mount config:
    // the run dies between the PKI step and the registration.
    let partial = bao.token_with_policy(
        "partial",
        r#"
path "pki/cert/ca" { capabilities = ["read"] }
path "pki/root/sign-intermediate" { capabilities = ["update"] }
path "auth/jss-c1/config" { capabilities = ["read"] }
path "secret/data/jss/locks/jss-c1" { capabilities = ["create", "read", "update"] }
path "secret/metadata/jss/locks/jss-c1" { capabilities = ["read"] }
path "secret/data/jss/registry/jss-c1/*" { capabilities = ["create", "read", "update"] }
path "secret/metadata/jss/registry/jss-c1/*" { capabilities = ["read"] }
"#,
    );
    let file = bao.token_file("partial", &partial);
    let dir = tempfile::tempdir().unwrap();
    let mut args = register_args(&bao, "c1", "n1", dir.path());
    let n = args.len();
    args[n - 1] = file.display().to_string();
    let e = run_v(&args).unwrap_err();
    assert!(e.contains("403 at auth/jss-c1/config"), "{e}");
    assert!(
        e.contains("path \"auth/jss-c1/config\""),
        "the minimal policy is printed: {e}"
    );
    assert!(
        dir.path().join(CHAIN_FILE).exists(),
        "the PKI step had finished"
    );
    assert!(
        mount_keys(&bao, "jss-c1").len() == 1,
        "only the placeholder"
    );

    // The lock was released despite the failure: the next run does not wait.
    let start = Instant::now();
    let done = ok_v(&register_args(&bao, "c1", "n1", dir.path()));
    assert!(start.elapsed().as_secs() < 10, "waited on a stale lock");
    assert!(done.contains("found    node certificate"), "{done}");
    assert!(done.contains("created  key"), "{done}");
    assert_eq!(mount_keys(&bao, "jss-c1"), vec![spki_of(dir.path())]);
}

#[test]
fn vault_down_gives_a_clear_error_and_writes_nothing() {
    let mut bao = Bao::start();
    cluster_init(&bao, "c1");
    bao.stop();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut args = register_args(&bao, "c1", "n1", &state);
    args.extend(["--vault-attempts".to_string(), "2".to_string()]);
    let e = run_v(&args).unwrap_err();
    assert!(e.contains("cannot reach Vault at http://127.0.0.1:"), "{e}");
    assert!(e.contains("VAULT_ADDR"), "{e}");
    assert!(!state.exists(), "state was written although Vault was down");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // The binary, its stderr a pipe as under systemd or in a pod: the retry
    // warning is logged, as plain text (no terminal colour codes).
    let o = std::process::Command::new(bin("jss-bootstrap"))
        .args(&args)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("retrying"), "{stderr}");
    assert!(stderr.contains("cannot reach Vault"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "colour codes in a pipe: {stderr:?}"
    );
    assert!(!state.exists(), "state was written although Vault was down");
}

#[test]
fn split_flow_csr_sign_install() {
    let bao = Bao::start();
    cluster_init(&bao, "c1");
    let node_dir = tempfile::tempdir().unwrap();
    let admin = tempfile::tempdir().unwrap();
    let csr = admin.path().join("n7.csr");
    let chain_out = admin.path().join("n7.chain.pem");
    let sd = node_dir.path().display().to_string();
    // On the node: no Vault credentials involved.
    let r = ok(&[
        "node",
        "csr",
        "--signer",
        "software",
        "--state-dir",
        &sd,
        "--cluster",
        "c1",
        "--region",
        REGION,
        "--node",
        "n7",
        "--out",
        &csr.display().to_string(),
    ]);
    assert!(r.contains("created  CSR"), "{r}");
    // Where the credentials are: sign and register.
    let r = ok_v(&with(
        &[
            "node",
            "sign",
            "--csr",
            &csr.display().to_string(),
            "--out",
            &chain_out.display().to_string(),
            "--cluster",
            "c1",
        ],
        &vault_args(&bao),
    ));
    assert!(r.contains("created  key"), "{r}");
    // A CSR for another cluster is refused.
    let e = run_v(&with(
        &[
            "node",
            "sign",
            "--csr",
            &csr.display().to_string(),
            "--out",
            &chain_out.display().to_string(),
            "--cluster",
            "c2",
        ],
        &vault_args(&bao),
    ))
    .unwrap_err();
    assert!(e.contains("refusing"), "{e}");
    // A tampered CSR is refused (the signature no longer verifies).
    let pem = std::fs::read_to_string(&csr).unwrap();
    let tampered = admin.path().join("bad.csr");
    std::fs::write(&tampered, tamper(&pem)).unwrap();
    let e = run_v(&with(
        &[
            "node",
            "sign",
            "--csr",
            &tampered.display().to_string(),
            "--out",
            &chain_out.display().to_string(),
            "--cluster",
            "c1",
        ],
        &vault_args(&bao),
    ))
    .unwrap_err();
    assert!(e.contains("CSR"), "{e}");
    // Back on the node.
    let r = ok(&[
        "node",
        "install-chain",
        "--signer",
        "software",
        "--state-dir",
        &sd,
        &chain_out.display().to_string(),
    ]);
    assert!(r.contains("CN=n7,OU=c1,L=eu-de,O=JSS"), "{r}");
    let w = Workload {
        cluster: "c1",
        region: REGION,
        node: "n7",
        namespace: "team-a",
        images_names: IMG,
        image: DIGEST,
    };
    bao.ok(&["kv", "put", &w.all_path("s"), "v=split"]);
    let vt = login(&bao, "jss-c1", &mint(node_dir.path(), &w.claims())).unwrap();
    assert_eq!(read_secret(&bao, &vt, &w.all_path("s")).unwrap(), "split");
    // A chain for another key is refused by install-chain.
    let other = tempfile::tempdir().unwrap();
    let e = run(&[
        "node",
        "install-chain",
        "--signer",
        "software",
        "--state-dir",
        &other.path().display().to_string(),
        &chain_out.display().to_string(),
    ])
    .unwrap_err();
    assert!(
        e.contains("no node key") || e.contains("another key"),
        "{e}"
    );
}

#[test]
fn a_response_wrapped_token_is_unwrapped() {
    let bao = Bao::start();
    cluster_init(&bao, "c1");
    let wrapped = bao.ok(&[
        "token",
        "create",
        "-wrap-ttl=5m",
        "-field=wrapping_token",
        "-ttl=10m",
    ]);
    let file = bao.token_file("wrapped", wrapped.trim());
    let dir = tempfile::tempdir().unwrap();
    let mut args = register_args(&bao, "c1", "n1", dir.path());
    let n = args.len();
    args[n - 1] = file.display().to_string();
    args.push("--wrapped-token".into());
    let r = ok_v(&args);
    assert!(r.contains("created  key"), "{r}");
    // A wrapping token is single-use.
    let e = run_v(&args).unwrap_err();
    assert!(e.contains("unwrap"), "{e}");
}

/// Flips one character in the middle of the CSR's base64 body.
fn tamper(pem: &str) -> String {
    let mut lines: Vec<String> = pem.lines().map(String::from).collect();
    let mid = lines.len() / 2;
    let l = &mut lines[mid];
    let c = if l.starts_with('A') { "B" } else { "A" };
    l.replace_range(0..1, c);
    lines.join("\n") + "\n"
}

trait CompatPem {
    fn from_public_key_pem_compat(pem: &str) -> jss::signer::NodePublicKey;
}

impl CompatPem for p256::PublicKey {
    fn from_public_key_pem_compat(pem: &str) -> jss::signer::NodePublicKey {
        use p256::pkcs8::DecodePublicKey as _;
        jss::signer::NodePublicKey::new(p256::PublicKey::from_public_key_pem(pem).unwrap())
    }
}
