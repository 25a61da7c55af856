//! A simulated farm for `distcc-rs monitor --simulate`: status snapshots
//! of a farm that does not exist, for demonstrations, screenshots and
//! trying the monitor without a farm.
//!
//! Three clients build crate graphs over and over; five nodes of different
//! sizes and speeds run their jobs; now and then a node drops out and comes
//! back, and one joins late. Everything follows from a seed, so a seed
//! gives the same farm every time. Pure: [`Simulation::step`] moves the
//! simulated clock on and returns the snapshot a scheduler would answer.

use std::collections::VecDeque;

use distcc_rs_proto::message::{
    FarmStatus, FarmTotals, FinishedJob, JobOutcome, JobPhase, JobStatus, NodeLoad, NodeStatus,
    ToolchainStatus,
};
use distcc_rs_proto::{Digest, JobId, NodeId, ToolchainId};

use super::model::client_host;

/// Crates of a typical build, with how long each takes to compile on a
/// node of speed 1.0, in milliseconds.
const CRATES: &[(&str, u64)] = &[
    ("libc", 2_400),
    ("memchr", 1_800),
    ("cfg_if", 300),
    ("once_cell", 700),
    ("itoa", 400),
    ("ryu", 900),
    ("serde", 4_200),
    ("serde_json", 5_600),
    ("proc_macro2", 2_100),
    ("quote", 900),
    ("syn", 9_500),
    ("aho_corasick", 3_800),
    ("regex_syntax", 7_900),
    ("regex_automata", 11_200),
    ("regex", 3_300),
    ("bytes", 1_900),
    ("mio", 2_600),
    ("tokio", 12_800),
    ("hashbrown", 2_800),
    ("indexmap", 1_700),
    ("tracing_core", 2_300),
    ("tracing", 1_600),
    ("rand_core", 800),
    ("rand", 2_000),
    ("blake3", 2_700),
    ("zstd_safe", 1_300),
    ("quinn_proto", 9_800),
    ("rustls", 10_400),
    ("clap_builder", 8_700),
    ("app_core", 6_500),
];

/// The simulated nodes: name, slots, speed, and when (ms) they first join.
const NODES: &[(&str, u32, f64, u64)] = &[
    ("build-01", 8, 1.4, 0),
    ("build-02", 8, 1.3, 0),
    ("desk-07", 4, 1.0, 0),
    ("old-xeon", 6, 0.7, 0),
    ("spare-02", 4, 1.1, 20_000),
];

/// The simulated clients: host name and how many jobs their cargo keeps
/// going at once.
const CLIENTS: &[(&str, usize)] = &[("alice-laptop", 8), ("bob-desk", 10), ("ci-runner-3", 12)];

/// How long a job stays assigned before its client reaches the node
/// (hashing and sending inputs), in milliseconds: between these two.
const SETUP_MS: (u64, u64) = (150, 1_200);
/// How long a request waits for a slot before it is told to compile
/// locally, as the scheduler's default `--queue-timeout`.
const QUEUE_TIMEOUT_MS: u64 = 2_000;
/// The chance, per step, that a present node drops out (in thousandths).
const NODE_LOSS_PER_MILLE: u64 = 2;
/// How long a node that dropped out stays away, in milliseconds.
const AWAY_MS: (u64, u64) = (8_000, 25_000);
/// How many ended jobs a snapshot lists, as the scheduler does.
const RECENT: usize = 200;
/// The pause between two builds of one client.
const BETWEEN_BUILDS_MS: (u64, u64) = (1_000, 5_000);

/// SplitMix64: small, fast and good enough to make a demo look natural.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    fn between(&mut self, (lo, hi): (u64, u64)) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// True with a chance of `per_mille` in a thousand.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
}

#[derive(Debug, Clone)]
struct SimNode {
    id: NodeId,
    name: &'static str,
    slots: u32,
    speed: f64,
    /// When it is (next) due to join, while it is away.
    back_at: Option<u64>,
    joined_at: u64,
    jobs_done: u64,
    jobs_failed: u64,
    /// Smoothed load average, times 100.
    load_centi: u32,
}

#[derive(Debug, Clone)]
struct SimJob {
    id: JobId,
    node: NodeId,
    crate_name: &'static str,
    client: String,
    client_index: usize,
    placed_at: u64,
    running_at: u64,
    ends_at: u64,
}

#[derive(Debug, Clone)]
struct SimClient {
    host: &'static str,
    parallel: usize,
    /// The crates of the current build not yet asked for.
    pending: VecDeque<&'static str>,
    /// Jobs of this client in flight or waiting for a slot.
    active: usize,
    /// When the next build starts, between builds.
    next_build_at: Option<u64>,
    /// Wrapper process ids: each job is another wrapper.
    next_pid: u32,
}

