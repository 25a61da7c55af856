//! The real `distcc-rs-node` binary reading a configuration file: what
//! `--print-config` prints, and how a broken file stops it before it starts.
//! Nothing here starts a daemon.

use std::path::Path;
use std::process::{Command, Output};

/// Runs the node binary with `args` and an empty environment plus `vars`,
/// so that the developer's own `DISTCC_RS_*` variables play no part.
fn node(args: &[&str], vars: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distcc-rs-node"))
        .args(args)
        .env_clear()
        .envs(vars.iter().copied())
        .output()
        .expect("run distcc-rs-node")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn print_config_shows_each_setting_with_its_origin_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "node.toml",
        "scheduler = \"192.0.2.10:7700\"\nslots = 12\nstore_size = \"20GiB\"\nmdns = false\n",
    );
    let out = node(
        &[
            "--print-config",
            "--config",
            &config,
            "--job-timeout",
            "900",
        ],
        &[("DISTCC_RS_NETNAME", "lab")],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    for line in [
        format!("# Configuration file: {config} (flag --config)."),
        format!("scheduler = \"192.0.2.10:7700\"  # file {config}"),
        format!("slots = 12  # file {config}"),
        format!("store_size = \"20GiB\"  # file {config}"),
        format!("mdns = false  # file {config}"),
        "netname = \"lab\"  # env DISTCC_RS_NETNAME".to_owned(),
        "job_timeout = 900  # flag --job-timeout".to_owned(),
        "toolchain_cache_size = \"4GiB\"  # default".to_owned(),
        "# advertise: not set (default)".to_owned(),
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "no line {line:?} in\n{printed}"
        );
    }

    // The output is itself a configuration file that gives the same
    // settings, now all from that file.
    let saved = write(dir.path(), "printed.toml", &printed);
    let out = node(&["--print-config", "--config", &saved], &[]);
    assert!(out.status.success(), "{out:?}");
    let reprinted = String::from_utf8(out.stdout).unwrap();
    for line in [
        format!("netname = \"lab\"  # file {saved}"),
        format!("job_timeout = 900  # file {saved}"),
        format!("slots = 12  # file {saved}"),
    ] {
        assert!(
            reprinted.lines().any(|l| l == line),
            "no line {line:?} in\n{reprinted}"
        );
    }
}

#[test]
fn a_broken_configuration_file_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "node.toml", "slots = 12\nstore-size = \"1G\"\n");
    // DISTCC_RS_CONFIG names the file when --config does not.
    let out = node(&[], &[("DISTCC_RS_CONFIG", &config)]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with(&format!(
            "distcc-rs-node: error: the configuration file {config} has an unknown key \
             `store-size`; the valid keys are scheduler, netname, mdns,"
        )),
        "{stderr}"
    );

    let out = node(&["--config", "/nonexistent/node.toml"], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("/nonexistent/node.toml"), "{stderr}");
}
