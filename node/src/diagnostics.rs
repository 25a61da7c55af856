//! Reading rustc's stderr: which lines to forward, which to hold back, and
//! when a failure is the farm's fault rather than the code's.
//!
//! Cargo runs rustc with `--error-format=json`, so every line rustc itself
//! writes is a JSON object. That gives two reliable signals:
//!
//! * A run that fails before writing any JSON line never got rustc going:
//!   bubblewrap or the dynamic loader failed. That is a farm failure.
//! * A compile error that says a crate or file is missing (E0463 and
//!   friends) means input discovery missed something on this node. That is a
//!   farm failure too, even though rustc ran.
//!
//! Farm failures make the client compile locally, and local rustc then
//! reports everything itself. So the gate holds back what it cannot yet
//! judge (text before the first JSON line, and everything from the first
//! error on) and decides at exit; warnings and artifact notifications pass
//! straight through, so cargo's pipelining and live warnings survive.

use serde_json::Value;

/// Error codes that mean rustc could not find an input the client should
/// have shipped, rather than a bug in the code being compiled.
const MISSING_INPUT_CODES: &[&str] = &[
    "E0460", "E0461", "E0462", "E0463", "E0464", "E0514", "E0519", "E0523", "E0583", "E0786",
];

/// Text in an error diagnostic that points at the machine rather than the
/// code: an operating system error, or a shared library that would not load.
const NODE_TROUBLE: &[&str] = &["(os error ", "cannot open shared object file"];

/// The exit codes rustc itself uses: success, errors, and an internal
/// compiler error. bubblewrap reports a child killed by signal N as 128+N,
/// so anything else means rustc was killed (out of memory, a timeout, a
/// crash) and the job is the farm's failure, not a compile error.
const RUSTC_EXIT_CODES: &[i32] = &[0, 1, 101];

/// What one stderr line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// An artifact notification: rustc finished writing `path`.
    Artifact { path: String, emit: String },
    /// A diagnostic at error level (or worse). `missing_input` tells whether
    /// it blames a missing crate or file.
    Error { missing_input: bool },
    /// Any other JSON line: warnings, notes, future-incompat reports.
    OtherJson,
    /// Not JSON: bubblewrap, the dynamic loader, a panic, `RUSTC_LOG` output.
    Text,
}

/// Classifies one line (without its newline).
pub fn classify(line: &[u8]) -> Line {
    if !line.starts_with(b"{") {
        return Line::Text;
    }
    let Ok(v) = serde_json::from_slice::<Value>(line) else {
        return Line::Text;
    };
    match v.get("$message_type").and_then(Value::as_str) {
        Some("artifact") => Line::Artifact {
            path: v
                .get("artifact")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            emit: v
                .get("emit")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        },
        Some("diagnostic") => {
            let level = v.get("level").and_then(Value::as_str).unwrap_or_default();
            if !level.starts_with("error") {
                return Line::OtherJson;
            }
            let code = v
                .pointer("/code/code")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let message = v.get("message").and_then(Value::as_str).unwrap_or_default();
            let rendered = v
                .get("rendered")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let missing_input = MISSING_INPUT_CODES.contains(&code)
                || message.starts_with("couldn't read")
                || message.starts_with("file not found for module")
                // A `#[link(kind = "static")]` in the source names an
                // archive the command line does not, so it was not shipped.
                || message.starts_with("could not find native static library")
                // The node's own trouble (a full disk, a library missing
                // from the bundle for a proc-macro, a file a proc-macro
                // wanted outside the package): the local rerun tells the
                // genuine case apart by failing the same way.
                || NODE_TROUBLE.iter().any(|t| rendered.contains(t) || message.contains(t));
            Line::Error { missing_input }
        }
        _ => Line::OtherJson,
    }
}

/// What to do with a line now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send the file rustc just finished (the `.rmeta`), then forward the line.
    SendOutputThenForward(String),
    Forward,
    Hold,
}

/// How a job ended, as far as its stderr tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// rustc's result stands: forward the held lines, report the exit code.
    Stands(Vec<Vec<u8>>),
    /// The farm failed; the held lines explain why and are not forwarded.
    FarmFailure(String),
}

/// Text that only a failed sandbox or loader prints, never rustc.
const INFRASTRUCTURE_MARKERS: &[&str] = &[
    "bwrap:",
    crate::launcher::LAUNCHER_MARKER,
    "error while loading shared libraries",
    "cannot open shared object file",
];

/// Whether a farm failure's description says the dynamic loader could not
/// load a library: on a node, where everything rustc loads comes from the
/// toolchain bundle, that may mean the unpacked toolchain is damaged.
pub fn is_loader_failure(why: &str) -> bool {
    why.contains("error while loading shared libraries")
        || why.contains("cannot open shared object file")
}

