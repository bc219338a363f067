#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report
//! `jss::chain`: loading and checking `chain.pem` against the node key, with
//! chains from the local test CA.

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jss::chain::{self, CHAIN_FILE, Chain, ChainError};
use jss::signer::{Signer as _, SoftwareSigner};
use jss::token::{TokenEncoder, decode_unverified};
use jss_tests::ca::TestCa;

fn node_key(dir: &std::path::Path, name: &str) -> SoftwareSigner {
    SoftwareSigner::open(&dir.join(name)).unwrap()
}

#[test]
fn issued_chain_loads_with_x5c_validity_and_subject() {
    let dir = tempfile::tempdir().unwrap();
    let s = node_key(dir.path(), "k.pem");
    let ca = TestCa::new();
    let pem = ca.issue_node_chain(s.public_key(), Duration::from_secs(3600));
    chain::write(dir.path(), &pem).unwrap();
    let mode = std::fs::metadata(dir.path().join(CHAIN_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);

    let c = Chain::load(dir.path(), s.public_key()).unwrap();
    assert_eq!(c.pem(), pem);
    let x5c = c.x5c();
    assert_eq!(x5c.len(), 2);
    // x5c is the DER of each PEM block, standard base64, leaf first.
    let blocks: Vec<String> = pem
        .split("-----END CERTIFICATE-----")
        .filter(|b| b.contains("BEGIN"))
        .map(|b| {
            b.lines()
                .filter(|l| !l.starts_with("-----") && !l.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(x5c, blocks);
    assert!(STANDARD.decode(&x5c[0]).unwrap().len() > 100);
    assert!(c.subject().contains(&s.public_key().kid), "{}", c.subject());
    assert_eq!(c.not_after_unix() - c.not_before_unix(), 3600);
    assert!(c.is_valid_at(SystemTime::now()));

    let enc = TokenEncoder::new(s.kid(), Some(c.x5c())).unwrap();
    let t = enc.encode(&s, &serde_json::json!({"sub": "x"})).unwrap();
    assert_eq!(decode_unverified(&t).unwrap().0.x5c.unwrap(), x5c);
}

#[test]
fn remaining_fraction_tracks_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let s = node_key(dir.path(), "k.pem");
    let now = SystemTime::now();
    let pem = TestCa::new().issue_node_chain_between(
        s.public_key(),
        now - Duration::from_secs(900),
        now + Duration::from_secs(100),
    );
    let c = Chain::from_pem(&pem, s.public_key()).unwrap();
    let f = c.remaining_fraction(now);
    assert!((0.09..=0.11).contains(&f), "{f}");
    assert_eq!(c.remaining_fraction(now + Duration::from_secs(200)), 0.0);
    assert_eq!(c.remaining_fraction(now - Duration::from_secs(2000)), 1.0);
    assert!(!c.is_valid_at(now + Duration::from_secs(200)));
}

#[test]
fn missing_chain_names_the_register_command() {
    let dir = tempfile::tempdir().unwrap();
    let s = node_key(dir.path(), "k.pem");
    let e = Chain::load(dir.path(), s.public_key()).unwrap_err();
    assert!(matches!(e, ChainError::Missing { .. }), "{e}");
    assert!(e.to_string().contains("jss-bootstrap node register"), "{e}");
}

#[test]
fn chain_for_another_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mine = node_key(dir.path(), "a.pem");
    let other = node_key(dir.path(), "b.pem");
    let pem = TestCa::new().issue_node_chain(other.public_key(), Duration::from_secs(60));
    let e = Chain::from_pem(&pem, mine.public_key()).unwrap_err();
    assert!(matches!(e, ChainError::KeyMismatch { .. }), "{e}");
    assert!(e.to_string().contains("jss-bootstrap node register"), "{e}");
}

#[test]
fn leaf_alone_or_garbage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = node_key(dir.path(), "k.pem");
    let ca = TestCa::new();
    let pem = ca.issue_node_chain(s.public_key(), Duration::from_secs(60));
    let leaf_only = pem.strip_suffix(ca.root_pem()).unwrap();
    let e = Chain::from_pem(leaf_only, s.public_key()).unwrap_err();
    assert!(matches!(e, ChainError::TooShort { count: 1, .. }), "{e}");
    let e = Chain::from_pem("not a pem", s.public_key()).unwrap_err();
    assert!(
        matches!(e, ChainError::TooShort { .. } | ChainError::Parse { .. }),
        "{e}"
    );
    let e = Chain::from_pem(
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        s.public_key(),
    )
    .unwrap_err();
    assert!(matches!(e, ChainError::Parse { .. }), "{e}");
}

#[test]
fn leaf_not_signed_by_the_next_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = node_key(dir.path(), "k.pem");
    // Same root name, different root key: only the signature check catches it.
    let (a, b) = (TestCa::new(), TestCa::new());
    let pem = a.issue_node_chain(s.public_key(), Duration::from_secs(60));
    let swapped = pem.replace(a.root_pem(), b.root_pem());
    let e = Chain::from_pem(&swapped, s.public_key()).unwrap_err();
    assert!(matches!(e, ChainError::BrokenLink { .. }), "{e}");
    assert!(e.to_string().contains("does not verify"), "{e}");
    // A different root name fails on the issuer name.
    let c = TestCa::named("another root");
    let swapped = pem.replace(a.root_pem(), c.root_pem());
    let e = Chain::from_pem(&swapped, s.public_key()).unwrap_err();
    assert!(e.to_string().contains("its issuer is"), "{e}");
}
