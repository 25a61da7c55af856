use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use distcc_rs_pack::{BUNDLE_FORMAT, BundleFile};
use distcc_rs_proto::Digest;
use tokio::sync::mpsc::UnboundedReceiver;

use super::*;

fn tc(n: u8) -> ToolchainId {
    ToolchainId(Digest([n; 32]))
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
}

fn h(n: u8, size: u64, used: u64, in_use: bool) -> Held {
    Held {
        id: tc(n),
        size,
        last_used: at(used),
        in_use,
    }
}

fn victims(e: &Eviction) -> Vec<u8> {
    e.victims.iter().map(|id| id.0.0[0]).collect()
}

// ---------------------------------------------------------------------------
// The policy.

#[test]
fn nothing_is_evicted_within_the_limit() {
    let held = [h(1, 100, 1, false), h(2, 100, 2, false), h(9, 100, 9, true)];
    let e = choose_evictions(&held, 300, None);
    assert_eq!((victims(&e), e.fits), (vec![], true));
}

#[test]
fn the_least_recently_used_go_first_until_the_new_one_fits() {
    // 9 is the toolchain being fetched.
    let held = [
        h(1, 100, 30, false),
        h(2, 100, 10, false),
        h(3, 100, 20, false),
        h(9, 100, 99, true),
    ];
    let e = choose_evictions(&held, 300, None);
    assert_eq!((victims(&e), e.fits), (vec![2], true));
    let e = choose_evictions(&held, 200, None);
    assert_eq!((victims(&e), e.fits), (vec![2, 3], true));
    let e = choose_evictions(&held, 100, None);
    assert_eq!((victims(&e), e.fits), (vec![2, 3, 1], true));
}

#[test]
fn sizes_decide_how_many_go() {
    // One large old toolchain makes room for two new ones.
    let held = [
        h(1, 500, 10, false),
        h(2, 100, 20, false),
        h(9, 400, 99, true),
    ];
    let e = choose_evictions(&held, 600, None);
    assert_eq!((victims(&e), e.fits), (vec![1], true));
}

#[test]
fn equally_recent_toolchains_go_in_id_order() {
    let held = [
        h(3, 100, 10, false),
        h(2, 100, 10, false),
        h(9, 100, 99, true),
    ];
    let e = choose_evictions(&held, 200, None);
    assert_eq!(victims(&e), vec![2]);
}

#[test]
fn toolchains_in_use_are_never_evicted_even_when_the_cache_stays_over() {
    let held = [
        h(1, 100, 1, true),
        h(2, 100, 2, false),
        h(3, 100, 3, true),
        h(9, 100, 99, true),
    ];
    // Evicting 2 is all that can be done; 300 bytes stay for a 150 limit.
    let e = choose_evictions(&held, 150, None);
    assert_eq!((victims(&e), e.fits), (vec![2], false));
    // Nothing unused at all.
    let e = choose_evictions(&[h(1, 100, 1, true), h(9, 100, 9, true)], 150, None);
    assert_eq!((victims(&e), e.fits), (vec![], false));
}

#[test]
fn a_bound_spares_toolchains_used_at_or_after_it() {
    let held = [
        h(1, 100, 10, false),
        h(2, 100, 50, false),
        h(9, 100, 40, true),
    ];
    // Only 1 is older than 40: evicting it is enough for a 200 limit...
    let e = choose_evictions(&held, 200, Some(at(40)));
    assert_eq!((victims(&e), e.fits), (vec![1], true));
    // ...not for a 100 limit, since 2 is more recent than the bound.
    let e = choose_evictions(&held, 100, Some(at(40)));
    assert_eq!((victims(&e), e.fits), (vec![1], false));
    // A toolchain used exactly at the bound is kept.
    let e = choose_evictions(&held, 200, Some(at(10)));
    assert_eq!((victims(&e), e.fits), (vec![], false));
}

// ---------------------------------------------------------------------------
// The cache, with fake fetches that write a toolchain directory.

struct Cache {
    dir: tempfile::TempDir,
    toolchains: Toolchains,
    events: UnboundedReceiver<NodeEvent>,
}

fn open(limit: u64) -> Cache {
    let dir = tempfile::tempdir().unwrap();
    reopen(dir, limit)
}

fn reopen(dir: tempfile::TempDir, limit: u64) -> Cache {
    let (tx, events) = mpsc::unbounded_channel();
    let toolchains = Toolchains::open(dir.path().join("toolchains"), limit, tx).unwrap();
    Cache {
        dir,
        toolchains,
        events,
    }
}

