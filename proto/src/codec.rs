//! Framing: how messages and large payloads become bytes.
//!
//! A **frame** is a 4-byte big-endian length followed by that many bytes. A
//! message frame's bytes are the bincode (2.x, standard configuration)
//! encoding of one message. No frame may be longer than [`MAX_FRAME_LEN`]:
//! a peer that announces more is cut off before anything is allocated.
//!
//! A **chunk stream** carries a payload of any size (a blob, an output, a
//! toolchain bundle) as a run of frames of at most [`MAX_CHUNK_LEN`] bytes of
//! raw data each, ended by an empty frame. The sender never needs the whole
//! payload in memory, and neither does the receiver.
//!
//! Everything here works on byte slices; reading and writing sockets is the
//! caller's business (see the `distcc-rs-net` crate).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The length of a frame header.
pub const HEADER_LEN: usize = 4;

/// The largest message frame a peer accepts: 16 MiB. Job requests for crates
/// with thousands of inputs stay far below this.
pub const MAX_FRAME_LEN: usize = 16 << 20;

/// The largest data frame inside a chunk stream: 1 MiB.
pub const MAX_CHUNK_LEN: usize = 1 << 20;

/// Errors from encoding or decoding frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// A frame announced or needed more bytes than the limit allows.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { len: usize, limit: usize },
    /// A message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// A frame's bytes are not a valid message of the expected type.
    #[error("malformed message: {0}")]
    Decode(String),
    /// A frame held a valid message followed by extra bytes.
    #[error("message frame has {0} trailing bytes")]
    TrailingBytes(usize),
}

fn config() -> impl bincode::config::Config {
    // The limit stops a hostile length field inside a message (a Vec claiming
    // a billion elements) from allocating more than a frame could hold.
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Encodes a message as one complete frame, header included.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![0u8; HEADER_LEN];
    bincode::serde::encode_into_std_write(msg, &mut out, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    let len = out.len() - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        return Err(CodecError::FrameTooLarge {
            len,
            limit: MAX_FRAME_LEN,
        });
    }
    out[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Decodes a message from a frame's body (the bytes after the header).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    let (msg, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::TrailingBytes(body.len() - used));
    }
    Ok(msg)
}

/// Reads a frame header and checks the announced length against `limit`.
pub fn frame_len(header: [u8; HEADER_LEN], limit: usize) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > limit {
        return Err(CodecError::FrameTooLarge { len, limit });
    }
    Ok(len)
}

/// The header for a chunk of `len` bytes. An empty chunk ends the stream.
pub fn chunk_header(len: usize) -> Result<[u8; HEADER_LEN], CodecError> {
    if len > MAX_CHUNK_LEN {
        return Err(CodecError::FrameTooLarge {
            len,
            limit: MAX_CHUNK_LEN,
        });
    }
    Ok((len as u32).to_be_bytes())
}

/// An incremental frame splitter: push bytes as they arrive, take complete
/// frame bodies out. Used by tests and fuzzing to check that arbitrary input
/// can never make the decoder panic or over-allocate.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    limit: usize,
}

impl FrameDecoder {
    pub fn new(limit: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            limit,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame body, `Ok(None)` if more bytes are needed, or
    /// an error if the next frame is over the limit (the stream is then
    /// unusable).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, CodecError> {
        let Some(header) = self.buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let len = frame_len(*header, self.limit)?;
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let body = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Digest, JobId, NodeId, Ticket, ToolchainId};
    use crate::message::*;

    fn sample_job() -> JobRequest {
        let tc = ToolchainId(Digest([7; 32]));
        JobRequest {
            ticket: Ticket {
                job: JobId(3),
                node: NodeId(4),
                toolchain: tc,
                client: crate::CertFingerprint([5; 32]),
                mac: [9; 32],
            },
            crate_name: "serde".into(),
            args: vec!["--crate-name".into(), "serde".into()],
            env: vec![("CARGO_PKG_NAME".into(), "serde".into())],
            cwd: "/home/u/p".into(),
            files: vec![FileEntry {
                path: "/home/u/p/src/lib.rs".into(),
                digest: Digest([1; 32]),
                size: 10,
                executable: false,
            }],
            dirs: vec!["/home/u/p/target".into()],
            output_dirs: vec!["/home/u/p/target/debug/deps".into()],
        }
    }

    #[test]
    fn message_round_trips_through_a_frame() {
        let job = sample_job();
        let frame = encode(&job).unwrap();
        let len = frame_len(*frame.first_chunk().unwrap(), MAX_FRAME_LEN).unwrap();
        assert_eq!(len, frame.len() - HEADER_LEN);
        let back: JobRequest = decode(&frame[HEADER_LEN..]).unwrap();
        assert_eq!(back, job);
    }

