//! The node's toolchain cache: toolchains fetched from the scheduler on
//! first use (or ahead of it, see [`crate::prefetch`]), verified, unpacked,
//! reused, and evicted least recently used first when the cache passes its
//! size limit (`--toolchain-cache-size`).
//!
//! Each toolchain lives unpacked in `<work>/toolchains/<id>`, about 500 MB
//! for a host toolchain. A job holds a [`ToolchainLease`] from before the
//! fetch until rustc has exited, and a toolchain with a live lease (or a
//! fetch under way) is never evicted, so eviction cannot pull a toolchain
//! from under a running job. Eviction happens just before a fetch unpacks a
//! new toolchain, making room for it; when every other toolchain is in use
//! the fetch still goes ahead and the cache stays over its limit until the
//! next fetch. Choosing what to evict is the pure function
//! [`choose_evictions`]; every eviction is reported to the scheduler, so
//! its idea of which nodes hold which toolchain stays true.
//!
//! Recency survives restarts through the modification time of a marker
//! file, `<work>/toolchains/<id>.used`, touched when a job uses the
//! toolchain (at most once a minute, as for input blobs).
//!
//! A toolchain whose bundle failed verification on every fetch attempt (or
//! whose rustc does not run here) is *broken* on this node for
//! [`BROKEN_FOR`]: it is not fetched again meanwhile, jobs that need it are
//! refused so that their clients go elsewhere, and the scheduler is told.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use distcc_rs_pack::{BUNDLE_MANIFEST_PATH, BundleManifest};
use distcc_rs_proto::ToolchainId;
use distcc_rs_proto::message::NodeEvent;
use tokio::sync::{OnceCell, mpsc};
use tracing::{debug, info, warn};

use crate::fetch::FetchError;
use crate::store::touch_due;

/// How long a toolchain that failed verification stays unused on a node.
/// Long enough that a farm does not download a broken 160 MiB bundle over
/// and over; short enough that a bundle the scheduler replaced (it deletes
/// a copy that fails its own check, and the next client uploads a good one)
/// is used again without restarting the node.
pub const BROKEN_FOR: Duration = Duration::from_secs(10 * 60);

/// A toolchain found intact after a job failed in a way that suggested
/// damage is not checked again for this long: checking hashes 500 MB.
const RECHECK_AFTER: Duration = Duration::from_secs(10 * 60);

/// The suffix of the marker file whose modification time is the
/// toolchain's last use.
const MARKER_SUFFIX: &str = ".used";

/// An unpacked toolchain, ready to run.
#[derive(Debug)]
pub struct ReadyToolchain {
    pub id: ToolchainId,
    pub dir: PathBuf,
    pub manifest: BundleManifest,
}

impl ReadyToolchain {
    /// The bytes the unpacked toolchain takes: its files' sizes, which the
    /// unpacking checked against the manifest.
    pub fn size(&self) -> u64 {
        self.manifest.total_size()
    }
}

/// What the eviction policy knows about one toolchain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub id: ToolchainId,
    /// Unpacked size in bytes; for a toolchain being fetched, the size
    /// reserved for it (0 until known).
    pub size: u64,
    pub last_used: SystemTime,
    /// A job holds it, or it is being fetched.
    pub in_use: bool,
}

/// What [`choose_evictions`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    /// The toolchains to remove, least recently used first.
    pub victims: Vec<ToolchainId>,
    /// Whether the cache is within its limit once the victims are gone.
    pub fits: bool,
}

/// Chooses the toolchains to evict so that everything in `held` (which
/// includes the toolchain about to be unpacked, in use, with its size) fits
/// in `limit` bytes.
///
/// Only toolchains not in use are candidates, and with `older_than` only
/// those last used before it (a prefetch must not push out a toolchain used
/// more recently than the one it fetches). Candidates go least recently used
/// first, ties by id, until the total fits. When it cannot fit, `fits` is
/// false and the victims are every candidate: a job's fetch goes ahead with
/// the cache as small as it can be, a prefetch is dropped.
pub fn choose_evictions(held: &[Held], limit: u64, older_than: Option<SystemTime>) -> Eviction {
    let mut total: u64 = held.iter().map(|h| h.size).sum();
    let mut candidates: Vec<&Held> = held
        .iter()
        .filter(|h| !h.in_use && older_than.is_none_or(|bound| h.last_used < bound))
        .collect();
    candidates.sort_unstable_by_key(|h| (h.last_used, h.id));
    let mut victims = Vec::new();
    for h in candidates {
        if total <= limit {
            break;
        }
        total -= h.size;
        victims.push(h.id);
    }
    Eviction {
        victims,
        fits: total <= limit,
    }
}

