//! Store tests on a real temporary directory.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use distcc_rs_proto::{Digest, ToolchainId};

use super::*;
use crate::fixture;

fn upload(
    store: &ToolchainStore,
    id: ToolchainId,
    bytes: &[u8],
) -> Result<StoredBundle, BundleError> {
    let mut up = store.begin_upload(id)?;
    up.writer().write_all(bytes).unwrap();
    up.finish()
}

/// The names in the store's directory, sorted.
fn files(store: &ToolchainStore) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(store.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_valid_bundle_is_stored_under_its_id() {
    let state = tempfile::tempdir().unwrap();
    let store = ToolchainStore::open(state.path(), DEFAULT_MAX_BUNDLE_SIZE).unwrap();
    let (id, bytes) = fixture::bundle("a");
    assert!(!store.has(id));
    assert!(store.open_bundle(id).unwrap().is_none());

    let stored = upload(&store, id, &bytes).unwrap();
    assert_eq!(
        stored,
        StoredBundle {
            id,
            compressed_size: bytes.len() as u64
        }
    );
    assert!(store.has(id));
    assert_eq!(
        files(&store),
        [format!("{id}.json"), format!("{id}.tar.zst")]
    );
    assert_eq!(store.list().unwrap(), [stored]);
    let (mut file, size) = store.open_bundle(id).unwrap().unwrap();
    assert_eq!(size, bytes.len() as u64);
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut back).unwrap();
    assert_eq!(back, bytes);
}

#[test]
fn bad_uploads_are_rejected_and_leave_nothing_behind() {
    let (id, bytes) = fixture::bundle("a");
    let (other_id, _) = fixture::bundle("b");
    let (bare_id, bare) = fixture::bundle_without_manifest();
    let wrong_id = |e: &BundleError| {
        matches!(e, BundleError::HashMismatch { expected, actual }
            if *expected == other_id && *actual == id)
    };
    let malformed = |e: &BundleError| matches!(e, BundleError::Malformed(_));
    let too_large = |e: &BundleError| matches!(e, BundleError::TooLarge { limit: 100, .. });
    struct Case<'a> {
        name: &'static str,
        claimed: ToolchainId,
        content: Vec<u8>,
        limit: u64,
        check: &'a dyn Fn(&BundleError) -> bool,
    }
    let cases = [
        Case {
            name: "wrong id",
            claimed: other_id,
            content: bytes.clone(),
            limit: DEFAULT_MAX_BUNDLE_SIZE,
            check: &wrong_id,
        },
        Case {
            name: "not zstd",
            claimed: id,
            content: b"plain text".to_vec(),
            limit: DEFAULT_MAX_BUNDLE_SIZE,
            check: &malformed,
        },
        Case {
            name: "truncated",
            claimed: id,
            content: bytes[..bytes.len() / 2].to_vec(),
            limit: DEFAULT_MAX_BUNDLE_SIZE,
            check: &malformed,
        },
        Case {
            name: "no manifest",
            claimed: bare_id,
            content: bare,
            limit: DEFAULT_MAX_BUNDLE_SIZE,
            check: &malformed,
        },
        Case {
            name: "over the limit",
            claimed: id,
            content: vec![0; 101],
            limit: 100,
            check: &too_large,
        },
    ];
    for Case {
        name,
        claimed,
        content,
        limit,
        check,
    } in cases
    {
        let state = tempfile::tempdir().unwrap();
        let store = ToolchainStore::open(state.path(), limit).unwrap();
        let err = upload(&store, claimed, &content).unwrap_err();
        assert!(check(&err), "{name}: {err}");
        assert!(files(&store).is_empty(), "{name}: {:?}", files(&store));
        assert!(store.list().unwrap().is_empty(), "{name}");
    }
}

#[test]
fn concurrent_uploads_of_one_bundle_are_harmless() {
    let state = tempfile::tempdir().unwrap();
    let store = Arc::new(ToolchainStore::open(state.path(), DEFAULT_MAX_BUNDLE_SIZE).unwrap());
    let (id, bytes) = fixture::bundle("same");
    let bytes = Arc::new(bytes);
    // Every upload writes half its bytes before any of them finishes, so the
    // temporary files genuinely overlap in time.
    let barrier = Arc::new(std::sync::Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (store, bytes, barrier) = (store.clone(), bytes.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut up = store.begin_upload(id).unwrap();
                let half = bytes.len() / 2;
                up.writer().write_all(&bytes[..half]).unwrap();
                barrier.wait();
                up.writer().write_all(&bytes[half..]).unwrap();
                up.finish()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().unwrap().id, id);
    }
    assert_eq!(
        files(&store),
        [format!("{id}.json"), format!("{id}.tar.zst")]
    );
    assert_eq!(fs::read(store.bundle_path(id)).unwrap(), *bytes);
}

