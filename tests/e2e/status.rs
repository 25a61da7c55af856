//! `distcc-rs status`, the real binary, asked about a loopback farm while
//! a build goes through it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use distcc_rs_e2e::events::describe;
use distcc_rs_e2e::process::run_with_timeout;
use distcc_rs_e2e::watch::{node_name, node_names};
use distcc_rs_e2e::{
    FarmEnv, Node, Scheduler, copy_fixture, describe_status, spawn_cargo_build, wait_until,
    watch_status,
};

use crate::{assert_farm_build_succeeded, farm_test};

/// How long the test waits for a job in flight. The first remote job of a
/// farm waits for the toolchain upload and fetch, which take a while on a
/// loaded machine; a build that ends first fails the test sooner, with its
/// own message.
const JOB_IN_FLIGHT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// How long one `distcc-rs status` may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `distcc-rs status` (the table for people) against `scheduler`.
fn human_status(scheduler: SocketAddr) -> String {
    let mut command = distcc_rs_e2e::client_command(scheduler);
    command
        .arg("status")
        .arg("--scheduler")
        .arg(scheduler.to_string());
    let output = run_with_timeout(&mut command, STATUS_TIMEOUT).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        output.status.success(),
        "`distcc-rs status` failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("`distcc-rs status` prints UTF-8")
}

/// The row of the node table that describes `node`, split into cells.
fn node_row(text: &str, node: &str) -> Option<Vec<String>> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(node))
        .map(|l| l.split_whitespace().map(String::from).collect())
}

#[test]
fn status_shows_the_nodes_and_jobs_in_flight_of_a_running_farm() {
    let _serial = farm_test();
    // realdeps: its larger crates keep nodes busy for seconds, long enough
    // for a status request to catch them in flight.
    let fixture = copy_fixture("realdeps");
    let scheduler = Scheduler::start(fixture.scratch());
    let _n1 = Node::start(fixture.scratch(), scheduler.addr(), "n1", &[]);
    let _n2 = Node::start(fixture.scratch(), scheduler.addr(), "n2", &[]);
    let farm = FarmEnv::new(scheduler.addr(), &fixture.scratch().join("client"));
    let mut build = spawn_cargo_build(fixture.root(), &farm.vars(), &[]);
    let deadline = Instant::now() + JOB_IN_FLIGHT_TIMEOUT;

    // `status --json` lists both nodes and, while the build runs, the jobs
    // placed on them.
    let seen = watch_status(
        scheduler.addr(),
        deadline,
        "both nodes and a job in flight in `distcc-rs status --json`",
        |status| {
            if node_names(status) == ["n1", "n2"] && !status.jobs.is_empty() {
                return Some(status.clone());
            }
            assert!(
                !build.is_finished(),
                "the build finished before a job in flight was seen\nstatus:\n{}\nevents:\n{}",
                describe_status(status),
                describe(&farm.events())
            );
            None
        },
    );
    assert_eq!(seen.farm, "default", "{}", describe_status(&seen));
    for node in &seen.nodes {
        assert_eq!(node.slots, 2, "{}", describe_status(&seen));
        assert!(node.running <= node.slots, "{}", describe_status(&seen));
    }
    for job in &seen.jobs {
        assert!(
            node_name(&seen, job).is_some(),
            "job {} is on no listed node\n{}",
            job.job,
            describe_status(&seen)
        );
        assert!(!job.crate_name.is_empty() && !job.client.is_empty());
    }
    let on_nodes: u32 = seen.nodes.iter().map(|n| n.running).sum();
    assert_eq!(
        on_nodes as usize,
        seen.jobs.len(),
        "the nodes' running counts and the job list disagree\n{}",
        describe_status(&seen)
    );

    // The table for people names both nodes with their slots, and lists a
    // job in flight with its crate and node while the build still runs.
    let mut last = String::new();
    wait_until(
        deadline,
        "`distcc-rs status` to list a job in flight",
        || {
            last = human_status(scheduler.addr());
            let in_flight = last
                .lines()
                .skip_while(|l| !l.starts_with("JOB"))
                .skip(1)
                .take_while(|l| !l.is_empty())
                .any(|l| {
                    let cells: Vec<&str> = l.split_whitespace().collect();
                    cells.len() == 6
                        && matches!(cells[3], "n1" | "n2")
                        && matches!(cells[4], "assigned" | "running")
                });
            if !in_flight {
                assert!(
                    !build.is_finished(),
                    "the build finished before `distcc-rs status` showed a job in flight; \
                     its last output:\n{last}"
                );
            }
            in_flight
        },
    );
    assert!(
        last.starts_with(&format!(
            "farm \"default\", scheduler {}\n",
            scheduler.addr()
        )),
        "{last}"
    );
    for name in ["n1", "n2"] {
        let row = node_row(&last, name).unwrap_or_else(|| panic!("no row for {name} in\n{last}"));
        // NODE ADDRESS SLOTS ...: the slots cell is `running/2`.
        assert!(
            row[2].ends_with("/2"),
            "the slots of {name} in {row:?}\n{last}"
        );
    }

    let output = build.wait();
    assert_farm_build_succeeded(&output, &farm);
}
