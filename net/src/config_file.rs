//! Configuration files: one TOML file per role, beneath environment
//! variables and flags.
//!
//! A setting's value comes from the first of these that gives one: a
//! command-line flag, an environment variable (for the settings that have
//! one), the role's configuration file, the built-in default.
//!
//! The daemons declare each setting once, as a clap argument, and its key in
//! the file is the argument's id: the flag in snake_case (`--store-size` is
//! `store_size`), except that a repeatable flag takes its field's plural
//! (`--node` is `nodes`) and an off switch names what it turns off
//! (`--no-mdns` is `mdns = false`). [`parse_layered`] reads the file and the
//! environment and makes their values the arguments' defaults before clap
//! parses the command line, so a flag overrides both the way clap overrides
//! any default, and where each value came from is still known for
//! `--print-config`.
//!
//! The client, which cargo starts once per rustc and which takes no flags,
//! maps its file's keys onto its environment variables instead: see
//! [`client`].

pub mod client;

use std::any::TypeId;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

/// The id of the argument that names the configuration file (`--config`).
/// A daemon declares it with the environment variable that may name the
/// file instead.
pub const CONFIG_ARG: &str = "config";
/// The id of the argument that asks for the settings in force
/// (`--print-config`).
pub const PRINT_CONFIG_ARG: &str = "print_config";

/// Argument ids that are not settings: they say where settings come from,
/// or what to do instead of running.
const NOT_SETTINGS: [&str; 4] = ["help", "version", CONFIG_ARG, PRINT_CONFIG_ARG];

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Built into the program.
    Default,
    /// The configuration file at this path.
    File(PathBuf),
    /// This environment variable.
    Env(String),
    /// This command-line flag.
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(path) => write!(f, "file {}", path.display()),
            Origin::Env(var) => write!(f, "env {var}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// Why the settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read. A file at a role's default location that
    /// does not exist is not an error; one named explicitly is.
    #[error("cannot read the configuration file {}: {cause}", path.display())]
    Read { path: PathBuf, cause: io::Error },
    /// The file is not TOML.
    #[error("the configuration file {} is not valid TOML: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    /// The file has a key the role does not know: a typo must not be
    /// silently ignored.
    #[error(
        "the configuration file {} has an unknown key `{key}`; the valid keys are {}",
        path.display(),
        valid.join(", ")
    )]
    UnknownKey {
        path: PathBuf,
        key: String,
        valid: Vec<String>,
    },
    /// A key's value has the wrong TOML type.
    #[error("in the configuration file {}, `{key}` must be {expected}, not {found}", path.display())]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },
    /// A key's value has the right type but is not a valid setting.
    #[error("in the configuration file {}, `{key} = {value}` is not valid: {reason}", path.display())]
    InvalidValue {
        path: PathBuf,
        key: String,
        value: String,
        reason: String,
    },
    /// An environment variable's value is not a valid setting.
    #[error("{var}={value:?} is not valid (for `{key}`): {reason}")]
    InvalidEnv {
        var: String,
        key: String,
        value: String,
        reason: String,
    },
    /// The command line is wrong, or asks for the help or the version:
    /// [`clap::Error::exit`] prints it and exits as clap would.
    #[error(transparent)]
    CommandLine(#[from] clap::Error),
}

impl ConfigError {
    /// Prints the error and exits, as [`clap::Error::exit`] does: a request
    /// for the help or the version prints it and exits with 0, anything
    /// else is a usage error (exit code 2), a bad configuration included,
    /// since the daemon has not started.
    pub fn exit(self, program: &str) -> ! {
        match self {
            ConfigError::CommandLine(e) => e.exit(),
            other => {
                eprintln!("{program}: error: {other}");
                std::process::exit(2)
            }
        }
    }
}

/// A configuration file, read and parsed as TOML but not yet checked
/// against any role's keys.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    path: PathBuf,
    table: toml::Table,
}

