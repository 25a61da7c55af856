//! Schedulers and nodes running as real processes on loopback, and the
//! environment that points a cargo build at them.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use distcc_rs_proto::message::FarmStatus;

use crate::bins;
use crate::netns::NetNs;
use crate::process::{ChildGuard, run_with_timeout, tail_of_file};

/// How long a daemon may take to print its readiness line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `distcc-rs status` may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(20);
/// How many of a daemon's last stdout lines are kept for error messages.
const TAIL_LINES: usize = 50;

/// What the harness knows of each farm it started a scheduler for: how to
/// join it. Nodes and clients started against a scheduler enroll with its
/// token through the real `--join-token` / `DISTCC_RS_JOIN_TOKEN` path.
#[derive(Debug, Clone)]
struct FarmRecord {
    addr: SocketAddr,
    farm: String,
    token: String,
    state_dir: PathBuf,
}

static FARMS: Mutex<Vec<FarmRecord>> = Mutex::new(Vec::new());

fn farms() -> std::sync::MutexGuard<'static, Vec<FarmRecord>> {
    FARMS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Remembers a started scheduler, replacing what was known of its address
/// or state directory (a restarted scheduler keeps both).
fn record_farm(record: FarmRecord) {
    let mut farms = farms();
    farms.retain(|f| f.addr != record.addr && f.state_dir != record.state_dir);
    farms.push(record);
}

/// The join token of the farm whose scheduler state is in `state_dir`, as
/// `distcc-rs-scheduler token` prints it (creating the farm's CA if no
/// scheduler ran there yet, so that a node can be given the token of a farm
/// whose scheduler starts later).
pub fn token_of_state(state_dir: &Path) -> String {
    std::fs::create_dir_all(state_dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", state_dir.display()));
    let mut command = Command::new(bins::binary(bins::SCHEDULER));
    command
        .arg("--config")
        .arg("/dev/null")
        .arg("token")
        .arg("--state-dir")
        .arg(state_dir);
    let output = run_with_timeout(&mut command, STATUS_TIMEOUT)
        .unwrap_or_else(|e| panic!("`distcc-rs-scheduler token` did not run: {e:#}"));
    assert!(
        output.status.success(),
        "`distcc-rs-scheduler token` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("a token is text")
        .trim()
        .to_owned()
}

/// The join token of the farm whose scheduler listens on `scheduler`.
pub fn join_token(scheduler: SocketAddr) -> String {
    farm_record(scheduler).token
}

/// Like [`join_token`], but `None` for an address no scheduler of this run
/// listens on (a test of a farm that is down).
fn known_token(scheduler: SocketAddr) -> Option<String> {
    find_farm(scheduler).map(|f| f.token)
}

/// A `distcc-rs` command (for `status`, `monitor`, `stats`) run as a
/// client of the farm whose scheduler listens on `scheduler`.
pub fn client_command(scheduler: SocketAddr) -> Command {
    let mut command = Command::new(bins::binary(bins::CLIENT));
    member_of(&mut command, &farm_record(scheduler));
    command
}

fn farm_record(scheduler: SocketAddr) -> FarmRecord {
    find_farm(scheduler)
        .unwrap_or_else(|| panic!("no scheduler was started on {scheduler} by this test run"))
}

fn find_farm(scheduler: SocketAddr) -> Option<FarmRecord> {
    farms().iter().rev().find(|f| f.addr == scheduler).cloned()
}

/// The most recently started scheduler of the farm named `farm`.
fn farm_named(farm: &str) -> FarmRecord {
    farms()
        .iter()
        .rev()
        .find(|f| f.farm == farm)
        .cloned()
        .unwrap_or_else(|| panic!("no scheduler of farm {farm:?} was started by this test run"))
}

/// The farm name a scheduler's arguments choose.
fn farm_of_args(args: &[&str]) -> String {
    args.windows(2)
        .find(|w| w[0] == "--netname")
        .map_or_else(|| "default".to_owned(), |w| w[1].to_owned())
}

/// A daemon process: its guard, the tail of its stdout, and its log file.
#[derive(Debug)]
struct Daemon {
    guard: ChildGuard,
    stdout_tail: Arc<Mutex<VecDeque<String>>>,
    stderr_log: PathBuf,
}

impl Daemon {
    /// Starts `command` with stdout piped and stderr written to `stderr_log`,
    /// and waits until it prints a line for which `ready` returns a value.
    fn spawn<T>(
        command: Command,
        label: &str,
        stderr_log: PathBuf,
        mut ready: impl FnMut(&str) -> Option<T>,
    ) -> (Daemon, T) {
        let (mut daemon, lines_rx) = Daemon::start(command, label, stderr_log);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let timeout = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(timeout) {
                Ok(line) => {
                    if let Some(value) = ready(&line) {
                        return (daemon, value);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let diagnostics = daemon.diagnostics();
                    panic!(
                        "{label} printed no readiness line within {STARTUP_TIMEOUT:?}\n{diagnostics}"
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = daemon.guard.wait_timeout(Duration::from_secs(10));
                    let diagnostics = daemon.diagnostics();
                    panic!(
                        "{label} closed its stdout before it was ready (exit status {status:?})\n{diagnostics}"
                    );
                }
            }
        }
    }

    /// Starts `command` with stdout piped and stderr written to
    /// `stderr_log`, without waiting for anything. The returned channel
    /// carries its stdout lines.
    fn start(
        mut command: Command,
        label: &str,
        stderr_log: PathBuf,
    ) -> (Daemon, mpsc::Receiver<String>) {
        // Appending keeps the log of an earlier run of the same daemon (a
        // scheduler killed and restarted by a test) for the failure report.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", stderr_log.display()));
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label} ({command:?}): {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let daemon = Daemon {
            guard: ChildGuard::new(child, label),
            stdout_tail: Arc::new(Mutex::new(VecDeque::new())),
            stderr_log,
        };

        // The reader thread keeps draining stdout for the daemon's whole life
        // (a full pipe would block the daemon) and forwards lines to us until
        // we stop listening. It ends when the daemon's stdout closes.
        let (lines_tx, lines_rx) = mpsc::channel();
        let tail = Arc::clone(&daemon.stdout_tail);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                {
                    let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line.clone());
                }
                let _ = lines_tx.send(line);
            }
        });
        (daemon, lines_rx)
    }

    /// Whether the daemon has printed a stdout line containing `text`.
    fn printed(&self, text: &str) -> bool {
        self.stdout_tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|line| line.contains(text))
    }

    /// What the daemon has logged on stderr so far.
    fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stderr_log).unwrap_or_default()).into_owned()
    }

    /// The last lines of the daemon's stdout and stderr.
    fn diagnostics(&self) -> String {
        let stdout: Vec<String> = self
            .stdout_tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        format!(
            "--- {} stdout (last lines) ---\n{}\n--- stderr ({}) ---\n{}",
            self.guard.label(),
            stdout.join("\n"),
            self.stderr_log.display(),
            tail_of_file(&self.stderr_log, 40),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // When a test fails, what the daemons said is usually the reason;
        // libtest shows captured output of failed tests only.
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
    }
}

