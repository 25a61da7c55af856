//! Toolchains on the node: fetched from the scheduler on first use,
//! verified, unpacked, and reused afterwards.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use distcc_rs_pack::{BUNDLE_MANIFEST_PATH, BundleManifest};
use distcc_rs_proto::ToolchainId;
use tokio::sync::OnceCell;

/// An unpacked toolchain, ready to run.
#[derive(Debug)]
pub struct ReadyToolchain {
    pub id: ToolchainId,
    pub dir: PathBuf,
    pub manifest: BundleManifest,
}

/// All toolchains this node holds or is fetching.
#[derive(Debug)]
pub struct Toolchains {
    dir: PathBuf,
    // One cell per toolchain, so concurrent jobs that need the same missing
    // toolchain wait for a single fetch instead of each starting their own.
    cells: Mutex<HashMap<ToolchainId, Arc<OnceCell<Arc<ReadyToolchain>>>>>,
}

impl Toolchains {
    /// Opens the toolchain directory and loads the toolchains already
    /// unpacked there by an earlier run. Half-finished unpacks are removed.
    pub fn open(dir: PathBuf) -> std::io::Result<Self> {
        fs::create_dir_all(&dir)?;
        let mut cells = HashMap::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(id) = name.parse::<ToolchainId>() else {
                // Temporary unpack directories and stray downloads.
                let _ = fs::remove_dir_all(entry.path()).or_else(|_| fs::remove_file(entry.path()));
                continue;
            };
            let manifest = fs::read(entry.path().join(BUNDLE_MANIFEST_PATH))
                .ok()
                .and_then(|b| serde_json::from_slice::<BundleManifest>(&b).ok());
            match manifest {
                Some(manifest) => {
                    let ready = Arc::new(ReadyToolchain {
                        id,
                        dir: entry.path(),
                        manifest,
                    });
                    cells.insert(id, Arc::new(OnceCell::new_with(Some(ready))));
                }
                None => {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(Toolchains {
            dir,
            cells: Mutex::new(cells),
        })
    }

    /// The toolchains ready on this node.
    pub fn ready(&self) -> Vec<ToolchainId> {
        let cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<_> = cells
            .iter()
            .filter(|(_, c)| c.initialized())
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        ids
    }

    /// Where a toolchain is (or will be) unpacked.
    pub fn dir_for(&self, id: &ToolchainId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// A scratch path next to the toolchains, for a download in progress.
    pub fn download_path(&self, id: &ToolchainId) -> PathBuf {
        self.dir
            .join(format!(".download-{id}-{}", std::process::id()))
    }

    /// Returns the toolchain, running `fetch` to download and unpack it if
    /// this node does not hold it yet. `fetch` must leave the unpacked
    /// toolchain at [`Toolchains::dir_for`] and return its manifest.
    pub async fn get<F, Fut>(
        &self,
        id: ToolchainId,
        fetch: F,
    ) -> Result<Arc<ReadyToolchain>, String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<BundleManifest, String>>,
    {
        let cell = {
            let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
            cells.entry(id).or_default().clone()
        };
        let ready = cell
            .get_or_try_init(|| async {
                let manifest = fetch().await?;
                Ok::<_, String>(Arc::new(ReadyToolchain {
                    id,
                    dir: self.dir_for(&id),
                    manifest,
                }))
            })
            .await?;
        Ok(ready.clone())
    }
}
