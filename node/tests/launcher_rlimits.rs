//! The rlimit fallback of the job sandbox, end to end through the real
//! launcher: the node binary started as `__sandbox-exec` with the rlimits a
//! node without cgroups would give a job, running a program that reads its
//! own `/proc/self/limits`. No cgroup, bubblewrap or daemon is involved.

use std::ffi::OsString;
use std::process::Command;
use std::time::Duration;

use distcc_rs_node::launcher::{JobUser, Launch};
use distcc_rs_node::limits::{Limits, Rlimit};

/// The soft and hard values of one line of `/proc/<pid>/limits`, e.g.
/// `Max processes             77                   77                   processes`.
fn limit(limits: &str, name: &str) -> (String, String) {
    let line = limits
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name:?} in {limits}"));
    let mut values = line[name.len()..].split_whitespace();
    (
        values.next().unwrap().to_owned(),
        values.next().unwrap().to_owned(),
    )
}

/// Runs `cat /proc/self/limits` (and `id -u` when `user` is given) through
/// the launcher with `launch`, returning what it printed.
fn through_launcher(launch: &Launch, script: &str) -> String {
    let args = launch.args(
        "/bin/sh".as_ref(),
        &[OsString::from("-c"), OsString::from(script)],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_distcc-rs-node"))
        .args(&args)
        .env_clear()
        .output()
        .expect("run the launcher");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_launcher_applies_the_rlimits_a_node_without_cgroups_gives_a_job() {
    let limits = Limits {
        memory: 3 << 30,
        cpu_millis: 1500,
        pids: 77,
    };
    let rlimits = limits.rlimits(Duration::from_secs(600));
    assert_eq!(
        rlimits,
        [
            (Rlimit::Nproc, 77),
            (Rlimit::Data, 3 << 30),
            (Rlimit::Cpu, 900)
        ]
    );
    let launch = Launch {
        rlimits,
        ..Launch::default()
    };
    let shown = through_launcher(&launch, "cat /proc/self/limits");
    let both = |v: u64| (v.to_string(), v.to_string());
    assert_eq!(limit(&shown, "Max processes"), both(77), "{shown}");
    assert_eq!(limit(&shown, "Max data size"), both(3 << 30), "{shown}");
    assert_eq!(limit(&shown, "Max cpu time"), both(900), "{shown}");
}

/// As root, the launcher also drops to the job user, and the limits hold
/// for it: root is exempt from RLIMIT_NPROC, the job user is not.
#[test]
fn as_root_the_rlimits_hold_for_the_job_user() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to change user");
        return;
    }
    let launch = Launch {
        rlimits: vec![(Rlimit::Nproc, 123), (Rlimit::Data, 1 << 30)],
        user: Some(JobUser {
            uid: 65534,
            gid: 65534,
        }),
        ..Launch::default()
    };
    let shown = through_launcher(&launch, "id -u; id -g; cat /proc/self/limits");
    let mut lines = shown.lines();
    assert_eq!(lines.next(), Some("65534"), "{shown}");
    assert_eq!(lines.next(), Some("65534"), "{shown}");
    assert_eq!(
        limit(&shown, "Max processes"),
        ("123".into(), "123".into()),
        "{shown}"
    );
    assert_eq!(
        limit(&shown, "Max data size"),
        ((1u64 << 30).to_string(), (1u64 << 30).to_string()),
        "{shown}"
    );
}
