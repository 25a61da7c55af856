//! Fetching toolchains before a job needs them, while the node is idle.
//!
//! A node that joins a farm, or one that sat idle while the farm switched to
//! another toolchain, would otherwise make the first job of each toolchain
//! wait for a 160 MiB download and its unpacking. So when the node has run
//! no job for [`IDLE_SETTLE`], it asks the scheduler which toolchains the
//! farm used recently (the `Status` request, whose toolchain list says when
//! each one was last placed and how many nodes hold it) and fetches those it
//! lacks, one at a time, most recently used first, checking before each
//! fetch that it is still idle. A prefetch never evicts a toolchain used on
//! this node more recently than the farm used the one it fetches: a cache
//! full of toolchains in use stays as it is. It runs when the node
//! registers and every [`INTERVAL`] after.
//!
//! A prefetch that started finishes even if a job arrives meanwhile: it
//! takes a few seconds, and stopping a download or an unpack half-way would
//! waste what was done. No new one starts until the node is idle again.
//!
//! The choice is the pure function [`choose_prefetch`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use distcc_rs_net::NetError;
use distcc_rs_proto::ToolchainId;
use distcc_rs_proto::message::{FarmStatus, SchedulerRequest, ToolchainStatus};
use tracing::{debug, info, warn};

use crate::server::Shared;
use crate::toolchains::{Held, choose_evictions};

/// How long the node must have run no job before it prefetches, so that a
/// fetch does not start in a gap between two jobs of a build.
pub const IDLE_SETTLE: Duration = Duration::from_secs(5);

/// How often an idle node looks for toolchains to prefetch.
pub const INTERVAL: Duration = Duration::from_secs(30);

/// Toolchains the farm last used longer ago than this are not prefetched:
/// a toolchain nobody used for a day is as likely to stay unused.
pub const RECENT: Duration = Duration::from_secs(24 * 60 * 60);

/// The scheduler knows a bundle's compressed size only; unpacked, a bundle
/// is about 3.2 times larger (measured: 159 MiB packs 500 MiB of 1.95.0).
/// Over-estimating makes a prefetch that would barely fit wait, rather than
/// download a bundle it then has to drop; the real size, from the bundle's
/// manifest, is what the cache reserves once the download is in.
pub const UNPACK_RATIO: u64 = 4;

/// A toolchain that failed to prefetch is not tried again for this long.
const RETRY_AFTER: Duration = Duration::from_secs(10 * 60);

/// How long the scheduler may take to answer a status request.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// What to prefetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefetch {
    pub id: ToolchainId,
    /// When the farm last used it; it enters the cache with this recency.
    pub last_used: SystemTime,
}

/// Chooses the toolchain to prefetch, if any: among the farm's toolchains
/// (`farm`, from the scheduler's status) that this node neither holds
/// (`held`) nor should fetch now (`unavailable`: being fetched, broken, or
/// recently failed), those placed within [`RECENT`], most recently used
/// first, then those fewer nodes hold, then by id; the first one that fits
/// in `limit` bytes, counting its size as [`UNPACK_RATIO`] times its
/// compressed size, when only toolchains last used here before the farm
/// last used it may be evicted for it.
pub fn choose_prefetch(
    farm: &[ToolchainStatus],
    held: &[Held],
    unavailable: &[ToolchainId],
    limit: u64,
    now: SystemTime,
) -> Option<Prefetch> {
    let mut candidates: Vec<(u64, &ToolchainStatus)> = farm
        .iter()
        .filter(|t| !held.iter().any(|h| h.id == t.id) && !unavailable.contains(&t.id))
        .filter_map(|t| {
            let ms = t.last_used_ms?;
            (Duration::from_millis(ms) <= RECENT).then_some((ms, t))
        })
        .collect();
    candidates.sort_unstable_by_key(|(ms, t)| (*ms, t.holders, t.id));
    candidates.into_iter().find_map(|(ms, t)| {
        let last_used = now.checked_sub(Duration::from_millis(ms))?;
        let mut cache = held.to_vec();
        cache.push(Held {
            id: t.id,
            size: t.compressed_size.saturating_mul(UNPACK_RATIO),
            last_used,
            in_use: true,
        });
        choose_evictions(&cache, limit, Some(last_used))
            .fits
            .then_some(Prefetch {
                id: t.id,
                last_used,
            })
    })
}

