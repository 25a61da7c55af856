//! The farm as the scheduler sees it: which nodes are connected, what each
//! one is running, and where the next job goes.
//!
//! Everything here is plain data and arithmetic. [`Farm`] never reads the
//! clock, spawns a task or touches a socket: the caller passes the current
//! time into every method that needs it. That keeps placement deterministic,
//! so the tests below drive it with a fake clock and no network.
//!
//! # Placement
//!
//! [`Farm::allocate`] considers only nodes with a free slot (fewer running
//! assignments than slots), so a node is never given more jobs than it
//! offered. Among those it picks the first in this order:
//!
//! 1. the lowest load, `running / slots`, so a node with 8 slots and 2 jobs
//!    (25 %) wins over one with 2 slots and 1 job (50 %);
//! 2. a node that already holds the job's toolchain unpacked, because any
//!    other node first has to fetch and unpack a bundle of 100+ MiB;
//! 3. fewer running jobs in absolute terms;
//! 4. the node that was assigned a job least recently, so a burst of short
//!    jobs cycles through equal nodes instead of piling onto the first one;
//! 5. the lowest node id, so that the choice is fully deterministic.
//!
//! "Running" counts every assignment that has not finished, including those
//! whose client has not reached the node yet: that is what keeps a burst of
//! allocations from over-committing a node before the node reports anything.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use distcc_rs_proto::message::{
    AllocateRequest, AllocateResponse, Assignment, FarmStatus, FarmTotals, JobOutcome, JobPhase,
    JobStatus, NodeRegistration, NodeStatus, RegisterRefusal, RunLocallyReason, ToolchainStatus,
};
use distcc_rs_proto::{JobId, NodeId, Ticket, ToolchainId};

/// How long an assignment may wait for its client to reach the node. A client
/// that crashed, or gave up and compiled locally, never shows up; without a
/// deadline its slot would stay taken forever.
pub const ASSIGNMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Tunables of the placement core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FarmConfig {
    /// See [`ASSIGNMENT_TIMEOUT`].
    pub assignment_timeout: Duration,
    /// Job ids start after this number. The server picks it at random, so
    /// a restarted scheduler does not reuse the ids of jobs that may still
    /// be running on nodes (whose reports would then free the wrong slot).
    pub first_job: u64,
}

impl Default for FarmConfig {
    fn default() -> Self {
        FarmConfig {
            assignment_timeout: ASSIGNMENT_TIMEOUT,
            first_job: 0,
        }
    }
}

/// What [`Farm::remove_node`] reports about a node that left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departure {
    pub name: String,
    /// How long the node was part of the farm.
    pub connected_for: Duration,
    /// Jobs that were assigned to the node and are now lost. Their clients
    /// notice on their own (the node connection fails) and compile elsewhere.
    pub abandoned: Vec<JobId>,
}

/// The scheduler's state: nodes, jobs in flight, stored toolchains, counters.
#[derive(Debug)]
pub struct Farm {
    config: FarmConfig,
    nodes: BTreeMap<NodeId, Node>,
    jobs: BTreeMap<JobId, InFlight>,
    /// Toolchains in the scheduler's store, with their compressed size. The
    /// store itself lives at the IO edge; the server mirrors it here so that
    /// `allocate` can answer `NeedToolchain` without touching the disk.
    toolchains: BTreeMap<ToolchainId, u64>,
    /// The last job id handed out; ids start at 1.
    last_job: u64,
    /// Counts assignments, to order nodes by "least recently assigned"
    /// without comparing clock readings (several allocations may share one
    /// `now`).
    assignments_made: u64,
    totals: FarmTotals,
}

#[derive(Debug)]
struct Node {
    name: String,
    addr: SocketAddr,
    slots: u32,
    /// Jobs assigned to this node and not yet finished. Its length is the
    /// node's "running" count.
    jobs: BTreeSet<JobId>,
    toolchains: BTreeSet<ToolchainId>,
    jobs_done: u64,
    jobs_failed: u64,
    connected_since: Instant,
    ticket_key: [u8; 32],
    /// The value of `Farm::assignments_made` when this node was last given a
    /// job; 0 if never.
    last_assigned: u64,
}

impl Node {
    fn running(&self) -> u32 {
        // A node never holds more jobs than slots (a u32), so this cannot
        // truncate.
        self.jobs.len() as u32
    }

    fn has_free_slot(&self) -> bool {
        self.running() < self.slots
    }
}

#[derive(Debug)]
struct InFlight {
    node: NodeId,
    crate_name: String,
    client: String,
    phase: JobPhase,
    assigned_at: Instant,
}

impl Default for Farm {
    fn default() -> Self {
        Farm::new(FarmConfig::default())
    }
}

impl Farm {
    pub fn new(config: FarmConfig) -> Self {
        Farm {
            nodes: BTreeMap::new(),
            jobs: BTreeMap::new(),
            toolchains: BTreeMap::new(),
            last_job: config.first_job,
            assignments_made: 0,
            totals: FarmTotals::default(),
            config,
        }
    }

