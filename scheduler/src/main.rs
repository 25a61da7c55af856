//! The `distcc-rs-scheduler` daemon. This file is glue: it parses flags, sets
//! up logging, binds the QUIC endpoint, announces the bound address and hands
//! over to `distcc_rs_scheduler::run` until SIGINT or SIGTERM.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use distcc_rs_net::{EndpointOptions, Identity, PeerAuth, bind_server};
use distcc_rs_proto::discovery::{DEFAULT_FARM, FarmNameError, validate_farm_name};
use distcc_rs_scheduler::{DEFAULT_MAX_BUNDLE_SIZE, DiscoveryConfig, SchedulerConfig};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

/// Where state goes when neither `--state-dir` nor `$STATE_DIRECTORY` says.
const DEFAULT_STATE_DIR: &str = "/var/lib/distcc-rs/scheduler";

/// The distcc-rs scheduler: tracks the nodes of a compile farm, decides where
/// each compile runs, and stores the toolchain bundles nodes need.
///
/// It finds the nodes of its farm over mDNS (or takes them from --node) and
/// adopts them, or nodes dial it themselves with their --scheduler; either
/// way each node keeps a control connection open. Clients (the `distcc-rs`
/// rustc wrapper) find it over mDNS too, ask it where to send each compile
/// and upload their toolchain once. Logs go to stderr; the only line on
/// stdout is `distcc-rs-scheduler listening on ADDR`, printed once the
/// endpoint is bound.
#[derive(Debug, Parser)]
#[command(name = "distcc-rs-scheduler", version)]
struct Args {
    /// The UDP address to accept QUIC connections on, from nodes and clients
    /// alike. Port 0 picks a free port (see the "listening on" line).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7700")]
    listen: SocketAddr,

