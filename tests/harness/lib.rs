//! The end-to-end test harness: starts real schedulers and nodes on loopback
//! (or, for mDNS, inside a network namespace of their own), runs cargo over
//! copies of the fixture workspaces with and without the farm, and compares
//! what comes out.
//!
//! Every process the harness starts is owned by a guard that kills it (and
//! everything it started) when dropped, so a failing test leaves nothing
//! running behind it.

pub mod artifacts;
pub mod bins;
pub mod cargo;
pub mod events;
pub mod farm;
pub mod fixture;
pub mod netns;
pub mod process;
pub mod watch;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use artifacts::{Artifacts, compare_artifacts, diff_artifacts, snapshot_artifacts};
pub use cargo::{
    BuildOutput, RunningBuild, cargo_build, cargo_build_in, cargo_build_with_env,
    spawn_cargo_build, spawn_cargo_build_in,
};
pub use events::{Event, Where, read_events};
pub use farm::{
    FarmEnv, Node, Scheduler, client_command, free_loopback_port, join_token, status,
    status_discovered, token_of_state, try_status, try_status_discovered,
};
pub use fixture::{Fixture, copy_fixture};
pub use netns::NetNs;
pub use watch::{describe_status, watch_status};

/// How often [`wait_until`] checks its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `condition` every 50 ms until it holds; panics with `what` if it
/// still does not hold at `deadline`.
pub fn wait_until(deadline: Instant, what: &str, mut condition: impl FnMut() -> bool) {
    loop {
        if condition() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Serialises the end-to-end tests within one test binary.
///
/// Each test builds real crates on a 2-core machine; run side by side they
/// would slow each other past their deadlines, and the test that kills a node
/// mid-job needs jobs that are not starved of CPU. Hold the guard for the
/// whole test. A test that panicked while holding it poisons nothing that
/// matters, so poisoning is ignored.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
