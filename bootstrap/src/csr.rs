//! PKCS#10 requests for the node CA certificate, signed by the node key
//! through the `Signer` trait (in TPM mode the TPM signs).

use std::str::FromStr as _;
use std::sync::Mutex;

use jss::signer::{NodePublicKey, Signer, SignerError};
use p256::ecdsa::signature::{self, Keypair, Verifier as _};
use p256::ecdsa::{DerSignature, Signature, VerifyingKey};
use x509_cert::builder::{Builder as _, RequestBuilder};
use x509_cert::der::asn1::{Ia5String, ObjectIdentifier as Oid};
use x509_cert::der::{Decode as _, Encode as _, EncodePem as _, pem::LineEnding};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::name::Name;
use x509_cert::request::CertReq;
use x509_cert::spki::{AlgorithmIdentifierOwned, DynSignatureAlgorithmIdentifier};

const ECDSA_WITH_SHA256: Oid = Oid::new_unwrap("1.2.840.10045.4.3.2");
const CN: Oid = Oid::new_unwrap("2.5.4.3");
const OU: Oid = Oid::new_unwrap("2.5.4.11");
const L: Oid = Oid::new_unwrap("2.5.4.7");
/// Organisation in every node certificate subject.
pub const ORG: &str = "JSS";

#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("the node key could not sign the CSR: {0}")]
    Sign(#[from] SignerError),
    #[error("cannot build the CSR: {0}")]
    Build(String),
    #[error("{0} is not a usable CSR: {1}")]
    Parse(String, String),
    #[error(
        "the CSR's signature does not verify with its public key: it was not signed by that key"
    )]
    BadSignature,
    #[error(
        "invalid {what} {value:?}: use letters, digits, '.', '-' or '_' (at most 63 characters)"
    )]
    BadName { what: &'static str, value: String },
}

/// Who the node is: goes into the subject (CN=node, OU=cluster, L=region,
/// O=JSS) and a URI SAN `jss://<cluster>/node/<node>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    pub node: String,
    pub cluster: String,
    pub region: String,
}

impl NodeIdentity {
    pub fn new(node: &str, cluster: &str, region: &str) -> Result<Self, CsrError> {
        check_name("node name", node)?;
        check_name("cluster name", cluster)?;
        check_name("region", region)?;
        Ok(Self {
            node: node.into(),
            cluster: cluster.into(),
            region: region.into(),
        })
    }

    pub fn subject(&self) -> String {
        format!(
            "CN={},OU={},L={},O={ORG}",
            self.node, self.cluster, self.region
        )
    }

    pub fn uri(&self) -> String {
        format!("jss://{}/node/{}", self.cluster, self.node)
    }
}

/// Names end up in RFC 4514 strings, Vault paths and URIs: keep them plain.
pub fn check_name(what: &'static str, value: &str) -> Result<(), CsrError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(CsrError::BadName {
            what,
            value: value.into(),
        })
    }
}

/// Adapts a `dyn Signer` to the RustCrypto traits the x509 builder wants.
struct NodeKeypair<'a> {
    signer: &'a dyn Signer,
    vk: VerifyingKey,
    /// The real error behind a `signature::Error` (which cannot carry it).
    failure: Mutex<Option<SignerError>>,
}

impl Keypair for NodeKeypair<'_> {
    type VerifyingKey = VerifyingKey;
    fn verifying_key(&self) -> VerifyingKey {
        self.vk
    }
}

impl DynSignatureAlgorithmIdentifier for NodeKeypair<'_> {
    fn signature_algorithm_identifier(&self) -> x509_cert::spki::Result<AlgorithmIdentifierOwned> {
        Ok(AlgorithmIdentifierOwned {
            oid: ECDSA_WITH_SHA256,
            parameters: None,
        })
    }
}

impl signature::Signer<DerSignature> for NodeKeypair<'_> {
    fn try_sign(&self, msg: &[u8]) -> Result<DerSignature, signature::Error> {
        match self.signer.sign(msg) {
            Ok(rs) => Ok(Signature::from_slice(&rs)?.to_der()),
            Err(e) => {
                if let Ok(mut f) = self.failure.lock() {
                    *f = Some(e);
                }
                Err(signature::Error::new())
            }
        }
    }
}

