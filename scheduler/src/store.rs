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
//! Next to each bundle, `<id hex>.json` records when it was stored and what
//! its manifest says (rustc version, host, targets), so that listing the
//! store reads a few small files rather than decompressing bundles. It is
//! written before the bundle gets its name, so a bundle always has one
//! unless it was stored by an older scheduler; for those it is made from
//! the bundle's first entry, its manifest, the first time it is needed.
//!
//! The store has a size limit (`--max-store-size`). Making room evicts the
//! least recently used bundles first, where "used" means a job of the
//! toolchain was placed: the bundle file's modification time is set at
//! each placement (at most once a minute), so recency survives restarts.
//! Which bundles to evict is a pure decision, [`plan_eviction`]; the server
//! supplies the bundles it must keep (jobs in flight, node downloads).
//!
//! This module does blocking file IO; the server calls the slow parts
//! (verification) on tokio's blocking pool.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use distcc_rs_pack::{BUNDLE_MANIFEST_PATH, BundleManifest};
use distcc_rs_proto::ToolchainId;
use distcc_rs_proto::message::{BundleError, BundleSummary};
use serde::{Deserialize, Serialize};

/// The largest bundle the store accepts unless configured otherwise: 2 GiB,
/// several times the size of a real toolchain bundle.
pub const DEFAULT_MAX_BUNDLE_SIZE: u64 = 2 << 30;

/// The store's size limit unless configured otherwise: 20 GiB, room for
/// about a hundred real bundles (stable, nightly and pinned versions, with
/// and without extra targets).
pub const DEFAULT_MAX_STORE_SIZE: u64 = 20 << 30;

/// A bundle's modification time is set when a job of it is placed, but no
/// more often than this: recency only needs to order bundles for eviction,
/// and a busy farm places hundreds of jobs a second.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

const BUNDLE_SUFFIX: &str = ".tar.zst";

/// The suffix of the record kept next to each bundle.
const SIDECAR_SUFFIX: &str = ".json";

/// A real manifest is a few tens of KiB; reading one from an old bundle
/// never allocates more than this.
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

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

/// A stored bundle with what the store knows about it, from
/// [`ToolchainStore::inventory`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleRecord {
    pub id: ToolchainId,
    pub compressed_size: u64,
    /// When it was stored.
    pub stored_at: SystemTime,
    /// When a job of it was last placed (to within [`TOUCH_INTERVAL`]), if
    /// one was since it was stored.
    pub last_used: Option<SystemTime>,
    /// Its manifest's summary; `None` if neither the record next to it nor
    /// the bundle itself could be read.
    pub summary: Option<BundleSummary>,
}

impl BundleRecord {
    /// The time eviction orders by: the last use, or the time it was stored
    /// for a bundle never used, so a fresh upload is not the first to go.
    pub fn recency(&self) -> SystemTime {
        self.last_used.unwrap_or(self.stored_at)
    }
}

/// The record kept next to each bundle, `<id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sidecar {
    /// Milliseconds since the Unix epoch.
    stored_at_ms: u64,
    summary: Option<BundleSummary>,
}

/// The directory of toolchain bundles.
#[derive(Debug)]
pub struct ToolchainStore {
    dir: PathBuf,
    max_bundle_size: u64,
    max_store_size: u64,
    /// Serialises the steps that decide what the store holds (making room
    /// and storing a bundle, removing one), so that two uploads cannot each
    /// count the same free space.
    changes: Mutex<()>,
    /// Downloads of each bundle in progress (see [`ToolchainStore::lease`]).
    leases: Mutex<HashMap<ToolchainId, u32>>,
    /// When each bundle's modification time was last set by
    /// [`ToolchainStore::mark_used`].
    touched: Mutex<HashMap<ToolchainId, Instant>>,
}

