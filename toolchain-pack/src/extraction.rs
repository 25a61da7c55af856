//! Verifying and unpacking bundles on a node. A bundle arrives from the
//! scheduler, which got it from some client, so it is untrusted until its
//! content hash matches the id the job names, and every entry path is checked
//! before anything is written, whatever the hash says. Every file's content
//! is also checked against the digest the manifest lists for it: the id only
//! proves that the bundle is the one the client packed, not that the packer
//! told the truth, and a node trusts the manifest as a description of the
//! directory it unpacked.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use distcc_rs_proto::{Digest, ToolchainId};

use crate::error::PackError;
use crate::hashing::{HashingReader, digest_of};
use crate::manifest::{BUNDLE_MANIFEST_PATH, BundleFile, BundleManifest};

/// A real manifest is a few tens of KiB; the cap keeps a hostile header from
/// making us allocate gigabytes before the hash could reject it.
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// Bounds on what one bundle may unpack to. The compressed size of a bundle
/// is bounded where it is received (the scheduler's and the node's
/// `--max-bundle-size`), but zstd and tar expand: a few MiB of compressed
/// zeros can stand for terabytes of file content, and a tar header of 512
/// bytes, which compresses to almost nothing, for one more directory.
/// A real toolchain is a few hundred files and well under 2 GiB unpacked,
/// even with several targets' standard libraries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Bytes of file content, all files together (the manifest included).
    pub max_unpacked_size: u64,
    /// Archive entries of any kind: files, directories, links.
    pub max_entries: usize,
    /// Bytes in one entry's path or link target. Linux's `PATH_MAX`; a
    /// longer path could not be opened anyway, and the checks on an entry
    /// walk its ancestors, so a deep path would cost time per entry.
    pub max_path_len: usize,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_unpacked_size: 8 << 30,
            max_entries: 100_000,
            max_path_len: 4096,
        }
    }
}

impl UnpackLimits {
    /// Checks what a manifest announces, before anything is unpacked or any
    /// room is made for it. The unpack itself checks the archive against
    /// the manifest and these limits again, entry by entry.
    pub fn check_manifest(&self, manifest: &BundleManifest) -> Result<(), PackError> {
        // The manifest is an entry too.
        bound(
            "number of entries",
            manifest.files.len() as u64 + 1,
            self.max_entries as u64,
        )?;
        bound(
            "unpacked size",
            manifest.total_size(),
            self.max_unpacked_size,
        )?;
        for f in &manifest.files {
            bound("path length", f.path.len() as u64, self.max_path_len as u64)?;
        }
        Ok(())
    }
}

fn bound(what: &'static str, got: u64, limit: u64) -> Result<(), PackError> {
    if got > limit {
        Err(PackError::TooLarge { what, got, limit })
    } else {
        Ok(())
    }
}

/// Unpacks a compressed bundle read from `reader` into `dest`, which must not
/// exist yet. The content goes into a temporary sibling directory first and
/// is renamed into place only once the BLAKE3 of the uncompressed tar stream
/// equals `expected`, every entry passed the path checks and every file
/// matched its manifest line, so a mismatch or a malformed archive leaves
/// nothing at `dest`.
pub fn unpack(
    reader: impl Read,
    dest: &Path,
    expected: ToolchainId,
) -> Result<BundleManifest, PackError> {
    unpack_with_limits(reader, dest, expected, &UnpackLimits::default())
}

