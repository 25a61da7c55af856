//! Reading rustc's command line as cargo hands it to the wrapper.
//!
//! Cargo runs `distcc-rs /path/to/rustc <args…>`. This module turns `<args…>`
//! into a decision: compile on the farm ([`Classification::Distribute`] with a
//! parsed [`CompileJob`]) or run the real rustc locally
//! ([`Classification::Local`] with the reason). It also builds the argument
//! list of the dep-info pre-pass that discovers a job's inputs.
//!
//! Everything here is a pure function of the arguments, except
//! [`expand_argfiles`], which reads the `@path` files cargo writes when a
//! command line grows too long.
//!
//! The parser mirrors rustc's own (getopts): options and operands may come in
//! any order, a long option takes its value as `--flag=value` or
//! `--flag value`, a short option as `-Xvalue` or `-X value`, short flags can
//! be grouped (`-vV`), and `--` ends the options. Being wrong here is costly in
//! one direction only: shipping a job that cannot run remotely. So whenever
//! the arguments are unusual (an option rustc would reject, a duplicate of a
//! single-use option, two input files), the job stays local and the local
//! rustc reports whatever is wrong, exactly as it would without the wrapper.

use std::ffi::OsString;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// Why the arguments could not be turned into a list of strings.
#[derive(Debug, thiserror::Error)]
pub enum ArgError {
    /// An argument is not valid UTF-8. rustc rejects such arguments too, so
    /// the caller runs rustc locally and lets it say so.
    #[error("argument is not valid UTF-8: {0:?}")]
    NotUtf8(OsString),
    /// An `@path` argument file could not be read.
    #[error("cannot read argument file {path}")]
    ArgFile {
        /// The path after the `@`.
        path: PathBuf,
        /// The underlying read error.
        #[source]
        source: std::io::Error,
    },
    /// An `@path` argument file is not valid UTF-8, which rustc rejects too.
    #[error("argument file {0} is not valid UTF-8")]
    ArgFileNotUtf8(PathBuf),
}

/// Replaces every `@path` argument with the lines of that file.
///
/// `args` are rustc's arguments, without the rustc path. Cargo writes an
/// argument file when the command line exceeds the OS limit, and deletes it
/// once rustc exits, so it must be read now. As in rustc, each line is one
/// argument (a trailing `\r` is dropped, empty lines are empty arguments), and
/// lines that start with `@` are not expanded again: rustc expands only the
/// arguments it was given.
pub fn expand_argfiles(args: Vec<OsString>) -> Result<Vec<String>, ArgError> {
    let mut expanded = Vec::with_capacity(args.len());
    for arg in args {
        let arg = arg.into_string().map_err(ArgError::NotUtf8)?;
        let Some(path) = arg.strip_prefix('@') else {
            expanded.push(arg);
            continue;
        };
        let path = PathBuf::from(path);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(source) => return Err(ArgError::ArgFile { path, source }),
        };
        let Ok(text) = String::from_utf8(bytes) else {
            return Err(ArgError::ArgFileNotUtf8(path));
        };
        expanded.extend(text.lines().map(str::to_owned));
    }
    Ok(expanded)
}

/// What the wrapper should do with one rustc invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one value per process; boxing would only complicate matching"
)]
pub enum Classification {
    /// Run the real rustc on this machine, for the given reason.
    Local(LocalReason),
    /// The job can compile on a farm node.
    Distribute(CompileJob),
}

/// Why an invocation runs locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalReason {
    /// A query rather than a compile: `-vV`, `--version`, `--print`,
    /// `--explain`, a `help` request, no input file, or source on stdin (`-`).
    Probe,
    /// A crate type that needs a linker or must load on this machine (`bin`,
    /// `proc-macro`, `dylib`, `cdylib`), or `test` for `--test`.
    CrateType(String),
    /// `-C incremental`: the incremental state lives in a local directory, and
    /// incremental outputs are not reproducible across sessions.
    Incremental,
    /// An `--emit` kind other than `dep-info`, `metadata` and `link`.
    Emit(String),
    /// A flag that reads or writes files we do not ship, or whose result
    /// depends on the machine that compiles.
    UnsupportedFlag(String),
    /// No `--crate-type`: the source may choose one with `#![crate_type]`.
    NoCrateType,
    /// No `--crate-name`: the source may choose one with `#![crate_name]`, so
    /// the output names cannot be known in advance.
    NoCrateName,
    /// Arguments that rustc itself would reject (a missing value, a repeated
    /// single-use option, several input files). The local rustc reports it.
    Malformed(String),
}

impl fmt::Display for LocalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Probe => f.write_str("compiler query"),
            Self::CrateType(kind) if kind == "test" => f.write_str("test harness needs a linker"),
            Self::CrateType(kind) => write!(f, "crate type `{kind}` is built locally"),
            Self::Incremental => f.write_str("incremental compilation"),
            Self::Emit(kind) => write!(f, "emit kind `{kind}` is built locally"),
            Self::UnsupportedFlag(flag) => write!(f, "unsupported flag `{flag}`"),
            Self::NoCrateType => f.write_str("no --crate-type"),
            Self::NoCrateName => f.write_str("no --crate-name"),
            Self::Malformed(what) => write!(f, "arguments rustc rejects: {what}"),
        }
    }
}

/// One requested output kind, with the explicit path of `--emit=KIND=PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmitKind {
    /// The make-style `.d` file.
    DepInfo(Option<String>),
    /// The `.rmeta` file.
    Metadata(Option<String>),
    /// The crate-type dependent artifact (`.rlib`, `.a`).
    Link(Option<String>),
}

impl EmitKind {
    /// The explicit output path, when `--emit` named one.
    pub fn path(&self) -> Option<&str> {
        match self {
            Self::DepInfo(path) | Self::Metadata(path) | Self::Link(path) => path.as_deref(),
        }
    }

    /// Whether `other` is the same kind, whatever the paths.
    fn same_kind(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// An `--extern [MODIFIERS:]NAME[=PATH]` argument, without its modifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extern {
    /// The crate name as the source refers to it.
    pub name: String,
    /// The crate file, absent for sysroot crates such as `proc_macro`.
    pub path: Option<String>,
}

/// The kind of a `-L [KIND=]PATH` search path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchKind {
    /// `dependency=`: transitive crate dependencies.
    Dependency,
    /// `crate=`: direct crate dependencies.
    Crate,
    /// `native=`: native libraries given with `-l`.
    Native,
    /// `framework=`: macOS frameworks.
    Framework,
    /// `all=` or no kind: everything.
    All,
}

/// One `-L` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPath {
    /// What rustc looks for in this directory.
    pub kind: SearchKind,
    /// The directory, as given.
    pub path: String,
}

