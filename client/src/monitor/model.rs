//! What the monitor knows about the farm, built from successive status
//! snapshots.
//!
//! The scheduler's status is a snapshot: the nodes now, the jobs in flight
//! now, and counters. The monitor wants a story: which jobs ended and how
//! long they took, which nodes joined and left, how many jobs finish per
//! second. [`Model::observe`] compares each snapshot with the previous one
//! to tell that story. It is pure: the caller passes the time of each
//! snapshot, measured on its own clock from when the monitor started.
//!
//! What a snapshot cannot say is left unsaid. A job that starts and ends
//! between two snapshots is never seen (the throughput, which comes from
//! the scheduler's counters, still counts it); a job that vanished ended
//! somewhere between the two snapshots, so its time is known to within the
//! interval between them; and whether it succeeded is not in the status at
//! all.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use distcc_rs_proto::message::{
    FarmStatus, FarmTotals, FinishedJob, JobOutcome, JobPhase, JobStatus, NodeStatus,
};
use distcc_rs_proto::{JobId, NodeId};

/// How many ended jobs the job list keeps.
pub const HISTORY: usize = 1000;
/// How many throughput samples are kept: four minutes at two a second,
/// more than a terminal is wide.
pub const SAMPLES: usize = 480;
/// How long a node that left stays on screen, greyed out, so that a person
/// sees it go rather than wondering where it went.
pub const LEFT_NODE_SHOWN: Duration = Duration::from_secs(60);
/// How many farm events (joins, leaves, lost contact) are kept.
pub const LOG_LINES: usize = 100;
/// The window the current throughput is averaged over.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Whether the monitor can reach the scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// No answer yet, and no error either.
    Connecting,
    /// The latest request was answered.
    Connected,
    /// The requests since `since` failed; the latest with `reason`. What
    /// the model shows is what it knew before.
    Unreachable { since: Duration, reason: String },
}

/// A node the monitor has seen.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeEntry {
    /// The node as the latest snapshot that listed it saw it.
    pub status: NodeStatus,
    /// When it (last) joined, on the monitor's clock.
    pub joined: Duration,
    /// When it vanished from the scheduler's list, if it did.
    pub left: Option<Duration>,
}

/// A job in flight.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveJob {
    pub job: JobId,
    pub node: NodeId,
    pub node_name: String,
    pub crate_name: String,
    pub client: String,
    pub phase: JobPhase,
    /// Milliseconds since the scheduler placed it, as of the latest
    /// snapshot.
    pub elapsed_ms: u64,
    /// When that snapshot arrived.
    pub seen_at: Duration,
    /// How long after its placement it was first seen running, if it has
    /// been: an upper bound on the time the client took to hash and send
    /// its inputs.
    pub running_after_ms: Option<u64>,
}

/// How an ended job ended, as far as the snapshots tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEnd {
    /// It left the scheduler's list: finished, failed, given back or
    /// expired. The status does not say which.
    Gone,
    /// Its node left the farm at the same time; the client retries the job
    /// elsewhere or compiles it itself.
    NodeLeft,
}

/// A job that ended.
#[derive(Debug, Clone, PartialEq)]
pub struct EndedJob {
    pub job: JobId,
    pub node_name: String,
    pub crate_name: String,
    pub client: String,
    pub end: JobEnd,
    /// The job took at least this long, from placement to its end...
    pub min_ms: u64,
    /// ...and at most this long.
    pub max_ms: u64,
    /// See [`LiveJob::running_after_ms`].
    pub running_after_ms: Option<u64>,
    /// When the monitor noticed the end.
    pub ended_at: Duration,
    /// How it ended and what it moved, when the scheduler's history of
    /// recent jobs still listed it (then `min_ms == max_ms`, exactly).
    pub report: Option<EndReport>,
}

/// What the scheduler's history says about an ended job.
#[derive(Debug, Clone, PartialEq)]
pub struct EndReport {
    pub outcome: JobOutcome,
    /// Bytes from the client to the node (request and inputs) and back
    /// (diagnostics and outputs), as they crossed the wire.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// One line of the farm's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub at: Duration,
    pub text: String,
}