    /// The farm this scheduler runs. Only nodes and clients of the same farm
    /// find it over mDNS or are accepted, so several farms can share a
    /// network. Letters, digits, '-', '_' and '.'.
    #[arg(
        long,
        value_name = "NAME",
        env = "DISTCC_RS_NETNAME",
        default_value = DEFAULT_FARM,
        value_parser = parse_farm_name
    )]
    netname: String,

    /// A node to adopt by address, for networks where mDNS does not reach
    /// (repeat for each node). The scheduler dials it, and dials it again
    /// whenever its session ends. Nodes may instead dial the scheduler with
    /// their own --scheduler.
    #[arg(long = "node", value_name = "HOST:PORT")]
    nodes: Vec<String>,

    /// Neither advertise the scheduler nor look for nodes over mDNS
    /// (multicast DNS, on the listen address's interface, or on every
    /// interface when listening on 0.0.0.0 or [::]). Nodes then
    /// join only through --node or their own --scheduler, and clients need
    /// DISTCC_RS_SCHEDULER.
    #[arg(long)]
    no_mdns: bool,

    /// Where the scheduler keeps toolchain bundles (in its `toolchains`
    /// subdirectory). Created if missing. Defaults to $STATE_DIRECTORY (as set
    /// by systemd's StateDirectory=), else /var/lib/distcc-rs/scheduler.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// How log lines on stderr look: `text` for people, `json` for log
    /// collectors. The RUST_LOG variable selects what is logged (default
    /// `info`).
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// The largest compressed toolchain bundle a client may upload, in bytes.
    /// A real bundle is about 150 MB.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_BUNDLE_SIZE)]
    max_bundle_size: u64,

    /// The most disk space all stored toolchain bundles may take together,
    /// in bytes or with a suffix: K, M, G, T, or KiB, MiB, GiB, TiB, all
    /// powers of 1024 (e.g. 500M, 20GiB). An upload that does not fit
    /// evicts the least recently used bundles (by the last job placed with
    /// them, remembered across restarts), never one that jobs in flight or
    /// node downloads still need; if it still does not fit, it is refused.
    /// A store over a lowered limit is trimmed at start-up. Evicted
    /// toolchains are uploaded again by the next client that needs them.
    #[arg(long, value_name = "SIZE", default_value = "20GiB", value_parser = parse_size)]
    max_store_size: u64,

    /// How long an allocation request may wait for a free slot when every
    /// node is busy, in seconds (fractions allowed), before its client is
    /// told to compile locally. 0 answers at once.
    #[arg(long, value_name = "SECONDS", default_value = "2", value_parser = parse_seconds)]
    queue_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("distcc-rs-scheduler: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Stdout carries the one "listening on" line that scripts and tests wait
    // for, so logs must never go there.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let state_dir = state_dir(args.state_dir);
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;

    let options = EndpointOptions::default();
    let identity =
        Identity::self_signed("distcc-rs-scheduler").context("cannot create a TLS identity")?;
    let endpoint = bind_server(args.listen, &identity, &PeerAuth::Unauthenticated, &options)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let bound = endpoint
        .local_addr()
        .context("cannot read the bound address")?;
    let shutdown = shutdown_signal()?;

    let mut config = SchedulerConfig::new(state_dir);
    config.max_bundle_size = args.max_bundle_size;
    config.max_store_size = args.max_store_size;
    config.farm.queue_timeout = args.queue_timeout;
    config.protocol_version = options.protocol_version;
    config.farm.farm_name = args.netname;
    config.discovery = DiscoveryConfig {
        mdns: !args.no_mdns,
        static_nodes: args.nodes,
        name: host_name(),
    };

    // Connections that arrive before `run` starts accepting wait in the
    // endpoint's queue, so announcing the address first loses nothing.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "distcc-rs-scheduler listening on {bound}")
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")?;
    drop(stdout);

    distcc_rs_scheduler::run(endpoint, config, shutdown)
        .await
        .context("the scheduler failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// Reads a size in bytes with an optional binary suffix (`K`, `M`, `G`,
/// `T`, or `KiB` to `TiB`, in any case; a space before it is allowed), as
/// the node's --store-size does. Every suffix is a power of 1024.
fn parse_size(text: &str) -> Result<u64, String> {
    let malformed = || {
        format!(
            "{text:?} is not a size: expected bytes, optionally with K, M, G or T (e.g. 500M, 20GiB)"
        )
    };
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(digits_end);
    let number: u64 = digits.parse().map_err(|_| malformed())?;
    let shift = match suffix.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return Err(malformed()),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is more bytes than fit in 64 bits"))
}

/// Parses a non-negative number of seconds, such as `2` or `0.5`.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|e| format!("{text:?} is not a number of seconds: {e}"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{text:?} is not a duration: {e}"))
}

fn parse_farm_name(name: &str) -> Result<String, FarmNameError> {
    validate_farm_name(name).map(|()| name.to_owned())
}

/// This machine's name, for adverts and nodes' logs.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "scheduler".to_owned())
}

/// The flag, else the first directory in `$STATE_DIRECTORY` (systemd joins
/// several with `:`), else the default.
fn state_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| {
        let env = std::env::var_os("STATE_DIRECTORY")?;
        let first = env.to_str()?.split(':').next()?.to_owned();
        (!first.is_empty()).then(|| PathBuf::from(first))
    })
    .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

/// Completes on SIGINT or SIGTERM. The handlers are installed before this
/// returns, so a signal that arrives during start-up is not lost.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    let mut interrupt =
        signal(SignalKind::interrupt()).context("cannot install a SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
    Ok(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!("{name} received, shutting down");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes() {
        for (text, bytes) in [
            ("0", 0),
            ("4096", 4096),
            ("4096B", 4096),
            ("3k", 3 << 10),
            ("512MiB", 512 << 20),
            ("20G", 20 << 30),
            ("20 GiB", 20 << 30),
            ("2T", 2 << 40),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text:?}");
        }
        for text in ["", "G", "10X", "1.5G", "-1", "10GB", "99999999999T"] {
            assert!(parse_size(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn the_store_limit_defaults_to_twenty_gibibytes() {
        let args = Args::try_parse_from(["distcc-rs-scheduler"]).unwrap();
        assert_eq!(args.max_store_size, 20 << 30);
        assert_eq!(
            args.max_store_size,
            distcc_rs_scheduler::store::DEFAULT_MAX_STORE_SIZE
        );
        let args =
            Args::try_parse_from(["distcc-rs-scheduler", "--max-store-size", "500M"]).unwrap();
        assert_eq!(args.max_store_size, 500 << 20);
    }
}