/// One `-l [KIND[:MODIFIERS]=]NAME[:RENAME]` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeLib {
    /// `static`, `dylib`, `framework`, `link-arg`, …; `dylib` when not given,
    /// as rustc's help says.
    pub kind: String,
    /// The comma-separated modifiers, such as `+bundle,-whole-archive`, or
    /// empty.
    pub modifiers: String,
    /// The library name (for `link-arg`, the argument itself).
    pub name: String,
    /// The name to link under instead, from `NAME:RENAME`.
    pub rename: Option<String>,
}

impl NativeLib {
    /// Whether the modifier list turns `modifier` on (`+name`).
    pub fn has_modifier_enabled(&self, modifier: &str) -> bool {
        self.modifiers
            .split(',')
            .any(|m| m.strip_prefix('+') == Some(modifier))
    }

    /// Whether the modifier list turns `modifier` off (`-name`).
    pub fn has_modifier_disabled(&self, modifier: &str) -> bool {
        self.modifiers
            .split(',')
            .any(|m| m.strip_prefix('-') == Some(modifier))
    }
}

/// A compile that can run on a node: what it reads and what it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileJob {
    /// `--crate-name`.
    pub crate_name: String,
    /// Every `--crate-type`, split at commas, in order, without duplicates.
    /// All of them are `lib`, `rlib` or `staticlib`.
    pub crate_types: Vec<String>,
    /// What rustc writes, in order of first request. Without any `--emit` this
    /// is rustc's default, `link`.
    pub emit: Vec<EmitKind>,
    /// The input source file, as given (often relative to the cwd).
    pub src: String,
    /// `--out-dir`.
    pub out_dir: Option<String>,
    /// `-o`.
    pub output_file: Option<String>,
    /// `-C extra-filename`, or empty.
    pub extra_filename: String,
    /// Every `--extern`, in order.
    pub externs: Vec<Extern>,
    /// Every `-L`, in order.
    pub search_paths: Vec<SearchPath>,
    /// Every `-l`, in order.
    pub native_libs: Vec<NativeLib>,
    /// `--target`, when given (a built-in target name; spec files stay local).
    pub target: Option<String>,
}

/// Decides whether one rustc invocation can run on the farm.
///
/// `args` are rustc's arguments, without the rustc path and with argument
/// files already expanded. A job is distributable when it has one input file
/// (not stdin), a crate name, crate types all among `lib`, `rlib` and
/// `staticlib`, no `--test`, emits only `dep-info`, `metadata` and `link`, no
/// `-C incremental`, and none of the flags that read or write files we do not
/// ship or that depend on the compiling machine. Flags we do not know pass
/// through: rustc on the node sees exactly the same command line.
pub fn classify(args: &[String]) -> Classification {
    match Facts::gather(args).into_job() {
        Ok(job) => Classification::Distribute(job),
        Err(reason) => Classification::Local(reason),
    }
}

/// The arguments of the dep-info pre-pass.
///
/// Every `--emit` (in either spelling) is replaced by a single
/// `--emit=dep-info=<depinfo_path>`, followed by `-Z binary-dep-depinfo` so
/// that the `.d` also lists every crate file rustc loaded. Everything else stays
/// as it was, in the same order, so proc macros and `cfg`s see the same
/// compile. The new arguments take the place of the first `--emit`, or come
/// first when there is none (before any `--`, which would turn them into
/// operands). The caller must set `RUSTC_BOOTSTRAP=1` for `-Z` on stable, and
/// must pick a `depinfo_path` without commas, which `--emit` uses as separator.
pub fn prepass_args(args: &[String], depinfo_path: &str) -> Vec<String> {
    let replacement = [
        format!("--emit=dep-info={depinfo_path}"),
        "-Z".to_owned(),
        "binary-dep-depinfo".to_owned(),
    ];
    let mut dropped = vec![false; args.len()];
    let mut first_emit = None;
    for token in tokenize(args) {
        if let Item::Opt(spec, _) = token.item
            && spec.name == "emit"
        {
            first_emit.get_or_insert(token.span.start);
            for index in token.span {
                dropped[index] = true;
            }
        }
    }
    let insert_at = first_emit.unwrap_or(0);
    let mut out = Vec::with_capacity(args.len() + replacement.len());
    for (index, arg) in args.iter().enumerate() {
        if index == insert_at {
            out.extend(replacement.iter().cloned());
        }
        if !dropped[index] {
            out.push(arg.clone());
        }
    }
    if args.is_empty() {
        out.extend(replacement);
    }
    out
}

/// One option rustc knows, from `rustc --help -v` and `-Z unstable-options`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OptSpec {
    short: Option<char>,
    long: Option<&'static str>,
    /// The long name, or the letter of a short-only option.
    name: &'static str,
    takes_value: bool,
    /// Whether rustc rejects a second occurrence ("given more than once").
    once: bool,
}

const fn opt(
    short: Option<char>,
    long: Option<&'static str>,
    name: &'static str,
    takes_value: bool,
    once: bool,
) -> OptSpec {
    OptSpec {
        short,
        long,
        name,
        takes_value,
        once,
    }
}

/// rustc 1.95's options. Which ones are single-use was checked by repeating
/// each against the real rustc.
const OPTIONS: &[OptSpec] = &[
    opt(Some('h'), Some("help"), "help", false, true),
    opt(None, Some("cfg"), "cfg", true, false),
    opt(None, Some("check-cfg"), "check-cfg", true, false),
    opt(Some('L'), None, "L", true, false),
    opt(Some('l'), None, "l", true, false),
    opt(None, Some("crate-type"), "crate-type", true, false),
    opt(None, Some("crate-name"), "crate-name", true, true),
    opt(None, Some("edition"), "edition", true, true),
    opt(None, Some("emit"), "emit", true, false),
    opt(None, Some("print"), "print", true, false),
    opt(Some('g'), None, "g", false, false),
    opt(Some('O'), None, "O", false, false),
    opt(Some('o'), None, "o", true, true),
    opt(None, Some("out-dir"), "out-dir", true, true),
    opt(None, Some("explain"), "explain", true, true),
    opt(None, Some("test"), "test", false, true),
    opt(None, Some("target"), "target", true, true),
    opt(Some('A'), Some("allow"), "allow", true, false),
    opt(Some('W'), Some("warn"), "warn", true, false),
    opt(None, Some("force-warn"), "force-warn", true, false),
    opt(Some('D'), Some("deny"), "deny", true, false),
    opt(Some('F'), Some("forbid"), "forbid", true, false),
    opt(None, Some("cap-lints"), "cap-lints", true, false),
    opt(Some('C'), Some("codegen"), "codegen", true, false),
    opt(Some('V'), Some("version"), "version", false, true),
    opt(Some('v'), Some("verbose"), "verbose", false, true),
    opt(None, Some("extern"), "extern", true, false),
    opt(None, Some("sysroot"), "sysroot", true, true),
    opt(Some('Z'), None, "Z", true, false),
    opt(None, Some("error-format"), "error-format", true, true),
    opt(None, Some("json"), "json", true, false),
    opt(None, Some("color"), "color", true, true),
    opt(
        None,
        Some("diagnostic-width"),
        "diagnostic-width",
        true,
        true,
    ),
    opt(
        None,
        Some("remap-path-prefix"),
        "remap-path-prefix",
        true,
        false,
    ),
    opt(
        None,
        Some("remap-path-scope"),
        "remap-path-scope",
        true,
        true,
    ),
    opt(None, Some("env-set"), "env-set", true, false),
];