    #[test]
    fn oversized_header_is_refused_before_allocation() {
        let header = (u32::MAX).to_be_bytes();
        assert_eq!(
            frame_len(header, MAX_FRAME_LEN),
            Err(CodecError::FrameTooLarge {
                len: u32::MAX as usize,
                limit: MAX_FRAME_LEN
            })
        );
        let mut d = FrameDecoder::new(MAX_FRAME_LEN);
        d.push(&header);
        assert!(d.next_frame().is_err());
    }

    #[test]
    fn garbage_decodes_to_an_error_not_a_panic() {
        // A Vec length of 2^60 elements inside an otherwise tiny body.
        let mut body = vec![0u8];
        body.extend_from_slice(&[0xff; 9]);
        assert!(decode::<JobRequest>(&body).is_err());
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = decode::<SchedulerRequest>(&bytes);
            let _ = decode::<JobEvent>(&bytes);
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut frame = encode(&SchedulerRequest::Status).unwrap();
        frame.push(0);
        assert_eq!(
            decode::<SchedulerRequest>(&frame[HEADER_LEN..]),
            Err(CodecError::TrailingBytes(1))
        );
    }

    #[test]
    fn decoder_splits_frames_fed_byte_by_byte() {
        let a = encode(&SchedulerRequest::Status).unwrap();
        let b = encode(&sample_job()).unwrap();
        let mut d = FrameDecoder::new(MAX_FRAME_LEN);
        let mut got = Vec::new();
        for byte in a.iter().chain(b.iter()) {
            d.push(&[*byte]);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(
            decode::<SchedulerRequest>(&got[0]).unwrap(),
            SchedulerRequest::Status
        );
        assert_eq!(decode::<JobRequest>(&got[1]).unwrap(), sample_job());
    }

    #[test]
    fn a_message_over_the_frame_limit_is_never_encoded() {
        let at_limit = JobEvent::Stdout(vec![0; MAX_FRAME_LEN - 8]);
        let frame = encode(&at_limit).unwrap();
        assert!(frame.len() - HEADER_LEN <= MAX_FRAME_LEN);
        let over = JobEvent::Stdout(vec![0; MAX_FRAME_LEN + 1]);
        assert!(matches!(
            encode(&over),
            Err(CodecError::FrameTooLarge {
                limit: MAX_FRAME_LEN,
                ..
            })
        ));
    }

    #[test]
    fn decoder_limit_is_exact() {
        let mut d = FrameDecoder::new(8);
        let mut frame = 8u32.to_be_bytes().to_vec();
        frame.extend_from_slice(&[1; 8]);
        d.push(&frame);
        assert_eq!(d.next_frame().unwrap(), Some(vec![1; 8]));
        assert_eq!(d.next_frame().unwrap(), None);
        d.push(&9u32.to_be_bytes());
        assert_eq!(
            d.next_frame(),
            Err(CodecError::FrameTooLarge { len: 9, limit: 8 })
        );
    }

    /// A length inside a message may claim far more elements than the
    /// frame holds; decoding fails on the missing bytes without reserving
    /// room for the claim.
    #[test]
    fn a_length_claim_larger_than_the_body_is_an_error() {
        // The same layout with an honest length decodes, so the failures
        // below are the length's doing.
        assert_eq!(
            decode::<JobEvent>(&[1, 4, 1, 2, 3, 4]),
            Ok(JobEvent::Stderr(vec![1, 2, 3, 4]))
        );
        // JobEvent::Stderr (variant 1) claiming 15 MiB, followed by 4 bytes.
        let mut body = vec![1, 0xfc];
        body.extend_from_slice(&(15u32 << 20).to_le_bytes());
        body.extend_from_slice(&[1, 2, 3, 4]);
        assert!(matches!(
            decode::<JobEvent>(&body),
            Err(CodecError::Decode(_))
        ));
        // More than the frame limit itself.
        let mut body = vec![1, 0xfd];
        body.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(
            decode::<JobEvent>(&body),
            Err(CodecError::Decode(_))
        ));
    }

    #[test]
    fn chunk_header_enforces_the_chunk_limit() {
        assert_eq!(chunk_header(0).unwrap(), [0, 0, 0, 0]);
        assert!(chunk_header(MAX_CHUNK_LEN).is_ok());
        assert!(chunk_header(MAX_CHUNK_LEN + 1).is_err());
    }

    /// Golden bytes: if this changes, the wire format changed and
    /// PROTOCOL_VERSION must be bumped.
    #[test]
    fn wire_format_is_stable() {
        let frame = encode(&SchedulerRequest::FetchToolchain(ToolchainId(Digest(
            [0xaa; 32],
        ))))
        .unwrap();
        let mut expected = vec![0, 0, 0, 33, 3];
        expected.extend_from_slice(&[0xaa; 32]);
        assert_eq!(frame, expected);
    }
}