/// What [`Toolchains::make_room`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    /// Whether the cache, with the new toolchain, is within its limit.
    pub fits: bool,
    /// The toolchains evicted, with their sizes.
    pub evicted: Vec<(ToolchainId, u64)>,
}

/// Why a toolchain cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolchainError {
    /// It failed verification here recently; see [`BROKEN_FOR`].
    #[error("it failed verification on this node and is not used here for now: {0}")]
    Broken(String),
    /// The copy on disk was found damaged and is replaced once the jobs
    /// still using it end.
    #[error("the node's copy is damaged and is being replaced")]
    Discarding,
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

/// How a toolchain is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A job needs it now: it becomes the most recently used.
    Job,
    /// Fetched ahead of need; its recency is the farm's last use of it.
    Prefetch { last_used: SystemTime },
}

/// The toolchain cache. Clones share the same cache.
#[derive(Debug, Clone)]
pub struct Toolchains {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    limit: u64,
    // Held only for map operations and renames, never across an await.
    index: Mutex<Index>,
    /// Where evictions and rejections are reported to the scheduler.
    events: mpsc::UnboundedSender<NodeEvent>,
}

#[derive(Debug, Default)]
struct Index {
    entries: HashMap<ToolchainId, Entry>,
    broken: HashMap<ToolchainId, Broken>,
}

#[derive(Debug)]
struct Entry {
    // One cell per toolchain, so concurrent jobs that need the same missing
    // toolchain wait for a single fetch instead of each starting their own.
    cell: Arc<OnceCell<Arc<ReadyToolchain>>>,
    /// Live leases and fetches. An entry whose cell is empty exists only
    /// while pinned: a failed fetch leaves nothing behind.
    pins: usize,
    last_used: SystemTime,
    /// The marker file's modification time, as far as the node knows.
    touched: SystemTime,
    /// The unpacked size once ready; while fetching, the size reserved.
    size: u64,
    /// Found damaged while in use: removed when the last lease ends.
    discard: bool,
    check: Check,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Never,
    Running,
    PassedAt(Instant),
}

#[derive(Debug)]
struct Broken {
    until: Instant,
    reason: String,
}

impl Entry {
    fn new(last_used: SystemTime) -> Self {
        Entry {
            cell: Arc::new(OnceCell::new()),
            pins: 0,
            last_used,
            touched: SystemTime::UNIX_EPOCH,
            size: 0,
            discard: false,
            check: Check::Never,
        }
    }

    fn ready(&self) -> Option<&Arc<ReadyToolchain>> {
        self.cell.get()
    }
}

impl Index {
    /// Why the toolchain may not be used, if it is broken; forgets marks
    /// that have run out.
    fn broken_reason(&mut self, id: ToolchainId, now: Instant) -> Option<String> {
        match self.broken.get(&id) {
            Some(b) if b.until > now => Some(b.reason.clone()),
            Some(_) => {
                self.broken.remove(&id);
                None
            }
            None => None,
        }
    }
}

fn lock(index: &Mutex<Index>) -> MutexGuard<'_, Index> {
    // The index is consistent between statements, so a panic elsewhere while
    // it was held does not make it unusable.
    index.lock().unwrap_or_else(|e| e.into_inner())
}

/// A job's hold on a ready toolchain: it is not evicted while the lease
/// lives.
#[derive(Debug)]
#[must_use = "dropping a lease lets the toolchain be evicted at once"]
pub struct ToolchainLease {
    _pin: Pin,
    ready: Arc<ReadyToolchain>,
}

impl std::ops::Deref for ToolchainLease {
    type Target = ReadyToolchain;

    fn deref(&self) -> &ReadyToolchain {
        &self.ready
    }
}

