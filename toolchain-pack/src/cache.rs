//! The client's bundle cache. Cargo starts dozens of wrapper processes at
//! once, and every one of them needs the bundle id of its rustc, so a hit
//! must cost a few stats and one small file read (not hashing 440 MiB), and a
//! miss must pack once no matter how many processes miss together.
//!
//! Layout under the cache directory:
//! * `index/<key>.json` maps a cache key to a bundle id (and its manifest);
//! * `bundles/<id>.tar.zst` are the bundles;
//! * `pack.lock` is locked exclusively by whoever packs.
//!
//! The key hashes the canonical sysroot path, the extra targets asked for,
//! and the size and mtime of `bin/rustc` and `lib/librustc_driver-*.so`:
//! every rustup update or reinstall replaces those files, so it changes the
//! key. The entry of the toolchain before the update is then never looked up
//! again; [`gc`] removes it and its bundle.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use distcc_rs_proto::ToolchainId;
use serde::{Deserialize, Serialize};

use crate::bundle::{self, Bundle, PackOptions};
use crate::error::PackError;
use crate::manifest::{BUNDLE_FORMAT, BundleManifest};
use crate::toolchain;

/// One index file: which bundle a cache key resolved to, and what the key
/// was computed from, so that [`gc`] can tell whether the key still names
/// an installed toolchain.
#[derive(Serialize, Deserialize)]
struct IndexEntry {
    id: ToolchainId,
    manifest: BundleManifest,
    /// Absent in entries written before `gc` existed.
    #[serde(default)]
    sysroot: Option<PathBuf>,
    #[serde(default)]
    targets: Vec<String>,
}

/// Returns the cached bundle for `rustc`, packing it on first use.
pub fn ensure_cached(
    cache_dir: &Path,
    rustc: &Path,
    opts: &PackOptions,
) -> Result<Bundle, PackError> {
    let sysroot = toolchain::locate_sysroot(rustc)?;
    let key = cache_key(&sysroot, &opts.targets)?;
    if let Some(bundle) = lookup(cache_dir, &key) {
        return Ok(bundle);
    }

    let index_dir = cache_dir.join("index");
    let bundles_dir = cache_dir.join("bundles");
    for dir in [&index_dir, &bundles_dir] {
        fs::create_dir_all(dir).map_err(PackError::io(dir))?;
    }
    let _lock = lock_cache(cache_dir)?;
    // Whoever held the lock before us may have packed this very toolchain.
    if let Some(bundle) = lookup(cache_dir, &key) {
        return Ok(bundle);
    }

    remove_stale_temporaries(&[&index_dir, &bundles_dir]);

    let info = toolchain::detect(rustc)?;
    if info.sysroot != sysroot {
        tracing::warn!(
            located = %sysroot.display(),
            reported = %info.sysroot.display(),
            "rustc reports a different sysroot than its location suggests; packing the reported one"
        );
    }
    let before = cache_key(&info.sysroot, &opts.targets)?;
    let bundle = bundle::create(&info, opts, &bundles_dir)?;
    // If the toolchain changed while we packed, the bundle may mix old and
    // new files under a key that names neither; do not remember it.
    if cache_key(&info.sysroot, &opts.targets)? == before {
        let entry = IndexEntry {
            id: bundle.id,
            manifest: bundle.manifest.clone(),
            sysroot: Some(info.sysroot.clone()),
            targets: normalized_targets(&opts.targets),
        };
        write_index(&index_dir, &before, &entry)?;
    } else {
        tracing::warn!("toolchain changed while packing; not caching the bundle");
    }
    Ok(bundle)
}