impl Cache {
    fn events(&mut self) -> Vec<NodeEvent> {
        let mut out = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            out.push(e);
        }
        out
    }

    /// Acquires `id` as a job would, unpacking a fake toolchain of `size`
    /// bytes if it is not held.
    async fn job(&self, id: ToolchainId, size: u64) -> Result<ToolchainLease, ToolchainError> {
        self.toolchains
            .acquire(id, Usage::Job, || {
                install_fake(&self.toolchains, id, size, None)
            })
            .await
    }

    /// Prefetches `id` as last used at `used`.
    async fn prefetch(
        &self,
        id: ToolchainId,
        size: u64,
        used: SystemTime,
    ) -> Result<ToolchainLease, ToolchainError> {
        self.toolchains
            .acquire(id, Usage::Prefetch { last_used: used }, || {
                install_fake(&self.toolchains, id, size, Some(used))
            })
            .await
    }
}

/// A manifest listing one file of `size` bytes with `content`'s digest.
fn manifest(size: u64, content: &[u8]) -> BundleManifest {
    BundleManifest {
        format: BUNDLE_FORMAT,
        rustc_version: "rustc 0.0.0-fake\n".into(),
        host: "x86_64-unknown-linux-gnu".into(),
        rustc: "bin/rustc".into(),
        interpreter: String::new(),
        library_path: vec![],
        files: vec![BundleFile {
            path: "bin/rustc".into(),
            size,
            digest: Digest(*blake3::hash(content).as_bytes()),
            executable: true,
        }],
    }
}

