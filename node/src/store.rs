//! The node's content-addressed store of job inputs.
//!
//! Every input file a client sends is kept under `<work>/store/<digest>`,
//! so the next job that needs the same `.rmeta` (most jobs of a build share
//! most of their dependencies) does not transfer it again. Files arrive in a
//! temporary name and are renamed into place only after their content has
//! been hashed and matched against the digest they were announced under, so
//! the store never holds a file under the wrong name, even after a crash.
//!
//! The store has a size limit. An in-memory index records each blob's size
//! and when a job last used it; once the total passes the limit, the least
//! recently used blobs are removed until the total is back under 90% of it,
//! so that eviction runs in occasional batches rather than after every job.
//! Blobs a running job needs are pinned by that job's [`Lease`] and never
//! evicted. Recency survives restarts through file modification times: a
//! blob's file is touched when a job uses it, and a restarted node reads the
//! times back instead of re-hashing gigabytes.
//!
//! Choosing what to evict is the pure function [`choose_victims`]; the rest
//! of this module is the bookkeeping and file system work around it.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use distcc_rs_proto::Digest;
use tracing::{debug, info, warn};

/// A blob's file time is refreshed at most this often. Recency only has to
/// be roughly right across a restart, and a job touches thousands of blobs,
/// so most uses update the in-memory index only.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// What the eviction policy knows about one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobUse {
    pub digest: Digest,
    pub size: u64,
    pub last_used: SystemTime,
}

/// What one eviction removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evicted {
    pub count: usize,
    pub bytes: u64,
}

/// The total an eviction brings the store down to: 90% of the limit, so
/// that the next few jobs' inputs fit without another eviction.
pub fn eviction_target(limit: u64) -> u64 {
    limit - limit / 10
}

/// Chooses the blobs to remove from a store holding `total` bytes: none if
/// the total is within `limit`, otherwise the least recently used blobs not
/// in `pinned`, oldest first, until what remains is at most `target`. Ties
/// in recency are broken by digest so the choice is deterministic. When the
/// pinned blobs alone exceed the target, every unpinned blob is chosen and
/// the store stays over it.
pub fn choose_victims(
    blobs: &[BlobUse],
    pinned: &HashSet<Digest>,
    total: u64,
    limit: u64,
    target: u64,
) -> Vec<Digest> {
    if total <= limit {
        return Vec::new();
    }
    let mut candidates: Vec<&BlobUse> = blobs
        .iter()
        .filter(|b| !pinned.contains(&b.digest))
        .collect();
    candidates.sort_unstable_by_key(|b| (b.last_used, b.digest));
    let mut remaining = total;
    let mut victims = Vec::new();
    for blob in candidates {
        if remaining <= target {
            break;
        }
        remaining = remaining.saturating_sub(blob.size);
        victims.push(blob.digest);
    }
    victims
}

/// Whether a blob whose file was last touched at `touched` should be
/// touched again at `now`. A file time in the future (the clock was set
/// back) is corrected at once, or the blob would look recent for ever.
pub fn touch_due(touched: SystemTime, now: SystemTime) -> bool {
    now.duration_since(touched)
        .map_or(true, |age| age >= TOUCH_INTERVAL)
}

/// One stored blob in the index.
#[derive(Debug, Clone, Copy)]
struct Blob {
    size: u64,
    /// When a job last listed it or it was received.
    last_used: SystemTime,
    /// The modification time last given to its file, as far as the node
    /// knows.
    touched: SystemTime,
}

#[derive(Debug, Default)]
struct Index {
    blobs: HashMap<Digest, Blob>,
    /// The sum of the sizes in `blobs`.
    total: u64,
    /// How many live leases hold each digest. A digest may be pinned before
    /// the store has it: the job is about to receive it.
    pins: HashMap<Digest, usize>,
    /// Blobs an eviction has taken out of `blobs` but whose files are not
    /// deleted yet. A job that asks for one takes it back, and a commit of
    /// the same digest cancels its deletion.
    doomed: HashMap<Digest, Blob>,
    /// Whether a background eviction is under way, so that jobs finishing
    /// their uploads together start one eviction rather than one each.
    evicting: bool,
}

