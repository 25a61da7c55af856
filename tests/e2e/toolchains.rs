//! Several toolchains on one farm: the `stable` and `nightly` toolchains of
//! this machine (rustup) build the `workspace` fixture through the same
//! farm, each byte-identical to its own local build, which a job compiled
//! by the other toolchain's rustc could not be (the rustc version is part of
//! every library's metadata and file name). Nodes keep their toolchain
//! cache within `--toolchain-cache-size`, and a fresh node fetches the
//! farm's toolchains while idle.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use distcc_rs_e2e::process::run_with_timeout;
use distcc_rs_e2e::{
    Artifacts, FarmEnv, Fixture, Node, Scheduler, Where, cargo_build_with_env, compare_artifacts,
    copy_fixture, snapshot_artifacts, spawn_cargo_build, status, wait_until, watch_status,
};
use distcc_rs_proto::message::FarmStatus;

use crate::{assert_farm_build_succeeded, assert_ran, farm_test};

/// How long a fresh node may take to hold both toolchains by prefetching:
/// two downloads of about 160 MiB over loopback, two unpacks of about
/// 500 MiB and two test compiles, on a loaded 2-core machine (measured: a
/// few seconds each).
const PREFETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the node may take to delete an evicted toolchain's files: the
/// deletion runs on its own thread after the eviction.
const DELETE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the scheduler may take to hear about a node's toolchains.
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// The crates of the workspace fixture the farm compiles.
const REMOTE_CRATES: [&str; 3] = ["base", "uses_macros", "native"];

/// One of this machine's rustup toolchains.
struct Toolchain {
    name: &'static str,
    rustc: PathBuf,
}

