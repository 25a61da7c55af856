//! Genuine compile errors: the farm reports them exactly as local rustc does,
//! once, and does not mistake them for farm failures.

use distcc_rs_e2e::events::describe;

use crate::farm_test;
use distcc_rs_e2e::{FarmEnv, Node, Scheduler, Where, cargo_build, copy_fixture};

#[test]
fn compile_error_is_reported_like_plain_rustc() {
    let _serial = farm_test();
    let fixture = copy_fixture("broken");
    let local = cargo_build(fixture.root(), None, &[]);
    assert!(
        !local.status.success(),
        "the broken fixture compiled locally"
    );
    fixture.clean();

    let scheduler = Scheduler::start(fixture.scratch());
    let _n1 = Node::start(fixture.scratch(), scheduler.addr(), "n1", &[]);
    let farm = FarmEnv::new(scheduler.addr(), &fixture.scratch().join("client"));
    let remote = cargo_build(fixture.root(), Some(&farm), &[]);

    assert_eq!(
        remote.status.code(),
        local.status.code(),
        "exit codes differ\n--- local stderr ---\n{}\n--- farm stderr ---\n{}",
        local.stderr,
        remote.stderr
    );
    // Everything but cargo's progress lines: the warning, the error with its
    // location and snippet, and cargo's summaries.
    assert_eq!(
        remote.diagnostics(),
        local.diagnostics(),
        "the farm reports the compile error differently\n--- client log (last lines) ---\n{}",
        farm.client_log_tail(60)
    );
    let error_lines = remote
        .stderr
        .lines()
        .filter(|l| l.starts_with("error[E0308]"))
        .count();
    assert_eq!(
        error_lines, 1,
        "the error must be reported exactly once:\n{}",
        remote.stderr
    );

    // The error came from the remote rustc, not from a local retry.
    let events = farm.events();
    let compiles: Vec<_> = events.iter().filter(|e| e.is_crate("broken")).collect();
    assert!(
        !compiles.is_empty()
            && compiles
                .iter()
                .all(|e| e.place == Where::Remote && e.exit_code.is_some_and(|c| c != 0)),
        "the broken crate should have failed remotely; events:\n{}",
        describe(&events)
    );
}
