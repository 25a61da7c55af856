//! Fetching a toolchain bundle from the scheduler: download, make room in
//! the cache, verify and unpack, and run the unpacked rustc once.
//!
//! A bundle whose content fails verification (it does not hash to its id,
//! it is truncated, its zstd or tar is broken, or a file does not match the
//! manifest) is downloaded again, up to [`MAX_FETCH_ATTEMPTS`] times in
//! all: a bit flipped in transit or a download cut short is not worth
//! giving up a toolchain for. If every attempt fails, the caller marks the
//! toolchain broken on this node (see [`crate::toolchains`]).
//!
//! After unpacking, the bundled rustc compiles a tiny crate once, inside
//! the same kind of bubblewrap sandbox jobs run in
//! ([`distcc_rs_pack::smoke_test`]): hashes prove that the bundle holds
//! what its packer put in, only running it proves that it works on this
//! machine. A failure there is not retried (the same verified bytes would
//! come back) and rejects the toolchain like a corrupt bundle.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use distcc_rs_net::{NetError, payload};
use distcc_rs_pack::{BUNDLE_MANIFEST_PATH, BundleManifest, PackError};
use distcc_rs_proto::ToolchainId;
use distcc_rs_proto::message::{FetchResponse, SchedulerRequest};
use tracing::{info, warn};

use crate::server::Shared;

/// How many times a node downloads a bundle that fails verification before
/// it rejects the toolchain.
pub const MAX_FETCH_ATTEMPTS: usize = 3;

/// A real manifest is a few tens of KiB; a larger first entry is not one.
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// Why a toolchain could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("not connected to the scheduler")]
    NotConnected,
    #[error("the scheduler does not have it")]
    NotFound,
    #[error("the bundle is {size} bytes, over the node's limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("the download failed: {0}")]
    Transfer(String),
    #[error("the bundle failed verification: {0}")]
    Corrupt(String),
    #[error("the unpacked toolchain does not run on this node: {0}")]
    SmokeTest(String),
    #[error("the node could not store it: {0}")]
    Local(String),
    #[error(
        "the toolchain cache has no room for it without evicting toolchains used more recently"
    )]
    NoRoom,
}

impl FetchError {
    /// Whether the failure is the bundle's: the toolchain is then not used
    /// on this node for a while, and the scheduler is told.
    pub fn rejects_bundle(&self) -> bool {
        matches!(self, FetchError::Corrupt(_) | FetchError::SmokeTest(_))
    }
}

/// Fetches a toolchain into the cache, downloading it again if it fails
/// verification. With `older_than` (a prefetch), it is dropped rather than
/// evicting a toolchain used at or after that time. Returns the manifest of
/// the unpacked toolchain.
pub async fn fetch(
    shared: &Arc<Shared>,
    id: ToolchainId,
    older_than: Option<SystemTime>,
) -> Result<BundleManifest, FetchError> {
    let mut attempt = 1;
    loop {
        match fetch_once(shared, id, older_than).await {
            Err(FetchError::Corrupt(reason)) if attempt < MAX_FETCH_ATTEMPTS => {
                warn!(
                    toolchain = %id, attempt, %reason,
                    "the toolchain bundle failed verification; fetching it again"
                );
                attempt += 1;
            }
            Err(FetchError::Corrupt(reason)) => {
                return Err(FetchError::Corrupt(format!(
                    "{reason} (fetched {attempt} times)"
                )));
            }
            other => return other,
        }
    }
}

async fn fetch_once(
    shared: &Arc<Shared>,
    id: ToolchainId,
    older_than: Option<SystemTime>,
) -> Result<BundleManifest, FetchError> {
    let conn = shared
        .scheduler
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or(FetchError::NotConnected)?;
    let transfer = |e: NetError| FetchError::Transfer(e.to_string());
    info!(toolchain = %id, "fetching toolchain from the scheduler");
    let started = Instant::now();
    let (mut w, mut r) = distcc_rs_net::open_stream(&conn).await.map_err(transfer)?;
    w.send(&SchedulerRequest::FetchToolchain(id))
        .await
        .map_err(transfer)?;
    let size = match r.recv::<FetchResponse>().await.map_err(transfer)? {
        FetchResponse::Found { compressed_size } => compressed_size,
        FetchResponse::NotFound => return Err(FetchError::NotFound),
    };
    let limit = shared.config.max_bundle_size;
    if size > limit {
        return Err(FetchError::TooLarge { size, limit });
    }
    let download = shared.toolchains.download_path(&id);
    let result = async {
        let mut file = fs::File::create(&download).map_err(|e| FetchError::Local(e.to_string()))?;
        let received = match payload::recv_raw(&mut r, &mut file, size).await {
            Ok(n) => n,
            Err(NetError::PayloadTooLarge { .. }) => {
                return Err(FetchError::Corrupt(format!(
                    "the scheduler sent more than the {size} bytes it announced"
                )));
            }
            Err(NetError::Io(e)) => return Err(FetchError::Local(e.to_string())),
            Err(e) => return Err(transfer(e)),
        };
        if received != size {
            return Err(FetchError::Corrupt(format!(
                "truncated: {received} of {size} bytes arrived"
            )));
        }
        drop(file);
        let shared = shared.clone();
        let download = download.clone();
        tokio::task::spawn_blocking(move || install(&shared, id, &download, older_than))
            .await
            .map_err(|e| FetchError::Local(format!("the unpacking task failed: {e}")))?
    }
    .await;
    let _ = fs::remove_file(&download);
    if let Ok(manifest) = &result {
        info!(
            toolchain = %id,
            version = manifest.version_line(),
            compressed_bytes = size,
            unpacked_bytes = manifest.total_size(),
            secs = started.elapsed().as_secs_f32(),
            "toolchain ready"
        );
    }
    result
}