impl Toolchain {
    /// The rustc of a rustup toolchain, e.g. `nightly`. The test needs both
    /// toolchains installed (`rustup toolchain install nightly`).
    fn installed(name: &'static str) -> Toolchain {
        let mut command = Command::new("rustup");
        command.args(["which", "rustc", "--toolchain", name]);
        let output = run_with_timeout(&mut command, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("cannot run rustup to find the {name} toolchain: {e:#}"));
        assert!(
            output.status.success(),
            "the {name} toolchain is not installed (rustup toolchain install {name}): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let rustc = PathBuf::from(String::from_utf8(output.stdout).unwrap().trim());
        Toolchain { name, rustc }
    }

    /// The environment that makes cargo use this toolchain's rustc (through
    /// the wrapper, when `farm` is given).
    fn env(&self, farm: Option<&FarmEnv>) -> Vec<(String, String)> {
        let mut env = farm.map(FarmEnv::vars).unwrap_or_default();
        env.push(("RUSTC".into(), self.rustc.to_string_lossy().into_owned()));
        env
    }

    /// Builds `fixture` locally with this toolchain, snapshots its libraries
    /// and cleans up, so that a farm build starts from nothing.
    fn local_reference(&self, fixture: &Fixture) -> Artifacts {
        let output = cargo_build_with_env(fixture.root(), &self.env(None), &[]);
        output.assert_success(&format!("the local {} build", self.name));
        let artifacts = snapshot_artifacts(&fixture.target_dir());
        fixture.clean();
        artifacts
    }

    /// Builds `fixture` through the farm with this toolchain, and checks
    /// that the farm compiled the libraries and that they are those of
    /// `local`.
    fn farm_build(&self, fixture: &Fixture, farm: &FarmEnv, local: &Artifacts) {
        let output = cargo_build_with_env(fixture.root(), &self.env(Some(farm)), &[]);
        assert_farm_build_succeeded(&output, farm);
        self.check(fixture, farm, local);
    }

    fn check(&self, fixture: &Fixture, farm: &FarmEnv, local: &Artifacts) {
        let events = farm.events();
        for krate in REMOTE_CRATES {
            assert_ran(&events, krate, Where::Remote);
        }
        compare_artifacts(local, &snapshot_artifacts(&fixture.target_dir()));
    }
}

/// Both references, each built where its farm build will run (the
/// libraries name their source paths), checking that the toolchains really
/// differ: otherwise matching them would prove nothing about which rustc
/// ran.
fn references(
    stable: &Toolchain,
    nightly: &Toolchain,
    fx_stable: &Fixture,
    fx_nightly: &Fixture,
) -> (Artifacts, Artifacts) {
    let stable_ref = stable.local_reference(fx_stable);
    let nightly_ref = nightly.local_reference(fx_nightly);
    assert_ne!(
        stable_ref.keys().collect::<Vec<_>>(),
        nightly_ref.keys().collect::<Vec<_>>(),
        "stable and nightly produce the same libraries; the test could not tell them apart"
    );
    (stable_ref, nightly_ref)
}

fn node_toolchains(status: &FarmStatus, name: &str) -> Option<usize> {
    status
        .nodes
        .iter()
        .find(|n| n.name == name)
        .map(|n| n.toolchains.len())
}

#[test]
fn two_toolchains_build_on_one_farm_each_with_its_own_rustc() {
    let _serial = farm_test();
    let stable = Toolchain::installed("stable");
    let nightly = Toolchain::installed("nightly");
    let fx_stable = copy_fixture("workspace");
    let fx_nightly = copy_fixture("workspace");
    let (stable_ref, nightly_ref) = references(&stable, &nightly, &fx_stable, &fx_nightly);

    let scratch = fx_stable.scratch();
    let scheduler = Scheduler::start(scratch);
    let _n1 = Node::start(scratch, scheduler.addr(), "n1", &[]);
    let _n2 = Node::start(scratch, scheduler.addr(), "n2", &[]);
    let farm_stable = FarmEnv::new(scheduler.addr(), &scratch.join("client-stable"));
    let farm_nightly = FarmEnv::new(scheduler.addr(), &scratch.join("client-nightly"));

    // Both builds at once, so that jobs of both toolchains are placed side
    // by side on the same nodes.
    let started = Instant::now();
    let build_stable = spawn_cargo_build(fx_stable.root(), &stable.env(Some(&farm_stable)), &[]);
    let build_nightly =
        spawn_cargo_build(fx_nightly.root(), &nightly.env(Some(&farm_nightly)), &[]);
    let (out_stable, out_nightly) = (build_stable.wait(), build_nightly.wait());
    eprintln!(
        "stable and nightly farm builds together: {:.1} s",
        started.elapsed().as_secs_f32()
    );
    assert_farm_build_succeeded(&out_stable, &farm_stable);
    assert_farm_build_succeeded(&out_nightly, &farm_nightly);
    stable.check(&fx_stable, &farm_stable, &stable_ref);
    nightly.check(&fx_nightly, &farm_nightly, &nightly_ref);

    // The scheduler stores both bundles, and knows both were just used.
    let farm = status(scheduler.addr());
    assert_eq!(farm.toolchains.len(), 2, "{:?}", farm.toolchains);
    assert!(
        farm.toolchains.iter().all(|t| t.last_used_ms.is_some()),
        "{:?}",
        farm.toolchains
    );

    // A fresh node fetches both while idle, before any job asks for them.
    let joined = Instant::now();
    let n3 = Node::start(scratch, scheduler.addr(), "n3", &[]);
    let registered = joined.elapsed();
    watch_status(
        scheduler.addr(),
        joined + PREFETCH_TIMEOUT,
        "the fresh node to prefetch both toolchains",
        |s| (node_toolchains(s, "n3") == Some(2)).then_some(()),
    );
    eprintln!(
        "fresh node: registered {:.2} s after start, held both toolchains (prefetched) {:.1} s \
         after start",
        registered.as_secs_f32(),
        joined.elapsed().as_secs_f32()
    );
    let log = n3.log();
    assert_eq!(
        log.matches("prefetched a toolchain").count(),
        2,
        "node log:\n{log}"
    );
    assert!(!log.contains("job started"), "node log:\n{log}");
}

/// The bytes of the regular files under `dir`, recursively.
fn disk_usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => disk_usage(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

#[test]
fn a_cache_with_room_for_one_toolchain_evicts_and_the_builds_still_pass() {
    let _serial = farm_test();
    let stable = Toolchain::installed("stable");
    let nightly = Toolchain::installed("nightly");
    let fixture = copy_fixture("workspace");
    let (stable_ref, nightly_ref) = references(&stable, &nightly, &fixture, &fixture);

    // A toolchain takes about 500 MiB unpacked: room for one, not two.
    const LIMIT: u64 = 600 << 20;
    let scratch = fixture.scratch();
    let scheduler = Scheduler::start(scratch);
    let node = Node::start(
        scratch,
        scheduler.addr(),
        "n1",
        &["--toolchain-cache-size", "600MiB", "--no-prefetch"],
    );
    let cache_dir = scratch.join("node-n1").join("toolchains");

    let rounds = [
        (&stable, &stable_ref),
        (&nightly, &nightly_ref),
        (&stable, &stable_ref),
    ];
    for (round, (toolchain, reference)) in rounds.into_iter().enumerate() {
        let farm = FarmEnv::new(scheduler.addr(), &scratch.join(format!("client-{round}")));
        toolchain.farm_build(&fixture, &farm, reference);
        fixture.clean();
        // The node holds only the toolchain it last used, and its cache is
        // within the limit once the evicted files are deleted.
        watch_status(
            scheduler.addr(),
            Instant::now() + REPORT_TIMEOUT,
            "the node to report holding one toolchain",
            |s| (node_toolchains(s, "n1") == Some(1)).then_some(()),
        );
        wait_until(
            Instant::now() + DELETE_TIMEOUT,
            &format!("the node's toolchain cache to be within its limit (round {round})"),
            || disk_usage(&cache_dir) <= LIMIT,
        );
        eprintln!(
            "round {round} ({}): toolchain cache {} MiB of {} MiB",
            toolchain.name,
            disk_usage(&cache_dir) >> 20,
            LIMIT >> 20
        );
    }
    let log = node.log();
    assert_eq!(
        log.matches("evicted a toolchain").count(),
        2,
        "one eviction per switch of toolchain; node log:\n{log}"
    );
    assert_eq!(status(scheduler.addr()).toolchains.len(), 2);
}
