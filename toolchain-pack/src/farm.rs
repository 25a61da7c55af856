//! `push`, `list` and `rm`: the bundles in a farm scheduler's store.
//!
//! This module belongs to the `distcc-rs-pack` binary, not to the library:
//! the client, node and scheduler link the library and need neither QUIC
//! from here nor a progress bar. The scheduler is found as the client finds
//! it: `--scheduler`, else `DISTCC_RS_SCHEDULER`, else mDNS for the farm
//! named by `--netname` / `DISTCC_RS_NETNAME`, unless `DISTCC_RS_MDNS` is
//! `0` or `false`.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use distcc_rs_net::credentials::Credentials;
use distcc_rs_net::endpoint::explain;
use distcc_rs_net::{EndpointOptions, NetError, open_stream, payload};
use distcc_rs_proto::message::{
    RemoveResponse, SchedulerRequest, StoredToolchain, ToolchainList, UploadResponse,
};
use distcc_rs_proto::{PROTOCOL_VERSION, PeerRole, ToolchainId};
use indicatif::{ProgressBar, ProgressStyle};
use serde::de::DeserializeOwned;

use crate::mib;

/// How long to look for the scheduler over mDNS. A scheduler that is
/// advertising answers within about a second.
const BROWSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the scheduler is to be found, before it is looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchedulerSource {
    /// `host:port`, from the flag or the environment (named in `from`).
    Given { addr: String, from: &'static str },
    /// Browse mDNS for the scheduler of this farm.
    Browse { farm: String },
    /// Nothing given and mDNS is off.
    Nowhere,
}

/// Chooses how to find the scheduler, as the client does: the flag, else
/// `DISTCC_RS_SCHEDULER` (empty counts as unset), else mDNS unless
/// `DISTCC_RS_MDNS` turns it off.
pub fn scheduler_source(
    flag: Option<&str>,
    farm: &str,
    env: impl Fn(&str) -> Option<String>,
) -> SchedulerSource {
    if let Some(addr) = flag {
        return SchedulerSource::Given {
            addr: addr.to_owned(),
            from: "--scheduler",
        };
    }
    if let Some(addr) = env("DISTCC_RS_SCHEDULER").filter(|s| !s.is_empty()) {
        return SchedulerSource::Given {
            addr,
            from: "DISTCC_RS_SCHEDULER",
        };
    }
    if env("DISTCC_RS_MDNS").is_some_and(|v| v == "0" || v == "false") {
        return SchedulerSource::Nowhere;
    }
    SchedulerSource::Browse {
        farm: farm.to_owned(),
    }
}

/// The scheduler's address from `source`: a name is resolved, a farm is
/// browsed for.
pub async fn locate(source: &SchedulerSource) -> Result<SocketAddr> {
    match source {
        SchedulerSource::Given { addr, from } => addr
            .to_socket_addrs()
            .with_context(|| format!("{from}: cannot resolve {addr:?} (expected HOST:PORT)"))?
            .next()
            .ok_or_else(|| anyhow!("{from}: {addr:?} resolves to no address")),
        SchedulerSource::Browse { farm } => {
            distcc_rs_net::discovery::find_scheduler(farm, BROWSE_TIMEOUT)
                .await
                .context("cannot look for the scheduler over mDNS")?
                .ok_or_else(|| {
                    anyhow!(
                        "no scheduler of farm {farm:?} answered over mDNS within {} s; pass \
                         --scheduler HOST:PORT, set DISTCC_RS_SCHEDULER, or name another farm \
                         with --netname",
                        BROWSE_TIMEOUT.as_secs()
                    )
                })
        }
        SchedulerSource::Nowhere => bail!(
            "no scheduler given and mDNS is off (DISTCC_RS_MDNS): pass --scheduler HOST:PORT or \
             set DISTCC_RS_SCHEDULER"
        ),
    }
}

/// A connection to the scheduler.
pub struct Farm {
    pub addr: SocketAddr,
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

impl Farm {
    /// Connects to the scheduler at `addr` as the client `credentials`
    /// make us.
    pub async fn connect(addr: SocketAddr, credentials: &Credentials) -> Result<Farm> {
        let opts = EndpointOptions::default();
        let endpoint = distcc_rs_net::bind_client(
            addr,
            Some(&credentials.identity),
            &credentials.auth(),
            &opts,
        )
        .context("cannot open a QUIC endpoint")?;
        let conn = distcc_rs_net::connect(&endpoint, addr, PeerRole::Scheduler, &opts)
            .await
            .with_context(|| format!("cannot reach the scheduler at {addr}"))?;
        Ok(Farm {
            addr,
            endpoint,
            conn,
        })
    }

    /// One request, one answer, on a stream of its own.
    async fn ask<T: DeserializeOwned>(&self, request: &SchedulerRequest) -> Result<T> {
        let failed = || format!("the scheduler at {} did not answer", self.addr);
        let answer = async {
            let (mut w, mut r) = open_stream(&self.conn).await?;
            w.send(request).await?;
            w.finish()?;
            r.recv().await
        }
        .await;
        answer
            .map_err(|e| self.refusal().unwrap_or(e))
            .with_context(failed)
    }

    /// Why the scheduler closed the connection, when it did so over our
    /// certificate or our role: TLS 1.3 lets the client finish its
    /// handshake first, so a refused certificate shows at the first
    /// request, as a lost connection whose close reason names the cause.
    fn refusal(&self) -> Option<NetError> {
        let explained = explain(self.conn.close_reason()?, self.addr, PROTOCOL_VERSION);
        matches!(
            explained,
            NetError::RefusedUs { .. } | NetError::NotTrusted { .. } | NetError::Refused { .. }
        )
        .then_some(explained)
    }

    pub async fn list(&self) -> Result<ToolchainList> {
        self.ask(&SchedulerRequest::ListToolchains).await
    }

    pub async fn remove(&self, id: ToolchainId, force: bool) -> Result<RemoveResponse> {
        self.ask(&SchedulerRequest::RemoveToolchain { id, force })
            .await
    }

    /// Closes the connection and waits (briefly) for the scheduler to see
    /// it closed, so it does not wait for an idle timeout.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    /// Uploads a bundle unless the scheduler holds it already.
    pub async fn push(&self, bundle: &LocalBundle) -> Result<Pushed> {
        if self
            .list()
            .await?
            .toolchains
            .iter()
            .any(|t| t.id == bundle.id)
        {
            return Ok(Pushed::AlreadyStored);
        }
        let file = std::fs::File::open(&bundle.path)
            .with_context(|| format!("opening {}", bundle.path.display()))?;
        let progress = progress_bar(bundle.size);
        let started = Instant::now();
        let failed = || format!("uploading to the scheduler at {} failed", self.addr);
        let (mut w, mut r) = open_stream(&self.conn).await.with_context(failed)?;
        w.send(&SchedulerRequest::UploadToolchain {
            id: bundle.id,
            compressed_size: bundle.size,
        })
        .await
        .with_context(failed)?;
        // The scheduler may refuse early (the bundle is too large) and stop
        // reading; its answer says why, so a failed send is only reported
        // when no answer comes.
        let sent = payload::send_raw(&mut w, progress.wrap_read(file))
            .await
            .and_then(|_| w.finish());
        progress.set_message("verifying on the scheduler");
        let answer: Result<UploadResponse, _> = r.recv().await;
        progress.finish_and_clear();
        let elapsed = started.elapsed();
        match (answer, sent) {
            (Ok(UploadResponse::Stored), _) => Ok(Pushed::Uploaded { elapsed }),
            (Ok(UploadResponse::Rejected(e)), _) => {
                Err(anyhow!(e)
                    .context(format!("the scheduler at {} refused the bundle", self.addr)))
            }
            (Err(e), Err(send)) => Err(anyhow!(send).context(format!("{} ({e})", failed()))),
            (Err(e), Ok(())) => Err(anyhow!(e).context(failed())),
        }
    }
}

/// A progress bar on stderr with bytes, rate and time left; hidden when
/// stderr is not a terminal (a log file would fill with redraws).
fn progress_bar(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}, {eta} left",
        )
        .expect("the progress template is valid")
        .progress_chars("=> "),
    );
    bar.set_message("uploading");
    bar
}

