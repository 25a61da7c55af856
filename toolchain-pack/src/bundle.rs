//! Packing a toolchain into a reproducible, content-addressed `.tar.zst`.
//!
//! Reproducibility comes from the tar layout (entries sorted by path, mtime 0,
//! owner 0, empty owner names, modes reduced to 0o755/0o644, no links) and
//! from zstd's multithreaded mode, whose output does not depend on the number
//! of workers as long as there is at least one. The id is the BLAKE3 of the
//! uncompressed tar stream, so a different compression level or zstd version
//! yields different bytes on disk but the same id.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Take, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use distcc_rs_proto::{Digest, ToolchainId};

use crate::error::PackError;
use crate::hashing::{HashingWriter, digest_of};
use crate::manifest::{BUNDLE_FORMAT, BUNDLE_MANIFEST_PATH, BundleFile, BundleManifest};
use crate::toolchain::{self, ToolchainInfo};

/// What to pack and how to compress it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackOptions {
    /// zstd level. 3 packs the ~440 MiB toolchain in seconds; 19 saves about
    /// a fifth but takes minutes (research: rustc-mechanics §7).
    pub level: i32,
    /// Compression and hashing threads; 0 means all cores.
    pub threads: u32,
    /// Targets whose standard library to bundle besides the host's, which
    /// is always included. Each must be installed in the sysroot
    /// (`rustup target add`).
    pub targets: Vec<String>,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            level: 3,
            threads: 0,
            targets: Vec::new(),
        }
    }
}

impl PackOptions {
    /// The thread count to use, resolving 0 to the number of cores. Never 0,
    /// because zstd's single-threaded mode writes different (though equally
    /// valid) frames than its multithreaded mode, which would change the bytes.
    pub fn effective_threads(&self) -> u32 {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            n => n,
        }
    }
}

/// A packed bundle on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    /// BLAKE3 of the uncompressed tar stream.
    pub id: ToolchainId,
    /// The `.tar.zst` file, named `<id hex>.tar.zst`.
    pub path: PathBuf,
    /// Size of the `.tar.zst` file in bytes.
    pub compressed_size: u64,
    /// The manifest stored as the bundle's first entry.
    pub manifest: BundleManifest,
}

/// A selected file after the first pass: its content digest, plus the size
/// and mtime it had then, so the second pass can notice a file that changed
/// in between (a `rustup update` racing the packer) instead of writing a
/// bundle whose manifest lies.
struct Stamped {
    rel: String,
    src: PathBuf,
    size: u64,
    mtime: (i64, i64),
    digest: Digest,
    executable: bool,
}

/// The stages of packing, reported to a watcher as they end, so a person
/// running the packer by hand sees where the seconds go.
#[derive(Debug, Clone, PartialEq)]
pub enum PackProgress {
    /// The files are chosen; hashing them starts.
    Selected {
        files: usize,
        bytes: u64,
        targets: Vec<String>,
    },
    /// Every file is hashed; writing the compressed archive starts.
    Hashed { elapsed: Duration },
}

/// Packs the toolchain described by `info` into `<out_dir>/<id hex>.tar.zst`,
/// written atomically (a temporary file in `out_dir`, then a rename).
pub fn create(
    info: &ToolchainInfo,
    opts: &PackOptions,
    out_dir: &Path,
) -> Result<Bundle, PackError> {
    create_with_progress(info, opts, out_dir, &mut |_| {})
}

