//! Every message that crosses a connection.
//!
//! There are three conversations, each on its own QUIC bi-directional stream:
//!
//! 1. **Scheduler requests.** Any peer opens a stream to the scheduler and
//!    sends one [`SchedulerRequest`]. The variant decides what follows.
//! 2. **Node control.** A node's [`SchedulerRequest::RegisterNode`] stream
//!    stays open for the node's lifetime: the scheduler answers once with a
//!    [`RegisterResponse`], then the node sends [`NodeEvent`]s.
//! 3. **Jobs.** A client opens a stream to the node it was assigned and sends
//!    a [`NodeRequest::Job`]. The node answers with a [`JobAccept`] naming the input
//!    blobs it lacks; the client sends each as a [`BlobHeader`] followed by a
//!    chunk stream, again for any that arrived corrupted, until the node
//!    needs nothing more; the node then streams [`JobEvent`]s until the job
//!    ends.
//!
//! 4. **Adoption.** A scheduler that found a node (over mDNS or from its
//!    `--node` list) dials it and sends [`NodeRequest::Adopt`] on a stream;
//!    the node answers with an [`AdoptReply`], and when it registers, that
//!    stream becomes its control stream exactly as in (2), with the
//!    scheduler's [`RegisterResponse`] next. Which side dialled makes no
//!    other difference.
//!
//! Payloads too large for one frame (blobs, outputs, toolchain bundles) travel
//! as chunk streams (see [`crate::codec`]), zstd-compressed.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::ids::{Digest, JobId, NodeId, Ticket, ToolchainId};

// ---------------------------------------------------------------------------
// Scheduler requests.

/// The first message on every stream opened to the scheduler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SchedulerRequest {
    /// A node joins the farm. The stream stays open while the node lives.
    RegisterNode(NodeRegistration),
    /// A client asks where to run a job. Answered with [`AllocateResponse`].
    Allocate(AllocateRequest),
    /// A client uploads a toolchain bundle. A chunk stream of the
    /// zstd-compressed bundle follows; answered with [`UploadResponse`].
    UploadToolchain {
        id: ToolchainId,
        compressed_size: u64,
    },
    /// A node fetches a toolchain bundle. Answered with [`FetchResponse`];
    /// when found, a chunk stream of the compressed bundle follows.
    FetchToolchain(ToolchainId),
    /// Anyone asks what the farm is doing. Answered with [`FarmStatus`].
    Status,
    /// A client gives back an assignment it will not use (it found it must
    /// compile locally after all), so the slot is free at once rather than
    /// when the assignment expires. Not answered.
    Release { job: JobId },
    /// Anyone asks which toolchain bundles the scheduler stores, for
    /// `distcc-rs-pack list`. Answered with [`ToolchainList`].
    ListToolchains,
    /// Someone asks the scheduler to delete a stored bundle, for
    /// `distcc-rs-pack rm`. Answered with [`RemoveResponse`]. Without
    /// `force`, a bundle that jobs in flight or node downloads still need is
    /// kept and the answer says so; with it, the bundle goes anyway, and
    /// those jobs fail over to other nodes or to local compiles.
    RemoveToolchain { id: ToolchainId, force: bool },
    /// A peer without a farm certificate asks for one. The only request the
    /// scheduler serves on a connection without a client certificate.
    /// Answered with [`crate::auth::EnrollResponse`].
    Enroll(crate::auth::EnrollRequest),
}

/// What a node tells the scheduler about itself when it joins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRegistration {
    pub node: NodeId,
    /// The farm (`--netname`) the node belongs to. A scheduler refuses nodes
    /// of another farm, so two farms can share one LAN.
    pub farm: String,
    /// A human name, the host name by default.
    pub name: String,
    /// The UDP port the node accepts jobs on. The scheduler pairs it with the
    /// address the registration came from unless `advertise` is set.
    pub job_port: u16,
    /// An explicit address for clients to reach the node at, for nodes behind
    /// a different interface than the one they reach the scheduler through.
    pub advertise: Option<SocketAddr>,
    /// How many jobs the node runs at once.
    pub slots: u32,
    /// Toolchains the node already holds unpacked.
    pub toolchains: Vec<ToolchainId>,
}

