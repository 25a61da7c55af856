//! The toolchain store: the bundles clients upload and nodes fetch.
//!
//! Each bundle lives at `<state dir>/toolchains/<id hex>.tar.zst`, exactly as
//! the client sent it (zstd-compressed). A file only ever appears under its
//! final name after its content was checked against the id, by renaming a
//! verified temporary file in the same directory. Rename is atomic, so a
//! reader sees either no bundle or a complete one, and two clients uploading
//! the same toolchain at once each write their own temporary file and the
//! second rename replaces identical content with identical content.
//!
//! This module does blocking file IO; the server calls the slow parts
//! (verification) on tokio's blocking pool.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use distcc_rs_proto::ToolchainId;
use distcc_rs_proto::message::BundleError;

/// The largest bundle the store accepts unless configured otherwise: 2 GiB,
/// several times the size of a real toolchain bundle.
pub const DEFAULT_MAX_BUNDLE_SIZE: u64 = 2 << 30;

const BUNDLE_SUFFIX: &str = ".tar.zst";

/// Temporary upload files start with this, so start-up can sweep away the
/// leftovers of uploads that a crash interrupted.
const UPLOAD_PREFIX: &str = ".upload-";

/// Errors opening or listing the store. Problems with a single upload are
/// reported to its client as a [`BundleError`] instead.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The toolchain directory could not be created.
    #[error("cannot create toolchain directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    /// The toolchain directory could not be listed.
    #[error("cannot list toolchain directory {path}: {source}")]
    List { path: PathBuf, source: io::Error },
}

/// A bundle the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBundle {
    pub id: ToolchainId,
    pub compressed_size: u64,
}

/// The directory of toolchain bundles.
#[derive(Debug)]
pub struct ToolchainStore {
    dir: PathBuf,
    max_bundle_size: u64,
}

impl ToolchainStore {
    /// Opens (creating if needed) the store under `state_dir`, and removes
    /// temporary files left by interrupted uploads.
    pub fn open(state_dir: &Path, max_bundle_size: u64) -> Result<Self, StoreError> {
        let dir = state_dir.join("toolchains");
        fs::create_dir_all(&dir).map_err(|source| StoreError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let store = ToolchainStore {
            dir,
            max_bundle_size,
        };
        for entry in store.entries()? {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(UPLOAD_PREFIX)
                && let Err(e) = fs::remove_file(entry.path())
            {
                tracing::warn!(path = %entry.path().display(), cause = %e,
                    "cannot remove an interrupted upload");
            }
        }
        Ok(store)
    }

    /// The directory the bundles are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The largest compressed bundle an upload may deliver.
    pub fn max_bundle_size(&self) -> u64 {
        self.max_bundle_size
    }

    /// Where the bundle with this id is (or would be) stored.
    pub fn bundle_path(&self, id: ToolchainId) -> PathBuf {
        self.dir.join(format!("{id}{BUNDLE_SUFFIX}"))
    }

    /// Whether the store holds this bundle.
    pub fn has(&self, id: ToolchainId) -> bool {
        self.bundle_path(id).is_file()
    }

    /// Every bundle in the store, sorted by id. Files whose name is not a
    /// bundle name are ignored. Bundles are not re-verified here: they only
    /// got their names after verification, and hashing gigabytes at every
    /// start would delay the farm for nothing.
    pub fn list(&self) -> Result<Vec<StoredBundle>, StoreError> {
        let mut out = Vec::new();
        for entry in self.entries()? {
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(BUNDLE_SUFFIX))
                .and_then(|hex| hex.parse::<ToolchainId>().ok())
            else {
                continue;
            };
            match entry.metadata() {
                Ok(meta) if meta.is_file() => out.push(StoredBundle {
                    id,
                    compressed_size: meta.len(),
                }),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), cause = %e,
                        "cannot read a stored bundle's size; skipping it");
                }
            }
        }
        out.sort_by_key(|b| b.id);
        Ok(out)
    }

    fn entries(&self) -> Result<Vec<fs::DirEntry>, StoreError> {
        let list_error = |source| StoreError::List {
            path: self.dir.clone(),
            source,
        };
        fs::read_dir(&self.dir)
            .map_err(list_error)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(list_error)
    }

    /// Starts receiving a bundle into a temporary file in the store's
    /// directory (the same file system as the final name, so the final
    /// rename is atomic).
    pub fn begin_upload(&self, id: ToolchainId) -> Result<Upload, BundleError> {
        let temp = tempfile::Builder::new()
            .prefix(UPLOAD_PREFIX)
            .suffix(".partial")
            .tempfile_in(&self.dir)
            .map_err(|e| io_error("cannot create an upload file", &e))?;
        Ok(Upload {
            id,
            temp,
            dest: self.bundle_path(id),
            limit: self.max_bundle_size,
        })
    }

    /// Opens a stored bundle for reading, with its size; `Ok(None)` if the
    /// store does not hold it.
    pub fn open_bundle(&self, id: ToolchainId) -> io::Result<Option<(File, u64)>> {
        match File::open(self.bundle_path(id)) {
            Ok(file) => {
                let size = file.metadata()?.len();
                Ok(Some((file, size)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A bundle being received. Dropping it without [`Upload::finish`] deletes
/// the temporary file.
#[derive(Debug)]
pub struct Upload {
    id: ToolchainId,
    temp: tempfile::NamedTempFile,
    dest: PathBuf,
    limit: u64,
}

impl Upload {
    /// Where the received bytes go.
    pub fn writer(&mut self) -> &mut File {
        self.temp.as_file_mut()
    }

    /// The most bytes the upload may deliver.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Checks the received bundle against its id and, if it matches, stores
    /// it under its final name. Returns its compressed size. Slow for real
    /// bundles (it decompresses and hashes all of it): call it off the async
    /// runtime.
    pub fn finish(mut self) -> Result<StoredBundle, BundleError> {
        let file = self.temp.as_file_mut();
        file.flush()
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error("cannot write the upload file", &e))?;
        let size = file
            .metadata()
            .map_err(|e| io_error("cannot read the upload file", &e))?
            .len();
        if size > self.limit {
            return Err(BundleError::TooLarge {
                size,
                limit: self.limit,
            });
        }
        verify(self.temp.path(), self.id)?;
        self.temp
            .persist(&self.dest)
            .map_err(|e| io_error("cannot move the verified bundle into place", &e.error))?;
        Ok(StoredBundle {
            id: self.id,
            compressed_size: size,
        })
    }
}

fn io_error(what: &str, e: &io::Error) -> BundleError {
    BundleError::Io(format!("{what}: {e}"))
}

/// Checks that the bundle at `path` is a well-formed bundle (zstd-compressed
/// tar, manifest first, safe paths) whose uncompressed tar hashes to `id`.
/// Checking the structure, not only the hash, means a node never fetches a
/// bundle from us that it would then refuse to unpack.
fn verify(path: &Path, id: ToolchainId) -> Result<(), BundleError> {
    use distcc_rs_pack::PackError;
    match distcc_rs_pack::verify_file(path, id) {
        Ok(_manifest) => Ok(()),
        Err(PackError::HashMismatch { expected, actual }) => {
            Err(BundleError::HashMismatch { expected, actual })
        }
        // The file is ours and was just written, so failing to open or read
        // it is the scheduler's problem, not the client's.
        Err(e @ PackError::Io { .. }) => Err(BundleError::Io(e.to_string())),
        // Everything else (undecodable zstd, a broken tar, a bad manifest, an
        // unsafe path) is the content's fault.
        Err(e) => Err(BundleError::Malformed(e.to_string())),
    }
}

#[cfg(test)]
mod tests;
