//! Watching a farm through its scheduler's status while a build runs: which
//! nodes are registered and which jobs they are working on.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Instant;

use distcc_rs_proto::message::{FarmStatus, JobStatus};

use crate::farm::try_status;

/// Polls the scheduler's status until `found` returns a value, and returns
/// that value.
///
/// A status request that fails is simply made again: the scheduler may be
/// busy storing a toolchain upload, or not yet back after a restart. Past
/// `deadline` this panics with `what` and the last status seen (or the last
/// error), so that a test that times out shows what the farm looked like.
pub fn watch_status<T>(
    scheduler: SocketAddr,
    deadline: Instant,
    what: &str,
    mut found: impl FnMut(&FarmStatus) -> Option<T>,
) -> T {
    loop {
        let last = match try_status(scheduler) {
            Ok(status) => {
                if let Some(value) = found(&status) {
                    return value;
                }
                describe_status(&status)
            }
            Err(e) => format!("<the status request failed: {e:#}>"),
        };
        if Instant::now() >= deadline {
            panic!("timed out waiting for {what}; the last status:\n{last}");
        }
        std::thread::sleep(crate::POLL_INTERVAL);
    }
}

/// The name of the node a job runs on, if that node is still registered.
pub fn node_name<'a>(status: &'a FarmStatus, job: &JobStatus) -> Option<&'a str> {
    status
        .nodes
        .iter()
        .find(|n| n.node == job.node)
        .map(|n| n.name.as_str())
}

/// The names of the registered nodes, sorted.
pub fn node_names(status: &FarmStatus) -> Vec<&str> {
    let mut names: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
    names.sort_unstable();
    names
}

/// The status as a few lines for failure messages: each node with its load,
/// each job in flight with its node, and the totals.
pub fn describe_status(status: &FarmStatus) -> String {
    let mut text = String::from("  nodes:\n");
    for node in &status.nodes {
        let _ = writeln!(
            text,
            "    {} ({}, {}): running {}/{}, done {}, failed {}",
            node.name,
            node.node,
            node.addr,
            node.running,
            node.slots,
            node.jobs_done,
            node.jobs_failed
        );
    }
    text.push_str("  jobs:\n");
    for job in &status.jobs {
        let _ = writeln!(
            text,
            "    {} {} on {} ({:?}, {} ms)",
            job.job,
            job.crate_name,
            node_name(status, job).unwrap_or("<an unregistered node>"),
            job.phase,
            job.elapsed_ms
        );
    }
    let _ = write!(
        text,
        "  waiting: {}\n  totals: {:?}",
        status.waiting, status.totals
    );
    text
}
