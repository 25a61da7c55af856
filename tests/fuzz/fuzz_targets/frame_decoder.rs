//! The frame decoder and every message a daemon or the client reads off the
//! network.
//!
//! Input: one control byte, then a byte stream. The control byte chooses how
//! the stream is fed to a `FrameDecoder` (all at once or in pieces of 1 to 16
//! bytes) and whether the decoder's limit is the real 16 MiB or a small one.
//! Every complete frame body, and the stream itself taken as a body, is then
//! decoded as each message type.
//!
//! Asserted:
//! * nothing panics, whatever the bytes;
//! * the decoder never returns a body over its limit, and the frames it
//!   returns are exactly the prefix of the stream it consumed;
//! * every message that decodes re-encodes into a frame within the limit,
//!   that frame decodes again, and encoding the result gives the same bytes
//!   (compared as bytes, not values: a NaN in a load report is not equal to
//!   itself).

#![no_main]

use distcc_rs_proto::codec::{self, FrameDecoder, HEADER_LEN, MAX_FRAME_LEN};
use distcc_rs_proto::message::{
    AdoptReply, AllocateResponse, BlobHeader, FarmStatus, FetchResponse, JobAccept, JobEvent,
    JobRequest, NodeEvent, NodeRequest, RegisterResponse, RemoveResponse, SchedulerRequest,
    ToolchainList, UploadResponse,
};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Decodes `body` as a `T` and, if that works, checks the round trip.
fn round_trip<T: Serialize + DeserializeOwned>(body: &[u8]) {
    let Ok(msg) = codec::decode::<T>(body) else {
        return;
    };
    let frame = codec::encode(&msg).expect("a decoded message must re-encode");
    let len = codec::frame_len(*frame.first_chunk().unwrap(), MAX_FRAME_LEN)
        .expect("a re-encoded frame must be within the limit");
    assert_eq!(len, frame.len() - HEADER_LEN);
    let again: T = codec::decode(&frame[HEADER_LEN..]).expect("a re-encoded message must decode");
    let frame_again = codec::encode(&again).unwrap();
    assert_eq!(frame, frame_again, "re-encoding must be stable");
}

/// Every message type some peer reads from a stream.
fn decode_as_every_message(body: &[u8]) {
    // The scheduler reads these.
    round_trip::<SchedulerRequest>(body);
    round_trip::<NodeEvent>(body);
    round_trip::<AdoptReply>(body);
    // A node reads these.
    round_trip::<NodeRequest>(body);
    round_trip::<JobRequest>(body);
    round_trip::<BlobHeader>(body);
    round_trip::<RegisterResponse>(body);
    round_trip::<FetchResponse>(body);
    // The client and `distcc-rs-pack` read these.
    round_trip::<AllocateResponse>(body);
    round_trip::<UploadResponse>(body);
    round_trip::<JobAccept>(body);
    round_trip::<JobEvent>(body);
    round_trip::<FarmStatus>(body);
    round_trip::<ToolchainList>(body);
    round_trip::<RemoveResponse>(body);
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let limit = if control & 0x80 != 0 {
        64
    } else {
        MAX_FRAME_LEN
    };
    let step = if control & 0x40 != 0 {
        stream.len().max(1)
    } else {
        usize::from(control & 0x0f) + 1
    };

    let mut decoder = FrameDecoder::new(limit);
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    'feed: for piece in stream.chunks(step) {
        decoder.push(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(body)) => {
                    assert!(body.len() <= limit, "a body over the limit came out");
                    bodies.push(body);
                }
                Ok(None) => break,
                // Over the limit: the stream is unusable from here on.
                Err(_) => break 'feed,
            }
        }
    }
    let mut consumed = Vec::new();
    for body in &bodies {
        consumed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        consumed.extend_from_slice(body);
    }
    assert!(
        stream.starts_with(&consumed),
        "the frames must be the stream's prefix, split at its headers"
    );

    for body in &bodies {
        decode_as_every_message(body);
    }
    decode_as_every_message(stream);
});