/// Jobs the scheduler counted as ended between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// The previous snapshot's time.
    pub since: Duration,
    /// This snapshot's time.
    pub at: Duration,
    pub ended: u64,
}

/// Colours for clients, one per client machine, handed out in the order
/// the clients first appear and never changed while the monitor runs.
///
/// The key is the client's host name: the status names each job's client
/// as `host:pid` of the wrapper process, and cargo starts one wrapper per
/// rustc, so the pid changes with every job while the host stays.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientColours {
    assigned: BTreeMap<String, usize>,
}

impl ClientColours {
    /// The colour index of `client`, assigning the next one if it is new.
    pub fn assign(&mut self, client: &str) -> usize {
        let next = self.assigned.len();
        *self
            .assigned
            .entry(client_host(client).to_owned())
            .or_insert(next)
    }

    /// The colour index of `client`, if it has one.
    pub fn get(&self, client: &str) -> Option<usize> {
        self.assigned.get(client_host(client)).copied()
    }

    /// Every client host with its colour index, in order of appearance.
    pub fn legend(&self) -> Vec<(&str, usize)> {
        let mut all: Vec<(&str, usize)> = self
            .assigned
            .iter()
            .map(|(h, i)| (h.as_str(), *i))
            .collect();
        all.sort_by_key(|(_, i)| *i);
        all
    }
}

/// The host part of a client's `host:pid` name.
pub fn client_host(client: &str) -> &str {
    match client.rsplit_once(':') {
        Some((host, pid)) if !host.is_empty() && pid.chars().all(|c| c.is_ascii_digit()) => host,
        _ => client,
    }
}

/// Everything the monitor shows.
#[derive(Debug, Clone)]
pub struct Model {
    /// What is being watched: the scheduler's address, or the simulation.
    pub source: String,
    pub link: Link,
    /// The farm's name, once a snapshot said it.
    pub farm: Option<String>,
    /// The time of the latest update.
    pub now: Duration,
    /// Nodes sorted by name, those that left among them for a while.
    pub nodes: Vec<NodeEntry>,
    /// Jobs in flight, in the order they first appeared.
    pub jobs: Vec<LiveJob>,
    /// Ended jobs, the latest first.
    pub ended: VecDeque<EndedJob>,
    /// Throughput samples, oldest first.
    pub samples: VecDeque<Sample>,
    pub totals: FarmTotals,
    pub waiting: u32,
    pub clients: ClientColours,
    /// Farm events, the latest last.
    pub log: VecDeque<LogLine>,
    /// The previous snapshot's time and counters, for the throughput.
    previous: Option<(Duration, FarmTotals)>,
}

impl Model {
    pub fn new(source: impl Into<String>) -> Model {
        Model {
            source: source.into(),
            link: Link::Connecting,
            farm: None,
            now: Duration::ZERO,
            nodes: Vec::new(),
            jobs: Vec::new(),
            ended: VecDeque::new(),
            samples: VecDeque::new(),
            totals: FarmTotals::default(),
            waiting: 0,
            clients: ClientColours::default(),
            log: VecDeque::new(),
            previous: None,
        }
    }

    /// Takes in a snapshot that arrived at `at`.
    pub fn observe(&mut self, at: Duration, status: &FarmStatus) {
        self.now = self.now.max(at);
        if let Link::Unreachable { since, .. } = self.link {
            let text = format!(
                "scheduler answers again after {}s",
                at.saturating_sub(since).as_secs()
            );
            self.note(at, text);
        }
        self.link = Link::Connected;
        self.farm = Some(status.farm.clone());
        self.waiting = status.waiting;
        let left_now = self.update_nodes(at, status);
        self.update_jobs(at, status, &left_now);
        self.update_throughput(at, status.totals);
        self.totals = status.totals;
    }

    /// Records that a request for a snapshot failed at `at`.
    pub fn unreachable(&mut self, at: Duration, reason: impl Into<String>) {
        self.now = self.now.max(at);
        let reason = reason.into();
        match &mut self.link {
            Link::Unreachable { reason: r, .. } => *r = reason,
            _ => {
                self.note(at, format!("scheduler unreachable: {reason}"));
                self.link = Link::Unreachable { since: at, reason };
            }
        }
    }

