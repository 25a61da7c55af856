//! Builds that the farm compiles remotely, compared byte for byte with local
//! builds.

use std::time::{Duration, Instant};

use distcc_rs_e2e::events::describe;
use distcc_rs_e2e::{
    FarmEnv, Node, Scheduler, Where, compare_artifacts, copy_fixture, snapshot_artifacts, status,
    wait_until,
};

use crate::{assert_ran, farm_build, farm_test, local_reference, run_binary};

/// How long the scheduler may take to count jobs that nodes reported
/// finished: the reports travel on their own streams, after the client has
/// its results.
const TOTALS_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn fixture_workspace_builds_remotely_byte_identical() {
    let _serial = farm_test();
    let fixture = copy_fixture("workspace");
    let local = local_reference(&fixture, Some("app"));

    let scheduler = Scheduler::start(fixture.scratch());
    let _n1 = Node::start(fixture.scratch(), scheduler.addr(), "n1", &[]);
    let _n2 = Node::start(fixture.scratch(), scheduler.addr(), "n2", &[]);
    let farm = FarmEnv::new(scheduler.addr(), &fixture.scratch().join("client"));
    let output = farm_build(&fixture, &farm);

    // The proc-macro prints on rustc's stdout while it expands inside
    // uses_macros, which compiles remotely: cargo must show the same.
    let printed = |stdout: &str| -> Vec<String> {
        stdout
            .lines()
            .filter(|l| l.starts_with("table_from_file:"))
            .map(String::from)
            .collect()
    };
    assert_eq!(
        printed(&local.stdout).len(),
        1,
        "local stdout:\n{}",
        local.stdout
    );
    assert_eq!(
        printed(&output.stdout),
        printed(&local.stdout),
        "farm stdout:\n{}",
        output.stdout
    );

    let events = farm.events();
    // The libraries are distributable: their inputs include a file outside
    // src/ (base), files only a proc-macro reads (uses_macros), and OUT_DIR
    // with a static C library (native).
    for krate in ["base", "uses_macros", "native"] {
        assert_ran(&events, krate, Where::Remote);
    }
    // Proc-macros, build scripts and binaries are not.
    for krate in ["macros", "build_script_build", "app"] {
        assert_ran(&events, krate, Where::Local);
    }

    let remote = events.iter().filter(|e| e.place == Where::Remote).count() as u64;
    wait_until(
        Instant::now() + TOTALS_TIMEOUT,
        "the scheduler to count every remote compile as succeeded",
        || status(scheduler.addr()).totals.succeeded >= remote,
    );
    let totals = status(scheduler.addr()).totals;
    assert!(totals.assigned >= remote, "{totals:?}");

    assert_eq!(
        Some(run_binary(&fixture, "app")),
        local.binary_output,
        "the farm-built app prints something else"
    );
    compare_artifacts(&local.artifacts, &snapshot_artifacts(&fixture.target_dir()));
}

#[test]
fn real_crates_from_crates_io_build_remotely_byte_identical() {
    let _serial = farm_test();
    let fixture = copy_fixture("realdeps");
    let local = local_reference(&fixture, None);

    let scheduler = Scheduler::start(fixture.scratch());
    let _n1 = Node::start(fixture.scratch(), scheduler.addr(), "n1", &[]);
    let _n2 = Node::start(fixture.scratch(), scheduler.addr(), "n2", &[]);
    let farm = FarmEnv::new(scheduler.addr(), &fixture.scratch().join("client"));
    farm_build(&fixture, &farm);

    let events = farm.events();
    // Every compile of a library, including the ones that build scripts run
    // as feature probes, belongs on the farm; proc-macros and build scripts
    // do not. All misplaced compiles are listed at once.
    let misplaced: Vec<String> = events
        .iter()
        .filter_map(|event| {
            let expected = if event.is_rust_library() {
                Where::Remote
            } else if event.is_build_script() || event.crate_types.iter().any(|t| t == "proc-macro")
            {
                Where::Local
            } else {
                return None;
            };
            (event.place != expected).then(|| format!("  {event}: expected {expected:?}"))
        })
        .collect();
    assert!(
        misplaced.is_empty(),
        "{} compiles ran in the wrong place:\n{}\nall events:\n{}",
        misplaced.len(),
        misplaced.join("\n"),
        describe(&events)
    );
    // Name the crates that must be among them, so that a client that, say,
    // reported no crate types at all cannot pass the loop above vacuously.
    for krate in [
        "serde",
        "serde_json",
        "regex",
        "regex_automata",
        "regex_syntax",
        "memchr",
        "libc",
        "realdeps",
    ] {
        assert_ran(&events, krate, Where::Remote);
    }
    assert_ran(&events, "serde_derive", Where::Local);

    compare_artifacts(&local.artifacts, &snapshot_artifacts(&fixture.target_dir()));
}
