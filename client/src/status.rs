//! `distcc-rs status`: what the farm is doing, as one screen of text.
//!
//! [`render`] is a pure function of a [`FarmStatus`], so what people read
//! is tested with data; [`StatusConnection`] is the IO edge, shared with
//! `distcc-rs monitor`, which keeps one connection open and asks again every
//! half second.

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;

use distcc_rs_net::credentials::Credentials;
use distcc_rs_net::{EndpointOptions, NetError, open_stream};
use distcc_rs_proto::PeerRole;
use distcc_rs_proto::message::{FarmStatus, JobPhase, JobStatus, NodeLoad, SchedulerRequest};

use crate::events::human_bytes;

/// How long one status request may take on an open connection. The
/// scheduler answers from memory in well under a millisecond; a request
/// that takes seconds means the scheduler is gone, and the QUIC idle
/// timeout (6 s) would only say so later.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection to the scheduler that status requests travel on, one
/// stream per request.
pub struct StatusConnection {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    scheduler: SocketAddr,
}

impl StatusConnection {
    /// Connects to the scheduler at `scheduler` as the member
    /// `credentials` make us.
    pub async fn open(
        scheduler: SocketAddr,
        credentials: &Credentials,
    ) -> Result<StatusConnection, NetError> {
        let opts = EndpointOptions::default();
        let endpoint = distcc_rs_net::bind_client(
            scheduler,
            Some(&credentials.identity),
            &credentials.auth(),
            &opts,
        )?;
        let conn = distcc_rs_net::connect(&endpoint, scheduler, PeerRole::Scheduler, &opts).await?;
        Ok(StatusConnection {
            endpoint,
            conn,
            scheduler,
        })
    }

    /// Asks for a snapshot of the farm.
    pub async fn fetch(&self) -> Result<FarmStatus, NetError> {
        let request = async {
            let (mut w, mut r) = open_stream(&self.conn).await?;
            w.send(&SchedulerRequest::Status).await?;
            r.recv().await
        };
        tokio::time::timeout(REQUEST_TIMEOUT, request)
            .await
            .map_err(|_| NetError::Timeout {
                peer: self.scheduler,
                secs: REQUEST_TIMEOUT.as_secs(),
            })?
            // A scheduler that refuses our certificate closes the
            // connection at the first request, and the close says why.
            .map_err(|e| crate::membership::refusal(&self.conn, self.scheduler).unwrap_or(e))
    }

    /// Closes the connection and waits until the scheduler has been told.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        self.endpoint.wait_idle().await;
    }
}

/// Asks the scheduler for one snapshot of the farm.
pub async fn fetch(
    scheduler: SocketAddr,
    credentials: &Credentials,
) -> Result<FarmStatus, NetError> {
    let conn = StatusConnection::open(scheduler, credentials).await?;
    let status = conn.fetch().await;
    conn.close().await;
    status
}

