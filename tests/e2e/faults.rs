//! Farm failures: whatever goes wrong in the farm, the build succeeds and
//! produces the same bytes as a local build.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use distcc_rs_e2e::events::describe;
use distcc_rs_e2e::{
    FarmEnv, Node, Scheduler, Where, compare_artifacts, copy_fixture, free_loopback_port,
    snapshot_artifacts, spawn_cargo_build, try_status, wait_until,
};
use distcc_rs_proto::message::{JobPhase, JobStatus};

use crate::{assert_farm_build_succeeded, assert_ran, farm_build, farm_test, local_reference};

/// How long the killing test waits for a job to start running on a node. The
/// first remote job of a farm waits for the toolchain upload and fetch.
const RUNNING_JOB_TIMEOUT: Duration = Duration::from_secs(10 * 60);

#[test]
fn scheduler_down_still_builds() {
    let _serial = farm_test();
    let fixture = copy_fixture("workspace");
    let local = local_reference(&fixture, None);

    let nowhere = SocketAddr::from((Ipv4Addr::LOCALHOST, free_loopback_port()));
    let farm = FarmEnv::new(nowhere, &fixture.scratch().join("client"));
    farm_build(&fixture, &farm);

    let events = farm.events();
    assert!(!events.is_empty(), "the client logged no events");
    assert!(
        events
            .iter()
            .all(|e| matches!(e.place, Where::Local | Where::Fallback)),
        "with no scheduler nothing can run remotely; events:\n{}",
        describe(&events)
    );
    for krate in ["base", "uses_macros", "native"] {
        assert_ran(&events, krate, Where::Fallback);
    }
    compare_artifacts(&local.artifacts, &snapshot_artifacts(&fixture.target_dir()));
}

#[test]
fn node_killed_mid_job_still_builds() {
    let _serial = farm_test();
    // The crates.io fixture, because its larger crates (regex-automata, syn)
    // keep a node busy long enough to be caught in the act.
    let fixture = copy_fixture("realdeps");
    let local = local_reference(&fixture, None);

    let scheduler = Scheduler::start(fixture.scratch());
    let mut nodes = [
        Node::start(fixture.scratch(), scheduler.addr(), "n1", &[]),
        Node::start(fixture.scratch(), scheduler.addr(), "n2", &[]),
    ];
    let farm = FarmEnv::new(scheduler.addr(), &fixture.scratch().join("client"));
    let mut build = spawn_cargo_build(fixture.root(), &farm.vars(), &[]);

    // Find a job that a node is working on, and the node's name.
    let mut victim: Option<(JobStatus, String)> = None;
    wait_until(
        Instant::now() + RUNNING_JOB_TIMEOUT,
        "a job running on a node",
        || {
            assert!(
                !build.is_finished(),
                "the build finished before any job was seen running on a node"
            );
            // The scheduler may be busy storing the toolchain upload; a
            // status request that fails now is simply asked again.
            let Ok(status) = try_status(scheduler.addr()) else {
                return false;
            };
            let running = status
                .jobs
                .iter()
                .find(|job| job.phase == JobPhase::Running);
            victim = running.and_then(|job| {
                let node = status.nodes.iter().find(|n| n.node == job.node)?;
                Some((job.clone(), node.name.clone()))
            });
            victim.is_some()
        },
    );
    let (job, victim_name) = victim.expect("wait_until returned, so a job was found");
    let node = nodes
        .iter_mut()
        .find(|n| n.name() == victim_name)
        .unwrap_or_else(|| panic!("the scheduler reports a node {victim_name} we did not start"));
    // Shown with --nocapture or when the test fails, to tell what was hit.
    println!(
        "killing node {victim_name} while it runs {} ({})",
        job.job, job.crate_name
    );
    node.kill();

    let output = build.wait();
    assert_farm_build_succeeded(&output, &farm);
    let events = farm.events();
    assert!(
        events.iter().any(|e| e.place == Where::Remote),
        "after killing {victim_name} during {} ({}), the other node should still have \
         compiled something; events:\n{}",
        job.crate_name,
        job.job,
        describe(&events)
    );
    // The job that was running when its node died was compiled again
    // locally. (It could only have ended as "remote" had it finished in the
    // instant between the status answer and the kill.)
    assert!(
        events
            .iter()
            .any(|e| e.is_crate(&job.crate_name) && e.place == Where::Fallback),
        "{} was running on {victim_name} when it was killed, so it should have fallen back \
         to a local compile; events:\n{}",
        job.crate_name,
        describe(&events)
    );
    compare_artifacts(&local.artifacts, &snapshot_artifacts(&fixture.target_dir()));
}

#[test]
fn scheduler_restart_keeps_the_farm_working() {
    let _serial = farm_test();
    let fixture = copy_fixture("workspace");
    let local = local_reference(&fixture, None);

    let mut scheduler = Scheduler::start(fixture.scratch());
    let addr = scheduler.addr();
    let _node = Node::start(fixture.scratch(), addr, "n1", &[]);
    let before = FarmEnv::new(addr, &fixture.scratch().join("client-before"));
    farm_build(&fixture, &before);
    assert_ran(&before.events(), "base", Where::Remote);

    // A new scheduler on the same address and state: the node must find it
    // and register again by itself, and the stored toolchain must serve.
    scheduler.kill();
    let _scheduler = Scheduler::start_on(fixture.scratch(), addr);
    wait_until(
        Instant::now() + Duration::from_secs(60),
        "the node to register with the restarted scheduler",
        || try_status(addr).is_ok_and(|s| s.nodes.len() == 1),
    );
    fixture.clean();
    let after = FarmEnv::new(addr, &fixture.scratch().join("client-after"));
    farm_build(&fixture, &after);
    let events = after.events();
    for krate in ["base", "uses_macros", "native"] {
        assert_ran(&events, krate, Where::Remote);
    }
    compare_artifacts(&local.artifacts, &snapshot_artifacts(&fixture.target_dir()));
}

#[test]
fn broken_sandbox_falls_back_locally() {
    let _serial = farm_test();
    let fixture = copy_fixture("workspace");
    let local = local_reference(&fixture, None);

    let scheduler = Scheduler::start(fixture.scratch());
    // /bin/false exits at once with an error, like a bubblewrap that cannot
    // set up its namespaces: every job fails in the sandbox.
    let _node = Node::start(
        fixture.scratch(),
        scheduler.addr(),
        "n1",
        &["--bwrap", "/bin/false"],
    );
    let farm = FarmEnv::new(scheduler.addr(), &fixture.scratch().join("client"));
    farm_build(&fixture, &farm);

    let events = farm.events();
    for krate in ["base", "uses_macros", "native"] {
        assert_ran(&events, krate, Where::Fallback);
    }
    compare_artifacts(&local.artifacts, &snapshot_artifacts(&fixture.target_dir()));
}
