//! The client's settings: environment variables over a configuration file.
//!
//! The client runs as `RUSTC_WRAPPER`, once per rustc invocation, so it
//! takes its settings from environment variables that cargo passes through,
//! and from its configuration file (`~/.config/distcc-rs/client.toml`, or
//! the file `DISTCC_RS_CONFIG` names), whose keys stand for the same
//! variables and which they override (see
//! `distcc_rs_net::config_file::client`). A broken file never fails a build:
//! its problems are recorded, and [`ClientConfig::file_problem`] makes every
//! compile local until it is fixed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use distcc_rs_net::config_file::client::{self as file, ClientFile, SETTINGS, Setting};
use distcc_rs_net::config_file::{Origin, comment};
use distcc_rs_proto::JoinToken;
use distcc_rs_proto::discovery::{DEFAULT_FARM, validate_farm_name};

use crate::outputs::OutputLimits;
use crate::remote::DEFAULT_REMOTE_TIMEOUT;

/// Environment variable names, in one place for the docs and the tests.
/// Each but `CONFIG` is also a key of the configuration file.
pub mod vars {
    /// The client's configuration file, instead of
    /// `$XDG_CONFIG_HOME/distcc-rs/client.toml` or
    /// `~/.config/distcc-rs/client.toml`.
    pub const CONFIG: &str = distcc_rs_net::config_file::client::CONFIG_VAR;
    /// The scheduler's address, `host:port`. Unset, the client looks for
    /// the scheduler of its farm over mDNS.
    pub const SCHEDULER: &str = "DISTCC_RS_SCHEDULER";
    /// The farm whose scheduler mDNS looks for (default `default`).
    pub const NETNAME: &str = "DISTCC_RS_NETNAME";
    /// Set to `0` or `false` to never look for the scheduler over mDNS;
    /// without `DISTCC_RS_SCHEDULER` everything then compiles locally.
    pub const MDNS: &str = "DISTCC_RS_MDNS";
    /// The farm's join token, used once to enroll when no certificate is
    /// saved in the identity directory.
    pub const JOIN_TOKEN: &str = "DISTCC_RS_JOIN_TOKEN";
    /// Where the client's farm certificate, key and CA certificate are
    /// kept (default `$XDG_CONFIG_HOME/distcc-rs/identity/<netname>`, else
    /// `~/.config/distcc-rs/identity/<netname>`).
    pub const IDENTITY_DIR: &str = "DISTCC_RS_IDENTITY_DIR";
    /// Where the client keeps its toolchain bundle cache.
    pub const CACHE_DIR: &str = "DISTCC_RS_CACHE_DIR";
    /// A file to append one JSON line per invocation to.
    pub const EVENTS: &str = "DISTCC_RS_EVENTS";
    /// A tracing filter (e.g. `debug`); the client logs nothing without it.
    pub const LOG: &str = "DISTCC_RS_LOG";
    /// The log file (default: `client.log` in the cache directory).
    pub const LOG_FILE: &str = "DISTCC_RS_LOG_FILE";
    /// Set to `1` to compile everything locally.
    pub const DISABLE: &str = "DISTCC_RS_DISABLE";
    /// Set to `0` or `false` to hold back the `.rmeta` notification of a
    /// farm compile until the compile ends, as a farm without pipelining
    /// would (for benchmarks).
    pub const PIPELINING: &str = "DISTCC_RS_PIPELINING";
    /// How many local compiles (linking, build scripts, proc-macros, probes,
    /// fallbacks) may run at once across every wrapper on this machine that
    /// shares the cache directory (default: the number of CPUs).
    pub const LOCAL_SLOTS: &str = "DISTCC_RS_LOCAL_SLOTS";
    /// The most bytes of output files a node may send back for one job.
    pub const MAX_OUTPUT_SIZE: &str = "DISTCC_RS_MAX_OUTPUT_SIZE";
    /// How long one node may take over one compile, in seconds, before
    /// the client gives up on it (default 900).
    pub const REMOTE_TIMEOUT: &str = "DISTCC_RS_REMOTE_TIMEOUT";
}

