//! Running `cargo build` over a fixture, with or without the farm.

use std::ffi::OsString;
use std::fs::File;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::NamedTempFile;

use crate::farm::FarmEnv;
use crate::netns::NetNs;
use crate::process::ChildGuard;

/// A build that takes longer than this has hung: the largest fixture builds
/// in well under a minute locally, and the farm adds the first toolchain
/// upload and fetch.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Variables from the test's own environment that would change how cargo
/// compiles: another wrapper (sccache, a developer's own distcc-rs), a target
/// directory elsewhere, or a farm configuration. The builds must differ only
/// in what the test sets.
const SCRUBBED_VARS: &[&str] = &[
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_INCREMENTAL",
    "CARGO_TARGET_DIR",
    "CARGO_INCREMENTAL",
    // cargo sets these for the test binary itself; they describe this test
    // package, not the fixture, and the nested cargo sets its own.
    "CARGO_CRATE_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "OUT_DIR",
];

/// Prefixes of further variables to remove, for the same reasons: a farm
/// configuration from the developer's shell, and package metadata of this
/// test package.
const SCRUBBED_PREFIXES: &[&str] = &["DISTCC_RS_", "CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_"];

/// What a finished cargo build did.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub duration: Duration,
}

impl BuildOutput {
    /// Panics, showing cargo's stderr, unless the build succeeded.
    pub fn assert_success(&self, what: &str) {
        assert!(
            self.status.success(),
            "{what} failed ({}) after {:?}\n--- stderr ---\n{}",
            self.status,
            self.duration,
            self.stderr
        );
    }

    /// The stderr lines that are diagnostics rather than cargo's progress
    /// reports, which name paths and times and so differ between builds.
    pub fn diagnostics(&self) -> Vec<&str> {
        diagnostic_lines(&self.stderr)
    }
}

/// Drops cargo's progress lines (`   Compiling base v0.1.0 (...)`,
/// `    Finished ...`) from its stderr and keeps everything else: the
/// compiler's diagnostics and cargo's own `warning:` / `error:` summaries.
///
/// Progress lines are right-aligned status words; diagnostics either start
/// at the first column (`error[E0308]: ...`) or with a symbol (` --> `).
pub fn diagnostic_lines(stderr: &str) -> Vec<&str> {
    const PROGRESS_WORDS: &[&str] = &[
        "Adding",
        "Blocking",
        "Checking",
        "Compiling",
        "Downloaded",
        "Downloading",
        "Finished",
        "Fresh",
        "Locking",
        "Running",
        "Updating",
    ];
    stderr
        .lines()
        .filter(|line| {
            let is_progress = line.starts_with(' ')
                && line
                    .split_whitespace()
                    .next()
                    .is_some_and(|word| PROGRESS_WORDS.contains(&word));
            !is_progress
        })
        .collect()
}

/// A cargo build running in the background; killed with everything it
/// started if dropped before it finishes.
#[derive(Debug)]
pub struct RunningBuild {
    guard: ChildGuard,
    started: Instant,
    stdout: NamedTempFile,
    stderr: NamedTempFile,
}

impl RunningBuild {
    /// Whether cargo has exited.
    pub fn is_finished(&mut self) -> bool {
        self.guard.try_wait().is_some()
    }

    /// Waits for cargo to exit; panics (after killing it) if it takes longer
    /// than [`BUILD_TIMEOUT`].
    pub fn wait(mut self) -> BuildOutput {
        let status = self.guard.wait_timeout(BUILD_TIMEOUT);
        let duration = self.started.elapsed();
        let read = |file: &NamedTempFile| {
            String::from_utf8_lossy(&std::fs::read(file.path()).unwrap_or_default()).into_owned()
        };
        let stderr = read(&self.stderr);
        let Some(status) = status else {
            panic!("cargo build did not finish within {BUILD_TIMEOUT:?}\n--- stderr ---\n{stderr}");
        };
        BuildOutput {
            status,
            stdout: read(&self.stdout),
            stderr,
            duration,
        }
    }
}