/// [`unpack`] within `limits` rather than the default ones.
pub fn unpack_with_limits(
    reader: impl Read,
    dest: &Path,
    expected: ToolchainId,
    limits: &UnpackLimits,
) -> Result<BundleManifest, PackError> {
    if fs::symlink_metadata(dest).is_ok() {
        return Err(PackError::DestinationExists(dest.to_owned()));
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(parent).map_err(PackError::io(parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(".distcc-rs-unpack-")
        .tempdir_in(parent)
        .map_err(PackError::io(parent))?;
    let (manifest, _) = scan(reader, Some(expected), Some(tmp.path()), limits)?;
    // tempfile creates the directory as 0o700; the sandbox may run rustc
    // under another uid that needs to read it.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))
        .map_err(PackError::io(tmp.path()))?;
    // Renaming a directory onto an empty directory succeeds on Linux, so
    // check again for a destination that appeared while we were unpacking.
    if fs::symlink_metadata(dest).is_ok() {
        return Err(PackError::DestinationExists(dest.to_owned()));
    }
    fs::rename(tmp.path(), dest).map_err(PackError::io(dest))?;
    // The directory now lives at `dest`; stop the guard from deleting it.
    let _ = tmp.keep();
    Ok(manifest)
}

/// The outcome of [`verify_contents`].
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The bundle's id: the expected one, which it matched, or the computed
    /// one when none was expected.
    pub id: ToolchainId,
    pub manifest: BundleManifest,
    /// Size of the bundle file.
    pub compressed_size: u64,
    /// Files checked against the manifest (every file the bundle holds).
    pub files: usize,
    /// Their total size, uncompressed.
    pub bytes: u64,
}

/// Checks a compressed bundle file without writing anything: its content
/// hash against `expected` (when given; otherwise the hash is computed and
/// returned), its manifest, its entry paths, and every file against the size,
/// mode and digest its manifest lists. The error names the file at fault
/// when there is one.
pub fn verify_contents(path: &Path, expected: Option<ToolchainId>) -> Result<Verified, PackError> {
    let file = File::open(path).map_err(PackError::io(path))?;
    let compressed_size = file.metadata().map_err(PackError::io(path))?.len();
    let (manifest, id) = scan(file, expected, None, &UnpackLimits::default())?;
    Ok(Verified {
        id,
        compressed_size,
        files: manifest.files.len(),
        bytes: manifest.total_size(),
        manifest,
    })
}

/// Checks a compressed bundle file's content hash, manifest, entry paths and
/// file contents without writing anything.
pub fn verify_file(path: &Path, expected: ToolchainId) -> Result<BundleManifest, PackError> {
    let file = File::open(path).map_err(PackError::io(path))?;
    scan(file, Some(expected), None, &UnpackLimits::default()).map(|(manifest, _)| manifest)
}

/// Checks a compressed bundle file's manifest and entry paths and computes
/// its id, for a file whose expected id is unknown (it is not named by it).
pub fn identify_file(path: &Path) -> Result<(BundleManifest, ToolchainId), PackError> {
    let file = File::open(path).map_err(PackError::io(path))?;
    scan(file, None, None, &UnpackLimits::default())
}

/// What an entry was, for the checks on the entries after it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Dir,
    File(u64),
    Link,
}

/// Streams a bundle: reads the manifest, checks every entry, unpacks it under
/// `root` when one is given, and finally compares the stream hash with
/// `expected` when one is given. Returns the manifest and the actual id.
/// Refuses a bundle past `limits` as soon as its manifest or its entries
/// show it, before writing the entry that goes over.
fn scan(
    reader: impl Read,
    expected: Option<ToolchainId>,
    root: Option<&Path>,
    limits: &UnpackLimits,
) -> Result<(BundleManifest, ToolchainId), PackError> {
    let decoder =
        zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(1 << 20, reader))
            .map_err(PackError::Stream)?;
    let mut archive = tar::Archive::new(HashingReader::new(decoder));
    archive.set_preserve_mtime(false);
    archive.set_preserve_permissions(false);
    archive.set_overwrite(false);
    archive.set_unpack_xattrs(false);

    let mut seen: BTreeMap<PathBuf, Kind> = BTreeMap::new();
    let manifest = {
        let mut entries = archive.entries().map_err(PackError::Stream)?;
        let first = entries
            .next()
            .ok_or_else(|| PackError::Malformed("the archive is empty".into()))?
            .map_err(PackError::Stream)?;
        let manifest = read_manifest(first, root)?;
        limits.check_manifest(&manifest)?;
        seen.insert(PathBuf::from(BUNDLE_MANIFEST_PATH), Kind::File(0));
        // Counted as entries arrive, whatever the manifest said; the
        // manifest's own bytes are bounded by MAX_MANIFEST_BYTES.
        let mut unpacked = 0u64;
        let listed: BTreeMap<&Path, &BundleFile> = manifest
            .files
            .iter()
            .map(|f| (Path::new(f.path.as_str()), f))
            .collect();
        let mut buf = vec![0u8; 256 << 10];
        let mut previous = PathBuf::from(BUNDLE_MANIFEST_PATH);
        for entry in entries {
            let mut entry = entry.map_err(|source| PackError::EntryStream {
                entry: format!("the entry after {}", previous.display()),
                source,
            })?;
            bound(
                "number of entries",
                seen.len() as u64 + 1,
                limits.max_entries as u64,
            )?;
            let path = check_entry(&entry, &mut seen, limits)?;
            match seen[&path] {
                Kind::File(size) => {
                    let file = listed.get(path.as_path()).copied();
                    check_file_header(&path, size, &entry, file)?;
                    unpacked = unpacked.saturating_add(size);
                    bound("unpacked size", unpacked, limits.max_unpacked_size)?;
                    let digest = copy_file(&mut entry, &path, root, &mut buf)?;
                    if let Some(file) = file
                        && file.digest != digest
                    {
                        return Err(PackError::FileMismatch {
                            path: file.path.clone(),
                            expected: file.digest,
                            actual: digest,
                        });
                    }
                }
                Kind::Dir => {
                    if let Some(root) = root {
                        let target = root.join(&path);
                        fs::create_dir_all(&target).map_err(PackError::io(&target))?;
                        fs::set_permissions(&target, fs::Permissions::from_mode(0o755))
                            .map_err(PackError::io(&target))?;
                    }
                }
                Kind::Link => {
                    if let Some(root) = root {
                        let target = root.join(&path);
                        let inside = entry.unpack_in(root).map_err(PackError::io(&target))?;
                        // Our own checks are stricter than the tar crate's,
                        // so it skipping an entry means the two disagree.
                        if !inside {
                            return Err(PackError::UnsafePath(path.display().to_string()));
                        }
                    }
                }
            }
            previous = path;
        }
        manifest
    };
    let (digest, _) = archive
        .into_inner()
        .drain_and_finish()
        .map_err(PackError::Stream)?;
    let actual = ToolchainId(digest);
    if let Some(expected) = expected
        && expected != actual
    {
        return Err(PackError::HashMismatch { expected, actual });
    }
    check_listing(&manifest, &seen)?;
    Ok((manifest, actual))
}

/// Checks a regular file's header against its manifest line before its
/// content is read, so a file the manifest does not list, or whose size or
/// mode disagrees, is reported by name and never written.
fn check_file_header<R: Read>(
    path: &Path,
    size: u64,
    entry: &tar::Entry<'_, R>,
    listed: Option<&BundleFile>,
) -> Result<(), PackError> {
    // A file the manifest does not list is refused before its content is
    // read: its size is bounded by nothing else, and a few MiB of zstd can
    // stand for terabytes of zeros written under the unpack directory.
    // Listed files the archive lacks are reported once the whole archive is
    // read (`check_listing`).
    let Some(listed) = listed else {
        return Err(PackError::Malformed(format!(
            "{} is in the archive but not in the manifest",
            path.display()
        )));
    };
    if size != listed.size {
        return Err(PackError::Malformed(format!(
            "{} has {size} bytes, the manifest says {}",
            path.display(),
            listed.size
        )));
    }
    if is_executable(entry) != listed.executable {
        return Err(PackError::Malformed(format!(
            "{} is {}executable, the manifest says otherwise",
            path.display(),
            if listed.executable { "not " } else { "" }
        )));
    }
    Ok(())
}

