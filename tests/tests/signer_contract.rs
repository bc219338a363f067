#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report
//! One contract, two signers: everything here runs against the software key
//! and against a TPM-held key on a real swtpm.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jss::signer::{
    self, Backend, KeyOrigin, KeyPolicy, PcrSelection, Signer, SignerConfig, SignerKind,
};
use jss::token::TokenEncoder;
use jss_tests::swtpm::Swtpm;
use p256::ecdsa::signature::Verifier as _;
use p256::pkcs8::DecodePublicKey as _;

fn cfg(kind: SignerKind, tcti: &str, dir: &Path) -> SignerConfig {
    SignerConfig {
        kind,
        tcti: tcti.to_string(),
        state_dir: dir.to_path_buf(),
        pcrs: Some(PcrSelection::none()),
    }
}

/// Opens (creating if needed) a signer of each backend over `dir`.
struct Fixture {
    kind: SignerKind,
    tpm: Option<Swtpm>,
    pcrs: PcrSelection,
}

impl Fixture {
    fn software() -> Self {
        Self {
            kind: SignerKind::Software,
            tpm: None,
            pcrs: PcrSelection::none(),
        }
    }
    fn tpm() -> Self {
        Self {
            kind: SignerKind::Tpm,
            tpm: Some(Swtpm::start()),
            pcrs: PcrSelection::none(),
        }
    }
    /// A TPM key bound to PCR 7 (the bootstrap default): every signature
    /// runs PolicyPCR first.
    fn tpm_pcr7() -> Self {
        Self {
            pcrs: PcrSelection::secure_boot(),
            ..Self::tpm()
        }
    }
    fn tcti(&self) -> String {
        self.tpm.as_ref().map(|t| t.tcti()).unwrap_or_default()
    }
    fn open(&self, dir: &Path) -> Arc<dyn Signer> {
        signer::open(
            &SignerConfig {
                pcrs: Some(self.pcrs.clone()),
                ..cfg(self.kind, &self.tcti(), dir)
            },
            KeyPolicy::CreateIfMissing,
        )
        .unwrap()
        .0
    }
}

fn contract_tokens_verify(f: Fixture) {
    let dir = tempfile::tempdir().unwrap();
    let s = f.open(dir.path());
    let enc = TokenEncoder::new(s.kid(), None).unwrap();
    let claims = serde_json::json!({"sub": "contract", "aud": "vault", "exp": 4_000_000_000u64});
    for _ in 0..5 {
        let token = enc.encode(s.as_ref(), &claims).unwrap();

        // jsonwebtoken, from the reported JWK and from the SPKI PEM
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(serde_json::to_value(s.public_key().jwk()).unwrap()).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.set_audience(&["vault"]);
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &v).unwrap();
        assert_eq!(data.claims["sub"], "contract");
        assert_eq!(data.header.kid.as_deref(), Some(s.kid()));
        let pem_key =
            jsonwebtoken::DecodingKey::from_ec_pem(s.public_key().spki_pem().as_bytes()).unwrap();
        jsonwebtoken::decode::<serde_json::Value>(&token, &pem_key, &v).unwrap();

        // p256, from the SPKI PEM, over the signing input
        let vk =
            p256::ecdsa::VerifyingKey::from_public_key_pem(&s.public_key().spki_pem()).unwrap();
        let (input, sig) = token.rsplit_once('.').unwrap();
        let sig = p256::ecdsa::Signature::from_slice(&B64.decode(sig).unwrap()).unwrap();
        vk.verify(input.as_bytes(), &sig).unwrap();
        // and a changed input does not verify
        assert!(vk.verify(b"something else", &sig).is_err());
    }
}

fn contract_kid_is_rfc7638(f: Fixture) {
    let dir = tempfile::tempdir().unwrap();
    let s = f.open(dir.path());
    let jwk: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(serde_json::to_value(s.public_key().jwk()).unwrap()).unwrap();
    assert_eq!(
        s.kid(),
        jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
    );
}