/// Locks a mutex whose data stays consistent at every panic point (plain
/// counters and maps), so a poisoned lock still holds usable data.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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
            max_store_size: DEFAULT_MAX_STORE_SIZE,
            changes: Mutex::new(()),
            leases: Mutex::new(HashMap::new()),
            touched: Mutex::new(HashMap::new()),
        };
        for entry in store.entries()? {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // A record whose bundle never got its name (a crash between the
            // two renames) or was deleted describes nothing.
            let orphan = || {
                name.strip_suffix(SIDECAR_SUFFIX)
                    .and_then(|hex| hex.parse::<ToolchainId>().ok())
                    .is_some_and(|id| !store.has(id))
            };
            if (name.starts_with(UPLOAD_PREFIX) || orphan())
                && let Err(e) = fs::remove_file(entry.path())
            {
                tracing::warn!(path = %entry.path().display(), cause = %e,
                    "cannot remove an interrupted upload");
            }
        }
        Ok(store)
    }

    /// Sets the store's size limit: the compressed bytes all bundles may
    /// take together.
    pub fn with_max_store_size(mut self, limit: u64) -> Self {
        self.max_store_size = limit;
        self
    }

    /// The store's size limit.
    pub fn max_store_size(&self) -> u64 {
        self.max_store_size
    }

    /// Takes the lock that serialises changes to what the store holds. Hold
    /// it from deciding what to evict until the new bundle is in place.
    pub fn lock_changes(&self) -> MutexGuard<'_, ()> {
        lock(&self.changes)
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

    fn sidecar_path(&self, id: ToolchainId) -> PathBuf {
        self.dir.join(format!("{id}{SIDECAR_SUFFIX}"))
    }

    /// Every bundle with its times and manifest summary, sorted by id.
    /// Reads one small record per bundle; a bundle stored by an older
    /// scheduler, without a record, gets one made from its manifest.
    pub fn inventory(&self) -> Result<Vec<BundleRecord>, StoreError> {
        let mut out = Vec::new();
        for bundle in self.list()? {
            let path = self.bundle_path(bundle.id);
            // The bundle may have been removed since it was listed.
            let Ok(modified) = fs::metadata(&path).and_then(|m| m.modified()) else {
                continue;
            };
            let sidecar = match self.read_sidecar(bundle.id) {
                Some(sidecar) => sidecar,
                None => {
                    let sidecar = Sidecar {
                        stored_at_ms: unix_ms(modified),
                        summary: read_manifest(&path).map(|m| summarize(&m)),
                    };
                    if let Err(e) = self.write_sidecar(bundle.id, &sidecar) {
                        tracing::warn!(toolchain = %bundle.id, cause = %e,
                            "cannot record a stored bundle's details");
                    }
                    sidecar
                }
            };
            // Compared in whole milliseconds, the precision of the record:
            // a bundle's time is set to exactly that when it is stored.
            out.push(BundleRecord {
                id: bundle.id,
                compressed_size: bundle.compressed_size,
                stored_at: from_unix_ms(sidecar.stored_at_ms),
                last_used: (unix_ms(modified) > sidecar.stored_at_ms).then_some(modified),
                summary: sidecar.summary,
            });
        }
        Ok(out)
    }

    fn read_sidecar(&self, id: ToolchainId) -> Option<Sidecar> {
        let bytes = fs::read(self.sidecar_path(id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes a bundle's record atomically (a temporary file renamed), so a
    /// reader never sees half of one.
    fn write_sidecar(&self, id: ToolchainId, sidecar: &Sidecar) -> io::Result<()> {
        let mut temp = tempfile::Builder::new()
            .prefix(UPLOAD_PREFIX)
            .suffix(".json")
            .tempfile_in(&self.dir)?;
        serde_json::to_writer(temp.as_file_mut(), sidecar)?;
        temp.persist(self.sidecar_path(id))
            .map(drop)
            .map_err(|e| e.error)
    }

    /// Records that a job of this toolchain was placed now, by setting the
    /// bundle file's modification time, unless that was done less than
    /// [`TOUCH_INTERVAL`] ago. Failures are logged: recency is a hint.
    pub fn mark_used(&self, id: ToolchainId, now: Instant) {
        {
            let mut touched = lock(&self.touched);
            if touched
                .get(&id)
                .is_some_and(|at| now.saturating_duration_since(*at) < TOUCH_INTERVAL)
            {
                return;
            }
            touched.insert(id, now);
        }
        let path = self.bundle_path(id);
        if let Err(e) = File::open(&path).and_then(|f| f.set_modified(SystemTime::now())) {
            tracing::debug!(path = %path.display(), cause = %e, "cannot mark a bundle as used");
        }
    }

    /// Marks a bundle as being downloaded until the returned lease is
    /// dropped; eviction keeps leased bundles. (A download that opened the
    /// file before a forced removal still completes: the open file outlives
    /// its name.)
    pub fn lease(&self, id: ToolchainId) -> Lease<'_> {
        *lock(&self.leases).entry(id).or_insert(0) += 1;
        Lease { store: self, id }
    }

    /// Downloads in progress, per bundle; bundles with none are left out.
    pub fn downloads(&self) -> BTreeMap<ToolchainId, u32> {
        lock(&self.leases)
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(id, n)| (*id, *n))
            .collect()
    }

    /// Deletes a bundle and its record. Returns the bundle's size, or
    /// `Ok(None)` if the store does not hold it. The caller decides whether
    /// the bundle may go (see [`plan_eviction`]) and tells the farm.
    pub fn remove(&self, id: ToolchainId) -> Result<Option<u64>, BundleError> {
        let path = self.bundle_path(id);
        let size = match fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("cannot read the bundle to remove", &e)),
        };
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("cannot delete the bundle", &e)),
        }
        // The bundle is gone, which is what counts; a record left behind is
        // swept at the next start.
        if let Err(e) = fs::remove_file(self.sidecar_path(id))
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(toolchain = %id, cause = %e, "cannot delete a removed bundle's record");
        }
        lock(&self.touched).remove(&id);
        Ok(Some(size))
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
            sidecar: self.sidecar_path(id),
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

    /// Verifies a stored bundle again, as an upload is verified, and deletes
    /// it if it no longer passes: a node reported that the copy it fetched
    /// was damaged, and the damage may be in ours (a disk error, or someone
    /// writing to the file). Slow for real bundles: call it off the async
    /// runtime.
    pub fn recheck(&self, id: ToolchainId) -> Recheck {
        use std::os::unix::fs::MetadataExt;
        let path = self.bundle_path(id);
        let inode = |p: &Path| fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
        let Some(checked) = inode(&path) else {
            return Recheck::Missing;
        };
        let Err(error) = verify(&path, id) else {
            return Recheck::Intact;
        };
        if let BundleError::Io(_) = error {
            // The scheduler could not read its own file: nothing says the
            // content is bad, so deleting it would lose a good bundle.
            return Recheck::Unreadable(error);
        }
        // Held until the bundle is gone, so no upload can put a copy in
        // place between the check below and the removal.
        let _changes = self.lock_changes();
        // An upload may have put a fresh copy in place (a new file, renamed
        // over the old name) while the old one was being read; that copy
        // was verified on its way in and must stay.
        if inode(&path) != Some(checked) {
            return Recheck::Replaced;
        }
        match self.remove(id) {
            Ok(_) => Recheck::Deleted(error),
            Err(e) => Recheck::Unreadable(e),
        }
    }
}

