//! The host-wide limit on local compiles, across real wrapper processes.
//!
//! Each test starts several `distcc-rs` wrappers at once around a fake
//! "rustc" (a shell script) that records when it starts and ends, and checks
//! from those records how many ran at the same time. No farm is involved:
//! binaries always compile locally, and libraries fall back to local rustc
//! because a fake rustc has no toolchain to pack.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use distcc_rs_net::credentials::Credentials;
use distcc_rs_net::pki::TestFarm;
use distcc_rs_proto::PeerRole;

/// The fake compiler. It is named `rustc` inside a `bin` directory, like a
/// real one, but has no sysroot: asked for one (the farm path does that
/// before placing a job), it fails, which sends the job to local rustc.
/// Each compile writes a start and an end line with nanosecond timestamps
/// around a pause long enough for unthrottled compiles to overlap.
const FAKE_RUSTC: &str = r#"#!/bin/sh
for arg in "$@"; do
    case "$arg" in
        sysroot|--print=sysroot) exit 1 ;;
    esac
done
echo "start $$ $(date +%s%N)" >> "$FAKE_RUSTC_LOG"
sleep 0.3
echo "end $$ $(date +%s%N)" >> "$FAKE_RUSTC_LOG"
"#;

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    rustc: PathBuf,
    log: PathBuf,
    events: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let bin = root.join("toolchain/bin");
    fs::create_dir_all(&bin).unwrap();
    let rustc = bin.join("rustc");
    fs::write(&rustc, FAKE_RUSTC).unwrap();
    fs::set_permissions(&rustc, fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir_all(root.join("src")).unwrap();
    fs::write(root.join("src/main.rs"), "fn main() {}\n").unwrap();
    fs::write(root.join("src/lib.rs"), "pub fn f() {}\n").unwrap();
    fs::create_dir_all(root.join("target")).unwrap();
    // A farm certificate, so that libraries take the farm path (and fall
    // back) rather than compiling locally for want of one.
    let farm = TestFarm::new();
    Credentials {
        ca: farm.ca.cert_der().clone(),
        identity: farm.member(PeerRole::Client).0,
    }
    .save(&root.join("identity"))
    .unwrap();
    Setup {
        log: root.join("rustc.log"),
        events: root.join("events.jsonl"),
        rustc,
        root,
        _dir: dir,
    }
}

/// Arguments as cargo passes them for a binary, which never leaves the
/// machine.
fn bin_args(name: &str) -> Vec<String> {
    [
        "--crate-name",
        name,
        "--edition=2021",
        "src/main.rs",
        "--crate-type",
        "bin",
        "--emit=dep-info,link",
        "--out-dir",
        "target",
    ]
    .map(String::from)
    .to_vec()
}

/// Arguments as cargo passes them for a library, which the wrapper tries to
/// compile on the farm.
fn lib_args(name: &str) -> Vec<String> {
    [
        "--crate-name",
        name,
        "--edition=2021",
        "src/lib.rs",
        "--error-format=json",
        "--crate-type",
        "lib",
        "--emit=dep-info,metadata,link",
        "--out-dir",
        "target",
    ]
    .map(String::from)
    .to_vec()
}

fn spawn_wrapper(s: &Setup, cache_dir: &Path, args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_distcc-rs"))
        .arg(&s.rustc)
        .args(args)
        .current_dir(&s.root)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FAKE_RUSTC_LOG", &s.log)
        .env("DISTCC_RS_CACHE_DIR", cache_dir)
        .env("DISTCC_RS_LOCAL_SLOTS", "2")
        .env("DISTCC_RS_EVENTS", &s.events)
        .env("DISTCC_RS_IDENTITY_DIR", s.root.join("identity"))
        // Never reached: packing the fake toolchain fails first. Set so that
        // libraries take the farm path and fall back, rather than skipping
        // the farm for want of a scheduler.
        .env("DISTCC_RS_SCHEDULER", "127.0.0.1:9")
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

/// The compiles the fake rustc recorded, as (start, end) in nanoseconds.
fn intervals(log: &Path) -> Vec<(u128, u128)> {
    let text = fs::read_to_string(log).unwrap();
    let mut starts = std::collections::HashMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [kind, pid, t] = fields[..] else {
            panic!("bad log line {line:?}");
        };
        let t: u128 = t.parse().unwrap();
        match kind {
            "start" => {
                starts.insert(pid.to_owned(), t);
            }
            "end" => out.push((starts.remove(pid).expect("a start before the end"), t)),
            _ => panic!("bad log line {line:?}"),
        }
    }
    assert!(starts.is_empty(), "compiles that never ended: {starts:?}");
    out
}

/// The largest number of intervals that overlap at any instant.
fn max_overlap(intervals: &[(u128, u128)]) -> usize {
    let mut edges: Vec<(u128, i32)> = intervals
        .iter()
        .flat_map(|&(s, e)| [(s, 1), (e, -1)])
        .collect();
    // At equal times an end comes first: touching is not overlapping.
    edges.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        max = max.max(now);
    }
    max as usize
}

#[test]
fn overlap_is_counted_from_intervals() {
    assert_eq!(max_overlap(&[(0, 10), (10, 20), (20, 30)]), 1);
    assert_eq!(max_overlap(&[(0, 10), (5, 20), (6, 7)]), 3);
    assert_eq!(max_overlap(&[]), 0);
}

#[test]
fn local_compiles_of_many_wrappers_share_the_host_slots() {
    let s = setup();
    let cache = s.root.join("cache");
    let mut children = Vec::new();
    for i in 0..4 {
        children.push(spawn_wrapper(&s, &cache, &bin_args(&format!("app{i}"))));
    }
    for i in 0..2 {
        children.push(spawn_wrapper(&s, &cache, &lib_args(&format!("lib{i}"))));
    }
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }

    let ran = intervals(&s.log);
    assert_eq!(ran.len(), 6, "every compile ran once");
    assert_eq!(
        max_overlap(&ran),
        2,
        "two compiles at a time, never more: {ran:?}"
    );
    // Both kinds of local compile were throttled: the exec'd ones and the
    // fallbacks after a farm attempt.
    let events = fs::read_to_string(&s.events).unwrap();
    assert_eq!(events.matches(r#""where":"local""#).count(), 4, "{events}");
    assert_eq!(
        events.matches(r#""where":"fallback""#).count(),
        2,
        "{events}"
    );
}

#[test]
fn an_unusable_slot_directory_leaves_compiles_unthrottled() {
    let s = setup();
    // The cache directory would have to be created inside a regular file.
    let blocker = s.root.join("blocker");
    fs::write(&blocker, b"").unwrap();
    let cache = blocker.join("cache");
    let children: Vec<Child> = (0..3)
        .map(|i| spawn_wrapper(&s, &cache, &bin_args(&format!("app{i}"))))
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    assert_eq!(intervals(&s.log).len(), 3, "every compile ran");
}