/// The scheduler's answer to a node registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RegisterResponse {
    /// The node is in the farm. `ticket_key` is the key the scheduler signs
    /// this node's job tickets with.
    Registered { ticket_key: [u8; 32] },
    /// The node may not join, and why.
    Refused(RegisterRefusal),
}

/// Why a node registration was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum RegisterRefusal {
    #[error("a node with id {0} is already connected")]
    DuplicateNode(NodeId),
    #[error("a node must offer at least one slot")]
    NoSlots,
    #[error("the node belongs to farm {node:?}, this scheduler runs farm {scheduler:?}")]
    WrongFarm { node: String, scheduler: String },
}

// ---------------------------------------------------------------------------
// Streams a node accepts.

/// The first message on every stream opened to a node.
// A request is decoded once per stream and matched at once, so the size of
// the job variant costs one move; boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeRequest {
    /// A client sends a compile job; see [`JobRequest`].
    Job(JobRequest),
    /// A scheduler that found this node asks it to join its farm. Answered
    /// with an [`AdoptReply`].
    Adopt(AdoptRequest),
}

/// A scheduler's invitation to a node it discovered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptRequest {
    /// The scheduler's farm name (`--netname`).
    pub farm: String,
    /// A human name for the scheduler, for the node's logs.
    pub scheduler_name: String,
}

/// A node's answer to an [`AdoptRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AdoptReply {
    /// The node joins: what follows on this stream is the node-control
    /// conversation, starting with the scheduler's [`RegisterResponse`].
    Register(NodeRegistration),
    /// The node stays out, and why.
    Decline(AdoptRefusal),
}

/// Why a node declined an adoption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AdoptRefusal {
    #[error("the node belongs to farm {node:?}, not to farm {scheduler:?}")]
    WrongFarm { node: String, scheduler: String },
    #[error("the node is already registered with scheduler {0}")]
    AlreadyRegistered(String),
}

/// Messages a node sends on its control stream after registering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeEvent {
    /// The node accepted the job's ticket and started working on it.
    JobStarted { job: JobId },
    /// The job ended, one way or another; its slot is free again.
    JobFinished {
        job: JobId,
        outcome: JobOutcome,
        wall_ms: u64,
        /// Bytes the job's stream carried from the client (request, input
        /// blobs) and to it (events, outputs), as they crossed the wire.
        bytes_in: u64,
        bytes_out: u64,
    },
    /// The node now holds this toolchain unpacked.
    ToolchainReady(ToolchainId),
    /// A periodic load report.
    Load(NodeLoad),
    /// The node removed this toolchain from its cache to make room for
    /// another one; it no longer holds it.
    ToolchainEvicted(ToolchainId),
    /// The node fetched this toolchain and it failed verification every
    /// time (its content does not hash to its id, it is truncated or
    /// malformed), or it unpacked but its rustc does not run on the node.
    /// The node will not use it for a while and refuses jobs that need it;
    /// the scheduler should place them elsewhere.
    ToolchainRejected { id: ToolchainId, reason: String },
}

/// How a job ended, as the scheduler records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobOutcome {
    /// rustc ran and exited with this code (0 for success, non-zero for a
    /// genuine compile error).
    Compiled { exit_code: i32 },
    /// The farm failed to run the job; the client compiles it elsewhere.
    Failed(JobError),
}

/// A node's load, as measured on the node (every second, and whenever a job
/// starts or ends).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLoad {
    /// Jobs of this farm running on the node.
    pub running: u32,
    pub slots: u32,
    /// CPU cores the node has.
    pub cores: u32,
    /// Share of all cores' time spent busy since the previous report, in
    /// permille (0 to 1000). Includes work that is not the farm's.
    pub cpu_busy_permille: u16,
    /// The one-minute load average, times 100.
    pub load_avg_centi: u32,
    /// Memory available for new processes, in bytes.
    pub mem_available: u64,
    /// Free space in the node's work directory, in bytes.
    pub disk_free: u64,
}