impl ConfigFile {
    /// Reads and parses the file at `path`. A file that does not exist is
    /// `Ok(None)` unless `required`.
    pub fn read(path: &Path, required: bool) -> Result<Option<ConfigFile>, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => ConfigFile::parse(path, &text).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !required => Ok(None),
            Err(cause) => Err(ConfigError::Read {
                path: path.to_owned(),
                cause,
            }),
        }
    }

    /// Parses `text` as the content of the file at `path`.
    pub fn parse(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
        let table = text
            .parse::<toml::Table>()
            .map_err(|e| ConfigError::Syntax {
                path: path.to_owned(),
                message: e.to_string().trim_end().to_owned(),
            })?;
        Ok(ConfigFile {
            path: path.to_owned(),
            table,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The keys and values, in key order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &toml::Value)> {
        self.table.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// Which configuration file a daemon used, and why that one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChoice {
    pub path: PathBuf,
    /// `--config`, the variable that named it, or the role's default
    /// location.
    pub origin: Origin,
    /// Whether it existed; only a file at the default location may not.
    pub found: bool,
}

/// A daemon's command line parsed on top of its configuration file and
/// environment.
#[derive(Debug, Clone)]
pub struct Layered {
    /// The command as parsed: the file's and the environment's values are
    /// its arguments' defaults.
    command: Command,
    matches: ArgMatches,
    origins: BTreeMap<String, Origin>,
    file: FileChoice,
}

/// A setting whose default is worked out at start-up (the host name, the
/// number of CPUs), for [`Layered::to_toml`].
#[derive(Debug, Clone)]
pub struct Computed<'a> {
    pub key: &'a str,
    pub value: toml::Value,
}

/// Parses a daemon's command line (`argv`, the program name first) with
/// its configuration file and environment beneath it.
///
/// The file is the one `--config` names, else the one the `config`
/// argument's environment variable names, else `default_file` if it
/// exists. `env` reads environment variables (empty counts as unset); it is
/// a parameter so that tests need no process environment. Clap never reads
/// the process environment itself: each argument's `env` is read through
/// `env` and mentioned in its help instead.
pub fn parse_layered<I>(
    command: Command,
    argv: I,
    env: &dyn Fn(&str) -> Option<String>,
    default_file: &Path,
) -> Result<Layered, ConfigError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let env = |name: &str| env(name).filter(|v| !v.is_empty());
    let config_var = command
        .get_arguments()
        .find(|a| a.get_id() == CONFIG_ARG)
        .and_then(|a| a.get_env()?.to_str().map(str::to_owned));
    let (path, origin) = match config_flag(&argv) {
        Some(path) => (path, Origin::Flag("--config".to_owned())),
        None => match config_var.as_deref().and_then(|var| Some((env(var)?, var))) {
            Some((path, var)) => (PathBuf::from(path), Origin::Env(var.to_owned())),
            None => (default_file.to_owned(), Origin::Default),
        },
    };

    // Clap would read the process environment while parsing; the variables
    // are read through `env` instead, and named in the help by hand.
    let vars: Vec<(String, String)> = command
        .get_arguments()
        .filter_map(|a| Some((a.get_id().to_string(), a.get_env()?.to_str()?.to_owned())))
        .collect();
    let mut layers = Layers {
        command,
        origins: BTreeMap::new(),
    };
    for (id, var) in &vars {
        layers.edit(id, |a| without_env(a, var));
    }
    let plain = layers.command.clone();
    let layered = ConfigFile::read(&path, origin != Origin::Default).and_then(|file| {
        if let Some(file) = &file {
            layers.apply_file(file)?;
        }
        layers.apply_env(&vars, &env)?;
        Ok(file.is_some())
    });
    let found = match layered {
        Ok(found) => found,
        // The help and the version must show even when the file is broken:
        // they are where a person looks for what went wrong.
        Err(e) => {
            return Err(match plain.try_get_matches_from(&argv) {
                Err(help)
                    if matches!(
                        help.kind(),
                        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
                    ) =>
                {
                    ConfigError::CommandLine(help)
                }
                _ => e,
            });
        }
    };
    let Layers {
        command,
        mut origins,
    } = layers;
    let matches = command.clone().try_get_matches_from(argv)?;
    for arg in settings(&command) {
        let id = arg.get_id().as_str();
        if matches.value_source(id) == Some(ValueSource::CommandLine) {
            let flag = arg
                .get_long()
                .map_or_else(|| id.to_owned(), |l| format!("--{l}"));
            origins.insert(id.to_owned(), Origin::Flag(flag));
        }
    }
    Ok(Layered {
        command,
        matches,
        origins,
        file: FileChoice {
            path,
            origin,
            found,
        },
    })
}

