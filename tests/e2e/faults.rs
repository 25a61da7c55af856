//! Farm failures: whatever goes wrong in the farm, the build succeeds and
//! produces the same bytes as a local build.
//!
//! The tests that change the farm while a build runs (a node joins, a node
//! dies, the scheduler restarts) build `tests/fixtures/realdeps`, whose
//! larger crates (syn, regex-syntax, regex-automata) keep nodes busy for
//! seconds at a time, long enough to be caught in the act. They find their
//! moment by polling the scheduler's status, never by sleeping.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use distcc_rs_e2e::events::describe;
use distcc_rs_e2e::watch::node_names;
use distcc_rs_e2e::{
    Event, FarmEnv, Node, RunningBuild, Scheduler, Where, compare_artifacts, copy_fixture,
    describe_status, snapshot_artifacts, spawn_cargo_build, status, watch_status,
};
use distcc_rs_proto::message::{JobPhase, JobStatus, NodeStatus};

use crate::{assert_farm_build_succeeded, assert_ran, farm_build, farm_test, local_reference};

/// How long a test waits for a job to start running on a node. The first
/// remote job of a farm waits for the toolchain upload and fetch, which on a
/// loaded machine take a while; a build that ends first fails the test
/// sooner, with its own message.
const RUNNING_JOB_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// How soon after a node dies the scheduler must have dropped it. The QUIC
/// idle timeout is 6 s, but quinn restarts the idle timer when it sends the
/// first ack-eliciting packet after the last one it received: the
/// scheduler's keep-alive, 2 s after the dead node's last packet. The node
/// sends a load report every second, so its last packet left at most 1 s
/// before the kill and the scheduler gives up on it 7 to 8 s after the kill.
/// The other 2 s cover the status requests themselves on a busy 2-core
/// machine (measured: the drop shows 7.8 to 7.9 s after the kill).
const NODE_LOSS_BOUND: Duration = Duration::from_secs(10);

/// How soon after the scheduler is killed both nodes must be registered with
/// its successor. A node notices the loss through the same idle timeout: its
/// load report, sent every second, restarts the 6 s timer at most 1 s after
/// the scheduler's last packet. It then registers again after a 200 ms
/// back-off, with the restarted scheduler listening long before (measured:
/// 6.8 to 7.8 s after the kill). The rest is margin for a loaded machine.
const REREGISTER_BOUND: Duration = Duration::from_secs(15);

/// How long the restarted scheduler's totals may take to count a job that
/// a node finished: the report travels on the node's control stream, after
/// the client has its results.
const TOTALS_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the status polls that check the two bounds above go on: past
/// the bound, so that a slow farm fails with the time it took rather than
/// with a timeout.
const FARM_CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Crates of the realdeps fixture whose compile takes seconds. A test that
/// kills a node picks one of these jobs, so that the job cannot finish in
/// the instant between the status answer and the kill.
const SLOW_CRATES: &[&str] = &["syn", "regex_syntax", "regex_automata"];

/// Polls the scheduler until it reports a job running (past the ticket
/// check, not merely assigned) on a node for which `wanted` holds, and
/// returns the job and that node. Panics, with the client's events, if the
/// build finishes first.
fn wait_for_running_job(
    scheduler: SocketAddr,
    build: &mut RunningBuild,
    farm: &FarmEnv,
    what: &str,
    mut wanted: impl FnMut(&JobStatus, &NodeStatus) -> bool,
) -> (JobStatus, NodeStatus) {
    watch_status(
        scheduler,
        Instant::now() + RUNNING_JOB_TIMEOUT,
        what,
        |status| {
            let found = status.jobs.iter().find_map(|job| {
                let node = status.nodes.iter().find(|n| n.node == job.node)?;
                (job.phase == JobPhase::Running && wanted(job, node))
                    .then(|| (job.clone(), node.clone()))
            });
            if found.is_none() {
                assert!(
                    !build.is_finished(),
                    "the build finished before {what} was seen\nstatus:\n{}\nevents:\n{}",
                    describe_status(status),
                    describe(&farm.events())
                );
            }
            found
        },
    )
}

