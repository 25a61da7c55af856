//! Network namespaces of their own, for tests that use mDNS.
//!
//! mDNS joins multicast groups and sends queries and adverts on every
//! interface it can see, and the host's interfaces are a real network. A
//! test that runs the daemons with mDNS on therefore runs them (and cargo,
//! whose wrappers look for the scheduler) inside a fresh network namespace
//! holding nothing but a loopback interface; nothing it sends leaves it.
//!
//! Creating a namespace needs root (CAP_SYS_ADMIN) and iproute2's `ip`, as
//! CI has. Without them [`NetNs::new`] panics with a message saying so: a
//! discovery test must not pass by not running.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::process::kill_tree;

/// A network namespace with only `lo`, up. Dropping it kills every process
/// still inside and deletes it.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    ip: PathBuf,
}

impl NetNs {
    /// Creates a namespace named after this process, so that parallel test
    /// runs and leftovers of a killed run are told apart.
    pub fn new() -> NetNs {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "distcc-rs-e2e-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let ip = find_ip().unwrap_or_else(|| {
            panic!(
                "iproute2's `ip` is not installed; the discovery tests need it to create a \
                 network namespace (apt-get install iproute2)"
            )
        });
        let created = Command::new(&ip)
            .args(["netns", "add", &name])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", ip.display()));
        assert!(
            created.status.success(),
            "cannot create network namespace {name} ({}): {}\n\
             The discovery tests run mDNS inside a namespace of their own, never on the \
             host's interfaces, and creating one needs root (CAP_SYS_ADMIN); run them as \
             root, as CI does",
            created.status,
            String::from_utf8_lossy(&created.stderr).trim()
        );
        // From here on the guard deletes the namespace whatever happens.
        let netns = NetNs { name, ip };
        netns.ip_command(&["link", "set", "lo", "up"]);
        netns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace. `ip netns exec`
    /// replaces itself with the program, so the child's pid is the
    /// program's.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(&self.ip);
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Runs `ip -n <namespace> <args>` and panics if it fails.
    fn ip_command(&self, args: &[&str]) {
        let output = Command::new(&self.ip)
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.ip.display()));
        assert!(
            output.status.success(),
            "`ip -n {} {}` failed: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }

    /// The processes inside the namespace.
    fn pids(&self) -> Vec<u32> {
        Command::new(&self.ip)
            .args(["netns", "pids", &self.name])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|pid| pid.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Default for NetNs {
    fn default() -> Self {
        NetNs::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // The processes' own guards normally got there first; this catches
        // anything they started that escaped them.
        for pid in self.pids() {
            kill_tree(pid);
        }
        // Best effort: a destructor must not panic while a test unwinds.
        let _ = Command::new(&self.ip)
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `ip`, wherever the system keeps it (often `/usr/sbin`, which a user's
/// `PATH` may lack).
fn find_ip() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join("ip"))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