#[derive(Debug, Clone)]
struct Waiting {
    client_index: usize,
    crate_name: &'static str,
    since: u64,
}

/// A farm in a box.
#[derive(Debug, Clone)]
pub struct Simulation {
    rng: Rng,
    clock_ms: u64,
    nodes: Vec<SimNode>,
    jobs: Vec<SimJob>,
    queue: VecDeque<Waiting>,
    clients: Vec<SimClient>,
    totals: FarmTotals,
    next_job: u64,
    /// Jobs that ended, with when (on `clock_ms`), as the scheduler's
    /// bounded history reports them.
    recent: VecDeque<(u64, FinishedJob)>,
}

impl Simulation {
    pub fn new(seed: u64) -> Simulation {
        let mut rng = Rng(seed);
        let nodes = NODES
            .iter()
            .map(|&(name, slots, speed, join_at)| SimNode {
                id: NodeId(rng.next()),
                name,
                slots,
                speed,
                back_at: (join_at > 0).then_some(join_at),
                joined_at: 0,
                jobs_done: 0,
                jobs_failed: 0,
                load_centi: 20,
            })
            .collect();
        let clients = CLIENTS
            .iter()
            .enumerate()
            .map(|(i, &(host, parallel))| SimClient {
                host,
                parallel,
                pending: VecDeque::new(),
                active: 0,
                // The clients start their first builds a little apart.
                next_build_at: Some(i as u64 * 1_500),
                next_pid: 1000 + 1000 * i as u32,
            })
            .collect();
        Simulation {
            rng,
            clock_ms: 0,
            nodes,
            jobs: Vec::new(),
            queue: VecDeque::new(),
            clients,
            totals: FarmTotals::default(),
            next_job: 1,
            recent: VecDeque::new(),
        }
    }

    /// Moves the simulated clock on by `dt_ms` and returns the farm's
    /// status at the new time.
    pub fn step(&mut self, dt_ms: u64) -> FarmStatus {
        self.clock_ms += dt_ms;
        self.finish_jobs();
        self.churn_nodes();
        self.start_builds();
        self.ask_for_slots();
        self.place_waiting();
        self.update_load();
        self.status()
    }

    fn present(&self) -> impl Iterator<Item = &SimNode> {
        self.nodes.iter().filter(|n| n.back_at.is_none())
    }

    fn running_on(&self, node: NodeId) -> u32 {
        self.jobs.iter().filter(|j| j.node == node).count() as u32
    }

    fn finish_jobs(&mut self) {
        let now = self.clock_ms;
        let (done, running): (Vec<SimJob>, Vec<SimJob>) =
            self.jobs.drain(..).partition(|j| j.ends_at <= now);
        self.jobs = running;
        for job in done {
            if let Some(node) = self.nodes.iter_mut().find(|n| n.id == job.node) {
                node.jobs_done += 1;
            }
            // One compile in fifty has an error in it.
            let exit_code = if self.rng.chance(20) {
                self.totals.compile_errors += 1;
                1
            } else {
                self.totals.succeeded += 1;
                0
            };
            self.clients[job.client_index].active -= 1;
            // Inputs are mostly dependency metadata the node already holds;
            // outputs are the rlib and rmeta, a few hundred KiB each.
            let bytes_in = self.rng.between((2_000, 400_000));
            let bytes_out = self.rng.between((50_000, 3_000_000));
            let finished = FinishedJob {
                job: job.id,
                node: job.node,
                crate_name: job.crate_name.to_owned(),
                client: job.client.clone(),
                build: client_host(&job.client).to_owned(),
                outcome: JobOutcome::Compiled { exit_code },
                total_ms: now - job.placed_at,
                wall_ms: now - job.running_at.min(now),
                bytes_in,
                bytes_out,
                ended_ago_ms: 0,
            };
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back((now, finished));
        }
    }

