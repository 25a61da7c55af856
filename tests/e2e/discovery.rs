//! Zero-configuration farms: daemons and clients started without a single
//! address find each other over mDNS.
//!
//! mDNS must never touch the host's real interfaces, so every process here
//! runs inside a network namespace of its own with nothing but `lo`
//! ([`NetNs`]); creating one needs root, and without it these tests fail
//! rather than pass unseen.

use std::time::{Duration, Instant};

use distcc_rs_e2e::events::describe;
use distcc_rs_e2e::{
    FarmEnv, NetNs, Node, Scheduler, Where, cargo_build_in, compare_artifacts, copy_fixture,
    snapshot_artifacts, status_discovered, wait_until,
};

use crate::{assert_farm_build_succeeded, assert_ran, farm_test, local_reference, run_binary};

/// How long the scheduler may take to count jobs that nodes reported
/// finished: the reports travel on their own streams, after the client has
/// its results.
const TOTALS_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a scheduler may take to notice a node's advert (measured:
/// under a second, most of it the advert's conflict probing).
const SIGHTING_TIMEOUT: Duration = Duration::from_secs(30);

fn node_names(status: &distcc_rs_proto::message::FarmStatus) -> Vec<String> {
    let mut names: Vec<String> = status.nodes.iter().map(|n| n.name.clone()).collect();
    names.sort();
    names
}

#[test]
fn a_farm_started_without_addresses_builds_byte_identical() {
    let _serial = farm_test();
    let fixture = copy_fixture("workspace");
    let local = local_reference(&fixture, Some("app"));

    // Declared before the daemons, so it is dropped (and deleted) after
    // their guards have killed them.
    let netns = NetNs::new();
    let scratch = fixture.scratch();
    let _scheduler = Scheduler::start_in(&netns, scratch, &[]);
    // Each returns once the scheduler has found the node's advert and the
    // node has accepted its adoption.
    let _n1 = Node::start_in(&netns, scratch, "n1", &[]);
    let _n2 = Node::start_in(&netns, scratch, "n2", &[]);

    // `distcc-rs status` without an address finds the scheduler too.
    assert_eq!(
        node_names(&status_discovered(&netns, "default")),
        ["n1", "n2"]
    );

    let farm = FarmEnv::discovering(&scratch.join("client"));
    let output = cargo_build_in(&netns, fixture.root(), &farm, &[]);
    assert_farm_build_succeeded(&output, &farm);

    let events = farm.events();
    for krate in ["base", "uses_macros", "native"] {
        assert_ran(&events, krate, Where::Remote);
    }
    for krate in ["macros", "build_script_build", "app"] {
        assert_ran(&events, krate, Where::Local);
    }
    // The nodes really ran them: the scheduler counted each as a success
    // reported by a node.
    let remote = events.iter().filter(|e| e.place == Where::Remote).count() as u64;
    wait_until(
        Instant::now() + TOTALS_TIMEOUT,
        "the scheduler to count every remote compile as succeeded",
        || status_discovered(&netns, "default").totals.succeeded >= remote,
    );
    let by_node: Vec<(String, u64)> = status_discovered(&netns, "default")
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.jobs_done))
        .collect();
    assert_eq!(
        by_node.iter().map(|(_, done)| done).sum::<u64>(),
        remote,
        "jobs done per node: {by_node:?}; events:\n{}",
        describe(&events)
    );

    assert_eq!(
        Some(run_binary(&fixture, "app")),
        local.binary_output,
        "the farm-built app prints something else"
    );
    compare_artifacts(&local.artifacts, &snapshot_artifacts(&fixture.target_dir()));
}

#[test]
fn two_farms_share_a_network_without_mixing() {
    let _serial = farm_test();
    let scratch = tempfile::tempdir().expect("create a scratch directory");
    let dir = |name: &str| {
        let dir = scratch.path().join(name);
        std::fs::create_dir_all(&dir).expect("create a daemon directory");
        dir
    };
    let netns = NetNs::new();
    let default_scheduler = Scheduler::start_in(&netns, &dir("default"), &[]);
    let _n1 = Node::start_in(&netns, &dir("default"), "n1", &[]);
    // The stranger holds the other farm's token: it enrolls with the other
    // farm's scheduler, which it finds over mDNS, and is adopted by it alone.
    let stranger = Node::spawn_in(&netns, &dir("other"), "stranger", &["--netname", "other"]);
    let _other_scheduler = Scheduler::start_in(&netns, &dir("other"), &["--netname", "other"]);

    // The default farm's scheduler sees the stranger's advert and passes
    // over it, saying why.
    wait_until(
        Instant::now() + SIGHTING_TIMEOUT,
        "the default scheduler to log that it ignores the other farm's node",
        || {
            default_scheduler.log().lines().any(|l| {
                l.contains("ignoring the node service stranger-") && l.contains("\"other\"")
            })
        },
    );
    assert_eq!(node_names(&status_discovered(&netns, "default")), ["n1"]);

    // The other farm's scheduler adopts the stranger and nothing else, and
    // clients of each farm find their own scheduler.
    wait_until(
        Instant::now() + SIGHTING_TIMEOUT,
        "the other farm's scheduler to adopt its node",
        || stranger.has_registered(),
    );
    let other = status_discovered(&netns, "other");
    assert_eq!(other.farm, "other");
    assert_eq!(node_names(&other), ["stranger"]);
    let default = status_discovered(&netns, "default");
    assert_eq!(default.farm, "default");
    assert_eq!(node_names(&default), ["n1"]);
}