/// Renders a snapshot for a terminal: a headline, a table of nodes, a
/// table of jobs in flight, the toolchains the scheduler stores, and the
/// farm's counters. Empty tables are left out.
pub fn render(scheduler: SocketAddr, s: &FarmStatus) -> String {
    let mut out = String::new();
    let busy: u32 = s.nodes.iter().map(|n| n.running).sum();
    let slots: u32 = s.nodes.iter().map(|n| n.slots).sum();
    let _ = writeln!(out, "farm {:?}, scheduler {scheduler}", s.farm);
    let _ = writeln!(
        out,
        "{}, {busy} of {slots} slots busy, {} in flight, {} waiting for a slot",
        plural(s.nodes.len() as u64, "node", "nodes"),
        plural(s.jobs.len() as u64, "job", "jobs"),
        plural(u64::from(s.waiting), "request", "requests"),
    );

    if !s.nodes.is_empty() {
        let mut nodes: Vec<_> = s.nodes.iter().collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name).then(a.node.cmp(&b.node)));
        let rows = nodes
            .iter()
            .map(|n| {
                let load = LoadCells::of(n.load.as_ref());
                vec![
                    n.name.clone(),
                    n.addr.to_string(),
                    format!("{}/{}", n.running, n.slots),
                    load.cpu,
                    load.load,
                    load.mem,
                    load.disk,
                    format!("{:.2}", n.speed),
                    n.toolchains.len().to_string(),
                    n.jobs_done.to_string(),
                    n.jobs_failed.to_string(),
                    duration(n.connected_ms),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &[
                ("NODE", Align::Left),
                ("ADDRESS", Align::Left),
                ("SLOTS", Align::Right),
                ("CPU", Align::Right),
                ("LOAD", Align::Right),
                ("MEM FREE", Align::Right),
                ("DISK FREE", Align::Right),
                ("SPEED", Align::Right),
                ("TOOLCHAINS", Align::Right),
                ("DONE", Align::Right),
                ("FAILED", Align::Right),
                ("UP", Align::Right),
            ],
            rows,
        ));
    }

    if !s.jobs.is_empty() {
        // The longest-running jobs first: they are the ones a person
        // looking at a slow build wants to see.
        let mut jobs: Vec<&JobStatus> = s.jobs.iter().collect();
        jobs.sort_by(|a, b| b.elapsed_ms.cmp(&a.elapsed_ms).then(a.job.cmp(&b.job)));
        let rows = jobs
            .iter()
            .map(|j| {
                vec![
                    j.job.to_string(),
                    j.crate_name.clone(),
                    j.client.clone(),
                    node_name(s, j).to_owned(),
                    phase(j.phase).to_owned(),
                    seconds(j.elapsed_ms),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &[
                ("JOB", Align::Left),
                ("CRATE", Align::Left),
                ("CLIENT", Align::Left),
                ("NODE", Align::Left),
                ("PHASE", Align::Left),
                ("ELAPSED", Align::Right),
            ],
            rows,
        ));
    }

    if !s.toolchains.is_empty() {
        let rows = s
            .toolchains
            .iter()
            .map(|t| {
                vec![
                    t.id.0.short(),
                    human_bytes(t.compressed_size),
                    t.holders.to_string(),
                    t.last_used_ms
                        .map_or_else(|| "never".to_owned(), |ms| format!("{} ago", duration(ms))),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &[
                ("TOOLCHAIN", Align::Left),
                ("SIZE", Align::Right),
                ("HELD BY", Align::Right),
                ("LAST USED", Align::Right),
            ],
            rows,
        ));
    }

    let t = &s.totals;
    let _ = writeln!(
        out,
        "\nsince the scheduler started: {} assigned, {} succeeded, {}, {} failed (retried or \
         compiled by the client), {} abandoned, {} told to compile locally, {} queued for a slot",
        t.assigned,
        t.succeeded,
        plural(t.compile_errors, "compile error", "compile errors"),
        t.failed,
        t.abandoned,
        t.run_locally,
        t.queued
    );
    out
}

/// The name of the node a job is on, `?` for a node that has left.
pub(crate) fn node_name<'a>(s: &'a FarmStatus, job: &JobStatus) -> &'a str {
    s.nodes
        .iter()
        .find(|n| n.node == job.node)
        .map_or("?", |n| n.name.as_str())
}

pub(crate) fn phase(phase: JobPhase) -> &'static str {
    match phase {
        JobPhase::Assigned => "assigned",
        JobPhase::Running => "running",
    }
}

/// A node's load report as table cells, `-` for each when none arrived yet.
pub(crate) struct LoadCells {
    /// CPU busy share, e.g. `85%`.
    pub cpu: String,
    /// One-minute load average over cores, e.g. `3.10/8`.
    pub load: String,
    pub mem: String,
    pub disk: String,
}

impl LoadCells {
    pub(crate) fn of(load: Option<&NodeLoad>) -> LoadCells {
        match load {
            None => LoadCells {
                cpu: "-".into(),
                load: "-".into(),
                mem: "-".into(),
                disk: "-".into(),
            },
            Some(l) => LoadCells {
                cpu: format!("{}%", (u32::from(l.cpu_busy_permille) + 5) / 10),
                load: format!("{:.2}/{}", f64::from(l.load_avg_centi) / 100.0, l.cores),
                mem: human_bytes(l.mem_available),
                disk: human_bytes(l.disk_free),
            },
        }
    }
}

