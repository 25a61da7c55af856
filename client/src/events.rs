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
    /// Files in the farm job's manifest. These four are set once a farm job
    /// has a manifest (remote compiles, and fallbacks that got that far),
    /// and absent from lines older than them.
    #[serde(default)]
    pub inputs: Option<usize>,
    /// Input blobs sent to the node (the ones its store lacked), counting
    /// only blobs sent in full before any failure.
    #[serde(default)]
    pub blobs_sent: Option<usize>,
    /// Bytes of those blobs on the wire: zstd-compressed chunk payloads,
    /// without frame headers.
    #[serde(default)]
    pub bytes_sent: Option<u64>,
    /// Bytes of the outputs received (`.rmeta`, `.rlib`, `.d`) on the wire:
    /// zstd-compressed chunk payloads, without frame headers. Diagnostics
    /// and stdout are not counted.
    #[serde(default)]
    pub bytes_received: Option<u64>,
    /// The nodes whose attempt at this job failed, in order: a remote job
    /// with failed nodes was retried on another node, a fallback with failed
    /// nodes ran out of nodes or retries. Left out of the line when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_nodes: Vec<String>,
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
            inputs: Some(40),
            blobs_sent: Some(3),
            bytes_sent: Some(123_456),
            bytes_received: Some(7_890),
            failed_nodes: vec!["n0".into()],
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
        for field in [
            r#""inputs":40"#,
            r#""blobs_sent":3"#,
            r#""bytes_sent":123456"#,
            r#""bytes_received":7890"#,
            r#""failed_nodes":["n0"]"#,
        ] {
            assert!(text.contains(field), "{field} in {text}");
        }
    }

    #[test]
    fn lines_from_before_the_traffic_fields_still_parse() {
        let old = r#"{"crate":"base","crate_types":["lib"],"where":"remote","node":"n1","reason":null,"exit_code":0,"ms":123}"#;
        let ev: Event = serde_json::from_str(old).unwrap();
        assert_eq!(ev.ms, 123);
        assert_eq!(
            (ev.inputs, ev.blobs_sent, ev.bytes_sent, ev.bytes_received),
            (None, None, None, None)
        );
        assert!(ev.failed_nodes.is_empty());
    }

    #[test]
    fn failed_nodes_are_left_out_when_there_are_none() {
        let ev = Event {
            crate_name: Some("base".into()),
            crate_types: vec!["lib".into()],
            placement: Placement::Remote,
            node: Some("n1".into()),
            reason: None,
            exit_code: Some(0),
            ms: 1,
            inputs: None,
            blobs_sent: None,
            bytes_sent: None,
            bytes_received: None,
            failed_nodes: vec![],
        };
        let line = serde_json::to_string(&ev).unwrap();
        assert!(!line.contains("failed_nodes"), "{line}");
        let retried = Event {
            failed_nodes: vec!["n2".into(), "n3".into()],
            ..ev
        };
        let line = serde_json::to_string(&retried).unwrap();
        assert!(line.contains(r#""failed_nodes":["n2","n3"]"#), "{line}");
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), retried);
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
        let mut detail = match e.placement {
            Placement::Remote => format!("on {}", e.node.as_deref().unwrap_or("?")),
            _ => e.reason.clone().unwrap_or_default(),
        };
        if !e.failed_nodes.is_empty() {
            let _ = write!(detail, " (failed on {})", e.failed_nodes.join(", "));
        }
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
    // Grouped, so that a person sees at once why compiles stayed here: the
    // per-crate table above says it once per crate.
    for (placement, heading) in [
        (Placement::Local, "local by choice"),
        (Placement::Fallback, "fell back to local"),
    ] {
        let grouped = reasons(&compiles, placement);
        if !grouped.is_empty() {
            let _ = writeln!(out, "{heading}, by reason:");
            for (reason, n) in grouped {
                let _ = writeln!(out, "  {n:>5}  {reason}");
            }
        }
    }
    let hit = |p: Placement| {
        compiles
            .iter()
            .filter(|e| e.placement == p && !e.failed_nodes.is_empty())
            .count()
    };
    let (retried, gave_up) = (hit(Placement::Remote), hit(Placement::Fallback));
    if retried + gave_up > 0 {
        let attempts: usize = compiles.iter().map(|e| e.failed_nodes.len()).sum();
        let _ = writeln!(
            out,
            "node failures: {attempts} failed attempts; {retried} compiles finished on another node, {gave_up} fell back to local"
        );
    }
    let inputs: usize = events.iter().filter_map(|e| e.inputs).sum();
    let blobs: usize = events.iter().filter_map(|e| e.blobs_sent).sum();
    let sent: u64 = events.iter().filter_map(|e| e.bytes_sent).sum();
    let received: u64 = events.iter().filter_map(|e| e.bytes_received).sum();
    let _ = writeln!(
        out,
        "farm traffic: {blobs} of {inputs} inputs sent as blobs ({}), {} of outputs received (compressed)",
        human_bytes(sent),
        human_bytes(received)
    );
    out
}

