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

/// Reads an event log. Lines that are not events (a torn write, another
/// version's format) are skipped.
pub fn read(path: &Path) -> std::io::Result<Vec<Event>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// A per-crate table of where each compile ran, and the totals.
pub fn summarize(events: &[Event]) -> String {
    use std::fmt::Write;
    // Probes carry the placeholder crate name `___` or none at all.
    let mut compiles: Vec<&Event> = events
        .iter()
        .filter(|e| e.crate_name.as_deref().is_some_and(|n| n != "___"))
        .collect();
    compiles.sort_by_key(|e| (e.placement as u8, e.crate_name.clone()));
    let mut out = String::new();
    let _ = writeln!(out, "{:<28} {:<9} {:>8}  detail", "CRATE", "WHERE", "TIME");
    for e in &compiles {
        let placement = match e.placement {
            Placement::Remote => "remote",
            Placement::Local => "local",
            Placement::Fallback => "fallback",
        };
        let detail = match e.placement {
            Placement::Remote => format!("on {}", e.node.as_deref().unwrap_or("?")),
            _ => e.reason.clone().unwrap_or_default(),
        };
        let _ = writeln!(
            out,
            "{:<28} {:<9} {:>7.2}s  {detail}",
            e.crate_name.as_deref().unwrap_or("?"),
            placement,
            e.ms as f64 / 1000.0
        );
    }
    let count = |p: Placement| compiles.iter().filter(|e| e.placement == p).count();
    let _ = writeln!(
        out,
        "{} compiles: {} remote, {} local by choice, {} fell back to local",
        compiles.len(),
        count(Placement::Remote),
        count(Placement::Local),
        count(Placement::Fallback)
    );
    out
}

#[cfg(test)]
mod summary_tests {
    use super::*;

    fn ev(name: &str, placement: Placement, node: Option<&str>, reason: Option<&str>) -> Event {
        Event {
            crate_name: Some(name.into()),
            crate_types: vec![],
            placement,
            node: node.map(Into::into),
            reason: reason.map(Into::into),
            exit_code: Some(0),
            ms: 1500,
        }
    }

    #[test]
    fn summary_counts_each_placement_and_skips_probes() {
        let events = vec![
            ev("___", Placement::Local, None, Some("probe")),
            ev("serde", Placement::Remote, Some("node-1"), None),
            ev("app", Placement::Local, None, Some("crate type bin")),
            ev("libc", Placement::Fallback, None, Some("node lost")),
        ];
        let s = summarize(&events);
        assert!(
            s.contains("3 compiles: 1 remote, 1 local by choice, 1 fell back to local"),
            "{s}"
        );
        assert!(s.contains("serde") && s.contains("on node-1") && s.contains("node lost"));
        assert!(!s.contains("___"));
    }
}
