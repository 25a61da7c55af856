//! Placement: which node a job goes to, as a pure function of plain data.
//!
//! [`choose`] looks at every node as a [`Candidate`] (its slots, the jobs the
//! scheduler has placed on it, its latest load report, its learned speed,
//! whether it holds the job's toolchain, and when it last got a job) and
//! returns the best one. It reads no clock and keeps no state: the
//! [`Farm`](crate::Farm) builds the candidates and applies the choice, and
//! the tests call it with hand-written tables.
//!
//! # The formula
//!
//! A node is **eligible** for a job unless the request excludes it or its
//! latest load report says it is short of memory (below
//! [`Policy::min_memory`]) or of disk space in its work directory (below
//! [`Policy::min_disk`]). An eligible node is **open** while it runs fewer
//! jobs than it has slots; a full node is never chosen, so no node is ever
//! given more jobs than it offered. Each open node gets a score, and the
//! highest score wins:
//!
//! ```text
//! score = speed × free_share × (1 − foreign_weight × foreign_load) × toolchain
//!
//! free_share   = (slots − running) / slots        running: the scheduler's own count
//! foreign_load = clamp(busy − running_at_report / cores, 0, 1)
//! busy         = min(cpu_busy, load_average / cores), clamped to 0..1
//! toolchain    = 1 if the node holds the job's toolchain, else cold_toolchain_factor
//! ```
//!
//! Ties go to the node assigned a job least recently, then to the lowest node
//! id, so equal nodes take turns and the choice is deterministic.
//! `docs/PLACEMENT.md` explains each factor and works an example.

use distcc_rs_proto::NodeId;
use distcc_rs_proto::message::NodeLoad;

/// The tunables of the scoring formula.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// A node whose latest report shows less available memory than this
    /// takes no new job: one more rustc could push it into swap or the
    /// out-of-memory killer, which costs far more than compiling elsewhere.
    pub min_memory: u64,
    /// A node whose work directory has less free space than this takes no
    /// new job: a job's inputs and outputs would not fit.
    pub min_disk: u64,
    /// How much a fully busy machine (busy with work that is not the farm's)
    /// discounts a node's score. Below 1, so that a node busy with foreign
    /// work still takes jobs when nothing better is free: its slots were
    /// offered, and waiting or compiling locally is usually slower still.
    pub foreign_weight: f64,
    /// The score factor for a node that would first have to fetch and unpack
    /// the job's toolchain (100+ MiB). Below 1, so holders are preferred; not
    /// far below, so that a burst at the start of a build still spreads over
    /// idle nodes instead of queueing on the few that hold the toolchain.
    pub cold_toolchain_factor: f64,
}

/// 512 MiB: roughly what one rustc compiling a mid-sized crate needs.
pub const MIN_MEMORY: u64 = 512 << 20;

/// 1 GiB: room for one large job's inputs and outputs.
pub const MIN_DISK: u64 = 1 << 30;

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_memory: MIN_MEMORY,
            min_disk: MIN_DISK,
            foreign_weight: 0.75,
            cold_toolchain_factor: 0.5,
        }
    }
}

/// One node, as placement sees it for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub node: NodeId,
    /// Jobs the node runs at once; never 0 (registration refuses that).
    pub slots: u32,
    /// Jobs the scheduler placed on the node that have not finished,
    /// including those whose client has not reached the node yet. This count
    /// is authoritative for the farm's own jobs: load reports lag behind
    /// assignments, so a burst of requests would otherwise all see the same
    /// stale report and pile onto one node.
    pub running: u32,
    /// The node's latest load report, if a recent one with measurements
    /// exists.
    pub load: Option<NodeLoad>,
    /// Learned speed relative to the farm; 1.0 until the node has finished
    /// enough jobs to tell. Finite and positive.
    pub speed: f64,
    /// Whether the node already holds the job's toolchain unpacked.
    pub holds_toolchain: bool,
    /// A counter value that grows with every assignment in the farm; the
    /// node's value is the counter when it last got a job, 0 if never.
    pub last_assigned: u64,
    /// The request asks not to use this node (it failed this job before).
    pub excluded: bool,
}

/// Where a candidate stands for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Standing {
    /// The node may not take this job at all: excluded, or short of memory
    /// or disk.
    Ineligible,
    /// The node could take the job but every slot is taken.
    Full,
    /// The node has a free slot; higher scores are better. Always finite and
    /// positive.
    Open(f64),
}