/// Whether rustc was asked for JSON diagnostics, which is how cargo always
/// runs it. Build-script probes (`autocfg`, proc-macro2's feature probe)
/// call rustc through the wrapper without it.
pub fn expects_json(args: &[String]) -> bool {
    args.iter().enumerate().any(|(i, a)| {
        a.strip_prefix("--error-format=")
            .is_some_and(|v| v.starts_with("json"))
            || (a == "--error-format" && args.get(i + 1).is_some_and(|v| v.starts_with("json")))
    })
}

/// The state machine described in the module docs.
#[derive(Debug, Default)]
pub struct Gate {
    /// Without JSON there is no "rustc is running" signal: text is held to
    /// the end and judged by [`INFRASTRUCTURE_MARKERS`].
    plain_text: bool,
    seen_json: bool,
    after_error: bool,
    missing_input: bool,
    held: Vec<Vec<u8>>,
}

impl Gate {
    /// A gate for a run that uses JSON diagnostics (`expects_json`) or not.
    pub fn new(expects_json: bool) -> Self {
        Gate {
            plain_text: !expects_json,
            ..Gate::default()
        }
    }

    /// Decides what to do with one line. Held lines are kept by the gate.
    pub fn line(&mut self, line: &[u8]) -> (Action, Vec<Vec<u8>>) {
        let kind = classify(line);
        let mut release = Vec::new();
        if kind != Line::Text && !self.seen_json {
            // rustc is running, so whatever came before was its own output.
            self.seen_json = true;
            if !self.after_error {
                release = std::mem::take(&mut self.held);
            }
        }
        let action = match kind {
            Line::Artifact { path, emit } if emit == "metadata" => {
                Action::SendOutputThenForward(path)
            }
            Line::Artifact { .. } => Action::Forward,
            Line::Error { missing_input } => {
                self.after_error = true;
                self.missing_input |= missing_input;
                Action::Hold
            }
            _ if self.after_error || !self.seen_json => Action::Hold,
            _ => Action::Forward,
        };
        if action == Action::Hold {
            self.held.push(line.to_vec());
        }
        (action, release)
    }