/// A client's request for a place to run one compile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocateRequest {
    pub toolchain: ToolchainId,
    /// The crate being compiled, for status displays and logs.
    pub crate_name: String,
    /// Who asks: host name and process id, for status displays and logs.
    pub client: String,
    /// The build the job belongs to (host name and the pid of the cargo
    /// that ran the wrapper). The scheduler shares a busy farm fairly
    /// between builds, not between wrapper processes.
    pub build: String,
    /// Nodes not to use: a retry names the nodes that already failed it.
    pub exclude: Vec<NodeId>,
}

/// The scheduler's answer to an [`AllocateRequest`].
// Decoded once per allocation and matched at once: boxing the assignment
// would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AllocateResponse {
    /// Run the job on this node, presenting this ticket.
    Assigned(Assignment),
    /// The scheduler does not hold the toolchain: upload it, then ask again.
    NeedToolchain,
    /// Compile on the client's own machine.
    RunLocally(RunLocallyReason),
}

/// Where a job goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub job: JobId,
    pub node: NodeId,
    pub node_name: String,
    pub addr: SocketAddr,
    /// The certificate the node registered with. The client checks that
    /// whoever answers at `addr` holds it, so a LAN host that redirects the
    /// address to another member (or another node) gets no job.
    pub node_cert: crate::CertFingerprint,
    pub ticket: Ticket,
}

/// Why the scheduler told a client to compile locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RunLocallyReason {
    #[error("no node is connected to the scheduler")]
    NoNodes,
    #[error("every node slot is busy")]
    NoFreeSlot,
    #[error("no node can take the job (all are excluded or out of memory or disk)")]
    NoEligibleNode,
}

/// The scheduler's answer to a toolchain upload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UploadResponse {
    Stored,
    Rejected(BundleError),
}

/// Why a toolchain bundle was not accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum BundleError {
    #[error("bundle content hashes to {actual}, not to its name {expected}")]
    HashMismatch {
        expected: ToolchainId,
        actual: ToolchainId,
    },
    #[error("bundle is {size} bytes, over the limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("bundle is not a valid zstd-compressed tar: {0}")]
    Malformed(String),
    #[error("storage error: {0}")]
    Io(String),
    /// Even after evicting every bundle it may evict, the scheduler's
    /// store (`--max-store-size`) has no room: `in_use` bytes of it belong
    /// to bundles that jobs or node downloads still need.
    #[error(
        "bundle is {size} bytes, but the toolchain store holds at most {limit} bytes and \
         {in_use} of them belong to bundles in use; raise the scheduler's --max-store-size \
         or remove bundles with `distcc-rs-pack rm`"
    )]
    StoreFull { size: u64, limit: u64, in_use: u64 },
}

/// The scheduler's answer to a toolchain fetch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FetchResponse {
    /// A chunk stream of `compressed_size` bytes follows.
    Found {
        compressed_size: u64,
    },
    NotFound,
}

/// The scheduler's answer to [`SchedulerRequest::ListToolchains`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolchainList {
    /// Every stored bundle, sorted by id.
    pub toolchains: Vec<StoredToolchain>,
    /// The compressed bytes the bundles take together.
    pub used: u64,
    /// The store's size limit (`--max-store-size`).
    pub limit: u64,
}

/// One bundle in the scheduler's store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredToolchain {
    pub id: ToolchainId,
    pub compressed_size: u64,
    /// What the bundle's manifest says; `None` when the scheduler could not
    /// read it.
    pub summary: Option<BundleSummary>,
    /// Milliseconds since the bundle was stored. Ages rather than times, so
    /// that the asker's clock does not have to agree with the scheduler's.
    pub stored_ago_ms: u64,
    /// Milliseconds since a job of this toolchain was last placed (to
    /// within a minute, and across scheduler restarts); `None` if none was
    /// since it was stored. The store evicts the least recently used first.
    pub last_used_ago_ms: Option<u64>,
    /// Connected nodes that hold the bundle unpacked.
    pub holders: Vec<ToolchainHolder>,
    /// Jobs of this toolchain placed and not yet finished.
    pub jobs_in_flight: u32,
    /// Nodes downloading the bundle right now.
    pub downloads: u32,
}