/// The outcome of [`choose`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Place the job on this node.
    Place(NodeId),
    /// Some nodes could take the job, but all of them are full: the request
    /// may wait for a slot.
    AllBusy,
    /// No node may take the job (or there are no candidates at all).
    NoneEligible,
}

/// Rates one candidate. See the module documentation for the formula.
pub fn assess(policy: &Policy, c: &Candidate) -> Standing {
    if c.excluded || !healthy(policy, c.load.as_ref()) {
        return Standing::Ineligible;
    }
    if c.running >= c.slots {
        return Standing::Full;
    }
    let free_share = f64::from(c.slots - c.running) / f64::from(c.slots);
    let foreign = c.load.as_ref().map_or(0.0, foreign_load);
    let toolchain = if c.holds_toolchain {
        1.0
    } else {
        policy.cold_toolchain_factor
    };
    let score = c.speed * free_share * (1.0 - policy.foreign_weight * foreign) * toolchain;
    // Guards against a policy or speed outside its documented range: a
    // non-finite or non-positive score would make the order meaningless, and
    // an open slot must stay usable whatever the factors say.
    if score.is_finite() && score > 0.0 {
        Standing::Open(score)
    } else {
        Standing::Open(f64::MIN_POSITIVE)
    }
}

/// Whether a node's latest report leaves room for one more job: enough
/// available memory and enough free disk. A node without a report, or with
/// a report that carries no measurements (`cores` is 0: older nodes send
/// only their job counts), is taken to be healthy, since its slots are all
/// the scheduler knows about it.
pub fn healthy(policy: &Policy, load: Option<&NodeLoad>) -> bool {
    match load {
        Some(load) if load.cores > 0 => {
            load.mem_available >= policy.min_memory && load.disk_free >= policy.min_disk
        }
        _ => true,
    }
}

/// How busy a node is with work that is not the farm's, from 0 (none) to 1
/// (every core).
///
/// Two signals measure how busy the machine is: the CPU time of the last
/// second and the one-minute load average. Each has a false alarm the other
/// lacks: the CPU share still includes jobs that ended within the last
/// second, and the load average keeps counting finished farm jobs for about
/// a minute. Taking the smaller of the two drops both false alarms; a real
/// foreign load shows in both (in the load average within a minute).
///
/// The farm's own part is the running count *in the same report*, so that
/// the measurement and the jobs that caused it belong to the same moment;
/// each job is taken to keep one core busy.
pub fn foreign_load(load: &NodeLoad) -> f64 {
    if load.cores == 0 {
        // A report without measurements (older nodes send only their job
        // counts) says nothing about foreign work.
        return 0.0;
    }
    let cores = f64::from(load.cores);
    let cpu = f64::from(load.cpu_busy_permille) / 1000.0;
    let queue = f64::from(load.load_avg_centi) / 100.0 / cores;
    let busy = cpu.min(queue).clamp(0.0, 1.0);
    let explained = (f64::from(load.running) / cores).min(1.0);
    (busy - explained).clamp(0.0, 1.0)
}

/// Picks the best open candidate. Ties in score go to the candidate with the
/// smallest `last_assigned` (so a burst cycles through equal nodes), then the
/// lowest node id (so the result never depends on iteration order).
pub fn choose(policy: &Policy, candidates: impl IntoIterator<Item = Candidate>) -> Choice {
    let mut best: Option<(f64, u64, NodeId)> = None;
    let mut any_eligible = false;
    for c in candidates {
        match assess(policy, &c) {
            Standing::Ineligible => {}
            Standing::Full => any_eligible = true,
            Standing::Open(score) => {
                any_eligible = true;
                let better = match best {
                    None => true,
                    Some((s, last, node)) => score
                        .total_cmp(&s)
                        .then_with(|| last.cmp(&c.last_assigned))
                        .then_with(|| node.cmp(&c.node))
                        .is_gt(),
                };
                if better {
                    best = Some((score, c.last_assigned, c.node));
                }
            }
        }
    }
    match best {
        Some((_, _, node)) => Choice::Place(node),
        None if any_eligible => Choice::AllBusy,
        None => Choice::NoneEligible,
    }
}

#[cfg(test)]
mod tests;
