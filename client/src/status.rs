//! `distcc-rs status`: what the farm is doing.

use std::fmt::Write;
use std::net::SocketAddr;

use distcc_rs_net::{EndpointOptions, NetError, PeerAuth, open_stream};
use distcc_rs_proto::message::{FarmStatus, JobPhase, SchedulerRequest};

/// Asks the scheduler for a snapshot of the farm.
pub async fn fetch(scheduler: SocketAddr) -> Result<FarmStatus, NetError> {
    let opts = EndpointOptions::default();
    let endpoint = distcc_rs_net::bind_client(scheduler, None, &PeerAuth::Unauthenticated, &opts)?;
    let conn = distcc_rs_net::connect(&endpoint, scheduler, &opts).await?;
    let (mut w, mut r) = open_stream(&conn).await?;
    w.send(&SchedulerRequest::Status).await?;
    let status = r.recv().await?;
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(status)
}

/// Renders a snapshot for a terminal.
pub fn render(scheduler: SocketAddr, s: &FarmStatus) -> String {
    let mut out = String::new();
    let t = &s.totals;
    let _ = writeln!(
        out,
        "scheduler {scheduler}: {} node(s), {} job(s) in flight",
        s.nodes.len(),
        s.jobs.len()
    );
    let _ = writeln!(
        out,
        "jobs: {} assigned, {} succeeded, {} compile errors, {} failed, {} abandoned, {} told to run locally",
        t.assigned, t.succeeded, t.compile_errors, t.failed, t.abandoned, t.run_locally
    );
    if !s.nodes.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<20} {:<22} {:>7} {:>6} {:>7} {:>10}",
            "NODE", "ADDRESS", "SLOTS", "DONE", "FAILED", "TOOLCHAINS"
        );
        for n in &s.nodes {
            let _ = writeln!(
                out,
                "{:<20} {:<22} {:>3}/{:<3} {:>6} {:>7} {:>10}",
                n.name,
                n.addr,
                n.running,
                n.slots,
                n.jobs_done,
                n.jobs_failed,
                n.toolchains.len()
            );
        }
    }
    if !s.jobs.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<8} {:<24} {:<18} {:<9} {:>8}",
            "JOB", "CRATE", "CLIENT", "PHASE", "ELAPSED"
        );
        for j in &s.jobs {
            let node = s
                .nodes
                .iter()
                .find(|n| n.node == j.node)
                .map_or("?", |n| n.name.as_str());
            let phase = match j.phase {
                JobPhase::Assigned => "assigned",
                JobPhase::Running => "running",
            };
            let _ = writeln!(
                out,
                "{:<8} {:<24} {:<18} {:<9} {:>7.1}s  on {node}",
                j.job.to_string(),
                j.crate_name,
                j.client,
                phase,
                j.elapsed_ms as f64 / 1000.0
            );
        }
    }
    out
}