    /// Moves the clock on without news, so that ages shown ("left 5s ago")
    /// keep counting between snapshots.
    pub fn tick(&mut self, at: Duration) {
        self.now = self.now.max(at);
        self.forget_old_nodes();
    }

    /// The nodes to show: the present ones, and those that left less than
    /// [`LEFT_NODE_SHOWN`] ago.
    pub fn shown_nodes(&self) -> impl Iterator<Item = &NodeEntry> {
        self.nodes.iter()
    }

    /// The jobs in flight on `node`, the longest-running first.
    pub fn jobs_on(&self, node: NodeId) -> Vec<&LiveJob> {
        let mut jobs: Vec<&LiveJob> = self.jobs.iter().filter(|j| j.node == node).collect();
        jobs.sort_by(|a, b| b.elapsed_ms.cmp(&a.elapsed_ms).then(a.job.cmp(&b.job)));
        jobs
    }

    /// Busy and total slots of the present nodes.
    pub fn slots(&self) -> (u32, u32) {
        self.nodes
            .iter()
            .filter(|n| n.left.is_none())
            .fold((0, 0), |(busy, total), n| {
                (busy + n.status.running, total + n.status.slots)
            })
    }

    /// Jobs ended per second over the last [`RATE_WINDOW`], from the
    /// scheduler's counters.
    pub fn rate(&self) -> f64 {
        let from = self.now.saturating_sub(RATE_WINDOW);
        let recent: Vec<&Sample> = self.samples.iter().filter(|s| s.at > from).collect();
        let Some(first) = recent.first() else {
            return 0.0;
        };
        let span = self.now.saturating_sub(first.since).as_secs_f64();
        let ended: u64 = recent.iter().map(|s| s.ended).sum();
        if span > 0.0 { ended as f64 / span } else { 0.0 }
    }

    fn update_nodes(&mut self, at: Duration, status: &FarmStatus) -> Vec<NodeId> {
        let mut left_now = Vec::new();
        for entry in &mut self.nodes {
            let listed = status.nodes.iter().find(|n| n.node == entry.status.node);
            match (listed, entry.left) {
                (Some(n), None) => entry.status = n.clone(),
                (Some(n), Some(_)) => {
                    entry.status = n.clone();
                    entry.left = None;
                    entry.joined = at;
                    let text = format!("{} rejoined", n.name);
                    push_bounded(&mut self.log, LogLine { at, text }, LOG_LINES);
                }
                (None, None) => {
                    entry.left = Some(at);
                    // A node that leaves runs nothing any more.
                    entry.status.running = 0;
                    left_now.push(entry.status.node);
                    let text = format!("{} left", entry.status.name);
                    push_bounded(&mut self.log, LogLine { at, text }, LOG_LINES);
                }
                (None, Some(_)) => {}
            }
        }
        for n in &status.nodes {
            if !self.nodes.iter().any(|e| e.status.node == n.node) {
                // The nodes already there when the monitor starts did not
                // join in front of it.
                if self.previous.is_some() {
                    self.note(at, format!("{} joined", n.name));
                }
                self.nodes.push(NodeEntry {
                    status: n.clone(),
                    joined: at,
                    left: None,
                });
            }
        }
        // By name, whatever order the scheduler lists them in, so that a
        // node keeps its row.
        self.nodes
            .sort_by(|a, b| (&a.status.name, a.status.node).cmp(&(&b.status.name, b.status.node)));
        self.forget_old_nodes();
        left_now
    }

