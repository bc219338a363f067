//! A local test CA: a P-256 root that issues node CA certificates, for tests
//! that need a `chain.pem` without running Vault.

use std::str::FromStr as _;
use std::time::{Duration, SystemTime};

use jss::signer::NodePublicKey;
use p256::ecdsa::{DerSignature, SigningKey};
use p256::pkcs8::EncodePublicKey as _;
use x509_cert::Certificate;
use x509_cert::builder::{Builder as _, CertificateBuilder, Profile};
use x509_cert::der::{Decode as _, EncodePem as _, pem::LineEnding};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::{Time, Validity};

pub struct TestCa {
    key: SigningKey,
    cert: Certificate,
    root_pem: String,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    /// A fresh root CA (`CN=jss test root`), valid for a day.
    pub fn new() -> Self {
        Self::named("jss test root")
    }

    /// A fresh root CA with the given common name.
    pub fn named(cn: &str) -> Self {
        let key = SigningKey::random(&mut rand_core::OsRng);
        let spki = spki_of(
            key.verifying_key()
                .to_public_key_der()
                .unwrap_or_else(|e| panic!("encode root key: {e}"))
                .as_bytes(),
        );
        let subject = name(&format!("CN={cn},O=jss-tests"));
        let validity = Validity::from_now(Duration::from_secs(86_400))
            .unwrap_or_else(|e| panic!("validity: {e}"));
        let cert = CertificateBuilder::new(Profile::Root, serial(), validity, subject, spki, &key)
            .unwrap_or_else(|e| panic!("root builder: {e}"))
            .build::<DerSignature>()
            .unwrap_or_else(|e| panic!("sign root: {e}"));
        let root_pem = pem(&cert);
        Self {
            key,
            cert,
            root_pem,
        }
    }

    /// The root certificate (PEM).
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// A node CA certificate (CA:TRUE, pathlen 0) for `node_key`, valid from
    /// now for `ttl`, followed by the root: the content of `chain.pem`.
    pub fn issue_node_chain(&self, node_key: &NodePublicKey, ttl: Duration) -> String {
        let now = SystemTime::now();
        self.issue_node_chain_between(node_key, now, now + ttl)
    }

    /// Like [`Self::issue_node_chain`] with explicit validity bounds.
    pub fn issue_node_chain_between(
        &self,
        node_key: &NodePublicKey,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> String {
        let time = |t: SystemTime| Time::try_from(t).unwrap_or_else(|e| panic!("time: {e}"));
        let validity = Validity {
            not_before: time(not_before),
            not_after: time(not_after),
        };
        let profile = Profile::SubCA {
            issuer: self.cert.tbs_certificate.subject.clone(),
            path_len_constraint: Some(0),
        };
        let subject = name(&format!("CN=node {},O=jss-tests", node_key.kid));
        let cert = CertificateBuilder::new(
            profile,
            serial(),
            validity,
            subject,
            spki_of(&node_key.spki_der()),
            &self.key,
        )
        .unwrap_or_else(|e| panic!("node builder: {e}"))
        .build::<DerSignature>()
        .unwrap_or_else(|e| panic!("sign node cert: {e}"));
        format!("{}{}", pem(&cert), self.root_pem)
    }
}

fn spki_of(der: &[u8]) -> SubjectPublicKeyInfoOwned {
    SubjectPublicKeyInfoOwned::from_der(der).unwrap_or_else(|e| panic!("spki: {e}"))
}

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap_or_else(|e| panic!("name {s:?}: {e}"))
}

fn pem(cert: &Certificate) -> String {
    cert.to_pem(LineEnding::LF)
        .unwrap_or_else(|e| panic!("pem: {e}"))
}

/// A random positive 16-byte serial.
fn serial() -> SerialNumber {
    let mut b = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    b[0] &= 0x7f;
    b[0] |= 0x01;
    SerialNumber::new(&b).unwrap_or_else(|e| panic!("serial: {e}"))
}
