//! The distcc-rs client: cargo's `RUSTC_WRAPPER`.
//!
//! # Layout
//!
//! * [`argv`]: `@argfile` expansion and the decision whether a rustc
//!   invocation can run on the farm (pure).
//! * [`depinfo`]: parsing rustc's dep-info output (pure).
//! * [`inputs`]: the set of files a remote compile needs (pure but for
//!   existence checks of `-l static` archives).
//! * [`outputs`]: which paths a node may write on this machine (pure).
//! * [`package`]: the package directory shipped for proc-macros that read files.
//! * [`config`]: settings from the environment.
//! * [`discovery`]: finding the scheduler over mDNS, with an on-disk cache.
//! * [`membership`]: the client's farm certificate, enrolling with the join
//!   token, and `distcc-rs join`.
//! * [`hashcache`]: input digests remembered across compiles.
//! * [`remote`]: one job on the farm, from pre-pass to written outputs.
//! * [`local`]: running rustc here, untouched or after a failed farm attempt.
//! * [`throttle`]: the host-wide limit on local compiles.
//! * [`events`]: the per-invocation event log.
//! * [`wrapper`]: the entry point tying these together.
//! * [`status`]: `distcc-rs status`.
//! * [`monitor`]: `distcc-rs monitor`, the live terminal view.
//!
//! Architecture invariant: the client never fails a build that local rustc
//! would pass. Every farm error ends in [`local`], and the client prints
//! nothing of its own on stderr unless it cannot run rustc at all.

pub mod argv;
pub mod config;
pub mod depinfo;
pub mod discovery;
pub mod events;
pub mod hashcache;
pub mod inputs;
pub mod local;
pub mod membership;
pub mod monitor;
pub mod outputs;
pub mod package;
pub mod remote;
pub mod status;
pub mod throttle;
pub mod wrapper;
