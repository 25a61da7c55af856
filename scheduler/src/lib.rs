//! The distcc-rs scheduler: it knows which nodes are in the farm, decides
//! where each compile runs, and keeps the toolchain bundles that nodes fetch.
//!
//! # Layout
//!
//! * [`farm`]: the pure core. Nodes, jobs in flight, waiting requests,
//!   learned speeds, expiry and counters, as a plain struct whose methods
//!   take the current time as an argument. No IO, no clock, no tasks.
//! * [`placement`]: the scoring formula that picks a node for a job, a pure
//!   function of plain data.
//! * [`store`]: toolchain bundles on disk, verified against their content
//!   hash before they get their final name.
//! * [`server`]: the QUIC edge. Accepts connections, reads one request per
//!   stream, and turns it into calls on the farm and the store.
//! * [`discovery`]: finding nodes (mDNS, `--node`) and adopting them, and
//!   advertising the scheduler for clients.
//! * [`authority`]: the farm CA on disk, the join token, enrollment, and the
//!   record of issued and revoked certificates.
//! * [`access`]: which certificate role may make which request, as a pure
//!   function.
//!
//! The binary (`main.rs`) parses flags, sets up logging, binds the endpoint
//! and calls [`server::run`].

pub mod access;
pub mod authority;
pub mod discovery;
pub mod farm;
pub mod placement;
pub mod server;
pub mod store;

#[cfg(test)]
mod fixture;

pub use discovery::DiscoveryConfig;
pub use farm::{
    ASSIGNMENT_TIMEOUT, Decision, Departure, Farm, FarmConfig, QUEUE_TIMEOUT, Reply, WaiterId,
};
pub use server::{SchedulerConfig, SchedulerError, run};
pub use store::{DEFAULT_MAX_BUNDLE_SIZE, StoreError, StoredBundle, ToolchainStore, Upload};
