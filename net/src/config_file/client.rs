//! The client's configuration file.
//!
//! The client is cargo's `RUSTC_WRAPPER` and takes no flags of its own: its
//! settings are environment variables, and its file gives the same settings
//! under shorter keys (`scheduler` for `DISTCC_RS_SCHEDULER`). A variable
//! overrides the file. The file is read once per rustc invocation, so it is
//! one small read and no more; one that does not exist costs one failed
//! open.
//!
//! `distcc-rs-pack` finds the scheduler and the client's cache through the
//! same settings, which is why they are here and not in the client.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{ConfigError, ConfigFile, Origin};

/// The variable that names the client's file, overriding its default
/// location.
pub const CONFIG_VAR: &str = "DISTCC_RS_CONFIG";

/// The TOML type of a client setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string.
    Text,
    /// `true` or `false`; as a variable, `1`/`true` or `0`/`false`.
    Switch,
    /// A positive integer.
    Count,
}

/// One client setting: its key in the file and the variable that
/// overrides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub key: &'static str,
    pub var: &'static str,
    pub kind: Kind,
    /// The default, as docs/CONFIG.md states it.
    pub default: &'static str,
    pub meaning: &'static str,
}

/// Every client setting, in the order `distcc-rs config` prints them.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "scheduler",
        var: "DISTCC_RS_SCHEDULER",
        kind: Kind::Text,
        default: "not set: the scheduler of the farm is looked for over mDNS",
        meaning: "The scheduler's address, `IP:PORT`.",
    },
    Setting {
        key: "netname",
        var: "DISTCC_RS_NETNAME",
        kind: Kind::Text,
        default: "`\"default\"`",
        meaning: "The farm whose scheduler mDNS looks for.",
    },
    Setting {
        key: "mdns",
        var: "DISTCC_RS_MDNS",
        kind: Kind::Switch,
        default: "`true`",
        meaning: "Whether the scheduler may be looked for over mDNS when `scheduler` is not \
                  set; without either, everything compiles locally.",
    },
    Setting {
        key: "join_token",
        var: "DISTCC_RS_JOIN_TOKEN",
        kind: Kind::Text,
        default: "not set",
        meaning: "The farm's join token (`distcc-rs-scheduler token` prints it), used once to \
                  enroll when no certificate is saved in `identity_dir`; `distcc-rs join TOKEN` \
                  does the same by hand. It grants membership of the farm: keep it as secret \
                  as a password. Without a certificate and a token, everything compiles \
                  locally.",
    },
    Setting {
        key: "identity_dir",
        var: "DISTCC_RS_IDENTITY_DIR",
        kind: Kind::Text,
        default: "`$XDG_CONFIG_HOME/distcc-rs/identity/<netname>`, else \
                  `~/.config/distcc-rs/identity/<netname>`",
        meaning: "Where the client keeps its farm certificate, private key and the farm's CA \
                  certificate (written when it enrolls; shared by `distcc-rs`, `status`, \
                  `monitor` and `distcc-rs-pack`).",
    },
    Setting {
        key: "cache_dir",
        var: "DISTCC_RS_CACHE_DIR",
        kind: Kind::Text,
        default: "`$XDG_CACHE_HOME/distcc-rs`, else `~/.cache/distcc-rs`",
        meaning: "The toolchain bundle cache, the input hash cache, the local compile slots \
                  and the log file.",
    },
    Setting {
        key: "events",
        var: "DISTCC_RS_EVENTS",
        kind: Kind::Text,
        default: "not set: no event log",
        meaning: "A file to append one JSON line per compile to (where it ran, and why).",
    },
    Setting {
        key: "disable",
        var: "DISTCC_RS_DISABLE",
        kind: Kind::Switch,
        default: "`false`",
        meaning: "Compile everything locally.",
    },
    Setting {
        key: "pipelining",
        var: "DISTCC_RS_PIPELINING",
        kind: Kind::Switch,
        default: "`true`",
        meaning: "Whether cargo hears of a farm compile's `.rmeta` as soon as it arrives, so \
                  dependent crates start early; `false` holds it back until the compile ends, \
                  as a farm without pipelining would (for comparisons).",
    },
    Setting {
        key: "local_slots",
        var: "DISTCC_RS_LOCAL_SLOTS",
        kind: Kind::Count,
        default: "the number of CPUs",
        meaning: "How many local compiles (linking, build scripts, proc-macros, fallbacks) may \
                  run at once across every wrapper on this machine that shares the cache \
                  directory.",
    },
    Setting {
        key: "max_output_size",
        var: "DISTCC_RS_MAX_OUTPUT_SIZE",
        kind: Kind::Count,
        default: "`4294967296` (4 GiB)",
        meaning: "The most bytes of output files a node may send back for one compile, all \
                  files together (one file may have at most 4 GiB). A node that sends more \
                  fails the job, which is then compiled elsewhere or locally.",
    },
    Setting {
        key: "remote_timeout",
        var: "DISTCC_RS_REMOTE_TIMEOUT",
        kind: Kind::Count,
        default: "`900` (15 minutes)",
        meaning: "How long one node may take over one compile, in seconds, from connecting \
                  to it and sending it the job to the last thing it sends back. A node that \
                  has sent nothing conclusive by then fails the job, which is then compiled \
                  elsewhere or locally. Longer than a node's default job timeout \
                  (`--job-timeout`, 600 s), so that a healthy node always reports its own \
                  timeout first; keep it longer than the farm's job timeout.",
    },
    Setting {
        key: "log",
        var: "DISTCC_RS_LOG",
        kind: Kind::Text,
        default: "not set: no log",
        meaning: "A log filter such as `info` or `debug`.",
    },
    Setting {
        key: "log_file",
        var: "DISTCC_RS_LOG_FILE",
        kind: Kind::Text,
        default: "`client.log` in the cache directory",
        meaning: "The log file.",
    },
];

