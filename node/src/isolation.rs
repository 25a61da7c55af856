//! How jobs are isolated on this node, decided once at start-up: the job
//! user, the limits and how they are enforced, and the check that the whole
//! arrangement works before the node accepts any job.
//!
//! * A node running as root runs every job as an unprivileged job user
//!   (`--job-user`, `nobody` by default): the launcher drops to it before
//!   it starts bubblewrap, which then works as for any unprivileged user,
//!   through a user namespace. The directories the job writes to are
//!   chowned to that user; everything else in the job root is the node's
//!   and read-only.
//! * A node running as an unprivileged user (the systemd unit's
//!   `distcc-rs`) cannot change user: its jobs run as that user, isolated
//!   by bubblewrap's user namespace, and `--job-user` may only name it.
//! * With `--insecure-no-sandbox` none of this applies: no job user, no
//!   limits but the job timeout, no start-up check, and a warning for every
//!   job. bubblewrap still builds the job's view of the file system, since
//!   rustc must see the client's files at the client's paths.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::launcher::{JobUser, Launch};
use crate::limits::{JobCgroup, Limits, Mechanism};
use crate::sandbox::{HOST_SYSTEM_DIRS, SandboxPlan};

/// The job user of a node that runs as root and is given none.
pub const DEFAULT_JOB_USER: &str = "nobody";

/// How long the start-up check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// How jobs run.
#[derive(Debug, Clone)]
pub enum Isolation {
    Hardened(Hardened),
    /// `--insecure-no-sandbox`.
    Insecure,
}

/// The sandbox every job runs in, as the launcher sets it up.
#[derive(Debug, Clone)]
pub struct Hardened {
    /// The node's own binary, which is the launcher.
    pub launcher: PathBuf,
    /// `None` when the node is not root: jobs run as the node's user.
    pub user: Option<JobUser>,
    pub limits: Limits,
    pub mechanism: Mechanism,
    /// The job timeout, which bounds the CPU seconds of the rlimits.
    pub timeout: Duration,
}

impl Isolation {
    /// The user the job's writable directories must belong to, if not the
    /// node's.
    pub fn job_user(&self) -> Option<JobUser> {
        match self {
            Isolation::Hardened(h) => h.user,
            Isolation::Insecure => None,
        }
    }

    /// The command that runs `program` with `args` for a job whose cgroup,
    /// if the limits use cgroups, is `cgroup`.
    pub fn command(
        &self,
        cgroup: Option<&JobCgroup>,
        program: &Path,
        args: &[OsString],
    ) -> (PathBuf, Vec<OsString>) {
        match self {
            Isolation::Insecure => (program.to_path_buf(), args.to_vec()),
            Isolation::Hardened(h) => {
                let launch = Launch {
                    cgroup_procs: cgroup.map(JobCgroup::procs_files).unwrap_or_default(),
                    rlimits: match h.mechanism {
                        Mechanism::Rlimits(_) => h.limits.rlimits(h.timeout),
                        _ => Vec::new(),
                    },
                    user: h.user,
                };
                (h.launcher.clone(), launch.args(program.as_os_str(), args))
            }
        }
    }
}

/// Why the job user cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("--job-user {0:?}: no such user")]
    Unknown(String),
    #[error("--job-user {0:?} is root; jobs must run as an unprivileged user")]
    Root(String),
    #[error(
        "--job-user {spec:?} needs the node to run as root (it runs as uid {euid}); \
         leave it unset and jobs run as the node's own user"
    )]
    NotRoot { spec: String, euid: u32 },
}

/// Decides the job user. `euid` is the node's; `lookup` finds a user name's
/// uid and primary gid. A number (`65534`) or a pair (`65534:65534`) needs
/// no lookup.
pub fn resolve_user(
    spec: Option<&str>,
    euid: u32,
    lookup: &dyn Fn(&str) -> Option<JobUser>,
) -> Result<Option<JobUser>, UserError> {
    if euid != 0 {
        return match spec {
            None => Ok(None),
            Some(s) => match parse_user(s, lookup) {
                Some(u) if u.uid == euid => Ok(None),
                _ => Err(UserError::NotRoot {
                    spec: s.to_owned(),
                    euid,
                }),
            },
        };
    }
    let spec = spec.unwrap_or(DEFAULT_JOB_USER);
    let user = parse_user(spec, lookup).ok_or_else(|| UserError::Unknown(spec.to_owned()))?;
    if user.uid == 0 {
        return Err(UserError::Root(spec.to_owned()));
    }
    Ok(Some(user))
}

fn parse_user(spec: &str, lookup: &dyn Fn(&str) -> Option<JobUser>) -> Option<JobUser> {
    if let Some((uid, gid)) = spec.split_once(':') {
        return Some(JobUser {
            uid: uid.parse().ok()?,
            gid: gid.parse().ok()?,
        });
    }
    if let Ok(uid) = spec.parse() {
        return Some(JobUser { uid, gid: uid });
    }
    lookup(spec)
}