/// A running `distcc-rs-scheduler`, killed when dropped.
#[derive(Debug)]
pub struct Scheduler {
    daemon: Daemon,
    addr: SocketAddr,
}

impl Scheduler {
    /// Starts a scheduler on a free loopback port with its state under
    /// `dir/scheduler`, and waits until it says it is listening.
    pub fn start(dir: &Path) -> Scheduler {
        Scheduler::start_with_args(dir, &[])
    }

    /// Like [`Scheduler::start`], with extra command-line arguments.
    pub fn start_with_args(dir: &Path, extra_args: &[&str]) -> Scheduler {
        Scheduler::spawn(dir, "127.0.0.1:0", extra_args)
    }

    /// Starts a scheduler on a given address, e.g. the one of a scheduler
    /// that was killed, with the same state directory.
    pub fn start_on(dir: &Path, listen: SocketAddr) -> Scheduler {
        Scheduler::spawn(dir, &listen.to_string(), &[])
    }

    /// Starts a scheduler inside `netns` with mDNS on, listening on every
    /// interface of the namespace, with its state under `dir/scheduler`, and
    /// waits until it says it is listening. Its address is the loopback
    /// one, which is how everything else in the namespace reaches it.
    pub fn start_in(netns: &NetNs, dir: &Path, extra_args: &[&str]) -> Scheduler {
        let state_dir = dir.join("scheduler");
        std::fs::create_dir_all(&state_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", state_dir.display()));
        let mut command = netns.command(bins::binary(bins::SCHEDULER));
        command
            // The farm is the test's to choose, not the developer's shell's.
            .env_remove("DISTCC_RS_NETNAME")
            // Nor is a config file in /etc the test's to inherit.
            .arg("--config")
            .arg("/dev/null")
            .arg("--listen")
            .arg("0.0.0.0:0")
            .arg("--state-dir")
            .arg(&state_dir)
            .args(extra_args);
        let (daemon, addr) = Daemon::spawn(
            command,
            "scheduler",
            dir.join("scheduler.log"),
            parse_listening_line,
        );
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()));
        Scheduler::recorded(daemon, addr, state_dir, extra_args)
    }

    /// Notes the farm's join token for the nodes and clients started
    /// against this scheduler.
    fn recorded(
        daemon: Daemon,
        addr: SocketAddr,
        state_dir: PathBuf,
        extra_args: &[&str],
    ) -> Scheduler {
        record_farm(FarmRecord {
            addr,
            farm: farm_of_args(extra_args),
            token: token_of_state(&state_dir),
            state_dir,
        });
        Scheduler { daemon, addr }
    }

    /// The farm's join token.
    pub fn token(&self) -> String {
        join_token(self.addr)
    }

    /// The scheduler's state directory.
    pub fn state_dir(&self) -> PathBuf {
        farm_record(self.addr).state_dir
    }

    /// Runs a membership command (`token`, `certs`, `revoke WHO`) on this
    /// scheduler's state, as its admin would, and returns its stdout.
    pub fn admin(&self, args: &[&str]) -> String {
        let mut command = Command::new(bins::binary(bins::SCHEDULER));
        command
            .arg("--config")
            .arg("/dev/null")
            .args(args)
            .arg("--state-dir")
            .arg(self.state_dir());
        let output = run_with_timeout(&mut command, STATUS_TIMEOUT)
            .unwrap_or_else(|e| panic!("`distcc-rs-scheduler {args:?}` did not run: {e:#}"));
        assert!(
            output.status.success(),
            "`distcc-rs-scheduler {args:?}` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn spawn(dir: &Path, listen: &str, extra_args: &[&str]) -> Scheduler {
        let state_dir = dir.join("scheduler");
        std::fs::create_dir_all(&state_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", state_dir.display()));
        let mut command = Command::new(bins::binary(bins::SCHEDULER));
        command
            // The farm is the test's to choose, not the developer's shell's.
            .env_remove("DISTCC_RS_NETNAME")
            // Nor is a config file in /etc the test's to inherit.
            .arg("--config")
            .arg("/dev/null")
            // mDNS must never run on the host's real interfaces; only tests
            // inside a network namespace of their own use it.
            .arg("--no-mdns")
            .arg("--listen")
            .arg(listen)
            .arg("--state-dir")
            .arg(&state_dir)
            .args(extra_args);
        let (daemon, addr) = Daemon::spawn(
            command,
            "scheduler",
            dir.join("scheduler.log"),
            parse_listening_line,
        );
        Scheduler::recorded(daemon, addr, state_dir, extra_args)
    }

    /// The address the scheduler accepts connections on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Kills the scheduler immediately (SIGKILL).
    pub fn kill(&mut self) {
        self.daemon.guard.kill();
    }

    /// What the scheduler has logged so far.
    pub fn log(&self) -> String {
        self.daemon.log()
    }
}

/// A running `distcc-rs-node`, killed when dropped.
#[derive(Debug)]
pub struct Node {
    daemon: Daemon,
    name: String,
    addr: Option<SocketAddr>,
}

impl Node {
    /// Starts a node with two slots, registered with the scheduler at
    /// `scheduler`, its work directory under `dir/node-<name>`, and waits
    /// until it says it is registered.
    ///
    /// The node runs with an emptied environment (a system `PATH`, `HOME`
    /// set to its work directory, and `RUST_LOG` if the test has one), so it
    /// cannot lean on the Rust installation of the machine it runs on: it has
    /// to use the toolchain bundle it fetched.
    pub fn start(dir: &Path, scheduler: SocketAddr, name: &str, extra_args: &[&str]) -> Node {
        let command = Node::dialling(scheduler, extra_args);
        Node::spawn_registered(command, dir, name, extra_args)
    }

    /// Like [`Node::start`], but returns at once: for a node that is not
    /// expected to join (see [`Node::wait_exit`]). A `--join-token` in
    /// `extra_args` replaces the farm's.
    pub fn spawn(dir: &Path, scheduler: SocketAddr, name: &str, extra_args: &[&str]) -> Node {
        let command = Node::dialling(scheduler, extra_args);
        let (command, log) = Node::configure(command, dir, name, extra_args);
        let (daemon, _lines) = Daemon::start(command, &format!("node {name}"), log);
        Node {
            daemon,
            name: name.to_owned(),
            addr: None,
        }
    }

    /// A node command that dials `scheduler` and enrolls with its farm's
    /// token, unless `extra_args` brings a token of its own.
    fn dialling(scheduler: SocketAddr, extra_args: &[&str]) -> Command {
        let mut command = Command::new(bins::binary(bins::NODE));
        command
            // mDNS must never run on the host's real interfaces; only tests
            // inside a network namespace of their own use it.
            .arg("--no-mdns")
            .arg("--scheduler")
            .arg(scheduler.to_string())
            .arg("--listen")
            .arg("127.0.0.1:0");
        if !extra_args.contains(&"--join-token") {
            command.arg("--join-token").arg(join_token(scheduler));
        }
        command
    }

    /// Waits up to `timeout` for the node to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.daemon.guard.wait_timeout(timeout)
    }

    /// Starts a node inside `netns` with mDNS on and no scheduler address,
    /// and waits until a scheduler has found and adopted it. It joins with
    /// the token of the farm whose scheduler state is in `dir/scheduler`,
    /// and finds that scheduler over mDNS to enroll.
    pub fn start_in(netns: &NetNs, dir: &Path, name: &str, extra_args: &[&str]) -> Node {
        let mut command = netns.command(bins::binary(bins::NODE));
        command
            .arg("--listen")
            .arg("0.0.0.0:0")
            .arg("--join-token")
            .arg(token_of_state(&dir.join("scheduler")));
        Node::spawn_registered(command, dir, name, extra_args)
    }

    /// Like [`Node::start_in`], but returns at once: for a node that no
    /// scheduler is expected to adopt yet. See [`Node::has_registered`].
    pub fn spawn_in(netns: &NetNs, dir: &Path, name: &str, extra_args: &[&str]) -> Node {
        let mut command = netns.command(bins::binary(bins::NODE));
        command
            .arg("--listen")
            .arg("0.0.0.0:0")
            .arg("--join-token")
            .arg(token_of_state(&dir.join("scheduler")));
        let (command, log) = Node::configure(command, dir, name, extra_args);
        let (daemon, _lines) = Daemon::start(command, &format!("node {name}"), log);
        Node {
            daemon,
            name: name.to_owned(),
            addr: None,
        }
    }

    fn spawn_registered(command: Command, dir: &Path, name: &str, extra_args: &[&str]) -> Node {
        let (command, log) = Node::configure(command, dir, name, extra_args);
        let (daemon, addr) = Daemon::spawn(command, &format!("node {name}"), log, |line| {
            line.contains("registered")
                .then(|| parse_listening_line(line))
        });
        Node {
            daemon,
            name: name.to_owned(),
            addr,
        }
    }

    /// Adds what every test node shares to `command` (which runs the node
    /// binary, directly or through `ip netns exec`): an emptied environment,
    /// a work directory under `dir/node-<name>`, the name and two slots.
    /// Returns the command and the node's log file.
    fn configure(
        mut command: Command,
        dir: &Path,
        name: &str,
        extra_args: &[&str],
    ) -> (Command, PathBuf) {
        let work_dir = dir.join(format!("node-{name}"));
        std::fs::create_dir_all(&work_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", work_dir.display()));
        let_the_job_user_in(&work_dir);
        command
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", &work_dir);
        if let Some(filter) = std::env::var_os("RUST_LOG") {
            command.env("RUST_LOG", filter);
        }
        command
            // A config file in /etc is not the test's to inherit.
            .arg("--config")
            .arg("/dev/null")
            .arg("--work-dir")
            .arg(&work_dir)
            .arg("--name")
            .arg(name);
        // Two slots unless the test chose its own number.
        if !extra_args.iter().any(|a| a.starts_with("--slots")) {
            command.arg("--slots").arg("2");
        }
        command.args(extra_args);
        (command, dir.join(format!("node-{name}.log")))
    }

    /// Whether the node has printed its "registered with" line.
    pub fn has_registered(&self) -> bool {
        self.daemon.printed("registered with")
    }

    /// What the node has logged so far.
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address the node accepts jobs on, if its readiness line said.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Kills the node and everything it started immediately (SIGKILL), as if
    /// its machine had lost power.
    pub fn kill(&mut self) {
        self.daemon.guard.kill();
    }
}

/// Makes `dir` and every directory above it that this process owns
/// traversable by other users. A node started as root runs its jobs as an
/// unprivileged user (`nobody`), which must reach the job directories under
/// the node's work directory; test directories are private temporary ones.
fn let_the_job_user_in(dir: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    for ancestor in dir.ancestors() {
        let Ok(meta) = std::fs::metadata(ancestor) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if Some(meta.uid()) == me && mode & 0o001 == 0 {
            std::fs::set_permissions(ancestor, std::fs::Permissions::from_mode(mode | 0o011))
                .unwrap_or_else(|e| panic!("cannot open up {}: {e}", ancestor.display()));
        }
    }
}

/// Parses the address from a line like `... listening on 127.0.0.1:4000` or
/// `... listening on 127.0.0.1:4000, registered with ...`.
fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.rsplit_once("listening on ")?;
    let word = rest.split_whitespace().next()?;
    word.trim_end_matches([',', ';', '.']).parse().ok()
}

