//! Parsing the make-style `.d` file of the dep-info pre-pass.
//!
//! The pre-pass runs rustc with `--emit=dep-info=<TMPFILE> -Z
//! binary-dep-depinfo`, which writes:
//!
//! ```text
//! <TMPFILE>: src/lib.rs /…/libstd-….rmeta /…/deps/libregex-….rmeta
//!
//! src/lib.rs:
//! /…/libstd-….rmeta:
//! /…/deps/libregex-….rmeta:
//!
//! # env-dep:OUT_DIR=/…/out
//! ```
//!
//! The first rule's prerequisites are every file the compile read: sources,
//! `include!`d files and every crate file rustc loaded. The empty rules after
//! it only repeat them (they keep make happy when a file disappears), so they
//! are skipped. `# env-dep:` lines name the environment variables the source
//! read with `env!`/`option_env!`.
//!
//! rustc escapes only spaces in file names (`\ `), and `\n`, `\r` and `\\` in
//! env-dep names and values. We also accept `\\` in file names and lines
//! continued with a trailing backslash, which other make-style writers emit.

/// What a `.d` file says a compile read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DepInfo {
    /// The prerequisites of the first rule, unescaped, in order, without
    /// duplicates, and without the rule's own target. Paths are as rustc
    /// wrote them, so they may be relative to its working directory.
    pub files: Vec<String>,
    /// The `# env-dep:` variables, unescaped, in order, without duplicates.
    /// The value is `None` when the variable was unset (`option_env!`).
    pub env: Vec<(String, Option<String>)>,
}

/// Why a `.d` file could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DepInfoError {
    /// The text has no rule at all; rustc always writes one, so the file is
    /// truncated or not a `.d` file.
    #[error("dep-info has no rule")]
    NoRule,
    /// The first rule has no `target:` separator.
    #[error("dep-info line {line}: no `:` after the rule's target")]
    MissingColon {
        /// The 1-based line where the rule starts.
        line: usize,
    },
}

const ENV_DEP_PREFIX: &str = "# env-dep:";

/// Parses the text of a `.d` file.
pub fn parse(text: &str) -> Result<DepInfo, DepInfoError> {
    let mut info = DepInfo::default();
    let mut first_rule: Option<(usize, String)> = None;
    let mut lines = text.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        // Comment lines are never continued: rustc escapes a backslash in an
        // env-dep value as `\\`, so a value ending in one would look like a
        // continuation.
        if line.trim_start().starts_with('#') {
            if let Some(env) = line.strip_prefix(ENV_DEP_PREFIX) {
                let entry = parse_env_dep(env);
                if !info.env.contains(&entry) {
                    info.env.push(entry);
                }
            }
            continue;
        }
        let mut rule = line.to_owned();
        while ends_with_continuation(&rule) {
            rule.pop();
            rule.push(' ');
            match lines.next() {
                Some((_, next)) => rule.push_str(next),
                None => break,
            }
        }
        // Later rules only repeat the first rule's prerequisites.
        if first_rule.is_none() {
            first_rule = Some((index + 1, rule));
        }
    }
    let (line, rule) = first_rule.ok_or(DepInfoError::NoRule)?;
    let (targets, prerequisites) = split_rule(&rule).ok_or(DepInfoError::MissingColon { line })?;
    let targets = split_words(targets);
    for file in split_words(prerequisites) {
        if !targets.contains(&file) && !info.files.contains(&file) {
            info.files.push(file);
        }
    }
    Ok(info)
}

/// Whether a rule line goes on to the next line: it ends with a backslash that
/// is not itself escaped.
fn ends_with_continuation(line: &str) -> bool {
    let trailing = line.bytes().rev().take_while(|&byte| byte == b'\\').count();
    trailing % 2 == 1
}

/// Splits a rule at the first unescaped `:` that ends a word, returning the
/// targets and the prerequisites. A colon inside a word (`a:b`) is part of a
/// path, as rustc does not escape colons.
fn split_rule(rule: &str) -> Option<(&str, &str)> {
    let bytes = rule.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'\\' => index += 2,
            b':' if bytes
                .get(index + 1)
                .is_none_or(|next| next.is_ascii_whitespace()) =>
            {
                return Some((&rule[..index], &rule[index + 1..]));
            }
            _ => index += 1,
        }
    }
    None
}

/// Splits make-style words at unescaped whitespace, unescaping `\ ` and `\\`.
/// Any other backslash is kept: rustc writes backslashes in paths as they are.
fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(&next @ (' ' | '\\')) => {
                    word.push(next);
                    chars.next();
                }
                _ => word.push('\\'),
            },
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// Parses what follows `# env-dep:`: `NAME=value` or just `NAME`.
fn parse_env_dep(text: &str) -> (String, Option<String>) {
    match text.split_once('=') {
        Some((name, value)) => (unescape_env(name), Some(unescape_env(value))),
        None => (unescape_env(text), None),
    }
}

