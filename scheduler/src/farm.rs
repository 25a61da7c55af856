//! The farm as the scheduler sees it: which nodes are connected, what each
//! one is running, how fast and how loaded each one is, who waits for a
//! slot, and where the next job goes.
//!
//! Everything here is plain data and arithmetic. [`Farm`] never reads the
//! clock, spawns a task or touches a socket: the caller passes the current
//! time into every method that needs it. That keeps placement deterministic,
//! so the tests below drive it with a fake clock and no network.
//!
//! # Placement
//!
//! [`Farm::allocate`] describes every node to [`placement::choose`] and
//! applies its choice; `placement.rs` holds the scoring formula and
//! `docs/PLACEMENT.md` explains it. The farm owns the inputs:
//!
//! * "running" counts every assignment that has not finished, including
//!   those whose client has not reached the node yet. That count, not the
//!   node's reports, is what keeps a burst of allocations from
//!   over-committing a node, since reports lag behind assignments.
//! * The latest load report of each node ([`Farm::node_load`]), ignored once
//!   it is older than [`FarmConfig::load_max_age`].
//! * A learned speed per node (see [Speed](#speed)).
//!
//! # Queueing and fairness
//!
//! When nodes could take a job but every one of their slots is busy, the
//! request waits ([`Decision::Queued`]) for at most
//! [`FarmConfig::queue_timeout`]. Whenever a slot may have freed, the caller
//! runs [`Farm::dispatch`], which answers waiters: first those whose time is
//! up (compile locally), then, while slots are free, a grant to the first
//! waiter of the build with the fewest jobs in flight, ties going to the
//! build whose first waiter arrived earliest. Giving each freed slot to the
//! build that holds the fewest is max-min fairness between builds: two builds
//! that both want more than half of the farm end up with half each,
//! whichever started first. While anyone waits, new requests queue behind
//! them instead of taking a slot that a dispatch has not yet handed out.
//!
//! # Speed
//!
//! Each successful compile on a node that already held its toolchain is a
//! speed sample: the crate's reference time (an average of its compile times
//! across the farm) divided by this compile's time. A node's speed is an
//! average of its samples, so 1.0 means "as fast as the farm usually is for
//! the same crates" and 2.0 twice as fast. A node starts at 1.0, so a node
//! never used before competes as an average one and gets tried.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use distcc_rs_proto::message::{
    AllocateRequest, AllocateResponse, Assignment, FarmStatus, FarmTotals, FinishedJob, JobOutcome,
    JobPhase, JobStatus, NodeLoad, NodeRegistration, NodeStatus, RegisterRefusal, RunLocallyReason,
    ToolchainStatus,
};
use distcc_rs_proto::{CertFingerprint, JobId, NodeId, Ticket, ToolchainId};

use crate::placement::{self, Candidate, Choice, Policy, Standing};

/// How long an assignment may wait for its client to reach the node. A client
/// that crashed, or gave up and compiled locally, never shows up; without a
/// deadline its slot would stay taken forever.
pub const ASSIGNMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an allocation request may wait for a free slot before its client
/// is told to compile locally. Short: the client's own machine is idle while
/// it waits, and most rustc jobs take a few seconds, so a long wait would
/// cost more than the farm could save.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(2);

/// How old a load report may be and still count. Nodes report every second;
/// a node whose reports stopped is judged by its slots alone rather than by
/// a picture of its machine that may no longer be true.
pub const LOAD_MAX_AGE: Duration = Duration::from_secs(10);

/// The weight of a new sample in a node's speed. Small enough that one odd
/// compile (a cold page cache, a neighbour's burst) moves the speed little;
/// large enough that a node's speed settles within a few dozen jobs.
const SPEED_WEIGHT: f64 = 0.2;

/// The weight of a new compile time in a crate's reference time.
const REFERENCE_WEIGHT: f64 = 0.2;

/// Speed samples are clamped to this range, so that a compile that waited
/// for inputs over a slow link, or a crate whose reference came from a very
/// different build profile, cannot swing a node's speed by more than this.
const SAMPLE_RANGE: (f64, f64) = (0.25, 4.0);