/// A loopback port with nothing listening on it, for pointing clients at a
/// scheduler that is down. The farm speaks QUIC, so the port is a UDP one;
/// it is free once the probing socket is dropped (another process could take
/// it in between, which on a test machine is unlikely enough).
pub fn free_loopback_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket on loopback");
    socket
        .local_addr()
        .expect("a bound socket has an address")
        .port()
}

/// Asks the scheduler for the farm's status with `distcc-rs status --json`.
pub fn try_status(scheduler: SocketAddr) -> anyhow::Result<FarmStatus> {
    let mut command = client_command(scheduler);
    command
        .arg("status")
        .arg("--scheduler")
        .arg(scheduler.to_string())
        .arg("--json");
    query_status(command)
}

/// Runs `distcc-rs status --json` inside `netns` with no address, so that
/// it finds the scheduler of farm `farm` over mDNS.
pub fn try_status_discovered(netns: &NetNs, farm: &str) -> anyhow::Result<FarmStatus> {
    let mut command = netns.command(bins::binary(bins::CLIENT));
    member_of(&mut command, &farm_named(farm));
    command
        .env_remove("DISTCC_RS_SCHEDULER")
        .env_remove("DISTCC_RS_MDNS")
        .env("DISTCC_RS_NETNAME", farm)
        .arg("status")
        .arg("--json");
    query_status(command)
}