#[test]
fn reopening_finds_bundles_and_sweeps_interrupted_uploads() {
    let state = tempfile::tempdir().unwrap();
    let (id, bytes) = fixture::bundle("kept");
    {
        let store = ToolchainStore::open(state.path(), DEFAULT_MAX_BUNDLE_SIZE).unwrap();
        upload(&store, id, &bytes).unwrap();
        // A crash in the middle of an upload leaves its temporary file; a
        // stray file that is not a bundle must be ignored, not served.
        let dir = store.dir();
        fs::write(dir.join(".upload-crashed.partial"), b"half a bundle").unwrap();
        fs::write(dir.join("README"), b"not a bundle").unwrap();
        let bogus = ToolchainId(Digest([1; 32]));
        fs::create_dir(dir.join(format!("{bogus}.tar.zst"))).unwrap();
    }
    let store = ToolchainStore::open(state.path(), DEFAULT_MAX_BUNDLE_SIZE).unwrap();
    assert_eq!(
        store.list().unwrap(),
        [StoredBundle {
            id,
            compressed_size: bytes.len() as u64
        }]
    );
    assert!(!store.dir().join(".upload-crashed.partial").exists());
    assert!(store.dir().join("README").exists());
}

/// A record for the eviction tests: `age` seconds since its last use.
fn record(id: u8, size: u64, age: u64) -> BundleRecord {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    BundleRecord {
        id: ToolchainId(Digest([id; 32])),
        compressed_size: size,
        stored_at: now - Duration::from_secs(100_000),
        last_used: Some(now - Duration::from_secs(age)),
        summary: None,
    }
}

fn tid(id: u8) -> ToolchainId {
    ToolchainId(Digest([id; 32]))
}

#[test]
fn eviction_takes_the_least_recently_used_that_nothing_needs() {
    struct Case {
        name: &'static str,
        bundles: Vec<BundleRecord>,
        incoming: u64,
        limit: u64,
        keep: Vec<u8>,
        expected: Result<Vec<u8>, (u64, u64)>,
    }
    let cases = [
        Case {
            name: "fits without evicting",
            bundles: vec![record(1, 30, 10), record(2, 30, 20)],
            incoming: 40,
            limit: 100,
            keep: vec![],
            expected: Ok(vec![]),
        },
        Case {
            name: "fits exactly",
            bundles: vec![record(1, 60, 10)],
            incoming: 40,
            limit: 100,
            keep: vec![],
            expected: Ok(vec![]),
        },
        Case {
            name: "oldest first, only as many as needed",
            bundles: vec![record(1, 30, 10), record(2, 30, 30), record(3, 30, 20)],
            incoming: 40,
            limit: 100,
            keep: vec![],
            expected: Ok(vec![2]),
        },
        Case {
            name: "several go when one is not enough",
            bundles: vec![record(1, 30, 10), record(2, 30, 30), record(3, 30, 20)],
            incoming: 70,
            limit: 100,
            keep: vec![],
            expected: Ok(vec![2, 3]),
        },
        Case {
            name: "bundles in use are skipped even when oldest",
            bundles: vec![record(1, 30, 10), record(2, 30, 30), record(3, 30, 20)],
            incoming: 40,
            limit: 100,
            keep: vec![2],
            expected: Ok(vec![3]),
        },
        Case {
            name: "no room once everything evictable is gone",
            bundles: vec![record(1, 50, 10), record(2, 30, 30)],
            incoming: 60,
            limit: 100,
            keep: vec![1],
            expected: Err((60, 50)),
        },
        Case {
            name: "larger than the whole store",
            bundles: vec![],
            incoming: 101,
            limit: 100,
            keep: vec![],
            expected: Err((101, 0)),
        },
        Case {
            name: "ties go by id",
            bundles: vec![record(9, 30, 10), record(4, 30, 10)],
            incoming: 60,
            limit: 90,
            keep: vec![],
            expected: Ok(vec![4]),
        },
        Case {
            name: "over the limit already with nothing coming: trimmed to it",
            bundles: vec![record(1, 60, 10), record(2, 60, 30), record(3, 60, 20)],
            incoming: 0,
            limit: 100,
            keep: vec![],
            expected: Ok(vec![2, 3]),
        },
    ];
    for case in cases {
        let keep: Vec<ToolchainId> = case.keep.iter().map(|i| tid(*i)).collect();
        let got = plan_eviction(&case.bundles, case.incoming, case.limit, |id| {
            keep.contains(&id)
        });
        let expected = case
            .expected
            .map(|ids| ids.into_iter().map(tid).collect::<Vec<_>>())
            .map_err(|(size, in_use)| BundleError::StoreFull {
                size,
                limit: case.limit,
                in_use,
            });
        assert_eq!(got, expected, "{}", case.name);
    }
}