/// The reasons of the compiles with `placement`, each with how many
/// compiles gave it, the most frequent first.
fn reasons(compiles: &[&Event], placement: Placement) -> Vec<(String, usize)> {
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for e in compiles.iter().filter(|e| e.placement == placement) {
        *counts
            .entry(e.reason.as_deref().unwrap_or("no reason recorded"))
            .or_default() += 1;
    }
    let mut grouped: Vec<(String, usize)> =
        counts.into_iter().map(|(r, n)| (r.to_owned(), n)).collect();
    grouped.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    grouped
}

/// A byte count for people: `512 B`, `3.4 KiB`, `12.3 MiB`, `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 3] = ["KiB", "MiB", "GiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
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
            inputs: None,
            blobs_sent: None,
            bytes_sent: None,
            bytes_received: None,
            failed_nodes: vec![],
        }
    }

    #[test]
    fn summary_counts_each_placement_and_skips_probes() {
        let traffic = |e: Event, blobs, sent, received| Event {
            inputs: Some(10),
            blobs_sent: Some(blobs),
            bytes_sent: Some(sent),
            bytes_received: Some(received),
            ..e
        };
        let events = vec![
            ev("___", Placement::Local, None, Some("probe")),
            traffic(
                ev("serde", Placement::Remote, Some("node-1"), None),
                4,
                3 << 20,
                1 << 20,
            ),
            ev("app", Placement::Local, None, Some("crate type bin")),
            traffic(
                ev("libc", Placement::Fallback, None, Some("node lost")),
                1,
                1 << 19,
                0,
            ),
        ];
        let s = summarize(&events);
        assert!(
            s.contains("3 compiles: 1 remote, 1 local by choice, 1 fell back to local"),
            "{s}"
        );
        assert!(!s.contains("node failures"), "{s}");
        assert!(
            s.contains(
                "farm traffic: 5 of 20 inputs sent as blobs (3.5 MiB), 1.0 MiB of outputs received"
            ),
            "{s}"
        );
        assert!(s.contains("serde") && s.contains("on node-1") && s.contains("node lost"));
        assert!(!s.contains("___"));
    }

    #[test]
    fn summary_counts_retries_on_other_nodes() {
        let failed = |e: Event, nodes: &[&str]| Event {
            failed_nodes: nodes.iter().map(|n| n.to_string()).collect(),
            ..e
        };
        let events = vec![
            failed(ev("serde", Placement::Remote, Some("n2"), None), &["n1"]),
            ev("memchr", Placement::Remote, Some("n1"), None),
            failed(
                ev("regex", Placement::Fallback, None, Some("node n3: lost")),
                &["n1", "n2", "n3"],
            ),
        ];
        let s = summarize(&events);
        assert!(
            s.contains(
                "node failures: 4 failed attempts; 1 compiles finished on another node, 1 fell back to local"
            ),
            "{s}"
        );
        assert!(s.contains("on n2 (failed on n1)"), "{s}");
        assert!(s.contains("node n3: lost (failed on n1, n2, n3)"), "{s}");
    }

    #[test]
    fn summary_groups_the_reasons_for_compiling_locally() {
        let events = vec![
            ev(
                "app",
                Placement::Local,
                None,
                Some("crate type `bin` is built locally"),
            ),
            ev(
                "cli",
                Placement::Local,
                None,
                Some("crate type `bin` is built locally"),
            ),
            ev(
                "derive",
                Placement::Local,
                None,
                Some("crate type `proc-macro` is built locally"),
            ),
            ev("serde", Placement::Remote, Some("n1"), None),
            ev(
                "regex",
                Placement::Fallback,
                None,
                Some("node n3: connection lost"),
            ),
            ev("syn", Placement::Fallback, None, None),
        ];
        let s = summarize(&events);
        assert!(
            s.contains(
                "local by choice, by reason:\n      2  crate type `bin` is built locally\n      1  crate type `proc-macro` is built locally\n"
            ),
            "{s}"
        );
        assert!(
            s.contains(
                "fell back to local, by reason:\n      1  no reason recorded\n      1  node n3: connection lost\n"
            ),
            "{s}"
        );
        let remote_only = summarize(&[ev("serde", Placement::Remote, Some("n1"), None)]);
        assert!(!remote_only.contains("by reason"), "{remote_only}");
    }

    #[test]
    fn byte_counts_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_bytes(2048 << 30), "2048.0 GiB");
    }
}