/// Milliseconds as seconds with one decimal: `3.2s`.
pub(crate) fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

/// A longer span for people: `42s`, `5m07s`, `3h05m`, `2d04h`.
pub(crate) fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// A table with each column as wide as its widest cell, two spaces between
/// columns, and no trailing spaces.
fn table(columns: &[(&str, Align)], rows: Vec<Vec<String>>) -> String {
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([columns[i].0.len()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..columns.len()).map(width).collect();
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            match columns[i].1 {
                Align::Left => {
                    text.push_str(cell);
                    text.extend(std::iter::repeat_n(' ', pad));
                }
                Align::Right => {
                    text.extend(std::iter::repeat_n(' ', pad));
                    text.push_str(cell);
                }
            }
        }
        let mut text = text.trim_end().to_owned();
        text.push('\n');
        text
    };
    let mut out = line(columns.iter().map(|(h, _)| *h).collect());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use distcc_rs_proto::message::{FarmTotals, NodeStatus, ToolchainStatus};
    use distcc_rs_proto::{Digest, JobId, NodeId, ToolchainId};

    use super::*;

    fn node(id: u64, name: &str, running: u32, slots: u32, load: Option<NodeLoad>) -> NodeStatus {
        NodeStatus {
            node: NodeId(id),
            name: name.into(),
            addr: format!("127.0.0.1:{}", 40000 + id).parse().unwrap(),
            slots,
            running,
            jobs_done: 120 + id,
            jobs_failed: id,
            toolchains: vec![ToolchainId(Digest([7; 32]))],
            connected_ms: 125_000,
            load,
            speed: 1.25,
        }
    }

    fn job(id: u64, node: u64, crate_name: &str, phase: JobPhase, elapsed_ms: u64) -> JobStatus {
        JobStatus {
            job: JobId(id),
            node: NodeId(node),
            crate_name: crate_name.into(),
            client: "laptop:4242".into(),
            build: "laptop:4000".into(),
            phase,
            elapsed_ms,
        }
    }

    fn farm() -> FarmStatus {
        FarmStatus {
            nodes: vec![
                node(
                    2,
                    "node-b",
                    1,
                    4,
                    Some(NodeLoad {
                        running: 1,
                        slots: 4,
                        cores: 8,
                        cpu_busy_permille: 853,
                        load_avg_centi: 310,
                        mem_available: 12 << 30,
                        disk_free: 40 << 30,
                    }),
                ),
                node(1, "node-a", 2, 2, None),
            ],
            jobs: vec![
                job(10, 1, "serde", JobPhase::Running, 1_200),
                job(11, 1, "regex_syntax", JobPhase::Running, 5_400),
                job(12, 2, "memchr", JobPhase::Assigned, 300),
                job(13, 99, "libc", JobPhase::Running, 100),
            ],
            toolchains: vec![ToolchainStatus {
                id: ToolchainId(Digest([7; 32])),
                compressed_size: 95 << 20,
                last_used_ms: Some(2_000),
                holders: 2,
            }],
            totals: FarmTotals {
                assigned: 40,
                succeeded: 30,
                compile_errors: 1,
                failed: 2,
                abandoned: 3,
                run_locally: 4,
                queued: 5,
            },
            waiting: 2,
            farm: "team-a".into(),
            recent: vec![],
        }
    }

    fn render_farm() -> String {
        render("127.0.0.1:7700".parse().unwrap(), &farm())
    }

    #[test]
    fn headline_names_the_farm_and_counts_slots() {
        let text = render_farm();
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some(r#"farm "team-a", scheduler 127.0.0.1:7700"#)
        );
        assert_eq!(
            lines.next(),
            Some("2 nodes, 3 of 6 slots busy, 4 jobs in flight, 2 requests waiting for a slot")
        );
    }

    #[test]
    fn nodes_show_slots_load_speed_toolchains_and_counters() {
        let text = render_farm();
        let header = text.lines().find(|l| l.starts_with("NODE")).unwrap();
        assert_eq!(
            header.split_whitespace().collect::<Vec<_>>(),
            [
                "NODE",
                "ADDRESS",
                "SLOTS",
                "CPU",
                "LOAD",
                "MEM",
                "FREE",
                "DISK",
                "FREE",
                "SPEED",
                "TOOLCHAINS",
                "DONE",
                "FAILED",
                "UP"
            ]
        );
        let row = |name: &str| -> Vec<String> {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no row for {name} in\n{text}"))
                .split_whitespace()
                .map(String::from)
                .collect()
        };
        // Sorted by name, whatever order the scheduler listed them in.
        let a = text.find("node-a").unwrap();
        let b = text.find("node-b").unwrap();
        assert!(a < b, "{text}");
        assert_eq!(
            row("node-b"),
            [
                "node-b",
                "127.0.0.1:40002",
                "1/4",
                "85%",
                "3.10/8",
                "12.0",
                "GiB",
                "40.0",
                "GiB",
                "1.25",
                "1",
                "122",
                "2",
                "2m05s"
            ]
        );
        // No load report yet: dashes, not zeros.
        assert_eq!(
            row("node-a")[2..7],
            ["2/2", "-", "-", "-", "-"].map(String::from)
        );
    }

    #[test]
    fn columns_line_up() {
        let text = render_farm();
        let lines: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("NODE"))
            .take(3)
            .collect();
        // Right-aligned columns end at the same place on every line.
        let end_of = |line: &str, word: &str| line.find(word).unwrap() + word.len();
        assert_eq!(end_of(lines[0], "SLOTS"), end_of(lines[1], "2/2"), "{text}");
        assert_eq!(end_of(lines[0], "SLOTS"), end_of(lines[2], "1/4"), "{text}");
        assert!(text.lines().all(|l| l == l.trim_end()), "{text}");
    }

    #[test]
    fn jobs_show_crate_client_node_phase_and_elapsed_longest_first() {
        let text = render_farm();
        let jobs: Vec<Vec<&str>> = text
            .lines()
            .skip_while(|l| !l.starts_with("JOB"))
            .skip(1)
            .take_while(|l| !l.is_empty())
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            jobs,
            [
                vec![
                    "j11",
                    "regex_syntax",
                    "laptop:4242",
                    "node-a",
                    "running",
                    "5.4s"
                ],
                vec!["j10", "serde", "laptop:4242", "node-a", "running", "1.2s"],
                vec!["j12", "memchr", "laptop:4242", "node-b", "assigned", "0.3s"],
                // Its node left between the scheduler's two lists.
                vec!["j13", "libc", "laptop:4242", "?", "running", "0.1s"],
            ]
        );
    }

    #[test]
    fn toolchains_and_totals_are_listed() {
        let text = render_farm();
        assert!(
            text.contains("TOOLCHAIN         SIZE  HELD BY  LAST USED\n070707070707  95.0 MiB        2     2s ago\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "since the scheduler started: 40 assigned, 30 succeeded, 1 compile error, 2 failed \
                 (retried or compiled by the client), 3 abandoned, 4 told to compile locally, 5 queued for a slot"
            ),
            "{text}"
        );
    }

    #[test]
    fn an_empty_farm_is_two_lines_and_totals() {
        let empty = FarmStatus {
            nodes: vec![],
            jobs: vec![],
            toolchains: vec![],
            totals: FarmTotals::default(),
            waiting: 0,
            farm: "default".into(),
            recent: vec![],
        };
        let text = render("127.0.0.1:7700".parse().unwrap(), &empty);
        assert!(
            text.contains("0 nodes, 0 of 0 slots busy, 0 jobs in flight, 0 requests waiting"),
            "{text}"
        );
        assert!(!text.contains("NODE") && !text.contains("JOB"), "{text}");
        assert!(text.contains("0 compile errors"), "{text}");
    }

    #[test]
    fn spans_for_people() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59_999), "59s");
        assert_eq!(duration(60_000), "1m00s");
        assert_eq!(duration(3_725_000), "1h02m");
        assert_eq!(duration(90_000_000), "1d01h");
        assert_eq!(seconds(1_260), "1.3s");
    }
}