/// The value of `--config PATH` or `--config=PATH`, read before clap parses
/// the command line, since the file's values become clap's defaults.
fn config_flag(argv: &[OsString]) -> Option<PathBuf> {
    let mut args = argv.iter().skip(1);
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        if text == "--" {
            break;
        }
        if text == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    None
}

/// The arguments that are settings, in their declaration order.
fn settings(command: &Command) -> impl Iterator<Item = &Arg> {
    command
        .get_arguments()
        .filter(|a| !NOT_SETTINGS.contains(&a.get_id().as_str()))
}

/// The configuration-file keys of `command`, in declaration order.
pub fn keys(command: &Command) -> Vec<String> {
    settings(command).map(|a| a.get_id().to_string()).collect()
}

/// How a setting's values are written in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A flag that stores true or false (`--no-mdns`): a TOML boolean.
    Switch,
    /// A repeatable flag (`--node`): a TOML array.
    List,
    /// A flag that takes one value: a TOML string or number.
    Value,
}

fn kind(arg: &Arg) -> Kind {
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => Kind::Switch,
        ArgAction::Append => Kind::List,
        _ => Kind::Value,
    }
}

/// The command being layered, and the origin of each default set so far.
struct Layers {
    command: Command,
    origins: BTreeMap<String, Origin>,
}

impl Layers {
    fn setting(&self, key: &str) -> Option<&Arg> {
        settings(&self.command).find(|a| a.get_id() == key)
    }

    /// Makes the file's values the defaults of their arguments.
    fn apply_file(&mut self, file: &ConfigFile) -> Result<(), ConfigError> {
        for (key, value) in file.entries() {
            let Some(arg) = self.setting(key) else {
                return Err(ConfigError::UnknownKey {
                    path: file.path.clone(),
                    key: key.to_owned(),
                    valid: keys(&self.command),
                });
            };
            let values =
                file_values(arg, value).map_err(|(expected, found)| ConfigError::WrongType {
                    path: file.path.clone(),
                    key: key.to_owned(),
                    expected,
                    found,
                })?;
            for v in &values {
                check(arg, v).map_err(|reason| ConfigError::InvalidValue {
                    path: file.path.clone(),
                    key: key.to_owned(),
                    value: value.to_string(),
                    reason,
                })?;
            }
            self.set(key, values, Origin::File(file.path.clone()));
        }
        Ok(())
    }

    /// Makes the values of the variables `vars` (argument id, variable)
    /// the defaults of their arguments, over the file's.
    fn apply_env(
        &mut self,
        vars: &[(String, String)],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        for (id, var) in vars {
            let (Some(arg), Some(value)) = (self.setting(id), env(var)) else {
                continue;
            };
            let invalid = |reason: String| ConfigError::InvalidEnv {
                var: var.clone(),
                key: id.clone(),
                value: value.clone(),
                reason,
            };
            let value = if kind(arg) == Kind::Switch {
                switch(&value)
                    .ok_or_else(|| invalid("expected true or false (or 1 or 0)".to_owned()))?
                    .to_string()
            } else {
                check(arg, &value).map_err(invalid)?;
                value.clone()
            };
            self.set(id, vec![value], Origin::Env(var.clone()));
        }
        Ok(())
    }

