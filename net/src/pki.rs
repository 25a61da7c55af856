//! The farm's certificate authority and the certificates it issues.
//!
//! The scheduler holds the farm CA. Members (nodes and clients) generate
//! their own ECDSA P-256 key pairs and send only the public key when they
//! enroll, so a member's private key never crosses the network. A member's
//! certificate carries its role as a DNS name ([`PeerRole::dns_name`]): a
//! peer that dials a node asks TLS to verify the name `node.distcc-rs`, and a
//! daemon that accepted a connection asks [`role_of`] which role names the
//! presented certificate is valid for.
//!
//! The CA certificate's distinguished name is the same for every farm, so
//! that the CA can be rebuilt from its key after a restart without parsing
//! its certificate; two farms' CAs still differ by key, and a certificate of
//! one farm fails signature verification against the other's CA.

use distcc_rs_proto::{CertFingerprint, PeerRole};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber, SignatureAlgorithm,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use time::{Duration, OffsetDateTime};

use crate::tls::Identity;

/// The CA certificate's common name. See the module comment for why it is
/// the same for every farm.
const CA_COMMON_NAME: &str = "distcc-rs farm CA";

/// How long the CA certificate is valid. Revocation, not expiry, is how a
/// farm removes a member, so lifetimes are long; a CA that expired would
/// stop the whole farm at once.
const CA_LIFETIME: Duration = Duration::days(20 * 365);

/// How long a member certificate is valid.
const MEMBER_LIFETIME: Duration = Duration::days(10 * 365);

/// Certificates are valid from a day before they are issued, so that a
/// member whose clock is a little behind the scheduler's can use its
/// certificate at once.
const BACKDATE: Duration = Duration::days(1);

/// The length of an uncompressed P-256 point: 0x04, then x and y.
const P256_POINT_LEN: usize = 65;

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot generate or sign a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("not a PEM {what}: {detail}")]
    Pem { what: &'static str, detail: String },
    #[error("the public key is not an uncompressed ECDSA P-256 point")]
    BadPublicKey,
    #[error(
        "the CA key does not belong to the CA certificate (the state directory's pki files do \
         not match each other)"
    )]
    Mismatch,
}

/// SHA-256 of a certificate's DER bytes.
pub fn fingerprint(der: &[u8]) -> CertFingerprint {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    CertFingerprint(out)
}

/// The part of a CA certificate's fingerprint that a join token carries.
pub fn pin_of(ca_der: &[u8]) -> [u8; distcc_rs_proto::auth::TOKEN_PIN_LEN] {
    let mut pin = [0; distcc_rs_proto::auth::TOKEN_PIN_LEN];
    pin.copy_from_slice(&fingerprint(ca_der).0[..distcc_rs_proto::auth::TOKEN_PIN_LEN]);
    pin
}

/// The role a member certificate was issued for, read from its DNS names.
/// `None` for a certificate that names no role (or is not parseable); such
/// a peer is allowed nothing.
pub fn role_of(cert: &CertificateDer<'_>) -> Option<PeerRole> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    PeerRole::ALL.into_iter().find(|role| {
        let name = ServerName::try_from(role.dns_name()).expect("role names are DNS names");
        parsed.verify_is_valid_for_subject_name(&name).is_ok()
    })
}

/// The farm certificate authority: the scheduler's signing key.
pub struct FarmCa {
    key: KeyPair,
    cert: CertificateDer<'static>,
}

impl std::fmt::Debug for FarmCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FarmCa({})", fingerprint(&self.cert).short())
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

impl FarmCa {
    /// Creates a new CA with a fresh key.
    pub fn generate() -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = ca_params();
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_LIFETIME;
        let cert = params.self_signed(&key)?.der().clone();
        Ok(FarmCa { key, cert })
    }

    /// Loads a CA saved with [`FarmCa::cert_pem`] and [`FarmCa::key_pem`],
    /// and checks that the two belong together by issuing a throwaway
    /// certificate and verifying it against the CA certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let cert =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| PkiError::Pem {
                what: "certificate",
                detail: e.to_string(),
            })?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::Pem {
            what: "private key",
            detail: e.to_string(),
        })?;
        let ca = FarmCa { key, cert };
        let probe = KeyPair::generate()?;
        let leaf = ca.issue(PeerRole::Client, "probe", probe.public_key_raw(), 1)?;
        if !ca.verifies(&leaf) {
            return Err(PkiError::Mismatch);
        }
        Ok(ca)
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The CA certificate, PEM, for the state directory.
    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert)
    }

    /// The CA private key, PKCS#8 PEM, for the state directory (which must
    /// keep it readable by the scheduler alone).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// What a join token pins.
    pub fn pin(&self) -> [u8; distcc_rs_proto::auth::TOKEN_PIN_LEN] {
        pin_of(&self.cert)
    }

    /// Issues a certificate for `role` to the holder of `public_key` (an
    /// uncompressed P-256 point).
    pub fn issue(
        &self,
        role: PeerRole,
        name: &str,
        public_key: &[u8],
        serial: u64,
    ) -> Result<CertificateDer<'static>, PkiError> {
        let public_key = P256PublicKey::new(public_key)?;
        let mut params = CertificateParams::new(vec![role.dns_name().to_owned()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{role} {name}"));
        params.distinguished_name = dn;
        params.serial_number = Some(SerialNumber::from(serial.to_be_bytes().to_vec()));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Schedulers and nodes both accept and make connections, and a
        // client only makes them; the role name, not the key usage, is what
        // tells them apart.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + MEMBER_LIFETIME;
        let issuer = Issuer::new(ca_params(), &self.key);
        Ok(params.signed_by(&public_key, &issuer)?.der().clone())
    }

    /// Issues a certificate with a key generated here: the scheduler's own,
    /// and test farms'.
    pub fn issue_identity(
        &self,
        role: PeerRole,
        name: &str,
        serial: u64,
    ) -> Result<Identity, PkiError> {
        let key = MemberKey::generate()?;
        let cert = self.issue(role, name, &key.public_key(), serial)?;
        Ok(key.into_identity(cert))
    }

    /// The scheduler's own identity: its certificate followed by the CA's,
    /// so that an enrolling peer, which knows only the CA's digest, finds
    /// the CA in the chain.
    pub fn scheduler_identity(&self, serial: u64) -> Result<Identity, PkiError> {
        let mut identity = self.issue_identity(PeerRole::Scheduler, "scheduler", serial)?;
        identity.cert_chain.push(self.cert.clone());
        Ok(identity)
    }

    /// Whether `leaf` chains to this CA (signature and validity period).
    pub fn verifies(&self, leaf: &CertificateDer<'_>) -> bool {
        let Ok(anchor) = webpki::anchor_from_trusted_cert(&self.cert) else {
            return false;
        };
        let Ok(parsed) = webpki::EndEntityCert::try_from(leaf) else {
            return false;
        };
        parsed
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &[anchor],
                &[],
                UnixTime::now(),
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .is_ok()
    }
}