/// One pin on an entry, from before its fetch until the lease ends.
#[derive(Debug)]
struct Pin {
    inner: Arc<Inner>,
    id: ToolchainId,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut index = lock(&self.inner.index);
        let Some(entry) = index.entries.get_mut(&self.id) else {
            return;
        };
        entry.pins -= 1;
        if entry.pins > 0 {
            return;
        }
        if entry.ready().is_none() {
            // The fetch failed: forget the entry and its reservation.
            index.entries.remove(&self.id);
        } else if entry.discard {
            let size = entry.size;
            index.entries.remove(&self.id);
            let trash = self.inner.take_away(self.id);
            drop(index);
            self.inner.dispose(trash);
            self.inner
                .report_evicted(self.id, size, "its copy was damaged");
        }
    }
}

impl Toolchains {
    /// Opens the toolchain directory and loads the toolchains an earlier run
    /// unpacked there, with their last use from their marker files.
    /// Half-finished downloads and unpacks are removed, and if the cache is
    /// over `limit` (it was lowered), the least recently used toolchains are
    /// removed until it fits. Evictions and rejections are reported on
    /// `events`.
    pub fn open(
        dir: PathBuf,
        limit: u64,
        events: mpsc::UnboundedSender<NodeEvent>,
    ) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        let mut entries = HashMap::new();
        let mut markers = HashMap::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name
                .strip_suffix(MARKER_SUFFIX)
                .and_then(|hex| hex.parse::<ToolchainId>().ok())
            {
                let touched = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                markers.insert(id, touched);
                continue;
            }
            let Ok(id) = name.parse::<ToolchainId>() else {
                // Downloads, unpacks and evictions a crash interrupted.
                remove_any(&entry.path());
                continue;
            };
            let manifest = fs::read(entry.path().join(BUNDLE_MANIFEST_PATH))
                .ok()
                .and_then(|b| serde_json::from_slice::<BundleManifest>(&b).ok());
            let Some(manifest) = manifest else {
                remove_any(&entry.path());
                continue;
            };
            let ready = Arc::new(ReadyToolchain {
                id,
                dir: entry.path(),
                manifest,
            });
            // Without a marker (a toolchain from before markers existed),
            // the directory's own time is the best guess.
            let unpacked = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let mut e = Entry::new(unpacked);
            e.size = ready.size();
            e.cell = Arc::new(OnceCell::new_with(Some(ready)));
            entries.insert(id, e);
        }
        for (id, touched) in markers {
            match entries.get_mut(&id) {
                Some(e) => {
                    e.last_used = touched;
                    e.touched = touched;
                }
                None => {
                    let _ = fs::remove_file(marker_path(&dir, id));
                }
            }
        }
        let toolchains = Toolchains {
            inner: Arc::new(Inner {
                dir,
                limit,
                index: Mutex::new(Index {
                    entries,
                    broken: HashMap::new(),
                }),
                events,
            }),
        };
        let held = toolchains.held();
        let total: u64 = held.iter().map(|h| h.size).sum();
        info!(
            dir = %toolchains.inner.dir.display(),
            toolchains = held.len(),
            bytes = total,
            limit,
            "toolchain cache opened"
        );
        let eviction = choose_evictions(&held, limit, None);
        for id in eviction.victims {
            let (size, trash) = {
                let mut index = lock(&toolchains.inner.index);
                let size = index.entries.remove(&id).map_or(0, |e| e.size);
                (size, toolchains.inner.take_away(id))
            };
            toolchains.inner.dispose(trash);
            info!(toolchain = %id, bytes = size, limit, "evicted a toolchain: the cache is over its limit");
        }
        Ok(toolchains)
    }

    /// The size limit of the cache.
    pub fn limit(&self) -> u64 {
        self.inner.limit
    }

    /// The toolchains ready on this node.
    pub fn ready(&self) -> Vec<ToolchainId> {
        let index = lock(&self.inner.index);
        let mut ids: Vec<_> = index
            .entries
            .iter()
            .filter(|(_, e)| e.ready().is_some())
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        ids
    }

    /// The toolchains ready on this node, for the eviction and prefetch
    /// policies.
    pub fn held(&self) -> Vec<Held> {
        let index = lock(&self.inner.index);
        let mut held: Vec<Held> = index
            .entries
            .iter()
            .filter(|(_, e)| e.ready().is_some())
            .map(|(id, e)| Held {
                id: *id,
                size: e.size,
                last_used: e.last_used,
                in_use: e.pins > 0,
            })
            .collect();
        held.sort_by_key(|h| h.id);
        held
    }

    /// The bytes the cache holds or has reserved for fetches under way.
    pub fn total_size(&self) -> u64 {
        lock(&self.inner.index)
            .entries
            .values()
            .map(|e| e.size)
            .sum()
    }

    /// Toolchains that cannot be fetched now: being fetched, or broken.
    pub fn unavailable(&self) -> Vec<ToolchainId> {
        let mut index = lock(&self.inner.index);
        let now = Instant::now();
        let broken: Vec<ToolchainId> = index.broken.keys().copied().collect();
        let mut ids: Vec<ToolchainId> = broken
            .into_iter()
            .filter(|id| index.broken_reason(*id, now).is_some())
            .collect();
        ids.extend(
            index
                .entries
                .iter()
                .filter(|(_, e)| e.ready().is_none())
                .map(|(id, _)| *id),
        );
        ids.sort();
        ids.dedup();
        ids
    }

    /// Why the toolchain may not be used on this node now, if it is broken.
    pub fn broken(&self, id: ToolchainId) -> Option<String> {
        lock(&self.inner.index).broken_reason(id, Instant::now())
    }

    /// Where a toolchain is (or will be) unpacked.
    pub fn dir_for(&self, id: &ToolchainId) -> PathBuf {
        self.inner.dir.join(id.to_string())
    }

    /// A scratch path next to the toolchains, for a download in progress.
    pub fn download_path(&self, id: &ToolchainId) -> PathBuf {
        self.inner
            .dir
            .join(format!(".download-{id}-{}", std::process::id()))
    }

    /// Returns a lease on the toolchain, running `fetch` to download and
    /// unpack it if this node does not hold it yet. `fetch` must leave the
    /// unpacked toolchain at [`Toolchains::dir_for`], having called
    /// [`Toolchains::make_room`] before unpacking, and return its manifest.
    /// The toolchain counts as in use from this call on, through the fetch,
    /// until the lease is dropped.
    ///
    /// A fetch that fails because the bundle is bad
    /// ([`FetchError::rejects_bundle`]) marks the toolchain broken and
    /// reports it to the scheduler.
    pub async fn acquire<F, Fut>(
        &self,
        id: ToolchainId,
        usage: Usage,
        fetch: F,
    ) -> Result<ToolchainLease, ToolchainError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<BundleManifest, FetchError>>,
    {
        let now = SystemTime::now();
        let (cell, touch) = {
            let mut index = lock(&self.inner.index);
            if let Some(reason) = index.broken_reason(id, Instant::now()) {
                return Err(ToolchainError::Broken(reason));
            }
            let entry = index.entries.entry(id).or_insert_with(|| {
                Entry::new(match usage {
                    Usage::Job => now,
                    Usage::Prefetch { last_used } => last_used,
                })
            });
            if entry.discard {
                return Err(ToolchainError::Discarding);
            }
            entry.pins += 1;
            let mut touch = false;
            if usage == Usage::Job {
                entry.last_used = now;
                if entry.ready().is_some() && touch_due(entry.touched, now) {
                    entry.touched = now;
                    touch = true;
                }
            }
            (entry.cell.clone(), touch)
        };
        let pin = Pin {
            inner: self.inner.clone(),
            id,
        };
        if touch {
            // A small file's time, at most once a minute per toolchain.
            self.inner.touch_marker(id, now);
        }
        let ready = cell
            .get_or_try_init(|| async {
                // A job that waited for a fetch that failed gets to try
                // again here, unless that fetch found the bundle bad.
                if let Some(reason) = self.broken(id) {
                    return Err(ToolchainError::Broken(reason));
                }
                match fetch().await {
                    Ok(manifest) => Ok(self.inner.fetched(id, manifest)),
                    Err(e) => {
                        self.inner.fetch_failed(id, &e);
                        Err(ToolchainError::Fetch(e))
                    }
                }
            })
            .await?
            .clone();
        Ok(ToolchainLease { _pin: pin, ready })
    }

    /// Reserves `size` bytes for the toolchain `id` being fetched and evicts
    /// what must go for it to fit (see [`choose_evictions`]); with
    /// `older_than` (a prefetch), nothing is evicted unless the toolchain
    /// then fits, and its reservation is dropped if it does not. Blocking:
    /// evicted directories are deleted before it returns.
    pub fn make_room(&self, id: ToolchainId, size: u64, older_than: Option<SystemTime>) -> Room {
        let limit = self.inner.limit;
        let (fits, doomed, total) = {
            let mut index = lock(&self.inner.index);
            if let Some(entry) = index.entries.get_mut(&id) {
                entry.size = size;
            }
            let held: Vec<Held> = index
                .entries
                .iter()
                .map(|(tid, e)| Held {
                    id: *tid,
                    size: e.size,
                    last_used: e.last_used,
                    in_use: e.pins > 0 || e.ready().is_none(),
                })
                .collect();
            let eviction = choose_evictions(&held, limit, older_than);
            if !eviction.fits && older_than.is_some() {
                if let Some(entry) = index.entries.get_mut(&id) {
                    entry.size = 0;
                }
                return Room {
                    fits: false,
                    evicted: Vec::new(),
                };
            }
            let mut doomed = Vec::new();
            for victim in eviction.victims {
                // The policy ran under this lock, so every victim is still
                // unpinned and ready.
                let size = index.entries.remove(&victim).map_or(0, |e| e.size);
                doomed.push((victim, size, self.inner.take_away(victim)));
            }
            let total: u64 = index.entries.values().map(|e| e.size).sum();
            (eviction.fits, doomed, total)
        };
        let mut evicted = Vec::new();
        for (victim, size, trash) in doomed {
            self.inner.dispose(trash);
            self.inner
                .report_evicted(victim, size, "to make room for another toolchain");
            evicted.push((victim, size));
        }
        if !fits {
            warn!(
                toolchain = %id,
                bytes = total,
                limit,
                "the toolchain cache is over its limit: every other toolchain is in use; \
                 it shrinks again when a later fetch finds some unused"
            );
        }
        Room { fits, evicted }
    }

    /// Checks the unpacked files of a toolchain against its manifest, after
    /// a job failed in a way that suggests the copy on disk is damaged (the
    /// loader could not open a library). A damaged toolchain is removed, at
    /// once or when the jobs using it end, and fetched again by the next
    /// job. Does nothing while a check runs or within [`RECHECK_AFTER`] of
    /// one that passed. Blocking: it hashes every file.
    pub fn check_damage(&self, id: ToolchainId) {
        let ready = {
            let mut index = lock(&self.inner.index);
            let Some(entry) = index.entries.get_mut(&id) else {
                return;
            };
            let recent = match entry.check {
                Check::Running => true,
                Check::PassedAt(at) => at.elapsed() < RECHECK_AFTER,
                Check::Never => false,
            };
            let Some(ready) = entry.ready().cloned() else {
                return;
            };
            if recent || entry.discard {
                return;
            }
            entry.check = Check::Running;
            ready
        };
        let verdict = check_files(&ready.dir, &ready.manifest);
        let mut index = lock(&self.inner.index);
        let Some(entry) = index.entries.get_mut(&id) else {
            return;
        };
        match verdict {
            Ok(()) => {
                entry.check = Check::PassedAt(Instant::now());
                info!(toolchain = %id, "the toolchain's files are intact");
            }
            Err(damage) => {
                entry.check = Check::Never;
                warn!(toolchain = %id, %damage, "the toolchain's copy on this node is damaged; removing it");
                if entry.pins > 0 {
                    entry.discard = true;
                    return;
                }
                let size = entry.size;
                index.entries.remove(&id);
                let trash = self.inner.take_away(id);
                drop(index);
                self.inner.dispose(trash);
                self.inner.report_evicted(id, size, "its copy was damaged");
            }
        }
    }
}

