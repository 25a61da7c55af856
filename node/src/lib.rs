//! The distcc-rs node: runs rustc jobs for the farm.
//!
//! # Layout
//!
//! * [`access`]: who may ask the node for what, by the role in the peer's
//!   certificate (pure).
//! * [`manifest`]: validation of job requests (pure).
//! * [`sandbox`]: the sandbox plan and its bubblewrap command line (pure).
//! * [`limits`]: per-job limits as cgroup files or rlimits (pure), and the
//!   job cgroups.
//! * [`launcher`]: the process that joins a job's cgroups, sets rlimits and
//!   becomes bubblewrap as the job user.
//! * [`isolation`]: the job user, the limits in force, and the start-up
//!   check of the whole sandbox.
//! * [`diagnostics`]: reading rustc's stderr to tell compile errors from
//!   farm failures (pure).
//! * [`rustc_output`]: reading a job's stderr and stdout within size
//!   limits.
//! * [`store`]: the content-addressed store of input blobs.
//! * [`toolchains`]: the toolchain cache: leases, size limit, eviction.
//! * [`fetch`]: downloading, verifying, unpacking and smoke-testing a
//!   toolchain bundle.
//! * [`prefetch`]: fetching the farm's toolchains while the node is idle.
//! * [`job`]: one job from ticket to exit code.
//! * [`jobserver`]: the token pipe that bounds rustc's threads node-wide.
//! * [`load`]: measuring the machine's load for the scheduler's placement.
//! * [`control`]: the registration stream to the scheduler.
//! * [`server`]: the daemon's shared state and its accept loop.

pub mod access;
pub mod control;
pub mod diagnostics;
pub mod fetch;
pub mod isolation;
pub mod job;
pub mod jobserver;
pub mod launcher;
pub mod limits;
pub mod load;
pub mod manifest;
pub mod prefetch;
pub mod rustc_output;
pub mod sandbox;
pub mod server;
pub mod store;
pub mod toolchains;

pub use server::{Node, NodeConfig};

use std::path::{Path, PathBuf};

/// Errors that stop the node from starting.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Net(#[from] distcc_rs_net::NetError),
    #[error("no randomness available: {0}")]
    Random(String),
    #[error(
        "the sandbox program {program:?} was not found: install bubblewrap \
         (e.g. `apt-get install bubblewrap`) or pass --bwrap PATH"
    )]
    NoSandbox { program: PathBuf },
    #[error(transparent)]
    JobUser(#[from] isolation::UserError),
    #[error(transparent)]
    SandboxBroken(#[from] isolation::CheckError),
}

impl NodeError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        NodeError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