    fn set(&mut self, id: &str, values: Vec<String>, origin: Origin) {
        self.edit(id, |a| a.default_values(values));
        self.origins.insert(id.to_owned(), origin);
    }

    /// Applies `f` to the argument `id`. `Command::mut_arg` would move the
    /// argument to the end, reordering the help and `--print-config`.
    fn edit(&mut self, id: &str, f: impl FnOnce(Arg) -> Arg) {
        let mut f = Some(f);
        self.command =
            std::mem::take(&mut self.command).mut_args(|a| match f.take_if(|_| a.get_id() == id) {
                Some(f) => f(a),
                None => a,
            });
    }
}

/// `arg` without its environment variable, which the help then names by
/// hand: clap would read the process environment while parsing.
fn without_env(arg: Arg, var: &str) -> Arg {
    let note = format!(" [env: {var}]");
    let help = arg.get_help().map(|h| format!("{h}{note}"));
    let long_help = arg.get_long_help().map(|h| format!("{h}{note}"));
    let mut arg = arg.env(None::<&str>);
    if let Some(help) = help {
        arg = arg.help(help);
    }
    if let Some(long_help) = long_help {
        arg = arg.long_help(long_help);
    }
    arg
}

/// An environment variable's text as a switch's value.
fn switch(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// The command-line texts a file value stands for, or what was expected and
/// what was found instead.
fn file_values(arg: &Arg, value: &toml::Value) -> Result<Vec<String>, (&'static str, String)> {
    match (kind(arg), value) {
        (Kind::Switch, toml::Value::Boolean(b)) => Ok(vec![b.to_string()]),
        (Kind::Switch, other) => Err(("true or false", other.type_str().to_owned())),
        (Kind::List, toml::Value::Array(items)) => items
            .iter()
            .map(|item| {
                scalar(item).ok_or_else(|| {
                    (
                        "an array of strings",
                        format!("an array holding a {}", item.type_str()),
                    )
                })
            })
            .collect(),
        (Kind::List, other) => Err(("an array of strings", other.type_str().to_owned())),
        (Kind::Value, value) => scalar(value)
            .map(|v| vec![v])
            .ok_or_else(|| ("a string or a number", value.type_str().to_owned())),
    }
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

/// Runs `arg`'s value parser on `value`, so that a bad value is reported
/// as coming from the file or the variable that gave it rather than as a
/// bad default of a flag.
fn check(arg: &Arg, value: &str) -> Result<(), String> {
    // Clap's parsers are reachable only through a command; this one holds
    // nothing but a copy of the parser.
    let probe = Command::new("probe").no_binary_name(true).arg(
        Arg::new("value")
            .long("value")
            .action(ArgAction::Set)
            .value_parser(arg.get_value_parser().clone()),
    );
    match probe.try_get_matches_from([format!("--value={value}")]) {
        Ok(_) => Ok(()),
        Err(e) => Err(reason(&e)),
    }
}

/// What a clap error says about a value, without clap's framing (which
/// names the probe's flag).
fn reason(e: &clap::Error) -> String {
    if let Some(source) = std::error::Error::source(e) {
        return source.to_string();
    }
    if let Some(ContextValue::Strings(valid)) = e.get(ContextKind::ValidValue) {
        return format!("expected one of {}", valid.join(", "));
    }
    e.kind().to_string()
}

impl Layered {
    pub fn matches(&self) -> &ArgMatches {
        &self.matches
    }

    /// The configuration file looked for, and whether it was found.
    pub fn file(&self) -> &FileChoice {
        &self.file
    }

    /// Where the value of the setting `key` came from.
    pub fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }

    /// The settings in force as a TOML configuration file: every key with
    /// its value and, as a comment, its origin, under its help text.
    /// Settings without a value are commented out, and so are those in
    /// `computed`, whose defaults are worked out on each start (e.g. the
    /// number of CPUs), so that the output used as a file changes nothing
    /// and pins nothing that would differ on another machine.
    pub fn to_toml(&self, computed: &[Computed<'_>]) -> String {
        let program = self.command.get_name();
        let mut out = comment(&format!(
            "The settings of {program} in force (--print-config), each with where it came \
             from. As a configuration file it changes nothing: environment variables and \
             flags still override it. See docs/CONFIG.md."
        ));
        let FileChoice {
            path,
            origin,
            found,
        } = &self.file;
        let how = match origin {
            Origin::Default => "its default location".to_owned(),
            other => other.to_string(),
        };
        if *found {
            out += &format!("# Configuration file: {} ({how}).\n", path.display());
        } else {
            out += &format!(
                "# Configuration file: none ({} does not exist).\n",
                path.display()
            );
        }
        for arg in settings(&self.command) {
            let key = arg.get_id().as_str();
            out.push('\n');
            out += &comment(&help(arg, false));
            let raw: Vec<String> = self
                .matches
                .get_raw(key)
                .map(|values| values.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let origin = self.origin(key);
            let value = match kind(arg) {
                Kind::List => Some(toml::Value::Array(
                    raw.iter().map(|v| typed(arg, v)).collect(),
                )),
                _ => raw.first().map(|v| typed(arg, v)),
            };
            match (value, computed.iter().find(|c| c.key == key)) {
                // A setting whose variable's value --help hides (a join
                // token) is a secret, and this output ends up in bug
                // reports.
                (Some(_), _) if arg.is_hide_env_values_set() => {
                    out += &format!("# {key}: set, not shown  # {origin}\n");
                }
                (Some(value), _) => out += &format!("{key} = {value}  # {origin}\n"),
                (None, Some(c)) => {
                    out += &format!("# {key} = {}  # default, worked out at start-up\n", c.value)
                }
                (None, None) => out += &format!("# {key}: not set (default)\n"),
            }
        }
        out
    }
}

/// `text` as TOML comment lines of at most 79 columns (a longer word gets
/// a line of its own).
pub fn comment(text: &str) -> String {
    let mut out = String::new();
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() > 1 && line.len() + 1 + word.len() > 79 {
            out += &line;
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out += &line;
    out.push('\n');
    out
}

/// Whether `arg`'s values are text whatever they look like (a farm named
/// `123` is still a name).
fn is_textual(arg: &Arg) -> bool {
    let parser = arg.get_value_parser();
    let id = parser.type_id();
    parser.possible_values().is_some()
        || [
            TypeId::of::<String>(),
            TypeId::of::<PathBuf>(),
            TypeId::of::<OsString>(),
            TypeId::of::<SocketAddr>(),
            TypeId::of::<IpAddr>(),
        ]
        .iter()
        .any(|t| id == *t)
}

/// A value as given on the command line, as the TOML value that gives it
/// in a file: numbers as numbers where the setting is not text.
fn typed(arg: &Arg, raw: &str) -> toml::Value {
    if kind(arg) == Kind::Switch {
        return toml::Value::Boolean(raw == "true");
    }
    if !is_textual(arg) {
        if let Ok(i) = raw.parse::<i64>() {
            return toml::Value::Integer(i);
        }
        if let Ok(f) = raw.parse::<f64>()
            && f.is_finite()
        {
            return toml::Value::Float(f);
        }
    }
    toml::Value::String(raw.to_owned())
}

/// A Markdown table of `command`'s settings, for docs/CONFIG.md: key, type,
/// default, the flag and variable that override it, and its help.
pub fn reference(command: &Command) -> String {
    let mut command = command.clone();
    // Clap gives switches their implied defaults when it builds the command.
    command.build();
    let mut out =
        String::from("| key | type | default | overridden by | meaning |\n|---|---|---|---|---|\n");
    for arg in settings(&command) {
        let ty = match (kind(arg), arg.get_value_parser().possible_values()) {
            (Kind::Switch, _) => "boolean".to_owned(),
            (Kind::List, _) => format!("array of `{}`", value_name(arg)),
            (Kind::Value, Some(values)) => values
                .map(|v| format!("`\"{}\"`", v.get_name()))
                .collect::<Vec<_>>()
                .join(" or "),
            (Kind::Value, None) => format!("`{}`", value_name(arg)),
        };
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| typed(arg, &v.to_string_lossy()).to_string())
            .collect();
        let default = match (kind(arg), defaults.is_empty()) {
            (Kind::List, _) => format!("`[{}]`", defaults.join(", ")),
            (_, true) => "not set".to_owned(),
            (_, false) => format!("`{}`", defaults.join(", ")),
        };
        let mut by = Vec::new();
        if let Some(long) = arg.get_long() {
            by.push(format!("`--{long}`"));
        }
        if let Some(var) = arg.get_env() {
            by.push(format!("`{}`", var.to_string_lossy()));
        }
        let help = help(arg, true);
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        out += &format!(
            "| `{}` | {ty} | {default} | {} | {} |\n",
            arg.get_id(),
            by.join(", "),
            // Markdown would take `<WORK_DIR>` for an HTML tag.
            help.replace('|', "\\|").replace('<', "\\<")
        );
    }
    out
}

/// A setting's help text, the long one if `long`. A switch's help
/// describes its flag, which sets the other value than the default, so it
/// is introduced by that value.
fn help(arg: &Arg, long: bool) -> String {
    let text = long
        .then(|| arg.get_long_help())
        .flatten()
        .or(arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    let set = match arg.get_action() {
        ArgAction::SetFalse => "false",
        ArgAction::SetTrue => "true",
        _ => return text,
    };
    let flag = arg.get_long().unwrap_or_default();
    let mut chars = text.chars();
    let first = chars
        .next()
        .map(|c| c.to_lowercase().to_string())
        .unwrap_or_default();
    format!("`{set}` (`--{flag}`): {first}{}", chars.as_str())
}

fn value_name(arg: &Arg) -> String {
    arg.get_value_names()
        .and_then(|names| names.first())
        .map_or_else(
            || arg.get_id().to_string().to_uppercase(),
            |n| n.to_string(),
        )
}

/// Checks that the block of `doc` between `<!-- BEGIN GENERATED: {name} -->`
/// and `<!-- END GENERATED: {name} -->` is `generated`. With `update`, a
/// block that differs is rewritten instead. Tests call this so that the
/// reference in the docs cannot drift from the code.
pub fn check_generated_block(
    doc: &Path,
    name: &str,
    generated: &str,
    update: bool,
) -> Result<(), String> {
    let text =
        std::fs::read_to_string(doc).map_err(|e| format!("cannot read {}: {e}", doc.display()))?;
    let begin = format!("<!-- BEGIN GENERATED: {name} -->\n");
    let end = format!("<!-- END GENERATED: {name} -->");
    let start = text
        .find(&begin)
        .map(|i| i + begin.len())
        .ok_or_else(|| format!("{} has no line `{}`", doc.display(), begin.trim_end()))?;
    let stop = text[start..]
        .find(&end)
        .map(|i| start + i)
        .ok_or_else(|| format!("{} has no line `{end}`", doc.display()))?;
    if &text[start..stop] == generated {
        return Ok(());
    }
    if update {
        let updated = format!("{}{generated}{}", &text[..start], &text[stop..]);
        return std::fs::write(doc, updated)
            .map_err(|e| format!("cannot write {}: {e}", doc.display()));
    }
    Err(format!(
        "the {name} block of {} is out of date; run the test with UPDATE_DOCS=1 to \
         rewrite it. It should read:\n{generated}",
        doc.display()
    ))
}

#[cfg(test)]
mod tests;
