//! Farm membership: roles, join tokens, enrollment messages and the codes a
//! peer closes a connection with when it refuses a request.
//!
//! Every member of a farm holds a certificate issued by the scheduler's farm
//! certificate authority. The certificate names the member's role through a
//! DNS name ([`PeerRole::dns_name`]), so a client dialling a node checks that
//! it reached a node with ordinary TLS name verification, and a daemon learns
//! the role of whoever dialled it from the certificate the peer presented.
//!
//! A peer without a certificate gets one by *enrolling*: it proves it knows
//! the farm's join token and sends a public key it generated itself; the
//! private key never leaves its machine.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a farm member is allowed to do, as its certificate says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PeerRole {
    /// The one scheduler: it places jobs, stores toolchains and signs
    /// certificates.
    Scheduler,
    /// A build node: it registers with the scheduler and runs jobs.
    Node,
    /// A client: the compiler wrapper, `status`, `monitor` and
    /// `distcc-rs-pack`. It allocates jobs and manages toolchains.
    Client,
}

impl PeerRole {
    /// The DNS name a certificate of this role is issued for, and the name a
    /// peer dials when it expects this role on the other end.
    pub fn dns_name(self) -> &'static str {
        match self {
            PeerRole::Scheduler => "scheduler.distcc-rs",
            PeerRole::Node => "node.distcc-rs",
            PeerRole::Client => "client.distcc-rs",
        }
    }

    /// Every role, for code that must try each one.
    pub const ALL: [PeerRole; 3] = [PeerRole::Scheduler, PeerRole::Node, PeerRole::Client];
}

impl fmt::Display for PeerRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeerRole::Scheduler => "scheduler",
            PeerRole::Node => "node",
            PeerRole::Client => "client",
        })
    }
}

/// The SHA-256 digest of a certificate's DER bytes: how the scheduler's
/// records, revocations and job tickets name a certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CertFingerprint(pub [u8; 32]);

impl CertFingerprint {
    /// A prefix of the hex form, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Display for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertFingerprint({})", self.short())
    }
}

/// How many bytes of the CA certificate's SHA-256 digest a token carries.
/// 128 bits keep the token one short line and still make finding a second
/// certificate with the same prefix infeasible.
pub const TOKEN_PIN_LEN: usize = 16;

/// How many random bytes the token's secret has.
pub const TOKEN_SECRET_LEN: usize = 16;

/// What a join token says: which CA to trust (a prefix of its certificate's
/// digest), and the secret that lets a new member enroll.
///
/// Its text form is `drs1-<pin hex>-<secret hex>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_pin: [u8; TOKEN_PIN_LEN],
    pub secret: [u8; TOKEN_SECRET_LEN],
}

const TOKEN_PREFIX: &str = "drs1-";

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}{}-{}",
            hex::encode(self.ca_pin),
            hex::encode(self.secret)
        )
    }
}

// The secret must not end up in logs through a stray `{:?}`.
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "JoinToken(ca {}, secret hidden)",
            hex::encode(self.ca_pin)
        )
    }
}

/// Why a string is not a join token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a join token: {0} (a token looks like drs1-<32 hex digits>-<32 hex digits>; \
     `distcc-rs-scheduler token` prints the farm's)"
)]
pub struct ParseTokenError(&'static str);

impl FromStr for JoinToken {
    type Err = ParseTokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(ParseTokenError("it does not start with drs1-"))?;
        let (pin, secret) = rest
            .split_once('-')
            .ok_or(ParseTokenError("it has no second part"))?;
        let mut out = JoinToken {
            ca_pin: [0; TOKEN_PIN_LEN],
            secret: [0; TOKEN_SECRET_LEN],
        };
        hex::decode_to_slice(pin, &mut out.ca_pin)
            .map_err(|_| ParseTokenError("the CA part is not 32 hex digits"))?;
        hex::decode_to_slice(secret, &mut out.secret)
            .map_err(|_| ParseTokenError("the secret is not 32 hex digits"))?;
        Ok(out)
    }
}