/// Takes the cache's pack lock, blocking until whoever holds it is done.
/// Packers hold it while they write bundles and index entries, and [`gc`]
/// while it removes them, so neither sees the other's half-done work.
fn lock_cache(cache_dir: &Path) -> Result<File, PackError> {
    let lock_path = cache_dir.join("pack.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(PackError::io(&lock_path))?;
    lock.lock().map_err(PackError::io(&lock_path))?;
    Ok(lock)
}

/// Whether a file name is one of the temporary files packers write and
/// rename: `.distcc-rs-pack-*.tmp` bundles and `.index-*.tmp` entries.
fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Deletes temporary files that a packer killed mid-write left behind (a
/// half-written bundle is 100+ MiB). Only called while holding the pack lock,
/// when no other process can be writing them.
fn remove_stale_temporaries(dirs: &[&Path]) {
    for dir in dirs {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if is_temporary(&entry.file_name().to_string_lossy()) {
                tracing::debug!(path = %entry.path().display(), "removing stale temporary file");
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// The extra targets as they enter the key and the index: sorted, once each.
fn normalized_targets(targets: &[String]) -> Vec<String> {
    let mut targets = targets.to_vec();
    targets.sort();
    targets.dedup();
    targets
}

/// The cache key for a sysroot and a set of extra targets, as hex.
fn cache_key(sysroot: &Path, targets: &[String]) -> Result<String, PackError> {
    let mut hasher = blake3::Hasher::new();
    // The format is part of the key so that a newer packer never serves a
    // bundle an older one wrote in a layout it no longer produces.
    hasher.update(format!("distcc-rs-pack cache v{BUNDLE_FORMAT}\0").as_bytes());
    hasher.update(sysroot.as_os_str().as_bytes());
    hasher.update(b"\0");
    // Only when there are any, so that host-only keys stay what they were
    // before extra targets existed and caches survive the upgrade.
    let targets = normalized_targets(targets);
    if !targets.is_empty() {
        hasher.update(b"targets\0");
        for target in &targets {
            hasher.update(target.as_bytes());
            hasher.update(b"\0");
        }
    }
    let mut stamped = vec![sysroot.join("bin/rustc")];
    stamped.extend(toolchain::driver_libraries(sysroot)?);
    for path in stamped {
        let meta = fs::metadata(&path).map_err(PackError::io(&path))?;
        hasher.update(path.as_os_str().as_bytes());
        hasher.update(b"\0");
        hasher.update(&meta.len().to_le_bytes());
        hasher.update(&meta.mtime().to_le_bytes());
        hasher.update(&meta.mtime_nsec().to_le_bytes());
    }
    Ok(hasher.finalize().to_hex().to_string())
}

fn index_path(cache_dir: &Path, key: &str) -> PathBuf {
    cache_dir.join("index").join(format!("{key}.json"))
}

/// Finds the bundle recorded for `key`. Any problem (no index file, an
/// unreadable one, a deleted bundle) is a miss: packing again repairs it.
fn lookup(cache_dir: &Path, key: &str) -> Option<Bundle> {
    let index = index_path(cache_dir, key);
    let bytes = match fs::read(&index) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::debug!(index = %index.display(), error = %e, "unreadable cache index");
            return None;
        }
    };
    let entry: IndexEntry = match serde_json::from_slice(&bytes) {
        Ok(entry) => entry,
        Err(e) => {
            tracing::debug!(index = %index.display(), error = %e, "corrupt cache index");
            return None;
        }
    };
    let path = cache_dir
        .join("bundles")
        .join(format!("{}.tar.zst", entry.id));
    let compressed_size = fs::metadata(&path).ok()?.len();
    Some(Bundle {
        id: entry.id,
        path,
        compressed_size,
        manifest: entry.manifest,
    })
}

/// Writes the index file atomically, so a concurrent reader sees either no
/// entry or a complete one.
fn write_index(index_dir: &Path, key: &str, entry: &IndexEntry) -> Result<(), PackError> {
    let json = serde_json::to_vec(entry).expect("an index entry always serializes to JSON");
    let tmp = tempfile::Builder::new()
        .prefix(".index-")
        .suffix(".tmp")
        .tempfile_in(index_dir)
        .map_err(PackError::io(index_dir))?;
    fs::write(tmp.path(), json).map_err(PackError::io(tmp.path()))?;
    let path = index_dir.join(format!("{key}.json"));
    tmp.persist(&path)
        .map_err(|e| PackError::io(&path)(e.error))?;
    Ok(())
}

/// The state of one index entry, as [`list_cache`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryState {
    /// The toolchain it was packed from is still installed, unchanged, and
    /// its bundle is present: the next compile with it hits this entry.
    Current,
    /// The sysroot no longer exists, or no longer holds a toolchain.
    ToolchainGone,
    /// The toolchain at the sysroot changed since it was packed (a
    /// `rustup update`), so this entry's key is never looked up again.
    ToolchainChanged,
    /// The bundle the entry names is not in the cache.
    BundleMissing,
    /// The entry cannot be read, or an older packer wrote it without the
    /// sysroot it belongs to, so nothing tells whether it is still current.
    Unusable(String),
}

impl fmt::Display for EntryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryState::Current => f.write_str("current"),
            EntryState::ToolchainGone => f.write_str("toolchain no longer installed"),
            EntryState::ToolchainChanged => f.write_str("toolchain changed since it was packed"),
            EntryState::BundleMissing => f.write_str("bundle missing"),
            EntryState::Unusable(why) => write!(f, "unusable entry: {why}"),
        }
    }
}

