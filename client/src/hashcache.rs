//! A cache of input file digests, so a file that has not changed is not
//! read and hashed again by every compile that needs it.
//!
//! Every crate of a build ships the `.rmeta` files of its dependencies, each
//! several MiB, and without this cache each wrapper re-reads them all. The
//! cache remembers a digest under everything `stat` says about the file: the
//! absolute path, size, inode, device, and modification and change times
//! with nanoseconds. The change time cannot be set by a user program, so a
//! rewrite that restores the old size and mtime still misses.
//!
//! Layout: `<dir>/<shard>/<name>`, where `name` is the hex BLAKE3 of the key
//! and `shard` its first byte, one small file per key. Many wrappers run at
//! once, so entries are written to a temporary file in the same directory
//! and renamed into place (readers see a whole entry or none), and read
//! without locks. An entry repeats the key after the digest and a lookup
//! compares it byte for byte, so a damaged or foreign entry is a miss.
//!
//! Nothing here may fail a build: any trouble with the cache itself means
//! "hash the file", and only errors reading the input file are returned.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use distcc_rs_proto::Digest;

/// A file whose mtime or ctime is this recent may still be written to
/// within the same timestamp granule, so a later change could leave every
/// key field as it is ("racy git"). Such files are hashed but not cached.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Marks the entry format, so a future format is a miss rather than a
/// misreading.
const FORMAT: &[u8] = b"v1 ";

/// What a lookup found, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The digest came from the cache; the file was not read.
    Hit,
    /// The file was hashed and its digest stored.
    Stored,
    /// The file was hashed but not stored: it is too small to be worth
    /// caching, too fresh, it changed while being hashed, its path is
    /// relative, or the store failed.
    Uncached,
}

/// A hashed input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hashed {
    pub digest: Digest,
    pub size: u64,
    pub executable: bool,
}

/// Which files are cached, and how large the cache may grow.
///
/// Files under `min_size` bytes are hashed without the cache. Entries are
/// spread over `shards` directories; one store in `check_one_in` counts the
/// entries of its shard and, past `max_per_shard`, removes the least
/// recently used ones down to three quarters of that. Each check reads one
/// small directory, so it stays cheap however big the cache is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub min_size: u64,
    pub shards: u16,
    pub max_per_shard: usize,
    pub check_one_in: u8,
}

impl Default for Limits {
    /// Only files of 256 KiB and more are cached. Measured on the realdeps
    /// fixture with the files in the page cache, BLAKE3 hashes about
    /// 3.5 GB/s, so a small file costs about as much to hash as a cache hit
    /// (a stat and a small read, ~20 µs), while storing an entry (a file
    /// created and renamed) costs 0.2-0.7 ms: caching libc's 453 sources
    /// made their first hashing 30 times slower and the next ones no
    /// faster. The files worth caching are the large ones, the dependency
    /// `.rmeta` files above all, which every dependent crate hashes again.
    ///
    /// About 32 000 entries in all: far more than a large build has large
    /// inputs, with room for many generations of rebuilt `.rmeta` files.
    /// An entry is a line of text, one filesystem block on disk.
    fn default() -> Self {
        Limits {
            min_size: 256 << 10,
            shards: 64,
            max_per_shard: 512,
            check_one_in: 8,
        }
    }
}

/// The digest cache in one directory.
#[derive(Debug, Clone)]
pub struct HashCache {
    dir: PathBuf,
    limits: Limits,
}