impl Inner {
    fn dir_for(&self, id: ToolchainId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Records a fetched toolchain: its real size and a marker carrying its
    /// last use.
    fn fetched(&self, id: ToolchainId, manifest: BundleManifest) -> Arc<ReadyToolchain> {
        let ready = Arc::new(ReadyToolchain {
            id,
            dir: self.dir_for(id),
            manifest,
        });
        let last_used = {
            let mut index = lock(&self.index);
            match index.entries.get_mut(&id) {
                Some(entry) => {
                    entry.size = ready.size();
                    entry.touched = entry.last_used;
                    entry.last_used
                }
                None => SystemTime::now(),
            }
        };
        self.touch_marker(id, last_used);
        ready
    }

    fn fetch_failed(&self, id: ToolchainId, error: &FetchError) {
        let mut index = lock(&self.index);
        if let Some(entry) = index.entries.get_mut(&id) {
            entry.size = 0;
        }
        if !error.rejects_bundle() {
            return;
        }
        let reason = error.to_string();
        index.broken.insert(
            id,
            Broken {
                until: Instant::now() + BROKEN_FOR,
                reason: reason.clone(),
            },
        );
        drop(index);
        warn!(
            toolchain = %id,
            %reason,
            "toolchain rejected: jobs that need it are refused on this node for {} minutes \
             and the scheduler is told",
            BROKEN_FOR.as_secs() / 60
        );
        let _ = self
            .events
            .send(NodeEvent::ToolchainRejected { id, reason });
    }

    /// Moves an evicted toolchain's directory out of the way, so that a new
    /// fetch of the same toolchain can unpack at once, and removes its
    /// marker. Returns the directory to delete. Called under the index lock
    /// (a rename and an unlink are quick), so that no fetch starts between
    /// the entry leaving the index and its directory leaving its name.
    fn take_away(&self, id: ToolchainId) -> Option<PathBuf> {
        let _ = fs::remove_file(marker_path(&self.dir, id));
        let dir = self.dir_for(id);
        if !dir.exists() {
            return None;
        }
        // A fresh empty directory to rename onto (Linux allows that), so
        // that the same toolchain evicted twice in a row cannot collide with
        // its own earlier remains.
        let moved = tempfile::Builder::new()
            .prefix(".evicted-")
            .tempdir_in(&self.dir)
            // On failure the empty directory is dropped, and so deleted.
            .and_then(|trash| fs::rename(&dir, trash.path()).map(|()| trash.keep()));
        match moved {
            Ok(trash) => Some(trash),
            Err(e) => {
                // The fetch that next unpacks this toolchain removes the old
                // directory first.
                warn!(toolchain = %id, cause = %e, "cannot move an evicted toolchain away");
                None
            }
        }
    }

    /// Deletes a directory [`Inner::take_away`] moved away: off the async
    /// workers when called inside the runtime, since a toolchain has
    /// thousands of files.
    fn dispose(&self, trash: Option<PathBuf>) {
        let Some(trash) = trash else { return };
        let remove = move || {
            if let Err(e) = fs::remove_dir_all(&trash) {
                warn!(path = %trash.display(), cause = %e, "cannot delete an evicted toolchain");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }

    fn report_evicted(&self, id: ToolchainId, bytes: u64, why: &str) {
        info!(toolchain = %id, bytes, limit = self.limit, "evicted a toolchain: {why}");
        let _ = self.events.send(NodeEvent::ToolchainEvicted(id));
    }

    fn touch_marker(&self, id: ToolchainId, when: SystemTime) {
        let path = marker_path(&self.dir, id);
        let touched = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(when));
        if let Err(e) = touched {
            debug!(toolchain = %id, cause = %e, "cannot record a toolchain's last use");
        }
    }
}

fn marker_path(dir: &Path, id: ToolchainId) -> PathBuf {
    dir.join(format!("{id}{MARKER_SUFFIX}"))
}

fn remove_any(path: &Path) {
    let _ = fs::remove_dir_all(path).or_else(|_| fs::remove_file(path));
}

/// Checks every file of an unpacked toolchain against its manifest entry:
/// present, of the listed size, with the listed content.
pub fn check_files(dir: &Path, manifest: &BundleManifest) -> Result<(), String> {
    for file in &manifest.files {
        let path = dir.join(&file.path);
        let mut f = fs::File::open(&path).map_err(|e| format!("{}: {e}", file.path))?;
        let len = f
            .metadata()
            .map_err(|e| format!("{}: {e}", file.path))?
            .len();
        if len != file.size {
            return Err(format!(
                "{} is {len} bytes, the manifest says {}",
                file.path, file.size
            ));
        }
        let mut hasher = blake3::Hasher::new();
        hasher
            .update_reader(&mut f)
            .map_err(|e| format!("{}: {e}", file.path))?;
        if hasher.finalize().as_bytes() != &file.digest.0 {
            return Err(format!("{} does not match the manifest", file.path));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