/// Prefetches for as long as the node runs. See the module documentation.
pub async fn run(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Toolchains whose prefetch failed, and when.
    let mut failed: HashMap<ToolchainId, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.prefetch_wake.notified() => {}
        }
        failed.retain(|_, at| at.elapsed() < RETRY_AFTER);
        // One at a time, for as long as there is something to fetch and the
        // node stays idle.
        while let Some(choice) = next(&shared, &failed).await {
            let size = choice.1;
            let choice = choice.0;
            info!(
                toolchain = %choice.id,
                compressed_bytes = size,
                "prefetching a toolchain the farm used recently"
            );
            let started = Instant::now();
            match shared.prefetch(choice.id, choice.last_used).await {
                Ok(()) => info!(
                    toolchain = %choice.id,
                    compressed_bytes = size,
                    secs = started.elapsed().as_secs_f32(),
                    "prefetched a toolchain"
                ),
                Err(e) => {
                    warn!(toolchain = %choice.id, cause = %e, "cannot prefetch a toolchain");
                    failed.insert(choice.id, Instant::now());
                }
            }
        }
    }
}

/// The next toolchain to prefetch and its compressed size, if the node is
/// idle, registered, and there is one.
async fn next(shared: &Shared, failed: &HashMap<ToolchainId, Instant>) -> Option<(Prefetch, u64)> {
    if !idle(shared) {
        return None;
    }
    let conn = shared
        .scheduler
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()?;
    let status = match tokio::time::timeout(STATUS_TIMEOUT, farm_status(&conn)).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            debug!(cause = %e, "cannot ask the scheduler which toolchains are in use");
            return None;
        }
        Err(_) => {
            debug!("the scheduler did not say in time which toolchains are in use");
            return None;
        }
    };
    let mut unavailable = shared.toolchains.unavailable();
    unavailable.extend(failed.keys());
    let choice = choose_prefetch(
        &status.toolchains,
        &shared.toolchains.held(),
        &unavailable,
        shared.toolchains.limit(),
        SystemTime::now(),
    )?;
    // The status took a round trip; a job may have come meanwhile.
    if !idle(shared) {
        return None;
    }
    let size = status
        .toolchains
        .iter()
        .find(|t| t.id == choice.id)
        .map_or(0, |t| t.compressed_size);
    Some((choice, size))
}

fn idle(shared: &Shared) -> bool {
    shared.idle_for().is_some_and(|idle| idle >= IDLE_SETTLE)
}