/// Builds the PEM CSR for `id`, signed by the node key (blocks on the TPM).
pub fn build(signer: &dyn Signer, id: &NodeIdentity) -> Result<String, CsrError> {
    let kp = NodeKeypair {
        signer,
        vk: VerifyingKey::from(*signer.public_key().key()),
        failure: Mutex::new(None),
    };
    let subject = Name::from_str(&id.subject()).map_err(|e| CsrError::Build(e.to_string()))?;
    let mut b = RequestBuilder::new(subject, &kp).map_err(|e| CsrError::Build(e.to_string()))?;
    let uri = Ia5String::new(&id.uri()).map_err(|e| CsrError::Build(e.to_string()))?;
    b.add_extension(&SubjectAltName(vec![
        GeneralName::UniformResourceIdentifier(uri),
    ]))
    .map_err(|e| CsrError::Build(e.to_string()))?;
    let req = match b.build::<DerSignature>() {
        Ok(r) => r,
        Err(e) => {
            let inner = kp.failure.lock().ok().and_then(|mut f| f.take());
            return Err(match inner {
                Some(se) => CsrError::Sign(se),
                None => CsrError::Build(e.to_string()),
            });
        }
    };
    req.to_pem(LineEnding::LF)
        .map_err(|e| CsrError::Build(e.to_string()))
}

/// A CSR whose signature has been checked: the requester holds the key.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    pub pem: String,
    pub key: NodePublicKey,
    pub identity: NodeIdentity,
}

/// Parses a PEM CSR, checks its self-signature and reads the node identity.
pub fn verify(pem: &str, origin: &str) -> Result<VerifiedCsr, CsrError> {
    let perr = |m: String| CsrError::Parse(origin.to_string(), m);
    // Decoded to DER first: der 0.7's streaming PEM reader (`from_pem`)
    // loops forever on a body shorter than its DER header says.
    let (label, der) =
        x509_cert::der::pem::decode_vec(pem.trim().as_bytes()).map_err(|e| perr(e.to_string()))?;
    if label != "CERTIFICATE REQUEST" {
        return Err(perr(format!(
            "a PEM block labelled {label}, expected CERTIFICATE REQUEST"
        )));
    }
    let req = CertReq::from_der(&der).map_err(|e| perr(e.to_string()))?;
    let spki = &req.info.public_key;
    let point = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| perr("malformed public key".into()))?;
    let key = p256::PublicKey::from_sec1_bytes(point)
        .map_err(|_| perr("the public key is not a P-256 key (JSS node keys are ES256)".into()))?;
    if req.algorithm.oid != ECDSA_WITH_SHA256 {
        return Err(perr(format!(
            "signature algorithm {} is not ecdsa-with-SHA256",
            req.algorithm.oid
        )));
    }
    let info = req.info.to_der().map_err(|e| perr(e.to_string()))?;
    let sig_der = req
        .signature
        .as_bytes()
        .ok_or_else(|| perr("malformed signature".into()))?;
    let sig = Signature::from_der(sig_der).map_err(|_| CsrError::BadSignature)?;
    VerifyingKey::from(key)
        .verify(&info, &sig)
        .map_err(|_| CsrError::BadSignature)?;
    let mut cn = None;
    let mut ou = None;
    let mut l = None;
    for rdn in req.info.subject.0.iter() {
        for atv in rdn.0.iter() {
            let value = String::from_utf8_lossy(atv.value.value()).into_owned();
            match atv.oid {
                o if o == CN => cn = Some(value),
                o if o == OU => ou = Some(value),
                o if o == L => l = Some(value),
                _ => {}
            }
        }
    }
    let (Some(node), Some(cluster), Some(region)) = (cn, ou, l) else {
        return Err(perr(
            "the subject lacks CN (node), OU (cluster) or L (region); make it with `jss-bootstrap node csr`".into(),
        ));
    };
    Ok(VerifiedCsr {
        pem: pem.to_string(),
        key: NodePublicKey::new(key),
        identity: NodeIdentity::new(&node, &cluster, &region)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_csr_is_an_error_not_a_hang() {
        // Found by fuzzing Chain::from_pem, then confirmed with the csr target:
        // one byte of DER (`aQ==`) where the header asks for more sent der
        // 0.7's streaming PEM reader into an endless loop.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let pem =
                "-----BEGIN CERTIFICATE REQUEST-----\naQ==\n-----END CERTIFICATE REQUEST-----\n";
            let _ = tx.send(verify(pem, "test").map(|_| ()));
        });
        match rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(Err(CsrError::Parse(..))) => {}
            Ok(other) => panic!("{other:?}"),
            Err(_) => panic!("csr::verify did not return within 10 s"),
        }
    }

    #[test]
    fn only_certificate_requests_are_read() {
        let pem = "-----BEGIN CERTIFICATE-----\naQ==\n-----END CERTIFICATE-----\n";
        assert!(matches!(verify(pem, "test"), Err(CsrError::Parse(..))));
    }
}
