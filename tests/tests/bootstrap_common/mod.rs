//! Shared by the bootstrap tests: run `jss-bootstrap` commands in-process
//! (the same code as the binary), mint tokens with a node key, log in to
//! OpenBao with them and read secrets.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use jss::chain::Chain;
use jss::signer::{self, KeyPolicy, SignerConfig, SignerKind};
use jss::token::TokenEncoder;
use jss_tests::bao::Bao;

pub const REGION: &str = "eu-de";

/// Runs `jss-bootstrap <args>`; Ok(report) or Err(error text).
pub fn run(args: &[&str]) -> Result<String, String> {
    let mut out = Vec::new();
    let argv = std::iter::once("jss-bootstrap").chain(args.iter().copied());
    let r = jss_bootstrap::run_args(argv, &mut out);
    let text = String::from_utf8(out).unwrap();
    match r {
        Ok(()) => Ok(text),
        Err(e) => Err(format!("{e}\n--- output so far:\n{text}")),
    }
}

pub fn ok(args: &[&str]) -> String {
    run(args).unwrap_or_else(|e| panic!("jss-bootstrap {args:?} failed: {e}"))
}

/// `--vault-addr A --token-file F` for the root token.
pub fn vault_args(bao: &Bao) -> Vec<String> {
    vec![
        "--vault-addr".into(),
        bao.addr(),
        "--token-file".into(),
        bao.root_token_file().display().to_string(),
    ]
}

pub fn with(base: &[&str], extra: &[String]) -> Vec<String> {
    base.iter()
        .map(|s| s.to_string())
        .chain(extra.iter().cloned())
        .collect()
}

pub fn run_v(args: &[String]) -> Result<String, String> {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&refs)
}

pub fn ok_v(args: &[String]) -> String {
    run_v(args).unwrap_or_else(|e| panic!("jss-bootstrap {args:?} failed: {e}"))
}

pub fn cluster_init(bao: &Bao, cluster: &str) -> String {
    ok_v(&with(
        &["cluster", "init", "--cluster", cluster, "--region", REGION],
        &vault_args(bao),
    ))
}

/// `node register` with a software key in `dir`.
pub fn register_args(bao: &Bao, cluster: &str, node: &str, dir: &Path) -> Vec<String> {
    with(
        &[
            "node",
            "register",
            "--signer",
            "software",
            "--state-dir",
            &dir.display().to_string(),
            "--cluster",
            cluster,
            "--region",
            REGION,
            "--node",
            node,
            "--ttl",
            "1h",
        ],
        &vault_args(bao),
    )
}

/// A workload's claims, shaped as docs/design.md and the README describe them ("Token format").
pub struct Workload<'a> {
    pub cluster: &'a str,
    pub region: &'a str,
    pub node: &'a str,
    pub namespace: &'a str,
    pub images_names: &'a str,
    pub image: &'a str,
}

impl Workload<'_> {
    pub fn images(&self) -> String {
        let names: Vec<&str> = self.images_names.split(',').collect();
        jss::claims::images_hash(&names)
    }

    pub fn claims(&self) -> serde_json::Value {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let images = self.images();
        let sa = "default";
        serde_json::json!({
            "iss": format!("jss://{}", self.cluster),
            "sub": format!("{}/{}/{}/{sa}/{images}/{}", self.region, self.cluster, self.namespace, self.image),
            "aud": "vault",
            "iat": now,
            "nbf": now,
            "exp": now + 60,
            "jti": format!("{}-{now}-{}", self.node, rand_hex()),
            "cluster-name": self.cluster,
            "cluster-region": self.region,
            "machineid": "0123456789abcdef0123456789abcdef",
            "node": self.node,
            "namespace": self.namespace,
            "pod": "app-0",
            "pod-uid": "7f0e4c9a-1b2c-4d5e-8f90-123456789abc",
            "service-account": sa,
            "container": "app",
            "images-names": self.images_names,
            "images": images,
            "image": self.image,
        })
    }

    /// The secret path ti-demo-all grants this workload.
    pub fn all_path(&self, name: &str) -> String {
        format!(
            "secret/ti-demo-all/{}/{}/{}/{}/{name}",
            self.region,
            self.cluster,
            self.namespace,
            self.images()
        )
    }

    /// The secret path ti-demo-ri grants this workload.
    pub fn ri_path(&self, name: &str) -> String {
        format!("secret/ti-demo-ri/{}/{}/{name}", self.region, self.images())
    }
}

fn rand_hex() -> String {
    let mut b = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    hex::encode(b)
}

/// Mints a token with the node key and chain in `dir`.
pub fn mint_in(dir: &Path, kind: SignerKind, tcti: &str, claims: &serde_json::Value) -> String {
    let cfg = SignerConfig {
        kind,
        tcti: tcti.to_string(),
        state_dir: dir.to_path_buf(),
        pcrs: None,
    };
    let (s, _) = signer::open(&cfg, KeyPolicy::MustExist).unwrap();
    let chain = Chain::load(dir, s.public_key()).unwrap();
    TokenEncoder::new(s.kid(), Some(chain.x5c()))
        .unwrap()
        .encode(s.as_ref(), claims)
        .unwrap()
}

pub fn mint(dir: &Path, claims: &serde_json::Value) -> String {
    mint_in(dir, SignerKind::Software, "", claims)
}

/// Logs in at auth/<mount>/login; Ok(client token) or Err(bao's stderr).
pub fn login(bao: &Bao, mount: &str, jwt: &str) -> Result<String, String> {
    let path = format!("auth/{mount}/login");
    let o = bao.run(
        "",
        &[
            "write",
            "-field=token",
            &path,
            "role=jss",
            &format!("jwt={jwt}"),
        ],
    );
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// Reads a KV-v2 secret's field `v` with `token`; Err(stderr) if refused.
pub fn read_secret(bao: &Bao, token: &str, path: &str) -> Result<String, String> {
    let o = bao.run(token, &["kv", "get", "-field=v", path]);
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// Node keys currently in the mount (without the placeholder).
pub fn mount_keys(bao: &Bao, mount: &str) -> Vec<String> {
    let out = bao.ok(&["read", "-format=json", &format!("auth/{mount}/config")]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["data"]["jwt_validation_pubkeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().trim().to_string())
        .collect()
}

pub fn spki_of(dir: &Path) -> String {
    let cfg = SignerConfig {
        kind: SignerKind::Software,
        tcti: String::new(),
        state_dir: dir.to_path_buf(),
        pcrs: None,
    };
    let (s, _) = signer::open(&cfg, KeyPolicy::MustExist).unwrap();
    s.public_key().spki_pem().trim().to_string()
}