    fn update_jobs(&mut self, at: Duration, status: &FarmStatus, left_now: &[NodeId]) {
        let previous = std::mem::take(&mut self.jobs);
        for old in previous {
            if status.jobs.iter().any(|j| j.job == old.job) {
                self.jobs.push(old);
                continue;
            }
            let end = if left_now.contains(&old.node) {
                JobEnd::NodeLeft
            } else {
                JobEnd::Gone
            };
            let unseen = at.saturating_sub(old.seen_at).as_millis() as u64;
            let reported = status.recent.iter().find(|r| r.job == old.job);
            let (min_ms, max_ms) = match reported {
                Some(r) => (r.total_ms, r.total_ms),
                None => (old.elapsed_ms, old.elapsed_ms + unseen),
            };
            let ended = EndedJob {
                job: old.job,
                node_name: old.node_name,
                crate_name: old.crate_name,
                client: old.client,
                end,
                min_ms,
                max_ms,
                running_after_ms: old.running_after_ms,
                ended_at: at,
                report: reported.map(end_report),
            };
            self.ended.push_front(ended);
        }
        // Jobs that began and ended between two snapshots (or before the
        // monitor started) are known only from the history.
        let mut added = false;
        for r in &status.recent {
            if self.ended.iter().any(|e| e.job == r.job) || self.jobs.iter().any(|l| l.job == r.job)
            {
                continue;
            }
            self.clients.assign(&r.client);
            let node_name = status
                .nodes
                .iter()
                .find(|n| n.node == r.node)
                .map(|n| n.name.clone())
                .or_else(|| {
                    self.nodes
                        .iter()
                        .find(|n| n.status.node == r.node)
                        .map(|n| n.status.name.clone())
                })
                .unwrap_or_else(|| r.node.to_string());
            self.ended.push_front(EndedJob {
                job: r.job,
                node_name,
                crate_name: r.crate_name.clone(),
                client: r.client.clone(),
                end: JobEnd::Gone,
                min_ms: r.total_ms,
                max_ms: r.total_ms,
                running_after_ms: None,
                ended_at: at.saturating_sub(Duration::from_millis(r.ended_ago_ms)),
                report: Some(end_report(r)),
            });
            added = true;
        }
        if added {
            self.ended
                .make_contiguous()
                .sort_by_key(|e| std::cmp::Reverse(e.ended_at));
        }
        self.ended.truncate(HISTORY);
        for j in &status.jobs {
            self.clients.assign(&j.client);
            let node_name = node_name(status, j, &self.nodes);
            match self.jobs.iter_mut().find(|l| l.job == j.job) {
                Some(live) => {
                    if live.running_after_ms.is_none() && j.phase == JobPhase::Running {
                        live.running_after_ms = Some(j.elapsed_ms);
                    }
                    live.phase = j.phase;
                    live.elapsed_ms = j.elapsed_ms;
                    live.seen_at = at;
                    live.node_name = node_name;
                }
                None => self.jobs.push(LiveJob {
                    job: j.job,
                    node: j.node,
                    node_name,
                    crate_name: j.crate_name.clone(),
                    client: j.client.clone(),
                    phase: j.phase,
                    elapsed_ms: j.elapsed_ms,
                    seen_at: at,
                    running_after_ms: (j.phase == JobPhase::Running).then_some(j.elapsed_ms),
                }),
            }
        }
    }

    fn update_throughput(&mut self, at: Duration, totals: FarmTotals) {
        let ended = |t: &FarmTotals| t.succeeded + t.compile_errors + t.failed;
        if let Some((since, before)) = self.previous {
            if ended(&totals) < ended(&before) || totals.assigned < before.assigned {
                // Counters only grow while a scheduler runs: this is a new
                // one. What it did before this snapshot is not known.
                self.note(at, "the scheduler restarted (its counters began again)");
            } else {
                let sample = Sample {
                    since,
                    at,
                    ended: ended(&totals) - ended(&before),
                };
                push_bounded(&mut self.samples, sample, SAMPLES);
            }
        }
        self.previous = Some((at, totals));
    }

    fn forget_old_nodes(&mut self) {
        let now = self.now;
        self.nodes.retain(|n| {
            n.left
                .is_none_or(|left| now.saturating_sub(left) < LEFT_NODE_SHOWN)
        });
    }

    fn note(&mut self, at: Duration, text: impl Into<String>) {
        let line = LogLine {
            at,
            text: text.into(),
        };
        push_bounded(&mut self.log, line, LOG_LINES);
    }
}

/// The name of a job's node: from the snapshot, else from a node the model
/// remembers, else the node id.
fn node_name(status: &FarmStatus, job: &JobStatus, known: &[NodeEntry]) -> String {
    status
        .nodes
        .iter()
        .map(|n| (n.node, &n.name))
        .chain(known.iter().map(|e| (e.status.node, &e.status.name)))
        .find(|(id, _)| *id == job.node)
        .map_or_else(|| job.node.to_string(), |(_, name)| name.clone())
}

