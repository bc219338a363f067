//! The original TSI demo, end to end and for real (issue 6): a swtpm-held node
//! key registered with `jss-bootstrap`, OpenBao's JWT auth and templated
//! policies, `jss serve` behind a kubelet stand-in, and pods that are real
//! processes in kubepods cgroups. Also what must be refused: expired,
//! tampered, foreign-key and deregistered-node tokens; and the x5c chain
//! checked with OpenSSL's path validator. Finally `swtpm-ci/demo` itself
//! (its demo pod gets its secrets with `jss secrets --once`, and an OpenBao
//! Agent renders one from a `jss token --out --refresh` file), run to
//! completion and interrupted, must leave nothing behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jss::signer::{self, KeyPolicy, SignerConfig, SignerKind};
use jss::token::TokenEncoder;
use jss_tests::bao::Bao;
use jss_tests::ca::TestCa;
use jss_tests::cluster::{bootstrap, layout};
use jss_tests::daemon::{Daemon, bin};
use jss_tests::kubelet::{Ctr, KubeletStandin, PodBuilder, pod_list};
use jss_tests::node::run_in;
use jss_tests::pods::{PodProcess, random_container_id, random_pod_uid};
use jss_tests::swtpm::Swtpm;
use serde_json::{Value, json};

const CLUSTER: &str = "EUCluster";
const REGION: &str = "eu-de";
const NODE: &str = "node-1";
const MOUNT: &str = "jss-EUCluster";
const DEMO_NS: &str = "trusted-identity";
const DEMO_IMG: &str = "docker.io/library/ubuntu:24.04";
const OTHER_NS: &str = "other-team";
const OTHER_IMG: &str = "docker.io/library/busybox:1.37.0";

/// The tests here create and remove kubepods cgroups (the script does so from
/// bash, outside the harness's own lock): one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token_from(o: &Output) -> String {
    assert!(
        o.status.success(),
        "jss token failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone())
        .unwrap()
        .trim()
        .to_string()
}

