//! Endpoints: tuned UDP sockets, transport parameters, and connecting.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use distcc_rs_proto::PROTOCOL_VERSION;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, ConnectionError, Endpoint, EndpointConfig, TransportConfig, VarInt};
use socket2::{Domain, Protocol, Socket, Type};

use distcc_rs_proto::PeerRole;
use distcc_rs_proto::auth::close;

use crate::NetError;
use crate::tls::{self, Identity, PeerAuth};

/// The TLS alert rustls sends when client and server share no ALPN id, as
/// QUIC carries it: a crypto error is 0x100 plus the alert number.
const NO_APPLICATION_PROTOCOL: u64 = 0x100 + 120;

/// Socket buffers. The kernel's default 208 KiB receive buffer drops packets
/// at the rates QUIC reaches on a LAN (measured: 1.5-6% loss at 500 MiB/s).
const SOCKET_BUFFER: usize = 4 << 20;

/// Knobs shared by every endpoint.
#[derive(Debug, Clone)]
pub struct EndpointOptions {
    /// A connection with no traffic for this long is dead. Keep-alives are
    /// sent at a third of it, so only a dead or unreachable peer trips it.
    pub idle_timeout: Duration,
    /// The protocol version announced in ALPN. Only tests change it.
    pub protocol_version: u32,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
}

impl Default for EndpointOptions {
    fn default() -> Self {
        EndpointOptions {
            idle_timeout: Duration::from_secs(6),
            protocol_version: PROTOCOL_VERSION,
            connect_timeout: Duration::from_secs(3),
        }
    }
}

fn transport(opts: &EndpointOptions) -> Result<Arc<TransportConfig>, NetError> {
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(opts.idle_timeout / 3));
    t.max_idle_timeout(Some(
        opts.idle_timeout
            .try_into()
            .map_err(|_| NetError::Tls("idle timeout too large".into()))?,
    ));
    // Large windows keep a single blob or bundle stream from stalling on flow
    // control on a fast LAN.
    t.stream_receive_window(VarInt::from_u32(16 << 20));
    t.receive_window(VarInt::from_u32(64 << 20));
    t.send_window(64 << 20);
    t.max_concurrent_bidi_streams(VarInt::from_u32(1024));
    Ok(Arc::new(t))
}

fn udp_socket(addr: SocketAddr) -> Result<UdpSocket, NetError> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: an unprivileged process may get less than it asks for,
    // which only costs throughput.
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

fn runtime() -> Result<Arc<dyn quinn::Runtime>, NetError> {
    quinn::default_runtime()
        .ok_or_else(|| NetError::Tls("no async runtime: call from within tokio".into()))
}

fn client_config(
    identity: Option<&Identity>,
    auth: &PeerAuth,
    opts: &EndpointOptions,
) -> Result<quinn::ClientConfig, NetError> {
    let crypto = tls::client_crypto(identity, auth, distcc_rs_proto::alpn(opts.protocol_version))?;
    let crypto = QuicClientConfig::try_from(crypto).map_err(|e| NetError::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport(opts)?);
    Ok(cfg)
}

/// Binds a daemon's endpoint: it accepts connections on `addr` and can also
/// dial out (a node dials its scheduler from the same socket).
pub fn bind_server(
    addr: SocketAddr,
    identity: &Identity,
    auth: &PeerAuth,
    opts: &EndpointOptions,
) -> Result<Endpoint, NetError> {
    let crypto = tls::server_crypto(identity, auth, distcc_rs_proto::alpn(opts.protocol_version))?;
    let crypto = QuicServerConfig::try_from(crypto).map_err(|e| NetError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport(opts)?);
    let mut endpoint = Endpoint::new(
        EndpointConfig::default(),
        Some(server),
        udp_socket(addr)?,
        runtime()?,
    )?;
    endpoint.set_default_client_config(client_config(Some(identity), auth, opts)?);
    Ok(endpoint)
}

/// Binds a client-only endpoint on an ephemeral port of the address family
/// of `peer_family`.
pub fn bind_client(
    peer_family: SocketAddr,
    identity: Option<&Identity>,
    auth: &PeerAuth,
    opts: &EndpointOptions,
) -> Result<Endpoint, NetError> {
    let local: SocketAddr = if peer_family.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let mut endpoint = Endpoint::new(
        EndpointConfig::default(),
        None,
        udp_socket(local)?,
        runtime()?,
    )?;
    endpoint.set_default_client_config(client_config(identity, auth, opts)?);
    Ok(endpoint)
}

/// Connects to a farm peer that must hold a certificate for `role`, giving
/// up after the endpoint's connect timeout.
pub async fn connect(
    endpoint: &Endpoint,
    peer: SocketAddr,
    role: PeerRole,
    opts: &EndpointOptions,
) -> Result<Connection, NetError> {
    let connecting = endpoint
        .connect(peer, role.dns_name())
        .map_err(|source| NetError::Connect { peer, source })?;
    match tokio::time::timeout(opts.connect_timeout, connecting).await {
        Err(_) => Err(NetError::Timeout {
            peer,
            secs: opts.connect_timeout.as_secs().max(1),
        }),
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(explain(e, peer, opts.protocol_version)),
    }
}

/// Turns a handshake failure into an error that names its cause: disjoint
/// ALPN ids are [`NetError::VersionMismatch`], certificate trouble is
/// [`NetError::NotTrusted`] or [`NetError::RefusedUs`], and a daemon
/// closing the connection over a request it does not allow is
/// [`NetError::Refused`]. Other errors pass through. Daemons call it on
/// failed incoming handshakes too, so both sides name the real problem.
pub fn explain(e: ConnectionError, peer: SocketAddr, ours: u32) -> NetError {
    if is_version_mismatch(&e) {
        return NetError::VersionMismatch { peer, ours };
    }
    match &e {
        // We refused the peer's certificate.
        ConnectionError::TransportError(err) if is_certificate_alert(u64::from(err.code)) => {
            NetError::NotTrusted {
                peer,
                detail: err.reason.clone(),
            }
        }
        // The peer refused ours (or that we had none).
        ConnectionError::ConnectionClosed(close)
            if is_certificate_alert(u64::from(close.error_code)) =>
        {
            NetError::RefusedUs {
                peer,
                alert: u64::from(close.error_code) - CRYPTO_ERROR_BASE,
            }
        }
        ConnectionError::ApplicationClosed(close)
            if matches!(
                u32::try_from(u64::from(close.error_code)),
                Ok(close::NOT_PERMITTED | close::REVOKED)
            ) =>
        {
            NetError::Refused {
                peer,
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            }
        }
        _ => NetError::Connection(e),
    }
}

/// QUIC carries a TLS alert as a crypto error: this base plus the alert.
const CRYPTO_ERROR_BASE: u64 = 0x100;

/// TLS alerts about certificates: bad_certificate (42), unsupported (43),
/// revoked (44), expired (45), unknown (46), unknown_ca (48), access_denied
/// (49), decrypt_error (51, a signature that does not verify) and
/// certificate_required (116).
fn is_certificate_alert(code: u64) -> bool {
    matches!(
        code.checked_sub(CRYPTO_ERROR_BASE),
        Some(42..=46 | 48 | 49 | 51 | 116)
    )
}

fn is_version_mismatch(e: &ConnectionError) -> bool {
    match e {
        ConnectionError::ConnectionClosed(close) => {
            u64::from(close.error_code) == NO_APPLICATION_PROTOCOL
        }
        ConnectionError::TransportError(err) => u64::from(err.code) == NO_APPLICATION_PROTOCOL,
        _ => false,
    }
}
