//! Per-job resource limits: what to write into a job's cgroup (v1 and v2)
//! or which rlimits to set (pure), how this machine enforces them, and the
//! job cgroups themselves (IO).
//!
//! A job gets a cgroup of its own when the node may create cgroups: root on
//! a cgroup v1 or hybrid host (as the test machines are), or a cgroup v2
//! subtree delegated to the node (systemd's `Delegate=yes`). Otherwise the
//! limits fall back to rlimits, which bound each process rather than the
//! job: the memory limit then applies to each process's data segment, the
//! process limit counts every process of the job user (all jobs together),
//! and the CPU limit becomes CPU seconds (the job timeout times the cores).
//! The launcher ([`crate::launcher`]) puts itself into the job's cgroup, or
//! sets the rlimits, before it starts bubblewrap, so no code of the job
//! ever runs unlimited.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::warn;

/// Where cgroup file systems are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The name of the cgroup under which the node creates its jobs' cgroups.
pub const NODE_CGROUP: &str = "distcc-rs-node";

/// The CFS period the CPU quota is expressed in: the kernel's default.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The smallest CFS quota the kernel accepts.
const MIN_CPU_QUOTA_US: u64 = 1_000;

/// How long cleaning up a job's cgroup waits for its processes to die.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The limits every job runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of memory (without swap).
    pub memory: u64,
    /// CPU time per wall-clock time, in thousandths of a core.
    pub cpu_millis: u32,
    /// Processes and threads together.
    pub pids: u32,
}

/// A cgroup controller the limits use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Controller {
    Memory,
    Cpu,
    Pids,
}

impl Controller {
    pub const ALL: [Controller; 3] = [Controller::Memory, Controller::Cpu, Controller::Pids];

    /// The controller's name in `/proc/self/cgroup`, `cgroup.controllers`
    /// and (on v1) its mount point under [`CGROUP_ROOT`].
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Pids => "pids",
        }
    }
}

/// One value written into a file of a job's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub controller: Controller,
    pub file: &'static str,
    pub value: String,
    /// Whether the file may be missing: swap accounting is a kernel option,
    /// and without it there is no swap to limit.
    pub optional: bool,
}

fn setting(controller: Controller, file: &'static str, value: String, optional: bool) -> Setting {
    Setting {
        controller,
        file,
        value,
        optional,
    }
}

impl Limits {
    /// The CFS quota per [`CPU_PERIOD_US`].
    pub fn cpu_quota_us(&self) -> u64 {
        (u64::from(self.cpu_millis) * CPU_PERIOD_US / 1000).max(MIN_CPU_QUOTA_US)
    }

    /// The files of a cgroup v1 job cgroup, in the order they must be
    /// written: the memory limit before the memory+swap limit, which may
    /// never be below it, and the period before the quota.
    pub fn v1_settings(&self) -> Vec<Setting> {
        vec![
            setting(
                Controller::Memory,
                "memory.limit_in_bytes",
                self.memory.to_string(),
                false,
            ),
            // Equal to the memory limit: no swap on top of it, so a job
            // that outgrows its memory is killed rather than swapping the
            // node to a crawl.
            setting(
                Controller::Memory,
                "memory.memsw.limit_in_bytes",
                self.memory.to_string(),
                true,
            ),
            setting(
                Controller::Cpu,
                "cpu.cfs_period_us",
                CPU_PERIOD_US.to_string(),
                false,
            ),
            setting(
                Controller::Cpu,
                "cpu.cfs_quota_us",
                self.cpu_quota_us().to_string(),
                false,
            ),
            setting(Controller::Pids, "pids.max", self.pids.to_string(), false),
        ]
    }