/// `auth/<mount>/login` with `role`: Ok(the `auth` object) or Err(bao's stderr).
fn login(bao: &Bao, role: &str, jwt: &str) -> Result<Value, String> {
    let o = bao.run(
        "",
        &[
            "write",
            "-format=json",
            &format!("auth/{MOUNT}/login"),
            &format!("role={role}"),
            &format!("jwt={jwt}"),
        ],
    );
    if o.status.success() {
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        Ok(v["auth"].clone())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

fn refused(bao: &Bao, role: &str, jwt: &str, what: &str) -> String {
    match login(bao, role, jwt) {
        Ok(auth) => panic!("{what}: OpenBao accepted it: {auth}"),
        Err(e) => {
            assert!(e.contains("Error writing data"), "{what}: {e}");
            e
        }
    }
}

/// A KV-v2 secret's `value` read with `token`: Ok(value) or Err(stderr).
fn read(bao: &Bao, token: &str, path: &str) -> Result<String, String> {
    let o = bao.run(token, &["kv", "get", "-field=value", path]);
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

fn claims_of(token: &str) -> Value {
    jss::token::decode_unverified(token).unwrap().1
}

fn x5c_of(token: &str) -> Vec<String> {
    jss::token::decode_unverified(token).unwrap().0.x5c.unwrap()
}

/// Re-encodes a token's payload with `edit` applied, keeping header and signature.
fn tamper(token: &str, edit: impl FnOnce(&mut Value)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut c = claims_of(token);
    edit(&mut c);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

fn pem_of(der_b64: &str) -> String {
    let body: Vec<String> = der_b64
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        body.join("\n")
    )
}

fn openssl_verify(ca: &Path, untrusted: Option<&Path>, leaf: &Path) -> Output {
    let mut c = Command::new("openssl");
    c.args(["verify", "-x509_strict", "-CAfile"]).arg(ca);
    if let Some(u) = untrusted {
        c.arg("-untrusted").arg(u);
    }
    c.arg(leaf)
        .output()
        .unwrap_or_else(|e| panic!("openssl is missing ({e}): run swtpm-ci/install-deps"))
}

/// Everything of the demo: Vault, the TPM, the registered node, the kubelet
/// stand-in with both pods, the daemon, and the secrets.
struct Demo {
    bao: Bao,
    tpm: Swtpm,
    dir: tempfile::TempDir,
    _kubelet: KubeletStandin,
    daemon: Option<Daemon>,
    demo: PodProcess,
    other: PodProcess,
    images: String,
    all_path: String,
    ri_path: String,
}

impl Demo {
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().unwrap()
    }

    fn socket(&self) -> String {
        self.daemon().socket.display().to_string()
    }
}

fn setup() -> Demo {
    let bao = Bao::start();
    let init = bootstrap(
        &bao,
        &["cluster", "init", "--cluster", CLUSTER, "--region", REGION],
    );
    assert!(init.contains(&format!("auth/{MOUNT}/role/jss")), "{init}");

    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let reg = bootstrap(
        &bao,
        &[
            "node",
            "register",
            "--state-dir",
            state.to_str().unwrap(),
            "--cluster",
            CLUSTER,
            "--region",
            REGION,
            "--node",
            NODE,
            "--signer",
            "tpm",
            "--tcti",
            &tpm.tcti(),
        ],
    );
    assert!(reg.contains("node key (tpm"), "{reg}");
    assert!(state.join("node-key.tpm").exists(), "the key is TPM-held");
    assert!(!state.join("node-key.pem").exists(), "no software key");

    let (demo_uid, demo_id) = (random_pod_uid(), random_container_id());
    let (other_uid, other_id) = (random_pod_uid(), random_container_id());
    let kubelet = KubeletStandin::start(pod_list(&[
        PodBuilder::new(&demo_uid, DEMO_NS, "myubuntu-698b8cb4b-n6xgk")
            .container(Ctr::running("myubuntu", DEMO_IMG, &demo_id))
            .json(),
        PodBuilder::new(&other_uid, OTHER_NS, "mybusybox-5c7f9d8b6-qx2lp")
            .container(Ctr::running("mybusybox", OTHER_IMG, &other_id))
            .json(),
    ]));
    std::fs::write(
        dir.path().join("machine-id"),
        "0f1e2d3c4b5a69788796a5b4c3d2e1f0\n",
    )
    .unwrap();
    let d = dir.path().display();
    let config = format!(
        r#"socket = "{d}/jss.sock"
state_dir = "{d}/state"
cluster_name = "{CLUSTER}"
cluster_region = "{REGION}"
node_name = "{NODE}"
machine_id_path = "{d}/machine-id"
audiences = ["vault"]
audit_log = "{d}/audit.log"

[signer]
kind = "tpm"
tcti = "{tcti}"

[kubelet]
url = "{url}"
token_path = "{token}"
ca_path = "{ca}"
"#,
        tcti = tpm.tcti(),
        url = kubelet.url(),
        token = kubelet.token_path().display(),
        ca = kubelet.ca_path().display(),
    );
    let daemon = Daemon::start(dir.path(), &config);

    // The secret maker: paths from region, cluster, namespace and `images`.
    let images = jss::claims::images_hash(&[DEMO_IMG]);
    let all_path = format!("secret/ti-demo-all/{REGION}/{CLUSTER}/{DEMO_NS}/{images}/mysecret1");
    let ri_path = format!("secret/ti-demo-ri/{REGION}/{images}/mysecret2");
    bao.ok(&["kv", "put", &all_path, "value=s3cret-all"]);
    bao.ok(&["kv", "put", &ri_path, "value=s3cret-ri"]);

    let demo = PodProcess::spawn(layout(), &demo_uid, &demo_id);
    let other = PodProcess::spawn(layout(), &other_uid, &other_id);
    Demo {
        bao,
        tpm,
        dir,
        _kubelet: kubelet,
        daemon: Some(daemon),
        demo,
        other,
        images,
        all_path,
        ri_path,
    }
}

#[test]
fn tsi_demo_and_every_refusal() {
    let _g = serial();
    let mut d = setup();
    let sock = d.socket();

    // --- The demo pod: token, login, both secrets.
    let t0 = Instant::now();
    let token = token_from(&run_in(&d.demo, &["token", "--socket", &sock]));
    let c = claims_of(&token);
    assert_eq!(c["namespace"], DEMO_NS);
    assert_eq!(c["container"], "myubuntu");
    assert_eq!(c["cluster-name"], CLUSTER);
    assert_eq!(c["cluster-region"], REGION);
    assert_eq!(c["node"], NODE);
    assert_eq!(c["images-names"], DEMO_IMG);
    assert_eq!(c["images"], d.images.as_str());
    assert_eq!(c["pod-uid"], d.demo.pod_uid.as_str());
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 60);
    // `jss images-hash` is what a secret maker runs; for one image it is sha256sum's.
    let o = Command::new(bin("jss"))
        .args(["images-hash", DEMO_IMG])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), d.images);

    let auth = login(&d.bao, "jss", &token).unwrap();
    let vt = auth["client_token"].as_str().unwrap().to_string();
    assert_eq!(auth["metadata"]["namespace"], DEMO_NS);
    assert_eq!(auth["metadata"]["images"], d.images.as_str());
    let policies: Vec<&str> = auth["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        policies.contains(&"ti-demo-all") && policies.contains(&"ti-demo-ri"),
        "{policies:?}"
    );
    assert_eq!(read(&d.bao, &vt, &d.all_path).unwrap(), "s3cret-all");
    assert_eq!(read(&d.bao, &vt, &d.ri_path).unwrap(), "s3cret-ri");
    eprintln!(
        "demo pod: token, login and both secrets in {:?}",
        t0.elapsed()
    );

    // --- Another namespace and image: a valid token, but not these secrets.
    let other = token_from(&run_in(&d.other, &["token", "--socket", &sock]));
    let oc = claims_of(&other);
    assert_eq!(oc["namespace"], OTHER_NS);
    assert_eq!(
        oc["images"],
        jss::claims::images_hash(&[OTHER_IMG]).as_str()
    );
    let ovt = login(&d.bao, "jss", &other).unwrap()["client_token"]
        .as_str()
        .unwrap()
        .to_string();
    for p in [&d.all_path, &d.ri_path] {
        let e = read(&d.bao, &ovt, p).unwrap_err();
        assert!(e.contains("permission denied"), "{p}: {e}");
    }

    // --- A process outside any pod: JSS itself refuses.
    let host = Command::new(bin("jss"))
        .args(["token", "--socket", &sock])
        .output()
        .unwrap();
    assert!(!host.status.success());
    let err = String::from_utf8_lossy(&host.stderr);
    assert!(err.contains("403") && err.contains("not_in_pod"), "{err}");

    // --- The audit log: one line per decision, never the token.
    let audit = d.daemon().audit_lines();
    assert_eq!(audit.len(), 3, "{audit:#?}");
    assert_eq!(audit[0]["outcome"], "issued");
    assert_eq!(audit[0]["namespace"], DEMO_NS);
    assert_eq!(audit[0]["jti"], c["jti"]);
    assert_eq!(audit[1]["outcome"], "issued");
    assert_eq!(audit[1]["namespace"], OTHER_NS);
    assert_eq!(audit[1]["jti"], oc["jti"]);
    assert_eq!(audit[2]["outcome"], "denied");
    assert!(audit[2]["namespace"].is_null(), "{:?}", audit[2]);
    let raw_audit = std::fs::read_to_string(&d.daemon().audit_log).unwrap();
    assert!(!raw_audit.contains(&token) && !raw_audit.contains(&other));
    assert!(!raw_audit.contains(token.rsplit('.').next().unwrap()));

    // --- x5c: OpenSSL's path validator, against the root Vault's PKI holds.
    let x5c = x5c_of(&token);
    assert_eq!(x5c.len(), 2);
    let dir = d.dir.path();
    let (leaf, root_in_token) = (dir.join("x5c-0.pem"), dir.join("x5c-1.pem"));
    std::fs::write(&leaf, pem_of(&x5c[0])).unwrap();
    std::fs::write(&root_in_token, pem_of(&x5c[1])).unwrap();
    let vault_root = dir.join("vault-root.pem");
    std::fs::write(
        &vault_root,
        d.bao.ok(&["read", "-field=certificate", "pki/cert/ca"]),
    )
    .unwrap();
    let v = openssl_verify(&vault_root, None, &leaf);
    let vout = String::from_utf8_lossy(&v.stdout);
    assert!(
        v.status.success() && vout.contains(": OK"),
        "{vout}{}",
        String::from_utf8_lossy(&v.stderr)
    );
    // x5c[1] is Vault's root, byte for byte.
    let vault_root_der = x509_der(&std::fs::read_to_string(&vault_root).unwrap());
    assert_eq!(STANDARD.decode(&x5c[1]).unwrap(), vault_root_der);
    // The validator does validate: another root does not anchor the chain,
    // and the root from the token is not trusted merely for being sent.
    let stranger = dir.join("stranger-root.pem");
    std::fs::write(&stranger, TestCa::named("JSS root CA").root_pem()).unwrap();
    let v = openssl_verify(&stranger, Some(&root_in_token), &leaf);
    assert!(!v.status.success(), "{v:?}");
    // The token is signed by the key x5c[0] certifies.
    verify_with_leaf(&token, &x5c[0]);

    // --- Tampered tokens: a claim changed, a signature bit flipped.
    let forged = tamper(&other, |c| c["namespace"] = json!(DEMO_NS));
    refused(&d.bao, "jss", &forged, "a tampered payload");
    let forged = tamper(&token, |c| {
        c["images"] = json!(jss::claims::images_hash(&[OTHER_IMG]))
    });
    refused(&d.bao, "jss", &forged, "a tampered images claim");
    let mut sig = URL_SAFE_NO_PAD
        .decode(token.rsplit('.').next().unwrap())
        .unwrap();
    sig[10] ^= 1;
    let head = &token[..token.rfind('.').unwrap()];
    let flipped = format!("{head}.{}", URL_SAFE_NO_PAD.encode(sig));
    refused(&d.bao, "jss", &flipped, "a flipped signature bit");

    // --- The node key itself (the daemon lets go of the TPM first).
    let status = d.daemon.take().unwrap().terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let node = signer::open(
        &SignerConfig {
            kind: SignerKind::Tpm,
            tcti: d.tpm.tcti(),
            state_dir: d.state(),
            pcrs: None,
        },
        KeyPolicy::MustExist,
    )
    .unwrap()
    .0;
    let enc = TokenEncoder::new(node.kid(), Some(x5c.clone())).unwrap();
    let fresh = |c: &Value, iat: u64, ttl: u64, jti: &str| {
        let mut c = c.clone();
        c["iat"] = json!(iat);
        c["nbf"] = json!(iat);
        c["exp"] = json!(iat + ttl);
        c["jti"] = json!(jti);
        c
    };

    // --- Expired: a role without leeway. A token minted the same way but
    // still valid logs in there, so exp is what refuses the other.
    let role_file = dir.join("strict-role.json");
    std::fs::write(&role_file, strict_role(&d.bao).to_string()).unwrap();
    d.bao.ok(&[
        "write",
        &format!("auth/{MOUNT}/role/strict"),
        &format!("@{}", role_file.display()),
    ]);
    let t = now();
    let valid = enc
        .encode(node.as_ref(), &fresh(&c, t, 60, "strict-valid"))
        .unwrap();
    let vt = login(&d.bao, "strict", &valid).unwrap()["client_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(read(&d.bao, &vt, &d.all_path).unwrap(), "s3cret-all");
    let expired = enc
        .encode(node.as_ref(), &fresh(&c, t - 62, 60, "strict-expired"))
        .unwrap();
    let e = refused(&d.bao, "strict", &expired, "a token expired 2 s ago");
    assert!(e.contains("expired"), "{e}");

    // --- A key that was never registered, even with the node's x5c.
    let stranger_dir = tempfile::tempdir().unwrap();
    let (foreign, _) = signer::open(
        &SignerConfig {
            kind: SignerKind::Software,
            tcti: String::new(),
            state_dir: stranger_dir.path().to_path_buf(),
            pcrs: None,
        },
        KeyPolicy::CreateIfMissing,
    )
    .unwrap();
    for kid in [foreign.kid(), node.kid()] {
        let forged = TokenEncoder::new(kid, Some(x5c.clone()))
            .unwrap()
            .encode(foreign.as_ref(), &fresh(&c, now(), 60, "unregistered"))
            .unwrap();
        refused(&d.bao, "jss", &forged, "a token from an unregistered key");
    }

    // --- Deregistered: the node's tokens stop working, fresh or not.
    let before = enc
        .encode(node.as_ref(), &fresh(&c, now(), 60, "before-deregister"))
        .unwrap();
    login(&d.bao, "jss", &before).unwrap();
    drop(node); // swtpm serves one client at a time
    let out = bootstrap(
        &d.bao,
        &[
            "node",
            "deregister",
            "--state-dir",
            d.state().to_str().unwrap(),
            "--signer",
            "tpm",
            "--tcti",
            &d.tpm.tcti(),
            "--cluster",
            CLUSTER,
        ],
    );
    assert!(out.contains("removed"), "{out}");
    refused(&d.bao, "jss", &before, "a deregistered node's token");
    refused(&d.bao, "jss", &token, "a deregistered node's daemon token");
}

