//! `distcc-rs-node`: the daemon that runs compile jobs for the farm.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use distcc_rs_node::{Node, NodeConfig};
use distcc_rs_proto::discovery::{DEFAULT_FARM, FarmNameError, validate_farm_name};

/// Runs rustc jobs for a distcc-rs farm.
///
/// The node advertises itself over mDNS and waits for a scheduler of its
/// farm to find and adopt it (or dials the one given with --scheduler),
/// receives jobs straight from clients, runs each one in a bubblewrap
/// sandbox with a toolchain it fetches from the scheduler (no Rust install
/// needed on this machine, and several toolchains side by side in a cache
/// of bounded size), and streams the results back. Once registered
/// it prints `distcc-rs-node NAME listening on ADDR, registered with ADDR`
/// on stdout.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// A scheduler to dial and stay registered with, as IP:PORT, for
    /// networks where mDNS does not reach. Without it the node waits for a
    /// scheduler of its farm to find it over mDNS, or to be given this
    /// node's address with `--node`.
    #[arg(long, env = "DISTCC_RS_SCHEDULER")]
    scheduler: Option<SocketAddr>,
    /// The farm this node belongs to. It joins only schedulers of the same
    /// farm, so several farms can share a network. Letters, digits, '-',
    /// '_' and '.'.
    #[arg(
        long,
        value_name = "NAME",
        env = "DISTCC_RS_NETNAME",
        default_value = DEFAULT_FARM,
        value_parser = parse_farm_name
    )]
    netname: String,
    /// Do not advertise the node over mDNS (multicast DNS, on the listen
    /// address's interface, or on every interface when listening on 0.0.0.0
    /// or [::]). Schedulers then find it only through their `--node` list,
    /// or through this node's `--scheduler`.
    #[arg(long)]
    no_mdns: bool,
    /// Where to accept jobs.
    #[arg(long, default_value = "0.0.0.0:7701")]
    listen: SocketAddr,
    /// The address clients should reach this node at, if not the one the
    /// scheduler sees it connect from.
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// Holds the input cache, toolchains and job directories.
    #[arg(
        long,
        env = "DISTCC_RS_NODE_DIR",
        default_value = "/var/lib/distcc-rs/node"
    )]
    work_dir: PathBuf,
    /// A name for status displays [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// Jobs to run at once [default: the number of CPUs].
    #[arg(long)]
    slots: Option<u32>,
    /// The bubblewrap binary used to sandbox jobs.
    #[arg(long, default_value = "bwrap")]
    bwrap: PathBuf,
    /// Seconds a job may run before it is killed.
    #[arg(long, default_value_t = 600)]
    job_timeout: u64,
    /// The most disk space the input cache (<WORK_DIR>/store) may take, in
    /// bytes or with a suffix: K, M, G, T, or KiB, MiB, GiB, TiB, all
    /// powers of 1024 (e.g. 512M, 10GiB). Past it, the least recently used
    /// inputs are removed until the cache is under 90% of the limit; inputs
    /// of running jobs are kept.
    #[arg(long, value_name = "SIZE", default_value = "10GiB", value_parser = parse_size)]
    store_size: u64,
    /// The most disk space the unpacked toolchains (<WORK_DIR>/toolchains)
    /// may take, with the same suffixes as --store-size. A toolchain takes
    /// about 500 MiB unpacked. Before a new one is unpacked, the least
    /// recently used toolchains no job is using are removed to make room;
    /// if every one is in use, the cache stays over the limit until a later
    /// fetch finds some unused.
    #[arg(long, value_name = "SIZE", default_value = "4GiB", value_parser = parse_size)]
    toolchain_cache_size: u64,
    /// Do not fetch toolchains before a job needs them. By default a node
    /// that has been idle for a few seconds asks the scheduler which
    /// toolchains the farm used in the last day and fetches those it lacks,
    /// one at a time, without evicting a toolchain used here more recently.
    #[arg(long)]
    no_prefetch: bool,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// A size on the command line that cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum SizeError {
    #[error("{0:?} is not a size: expected bytes, optionally with K, M, G or T (e.g. 512M, 10GiB)")]
    Malformed(String),
    #[error("{0:?} is more bytes than fit in 64 bits")]
    TooLarge(String),
}