fn is_executable<R: Read>(entry: &tar::Entry<'_, R>) -> bool {
    entry.header().mode().is_ok_and(|m| m & 0o111 != 0)
}

/// Reads a regular file's content from the archive, writing it under `root`
/// when one is given, and returns its BLAKE3 digest. The file is written by
/// hand rather than by the tar crate so that its content is hashed on the
/// way, and its mode is normalised to 0o755 or 0o644 whatever the header
/// says (and whatever the umask), so the sandbox's user can read it and
/// nobody else can write it.
fn copy_file<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    path: &Path,
    root: Option<&Path>,
    buf: &mut [u8],
) -> Result<Digest, PackError> {
    let mut out = match root {
        Some(root) => {
            let target = root.join(path);
            if let Some(parent) = target.parent() {
                // Safe: `check_entry` refused any entry beneath a link or a
                // file, so every existing ancestor is a real directory that
                // this unpack created.
                fs::create_dir_all(parent).map_err(PackError::io(parent))?;
            }
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&target)
                .map_err(PackError::io(&target))?;
            Some((file, target))
        }
        None => None,
    };
    let mut hasher = blake3::Hasher::new();
    loop {
        let n = entry.read(buf).map_err(|source| PackError::EntryStream {
            entry: path.display().to_string(),
            source,
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some((file, target)) = &mut out {
            file.write_all(&buf[..n]).map_err(PackError::io(&*target))?;
        }
    }
    if let Some((file, target)) = out {
        let mode = if is_executable(entry) { 0o755 } else { 0o644 };
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(PackError::io(&target))?;
    }
    Ok(digest_of(&hasher))
}

/// Reads and parses the first entry, which must be the manifest, and writes
/// it under `root` so a node can read it back later.
fn read_manifest<R: Read>(
    mut entry: tar::Entry<'_, R>,
    root: Option<&Path>,
) -> Result<BundleManifest, PackError> {
    let path = entry.path().map_err(PackError::Stream)?.into_owned();
    if path != Path::new(BUNDLE_MANIFEST_PATH) || !entry.header().entry_type().is_file() {
        return Err(PackError::Malformed(format!(
            "first entry is {}, not the manifest {BUNDLE_MANIFEST_PATH}",
            path.display()
        )));
    }
    if entry.size() > MAX_MANIFEST_BYTES {
        return Err(PackError::Malformed(format!(
            "manifest of {} bytes is implausibly large",
            entry.size()
        )));
    }
    let mut json = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut json).map_err(PackError::Stream)?;
    let manifest = BundleManifest::from_json(&json)?;
    if let Some(root) = root {
        let out = root.join(BUNDLE_MANIFEST_PATH);
        fs::write(&out, &json).map_err(PackError::io(&out))?;
        fs::set_permissions(&out, fs::Permissions::from_mode(0o644))
            .map_err(PackError::io(&out))?;
    }
    Ok(manifest)
}

/// Decides whether an entry may be unpacked and records it. The rules are
/// simple enough to be obviously sufficient:
/// * paths are relative and made of normal components only;
/// * no path appears twice, so nothing is replaced after it was checked;
/// * no entry lies beneath a symlink or a file, so writes never traverse links;
/// * symlink targets are relative and contain no `..`, so every link points
///   downwards from a real directory inside the bundle and cannot escape,
///   however links chain;
/// * hard links name a regular file unpacked earlier.
///
/// Bundles written by this crate contain no links at all.
fn check_entry<R: Read>(
    entry: &tar::Entry<'_, R>,
    seen: &mut BTreeMap<PathBuf, Kind>,
    limits: &UnpackLimits,
) -> Result<PathBuf, PackError> {
    let path = entry.path().map_err(PackError::Stream)?.into_owned();
    let max_path_len = limits.max_path_len as u64;
    bound("path length", path.as_os_str().len() as u64, max_path_len)?;
    let shown = || path.display().to_string();
    if !is_plain_relative(&path) {
        return Err(PackError::UnsafePath(shown()));
    }
    if seen.contains_key(&path) {
        return Err(PackError::UnsafePath(format!("{} appears twice", shown())));
    }
    for ancestor in path.ancestors().skip(1) {
        if let Some(kind) = seen.get(ancestor)
            && *kind != Kind::Dir
        {
            return Err(PackError::UnsafePath(format!(
                "{} lies beneath the non-directory {}",
                shown(),
                ancestor.display()
            )));
        }
    }
    let header = entry.header();
    let kind_type = header.entry_type();
    let kind = if kind_type.is_dir() {
        Kind::Dir
    } else if kind_type.is_file() {
        Kind::File(entry.size())
    } else if kind_type.is_symlink() || kind_type.is_hard_link() {
        let target = entry
            .link_name()
            .map_err(PackError::Stream)?
            .ok_or_else(|| PackError::Malformed(format!("link {} has no target", shown())))?
            .into_owned();
        bound("path length", target.as_os_str().len() as u64, max_path_len)?;
        let bad_target = || PackError::UnsafePath(format!("{} -> {}", shown(), target.display()));
        if !is_plain_relative(&target) {
            return Err(bad_target());
        }
        if kind_type.is_hard_link() && !matches!(seen.get(&target), Some(Kind::File(_))) {
            return Err(bad_target());
        }
        Kind::Link
    } else {
        return Err(PackError::Malformed(format!(
            "{} has unsupported entry type {:?}",
            shown(),
            kind_type
        )));
    };
    seen.insert(path.clone(), kind);
    Ok(path)
}