/// The role `cluster init` wrote, in full, with every leeway off (OpenBao:
/// `-1` disables one; `0` means its default, e.g. 60 s of clock skew).
fn strict_role(bao: &Bao) -> Value {
    let cur: Value =
        serde_json::from_str(&bao.ok(&["read", "-format=json", &format!("auth/{MOUNT}/role/jss")]))
            .unwrap();
    let cur = &cur["data"];
    let mut role = json!({});
    for k in [
        "role_type",
        "user_claim",
        "bound_audiences",
        "bound_claims_type",
        "bound_claims",
        "claim_mappings",
        "token_policies",
        "token_ttl",
        "token_max_ttl",
    ] {
        assert!(!cur[k].is_null(), "role jss has no {k}: {cur}");
        role[k] = cur[k].clone();
    }
    role["clock_skew_leeway"] = json!(-1);
    role["expiration_leeway"] = json!(-1);
    role["not_before_leeway"] = json!(-1);
    role
}

fn x509_der(pem: &str) -> Vec<u8> {
    use x509_cert::der::Encode as _;
    let certs = x509_cert::Certificate::load_pem_chain(pem.as_bytes()).unwrap();
    certs[0].to_der().unwrap()
}

/// Checks the token's signature with the public key of the certificate `leaf_b64`.
fn verify_with_leaf(token: &str, leaf_b64: &str) {
    use x509_cert::der::{Decode as _, Encode as _};
    let der = STANDARD.decode(leaf_b64).unwrap();
    let cert = x509_cert::Certificate::from_der(&der).unwrap();
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .unwrap();
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        STANDARD.encode(spki)
    );
    let key = jsonwebtoken::DecodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["vault"]);
    v.set_issuer(&[format!("jss://{CLUSTER}")]);
    jsonwebtoken::decode::<Value>(token, &key, &v).unwrap();
}