/// [`create`], telling `progress` about each stage as it ends.
pub fn create_with_progress(
    info: &ToolchainInfo,
    opts: &PackOptions,
    out_dir: &Path,
    progress: &mut dyn FnMut(PackProgress),
) -> Result<Bundle, PackError> {
    let started = Instant::now();
    let threads = opts.effective_threads();
    let selection = toolchain::select(info, &opts.targets)?;
    let mut bytes = 0;
    for src in selection.files.values() {
        bytes += fs::metadata(src).map_err(PackError::io(src))?.len();
    }
    progress(PackProgress::Selected {
        files: selection.files.len(),
        bytes,
        targets: toolchain::bundle_targets(&info.host, &opts.targets)?,
    });
    let stamped = stamp_all(&selection.files, threads)?;
    let manifest = BundleManifest {
        format: BUNDLE_FORMAT,
        rustc_version: info.version_verbose.clone(),
        host: info.host.clone(),
        rustc: "bin/rustc".to_owned(),
        interpreter: selection.interpreter,
        library_path: selection.library_path,
        files: stamped
            .iter()
            .map(|s| BundleFile {
                path: s.rel.clone(),
                size: s.size,
                digest: s.digest,
                executable: s.executable,
            })
            .collect(),
    };
    let hashed = started.elapsed();
    progress(PackProgress::Hashed { elapsed: hashed });

    fs::create_dir_all(out_dir).map_err(PackError::io(out_dir))?;
    let tmp = tempfile::Builder::new()
        .prefix(".distcc-rs-pack-")
        .suffix(".tmp")
        .tempfile_in(out_dir)
        .map_err(PackError::io(out_dir))?;
    let id = write_archive(
        tmp.as_file(),
        tmp.path(),
        &manifest,
        &stamped,
        opts.level,
        threads,
    )?;
    // tempfile creates the file as 0o600; a bundle holds nothing secret, and
    // whoever serves it (a scheduler under its own user) must read it.
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(PackError::io(tmp.path()))?;
    // Without the sync, a crash soon after the rename can leave a truncated
    // file under a valid-looking name, which the cache would then trust.
    tmp.as_file()
        .sync_all()
        .map_err(PackError::io(tmp.path()))?;
    let path = out_dir.join(format!("{id}.tar.zst"));
    tmp.persist(&path)
        .map_err(|e| PackError::io(&path)(e.error))?;
    let compressed_size = fs::metadata(&path).map_err(PackError::io(&path))?.len();
    tracing::info!(
        %id,
        files = manifest.files.len(),
        raw = manifest.total_size(),
        compressed = compressed_size,
        hash_secs = hashed.as_secs_f64(),
        total_secs = started.elapsed().as_secs_f64(),
        "packed toolchain bundle"
    );
    Ok(Bundle {
        id,
        path,
        compressed_size,
        manifest,
    })
}

