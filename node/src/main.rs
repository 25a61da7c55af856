//! `distcc-rs-node`: the daemon that runs compile jobs for the farm.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use distcc_rs_node::{Node, NodeConfig};

/// Runs rustc jobs for a distcc-rs farm.
///
/// The node registers with the scheduler, receives jobs straight from
/// clients, runs each one in a bubblewrap sandbox with a toolchain it fetches
/// from the scheduler (no Rust install needed on this machine), and streams
/// the results back.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// The scheduler's address.
    #[arg(long, env = "DISTCC_RS_SCHEDULER")]
    scheduler: SocketAddr,
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
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
        work_dir: args.work_dir,
        slots,
        bwrap: args.bwrap,
        job_timeout: Duration::from_secs(args.job_timeout),
        max_bundle_size: 2 << 30,
    };
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let node = Node::bind(config).context("cannot start the node")?;
        let addr = node.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let serve = tokio::spawn(node.serve(tx, shutdown_signal()));
        if rx.await.is_ok() {
            // Tests and service managers wait for this line.
            println!(
                "distcc-rs-node {name} listening on {addr}, registered with {}",
                args.scheduler
            );
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