/// The client's settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub scheduler: Option<Result<SocketAddr, String>>,
    pub cache_dir: PathBuf,
    pub events: Option<PathBuf>,
    pub disabled: bool,
    /// Whether cargo hears of a farm compile's `.rmeta` as soon as it
    /// arrives (so dependents start early), or only when the compile ends.
    pub pipelining: bool,
    /// What a node may send back for one job.
    pub output_limits: OutputLimits,
    /// How long one farm attempt may take, from sending the job to the
    /// node's last event, before the node counts as failed.
    pub remote_timeout: Duration,
    /// The farm to look for over mDNS, or why the farm name given is not
    /// one.
    pub farm: Result<String, String>,
    /// Whether the scheduler may be looked for over mDNS when no scheduler
    /// is given.
    pub mdns: bool,
    /// The join token, or why the one given is not a token (the message
    /// never holds the token's secret).
    pub join_token: Option<Result<JoinToken, String>>,
    /// The credentials directory, or why there is none (no setting, and
    /// neither `XDG_CONFIG_HOME` nor `HOME` to find the default under).
    pub identity_dir: Result<PathBuf, String>,
    /// The log filter; the client logs nothing without one.
    pub log: Option<String>,
    pub log_file: PathBuf,
    /// The configuration file looked for, if there is a place to look.
    pub file: Option<PathBuf>,
    /// Whether that file exists.
    pub file_found: bool,
    /// What is wrong with the configuration file. While it is broken,
    /// everything compiles locally: a mistake there must neither fail a
    /// build nor send jobs where the user did not mean them to go.
    pub file_problem: Option<String>,
    /// Each setting given, by variable name: its text and where it came
    /// from.
    values: BTreeMap<&'static str, (String, Origin)>,
}

impl ClientConfig {
    /// Reads the settings from the process environment and the
    /// configuration file.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the settings through `lookup`, which reads environment
    /// variables (empty counts as unset), and from the configuration file
    /// those variables lead to, so tests need no real environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let env = |k: &str| lookup(k).filter(|v| !v.is_empty());
        let location = file::location(&env);
        let loaded = ClientFile::load(&env);
        let mut values = BTreeMap::new();
        for setting in SETTINGS {
            let value = match (env(setting.var), &loaded) {
                (Some(v), _) => Some((v, Origin::Env(setting.var.to_owned()))),
                (None, Some(f)) => f
                    .get(setting.var)
                    .map(|v| (v.to_owned(), Origin::File(f.path.clone()))),
                (None, None) => None,
            };
            if let Some(value) = value {
                values.insert(setting.var, value);
            }
        }
        let get = |var: &str| values.get(var).map(|(v, _)| v.clone());