/// Reads a size in bytes with an optional binary suffix (`K`, `M`, `G`,
/// `T`, or `KiB` to `TiB`, in any case; a space before it is allowed).
/// Every suffix is a power of 1024, since that is how disks are usually
/// reasoned about by the people setting the limit.
fn parse_size(text: &str) -> Result<u64, SizeError> {
    let malformed = || SizeError::Malformed(text.to_owned());
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
        .ok_or_else(|| SizeError::TooLarge(text.to_owned()))
}

fn parse_farm_name(name: &str) -> Result<String, FarmNameError> {
    validate_farm_name(name).map(|()| name.to_owned())
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("distcc-rs-node: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt.json().init(),
    }
    let slots = args.slots.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
    });
    let name = args.name.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "node".into())
    });
    let config = NodeConfig {
        name: name.clone(),
        listen: args.listen,
        advertise: args.advertise,
        scheduler: args.scheduler,
        farm: args.netname,
        mdns: !args.no_mdns,
        work_dir: args.work_dir,
        slots,
        bwrap: args.bwrap,
        job_timeout: Duration::from_secs(args.job_timeout),
        max_bundle_size: 2 << 30,
        store_size: args.store_size,
        toolchain_cache_size: args.toolchain_cache_size,
        prefetch: !args.no_prefetch,
        smoke_test: true,
    };
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let node = Node::bind(config).context("cannot start the node")?;
        let addr = node.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let serve = tokio::spawn(node.serve(tx, shutdown_signal()));
        if let Ok(scheduler) = rx.await {
            // Tests and service managers wait for this line.
            println!("distcc-rs-node {name} listening on {addr}, registered with {scheduler}");
        }
        serve.await.context("node task failed")?;
        anyhow::Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("cannot install a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("3K"), Ok(3 << 10));
        assert_eq!(parse_size("3kib"), Ok(3 << 10));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("10 GiB"), Ok(10 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
    }

    #[test]
    fn malformed_or_huge_sizes_are_refused() {
        for text in ["", "G", "10X", "1.5G", "-1", "10 G B", "10GB"] {
            assert_eq!(
                parse_size(text),
                Err(SizeError::Malformed(text.into())),
                "{text:?}"
            );
        }
        assert_eq!(
            parse_size("99999999999T"),
            Err(SizeError::TooLarge("99999999999T".into()))
        );
    }

    #[test]
    fn the_default_store_size_is_ten_gibibytes() {
        let args =
            Args::try_parse_from(["distcc-rs-node", "--scheduler", "127.0.0.1:7700"]).unwrap();
        assert_eq!(args.store_size, 10 << 30);
        let args = Args::try_parse_from([
            "distcc-rs-node",
            "--scheduler",
            "127.0.0.1:7700",
            "--store-size",
            "1M",
        ])
        .unwrap();
        assert_eq!(args.store_size, 1 << 20);
    }

    #[test]
    fn the_toolchain_cache_defaults_to_four_gibibytes_and_prefetching_is_on() {
        let args = Args::try_parse_from(["distcc-rs-node"]).unwrap();
        assert_eq!(args.toolchain_cache_size, 4 << 30);
        assert!(!args.no_prefetch);
        let args = Args::try_parse_from([
            "distcc-rs-node",
            "--toolchain-cache-size",
            "600MiB",
            "--no-prefetch",
        ])
        .unwrap();
        assert_eq!(args.toolchain_cache_size, 600 << 20);
        assert!(args.no_prefetch);
        assert!(
            Args::try_parse_from(["distcc-rs-node", "--toolchain-cache-size", "1.5G"]).is_err()
        );
    }

    #[test]
    fn the_scheduler_is_optional_and_farm_names_are_checked() {
        let args = Args::try_parse_from(["distcc-rs-node"]).unwrap();
        assert_eq!(args.scheduler, None);
        assert_eq!(args.netname, "default");
        assert!(!args.no_mdns);
        let args =
            Args::try_parse_from(["distcc-rs-node", "--netname", "team-a", "--no-mdns"]).unwrap();
        assert_eq!(args.netname, "team-a");
        assert!(args.no_mdns);
        assert!(Args::try_parse_from(["distcc-rs-node", "--netname", "a b"]).is_err());
    }
}