// ------------------------------------------------------------ swtpm-ci/demo

fn demo_script() -> Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../swtpm-ci/demo");
    let bin_dir = bin("jss").parent().unwrap().to_path_buf();
    bin("kubelet-standin");
    bin("jss-bootstrap");
    // Whoever started this test may have left SIGINT ignored, and a
    // non-interactive bash cannot trap a signal ignored on entry: reset it.
    let mut c = Command::new("env");
    c.args(["--default-signal=INT", "bash"])
        .arg(script)
        .args(["--skip-install", "--skip-build"])
        .env("JSS_BIN_DIR", bin_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// What the script says it started and created.
#[derive(Default, Debug)]
struct Started {
    work: Option<PathBuf>,
    pids: Vec<u32>,
    cgroups: Vec<PathBuf>,
}

fn started(out: &str) -> Started {
    let mut s = Started::default();
    for l in out.lines().map(str::trim) {
        if let Some(w) = l.strip_prefix("work dir: ") {
            s.work = Some(PathBuf::from(w));
        } else if let Some(rest) = l.strip_prefix("pid ") {
            let (pid, rest) = rest.split_once([':', ' ']).unwrap();
            s.pids.push(pid.parse().unwrap());
            if let Some(cg) = rest.trim().strip_prefix("placed in ") {
                s.cgroups.push(PathBuf::from(cg));
            }
        }
    }
    s
}

/// Nothing the script started is left: processes, cgroups, its directory.
fn assert_clean(s: &Started, out: &str) {
    let work = s
        .work
        .as_ref()
        .unwrap_or_else(|| panic!("no work dir in:\n{out}"));
    assert!(!work.exists(), "{} left behind\n{out}", work.display());
    for pid in &s.pids {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|st| !st.contains(") Z "));
        assert!(!alive, "pid {pid} still running\n{out}");
    }
    for cg in &s.cgroups {
        assert!(!cg.exists(), "{} left behind\n{out}", cg.display());
        assert!(!cg.parent().unwrap().exists(), "pod cgroup left behind");
    }
}