    /// Adds a node. Clients will reach it at `registration.advertise`, or
    /// else at the address its registration came from with its job port.
    /// `ticket_key` signs this node's tickets; the caller hands it to the
    /// node. Returns the address clients will use.
    pub fn register_node(
        &mut self,
        now: Instant,
        registration: &NodeRegistration,
        peer: SocketAddr,
        ticket_key: [u8; 32],
    ) -> Result<SocketAddr, RegisterRefusal> {
        if registration.slots == 0 {
            return Err(RegisterRefusal::NoSlots);
        }
        // A node that restarts quickly may register again before its old
        // connection has timed out. Refusing it (it retries) is safer than
        // replacing the old entry: the old connection's teardown would
        // otherwise remove the new registration.
        if self.nodes.contains_key(&registration.node) {
            return Err(RegisterRefusal::DuplicateNode(registration.node));
        }
        let addr = registration
            .advertise
            .unwrap_or_else(|| SocketAddr::new(peer.ip(), registration.job_port));
        self.nodes.insert(
            registration.node,
            Node {
                name: registration.name.clone(),
                addr,
                slots: registration.slots,
                jobs: BTreeSet::new(),
                toolchains: registration.toolchains.iter().copied().collect(),
                jobs_done: 0,
                jobs_failed: 0,
                connected_since: now,
                ticket_key,
                last_assigned: 0,
            },
        );
        Ok(addr)
    }

    /// Removes a node that left. Its jobs in flight are abandoned. Returns
    /// `None` if no such node is registered.
    pub fn remove_node(&mut self, now: Instant, node: NodeId) -> Option<Departure> {
        let removed = self.nodes.remove(&node)?;
        for job in &removed.jobs {
            self.jobs.remove(job);
        }
        self.totals.abandoned += removed.jobs.len() as u64;
        Some(Departure {
            name: removed.name,
            connected_for: now.saturating_duration_since(removed.connected_since),
            abandoned: removed.jobs.into_iter().collect(),
        })
    }

    /// Records that the scheduler's store now holds a toolchain.
    pub fn toolchain_stored(&mut self, id: ToolchainId, compressed_size: u64) {
        self.toolchains.insert(id, compressed_size);
    }

    /// Whether the scheduler's store holds a toolchain.
    pub fn has_toolchain(&self, id: ToolchainId) -> bool {
        self.toolchains.contains_key(&id)
    }

    /// Decides where a job runs. See the module documentation for the order
    /// in which nodes are preferred.
    pub fn allocate(&mut self, now: Instant, request: &AllocateRequest) -> AllocateResponse {
        // No point asking for a 150 MiB upload when no node could use it.
        if self.nodes.is_empty() {
            self.totals.run_locally += 1;
            return AllocateResponse::RunLocally(RunLocallyReason::NoNodes);
        }
        if !self.has_toolchain(request.toolchain) {
            return AllocateResponse::NeedToolchain;
        }
        let chosen = self
            .nodes
            .iter()
            .filter(|(_, node)| node.has_free_slot())
            .min_by(|(_, a), (_, b)| placement_order(a, b, request.toolchain))
            .map(|(id, _)| *id);
        match chosen {
            Some(node) => AllocateResponse::Assigned(self.assign(now, node, request)),
            None => {
                self.totals.run_locally += 1;
                AllocateResponse::RunLocally(RunLocallyReason::NoFreeSlot)
            }
        }
    }

    /// Records an assignment of a job to `node`, which must exist and have a
    /// free slot.
    fn assign(&mut self, now: Instant, node_id: NodeId, request: &AllocateRequest) -> Assignment {
        self.last_job = self.last_job.wrapping_add(1);
        self.assignments_made += 1;
        let job = JobId(self.last_job);
        let node = self
            .nodes
            .get_mut(&node_id)
            .expect("assign is only called with a registered node");
        debug_assert!(node.has_free_slot());
        node.jobs.insert(job);
        node.last_assigned = self.assignments_made;
        let mac = sign(&node.ticket_key, job, node_id, request.toolchain);
        self.jobs.insert(
            job,
            InFlight {
                node: node_id,
                crate_name: request.crate_name.clone(),
                client: request.client.clone(),
                phase: JobPhase::Assigned,
                assigned_at: now,
            },
        );
        self.totals.assigned += 1;
        Assignment {
            job,
            node: node_id,
            node_name: node.name.clone(),
            addr: node.addr,
            ticket: Ticket {
                job,
                node: node_id,
                toolchain: request.toolchain,
                mac,
            },
        }
    }

    /// The node accepted the job's ticket. Returns false (and changes
    /// nothing) if the job is not in flight on that node, e.g. because it
    /// expired before the client arrived.
    pub fn job_started(&mut self, node: NodeId, job: JobId) -> bool {
        match self.jobs.get_mut(&job) {
            Some(flight) if flight.node == node => {
                flight.phase = JobPhase::Running;
                true
            }
            _ => false,
        }
    }