    /// The files of a cgroup v2 job cgroup.
    pub fn v2_settings(&self) -> Vec<Setting> {
        vec![
            setting(
                Controller::Memory,
                "memory.max",
                self.memory.to_string(),
                false,
            ),
            setting(Controller::Memory, "memory.swap.max", "0".into(), true),
            setting(
                Controller::Cpu,
                "cpu.max",
                format!("{} {CPU_PERIOD_US}", self.cpu_quota_us()),
                false,
            ),
            setting(Controller::Pids, "pids.max", self.pids.to_string(), false),
        ]
    }

    /// The rlimits that stand in for the cgroup limits when there are no
    /// cgroups: processes, data segment, and CPU seconds for a job that
    /// could use its cores for the whole `timeout`.
    pub fn rlimits(&self, timeout: Duration) -> Vec<(Rlimit, u64)> {
        let cpu_secs = (timeout.as_secs() * u64::from(self.cpu_millis)).div_ceil(1000);
        vec![
            (Rlimit::Nproc, u64::from(self.pids)),
            (Rlimit::Data, self.memory),
            (Rlimit::Cpu, cpu_secs.max(1)),
        ]
    }
}

/// An rlimit the launcher sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rlimit {
    /// RLIMIT_NPROC: processes and threads of the user.
    Nproc,
    /// RLIMIT_DATA: the data segment and private writable mappings. Unlike
    /// RLIMIT_AS it does not count address space rustc reserves but never
    /// touches.
    Data,
    /// RLIMIT_CPU: CPU seconds of one process.
    Cpu,
}

impl Rlimit {
    pub fn name(self) -> &'static str {
        match self {
            Rlimit::Nproc => "nproc",
            Rlimit::Data => "data",
            Rlimit::Cpu => "cpu",
        }
    }

    pub fn from_name(name: &str) -> Option<Rlimit> {
        [Rlimit::Nproc, Rlimit::Data, Rlimit::Cpu]
            .into_iter()
            .find(|r| r.name() == name)
    }
}

/// How this machine enforces the limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    /// One hierarchy per controller; each path is the directory under which
    /// job cgroups are created for that controller.
    CgroupV1(Vec<(Controller, PathBuf)>),
    /// The unified hierarchy; job cgroups are created under this directory,
    /// whose `cgroup.subtree_control` enables the three controllers.
    CgroupV2(PathBuf),
    /// rlimits, with the reason cgroups cannot be used.
    Rlimits(String),
}

impl Mechanism {
    /// A description for the start-up log.
    pub fn describe(&self) -> String {
        match self {
            Mechanism::CgroupV1(bases) => {
                let dirs: Vec<String> =
                    bases.iter().map(|(_, p)| p.display().to_string()).collect();
                format!("cgroup v1 ({})", dirs.join(", "))
            }
            Mechanism::CgroupV2(base) => format!("cgroup v2 ({})", base.display()),
            Mechanism::Rlimits(why) => format!("rlimits per process (no cgroups: {why})"),
        }
    }
}

/// The cgroup paths of a process, from `/proc/<pid>/cgroup`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OwnCgroups {
    /// The path in the unified hierarchy (`0::/path`).
    pub unified: Option<String>,
    /// The path in each v1 hierarchy, by controller name.
    pub v1: Vec<(String, String)>,
}

impl OwnCgroups {
    /// Parses the text of `/proc/self/cgroup`: `ID:CONTROLLERS:PATH` lines,
    /// where a v1 hierarchy may carry several controllers (`cpu,cpuacct`).
    pub fn parse(text: &str) -> OwnCgroups {
        let mut own = OwnCgroups::default();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if id == "0" && controllers.is_empty() {
                own.unified = Some(path.to_owned());
            } else {
                for c in controllers.split(',').filter(|c| !c.is_empty()) {
                    own.v1.push((c.to_owned(), path.to_owned()));
                }
            }
        }
        own
    }

    /// The path of this process in the v1 hierarchy of `controller`.
    pub fn v1_path(&self, controller: Controller) -> Option<&str> {
        self.v1
            .iter()
            .find(|(c, _)| c == controller.name())
            .map(|(_, p)| p.as_str())
    }
}

