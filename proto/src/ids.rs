//! Identifiers. Each is a newtype so that a job id can never be passed where a
//! node id is expected, and so that their textual forms are defined once.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::auth::CertFingerprint;

/// Serde for an id: on the wire (bincode, not human-readable) the raw value,
/// exactly as `#[derive]` would write it; in JSON and other human-readable
/// formats (`status --json`, event logs, cache indexes) its textual form,
/// because an array of 32 numbers means nothing to a reader and a 64-bit
/// number loses precision in JavaScript and jq.
macro_rules! textual_serde {
    ($ty:ident, $name:literal, $inner:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.collect_str(self)
                } else {
                    s.serialize_newtype_struct($name, &self.0)
                }
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let text = String::deserialize(d)?;
                    text.parse().map_err(serde::de::Error::custom)
                } else {
                    <$inner>::deserialize(d).map($ty)
                }
            }
        }
    };
}

/// A BLAKE3 digest of some content: an input file, an output, a toolchain.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

textual_serde!(Digest, "Digest", [u8; 32]);

impl Digest {
    /// The digest as lowercase hex, the form used in file names and logs.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A short prefix of the hex form, for humans reading logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

/// The error for a digest (or an id built on one) that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected 64 hexadecimal digits, got {0:?}")]
pub struct ParseDigestError(pub String);

impl FromStr for Digest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseDigestError(s.to_owned()))?;
        Ok(Digest(out))
    }
}

/// A toolchain bundle, named by the BLAKE3 digest of its uncompressed tar
/// stream. Never a version string: two rustc builds that call themselves
/// "1.95.0" but differ in a byte are different toolchains.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ToolchainId(pub Digest);

impl fmt::Display for ToolchainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for ToolchainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ToolchainId({})", self.0.short())
    }
}

impl FromStr for ToolchainId {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(ToolchainId)
    }
}

/// A job, numbered by the scheduler that placed it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

textual_serde!(JobId, "JobId", u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "j{}", self.0)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The error for a job or node id that is not in its textual form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected}, got {got:?}")]
pub struct ParseIdError {
    pub expected: &'static str,
    pub got: String,
}

impl FromStr for JobId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix('j')
            .and_then(|n| n.parse().ok())
            .map(JobId)
            .ok_or_else(|| ParseIdError {
                expected: "'j' and a decimal number",
                got: s.to_owned(),
            })
    }
}

/// A node. Chosen at random by the node on its first start and kept in its
/// work directory, so a restarted node is recognised as the same machine.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

textual_serde!(NodeId, "NodeId", u64);

impl FromStr for NodeId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix('n')
            .filter(|h| h.len() == 16)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .map(NodeId)
            .ok_or_else(|| ParseIdError {
                expected: "'n' and 16 hexadecimal digits",
                got: s.to_owned(),
            })
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{:016x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The scheduler's permission for one job to run on one node.
///
/// `mac` is a keyed BLAKE3 hash of [`Ticket::signed_bytes`] under a key the
/// scheduler shares with that node alone (handed over when the node
/// registers), so a node can check a ticket without asking the scheduler and
/// a client cannot forge one or reuse it for another node.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub job: JobId,
    pub node: NodeId,
    pub toolchain: ToolchainId,
    /// The certificate of the client the ticket was issued to: a node
    /// accepts the ticket only on a connection authenticated with it, so a
    /// ticket seen by anyone else is worthless.
    pub client: CertFingerprint,
    pub mac: [u8; 32],
}

impl Ticket {
    /// The bytes the MAC covers: everything in the ticket except the MAC.
    pub fn signed_bytes(
        job: JobId,
        node: NodeId,
        toolchain: ToolchainId,
        client: CertFingerprint,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 8 + 32 + 32 + 16);
        out.extend_from_slice(b"distcc-rs ticket");
        out.extend_from_slice(&job.0.to_le_bytes());
        out.extend_from_slice(&node.0.to_le_bytes());
        out.extend_from_slice(&toolchain.0.0);
        out.extend_from_slice(&client.0);
        out
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ticket({} on {})", self.job, self.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_hex_round_trips() {
        let d = Digest([0xab; 32]);
        let s = d.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<Digest>().unwrap(), d);
        assert_eq!(d.short(), "abababababab");
    }

    #[test]
    fn bad_digest_is_rejected() {
        assert!("abc".parse::<Digest>().is_err());
        assert!("zz".repeat(32).parse::<Digest>().is_err());
    }

    #[test]
    fn ids_display() {
        assert_eq!(JobId(42).to_string(), "j42");
        assert_eq!(NodeId(255).to_string(), "n00000000000000ff");
    }

    #[test]
    fn ids_parse_back_from_their_text() {
        assert_eq!("j42".parse::<JobId>().unwrap(), JobId(42));
        assert_eq!("n00000000000000ff".parse::<NodeId>().unwrap(), NodeId(255));
        for bad in [
            "42",
            "jx",
            "j",
            "n",
            "nff",
            "n00000000000000fg",
            "x00000000000000ff",
        ] {
            assert!(bad.parse::<JobId>().is_err(), "{bad}");
            assert!(bad.parse::<NodeId>().is_err(), "{bad}");
        }
        assert!("j-1".parse::<JobId>().is_err());
    }

    #[test]
    fn json_shows_ids_as_text_and_reads_them_back() {
        let tc = ToolchainId(Digest([0xab; 32]));
        let json = serde_json::to_string(&(JobId(7), NodeId(255), tc)).unwrap();
        assert_eq!(
            json,
            format!("[\"j7\",\"n00000000000000ff\",\"{}\"]", "ab".repeat(32))
        );
        let back: (JobId, NodeId, ToolchainId) = serde_json::from_str(&json).unwrap();
        assert_eq!(back, (JobId(7), NodeId(255), tc));
        assert!(serde_json::from_str::<NodeId>("255").is_err());
    }

    #[test]
    fn the_wire_keeps_the_raw_values() {
        // What `#[derive]` wrote before ids had a textual JSON form: a
        // varint for the numbers, 32 raw bytes for a digest.
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec((JobId(7), NodeId(255), Digest([1; 32])), config)
            .unwrap();
        let mut expected = vec![7, 251, 255, 0];
        expected.extend_from_slice(&[1; 32]);
        assert_eq!(bytes, expected);
        let (back, _): ((JobId, NodeId, Digest), usize) =
            bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(back, (JobId(7), NodeId(255), Digest([1; 32])));
    }

    #[test]
    fn signed_bytes_cover_every_field() {
        let t = ToolchainId(Digest([1; 32]));
        let c = CertFingerprint([3; 32]);
        let base = Ticket::signed_bytes(JobId(1), NodeId(2), t, c);
        assert_ne!(base, Ticket::signed_bytes(JobId(9), NodeId(2), t, c));
        assert_ne!(base, Ticket::signed_bytes(JobId(1), NodeId(9), t, c));
        assert_ne!(
            base,
            Ticket::signed_bytes(JobId(1), NodeId(2), ToolchainId(Digest([2; 32])), c)
        );
        assert_ne!(
            base,
            Ticket::signed_bytes(JobId(1), NodeId(2), t, CertFingerprint([4; 32]))
        );
    }
}