        let scheduler = values.get(vars::SCHEDULER).map(|(s, origin)| {
            s.parse::<SocketAddr>().map_err(|e| {
                format!(
                    "{} is not host:port: {e}",
                    assignment(vars::SCHEDULER, s, origin)
                )
            })
        });
        let cache_dir = get(vars::CACHE_DIR)
            .map(PathBuf::from)
            .or_else(|| env("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("distcc-rs")))
            .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".cache/distcc-rs")))
            .unwrap_or_else(|| std::env::temp_dir().join("distcc-rs"));
        let farm = match values.get(vars::NETNAME) {
            None => Ok(DEFAULT_FARM.to_owned()),
            Some((name, origin)) => validate_farm_name(name)
                .map(|()| name.clone())
                .map_err(|e| format!("{}: {e}", assignment(vars::NETNAME, name, origin))),
        };
        let join_token = values.get(vars::JOIN_TOKEN).map(|(text, origin)| {
            text.parse::<JoinToken>().map_err(|e| {
                // Not `assignment`: the value is a secret.
                let given = match (origin, file::by_var(vars::JOIN_TOKEN)) {
                    (Origin::File(path), Some(setting)) => {
                        format!("`{}` in {}", setting.key, path.display())
                    }
                    _ => vars::JOIN_TOKEN.to_owned(),
                };
                format!("{given}: {e}")
            })
        });
        let identity_dir = match get(vars::IDENTITY_DIR) {
            Some(dir) => Ok(PathBuf::from(dir)),
            None => {
                // A farm name that is not one has been reported already;
                // its directory would not be used.
                let farm = farm.as_deref().unwrap_or(DEFAULT_FARM);
                file::default_identity_dir(&env, farm).ok_or_else(|| {
                    format!(
                        "no directory for the farm certificate: set {} (neither \
                         XDG_CONFIG_HOME nor HOME is set)",
                        vars::IDENTITY_DIR
                    )
                })
            }
        };
        let file_problem = loaded.as_ref().and_then(|f| {
            let problems: Vec<String> = f.problems.iter().map(ToString::to_string).collect();
            (!problems.is_empty()).then(|| problems.join("; "))
        });
        ClientConfig {
            scheduler,
            log_file: get(vars::LOG_FILE)
                .map(PathBuf::from)
                .unwrap_or_else(|| cache_dir.join("client.log")),
            cache_dir,
            events: get(vars::EVENTS).map(PathBuf::from),
            disabled: get(vars::DISABLE).is_some_and(|v| v == "1" || v == "true"),
            pipelining: !get(vars::PIPELINING).is_some_and(|v| v == "0" || v == "false"),
            output_limits: output_limits(get(vars::MAX_OUTPUT_SIZE)),
            remote_timeout: remote_timeout(get(vars::REMOTE_TIMEOUT)),
            farm,
            mdns: !get(vars::MDNS).is_some_and(|v| v == "0" || v == "false"),
            join_token,
            identity_dir,
            log: get(vars::LOG),
            file_found: loaded.as_ref().is_some_and(|f| {
                !matches!(
                    f.problems.first(),
                    Some(distcc_rs_net::config_file::ConfigError::Read { .. })
                )
            }),
            file: location.map(|(path, _)| path),
            file_problem,
            values,
        }
    }

    /// The text of the setting of variable `var` (from the variable or the
    /// file), or `None` when it has its default.
    pub fn setting(&self, var: &str) -> Option<&str> {
        self.values.get(var).map(|(v, _)| v.as_str())
    }

    /// The settings in force as the client's configuration file, each with
    /// where it came from, for `distcc-rs config`. Defaults worked out from
    /// the environment or the machine (the cache directory, the CPU count)
    /// are shown commented out, so that the output pins nothing.
    pub fn render(&self) -> String {
        let mut out = comment(
            "The distcc-rs client's settings in force (distcc-rs config), each with where it \
             came from. Environment variables override the configuration file. See \
             docs/CONFIG.md.",
        );
        out += &comment(&match (&self.file, self.file_found) {
            (Some(path), true) => format!("Configuration file: {}.", path.display()),
            (Some(path), false) => format!(
                "Configuration file: none ({} does not exist).",
                path.display()
            ),
            (None, _) => {
                "Configuration file: none (neither XDG_CONFIG_HOME nor HOME is set).".to_owned()
            }
        });
        if let Some(problem) = &self.file_problem {
            out += &comment(&format!(
                "The file is broken, so everything compiles locally: {problem}"
            ));
        }
        for setting in SETTINGS {
            out.push('\n');
            out += &comment(&format!("{} [env: {}]", setting.meaning, setting.var));
            let origin = self.values.get(setting.var).map(|(_, o)| o.clone());
            let origin = origin.unwrap_or(Origin::Default);
            let key = setting.key;
            out += &match self.shown(setting) {
                Shown::Set(value) => format!("{key} = {value}  # {origin}\n"),
                Shown::Computed(value) => {
                    format!("# {key} = {value}  # default, worked out on each run\n")
                }
                Shown::Secret => format!("# {key}: set, not shown  # {origin}\n"),
                Shown::Unset => format!("# {key}: not set (default)\n"),
            };
        }
        out
    }

    /// How `distcc-rs config` shows a setting.
    fn shown(&self, setting: &Setting) -> Shown {
        use toml::Value;
        let given = self.setting(setting.var).map(str::to_owned);
        let path = |p: &PathBuf| Value::String(p.display().to_string());
        match setting.var {
            vars::MDNS => Shown::Set(Value::Boolean(self.mdns)),
            vars::DISABLE => Shown::Set(Value::Boolean(self.disabled)),
            vars::PIPELINING => Shown::Set(Value::Boolean(self.pipelining)),
            vars::NETNAME => Shown::Set(Value::String(
                given.unwrap_or_else(|| DEFAULT_FARM.to_owned()),
            )),
            vars::CACHE_DIR if given.is_none() => Shown::Computed(path(&self.cache_dir)),
            vars::LOG_FILE if given.is_none() => Shown::Computed(path(&self.log_file)),
            // The token lets anyone join the farm, and this output gets
            // pasted into bug reports.
            vars::JOIN_TOKEN if given.is_some() => Shown::Secret,
            vars::IDENTITY_DIR if given.is_none() => match &self.identity_dir {
                Ok(dir) => Shown::Computed(path(dir)),
                Err(_) => Shown::Unset,
            },
            vars::MAX_OUTPUT_SIZE => Shown::Set(Value::Integer(
                i64::try_from(self.output_limits.max_total_size).unwrap_or(i64::MAX),
            )),
            vars::REMOTE_TIMEOUT => Shown::Set(Value::Integer(
                i64::try_from(self.remote_timeout.as_secs()).unwrap_or(i64::MAX),
            )),
            vars::LOCAL_SLOTS => match given {
                Some(v) => Shown::Set(v.parse().map_or(Value::String(v), Value::Integer)),
                None => {
                    Shown::Computed(Value::Integer(crate::throttle::slot_count(|_| None) as i64))
                }
            },
            _ => given.map_or(Shown::Unset, |v| Shown::Set(Value::String(v))),
        }
    }
}