/// What a bundle holds, from its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleSummary {
    /// The first line of `rustc -vV`, e.g. `rustc 1.95.0 (… 2026-…)`.
    pub version_line: String,
    /// The rustc release, e.g. `1.95.0` or `1.97.0-nightly`.
    pub release: Option<String>,
    /// The triple rustc runs on.
    pub host: String,
    /// The targets whose standard library the bundle holds, sorted.
    pub targets: Vec<String>,
}

/// A node that holds a bundle unpacked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolchainHolder {
    pub node: NodeId,
    pub name: String,
}

/// The scheduler's answer to [`SchedulerRequest::RemoveToolchain`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RemoveResponse {
    /// The bundle is gone; `freed` compressed bytes are free again. Nodes
    /// keep their unpacked copies until their own cache evicts them.
    Removed { freed: u64 },
    /// The scheduler does not store this bundle.
    NotFound,
    /// The bundle was kept because these still need it; removing it with
    /// `force` would make them fail over.
    InUse { jobs: u32, downloads: u32 },
    /// The bundle could not be deleted.
    Failed(BundleError),
}

/// A snapshot of the farm, for `distcc-rs status` and tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FarmStatus {
    pub nodes: Vec<NodeStatus>,
    pub jobs: Vec<JobStatus>,
    pub toolchains: Vec<ToolchainStatus>,
    pub totals: FarmTotals,
    /// Allocation requests waiting for a free slot.
    pub waiting: u32,
    /// The farm's name (`--netname`).
    pub farm: String,
    /// The jobs that ended most recently, newest last (a bounded history,
    /// for the monitor's job list).
    pub recent: Vec<FinishedJob>,
}

/// A job that ended, as the scheduler recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinishedJob {
    pub job: JobId,
    pub node: NodeId,
    pub crate_name: String,
    pub client: String,
    pub build: String,
    pub outcome: JobOutcome,
    /// From placement to the node's report.
    pub total_ms: u64,
    /// On the node, from accepting the ticket to the end.
    pub wall_ms: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// How long ago it ended, when the snapshot was taken.
    pub ended_ago_ms: u64,
}

/// One node, as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: NodeId,
    pub name: String,
    pub addr: SocketAddr,
    pub slots: u32,
    /// Jobs assigned to the node and not yet finished.
    pub running: u32,
    pub jobs_done: u64,
    pub jobs_failed: u64,
    pub toolchains: Vec<ToolchainId>,
    pub connected_ms: u64,
    /// The node's latest load report, if any arrived yet.
    pub load: Option<NodeLoad>,
    /// Learned speed relative to the farm (1.0 = as fast as the farm's
    /// average for the same crates; 2.0 = twice as fast).
    pub speed: f64,
}

/// One job in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub job: JobId,
    pub node: NodeId,
    pub crate_name: String,
    pub client: String,
    /// The build it belongs to (see [`AllocateRequest::build`]).
    pub build: String,
    pub phase: JobPhase,
    pub elapsed_ms: u64,
}

/// Where a job in flight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobPhase {
    /// Placed on a node; the client has not reached the node yet.
    Assigned,
    /// The node accepted the ticket and works on the job.
    Running,
}

/// A toolchain the scheduler stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolchainStatus {
    pub id: ToolchainId,
    pub compressed_size: u64,
    /// Milliseconds since a job of this toolchain was last placed, if one
    /// was since the scheduler started. Idle nodes fetch the toolchains
    /// used recently before a job needs them.
    pub last_used_ms: Option<u64>,
    /// How many connected nodes hold this toolchain unpacked.
    pub holders: u32,
}