/// How many crates' reference times are kept; the least recently used one
/// is forgotten when a new crate comes. A large workspace with its
/// dependencies has a few hundred crates.
pub const MAX_REFERENCES: usize = 4096;

/// Tunables of the placement core.
#[derive(Debug, Clone, PartialEq)]
pub struct FarmConfig {
    /// See [`ASSIGNMENT_TIMEOUT`].
    pub assignment_timeout: Duration,
    /// Job ids start after this number. The server picks it at random, so
    /// a restarted scheduler does not reuse the ids of jobs that may still
    /// be running on nodes (whose reports would then free the wrong slot).
    pub first_job: u64,
    /// See [`QUEUE_TIMEOUT`]. Zero turns queueing off: a request that finds
    /// every slot busy is told to compile locally at once.
    pub queue_timeout: Duration,
    /// The farm's name (`--netname`), as the status reports it. (The
    /// server refuses nodes of other farms before they reach the farm.)
    pub farm_name: String,
    /// See [`LOAD_MAX_AGE`].
    pub load_max_age: Duration,
    /// The scoring formula's tunables.
    pub placement: Policy,
}

impl Default for FarmConfig {
    fn default() -> Self {
        FarmConfig {
            assignment_timeout: ASSIGNMENT_TIMEOUT,
            first_job: 0,
            queue_timeout: QUEUE_TIMEOUT,
            farm_name: String::from("default"),
            load_max_age: LOAD_MAX_AGE,
            placement: Policy::default(),
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

/// A queued allocation request. Ids grow in arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WaiterId(pub u64);

impl fmt::Display for WaiterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}", self.0)
    }
}

/// What [`Farm::allocate`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Answer the client with this now.
    Answer(AllocateResponse),
    /// The request waits for a slot. A later [`Farm::dispatch`] answers it,
    /// at the latest the first one at or after `deadline`; until then the
    /// caller may [`Farm::cancel`] it (the client went away) or
    /// [`Farm::time_out`] it (its own timer fired).
    Queued { waiter: WaiterId, deadline: Instant },
}

/// An answer for a waiting request, from [`Farm::dispatch`].
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub waiter: WaiterId,
    pub response: AllocateResponse,
}

/// The scheduler's state: nodes, jobs in flight, waiting requests, stored
/// toolchains, learned speeds, counters.
#[derive(Debug)]
pub struct Farm {
    config: FarmConfig,
    nodes: BTreeMap<NodeId, Node>,
    jobs: BTreeMap<JobId, InFlight>,
    /// Toolchains in the scheduler's store, with their compressed size. The
    /// store itself lives at the IO edge; the server mirrors it here so that
    /// `allocate` can answer `NeedToolchain` without touching the disk.
    toolchains: BTreeMap<ToolchainId, u64>,
    /// When a job of each toolchain was last placed, for idle nodes that
    /// fetch the toolchains in use before a job needs them.
    toolchain_used: BTreeMap<ToolchainId, Instant>,
    /// The last [`RECENT_JOBS`] jobs that ended, oldest first.
    recent: VecDeque<Ended>,
    /// The last job id handed out; ids start at 1.
    last_job: u64,
    /// Counts assignments, to order nodes by "least recently assigned"
    /// without comparing clock readings (several allocations may share one
    /// `now`).
    assignments_made: u64,
    totals: FarmTotals,
    /// Requests waiting for a slot, in arrival order.
    waiters: BTreeMap<WaiterId, Waiter>,
    /// The same waiters, per build, in arrival order.
    queues: BTreeMap<String, VecDeque<WaiterId>>,
    /// The same waiters by deadline, so that expiry looks only at those
    /// whose time is up.
    deadlines: BTreeSet<(Instant, WaiterId)>,
    /// Jobs in flight per build; builds with none are not listed.
    builds: BTreeMap<String, u32>,
    last_waiter: u64,
    /// Set when a node left or ran short of memory or disk, which may leave
    /// some waiters with no node that could ever take them; the next
    /// dispatch answers those at once rather than at their deadline.
    recheck_waiters: bool,
    /// Reference compile times per crate name.
    references: BTreeMap<String, Reference>,
    /// Counts uses of reference times, to find the least recently used.
    references_used: u64,
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
    /// Toolchains the node could not use (its copy failed verification or
    /// would not run there). No job of these is placed on it until it
    /// registers again, reports the toolchain ready, or a new copy of the
    /// toolchain is uploaded.
    rejected: BTreeSet<ToolchainId>,
    jobs_done: u64,
    jobs_failed: u64,
    connected_since: Instant,
    ticket_key: [u8; 32],
    /// The certificate the node registered with: clients check that the
    /// node they reach holds it.
    cert: CertFingerprint,
    /// The value of `Farm::assignments_made` when this node was last given a
    /// job; 0 if never.
    last_assigned: u64,
    /// Learned speed relative to the farm; 1.0 until known.
    speed: f64,
    /// The latest load report and when it arrived.
    load: Option<(NodeLoad, Instant)>,
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
    build: String,
    phase: JobPhase,
    assigned_at: Instant,
    /// Whether the node held the toolchain when the job was placed. Only
    /// such jobs teach speed: the others include fetching and unpacking a
    /// bundle, which says nothing about how fast the node compiles.
    warm: bool,
    /// The job's toolchain: the store never evicts a bundle that a job in
    /// flight may still make its node fetch.
    toolchain: ToolchainId,
    /// The certificate of the client the job was assigned to: only it may
    /// give the assignment back.
    client_cert: CertFingerprint,
}