/// The output limits, with `max_output_size` (in bytes) if it is a positive
/// number; anything else leaves the default, which is a limit too.
fn output_limits(max_output_size: Option<String>) -> OutputLimits {
    let mut limits = OutputLimits::default();
    match max_output_size.map(|v| v.trim().parse::<u64>()) {
        Some(Ok(n)) if n > 0 => limits.max_total_size = n,
        None => {}
        Some(_) => tracing::warn!(
            "{} is not a positive number of bytes; using {}",
            vars::MAX_OUTPUT_SIZE,
            limits.max_total_size
        ),
    }
    limits
}

/// The deadline of one farm attempt, `remote_timeout` seconds if that is a
/// positive number; anything else leaves the default, which is a deadline
/// too (a broken setting neither fails a build nor lifts the bound).
fn remote_timeout(secs: Option<String>) -> Duration {
    match secs.map(|v| v.trim().parse::<u64>()) {
        Some(Ok(n)) if n > 0 => Duration::from_secs(n),
        None => DEFAULT_REMOTE_TIMEOUT,
        Some(_) => {
            tracing::warn!(
                "{} is not a positive number of seconds; using {}",
                vars::REMOTE_TIMEOUT,
                DEFAULT_REMOTE_TIMEOUT.as_secs()
            );
            DEFAULT_REMOTE_TIMEOUT
        }
    }
}

/// A setting as `distcc-rs config` shows it.
enum Shown {
    /// Given, or with a fixed default.
    Set(toml::Value),
    /// A default worked out from the environment or the machine.
    Computed(toml::Value),
    /// Given, but not to be printed.
    Secret,
    Unset,
}

