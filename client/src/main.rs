//! `distcc-rs`: the `RUSTC_WRAPPER` of a distcc-rs farm, and its status tool.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use distcc_rs::config::ClientConfig;
use distcc_rs::membership::{self, Membership};

/// Compiles Rust crates on a distcc-rs farm.
///
/// Use it as cargo's compiler wrapper:
///
///     export RUSTC_WRAPPER=distcc-rs
///     cargo build
///
/// The client finds the scheduler of its farm over mDNS, or uses
/// DISTCC_RS_SCHEDULER=host:7700 where multicast does not reach. It needs a
/// farm certificate: run `distcc-rs join TOKEN` once with the farm's join
/// token (`distcc-rs-scheduler token` prints it), or set
/// DISTCC_RS_JOIN_TOKEN and the first compile enrolls. Without either,
/// everything compiles locally.
/// Library crates compile on the farm; binaries, proc-macros, build scripts
/// and incremental compiles run locally, and so does anything the farm
/// cannot do at the moment. Settings: DISTCC_RS_SCHEDULER (host:port; unset,
/// the scheduler is looked for over mDNS and remembered for a minute),
/// DISTCC_RS_NETNAME (the farm to look for, default `default`),
/// DISTCC_RS_MDNS=0 (never look over mDNS), DISTCC_RS_JOIN_TOKEN (enroll
/// with this token when no certificate is saved), DISTCC_RS_IDENTITY_DIR
/// (where the certificate is kept; default
/// ~/.config/distcc-rs/identity/<netname>),
/// DISTCC_RS_CACHE_DIR (toolchain bundles and input digests), DISTCC_RS_EVENTS
/// (a JSON line per compile), DISTCC_RS_LOG (log filter, e.g. `debug`) with
/// DISTCC_RS_LOG_FILE, DISTCC_RS_DISABLE=1 (compile everything locally),
/// DISTCC_RS_PIPELINING=0 (tell cargo a farm compile's .rmeta is ready only
/// when the compile ends, as a farm without pipelining would; for benchmarks),
/// DISTCC_RS_LOCAL_SLOTS (how many local compiles may run at once on this
/// machine, across all wrappers; default: the number of CPUs),
/// DISTCC_RS_MAX_OUTPUT_SIZE (the most bytes of outputs a node may send back
/// for one compile; default 4 GiB), DISTCC_RS_REMOTE_TIMEOUT (how many seconds
/// one node may take over one compile before it is given up on; default 900).
/// The same settings can be given in ~/.config/distcc-rs/client.toml (or the
/// file DISTCC_RS_CONFIG names) under shorter keys (scheduler, netname, mdns,
/// join_token, identity_dir, cache_dir, events, log, log_file, disable,
/// pipelining, local_slots, max_output_size, remote_timeout); the variables
/// override the file. `distcc-rs config` shows what is in force.
/// See docs/CONFIG.md.
#[derive(Debug, Parser)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enrolls this client in the farm with the farm's join token.
    ///
    /// Makes a key, gets a certificate for it from the scheduler and saves
    /// both in the identity directory ($DISTCC_RS_IDENTITY_DIR, default
    /// ~/.config/distcc-rs/identity/<netname>), where the wrapper, `status`,
    /// `monitor` and `distcc-rs-pack` find them. Does nothing when already
    /// enrolled in that farm.
    Join {
        /// The join token (`distcc-rs-scheduler token` prints it), or `-` to
        /// read it from stdin.
        token: String,
        /// The scheduler's address [default: as for `status`].
        #[arg(long)]
        scheduler: Option<SocketAddr>,
        /// Enroll again even when a certificate of this farm is saved.
        #[arg(long)]
        force: bool,
    },
    /// Shows the scheduler, its nodes and the jobs in flight.
    Status {
        /// The scheduler's address [default: $DISTCC_RS_SCHEDULER, else the
        /// scheduler of farm $DISTCC_RS_NETNAME (default `default`) found
        /// over mDNS].
        #[arg(long)]
        scheduler: Option<SocketAddr>,
        /// Print JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Watches the farm live: each node's slots coloured by client, the
    /// jobs in flight and the ones that ended, and the throughput. Keys: q
    /// or Esc quits, arrows, PgUp/PgDn, Home and End scroll the job list.
    Monitor {
        /// The scheduler's address [default: as for `status`].
        #[arg(long, conflicts_with = "simulate")]
        scheduler: Option<SocketAddr>,
        /// Show a simulated farm (no network), for demonstrations and
        /// screenshots.
        #[arg(long)]
        simulate: bool,
        /// The seed of the simulated farm: the same seed shows the same farm.
        #[arg(long, default_value_t = 1, requires = "simulate")]
        seed: u64,
    },
    /// Prints the client's settings in force as its configuration file
    /// (TOML), each with where it came from, and fails while that file is
    /// broken.
    Config,
    /// Summarises an event log (see DISTCC_RS_EVENTS): where each compile
    /// ran and why, and how many bytes went to and came from the farm.
    Stats {
        /// The event log [default: $DISTCC_RS_EVENTS].
        #[arg(long)]
        events: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    // As a wrapper, the first argument is the compiler; anything else is one
    // of our own subcommands or flags.
    let is_wrapper = args.get(1).is_some_and(|a| {
        let s = a.to_string_lossy();
        !s.starts_with('-')
            && !matches!(
                s.as_ref(),
                "join" | "status" | "monitor" | "stats" | "config" | "help"
            )
    });
    if is_wrapper {
        let config = ClientConfig::from_env();
        init_logging(&config);
        let rustc = PathBuf::from(args.remove(1));
        let code = distcc_rs::wrapper::run(&config, &rustc, args.split_off(1));
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    match cli(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("distcc-rs: {}", distcc_rs_net::one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn cli(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Join {
            token,
            scheduler,
            force,
        } => {
            let config = ClientConfig::from_env();
            let token = membership::read_token(&token)?;
            let joined = membership::join(&config, &token, force, || match scheduler {
                Some(s) => Ok(s),
                None => find_scheduler(&config),
            })
            .context("cannot join the farm")?;
            print!("{}", membership::render_joined(&joined));
            Ok(())
        }
        Command::Status { scheduler, json } => {
            let config = ClientConfig::from_env();
            // Checked before the scheduler is looked for: without a
            // certificate (or a token to get one) nothing can be asked.
            let membership = Membership::from_config(&config)?;
            membership.saved()?;
            let scheduler = match scheduler {
                Some(s) => s,
                None => find_scheduler(&config)?,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let status = rt
                .block_on(async {
                    let credentials = membership.load_or_enroll(scheduler).await?;
                    anyhow::Ok(distcc_rs::status::fetch(scheduler, &credentials).await?)
                })
                .with_context(|| format!("cannot get the status from {scheduler}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", distcc_rs::status::render(scheduler, &status));
            }
            Ok(())
        }
        Command::Monitor {
            scheduler,
            simulate,
            seed,
        } => {
            let source = if simulate {
                distcc_rs::monitor::Source::Simulated { seed }
            } else {
                let scheduler = match scheduler {
                    Some(s) => s,
                    None => find_scheduler(&ClientConfig::from_env())?,
                };
                distcc_rs::monitor::Source::Scheduler(scheduler)
            };
            distcc_rs::monitor::run(source)?;
            Ok(())
        }
        Command::Config => {
            let config = ClientConfig::from_env();
            print!("{}", config.render());
            match config.file_problem {
                Some(problem) => Err(anyhow::anyhow!(problem)),
                None => Ok(()),
            }
        }
        Command::Stats { events } => {
            let path = events
                .or(ClientConfig::from_env().events)
                .context("no event log given: pass --events or set DISTCC_RS_EVENTS")?;
            let events = distcc_rs::events::read(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            print!("{}", distcc_rs::events::summarize(&events));
            Ok(())
        }
    }
}

/// The scheduler from the environment, else the one mDNS finds.
fn find_scheduler(config: &ClientConfig) -> anyhow::Result<SocketAddr> {
    if let Some(problem) = &config.file_problem {
        anyhow::bail!("{problem}");
    }
    if let Some(configured) = &config.scheduler {
        return configured.clone().map_err(anyhow::Error::msg);
    }
    anyhow::ensure!(
        config.mdns,
        "no scheduler given: pass --scheduler or set DISTCC_RS_SCHEDULER \
         (looking for one over mDNS is off by DISTCC_RS_MDNS)"
    );
    let farm = config.farm.clone().map_err(anyhow::Error::msg)?;
    // Longer than a wrapper waits: a person is waiting for an answer, and
    // a scheduler that just started needs about a second to be found.
    let found = distcc_rs::discovery::browse(&farm, STATUS_BROWSE_TIMEOUT)
        .map_err(anyhow::Error::msg)
        .context("cannot look for the scheduler over mDNS")?;
    found.with_context(|| {
        format!(
            "no scheduler of farm {farm:?} answered over mDNS within {} s: pass --scheduler, \
             set DISTCC_RS_SCHEDULER, or DISTCC_RS_NETNAME for another farm",
            STATUS_BROWSE_TIMEOUT.as_secs()
        )
    })
}

/// How long `distcc-rs status` looks for the scheduler over mDNS.
const STATUS_BROWSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Logs go to a file and only when asked for: cargo reads the wrapper's
/// stderr as rustc's, so nothing of ours may appear there.
fn init_logging(config: &ClientConfig) {
    let Some(filter) = &config.log else {
        return;
    };
    let path = &config.log_file;
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
}