fn long_option(name: &str) -> Option<&'static OptSpec> {
    OPTIONS.iter().find(|spec| spec.long == Some(name))
}

fn short_option(letter: char) -> Option<&'static OptSpec> {
    OPTIONS.iter().find(|spec| spec.short == Some(letter))
}

/// What one piece of the command line means.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item<'a> {
    /// A known option and its value.
    Opt(&'static OptSpec, Option<&'a str>),
    /// An input file (or `-` for stdin).
    Operand(&'a str),
    /// An option rustc does not list; passed through untouched.
    Unknown(&'a str),
    /// Something rustc rejects, described.
    Malformed(String),
}

/// An [`Item`] and the argument indices it came from, so that the pre-pass
/// can drop exactly the arguments of an option.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token<'a> {
    span: Range<usize>,
    item: Item<'a>,
}

/// Splits the arguments the way rustc's getopts does.
fn tokenize(args: &[String]) -> Vec<Token<'_>> {
    let mut tokens = Vec::with_capacity(args.len());
    let mut index = 0;
    let mut options_ended = false;
    while index < args.len() {
        let start = index;
        let arg = args[index].as_str();
        index += 1;
        if options_ended || arg == "-" || !arg.starts_with('-') {
            tokens.push(Token {
                span: start..index,
                item: Item::Operand(arg),
            });
            continue;
        }
        if arg == "--" {
            options_ended = true;
            continue;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (long, None),
            };
            let item = match long_option(name) {
                None => Item::Unknown(arg),
                Some(spec) if !spec.takes_value => match inline {
                    None => Item::Opt(spec, None),
                    Some(_) => Item::Malformed(format!("option `{name}` does not take a value")),
                },
                Some(spec) => match inline {
                    Some(value) => Item::Opt(spec, Some(value)),
                    None => match args.get(index) {
                        Some(value) => {
                            index += 1;
                            Item::Opt(spec, Some(value.as_str()))
                        }
                        None => Item::Malformed(format!("option `{name}` needs a value")),
                    },
                },
            };
            tokens.push(Token {
                span: start..index,
                item,
            });
            continue;
        }
        // A group of short options: flags until one that takes a value, which
        // takes the rest of the argument or, if nothing is left, the next one.
        let group = &arg[1..];
        let mut items = Vec::new();
        for (offset, letter) in group.char_indices() {
            let Some(spec) = short_option(letter) else {
                items.push(Item::Unknown(arg));
                break;
            };
            if !spec.takes_value {
                items.push(Item::Opt(spec, None));
                continue;
            }
            let rest = &group[offset + letter.len_utf8()..];
            if !rest.is_empty() {
                items.push(Item::Opt(spec, Some(rest)));
            } else if let Some(value) = args.get(index) {
                index += 1;
                items.push(Item::Opt(spec, Some(value.as_str())));
            } else {
                items.push(Item::Malformed(format!("option `{letter}` needs a value")));
            }
            break;
        }
        tokens.extend(items.into_iter().map(|item| Token {
            span: start..index,
            item,
        }));
    }
    tokens
}

/// Everything classification needs, gathered in one pass over the tokens.
#[derive(Debug, Default)]
struct Facts {
    probe: bool,
    test: bool,
    incremental: bool,
    operands: Vec<String>,
    malformed: Option<String>,
    crate_name: Option<String>,
    crate_types: Vec<String>,
    emit: Vec<EmitKind>,
    /// The first emit kind we cannot ship.
    bad_emit: Option<String>,
    unsupported: Vec<String>,
    out_dir: Option<String>,
    output_file: Option<String>,
    extra_filename: String,
    externs: Vec<Extern>,
    search_paths: Vec<SearchPath>,
    native_libs: Vec<NativeLib>,
    target: Option<String>,
}

impl Facts {
    fn gather(args: &[String]) -> Self {
        let mut facts = Self::default();
        let mut seen: Vec<&'static str> = Vec::new();
        for token in tokenize(args) {
            match token.item {
                Item::Opt(spec, value) => {
                    if spec.once && seen.contains(&spec.name) {
                        facts.malformed(format!("option `{}` given more than once", spec.name));
                    }
                    seen.push(spec.name);
                    facts.apply(spec.name, value.unwrap_or(""));
                }
                Item::Operand(operand) => facts.operands.push(operand.to_owned()),
                // rustc rejects options it does not know; a newer rustc may
                // know it, and either way the node runs the same command line.
                Item::Unknown(_) => {}
                Item::Malformed(what) => facts.malformed(what),
            }
        }
        facts
    }

    fn malformed(&mut self, what: String) {
        self.malformed.get_or_insert(what);
    }

    fn unsupported(&mut self, flag: String) {
        self.unsupported.push(flag);
    }

    /// Records one option; `value` is empty for flags.
    fn apply(&mut self, name: &str, value: &str) {
        match name {
            "help" | "version" | "print" | "explain" => self.probe = true,
            "test" => self.test = true,
            "warn" if value == "help" => self.probe = true,
            "Z" if value == "help" => self.probe = true,
            // Unstable options change what rustc reads and writes in ways we
            // cannot follow one by one, and need RUSTC_BOOTSTRAP on stable.
            "Z" => self.unsupported(format!("-Z {value}")),
            // The node runs its own toolchain bundle, never a sysroot path
            // from the client.
            "sysroot" => self.unsupported(format!("--sysroot {value}")),
            "crate-name" => self.crate_name = Some(value.to_owned()),
            "crate-type" => {
                for kind in value.split(',') {
                    if !self.crate_types.iter().any(|known| known == kind) {
                        self.crate_types.push(kind.to_owned());
                    }
                }
            }
            "emit" => self.apply_emit(value),
            "o" => {
                if value == "-" {
                    self.unsupported("-o -".to_owned());
                }
                self.output_file = Some(value.to_owned());
            }
            "out-dir" => self.out_dir = Some(value.to_owned()),
            "target" => {
                // A target spec file (or a name rustc resolves through
                // RUST_TARGET_PATH) is a local file the node does not have.
                if value.ends_with(".json") || value.contains('/') {
                    self.unsupported(format!("--target {value}"));
                }
                self.target = Some(value.to_owned());
            }
            "codegen" => self.apply_codegen(value),
            "L" => self.search_paths.push(parse_search_path(value)),
            "l" => self.native_libs.push(parse_native_lib(value)),
            "extern" => self.externs.push(parse_extern(value)),
            _ => {}
        }
    }

