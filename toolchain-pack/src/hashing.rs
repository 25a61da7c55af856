//! Stream adapters that BLAKE3-hash bytes as they pass through. A bundle's id
//! is the hash of its uncompressed tar stream, and that stream is never stored
//! anywhere: it is hashed on its way into the compressor when packing and on
//! its way out of the decompressor when unpacking.

use std::io::{self, Read, Write};

use distcc_rs_proto::{Digest, ToolchainId};

/// Converts a finished BLAKE3 hasher into the proto's digest type.
pub(crate) fn digest_of(hasher: &blake3::Hasher) -> Digest {
    Digest(*hasher.finalize().as_bytes())
}

/// A writer that hashes everything written to it before passing it on.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: blake3::Hasher::new(),
        }
    }

    /// Returns the inner writer and the id of everything written so far.
    pub(crate) fn finish(self) -> (W, ToolchainId) {
        let id = ToolchainId(digest_of(&self.hasher));
        (self.inner, id)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Hash only what the inner writer accepted, so a short write cannot
        // make the hash cover bytes that were never written.
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes everything read through it and counts the bytes.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: blake3::Hasher::new(),
            len: 0,
        }
    }

    /// Reads the rest of the stream so the hash covers all of it (a tar
    /// reader stops at the first end-of-archive block and leaves the second
    /// one and anything after it unread), then returns the digest.
    pub(crate) fn drain_and_finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((digest_of(&self.hasher), self.len))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_and_reader_agree_with_plain_blake3() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let expected = Digest(*blake3::hash(&data).as_bytes());

        let mut w = HashingWriter::new(Vec::new());
        w.write_all(&data).unwrap();
        let (out, id) = w.finish();
        assert_eq!(out, data);
        assert_eq!(id.0, expected);

        let mut r = HashingReader::new(&data[..]);
        let mut first = [0u8; 10];
        r.read_exact(&mut first).unwrap();
        let (digest, len) = r.drain_and_finish().unwrap();
        assert_eq!(digest, expected);
        assert_eq!(len, data.len() as u64);
    }
}