#[test]
fn a_bundle_never_used_counts_from_when_it_was_stored() {
    let mut fresh = record(1, 30, 0);
    fresh.last_used = None;
    fresh.stored_at = record(2, 30, 5).last_used.unwrap();
    // Bundle 2 was used 5 s ago, bundle 1 stored 5 s ago and never used,
    // bundle 3 used 50 s ago: 3 goes first, then the tie by id.
    let bundles = [fresh, record(2, 30, 5), record(3, 30, 50)];
    assert_eq!(
        plan_eviction(&bundles, 30, 60, |_| false).unwrap(),
        [tid(3), tid(1)]
    );
}

#[test]
fn the_inventory_records_times_and_manifests_across_restarts() {
    let state = tempfile::tempdir().unwrap();
    let (id, bytes) = fixture::bundle("inventory");
    let before = SystemTime::now() - Duration::from_secs(1);
    {
        let store = ToolchainStore::open(state.path(), DEFAULT_MAX_BUNDLE_SIZE).unwrap();
        upload(&store, id, &bytes).unwrap();
        let records = store.inventory().unwrap();
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert_eq!((r.id, r.compressed_size), (id, bytes.len() as u64));
        assert!(r.stored_at >= before && r.stored_at <= SystemTime::now());
        assert_eq!(r.last_used, None, "nothing was placed yet");
        let summary = r.summary.as_ref().expect("a summary from the manifest");
        assert_eq!(summary.version_line, "rustc 1.95.0 (fake inventory)");
        assert_eq!(summary.host, "x86_64-unknown-linux-gnu");
        assert_eq!(
            files(&store),
            [format!("{id}.json"), format!("{id}.tar.zst")]
        );

        // Times are recorded in whole milliseconds: a use in the very
        // millisecond of the upload would not show.
        std::thread::sleep(Duration::from_millis(5));
        store.mark_used(id, Instant::now());
        let used = store.inventory().unwrap()[0]
            .last_used
            .expect("marked used");
        assert!(used > r.stored_at);
    }
    // Recency lives in the file, so a new scheduler process still knows it.
    let store = ToolchainStore::open(state.path(), DEFAULT_MAX_BUNDLE_SIZE).unwrap();
    let r = &store.inventory().unwrap()[0];
    assert!(r.last_used.is_some());
    assert!(r.summary.is_some());
}

#[test]
fn marking_a_bundle_used_touches_it_at_most_once_a_minute() {
    let state = tempfile::tempdir().unwrap();
    let store = ToolchainStore::open(state.path(), DEFAULT_MAX_BUNDLE_SIZE).unwrap();
    let (id, bytes) = fixture::bundle("touch");
    upload(&store, id, &bytes).unwrap();
    let path = store.bundle_path(id);
    let mtime = || fs::metadata(&path).unwrap().modified().unwrap();
    let old = SystemTime::now() - Duration::from_secs(3600);
    let set = |t: SystemTime| File::open(&path).unwrap().set_modified(t).unwrap();

    let now = Instant::now();
    set(old);
    store.mark_used(id, now);
    assert!(mtime() > old, "the first use is recorded");
    set(old);
    store.mark_used(id, now + Duration::from_secs(30));
    assert_eq!(mtime(), old, "a use within the interval is not written");
    store.mark_used(id, now + TOUCH_INTERVAL);
    assert!(mtime() > old, "a use after the interval is");
}

