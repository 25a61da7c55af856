//! The client's per-invocation event log (`DISTCC_RS_EVENTS`).
//!
//! Every wrapper invocation appends one JSON line saying where the compile
//! ran and why, for example
//! `{"crate":"base","crate_types":["lib"],"where":"remote","node":"n1","reason":null,"exit_code":0,"ms":123}`.
//! Unknown fields are ignored so the client can add more, and fields the
//! client added later (`failed_nodes`, the traffic counts) may be missing.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer};

/// Where one compile ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Where {
    /// On a farm node.
    Remote,
    /// Locally by choice: probes, binaries, proc-macros, build scripts, or
    /// anything else that is not distributable.
    Local,
    /// Locally because the farm failed; `reason` says how.
    Fallback,
}

/// One line of the event log.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Event {
    /// The crate name (with underscores, as rustc's `--crate-name` has it);
    /// absent for invocations that compile no crate, such as `rustc -vV`.
    #[serde(rename = "crate", default)]
    pub crate_name: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub crate_types: Vec<String>,
    #[serde(rename = "where")]
    pub place: Where,
    /// The node that ran the compile, for remote ones.
    #[serde(default)]
    pub node: Option<String>,
    /// The nodes whose attempts at this compile failed before it ran where
    /// `place` and `node` say, in the order they were tried. Empty when the
    /// first attempt stood, and in logs from clients that never retry.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub failed_nodes: Vec<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub ms: Option<u64>,
    /// Compressed input bytes sent to the node (remote jobs and fallbacks).
    #[serde(default)]
    pub bytes_sent: Option<u64>,
    /// Input blobs sent to the node.
    #[serde(default)]
    pub blobs_sent: Option<usize>,
    /// Files in the job's manifest.
    #[serde(default)]
    pub inputs: Option<usize>,
}

impl Event {
    /// Whether this invocation compiled the named crate.
    pub fn is_crate(&self, name: &str) -> bool {
        self.crate_name.as_deref() == Some(name)
    }

    /// Whether the crate is a library that the farm should compile: an rlib
    /// (`lib` or `rlib`), not a proc-macro, binary or build script.
    pub fn is_rust_library(&self) -> bool {
        !self.crate_types.is_empty() && self.crate_types.iter().all(|t| t == "lib" || t == "rlib")
    }

    /// Whether this is a build script's compile (`build_script_build`, or
    /// `build_script_main` for packages that name theirs otherwise).
    pub fn is_build_script(&self) -> bool {
        self.crate_name
            .as_deref()
            .is_some_and(|name| name.starts_with("build_script_"))
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{}] {:?}",
            self.crate_name.as_deref().unwrap_or("<no crate>"),
            self.crate_types.join(","),
            self.place
        )?;
        if let Some(node) = &self.node {
            write!(f, " on {node}")?;
        }
        if !self.failed_nodes.is_empty() {
            write!(f, " after failing on {}", self.failed_nodes.join(", "))?;
        }
        if let Some(code) = self.exit_code {
            write!(f, " exit {code}")?;
        }
        if let Some(reason) = &self.reason {
            write!(f, " ({reason})")?;
        }
        Ok(())
    }
}

fn null_as_empty<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(deserializer)?.unwrap_or_default())
}

/// Reads an event log; a log that does not exist has no events. Panics on a
/// line that is not a valid event, naming it.
pub fn read_events(path: &Path) -> Vec<Event> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    };
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).unwrap_or_else(|e| {
                panic!(
                    "{}:{}: not a client event ({e}): {line}",
                    path.display(),
                    i + 1
                )
            })
        })
        .collect()
}

/// One event per line, for failure messages.
pub fn describe(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_events_and_ignores_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"crate":"base","crate_types":["lib"],"where":"remote","node":"n1","reason":null,"exit_code":0,"ms":123,"new_field":1}"#,
                "\n",
                r#"{"crate":null,"crate_types":null,"where":"local","node":null,"reason":null,"exit_code":0,"ms":3}"#,
                "\n",
                r#"{"crate":"build_script_build","crate_types":["bin"],"where":"fallback","reason":"no scheduler"}"#,
                "\n",
            ),
        )
        .unwrap();
        let events = read_events(&path);
        assert_eq!(events.len(), 3);
        assert!(events[0].is_crate("base") && events[0].is_rust_library());
        assert_eq!(events[0].place, Where::Remote);
        assert_eq!(events[0].node.as_deref(), Some("n1"));
        assert_eq!(events[1].crate_name, None);
        assert!(events[1].crate_types.is_empty() && !events[1].is_rust_library());
        assert!(events[2].is_build_script());
        assert_eq!(events[2].place, Where::Fallback);
        assert_eq!(events[2].exit_code, None);
        assert!(events.iter().all(|e| e.failed_nodes.is_empty()));
    }

    #[test]
    fn reads_the_nodes_that_failed_a_retried_compile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"crate":"syn","crate_types":["lib"],"where":"remote","node":"n2","failed_nodes":["n1"],"exit_code":0}"#,
                "\n",
                r#"{"crate":"serde","crate_types":["lib"],"where":"fallback","failed_nodes":["n1","n2"],"reason":"node n2: gone"}"#,
                "\n",
                r#"{"crate":"libc","crate_types":["lib"],"where":"remote","node":"n1","failed_nodes":null}"#,
                "\n",
            ),
        )
        .unwrap();
        let events = read_events(&path);
        assert_eq!(events[0].failed_nodes, ["n1"]);
        assert_eq!(events[1].failed_nodes, ["n1", "n2"]);
        assert!(events[2].failed_nodes.is_empty());
        assert_eq!(
            events[0].to_string(),
            "syn [lib] Remote on n2 after failing on n1 exit 0"
        );
    }

    #[test]
    fn a_missing_log_has_no_events() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_events(&dir.path().join("nothing.jsonl")).is_empty());
    }
}
