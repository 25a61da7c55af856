//! Owning child processes: killing whole process trees, running commands
//! with a time limit, and reading the end of log files for error messages.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How often a process is checked for having exited while a deadline runs.
const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A child process that is killed, with everything it started, when the
/// guard is dropped, including while a test panics.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    /// What the child is, for messages.
    label: String,
    /// Set once the child has been reaped, so its pid is never signalled
    /// again (the kernel may have handed it to another process by then).
    status: Option<ExitStatus>,
}

impl ChildGuard {
    pub fn new(child: Child, label: impl Into<String>) -> Self {
        ChildGuard {
            child,
            label: label.into(),
            status: None,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The child's exit status if it has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("cannot check on {}: {e}", self.label));
        }
        self.status
    }

    /// Waits for the child to exit, up to `timeout`; on timeout kills it and
    /// everything it started and returns `None`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                return None;
            }
            std::thread::sleep(EXIT_POLL_INTERVAL);
        }
    }

    /// Kills the child and its descendants with SIGKILL and reaps the child.
    /// Does nothing if it already exited.
    pub fn kill(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        kill_tree(self.child.id());
        self.status = Some(
            self.child
                .wait()
                .unwrap_or_else(|e| panic!("cannot reap {}: {e}", self.label)),
        );
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // A panic inside a destructor during unwinding would abort the test
        // binary, hiding the original failure; the kill is best-effort here.
        if self.status.is_none() && !matches!(self.child.try_wait(), Ok(Some(_))) {
            kill_tree(self.child.id());
            let _ = self.child.wait();
        }
    }
}

/// Kills a process and all of its descendants with SIGKILL.
///
/// The tree is stopped top-down with SIGSTOP first, so that no process can
/// fork a new child between being found and being killed; the whole set is
/// then killed at once. Descendants are found through `/proc`, which also
/// catches processes that left the process group (a sandbox that calls
/// `setsid`, for example).
pub fn kill_tree(root: u32) {
    let mut tree: BTreeSet<u32> = BTreeSet::new();
    let mut frontier = vec![root];
    while !frontier.is_empty() {
        signal("STOP", &frontier);
        tree.extend(&frontier);
        frontier = parent_map()
            .into_iter()
            .filter(|(pid, ppid)| tree.contains(ppid) && !tree.contains(pid))
            .map(|(pid, _)| pid)
            .collect();
    }
    signal("KILL", &tree.into_iter().collect::<Vec<_>>());
}

/// Sends a signal through kill(1): the workspace forbids `unsafe`, and the
/// standard library can send nothing but SIGKILL to its own children.
fn signal(name: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    // A process may exit between being listed and being signalled; kill(1)
    // then complains about that pid and still signals the others.
    let _ = Command::new("kill")
        .arg("-s")
        .arg(name)
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Every process's parent, from `/proc/<pid>/stat`.
fn parent_map() -> Vec<(u32, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // The command name in parentheses may contain spaces and
            // parentheses itself, so the fields are counted from its end:
            // "pid (comm) state ppid ...".
            let after_comm = &stat[stat.rfind(')')? + 1..];
            let ppid: u32 = after_comm.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect()
}

/// Runs a command to completion with its output captured, killing it if it
/// takes longer than `timeout`.
pub fn run_with_timeout(command: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let label = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {label}: {e}"))?;
    // The pipes are drained on their own threads so that a child writing
    // more than a pipe buffer of output cannot block before it exits.
    let stdout = drain(child.stdout.take().expect("stdout is piped"));
    let stderr = drain(child.stderr.take().expect("stderr is piped"));
    let mut guard = ChildGuard::new(child, label.clone());
    let status = guard
        .wait_timeout(timeout)
        .ok_or_else(|| anyhow::anyhow!("{label} did not finish within {timeout:?}"))?;
    Ok(Output {
        status,
        stdout: stdout.join().expect("the stdout reader does not panic"),
        stderr: stderr.join().expect("the stderr reader does not panic"),
    })
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// The last `lines` lines of a text file, or a note saying why there are
/// none, for failure messages.
pub fn tail_of_file(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_tree_kills_grandchildren() {
        // A shell that starts a background sleeper and reports its pid, then
        // waits: killing the shell's tree must take the sleeper with it.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("sleep 600 & echo $!; wait")
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh starts");
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let mut guard = ChildGuard::new(child, "sh");
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).expect("read the pid") == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let grandchild: u32 = String::from_utf8(line)
            .expect("utf-8")
            .trim()
            .parse()
            .expect("a pid");
        assert!(Path::new(&format!("/proc/{grandchild}")).exists());
        guard.kill();
        // The sleeper was reparented when the shell died; once killed it is
        // reaped by its new parent, so wait for its /proc entry to go or to
        // show a zombie.
        crate::wait_until(
            Instant::now() + Duration::from_secs(10),
            "the grandchild to die",
            || match std::fs::read_to_string(format!("/proc/{grandchild}/stat")) {
                Err(_) => true,
                Ok(stat) => stat[stat.rfind(')').unwrap() + 1..]
                    .trim_start()
                    .starts_with('Z'),
            },
        );
    }

    #[test]
    fn run_with_timeout_kills_a_slow_command() {
        let started = Instant::now();
        let err = run_with_timeout(Command::new("sleep").arg("600"), Duration::from_millis(200))
            .expect_err("sleep 600 cannot finish in 200 ms");
        assert!(err.to_string().contains("did not finish"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn run_with_timeout_captures_output() {
        let out = run_with_timeout(
            Command::new("sh")
                .arg("-c")
                .arg("echo out; echo err >&2; exit 3"),
            Duration::from_secs(30),
        )
        .expect("sh runs");
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }
}