/// Looks a user up in the system's user database.
pub fn lookup_user(name: &str) -> Option<JobUser> {
    let user = nix::unistd::User::from_name(name).ok()??;
    Some(JobUser {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    })
}

/// Gives the job user the directories a job writes to.
pub fn chown_writable(user: Option<JobUser>, dirs: &[PathBuf]) -> io::Result<()> {
    let Some(user) = user else { return Ok(()) };
    for dir in dirs {
        std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid))?;
    }
    Ok(())
}

/// The sandbox does not work.
#[derive(Debug, thiserror::Error)]
#[error(
    "the job sandbox does not work: {what}\n\
     Jobs run in bubblewrap ({bwrap}){user}, with limits enforced by {mechanism}. \
     Install bubblewrap (e.g. `apt-get install bubblewrap`) or pass --bwrap PATH; \
     make sure unprivileged user namespaces are enabled (sysctl user.max_user_namespaces > 0, \
     and kernel.unprivileged_userns_clone=1 where that exists); and make sure the job user \
     can reach {jobs} (every directory above it needs o+x). Or start the node with \
     --insecure-no-sandbox, which runs jobs without the job user and without limits."
)]
pub struct CheckError {
    pub what: String,
    bwrap: String,
    user: String,
    mechanism: String,
    jobs: String,
}

/// Runs `touch` through the exact sandbox, launcher, user and limits of a
/// job, in a job root under `jobs_dir`, and checks that the file appeared
/// in the writable directory, owned by the job user.
pub fn check(hardened: &Hardened, bwrap: &Path, jobs_dir: &Path) -> Result<(), CheckError> {
    let fail = |what: String| CheckError {
        what,
        bwrap: bwrap.display().to_string(),
        user: match hardened.user {
            Some(u) => format!(" as uid {} gid {}", u.uid, u.gid),
            None => " as the node's user".into(),
        },
        mechanism: hardened.mechanism.describe(),
        jobs: jobs_dir.display().to_string(),
    };
    let root = tempfile::Builder::new()
        .prefix("check-")
        .tempdir_in(jobs_dir)
        .map_err(|e| {
            fail(format!(
                "cannot create a directory in {}: {e}",
                jobs_dir.display()
            ))
        })?;
    let out = PathBuf::from("check/out");
    let dirs: Vec<PathBuf> = SandboxPlan::mount_points()
        .iter()
        .chain(HOST_SYSTEM_DIRS.iter())
        .map(PathBuf::from)
        .chain([out.clone()])
        .collect();
    for dir in &dirs {
        fs::create_dir_all(root.path().join(dir))
            .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    }
    let writable = [
        root.path().to_path_buf(),
        root.path().join("tmp"),
        root.path().join(&out),
    ];
    chown_writable(hardened.user, &writable)
        .map_err(|e| fail(format!("cannot give the job user its directories: {e}")))?;
    let plan = SandboxPlan {
        bwrap,
        root: root.path(),
        toolchain: &root.path().join(".distcc-rs/toolchain"),
        cwd: "/check",
        writable: std::slice::from_ref(&out),
        protected: &[],
        env: &[],
        makeflags: None,
        host_system: true,
    };
    let mut args = plan.bwrap_args();
    args.extend(["touch", "/check/out/ok"].map(OsString::from));
    let name = root
        .path()
        .file_name()
        .map(OsStr::to_string_lossy)
        .unwrap_or_default()
        .into_owned();
    let cgroup = JobCgroup::create(&hardened.mechanism, &name, &hardened.limits)
        .map_err(|e| fail(format!("cannot create a cgroup for a job: {e}")))?;
    let isolation = Isolation::Hardened(hardened.clone());
    let (program, argv) = isolation.command(cgroup.as_ref(), bwrap, &args);
    let output = run_with_timeout(
        std::process::Command::new(&program)
            .args(&argv)
            .env_clear()
            .envs(SandboxPlan::host_env()),
        CHECK_TIMEOUT,
    )
    .map_err(|e| fail(format!("cannot run {}: {e}", program.display())))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said = match stderr.trim() {
            "" => "it printed nothing".to_owned(),
            text => format!("it said: {text}"),
        };
        return Err(fail(format!(
            "a test job (`touch` in the sandbox) failed ({}); {said}",
            output.status
        )));
    }
    let made = root.path().join(&out).join("ok");
    let meta = fs::metadata(&made).map_err(|e| {
        fail(format!(
            "a test job exited successfully but its file {} is missing: {e}",
            made.display()
        ))
    })?;
    use std::os::unix::fs::MetadataExt;
    if let Some(user) = hardened.user
        && meta.uid() != user.uid
    {
        return Err(fail(format!(
            "a test job's file belongs to uid {}, not to the job user",
            meta.uid()
        )));
    }
    drop(cgroup);
    Ok(())
}

