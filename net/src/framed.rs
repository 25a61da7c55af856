//! Messages on QUIC streams.
//!
//! A bi-directional stream is split into a [`FrameWriter`] and a
//! [`FrameReader`] so that a task can read and write concurrently (a node
//! reports events while it receives commands).

use distcc_rs_proto::codec::{self, HEADER_LEN};
use distcc_rs_proto::{MAX_CHUNK_LEN, MAX_FRAME_LEN};
use quinn::{Connection, RecvStream, SendStream};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::NetError;

/// Opens a bi-directional stream on a connection.
pub async fn open_stream(conn: &Connection) -> Result<(FrameWriter, FrameReader), NetError> {
    let (send, recv) = conn.open_bi().await?;
    Ok((FrameWriter::new(send), FrameReader::new(recv)))
}

/// Accepts the next bi-directional stream a peer opens, or `None` once the
/// connection is closed.
pub async fn accept_stream(conn: &Connection) -> Option<(FrameWriter, FrameReader)> {
    let (send, recv) = conn.accept_bi().await.ok()?;
    Some((FrameWriter::new(send), FrameReader::new(recv)))
}

/// The sending half of a stream.
#[derive(Debug)]
pub struct FrameWriter {
    send: SendStream,
    /// Bytes written to the stream so far, headers included: what one
    /// conversation cost on the wire (a job's outputs, for the monitor).
    sent: u64,
}

impl FrameWriter {
    pub fn new(send: SendStream) -> Self {
        FrameWriter { send, sent: 0 }
    }

    /// Bytes written to this stream so far, frame headers included.
    pub fn bytes_sent(&self) -> u64 {
        self.sent
    }

    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), NetError> {
        self.send.write_all(bytes).await?;
        self.sent += bytes.len() as u64;
        Ok(())
    }

    /// Sends one message as one frame.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), NetError> {
        let frame = codec::encode(msg)?;
        self.write_all(&frame).await?;
        Ok(())
    }

    /// Sends one data chunk of a chunk stream. Empty data ends the stream, so
    /// callers use [`FrameWriter::end_chunks`] for that.
    pub async fn send_chunk(&mut self, data: &[u8]) -> Result<(), NetError> {
        for piece in data.chunks(MAX_CHUNK_LEN) {
            let header = codec::chunk_header(piece.len())?;
            self.write_all(&header).await?;
            self.write_all(piece).await?;
        }
        Ok(())
    }

    /// Ends a chunk stream.
    pub async fn end_chunks(&mut self) -> Result<(), NetError> {
        self.write_all(&codec::chunk_header(0)?).await?;
        Ok(())
    }

    /// Says that nothing more will be sent on this stream.
    pub fn finish(&mut self) -> Result<(), NetError> {
        self.send.finish()?;
        Ok(())
    }

    /// Finishes the stream and waits until the peer has acknowledged
    /// everything sent on it. Closing the connection right after `finish`
    /// can discard data not yet sent, so a message that gets no answer
    /// (such as a scheduler `Release`) needs this before the close.
    pub async fn finish_and_wait(mut self) -> Result<(), NetError> {
        self.finish()?;
        // An error here means the peer stopped the stream or the connection
        // went away; either way there is nothing left to wait for.
        let _ = self.send.stopped().await;
        Ok(())
    }
}

/// The receiving half of a stream.
#[derive(Debug)]
pub struct FrameReader {
    recv: RecvStream,
    /// Bytes read from the stream so far, headers included.
    received: u64,
}

impl FrameReader {
    pub fn new(recv: RecvStream) -> Self {
        FrameReader { recv, received: 0 }
    }

    /// Bytes read from this stream so far, frame headers included.
    pub fn bytes_received(&self) -> u64 {
        self.received
    }

    /// Reads one frame header, or `None` at a clean end of stream.
    async fn header(&mut self, limit: usize) -> Result<Option<usize>, NetError> {
        let mut header = [0u8; HEADER_LEN];
        let mut filled = 0;
        while filled < HEADER_LEN {
            match self.recv.read(&mut header[filled..]).await? {
                Some(n) => {
                    filled += n;
                    self.received += n as u64;
                }
                None if filled == 0 => return Ok(None),
                None => return Err(NetError::UnexpectedEof),
            }
        }
        Ok(Some(codec::frame_len(header, limit)?))
    }

    async fn body(&mut self, len: usize) -> Result<Vec<u8>, NetError> {
        let mut body = vec![0u8; len];
        self.recv.read_exact(&mut body).await?;
        self.received += len as u64;
        Ok(body)
    }

    /// Receives one message, or `None` if the peer finished the stream
    /// cleanly at a frame boundary.
    pub async fn recv_opt<T: DeserializeOwned>(&mut self) -> Result<Option<T>, NetError> {
        let Some(len) = self.header(MAX_FRAME_LEN).await? else {
            return Ok(None);
        };
        let body = self.body(len).await?;
        Ok(Some(codec::decode(&body)?))
    }

    /// Receives one message; the end of the stream is an error here.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<T, NetError> {
        self.recv_opt().await?.ok_or(NetError::UnexpectedEof)
    }

    /// Receives the next chunk of a chunk stream, or `None` at its end.
    pub async fn recv_chunk(&mut self) -> Result<Option<Vec<u8>>, NetError> {
        match self.header(MAX_CHUNK_LEN).await? {
            None => Err(NetError::UnexpectedEof),
            Some(0) => Ok(None),
            Some(len) => Ok(Some(self.body(len).await?)),
        }
    }
}