/// What a real fetch does, minus the network: makes room, then unpacks.
/// The file is `size` bytes of zeros, so its digest checks.
async fn install_fake(
    toolchains: &Toolchains,
    id: ToolchainId,
    size: u64,
    older_than: Option<SystemTime>,
) -> Result<BundleManifest, FetchError> {
    let content = vec![0u8; size as usize];
    let manifest = manifest(size, &content);
    if !toolchains.make_room(id, size, older_than).fits && older_than.is_some() {
        return Err(FetchError::NoRoom);
    }
    let dir = toolchains.dir_for(&id);
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::write(dir.join("bin/rustc"), &content).unwrap();
    fs::write(
        dir.join(BUNDLE_MANIFEST_PATH),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    Ok(manifest)
}

fn ids(list: &[u8]) -> Vec<ToolchainId> {
    list.iter().map(|n| tc(*n)).collect()
}

#[tokio::test]
async fn a_fetch_evicts_the_least_recently_used_and_reports_it() {
    let mut cache = open(250);
    drop(cache.prefetch(tc(1), 100, at(10)).await.unwrap());
    drop(cache.prefetch(tc(2), 100, at(5)).await.unwrap());
    assert_eq!(cache.toolchains.ready(), ids(&[1, 2]));
    assert!(cache.events().is_empty());

    // A third does not fit with both: 2, used least recently, goes.
    drop(cache.job(tc(3), 100).await.unwrap());
    assert_eq!(cache.toolchains.ready(), ids(&[1, 3]));
    assert_eq!(cache.events(), [NodeEvent::ToolchainEvicted(tc(2))]);
    assert!(!cache.toolchains.dir_for(&tc(2)).exists());
    assert!(cache.toolchains.dir_for(&tc(1)).exists());
    assert_eq!(cache.toolchains.total_size(), 200);

    // Using 1 makes it the most recent; the next fetch evicts 3.
    drop(cache.job(tc(1), 100).await.unwrap());
    drop(cache.job(tc(4), 100).await.unwrap());
    assert_eq!(cache.toolchains.ready(), ids(&[1, 4]));
    assert_eq!(cache.events(), [NodeEvent::ToolchainEvicted(tc(3))]);
}

#[tokio::test]
async fn a_toolchain_a_job_holds_is_never_evicted() {
    let mut cache = open(150);
    let held = cache.job(tc(1), 100).await.unwrap();
    // No room for 2 without evicting 1, which a job holds: the fetch goes
    // ahead and the cache is over its limit.
    let second = cache.job(tc(2), 100).await.unwrap();
    assert_eq!(cache.toolchains.ready(), ids(&[1, 2]));
    assert_eq!(cache.toolchains.total_size(), 200);
    assert!(cache.events().is_empty());
    assert!(
        held.dir.join("bin/rustc").is_file(),
        "the job's toolchain is intact"
    );

    // Once the jobs are done, the next fetch brings the cache back within
    // its limit, evicting both.
    drop(held);
    drop(second);
    drop(cache.job(tc(3), 100).await.unwrap());
    assert_eq!(cache.toolchains.ready(), ids(&[3]));
    assert_eq!(
        cache.events(),
        [
            NodeEvent::ToolchainEvicted(tc(1)),
            NodeEvent::ToolchainEvicted(tc(2))
        ]
    );
}

#[tokio::test]
async fn a_fetch_under_way_counts_as_in_use_and_reserves_its_size() {
    let mut cache = open(150);
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let toolchains = cache.toolchains.clone();
    // Fetch 1 reserves its 100 bytes, then waits before unpacking.
    let first = tokio::spawn(async move {
        toolchains
            .acquire(tc(1), Usage::Job, || async {
                assert!(toolchains.make_room(tc(1), 100, None).fits);
                let _ = wait.await;
                install_fake(&toolchains, tc(1), 100, None).await
            })
            .await
            .map(drop)
    });
    while cache.toolchains.total_size() < 100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(cache.toolchains.unavailable(), ids(&[1]));
    // Fetch 2 cannot evict the toolchain being fetched: the cache goes over
    // its limit.
    drop(cache.job(tc(2), 100).await.unwrap());
    assert_eq!(cache.toolchains.ready(), ids(&[2]));
    assert_eq!(cache.toolchains.total_size(), 200);
    assert!(cache.events().is_empty());
    // When 1 unpacks, 2 is no longer in use and makes room.
    go.send(()).unwrap();
    first.await.unwrap().unwrap();
    assert_eq!(cache.toolchains.ready(), ids(&[1]));
    assert_eq!(cache.events(), [NodeEvent::ToolchainEvicted(tc(2))]);
}

#[tokio::test]
async fn jobs_needing_the_same_toolchain_share_one_fetch() {
    let cache = open(1000);
    let fetches = AtomicUsize::new(0);
    let fetch = || async {
        fetches.fetch_add(1, Ordering::SeqCst);
        tokio::task::yield_now().await;
        install_fake(&cache.toolchains, tc(1), 10, None).await
    };
    let (a, b) = tokio::join!(
        cache.toolchains.acquire(tc(1), Usage::Job, fetch),
        cache.toolchains.acquire(tc(1), Usage::Job, fetch)
    );
    assert_eq!(a.unwrap().id, b.unwrap().id);
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_prefetch_never_evicts_a_toolchain_used_more_recently() {
    let mut cache = open(150);
    drop(cache.prefetch(tc(1), 100, at(50)).await.unwrap());
    // 2 was last used before 1: no room for it, and 1 stays.
    let err = cache.prefetch(tc(2), 100, at(40)).await.unwrap_err();
    assert_eq!(err, ToolchainError::Fetch(FetchError::NoRoom));
    assert_eq!(cache.toolchains.ready(), ids(&[1]));
    assert_eq!(
        cache.toolchains.total_size(),
        100,
        "the reservation is gone"
    );
    assert!(cache.events().is_empty());
    // 3 was used after 1: 1 makes room for it.
    drop(cache.prefetch(tc(3), 100, at(60)).await.unwrap());
    assert_eq!(cache.toolchains.ready(), ids(&[3]));
    assert_eq!(cache.events(), [NodeEvent::ToolchainEvicted(tc(1))]);
}

#[tokio::test]
async fn recency_survives_a_restart_and_a_lowered_limit_is_enforced_at_open() {
    let cache = open(1000);
    drop(cache.prefetch(tc(1), 100, at(20)).await.unwrap());
    drop(cache.prefetch(tc(2), 100, at(10)).await.unwrap());
    drop(cache.job(tc(3), 100).await.unwrap());
    let Cache {
        dir, toolchains, ..
    } = cache;
    drop(toolchains);
    // Leftovers of an interrupted download and eviction are cleaned up.
    let tc_dir = dir.path().join("toolchains");
    fs::write(tc_dir.join(".download-x-1"), b"partial").unwrap();
    fs::create_dir(tc_dir.join(".evicted-abc")).unwrap();

    let cache = reopen(dir, 1000);
    let held = cache.toolchains.held();
    let recency: Vec<(ToolchainId, SystemTime)> =
        held.iter().map(|h| (h.id, h.last_used)).collect();
    assert_eq!(recency[0], (tc(1), at(20)));
    assert_eq!(recency[1], (tc(2), at(10)));
    assert!(recency[2].1 > at(20), "3 was used last: {:?}", recency[2]);
    assert!(!tc_dir.join(".download-x-1").exists());
    assert!(!tc_dir.join(".evicted-abc").exists());

    // With room for two, the least recently used one goes at start-up.
    let Cache {
        dir, toolchains, ..
    } = cache;
    drop(toolchains);
    let cache = reopen(dir, 250);
    assert_eq!(cache.toolchains.ready(), ids(&[1, 3]));
    assert!(!cache.toolchains.dir_for(&tc(2)).exists());
    assert!(!tc_dir.join(format!("{}.used", tc(2))).exists());
}

#[tokio::test]
async fn a_bundle_that_fails_verification_breaks_the_toolchain_and_is_reported() {
    let mut cache = open(1000);
    let corrupt = || async { Err(FetchError::Corrupt("hash mismatch".into())) };
    let err = cache
        .toolchains
        .acquire(tc(1), Usage::Job, corrupt)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ToolchainError::Fetch(FetchError::Corrupt("hash mismatch".into()))
    );
    let reason = "the bundle failed verification: hash mismatch".to_owned();
    assert_eq!(
        cache.events(),
        [NodeEvent::ToolchainRejected {
            id: tc(1),
            reason: reason.clone()
        }]
    );
    assert_eq!(cache.toolchains.broken(tc(1)), Some(reason.clone()));
    assert_eq!(cache.toolchains.unavailable(), ids(&[1]));
    // The next job is refused without a fetch.
    let err = cache
        .toolchains
        .acquire(tc(1), Usage::Job, || async {
            panic!("a broken toolchain must not be fetched")
        })
        .await
        .unwrap_err();
    assert_eq!(err, ToolchainError::Broken(reason));
    assert_eq!(cache.toolchains.total_size(), 0);
}

#[tokio::test]
async fn a_failed_download_is_not_held_against_the_toolchain() {
    let mut cache = open(1000);
    let lost = || async { Err(FetchError::Transfer("connection lost".into())) };
    assert!(
        cache
            .toolchains
            .acquire(tc(1), Usage::Job, lost)
            .await
            .is_err()
    );
    assert_eq!(cache.toolchains.broken(tc(1)), None);
    assert!(cache.events().is_empty());
    assert!(
        cache.toolchains.unavailable().is_empty(),
        "nothing left behind"
    );
    drop(cache.job(tc(1), 10).await.unwrap());
    assert_eq!(cache.toolchains.ready(), ids(&[1]));
}

#[tokio::test]
async fn a_damaged_copy_is_removed_once_no_job_uses_it() {
    let mut cache = open(1000);
    let lease = cache.job(tc(1), 64).await.unwrap();
    // Intact: nothing happens.
    cache.toolchains.check_damage(tc(1));
    assert_eq!(cache.toolchains.ready(), ids(&[1]));

    // Damaged while a job holds it: other jobs are turned away, and the
    // copy goes when the job lets go.
    fs::write(lease.dir.join("bin/rustc"), vec![1u8; 64]).unwrap();
    // A check that passed recently is not repeated...
    cache.toolchains.check_damage(tc(1));
    assert_eq!(cache.toolchains.ready(), ids(&[1]));
    // ...so the test forgets it, as ten minutes would.
    lock(&cache.toolchains.inner.index)
        .entries
        .get_mut(&tc(1))
        .unwrap()
        .check = Check::Never;
    cache.toolchains.check_damage(tc(1));
    assert_eq!(
        cache.job(tc(1), 64).await.unwrap_err(),
        ToolchainError::Discarding
    );
    assert!(cache.events().is_empty());
    drop(lease);
    assert!(cache.toolchains.ready().is_empty());
    assert_eq!(cache.events(), [NodeEvent::ToolchainEvicted(tc(1))]);
    // The next job fetches a good copy.
    drop(cache.job(tc(1), 64).await.unwrap());
    assert_eq!(cache.toolchains.ready(), ids(&[1]));
    let _ = &cache.dir;
}

#[test]
fn files_are_checked_against_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("bin")).unwrap();
    let content = b"#!/bin/sh\n";
    fs::write(dir.path().join("bin/rustc"), content).unwrap();
    let m = manifest(content.len() as u64, content);
    assert_eq!(check_files(dir.path(), &m), Ok(()));
    fs::write(dir.path().join("bin/rustc"), b"#!/bin/sh\n\n").unwrap();
    assert!(check_files(dir.path(), &m).unwrap_err().contains("bytes"));
    fs::write(dir.path().join("bin/rustc"), b"#!/bin/zz\n").unwrap();
    assert!(
        check_files(dir.path(), &m)
            .unwrap_err()
            .contains("does not match")
    );
    fs::remove_file(dir.path().join("bin/rustc")).unwrap();
    assert!(check_files(dir.path(), &m).is_err());
}