fn is_plain_relative(path: &Path) -> bool {
    path.components().next().is_some()
        && path.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Checks that the regular files in the archive are exactly those the
/// manifest lists, with the listed sizes, so a node can trust the manifest
/// as a description of what it unpacked.
fn check_listing(
    manifest: &BundleManifest,
    seen: &BTreeMap<PathBuf, Kind>,
) -> Result<(), PackError> {
    let mut files: BTreeMap<&Path, u64> = seen
        .iter()
        .filter_map(|(p, k)| match k {
            Kind::File(size) => Some((p.as_path(), *size)),
            _ => None,
        })
        .collect();
    files.remove(Path::new(BUNDLE_MANIFEST_PATH));
    for listed in &manifest.files {
        match files.remove(Path::new(&listed.path)) {
            Some(size) if size == listed.size => {}
            Some(size) => {
                return Err(PackError::Malformed(format!(
                    "{} has {size} bytes, the manifest says {}",
                    listed.path, listed.size
                )));
            }
            None => {
                return Err(PackError::Malformed(format!(
                    "manifest lists {} but the archive lacks it",
                    listed.path
                )));
            }
        }
    }
    if let Some(extra) = files.keys().next() {
        return Err(PackError::Malformed(format!(
            "{} is in the archive but not in the manifest",
            extra.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{PackOptions, create, header};
    use crate::manifest::{BUNDLE_FORMAT, BundleFile};
    use crate::toolchain::tests::fake_sysroot;
    use distcc_rs_proto::Digest;
    use std::io::Write;

    fn fake_bundle(dir: &Path) -> crate::Bundle {
        let info = fake_sysroot(&dir.join("sysroot"));
        create(&info, &PackOptions::default(), &dir.join("out")).unwrap()
    }

    #[test]
    fn unpack_restores_files_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = fake_bundle(dir.path());
        let dest = dir.path().join("nodes/toolchain");
        let manifest = unpack(File::open(&bundle.path).unwrap(), &dest, bundle.id).unwrap();
        assert_eq!(manifest, bundle.manifest);
        for f in &manifest.files {
            let p = dest.join(&f.path);
            let content = fs::read(&p).unwrap();
            assert_eq!(content.len() as u64, f.size);
            assert_eq!(Digest(*blake3::hash(&content).as_bytes()), f.digest);
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, if f.executable { 0o755 } else { 0o644 }, "{}", f.path);
        }
        let stored = fs::read(dest.join(BUNDLE_MANIFEST_PATH)).unwrap();
        assert_eq!(BundleManifest::from_json(&stored).unwrap(), manifest);
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(verify_file(&bundle.path, bundle.id).unwrap(), manifest);
        assert_eq!(
            identify_file(&bundle.path).unwrap(),
            (manifest.clone(), bundle.id)
        );

        // A second unpack into the same place is refused, not merged.
        let again = unpack(File::open(&bundle.path).unwrap(), &dest, bundle.id);
        assert!(matches!(again, Err(PackError::DestinationExists(_))));
        assert_no_leftovers(dest.parent().unwrap(), 1);
    }

    /// Asserts that `dir` holds exactly `expected` entries, i.e. no temporary
    /// unpack directories were left behind.
    fn assert_no_leftovers(dir: &Path, expected: usize) {
        let names: Vec<_> = fs::read_dir(dir)
            .map(|rd| rd.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert_eq!(names.len(), expected, "{names:?}");
    }

    #[test]
    fn corrupt_stream_or_wrong_id_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = fake_bundle(dir.path());
        let good = fs::read(&bundle.path).unwrap();
        let nodes = dir.path().join("nodes");
        fs::create_dir(&nodes).unwrap();
        let dest = nodes.join("tc");

        // Flip one byte in the compressed blocks and in the trailing
        // checksum. (Not in the frame header: a flipped window-size bit can
        // still decode to the same content, which is then rightly accepted.)
        for at in [good.len() / 3, good.len() / 2, good.len() - 2] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            let err = unpack(&bad[..], &dest, bundle.id).unwrap_err();
            assert!(!dest.exists(), "flip at {at} left {dest:?}: {err}");
            assert!(verify_file_bytes(&bad, bundle.id).is_err(), "flip at {at}");
        }

        let wrong = ToolchainId(Digest([0xab; 32]));
        let err = unpack(&good[..], &dest, wrong).unwrap_err();
        match err {
            PackError::HashMismatch { expected, actual } => {
                assert_eq!(expected, wrong);
                assert_eq!(actual, bundle.id);
            }
            other => panic!("expected a hash mismatch, got {other}"),
        }
        assert!(!dest.exists());
        assert!(matches!(
            verify_file(&bundle.path, wrong),
            Err(PackError::HashMismatch { .. })
        ));

        // Trailing garbage after the zstd frame is not silently ignored.
        let mut longer = good.clone();
        longer.extend_from_slice(b"garbage");
        assert!(unpack(&longer[..], &dest, bundle.id).is_err());
        assert_no_leftovers(&nodes, 0);
    }

    /// Pseudo-random bytes (xorshift), which zstd cannot compress and so
    /// stores verbatim: a run of them can be found, and a byte flipped, in
    /// the compressed stream.
    fn noise(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    const NOISE_FILE: &str = "lib/rustlib/x86_64-unknown-linux-gnu/lib/libnoise-1.rlib";

    #[test]
    fn flipped_byte_in_the_compressed_stream_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let info = fake_sysroot(&dir.path().join("sysroot"));
        let content = noise(64 << 10);
        fs::write(info.sysroot.join(NOISE_FILE), &content).unwrap();
        let bundle = create(&info, &PackOptions::default(), &dir.path().join("out")).unwrap();

        let good = verify_contents(&bundle.path, Some(bundle.id)).unwrap();
        assert_eq!(good.id, bundle.id);
        assert_eq!(good.manifest, bundle.manifest);
        assert_eq!(good.files, 8);
        assert_eq!(good.bytes, bundle.manifest.total_size());
        assert_eq!(good.compressed_size, bundle.compressed_size);
        assert_eq!(verify_contents(&bundle.path, None).unwrap(), good);

        // Flip one bit inside the noise where it sits in the compressed
        // stream. The frame checksum would only catch it at the very end;
        // the file's digest catches it first, by name.
        let mut bytes = fs::read(&bundle.path).unwrap();
        let window = &content[30_000..30_032];
        let at = bytes
            .windows(window.len())
            .position(|w| w == window)
            .expect("random content is stored verbatim");
        bytes[at + 16] ^= 0x01;
        let copy = dir
            .path()
            .join("copy")
            .join(format!("{}.tar.zst", bundle.id));
        fs::create_dir(copy.parent().unwrap()).unwrap();
        fs::write(&copy, &bytes).unwrap();
        for expected in [Some(bundle.id), None] {
            match verify_contents(&copy, expected) {
                Err(PackError::FileMismatch { path, expected, .. }) => {
                    assert_eq!(path, NOISE_FILE);
                    assert_eq!(expected, Digest(*blake3::hash(&content).as_bytes()));
                }
                other => panic!("expected a mismatch naming {NOISE_FILE}, got {other:?}"),
            }
        }
        let dest = dir.path().join("nodes/tc");
        let err = unpack(&bytes[..], &dest, bundle.id).unwrap_err();
        assert!(err.to_string().contains(NOISE_FILE), "{err}");
        assert!(!dest.exists());
    }

    /// Rewrites a bundle entry by entry, letting `edit` change any entry's
    /// header or content (sizes are fixed up), and returns the new
    /// compressed bundle and its true id: a bundle whose hash is right but
    /// whose content disagrees with its (unchanged) manifest.
    fn rewrite(
        bundle: &Path,
        mut edit: impl FnMut(&str, &mut tar::Header, &mut Vec<u8>),
    ) -> (Vec<u8>, ToolchainId) {
        let raw = zstd::decode_all(File::open(bundle).unwrap()).unwrap();
        let mut archive = tar::Archive::new(&raw[..]);
        let mut out = tar::Builder::new(Vec::new());
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_str().unwrap().to_owned();
            let mut header = entry.header().clone();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            edit(&path, &mut header, &mut data);
            header.set_size(data.len() as u64);
            header.set_cksum();
            out.append(&header, &data[..]).unwrap();
        }
        let raw = out.into_inner().unwrap();
        let id = ToolchainId(Digest(*blake3::hash(&raw).as_bytes()));
        (zstd::encode_all(&raw[..], 3).unwrap(), id)
    }

    #[test]
    fn file_that_disagrees_with_the_manifest_is_named_despite_a_matching_id() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = fake_bundle(dir.path());
        let driver = "lib/librustc_driver-0123.so";
        let listed = bundle
            .manifest
            .files
            .iter()
            .find(|f| f.path == driver)
            .unwrap()
            .clone();
        let dest = dir.path().join("nodes/tc");

        // The repacking itself changes nothing: the same bytes verify.
        let (same, same_id) = rewrite(&bundle.path, |_, _, _| {});
        assert_eq!(same_id, bundle.id);
        assert_eq!(
            scan(&same[..], Some(bundle.id), None, &UnpackLimits::default())
                .unwrap()
                .0,
            bundle.manifest
        );

        // One flipped byte inside the driver, same size, same manifest.
        let (bytes, id) = rewrite(&bundle.path, |path, _, data| {
            if path == driver {
                data[100] ^= 0x20;
            }
        });
        assert_ne!(id, bundle.id);
        let copy = dir.path().join(format!("{id}.tar.zst"));
        fs::write(&copy, &bytes).unwrap();
        let err = verify_contents(&copy, Some(id)).unwrap_err();
        match &err {
            PackError::FileMismatch {
                path,
                expected,
                actual,
            } => {
                assert_eq!(path, driver);
                assert_eq!(*expected, listed.digest);
                assert_ne!(actual, expected);
            }
            other => panic!("expected a mismatch naming the driver, got {other}"),
        }
        assert!(err.to_string().starts_with(driver), "{err}");
        assert!(matches!(
            unpack(&bytes[..], &dest, id),
            Err(PackError::FileMismatch { .. })
        ));
        assert!(!dest.exists());

        // A longer file, or one whose executable bit disagrees, is named too.
        let (bytes, id) = rewrite(&bundle.path, |path, _, data| {
            if path == driver {
                data.push(0);
            }
        });
        let err = scan(&bytes[..], Some(id), None, &UnpackLimits::default()).unwrap_err();
        assert!(
            matches!(&err, PackError::Malformed(m) if m.contains(driver) && m.contains("bytes")),
            "{err}"
        );
        let (bytes, id) = rewrite(&bundle.path, |path, header, _| {
            if path == "bin/rustc" {
                header.set_mode(0o644);
            }
        });
        let err = scan(&bytes[..], Some(id), None, &UnpackLimits::default()).unwrap_err();
        assert!(
            matches!(&err, PackError::Malformed(m) if m.contains("bin/rustc") && m.contains("executable")),
            "{err}"
        );
        assert_no_leftovers(&dir.path().join("nodes"), 0);
    }

    fn verify_file_bytes(bytes: &[u8], id: ToolchainId) -> Result<BundleManifest, PackError> {
        scan(bytes, Some(id), None, &UnpackLimits::default()).map(|(manifest, _)| manifest)
    }

    /// A hostile entry as raw header fields; the tar crate's safe setters
    /// refuse `..` and absolute paths, so the name is written by hand.
    enum Hostile<'a> {
        File(&'a str),
        Symlink(&'a str, &'a str),
        HardLink(&'a str, &'a str),
        Dir(&'a str),
        Fifo(&'a str),
        /// A regular file of this many zero bytes.
        Zeros(&'a str, usize),
    }

    /// Builds a zstd tar with a valid manifest followed by `entries`, and
    /// returns it with its true id, so only the path checks can reject it.
    fn hostile_bundle(entries: &[Hostile<'_>]) -> (Vec<u8>, ToolchainId) {
        let manifest = BundleManifest {
            format: BUNDLE_FORMAT,
            rustc_version: "rustc 0.0.0\n".into(),
            host: "x86_64-unknown-linux-gnu".into(),
            rustc: "bin/rustc".into(),
            interpreter: String::new(),
            library_path: vec!["lib".into()],
            files: vec![BundleFile {
                path: "bin/rustc".into(),
                size: 2,
                digest: Digest(*blake3::hash(b"#!").as_bytes()),
                executable: true,
            }],
        };
        let mut tar = tar::Builder::new(Vec::new());
        let json = manifest.to_json();
        let mut h = header(tar::EntryType::Regular, json.len() as u64, false);
        tar.append_data(&mut h, BUNDLE_MANIFEST_PATH, &json[..])
            .unwrap();
        let mut h = header(tar::EntryType::Regular, 2, true);
        tar.append_data(&mut h, "bin/rustc", &b"#!"[..]).unwrap();
        for e in entries {
            let (kind, name, link, data): (_, &str, Option<&str>, Vec<u8>) = match e {
                Hostile::File(name) => (tar::EntryType::Regular, name, None, b"pwned".into()),
                Hostile::Symlink(name, to) => (tar::EntryType::Symlink, name, Some(to), vec![]),
                Hostile::HardLink(name, to) => (tar::EntryType::Link, name, Some(to), vec![]),
                Hostile::Dir(name) => (tar::EntryType::Directory, name, None, vec![]),
                Hostile::Fifo(name) => (tar::EntryType::Fifo, name, None, vec![]),
                Hostile::Zeros(name, len) => (tar::EntryType::Regular, name, None, vec![0; *len]),
            };
            let mut h = header(kind, data.len() as u64, false);
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(to) = link {
                h.as_old_mut().linkname[..to.len()].copy_from_slice(to.as_bytes());
            }
            h.set_cksum();
            tar.append(&h, &data[..]).unwrap();
        }
        let raw = tar.into_inner().unwrap();
        let id = ToolchainId(Digest(*blake3::hash(&raw).as_bytes()));
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.write_all(&raw).unwrap();
        (enc.finish().unwrap(), id)
    }

    #[test]
    fn hostile_paths_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = dir.path().join("nodes");
        let dest = nodes.join("tc");

        // The harness itself must produce acceptable bundles.
        let (ok, ok_id) = hostile_bundle(&[Hostile::Symlink("lib/alias", "real/file")]);
        unpack(&ok[..], &dest, ok_id).unwrap();
        fs::remove_dir_all(&dest).unwrap();

        let cases: Vec<Vec<Hostile<'_>>> = vec![
            vec![Hostile::File("../escaped")],
            vec![Hostile::File("lib/../../escaped")],
            vec![Hostile::File("/tmp/distcc-rs-pack-abs-escape")],
            vec![Hostile::Symlink("lib/evil", "/etc")],
            vec![Hostile::Symlink("lib/evil", "../../..")],
            vec![Hostile::Symlink("up", "a/../..")],
            vec![
                Hostile::Symlink("lib/evil", "sub"),
                Hostile::File("lib/evil/through-link"),
            ],
            vec![Hostile::HardLink("lib/hard", "/etc/passwd")],
            vec![Hostile::HardLink("lib/hard", "../outside")],
            vec![Hostile::File("bin/rustc")],
        ];
        for entries in &cases {
            let (bytes, id) = hostile_bundle(entries);
            let err = unpack(&bytes[..], &dest, id).unwrap_err();
            assert!(matches!(err, PackError::UnsafePath(_)), "{err}");
            assert!(!dest.exists());
            assert!(matches!(
                scan(&bytes[..], Some(id), None, &UnpackLimits::default()),
                Err(PackError::UnsafePath(_))
            ));
        }
        assert_no_leftovers(&nodes, 0);
        assert!(!dir.path().join("escaped").exists());
        assert!(!Path::new("/tmp/distcc-rs-pack-abs-escape").exists());
    }

    /// Every path under `dir` but `skip`, with each file's content and each
    /// symlink's target, to show that an unpack changed nothing there.
    fn snapshot(dir: &Path, skip: &Path) -> Vec<(PathBuf, String)> {
        let mut all = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(d) = pending.pop() {
            for entry in fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path == skip {
                    continue;
                }
                let meta = fs::symlink_metadata(&path).unwrap();
                let what = if meta.is_dir() {
                    pending.push(path.clone());
                    "dir".to_owned()
                } else if meta.is_symlink() {
                    format!("-> {}", fs::read_link(&path).unwrap().display())
                } else {
                    String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned()
                };
                all.push((path, what));
            }
        }
        all.sort();
        all
    }

    type Kind = fn(&PackError) -> bool;

    /// Each hostile entry is refused with an error that names it, and
    /// nothing beside the destination changes: not the directory the unpack
    /// works in, not a directory the entries aim at by absolute or relative
    /// paths, links or hard links.
    #[test]
    fn hostile_entries_are_refused_and_nothing_outside_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = dir.path().join("nodes");
        fs::create_dir(&nodes).unwrap();
        let dest = nodes.join("tc");
        let outside = dir.path().join("outside");
        fs::create_dir_all(outside.join("sub")).unwrap();
        fs::write(outside.join("secret"), b"keep me").unwrap();
        let before = snapshot(dir.path(), &nodes);

        let abs_dir = outside.to_str().unwrap().to_owned();
        let abs_new = format!("{abs_dir}/pwned");
        let abs_secret = format!("{abs_dir}/secret");
        let unsafe_path: Kind = |e| matches!(e, PackError::UnsafePath(_));
        let malformed: Kind = |e| matches!(e, PackError::Malformed(_));
        let cases: Vec<(Vec<Hostile<'_>>, Kind, &str)> = vec![
            // Paths that leave the destination by themselves.
            (vec![Hostile::File("../escaped")], unsafe_path, "../escaped"),
            (
                vec![Hostile::File("lib/../../escaped")],
                unsafe_path,
                "lib/../../escaped",
            ),
            (vec![Hostile::File(&abs_new)], unsafe_path, &abs_new),
            (vec![Hostile::File(&abs_secret)], unsafe_path, &abs_secret),
            (
                vec![Hostile::Dir("../outside/sub/new")],
                unsafe_path,
                "../outside",
            ),
            // Symlinks that point outside, absolutely or by climbing, with
            // and without an entry written through them.
            (
                vec![Hostile::Symlink("lib/evil", &abs_dir)],
                unsafe_path,
                "lib/evil",
            ),
            (
                vec![
                    Hostile::Symlink("lib/evil", &abs_dir),
                    Hostile::File("lib/evil/pwned"),
                ],
                unsafe_path,
                "lib/evil",
            ),
            (
                vec![Hostile::Symlink("lib/evil", "../../outside")],
                unsafe_path,
                "lib/evil",
            ),
            (vec![Hostile::Symlink("up", "a/../..")], unsafe_path, "up"),
            (
                vec![Hostile::Symlink("lib/empty", "")],
                malformed,
                "lib/empty",
            ),
            // A harmless symlink, then an entry through it.
            (
                vec![
                    Hostile::Symlink("lib/ok", "sub"),
                    Hostile::File("lib/ok/through-link"),
                ],
                unsafe_path,
                "lib/ok/through-link",
            ),
            (
                vec![Hostile::Symlink("lib/ok", "sub"), Hostile::Dir("lib/ok/d")],
                unsafe_path,
                "lib/ok/d",
            ),
            // Hard links to anything but a regular file unpacked earlier.
            (
                vec![Hostile::HardLink("lib/hard", &abs_secret)],
                unsafe_path,
                "lib/hard",
            ),
            (
                vec![Hostile::HardLink("lib/hard", "../../outside/secret")],
                unsafe_path,
                "lib/hard",
            ),
            (
                vec![Hostile::Dir("lib"), Hostile::HardLink("lib/hard", "lib")],
                unsafe_path,
                "lib/hard",
            ),
            (
                vec![
                    Hostile::Symlink("lib/s", "x"),
                    Hostile::HardLink("lib/hard", "lib/s"),
                ],
                unsafe_path,
                "lib/hard",
            ),
            (
                vec![
                    Hostile::HardLink("lib/hard", "lib/later"),
                    Hostile::File("lib/later"),
                ],
                unsafe_path,
                "lib/hard",
            ),
            // Entries that would replace or hide one already checked.
            (vec![Hostile::File("bin/rustc")], unsafe_path, "bin/rustc"),
            (vec![Hostile::Dir("bin/rustc")], unsafe_path, "bin/rustc"),
            (
                vec![Hostile::File("bin/rustc/x")],
                unsafe_path,
                "bin/rustc/x",
            ),
            // Entry kinds a toolchain never needs.
            (vec![Hostile::Fifo("lib/fifo")], malformed, "lib/fifo"),
            // A file the manifest does not list, however large.
            (
                vec![Hostile::Zeros("lib/unlisted", 32 << 20)],
                malformed,
                "lib/unlisted",
            ),
        ];
        for (i, (entries, kind, named)) in cases.iter().enumerate() {
            let (bytes, id) = hostile_bundle(entries);
            let err = unpack(&bytes[..], &dest, id).unwrap_err();
            assert!(kind(&err), "case {i}: wrong error {err:?}");
            assert!(
                err.to_string().contains(named),
                "case {i}: {err} names no {named}"
            );
            assert!(!dest.exists(), "case {i}");
            assert_no_leftovers(&nodes, 0);
            assert_eq!(snapshot(dir.path(), &nodes), before, "case {i}");
        }
    }

    /// An unlisted file is refused before a byte of it is written: its
    /// size is limited by nothing else, and zeros compress so well that a
    /// small bundle could fill the node's disk before the listing is
    /// checked at the end.
    #[test]
    fn an_unlisted_file_is_never_written() {
        let (bytes, id) = hostile_bundle(&[Hostile::Zeros("lib/unlisted", 8 << 20)]);
        assert!(bytes.len() < 64 << 10, "zeros compress: {}", bytes.len());
        let root = tempfile::tempdir().unwrap();
        let err = scan(
            &bytes[..],
            Some(id),
            Some(root.path()),
            &UnpackLimits::default(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, PackError::Malformed(m) if m.contains("lib/unlisted")),
            "{err}"
        );
        assert!(!root.path().join("lib/unlisted").exists());
    }

    #[test]
    fn an_oversized_manifest_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("tc");
        // Valid JSON padded with whitespace past the limit.
        let (good, _) = hostile_bundle(&[]);
        let raw = zstd::decode_all(&good[..]).unwrap();
        let mut first = tar::Archive::new(&raw[..]);
        let mut json = Vec::new();
        first
            .entries()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .read_to_end(&mut json)
            .unwrap();
        json.resize(MAX_MANIFEST_BYTES as usize + 1, b' ');
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Regular, json.len() as u64, false);
        tar.append_data(&mut h, BUNDLE_MANIFEST_PATH, &json[..])
            .unwrap();
        let raw = tar.into_inner().unwrap();
        let id = ToolchainId(Digest(*blake3::hash(&raw).as_bytes()));
        let bytes = zstd::encode_all(&raw[..], 3).unwrap();
        let err = unpack(&bytes[..], &dest, id).unwrap_err();
        assert!(
            matches!(&err, PackError::Malformed(m) if m.contains("implausibly large")),
            "{err}"
        );
        assert!(!dest.exists());
        assert_no_leftovers(dir.path(), 0);
    }

    /// Unpacks `bytes` under `limits` into a fresh directory and returns
    /// the error, checking that nothing was left behind.
    fn unpack_error(bytes: &[u8], id: ToolchainId, limits: UnpackLimits) -> PackError {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("tc");
        let err = unpack_with_limits(bytes, &dest, id, &limits).unwrap_err();
        assert!(!dest.exists(), "{err}");
        assert_no_leftovers(dir.path(), 0);
        err
    }

    #[test]
    fn the_default_unpack_limits_are_the_documented_ones() {
        let d = UnpackLimits::default();
        assert_eq!(d.max_unpacked_size, 8 << 30);
        assert_eq!(d.max_entries, 100_000);
        assert_eq!(d.max_path_len, 4096);
    }

    #[test]
    fn a_bundle_with_too_many_entries_is_refused() {
        // The manifest, bin/rustc, and two directories: four entries.
        let (bytes, id) = hostile_bundle(&[Hostile::Dir("lib/a"), Hostile::Dir("lib/b")]);
        let limits = UnpackLimits {
            max_entries: 4,
            ..UnpackLimits::default()
        };
        let dir = tempfile::tempdir().unwrap();
        unpack_with_limits(&bytes[..], &dir.path().join("tc"), id, &limits).unwrap();
        let err = unpack_error(
            &bytes,
            id,
            UnpackLimits {
                max_entries: 3,
                ..limits
            },
        );
        assert!(
            matches!(
                err,
                PackError::TooLarge {
                    what: "number of entries",
                    got: 4,
                    limit: 3
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "the bundle's number of entries exceeds the limit (4 > 3)"
        );
        // Directories and links count, not only the files the manifest
        // lists, so the manifest alone cannot tell.
        let (bytes, id) = hostile_bundle(&[Hostile::Symlink("lib/alias", "real/file")]);
        let err = unpack_error(
            &bytes,
            id,
            UnpackLimits {
                max_entries: 2,
                ..limits
            },
        );
        assert!(matches!(err, PackError::TooLarge { got: 3, .. }), "{err}");
    }

    #[test]
    fn a_bundle_that_unpacks_to_too_many_bytes_is_refused() {
        // bin/rustc has 2 bytes.
        let (bytes, id) = hostile_bundle(&[]);
        let limits = UnpackLimits {
            max_unpacked_size: 1,
            ..UnpackLimits::default()
        };
        let err = unpack_error(&bytes, id, limits);
        assert!(
            matches!(
                err,
                PackError::TooLarge {
                    what: "unpacked size",
                    got: 2,
                    limit: 1
                }
            ),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        unpack_with_limits(
            &bytes[..],
            &dir.path().join("tc"),
            id,
            &UnpackLimits {
                max_unpacked_size: 2,
                ..limits
            },
        )
        .unwrap();

        // A manifest announcing more than fits is refused from the manifest
        // alone, sizes that overflow included: a node checks it before it
        // makes room for the toolchain.
        let (good, _) = hostile_bundle(&[]);
        let manifest = unpack(&good[..], &dir.path().join("again"), id).unwrap();
        let mut huge = manifest.clone();
        huge.files[0].size = 8 << 30;
        huge.files.push(BundleFile {
            path: "lib/big".into(),
            size: u64::MAX,
            ..huge.files[0].clone()
        });
        let err = UnpackLimits::default().check_manifest(&huge).unwrap_err();
        assert!(
            matches!(
                err,
                PackError::TooLarge {
                    what: "unpacked size",
                    got: u64::MAX,
                    ..
                }
            ),
            "{err}"
        );
        UnpackLimits::default().check_manifest(&manifest).unwrap();
    }

    #[test]
    fn a_bundle_entry_with_too_long_a_path_is_refused() {
        let long = "lib/0123456789";
        let limits = UnpackLimits {
            max_path_len: long.len() - 1,
            ..UnpackLimits::default()
        };
        let (bytes, id) = hostile_bundle(&[Hostile::Dir(long)]);
        let err = unpack_error(&bytes, id, limits);
        assert!(
            matches!(err, PackError::TooLarge { what: "path length", got, .. } if got == long.len() as u64),
            "{err}"
        );
        let (bytes, id) = hostile_bundle(&[Hostile::Symlink("lib/x", long)]);
        let err = unpack_error(&bytes, id, limits);
        assert!(
            matches!(
                err,
                PackError::TooLarge {
                    what: "path length",
                    ..
                }
            ),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let fits = UnpackLimits {
            max_path_len: long.len(),
            ..limits
        };
        unpack_with_limits(&bytes[..], &dir.path().join("tc"), id, &fits).unwrap();
    }

    #[test]
    fn manifest_must_come_first_and_match_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("tc");

        let mut tar = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Regular, 2, true);
        tar.append_data(&mut h, "bin/rustc", &b"#!"[..]).unwrap();
        let raw = tar.into_inner().unwrap();
        let id = ToolchainId(Digest(*blake3::hash(&raw).as_bytes()));
        let bytes = zstd::encode_all(&raw[..], 3).unwrap();
        assert!(matches!(
            unpack(&bytes[..], &dest, id),
            Err(PackError::Malformed(_))
        ));

        // An extra regular file the manifest does not list.
        let (bytes, id) = hostile_bundle(&[Hostile::File("lib/unlisted")]);
        assert!(matches!(
            unpack(&bytes[..], &dest, id),
            Err(PackError::Malformed(_))
        ));
        assert!(!dest.exists());
    }
}
