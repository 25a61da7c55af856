//! The distcc-rs wire protocol: identifiers, messages and framing.
//!
//! # Layout
//!
//! * [`ids`]: newtypes for everything the farm names (`JobId`, `NodeId`,
//!   `ToolchainId`, content `Digest`s, job `Ticket`s).
//! * [`message`]: every message that crosses a connection, grouped by the
//!   conversation it belongs to (scheduler requests, node control stream,
//!   client-to-node job stream).
//! * [`codec`]: length-prefixed framing with a hard size limit, and chunk
//!   streams for payloads too large for one frame.
//! * [`version`]: the protocol version and the ALPN string that carries it.
//! * [`discovery`]: what daemons advertise over mDNS (service types, TXT
//!   records, farm names) and which of a service's addresses to dial.
//!
//! Architecture invariant: this crate does no IO. It has no tokio, no quinn and
//! no filesystem access, so it can be fuzzed and tested with plain byte slices.

pub mod auth;
pub mod codec;
pub mod discovery;
pub mod ids;
pub mod message;
pub mod version;

pub use auth::{CertFingerprint, JoinToken, PeerRole};
pub use codec::{CodecError, MAX_CHUNK_LEN, MAX_FRAME_LEN};
pub use ids::{Digest, JobId, NodeId, Ticket, ToolchainId};
pub use version::{PROTOCOL_VERSION, alpn};