/// One index entry of the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheEntry {
    /// The index file, `index/<key>.json`.
    pub index: PathBuf,
    pub sysroot: Option<PathBuf>,
    /// The bundle it names; `None` when the entry is unreadable.
    pub id: Option<ToolchainId>,
    /// The first line of the toolchain's `rustc -vV`.
    pub version: Option<String>,
    /// The targets whose standard library the bundle holds.
    pub targets: Vec<String>,
    pub state: EntryState,
}

/// A file in the cache and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheFile {
    pub path: PathBuf,
    pub bytes: u64,
}

/// A bundle in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedBundle {
    pub id: ToolchainId,
    pub file: CacheFile,
    /// Whether a current index entry names it.
    pub in_use: bool,
}

/// Everything in a cache directory that the cache itself wrote.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CacheListing {
    pub entries: Vec<CacheEntry>,
    pub bundles: Vec<CachedBundle>,
    /// Temporary files a killed packer left behind.
    pub temporaries: Vec<CacheFile>,
}

/// Lists the cache under `cache_dir` (the directory [`ensure_cached`] is
/// given) and judges each entry, without changing anything. Files the cache
/// did not write are not listed.
pub fn list_cache(cache_dir: &Path) -> Result<CacheListing, PackError> {
    let mut listing = CacheListing::default();
    let index_dir = cache_dir.join("index");
    let bundles_dir = cache_dir.join("bundles");
    for (path, name, bytes) in files_in(&index_dir)? {
        if is_temporary(&name) {
            listing.temporaries.push(CacheFile { path, bytes });
        } else if let Some(key) = name.strip_suffix(".json") {
            let entry = judge_entry(&path, key, &bundles_dir);
            listing.entries.push(entry);
        }
    }
    for (path, name, bytes) in files_in(&bundles_dir)? {
        if is_temporary(&name) {
            listing.temporaries.push(CacheFile { path, bytes });
        } else if let Some(id) = name
            .strip_suffix(".tar.zst")
            .and_then(|hex| hex.parse::<ToolchainId>().ok())
        {
            let in_use = listing
                .entries
                .iter()
                .any(|e| e.state == EntryState::Current && e.id == Some(id));
            listing.bundles.push(CachedBundle {
                id,
                file: CacheFile { path, bytes },
                in_use,
            });
        }
    }
    Ok(listing)
}

/// The regular files directly in `dir` as (path, name, size), sorted by
/// name; none when `dir` does not exist.
fn files_in(dir: &Path) -> Result<Vec<(PathBuf, String, u64)>, PackError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(PackError::io(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(PackError::io(dir))?;
        let path = entry.path();
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let meta = entry.metadata().map_err(PackError::io(&path))?;
        if meta.is_file() {
            out.push((path, name, meta.len()));
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

fn judge_entry(index: &Path, key: &str, bundles_dir: &Path) -> CacheEntry {
    let mut judged = CacheEntry {
        index: index.to_owned(),
        sysroot: None,
        id: None,
        version: None,
        targets: Vec::new(),
        state: EntryState::Current,
    };
    let parsed = fs::read(index)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice::<IndexEntry>(&bytes).map_err(|e| e.to_string()));
    let entry = match parsed {
        Ok(entry) => entry,
        Err(why) => {
            judged.state = EntryState::Unusable(why);
            return judged;
        }
    };
    judged.id = Some(entry.id);
    judged.version = Some(entry.manifest.version_line().to_owned());
    judged.targets = entry
        .manifest
        .targets()
        .into_iter()
        .map(str::to_owned)
        .collect();
    judged.sysroot = entry.sysroot.clone();
    judged.state = match &entry.sysroot {
        None => EntryState::Unusable("written by an older packer, without its sysroot".into()),
        Some(sysroot) if !sysroot.is_dir() => EntryState::ToolchainGone,
        Some(sysroot) => match cache_key(sysroot, &entry.targets) {
            // The toolchain's files are not all there any more.
            Err(_) => EntryState::ToolchainGone,
            Ok(current) if current != key => EntryState::ToolchainChanged,
            Ok(_) if !bundles_dir.join(format!("{}.tar.zst", entry.id)).is_file() => {
                EntryState::BundleMissing
            }
            Ok(_) => EntryState::Current,
        },
    };
    judged
}

/// Why [`gc`] removed a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemovalReason {
    /// An index entry that is not current.
    Entry(EntryState),
    /// A bundle no current entry names.
    Unused,
    /// A temporary file a killed packer left behind.
    Temporary,
}

impl fmt::Display for RemovalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemovalReason::Entry(state) => write!(f, "index entry: {state}"),
            RemovalReason::Unused => f.write_str("bundle no current entry uses"),
            RemovalReason::Temporary => f.write_str("leftover temporary file"),
        }
    }
}