fn end_report(r: &FinishedJob) -> EndReport {
    EndReport {
        outcome: r.outcome.clone(),
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
    }
}

fn push_bounded<T>(queue: &mut VecDeque<T>, item: T, limit: usize) {
    if queue.len() == limit {
        queue.pop_front();
    }
    queue.push_back(item);
}

#[cfg(test)]
pub(crate) mod tests {
    use distcc_rs_proto::message::NodeLoad;

    use super::*;

    pub(crate) fn node(id: u64, name: &str, running: u32, slots: u32) -> NodeStatus {
        NodeStatus {
            node: NodeId(id),
            name: name.into(),
            addr: format!("127.0.0.1:{}", 40000 + id).parse().unwrap(),
            slots,
            running,
            jobs_done: 0,
            jobs_failed: 0,
            toolchains: vec![],
            connected_ms: 1_000,
            load: Some(NodeLoad {
                running,
                slots,
                cores: slots,
                cpu_busy_permille: 500,
                load_avg_centi: 150,
                mem_available: 8 << 30,
                disk_free: 100 << 30,
            }),
            speed: 1.0,
        }
    }

    pub(crate) fn job(
        id: u64,
        node: u64,
        crate_name: &str,
        client: &str,
        phase: JobPhase,
        elapsed_ms: u64,
    ) -> JobStatus {
        JobStatus {
            job: JobId(id),
            node: NodeId(node),
            crate_name: crate_name.into(),
            client: client.into(),
            build: client_host(client).into(),
            phase,
            elapsed_ms,
        }
    }