fn contract_key_persists(f: Fixture) {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(f.kind, &f.tcti(), dir.path());
    let (a, origin) = signer::open(&c, KeyPolicy::CreateIfMissing).unwrap();
    assert_eq!(origin, KeyOrigin::Created);
    let kid = a.kid().to_string();
    drop(a);
    let (b, origin) = signer::open(&c, KeyPolicy::MustExist).unwrap();
    assert_eq!(origin, KeyOrigin::Loaded);
    assert_eq!(b.kid(), kid);
    b.sign(b"after reopen").unwrap();
}

fn contract_missing_key_is_an_error_for_the_daemon(f: Fixture) {
    let dir = tempfile::tempdir().unwrap();
    let e = signer::open(&cfg(f.kind, &f.tcti(), dir.path()), KeyPolicy::MustExist).unwrap_err();
    assert!(e.to_string().contains("jss-bootstrap node init"), "{e}");
}

fn contract_concurrent_signs(f: Fixture) {
    let dir = tempfile::tempdir().unwrap();
    let s = f.open(dir.path());
    let vk = p256::ecdsa::VerifyingKey::from(s.public_key().key());
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (s, vk) = (&s, &vk);
            scope.spawn(move || {
                for i in 0..10 {
                    let msg = format!("thread {t} msg {i}");
                    let sig = s.sign(msg.as_bytes()).unwrap();
                    let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
                    vk.verify(msg.as_bytes(), &sig).unwrap();
                }
            });
        }
    });
}

fn contract_loose_permissions_refused(f: Fixture) {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let s = f.open(dir.path());
    let path = signer::key_path(dir.path(), s.backend());
    drop(s);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = signer::open(&cfg(f.kind, &f.tcti(), dir.path()), KeyPolicy::MustExist).unwrap_err();
    assert!(e.to_string().contains("chmod 600"), "{e}");
}