/// How many ended jobs `status` reports: enough for a monitor polling
/// twice a second to see every job of a busy farm.
pub const RECENT_JOBS: usize = 200;

/// What a node reports when a job ends.
#[derive(Debug, Clone, PartialEq)]
pub struct JobReport {
    pub outcome: JobOutcome,
    pub wall_ms: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// A job in the history of recent jobs.
#[derive(Debug)]
struct Ended {
    job: JobId,
    node: NodeId,
    crate_name: String,
    client: String,
    build: String,
    outcome: JobOutcome,
    total_ms: u64,
    ended_at: Instant,
    wall_ms: u64,
    bytes_in: u64,
    bytes_out: u64,
}

#[derive(Debug)]
struct Waiter {
    request: AllocateRequest,
    /// The certificate the request came with; the ticket is bound to it.
    client_cert: CertFingerprint,
    exclude: Exclusions,
    deadline: Instant,
}

/// A crate's reference compile time.
#[derive(Debug)]
struct Reference {
    wall_ms: f64,
    /// The value of `Farm::references_used` at its last use.
    used: u64,
}

/// The nodes a request excludes, sorted for lookups by binary search, so
/// that a request naming many nodes cannot make every placement slow.
#[derive(Debug, Clone, Default)]
struct Exclusions(Vec<NodeId>);

impl Exclusions {
    fn new(nodes: &[NodeId]) -> Self {
        let mut nodes = nodes.to_vec();
        nodes.sort_unstable();
        nodes.dedup();
        Exclusions(nodes)
    }

