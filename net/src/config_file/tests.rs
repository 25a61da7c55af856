use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgAction, Parser};

use super::client::{self, ClientFile};
use super::*;

/// A daemon-like command line with one setting of each kind.
#[derive(Debug, Parser, PartialEq)]
#[command(name = "demo")]
struct Demo {
    /// The configuration file.
    #[arg(long, env = "DEMO_CONFIG")]
    config: Option<PathBuf>,
    /// Print the settings and exit.
    #[arg(long)]
    print_config: bool,
    /// A farm name.
    #[arg(long, env = "DEMO_NETNAME", default_value = "default")]
    netname: String,
    /// An address that may be unset.
    #[arg(long, value_name = "ADDR")]
    scheduler: Option<SocketAddr>,
    /// Repeatable.
    #[arg(long = "node", value_name = "HOST:PORT")]
    nodes: Vec<String>,
    /// An off switch.
    #[arg(long = "no-mdns", action = ArgAction::SetFalse)]
    mdns: bool,
    /// A number.
    #[arg(long, env = "DEMO_JOB_TIMEOUT", default_value_t = 600)]
    job_timeout: u64,
    /// A number of seconds with fractions.
    #[arg(long, default_value = "2", value_parser = seconds)]
    queue_timeout: Duration,
    /// A choice.
    #[arg(long, value_enum, default_value = "text")]
    log_format: Format,
    /// A secret.
    #[arg(long, env = "DEMO_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

fn seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text.parse().map_err(|e| format!("not seconds: {e}"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

/// A fake environment.
fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
}

/// A directory holding `demo.toml` with `text`.
fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("demo.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn parse(
    argv: &[&str],
    env: &dyn Fn(&str) -> Option<String>,
    default_file: &Path,
) -> Result<(Demo, Layered), ConfigError> {
    let argv = std::iter::once("demo").chain(argv.iter().copied());
    let layered = parse_layered(Demo::command(), argv, env, default_file)?;
    let demo = Demo::from_arg_matches(layered.matches()).unwrap();
    Ok((demo, layered))
}

use clap::{CommandFactory, FromArgMatches};

const NO_FILE: &str = "/nonexistent/demo.toml";

#[test]
fn file_then_env_then_flag() {
    let (_dir, path) = file(
        "netname = \"from-file\"\njob_timeout = 30\nmdns = false\nnodes = [\"a:1\", \"b:2\"]\n",
    );
    let config = path.to_str().unwrap();

    // The file alone.
    let (demo, layered) = parse(&["--config", config], &env(&[]), Path::new(NO_FILE)).unwrap();
    assert_eq!(demo.netname, "from-file");
    assert_eq!(demo.job_timeout, 30);
    assert!(!demo.mdns);
    assert_eq!(demo.nodes, ["a:1", "b:2"]);
    assert_eq!(layered.origin("netname"), Origin::File(path.clone()));
    assert_eq!(layered.origin("log_format"), Origin::Default);

    // The environment over the file.
    let (demo, layered) = parse(
        &["--config", config],
        &env(&[("DEMO_NETNAME", "from-env")]),
        Path::new(NO_FILE),
    )
    .unwrap();
    assert_eq!(demo.netname, "from-env");
    assert_eq!(
        layered.origin("netname"),
        Origin::Env("DEMO_NETNAME".into())
    );
    assert_eq!(demo.job_timeout, 30);

    // A flag over both; a repeated flag replaces the file's list.
    let (demo, layered) = parse(
        &[
            "--config",
            config,
            "--netname",
            "from-flag",
            "--node",
            "c:3",
        ],
        &env(&[("DEMO_NETNAME", "from-env")]),
        Path::new(NO_FILE),
    )
    .unwrap();
    assert_eq!(demo.netname, "from-flag");
    assert_eq!(layered.origin("netname"), Origin::Flag("--netname".into()));
    assert_eq!(demo.nodes, ["c:3"]);
}

#[test]
fn the_file_is_named_by_flag_else_variable_else_found_at_its_default_place() {
    let (_a, flagged) = file("netname = \"flagged\"\n");
    let (_b, named) = file("netname = \"named\"\n");
    let (_c, default) = file("netname = \"default-place\"\n");
    let var = [("DEMO_CONFIG", named.to_str().unwrap())];

    let (demo, layered) = parse(
        &[&format!("--config={}", flagged.display())],
        &env(&var),
        &default,
    )
    .unwrap();
    assert_eq!(demo.netname, "flagged");
    assert_eq!(layered.file().origin, Origin::Flag("--config".into()));

    let (demo, layered) = parse(&[], &env(&var), &default).unwrap();
    assert_eq!(demo.netname, "named");
    assert_eq!(layered.file().origin, Origin::Env("DEMO_CONFIG".into()));

    let (demo, layered) = parse(&[], &env(&[]), &default).unwrap();
    assert_eq!(demo.netname, "default-place");
    assert!(layered.file().found);

    // Nothing at the default place is fine; a named file must exist.
    let (demo, layered) = parse(&[], &env(&[]), Path::new(NO_FILE)).unwrap();
    assert_eq!(demo.netname, "default");
    assert!(!layered.file().found);
    let missing = parse(&[], &env(&[("DEMO_CONFIG", NO_FILE)]), &default).unwrap_err();
    assert!(matches!(missing, ConfigError::Read { .. }), "{missing}");
    let missing = parse(&["--config", NO_FILE], &env(&[]), &default).unwrap_err();
    assert!(missing.to_string().contains(NO_FILE), "{missing}");
}

#[test]
fn unknown_keys_and_wrong_types_name_the_file_and_the_key() {
    let check = |text: &str| {
        let (_dir, path) = file(text);
        let err = parse(&[], &env(&[]), &path).unwrap_err();
        let message = err.to_string();
        assert!(message.contains(path.to_str().unwrap()), "{message}");
        (err, message)
    };

    let (err, message) = check("net_name = \"x\"\n");
    assert!(matches!(err, ConfigError::UnknownKey { .. }), "{message}");
    assert!(message.contains("`net_name`"), "{message}");
    // The valid keys are listed, and only settings are keys.
    assert!(
        message.ends_with(
            "netname, scheduler, nodes, mdns, job_timeout, queue_timeout, log_format, token"
        ),
        "{message}"
    );
    let (err, _) = check("config = \"other.toml\"\n");
    assert!(matches!(err, ConfigError::UnknownKey { .. }));

    for (text, expected) in [
        (
            "mdns = \"no\"\n",
            "`mdns` must be true or false, not string",
        ),
        (
            "nodes = \"a:1\"\n",
            "`nodes` must be an array of strings, not string",
        ),
        ("nodes = [true]\n", "an array holding a boolean"),
        (
            "job_timeout = true\n",
            "`job_timeout` must be a string or a number",
        ),
        (
            "[netname]\nx = 1\n",
            "`netname` must be a string or a number, not table",
        ),
    ] {
        let (err, message) = check(text);
        assert!(matches!(err, ConfigError::WrongType { .. }), "{message}");
        assert!(message.contains(expected), "{message}");
    }
    for (text, expected) in [
        (
            "job_timeout = -1\n",
            "`job_timeout = -1` is not valid: invalid digit",
        ),
        (
            "scheduler = \"x\"\n",
            "`scheduler = \"x\"` is not valid: invalid socket address",
        ),
        ("queue_timeout = \"soon\"\n", "not seconds"),
        ("log_format = \"xml\"\n", "expected one of text, json"),
    ] {
        let (err, message) = check(text);
        assert!(matches!(err, ConfigError::InvalidValue { .. }), "{message}");
        assert!(message.contains(expected), "{message}");
    }
    let (err, message) = check("netname = \n");
    assert!(matches!(err, ConfigError::Syntax { .. }), "{message}");
}

#[test]
fn bad_environment_values_name_the_variable() {
    let err = parse(
        &[],
        &env(&[("DEMO_JOB_TIMEOUT", "soon")]),
        Path::new(NO_FILE),
    )
    .unwrap_err();
    assert!(matches!(err, ConfigError::InvalidEnv { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "DEMO_JOB_TIMEOUT=\"soon\" is not valid (for `job_timeout`): invalid digit found in string"
    );
    // An empty variable counts as unset: it names no file, and sets nothing.
    let (demo, _) = parse(
        &[],
        &env(&[("DEMO_JOB_TIMEOUT", ""), ("DEMO_CONFIG", "")]),
        Path::new(NO_FILE),
    )
    .unwrap();
    assert_eq!(demo.job_timeout, 600);
}

#[test]
fn command_line_errors_are_clap_errors() {
    let err = parse(&["--job-timeout", "x"], &env(&[]), Path::new(NO_FILE)).unwrap_err();
    assert!(matches!(err, ConfigError::CommandLine(_)), "{err}");
    let help = parse(&["--help"], &env(&[]), Path::new(NO_FILE)).unwrap_err();
    let ConfigError::CommandLine(help) = help else {
        panic!("{help}")
    };
    assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
    // The variables clap no longer reads itself are still in the help.
    assert!(help.to_string().contains("[env: DEMO_NETNAME]"), "{help}");

    // A broken file stops the program, but not its help.
    let (_dir, broken) = file("netname = [1]\n");
    let broken = broken.to_str().unwrap();
    let err = parse(&["--config", broken], &env(&[]), Path::new(NO_FILE)).unwrap_err();
    assert!(matches!(err, ConfigError::WrongType { .. }), "{err}");
    let help = parse(
        &["--config", broken, "--help"],
        &env(&[]),
        Path::new(NO_FILE),
    )
    .unwrap_err();
    assert!(
        matches!(&help, ConfigError::CommandLine(e) if e.kind() == clap::error::ErrorKind::DisplayHelp),
        "{help}"
    );
}

#[test]
fn the_printed_settings_read_back_as_the_same_settings() {
    let (_dir, path) = file("job_timeout = 30\nnodes = [\"a:1\"]\nqueue_timeout = 0.5\n");
    let (demo, layered) = parse(
        &[
            "--config",
            path.to_str().unwrap(),
            "--no-mdns",
            "--log-format",
            "json",
        ],
        &env(&[("DEMO_NETNAME", "123")]),
        Path::new(NO_FILE),
    )
    .unwrap();
    let printed = layered.to_toml(&[]);
    assert!(printed.contains("\njob_timeout = 30  # file "), "{printed}");
    assert!(
        printed.contains("\nnetname = \"123\"  # env DEMO_NETNAME\n"),
        "{printed}"
    );
    assert!(
        printed.contains("\nmdns = false  # flag --no-mdns\n"),
        "{printed}"
    );
    assert!(
        printed.contains("\nqueue_timeout = 0.5  # file "),
        "{printed}"
    );
    assert!(
        printed.contains("\n# scheduler: not set (default)\n"),
        "{printed}"
    );
    assert!(
        printed.contains("\n# `false` (`--no-mdns`): an off switch\n"),
        "{printed}"
    );

    let (_dir, printed_path) = file(&printed);
    let (again, layered) = parse(
        &["--config", printed_path.to_str().unwrap()],
        &env(&[]),
        Path::new(NO_FILE),
    )
    .unwrap();
    assert_eq!(
        again,
        Demo {
            config: again.config.clone(),
            ..demo
        }
    );
    assert_eq!(
        layered.origin("netname"),
        Origin::File(printed_path.clone())
    );
    // And once more: printing what was read back prints the same values.
    let reprinted = layered.to_toml(&[]);
    let values = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split("  #").next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(values(&printed), values(&reprinted));
}

#[test]
fn secrets_are_not_printed() {
    for (argv, vars, origin) in [
        (&["--token", "s3cret"][..], &[][..], "flag --token"),
        (&[][..], &[("DEMO_TOKEN", "s3cret")][..], "env DEMO_TOKEN"),
    ] {
        let (demo, layered) = parse(argv, &env(vars), Path::new(NO_FILE)).unwrap();
        assert_eq!(demo.token.as_deref(), Some("s3cret"));
        let printed = layered.to_toml(&[]);
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(
            printed.contains(&format!("# token: set, not shown  # {origin}\n")),
            "{printed}"
        );
    }
}

#[test]
fn computed_defaults_are_printed_commented_out() {
    let (_, layered) = parse(&[], &env(&[]), Path::new(NO_FILE)).unwrap();
    let printed = layered.to_toml(&[Computed {
        key: "scheduler",
        value: toml::Value::String("10.0.0.1:7700".into()),
    }]);
    assert!(
        printed.contains("\n# scheduler = \"10.0.0.1:7700\"  # default, worked out at start-up\n"),
        "{printed}"
    );
    assert!(printed.contains("Configuration file: none (/nonexistent/demo.toml does not exist)"));
}

#[test]
fn the_reference_lists_every_setting_with_its_default() {
    let table = reference(&Demo::command());
    let rows: Vec<&str> = table.lines().skip(2).collect();
    assert_eq!(rows.len(), keys(&Demo::command()).len());
    assert_eq!(
        rows[0],
        "| `netname` | `NETNAME` | `\"default\"` | `--netname`, `DEMO_NETNAME` | A farm name |"
    );
    assert!(rows[1].starts_with("| `scheduler` | `ADDR` | not set | `--scheduler` |"));
    assert!(rows[2].starts_with("| `nodes` | array of `HOST:PORT` | `[]` |"));
    assert!(rows[3].starts_with("| `mdns` | boolean | `true` | `--no-mdns` |"));
    assert!(rows[4].starts_with("| `job_timeout` | `JOB_TIMEOUT` | `600` |"));
    assert!(rows[6].starts_with("| `log_format` | `\"text\"` or `\"json\"` | `\"text\"` |"));
}

#[test]
fn generated_blocks_are_checked_and_updated() {
    let (_dir, doc) =
        file("# Doc\n<!-- BEGIN GENERATED: x -->\nold\n<!-- END GENERATED: x -->\nend\n");
    assert!(check_generated_block(&doc, "x", "old\n", false).is_ok());
    let stale = check_generated_block(&doc, "x", "new\n", false).unwrap_err();
    assert!(stale.contains("UPDATE_DOCS=1"), "{stale}");
    check_generated_block(&doc, "x", "new\n", true).unwrap();
    assert_eq!(
        std::fs::read_to_string(&doc).unwrap(),
        "# Doc\n<!-- BEGIN GENERATED: x -->\nnew\n<!-- END GENERATED: x -->\nend\n"
    );
    assert!(check_generated_block(&doc, "y", "", false).is_err());
}

#[test]
fn the_client_file_is_found_by_variable_else_xdg_else_home() {
    let at = |pairs: &[(&str, &str)]| client::location(&env(pairs));
    assert_eq!(
        at(&[("DISTCC_RS_CONFIG", "/c.toml"), ("HOME", "/h")]),
        Some((
            PathBuf::from("/c.toml"),
            Origin::Env("DISTCC_RS_CONFIG".into())
        ))
    );
    assert_eq!(
        at(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")]),
        Some((PathBuf::from("/x/distcc-rs/client.toml"), Origin::Default))
    );
    assert_eq!(
        at(&[("DISTCC_RS_CONFIG", ""), ("HOME", "/h")]),
        Some((
            PathBuf::from("/h/.config/distcc-rs/client.toml"),
            Origin::Default
        ))
    );
    assert_eq!(at(&[]), None);
}

#[test]
fn the_client_file_keeps_its_good_keys_and_lists_its_problems() {
    let text = "scheduler = \"10.0.0.1:7700\"\nmdns = false\nlocal_slots = 4\n\
                events = 3\nlocal_slots_typo = 1\ndisable = \"yes\"\n";
    let parsed = ConfigFile::parse(Path::new("/c.toml"), text).unwrap();
    let file = ClientFile::from_file(&parsed);
    assert_eq!(file.get("DISTCC_RS_SCHEDULER"), Some("10.0.0.1:7700"));
    assert_eq!(file.get("DISTCC_RS_MDNS"), Some("false"));
    assert_eq!(file.get("DISTCC_RS_LOCAL_SLOTS"), Some("4"));
    assert_eq!(file.get("DISTCC_RS_EVENTS"), None);
    let problems: Vec<String> = file.problems.iter().map(ToString::to_string).collect();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(
        problems[0].contains("`disable` must be true or false"),
        "{problems:?}"
    );
    assert!(
        problems[1].contains("`events` must be a string, not integer"),
        "{problems:?}"
    );
    assert!(
        problems[2].contains("unknown key `local_slots_typo`"),
        "{problems:?}"
    );
    assert!(problems.iter().all(|p| p.contains("/c.toml")));

    let zero = ConfigFile::parse(Path::new("/c.toml"), "local_slots = 0").unwrap();
    assert_eq!(ClientFile::from_file(&zero).problems.len(), 1);
}

#[test]
fn a_missing_client_file_is_nothing_unless_named() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().to_str().unwrap();
    assert!(ClientFile::load(&env(&[("HOME", home)])).is_none());
    let named = ClientFile::load(&env(&[("DISTCC_RS_CONFIG", NO_FILE)])).unwrap();
    assert!(matches!(named.problems[..], [ConfigError::Read { .. }]));

    std::fs::create_dir_all(dir.path().join(".config/distcc-rs")).unwrap();
    std::fs::write(
        dir.path().join(".config/distcc-rs/client.toml"),
        "netname = \"lab\"\n",
    )
    .unwrap();
    let found = ClientFile::load(&env(&[("HOME", home)])).unwrap();
    assert_eq!(found.get("DISTCC_RS_NETNAME"), Some("lab"));
    assert!(found.problems.is_empty());
}

#[test]
fn the_client_reference_lists_every_setting() {
    let table = client::reference();
    for s in client::SETTINGS {
        assert!(
            table.contains(&format!("| `{}` | ", s.key)) && table.contains(s.var),
            "{}",
            s.key
        );
    }
}

#[test]
fn the_client_identity_directory_is_per_farm_under_xdg_else_home() {
    let at = |pairs: &[(&str, &str)], farm| client::default_identity_dir(&env(pairs), farm);
    assert_eq!(
        at(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")], "default"),
        Some(PathBuf::from("/x/distcc-rs/identity/default"))
    );
    assert_eq!(
        at(&[("XDG_CONFIG_HOME", ""), ("HOME", "/h")], "lab"),
        Some(PathBuf::from("/h/.config/distcc-rs/identity/lab"))
    );
    assert_eq!(at(&[], "lab"), None);
}

#[test]
fn the_join_token_and_identity_directory_are_client_keys() {
    let text = "join_token = \"drs1-x\"\nidentity_dir = \"/id\"\n";
    let parsed = ConfigFile::parse(Path::new("/c.toml"), text).unwrap();
    let file = ClientFile::from_file(&parsed);
    assert!(file.problems.is_empty(), "{:?}", file.problems);
    assert_eq!(file.get("DISTCC_RS_JOIN_TOKEN"), Some("drs1-x"));
    assert_eq!(file.get("DISTCC_RS_IDENTITY_DIR"), Some("/id"));
    assert!(client::by_var("DISTCC_RS_JOIN_TOKEN").is_some());
    assert!(client::by_var("DISTCC_RS_IDENTITY_DIR").is_some());
}

#[test]
fn the_remote_timeout_is_a_client_key_of_whole_seconds() {
    let parsed = ConfigFile::parse(Path::new("/c.toml"), "remote_timeout = 120\n").unwrap();
    let file = ClientFile::from_file(&parsed);
    assert!(file.problems.is_empty(), "{:?}", file.problems);
    assert_eq!(file.get("DISTCC_RS_REMOTE_TIMEOUT"), Some("120"));
    let setting = client::by_var("DISTCC_RS_REMOTE_TIMEOUT").unwrap();
    assert_eq!(
        (setting.key, setting.kind),
        ("remote_timeout", client::Kind::Count)
    );
    // Longer than a node's default job timeout, and the docs say why.
    assert!(setting.default.contains("900"), "{}", setting.default);
    assert!(setting.meaning.contains("600 s"), "{}", setting.meaning);
    for bad in [
        "remote_timeout = 0",
        "remote_timeout = \"15m\"",
        "remote_timeout = 1.5",
    ] {
        let parsed = ConfigFile::parse(Path::new("/c.toml"), bad).unwrap();
        let file = ClientFile::from_file(&parsed);
        assert_eq!(file.get("DISTCC_RS_REMOTE_TIMEOUT"), None, "{bad}");
        assert_eq!(file.problems.len(), 1, "{bad}");
    }
}

#[test]
fn member_names_are_made_acceptable() {
    assert_eq!(
        client::sanitize_member_name("alice@build-3.lan"),
        "alice@build-3.lan"
    );
    assert_eq!(client::sanitize_member_name("a b/c@h"), "a-b-c@h");
    assert_eq!(client::sanitize_member_name(""), "client");
    assert_eq!(client::sanitize_member_name(&"x".repeat(300)).len(), 128);
    let name = client::member_name(&env(&[("USER", "bob")]));
    assert!(name.starts_with("bob@"), "{name}");
    assert!(
        distcc_rs_proto::auth::validate_member_name(&name).is_ok(),
        "{name}"
    );
}
