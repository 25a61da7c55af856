//! Store tests on a real temporary directory.

use std::io::Write;
use std::sync::Arc;

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
    assert_eq!(files(&store), [format!("{id}.tar.zst")]);
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
    assert_eq!(files(&store), [format!("{id}.tar.zst")]);
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