/// Like [`try_status_discovered`], panicking on failure.
pub fn status_discovered(netns: &NetNs, farm: &str) -> FarmStatus {
    try_status_discovered(netns, farm).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Makes `distcc-rs status` a client of `farm`: its credentials live next
/// to the scheduler's state, enrolled on first use with the farm's token.
fn member_of(command: &mut Command, farm: &FarmRecord) {
    let identity = farm
        .state_dir
        .parent()
        .unwrap_or(&farm.state_dir)
        .join("status-client-identity");
    command
        .env("DISTCC_RS_CONFIG", "/dev/null")
        .env("DISTCC_RS_JOIN_TOKEN", &farm.token)
        .env("DISTCC_RS_IDENTITY_DIR", identity);
}

fn query_status(mut command: Command) -> anyhow::Result<FarmStatus> {
    let output = run_with_timeout(&mut command, STATUS_TIMEOUT)?;
    anyhow::ensure!(
        output.status.success(),
        "`distcc-rs status` failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "`distcc-rs status --json` printed something that is not a FarmStatus: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// Like [`try_status`], panicking on failure.
pub fn status(scheduler: SocketAddr) -> FarmStatus {
    try_status(scheduler).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Everything a cargo build needs to compile through the farm.
#[derive(Debug, Clone)]
pub struct FarmEnv {
    /// Where the client finds the scheduler; `None` to let it look over
    /// mDNS (only inside a [`NetNs`]).
    pub scheduler: Option<SocketAddr>,
    /// The client's cache (packed toolchains).
    pub cache_dir: PathBuf,
    /// Where the client's event log and debug log go.
    pub log_dir: PathBuf,
    /// The farm's join token, with which the client enrolls on its first
    /// compile; `None` for a client that is not a member.
    pub token: Option<String>,
    /// Where the client keeps its certificate.
    pub identity_dir: PathBuf,
    /// Further variables for the client, set after the standard ones.
    pub extra_env: Vec<(String, String)>,
}

impl FarmEnv {
    /// A farm environment using the run's shared cache, logging into
    /// `log_dir` (which is created).
    pub fn new(scheduler: SocketAddr, log_dir: &Path) -> FarmEnv {
        FarmEnv {
            scheduler: Some(scheduler),
            token: known_token(scheduler),
            ..FarmEnv::with_logs(log_dir)
        }
    }

    /// A farm environment without a scheduler address: the client finds the
    /// scheduler of the `default` farm over mDNS. Only for builds inside a
    /// [`NetNs`] (see [`crate::cargo_build_in`]).
    pub fn discovering(log_dir: &Path) -> FarmEnv {
        FarmEnv {
            token: Some(farm_named("default").token),
            ..FarmEnv::with_logs(log_dir)
        }
    }

    fn with_logs(log_dir: &Path) -> FarmEnv {
        std::fs::create_dir_all(log_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_dir.display()));
        FarmEnv {
            scheduler: None,
            cache_dir: bins::shared_cache_dir(),
            log_dir: log_dir.to_path_buf(),
            token: None,
            identity_dir: log_dir.join("identity"),
            extra_env: Vec::new(),
        }
    }

    /// The file the client appends one JSON line per invocation to.
    pub fn events_path(&self) -> PathBuf {
        self.log_dir.join("events.jsonl")
    }

    /// The client's debug log.
    pub fn client_log_path(&self) -> PathBuf {
        self.log_dir.join("client.log")
    }

    /// The environment variables that make cargo compile through the farm.
    pub fn vars(&self) -> Vec<(String, String)> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let mut vars = vec![
            (
                "RUSTC_WRAPPER".to_owned(),
                path(&bins::binary(bins::CLIENT)),
            ),
            ("DISTCC_RS_CACHE_DIR".to_owned(), path(&self.cache_dir)),
            // The developer's own client.toml is not the test's to inherit.
            ("DISTCC_RS_CONFIG".to_owned(), "/dev/null".to_owned()),
            ("DISTCC_RS_EVENTS".to_owned(), path(&self.events_path())),
            ("DISTCC_RS_LOG".to_owned(), "debug".to_owned()),
            (
                "DISTCC_RS_LOG_FILE".to_owned(),
                path(&self.client_log_path()),
            ),
            (
                "DISTCC_RS_IDENTITY_DIR".to_owned(),
                path(&self.identity_dir),
            ),
        ];
        if let Some(token) = &self.token {
            vars.push(("DISTCC_RS_JOIN_TOKEN".to_owned(), token.clone()));
        }
        match self.scheduler {
            Some(scheduler) => vars.extend([
                ("DISTCC_RS_SCHEDULER".to_owned(), scheduler.to_string()),
                // A client must never look for a scheduler over mDNS on the
                // host's interfaces, whatever a test does with the address.
                ("DISTCC_RS_MDNS".to_owned(), "0".to_owned()),
            ]),
            None => vars.push(("DISTCC_RS_NETNAME".to_owned(), "default".to_owned())),
        }
        vars.extend(self.extra_env.iter().cloned());
        vars
    }

    /// The client's events so far.
    pub fn events(&self) -> Vec<crate::Event> {
        crate::read_events(&self.events_path())
    }

    /// The end of the client's debug log, for failure messages: the last
    /// `lines` lines from distcc-rs itself and warnings or errors from
    /// anything, leaving out the TLS and QUIC libraries' debug chatter.
    pub fn client_log_tail(&self, lines: usize) -> String {
        let path = self.client_log_path();
        let text = match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => return format!("<cannot read {}: {e}>", path.display()),
        };
        let relevant: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("distcc_rs") || l.contains("WARN") || l.contains("ERROR"))
            .collect();
        format!(
            "({}, filtered)\n{}",
            path.display(),
            relevant[relevant.len().saturating_sub(lines)..].join("\n")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_readiness_lines() {
        assert_eq!(
            parse_listening_line("distcc-rs-scheduler listening on 127.0.0.1:4433"),
            Some("127.0.0.1:4433".parse().unwrap())
        );
        assert_eq!(
            parse_listening_line(
                "distcc-rs-node n1 listening on 127.0.0.1:5000, registered with 127.0.0.1:4433"
            ),
            Some("127.0.0.1:5000".parse().unwrap())
        );
        assert_eq!(
            parse_listening_line("listening on [::1]:7000"),
            Some("[::1]:7000".parse().unwrap())
        );
        assert_eq!(parse_listening_line("starting up"), None);
    }

    #[test]
    fn free_port_is_nonzero() {
        assert_ne!(free_loopback_port(), 0);
    }
}
