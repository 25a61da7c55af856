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
//! The key hashes the canonical sysroot path and the size and mtime of
//! `bin/rustc` and `lib/librustc_driver-*.so`: every rustup update or
//! reinstall replaces those files, so it changes the key.

use std::fs::{self, OpenOptions};
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

/// One index file: which bundle a cache key resolved to.
#[derive(Serialize, Deserialize)]
struct IndexEntry {
    id: ToolchainId,
    manifest: BundleManifest,
}

/// Returns the cached bundle for `rustc`, packing it on first use.
pub fn ensure_cached(
    cache_dir: &Path,
    rustc: &Path,
    opts: &PackOptions,
) -> Result<Bundle, PackError> {
    let sysroot = toolchain::locate_sysroot(rustc)?;
    let key = cache_key(&sysroot)?;
    if let Some(bundle) = lookup(cache_dir, &key) {
        return Ok(bundle);
    }

    let index_dir = cache_dir.join("index");
    let bundles_dir = cache_dir.join("bundles");
    for dir in [&index_dir, &bundles_dir] {
        fs::create_dir_all(dir).map_err(PackError::io(dir))?;
    }
    let lock_path = cache_dir.join("pack.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(PackError::io(&lock_path))?;
    lock.lock().map_err(PackError::io(&lock_path))?;
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
    let before = cache_key(&info.sysroot)?;
    let bundle = bundle::create(&info, opts, &bundles_dir)?;
    // If the toolchain changed while we packed, the bundle may mix old and
    // new files under a key that names neither; do not remember it.
    if cache_key(&info.sysroot)? == before {
        write_index(&index_dir, &before, &bundle)?;
    } else {
        tracing::warn!("toolchain changed while packing; not caching the bundle");
    }
    Ok(bundle)
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
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".tmp") {
                tracing::debug!(path = %entry.path().display(), "removing stale temporary file");
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// The cache key for a sysroot, as hex.
fn cache_key(sysroot: &Path) -> Result<String, PackError> {
    let mut hasher = blake3::Hasher::new();
    // The format is part of the key so that a newer packer never serves a
    // bundle an older one wrote in a layout it no longer produces.
    hasher.update(format!("distcc-rs-pack cache v{BUNDLE_FORMAT}\0").as_bytes());
    hasher.update(sysroot.as_os_str().as_bytes());
    hasher.update(b"\0");
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
fn write_index(index_dir: &Path, key: &str, bundle: &Bundle) -> Result<(), PackError> {
    let entry = IndexEntry {
        id: bundle.id,
        manifest: bundle.manifest.clone(),
    };
    let json = serde_json::to_vec(&entry).expect("an index entry always serializes to JSON");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toolchain::tests::fake_sysroot;
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

    #[test]
    fn key_follows_mtime_of_rustc() {
        let dir = tempfile::tempdir().unwrap();
        let info = fake_sysroot(dir.path());
        let one = cache_key(&info.sysroot).unwrap();
        assert_eq!(cache_key(&info.sysroot).unwrap(), one);
        let rustc = fs::File::options()
            .write(true)
            .open(info.sysroot.join("bin/rustc"))
            .unwrap();
        rustc
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
            .unwrap();
        assert_ne!(cache_key(&info.sysroot).unwrap(), one);
    }
}