#[test]
fn a_bundle_from_an_older_scheduler_gets_its_record_from_the_manifest() {
    let state = tempfile::tempdir().unwrap();
    let (id, bytes) = fixture::bundle("legacy");
    let store = ToolchainStore::open(state.path(), DEFAULT_MAX_BUNDLE_SIZE).unwrap();
    // How an older scheduler stored bundles: the file alone.
    fs::write(store.bundle_path(id), &bytes).unwrap();
    let stored_at = fs::metadata(store.bundle_path(id))
        .unwrap()
        .modified()
        .unwrap();
    let r = &store.inventory().unwrap()[0];
    assert_eq!(
        r.summary.as_ref().map(|s| s.version_line.as_str()),
        Some("rustc 1.95.0 (fake legacy)")
    );
    assert!(r.stored_at <= stored_at);
    assert_eq!(r.last_used, None);
    assert!(store.dir().join(format!("{id}.json")).is_file());

    // A bundle whose start is not a manifest is still listed, without one.
    let (bare_id, bare) = fixture::bundle_without_manifest();
    fs::write(store.bundle_path(bare_id), &bare).unwrap();
    let records = store.inventory().unwrap();
    let bare_record = records.iter().find(|r| r.id == bare_id).unwrap();
    assert_eq!(bare_record.summary, None);
}

#[test]
fn removing_deletes_the_bundle_and_its_record() {
    let state = tempfile::tempdir().unwrap();
    let store = ToolchainStore::open(state.path(), DEFAULT_MAX_BUNDLE_SIZE).unwrap();
    let (id, bytes) = fixture::bundle("gone");
    upload(&store, id, &bytes).unwrap();
    assert_eq!(store.remove(id).unwrap(), Some(bytes.len() as u64));
    assert!(files(&store).is_empty(), "{:?}", files(&store));
    assert_eq!(store.remove(id).unwrap(), None);
}

#[test]
fn records_without_a_bundle_are_swept_at_start() {
    let state = tempfile::tempdir().unwrap();
    let (id, bytes) = fixture::bundle("kept");
    let orphan = ToolchainId(Digest([7; 32]));
    {
        let store = ToolchainStore::open(state.path(), DEFAULT_MAX_BUNDLE_SIZE).unwrap();
        upload(&store, id, &bytes).unwrap();
        // A crash between writing the record and renaming the bundle.
        fs::write(store.dir().join(format!("{orphan}.json")), b"{}").unwrap();
        fs::write(store.dir().join("notes.json"), b"{}").unwrap();
    }
    let store = ToolchainStore::open(state.path(), DEFAULT_MAX_BUNDLE_SIZE).unwrap();
    assert_eq!(
        files(&store),
        [
            format!("{id}.json"),
            format!("{id}.tar.zst"),
            "notes.json".to_owned()
        ]
    );
}

#[test]
fn leases_count_downloads_until_dropped() {
    let state = tempfile::tempdir().unwrap();
    let store = ToolchainStore::open(state.path(), DEFAULT_MAX_BUNDLE_SIZE).unwrap();
    let (a, b) = (tid(1), tid(2));
    assert!(store.downloads().is_empty());
    let first = store.lease(a);
    let second = store.lease(a);
    let other = store.lease(b);
    assert_eq!(store.downloads(), BTreeMap::from([(a, 2), (b, 1)]));
    drop(first);
    drop(other);
    assert_eq!(store.downloads(), BTreeMap::from([(a, 1)]));
    drop(second);
    assert!(store.downloads().is_empty());
}

#[test]
fn a_rechecked_bundle_is_kept_if_intact_and_deleted_if_corrupt() {
    let state = tempfile::tempdir().unwrap();
    let store = ToolchainStore::open(state.path(), DEFAULT_MAX_BUNDLE_SIZE).unwrap();
    let (id, bytes) = fixture::bundle("recheck");
    upload(&store, id, &bytes).unwrap();
    assert_eq!(store.recheck(id), Recheck::Intact);
    assert!(store.has(id));

    // The copy on disk goes bad after it was stored.
    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    fs::write(store.bundle_path(id), &bad).unwrap();
    assert!(matches!(store.recheck(id), Recheck::Deleted(_)));
    assert!(!store.has(id));
    assert!(store.list().unwrap().is_empty());
    assert_eq!(store.recheck(id), Recheck::Missing);
    // A good copy can be uploaded again.
    upload(&store, id, &bytes).unwrap();
    assert_eq!(store.recheck(id), Recheck::Intact);
}