/// A request for a certificate, sent by a peer that has none yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The secret half of the join token.
    pub secret: [u8; TOKEN_SECRET_LEN],
    /// The role asked for: `Node` or `Client`. Nobody enrolls as the
    /// scheduler.
    pub role: PeerRole,
    /// A human name for the member (its host name, or user@host), shown by
    /// `distcc-rs-scheduler certs` and used to revoke it.
    pub name: String,
    /// The member's ECDSA P-256 public key as an uncompressed point
    /// (65 bytes). The matching private key stays on the member.
    pub public_key: Vec<u8>,
}

/// The longest member name the scheduler accepts.
pub const MAX_MEMBER_NAME: usize = 128;

/// The scheduler's answer to an [`EnrollRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EnrollResponse {
    /// The member's certificate and the farm CA's certificate, both DER.
    Enrolled {
        certificate: Vec<u8>,
        ca_certificate: Vec<u8>,
        serial: u64,
    },
    Refused(EnrollRefusal),
}

/// Why an enrollment was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum EnrollRefusal {
    #[error(
        "the join token is not (or no longer) valid for this farm; ask the farm's admin for the \
         current one (`distcc-rs-scheduler token`)"
    )]
    BadToken,
    #[error("a peer cannot enroll as the {0}")]
    BadRole(PeerRole),
    #[error("the member name is not acceptable: {0}")]
    BadName(String),
    #[error("the public key is not an ECDSA P-256 point")]
    BadKey,
    #[error("the scheduler could not issue a certificate: {0}")]
    Internal(String),
}

/// Application close codes: why a daemon closed a connection. The reason
/// phrase that travels with the code is shown to the peer's user.
pub mod close {
    /// The peer asked for something its role does not allow, or presented
    /// no certificate where one is needed.
    pub const NOT_PERMITTED: u32 = 0x10;
    /// The peer's certificate was revoked while it was connected.
    pub const REVOKED: u32 = 0x11;
}

/// Checks a member name: printable, no path or shell surprises, bounded.
pub fn validate_member_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > MAX_MEMBER_NAME {
        return Err(format!("it is longer than {MAX_MEMBER_NAME} bytes"));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.@".contains(*c)))
    {
        Some(c) => Err(format!(
            "{c:?} is not allowed (letters, digits, '-', '_', '.' and '@' are)"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_hide_their_secret() {
        let t = JoinToken {
            ca_pin: [0xab; 16],
            secret: [0x01; 16],
        };
        let text = t.to_string();
        assert_eq!(text.len(), 5 + 32 + 1 + 32);
        assert_eq!(text.parse::<JoinToken>().unwrap(), t);
        assert_eq!(format!(" {text}\n").parse::<JoinToken>().unwrap(), t);
        assert!(!format!("{t:?}").contains("0101"));
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        for (text, why) in [
            ("", "drs1-"),
            ("drs2-00-00", "drs1-"),
            ("drs1-abc", "second part"),
            (
                &format!("drs1-{}-{}", "zz".repeat(16), "00".repeat(16)),
                "CA part",
            ),
            (
                &format!("drs1-{}-{}", "00".repeat(16), "00".repeat(15)),
                "secret",
            ),
        ] {
            let err = text.parse::<JoinToken>().unwrap_err().to_string();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn member_names_are_checked() {
        assert!(validate_member_name("alice@build-3.lan").is_ok());
        assert!(validate_member_name("").is_err());
        assert!(validate_member_name("a/b").is_err());
        assert!(validate_member_name("a b").is_err());
        assert!(validate_member_name(&"a".repeat(129)).is_err());
    }

    #[test]
    fn role_names_differ() {
        let names: std::collections::HashSet<_> =
            PeerRole::ALL.iter().map(|r| r.dns_name()).collect();
        assert_eq!(names.len(), 3);
    }
}