async fn farm_status(conn: &quinn::Connection) -> Result<FarmStatus, NetError> {
    let (mut w, mut r) = distcc_rs_net::open_stream(conn).await?;
    w.send(&SchedulerRequest::Status).await?;
    let status = r.recv().await?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use distcc_rs_proto::Digest;

    const MIB: u64 = 1 << 20;

    fn tc(n: u8) -> ToolchainId {
        ToolchainId(Digest([n; 32]))
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
    }

    /// A farm toolchain of `mib` compressed MiB, last used `ago` seconds ago.
    fn farm(n: u8, mib: u64, ago: Option<u64>, holders: u32) -> ToolchainStatus {
        ToolchainStatus {
            id: tc(n),
            compressed_size: mib * MIB,
            last_used_ms: ago.map(|s| s * 1000),
            holders,
        }
    }

    /// A held toolchain of `mib` unpacked MiB, last used here `ago` seconds
    /// ago.
    fn held(n: u8, mib: u64, ago: u64) -> Held {
        Held {
            id: tc(n),
            size: mib * MIB,
            last_used: now() - Duration::from_secs(ago),
            in_use: false,
        }
    }

    fn choose(
        farm: &[ToolchainStatus],
        held: &[Held],
        unavailable: &[u8],
        limit_mib: u64,
    ) -> Option<u8> {
        let unavailable: Vec<ToolchainId> = unavailable.iter().map(|n| tc(*n)).collect();
        choose_prefetch(farm, held, &unavailable, limit_mib * MIB, now()).map(|p| p.id.0.0[0])
    }

    #[test]
    fn the_most_recently_used_missing_toolchain_comes_first() {
        let f = [
            farm(1, 100, Some(600), 3),
            farm(2, 100, Some(60), 3),
            farm(3, 100, Some(3600), 3),
        ];
        assert_eq!(choose(&f, &[], &[], 4096), Some(2));
        // With 2 held, 1 is next; with 1 and 2 held, 3.
        assert_eq!(choose(&f, &[held(2, 400, 60)], &[], 4096), Some(1));
        assert_eq!(
            choose(&f, &[held(2, 400, 60), held(1, 400, 60)], &[], 4096),
            Some(3)
        );
        // It enters the cache as recent as the farm's last use.
        let p = choose_prefetch(&f, &[], &[], 4096 * MIB, now()).unwrap();
        assert_eq!(p.last_used, now() - Duration::from_secs(60));
    }

    #[test]
    fn ties_in_recency_go_to_the_toolchain_fewer_nodes_hold() {
        let f = [farm(1, 100, Some(60), 5), farm(2, 100, Some(60), 1)];
        assert_eq!(choose(&f, &[], &[], 4096), Some(2));
        let f = [farm(2, 100, Some(60), 1), farm(1, 100, Some(60), 1)];
        assert_eq!(choose(&f, &[], &[], 4096), Some(1), "then the lowest id");
    }

    #[test]
    fn unused_old_held_and_unavailable_toolchains_are_not_prefetched() {
        // Never placed since the scheduler started.
        assert_eq!(choose(&[farm(1, 100, None, 0)], &[], &[], 4096), None);
        // Last placed more than a day ago.
        assert_eq!(
            choose(
                &[farm(1, 100, Some(RECENT.as_secs() + 1), 0)],
                &[],
                &[],
                4096
            ),
            None
        );
        assert_eq!(
            choose(&[farm(1, 100, Some(RECENT.as_secs()), 0)], &[], &[], 4096),
            Some(1)
        );
        // Held already, being fetched, broken, or failed recently.
        assert_eq!(
            choose(&[farm(1, 100, Some(1), 0)], &[held(1, 400, 9)], &[], 4096),
            None
        );
        assert_eq!(choose(&[farm(1, 100, Some(1), 0)], &[], &[1], 4096), None);
        assert_eq!(
            choose(
                &[farm(1, 100, Some(1), 0), farm(2, 100, Some(5), 0)],
                &[],
                &[1],
                4096
            ),
            Some(2)
        );
    }

    #[test]
    fn the_size_is_estimated_from_the_compressed_size() {
        // 100 MiB compressed counts as 400 MiB unpacked.
        assert_eq!(choose(&[farm(1, 100, Some(1), 0)], &[], &[], 400), Some(1));
        assert_eq!(choose(&[farm(1, 100, Some(1), 0)], &[], &[], 399), None);
        // Held toolchains count too.
        assert_eq!(
            choose(&[farm(1, 100, Some(1), 0)], &[held(2, 100, 0)], &[], 499),
            None,
            "toolchain 2 was used here after the farm used 1"
        );
    }

    #[test]
    fn only_toolchains_used_here_less_recently_may_be_evicted_for_a_prefetch() {
        let f = [farm(1, 100, Some(600), 0)];
        // Room for one: 2 was last used here an hour ago, before the farm
        // used 1 (ten minutes ago), so 1 may push it out.
        assert_eq!(choose(&f, &[held(2, 400, 3600)], &[], 500), Some(1));
        // 2 was used here a minute ago: it stays, and 1 is not fetched.
        assert_eq!(choose(&f, &[held(2, 400, 60)], &[], 500), None);
        // Used at the same moment: kept, as evicting it gains nothing.
        assert_eq!(choose(&f, &[held(2, 400, 600)], &[], 500), None);
        // A toolchain in use is never evicted, however old.
        let mut busy = held(2, 400, 9999);
        busy.in_use = true;
        assert_eq!(choose(&f, &[busy], &[], 500), None);
    }

    #[test]
    fn a_smaller_candidate_that_fits_is_taken_when_the_first_does_not() {
        let f = [farm(1, 300, Some(60), 0), farm(2, 50, Some(120), 0)];
        // 1 needs 1200 MiB, 2 needs 200 MiB; 1000 MiB hold 2 only.
        assert_eq!(choose(&f, &[], &[], 1000), Some(2));
    }
}