struct Inner {
    dir: PathBuf,
    limit: u64,
    // Only ever held for map operations and, during eviction, a single
    // unlink; never across an await.
    index: Mutex<Index>,
}

/// The store's directory, its index, and operations on them. Clones share
/// the same store.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStore")
            .field("dir", &self.inner.dir)
            .field("limit", &self.inner.limit)
            .finish_non_exhaustive()
    }
}

/// A job's hold on the blobs its manifest lists: none of them is evicted
/// while the lease lives, including those the job has yet to receive.
#[must_use = "dropping a lease unpins its blobs at once"]
pub struct Lease {
    inner: Arc<Inner>,
    pinned: Vec<Digest>,
    missing: Vec<Digest>,
}

impl Lease {
    /// The leased digests the store lacked when the lease was taken, each
    /// once, in order.
    pub fn missing(&self) -> &[Digest] {
        &self.missing
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut index = lock(&self.inner.index);
        for digest in &self.pinned {
            if let Entry::Occupied(mut pins) = index.pins.entry(*digest) {
                *pins.get_mut() -= 1;
                if *pins.get() == 0 {
                    pins.remove();
                }
            }
        }
    }
}

fn lock(index: &Mutex<Index>) -> MutexGuard<'_, Index> {
    // The index stays consistent between statements, so a panic elsewhere
    // while it was held does not make it unusable.
    index.lock().unwrap_or_else(|e| e.into_inner())
}