impl HashCache {
    /// The cache under `dir` (usually `<cache_dir>/hashes`), created on the
    /// first store.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self::with_limits(dir, Limits::default())
    }

    /// The cache under `dir` with other limits than the default (tests use
    /// tiny ones).
    pub fn with_limits(dir: impl Into<PathBuf>, limits: Limits) -> Self {
        HashCache {
            dir: dir.into(),
            limits: Limits {
                shards: limits.shards.max(1),
                check_one_in: limits.check_one_in.max(1),
                ..limits
            },
        }
    }

    /// Hashes the file at `path`, through the cache.
    pub fn hash(&self, path: &Path) -> io::Result<(Hashed, Outcome)> {
        self.hash_at(path, SystemTime::now())
    }

    /// [`HashCache::hash`] with the current time given, so tests can make a
    /// file old enough to cache without waiting.
    pub fn hash_at(&self, path: &Path, now: SystemTime) -> io::Result<(Hashed, Outcome)> {
        let meta = fs::metadata(path)?;
        let key = (path.is_absolute() && meta.len() >= self.limits.min_size)
            .then(|| Key::new(path, &meta));
        if let Some(key) = &key
            && let Some(digest) = self.lookup(key)
        {
            return Ok((hashed(digest, &meta), Outcome::Hit));
        }

        let file = File::open(path)?;
        let opened = file.metadata()?;
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(&file)?;
        let digest = Digest(*hasher.finalize().as_bytes());
        let result = hashed(digest, &opened);

        // Store only what is known to match the key: the file must be the
        // one first looked at, unchanged while it was read, and old enough
        // that a later write cannot hide inside the same timestamps.
        let Some(key) = key else {
            return Ok((result, Outcome::Uncached));
        };
        let unchanged = file
            .metadata()
            .is_ok_and(|after| Key::new(path, &opened) == key && Key::new(path, &after) == key);
        if !unchanged || !key.settled(now) {
            return Ok((result, Outcome::Uncached));
        }
        match self.store(&key, digest) {
            Ok(()) => Ok((result, Outcome::Stored)),
            Err(_) => Ok((result, Outcome::Uncached)),
        }
    }

    /// The digest stored for `key`, if an entry exists and repeats the key
    /// exactly. One open and one small read.
    fn lookup(&self, key: &Key) -> Option<Digest> {
        let expected = key.encode();
        let mut file = File::open(self.entry_path(key)).ok()?;
        // A valid entry is exactly `want` bytes; reading up to one byte more
        // notices a longer file.
        let want = FORMAT.len() + 64 + 1 + expected.len() + 1;
        let mut buf = vec![0u8; want + 1];
        let mut len = 0;
        while len < buf.len() {
            match file.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        parse_entry(&buf[..len], &expected)
    }

    fn store(&self, key: &Key, digest: Digest) -> io::Result<()> {
        let (shard, name) = self.location(key);
        let shard_dir = self.dir.join(&shard);
        let tmp = match tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&shard_dir)
        {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&shard_dir)?;
                tempfile::Builder::new()
                    .prefix(".tmp-")
                    .tempfile_in(&shard_dir)?
            }
            Err(e) => return Err(e),
        };
        tmp.as_file().write_all(&entry(key, digest))?;
        tmp.persist(shard_dir.join(&name)).map_err(|e| e.error)?;
        if key.hash().as_bytes()[31].is_multiple_of(self.limits.check_one_in) {
            prune(&shard_dir, self.limits.max_per_shard);
        }
        Ok(())
    }

    fn location(&self, key: &Key) -> (String, String) {
        let hash = key.hash();
        let shard = u16::from(hash.as_bytes()[0]) % self.limits.shards;
        (format!("{shard:02x}"), hash.to_hex().to_string())
    }

    fn entry_path(&self, key: &Key) -> PathBuf {
        let (shard, name) = self.location(key);
        self.dir.join(shard).join(name)
    }
}

fn hashed(digest: Digest, meta: &fs::Metadata) -> Hashed {
    Hashed {
        digest,
        size: meta.len(),
        executable: meta.mode() & 0o111 != 0,
    }
}

/// Everything `stat` says about a file that changes when its content can
/// have changed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    path: Vec<u8>,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    dev: u64,
}