/// Runs `command` to completion with its output captured, killing it
/// after `timeout`.
fn run_with_timeout(
    command: &mut std::process::Command,
    timeout: Duration,
) -> io::Result<std::process::Output> {
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            return child.wait_with_output();
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Rlimit;

    fn lookup(name: &str) -> Option<JobUser> {
        match name {
            "nobody" => Some(JobUser {
                uid: 65534,
                gid: 65534,
            }),
            "builder" => Some(JobUser { uid: 990, gid: 985 }),
            "root" => Some(JobUser { uid: 0, gid: 0 }),
            _ => None,
        }
    }

    #[test]
    fn a_root_node_runs_jobs_as_nobody_unless_told_otherwise() {
        assert_eq!(
            resolve_user(None, 0, &lookup),
            Ok(Some(JobUser {
                uid: 65534,
                gid: 65534
            }))
        );
        assert_eq!(
            resolve_user(Some("builder"), 0, &lookup),
            Ok(Some(JobUser { uid: 990, gid: 985 }))
        );
        assert_eq!(
            resolve_user(Some("1234"), 0, &lookup),
            Ok(Some(JobUser {
                uid: 1234,
                gid: 1234
            }))
        );
        assert_eq!(
            resolve_user(Some("1234:100"), 0, &lookup),
            Ok(Some(JobUser {
                uid: 1234,
                gid: 100
            }))
        );
        assert_eq!(
            resolve_user(Some("ghost"), 0, &lookup),
            Err(UserError::Unknown("ghost".into()))
        );
        assert_eq!(
            resolve_user(Some("root"), 0, &lookup),
            Err(UserError::Root("root".into()))
        );
        assert_eq!(
            resolve_user(Some("0:5"), 0, &lookup),
            Err(UserError::Root("0:5".into()))
        );
    }

    #[test]
    fn an_unprivileged_node_runs_jobs_as_itself() {
        assert_eq!(resolve_user(None, 990, &lookup), Ok(None));
        assert_eq!(resolve_user(Some("builder"), 990, &lookup), Ok(None));
        assert_eq!(
            resolve_user(Some("nobody"), 990, &lookup),
            Err(UserError::NotRoot {
                spec: "nobody".into(),
                euid: 990
            })
        );
    }

    fn hardened(mechanism: Mechanism) -> Hardened {
        Hardened {
            launcher: PathBuf::from("/usr/local/bin/distcc-rs-node"),
            user: Some(JobUser {
                uid: 65534,
                gid: 65534,
            }),
            limits: Limits {
                memory: 1 << 30,
                cpu_millis: 2000,
                pids: 256,
            },
            mechanism,
            timeout: Duration::from_secs(60),
        }
    }

    fn text(argv: &[OsString]) -> String {
        argv.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn jobs_start_through_the_launcher_with_rlimits_only_without_cgroups() {
        let bwrap = Path::new("/usr/bin/bwrap");
        let args = [OsString::from("--unshare-all")];
        let rl = Isolation::Hardened(hardened(Mechanism::Rlimits("test".into())));
        let (program, argv) = rl.command(None, bwrap, &args);
        assert_eq!(program, Path::new("/usr/local/bin/distcc-rs-node"));
        assert_eq!(
            text(&argv),
            "__sandbox-exec --rlimit nproc=256 --rlimit data=1073741824 --rlimit cpu=120 \
             --user 65534:65534 -- /usr/bin/bwrap --unshare-all"
        );
        let (parsed, _, _) = Launch::parse(&argv[1..]).unwrap();
        assert_eq!(parsed.rlimits[0], (Rlimit::Nproc, 256));

        let dir = tempfile::tempdir().unwrap();
        let bases: Vec<_> = crate::limits::Controller::ALL
            .iter()
            .map(|c| (*c, dir.path().join(c.name())))
            .collect();
        for (_, b) in &bases {
            fs::create_dir_all(b).unwrap();
        }
        let h = hardened(Mechanism::CgroupV1(bases));
        let cgroup = JobCgroup::create(&h.mechanism, "j1", &h.limits)
            .unwrap()
            .unwrap();
        let (_, argv) = Isolation::Hardened(h).command(Some(&cgroup), bwrap, &args);
        let d = dir.path().display();
        assert_eq!(
            text(&argv),
            format!(
                "__sandbox-exec --cgroup {d}/memory/j1/cgroup.procs --cgroup {d}/cpu/j1/cgroup.procs \
                 --cgroup {d}/pids/j1/cgroup.procs --user 65534:65534 -- /usr/bin/bwrap --unshare-all"
            )
        );
        std::mem::forget(cgroup);

        let (program, argv) = Isolation::Insecure.command(None, bwrap, &args);
        assert_eq!(program, bwrap);
        assert_eq!(text(&argv), "--unshare-all");
    }
}
