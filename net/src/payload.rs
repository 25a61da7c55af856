//! Chunk streams: payloads of any size, compressed and hashed on the fly.
//!
//! Blobs and outputs travel zstd-compressed. Toolchain bundles are already
//! compressed and travel as they are. Either way neither side holds more than
//! a chunk or two in memory, and the receiver enforces a size limit on what
//! it writes, so a decompression bomb cannot fill a disk.

use std::io::{self, Read, Write};

use distcc_rs_proto::{Digest, MAX_CHUNK_LEN};

use crate::{FrameReader, FrameWriter, NetError};

/// Sends everything `reader` yields as a chunk stream, unchanged. Returns the
/// number of bytes sent.
pub async fn send_raw(w: &mut FrameWriter, mut reader: impl Read) -> Result<u64, NetError> {
    let mut buf = vec![0u8; MAX_CHUNK_LEN];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        w.send_chunk(&buf[..n]).await?;
        total += n as u64;
    }
    w.end_chunks().await?;
    Ok(total)
}

/// Receives a chunk stream into `out`, unchanged, refusing more than `limit`
/// bytes. Returns the number of bytes received.
pub async fn recv_raw(
    r: &mut FrameReader,
    out: &mut impl Write,
    limit: u64,
) -> Result<u64, NetError> {
    let mut total = 0u64;
    while let Some(chunk) = r.recv_chunk().await? {
        total += chunk.len() as u64;
        if total > limit {
            return Err(NetError::PayloadTooLarge { limit });
        }
        out.write_all(&chunk)?;
    }
    Ok(total)
}

/// Sends everything `reader` yields as a zstd-compressed chunk stream.
/// Returns (uncompressed bytes, bytes on the wire).
pub async fn send_compressed(
    w: &mut FrameWriter,
    mut reader: impl Read,
    level: i32,
) -> Result<(u64, u64), NetError> {
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), level)?;
    let mut buf = vec![0u8; MAX_CHUNK_LEN];
    let (mut raw, mut wire) = (0u64, 0u64);
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        raw += n as u64;
        encoder.write_all(&buf[..n])?;
        let pending = encoder.get_mut();
        if pending.len() >= MAX_CHUNK_LEN / 2 {
            wire += pending.len() as u64;
            w.send_chunk(pending).await?;
            pending.clear();
        }
    }
    let rest = encoder.finish()?;
    wire += rest.len() as u64;
    w.send_chunk(&rest).await?;
    w.end_chunks().await?;
    Ok((raw, wire))
}

/// What [`recv_compressed`] received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The BLAKE3 digest of the decompressed content.
    pub digest: Digest,
    /// Decompressed bytes.
    pub size: u64,
    /// Compressed bytes on the wire (chunk data, without frame headers).
    pub wire: u64,
}

/// Receives a zstd-compressed chunk stream, writing the decompressed bytes to
/// `out` and hashing them. Refuses to decompress more than `limit` bytes.
pub async fn recv_compressed(
    r: &mut FrameReader,
    out: impl Write,
    limit: u64,
) -> Result<Received, NetError> {
    let sink = HashingWriter {
        inner: out,
        hasher: blake3::Hasher::new(),
        written: 0,
        limit,
    };
    let mut decoder = zstd::stream::write::Decoder::new(sink)?;
    // After a bad payload the rest of its chunks are still read (and
    // dropped), so the stream stays in step and the next message is found.
    let mut failed = None;
    let mut wire = 0u64;
    while let Some(chunk) = r.recv_chunk().await? {
        wire += chunk.len() as u64;
        if failed.is_none()
            && let Err(e) = decoder.write_all(&chunk)
        {
            failed = Some(limit_error(e, limit));
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    decoder.flush().map_err(|e| limit_error(e, limit))?;
    let sink = decoder.into_inner();
    Ok(Received {
        digest: Digest(*sink.hasher.finalize().as_bytes()),
        size: sink.written,
        wire,
    })
}

fn limit_error(e: io::Error, limit: u64) -> NetError {
    if e.kind() == io::ErrorKind::FileTooLarge {
        NetError::PayloadTooLarge { limit }
    } else {
        NetError::Io(e)
    }
}

/// A writer that hashes what passes through and stops at a size limit.
struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
    written: u64,
    limit: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "payload over its limit",
            ));
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The BLAKE3 digest of a byte slice, the farm's content address.
pub fn digest_of(bytes: &[u8]) -> Digest {
    Digest(*blake3::hash(bytes).as_bytes())
}
