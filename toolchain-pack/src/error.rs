//! The one error type of the library. Callers on the client and the node need
//! to tell "this bundle is corrupt or hostile" (drop it, fetch again) apart from
//! "this machine has a problem" (disk full, rustc missing), so the variants keep
//! those cases separate instead of collapsing them into strings.

use std::io;
use std::path::PathBuf;

use distcc_rs_proto::{Digest, ToolchainId};

/// Everything that can go wrong while detecting, packing, caching, verifying
/// or unpacking a toolchain bundle.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// Running `rustc` to learn its version or sysroot failed, or it printed
    /// something we could not understand.
    #[error("rustc at {rustc}: {message}")]
    Rustc { rustc: PathBuf, message: String },

    /// Running `ldd` on a toolchain binary failed or reported a library that
    /// the dynamic loader cannot find.
    #[error("ldd {path}: {message}")]
    Ldd { path: PathBuf, message: String },

    /// A file system operation on a known path failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Reading or decompressing a bundle stream failed; the stream has no
    /// path of its own (it may come from the network).
    #[error("reading the bundle stream: {0}")]
    Stream(#[source] io::Error),

    /// Decompressing or reading the bundle stream failed in the middle of an
    /// entry. The entry is named because a corrupt byte in the compressed
    /// stream usually surfaces here, and "which file" is the first question
    /// a person debugging a damaged bundle asks.
    #[error("reading {entry} from the bundle stream: {source}")]
    EntryStream {
        entry: String,
        #[source]
        source: io::Error,
    },

    /// A file's content does not hash to the digest the manifest lists for
    /// it, so the bundle (or the packer that wrote it) is damaged.
    #[error("{path}: content does not match the manifest (expected {expected}, got {actual})")]
    FileMismatch {
        path: String,
        expected: Digest,
        actual: Digest,
    },

    /// The bundle's content hash is not the id it was announced under.
    #[error("bundle content hash mismatch: expected {expected}, got {actual}")]
    HashMismatch {
        expected: ToolchainId,
        actual: ToolchainId,
    },

    /// An archive entry would land outside the destination, or a link in it
    /// could lead there.
    #[error("unsafe path in bundle: {0}")]
    UnsafePath(String),

    /// The archive or its manifest does not have the shape this crate writes.
    #[error("malformed bundle: {0}")]
    Malformed(String),

    /// The bundle would unpack to more than a limit allows (see
    /// `UnpackLimits`): too many bytes, too many entries, too long a path.
    #[error("the bundle's {what} exceeds the limit ({got} > {limit})")]
    TooLarge {
        what: &'static str,
        got: u64,
        limit: u64,
    },

    /// A file that every toolchain must have is absent from the sysroot.
    #[error("toolchain file missing: {0}")]
    MissingFile(PathBuf),

    /// A requested target is not a plain target triple (a custom target
    /// specification file, or a name with path separators).
    #[error("{0:?} is not a target triple")]
    InvalidTarget(String),

    /// The standard library of a requested target is not in the sysroot.
    #[error(
        "the standard library for {target} is not installed in {sysroot} \
         (install it with `rustup target add {target}`)"
    )]
    TargetNotInstalled { target: String, sysroot: PathBuf },

    /// The bundled rustc could not compile the smoke-test crate.
    #[error("smoke test for {target} failed: {message}")]
    SmokeTest { target: String, message: String },

    /// `unpack` refuses to merge into or replace an existing directory.
    #[error("unpack destination already exists: {0}")]
    DestinationExists(PathBuf),
}

impl PackError {
    /// Wraps an IO error with the path it concerns; used with `map_err`.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> PackError {
        let path = path.into();
        move |source| PackError::Io { path, source }
    }
}
