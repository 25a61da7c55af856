//! The launcher: the node's own binary, started as
//! `distcc-rs-node __sandbox-exec [OPTIONS] -- PROGRAM ARGS...`, which joins
//! the job's cgroups, sets rlimits, drops to the job user and then becomes
//! bubblewrap.
//!
//! Doing this in a process of its own, before `exec`, means the job is
//! inside its limits before any of its code runs, without `fork` in the
//! async daemon and without `unsafe` `pre_exec` hooks: bubblewrap and
//! everything it starts inherit the cgroups and rlimits, and bubblewrap
//! runs unprivileged, as the job user, from its first instruction. (The
//! alternative, moving bubblewrap into the cgroup after it started and
//! holding the job with `--block-fd`, leaves bubblewrap's own child outside
//! the cgroup, since moving a process does not move its children.)

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use crate::limits::Rlimit;

/// The first argument that turns the node binary into the launcher.
pub const LAUNCHER_ARG: &str = "__sandbox-exec";

/// The user and group a job runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobUser {
    pub uid: u32,
    pub gid: u32,
}

/// What the launcher does before it starts the program.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Launch {
    /// `cgroup.procs` files to write the launcher's pid into.
    pub cgroup_procs: Vec<PathBuf>,
    pub rlimits: Vec<(Rlimit, u64)>,
    /// The user to become; `None` keeps the launcher's.
    pub user: Option<JobUser>,
}

/// A launcher command line that cannot be understood.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    #[error("unknown launcher option {0:?}")]
    UnknownOption(String),
    #[error("launcher option {0} needs a value")]
    MissingValue(&'static str),
    #[error("bad value {value:?} for launcher option {option}")]
    BadValue { option: &'static str, value: String },
    #[error("no program to launch after `--`")]
    NoProgram,
}

impl Launch {
    /// The launcher's arguments (after [`LAUNCHER_ARG`]) for running
    /// `program` with `args`.
    pub fn args(&self, program: &OsStr, args: &[OsString]) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![LAUNCHER_ARG.into()];
        for file in &self.cgroup_procs {
            a.push("--cgroup".into());
            a.push(file.into());
        }
        for (r, value) in &self.rlimits {
            a.push("--rlimit".into());
            a.push(format!("{}={value}", r.name()).into());
        }
        if let Some(user) = self.user {
            a.push("--user".into());
            a.push(format!("{}:{}", user.uid, user.gid).into());
        }
        a.push("--".into());
        a.push(program.into());
        a.extend(args.iter().cloned());
        a
    }

    /// Reads the arguments after [`LAUNCHER_ARG`]: the plan and the program
    /// with its arguments.
    pub fn parse(args: &[OsString]) -> Result<(Launch, OsString, Vec<OsString>), LaunchError> {
        let mut launch = Launch::default();
        let mut it = args.iter();
        loop {
            let Some(arg) = it.next() else {
                return Err(LaunchError::NoProgram);
            };
            let arg = arg.to_string_lossy();
            let mut value = |option: &'static str| {
                it.next()
                    .map(|v| v.to_owned())
                    .ok_or(LaunchError::MissingValue(option))
            };
            let bad = |option: &'static str, value: &OsString| LaunchError::BadValue {
                option,
                value: value.to_string_lossy().into_owned(),
            };
            match arg.as_ref() {
                "--" => break,
                "--cgroup" => launch.cgroup_procs.push(value("--cgroup")?.into()),
                "--rlimit" => {
                    let v = value("--rlimit")?;
                    let text = v.to_string_lossy();
                    let (name, n) = text.split_once('=').ok_or_else(|| bad("--rlimit", &v))?;
                    let r = Rlimit::from_name(name).ok_or_else(|| bad("--rlimit", &v))?;
                    let n = n.parse().map_err(|_| bad("--rlimit", &v))?;
                    launch.rlimits.push((r, n));
                }
                "--user" => {
                    let v = value("--user")?;
                    let text = v.to_string_lossy();
                    let (uid, gid) = text.split_once(':').ok_or_else(|| bad("--user", &v))?;
                    launch.user = Some(JobUser {
                        uid: uid.parse().map_err(|_| bad("--user", &v))?,
                        gid: gid.parse().map_err(|_| bad("--user", &v))?,
                    });
                }
                other => return Err(LaunchError::UnknownOption(other.to_owned())),
            }
        }
        let program = it.next().ok_or(LaunchError::NoProgram)?.clone();
        Ok((launch, program, it.cloned().collect()))
    }

    /// Joins the cgroups, sets the rlimits and becomes `program`, as the
    /// job user. Returns only on failure, with what failed.
    pub fn exec(&self, program: &OsStr, args: &[OsString]) -> String {
        use std::os::unix::process::CommandExt;
        let pid = std::process::id().to_string();
        for file in &self.cgroup_procs {
            if let Err(e) = std::fs::write(file, &pid) {
                return format!("cannot join the job's cgroup {}: {e}", file.display());
            }
        }
        for (r, value) in &self.rlimits {
            use nix::sys::resource::{Resource, setrlimit};
            let resource = match r {
                Rlimit::Nproc => Resource::RLIMIT_NPROC,
                Rlimit::Data => Resource::RLIMIT_DATA,
                Rlimit::Cpu => Resource::RLIMIT_CPU,
            };
            if let Err(e) = setrlimit(resource, *value, *value) {
                return format!(
                    "cannot set RLIMIT_{} to {value}: {e}",
                    r.name().to_uppercase()
                );
            }
        }
        let mut command = std::process::Command::new(program);
        command.args(args);
        if let Some(user) = self.user {
            // std drops the supplementary groups when a root process
            // changes its uid, so none of root's groups are kept.
            command.uid(user.uid).gid(user.gid);
        }
        let e = command.exec();
        format!("cannot start {}: {e}", program.to_string_lossy())
    }
}