impl Key {
    fn new(path: &Path, meta: &fs::Metadata) -> Self {
        Key {
            path: path.as_os_str().as_bytes().to_vec(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }

    /// The key as bytes: the numbers, then the path last so that it may
    /// contain any byte.
    fn encode(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {}.{:09} {}.{:09} {} {} ",
            self.size, self.mtime.0, self.mtime.1, self.ctime.0, self.ctime.1, self.ino, self.dev
        )
        .into_bytes();
        out.extend_from_slice(&self.path);
        out
    }

    fn hash(&self) -> blake3::Hash {
        blake3::hash(&self.encode())
    }

    /// Whether both timestamps are at least [`RACY_WINDOW`] before `now`.
    /// Timestamps in the future (a clock stepped back, a file server ahead
    /// of this machine) are not settled.
    fn settled(&self, now: SystemTime) -> bool {
        [self.mtime, self.ctime].iter().all(|&(secs, nanos)| {
            let Ok(secs) = u64::try_from(secs) else {
                return false;
            };
            let at = UNIX_EPOCH + Duration::new(secs, nanos.clamp(0, 999_999_999) as u32);
            now.duration_since(at).is_ok_and(|age| age >= RACY_WINDOW)
        })
    }
}

/// An entry: the format mark, the digest in hex, a space, the key, a newline.
fn entry(key: &Key, digest: Digest) -> Vec<u8> {
    let mut out = FORMAT.to_vec();
    out.extend_from_slice(digest.to_hex().as_bytes());
    out.push(b' ');
    out.extend_from_slice(&key.encode());
    out.push(b'\n');
    out
}

/// The digest in `bytes` if they are exactly the entry for the key encoded
/// as `expected`.
fn parse_entry(bytes: &[u8], expected: &[u8]) -> Option<Digest> {
    let rest = bytes.strip_prefix(FORMAT)?;
    let (hex, rest) = rest.split_at_checked(64)?;
    let rest = rest.strip_prefix(b" ")?.strip_suffix(b"\n")?;
    if rest != expected {
        return None;
    }
    std::str::from_utf8(hex).ok()?.parse().ok()
}

/// Removes a shard's least recently used entries down to three quarters of
/// `max` once it holds more than `max`. The access time orders them (with `relatime` a
/// hit marks an entry used at least once a day; with `noatime` this is the
/// store order). Errors are ignored: another wrapper may be pruning too.
fn prune(shard_dir: &Path, max: usize) {
    let Ok(entries) = fs::read_dir(shard_dir) else {
        return;
    };
    let names: Vec<_> = entries.flatten().collect();
    if names.len() <= max {
        return;
    }
    let mut aged: Vec<((i64, i64), PathBuf)> = names
        .iter()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some(((meta.atime(), meta.atime_nsec()), e.path()))
        })
        .collect();
    aged.sort();
    let keep = max * 3 / 4;
    for (_, path) in aged.iter().take(aged.len().saturating_sub(keep)) {
        let _ = fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache that takes files of any size, so tests can use small ones.
    fn every_file(dir: impl Into<PathBuf>) -> HashCache {
        HashCache::with_limits(
            dir,
            Limits {
                min_size: 0,
                ..Limits::default()
            },
        )
    }

    /// A time far enough after any file these tests write that it counts
    /// as settled.
    fn later() -> SystemTime {
        SystemTime::now() + Duration::from_secs(60)
    }

    fn entries(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for shard in fs::read_dir(dir).unwrap().flatten() {
            for e in fs::read_dir(shard.path()).unwrap().flatten() {
                out.push(e.path());
            }
        }
        out
    }

    #[test]
    fn a_hit_follows_a_miss_with_the_same_digest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lib.rmeta");
        fs::write(&file, b"metadata").unwrap();
        let cache = every_file(dir.path().join("hashes"));

        let (first, outcome) = cache.hash_at(&file, later()).unwrap();
        assert_eq!(outcome, Outcome::Stored);
        assert_eq!(first.digest, Digest(*blake3::hash(b"metadata").as_bytes()));
        assert_eq!(first.size, 8);
        assert!(!first.executable);

        let (second, outcome) = cache.hash_at(&file, later()).unwrap();
        assert_eq!(outcome, Outcome::Hit);
        assert_eq!(second, first);
        assert_eq!(entries(&dir.path().join("hashes")).len(), 1);
    }

    #[test]
    fn a_changed_file_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lib.rs");
        fs::write(&file, b"fn a() {}").unwrap();
        let cache = every_file(dir.path().join("hashes"));
        let (before, _) = cache.hash_at(&file, later()).unwrap();

        fs::write(&file, b"fn b() {}").unwrap();
        let f = File::options().write(true).open(&file).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        drop(f);
        let (after, outcome) = cache.hash_at(&file, later()).unwrap();
        assert_ne!(outcome, Outcome::Hit);
        assert_eq!(after.digest, Digest(*blake3::hash(b"fn b() {}").as_bytes()));
        assert_ne!(after.digest, before.digest);
    }

    #[test]
    fn a_file_written_just_now_is_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fresh.rs");
        fs::write(&file, b"x").unwrap();
        let cache = every_file(dir.path().join("hashes"));
        for _ in 0..2 {
            let (h, outcome) = cache.hash_at(&file, SystemTime::now()).unwrap();
            assert_eq!(outcome, Outcome::Uncached);
            assert_eq!(h.digest, Digest(*blake3::hash(b"x").as_bytes()));
        }
        assert!(!dir.path().join("hashes").exists());
    }

    #[test]
    fn a_corrupt_entry_falls_back_to_hashing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.rs");
        fs::write(&file, b"content").unwrap();
        let hashes = dir.path().join("hashes");
        let cache = every_file(&hashes);
        cache.hash_at(&file, later()).unwrap();
        let [entry] = entries(&hashes).try_into().unwrap();
        let good = fs::read(&entry).unwrap();

        let wrong_digest = {
            let mut e = good.clone();
            e[FORMAT.len()] = if e[FORMAT.len()] == b'0' { b'1' } else { b'0' };
            e
        };
        let damaged: [&[u8]; 5] = [
            b"",
            b"garbage",
            &good[..good.len() - 1],
            &[&good[..], b"extra"].concat(),
            // A well-formed entry for another file at the same name.
            &[&good[..good.len() - 1], b"x\n"].concat(),
        ];
        for bad in damaged {
            fs::write(&entry, bad).unwrap();
            let (h, outcome) = cache.hash_at(&file, later()).unwrap();
            assert_eq!(
                outcome,
                Outcome::Stored,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
            assert_eq!(h.digest, Digest(*blake3::hash(b"content").as_bytes()));
            assert_eq!(fs::read(&entry).unwrap(), good);
        }
        // An entry whose key matches is trusted: that is what the key is for.
        fs::write(&entry, &wrong_digest).unwrap();
        assert_eq!(cache.hash_at(&file, later()).unwrap().1, Outcome::Hit);
    }

    #[test]
    fn only_large_files_are_cached_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let cache = HashCache::new(dir.path().join("hashes"));
        let min = Limits::default().min_size as usize;
        let small = dir.path().join("small.rs");
        let large = dir.path().join("large.rmeta");
        fs::write(&small, vec![1u8; min - 1]).unwrap();
        fs::write(&large, vec![2u8; min]).unwrap();
        for _ in 0..2 {
            assert_eq!(cache.hash_at(&small, later()).unwrap().1, Outcome::Uncached);
        }
        assert_eq!(cache.hash_at(&large, later()).unwrap().1, Outcome::Stored);
        assert_eq!(cache.hash_at(&large, later()).unwrap().1, Outcome::Hit);
    }

    #[test]
    fn relative_paths_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = every_file(dir.path().join("hashes"));
        assert!(cache.hash_at(&dir.path().join("nope"), later()).is_err());
        // Cargo.toml of this crate, relative to the test's working directory.
        let (_, outcome) = cache.hash_at(Path::new("Cargo.toml"), later()).unwrap();
        assert_eq!(outcome, Outcome::Uncached);
    }

    #[test]
    fn the_cache_stays_within_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let hashes = dir.path().join("hashes");
        let cache = HashCache::with_limits(
            &hashes,
            Limits {
                min_size: 0,
                shards: 1,
                max_per_shard: 8,
                check_one_in: 1,
            },
        );
        for i in 0..40 {
            let file = dir.path().join(format!("f{i}"));
            fs::write(&file, i.to_string()).unwrap();
            assert_eq!(cache.hash_at(&file, later()).unwrap().1, Outcome::Stored);
            let n = entries(&hashes).len();
            assert!((1..=8).contains(&n), "{n} entries");
        }
    }

    #[test]
    fn settled_means_both_times_are_old_enough() {
        let key = |m: i64, c: i64| Key {
            path: b"/x".to_vec(),
            size: 1,
            mtime: (m, 0),
            ctime: (c, 0),
            ino: 1,
            dev: 1,
        };
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        assert!(key(990, 990).settled(now));
        assert!(key(998, 998).settled(now));
        assert!(!key(999, 990).settled(now));
        assert!(!key(990, 999).settled(now));
        assert!(!key(1005, 990).settled(now));
        assert!(!key(-1, 990).settled(now));
    }
}
