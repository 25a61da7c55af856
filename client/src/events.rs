//! The per-invocation event log: one JSON line for each rustc the wrapper
//! handled, saying where it ran and why. `distcc-rs` appends to the file
//! named by `DISTCC_RS_EVENTS`; the demo and the tests read it to show and
//! check what ran where.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Where a compile ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// On a farm node.
    Remote,
    /// Locally, because the job is not distributable (probes, binaries,
    /// proc-macros, build scripts, incremental compiles).
    Local,
    /// Locally, because the farm could not run it.
    Fallback,
}

/// One wrapper invocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "crate")]
    pub crate_name: Option<String>,
    pub crate_types: Vec<String>,
    #[serde(rename = "where")]
    pub placement: Placement,
    pub node: Option<String>,
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
    pub ms: u64,
}

/// Appends an event. A single `write` of a line to a file opened for
/// appending keeps concurrent wrappers' lines whole. Failures are ignored:
/// the log must never break a build.
pub fn append(path: &Path, event: &Event) {
    let Ok(mut line) = serde_json::to_vec(event) else {
        return;
    };
    line.push(b'\n');
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        let ev = Event {
            crate_name: Some("serde".into()),
            crate_types: vec!["lib".into()],
            placement: Placement::Remote,
            node: Some("n1".into()),
            reason: None,
            exit_code: Some(0),
            ms: 12,
        };
        append(&path, &ev);
        append(
            &path,
            &Event {
                placement: Placement::Fallback,
                ..ev.clone()
            },
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Event> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], ev);
        assert!(text.contains(r#""where":"remote""#) && text.contains(r#""crate":"serde""#));
    }
}
