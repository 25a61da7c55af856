//! Certificates and rustls configuration.
//!
//! Every connection is TLS 1.3 (QUIC allows nothing else) with the ring
//! provider chosen explicitly, because two compiled-in providers make rustls
//! panic at run time. The protocol version travels in ALPN.
//!
//! Peer authentication is a [`PeerAuth`] policy handed to both config
//! builders, so that mutual authentication with farm certificates is a new
//! variant here rather than a change to every caller.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use crate::NetError;

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

impl Identity {
    /// A fresh self-signed certificate, made at start-up by daemons that have
    /// no farm certificate.
    pub fn self_signed(name: &str) -> Result<Self, NetError> {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()])
            .map_err(|e| NetError::Tls(e.to_string()))?;
        Ok(Identity {
            cert_chain: vec![ck.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der())),
        })
    }
}

/// How peers prove who they are.
#[derive(Debug, Clone)]
pub enum PeerAuth {
    /// Encrypted but unauthenticated: any certificate is accepted (its
    /// handshake signature is still checked). This is the only mode until
    /// farm certificates land; ARCHITECTURE.md lists it as a known gap.
    Unauthenticated,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls server configuration for a daemon.
pub fn server_crypto(
    identity: &Identity,
    auth: &PeerAuth,
    alpn: Vec<u8>,
) -> Result<rustls::ServerConfig, NetError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?;
    let mut tls = match auth {
        PeerAuth::Unauthenticated => builder
            .with_no_client_auth()
            .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())
            .map_err(|e| NetError::Tls(e.to_string()))?,
    };
    tls.alpn_protocols = vec![alpn];
    // QUIC requires 0 or u32::MAX here.
    tls.max_early_data_size = u32::MAX;
    Ok(tls)
}

/// The rustls client configuration for a peer that dials out.
pub fn client_crypto(
    _identity: Option<&Identity>,
    auth: &PeerAuth,
    alpn: Vec<u8>,
) -> Result<rustls::ClientConfig, NetError> {
    let prov = provider();
    let builder = rustls::ClientConfig::builder_with_provider(prov.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?;
    let mut tls = match auth {
        PeerAuth::Unauthenticated => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer { provider: prov }))
            .with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn];
    Ok(tls)
}

/// Accepts any server certificate but still verifies the handshake
/// signature, so the session keys belong to whoever holds the presented key.
#[derive(Debug)]
struct AcceptAnyServer {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