/// The setting a variable belongs to.
pub fn by_var(var: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.var == var)
}

/// The client's file: `$DISTCC_RS_CONFIG`, which must exist, else
/// `$XDG_CONFIG_HOME/distcc-rs/client.toml`, else
/// `~/.config/distcc-rs/client.toml`, either of which may be missing.
/// `env` reads environment variables, empty counting as unset.
pub fn location(env: &dyn Fn(&str) -> Option<String>) -> Option<(PathBuf, Origin)> {
    let env = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(path) = env(CONFIG_VAR) {
        return Some((PathBuf::from(path), Origin::Env(CONFIG_VAR.to_owned())));
    }
    let dir = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some((dir.join("distcc-rs/client.toml"), Origin::Default))
}

/// The default credentials directory of a client of farm `farm`:
/// `$XDG_CONFIG_HOME/distcc-rs/identity/<farm>`, else
/// `~/.config/distcc-rs/identity/<farm>`; `None` when neither variable is
/// set. `env` reads environment variables, empty counting as unset.
pub fn default_identity_dir(env: &dyn Fn(&str) -> Option<String>, farm: &str) -> Option<PathBuf> {
    let env = |name: &str| env(name).filter(|v| !v.is_empty());
    let dir = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(dir.join("distcc-rs/identity").join(farm))
}

/// The name a client enrolls under: `user@host`, from `USER` (else
/// `LOGNAME`, else the user id) and the kernel's host name, with every
/// character a member name may not hold replaced by `-` and cut to the
/// longest name the scheduler accepts.
pub fn member_name(env: &dyn Fn(&str) -> Option<String>) -> String {
    let env = |name: &str| env(name).filter(|v| !v.is_empty());
    let user = env("USER")
        .or_else(|| env("LOGNAME"))
        .unwrap_or_else(|| format!("uid{}", nix::unistd::getuid()));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    sanitize_member_name(&format!("{user}@{host}"))
}

/// `name` with the characters a member name may not hold replaced by `-`,
/// cut to [`distcc_rs_proto::auth::MAX_MEMBER_NAME`] bytes.
pub fn sanitize_member_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.@".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    out.truncate(distcc_rs_proto::auth::MAX_MEMBER_NAME);
    if out.is_empty() {
        out.push_str("client");
    }
    out
}

/// What the client's file says, as the values of the variables its keys
/// stand for, and what is wrong with it.
#[derive(Debug, Default)]
pub struct ClientFile {
    pub path: PathBuf,
    values: BTreeMap<&'static str, String>,
    /// Keys that are unknown or of the wrong type are left out and listed
    /// here; so is a file that cannot be read or parsed, with nothing taken
    /// from it.
    pub problems: Vec<ConfigError>,
}

impl ClientFile {
    /// Reads the client's file from where [`location`] says, or `None` when
    /// there is none: no location, or nothing at the default one.
    pub fn load(env: &dyn Fn(&str) -> Option<String>) -> Option<ClientFile> {
        let (path, origin) = location(env)?;
        match ConfigFile::read(&path, origin != Origin::Default) {
            Ok(file) => file.map(|f| ClientFile::from_file(&f)),
            Err(problem) => Some(ClientFile {
                path,
                values: BTreeMap::new(),
                problems: vec![problem],
            }),
        }
    }

    /// Checks a parsed file against the client's keys.
    pub fn from_file(file: &ConfigFile) -> ClientFile {
        let path = file.path().to_owned();
        let mut values = BTreeMap::new();
        let mut problems = Vec::new();
        for (key, value) in file.entries() {
            let Some(setting) = SETTINGS.iter().find(|s| s.key == key) else {
                problems.push(ConfigError::UnknownKey {
                    path: path.clone(),
                    key: key.to_owned(),
                    valid: SETTINGS.iter().map(|s| s.key.to_owned()).collect(),
                });
                continue;
            };
            let text = match (setting.kind, value) {
                (Kind::Text, toml::Value::String(s)) => Ok(s.clone()),
                (Kind::Text, _) => Err("a string"),
                (Kind::Switch, toml::Value::Boolean(b)) => Ok(b.to_string()),
                (Kind::Switch, _) => Err("true or false"),
                (Kind::Count, toml::Value::Integer(n)) if *n > 0 => Ok(n.to_string()),
                (Kind::Count, _) => Err("a positive integer"),
            };
            match text {
                Ok(text) => {
                    values.insert(setting.var, text);
                }
                Err(expected) => problems.push(ConfigError::WrongType {
                    path: path.clone(),
                    key: key.to_owned(),
                    expected,
                    found: value.type_str().to_owned(),
                }),
            }
        }
        ClientFile {
            path,
            values,
            problems,
        }
    }

    /// The value the file gives the setting of variable `var`, in the form
    /// the variable would hold it (`true`/`false` for switches).
    pub fn get(&self, var: &str) -> Option<&str> {
        self.values.get(var).map(String::as_str)
    }
}

/// A Markdown table of the client's settings, for docs/CONFIG.md.
pub fn reference() -> String {
    let mut out =
        String::from("| key | type | default | overridden by | meaning |\n|---|---|---|---|---|\n");
    for s in SETTINGS {
        let ty = match s.kind {
            Kind::Text => "string",
            Kind::Switch => "boolean",
            Kind::Count => "integer",
        };
        out += &format!(
            "| `{}` | {ty} | {} | `{}` | {} |\n",
            s.key, s.default, s.var, s.meaning
        );
    }
    out
}