#[test]
fn demo_script_passes_and_cleans_up() {
    let _g = serial();
    let t = Instant::now();
    let o = demo_script().output().unwrap();
    let took = t.elapsed();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "demo failed: {}\n{out}\n{err}",
        o.status
    );
    eprintln!("swtpm-ci/demo --skip-install --skip-build took {took:?}");
    assert!(out.contains("DEMO PASSED"), "{out}");
    for must in [
        "✔ mysecret1 = all-",
        "✔ mysecret2 = ri-",
        "✔ refused: its token is good for this cluster",
        "[pod] refused secret/ti-demo-all/",
        "[pod] refused secret/ti-demo-ri/",
        "✔ refused by JSS itself: not in a pod",
        "✔ x5c[0] (the node CA, key in the TPM) chains to pki/ root",
        "[pod] wrote secrets/mysecrets/myubuntu-mysecret1/mysecret1",
        "✔ 4 decisions, 4 lines",
        "✔ OpenBao Agent rendered mysecret1 = all-",
        "✔ jss token --refresh stopped by SIGTERM, exit 0",
        "\"alg\": \"ES256\"",
        "namespace        trusted-identity",
    ] {
        assert!(out.contains(must), "missing {must:?} in:\n{out}");
    }
    assert!(!out.contains('✘'), "{out}");
    let s = started(&out);
    // The demo pod's container cgroup is named twice: its secrets, then
    // the token file for the agent.
    assert!(s.pids.len() >= 8 && s.cgroups.len() == 3, "{s:?}\n{out}");
    assert_clean(&s, &out);
}

#[test]
fn demo_script_cleans_up_when_interrupted() {
    let _g = serial();
    // Ctrl-C: SIGINT to the whole foreground process group.
    let mut child = demo_script().process_group(0).spawn().unwrap();
    let pgid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut out = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            panic!("the demo ended before starting its first pod:\n{out}");
        }
        out.push_str(&line);
        // Interrupted while the demo pod's process is in its cgroup.
        if line.contains(" placed in /sys/fs/cgroup/") {
            break;
        }
        assert!(Instant::now() < deadline, "{out}");
    }
    let k = Command::new("kill")
        .args(["-s", "INT", "--", &format!("-{pgid}")])
        .status()
        .unwrap();
    assert!(k.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    out.push_str(&rest);
    let status = child.wait().unwrap();
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("interrupted") && out.contains("DEMO FAILED"),
        "{out}"
    );
    let s = started(&out);
    assert!(s.pids.len() >= 5 && s.cgroups.len() == 1, "{s:?}\n{out}");
    assert_clean(&s, &out);
}
