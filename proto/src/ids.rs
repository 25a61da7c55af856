//! Identifiers. Each is a newtype so that a job id can never be passed where a
//! node id is expected, and so that their textual forms are defined once.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A BLAKE3 digest of some content: an input file, an output, a toolchain.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

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
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub u64);

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

/// A node. Chosen at random by the node on its first start and kept in its
/// work directory, so a restarted node is recognised as the same machine.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub u64);

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
    pub mac: [u8; 32],
}

impl Ticket {
    /// The bytes the MAC covers: everything in the ticket except the MAC.
    pub fn signed_bytes(job: JobId, node: NodeId, toolchain: ToolchainId) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 8 + 32 + 16);
        out.extend_from_slice(b"distcc-rs ticket");
        out.extend_from_slice(&job.0.to_le_bytes());
        out.extend_from_slice(&node.0.to_le_bytes());
        out.extend_from_slice(&toolchain.0.0);
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
    fn signed_bytes_cover_every_field() {
        let t = ToolchainId(Digest([1; 32]));
        let base = Ticket::signed_bytes(JobId(1), NodeId(2), t);
        assert_ne!(base, Ticket::signed_bytes(JobId(9), NodeId(2), t));
        assert_ne!(base, Ticket::signed_bytes(JobId(1), NodeId(9), t));
        assert_ne!(
            base,
            Ticket::signed_bytes(JobId(1), NodeId(2), ToolchainId(Digest([2; 32])))
        );
    }
}