    /// The job ended and its slot is free. Returns false (and changes
    /// nothing) if the job is not in flight on that node.
    pub fn job_finished(&mut self, node: NodeId, job: JobId, outcome: &JobOutcome) -> bool {
        match self.jobs.get(&job) {
            Some(flight) if flight.node == node => self.jobs.remove(&job),
            _ => return false,
        };
        let Some(n) = self.nodes.get_mut(&node) else {
            // Unreachable while jobs and nodes are kept in step, and harmless
            // if not: the job is gone either way.
            return true;
        };
        n.jobs.remove(&job);
        match outcome {
            JobOutcome::Compiled { exit_code: 0 } => {
                n.jobs_done += 1;
                self.totals.succeeded += 1;
            }
            JobOutcome::Compiled { .. } => {
                n.jobs_done += 1;
                self.totals.compile_errors += 1;
            }
            JobOutcome::Failed(_) => {
                n.jobs_failed += 1;
                self.totals.failed += 1;
            }
        }
        true
    }

    /// The node now holds a toolchain unpacked. Returns false if the node is
    /// unknown.
    pub fn toolchain_ready(&mut self, node: NodeId, id: ToolchainId) -> bool {
        match self.nodes.get_mut(&node) {
            Some(n) => {
                n.toolchains.insert(id);
                true
            }
            None => false,
        }
    }

    /// Abandons assignments whose client has not reached the node within the
    /// assignment timeout, freeing their slots. Jobs a node has started are
    /// never expired: they end when the node reports them or leaves.
    /// Returns the abandoned jobs.
    /// Takes back an assignment whose client will not use it. Only a job
    /// still waiting for its client can be released: once the node has
    /// started it, the node's report frees the slot. Returns whether the job
    /// was released.
    pub fn release(&mut self, job: JobId) -> bool {
        if self
            .jobs
            .get(&job)
            .is_none_or(|f| f.phase != JobPhase::Assigned)
        {
            return false;
        }
        if let Some(flight) = self.jobs.remove(&job)
            && let Some(node) = self.nodes.get_mut(&flight.node)
        {
            node.jobs.remove(&job);
        }
        self.totals.abandoned += 1;
        true
    }

    pub fn expire(&mut self, now: Instant) -> Vec<JobId> {
        let timeout = self.config.assignment_timeout;
        let stale: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, f)| {
                f.phase == JobPhase::Assigned
                    && now.saturating_duration_since(f.assigned_at) >= timeout
            })
            .map(|(job, _)| *job)
            .collect();
        for job in &stale {
            if let Some(flight) = self.jobs.remove(job)
                && let Some(node) = self.nodes.get_mut(&flight.node)
            {
                node.jobs.remove(job);
            }
        }
        self.totals.abandoned += stale.len() as u64;
        stale
    }

    /// A snapshot of everything, sorted by id.
    pub fn status(&self, now: Instant) -> FarmStatus {
        let ms = |since: Instant| now.saturating_duration_since(since).as_millis() as u64;
        FarmStatus {
            nodes: self
                .nodes
                .iter()
                .map(|(id, n)| NodeStatus {
                    node: *id,
                    name: n.name.clone(),
                    addr: n.addr,
                    slots: n.slots,
                    running: n.running(),
                    jobs_done: n.jobs_done,
                    jobs_failed: n.jobs_failed,
                    toolchains: n.toolchains.iter().copied().collect(),
                    connected_ms: ms(n.connected_since),
                    load: None,
                    speed: 1.0,
                })
                .collect(),
            jobs: self
                .jobs
                .iter()
                .map(|(job, f)| JobStatus {
                    job: *job,
                    node: f.node,
                    crate_name: f.crate_name.clone(),
                    client: f.client.clone(),
                    phase: f.phase,
                    elapsed_ms: ms(f.assigned_at),
                })
                .collect(),
            toolchains: self
                .toolchains
                .iter()
                .map(|(id, size)| ToolchainStatus {
                    id: *id,
                    compressed_size: *size,
                })
                .collect(),
            totals: self.totals,
            waiting: 0,
            farm: String::from("default"),
        }
    }
}

/// Orders two candidate nodes for a job needing `toolchain`; the smaller one
/// is preferred. See the module documentation.
fn placement_order(a: &Node, b: &Node, toolchain: ToolchainId) -> std::cmp::Ordering {
    // running/slots compared without division: a.r/a.s < b.r/b.s exactly
    // when a.r*b.s < b.r*a.s (slots are never 0).
    let load_a = u64::from(a.running()) * u64::from(b.slots);
    let load_b = u64::from(b.running()) * u64::from(a.slots);
    let holds = |n: &Node| n.toolchains.contains(&toolchain);
    load_a
        .cmp(&load_b)
        .then_with(|| holds(b).cmp(&holds(a)))
        .then_with(|| a.running().cmp(&b.running()))
        .then_with(|| a.last_assigned.cmp(&b.last_assigned))
}

/// The MAC a node checks a ticket against: a BLAKE3 keyed hash of the
/// ticket's fields under the node's own key.
fn sign(key: &[u8; 32], job: JobId, node: NodeId, toolchain: ToolchainId) -> [u8; 32] {
    *blake3::keyed_hash(key, &Ticket::signed_bytes(job, node, toolchain)).as_bytes()
}

#[cfg(test)]
mod tests;