/// The events of the compiles of one crate.
fn events_of<'a>(events: &'a [Event], crate_name: &str) -> Vec<&'a Event> {
    events.iter().filter(|e| e.is_crate(crate_name)).collect()
}

#[test]
fn scheduler_down_still_builds() {
    let _serial = farm_test();
    let fixture = copy_fixture("workspace");
    let local = local_reference(&fixture, None);

    // A member of a farm whose scheduler then goes away: the client
    // enrolls while the scheduler is up, and builds after it was killed.
    let mut scheduler = Scheduler::start(fixture.scratch());
    let farm = FarmEnv::new(scheduler.addr(), &fixture.scratch().join("client"));
    let mut join =
        std::process::Command::new(distcc_rs_e2e::bins::binary(distcc_rs_e2e::bins::CLIENT));
    join.envs(farm.vars()).arg("join").arg(scheduler.token());
    let joined = distcc_rs_e2e::process::run_with_timeout(&mut join, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        joined.status.success(),
        "`distcc-rs join` failed: {}",
        String::from_utf8_lossy(&joined.stderr)
    );
    scheduler.kill();
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
fn node_joining_mid_build_receives_jobs() {
    let _serial = farm_test();
    let fixture = copy_fixture("realdeps");
    let local = local_reference(&fixture, None);

    let scheduler = Scheduler::start(fixture.scratch());
    let _first = Node::start(fixture.scratch(), scheduler.addr(), "n1", &[]);
    let farm = FarmEnv::new(scheduler.addr(), &fixture.scratch().join("client"));
    let started = Instant::now();
    // Up to four compiles at once, more than n1's two slots: placement
    // rightly prefers a node that holds the toolchain while it has a free
    // slot, so n2 is sure to get work only if the build asks for more than
    // n1 offers. (Giving n1 one slot would do the same, but the harness
    // starts every node with `--slots 2`.) Parallelism changes no byte of
    // the output.
    let mut build = spawn_cargo_build(fixture.root(), &farm.vars(), &["-j4"]);

    let (job, _) = wait_for_running_job(
        scheduler.addr(),
        &mut build,
        &farm,
        "a job running on n1",
        |_, node| node.name == "n1",
    );
    // Shown with --nocapture or when the test fails.
    println!(
        "{:?} into the build, n1 runs {} ({}); starting n2",
        started.elapsed(),
        job.job,
        job.crate_name
    );
    // The node is ready once it has registered, so every allocation from
    // here on may be placed on it: at the latest when n1 is full.
    let _second = Node::start(fixture.scratch(), scheduler.addr(), "n2", &[]);
    println!("{:?} into the build, n2 is registered", started.elapsed());

    let output = build.wait();
    assert_farm_build_succeeded(&output, &farm);
    println!("the build took {:?}", output.duration);
    let events = farm.events();
    assert!(
        events
            .iter()
            .any(|e| e.place == Where::Remote && e.node.as_deref() == Some("n2")),
        "n2 joined while {} ran on n1, yet compiled nothing of the rest of the build; \
         events:\n{}\nstatus:\n{}",
        job.crate_name,
        describe(&events),
        describe_status(&status(scheduler.addr()))
    );
    compare_artifacts(&local.artifacts, &snapshot_artifacts(&fixture.target_dir()));
}

#[test]
fn node_killed_mid_build_loses_no_job() {
    let _serial = farm_test();
    let fixture = copy_fixture("realdeps");
    let local = local_reference(&fixture, None);

    let scheduler = Scheduler::start(fixture.scratch());
    let mut nodes = [
        Node::start(fixture.scratch(), scheduler.addr(), "n1", &[]),
        Node::start(fixture.scratch(), scheduler.addr(), "n2", &[]),
    ];
    let farm = FarmEnv::new(scheduler.addr(), &fixture.scratch().join("client"));
    let mut build = spawn_cargo_build(fixture.root(), &farm.vars(), &[]);

    let (job, victim) = wait_for_running_job(
        scheduler.addr(),
        &mut build,
        &farm,
        "a slow crate running on a node",
        |job, _| SLOW_CRATES.contains(&job.crate_name.as_str()),
    );
    let survivor = if victim.name == "n1" { "n2" } else { "n1" };
    let node = nodes
        .iter_mut()
        .find(|n| n.name() == victim.name)
        .unwrap_or_else(|| {
            panic!(
                "the scheduler reports a node {} we did not start",
                victim.name
            )
        });
    // Shown with --nocapture or when the test fails, to tell what was hit.
    println!(
        "killing node {} while it runs {} ({}, for {} ms)",
        victim.name, job.job, job.crate_name, job.elapsed_ms
    );
    let killed_at = Instant::now();
    node.kill();

    // The scheduler notices the death by itself and stops placing jobs there:
    // the node leaves the status, and so do the jobs it was running.
    let (dropped_after, after) = watch_status(
        scheduler.addr(),
        killed_at + FARM_CHANGE_TIMEOUT,
        &format!("the scheduler to drop the killed node {}", victim.name),
        |status| {
            (!status.nodes.iter().any(|n| n.name == victim.name))
                .then(|| (killed_at.elapsed(), status.clone()))
        },
    );
    println!(
        "the scheduler dropped {} after {dropped_after:?}",
        victim.name
    );
    assert!(
        dropped_after <= NODE_LOSS_BOUND,
        "the scheduler took {dropped_after:?} to drop the killed node {}, more than {NODE_LOSS_BOUND:?}",
        victim.name
    );
    assert_eq!(
        node_names(&after),
        [survivor],
        "only the surviving node should be left; status:\n{}",
        describe_status(&after)
    );
    assert!(
        after.jobs.iter().all(|j| j.node != victim.node),
        "the jobs of the killed node should be abandoned with it; status:\n{}",
        describe_status(&after)
    );

    let output = build.wait();
    assert_farm_build_succeeded(&output, &farm);
    let events = farm.events();
    // The job that was running when its node died was not lost: the client
    // noticed the dead connection and ran the job again on the other node.
    // (The client records the nodes whose attempts failed in
    // `failed_nodes`.)
    let of_job = events_of(&events, &job.crate_name);
    assert!(
        of_job.iter().any(|e| {
            e.place == Where::Remote
                && e.node.as_deref() == Some(survivor)
                && e.failed_nodes.contains(&victim.name)
        }),
        "{} was running on {} when it was killed, so it should have been compiled again on \
         {survivor} after failing on {}; events:\n{}\nstatus:\n{}",
        job.crate_name,
        victim.name,
        victim.name,
        describe(&events),
        describe_status(&status(scheduler.addr()))
    );
    compare_artifacts(&local.artifacts, &snapshot_artifacts(&fixture.target_dir()));
}

#[test]
fn scheduler_killed_and_restarted_mid_build_fails_no_build() {
    let _serial = farm_test();
    let fixture = copy_fixture("realdeps");
    let local = local_reference(&fixture, None);

    let mut scheduler = Scheduler::start(fixture.scratch());
    let addr = scheduler.addr();
    let _nodes = [
        Node::start(fixture.scratch(), addr, "n1", &[]),
        Node::start(fixture.scratch(), addr, "n2", &[]),
    ];
    let farm = FarmEnv::new(addr, &fixture.scratch().join("client"));
    let started = Instant::now();
    let mut build = spawn_cargo_build(fixture.root(), &farm.vars(), &[]);

    // A job whose node already holds the toolchain needs nothing more from
    // the scheduler, so it must finish on its node whatever the scheduler
    // does. (A job still waiting for its node to fetch the toolchain would
    // fail with the scheduler, and be compiled elsewhere.)
    let (job, node) = wait_for_running_job(
        addr,
        &mut build,
        &farm,
        "a job running on a node that holds the toolchain",
        |_, node| !node.toolchains.is_empty(),
    );
    println!(
        "{:?} into the build, killing the scheduler while {} runs {} ({})",
        started.elapsed(),
        node.name,
        job.job,
        job.crate_name
    );
    let killed_at = Instant::now();
    scheduler.kill();
    // The same address and state directory: what a service manager
    // restarting the scheduler would do.
    let _restarted = Scheduler::start_on(fixture.scratch(), addr);
    println!("the scheduler was back after {:?}", killed_at.elapsed());
    // The bundle uploaded to the first scheduler is served from the state
    // directory, so no client has to upload it again. (Asked at once, before
    // a new upload of 160 MB could have finished.)
    let restarted = status(addr);
    assert_eq!(
        restarted.toolchains.len(),
        1,
        "the restarted scheduler should serve the stored toolchain; status:\n{}",
        describe_status(&restarted)
    );

    let reregistered_after = watch_status(
        addr,
        killed_at + FARM_CHANGE_TIMEOUT,
        "both nodes to register with the restarted scheduler",
        |status| (node_names(status) == ["n1", "n2"]).then(|| killed_at.elapsed()),
    );
    println!(
        "both nodes registered again after {reregistered_after:?}, {:?} into the build",
        started.elapsed()
    );
    assert!(
        reregistered_after <= REREGISTER_BOUND,
        "the nodes took {reregistered_after:?} to register with the restarted scheduler, \
         more than {REREGISTER_BOUND:?}"
    );

    let output = build.wait();
    assert_farm_build_succeeded(&output, &farm);
    println!("the build took {:?}", output.duration);
    let events = farm.events();
    assert!(
        events_of(&events, &job.crate_name)
            .iter()
            .any(|e| e.place == Where::Remote && e.node.as_deref() == Some(node.name.as_str())),
        "{} was compiling on {} when the scheduler was killed and should have finished there; \
         events:\n{}",
        job.crate_name,
        node.name,
        describe(&events)
    );
    // The farm is back in use: the jobs that start after the nodes
    // registered again are placed by the restarted scheduler and compiled
    // on the nodes. The scheduler is killed as soon as a node holds the
    // toolchain, early in the build, and the regex and serde chains leave
    // plenty after the nodes are back (measured: the restarted scheduler
    // placed 7 to 9 jobs).
    let totals = status(addr).totals;
    println!("the restarted scheduler placed {} jobs", totals.assigned);
    assert!(
        totals.assigned > 0,
        "the restarted scheduler placed no job, so the rest of the build ran locally; \
         events:\n{}\nstatus:\n{}",
        describe(&events),
        describe_status(&status(addr))
    );
    watch_status(
        addr,
        Instant::now() + TOTALS_TIMEOUT,
        "a job placed by the restarted scheduler to be compiled",
        |status| (status.totals.succeeded > 0).then_some(()),
    );
    compare_artifacts(&local.artifacts, &snapshot_artifacts(&fixture.target_dir()));
}

#[test]
fn broken_sandbox_falls_back_locally() {
    let _serial = farm_test();
    let fixture = copy_fixture("workspace");
    let local = local_reference(&fixture, None);

    let scheduler = Scheduler::start(fixture.scratch());
    // /bin/false exits at once with an error, like a bubblewrap that cannot
    // set up its namespaces: every job fails in the sandbox. A node refuses
    // to start with a sandbox that does not work (see
    // `sandbox::a_node_whose_sandbox_does_not_work_refuses_to_start`)
    // unless told to start anyway, which it warns about.
    let node = Node::start(
        fixture.scratch(),
        scheduler.addr(),
        "n1",
        &["--bwrap", "/bin/false", "--insecure-no-sandbox"],
    );
    assert!(
        node.log()
            .contains("INSECURE: started with --insecure-no-sandbox"),
        "the node should warn at start that jobs are not sandboxed; log:\n{}",
        node.log()
    );
    let farm = FarmEnv::new(scheduler.addr(), &fixture.scratch().join("client"));
    farm_build(&fixture, &farm);

    let events = farm.events();
    for krate in ["base", "uses_macros", "native"] {
        assert_ran(&events, krate, Where::Fallback);
    }
    assert!(
        node.log()
            .contains("INSECURE: this job runs without the job user"),
        "the node should warn for every job that it is not sandboxed; log:\n{}",
        node.log()
    );
    compare_artifacts(&local.artifacts, &snapshot_artifacts(&fixture.target_dir()));
}