fn contract_corrupt_key_refused(f: Fixture) {
    let dir = tempfile::tempdir().unwrap();
    let s = f.open(dir.path());
    let path = signer::key_path(dir.path(), s.backend());
    drop(s);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let e = signer::open(&cfg(f.kind, &f.tcti(), dir.path()), KeyPolicy::MustExist).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(
        msg.contains("corrupt") || msg.contains("not a usable"),
        "{msg}"
    );
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod software {
            $(#[test] fn $name() { super::$name(super::Fixture::software()) })*
        }
        mod tpm {
            $(#[test] fn $name() { super::$name(super::Fixture::tpm()) })*
        }
        mod tpm_pcr7 {
            $(#[test] fn $name() { super::$name(super::Fixture::tpm_pcr7()) })*
        }
    };
}

contract!(
    contract_tokens_verify,
    contract_kid_is_rfc7638,
    contract_key_persists,
    contract_missing_key_is_an_error_for_the_daemon,
    contract_concurrent_signs,
    contract_loose_permissions_refused,
    contract_corrupt_key_refused,
);

// --- TPM-only properties -------------------------------------------------

#[test]
fn tpm_key_survives_swtpm_restart() {
    let mut tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(SignerKind::Tpm, &tpm.tcti(), dir.path());
    let (s, _) = signer::open(&c, KeyPolicy::CreateIfMissing).unwrap();
    let kid = s.kid().to_string();
    drop(s);
    tpm.restart();
    let (s, origin) = signer::open(&c, KeyPolicy::MustExist).unwrap();
    assert_eq!(origin, KeyOrigin::Loaded);
    assert_eq!(s.kid(), kid);
    s.sign(b"after the TPM restarted").unwrap();
}

#[test]
fn tpm_signer_recovers_when_swtpm_comes_back() {
    let mut tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = signer::open(
        &cfg(SignerKind::Tpm, &tpm.tcti(), dir.path()),
        KeyPolicy::CreateIfMissing,
    )
    .unwrap();
    s.sign(b"before").unwrap();
    tpm.stop();
    let e = s.sign(b"while gone").unwrap_err();
    assert!(e.is_transient(), "{e}");
    tpm.restart();
    s.sign(b"after").unwrap();
}

#[test]
fn tpm_blob_from_another_tpm_is_refused() {
    let tpm_a = Swtpm::start();
    let tpm_b = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    signer::open(
        &cfg(SignerKind::Tpm, &tpm_a.tcti(), dir.path()),
        KeyPolicy::CreateIfMissing,
    )
    .unwrap();
    let e = signer::open(
        &cfg(SignerKind::Tpm, &tpm_b.tcti(), dir.path()),
        KeyPolicy::MustExist,
    )
    .unwrap_err();
    assert!(e.to_string().contains("made by another TPM"), "{e}");
}

#[test]
fn tpm_unreachable_fails_closed_and_auto_falls_back() {
    let port = jss_tests::net::free_port_pair();
    let tcti = format!("swtpm:host=127.0.0.1,port={port}");
    let dir = tempfile::tempdir().unwrap();
    let e = signer::open(
        &cfg(SignerKind::Tpm, &tcti, dir.path()),
        KeyPolicy::CreateIfMissing,
    )
    .unwrap_err();
    assert!(e.to_string().contains("TPM unreachable"), "{e}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "tpm mode wrote files"
    );

    let (s, _) = signer::open(
        &cfg(SignerKind::Auto, &tcti, dir.path()),
        KeyPolicy::CreateIfMissing,
    )
    .unwrap();
    assert_eq!(s.backend(), Backend::Software);
}

#[test]
fn auto_never_swaps_a_tpm_key_for_software() {
    let mut tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = signer::open(
        &cfg(SignerKind::Auto, &tpm.tcti(), dir.path()),
        KeyPolicy::CreateIfMissing,
    )
    .unwrap();
    assert_eq!(s.backend(), Backend::Tpm);
    drop(s);
    let tcti = tpm.tcti();
    tpm.kill();
    let e = signer::open(
        &cfg(SignerKind::Auto, &tcti, dir.path()),
        KeyPolicy::CreateIfMissing,
    )
    .unwrap_err();
    assert!(e.to_string().contains("held by the TPM"), "{e}");
    assert!(!dir.path().join(signer::SOFTWARE_KEY_FILE).exists());
}

#[test]
fn tpm_state_dir_holds_no_usable_private_key() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = signer::open(
        &cfg(SignerKind::Tpm, &tpm.tcti(), dir.path()),
        KeyPolicy::CreateIfMissing,
    )
    .unwrap();
    let public = *s.public_key().key();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("PRIVATE KEY"),
            "{} holds a PEM private key",
            path.display()
        );
        // Every 32-byte window of the file and of its base64/hex-decoded
        // fields, tried as a P-256 scalar: none may yield the node's public key.
        let mut candidates = vec![bytes.clone()];
        for word in
            text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '='))
        {
            if let Ok(b) = base64::engine::general_purpose::STANDARD.decode(word) {
                candidates.push(b);
            }
            if let Ok(b) = hex::decode(word) {
                candidates.push(b);
            }
        }
        for c in &candidates {
            for w in c.windows(32) {
                if let Ok(sk) = p256::SecretKey::from_slice(w) {
                    assert_ne!(
                        sk.public_key(),
                        public,
                        "{} holds the private key",
                        path.display()
                    );
                }
            }
        }
    }
}

// --- `jss-bootstrap node init`: the key across real process restarts ------

