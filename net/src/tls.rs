//! Certificates and rustls configuration.
//!
//! Every connection is TLS 1.3 (QUIC allows nothing else) with the ring
//! provider chosen explicitly, because two compiled-in providers make rustls
//! panic at run time. The protocol version travels in ALPN.
//!
//! Peers authenticate each other with certificates of the farm CA (see
//! [`crate::pki`]). A dialling peer names the role it expects on the other
//! end ([`crate::connect`]), and TLS name verification checks that the
//! server's certificate was issued for that role. A daemon verifies the
//! dialling peer's certificate against the CA and the revocation list, then
//! reads its role with [`peer_certificate`] and decides what it may do.
//!
//! The one exception is enrollment: a peer that has no certificate yet
//! dials the scheduler with [`PeerAuth::Enroll`], which trusts the server
//! only if its chain ends in a CA whose digest matches the join token, and
//! the scheduler accepts certificate-less connections only to serve
//! enrollment requests on them.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};

use distcc_rs_proto::auth::TOKEN_PIN_LEN;
use distcc_rs_proto::{CertFingerprint, PeerRole};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};

use crate::NetError;
use crate::pki;

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// The fingerprints of revoked certificates, shared between the scheduler's
/// TLS verifier and the code that reloads the list, so a revocation takes
/// effect for the next handshake without rebuilding the endpoint.
#[derive(Debug, Clone, Default)]
pub struct Revocations(Arc<RwLock<HashSet<CertFingerprint>>>);

impl Revocations {
    /// Replaces the list.
    pub fn replace(&self, revoked: HashSet<CertFingerprint>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = revoked;
    }

    pub fn contains(&self, fingerprint: &CertFingerprint) -> bool {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(fingerprint)
    }
}

/// What a farm member trusts.
#[derive(Debug, Clone)]
pub struct FarmTrust {
    /// The farm CA's certificate: the only trust anchor.
    pub ca: CertificateDer<'static>,
    /// Certificates refused even though the CA signed them.
    pub revoked: Revocations,
    /// Whether a dialling peer may connect without a certificate. Only the
    /// scheduler allows this, and serves nothing but enrollment on such
    /// connections.
    pub allow_anonymous: bool,
}

impl FarmTrust {
    pub fn new(ca: CertificateDer<'static>) -> Self {
        FarmTrust {
            ca,
            revoked: Revocations::default(),
            allow_anonymous: false,
        }
    }
}

/// How peers prove who they are.
#[derive(Debug, Clone)]
pub enum PeerAuth {
    /// A farm member: every peer must present a certificate of the farm CA.
    Farm(FarmTrust),
    /// A peer that is enrolling and has no certificate yet: the server must
    /// present a chain that ends in a CA whose SHA-256 digest starts with
    /// `pin` (from the join token).
    Enroll { pin: [u8; TOKEN_PIN_LEN] },
}

/// Who is on the other end of a connection, as its certificate says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCertificate {
    /// `None` for a certificate that names no role: allowed nothing.
    pub role: Option<PeerRole>,
    pub fingerprint: CertFingerprint,
}

/// The verified certificate the peer of `conn` presented, or `None` when it
/// presented none (only possible on the scheduler, for enrollment).
pub fn peer_certificate(conn: &quinn::Connection) -> Option<PeerCertificate> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let leaf = chain.first()?;
    Some(PeerCertificate {
        role: pki::role_of(leaf),
        fingerprint: pki::fingerprint(leaf),
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, NetError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.clone())
        .map_err(|e| NetError::Tls(format!("the farm CA certificate is unusable: {e}")))?;
    Ok(Arc::new(roots))
}

/// The rustls server configuration for a daemon.
pub fn server_crypto(
    identity: &Identity,
    auth: &PeerAuth,
    alpn: Vec<u8>,
) -> Result<rustls::ServerConfig, NetError> {
    let PeerAuth::Farm(trust) = auth else {
        return Err(NetError::Tls(
            "a daemon cannot accept connections before it is enrolled".into(),
        ));
    };
    let prov = provider();
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots(&trust.ca)?, prov.clone());
    if trust.allow_anonymous {
        builder = builder.allow_unauthenticated();
    }
    let inner = builder.build().map_err(|e| NetError::Tls(e.to_string()))?;
    let verifier = Arc::new(FarmClientVerifier {
        inner,
        revoked: trust.revoked.clone(),
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(prov)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())
        .map_err(|e| NetError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![alpn];
    // A resumed TLS 1.3 session skips the client certificate check, so a
    // revoked member could come back on a ticket from before its
    // revocation. Every handshake is therefore a full one; compile
    // wrappers are new processes and never resumed anyway.
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    // QUIC requires 0 or u32::MAX here.
    tls.max_early_data_size = u32::MAX;
    Ok(tls)
}

/// The rustls client configuration for a peer that dials out.
pub fn client_crypto(
    identity: Option<&Identity>,
    auth: &PeerAuth,
    alpn: Vec<u8>,
) -> Result<rustls::ClientConfig, NetError> {
    let prov = provider();
    let builder = rustls::ClientConfig::builder_with_provider(prov.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match auth {
        PeerAuth::Farm(trust) => {
            WebPkiServerVerifier::builder_with_provider(roots(&trust.ca)?, prov.clone())
                .build()
                .map_err(|e| NetError::Tls(e.to_string()))?
        }
        PeerAuth::Enroll { pin } => Arc::new(PinnedCaVerifier {
            pin: *pin,
            provider: prov.clone(),
        }),
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut tls = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.cert_chain.clone(), id.key.clone_key())
            .map_err(|e| NetError::Tls(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    // See `server_crypto`: servers do not resume, so there is nothing to
    // remember.
    tls.resumption = rustls::client::Resumption::disabled();
    tls.alpn_protocols = vec![alpn];
    Ok(tls)
}

/// The WebPKI client verifier, plus the farm's revocation list.
#[derive(Debug)]
struct FarmClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Revocations,
}

impl ClientCertVerifier for FarmClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let fingerprint = pki::fingerprint(end_entity);
        if self.revoked.contains(&fingerprint) {
            tracing::warn!(
                certificate = %fingerprint.short(),
                "refused a revoked certificate"
            );
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Trusts a server whose chain ends in the CA the join token pins: the
/// scheduler sends its CA certificate after its own, the pin selects it, and
/// ordinary WebPKI verification with that CA as the only root does the rest
/// (signature, validity, the scheduler role name).
#[derive(Debug)]
struct PinnedCaVerifier {
    pin: [u8; TOKEN_PIN_LEN],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|cert| pki::pin_of(cert) == self.pin)
            .ok_or(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ))?;
        let ca = CertificateDer::from(ca.to_vec());
        let inner = WebPkiServerVerifier::builder_with_provider(
            roots(&ca).map_err(|e| rustls::Error::General(e.to_string()))?,
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
