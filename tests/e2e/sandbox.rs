//! The node's sandbox: a hostile proc-macro expanded on a node can reach
//! neither the network nor the node's files, writes nowhere but its output
//! directory, and runs into the job's process limit, while the node goes on
//! serving; and a node whose sandbox does not work refuses to start.
//!
//! The client compiles a job locally when the farm fails it, and a
//! proc-macro expanded locally is not sandboxed; so these tests look at
//! what happened on the node: the job ran remotely (the client's events),
//! the macro's report of each attempt came from that remote run (the node
//! forwards rustc's stderr), and the node's own log.

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use distcc_rs_e2e::events::describe;
use distcc_rs_e2e::process::run_with_timeout;
use distcc_rs_e2e::{
    FarmEnv, Node, Scheduler, Where, bins, compare_artifacts, copy_fixture, snapshot_artifacts,
};

use crate::{assert_ran, farm_build, farm_test, local_reference};

/// The process limit of the node under attack: far below the macro's fork
/// bomb, far above what rustc needs.
const JOB_PIDS: u32 = 128;

/// What the hostile macro attempts, as it names each attempt.
const ATTACKS: &[&str] = &[
    "network",
    "read /etc/shadow",
    "write outside the output directory",
    "write into the source directory",
    "fork bomb",
];

#[test]
fn a_hostile_proc_macro_is_contained_on_the_node_which_keeps_serving() {
    let _serial = farm_test();
    let fixture = copy_fixture("hostile");
    let scheduler = Scheduler::start(fixture.scratch());
    let node = Node::start(
        fixture.scratch(),
        scheduler.addr(),
        "n1",
        &["--job-pids", &JOB_PIDS.to_string()],
    );

    // The macro's targets: a listener on the host's loopback, and a file
    // beside the node's work directory (the job directories are inside it).
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a TCP listener");
    listener
        .set_nonblocking(true)
        .expect("make the listener non-blocking");
    let port = listener.local_addr().expect("listener address").port();
    let escape = fixture.scratch().join("hostile-escape");
    let mut farm = FarmEnv::new(scheduler.addr(), &fixture.scratch().join("client"));
    farm.extra_env.extend([
        ("HOSTILE_PORT".to_owned(), port.to_string()),
        (
            "HOSTILE_ESCAPE".to_owned(),
            escape.to_string_lossy().into_owned(),
        ),
    ]);
    // Never built locally first: expanded here, the macro would attack the
    // test machine itself.
    let output = farm_build(&fixture, &farm);

    let events = farm.events();
    // The macro was expanded on the node, and only there: a local rerun
    // would have run it unsandboxed.
    assert_ran(&events, "victim", Where::Remote);
    let reports: Vec<&str> = output
        .stderr
        .lines()
        .filter(|l| l.starts_with("hostile: "))
        .collect();
    for attack in ATTACKS {
        let blocked = format!("hostile: {attack} blocked: ");
        assert!(
            reports.iter().any(|l| l.starts_with(&blocked)),
            "no report that the {attack:?} attack was blocked; reports:\n{}\n--- cargo's stderr ---\n{}",
            reports.join("\n"),
            output.stderr
        );
    }
    assert!(
        !reports.iter().any(|l| l.contains("SUCCEEDED")),
        "an attack succeeded on the node:\n{}",
        reports.join("\n")
    );
    // Shown with --nocapture: how each attack failed.
    println!("{}", reports.join("\n"));

    // (a) No network: nothing reached the host's listener.
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("the hostile macro connected to the host's listener from {peer}"),
        Err(e) => panic!("accept failed: {e}"),
    }
    // (c) Nothing written outside the output directory.
    assert!(!escape.exists(), "{} was created", escape.display());
    let in_source = fixture.root().join("victim/hostile-was-here");
    assert!(!in_source.exists(), "{} was created", in_source.display());
    // (d) The fork bomb ran into the job's process limit: the macro saw
    // fork fail before it had started the limit's worth of processes, and
    // the node noticed the limit was hit.
    let bomb = reports
        .iter()
        .find(|l| l.starts_with("hostile: fork bomb blocked: fork failed after "))
        .unwrap_or_else(|| panic!("the fork bomb report is not a failed fork: {reports:?}"));
    let started: u32 = bomb
        .trim_start_matches("hostile: fork bomb blocked: fork failed after ")
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no process count in {bomb:?}"));
    assert!(
        started < JOB_PIDS,
        "the fork bomb started {started} processes, more than the job's limit of {JOB_PIDS}"
    );
    let log = node.log();
    assert!(
        log.contains("the job ran into its limits") && log.contains("process limit"),
        "the node did not log that the job hit its process limit; node log:\n{log}"
    );

    // The node keeps serving: a normal build through the same node
    // compiles remotely and byte-identically.
    let workspace = copy_fixture("workspace");
    let local = local_reference(&workspace, None);
    let farm = FarmEnv::new(scheduler.addr(), &workspace.scratch().join("client"));
    farm_build(&workspace, &farm);
    let events = farm.events();
    for krate in ["base", "uses_macros", "native"] {
        assert_ran(&events, krate, Where::Remote);
    }
    assert!(
        events
            .iter()
            .filter(|e| e.place == Where::Remote)
            .all(|e| e.node.as_deref() == Some("n1")),
        "every remote job should have run on n1; events:\n{}",
        describe(&events)
    );
    compare_artifacts(
        &local.artifacts,
        &snapshot_artifacts(&workspace.target_dir()),
    );
}

#[test]
fn a_node_whose_sandbox_does_not_work_refuses_to_start() {
    let _serial = farm_test();
    let dir = tempfile::tempdir().expect("create a temporary directory");
    // A real farm to enroll in: the node gets its certificate first (kept
    // for the start after the sandbox is fixed), then checks its sandbox.
    let scheduler = Scheduler::start(dir.path());
    let mut command = Command::new(bins::binary(bins::NODE));
    command
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .args([
            "--config",
            "/dev/null",
            "--no-mdns",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--scheduler", &scheduler.addr().to_string()])
        .args(["--join-token", &scheduler.token()])
        .arg("--work-dir")
        .arg(dir.path().join("node"))
        // /bin/false exits at once with an error, as a bubblewrap that
        // cannot set up its namespaces does.
        .args(["--bwrap", "/bin/false"]);
    let output =
        run_with_timeout(&mut command, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "the node started without a working sandbox; stderr:\n{stderr}"
    );
    for says in [
        "the job sandbox does not work",
        "/bin/false",
        "install bubblewrap",
        "--insecure-no-sandbox",
    ] {
        assert!(
            stderr.to_lowercase().contains(&says.to_lowercase()),
            "the refusal should mention {says:?}; stderr:\n{stderr}"
        );
    }
    assert!(
        output.stdout.is_empty(),
        "a node that refuses to start prints no readiness line: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}