    fn churn_nodes(&mut self) {
        let now = self.clock_ms;
        for i in 0..self.nodes.len() {
            match self.nodes[i].back_at {
                Some(at) if at <= now => {
                    let node = &mut self.nodes[i];
                    node.back_at = None;
                    node.joined_at = now;
                    // The scheduler starts counting afresh for a node that
                    // registers again.
                    node.jobs_done = 0;
                    node.jobs_failed = 0;
                }
                Some(_) => {}
                None => {
                    // Never fewer than two nodes, so there is always a farm.
                    if self.present().count() > 2 && self.rng.chance(NODE_LOSS_PER_MILLE) {
                        let away = self.rng.between(AWAY_MS);
                        let id = self.nodes[i].id;
                        self.nodes[i].back_at = Some(now + away);
                        // Its jobs fail; their clients ask again.
                        let (lost, kept): (Vec<SimJob>, Vec<SimJob>) =
                            self.jobs.drain(..).partition(|j| j.node == id);
                        self.jobs = kept;
                        for job in lost {
                            self.totals.failed += 1;
                            self.queue.push_back(Waiting {
                                client_index: job.client_index,
                                crate_name: job.crate_name,
                                since: now,
                            });
                        }
                    }
                }
            }
        }
    }

    fn start_builds(&mut self) {
        let now = self.clock_ms;
        for i in 0..self.clients.len() {
            let client = &self.clients[i];
            if client.pending.is_empty() && client.active == 0 && client.next_build_at.is_none() {
                let pause = self.rng.between(BETWEEN_BUILDS_MS);
                self.clients[i].next_build_at = Some(now + pause);
            }
            if self.clients[i].next_build_at.is_some_and(|at| at <= now) {
                // A build compiles most of the crates, in a shuffled order
                // standing in for each project's dependency graph.
                let mut crates: Vec<&'static str> = CRATES
                    .iter()
                    .map(|(c, _)| *c)
                    .filter(|_| !self.rng.chance(250))
                    .collect();
                for k in (1..crates.len()).rev() {
                    let j = (self.rng.next() % (k as u64 + 1)) as usize;
                    crates.swap(k, j);
                }
                let client = &mut self.clients[i];
                client.pending = crates.into();
                client.next_build_at = None;
            }
        }
    }

    fn ask_for_slots(&mut self) {
        let now = self.clock_ms;
        for (i, client) in self.clients.iter_mut().enumerate() {
            while client.active < client.parallel {
                let Some(crate_name) = client.pending.pop_front() else {
                    break;
                };
                client.active += 1;
                self.queue.push_back(Waiting {
                    client_index: i,
                    crate_name,
                    since: now,
                });
            }
        }
    }

    /// Places waiting requests on the node with the largest free share, as
    /// the scheduler does (without its finer factors); requests that waited
    /// too long compile on their client.
    fn place_waiting(&mut self) {
        let now = self.clock_ms;
        let mut still_waiting = VecDeque::new();
        while let Some(request) = self.queue.pop_front() {
            let best = self
                .present()
                .map(|n| (n.id, n.slots, n.speed, self.running_on(n.id)))
                .filter(|&(_, slots, _, running)| running < slots)
                .max_by(|a, b| {
                    let share = |(_, slots, speed, running): (NodeId, u32, f64, u32)| {
                        speed * f64::from(slots - running) / f64::from(slots)
                    };
                    share(*a).total_cmp(&share(*b))
                });
            match best {
                Some((node, _, speed, _)) => self.place(request, node, speed),
                None if now.saturating_sub(request.since) >= QUEUE_TIMEOUT_MS => {
                    self.totals.run_locally += 1;
                    self.clients[request.client_index].active -= 1;
                }
                None => {
                    if request.since == now {
                        self.totals.queued += 1;
                    }
                    still_waiting.push_back(request);
                }
            }
        }
        self.queue = still_waiting;
    }

    fn place(&mut self, request: Waiting, node: NodeId, speed: f64) {
        let now = self.clock_ms;
        let base = CRATES
            .iter()
            .find(|(c, _)| *c == request.crate_name)
            .map_or(1_000, |(_, ms)| *ms);
        // Compile times vary by a quarter either way from run to run.
        let jitter = self.rng.between((75, 125));
        let compile_ms = (base as f64 * jitter as f64 / 100.0 / speed) as u64;
        let running_at = now + self.rng.between(SETUP_MS);
        let client = &mut self.clients[request.client_index];
        client.next_pid += 1;
        let job = SimJob {
            id: JobId(self.next_job),
            node,
            crate_name: request.crate_name,
            client: format!("{}:{}", client.host, client.next_pid),
            client_index: request.client_index,
            placed_at: now,
            running_at,
            ends_at: running_at + compile_ms,
        };
        self.next_job += 1;
        self.totals.assigned += 1;
        self.jobs.push(job);
    }

    fn update_load(&mut self) {
        for i in 0..self.nodes.len() {
            let running = self.running_on(self.nodes[i].id);
            let node = &mut self.nodes[i];
            // Each rustc keeps about one and a half cores busy; the load
            // average follows slowly, as the kernel's one-minute average does.
            let target = running * 150;
            node.load_centi = (node.load_centi * 9 + target) / 10;
        }
    }