/// Undoes rustc's `escape_dep_env`: `\n`, `\r` and `\\`. Other backslashes
/// cannot come from rustc and are kept as they are.
fn unescape_env(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let replacement = match chars.peek() {
            Some('n') => '\n',
            Some('r') => '\r',
            Some('\\') => '\\',
            _ => {
                out.push('\\');
                continue;
            }
        };
        out.push(replacement);
        chars.next();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STD: &str = "/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/lib/rustlib/x86_64-unknown-linux-gnu/lib/libstd-d1237ef7159db0a2.rmeta";

    fn files(list: &[&str]) -> Vec<String> {
        list.iter().map(|file| (*file).to_owned()).collect()
    }

    fn env(list: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        list.iter()
            .map(|(name, value)| ((*name).to_owned(), value.map(str::to_owned)))
            .collect()
    }

    #[test]
    fn parses_prepass_output() {
        let real = format!(
            "/tmp/dd.d: src/lib.rs {STD} /tmp/ddtest/target/debug/deps/libregex-b1b6e8fd394dc2c4.rmeta \
             /tmp/ddtest/target/debug/deps/libregex_automata-3585ee272d6af782.rmeta\n\
             \n\
             src/lib.rs:\n\
             {STD}:\n\
             /tmp/ddtest/target/debug/deps/libregex-b1b6e8fd394dc2c4.rmeta:\n\
             /tmp/ddtest/target/debug/deps/libregex_automata-3585ee272d6af782.rmeta:\n\
             \n\
             # env-dep:OUT_DIR=/tmp/x/out\n"
        );
        let cases: Vec<(&str, String, DepInfo)> = vec![
            (
                "real pre-pass output",
                real,
                DepInfo {
                    files: files(&[
                        "src/lib.rs",
                        STD,
                        "/tmp/ddtest/target/debug/deps/libregex-b1b6e8fd394dc2c4.rmeta",
                        "/tmp/ddtest/target/debug/deps/libregex_automata-3585ee272d6af782.rmeta",
                    ]),
                    env: env(&[("OUT_DIR", Some("/tmp/x/out"))]),
                },
            ),
            (
                "escaped spaces",
                "/tmp/my\\ dir/dd.d: src/lib.rs /tmp/my\\ dir/src/a\\ b.rs\n\n/tmp/my\\ dir/src/a\\ b.rs:\n".into(),
                DepInfo { files: files(&["src/lib.rs", "/tmp/my dir/src/a b.rs"]), env: vec![] },
            ),
            (
                "escaped and literal backslashes",
                "/tmp/dd.d: src/back\\\\slash.rs src/keep\\x.rs\n".into(),
                DepInfo { files: files(&["src/back\\slash.rs", "src/keep\\x.rs"]), env: vec![] },
            ),
            (
                "continued lines",
                "/tmp/dd.d: src/lib.rs \\\n  src/a.rs\\\n src/b.rs\n\nsrc/lib.rs:\n".into(),
                DepInfo { files: files(&["src/lib.rs", "src/a.rs", "src/b.rs"]), env: vec![] },
            ),
            (
                "duplicates and the target itself are dropped",
                "/tmp/dd.d: src/lib.rs src/a.rs src/lib.rs /tmp/dd.d\n".into(),
                DepInfo { files: files(&["src/lib.rs", "src/a.rs"]), env: vec![] },
            ),
            (
                "a colon inside a path",
                "/tmp/dd.d: src/lib.rs /tmp/odd:name/x.rs\n".into(),
                DepInfo { files: files(&["src/lib.rs", "/tmp/odd:name/x.rs"]), env: vec![] },
            ),
            (
                "only the first rule counts",
                "/tmp/dd.d: src/lib.rs\n/tmp/libdd.rmeta: src/lib.rs src/other.rs\n".into(),
                DepInfo { files: files(&["src/lib.rs"]), env: vec![] },
            ),
            (
                "no prerequisites",
                "/tmp/dd.d:\n".into(),
                DepInfo { files: vec![], env: vec![] },
            ),
            (
                "env-deps with escapes, unset and repeated",
                "/tmp/dd.d: src/lib.rs\n\
                 # env-dep:CARGO_PKG_VERSION=0.1.0\n\
                 # env-dep:MY_CUSTOM_VAR\n\
                 # env-dep:MULTI=line one\\nline two\\r\n\
                 # env-dep:WIN=C:\\\\temp\\\\\n\
                 # env-dep:EMPTY=\n\
                 # env-dep:EQ=a=b\n\
                 # env-dep:CARGO_PKG_VERSION=0.1.0\n\
                 # checksum:blake3=b88c0e422e file_len:385 src/lib.rs\n"
                    .into(),
                DepInfo {
                    files: files(&["src/lib.rs"]),
                    env: env(&[
                        ("CARGO_PKG_VERSION", Some("0.1.0")),
                        ("MY_CUSTOM_VAR", None),
                        ("MULTI", Some("line one\nline two\r")),
                        ("WIN", Some("C:\\temp\\")),
                        ("EMPTY", Some("")),
                        ("EQ", Some("a=b")),
                    ]),
                },
            ),
            (
                // An env-dep value ending in an escaped backslash is not a
                // line continuation.
                "env-dep before the rule",
                "# env-dep:P=x\\\\\n/tmp/dd.d: src/lib.rs\n".into(),
                DepInfo { files: files(&["src/lib.rs"]), env: env(&[("P", Some("x\\"))]) },
            ),
        ];
        for (name, text, expected) in cases {
            assert_eq!(parse(&text), Ok(expected), "{name}");
        }
    }

    #[test]
    fn rejects_text_without_a_rule() {
        let cases = [
            ("empty", "", DepInfoError::NoRule),
            ("only blank lines", "\n  \n", DepInfoError::NoRule),
            ("only comments", "# env-dep:A=b\n", DepInfoError::NoRule),
            (
                "no colon",
                "\n/tmp/dd.d src/lib.rs\n",
                DepInfoError::MissingColon { line: 2 },
            ),
            (
                "escaped colon only",
                "/tmp/dd.d\\: src/lib.rs\n",
                DepInfoError::MissingColon { line: 1 },
            ),
        ];
        for (name, text, expected) in cases {
            assert_eq!(parse(text), Err(expected), "{name}");
        }
    }
}
