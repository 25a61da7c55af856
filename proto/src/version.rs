//! Protocol versioning.
//!
//! The version travels in the TLS ALPN extension, so two peers that speak
//! different versions fail during the handshake, before a single message is
//! decoded, and both sides can name the problem instead of reporting garbage.

/// The version of the wire protocol this build speaks. Bump it on any
/// incompatible change to [`crate::message`] or [`crate::codec`].
pub const PROTOCOL_VERSION: u32 = 3;

/// The prefix shared by every distcc-rs ALPN string.
pub const ALPN_PREFIX: &str = "distcc-rs/";

/// The ALPN protocol id for a protocol version, e.g. `distcc-rs/1`.
pub fn alpn(version: u32) -> Vec<u8> {
    format!("{ALPN_PREFIX}{version}").into_bytes()
}

/// Parses an ALPN id back into a protocol version, if it is one of ours.
pub fn parse_alpn(alpn: &[u8]) -> Option<u32> {
    std::str::from_utf8(alpn)
        .ok()?
        .strip_prefix(ALPN_PREFIX)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_round_trips() {
        assert_eq!(alpn(1), b"distcc-rs/1");
        assert_eq!(parse_alpn(&alpn(7)), Some(7));
        assert_eq!(parse_alpn(b"h3"), None);
        assert_eq!(parse_alpn(b"distcc-rs/x"), None);
    }
}