impl BlobStore {
    /// Opens (creating if needed) the store in `dir`, keeping at most
    /// `limit` bytes. Blobs a previous run left are indexed by their file
    /// size and time, without being read; temporary files are removed; and
    /// if the store is over the limit (it was lowered), it is brought under
    /// it before the node serves.
    pub fn open(dir: PathBuf, limit: u64) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        let mut index = Index::default();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".tmp") {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            // Only the canonical name of a digest is a blob: `path` would
            // never find a file under any other spelling.
            let Ok(digest) = name.parse::<Digest>() else {
                continue;
            };
            if digest.to_hex() != name {
                continue;
            }
            // A file that cannot be read about is left out rather than
            // stopping the node; the next start looks at it again.
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let touched = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            index.total += meta.len();
            index.blobs.insert(
                digest,
                Blob {
                    size: meta.len(),
                    last_used: touched,
                    touched,
                },
            );
        }
        info!(
            dir = %dir.display(),
            blobs = index.blobs.len(),
            bytes = index.total,
            limit,
            "input store opened"
        );
        let store = BlobStore {
            inner: Arc::new(Inner {
                dir,
                limit,
                index: Mutex::new(index),
            }),
        };
        store.evict();
        Ok(store)
    }

    /// Where a blob lives.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.inner.dir.join(digest.to_hex())
    }

    /// The size limit the store keeps to.
    pub fn limit(&self) -> u64 {
        self.inner.limit
    }

    /// Whether the store holds a blob.
    pub fn contains(&self, digest: &Digest) -> bool {
        lock(&self.inner.index).blobs.contains_key(digest)
    }

    /// The bytes the store's blobs take.
    pub fn total_size(&self) -> u64 {
        lock(&self.inner.index).total
    }

    /// How many blobs the store holds.
    pub fn blob_count(&self) -> usize {
        lock(&self.inner.index).blobs.len()
    }

    /// Pins the blobs a job lists, marks those present as used now, and
    /// tells which ones the job must receive. The blobs stay pinned until
    /// the lease is dropped, at the end of the job.
    pub fn lease<'a>(&self, wanted: impl IntoIterator<Item = &'a Digest>) -> Lease {
        self.lease_at(wanted, SystemTime::now())
    }

    fn lease_at<'a>(&self, wanted: impl IntoIterator<Item = &'a Digest>, now: SystemTime) -> Lease {
        let mut pinned: Vec<Digest> = wanted.into_iter().copied().collect();
        pinned.sort_unstable();
        pinned.dedup();
        let mut missing = Vec::new();
        let mut index = lock(&self.inner.index);
        let index = &mut *index;
        for digest in &pinned {
            *index.pins.entry(*digest).or_default() += 1;
            if let Some(blob) = index.blobs.get_mut(digest) {
                blob.last_used = now;
            } else if let Some(mut blob) = index.doomed.remove(digest) {
                // Chosen for eviction but still on disk: taking it back is
                // cheaper than receiving it again.
                blob.last_used = now;
                index.total += blob.size;
                index.blobs.insert(*digest, blob);
            } else {
                missing.push(*digest);
            }
        }
        Lease {
            inner: self.inner.clone(),
            pinned,
            missing,
        }
    }

    /// A fresh temporary file in the store's directory, for a blob in flight.
    pub fn temp_file(&self) -> io::Result<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix(".tmp")
            .tempfile_in(&self.inner.dir)
    }

    /// Moves a received blob into place once its content is known to hash to
    /// `digest`, and records it as used now.
    pub fn commit(&self, tmp: tempfile::NamedTempFile, digest: &Digest) -> io::Result<()> {
        self.commit_at(tmp, digest, SystemTime::now())
    }

    fn commit_at(
        &self,
        tmp: tempfile::NamedTempFile,
        digest: &Digest,
        now: SystemTime,
    ) -> io::Result<()> {
        let meta = tmp.as_file().metadata()?;
        let size = meta.len();
        // Jobs run as another user, which must be able to read the inputs
        // linked into their roots; a temporary file starts out private.
        make_world_readable(tmp.as_file(), &meta)?;
        // An eviction may be about to delete an older file of this digest.
        // The evictor deletes only what is still in `doomed`, checking under
        // the lock it deletes under, so once the digest is out of it, the
        // file renamed into place below cannot be deleted by that eviction.
        lock(&self.inner.index).doomed.remove(digest);
        tmp.persist(self.path(digest)).map_err(|e| e.error)?;
        let mut index = lock(&self.inner.index);
        let index = &mut *index;
        match index.blobs.entry(*digest) {
            Entry::Occupied(mut blob) => {
                // Another job received the same blob at the same time.
                blob.get_mut().last_used = now;
                blob.get_mut().touched = now;
            }
            Entry::Vacant(slot) => {
                slot.insert(Blob {
                    size,
                    last_used: now,
                    touched: now,
                });
                index.total += size;
            }
        }
        Ok(())
    }

    /// Places a blob at `dest` inside a job root: a hard link when possible
    /// (free and instant), a copy otherwise (another file system). An
    /// executable input is always copied, so that setting its mode cannot
    /// change the stored blob that other jobs link to. Blocking: the blob's
    /// file time may be refreshed.
    pub fn place(&self, digest: &Digest, dest: &Path, executable: bool) -> io::Result<()> {
        let src = self.path(digest);
        let placed = if !executable && fs::hard_link(&src, dest).is_ok() {
            // Blobs stored by a version of the node that kept them private
            // are made readable on first use.
            fs::File::open(dest).and_then(|f| {
                let meta = f.metadata()?;
                make_world_readable(&f, &meta)
            })
        } else {
            copy_input(&src, dest, executable)
        };
        match &placed {
            Ok(()) => self.touch_if_due(digest, SystemTime::now()),
            // Someone removed the file behind the node's back: forgetting
            // it makes the next job that needs it ask the client again.
            Err(_) if !src.is_file() => self.forget(digest),
            Err(_) => {}
        }
        placed
    }

    /// Sets the blob's file time to `now` unless it was set recently, so
    /// that a restarted node knows it was used.
    fn touch_if_due(&self, digest: &Digest, now: SystemTime) {
        let due = match lock(&self.inner.index).blobs.get_mut(digest) {
            Some(blob) if touch_due(blob.touched, now) => {
                blob.touched = now;
                true
            }
            _ => false,
        };
        if due && let Err(e) = fs::File::open(self.path(digest)).and_then(|f| f.set_modified(now)) {
            debug!(%digest, cause = %e, "cannot touch an input blob");
        }
    }

    fn forget(&self, digest: &Digest) {
        let mut index = lock(&self.inner.index);
        if let Some(blob) = index.blobs.remove(digest) {
            index.total -= blob.size;
            warn!(%digest, "an input blob vanished from the store");
        }
    }

    /// Starts an eviction on a blocking thread if the store is over its
    /// limit and none is running, and returns its handle. Called after new
    /// blobs are committed; the caller need not wait for it. Must be called
    /// within a tokio runtime.
    pub fn evict_in_background(&self) -> Option<tokio::task::JoinHandle<Evicted>> {
        {
            let mut index = lock(&self.inner.index);
            if index.total <= self.inner.limit || index.evicting {
                return None;
            }
            index.evicting = true;
        }
        let store = self.clone();
        Some(tokio::task::spawn_blocking(move || store.evict()))
    }

    /// Brings the store under 90% of its limit if it is over the limit,
    /// removing the least recently used unpinned blobs. Blocking.
    pub fn evict(&self) -> Evicted {
        let victims = self.doom();
        let evicted = self.remove_doomed(&victims);
        let remaining = {
            let mut index = lock(&self.inner.index);
            index.evicting = false;
            index.total
        };
        if evicted.count > 0 {
            info!(
                count = evicted.count,
                bytes_freed = evicted.bytes,
                bytes_kept = remaining,
                limit = self.inner.limit,
                "evicted least recently used input blobs"
            );
        } else if remaining > self.inner.limit {
            debug!(
                bytes = remaining,
                limit = self.inner.limit,
                "input store over its limit, but every blob is in use"
            );
        }
        evicted
    }

    /// Chooses the victims and moves them from the index to `doomed`.
    fn doom(&self) -> Vec<Digest> {
        // The policy works on a snapshot, so jobs are not held up while it
        // sorts a large index.
        let (blobs, pinned, total) = {
            let index = lock(&self.inner.index);
            if index.total <= self.inner.limit {
                return Vec::new();
            }
            let blobs: Vec<BlobUse> = index
                .blobs
                .iter()
                .map(|(digest, blob)| BlobUse {
                    digest: *digest,
                    size: blob.size,
                    last_used: blob.last_used,
                })
                .collect();
            let pinned: HashSet<Digest> = index.pins.keys().copied().collect();
            (blobs, pinned, index.total)
        };
        let limit = self.inner.limit;
        let victims = choose_victims(&blobs, &pinned, total, limit, eviction_target(limit));
        // A job may have pinned a victim since the snapshot; it is spared.
        let mut index = lock(&self.inner.index);
        let index = &mut *index;
        victims
            .into_iter()
            .filter(|digest| {
                if index.pins.contains_key(digest) {
                    return false;
                }
                let Some(blob) = index.blobs.remove(digest) else {
                    return false;
                };
                index.total -= blob.size;
                index.doomed.insert(*digest, blob);
                true
            })
            .collect()
    }

    /// Deletes the files of the doomed blobs that nobody took back.
    fn remove_doomed(&self, victims: &[Digest]) -> Evicted {
        let mut evicted = Evicted::default();
        for digest in victims {
            // The lock is held across the unlink: a commit of the same
            // digest takes it out of `doomed` under this lock before renaming
            // its file into place, so the unlink never hits the new file.
            let mut index = lock(&self.inner.index);
            let Some(blob) = index.doomed.remove(digest) else {
                continue;
            };
            match fs::remove_file(self.path(digest)) {
                Ok(()) => {
                    evicted.count += 1;
                    evicted.bytes += blob.size;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // The file stays on disk unaccounted for until the next
                // start, which indexes it again.
                Err(e) => warn!(%digest, cause = %e, "cannot evict an input blob"),
            }
        }
        evicted
    }
}

