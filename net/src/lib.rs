//! The QUIC transport shared by the scheduler, nodes and clients.
//!
//! # Layout
//!
//! * [`pki`]: the farm certificate authority, member keys, and reading a
//!   certificate's role.
//! * [`tls`]: rustls configurations. Every connection is TLS 1.3 with the
//!   protocol version in ALPN and mutual authentication with farm
//!   certificates.
//! * [`credentials`]: a member's saved certificate, key and CA, and
//!   enrolling to get them.
//! * [`endpoint`]: binding tuned UDP sockets and connecting, with errors that
//!   name a protocol version mismatch instead of a bare handshake failure.
//! * [`framed`]: sending and receiving `distcc-rs-proto` messages on streams.
//! * [`payload`]: chunk streams for blobs, outputs and toolchain bundles,
//!   compressed and hashed on the fly.
//! * [`discovery`]: mDNS advertising and browsing (mdns-sd), for daemons and
//!   clients that run without a configured address.
//! * [`config_file`]: the TOML configuration file of each role, layered
//!   beneath environment variables and flags. It lives here because every
//!   binary depends on this crate and on no other shared library with IO.
//!
//! This crate is where the sans-IO `proto` meets quinn and tokio; the daemons
//! and the client build on it and never touch quinn's streams directly.

pub mod config_file;
pub mod credentials;
pub mod discovery;
pub mod endpoint;
pub mod framed;
pub mod payload;
pub mod pki;
pub mod tls;

mod error;

pub use endpoint::{EndpointOptions, bind_client, bind_server, connect};
pub use error::{NetError, one_line};
pub use framed::{FrameReader, FrameWriter, accept_stream, open_stream};
pub use tls::{FarmTrust, Identity, PeerAuth, PeerCertificate, Revocations, peer_certificate};

#[cfg(test)]
mod tests;