/// `path` (absolute, as in `/proc/self/cgroup`) under `mount`, or `mount`
/// itself when that directory is not there (a cgroup namespace shows paths
/// relative to its own root, which is then what is mounted).
fn own_dir(mount: &Path, path: &str) -> PathBuf {
    let dir = mount.join(path.trim_start_matches('/'));
    if dir.is_dir() {
        dir
    } else {
        mount.to_path_buf()
    }
}

/// Finds out how limits can be enforced here and prepares the node's own
/// cgroups, removing job cgroups a previous run of the same node left
/// behind. `node` names this node's cgroup under [`NODE_CGROUP`] (several
/// nodes may share a machine, and one must not remove the others' jobs).
/// Never fails: whatever stands in the way of cgroups is the reason rlimits
/// are used.
pub fn detect(root: &Path, own: &OwnCgroups, node: &str) -> Mechanism {
    let attempt = if root.join("cgroup.controllers").is_file() {
        setup_v2(root, own, node)
    } else if Controller::ALL.iter().all(|c| root.join(c.name()).is_dir()) {
        setup_v1(root, own, node)
    } else {
        Err(format!(
            "{} has neither cgroup v2 controllers nor the v1 memory, cpu and pids hierarchies",
            root.display()
        ))
    };
    match attempt {
        Ok(mechanism) => mechanism,
        Err(why) => Mechanism::Rlimits(why),
    }
}

fn setup_v1(root: &Path, own: &OwnCgroups, node: &str) -> Result<Mechanism, String> {
    let mut bases = Vec::new();
    for controller in Controller::ALL {
        let mount = root.join(controller.name());
        // Under the node's own cgroup, so that limits set on the node (a
        // container's, a service's) still cover its jobs.
        let dir = own_dir(&mount, own.v1_path(controller).unwrap_or("/"));
        let parent = dir.join(NODE_CGROUP);
        let base = parent.join(node);
        join_own_leaf(&base)?;
        sweep_dead_nodes(&parent, node);
        remove_children(&base);
        bases.push((controller, base));
    }
    Ok(Mechanism::CgroupV1(bases))
}

/// The cgroup, under a node's base, that holds the node itself. While it
/// has a process the node is alive; a node killed without a chance to
/// clean up leaves it empty, and the next node to start removes it.
const NODE_LEAF: &str = "node";

/// Creates `base` and its [`NODE_LEAF`] and moves the node into the leaf.
fn join_own_leaf(base: &Path) -> Result<(), String> {
    let leaf = base.join(NODE_LEAF);
    fs::create_dir_all(&leaf).map_err(|e| format!("cannot create {}: {e}", leaf.display()))?;
    let procs = leaf.join("cgroup.procs");
    fs::write(&procs, std::process::id().to_string())
        .map_err(|e| format!("cannot move the node into {}: {e}", procs.display()))
}

/// Removes the cgroups of nodes that are gone (their [`NODE_LEAF`] holds no
/// process) from `parent`, with whatever jobs they left.
fn sweep_dead_nodes(parent: &Path, this: &str) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let base = entry.path();
        if entry.file_name() == this || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let procs = fs::read_to_string(base.join(NODE_LEAF).join("cgroup.procs"));
        if procs.is_ok_and(|p| p.trim().is_empty()) {
            remove_children(&base);
            JobCgroup::cleanup(&[base.join(NODE_LEAF), base]);
        }
    }
}