/// What [`ToolchainStore::recheck`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Recheck {
    /// The stored bundle still verifies: whatever a node saw, it is not this
    /// copy's fault.
    Intact,
    /// The stored bundle failed verification for this reason and was
    /// deleted; the next client that needs it uploads it again.
    Deleted(BundleError),
    /// The store does not hold the bundle (any more).
    Missing,
    /// The bundle failed, but a new copy replaced it during the check.
    Replaced,
    /// The bundle could not be read or deleted; it was left in place.
    Unreadable(BundleError),
}

/// A download in progress (see [`ToolchainStore::lease`]).
#[derive(Debug)]
pub struct Lease<'a> {
    store: &'a ToolchainStore,
    id: ToolchainId,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut leases = lock(&self.store.leases);
        if let Some(n) = leases.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                leases.remove(&self.id);
            }
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
    sidecar: PathBuf,
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
    /// it under its final name, without regard to the store's size limit.
    /// Returns its compressed size. Slow for real bundles (it decompresses
    /// and hashes all of it): call it off the async runtime.
    pub fn finish(self) -> Result<StoredBundle, BundleError> {
        self.verify()?.persist()
    }

    /// Checks the received bundle against its id; the server then makes
    /// room for it and calls [`VerifiedUpload::persist`]. Slow for real
    /// bundles: call it off the async runtime.
    pub fn verify(mut self) -> Result<VerifiedUpload, BundleError> {
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
        let manifest = verify(self.temp.path(), self.id)?;
        Ok(VerifiedUpload {
            upload: self,
            size,
            summary: summarize(&manifest),
        })
    }
}

/// An upload that passed verification, not yet stored under its name.
/// Dropping it deletes the temporary file.
#[derive(Debug)]
pub struct VerifiedUpload {
    upload: Upload,
    size: u64,
    summary: BundleSummary,
}

impl VerifiedUpload {
    pub fn id(&self) -> ToolchainId {
        self.upload.id
    }