/// A bundle file on this machine.
#[derive(Debug, Clone)]
pub struct LocalBundle {
    pub id: ToolchainId,
    pub path: PathBuf,
    pub size: u64,
}

/// What `push` did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pushed {
    AlreadyStored,
    Uploaded { elapsed: Duration },
}

/// Why an id prefix names no single bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("{0:?} is not a bundle id or a prefix of one (hex digits)")]
    NotHex(String),
    #[error("the scheduler stores no bundle whose id starts with {0}")]
    NoMatch(String),
    #[error("{prefix} is the start of several bundle ids: {}; give more digits", .matches.join(", "))]
    Ambiguous {
        prefix: String,
        matches: Vec<String>,
    },
}

/// The one id among `ids` that starts with `prefix` (hex, any case).
pub fn match_prefix(ids: &[ToolchainId], prefix: &str) -> Result<ToolchainId, PrefixError> {
    let wanted = prefix.trim().to_ascii_lowercase();
    if wanted.is_empty() || wanted.len() > 64 || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PrefixError::NotHex(prefix.to_owned()));
    }
    let matches: Vec<ToolchainId> = ids
        .iter()
        .copied()
        .filter(|id| id.to_string().starts_with(&wanted))
        .collect();
    match matches[..] {
        [id] => Ok(id),
        [] => Err(PrefixError::NoMatch(wanted)),
        _ => Err(PrefixError::Ambiguous {
            prefix: wanted,
            matches: matches.iter().map(|id| id.0.short()).collect(),
        }),
    }
}