/// The launcher's `main`: `args` are those after [`LAUNCHER_ARG`]. Prints
/// what went wrong as bubblewrap would (a line on stderr, which the node's
/// stderr gate recognises) and exits with 1.
pub fn main(args: &[OsString]) -> std::process::ExitCode {
    let message = match Launch::parse(args) {
        Ok((launch, program, args)) => launch.exec(&program, &args),
        Err(e) => e.to_string(),
    };
    eprintln!("{LAUNCHER_MARKER} {message}");
    std::process::ExitCode::FAILURE
}

/// How the launcher's own error messages begin.
pub const LAUNCHER_MARKER: &str = "distcc-rs sandbox launcher:";

#[cfg(test)]
mod tests {
    use super::*;

    fn os(items: &[&str]) -> Vec<OsString> {
        items.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_launcher_command_line_reads_back_as_the_same_plan() {
        let launch = Launch {
            cgroup_procs: vec![
                PathBuf::from("/sys/fs/cgroup/memory/distcc-rs-node/j1/cgroup.procs"),
                PathBuf::from("/sys/fs/cgroup/pids/distcc-rs-node/j1/cgroup.procs"),
            ],
            rlimits: vec![(Rlimit::Nproc, 512), (Rlimit::Data, 1 << 30)],
            user: Some(JobUser {
                uid: 65534,
                gid: 65534,
            }),
        };
        let args = launch.args(
            OsStr::new("/usr/bin/bwrap"),
            &os(&["--unshare-all", "--", "x"]),
        );
        let text: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            text.join(" "),
            "__sandbox-exec \
             --cgroup /sys/fs/cgroup/memory/distcc-rs-node/j1/cgroup.procs \
             --cgroup /sys/fs/cgroup/pids/distcc-rs-node/j1/cgroup.procs \
             --rlimit nproc=512 --rlimit data=1073741824 --user 65534:65534 \
             -- /usr/bin/bwrap --unshare-all -- x"
        );
        let (parsed, program, rest) = Launch::parse(&args[1..]).unwrap();
        assert_eq!(parsed, launch);
        assert_eq!(program, "/usr/bin/bwrap");
        assert_eq!(rest, os(&["--unshare-all", "--", "x"]));
    }

    #[test]
    fn malformed_launcher_command_lines_are_refused() {
        assert_eq!(Launch::parse(&os(&[])), Err(LaunchError::NoProgram));
        assert_eq!(Launch::parse(&os(&["--"])), Err(LaunchError::NoProgram));
        assert_eq!(
            Launch::parse(&os(&["--rlimit", "as=5", "--", "x"])),
            Err(LaunchError::BadValue {
                option: "--rlimit",
                value: "as=5".into()
            })
        );
        assert_eq!(
            Launch::parse(&os(&["--user", "nobody", "--", "x"])),
            Err(LaunchError::BadValue {
                option: "--user",
                value: "nobody".into()
            })
        );
        assert_eq!(
            Launch::parse(&os(&["--cgroup"])),
            Err(LaunchError::MissingValue("--cgroup"))
        );
        assert_eq!(
            Launch::parse(&os(&["--seccomp", "--", "x"])),
            Err(LaunchError::UnknownOption("--seccomp".into()))
        );
    }
}
