#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report
//! `jss-bootstrap cluster init` against a real OpenBao: what it creates, that
//! a second run only finds, and what a token without rights is told.

mod bootstrap_common;

use bootstrap_common::*;
use jss_tests::bao::Bao;

#[test]
fn cluster_init_creates_then_finds_everything() {
    let bao = Bao::start();
    let first = cluster_init(&bao, "c1");
    for what in [
        "pki mount pki/",
        "root CA in pki/",
        "auth/jss-c1/ (jwt)",
        "auth/jss-c1/config",
        "auth/jss-c1/role/jss",
        "policy ti-demo-all",
        "policy ti-demo-ri",
    ] {
        let line = first.lines().find(|l| l.contains(what)).unwrap_or_else(|| {
            panic!("no line for {what:?} in:\n{first}");
        });
        assert!(line.starts_with("created"), "{line}");
    }
    // The dev server's KV-v2 mount is reused, not replaced.
    assert!(first.contains("found    kv-v2 mount secret/"), "{first}");

    let second = cluster_init(&bao, "c1");
    for line in second.lines() {
        assert!(
            line.starts_with("found"),
            "second run changed something: {line}\n{second}"
        );
    }

    // The role, written in full.
    let role: serde_json::Value =
        serde_json::from_str(&bao.ok(&["read", "-format=json", "auth/jss-c1/role/jss"])).unwrap();
    let d = &role["data"];
    assert_eq!(d["role_type"], "jwt");
    assert_eq!(d["user_claim"], "sub");
    assert_eq!(d["bound_audiences"], serde_json::json!(["vault"]));
    assert_eq!(d["bound_claims_type"], "glob");
    assert_eq!(
        d["bound_claims"],
        serde_json::json!({"cluster-name": "c1", "cluster-region": REGION})
    );
    for claim in [
        "namespace",
        "images",
        "image",
        "image-id",
        "cluster-name",
        "cluster-region",
        "service-account",
        "pod",
        "machineid",
        "node",
        "jti",
    ] {
        assert_eq!(d["claim_mappings"][claim], claim, "{claim} not mapped");
    }
    assert_eq!(d["token_ttl"], 300);
    // Vault's default leeway (60 s) would double a token's life; it is set small.
    for k in [
        "clock_skew_leeway",
        "expiration_leeway",
        "not_before_leeway",
    ] {
        assert_eq!(d[k], 10, "{k}");
    }

    // The config: ES256, the issuer, and only the placeholder key so far.
    let cfg: serde_json::Value =
        serde_json::from_str(&bao.ok(&["read", "-format=json", "auth/jss-c1/config"])).unwrap();
    assert_eq!(cfg["data"]["bound_issuer"], "jss://c1");
    assert_eq!(
        cfg["data"]["jwt_supported_algs"],
        serde_json::json!(["ES256"])
    );
    assert_eq!(
        cfg["data"]["jwt_validation_pubkeys"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Templated policies with this mount's accessor filled in.
    let auths: serde_json::Value =
        serde_json::from_str(&bao.ok(&["auth", "list", "-format=json"])).unwrap();
    let accessor = auths["jss-c1/"]["accessor"].as_str().unwrap().to_string();
    let all = bao.ok(&["policy", "read", "ti-demo-all"]);
    assert!(all.contains(&format!(
        "secret/data/ti-demo-all/{{{{identity.entity.aliases.{accessor}.metadata.cluster-region}}}}/{{{{identity.entity.aliases.{accessor}.metadata.cluster-name}}}}/{{{{identity.entity.aliases.{accessor}.metadata.namespace}}}}/{{{{identity.entity.aliases.{accessor}.metadata.images}}}}/*"
    )), "{all}");
    let ri = bao.ok(&["policy", "read", "ti-demo-ri"]);
    assert!(ri.contains(&format!(
        "secret/data/ti-demo-ri/{{{{identity.entity.aliases.{accessor}.metadata.cluster-region}}}}/{{{{identity.entity.aliases.{accessor}.metadata.images}}}}/*"
    )), "{ri}");

    // A second cluster in the same Vault adds its block; the first stays.
    let other = cluster_init(&bao, "c2");
    assert!(other.contains("updated  policy ti-demo-all"), "{other}");
    assert!(other.contains("found    root CA in pki/"), "{other}");
    let all = bao.ok(&["policy", "read", "ti-demo-all"]);
    assert!(all.contains(&accessor), "c1's block was lost:\n{all}");
    assert_eq!(all.matches("# jss-begin").count(), 2, "{all}");
}

#[test]
fn forbidden_prints_the_minimal_policy() {
    let bao = Bao::start();
    let weak = bao.token_with_policy(
        "weak",
        "path \"sys/mounts\" {\n  capabilities = [\"read\"]\n}\n",
    );
    let file = bao.token_file("weak-token", &weak);
    let args = vec![
        "cluster".to_string(),
        "init".into(),
        "--cluster".into(),
        "c1".into(),
        "--region".into(),
        REGION.into(),
        "--vault-addr".into(),
        bao.addr(),
        "--token-file".into(),
        file.display().to_string(),
    ];
    let e = run_v(&args).unwrap_err();
    assert!(e.contains("403"), "{e}");
    assert!(
        e.contains("This command needs at least this Vault policy"),
        "{e}"
    );
    assert!(e.contains("path \"sys/auth/jss-c1\""), "{e}");
    assert!(e.contains("path \"pki/root/generate/internal\""), "{e}");
    // The printed policy is enough: a token holding exactly it succeeds.
    let policy = e
        .split("This command needs at least this Vault policy:\n\n")
        .nth(1)
        .unwrap()
        .split("\n--- output so far")
        .next()
        .unwrap()
        .to_string();
    let enough = bao.token_with_policy("printed", &policy);
    let file = bao.token_file("printed-token", &enough);
    let mut args = args;
    let n = args.len();
    args[n - 1] = file.display().to_string();
    let report = ok_v(&args);
    assert!(report.contains("created  auth/jss-c1/role/jss"), "{report}");
}

/// A runtime that reports only an image ID (CRI-O >= 1.28) gives a token
/// without `image`: it logs in, and the entity alias has `image-id` and no
/// `image`, so a policy templated on `image` has nothing to match.
#[test]
fn a_token_without_a_registry_digest_logs_in_with_its_image_id() {
    let bao = Bao::start();
    cluster_init(&bao, "c1");
    let dir = tempfile::tempdir().unwrap();
    ok_v(&register_args(&bao, "c1", "node-1", dir.path()));
    let id = format!("sha256:{}", "8a".repeat(32));
    let mut claims = Workload {
        cluster: "c1",
        region: REGION,
        node: "node-1",
        namespace: "team-a",
        images_names: "registry.local/app:1.0",
        image: "",
    }
    .claims();
    let c = claims.as_object_mut().unwrap();
    c.remove("image");
    c.insert("image-id".into(), id.clone().into());
    let vt = login(&bao, "jss-c1", &mint(dir.path(), &claims)).unwrap();
    let out = bao.run(&vt, &["token", "lookup", "-format=json"]);
    assert!(out.status.success(), "{out:?}");
    let me: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let meta = &me["data"]["meta"];
    assert_eq!(meta["image-id"], id.as_str(), "{me}");
    assert!(meta.get("image").is_none(), "{me}");
    assert_eq!(meta["namespace"], "team-a", "{me}");
}