/// Counters since the scheduler started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FarmTotals {
    pub assigned: u64,
    /// Jobs where rustc ran on a node and exited 0.
    pub succeeded: u64,
    /// Jobs where rustc ran on a node and reported a compile error.
    pub compile_errors: u64,
    /// Jobs the farm failed to run (the client compiled them elsewhere).
    pub failed: u64,
    /// Assignments the client never used, or whose node vanished.
    pub abandoned: u64,
    pub run_locally: u64,
    /// Allocation requests that had to wait for a free slot.
    pub queued: u64,
}

// ---------------------------------------------------------------------------
// Jobs: client to node.

/// A compile job, the first message on a job stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    pub ticket: Ticket,
    pub crate_name: String,
    /// rustc's arguments, without the rustc path itself.
    pub args: Vec<String>,
    /// The environment rustc runs with.
    pub env: Vec<(String, String)>,
    /// rustc's working directory, absolute.
    pub cwd: String,
    /// Every input file, at its absolute path on the client.
    pub files: Vec<FileEntry>,
    /// Directories to create even when no input lies in them (the cwd, output
    /// directories, `OUT_DIR`), absolute.
    pub dirs: Vec<String>,
    /// Directories whose new or changed files are the job's outputs, absolute.
    pub output_dirs: Vec<String>,
}

/// One input file of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub digest: Digest,
    pub size: u64,
    pub executable: bool,
}

/// The node's answers to a [`JobRequest`] before the job runs.
///
/// The node sends `NeedBlobs` with the inputs its store lacks; the client
/// sends exactly those. A blob that arrives truncated or corrupted (its
/// content does not hash to its digest) is asked for again in the next
/// `NeedBlobs`, a few times at most. An empty `NeedBlobs` means every input
/// is in place and [`JobEvent`]s follow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobAccept {
    /// Send these blobs; empty once the node has everything.
    NeedBlobs(Vec<Digest>),
    /// The node will not run the job.
    Rejected(JobError),
}

/// Precedes one blob's chunk stream (zstd-compressed content) on a job stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobHeader {
    pub digest: Digest,
    /// Uncompressed size.
    pub size: u64,
}

/// What a node reports while it runs a job, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobEvent {
    /// Every blob arrived intact and rustc is starting.
    Running,
    /// Bytes rustc wrote to stderr: whole lines, except for a line longer
    /// than a frame, which comes in pieces.
    Stderr(Vec<u8>),
    /// rustc wrote this output file; a chunk stream of its zstd-compressed
    /// content follows.
    Output(OutputHeader),
    /// rustc exited with this code. Every output has been sent.
    Exited { code: i32 },
    /// The farm failed to run the job. Nothing the job produced is valid.
    Failed(JobError),
    /// Bytes rustc wrote to stdout (a proc-macro's `println!`), in pieces of
    /// at most a chunk, sent before [`JobEvent::Exited`].
    Stdout(Vec<u8>),
}

/// Describes one output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputHeader {
    /// The absolute path, as rustc wrote it (the same path as on the client).
    pub path: String,
    /// Uncompressed size.
    pub size: u64,
    pub executable: bool,
}

/// Why the farm could not run a job. Each of these makes the client compile
/// the job somewhere else; none of them is a compile error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum JobError {
    #[error("the job ticket is not valid for this node: {0}")]
    BadTicket(String),
    #[error("the node has no free slot")]
    Busy,
    #[error("the node could not get toolchain {id}: {reason}")]
    ToolchainUnavailable { id: ToolchainId, reason: String },
    #[error("the job request is invalid: {0}")]
    InvalidRequest(String),
    #[error("blob {digest:?} arrived corrupted")]
    BlobCorrupt { digest: Digest },
    #[error("the sandbox failed: {0}")]
    Sandbox(String),
    #[error("rustc was killed by signal {signal}")]
    Killed { signal: i32 },
    #[error("the job exceeded its time limit of {secs} s")]
    Timeout { secs: u64 },
    #[error("node I/O error: {0}")]
    Io(String),
}