    pub(crate) fn snapshot(nodes: Vec<NodeStatus>, jobs: Vec<JobStatus>, ended: u64) -> FarmStatus {
        FarmStatus {
            nodes,
            jobs,
            toolchains: vec![],
            totals: FarmTotals {
                assigned: ended + 10,
                succeeded: ended,
                ..FarmTotals::default()
            },
            waiting: 0,
            farm: "team-a".into(),
            recent: vec![],
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn finished(job: u64, crate_name: &str, total_ms: u64, ended_ago_ms: u64) -> FinishedJob {
        FinishedJob {
            job: JobId(job),
            node: NodeId(1),
            crate_name: crate_name.into(),
            client: "alice:10".into(),
            build: "alice:1".into(),
            outcome: JobOutcome::Compiled { exit_code: 0 },
            total_ms,
            wall_ms: total_ms - 100,
            bytes_in: 1_000 + job,
            bytes_out: 2_000 + job,
            ended_ago_ms,
        }
    }

    #[test]
    fn the_schedulers_history_gives_exact_times_and_bytes() {
        let mut m = Model::new("test");
        m.observe(
            ms(0),
            &snapshot(
                vec![node(1, "n1", 1, 2)],
                vec![job(7, 1, "serde", "alice:10", JobPhase::Running, 400)],
                0,
            ),
        );
        // serde ended and is in the history; syn began and ended between
        // the snapshots and is known only from it.
        let mut next = snapshot(vec![node(1, "n1", 0, 2)], vec![], 2);
        next.recent = vec![finished(8, "syn", 300, 600), finished(7, "serde", 900, 100)];
        m.observe(ms(1000), &next);
        let serde = m.ended.iter().find(|e| e.crate_name == "serde").unwrap();
        assert_eq!((serde.min_ms, serde.max_ms), (900, 900));
        let report = serde.report.as_ref().unwrap();
        assert_eq!((report.bytes_in, report.bytes_out), (1_007, 2_007));
        let syn = m.ended.iter().find(|e| e.crate_name == "syn").unwrap();
        assert_eq!(syn.node_name, "n1");
        assert_eq!(syn.ended_at, ms(400));
        assert_eq!(
            m.ended
                .iter()
                .map(|e| e.crate_name.as_str())
                .collect::<Vec<_>>(),
            ["serde", "syn"],
            "latest first"
        );
        // The next snapshot lists the same history: nothing is added twice.
        next.recent[1].ended_ago_ms += 500;
        m.observe(ms(1500), &next);
        assert_eq!(m.ended.len(), 2);
    }

    #[test]
    fn a_job_that_vanishes_ends_with_its_time_bounded_by_the_snapshots() {
        let mut m = Model::new("test");
        let nodes = || vec![node(1, "n1", 1, 2)];
        m.observe(
            ms(0),
            &snapshot(
                nodes(),
                vec![job(7, 1, "serde", "alice:10", JobPhase::Assigned, 100)],
                0,
            ),
        );
        m.observe(
            ms(500),
            &snapshot(
                nodes(),
                vec![job(7, 1, "serde", "alice:10", JobPhase::Running, 600)],
                0,
            ),
        );
        assert_eq!(m.jobs.len(), 1);
        assert_eq!(m.jobs[0].running_after_ms, Some(600));
        m.observe(ms(1000), &snapshot(nodes(), vec![], 1));
        assert!(m.jobs.is_empty());
        assert_eq!(
            m.ended.front(),
            Some(&EndedJob {
                job: JobId(7),
                node_name: "n1".into(),
                crate_name: "serde".into(),
                client: "alice:10".into(),
                end: JobEnd::Gone,
                min_ms: 600,
                max_ms: 1100,
                running_after_ms: Some(600),
                ended_at: ms(1000),
                report: None,
            })
        );
    }

    #[test]
    fn ended_jobs_are_listed_latest_first_and_bounded() {
        let mut m = Model::new("test");
        let nodes = || vec![node(1, "n1", 1, 2)];
        for i in 0..(HISTORY as u64 + 5) {
            let t = i * 1000;
            let name = format!("c{i}");
            m.observe(
                ms(t),
                &snapshot(
                    nodes(),
                    vec![job(i, 1, &name, "a:1", JobPhase::Running, 10)],
                    i,
                ),
            );
            m.observe(ms(t + 500), &snapshot(nodes(), vec![], i + 1));
        }
        assert_eq!(m.ended.len(), HISTORY);
        assert_eq!(
            m.ended.front().unwrap().crate_name,
            format!("c{}", HISTORY + 4)
        );
    }

    #[test]
    fn a_node_leaving_mid_job_ends_its_jobs_as_node_left_and_greys_out() {
        let mut m = Model::new("test");
        m.observe(
            ms(0),
            &snapshot(
                vec![node(1, "n1", 1, 2), node(2, "n2", 1, 2)],
                vec![
                    job(1, 1, "syn", "alice:1", JobPhase::Running, 2000),
                    job(2, 2, "regex", "alice:2", JobPhase::Running, 2000),
                ],
                0,
            ),
        );
        m.observe(
            ms(500),
            &snapshot(
                vec![node(1, "n1", 1, 2)],
                vec![job(1, 1, "syn", "alice:1", JobPhase::Running, 2500)],
                0,
            ),
        );
        let regex = m.ended.front().unwrap();
        assert_eq!(
            (regex.crate_name.as_str(), regex.end),
            ("regex", JobEnd::NodeLeft)
        );
        let n2 = m.nodes.iter().find(|n| n.status.name == "n2").unwrap();
        assert_eq!(n2.left, Some(ms(500)));
        assert_eq!(n2.status.running, 0);
        assert_eq!(m.slots(), (1, 2));
        assert_eq!(m.log.back().unwrap().text, "n2 left");

        // Shown for a while, then forgotten.
        m.tick(ms(500) + LEFT_NODE_SHOWN - ms(1));
        assert_eq!(m.shown_nodes().count(), 2);
        m.tick(ms(500) + LEFT_NODE_SHOWN);
        assert_eq!(
            m.shown_nodes()
                .map(|n| n.status.name.as_str())
                .collect::<Vec<_>>(),
            ["n1"]
        );
    }

    #[test]
    fn a_node_that_comes_back_is_shown_again_and_logged() {
        let mut m = Model::new("test");
        m.observe(ms(0), &snapshot(vec![node(1, "n1", 0, 2)], vec![], 0));
        m.observe(ms(500), &snapshot(vec![], vec![], 0));
        m.observe(
            ms(1000),
            &snapshot(vec![node(1, "n1", 0, 2), node(3, "n3", 0, 4)], vec![], 0),
        );
        let texts: Vec<&str> = m.log.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["n1 left", "n1 rejoined", "n3 joined"]);
        assert!(m.nodes.iter().all(|n| n.left.is_none()));
        assert_eq!(m.nodes[0].joined, ms(1000));
        assert_eq!(m.slots(), (0, 6));
    }

    #[test]
    fn client_colours_are_per_host_in_order_of_appearance_and_stable() {
        let mut m = Model::new("test");
        let nodes = || vec![node(1, "n1", 2, 4)];
        m.observe(
            ms(0),
            &snapshot(
                nodes(),
                vec![
                    job(1, 1, "a", "bob-desk:100", JobPhase::Running, 1),
                    job(2, 1, "b", "alice:200", JobPhase::Running, 1),
                ],
                0,
            ),
        );
        // New wrapper processes of the same hosts, and a third host.
        m.observe(
            ms(500),
            &snapshot(
                nodes(),
                vec![
                    job(3, 1, "c", "alice:201", JobPhase::Running, 1),
                    job(4, 1, "d", "ci:7", JobPhase::Running, 1),
                    job(5, 1, "e", "bob-desk:101", JobPhase::Running, 1),
                ],
                2,
            ),
        );
        assert_eq!(m.clients.get("bob-desk:999"), Some(0));
        assert_eq!(m.clients.get("alice:1"), Some(1));
        assert_eq!(m.clients.get("ci:1"), Some(2));
        assert_eq!(
            m.clients.legend(),
            [("bob-desk", 0), ("alice", 1), ("ci", 2)]
        );
        assert_eq!(client_host("[::1]:40"), "[::1]");
        assert_eq!(client_host("no-pid"), "no-pid");
        assert_eq!(client_host("host:not-a-pid"), "host:not-a-pid");
    }

    #[test]
    fn throughput_comes_from_the_counters_and_survives_a_scheduler_restart() {
        let mut m = Model::new("test");
        let nodes = || vec![node(1, "n1", 0, 2)];
        m.observe(ms(0), &snapshot(nodes(), vec![], 10));
        m.observe(ms(500), &snapshot(nodes(), vec![], 12));
        m.observe(ms(1000), &snapshot(nodes(), vec![], 15));
        let counts: Vec<u64> = m.samples.iter().map(|s| s.ended).collect();
        assert_eq!(counts, [2, 3]);
        assert!((m.rate() - 5.0).abs() < 1e-9, "{}", m.rate());

        // A new scheduler starts counting from zero: no negative sample.
        m.observe(ms(1500), &snapshot(nodes(), vec![], 1));
        assert_eq!(m.samples.len(), 2);
        assert!(m.log.iter().any(|l| l.text.contains("restarted")));
        m.observe(ms(2000), &snapshot(nodes(), vec![], 4));
        assert_eq!(m.samples.back().unwrap().ended, 3);
    }

    #[test]
    fn losing_the_scheduler_keeps_what_was_known_and_says_so() {
        let mut m = Model::new("test");
        let nodes = || vec![node(1, "n1", 1, 2)];
        let jobs = || vec![job(1, 1, "syn", "a:1", JobPhase::Running, 100)];
        m.observe(ms(0), &snapshot(nodes(), jobs(), 0));
        m.unreachable(ms(500), "timed out");
        m.unreachable(ms(1500), "connection refused");
        assert_eq!(
            m.link,
            Link::Unreachable {
                since: ms(500),
                reason: "connection refused".into()
            }
        );
        assert_eq!(m.jobs.len(), 1);
        assert_eq!(m.nodes.len(), 1);
        assert_eq!(
            m.log
                .iter()
                .filter(|l| l.text.contains("unreachable"))
                .count(),
            1
        );
        m.observe(ms(3000), &snapshot(nodes(), vec![], 1));
        assert_eq!(m.link, Link::Connected);
        // The job ended during the outage: its time is known only loosely.
        let ended = m.ended.front().unwrap();
        assert_eq!((ended.min_ms, ended.max_ms), (100, 3100));
        assert!(m.log.back().unwrap().text.contains("answers again"));
    }
}