/// A farm CA in memory that hands out members' identities directly, for
/// tests and benchmarks that need a farm's worth of certificates without a
/// scheduler to enroll with.
#[derive(Debug)]
pub struct TestFarm {
    pub ca: FarmCa,
    serial: std::sync::atomic::AtomicU64,
}

impl TestFarm {
    pub fn new() -> Self {
        TestFarm {
            ca: FarmCa::generate().expect("a CA key can be generated"),
            serial: std::sync::atomic::AtomicU64::new(1),
        }
    }

    fn serial(&self) -> u64 {
        self.serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// An identity for `role` and what a member trusts (no anonymous peers).
    pub fn member(&self, role: PeerRole) -> (Identity, crate::PeerAuth) {
        let identity = if role == PeerRole::Scheduler {
            self.ca.scheduler_identity(self.serial())
        } else {
            self.ca.issue_identity(role, "test", self.serial())
        };
        (
            identity.expect("a test certificate can be issued"),
            crate::PeerAuth::Farm(crate::FarmTrust::new(self.ca.cert_der().clone())),
        )
    }
}

impl Default for TestFarm {
    fn default() -> Self {
        Self::new()
    }
}

/// A member's own key pair, made on the member when it enrolls.
pub struct MemberKey(KeyPair);

impl MemberKey {
    pub fn generate() -> Result<Self, PkiError> {
        Ok(MemberKey(KeyPair::generate()?))
    }

    /// The public key as the scheduler wants it in an enrollment request.
    pub fn public_key(&self) -> Vec<u8> {
        self.0.public_key_raw().to_vec()
    }

    /// The identity this key and its certificate make.
    pub fn into_identity(self, cert: CertificateDer<'static>) -> Identity {
        Identity {
            cert_chain: vec![cert],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.0.serialize_der())),
        }
    }
}

/// A public key received in an enrollment request.
struct P256PublicKey(Vec<u8>);

impl P256PublicKey {
    fn new(bytes: &[u8]) -> Result<Self, PkiError> {
        if bytes.len() != P256_POINT_LEN || bytes[0] != 0x04 {
            return Err(PkiError::BadPublicKey);
        }
        // Only the shape is checked: a point off the curve makes a
        // certificate that no key can use, so it harms nobody but its owner.
        Ok(P256PublicKey(bytes.to_vec()))
    }
}

impl PublicKeyData for P256PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// Encodes DER as PEM.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_their_role_and_chain_to_the_ca() {
        let ca = FarmCa::generate().unwrap();
        for (serial, role) in (1..).zip(PeerRole::ALL) {
            let id = ca.issue_identity(role, "m1", serial).unwrap();
            assert_eq!(role_of(&id.cert_chain[0]), Some(role));
            assert!(ca.verifies(&id.cert_chain[0]));
        }
        let other = FarmCa::generate().unwrap();
        let foreign = other.issue_identity(PeerRole::Node, "x", 1).unwrap();
        assert!(!ca.verifies(&foreign.cert_chain[0]));
        assert_ne!(ca.pin(), other.pin());
    }

    #[test]
    fn the_ca_survives_a_round_trip_through_pem() {
        let ca = FarmCa::generate().unwrap();
        let back = FarmCa::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(back.cert_der(), ca.cert_der());
        let leaf = back.issue_identity(PeerRole::Node, "n", 2).unwrap();
        assert!(ca.verifies(&leaf.cert_chain[0]));
        // The key of another CA does not fit this certificate.
        let other = FarmCa::generate().unwrap();
        assert!(matches!(
            FarmCa::from_pem(&ca.cert_pem(), &other.key_pem()),
            Err(PkiError::Mismatch)
        ));
        assert!(FarmCa::from_pem("garbage", &ca.key_pem()).is_err());
    }

    #[test]
    fn malformed_public_keys_are_refused() {
        let ca = FarmCa::generate().unwrap();
        for bad in [&[][..], &[4; 64][..], &[2; 65][..], &[4; 66][..]] {
            assert!(matches!(
                ca.issue(PeerRole::Client, "c", bad, 1),
                Err(PkiError::BadPublicKey)
            ));
        }
    }

    #[test]
    fn pem_round_trips() {
        let der = vec![7u8; 200];
        let pem = pem_encode("CERTIFICATE", &der);
        assert_eq!(
            CertificateDer::from_pem_slice(pem.as_bytes())
                .unwrap()
                .as_ref(),
            &der[..]
        );
    }
}