fn copy_input(src: &Path, dest: &Path, executable: bool) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::copy(src, dest)?;
    let mode = if executable { 0o755 } else { 0o644 };
    fs::set_permissions(dest, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Lets every user read `file` (whose metadata is `meta`), unless it can.
fn make_world_readable(file: &fs::File, meta: &fs::Metadata) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o444 != 0o444 {
        file.set_permissions(fs::Permissions::from_mode(mode | 0o444))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn d(n: u8) -> Digest {
        Digest([n; 32])
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn uses(list: &[(u8, u64, u64)]) -> Vec<BlobUse> {
        list.iter()
            .map(|&(n, size, secs)| BlobUse {
                digest: d(n),
                size,
                last_used: at(secs),
            })
            .collect()
    }

    fn total(blobs: &[BlobUse]) -> u64 {
        blobs.iter().map(|b| b.size).sum()
    }

    #[test]
    fn nothing_is_evicted_within_the_limit() {
        let blobs = uses(&[(1, 50, 1), (2, 50, 2)]);
        assert!(choose_victims(&blobs, &HashSet::new(), 100, 100, 90).is_empty());
    }

    #[test]
    fn victims_are_the_least_recently_used_first() {
        let blobs = uses(&[(1, 10, 30), (2, 10, 10), (3, 10, 20), (4, 10, 40)]);
        assert_eq!(
            choose_victims(&blobs, &HashSet::new(), total(&blobs), 35, 20),
            vec![d(2), d(3)]
        );
    }

    #[test]
    fn equally_recent_blobs_are_evicted_in_digest_order() {
        let blobs = uses(&[(3, 10, 5), (1, 10, 5), (2, 10, 5)]);
        assert_eq!(
            choose_victims(&blobs, &HashSet::new(), total(&blobs), 25, 20),
            vec![d(1)]
        );
    }

    #[test]
    fn eviction_stops_once_at_or_under_the_target() {
        // 120 bytes over a limit of 100: the oldest blob alone brings the
        // store to 90, the target, so nothing else goes.
        let blobs = uses(&[(1, 30, 1), (2, 30, 2), (3, 30, 3), (4, 30, 4)]);
        assert_eq!(
            choose_victims(&blobs, &HashSet::new(), 120, 100, eviction_target(100)),
            vec![d(1)]
        );
        // One large blob may take the store well under the target.
        let blobs = uses(&[(1, 100, 1), (2, 10, 2), (3, 10, 3)]);
        assert_eq!(
            choose_victims(&blobs, &HashSet::new(), 120, 100, 90),
            vec![d(1)]
        );
    }

    #[test]
    fn pinned_blobs_are_never_victims() {
        let blobs = uses(&[(1, 30, 1), (2, 30, 2), (3, 30, 3), (4, 30, 4)]);
        let pinned = HashSet::from([d(1), d(3)]);
        assert_eq!(
            choose_victims(&blobs, &pinned, 120, 100, 50),
            vec![d(2), d(4)]
        );
    }

    #[test]
    fn a_store_of_pinned_blobs_evicts_nothing() {
        let blobs = uses(&[(1, 80, 1), (2, 80, 2)]);
        let pinned = HashSet::from([d(1), d(2)]);
        assert!(choose_victims(&blobs, &pinned, 160, 100, 90).is_empty());
    }

    #[test]
    fn the_target_is_ninety_percent_of_the_limit() {
        assert_eq!(eviction_target(100), 90);
        assert_eq!(eviction_target(10 << 30), (10 << 30) - (1 << 30));
        assert_eq!(eviction_target(0), 0);
    }

    #[test]
    fn files_are_touched_at_most_once_a_minute() {
        assert!(!touch_due(at(0), at(0)));
        assert!(!touch_due(at(0), at(59)));
        assert!(touch_due(at(0), at(60)));
        assert!(touch_due(at(60), at(0)), "a future time is corrected");
    }

    /// Commits `content` at `when` and returns its digest.
    fn put(store: &BlobStore, content: &[u8], when: SystemTime) -> Digest {
        let digest = Digest(*blake3::hash(content).as_bytes());
        let mut tmp = store.temp_file().unwrap();
        tmp.write_all(content).unwrap();
        store.commit_at(tmp, &digest, when).unwrap();
        digest
    }

    #[test]
    fn blobs_are_committed_and_placed() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("store"), 1 << 20).unwrap();
        let h = Digest(*blake3::hash(b"hello").as_bytes());
        let lease = store.lease([&h, &h]);
        assert_eq!(lease.missing(), [h]);
        put(&store, b"hello", SystemTime::now());
        assert!(store.lease([&h]).missing().is_empty());
        assert_eq!((store.blob_count(), store.total_size()), (1, 5));
        let dest = dir.path().join("x");
        store.place(&h, &dest, false).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"hello");
    }

    #[test]
    fn leftover_temporaries_are_cleaned_on_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".tmpabc"), b"partial").unwrap();
        BlobStore::open(dir.path().to_path_buf(), 1 << 20).unwrap();
        assert!(!dir.path().join(".tmpabc").exists());
    }

    #[test]
    fn eviction_removes_the_oldest_unpinned_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().to_path_buf(), 100).unwrap();
        let blobs: Vec<Digest> = (0..5u8)
            .map(|n| put(&store, &[n; 30], at(n.into())))
            .collect();
        assert_eq!(store.total_size(), 150);
        // A job holds the oldest blob.
        let lease = store.lease_at([&blobs[0]], at(0));
        assert!(lease.missing().is_empty());

        let evicted = store.evict();
        assert_eq!(
            evicted,
            Evicted {
                count: 2,
                bytes: 60
            }
        );
        assert_eq!(store.total_size(), 90);
        for (n, digest) in blobs.iter().enumerate() {
            let kept = ![1, 2].contains(&n);
            assert_eq!(store.contains(digest), kept, "blob {n}");
            assert_eq!(store.path(digest).exists(), kept, "file of blob {n}");
        }

        // Within the limit, nothing more goes, pinned or not.
        drop(lease);
        assert_eq!(store.evict(), Evicted::default());
        assert_eq!(store.blob_count(), 3);
    }

    #[test]
    fn a_job_using_a_blob_makes_it_recent() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().to_path_buf(), 100).unwrap();
        let a = put(&store, &[1; 40], at(1));
        let b = put(&store, &[2; 40], at(2));
        drop(store.lease_at([&a], at(3)));
        let c = put(&store, &[3; 40], at(4));
        store.evict();
        assert!(store.contains(&a) && !store.contains(&b) && store.contains(&c));
    }

    #[test]
    fn a_store_of_pinned_blobs_over_its_limit_keeps_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().to_path_buf(), 50).unwrap();
        let a = put(&store, &[1; 40], at(1));
        let b = put(&store, &[2; 40], at(2));
        let lease = store.lease([&a, &b]);
        assert_eq!(store.evict(), Evicted::default());
        assert!(store.path(&a).exists() && store.path(&b).exists());
        // Unpinned, the two are equally recent: one goes, either one.
        drop(lease);
        assert_eq!(
            store.evict(),
            Evicted {
                count: 1,
                bytes: 40
            }
        );
        assert_eq!((store.blob_count(), store.total_size()), (1, 40));
    }

    #[test]
    fn a_job_takes_back_a_blob_chosen_for_eviction() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().to_path_buf(), 30).unwrap();
        let a = put(&store, &[1; 40], at(1));
        let b = put(&store, &[2; 40], at(2));
        let victims = store.doom();
        assert_eq!(victims, vec![a, b]);
        // The files are not deleted yet when a job asks for `a`.
        let lease = store.lease([&a]);
        assert!(lease.missing().is_empty());
        assert_eq!(
            store.remove_doomed(&victims),
            Evicted {
                count: 1,
                bytes: 40
            }
        );
        assert!(store.path(&a).exists() && !store.path(&b).exists());
        assert_eq!((store.blob_count(), store.total_size()), (1, 40));
    }

    #[test]
    fn a_blob_received_again_during_eviction_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().to_path_buf(), 30).unwrap();
        let a = put(&store, &[1; 40], at(1));
        let victims = store.doom();
        assert_eq!(victims, vec![a]);
        assert!(!store.contains(&a));
        put(&store, &[1; 40], at(2));
        assert_eq!(store.remove_doomed(&victims), Evicted::default());
        assert!(store.contains(&a) && store.path(&a).exists());
        assert_eq!(store.total_size(), 40);
    }

    #[test]
    fn reopening_rebuilds_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().to_path_buf(), 1 << 20).unwrap();
        let blobs: Vec<Digest> = (1..=3u8)
            .map(|n| put(&store, &vec![n; usize::from(n) * 10], at(n.into())))
            .collect();
        drop(store);
        fs::write(dir.path().join(".tmpxyz"), b"half a blob").unwrap();
        fs::write(dir.path().join("README"), b"not a blob").unwrap();

        let store = BlobStore::open(dir.path().to_path_buf(), 1 << 20).unwrap();
        assert_eq!((store.blob_count(), store.total_size()), (3, 60));
        assert!(blobs.iter().all(|b| store.contains(b)));
        assert!(!dir.path().join(".tmpxyz").exists());
        assert!(
            dir.path().join("README").exists(),
            "foreign files are left alone"
        );
    }

    #[test]
    fn reopening_takes_recency_from_file_times() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().to_path_buf(), 1 << 20).unwrap();
        let blobs: Vec<Digest> = (1..=4u8).map(|n| put(&store, &[n; 30], at(0))).collect();
        drop(store);
        // File times say blob 2 is the oldest, then blob 4.
        for (digest, secs) in blobs.iter().zip([30, 10, 40, 20]) {
            let file = fs::File::options()
                .write(true)
                .open(dir.path().join(digest.to_hex()))
                .unwrap();
            file.set_modified(at(secs)).unwrap();
        }
        // A lower limit on restart: opening evicts down to 90 bytes.
        let store = BlobStore::open(dir.path().to_path_buf(), 100).unwrap();
        let kept: Vec<bool> = blobs.iter().map(|b| store.contains(b)).collect();
        assert_eq!(kept, [true, false, true, true]);
        assert_eq!(store.total_size(), 90);
    }

    #[test]
    fn placing_a_blob_refreshes_its_file_time_at_most_once_a_minute() {
        let dir = tempfile::tempdir().unwrap();
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800);
        let content = b"an old rmeta";
        let digest = Digest(*blake3::hash(content).as_bytes());
        let file = dir.path().join(digest.to_hex());
        fs::write(&file, content).unwrap();
        let set_mtime = |t: SystemTime| {
            fs::File::options()
                .write(true)
                .open(&file)
                .unwrap()
                .set_modified(t)
                .unwrap();
        };
        let mtime = || fs::metadata(&file).unwrap().modified().unwrap();
        set_mtime(old);
        let store = BlobStore::open(dir.path().to_path_buf(), 1 << 20).unwrap();

        let job = tempfile::tempdir().unwrap();
        store.place(&digest, &job.path().join("a"), false).unwrap();
        assert!(mtime() > old + Duration::from_secs(3600));

        // Used again within the minute: the file is left alone.
        set_mtime(old);
        store.place(&digest, &job.path().join("b"), true).unwrap();
        assert_eq!(mtime(), old);
    }

    #[test]
    fn a_blob_that_vanished_is_asked_for_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().to_path_buf(), 1 << 20).unwrap();
        let a = put(&store, b"gone", at(1));
        fs::remove_file(store.path(&a)).unwrap();
        let lease = store.lease([&a]);
        assert!(lease.missing().is_empty(), "the index still lists it");
        let job = tempfile::tempdir().unwrap();
        assert!(store.place(&a, &job.path().join("a"), false).is_err());
        assert_eq!(store.lease([&a]).missing(), [a]);
        assert_eq!(store.total_size(), 0);
    }

    #[tokio::test]
    async fn background_eviction_runs_once_over_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().to_path_buf(), 50).unwrap();
        let a = put(&store, &[1; 30], at(1));
        assert!(store.evict_in_background().is_none(), "within the limit");
        let b = put(&store, &[2; 30], at(2));
        let evicted = store.evict_in_background().unwrap().await.unwrap();
        assert_eq!(
            evicted,
            Evicted {
                count: 1,
                bytes: 30
            }
        );
        assert!(!store.contains(&a) && store.contains(&b));
        assert!(store.evict_in_background().is_none());
    }
}