/// One file [`gc`] removed (or would remove, in a dry run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub file: CacheFile,
    pub reason: RemovalReason,
}

/// What [`gc`] did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GcReport {
    pub removed: Vec<Removal>,
    /// Bytes removed (or that would be, in a dry run).
    pub freed: u64,
    /// Current entries and the bundles they use, which stay.
    pub kept_entries: usize,
    pub kept_bundles: usize,
    pub kept_bytes: u64,
}

/// Cleans the cache under `cache_dir`: removes index entries that are not
/// current (toolchain gone or changed, bundle missing, unreadable), bundles
/// that no current entry names, and temporary files of killed packers. It
/// holds the pack lock throughout, so it never removes what a packer is
/// writing or has just written. With `dry_run` it only reports.
///
/// Nothing that is current is removed: which toolchain a developer will use
/// next is unknown, and a removed current bundle costs a repack at the next
/// compile.
pub fn gc(cache_dir: &Path, dry_run: bool) -> Result<GcReport, PackError> {
    if !cache_dir.is_dir() {
        return Ok(GcReport::default());
    }
    let _lock = lock_cache(cache_dir)?;
    let listing = list_cache(cache_dir)?;
    let mut report = GcReport::default();
    let mut remove = |file: &CacheFile, reason: RemovalReason| -> Result<(), PackError> {
        if !dry_run {
            match fs::remove_file(&file.path) {
                Ok(()) => {}
                // Someone else cleaned it up meanwhile; it is gone either way.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(PackError::io(&file.path)(e)),
            }
        }
        report.freed += file.bytes;
        report.removed.push(Removal {
            file: file.clone(),
            reason,
        });
        Ok(())
    };
    for entry in &listing.entries {
        if entry.state != EntryState::Current {
            let bytes = fs::metadata(&entry.index).map_or(0, |m| m.len());
            let file = CacheFile {
                path: entry.index.clone(),
                bytes,
            };
            remove(&file, RemovalReason::Entry(entry.state.clone()))?;
        }
    }
    for bundle in &listing.bundles {
        if !bundle.in_use {
            remove(&bundle.file, RemovalReason::Unused)?;
        }
    }
    for file in &listing.temporaries {
        remove(file, RemovalReason::Temporary)?;
    }
    report.kept_entries = listing
        .entries
        .iter()
        .filter(|e| e.state == EntryState::Current)
        .count();
    for bundle in listing.bundles.iter().filter(|b| b.in_use) {
        report.kept_bundles += 1;
        report.kept_bytes += bundle.file.bytes;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toolchain::tests::fake_sysroot;
    use distcc_rs_proto::Digest;
    use std::time::{Duration, SystemTime};

    fn dir_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn concurrent_misses_pack_once_and_hits_are_stable() {
        let dir = tempfile::tempdir().unwrap();
        let info = fake_sysroot(&dir.path().join("sysroot"));
        let cache = dir.path().join("cache");
        let opts = PackOptions::default();

        let ids: Vec<ToolchainId> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| ensure_cached(&cache, &info.rustc, &opts).unwrap().id))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
        assert_eq!(dir_names(&cache.join("bundles")).len(), 1);
        assert_eq!(dir_names(&cache.join("index")).len(), 1);

        let first = ensure_cached(&cache, &info.rustc, &opts).unwrap();
        let mtime = fs::metadata(&first.path).unwrap().modified().unwrap();
        let again = ensure_cached(&cache, &info.rustc, &opts).unwrap();
        assert_eq!(again, first);
        assert_eq!(
            fs::metadata(&again.path).unwrap().modified().unwrap(),
            mtime
        );

        // A changed driver is a new toolchain: new key, new bundle.
        let driver = info.sysroot.join("lib/librustc_driver-0123.so");
        fs::write(&driver, [9u8; 5001]).unwrap();
        let changed = ensure_cached(&cache, &info.rustc, &opts).unwrap();
        assert_ne!(changed.id, first.id);
        assert_eq!(dir_names(&cache.join("bundles")).len(), 2);

        // What a killed packer leaves behind is cleaned up by the next one.
        let stale = cache.join("bundles/.distcc-rs-pack-killed.tmp");
        fs::write(&stale, b"half a bundle").unwrap();

        // A deleted bundle is repacked rather than returned.
        fs::remove_file(&changed.path).unwrap();
        let repacked = ensure_cached(&cache, &info.rustc, &opts).unwrap();
        assert_eq!(repacked.id, changed.id);
        assert!(repacked.path.exists());
        assert!(!stale.exists());
    }

    /// Builds a cache holding one entry of each state, plus unused bundles,
    /// temporaries and a file the cache did not write.
    #[test]
    fn gc_removes_exactly_what_is_not_current() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let opts = PackOptions::default();
        let sysroot = |name: &str| fake_sysroot(&dir.path().join(name));

        // Current: packed and unchanged.
        let current = sysroot("current");
        let kept = ensure_cached(&cache, &current.rustc, &opts).unwrap();

        // Changed: packed, then its driver replaced. Its bundle is the same
        // as the current one's (same content), so it must stay.
        let changed = sysroot("changed");
        assert_eq!(
            ensure_cached(&cache, &changed.rustc, &opts).unwrap().id,
            kept.id
        );
        let driver = changed.sysroot.join("lib/librustc_driver-0123.so");
        let f = fs::File::options().write(true).open(&driver).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
            .unwrap();

        // Gone: packed (a bundle of its own), then uninstalled.
        let gone = sysroot("gone");
        fs::write(
            gone.sysroot
                .join("lib/rustlib/x86_64-unknown-linux-gnu/lib/extra.rlib"),
            b"x",
        )
        .unwrap();
        let gone_bundle = ensure_cached(&cache, &gone.rustc, &opts).unwrap();
        assert_ne!(gone_bundle.id, kept.id);
        fs::remove_dir_all(&gone.sysroot).unwrap();

        // Bundle missing: an entry for an installed toolchain whose bundle
        // was deleted by hand.
        let missing = sysroot("missing");
        let missing_key = cache_key(&missing.sysroot, &[]).unwrap();
        let entry = IndexEntry {
            id: ToolchainId(Digest([0x11; 32])),
            manifest: kept.manifest.clone(),
            sysroot: Some(missing.sysroot.clone()),
            targets: Vec::new(),
        };
        write_index(&cache.join("index"), &missing_key, &entry).unwrap();

        // Unusable: garbage, and an entry from before entries named their
        // sysroot.
        let index = cache.join("index");
        fs::write(index.join("garbage.json"), b"{ not json").unwrap();
        let legacy = serde_json::json!({ "id": kept.id, "manifest": kept.manifest });
        fs::write(index.join("legacy.json"), legacy.to_string()).unwrap();

        // An unused bundle, temporaries, and a file that is not ours.
        let bundles = cache.join("bundles");
        let unused = bundles.join(format!("{}.tar.zst", ToolchainId(Digest([0x22; 32]))));
        fs::write(&unused, [0u8; 1000]).unwrap();
        fs::write(bundles.join(".distcc-rs-pack-killed.tmp"), [0u8; 500]).unwrap();
        fs::write(index.join(".index-killed.tmp"), b"{").unwrap();
        fs::write(bundles.join("NOTES"), b"mine").unwrap();

        let listing = list_cache(&cache).unwrap();
        let mut states: Vec<(String, EntryState)> = listing
            .entries
            .iter()
            .map(|e| {
                let owner = e.sysroot.as_deref().map_or("-".to_owned(), |p| {
                    p.file_name().unwrap().to_string_lossy().into_owned()
                });
                let state = match &e.state {
                    EntryState::Unusable(_) => EntryState::Unusable(String::new()),
                    other => other.clone(),
                };
                (owner, state)
            })
            .collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            states,
            [
                ("-".to_owned(), EntryState::Unusable(String::new())),
                ("-".to_owned(), EntryState::Unusable(String::new())),
                ("changed".to_owned(), EntryState::ToolchainChanged),
                ("current".to_owned(), EntryState::Current),
                ("gone".to_owned(), EntryState::ToolchainGone),
                ("missing".to_owned(), EntryState::BundleMissing),
            ]
        );
        let in_use: Vec<(ToolchainId, bool)> =
            listing.bundles.iter().map(|b| (b.id, b.in_use)).collect();
        assert_eq!(in_use.len(), 3);
        assert!(in_use.contains(&(kept.id, true)));
        assert!(in_use.contains(&(gone_bundle.id, false)));
        assert_eq!(listing.temporaries.len(), 2);

        // A dry run reports what a real run removes, and removes nothing.
        let kept_mtime = fs::metadata(&kept.path).unwrap().modified().unwrap();
        let before = dir_names(&bundles);
        let dry = gc(&cache, true).unwrap();
        assert_eq!(dir_names(&bundles), before);
        let real = gc(&cache, false).unwrap();
        assert_eq!(dry, real);

        let removed: Vec<String> = real
            .removed
            .iter()
            .map(|r| {
                r.file
                    .path
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        // Four stale entries, the garbage and the legacy one, two unused
        // bundles, two temporaries.
        assert_eq!(removed.len(), 9, "{removed:?}");
        assert!(removed.contains(&format!("{}.tar.zst", gone_bundle.id)));
        assert!(removed.contains(&"garbage.json".to_owned()));
        assert!(
            real.freed > gone_bundle.compressed_size + 1000 + 500,
            "{real:?}"
        );
        assert_eq!(
            real.freed,
            real.removed.iter().map(|r| r.file.bytes).sum::<u64>()
        );
        assert_eq!((real.kept_entries, real.kept_bundles), (1, 1));
        assert_eq!(real.kept_bytes, kept.compressed_size);

        // What is left: the current entry, its bundle, and the file that is
        // not the cache's.
        assert_eq!(
            dir_names(&bundles),
            [format!("{}.tar.zst", kept.id), "NOTES".to_owned()]
        );
        assert_eq!(dir_names(&index).len(), 1);
        // The current entry still hits without repacking.
        let hit = ensure_cached(&cache, &current.rustc, &opts).unwrap();
        assert_eq!(hit, kept);
        assert_eq!(
            fs::metadata(&hit.path).unwrap().modified().unwrap(),
            kept_mtime
        );
        // And a second run finds nothing more to do.
        let again = gc(&cache, false).unwrap();
        assert!(again.removed.is_empty(), "{again:?}");
        // A cache that does not exist is empty, and is not created.
        let nowhere = dir.path().join("no-cache");
        assert_eq!(gc(&nowhere, false).unwrap(), GcReport::default());
        assert!(!nowhere.exists());
    }

    #[test]
    fn gc_waits_for_a_packer_holding_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        fs::create_dir_all(cache.join("bundles")).unwrap();
        let temporary = cache.join("bundles/.distcc-rs-pack-busy.tmp");
        fs::write(&temporary, b"being written").unwrap();

        let lock = lock_cache(&cache).unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let worker = {
            let cache = cache.clone();
            std::thread::spawn(move || {
                let report = gc(&cache, false).unwrap();
                done_tx.send(()).unwrap();
                report
            })
        };
        // While the "packer" holds the lock, its temporary file is safe.
        assert!(
            done_rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "gc did not wait for the lock"
        );
        assert!(temporary.exists());
        drop(lock);
        let report = worker.join().unwrap();
        assert_eq!(report.removed.len(), 1);
        assert!(!temporary.exists());
    }

    #[test]
    fn key_follows_mtime_of_rustc() {
        let dir = tempfile::tempdir().unwrap();
        let info = fake_sysroot(dir.path());
        let one = cache_key(&info.sysroot, &[]).unwrap();
        assert_eq!(cache_key(&info.sysroot, &[]).unwrap(), one);
        // Extra targets are part of the key, in any order.
        let arm = "aarch64-unknown-linux-gnu".to_owned();
        let wasm = "wasm32-unknown-unknown".to_owned();
        let with_targets = cache_key(&info.sysroot, &[arm.clone(), wasm.clone()]).unwrap();
        assert_ne!(with_targets, one);
        assert_eq!(
            cache_key(&info.sysroot, &[wasm, arm.clone(), arm]).unwrap(),
            with_targets
        );
        let rustc = fs::File::options()
            .write(true)
            .open(info.sysroot.join("bin/rustc"))
            .unwrap();
        rustc
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
            .unwrap();
        assert_ne!(cache_key(&info.sysroot, &[]).unwrap(), one);
    }
}