fn setup_v2(root: &Path, own: &OwnCgroups, node: &str) -> Result<Mechanism, String> {
    let enable = |dir: &Path| {
        let file = dir.join("cgroup.subtree_control");
        fs::write(&file, "+memory +cpu +pids").map_err(|e| {
            format!(
                "cannot enable memory, cpu and pids in {}: {e}",
                file.display()
            )
        })
    };
    let own_path = own.unified.as_deref().unwrap_or("/");
    let base = if own_path == "/" {
        // The root cgroup may hold processes and enable controllers at the
        // same time, so the jobs' parent can sit right under it.
        enable(root)?;
        let parent = root.join(NODE_CGROUP);
        fs::create_dir_all(&parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        enable(&parent)?;
        // Only the node's leaf holds a process, so its base may pass the
        // controllers on to the jobs' cgroups beside the leaf.
        let base = parent.join(node);
        join_own_leaf(&base)?;
        sweep_dead_nodes(&parent, node);
        base
    } else {
        // A delegated subtree (systemd's Delegate=yes): a cgroup with
        // processes in it cannot pass controllers on to children, so the
        // node moves itself into a leaf of its own first, and the jobs go
        // into a sibling.
        let own_dir = own_dir(root, own_path);
        let leaf = own_dir.join("node");
        fs::create_dir_all(&leaf).map_err(|e| format!("cannot create {}: {e}", leaf.display()))?;
        let procs = leaf.join("cgroup.procs");
        fs::write(&procs, std::process::id().to_string())
            .map_err(|e| format!("cannot move the node into {}: {e}", procs.display()))?;
        enable(&own_dir)?;
        let base = own_dir.join("jobs");
        fs::create_dir_all(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
        base
    };
    enable(&base)?;
    let available = fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
    let available: Vec<&str> = available.split_whitespace().collect();
    if let Some(missing) = Controller::ALL
        .iter()
        .find(|c| !available.contains(&c.name()))
    {
        return Err(format!(
            "the {} controller is not available in {}",
            missing.name(),
            base.display()
        ));
    }
    remove_children(&base);
    Ok(Mechanism::CgroupV2(base))
}

/// Removes the job cgroups under `base` that a previous run left behind.
fn remove_children(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name() != NODE_LEAF && entry.file_type().is_ok_and(|t| t.is_dir()) {
            drop(JobCgroup {
                dirs: vec![entry.path()],
            });
        }
    }
}

/// A job's cgroup (one directory per v1 hierarchy, one on v2). Dropping it
/// kills whatever still runs in it and removes it.
#[derive(Debug)]
pub struct JobCgroup {
    dirs: Vec<PathBuf>,
}

impl JobCgroup {
    /// Creates the cgroup `name` for a job and writes its limits. `None`
    /// when the mechanism is rlimits.
    pub fn create(
        mechanism: &Mechanism,
        name: &str,
        limits: &Limits,
    ) -> io::Result<Option<JobCgroup>> {
        let (dirs, settings): (Vec<(Controller, PathBuf)>, Vec<Setting>) = match mechanism {
            Mechanism::CgroupV1(bases) => (
                bases
                    .iter()
                    .map(|(c, base)| (*c, base.join(name)))
                    .collect(),
                limits.v1_settings(),
            ),
            Mechanism::CgroupV2(base) => (
                Controller::ALL
                    .iter()
                    .map(|c| (*c, base.join(name)))
                    .collect(),
                limits.v2_settings(),
            ),
            Mechanism::Rlimits(_) => return Ok(None),
        };
        let mut cgroup = JobCgroup { dirs: Vec::new() };
        for (_, dir) in &dirs {
            if !cgroup.dirs.contains(dir) {
                fs::create_dir(dir)?;
                cgroup.dirs.push(dir.clone());
            }
        }
        for s in settings {
            let Some((_, dir)) = dirs.iter().find(|(c, _)| *c == s.controller) else {
                continue;
            };
            let file = dir.join(s.file);
            if s.optional && !file.exists() {
                continue;
            }
            fs::write(&file, &s.value).map_err(|e| {
                io::Error::new(e.kind(), format!("{} = {}: {e}", file.display(), s.value))
            })?;
        }
        Ok(Some(cgroup))
    }

    /// The `cgroup.procs` files a process writes its pid into to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Which limits the job ran into, as far as the kernel counted: the
    /// process limit refused a fork, or the memory limit killed a process.
    pub fn limits_hit(&self) -> Vec<&'static str> {
        let mut hit = Vec::new();
        let counter = |file: &str, key: &str| -> u64 {
            self.dirs
                .iter()
                .filter_map(|d| fs::read_to_string(d.join(file)).ok())
                .map(|text| event_count(&text, key))
                .sum()
        };
        if counter("pids.events", "max") > 0 {
            hit.push("process limit");
        }
        // v2 counts kills in memory.events, v1 in memory.oom_control.
        if counter("memory.events", "oom_kill") + counter("memory.oom_control", "oom_kill") > 0 {
            hit.push("memory limit");
        }
        hit
    }

    fn cleanup(dirs: &[PathBuf]) {
        let deadline = Instant::now() + CLEANUP_TIMEOUT;
        for dir in dirs {
            loop {
                kill_all(dir);
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() >= deadline => {
                        warn!(cgroup = %dir.display(), cause = %e, "cannot remove a job's cgroup");
                        break;
                    }
                    // Busy: killed processes take a moment to be reaped.
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

/// The number after `key` in a flat-keyed cgroup file (`max 3`).
pub fn event_count(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Kills every process in the cgroup at `dir`: through `cgroup.kill` where
/// the kernel has it (v2), otherwise one pid at a time.
fn kill_all(dir: &Path) {
    let kill_file = dir.join("cgroup.kill");
    if kill_file.exists() && fs::write(&kill_file, "1").is_ok() {
        return;
    }
    let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        let dirs = std::mem::take(&mut self.dirs);
        if dirs.is_empty() {
            return;
        }
        // Waiting for killed processes is blocking work: off the async
        // workers when there is a runtime.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(move || JobCgroup::cleanup(&dirs))),
            Err(_) => JobCgroup::cleanup(&dirs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            memory: 4 << 30,
            cpu_millis: 1500,
            pids: 512,
        }
    }

    fn files(settings: &[Setting]) -> Vec<(&str, &str, &str)> {
        settings
            .iter()
            .map(|s| (s.controller.name(), s.file, s.value.as_str()))
            .collect()
    }

    #[test]
    fn cgroup_v1_files_limit_memory_without_swap_cpu_quota_and_pids() {
        assert_eq!(
            files(&limits().v1_settings()),
            [
                ("memory", "memory.limit_in_bytes", "4294967296"),
                ("memory", "memory.memsw.limit_in_bytes", "4294967296"),
                ("cpu", "cpu.cfs_period_us", "100000"),
                ("cpu", "cpu.cfs_quota_us", "150000"),
                ("pids", "pids.max", "512"),
            ]
        );
        let optional: Vec<&str> = limits()
            .v1_settings()
            .iter()
            .filter(|s| s.optional)
            .map(|s| s.file)
            .collect();
        assert_eq!(optional, ["memory.memsw.limit_in_bytes"]);
    }

    #[test]
    fn cgroup_v2_files_limit_memory_without_swap_cpu_quota_and_pids() {
        assert_eq!(
            files(&limits().v2_settings()),
            [
                ("memory", "memory.max", "4294967296"),
                ("memory", "memory.swap.max", "0"),
                ("cpu", "cpu.max", "150000 100000"),
                ("pids", "pids.max", "512"),
            ]
        );
    }

    #[test]
    fn a_tiny_cpu_share_still_gets_the_smallest_quota_the_kernel_takes() {
        let tiny = Limits {
            cpu_millis: 1,
            ..limits()
        };
        assert_eq!(tiny.cpu_quota_us(), 1_000);
    }

    #[test]
    fn rlimits_stand_in_for_processes_memory_and_cpu_seconds() {
        assert_eq!(
            limits().rlimits(Duration::from_secs(600)),
            [
                (Rlimit::Nproc, 512),
                (Rlimit::Data, 4 << 30),
                (Rlimit::Cpu, 900),
            ]
        );
        for r in [Rlimit::Nproc, Rlimit::Data, Rlimit::Cpu] {
            assert_eq!(Rlimit::from_name(r.name()), Some(r));
        }
        assert_eq!(Rlimit::from_name("as"), None);
    }

    #[test]
    fn own_cgroups_are_read_from_hybrid_and_unified_hosts() {
        let hybrid = OwnCgroups::parse(
            "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/739e\n\
             1:cpu,cpuacct:/user.slice\n0::/\n",
        );
        assert_eq!(hybrid.unified.as_deref(), Some("/"));
        assert_eq!(
            hybrid.v1_path(Controller::Memory),
            Some("/process_api/739e")
        );
        assert_eq!(hybrid.v1_path(Controller::Cpu), Some("/user.slice"));
        assert_eq!(hybrid.v1_path(Controller::Pids), Some("/"));

        let unified = OwnCgroups::parse("0::/system.slice/distcc-rs-node.service\n");
        assert_eq!(
            unified.unified.as_deref(),
            Some("/system.slice/distcc-rs-node.service")
        );
        assert_eq!(unified.v1_path(Controller::Memory), None);
    }

    #[test]
    fn event_counts_are_read_from_flat_keyed_files() {
        assert_eq!(event_count("max 3\n", "max"), 3);
        assert_eq!(
            event_count("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", "oom_kill"),
            2
        );
        assert_eq!(event_count("low 0\nhigh 0\n", "oom_kill"), 0);
    }

    #[test]
    fn detection_without_cgroup_file_systems_falls_back_to_rlimits() {
        let dir = tempfile::tempdir().unwrap();
        let mechanism = detect(dir.path(), &OwnCgroups::default(), "n1");
        assert!(
            matches!(&mechanism, Mechanism::Rlimits(why) if why.contains("neither")),
            "{mechanism:?}"
        );
    }

    #[test]
    fn a_job_cgroup_on_v1_gets_its_limits_and_is_removed_when_dropped() {
        // Plain directories stand in for the hierarchies: the files a
        // kernel would provide are created by hand, except the optional
        // memsw one, whose absence must be tolerated.
        let dir = tempfile::tempdir().unwrap();
        let bases: Vec<(Controller, PathBuf)> = Controller::ALL
            .iter()
            .map(|c| (*c, dir.path().join(c.name())))
            .collect();
        for (_, base) in &bases {
            fs::create_dir_all(base).unwrap();
        }
        let mechanism = Mechanism::CgroupV1(bases.clone());
        let cgroup = JobCgroup::create(&mechanism, "job-1", &limits())
            .unwrap()
            .unwrap();
        let read = |c: &str, f: &str| fs::read_to_string(dir.path().join(c).join("job-1").join(f));
        assert_eq!(
            read("memory", "memory.limit_in_bytes").unwrap(),
            "4294967296"
        );
        assert!(read("memory", "memory.memsw.limit_in_bytes").is_err());
        assert_eq!(read("cpu", "cpu.cfs_quota_us").unwrap(), "150000");
        assert_eq!(read("pids", "pids.max").unwrap(), "512");
        assert_eq!(cgroup.procs_files().len(), 3);
        fs::write(dir.path().join("pids/job-1/pids.events"), "max 7\n").unwrap();
        assert_eq!(cgroup.limits_hit(), ["process limit"]);
        // A real cgroup directory holds only kernel files and is removed
        // with rmdir; here the files must go first.
        for (c, _) in &bases {
            for entry in fs::read_dir(dir.path().join(c.name()).join("job-1")).unwrap() {
                fs::remove_file(entry.unwrap().path()).unwrap();
            }
        }
        drop(cgroup);
        for (c, _) in &bases {
            assert!(!dir.path().join(c.name()).join("job-1").exists());
        }
        assert!(matches!(
            JobCgroup::create(&Mechanism::Rlimits("test".into()), "job-2", &limits()),
            Ok(None)
        ));
    }
}
