//! The transport's error type.

use std::io;
use std::net::SocketAddr;

use distcc_rs_proto::{CodecError, Digest};

/// Everything that can go wrong moving bytes between farm peers.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The peer speaks another protocol version: the TLS handshake found no
    /// common ALPN id.
    #[error(
        "protocol version mismatch with {peer}: this program speaks distcc-rs protocol {ours} and \
         the peer does not; run the same distcc-rs release on every farm machine"
    )]
    VersionMismatch { peer: SocketAddr, ours: u32 },
    /// Nothing answered in time.
    #[error("no answer from {peer} within {secs} s (is the address right and the daemon running?)")]
    Timeout { peer: SocketAddr, secs: u64 },
    #[error("cannot connect to {peer}: {source}")]
    Connect {
        peer: SocketAddr,
        source: quinn::ConnectError,
    },
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadError),
    /// The peer closed the stream where a message or chunk was due.
    #[error("the peer closed the stream unexpectedly")]
    UnexpectedEof,
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A payload was larger than the receiver allows.
    #[error("payload exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    /// A payload's content does not hash to the digest it was sent under.
    #[error("payload content hashes to {actual:?}, expected {expected:?}")]
    DigestMismatch { expected: Digest, actual: Digest },
    /// We refused the peer's certificate during the handshake.
    #[error(
        "{peer} is not a trusted member of this farm ({detail}); if the farm was re-created or \
         you joined another farm, enroll again with the current join token"
    )]
    NotTrusted { peer: SocketAddr, detail: String },
    /// The peer refused our certificate, or our lack of one.
    #[error("{peer} refused our credentials: {}", alert_meaning(*.alert))]
    RefusedUs { peer: SocketAddr, alert: u64 },
    /// The peer closed the connection because our request is not allowed.
    #[error("{peer} refused the request: {reason}")]
    Refused { peer: SocketAddr, reason: String },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// What a certificate alert from a peer means for the user.
fn alert_meaning(alert: u64) -> &'static str {
    match alert {
        44 => {
            "our certificate has been revoked by the farm's admin; ask them for a join token and \
             enroll again"
        }
        45 => "our certificate has expired; enroll again with the farm's join token",
        116 => {
            "it requires a farm certificate and we have none; enroll first with the farm's join \
             token (`distcc-rs join TOKEN` for a client, --join-token for a node)"
        }
        _ => {
            "our certificate is not from this farm's CA (another farm, or a re-created farm); \
             enroll again with the current join token"
        }
    }
}

impl From<quinn::ReadExactError> for NetError {
    fn from(e: quinn::ReadExactError) -> Self {
        match e {
            quinn::ReadExactError::FinishedEarly(_) => NetError::UnexpectedEof,
            quinn::ReadExactError::ReadError(e) => NetError::Read(e),
        }
    }
}

impl From<quinn::ClosedStream> for NetError {
    fn from(_: quinn::ClosedStream) -> Self {
        NetError::UnexpectedEof
    }
}

/// An error and its causes on one line, for a binary's last word. The
/// library errors here put their cause into their own message (so that a
/// log line with just the error reads well), so a cause that the text
/// before it already ends with is not repeated; anyhow's `{:#}` would print
/// it twice ("…: Address already in use (os error 98): Address already in
/// use (os error 98)").
pub fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !line.ends_with(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        next = e.source();
    }
    line
}

#[cfg(test)]
mod one_line_tests {
    use super::*;

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let io = io::Error::new(io::ErrorKind::AddrInUse, "Address already in use");
        let err = anyhow::Error::new(NetError::Io(io)).context("cannot listen on 0.0.0.0:7700");
        assert_eq!(
            one_line(err.as_ref()),
            "cannot listen on 0.0.0.0:7700: I/O error: Address already in use"
        );
        let plain = anyhow::anyhow!("bad").context("outer");
        assert_eq!(one_line(plain.as_ref()), "outer: bad");
    }
}