    /// Judges the run once rustc has exited with `code`.
    pub fn finish(self, code: i32) -> Verdict {
        if !RUSTC_EXIT_CODES.contains(&code) {
            let how = if code > 128 {
                format!("signal {}", code - 128)
            } else {
                format!("exit code {code}")
            };
            return Verdict::FarmFailure(format!("rustc was killed on the node ({how})"));
        }
        if code != 0 && self.plain_text && !self.seen_json {
            let text = String::from_utf8_lossy(&self.held.concat()).into_owned();
            let broken = text.trim().is_empty()
                || text
                    .lines()
                    .any(|l| INFRASTRUCTURE_MARKERS.iter().any(|m| l.contains(m)));
            return if broken {
                Verdict::FarmFailure(format!(
                    "the sandbox or the toolchain failed (exit {code}): {}",
                    if text.trim().is_empty() {
                        "no output"
                    } else {
                        text.trim()
                    }
                ))
            } else {
                Verdict::Stands(self.held)
            };
        }
        if code != 0 && !self.seen_json {
            let text = String::from_utf8_lossy(&self.held.concat())
                .trim()
                .to_owned();
            return Verdict::FarmFailure(format!(
                "rustc exited with {code} before producing any diagnostics: {}",
                if text.is_empty() { "no output" } else { &text }
            ));
        }
        if code != 0 && self.missing_input {
            return Verdict::FarmFailure(
                "rustc could not find an input on the node (a crate or file the client did not send)"
                    .into(),
            );
        }
        Verdict::Stands(self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WARN: &[u8] = br#"{"$message_type":"diagnostic","message":"unused variable","code":{"code":"unused_variables"},"level":"warning","rendered":"warning: unused"}"#;
    const ERR: &[u8] = br#"{"$message_type":"diagnostic","message":"mismatched types","code":{"code":"E0308"},"level":"error","rendered":"error[E0308]"}"#;
    const MISSING: &[u8] = br#"{"$message_type":"diagnostic","message":"can't find crate for `foo`","code":{"code":"E0463"},"level":"error","rendered":"error[E0463]"}"#;
    const META: &[u8] = br#"{"$message_type":"artifact","artifact":"/p/target/debug/deps/libx-1.rmeta","emit":"metadata"}"#;
    const DEPINFO: &[u8] = br#"{"$message_type":"artifact","artifact":"/p/target/debug/deps/x-1.d","emit":"dep-info"}"#;

    #[test]
    fn json_is_detected_in_both_spellings() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(expects_json(&args(&["--error-format=json", "x.rs"])));
        assert!(expects_json(&args(&["--error-format", "json"])));
        assert!(!expects_json(&args(&["--crate-type=lib", "probe.rs"])));
        assert!(!expects_json(&args(&["--error-format=short"])));
    }

    #[test]
    fn a_plain_text_compile_error_stands() {
        let mut g = Gate::new(false);
        g.line(b"error[E0554]: `#![feature]` may not be used on the stable release channel");
        g.line(b"error: aborting due to 1 previous error");
        assert!(matches!(g.finish(1), Verdict::Stands(lines) if lines.len() == 2));
    }

    #[test]
    fn a_plain_text_run_whose_sandbox_failed_is_the_farms_fault() {
        for text in [
            &b"bwrap: Can't mount proc on /newroot/proc"[..],
            b"",
            b"/x/rustc: error while loading shared libraries: libLLVM.so",
        ] {
            let mut g = Gate::new(false);
            if !text.is_empty() {
                g.line(text);
            }
            assert!(
                matches!(g.finish(1), Verdict::FarmFailure(_)),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn a_killed_rustc_is_the_farms_fault_even_after_metadata() {
        for code in [137, 139, 134, 2] {
            let mut g = Gate::new(true);
            g.line(META);
            assert!(
                matches!(g.finish(code), Verdict::FarmFailure(_)),
                "exit {code}"
            );
        }
        let mut g = Gate::new(true);
        g.line(META);
        assert_eq!(
            g.finish(101),
            Verdict::Stands(vec![]),
            "an ICE is rustc's own verdict"
        );
    }

    #[test]
    fn os_errors_in_diagnostics_are_the_nodes_trouble() {
        let disk = br#"{"$message_type":"diagnostic","message":"failed to write lib.rmeta: No space left on device (os error 28)","code":null,"level":"error","rendered":"error: failed"}"#;
        let pm = br#"{"$message_type":"diagnostic","message":"proc macro panicked","code":null,"level":"error","rendered":"error: proc macro panicked\n = help: message: cannot read schema.sql: No such file or directory (os error 2)"}"#;
        let so = br#"{"$message_type":"diagnostic","message":"libssl.so.3: cannot open shared object file: No such file or directory","code":null,"level":"error","rendered":"error: x"}"#;
        for line in [&disk[..], pm, so] {
            assert_eq!(
                classify(line),
                Line::Error {
                    missing_input: true
                }
            );
        }
    }

    #[test]
    fn lines_are_classified() {
        assert_eq!(classify(b"bwrap: Can't mount proc"), Line::Text);
        assert_eq!(classify(b"{not json"), Line::Text);
        assert_eq!(classify(WARN), Line::OtherJson);
        assert_eq!(
            classify(ERR),
            Line::Error {
                missing_input: false
            }
        );
        assert_eq!(
            classify(MISSING),
            Line::Error {
                missing_input: true
            }
        );
        assert_eq!(
            classify(META),
            Line::Artifact {
                path: "/p/target/debug/deps/libx-1.rmeta".into(),
                emit: "metadata".into()
            }
        );
    }

    #[test]
    fn a_clean_build_streams_everything_and_sends_the_rmeta_first() {
        let mut g = Gate::new(true);
        assert_eq!(g.line(DEPINFO).0, Action::Forward);
        assert_eq!(g.line(WARN).0, Action::Forward);
        assert_eq!(
            g.line(META).0,
            Action::SendOutputThenForward("/p/target/debug/deps/libx-1.rmeta".into())
        );
        assert_eq!(g.finish(0), Verdict::Stands(vec![]));
    }

    #[test]
    fn a_genuine_compile_error_stands_and_is_released_at_exit() {
        let mut g = Gate::new(true);
        assert_eq!(g.line(WARN).0, Action::Forward);
        assert_eq!(g.line(ERR).0, Action::Hold);
        assert_eq!(g.line(WARN).0, Action::Hold);
        assert_eq!(
            g.finish(1),
            Verdict::Stands(vec![ERR.to_vec(), WARN.to_vec()])
        );
    }

    #[test]
    fn a_missing_crate_is_the_farms_fault() {
        let mut g = Gate::new(true);
        g.line(MISSING);
        g.line(ERR);
        assert!(matches!(g.finish(1), Verdict::FarmFailure(_)));
    }

    #[test]
    fn a_sandbox_that_never_started_rustc_is_the_farms_fault() {
        let mut g = Gate::new(true);
        assert_eq!(
            g.line(b"bwrap: setting up uid map: Permission denied").0,
            Action::Hold
        );
        match g.finish(1) {
            Verdict::FarmFailure(why) => assert!(why.contains("uid map"), "{why}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn text_before_json_is_released_once_rustc_is_known_to_run() {
        let mut g = Gate::new(true);
        assert_eq!(g.line(b"some RUSTC_LOG line").0, Action::Hold);
        let (action, released) = g.line(WARN);
        assert_eq!(action, Action::Forward);
        assert_eq!(released, vec![b"some RUSTC_LOG line".to_vec()]);
        assert_eq!(g.finish(0), Verdict::Stands(vec![]));
    }

    #[test]
    fn a_successful_run_without_json_keeps_its_text() {
        let mut g = Gate::new(true);
        g.line(b"plain output");
        assert_eq!(g.finish(0), Verdict::Stands(vec![b"plain output".to_vec()]));
    }
}
