//! End-to-end tests: real schedulers and nodes on loopback, real cargo builds
//! of the fixtures in `tests/fixtures/`.
//!
//! Every test builds its fixture twice in the same place, once with plain
//! local rustc and once through the farm, and checks that the farm build
//! produced byte-identical libraries. The binaries under test are not
//! dependencies of this package, so build them first:
//!
//! ```text
//! cargo build --workspace --bins && cargo test -p distcc-rs-e2e
//! ```

mod datapath;
mod discovery;
mod errors;
mod faults;
mod membership;
mod premise;
mod remote;
mod sandbox;
mod status;
mod toolchains;

use std::process::Command;
use std::sync::MutexGuard;
use std::time::Duration;

use distcc_rs_e2e::events::describe;
use distcc_rs_e2e::process::run_with_timeout;
use distcc_rs_e2e::{
    Artifacts, BuildOutput, Event, FarmEnv, Fixture, Where, cargo_build, snapshot_artifacts,
};

/// Starts a test that needs the farm: checks that its binaries exist and
/// takes the lock that runs the end-to-end tests one at a time.
fn farm_test() -> MutexGuard<'static, ()> {
    distcc_rs_e2e::bins::require_farm_binaries();
    distcc_rs_e2e::exclusive()
}

/// The result of building a fixture with plain local rustc.
struct LocalBuild {
    artifacts: Artifacts,
    /// What cargo printed on stdout (rustc's stdout passes through it).
    stdout: String,
    /// What the binary named in [`local_reference`] printed.
    binary_output: Option<String>,
}

/// Builds the fixture locally, snapshots its libraries, runs `binary` if
/// given, and removes the target directory so that the farm build that
/// follows starts from nothing.
fn local_reference(fixture: &Fixture, binary: Option<&str>) -> LocalBuild {
    let output = cargo_build(fixture.root(), None, &[]);
    output.assert_success("the local build");
    let artifacts = snapshot_artifacts(&fixture.target_dir());
    let binary_output = binary.map(|name| run_binary(fixture, name));
    fixture.clean();
    LocalBuild {
        artifacts,
        stdout: output.stdout,
        binary_output,
    }
}

/// Builds the fixture through the farm and panics, with the client's log,
/// unless the build succeeded.
fn farm_build(fixture: &Fixture, farm: &FarmEnv) -> BuildOutput {
    let output = cargo_build(fixture.root(), Some(farm), &[]);
    assert_farm_build_succeeded(&output, farm);
    output
}

fn assert_farm_build_succeeded(output: &BuildOutput, farm: &FarmEnv) {
    assert!(
        output.status.success(),
        "the farm build failed ({}) after {:?}\n--- stderr ---\n{}\n--- client log (last lines) ---\n{}",
        output.status,
        output.duration,
        output.stderr,
        farm.client_log_tail(60)
    );
}

/// Asserts that the crate was compiled at least once and that every compile
/// of it ran where expected.
fn assert_ran(events: &[Event], crate_name: &str, expected: Where) {
    let of_crate: Vec<&Event> = events.iter().filter(|e| e.is_crate(crate_name)).collect();
    assert!(
        !of_crate.is_empty(),
        "no event for crate {crate_name}; events:\n{}",
        describe(events)
    );
    assert!(
        of_crate.iter().all(|e| e.place == expected),
        "crate {crate_name} should have run {expected:?} every time; events:\n{}",
        describe(events)
    );
}

/// Runs a binary the fixture built and returns what it printed.
fn run_binary(fixture: &Fixture, name: &str) -> String {
    let path = fixture.target_dir().join("debug").join(name);
    let output = run_with_timeout(&mut Command::new(&path), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        output.status.success(),
        "{} failed ({}): {}",
        path.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("the fixture binary prints UTF-8")
}
