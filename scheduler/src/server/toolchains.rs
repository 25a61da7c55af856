//! The requests about the toolchain store as a whole: listing it
//! (`distcc-rs-pack list`), removing a bundle (`distcc-rs-pack rm`), and
//! storing an upload within the store's size limit.
//!
//! Every change to what the store holds takes the store's change lock, then
//! the farm lock to decide: the bundles that jobs in flight or node
//! downloads need are kept, and the farm forgets every other bundle that
//! goes before the lock is released, so no job of it is placed after the
//! decision. Clients of a forgotten toolchain are asked to upload it again
//! (`NeedToolchain`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use distcc_rs_net::FrameWriter;
use distcc_rs_proto::ToolchainId;
use distcc_rs_proto::message::{
    BundleError, NodeStatus, RemoveResponse, StoredToolchain, ToolchainHolder, ToolchainList,
};
use tracing::{error, info, warn};

use super::{RequestError, Shared};
use crate::store::{BundleRecord, StoreError, StoredBundle, ToolchainStore, Upload, plan_eviction};

/// Answers `ListToolchains`.
pub(super) async fn list(shared: Arc<Shared>, mut w: FrameWriter) -> Result<(), RequestError> {
    let reader = shared.clone();
    let records = match tokio::task::spawn_blocking(move || reader.store.inventory()).await {
        Ok(Ok(records)) => records,
        // Without a listing there is no honest answer; the asker sees the
        // stream end and says the scheduler failed.
        Ok(Err(e)) => {
            error!(cause = %e, "cannot list the toolchain store");
            return Ok(());
        }
        Err(e) => {
            error!(cause = %e, "the store listing task failed");
            return Ok(());
        }
    };
    let (nodes, jobs) = {
        let farm = shared.farm();
        (farm.status(Instant::now()).nodes, farm.jobs_per_toolchain())
    };
    let list = describe(
        &records,
        &nodes,
        &jobs,
        &shared.store.downloads(),
        SystemTime::now(),
        shared.store.max_store_size(),
    );
    w.send(&list).await?;
    w.finish()?;
    Ok(())
}

/// The listing's content, from what the store, the farm and the downloads
/// in progress say.
pub(crate) fn describe(
    records: &[BundleRecord],
    nodes: &[NodeStatus],
    jobs: &BTreeMap<ToolchainId, u32>,
    downloads: &BTreeMap<ToolchainId, u32>,
    now: SystemTime,
    limit: u64,
) -> ToolchainList {
    let ago = |t: SystemTime| {
        now.duration_since(t)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    };
    let toolchains = records
        .iter()
        .map(|r| StoredToolchain {
            id: r.id,
            compressed_size: r.compressed_size,
            summary: r.summary.clone(),
            stored_ago_ms: ago(r.stored_at),
            last_used_ago_ms: r.last_used.map(ago),
            holders: nodes
                .iter()
                .filter(|n| n.toolchains.contains(&r.id))
                .map(|n| ToolchainHolder {
                    node: n.node,
                    name: n.name.clone(),
                })
                .collect(),
            jobs_in_flight: jobs.get(&r.id).copied().unwrap_or(0),
            downloads: downloads.get(&r.id).copied().unwrap_or(0),
        })
        .collect();
    ToolchainList {
        toolchains,
        used: records.iter().map(|r| r.compressed_size).sum(),
        limit,
    }
}

/// Answers `RemoveToolchain`.
pub(super) async fn remove(
    shared: Arc<Shared>,
    id: ToolchainId,
    force: bool,
    mut w: FrameWriter,
) -> Result<(), RequestError> {
    let response = tokio::task::spawn_blocking(move || remove_now(&shared, id, force))
        .await
        .unwrap_or_else(|e| {
            RemoveResponse::Failed(BundleError::Io(format!("the removal task failed: {e}")))
        });
    w.send(&response).await?;
    w.finish()?;
    Ok(())
}