    fn apply_emit(&mut self, value: &str) {
        for request in value.split(',') {
            let (kind, path) = match request.split_once('=') {
                Some((kind, path)) => (kind, Some(path.to_owned())),
                None => (request, None),
            };
            // rustc can write some outputs to stdout, which belongs to cargo.
            if path.as_deref() == Some("-") {
                self.unsupported(format!("--emit {request}"));
            }
            let emit = match kind {
                "dep-info" => EmitKind::DepInfo(path),
                "metadata" => EmitKind::Metadata(path),
                "link" => EmitKind::Link(path),
                other => {
                    self.bad_emit.get_or_insert_with(|| other.to_owned());
                    continue;
                }
            };
            // A repeated kind keeps its first place, and rustc uses the last
            // path given for it.
            match self.emit.iter_mut().find(|known| known.same_kind(&emit)) {
                Some(known) => *known = emit,
                None => self.emit.push(emit),
            }
        }
    }

    fn apply_codegen(&mut self, value: &str) {
        let (key, setting) = match value.split_once('=') {
            Some((key, setting)) => (key, Some(setting)),
            None => (value, None),
        };
        // rustc accepts `-C opt_level` for `-C opt-level`.
        let key = key.replace('_', "-");
        match key.as_str() {
            "help" => self.probe = true,
            "incremental" => self.incremental = true,
            "extra-filename" => self.extra_filename = setting.unwrap_or("").to_owned(),
            // Profile files are read (or the instrumentation points at paths)
            // outside what we ship.
            "profile-use" | "profile-generate" => self.unsupported(format!("-C {value}")),
            // Intermediate files would be left on the node, not here.
            "save-temps" if parse_bool(setting) => self.unsupported(format!("-C {value}")),
            // The node's CPU is not ours: the code would differ.
            "target-cpu" if setting == Some("native") => self.unsupported(format!("-C {value}")),
            // Split DWARF leaves `.dwo` files beside the outputs that we do not
            // bring back.
            "split-debuginfo" if setting != Some("off") => self.unsupported(format!("-C {value}")),
            _ => {}
        }
    }

    /// Decides, giving the first reason to stay local in a fixed order.
    fn into_job(self) -> Result<CompileJob, LocalReason> {
        if self.probe {
            return Err(LocalReason::Probe);
        }
        let src = match self.operands.as_slice() {
            [] => return Err(LocalReason::Probe),
            [src] if src == "-" => return Err(LocalReason::Probe),
            [src] => src.clone(),
            [_, _, ..] => return Err(LocalReason::Malformed("more than one input file".into())),
        };
        if let Some(what) = self.malformed {
            return Err(LocalReason::Malformed(what));
        }
        if self.test {
            return Err(LocalReason::CrateType("test".into()));
        }
        if self.crate_types.is_empty() {
            return Err(LocalReason::NoCrateType);
        }
        if let Some(kind) = self
            .crate_types
            .iter()
            .find(|kind| !matches!(kind.as_str(), "lib" | "rlib" | "staticlib"))
        {
            return Err(LocalReason::CrateType(kind.clone()));
        }
        if self.incremental {
            return Err(LocalReason::Incremental);
        }
        if let Some(kind) = self.bad_emit {
            return Err(LocalReason::Emit(kind));
        }
        // With several crate types rustc derives each output name from `-o`,
        // and we would have to guess those names to bring them back.
        if self.output_file.is_some() && self.crate_types.len() > 1 {
            return Err(LocalReason::UnsupportedFlag(
                "-o with several crate types".into(),
            ));
        }
        if let Some(flag) = self.unsupported.into_iter().next() {
            return Err(LocalReason::UnsupportedFlag(flag));
        }
        let Some(crate_name) = self.crate_name else {
            return Err(LocalReason::NoCrateName);
        };
        let emit = if self.emit.is_empty() {
            vec![EmitKind::Link(None)]
        } else {
            self.emit
        };
        Ok(CompileJob {
            crate_name,
            crate_types: self.crate_types,
            emit,
            src,
            out_dir: self.out_dir,
            output_file: self.output_file,
            extra_filename: self.extra_filename,
            externs: self.externs,
            search_paths: self.search_paths,
            native_libs: self.native_libs,
            target: self.target,
        })
    }
}

/// Reads a boolean `-C` setting the way rustc does: a bare flag means yes.
fn parse_bool(setting: Option<&str>) -> bool {
    matches!(setting, None | Some("y" | "yes" | "on" | "true"))
}

/// Parses `-L [KIND=]PATH`. As in rustc, an unknown prefix is part of the path.
fn parse_search_path(value: &str) -> SearchPath {
    const KINDS: &[(&str, SearchKind)] = &[
        ("dependency=", SearchKind::Dependency),
        ("crate=", SearchKind::Crate),
        ("native=", SearchKind::Native),
        ("framework=", SearchKind::Framework),
        ("all=", SearchKind::All),
    ];
    for (prefix, kind) in KINDS {
        if let Some(path) = value.strip_prefix(prefix) {
            return SearchPath {
                kind: *kind,
                path: path.to_owned(),
            };
        }
    }
    SearchPath {
        kind: SearchKind::All,
        path: value.to_owned(),
    }
}

/// Parses `-l [KIND[:MODIFIERS]=]NAME[:RENAME]`.
fn parse_native_lib(value: &str) -> NativeLib {
    let (kind, modifiers, rest) = match value.split_once('=') {
        Some((kind_part, rest)) => match kind_part.split_once(':') {
            Some((kind, modifiers)) => (kind, modifiers, rest),
            None => (kind_part, "", rest),
        },
        None => ("dylib", "", value),
    };
    // A `link-arg` value is an arbitrary linker argument, never renamed.
    let (name, rename) = match rest.split_once(':') {
        Some((name, rename)) if kind != "link-arg" => (name, Some(rename.to_owned())),
        _ => (rest, None),
    };
    NativeLib {
        kind: kind.to_owned(),
        modifiers: modifiers.to_owned(),
        name: name.to_owned(),
        rename,
    }
}

