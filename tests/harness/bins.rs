//! Finds the workspace's binaries and directories from the test binary's own
//! location, so the tests need no configuration.

use std::path::PathBuf;

/// The scheduler binary's file name.
pub const SCHEDULER: &str = "distcc-rs-scheduler";
/// The node binary's file name.
pub const NODE: &str = "distcc-rs-node";
/// The client binary's file name: the `RUSTC_WRAPPER` and the status command.
pub const CLIENT: &str = "distcc-rs";

/// The profile directory the test binary was built into, e.g.
/// `target/debug`. Test binaries live in its `deps/` subdirectory.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .unwrap_or_else(|| panic!("{} is not inside <target>/<profile>/deps", exe.display()))
        .to_path_buf()
}

/// The workspace's target directory, e.g. `target`.
pub fn target_dir() -> PathBuf {
    let profile = profile_dir();
    profile
        .parent()
        .unwrap_or_else(|| panic!("{} has no parent", profile.display()))
        .to_path_buf()
}

/// The path of one of the workspace's binaries; panics when it has not been
/// built, since `cargo test -p distcc-rs-e2e` does not build other packages'
/// binaries by itself.
pub fn binary(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    if !path.is_file() {
        panic!(
            "{} does not exist: run `cargo build --workspace --bins` first",
            path.display()
        );
    }
    path
}

/// Panics unless all three farm binaries exist, so that a test finds out
/// before it spends time on a local reference build.
pub fn require_farm_binaries() {
    for name in [SCHEDULER, NODE, CLIENT] {
        binary(name);
    }
}

/// The client cache directory shared by every test of a run.
///
/// Packing the toolchain (about 440 MiB) takes seconds, so all farm builds of
/// a run share one cache and pack it once. It lives in the target directory
/// so that `cargo clean` removes it with everything else.
pub fn shared_cache_dir() -> PathBuf {
    let dir = target_dir().join("e2e-cache");
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}
