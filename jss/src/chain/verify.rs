//! Checks that one certificate was signed by the next one's key.
//!
//! Vault's PKI root may be RSA or EC (whatever the installer created), so the
//! common X.509 signature algorithms are covered, verified with aws-lc-rs.

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_cert::Certificate;
use x509_cert::der::Encode as _;
use x509_cert::der::asn1::ObjectIdentifier as Oid;

const ECDSA_SHA256: Oid = Oid::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_SHA384: Oid = Oid::new_unwrap("1.2.840.10045.4.3.3");
const ECDSA_SHA512: Oid = Oid::new_unwrap("1.2.840.10045.4.3.4");
const RSA_SHA256: Oid = Oid::new_unwrap("1.2.840.113549.1.1.11");
const RSA_SHA384: Oid = Oid::new_unwrap("1.2.840.113549.1.1.12");
const RSA_SHA512: Oid = Oid::new_unwrap("1.2.840.113549.1.1.13");
const ED25519: Oid = Oid::new_unwrap("1.3.101.112");
const P256: Oid = Oid::new_unwrap("1.2.840.10045.3.1.7");
const P384: Oid = Oid::new_unwrap("1.3.132.0.34");
const P521: Oid = Oid::new_unwrap("1.3.132.0.35");

/// Verifies `cert`'s signature with `issuer`'s public key.
pub(super) fn signed_by(cert: &Certificate, issuer: &Certificate) -> Result<(), String> {
    let sig_alg = cert.signature_algorithm.oid;
    let ispki = &issuer.tbs_certificate.subject_public_key_info;
    let curve = ispki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<Oid>().ok());
    let alg: &'static dyn VerificationAlgorithm = match (sig_alg, curve) {
        (a, Some(c)) if a == ECDSA_SHA256 && c == P256 => &signature::ECDSA_P256_SHA256_ASN1,
        (a, Some(c)) if a == ECDSA_SHA384 && c == P256 => &signature::ECDSA_P256_SHA384_ASN1,
        (a, Some(c)) if a == ECDSA_SHA512 && c == P256 => &signature::ECDSA_P256_SHA512_ASN1,
        (a, Some(c)) if a == ECDSA_SHA256 && c == P384 => &signature::ECDSA_P384_SHA256_ASN1,
        (a, Some(c)) if a == ECDSA_SHA384 && c == P384 => &signature::ECDSA_P384_SHA384_ASN1,
        (a, Some(c)) if a == ECDSA_SHA512 && c == P384 => &signature::ECDSA_P384_SHA512_ASN1,
        (a, Some(c)) if a == ECDSA_SHA256 && c == P521 => &signature::ECDSA_P521_SHA256_ASN1,
        (a, Some(c)) if a == ECDSA_SHA384 && c == P521 => &signature::ECDSA_P521_SHA384_ASN1,
        (a, Some(c)) if a == ECDSA_SHA512 && c == P521 => &signature::ECDSA_P521_SHA512_ASN1,
        (a, _) if a == RSA_SHA256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        (a, _) if a == RSA_SHA384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        (a, _) if a == RSA_SHA512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        (a, _) if a == ED25519 => &signature::ED25519,
        (a, c) => {
            return Err(format!(
                "unsupported signature algorithm {a} (issuer key parameters {c:?})"
            ));
        }
    };
    let tbs = cert
        .tbs_certificate
        .to_der()
        .map_err(|e| format!("cannot re-encode the certificate body: {e}"))?;
    let sig = cert
        .signature
        .as_bytes()
        .ok_or("the signature bit string has unused bits")?;
    let key = ispki
        .subject_public_key
        .as_bytes()
        .ok_or("the issuer's public key bit string has unused bits")?;
    UnparsedPublicKey::new(alg, key)
        .verify(&tbs, sig)
        .map_err(|_| "the signature does not verify with the issuer's public key".to_string())
}
