//! `distcc-rs config`, run as a person would: the settings in force from
//! the client's configuration file and environment.

use std::process::{Command, Output};

/// Runs `distcc-rs config` with an empty environment plus `vars`, so that
/// the developer's own settings and files play no part.
fn config(vars: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distcc-rs"))
        .arg("config")
        .env_clear()
        .envs(vars.iter().copied())
        .output()
        .expect("run distcc-rs config")
}

#[test]
fn config_prints_the_file_under_the_environment() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join(".config/distcc-rs");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("client.toml");
    std::fs::write(
        &file,
        "scheduler = \"192.0.2.10:7700\"\nmdns = false\nnetname = \"lab\"\n",
    )
    .unwrap();
    let home_dir = home.path().to_str().unwrap();
    let out = config(&[("HOME", home_dir), ("DISTCC_RS_NETNAME", "other")]);
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    let file = file.display();
    for line in [
        format!("scheduler = \"192.0.2.10:7700\"  # file {file}"),
        format!("mdns = false  # file {file}"),
        "netname = \"other\"  # env DISTCC_RS_NETNAME".to_owned(),
        format!("# cache_dir = \"{home_dir}/.cache/distcc-rs\"  # default, worked out on each run"),
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "no line {line:?} in\n{printed}"
        );
    }
}

#[test]
fn config_fails_while_the_file_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("client.toml");
    std::fs::write(&file, "schedulr = \"192.0.2.10:7700\"\n").unwrap();
    let out = config(&[("DISTCC_RS_CONFIG", file.to_str().unwrap())]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("unknown key `schedulr`"), "{stderr}");
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.contains("everything compiles locally"), "{printed}");
}

#[test]
fn config_shows_the_deadline_of_a_remote_attempt() {
    let home = tempfile::tempdir().unwrap();
    let home_dir = home.path().to_str().unwrap();
    let shown = |vars: &[(&str, &str)]| {
        let out = config(vars);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let printed = shown(&[("HOME", home_dir)]);
    assert!(
        printed
            .lines()
            .any(|l| l == "remote_timeout = 900  # default"),
        "{printed}"
    );
    assert!(printed.contains("DISTCC_RS_REMOTE_TIMEOUT]"), "{printed}");
    let printed = shown(&[("HOME", home_dir), ("DISTCC_RS_REMOTE_TIMEOUT", "45")]);
    assert!(
        printed
            .lines()
            .any(|l| l == "remote_timeout = 45  # env DISTCC_RS_REMOTE_TIMEOUT"),
        "{printed}"
    );
    // A value that is not a number of seconds is no error: the default
    // deadline stands.
    let printed = shown(&[("HOME", home_dir), ("DISTCC_RS_REMOTE_TIMEOUT", "soon")]);
    assert!(
        printed
            .lines()
            .any(|l| l == "remote_timeout = 900  # env DISTCC_RS_REMOTE_TIMEOUT"),
        "{printed}"
    );
}
