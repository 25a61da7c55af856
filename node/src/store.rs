//! The node's content-addressed store of job inputs.
//!
//! Every input file a client sends is kept under `<work>/store/<digest>`,
//! so the next job that needs the same `.rmeta` (most jobs of a build share
//! most of their dependencies) does not transfer it again. Files arrive in a
//! temporary name and are renamed into place only after their content has
//! been hashed and matched against the digest they were announced under, so
//! the store never holds a file under the wrong name, even after a crash.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use distcc_rs_proto::Digest;

/// The store's directory and operations on it.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// Opens (creating if needed) the store in `dir` and removes temporary
    /// files a previous run left behind.
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(BlobStore { dir })
    }

    /// Where a blob lives.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.to_hex())
    }

    /// Whether the store holds a blob.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// The digests, out of `wanted`, that the store lacks (each once).
    pub fn missing<'a>(&self, wanted: impl IntoIterator<Item = &'a Digest>) -> Vec<Digest> {
        let mut out: Vec<Digest> = wanted
            .into_iter()
            .filter(|d| !self.contains(d))
            .copied()
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// A fresh temporary file in the store's directory, for a blob in flight.
    pub fn temp_file(&self) -> io::Result<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix(".tmp")
            .tempfile_in(&self.dir)
    }

    /// Moves a received blob into place once its content is known to hash to
    /// `digest`.
    pub fn commit(&self, tmp: tempfile::NamedTempFile, digest: &Digest) -> io::Result<()> {
        tmp.persist(self.path(digest)).map_err(|e| e.error)?;
        Ok(())
    }

    /// Places a blob at `dest` inside a job root: a hard link when possible
    /// (free and instant), a copy otherwise (another file system). An
    /// executable input is always copied, so that setting its mode cannot
    /// change the stored blob that other jobs link to.
    pub fn place(&self, digest: &Digest, dest: &Path, executable: bool) -> io::Result<()> {
        let src = self.path(digest);
        if !executable && fs::hard_link(&src, dest).is_ok() {
            return Ok(());
        }
        fs::copy(&src, dest)?;
        if executable {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dest, fs::Permissions::from_mode(0o755))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn blobs_are_committed_and_placed() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("store")).unwrap();
        let d = Digest(*blake3::hash(b"hello").as_bytes());
        assert_eq!(store.missing([&d, &d]), vec![d]);
        let mut tmp = store.temp_file().unwrap();
        tmp.write_all(b"hello").unwrap();
        store.commit(tmp, &d).unwrap();
        assert!(store.missing([&d]).is_empty());
        let dest = dir.path().join("x");
        store.place(&d, &dest, false).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"hello");
    }

    #[test]
    fn leftover_temporaries_are_cleaned_on_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".tmpabc"), b"partial").unwrap();
        BlobStore::open(dir.path().to_path_buf()).unwrap();
        assert!(!dir.path().join(".tmpabc").exists());
    }
}