    /// The compressed size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Stores the bundle under its final name, its record first, so that a
    /// bundle under its name always has one. Its modification time is set
    /// to the time it was stored, which the record holds too: a later
    /// modification time means a job of it was placed.
    pub fn persist(self) -> Result<StoredBundle, BundleError> {
        let VerifiedUpload {
            upload,
            size,
            summary,
        } = self;
        let now = from_unix_ms(unix_ms(SystemTime::now()));
        let sidecar = Sidecar {
            stored_at_ms: unix_ms(now),
            summary: Some(summary),
        };
        let dir = upload.dest.parent().unwrap_or(Path::new("."));
        let mut record = tempfile::Builder::new()
            .prefix(UPLOAD_PREFIX)
            .suffix(".json")
            .tempfile_in(dir)
            .map_err(|e| io_error("cannot create the bundle's record", &e))?;
        serde_json::to_writer(record.as_file_mut(), &sidecar)
            .map_err(|e| BundleError::Io(format!("cannot write the bundle's record: {e}")))?;
        record
            .persist(&upload.sidecar)
            .map_err(|e| io_error("cannot move the bundle's record into place", &e.error))?;
        upload
            .temp
            .as_file()
            .set_modified(now)
            .map_err(|e| io_error("cannot set the bundle's time", &e))?;
        upload
            .temp
            .persist(&upload.dest)
            .map_err(|e| io_error("cannot move the verified bundle into place", &e.error))?;
        Ok(StoredBundle {
            id: upload.id,
            compressed_size: size,
        })
    }
}

/// What to evict so that a bundle of `incoming` bytes fits within `limit`,
/// least recently used first (ties by id, so the choice is deterministic).
/// `bundles` are those stored now, without the incoming one; `keep` says
/// which of them must stay (jobs in flight, downloads). Returns the ids to
/// evict, none when it fits already, or [`BundleError::StoreFull`] when it
/// cannot fit even after evicting everything that may go.
pub fn plan_eviction(
    bundles: &[BundleRecord],
    incoming: u64,
    limit: u64,
    keep: impl Fn(ToolchainId) -> bool,
) -> Result<Vec<ToolchainId>, BundleError> {
    let used: u64 = bundles.iter().map(|b| b.compressed_size).sum();
    let in_use: u64 = bundles
        .iter()
        .filter(|b| keep(b.id))
        .map(|b| b.compressed_size)
        .sum();
    if in_use.saturating_add(incoming) > limit {
        return Err(BundleError::StoreFull {
            size: incoming,
            limit,
            in_use,
        });
    }
    let mut candidates: Vec<&BundleRecord> = bundles.iter().filter(|b| !keep(b.id)).collect();
    candidates.sort_by_key(|b| (b.recency(), b.id));
    let mut remaining = used;
    let mut evict = Vec::new();
    for b in candidates {
        if remaining.saturating_add(incoming) <= limit {
            break;
        }
        remaining -= b.compressed_size;
        evict.push(b.id);
    }
    Ok(evict)
}

/// The parts of a manifest that `distcc-rs-pack list` shows.
fn summarize(m: &BundleManifest) -> BundleSummary {
    BundleSummary {
        version_line: m.version_line().to_owned(),
        release: m.release().map(str::to_owned),
        host: m.host.clone(),
        targets: m.targets().into_iter().map(str::to_owned).collect(),
    }
}

/// Reads the manifest, the first entry of a stored bundle, without reading
/// the rest. `None` if the bundle does not start with a valid one (it was
/// verified when stored, so that would mean it was damaged since).
fn read_manifest(path: &Path) -> Option<BundleManifest> {
    let file = File::open(path).ok()?;
    let decoder = zstd::stream::read::Decoder::new(file).ok()?;
    let mut archive = tar::Archive::new(decoder);
    let mut entry = archive.entries().ok()?.next()?.ok()?;
    if entry.path().ok()?.as_os_str() != BUNDLE_MANIFEST_PATH {
        return None;
    }
    let mut bytes = Vec::new();
    (&mut entry)
        .take(MAX_MANIFEST_BYTES)
        .read_to_end(&mut bytes)
        .ok()?;
    BundleManifest::from_json(&bytes).ok()
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn from_unix_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

fn io_error(what: &str, e: &io::Error) -> BundleError {
    BundleError::Io(format!("{what}: {e}"))
}

/// Checks that the bundle at `path` is a well-formed bundle (zstd-compressed
/// tar, manifest first, safe paths) whose uncompressed tar hashes to `id`.
/// Checking the structure, not only the hash, means a node never fetches a
/// bundle from us that it would then refuse to unpack.
fn verify(path: &Path, id: ToolchainId) -> Result<BundleManifest, BundleError> {
    use distcc_rs_pack::PackError;
    match distcc_rs_pack::verify_file(path, id) {
        Ok(manifest) => Ok(manifest),
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