    fn status(&self) -> FarmStatus {
        let now = self.clock_ms;
        let toolchain = ToolchainId(Digest([0x5e; 32]));
        let nodes: Vec<NodeStatus> = self
            .present()
            .map(|n| {
                let running = self.running_on(n.id);
                let cores = n.slots;
                NodeStatus {
                    node: n.id,
                    name: n.name.to_owned(),
                    addr: format!("10.0.0.{}:7701", 10 + (n.id.0 % 200))
                        .parse()
                        .expect("a literal IPv4 address and port parse as a socket address"),
                    slots: n.slots,
                    running,
                    jobs_done: n.jobs_done,
                    jobs_failed: n.jobs_failed,
                    toolchains: vec![toolchain],
                    connected_ms: now - n.joined_at,
                    load: Some(NodeLoad {
                        running,
                        slots: n.slots,
                        cores,
                        cpu_busy_permille: (running * 1000 / n.slots).min(1000) as u16,
                        load_avg_centi: n.load_centi,
                        mem_available: (u64::from(n.slots) << 31)
                            .saturating_sub(u64::from(running) << 29),
                        disk_free: 200 << 30,
                    }),
                    speed: n.speed,
                }
            })
            .collect();
        let jobs = self
            .jobs
            .iter()
            .map(|j| JobStatus {
                job: j.id,
                node: j.node,
                crate_name: j.crate_name.to_owned(),
                client: j.client.clone(),
                build: client_host(&j.client).to_owned(),
                phase: if now >= j.running_at {
                    JobPhase::Running
                } else {
                    JobPhase::Assigned
                },
                elapsed_ms: now - j.placed_at,
            })
            .collect();
        FarmStatus {
            nodes,
            jobs,
            toolchains: vec![ToolchainStatus {
                id: toolchain,
                compressed_size: 97 << 20,
                last_used_ms: Some(0),
                holders: self.present().count() as u32,
            }],
            totals: self.totals,
            waiting: self.queue.len() as u32,
            farm: "simulated".to_owned(),
            recent: self
                .recent
                .iter()
                .map(|(at, job)| FinishedJob {
                    ended_ago_ms: now - at,
                    ..job.clone()
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::monitor::model::client_host;

    fn run(seed: u64, steps: usize) -> Vec<FarmStatus> {
        let mut sim = Simulation::new(seed);
        (0..steps).map(|_| sim.step(500)).collect()
    }

    #[test]
    fn a_seed_gives_the_same_farm_every_time() {
        assert_eq!(run(7, 200), run(7, 200));
        assert_ne!(run(7, 200), run(8, 200));
    }

    #[test]
    fn no_node_is_ever_over_committed_and_counts_agree_with_the_jobs() {
        for status in run(1, 1200) {
            for node in &status.nodes {
                let on_it = status.jobs.iter().filter(|j| j.node == node.node).count() as u32;
                assert_eq!(node.running, on_it);
                assert!(node.running <= node.slots, "{node:?}");
            }
            // Every job is on a node that is listed.
            for job in &status.jobs {
                assert!(status.nodes.iter().any(|n| n.node == job.node));
            }
        }
    }

    #[test]
    fn ten_minutes_show_nodes_coming_and_going_and_three_clients() {
        let snapshots = run(1, 1200);
        let node_sets: Vec<BTreeSet<NodeId>> = snapshots
            .iter()
            .map(|s| s.nodes.iter().map(|n| n.node).collect())
            .collect();
        let joins = node_sets
            .windows(2)
            .filter(|w| w[1].difference(&w[0]).next().is_some())
            .count();
        let leaves = node_sets
            .windows(2)
            .filter(|w| w[0].difference(&w[1]).next().is_some())
            .count();
        assert!(joins >= 2 && leaves >= 1, "joins {joins}, leaves {leaves}");
        let hosts: BTreeSet<&str> = snapshots
            .iter()
            .flat_map(|s| s.jobs.iter().map(|j| client_host(&j.client)))
            .collect();
        assert_eq!(hosts.len(), 3, "{hosts:?}");
        let last = snapshots.last().unwrap();
        assert!(last.totals.succeeded > 200, "{:?}", last.totals);
        assert!(last.totals.failed > 0, "{:?}", last.totals);
        // Both phases show up.
        let phases: BTreeSet<String> = snapshots
            .iter()
            .flat_map(|s| s.jobs.iter().map(|j| format!("{:?}", j.phase)))
            .collect();
        assert_eq!(phases.len(), 2, "{phases:?}");
    }
}