/// Parses `--extern [MODIFIERS:]NAME[=PATH]`, dropping modifiers such as
/// `priv` or `noprelude`.
fn parse_extern(value: &str) -> Extern {
    let (head, path) = match value.split_once('=') {
        Some((head, path)) => (head, Some(path.to_owned())),
        None => (value, None),
    };
    let name = head.rsplit_once(':').map_or(head, |(_, name)| name);
    Extern {
        name: name.to_owned(),
        path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a command line the way a shell splits cargo's `--verbose`
    /// output, which quotes with single quotes only.
    fn argv(line: &str) -> Vec<String> {
        let mut args = Vec::new();
        let mut arg = String::new();
        let mut in_arg = false;
        let mut quoted = false;
        for c in line.chars() {
            match c {
                '\'' => {
                    quoted = !quoted;
                    in_arg = true;
                }
                c if c.is_whitespace() && !quoted => {
                    if in_arg {
                        args.push(std::mem::take(&mut arg));
                        in_arg = false;
                    }
                }
                c => {
                    arg.push(c);
                    in_arg = true;
                }
            }
        }
        if in_arg {
            args.push(arg);
        }
        args
    }

    const JSON: &str =
        "--error-format=json --json=diagnostic-rendered-ansi,artifacts,future-incompat";
    const REGISTRY: &str = "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f";

    /// A workspace lib in a dev build, as captured from cargo 1.95 (without
    /// the `-C incremental` cargo adds to workspace members).
    fn lib_dev() -> String {
        format!(
            "--crate-name ddtest --edition=2024 src/lib.rs {JSON} --crate-type lib \
             --emit=dep-info,metadata,link -C embed-bitcode=no -C debuginfo=2 \
             --check-cfg 'cfg(docsrs,test)' --check-cfg 'cfg(feature, values())' \
             -C metadata=dd5a4c314e49e08a -C extra-filename=-b1a416bc65422fbc \
             --out-dir /tmp/ddtest/target/debug/deps -L dependency=/tmp/ddtest/target/debug/deps \
             --extern regex=/tmp/ddtest/target/debug/deps/libregex-b1b6e8fd394dc2c4.rmeta \
             --extern serde_json=/tmp/ddtest/target/debug/deps/libserde_json-16253bb678d742cb.rmeta"
        )
    }

    fn lib_release() -> String {
        format!(
            "--crate-name ddtest --edition=2024 src/lib.rs {JSON} --crate-type lib \
             --emit=dep-info,metadata,link -C opt-level=3 -C strip=debuginfo -C embed-bitcode=no \
             --check-cfg 'cfg(docsrs,test)' --check-cfg 'cfg(feature, values())' \
             -C metadata=5e7f0bd2b5f4a1c3 -C extra-filename=-0e4ec3c1a4d5f9b2 \
             --out-dir /tmp/ddtest/target/release/deps -L dependency=/tmp/ddtest/target/release/deps \
             --extern regex=/tmp/ddtest/target/release/deps/libregex-9c4f1d3e2a7b6c50.rmeta"
        )
    }

    fn registry_lib(emit: &str) -> String {
        format!(
            "--crate-name regex_syntax --edition=2021 {REGISTRY}/regex-syntax-0.8.11/src/lib.rs {JSON} \
             --crate-type lib --emit={emit} -C embed-bitcode=no -C debuginfo=2 \
             --cfg 'feature=\"std\"' --cfg 'feature=\"unicode\"' --check-cfg 'cfg(docsrs,test)' \
             --check-cfg 'cfg(feature, values(\"arbitrary\", \"default\", \"std\", \"unicode\"))' \
             -C metadata=0bb1a0a3f1e2c3d4 -C extra-filename=-5a1c2e3f4d5b6a79 \
             --out-dir /tmp/ddtest/target/debug/deps -L dependency=/tmp/ddtest/target/debug/deps \
             --cap-lints allow"
        )
    }

    fn proc_macro() -> String {
        format!(
            "--crate-name serde_derive --edition=2021 {REGISTRY}/serde_derive-1.0.228/src/lib.rs {JSON} \
             --crate-type proc-macro --emit=dep-info,link -C prefer-dynamic -C embed-bitcode=no \
             --cfg 'feature=\"default\"' --check-cfg 'cfg(docsrs,test)' \
             --check-cfg 'cfg(feature, values(\"default\", \"deserialize_in_place\"))' \
             -C metadata=6c1d2e3f4a5b6c7d -C extra-filename=-1f2e3d4c5b6a7980 \
             --out-dir /tmp/ddtest/target/debug/deps -L dependency=/tmp/ddtest/target/debug/deps \
             --extern proc_macro2=/tmp/ddtest/target/debug/deps/libproc_macro2-2b3c4d5e6f708192.rlib \
             --extern quote=/tmp/ddtest/target/debug/deps/libquote-3c4d5e6f70819203.rlib \
             --extern syn=/tmp/ddtest/target/debug/deps/libsyn-4d5e6f7081920314.rlib \
             --extern proc_macro --cap-lints allow"
        )
    }

    fn build_script() -> String {
        format!(
            "--crate-name build_script_build --edition=2024 build.rs {JSON} --crate-type bin \
             --emit=dep-info,link -C embed-bitcode=no -C debuginfo=2 \
             --check-cfg 'cfg(docsrs,test)' --check-cfg 'cfg(feature, values())' \
             -C metadata=7e8f9a0b1c2d3e4f -C extra-filename=-8f9a0b1c2d3e4f50 \
             --out-dir /tmp/ddtest/target/debug/build/ddtest-8f9a0b1c2d3e4f50 \
             -L dependency=/tmp/ddtest/target/debug/deps \
             --extern cc=/tmp/ddtest/target/debug/deps/libcc-9a0b1c2d3e4f5061.rlib"
        )
    }

    /// A crate whose build script linked a C library (`zstd-sys`-like).
    fn with_build_script_output() -> String {
        format!(
            "--crate-name zstd_sys --edition=2018 {REGISTRY}/zstd-sys-2.0.16+zstd.1.5.7/src/lib.rs {JSON} \
             --crate-type lib --emit=dep-info,metadata,link -C opt-level=3 -C embed-bitcode=no \
             --cfg 'feature=\"std\"' -C metadata=a0b1c2d3e4f50617 -C extra-filename=-b1c2d3e4f5061728 \
             --out-dir /tmp/ddtest/target/release/deps -L dependency=/tmp/ddtest/target/release/deps \
             --cap-lints allow \
             -L native=/tmp/ddtest/target/release/build/zstd-sys-c2d3e4f506172839/out \
             -l static=zstd --cfg from_build --check-cfg 'cfg(from_build)'"
        )
    }

    const PROBE: &str = "- --crate-name ___ --print=file-names --crate-type bin --crate-type rlib \
        --crate-type dylib --crate-type cdylib --crate-type staticlib --crate-type proc-macro \
        --print=sysroot --print=split-debuginfo --print=crate-name --print=cfg -Wwarnings";

    fn local(reason: LocalReason) -> Option<LocalReason> {
        Some(reason)
    }

    fn unsupported(flag: &str) -> Option<LocalReason> {
        Some(LocalReason::UnsupportedFlag(flag.to_owned()))
    }

    #[test]
    fn classify_cargo_invocations() {
        // `None` means the job is distributable.
        let cases: Vec<(&str, String, Option<LocalReason>)> = vec![
            (
                "lib, dev, workspace member",
                format!(
                    "{} -C incremental=/tmp/ddtest/target/debug/incremental",
                    lib_dev()
                ),
                local(LocalReason::Incremental),
            ),
            ("lib, dev, CARGO_INCREMENTAL=0", lib_dev(), None),
            ("lib, release", lib_release(), None),
            (
                "registry crate",
                registry_lib("dep-info,metadata,link"),
                None,
            ),
            ("cargo check", registry_lib("dep-info,metadata"), None),
            (
                "proc-macro",
                proc_macro(),
                local(LocalReason::CrateType("proc-macro".into())),
            ),
            (
                "build-script compile",
                build_script(),
                local(LocalReason::CrateType("bin".into())),
            ),
            (
                "crate with build-script output",
                with_build_script_output(),
                None,
            ),
            ("probe -vV", "-vV".into(), local(LocalReason::Probe)),
            ("probe -V", "-V".into(), local(LocalReason::Probe)),
            (
                "probe --version",
                "--version".into(),
                local(LocalReason::Probe),
            ),
            (
                "probe --print with stdin",
                PROBE.into(),
                local(LocalReason::Probe),
            ),
            (
                "probe --explain",
                "--explain E0308".into(),
                local(LocalReason::Probe),
            ),
            ("probe -C help", "-C help".into(), local(LocalReason::Probe)),
            ("probe -W help", "-W help".into(), local(LocalReason::Probe)),
            ("no arguments", String::new(), local(LocalReason::Probe)),
            (
                "stdin input",
                "- --crate-name x --crate-type lib --emit=metadata".into(),
                local(LocalReason::Probe),
            ),
            (
                "unit test",
                lib_dev().replace(
                    "--crate-type lib --emit=dep-info,metadata,link",
                    "--emit=dep-info,link --test",
                ),
                local(LocalReason::CrateType("test".into())),
            ),
            (
                "test with a crate type",
                format!("{} --test", lib_release()),
                local(LocalReason::CrateType("test".into())),
            ),
            (
                "bin",
                lib_release().replace("--crate-type lib", "--crate-type bin"),
                local(LocalReason::CrateType("bin".into())),
            ),
            (
                "cdylib among others",
                lib_release().replace("--crate-type lib", "--crate-type=rlib,cdylib"),
                local(LocalReason::CrateType("cdylib".into())),
            ),
            (
                "dylib",
                lib_release().replace("--crate-type lib", "--crate-type dylib"),
                local(LocalReason::CrateType("dylib".into())),
            ),
            (
                "staticlib",
                lib_release().replace(
                    "--crate-type lib --emit=dep-info,metadata,link",
                    "--crate-type staticlib --emit=dep-info,link",
                ),
                None,
            ),
            (
                "lib and staticlib",
                lib_release().replace(
                    "--crate-type lib",
                    "--crate-type lib --crate-type=staticlib",
                ),
                None,
            ),
            (
                "no crate type",
                lib_release().replace("--crate-type lib", ""),
                local(LocalReason::NoCrateType),
            ),
            (
                "no crate name",
                lib_release().replace("--crate-name ddtest", ""),
                local(LocalReason::NoCrateName),
            ),
            (
                "cargo rustc -- --emit=asm",
                format!("{} --emit=asm", lib_release()),
                local(LocalReason::Emit("asm".into())),
            ),
            (
                "emit llvm-ir with a path",
                format!("{} --emit llvm-ir=/tmp/x.ll", lib_release()),
                local(LocalReason::Emit("llvm-ir".into())),
            ),
            (
                "emit without =",
                lib_release().replace("--emit=", "--emit "),
                None,
            ),
            (
                "metadata to stdout",
                format!("{} --emit=metadata=-", lib_release()),
                unsupported("--emit metadata=-"),
            ),
            (
                "incremental, attached",
                format!("{} -Cincremental=/tmp/inc", lib_release()),
                local(LocalReason::Incremental),
            ),
            (
                "incremental, long form",
                format!("{} --codegen incremental=/tmp/inc", lib_release()),
                local(LocalReason::Incremental),
            ),
            (
                "-C profile-use",
                format!("{} -C profile-use=/tmp/merged.profdata", lib_release()),
                unsupported("-C profile-use=/tmp/merged.profdata"),
            ),
            (
                "-Cprofile-generate",
                format!("{} -Cprofile-generate", lib_release()),
                unsupported("-C profile-generate"),
            ),
            (
                "-C save-temps",
                format!("{} -C save-temps", lib_release()),
                unsupported("-C save-temps"),
            ),
            (
                "-C save_temps=yes",
                format!("{} -C save_temps=yes", lib_release()),
                unsupported("-C save_temps=yes"),
            ),
            (
                "-C save-temps=no",
                format!("{} -C save-temps=no", lib_release()),
                None,
            ),
            (
                "-C target-cpu=native",
                format!("{} -C target-cpu=native", lib_release()),
                unsupported("-C target-cpu=native"),
            ),
            (
                "-C target-cpu=x86-64-v3",
                format!("{} -C target-cpu=x86-64-v3", lib_release()),
                None,
            ),
            (
                "-C split-debuginfo=unpacked",
                format!("{} -C split-debuginfo=unpacked", lib_release()),
                unsupported("-C split-debuginfo=unpacked"),
            ),
            (
                "-C split-debuginfo=off",
                format!("{} -C split-debuginfo=off", lib_release()),
                None,
            ),
            (
                "-C linker from target config",
                format!("{} -C linker=clang", lib_release()),
                None,
            ),
            (
                "-Z flag",
                format!("{} -Z threads=8", lib_release()),
                unsupported("-Z threads=8"),
            ),
            (
                "-Z attached",
                format!("{} -Zshare-generics", lib_release()),
                unsupported("-Z share-generics"),
            ),
            (
                "--sysroot",
                format!("{} --sysroot=/opt/rust", lib_release()),
                unsupported("--sysroot /opt/rust"),
            ),
            (
                "--target spec file",
                format!("{} --target /tmp/my-target.json", lib_release()),
                unsupported("--target /tmp/my-target.json"),
            ),
            (
                "--target built in",
                format!("{} --target x86_64-unknown-linux-gnu", lib_release()),
                None,
            ),
            (
                "-o with several crate types",
                format!(
                    "{} --crate-type staticlib -o /tmp/out/libddtest.a",
                    lib_release()
                ),
                unsupported("-o with several crate types"),
            ),
            (
                "-o with one crate type",
                format!("{} -o /tmp/out/libddtest.rlib", lib_release()),
                None,
            ),
            (
                "-o to stdout",
                format!("{} -o -", lib_release()),
                unsupported("-o -"),
            ),
            (
                "unknown flag passes through",
                format!("{} --frobnicate", lib_release()),
                None,
            ),
            ("-g and -O grouped", format!("{} -gO", lib_release()), None),
            (
                "remap-path-prefix",
                format!("{} --remap-path-prefix=/tmp/ddtest=/src", lib_release()),
                None,
            ),
            (
                "two input files",
                format!("{} src/other.rs", lib_release()),
                local(LocalReason::Malformed("more than one input file".into())),
            ),
            (
                "repeated single-use option",
                format!("{} --crate-name again", lib_release()),
                local(LocalReason::Malformed(
                    "option `crate-name` given more than once".into(),
                )),
            ),
            (
                "missing value",
                format!("{} --emit", lib_release()),
                local(LocalReason::Malformed("option `emit` needs a value".into())),
            ),
            (
                "flag with a value",
                format!("{} --test=yes", lib_release()),
                local(LocalReason::Malformed(
                    "option `test` does not take a value".into(),
                )),
            ),
        ];
        for (name, line, expected) in cases {
            let got = match classify(&argv(&line)) {
                Classification::Local(reason) => Some(reason),
                Classification::Distribute(_) => None,
            };
            assert_eq!(got, expected, "{name}: {line}");
        }
    }

    #[test]
    fn job_of_a_release_lib() {
        let Classification::Distribute(job) = classify(&argv(&lib_release())) else {
            panic!("release lib must be distributable");
        };
        let expected = CompileJob {
            crate_name: "ddtest".into(),
            crate_types: vec!["lib".into()],
            emit: vec![
                EmitKind::DepInfo(None),
                EmitKind::Metadata(None),
                EmitKind::Link(None),
            ],
            src: "src/lib.rs".into(),
            out_dir: Some("/tmp/ddtest/target/release/deps".into()),
            output_file: None,
            extra_filename: "-0e4ec3c1a4d5f9b2".into(),
            externs: vec![Extern {
                name: "regex".into(),
                path: Some(
                    "/tmp/ddtest/target/release/deps/libregex-9c4f1d3e2a7b6c50.rmeta".into(),
                ),
            }],
            search_paths: vec![SearchPath {
                kind: SearchKind::Dependency,
                path: "/tmp/ddtest/target/release/deps".into(),
            }],
            native_libs: vec![],
            target: None,
        };
        assert_eq!(job, expected);
    }

    #[test]
    fn job_of_a_crate_with_build_script_output() {
        let Classification::Distribute(job) = classify(&argv(&with_build_script_output())) else {
            panic!("crate with a native library must be distributable");
        };
        assert_eq!(
            job.src,
            format!("{REGISTRY}/zstd-sys-2.0.16+zstd.1.5.7/src/lib.rs")
        );
        assert_eq!(
            job.search_paths,
            vec![
                SearchPath {
                    kind: SearchKind::Dependency,
                    path: "/tmp/ddtest/target/release/deps".into()
                },
                SearchPath {
                    kind: SearchKind::Native,
                    path: "/tmp/ddtest/target/release/build/zstd-sys-c2d3e4f506172839/out".into(),
                },
            ]
        );
        assert_eq!(
            job.native_libs,
            vec![NativeLib {
                kind: "static".into(),
                modifiers: String::new(),
                name: "zstd".into(),
                rename: None
            }]
        );
    }

    #[test]
    fn job_fields_in_every_spelling() {
        // Each line must yield the same job as the canonical spelling.
        let canonical = "--crate-name a --crate-type lib --emit=metadata,link src/lib.rs --out-dir /o \
                         -C extra-filename=-x --target x86_64-unknown-linux-gnu";
        let spellings = [
            "--crate-name=a --crate-type=lib --emit metadata,link src/lib.rs --out-dir=/o \
             -Cextra-filename=-x --target=x86_64-unknown-linux-gnu",
            "src/lib.rs --crate-name a --crate-type lib --emit metadata --emit link --out-dir /o \
             --codegen extra_filename=-x --target x86_64-unknown-linux-gnu",
            "--crate-name a --crate-type lib,lib --emit=link,metadata --emit=metadata --out-dir /o \
             -C extra-filename=-x --target x86_64-unknown-linux-gnu -- src/lib.rs",
        ];
        let Classification::Distribute(expected) = classify(&argv(canonical)) else {
            panic!("canonical spelling must be distributable");
        };
        assert_eq!(
            expected.emit,
            vec![EmitKind::Metadata(None), EmitKind::Link(None)]
        );
        assert_eq!(expected.target.as_deref(), Some("x86_64-unknown-linux-gnu"));
        for line in spellings {
            let Classification::Distribute(mut job) = classify(&argv(line)) else {
                panic!("{line} must be distributable");
            };
            // Emit order follows the first request; only the set matters here.
            job.emit
                .sort_by_key(|emit| matches!(emit, EmitKind::Link(_)));
            assert_eq!(job, expected, "{line}");
        }
    }

    #[test]
    fn emit_paths_and_defaults() {
        let cases: Vec<(&str, Vec<EmitKind>)> = vec![
            ("", vec![EmitKind::Link(None)]),
            (
                "--emit=dep-info=/tmp/a.d",
                vec![EmitKind::DepInfo(Some("/tmp/a.d".into()))],
            ),
            (
                "--emit=link=/tmp/out/liba.rlib,metadata",
                vec![
                    EmitKind::Link(Some("/tmp/out/liba.rlib".into())),
                    EmitKind::Metadata(None),
                ],
            ),
            // rustc keeps the last path given for a kind.
            (
                "--emit=link=/x --emit link=/y",
                vec![EmitKind::Link(Some("/y".into()))],
            ),
        ];
        for (emit, expected) in cases {
            let line = format!("--crate-name a --crate-type lib src/lib.rs {emit}");
            let Classification::Distribute(job) = classify(&argv(&line)) else {
                panic!("{line} must be distributable");
            };
            assert_eq!(job.emit, expected, "{line}");
        }
    }

    #[test]
    fn search_path_forms() {
        let cases = [
            ("dependency=/t/deps", SearchKind::Dependency, "/t/deps"),
            ("crate=/t/c", SearchKind::Crate, "/t/c"),
            ("native=/t/out", SearchKind::Native, "/t/out"),
            ("framework=/t/f", SearchKind::Framework, "/t/f"),
            ("all=/t/all", SearchKind::All, "/t/all"),
            ("/t/plain", SearchKind::All, "/t/plain"),
            // rustc takes an unknown prefix as part of the path.
            ("weird=/t", SearchKind::All, "weird=/t"),
        ];
        for (value, kind, path) in cases {
            let expected = vec![SearchPath {
                kind,
                path: path.into(),
            }];
            for line in [format!("-L {value}"), format!("-L{value}")] {
                let job_line = format!("--crate-name a --crate-type lib src/lib.rs {line}");
                let Classification::Distribute(job) = classify(&argv(&job_line)) else {
                    panic!("{line} must be distributable");
                };
                assert_eq!(job.search_paths, expected, "{line}");
            }
        }
    }

    #[test]
    fn native_lib_forms() {
        let lib = |kind: &str, modifiers: &str, name: &str, rename: Option<&str>| NativeLib {
            kind: kind.into(),
            modifiers: modifiers.into(),
            name: name.into(),
            rename: rename.map(Into::into),
        };
        let cases = [
            ("-l static=z", lib("static", "", "z", None)),
            ("-lstatic=z", lib("static", "", "z", None)),
            (
                "-l static:+bundle,-whole-archive=z",
                lib("static", "+bundle,-whole-archive", "z", None),
            ),
            (
                "-l static:+verbatim=libz-ng.a",
                lib("static", "+verbatim", "libz-ng.a", None),
            ),
            ("-l z", lib("dylib", "", "z", None)),
            ("-lz", lib("dylib", "", "z", None)),
            ("-l dylib=z", lib("dylib", "", "z", None)),
            ("-l static=foo:bar", lib("static", "", "foo", Some("bar"))),
            (
                "-l framework=Security",
                lib("framework", "", "Security", None),
            ),
            (
                "-l link-arg=-Wl,--defsym=a:b",
                lib("link-arg", "", "-Wl,--defsym=a:b", None),
            ),
        ];
        for (flag, expected) in cases {
            let line = format!("--crate-name a --crate-type lib src/lib.rs {flag}");
            let Classification::Distribute(job) = classify(&argv(&line)) else {
                panic!("{line} must be distributable");
            };
            assert_eq!(job.native_libs, vec![expected], "{flag}");
        }
        let bundled = lib("static", "+bundle,-whole-archive,+verbatim", "z", None);
        assert!(bundled.has_modifier_enabled("bundle"));
        assert!(bundled.has_modifier_enabled("verbatim"));
        assert!(bundled.has_modifier_disabled("whole-archive"));
        assert!(!bundled.has_modifier_disabled("bundle"));
    }

    #[test]
    fn extern_forms() {
        let cases = [
            (
                "--extern regex=/d/libregex.rmeta",
                "regex",
                Some("/d/libregex.rmeta"),
            ),
            (
                "--extern=regex=/d/libregex.rlib",
                "regex",
                Some("/d/libregex.rlib"),
            ),
            ("--extern proc_macro", "proc_macro", None),
            (
                "--extern priv:foo=/d/libfoo.rmeta",
                "foo",
                Some("/d/libfoo.rmeta"),
            ),
            (
                "--extern noprelude,nounused:bar=/d/libbar.rlib",
                "bar",
                Some("/d/libbar.rlib"),
            ),
        ];
        for (flag, name, path) in cases {
            let line = format!("--crate-name a --crate-type lib src/lib.rs {flag}");
            let Classification::Distribute(job) = classify(&argv(&line)) else {
                panic!("{line} must be distributable");
            };
            assert_eq!(
                job.externs,
                vec![Extern {
                    name: name.into(),
                    path: path.map(Into::into)
                }],
                "{flag}"
            );
        }
    }

    #[test]
    fn prepass_replaces_emit() {
        let d = "--emit=dep-info=/tmp/pre.d";
        let z = "-Z binary-dep-depinfo";
        let cases = [
            (
                "--crate-name a src/lib.rs --crate-type lib --emit=dep-info,metadata,link --out-dir /o".to_owned(),
                format!("--crate-name a src/lib.rs --crate-type lib {d} {z} --out-dir /o"),
            ),
            (
                "--crate-name a --emit dep-info,metadata src/lib.rs --cfg x".to_owned(),
                format!("--crate-name a {d} {z} src/lib.rs --cfg x"),
            ),
            (
                "--emit=metadata src/lib.rs --emit link=/o/liba.rlib -o /o/liba.rlib".to_owned(),
                format!("{d} {z} src/lib.rs -o /o/liba.rlib"),
            ),
            // Without an --emit the new flags come first, before any `--`.
            ("--crate-name a -- src/lib.rs".to_owned(), format!("{d} {z} --crate-name a -- src/lib.rs")),
            (String::new(), format!("{d} {z}")),
            // `--cfg --emit` is a cfg value, not an emit.
            ("--cfg --emit src/lib.rs".to_owned(), format!("{d} {z} --cfg --emit src/lib.rs")),
            (lib_dev(), lib_dev().replace("--emit=dep-info,metadata,link", &format!("{d} {z}"))),
        ];
        for (input, expected) in cases {
            assert_eq!(
                prepass_args(&argv(&input), "/tmp/pre.d"),
                argv(&expected),
                "{input}"
            );
        }
    }

    #[test]
    fn argfiles_expand_to_lines() {
        let dir = tempfile::tempdir().unwrap();
        let cases: Vec<(&str, &[u8], Vec<&str>)> = vec![
            (
                "plain",
                b"--crate-name\na\nsrc/lib.rs\n",
                vec!["--crate-name", "a", "src/lib.rs"],
            ),
            (
                "crlf",
                b"--cfg\r\nfeature=\"x y\"\r\n",
                vec!["--cfg", "feature=\"x y\""],
            ),
            ("empty line is an argument", b"a\n\nb", vec!["a", "", "b"]),
            (
                "nested @ is literal",
                b"@/etc/passwd\n",
                vec!["@/etc/passwd"],
            ),
        ];
        for (name, contents, lines) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            let args = vec![
                OsString::from("-vV"),
                OsString::from(format!("@{}", path.display())),
                OsString::from("--test"),
            ];
            let mut expected = vec!["-vV".to_owned()];
            expected.extend(lines.iter().map(|line| (*line).to_owned()));
            expected.push("--test".to_owned());
            assert_eq!(expand_argfiles(args).unwrap(), expected, "{name}");
        }
    }

    #[test]
    fn argfile_errors() {
        use std::os::unix::ffi::OsStringExt;

        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad");
        std::fs::write(&bad, b"--cfg\n\xff\n").unwrap();
        let missing = dir.path().join("missing");

        let err = expand_argfiles(vec![OsString::from_vec(b"src/\xff.rs".to_vec())]).unwrap_err();
        assert!(matches!(err, ArgError::NotUtf8(_)), "{err:?}");
        let err = expand_argfiles(vec![OsString::from(format!("@{}", bad.display()))]).unwrap_err();
        assert!(
            matches!(&err, ArgError::ArgFileNotUtf8(path) if *path == bad),
            "{err:?}"
        );
        let err =
            expand_argfiles(vec![OsString::from(format!("@{}", missing.display()))]).unwrap_err();
        assert!(
            matches!(&err, ArgError::ArgFile { path, .. } if *path == missing),
            "{err:?}"
        );
    }

    #[test]
    fn local_reasons_read_well() {
        let cases = [
            (LocalReason::Probe, "compiler query"),
            (
                LocalReason::CrateType("test".into()),
                "test harness needs a linker",
            ),
            (
                LocalReason::CrateType("bin".into()),
                "crate type `bin` is built locally",
            ),
            (LocalReason::Incremental, "incremental compilation"),
            (
                LocalReason::Emit("asm".into()),
                "emit kind `asm` is built locally",
            ),
            (
                LocalReason::UnsupportedFlag("-Z x".into()),
                "unsupported flag `-Z x`",
            ),
            (LocalReason::NoCrateType, "no --crate-type"),
        ];
        for (reason, text) in cases {
            assert_eq!(reason.to_string(), text);
        }
    }
}