/// How a setting was given, for messages: `VAR="value"` or `` `key =
/// "value"` in FILE ``.
fn assignment(var: &str, value: &str, origin: &Origin) -> String {
    match (origin, file::by_var(var)) {
        (Origin::File(path), Some(setting)) => {
            format!("`{} = {value:?}` in {}", setting.key, path.display())
        }
        _ => format!("{var}={value:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let c = ClientConfig::from_lookup(env(&[
            ("DISTCC_RS_SCHEDULER", "127.0.0.1:7700"),
            ("HOME", "/home/u"),
        ]));
        assert_eq!(c.scheduler, Some(Ok("127.0.0.1:7700".parse().unwrap())));
        assert_eq!(c.cache_dir, PathBuf::from("/home/u/.cache/distcc-rs"));
        assert!(!c.disabled);
        assert!(c.pipelining);

        let c = ClientConfig::from_lookup(env(&[
            ("DISTCC_RS_SCHEDULER", "not an address"),
            ("DISTCC_RS_CACHE_DIR", "/c"),
            ("DISTCC_RS_DISABLE", "1"),
            ("DISTCC_RS_PIPELINING", "0"),
        ]));
        assert!(matches!(c.scheduler, Some(Err(_))));
        assert_eq!(c.cache_dir, PathBuf::from("/c"));
        assert!(c.disabled);
        assert!(!c.pipelining);
        assert!(!ClientConfig::from_lookup(env(&[("DISTCC_RS_PIPELINING", "false")])).pipelining);
        assert!(ClientConfig::from_lookup(env(&[("DISTCC_RS_PIPELINING", "1")])).pipelining);

        let c = ClientConfig::from_lookup(env(&[]));
        assert_eq!(c.scheduler, None);
        assert_eq!(c.farm, Ok("default".to_owned()));
        assert!(c.mdns);
    }

    #[test]
    fn the_output_limit_has_a_default_and_only_a_number_changes_it() {
        let c = ClientConfig::from_lookup(env(&[]));
        assert_eq!(c.output_limits, crate::outputs::OutputLimits::default());
        assert_eq!(c.output_limits.max_total_size, 4 << 30);
        let c = ClientConfig::from_lookup(env(&[("DISTCC_RS_MAX_OUTPUT_SIZE", "12345")]));
        assert_eq!(c.output_limits.max_total_size, 12345);
        // A value that is no positive number leaves the default limit: a
        // mistake here must not lift it.
        for bad in ["0", "-1", "4GiB", "lots"] {
            let c = ClientConfig::from_lookup(env(&[("DISTCC_RS_MAX_OUTPUT_SIZE", bad)]));
            assert_eq!(c.output_limits.max_total_size, 4 << 30, "{bad}");
        }
    }

    #[test]
    fn the_remote_timeout_has_a_default_and_only_a_number_changes_it() {
        let c = ClientConfig::from_lookup(env(&[]));
        assert_eq!(c.remote_timeout, Duration::from_secs(900));
        assert!(c.render().contains("\nremote_timeout = 900  # default\n"));
        let c = ClientConfig::from_lookup(env(&[("DISTCC_RS_REMOTE_TIMEOUT", " 42 ")]));
        assert_eq!(c.remote_timeout, Duration::from_secs(42));
        assert!(
            c.render()
                .contains("\nremote_timeout = 42  # env DISTCC_RS_REMOTE_TIMEOUT\n"),
            "{}",
            c.render()
        );
        // A value that is no positive number of seconds leaves the default
        // deadline: a mistake here must neither fail a build nor lift it.
        for bad in ["0", "-5", "1.5", "15m", "forever", ""] {
            let c = ClientConfig::from_lookup(env(&[("DISTCC_RS_REMOTE_TIMEOUT", bad)]));
            assert_eq!(c.remote_timeout, Duration::from_secs(900), "{bad:?}");
            assert_eq!(c.file_problem, None, "{bad:?}");
        }
        // As large as the variable can say, it is still a deadline.
        let c =
            ClientConfig::from_lookup(env(&[("DISTCC_RS_REMOTE_TIMEOUT", &u64::MAX.to_string())]));
        assert_eq!(c.remote_timeout, Duration::from_secs(u64::MAX));
        assert!(
            c.render()
                .contains(&format!("\nremote_timeout = {}  #", i64::MAX))
        );
    }

    #[test]
    fn farm_and_mdns_settings() {
        let lookup = |pairs: Vec<(&'static str, &'static str)>| {
            ClientConfig::from_lookup(move |k| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            })
        };
        let c = lookup(vec![
            ("DISTCC_RS_NETNAME", "team-a"),
            ("DISTCC_RS_MDNS", "0"),
        ]);
        assert_eq!(c.farm, Ok("team-a".to_owned()));
        assert!(!c.mdns);
        assert_eq!(
            lookup(vec![("DISTCC_RS_NETNAME", "")]).farm,
            Ok("default".into())
        );
        let bad = lookup(vec![("DISTCC_RS_NETNAME", "a b")]).farm.unwrap_err();
        assert!(bad.starts_with("DISTCC_RS_NETNAME=\"a b\": "), "{bad}");
        assert!(!lookup(vec![("DISTCC_RS_MDNS", "false")]).mdns);
        assert!(lookup(vec![("DISTCC_RS_MDNS", "1")]).mdns);
    }

    /// A fake environment.
    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    /// `text` as a configuration file in a fresh directory.
    fn config_file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path.to_str().unwrap().to_owned())
    }

    const EVERY_KEY: &str = "scheduler = \"10.0.0.1:7700\"\nnetname = \"lab\"\nmdns = false\n\
                             cache_dir = \"/file/cache\"\nevents = \"/file/events\"\n\
                             disable = true\npipelining = false\nlocal_slots = 3\n\
                             max_output_size = 1000\nremote_timeout = 60\n\
                             log = \"debug\"\nlog_file = \"/file/log\"\n\
                             identity_dir = \"/file/identity\"\n\
                             join_token = \"drs1-0123456789abcdef0123456789abcdef-\
                             fedcba9876543210fedcba9876543210\"\n";

    /// The join token of [`EVERY_KEY`].
    const FILE_TOKEN: &str =
        "drs1-0123456789abcdef0123456789abcdef-fedcba9876543210fedcba9876543210";

    #[test]
    fn the_configuration_file_gives_every_setting() {
        let (_dir, path) = config_file(EVERY_KEY);
        let c = ClientConfig::from_lookup(env(&[("DISTCC_RS_CONFIG", &path)]));
        assert_eq!(c.file_problem, None);
        assert_eq!(c.scheduler, Some(Ok("10.0.0.1:7700".parse().unwrap())));
        assert_eq!(c.farm, Ok("lab".to_owned()));
        assert!(!c.mdns);
        assert_eq!(c.cache_dir, PathBuf::from("/file/cache"));
        assert_eq!(c.events, Some(PathBuf::from("/file/events")));
        assert!(c.disabled);
        assert!(!c.pipelining);
        assert_eq!(c.setting(vars::LOCAL_SLOTS), Some("3"));
        assert_eq!(c.output_limits.max_total_size, 1000);
        assert_eq!(c.remote_timeout, Duration::from_secs(60));
        assert_eq!(c.log.as_deref(), Some("debug"));
        assert_eq!(c.log_file, PathBuf::from("/file/log"));
        assert_eq!(c.identity_dir, Ok(PathBuf::from("/file/identity")));
        assert_eq!(c.join_token, Some(Ok(FILE_TOKEN.parse().unwrap())));
        assert!(c.file_found);
    }

    #[test]
    fn the_environment_overrides_the_configuration_file() {
        let (dir, _) = config_file(EVERY_KEY);
        // Found at its default place under XDG_CONFIG_HOME this time.
        std::fs::create_dir(dir.path().join("distcc-rs")).unwrap();
        std::fs::rename(
            dir.path().join("client.toml"),
            dir.path().join("distcc-rs/client.toml"),
        )
        .unwrap();
        let c = ClientConfig::from_lookup(env(&[
            ("XDG_CONFIG_HOME", dir.path().to_str().unwrap()),
            ("DISTCC_RS_SCHEDULER", "10.0.0.2:7700"),
            ("DISTCC_RS_NETNAME", "env"),
            ("DISTCC_RS_MDNS", "1"),
            ("DISTCC_RS_DISABLE", "0"),
            ("DISTCC_RS_PIPELINING", "true"),
            ("DISTCC_RS_LOCAL_SLOTS", "5"),
            ("DISTCC_RS_MAX_OUTPUT_SIZE", "2000"),
            ("DISTCC_RS_REMOTE_TIMEOUT", "30"),
            // Empty counts as unset: the file's value stands.
            ("DISTCC_RS_EVENTS", ""),
        ]));
        assert_eq!(c.scheduler, Some(Ok("10.0.0.2:7700".parse().unwrap())));
        assert_eq!(c.farm, Ok("env".to_owned()));
        assert!(c.mdns);
        assert!(!c.disabled);
        assert!(c.pipelining);
        assert_eq!(c.setting(vars::LOCAL_SLOTS), Some("5"));
        assert_eq!(c.output_limits.max_total_size, 2000);
        assert_eq!(c.remote_timeout, Duration::from_secs(30));
        assert_eq!(c.events, Some(PathBuf::from("/file/events")));
        assert_eq!(c.cache_dir, PathBuf::from("/file/cache"));
    }

    #[test]
    fn the_join_token_and_identity_directory_settings() {
        const ENV_TOKEN: &str =
            "drs1-00000000000000000000000000000000-11111111111111111111111111111111";
        // Defaults: no token; the directory is per farm, under
        // XDG_CONFIG_HOME, else HOME.
        let c = ClientConfig::from_lookup(env(&[("HOME", "/home/u")]));
        assert_eq!(c.join_token, None);
        assert_eq!(
            c.identity_dir,
            Ok(PathBuf::from("/home/u/.config/distcc-rs/identity/default"))
        );
        let c = ClientConfig::from_lookup(env(&[
            ("HOME", "/home/u"),
            ("XDG_CONFIG_HOME", "/xdg"),
            ("DISTCC_RS_NETNAME", "lab"),
        ]));
        assert_eq!(
            c.identity_dir,
            Ok(PathBuf::from("/xdg/distcc-rs/identity/lab"))
        );
        let c = ClientConfig::from_lookup(env(&[]));
        assert!(
            c.identity_dir
                .as_ref()
                .unwrap_err()
                .contains("DISTCC_RS_IDENTITY_DIR"),
            "{:?}",
            c.identity_dir
        );

        // The environment overrides the file; empty counts as unset.
        let (_dir, path) = config_file(EVERY_KEY);
        let c = ClientConfig::from_lookup(env(&[
            ("DISTCC_RS_CONFIG", &path),
            ("DISTCC_RS_JOIN_TOKEN", ENV_TOKEN),
            ("DISTCC_RS_IDENTITY_DIR", "/env/identity"),
        ]));
        assert_eq!(c.join_token, Some(Ok(ENV_TOKEN.parse().unwrap())));
        assert_eq!(c.identity_dir, Ok(PathBuf::from("/env/identity")));
        let c = ClientConfig::from_lookup(env(&[
            ("DISTCC_RS_CONFIG", &path),
            ("DISTCC_RS_JOIN_TOKEN", ""),
            ("DISTCC_RS_IDENTITY_DIR", ""),
        ]));
        assert_eq!(c.join_token, Some(Ok(FILE_TOKEN.parse().unwrap())));
        assert_eq!(c.identity_dir, Ok(PathBuf::from("/file/identity")));

        // A malformed token says where it came from, but not what it is.
        let secretish = "drs1-0123-SECRETSECRET";
        let c = ClientConfig::from_lookup(env(&[("DISTCC_RS_JOIN_TOKEN", secretish)]));
        let bad = c.join_token.unwrap().unwrap_err();
        assert!(
            bad.starts_with("DISTCC_RS_JOIN_TOKEN: not a join token"),
            "{bad}"
        );
        assert!(!bad.contains("SECRET"), "{bad}");
        let (_dir, bad_file) = config_file("join_token = \"drs1-SECRETSECRET\"\n");
        let bad = ClientConfig::from_lookup(env(&[("DISTCC_RS_CONFIG", &bad_file)]))
            .join_token
            .unwrap()
            .unwrap_err();
        assert!(
            bad.starts_with(&format!("`join_token` in {bad_file}: not a join token")),
            "{bad}"
        );
        assert!(!bad.contains("SECRET"), "{bad}");

        // `distcc-rs config` says a token is set, but not which.
        let c = ClientConfig::from_lookup(env(&[("DISTCC_RS_CONFIG", &path)]));
        let printed = c.render();
        assert!(!printed.contains(&FILE_TOKEN[5..]), "{printed}");
        assert!(
            printed.contains(&format!("\n# join_token: set, not shown  # file {path}\n")),
            "{printed}"
        );
        assert!(
            printed.contains(&format!(
                "\nidentity_dir = \"/file/identity\"  # file {path}\n"
            )),
            "{printed}"
        );
        let defaults = ClientConfig::from_lookup(env(&[("HOME", "/home/u")])).render();
        assert!(
            defaults.contains(
                "\n# identity_dir = \"/home/u/.config/distcc-rs/identity/default\"  # default, \
                 worked out on each run\n"
            ),
            "{defaults}"
        );
        assert!(
            defaults.contains("\n# join_token: not set (default)\n"),
            "{defaults}"
        );
    }

    #[test]
    fn a_broken_configuration_file_is_a_problem_not_a_failure() {
        let (_dir, path) = config_file("sheduler = \"10.0.0.1:7700\"\nevents = \"/file/events\"\n");
        let c = ClientConfig::from_lookup(env(&[("DISTCC_RS_CONFIG", &path)]));
        let problem = c.file_problem.as_deref().unwrap();
        assert!(
            problem.contains("unknown key `sheduler`") && problem.contains(&path),
            "{problem}"
        );
        // The good keys still apply, so the event log can say why every
        // compile was local.
        assert_eq!(c.events, Some(PathBuf::from("/file/events")));

        let (_dir, path) = config_file("scheduler = \n");
        let c = ClientConfig::from_lookup(env(&[("DISTCC_RS_CONFIG", &path)]));
        assert!(c.file_problem.unwrap().contains("not valid TOML"));

        let c = ClientConfig::from_lookup(env(&[("DISTCC_RS_CONFIG", "/nonexistent/c.toml")]));
        assert!(c.file_problem.unwrap().contains("/nonexistent/c.toml"));
        assert!(!c.file_found);

        // A value the client cannot use names the key and the file.
        let (_dir, path) = config_file("scheduler = \"nowhere\"\n");
        let c = ClientConfig::from_lookup(env(&[("DISTCC_RS_CONFIG", &path)]));
        let bad = c.scheduler.unwrap().unwrap_err();
        assert!(
            bad.starts_with(&format!(
                "`scheduler = \"nowhere\"` in {path} is not host:port"
            )),
            "{bad}"
        );
    }

    #[test]
    fn the_printed_settings_read_back_as_the_same_settings() {
        let (_dir, path) = config_file(EVERY_KEY);
        let c = ClientConfig::from_lookup(env(&[
            ("DISTCC_RS_CONFIG", &path),
            ("DISTCC_RS_NETNAME", "from-env"),
            ("DISTCC_RS_CACHE_DIR", ""),
            ("HOME", "/home/u"),
        ]));
        let printed = c.render();
        assert!(
            printed.contains("\nnetname = \"from-env\"  # env DISTCC_RS_NETNAME\n"),
            "{printed}"
        );
        assert!(
            printed.contains(&format!("\nmdns = false  # file {path}\n")),
            "{printed}"
        );
        assert!(
            printed.contains(&format!("\nlocal_slots = 3  # file {path}\n")),
            "{printed}"
        );
        assert!(
            printed.contains(&format!("\ncache_dir = \"/file/cache\"  # file {path}\n")),
            "{printed}"
        );

        let (_dir, printed_path) = config_file(&printed);
        let again = ClientConfig::from_lookup(env(&[
            ("DISTCC_RS_CONFIG", &printed_path),
            ("HOME", "/home/u"),
        ]));
        assert_eq!(again.file_problem, None);
        assert_eq!(again.scheduler, c.scheduler);
        assert_eq!(again.farm, c.farm);
        assert_eq!(again.cache_dir, c.cache_dir);
        assert_eq!(again.events, c.events);
        assert_eq!(again.log, c.log);
        assert_eq!(again.log_file, c.log_file);
        assert_eq!(
            (again.mdns, again.disabled, again.pipelining),
            (c.mdns, c.disabled, c.pipelining)
        );
        assert_eq!(again.output_limits, c.output_limits);
        assert_eq!(again.remote_timeout, c.remote_timeout);
        assert_eq!(again.remote_timeout, Duration::from_secs(60));
        assert_eq!(
            again.setting(vars::LOCAL_SLOTS),
            c.setting(vars::LOCAL_SLOTS)
        );

        // Defaults worked out on each run are shown but not pinned.
        let defaults = ClientConfig::from_lookup(env(&[("HOME", "/home/u")])).render();
        assert!(
            defaults.contains(
                "\n# cache_dir = \"/home/u/.cache/distcc-rs\"  # default, worked out on each run\n"
            ),
            "{defaults}"
        );
        assert!(
            defaults.contains("\nmdns = true  # default\n"),
            "{defaults}"
        );
        assert!(
            defaults.contains("\n# scheduler: not set (default)\n"),
            "{defaults}"
        );
    }

    #[test]
    fn every_variable_is_a_key_of_the_configuration_file() {
        for var in [
            vars::SCHEDULER,
            vars::NETNAME,
            vars::MDNS,
            vars::CACHE_DIR,
            vars::EVENTS,
            vars::LOG,
            vars::LOG_FILE,
            vars::DISABLE,
            vars::PIPELINING,
            vars::LOCAL_SLOTS,
            vars::JOIN_TOKEN,
            vars::IDENTITY_DIR,
            vars::MAX_OUTPUT_SIZE,
            vars::REMOTE_TIMEOUT,
        ] {
            assert!(file::by_var(var).is_some(), "{var}");
        }
        assert_eq!(SETTINGS.len(), 14);
    }

    #[test]
    fn the_configuration_reference_in_the_docs_is_current() {
        let doc = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/CONFIG.md");
        let update = std::env::var_os("UPDATE_DOCS").is_some();
        if let Err(e) = distcc_rs_net::config_file::check_generated_block(
            &doc,
            "client",
            &file::reference(),
            update,
        ) {
            panic!("{e}");
        }
    }
}