/// Starts `cargo build` in `dir` with the given extra environment and
/// arguments, and returns without waiting.
///
/// The target directory is `dir/target`, incremental compilation is off
/// (the farm never distributes incremental compiles, so without this the
/// workspace's own crates would always compile locally) and colours are off.
/// cargo's output goes to temporary files rather than pipes, so nothing has
/// to drain it while the build runs.
pub fn spawn_cargo_build(
    dir: &Path,
    env: &[(String, String)],
    extra_args: &[&str],
) -> RunningBuild {
    spawn_cargo_build_in(None, dir, env, extra_args)
}

/// Like [`spawn_cargo_build`], inside `netns` when given (for builds whose
/// wrappers find the scheduler over mDNS).
pub fn spawn_cargo_build_in(
    netns: Option<&NetNs>,
    dir: &Path,
    env: &[(String, String)],
    extra_args: &[&str],
) -> RunningBuild {
    let stdout = NamedTempFile::new().expect("create a temporary file for cargo's stdout");
    let stderr = NamedTempFile::new().expect("create a temporary file for cargo's stderr");
    // `cargo test` tells its test binaries which cargo it is; use the same one.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut command = match netns {
        Some(netns) => netns.command(cargo),
        None => Command::new(cargo),
    };
    command.arg("build").args(extra_args).current_dir(dir);
    for var in SCRUBBED_VARS {
        command.env_remove(var);
    }
    for (var, _) in std::env::vars_os() {
        let name = var.to_string_lossy();
        if SCRUBBED_PREFIXES.iter().any(|p| name.starts_with(p)) {
            command.env_remove(&var);
        }
    }
    command
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env("CARGO_INCREMENTAL", "0")
        .env("CARGO_TERM_COLOR", "never")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(reopen(&stdout))
        .stderr(reopen(&stderr));
    let started = Instant::now();
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    RunningBuild {
        guard: ChildGuard::new(child, format!("cargo build in {}", dir.display())),
        started,
        stdout,
        stderr,
    }
}

fn reopen(file: &NamedTempFile) -> File {
    file.reopen().expect("reopen a temporary file")
}

/// Runs `cargo build` in `dir` to completion with the given extra
/// environment; see [`spawn_cargo_build`].
pub fn cargo_build_with_env(
    dir: &Path,
    env: &[(String, String)],
    extra_args: &[&str],
) -> BuildOutput {
    spawn_cargo_build(dir, env, extra_args).wait()
}

/// Runs `cargo build` in `dir`, through the farm when `farm` is given and
/// with plain local rustc otherwise.
pub fn cargo_build(dir: &Path, farm: Option<&FarmEnv>, extra_args: &[&str]) -> BuildOutput {
    let env = farm.map(FarmEnv::vars).unwrap_or_default();
    cargo_build_with_env(dir, &env, extra_args)
}

/// Runs `cargo build` in `dir` inside `netns`, through the farm `farm`
/// (typically [`FarmEnv::discovering`]).
pub fn cargo_build_in(
    netns: &NetNs,
    dir: &Path,
    farm: &FarmEnv,
    extra_args: &[&str],
) -> BuildOutput {
    spawn_cargo_build_in(Some(netns), dir, &farm.vars(), extra_args).wait()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_are_dropped() {
        let stderr = "   Compiling broken v0.1.0 (/tmp/x/broken)\n\
                      warning: unused import: `std::collections::HashMap`\n \
                      --> src/lib.rs:6:5\n\
                      error[E0308]: mismatched types\n    \
                      Finished `dev` profile in 0.5s\n\
                      error: could not compile `broken` (lib) due to 1 previous error\n";
        assert_eq!(
            diagnostic_lines(stderr),
            [
                "warning: unused import: `std::collections::HashMap`",
                " --> src/lib.rs:6:5",
                "error[E0308]: mismatched types",
                "error: could not compile `broken` (lib) due to 1 previous error",
            ]
        );
    }
}