/// A duration for people: `42s`, `5m`, `3h`, `2d`.
pub fn age(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// The `list` table.
pub fn render_list(addr: SocketAddr, list: &ToolchainList) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "scheduler {addr}: {} bundle(s), {} of {} used",
        list.toolchains.len(),
        mib(list.used),
        mib(list.limit)
    );
    if list.toolchains.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "{:<12}  {:<22}  {:<28}  {:>10}  {:>7}  {:>9}  {:>5}  {:>4}",
        "ID", "RELEASE", "TARGETS", "SIZE", "STORED", "LAST USED", "NODES", "JOBS"
    );
    for t in &list.toolchains {
        let (release, targets) = describe_summary(t);
        let _ = writeln!(
            out,
            "{:<12}  {:<22}  {:<28}  {:>10}  {:>7}  {:>9}  {:>5}  {:>4}",
            t.id.0.short(),
            release,
            targets,
            mib(t.compressed_size),
            format!("{} ago", age(t.stored_ago_ms)),
            t.last_used_ago_ms
                .map_or_else(|| "never".to_owned(), |ms| format!("{} ago", age(ms))),
            t.holders.len(),
            t.jobs_in_flight
        );
    }
    out
}

fn describe_summary(t: &StoredToolchain) -> (String, String) {
    match &t.summary {
        Some(s) => (
            s.release.clone().unwrap_or_else(|| s.version_line.clone()),
            s.targets.join(","),
        ),
        None => ("?".to_owned(), "?".to_owned()),
    }
}

/// The `list --json` document: ids in full hex, ages in milliseconds.
pub fn list_json(addr: SocketAddr, list: &ToolchainList) -> serde_json::Value {
    let toolchains: Vec<serde_json::Value> = list
        .toolchains
        .iter()
        .map(|t| {
            serde_json::json!({
                "id": t.id.to_string(),
                "compressed_size": t.compressed_size,
                "version": t.summary.as_ref().map(|s| &s.version_line),
                "release": t.summary.as_ref().and_then(|s| s.release.as_ref()),
                "host": t.summary.as_ref().map(|s| &s.host),
                "targets": t.summary.as_ref().map(|s| &s.targets),
                "stored_ago_ms": t.stored_ago_ms,
                "last_used_ago_ms": t.last_used_ago_ms,
                "holders": t.holders.iter().map(|h| serde_json::json!({
                    "node": h.node.to_string(),
                    "name": h.name,
                })).collect::<Vec<_>>(),
                "jobs_in_flight": t.jobs_in_flight,
                "downloads": t.downloads,
            })
        })
        .collect();
    serde_json::json!({
        "scheduler": addr.to_string(),
        "used": list.used,
        "limit": list.limit,
        "toolchains": toolchains,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use distcc_rs_proto::Digest;

    fn id(first: u8, second: u8) -> ToolchainId {
        let mut bytes = [0x11; 32];
        bytes[0] = first;
        bytes[1] = second;
        ToolchainId(Digest(bytes))
    }

    #[test]
    fn an_id_prefix_must_name_exactly_one_bundle() {
        let ids = [id(0xab, 0x01), id(0xab, 0x02), id(0xcd, 0x01)];
        assert_eq!(match_prefix(&ids, "cd"), Ok(ids[2]));
        assert_eq!(match_prefix(&ids, "AB02"), Ok(ids[1]));
        assert_eq!(match_prefix(&ids, &ids[0].to_string()), Ok(ids[0]));
        assert!(matches!(
            match_prefix(&ids, "ab"),
            Err(PrefixError::Ambiguous { matches, .. }) if matches.len() == 2
        ));
        assert_eq!(
            match_prefix(&ids, "ef"),
            Err(PrefixError::NoMatch("ef".into()))
        );
        for bad in ["", "xyz", "ab-01", &"a".repeat(65)] {
            assert_eq!(
                match_prefix(&ids, bad),
                Err(PrefixError::NotHex(bad.to_owned())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_scheduler_is_found_as_the_client_finds_it() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let given = |addr: &str, from| SchedulerSource::Given {
            addr: addr.to_owned(),
            from,
        };
        assert_eq!(
            scheduler_source(Some("h:1"), "f", env(&[("DISTCC_RS_SCHEDULER", "e:2")])),
            given("h:1", "--scheduler")
        );
        assert_eq!(
            scheduler_source(None, "f", env(&[("DISTCC_RS_SCHEDULER", "e:2")])),
            given("e:2", "DISTCC_RS_SCHEDULER")
        );
        assert_eq!(
            scheduler_source(None, "lab", env(&[("DISTCC_RS_SCHEDULER", "")])),
            SchedulerSource::Browse { farm: "lab".into() }
        );
        assert_eq!(
            scheduler_source(None, "lab", env(&[("DISTCC_RS_MDNS", "0")])),
            SchedulerSource::Nowhere
        );
        assert_eq!(
            scheduler_source(None, "lab", env(&[("DISTCC_RS_MDNS", "1")])),
            SchedulerSource::Browse { farm: "lab".into() }
        );
    }

    #[test]
    fn ages_read_in_the_largest_whole_unit() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(59_999), "59s");
        assert_eq!(age(60_000), "1m");
        assert_eq!(age(3_599_000), "59m");
        assert_eq!(age(3_600_000), "1h");
        assert_eq!(age(86_400_000 * 3), "3d");
    }
}