/// Makes room for the downloaded bundle, unpacks it (which verifies it) and
/// runs its rustc. Blocking.
fn install(
    shared: &Shared,
    id: ToolchainId,
    download: &Path,
    older_than: Option<SystemTime>,
) -> Result<BundleManifest, FetchError> {
    // The manifest comes first in a bundle; its sizes say how much room the
    // unpacked toolchain needs before anything is unpacked. It is not
    // trusted yet, but a lie about the sizes fails the unpacking, which
    // checks every file against it.
    let announced = read_manifest(download).map_err(FetchError::Corrupt)?;
    // A manifest announcing more than any bundle may unpack to must not
    // make the cache evict toolchains for it.
    distcc_rs_pack::UnpackLimits::default()
        .check_manifest(&announced)
        .map_err(|e| FetchError::Corrupt(e.to_string()))?;
    let room = shared
        .toolchains
        .make_room(id, announced.total_size(), older_than);
    if !room.fits && older_than.is_some() {
        return Err(FetchError::NoRoom);
    }
    let dest = shared.toolchains.dir_for(&id);
    // A directory here belongs to nobody (this is the only fetch of `id`):
    // an eviction could not move it away. It would make the unpack fail.
    if dest.exists() {
        fs::remove_dir_all(&dest).map_err(|e| FetchError::Local(e.to_string()))?;
    }
    let file = fs::File::open(download).map_err(|e| FetchError::Local(e.to_string()))?;
    let manifest =
        distcc_rs_pack::unpack(std::io::BufReader::new(file), &dest, id).map_err(|e| match e {
            PackError::Io { .. } | PackError::DestinationExists(_) => {
                FetchError::Local(e.to_string())
            }
            other => FetchError::Corrupt(other.to_string()),
        })?;
    if shared.config.smoke_test
        && let Err(e) = smoke_test(shared, &dest, &manifest)
    {
        let _ = fs::remove_dir_all(&dest);
        return Err(e);
    }
    Ok(manifest)
}

/// Runs the unpacked rustc on a tiny crate inside bubblewrap, exactly as a
/// job runs: through the node's launcher, as the job user, within the job
/// limits. The bundle is a client's upload, so its rustc is as untrusted as
/// any proc-macro, and a node running as root must not run it as root.
fn smoke_test(shared: &Shared, dir: &Path, manifest: &BundleManifest) -> Result<(), FetchError> {
    let work = tempfile::Builder::new()
        .prefix("smoke-")
        .tempdir_in(&shared.jobs_dir)
        .map_err(|e| FetchError::Local(format!("smoke test directory: {e}")))?;
    let bwrap = distcc_rs_pack::bwrap_launcher(&shared.config.bwrap, dir, work.path());
    let cgroup = match &shared.isolation {
        crate::isolation::Isolation::Hardened(h) => {
            let name = work
                .path()
                .file_name()
                .map_or_else(|| "smoke".to_owned(), |n| n.to_string_lossy().into_owned());
            crate::limits::JobCgroup::create(&h.mechanism, &name, &h.limits).map_err(|e| {
                FetchError::Local(format!("cannot create the smoke test's cgroup: {e}"))
            })?
        }
        crate::isolation::Isolation::Insecure => None,
    };
    let (program, args) =
        shared
            .isolation
            .command(cgroup.as_ref(), Path::new(&bwrap[0]), &bwrap[1..]);
    let launcher: Vec<std::ffi::OsString> = std::iter::once(program.into_os_string())
        .chain(args)
        .collect();
    let job_user = shared.isolation.job_user();
    let hand_over = |dirs: &[std::path::PathBuf]| crate::isolation::chown_writable(job_user, dirs);
    let started = Instant::now();
    let result = distcc_rs_pack::smoke_test_as(dir, manifest, work.path(), &launcher, &hand_over);
    // Kills anything the smoke test left behind and removes the cgroup.
    drop(cgroup);
    match result {
        Ok(report) => {
            info!(
                version = report.version,
                targets = report.targets.len(),
                secs = started.elapsed().as_secs_f32(),
                "the toolchain's rustc compiled a test crate"
            );
            Ok(())
        }
        Err(e @ PackError::SmokeTest { .. }) => Err(FetchError::SmokeTest(e.to_string())),
        Err(e) => Err(FetchError::Local(format!("smoke test: {e}"))),
    }
}

/// Reads the manifest, the first entry of a bundle, without unpacking the
/// rest.
fn read_manifest(bundle: &Path) -> Result<BundleManifest, String> {
    let file = fs::File::open(bundle).map_err(|e| e.to_string())?;
    let decoder = zstd::stream::read::Decoder::new(file).map_err(|e| e.to_string())?;
    let mut archive = tar::Archive::new(decoder);
    let mut entries = archive.entries().map_err(|e| e.to_string())?;
    let mut first = entries
        .next()
        .ok_or("the bundle is empty")?
        .map_err(|e| e.to_string())?;
    let path = first.path().map_err(|e| e.to_string())?.into_owned();
    if path != Path::new(BUNDLE_MANIFEST_PATH) {
        return Err(format!(
            "the bundle starts with {}, not with its manifest",
            path.display()
        ));
    }
    if first.size() > MAX_MANIFEST_BYTES {
        return Err(format!("the manifest is {} bytes", first.size()));
    }
    let mut bytes = Vec::new();
    first
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading the manifest: {e}"))?;
    BundleManifest::from_json(&bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