/// First pass: hashes every file, on `threads` threads pulling from a shared
/// index so the two huge libraries do not end up on the same thread.
fn stamp_all(files: &BTreeMap<String, PathBuf>, threads: u32) -> Result<Vec<Stamped>, PackError> {
    let list: Vec<(&String, &PathBuf)> = files.iter().collect();
    let next = AtomicUsize::new(0);
    let workers = (threads as usize).clamp(1, list.len().max(1));
    let mut results: Vec<(usize, Result<Stamped, PackError>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((rel, src)) = list.get(i) else {
                            break done;
                        };
                        done.push((i, stamp(rel, src)));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a hashing thread panicked"))
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

fn stamp(rel: &str, src: &Path) -> Result<Stamped, PackError> {
    let mut file = File::open(src).map_err(PackError::io(src))?;
    let meta = file.metadata().map_err(PackError::io(src))?;
    let mut hasher = blake3::Hasher::new();
    let mut limited = (&mut file).take(meta.len());
    let read = io::copy(&mut limited, &mut hasher).map_err(PackError::io(src))?;
    if read != meta.len() {
        return Err(changed(src));
    }
    Ok(Stamped {
        rel: rel.to_owned(),
        src: src.to_owned(),
        size: meta.len(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        digest: digest_of(&hasher),
        executable: meta.permissions().mode() & 0o111 != 0,
    })
}

fn changed(src: &Path) -> PackError {
    PackError::Io {
        path: src.to_owned(),
        source: io::Error::other("file changed while the toolchain was being packed"),
    }
}

/// A tar header with everything that varies between machines zeroed.
pub(crate) fn header(kind: tar::EntryType, size: u64, executable: bool) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(if executable { 0o755 } else { 0o644 });
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Second pass: writes manifest, directories and files into `out` as a
/// zstd-compressed tar, hashing the tar stream on its way to the encoder.
fn write_archive(
    out: &File,
    out_path: &Path,
    manifest: &BundleManifest,
    stamped: &[Stamped],
    level: i32,
    threads: u32,
) -> Result<ToolchainId, PackError> {
    let mut encoder =
        zstd::stream::write::Encoder::new(BufWriter::with_capacity(1 << 20, out), level)
            .map_err(PackError::io(out_path))?;
    encoder
        .include_checksum(true)
        .map_err(PackError::io(out_path))?;
    encoder
        .multithread(threads)
        .map_err(PackError::io(out_path))?;
    let mut tar = tar::Builder::new(HashingWriter::new(encoder));

    let json = manifest.to_json();
    let mut h = header(tar::EntryType::Regular, json.len() as u64, false);
    tar.append_data(&mut h, BUNDLE_MANIFEST_PATH, &json[..])
        .map_err(PackError::io(out_path))?;

    // Directories sort before their contents because a path sorts before any
    // longer path it prefixes; None marks a directory.
    let mut entries: BTreeMap<&str, Option<&Stamped>> = BTreeMap::new();
    for s in stamped {
        entries.insert(&s.rel, Some(s));
        let mut dir = s.rel.as_str();
        while let Some((parent, _)) = dir.rsplit_once('/') {
            entries.insert(parent, None);
            dir = parent;
        }
    }
    for (rel, entry) in entries {
        match entry {
            None => {
                let mut h = header(tar::EntryType::Directory, 0, true);
                tar.append_data(&mut h, rel, io::empty())
                    .map_err(PackError::io(out_path))?;
            }
            Some(s) => append_file(&mut tar, s, out_path)?,
        }
    }

    let (encoder, id) = tar.into_inner().map_err(PackError::io(out_path))?.finish();
    let buffered = encoder.finish().map_err(PackError::io(out_path))?;
    buffered
        .into_inner()
        .map_err(|e| PackError::io(out_path)(e.into_error()))?;
    Ok(id)
}

fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    s: &Stamped,
    out_path: &Path,
) -> Result<(), PackError> {
    let file = File::open(&s.src).map_err(PackError::io(&s.src))?;
    let meta = file.metadata().map_err(PackError::io(&s.src))?;
    if meta.len() != s.size || (meta.mtime(), meta.mtime_nsec()) != s.mtime {
        return Err(changed(&s.src));
    }
    let mut h = header(tar::EntryType::Regular, s.size, s.executable);
    let mut source = Source {
        inner: file.take(s.size),
        failed: None,
        read: 0,
    };
    if let Err(e) = tar.append_data(&mut h, &s.rel, &mut source) {
        // Tell a failing source file apart from a failing output file.
        return Err(match source.failed {
            Some(kind) => PackError::io(&s.src)(io::Error::new(kind, e)),
            None => PackError::io(out_path)(e),
        });
    }
    // The tar crate pads a short read instead of failing, which would make
    // the header's size lie; a shrunken file must fail the pack.
    if source.read != s.size {
        return Err(changed(&s.src));
    }
    Ok(())
}

/// Reads a source file for the archive, remembering whether a read failed and
/// how many bytes came through.
struct Source {
    inner: Take<File>,
    failed: Option<io::ErrorKind>,
    read: u64,
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.read += n as u64;
                Ok(n)
            }
            Err(e) => {
                self.failed = Some(e.kind());
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toolchain::tests::fake_sysroot;

    #[test]
    fn packing_twice_gives_identical_bytes_and_id() {
        let dir = tempfile::tempdir().unwrap();
        let info = fake_sysroot(&dir.path().join("sysroot"));
        let one = create(
            &info,
            &PackOptions {
                level: 3,
                threads: 1,
                ..PackOptions::default()
            },
            &dir.path().join("a"),
        )
        .unwrap();
        let two = create(
            &info,
            &PackOptions {
                level: 3,
                threads: 4,
                ..PackOptions::default()
            },
            &dir.path().join("b"),
        )
        .unwrap();
        assert_eq!(one.id, two.id);
        assert_eq!(one.manifest, two.manifest);
        assert_eq!(fs::read(&one.path).unwrap(), fs::read(&two.path).unwrap());
        assert_eq!(
            one.path.file_name().unwrap().to_str().unwrap(),
            format!("{}.tar.zst", one.id)
        );
        assert_eq!(one.compressed_size, fs::metadata(&one.path).unwrap().len());
        assert_eq!(
            fs::metadata(&one.path).unwrap().permissions().mode() & 0o777,
            0o644
        );

        // A different level changes the compressed bytes but not the id,
        // because the id names the uncompressed content.
        let three = create(
            &info,
            &PackOptions {
                level: 1,
                threads: 2,
                ..PackOptions::default()
            },
            &dir.path().join("c"),
        )
        .unwrap();
        assert_eq!(three.id, one.id);

        // Nothing but the bundle is left in the output directory.
        let names: Vec<_> = fs::read_dir(dir.path().join("a"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn extra_targets_are_packed_and_progress_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let info = fake_sysroot(&dir.path().join("sysroot"));
        let arm = "aarch64-unknown-linux-gnu";
        let arm_lib = info.sysroot.join(format!("lib/rustlib/{arm}/lib"));
        fs::create_dir_all(&arm_lib).unwrap();
        fs::write(arm_lib.join("libstd-2.rlib"), [5u8; 300]).unwrap();

        let mut stages = Vec::new();
        let opts = PackOptions {
            targets: vec![arm.to_owned()],
            ..PackOptions::default()
        };
        let bundle =
            create_with_progress(&info, &opts, dir.path(), &mut |p| stages.push(p)).unwrap();
        assert_eq!(
            bundle.manifest.targets(),
            [arm, crate::toolchain::tests::FAKE_HOST]
        );
        assert!(bundle.manifest.has_std(arm));
        let raw = bundle.manifest.total_size();
        assert!(
            matches!(
                &stages[..],
                [
                    PackProgress::Selected { files: 8, bytes, targets },
                    PackProgress::Hashed { .. },
                ] if *bytes == raw && targets == &[arm, crate::toolchain::tests::FAKE_HOST]
            ),
            "{stages:?}"
        );

        // A host-only bundle of the same sysroot is a different bundle.
        let host_only = create(&info, &PackOptions::default(), dir.path()).unwrap();
        assert_ne!(host_only.id, bundle.id);
        assert!(!host_only.manifest.has_std(arm));
    }

    #[test]
    fn tar_layout_is_sorted_and_anonymous() {
        let dir = tempfile::tempdir().unwrap();
        let info = fake_sysroot(&dir.path().join("sysroot"));
        let bundle = create(&info, &PackOptions::default(), dir.path()).unwrap();
        let decoder = zstd::stream::read::Decoder::new(File::open(&bundle.path).unwrap()).unwrap();
        let mut archive = tar::Archive::new(decoder);
        let mut paths = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let h = entry.header();
            assert_eq!(h.mtime().unwrap(), 0);
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
            assert_eq!(h.username_bytes(), Some(&b""[..]));
            let mode = h.mode().unwrap();
            let path = entry.path().unwrap().to_str().unwrap().to_owned();
            let expect_exec =
                h.entry_type().is_dir() || path == "bin/rustc" || path.ends_with("nested/crt.o");
            assert_eq!(mode, if expect_exec { 0o755 } else { 0o644 }, "{path}");
            paths.push(path);
        }
        assert_eq!(paths[0], BUNDLE_MANIFEST_PATH);
        let rest = &paths[1..];
        let mut sorted = rest.to_vec();
        sorted.sort();
        assert_eq!(rest, sorted);
        assert!(rest.contains(&"lib/rustlib/x86_64-unknown-linux-gnu/lib/nested".to_owned()));
        assert!(
            !rest
                .iter()
                .any(|p| p.contains("rust-lld") || p.contains("share"))
        );
        assert_eq!(bundle.manifest.files.len(), 7);
    }
}