fn node_init(dir: &Path, signer: &str, tcti: &str) -> (String, String) {
    let out = std::process::Command::new(jss_tests::daemon::bin("jss-bootstrap"))
        .args([
            "node",
            "init",
            "--signer",
            signer,
            "--tcti",
            tcti,
            "--state-dir",
        ])
        .arg(dir)
        .env("TSS2_LOG", "all+none")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn node_init_twice(signer: &str, tcti: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = node_init(dir.path(), signer, tcti);
    let (second, _) = node_init(dir.path(), signer, tcti);
    assert!(first.starts_with("created  node key"), "{first}");
    assert!(
        second.starts_with("found    node key"),
        "a second run keeps the key and says so: {second}"
    );
    let kid = |out: &str| {
        out.split("kid ")
            .nth(1)
            .unwrap()
            .split(')')
            .next()
            .unwrap()
            .to_string()
    };
    let pem = |out: &str| out[out.find("-----BEGIN PUBLIC KEY-----").unwrap()..].to_string();
    assert_eq!(kid(&first), kid(&second));
    assert_eq!(pem(&first), pem(&second));
    let key = p256::PublicKey::from_public_key_pem(&pem(&first)).unwrap();
    assert_eq!(kid(&first), jss::signer::NodePublicKey::new(key).kid);
}

#[test]
fn node_init_keeps_the_key_software() {
    node_init_twice("software", "device:/dev/tpmrm0");
}

#[test]
fn node_init_keeps_the_key_tpm() {
    let tpm = Swtpm::start();
    node_init_twice("tpm", &tpm.tcti());
}

// --- Boot-state binding (TPM PCR policy) ----------------------------------

/// Extends PCR 7 of the TPM at `tcti` (the boot state changes).
fn extend_pcr7(tcti: &str) {
    let out = std::process::Command::new("tpm2_pcrextend")
        .args(["-T", tcti, &format!("7:sha256={}", "ab".repeat(32))])
        .output()
        .expect("tpm2_pcrextend (tpm2-tools) is installed by swtpm-ci/install-deps");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_pcr_bound_key_stops_signing_when_the_boot_state_changes() {
    let f = Fixture::tpm_pcr7();
    let (bound_dir, free_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bound = f.open(bound_dir.path());
    // An unbound key on the same TPM, for contrast.
    let free = signer::open(
        &cfg(SignerKind::Tpm, &f.tcti(), free_dir.path()),
        KeyPolicy::CreateIfMissing,
    )
    .unwrap()
    .0;
    let binding = bound.binding().expect("bound to PCR 7");
    assert_eq!(binding.pcrs.to_string(), "sha256:7");
    assert_eq!(binding.policy_digest.len(), 64);
    assert!(free.binding().is_none());
    bound.sign(b"before").unwrap();
    // What `jss inspect` shows, read from the files without the TPM.
    let info = signer::describe(bound_dir.path()).unwrap();
    assert_eq!(
        (info.kid.as_str(), info.binding.as_ref()),
        (bound.kid(), Some(&binding))
    );
    assert!(signer::describe(free_dir.path()).unwrap().binding.is_none());
    let blob = std::fs::read_to_string(bound_dir.path().join(signer::TPM_KEY_FILE)).unwrap();
    assert!(
        blob.contains("jss-tpm-key/2") && blob.contains(&binding.policy_digest),
        "{blob}"
    );

    extend_pcr7(&f.tcti());
    for _ in 0..2 {
        let e = bound.sign(b"after").unwrap_err();
        assert_eq!(e.reason(), "pcr_mismatch", "{e}");
        assert!(!e.is_transient(), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("boot state changed") && msg.contains("--rotate"),
            "{msg}"
        );
    }
    // The TPM, not the daemon, refuses: a fresh open of the same blob loads
    // the key and still cannot sign; an unbound key on the same TPM can.
    drop(bound);
    let again = f.open(bound_dir.path());
    assert_eq!(again.sign(b"x").unwrap_err().reason(), "pcr_mismatch");
    free.sign(b"unbound keys do not care").unwrap();
}

#[test]
fn a_software_key_cannot_be_pcr_bound() {
    let dir = tempfile::tempdir().unwrap();
    let e = signer::open(
        &SignerConfig {
            pcrs: Some(PcrSelection::secure_boot()),
            ..cfg(SignerKind::Software, "", dir.path())
        },
        KeyPolicy::CreateIfMissing,
    )
    .unwrap_err();
    assert!(e.to_string().contains("cannot be bound to PCRs"), "{e}");
    assert!(!dir.path().join(signer::SOFTWARE_KEY_FILE).exists());
}