fn remove_now(shared: &Shared, id: ToolchainId, force: bool) -> RemoveResponse {
    let _changes = shared.store.lock_changes();
    if !shared.store.has(id) {
        return RemoveResponse::NotFound;
    }
    {
        let mut farm = shared.farm();
        let jobs = farm.jobs_per_toolchain().get(&id).copied().unwrap_or(0);
        let downloads = shared.store.downloads().get(&id).copied().unwrap_or(0);
        if jobs + downloads > 0 {
            if !force {
                info!(toolchain = %id, jobs, downloads, "kept a toolchain asked to be removed: in use");
                return RemoveResponse::InUse { jobs, downloads };
            }
            warn!(toolchain = %id, jobs, downloads, "removing a toolchain in use, as forced");
        }
        farm.toolchain_forgotten(id);
    }
    match shared.store.remove(id) {
        Ok(Some(freed)) => {
            info!(toolchain = %id, freed, "toolchain bundle removed on request");
            RemoveResponse::Removed { freed }
        }
        Ok(None) => RemoveResponse::NotFound,
        Err(e) => {
            error!(toolchain = %id, cause = %e, "cannot remove a toolchain bundle");
            still_stored(shared, id);
            RemoveResponse::Failed(e)
        }
    }
}

/// Tells the farm again about a bundle it was told to forget but whose
/// file could not be deleted, so that clients are not asked to upload a
/// bundle the store already holds.
fn still_stored(shared: &Shared, id: ToolchainId) {
    if let Ok(Some((_, size))) = shared.store.open_bundle(id) {
        shared.farm().toolchain_stored(id, size);
    }
}

/// Verifies an upload, makes room for it by evicting the least recently
/// used bundles that nothing needs, and stores it. Blocking: call it on
/// the blocking pool.
pub(super) fn store_upload(shared: &Shared, upload: Upload) -> Result<StoredBundle, BundleError> {
    let verified = upload.verify()?;
    let id = verified.id();
    let _changes = shared.store.lock_changes();
    let others: Vec<BundleRecord> = shared
        .store
        .inventory()
        .map_err(|e| BundleError::Io(e.to_string()))?
        .into_iter()
        .filter(|r| r.id != id)
        .collect();
    let evict = {
        let mut farm = shared.farm();
        let jobs = farm.jobs_per_toolchain();
        let downloads = shared.store.downloads();
        let evict = plan_eviction(
            &others,
            verified.size(),
            shared.store.max_store_size(),
            |t| jobs.contains_key(&t) || downloads.contains_key(&t),
        )?;
        for victim in &evict {
            farm.toolchain_forgotten(*victim);
        }
        evict
    };
    for victim in evict {
        match shared.store.remove(victim) {
            Ok(freed) => info!(
                toolchain = %victim, freed = freed.unwrap_or(0), incoming = %id,
                "evicted the least recently used toolchain bundle to make room"
            ),
            Err(e) => {
                warn!(toolchain = %victim, cause = %e, "cannot evict a toolchain bundle");
                still_stored(shared, victim);
            }
        }
    }
    let stored = verified.persist()?;
    shared
        .farm()
        .toolchain_stored(stored.id, stored.compressed_size);
    Ok(stored)
}

/// Evicts least recently used bundles until the store is within its limit,
/// at start-up (the limit may have been lowered since the last run), when
/// nothing can be in use yet.
pub(super) fn evict_over_limit(store: &ToolchainStore) -> Result<(), StoreError> {
    let records = store.inventory()?;
    // Nothing comes in and nothing must stay, so the plan cannot fail.
    let evict = plan_eviction(&records, 0, store.max_store_size(), |_| false).unwrap_or_default();
    for victim in evict {
        match store.remove(victim) {
            Ok(freed) => info!(
                toolchain = %victim, freed = freed.unwrap_or(0), limit = store.max_store_size(),
                "evicted a toolchain bundle: the store is over its size limit"
            ),
            Err(e) => warn!(toolchain = %victim, cause = %e, "cannot evict a toolchain bundle"),
        }
    }
    Ok(())
}