    fn contains(&self, node: NodeId) -> bool {
        self.0.binary_search(&node).is_ok()
    }
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
            toolchain_used: BTreeMap::new(),
            recent: VecDeque::new(),
            last_job: config.first_job,
            assignments_made: 0,
            totals: FarmTotals::default(),
            waiters: BTreeMap::new(),
            queues: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            builds: BTreeMap::new(),
            last_waiter: 0,
            recheck_waiters: false,
            references: BTreeMap::new(),
            references_used: 0,
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
        cert: CertFingerprint,
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
                rejected: BTreeSet::new(),
                jobs_done: 0,
                jobs_failed: 0,
                connected_since: now,
                ticket_key,
                cert,
                last_assigned: 0,
                speed: 1.0,
                load: None,
            },
        );
        Ok(addr)
    }

    /// Removes a node that left. Its jobs in flight are abandoned, and no
    /// job is placed on it any more. Returns `None` if no such node is
    /// registered.
    pub fn remove_node(&mut self, now: Instant, node: NodeId) -> Option<Departure> {
        let removed = self.nodes.remove(&node)?;
        for job in &removed.jobs {
            if let Some(flight) = self.jobs.remove(job) {
                self.build_job_ended(&flight.build);
            }
        }
        self.totals.abandoned += removed.jobs.len() as u64;
        self.recheck_waiters = true;
        Some(Departure {
            name: removed.name,
            connected_for: now.saturating_duration_since(removed.connected_since),
            abandoned: removed.jobs.into_iter().collect(),
        })
    }

    /// Records a node's load report. Returns false if the node is unknown.
    pub fn node_load(&mut self, node: NodeId, load: NodeLoad, now: Instant) -> bool {
        let policy = &self.config.placement;
        let Some(n) = self.nodes.get_mut(&node) else {
            return false;
        };
        let was_healthy = placement::healthy(policy, n.load.as_ref().map(|(l, _)| l));
        n.load = Some((load, now));
        if was_healthy && !placement::healthy(policy, Some(&load)) {
            self.recheck_waiters = true;
        }
        true
    }

    /// Records that the scheduler's store now holds a toolchain. A copy
    /// that is new (the toolchain was not stored, e.g. because a corrupt
    /// copy was deleted) clears the nodes' rejections of the toolchain:
    /// they may have rejected the old copy.
    pub fn toolchain_stored(&mut self, id: ToolchainId, compressed_size: u64) {
        if self.toolchains.insert(id, compressed_size).is_none() {
            for n in self.nodes.values_mut() {
                n.rejected.remove(&id);
            }
        }
    }

    /// Records that the scheduler's store no longer holds a toolchain (its
    /// copy was found corrupt and deleted): the next client that needs it is
    /// asked to upload it.
    pub fn toolchain_forgotten(&mut self, id: ToolchainId) {
        self.toolchains.remove(&id);
    }

    /// Whether the scheduler's store holds a toolchain.
    pub fn has_toolchain(&self, id: ToolchainId) -> bool {
        self.toolchains.contains_key(&id)
    }

    /// How many jobs of each toolchain are in flight (placed and not yet
    /// finished, released or expired); toolchains without any are left out.
    pub fn jobs_per_toolchain(&self) -> BTreeMap<ToolchainId, u32> {
        let mut counts = BTreeMap::new();
        for flight in self.jobs.values() {
            *counts.entry(flight.toolchain).or_insert(0) += 1;
        }
        counts
    }

    /// How many requests wait for a slot.
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// Whether a request is still waiting for a slot.
    pub fn is_waiting(&self, waiter: WaiterId) -> bool {
        self.waiters.contains_key(&waiter)
    }

    /// Decides where a job runs, or that it waits for a slot. See the module
    /// documentation. `client_cert` is the fingerprint of the certificate
    /// the request arrived with: the job's ticket is valid only for it.
    pub fn allocate(
        &mut self,
        now: Instant,
        request: &AllocateRequest,
        client_cert: CertFingerprint,
    ) -> Decision {
        // No point asking for a 150 MiB upload when no node could use it.
        if self.nodes.is_empty() {
            self.totals.run_locally += 1;
            return Decision::Answer(AllocateResponse::RunLocally(RunLocallyReason::NoNodes));
        }
        if !self.has_toolchain(request.toolchain) {
            return Decision::Answer(AllocateResponse::NeedToolchain);
        }
        let exclude = Exclusions::new(&request.exclude);
        let choice = placement::choose(
            &self.config.placement,
            self.nodes
                .iter()
                .map(|(id, n)| self.candidate(*id, n, request.toolchain, &exclude, now)),
        );
        match choice {
            Choice::NoneEligible => {
                self.totals.run_locally += 1;
                Decision::Answer(AllocateResponse::RunLocally(
                    RunLocallyReason::NoEligibleNode,
                ))
            }
            // Nobody waits, so nobody has a better claim to the slot.
            Choice::Place(node) if self.waiters.is_empty() => Decision::Answer(
                AllocateResponse::Assigned(self.assign(now, node, request, client_cert)),
            ),
            Choice::Place(_) | Choice::AllBusy => {
                if self.config.queue_timeout.is_zero() {
                    self.totals.run_locally += 1;
                    return Decision::Answer(AllocateResponse::RunLocally(
                        RunLocallyReason::NoFreeSlot,
                    ));
                }
                self.last_waiter += 1;
                let waiter = WaiterId(self.last_waiter);
                let deadline = now + self.config.queue_timeout;
                self.queues
                    .entry(request.build.clone())
                    .or_default()
                    .push_back(waiter);
                self.deadlines.insert((deadline, waiter));
                self.waiters.insert(
                    waiter,
                    Waiter {
                        request: request.clone(),
                        client_cert,
                        exclude,
                        deadline,
                    },
                );
                self.totals.queued += 1;
                Decision::Queued { waiter, deadline }
            }
        }
    }

    /// Answers the waiting requests that can be answered now: those whose
    /// deadline has passed (compile locally), those no node can take any
    /// more (all nodes gone, excluded, or short of memory or disk), and, in
    /// fair order, as many as there are free slots. Call it whenever a slot
    /// may have freed or time has passed; it changes nothing when nobody
    /// waits.
    pub fn dispatch(&mut self, now: Instant) -> Vec<Reply> {
        let mut replies = Vec::new();
        if self.waiters.is_empty() {
            self.recheck_waiters = false;
            return replies;
        }

        while let Some(&(deadline, waiter)) = self.deadlines.first()
            && deadline <= now
        {
            self.unqueue(waiter);
            self.totals.run_locally += 1;
            replies.push(Reply {
                waiter,
                response: AllocateResponse::RunLocally(RunLocallyReason::NoFreeSlot),
            });
        }

        if std::mem::take(&mut self.recheck_waiters) {
            self.answer_hopeless(now, &mut replies);
        }

        // Nodes with a free slot that are not short of memory or disk; only
        // these can take a waiter, whatever its exclusions.
        let mut open: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| {
                n.has_free_slot()
                    && placement::healthy(&self.config.placement, self.fresh_load(n, now))
            })
            .map(|(id, _)| *id)
            .collect();
        while !open.is_empty() && !self.waiters.is_empty() {
            let Some((waiter, node)) = self.next_grant(now, &open) else {
                break;
            };
            let Some(w) = self.unqueue(waiter) else {
                break;
            };
            let assignment = self.assign(now, node, &w.request, w.client_cert);
            if !self.nodes[&node].has_free_slot() {
                open.retain(|n| *n != node);
            }
            replies.push(Reply {
                waiter,
                response: AllocateResponse::Assigned(assignment),
            });
        }
        replies
    }

    /// The fairest waiter that one of the `open` nodes can take, and the
    /// node. Builds are visited by jobs in flight (fewest first), then by the
    /// arrival of their first waiter; within a build, waiters by arrival.
    fn next_grant(&self, now: Instant, open: &[NodeId]) -> Option<(WaiterId, NodeId)> {
        let mut order: Vec<(u32, WaiterId, &VecDeque<WaiterId>)> = self
            .queues
            .iter()
            .filter_map(|(build, queue)| {
                let first = *queue.front()?;
                Some((self.builds.get(build).copied().unwrap_or(0), first, queue))
            })
            .collect();
        order.sort_unstable_by_key(|(in_flight, first, _)| (*in_flight, *first));
        for (_, _, queue) in order {
            for waiter in queue {
                let w = &self.waiters[waiter];
                let candidates = open.iter().filter_map(|id| {
                    let n = self.nodes.get(id)?;
                    Some(self.candidate(*id, n, w.request.toolchain, &w.exclude, now))
                });
                if let Choice::Place(node) = placement::choose(&self.config.placement, candidates) {
                    return Some((*waiter, node));
                }
            }
        }
        None
    }

    /// Answers the waiters no node can take: every node gone, or every node
    /// excluded or short of memory or disk.
    fn answer_hopeless(&mut self, now: Instant, replies: &mut Vec<Reply>) {
        let hopeless: Vec<(WaiterId, RunLocallyReason)> = self
            .waiters
            .iter()
            .filter_map(|(id, w)| {
                if self.nodes.is_empty() {
                    return Some((*id, RunLocallyReason::NoNodes));
                }
                let takes = |(node, n): (&NodeId, &Node)| {
                    let c = self.candidate(*node, n, w.request.toolchain, &w.exclude, now);
                    placement::assess(&self.config.placement, &c) != Standing::Ineligible
                };
                (!self.nodes.iter().any(takes)).then_some((*id, RunLocallyReason::NoEligibleNode))
            })
            .collect();
        for (waiter, reason) in hopeless {
            self.unqueue(waiter);
            self.totals.run_locally += 1;
            replies.push(Reply {
                waiter,
                response: AllocateResponse::RunLocally(reason),
            });
        }
    }

    /// Withdraws a waiting request whose client went away. Returns false if
    /// it no longer waits (it was answered, or never existed).
    pub fn cancel(&mut self, waiter: WaiterId) -> bool {
        self.unqueue(waiter).is_some()
    }

    /// Answers a waiting request whose deadline has passed by the caller's
    /// own timer, as [`Farm::dispatch`] would. Returns `None` if it no longer
    /// waits, in which case it has been answered already.
    pub fn time_out(&mut self, waiter: WaiterId) -> Option<AllocateResponse> {
        self.unqueue(waiter)?;
        self.totals.run_locally += 1;
        Some(AllocateResponse::RunLocally(RunLocallyReason::NoFreeSlot))
    }

    fn unqueue(&mut self, waiter: WaiterId) -> Option<Waiter> {
        let w = self.waiters.remove(&waiter)?;
        self.deadlines.remove(&(w.deadline, waiter));
        if let Some(queue) = self.queues.get_mut(&w.request.build) {
            queue.retain(|id| *id != waiter);
            if queue.is_empty() {
                self.queues.remove(&w.request.build);
            }
        }
        Some(w)
    }

    /// A node as placement sees it for one request.
    fn candidate(
        &self,
        id: NodeId,
        n: &Node,
        toolchain: ToolchainId,
        exclude: &Exclusions,
        now: Instant,
    ) -> Candidate {
        Candidate {
            node: id,
            slots: n.slots,
            running: n.running(),
            load: self.fresh_load(n, now).copied(),
            speed: n.speed,
            holds_toolchain: n.toolchains.contains(&toolchain),
            last_assigned: n.last_assigned,
            // A node that rejected the toolchain would refuse the job.
            excluded: exclude.contains(id) || n.rejected.contains(&toolchain),
        }
    }

    /// The node's latest load report, unless it is too old to trust.
    fn fresh_load<'n>(&self, n: &'n Node, now: Instant) -> Option<&'n NodeLoad> {
        let (load, at) = n.load.as_ref()?;
        (now.saturating_duration_since(*at) <= self.config.load_max_age).then_some(load)
    }

    /// Records an assignment of a job to `node`, which must exist and have a
    /// free slot.
    fn assign(
        &mut self,
        now: Instant,
        node_id: NodeId,
        request: &AllocateRequest,
        client_cert: CertFingerprint,
    ) -> Assignment {
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
        let mac = sign(
            &node.ticket_key,
            job,
            node_id,
            request.toolchain,
            client_cert,
        );
        let warm = node.toolchains.contains(&request.toolchain);
        let assignment = Assignment {
            job,
            node: node_id,
            node_name: node.name.clone(),
            addr: node.addr,
            node_cert: node.cert,
            ticket: Ticket {
                job,
                node: node_id,
                toolchain: request.toolchain,
                client: client_cert,
                mac,
            },
        };
        self.jobs.insert(
            job,
            InFlight {
                node: node_id,
                crate_name: request.crate_name.clone(),
                client: request.client.clone(),
                client_cert,
                build: request.build.clone(),
                phase: JobPhase::Assigned,
                assigned_at: now,
                warm,
                toolchain: request.toolchain,
            },
        );
        *self.builds.entry(request.build.clone()).or_insert(0) += 1;
        self.toolchain_used.insert(request.toolchain, now);
        self.totals.assigned += 1;
        assignment
    }

    /// Removes a job from the job table, its node and its build's count.
    fn forget_job(&mut self, job: JobId) -> Option<InFlight> {
        let flight = self.jobs.remove(&job)?;
        if let Some(node) = self.nodes.get_mut(&flight.node) {
            node.jobs.remove(&job);
        }
        self.build_job_ended(&flight.build);
        Some(flight)
    }

    fn build_job_ended(&mut self, build: &str) {
        if let Some(count) = self.builds.get_mut(build) {
            *count -= 1;
            if *count == 0 {
                self.builds.remove(build);
            }
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

    /// A node's full report of a job's end: [`Farm::job_finished`], plus an
    /// entry in the history of recent jobs that `status` shows (crate,
    /// client, node, times, bytes), the monitor's job list.
    pub fn job_report(
        &mut self,
        now: Instant,
        node: NodeId,
        job: JobId,
        report: JobReport,
    ) -> bool {
        let Some(flight) = self.jobs.get(&job).filter(|f| f.node == node) else {
            return false;
        };
        let entry = Ended {
            job,
            node,
            crate_name: flight.crate_name.clone(),
            client: flight.client.clone(),
            build: flight.build.clone(),
            total_ms: now
                .saturating_duration_since(flight.assigned_at)
                .as_millis() as u64,
            ended_at: now,
            outcome: report.outcome.clone(),
            wall_ms: report.wall_ms,
            bytes_in: report.bytes_in,
            bytes_out: report.bytes_out,
        };
        if !self.job_finished(node, job, &report.outcome, report.wall_ms) {
            return false;
        }
        if self.recent.len() == RECENT_JOBS {
            self.recent.pop_front();
        }
        self.recent.push_back(entry);
        true
    }

    /// The job ended after `wall_ms` milliseconds on the node, and its slot
    /// is free. Returns false (and changes nothing) if the job is not in
    /// flight on that node.
    pub fn job_finished(
        &mut self,
        node: NodeId,
        job: JobId,
        outcome: &JobOutcome,
        wall_ms: u64,
    ) -> bool {
        if self.jobs.get(&job).is_none_or(|f| f.node != node) {
            return false;
        }
        let Some(flight) = self.forget_job(job) else {
            return false;
        };
        if *outcome == (JobOutcome::Compiled { exit_code: 0 }) && flight.warm {
            self.learn_speed(node, &flight.crate_name, wall_ms);
        }
        let Some(n) = self.nodes.get_mut(&node) else {
            // Unreachable while jobs and nodes are kept in step, and harmless
            // if not: the job is gone either way.
            return true;
        };
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

    /// Updates the node's speed with one successful compile, and the crate's
    /// reference time. The first compile of a crate only sets its reference:
    /// there is nothing to compare it with yet.
    fn learn_speed(&mut self, node: NodeId, crate_name: &str, wall_ms: u64) {
        if wall_ms == 0 {
            return;
        }
        let wall = wall_ms as f64;
        self.references_used += 1;
        let used = self.references_used;
        if let Some(reference) = self.references.get_mut(crate_name) {
            let sample = (reference.wall_ms / wall).clamp(SAMPLE_RANGE.0, SAMPLE_RANGE.1);
            if let Some(n) = self.nodes.get_mut(&node) {
                n.speed += SPEED_WEIGHT * (sample - n.speed);
            }
            reference.wall_ms += REFERENCE_WEIGHT * (wall - reference.wall_ms);
            reference.used = used;
            return;
        }
        if self.references.len() >= MAX_REFERENCES {
            let oldest = self
                .references
                .iter()
                .min_by_key(|(_, r)| r.used)
                .map(|(name, _)| name.clone());
            if let Some(oldest) = oldest {
                self.references.remove(&oldest);
            }
        }
        self.references.insert(
            crate_name.to_owned(),
            Reference {
                wall_ms: wall,
                used,
            },
        );
    }

    /// The node now holds a toolchain unpacked. Returns false if the node is
    /// unknown.
    pub fn toolchain_ready(&mut self, node: NodeId, id: ToolchainId) -> bool {
        match self.nodes.get_mut(&node) {
            Some(n) => {
                n.toolchains.insert(id);
                n.rejected.remove(&id);
                true
            }
            None => false,
        }
    }

    /// The node removed a toolchain from its cache. Returns false if the node
    /// is unknown.
    pub fn toolchain_evicted(&mut self, node: NodeId, id: ToolchainId) -> bool {
        match self.nodes.get_mut(&node) {
            Some(n) => {
                n.toolchains.remove(&id);
                true
            }
            None => false,
        }
    }

    /// The node cannot use a toolchain: no job of it is placed there any
    /// more (see `Node::rejected`). Returns the node's name, or `None` if the
    /// node is unknown.
    pub fn toolchain_rejected(&mut self, node: NodeId, id: ToolchainId) -> Option<String> {
        let n = self.nodes.get_mut(&node)?;
        n.toolchains.remove(&id);
        n.rejected.insert(id);
        // Waiters of that toolchain may have had this node as their only
        // hope.
        self.recheck_waiters = true;
        Some(n.name.clone())
    }

    /// Takes back an assignment whose client will not use it. Only a job
    /// still waiting for its client can be released: once the node has
    /// started it, the node's report frees the slot. Returns whether the job
    /// was released.
    /// Like [`Farm::release`], on behalf of the client with certificate
    /// `by`: another client cannot free a slot it was not given.
    pub fn release_by(&mut self, job: JobId, by: CertFingerprint) -> bool {
        if self.jobs.get(&job).is_none_or(|f| f.client_cert != by) {
            return false;
        }
        self.release(job)
    }

    pub fn release(&mut self, job: JobId) -> bool {
        if self
            .jobs
            .get(&job)
            .is_none_or(|f| f.phase != JobPhase::Assigned)
        {
            return false;
        }
        self.forget_job(job);
        self.totals.abandoned += 1;
        true
    }

    /// Abandons assignments whose client has not reached the node within the
    /// assignment timeout, freeing their slots. Jobs a node has started are
    /// never expired: they end when the node reports them or leaves.
    /// Returns the abandoned jobs.
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
            self.forget_job(*job);
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
                    load: n.load.map(|(load, _)| load),
                    speed: n.speed,
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
                    build: f.build.clone(),
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
                    last_used_ms: self.toolchain_used.get(id).map(|at| ms(*at)),
                    holders: u32::try_from(
                        self.nodes
                            .values()
                            .filter(|n| n.toolchains.contains(id))
                            .count(),
                    )
                    .unwrap_or(u32::MAX),
                })
                .collect(),
            totals: self.totals,
            waiting: u32::try_from(self.waiters.len()).unwrap_or(u32::MAX),
            farm: self.config.farm_name.clone(),
            recent: self
                .recent
                .iter()
                .map(|e| FinishedJob {
                    job: e.job,
                    node: e.node,
                    crate_name: e.crate_name.clone(),
                    client: e.client.clone(),
                    build: e.build.clone(),
                    outcome: e.outcome.clone(),
                    total_ms: e.total_ms,
                    wall_ms: e.wall_ms,
                    bytes_in: e.bytes_in,
                    bytes_out: e.bytes_out,
                    ended_ago_ms: ms(e.ended_at),
                })
                .collect(),
        }
    }
}

/// The MAC a node checks a ticket against: a BLAKE3 keyed hash of the
/// ticket's fields under the node's own key.
fn sign(
    key: &[u8; 32],
    job: JobId,
    node: NodeId,
    toolchain: ToolchainId,
    client: CertFingerprint,
) -> [u8; 32] {
    *blake3::keyed_hash(key, &Ticket::signed_bytes(job, node, toolchain, client)).as_bytes()
}

#[cfg(test)]
mod tests;
