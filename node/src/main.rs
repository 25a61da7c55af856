//! `distcc-rs-node`: the daemon that runs compile jobs for the farm.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};
use distcc_rs_net::config_file::{Computed, ConfigError, Layered, parse_layered};
use distcc_rs_net::credentials::{Credentials, CredentialsError, Enrollment};
use distcc_rs_node::limits::Limits;
use distcc_rs_node::{Node, NodeConfig, launcher};
use distcc_rs_proto::discovery::{DEFAULT_FARM, FarmNameError, validate_farm_name};
use distcc_rs_proto::{JoinToken, PeerRole};

/// The configuration file read when neither --config nor DISTCC_RS_CONFIG
/// names one, if it exists.
const DEFAULT_CONFIG: &str = "/etc/distcc-rs/node.toml";

/// The directory under the work directory that holds the node's farm
/// certificate, its key and the farm CA.
const IDENTITY_DIR: &str = "identity";

/// How long a node that must enroll and has no --scheduler looks for its
/// farm's scheduler over mDNS.
const ENROLL_BROWSE: Duration = Duration::from_secs(5);

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
///
/// Every connection is authenticated with certificates of the farm's CA.
/// On its first start the node enrolls with the join token (--join-token,
/// from `distcc-rs-scheduler token`) and keeps its certificate in
/// <WORK_DIR>/identity; only the scheduler may adopt it and only clients
/// holding a ticket issued to their own certificate may send it jobs.
///
/// Every setting below can also be given in a TOML configuration file
/// (/etc/distcc-rs/node.toml, or the file --config names), under the flag's
/// name in snake_case: `scheduler = "192.0.2.10:7700"`, `slots = 12`,
/// `prefetch = false`. Environment variables override the file, and flags
/// override both; --print-config shows the result. See docs/CONFIG.md.
#[derive(Debug, PartialEq, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// The TOML configuration file to read [default: /etc/distcc-rs/node.toml,
    /// if it exists]. A file named here or by the variable must exist.
    #[arg(long, value_name = "FILE", env = "DISTCC_RS_CONFIG")]
    config: Option<PathBuf>,
    /// Print the settings in force as a configuration file, each with where
    /// it came from (default, file, env or flag), and exit.
    #[arg(long)]
    print_config: bool,
    /// A scheduler to dial and stay registered with, as IP:PORT, for
    /// networks where mDNS does not reach. Without it the node waits for a
    /// scheduler of its farm to find it over mDNS, or to be given this
    /// node's address with `--node`.
    #[arg(long, value_name = "ADDR", env = "DISTCC_RS_SCHEDULER")]
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
    #[arg(long = "no-mdns", action = ArgAction::SetFalse)]
    mdns: bool,
    /// Where to accept jobs.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7701")]
    listen: SocketAddr,
    /// The address clients should reach this node at, if not the one the
    /// scheduler sees it connect from.
    #[arg(long, value_name = "ADDR")]
    advertise: Option<SocketAddr>,
    /// The farm's join token, from `distcc-rs-scheduler token`; needed once,
    /// to enroll. A node without a certificate sends the token to the
    /// scheduler (the one --scheduler names, or the one of its farm found
    /// over mDNS) and gets a farm certificate, which it keeps in
    /// <WORK_DIR>/identity and uses from then on; the token is not needed
    /// again unless the farm is re-created. A token of another farm than
    /// the saved certificate's enrolls the node afresh.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "DISTCC_RS_JOIN_TOKEN",
        value_parser = str::parse::<JoinToken>,
        hide_env_values = true,
        hide_default_value = true
    )]
    join_token: Option<JoinToken>,
    /// Holds the input cache, toolchains, job directories and the node's
    /// farm certificate (in <WORK_DIR>/identity).
    #[arg(
        long,
        value_name = "DIR",
        env = "DISTCC_RS_NODE_DIR",
        default_value = "/var/lib/distcc-rs/node"
    )]
    work_dir: PathBuf,
    /// A name for status displays, and the name of the node's farm
    /// certificate when it enrolls (`distcc-rs-scheduler certs` lists it)
    /// [default: the host name].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Jobs to run at once [default: the number of CPUs].
    #[arg(long, value_name = "N")]
    slots: Option<u32>,
    /// The bubblewrap binary used to sandbox jobs.
    #[arg(long, value_name = "PATH", default_value = "bwrap")]
    bwrap: PathBuf,
    /// Seconds a job may run before it is killed.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    job_timeout: u64,
    /// The user jobs run as when the node runs as root: a name, a uid, or
    /// UID:GID [default: nobody]. The node gives it each job's output
    /// directories and nothing else. A node running as another user runs
    /// jobs as itself (in bubblewrap's user namespace) and may only name
    /// itself here.
    #[arg(long, value_name = "USER")]
    job_user: Option<String>,
    /// The memory one job may use, with the suffixes of --store-size. Past
    /// it the kernel kills the job, and its client compiles it elsewhere.
    /// Enforced by the job's cgroup, or per process by RLIMIT_DATA where
    /// the node cannot create cgroups.
    #[arg(long, value_name = "SIZE", default_value = "4GiB", value_parser = parse_size)]
    job_memory: u64,
    /// The CPUs' worth of time one job may use, e.g. 2 or 1.5 [default:
    /// the number of CPUs]. Enforced by the job's cgroup (a CFS quota);
    /// without cgroups, by RLIMIT_CPU as CPU seconds (this times
    /// --job-timeout).
    #[arg(long, value_name = "CPUS", value_parser = parse_cpus)]
    job_cpus: Option<u32>,
    /// The processes and threads one job may run at once. rustc itself
    /// needs a few dozen. Without cgroups this is RLIMIT_NPROC, which
    /// counts every process of the job user, all jobs together.
    #[arg(long, value_name = "N", default_value_t = 512, value_parser = clap::value_parser!(u32).range(16..))]
    job_pids: u32,
    /// Run jobs without the sandbox's protections: as the node's own user,
    /// without memory, CPU or process limits (the job timeout still
    /// applies), and without checking at start-up that the sandbox works.
    /// bubblewrap still builds each job's view of the file system. For
    /// machines where the sandbox cannot work and every client is trusted;
    /// logged as a warning at start and for every job.
    #[arg(long)]
    insecure_no_sandbox: bool,
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
    #[arg(long = "no-prefetch", action = ArgAction::SetFalse)]
    prefetch: bool,
    /// Log format on stderr.
    #[arg(long, value_name = "FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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

/// A number of CPUs that cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a number of CPUs: expected a positive number such as 2 or 1.5")]
struct CpusError(String);

/// Reads a number of CPUs (`2`, `0.5`, at most three decimals) as
/// thousandths of a CPU.
fn parse_cpus(text: &str) -> Result<u32, CpusError> {
    let bad = || CpusError(text.to_owned());
    let trimmed = text.trim();
    let (whole, frac) = trimmed.split_once('.').unwrap_or((trimmed, ""));
    if whole.is_empty() && frac.is_empty()
        || frac.len() > 3
        || !whole
            .bytes()
            .chain(frac.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let whole: u32 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let frac: u32 = format!("{frac:0<3}").parse().map_err(|_| bad())?;
    let millis = whole
        .checked_mul(1000)
        .and_then(|m| m.checked_add(frac))
        .ok_or_else(bad)?;
    if millis == 0 {
        return Err(bad());
    }
    Ok(millis)
}

fn parse_farm_name(name: &str) -> Result<String, FarmNameError> {
    validate_farm_name(name).map(|()| name.to_owned())
}

fn main() -> std::process::ExitCode {
    // The node starts every job through its own binary, which then joins
    // the job's cgroups and becomes bubblewrap (see the launcher module).
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == launcher::LAUNCHER_ARG) {
        return launcher::main(&argv[2..]);
    }
    let env = |name: &str| std::env::var(name).ok();
    let (args, layered) = match parse_args(std::env::args_os(), &env, Path::new(DEFAULT_CONFIG)) {
        Ok(parsed) => parsed,
        Err(e) => e.exit("distcc-rs-node"),
    };
    if args.print_config {
        print!("{}", print_config(&layered));
        return std::process::ExitCode::SUCCESS;
    }
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "distcc-rs-node: error: {}",
                distcc_rs_net::one_line(e.as_ref())
            );
            std::process::ExitCode::FAILURE
        }
    }
}

/// Parses `argv` (the program name first) over the configuration file and
/// the environment, which `env` reads. `default_config` is read when no
/// file is named, if it exists.
fn parse_args<I>(
    argv: I,
    env: &dyn Fn(&str) -> Option<String>,
    default_config: &Path,
) -> Result<(Args, Layered), ConfigError>
where
    I: IntoIterator,
    I::Item: Into<std::ffi::OsString>,
{
    let layered = parse_layered(Args::command(), argv, env, default_config)?;
    let args = Args::from_arg_matches(layered.matches())?;
    Ok((args, layered))
}

/// The settings in force as TOML. The name and the slots default to this
/// machine's; they are shown but left commented out, so that the output
/// can seed the configuration of other machines.
fn print_config(layered: &Layered) -> String {
    layered.to_toml(&[
        Computed {
            key: "name",
            value: toml::Value::String(host_name()),
        },
        Computed {
            key: "slots",
            value: toml::Value::Integer(i64::from(default_slots())),
        },
        Computed {
            key: "job_cpus",
            value: toml::Value::Integer(i64::from(default_slots())),
        },
    ])
}

/// The number of CPUs this process may use.
fn default_slots() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "node".into())
}

fn run(args: Args) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a person at a terminal: in a journal or a log
    // file they are noise.
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt.json().init(),
    }
    let slots = args.slots.unwrap_or_else(default_slots);
    let name = args.name.unwrap_or_else(host_name);
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let credentials = rt.block_on(credentials(
        &args.work_dir,
        &name,
        args.join_token.as_ref(),
        args.scheduler,
        args.mdns.then_some(args.netname.as_str()),
    ))?;
    tracing::info!(
        certificate = %credentials.fingerprint().short(),
        dir = %args.work_dir.join(IDENTITY_DIR).display(),
        "using this node's farm certificate"
    );
    let config = NodeConfig {
        name: name.clone(),
        listen: args.listen,
        advertise: args.advertise,
        scheduler: args.scheduler,
        farm: args.netname,
        mdns: args.mdns,
        work_dir: args.work_dir,
        slots,
        bwrap: args.bwrap,
        job_timeout: Duration::from_secs(args.job_timeout),
        max_bundle_size: 2 << 30,
        store_size: args.store_size,
        toolchain_cache_size: args.toolchain_cache_size,
        prefetch: args.prefetch,
        smoke_test: true,
        job_user: args.job_user,
        job_limits: Limits {
            memory: args.job_memory,
            cpu_millis: args.job_cpus.unwrap_or(default_slots() * 1000),
            pids: args.job_pids,
        },
        job_output: Default::default(),
        launcher: std::env::current_exe()
            .context("cannot find the node's own binary, which starts every job")?,
        insecure_no_sandbox: args.insecure_no_sandbox,
        credentials,
    };
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

/// The node's farm credentials: those saved in the work directory, or new
/// ones from enrolling with `token` at the scheduler `scheduler`, or at the
/// one of farm `mdns_farm` found over mDNS (`None` when mDNS is off).
async fn credentials(
    work_dir: &Path,
    name: &str,
    token: Option<&JoinToken>,
    scheduler: Option<SocketAddr>,
    mdns_farm: Option<&str>,
) -> anyhow::Result<Credentials> {
    // The work directory keeps its usual mode (the job user must reach
    // the job roots inside it); only the identity directory is private.
    std::fs::create_dir_all(work_dir)
        .with_context(|| format!("cannot create the work directory {}", work_dir.display()))?;
    let dir = work_dir.join(IDENTITY_DIR);
    let enrollment = Enrollment {
        dir: &dir,
        role: PeerRole::Node,
        name,
        token,
    };
    if let Some(saved) = enrollment.saved()? {
        return Ok(saved);
    }
    if token.is_some() {
        distcc_rs_proto::auth::validate_member_name(name).map_err(|why| {
            anyhow::anyhow!(
                "cannot enroll as {name:?}: the node's name (--name, or the host name) names \
                 its certificate, and {why}"
            )
        })?;
    }
    if token.is_some() && scheduler.is_none() && mdns_farm.is_none() {
        anyhow::bail!(
            "cannot enroll in the farm: no --scheduler is given and mDNS is off (--no-mdns), so \
             there is no scheduler to send the join token to; give the scheduler's address \
             with --scheduler for this first start"
        );
    }
    // A node may well start before its scheduler (machines boot in any
    // order), so failing to reach the scheduler is retried with back-off;
    // a refused token or a local problem is not.
    let mut delay = ENROLL_RETRY_FIRST;
    loop {
        let attempt = enroll_once(&enrollment, token, scheduler, mdns_farm).await;
        match attempt {
            Ok(credentials) => return Ok(credentials),
            Err(Enroll::Retry(why)) => {
                tracing::warn!("{why}; trying again in {} s", delay.as_secs());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(ENROLL_RETRY_MAX);
            }
            Err(Enroll::Fail(e)) => return Err(e),
        }
    }
}

/// How an enrollment attempt failed.
enum Enroll {
    /// The scheduler could not be found or reached: worth another try.
    Retry(String),
    Fail(anyhow::Error),
}

/// The first pause between enrollment attempts, doubled after each failed
/// attempt up to [`ENROLL_RETRY_MAX`].
const ENROLL_RETRY_FIRST: Duration = Duration::from_secs(1);
const ENROLL_RETRY_MAX: Duration = Duration::from_secs(30);

async fn enroll_once(
    enrollment: &Enrollment<'_>,
    token: Option<&JoinToken>,
    scheduler: Option<SocketAddr>,
    mdns_farm: Option<&str>,
) -> Result<Credentials, Enroll> {
    let scheduler = match (token, scheduler, mdns_farm) {
        // Not enrolled and nothing to enroll with: the error says what to do.
        (None, _, _) | (Some(_), None, None) => None,
        (Some(_), Some(addr), _) => Some(addr),
        (Some(_), None, Some(farm)) => {
            tracing::info!(
                farm,
                "not enrolled yet; looking for the scheduler of farm {farm:?} over mDNS to enroll"
            );
            let found = distcc_rs_net::discovery::find_scheduler(farm, ENROLL_BROWSE)
                .await
                .context("cannot look for the scheduler over mDNS to enroll")
                .map_err(Enroll::Fail)?;
            Some(found.ok_or_else(|| {
                Enroll::Retry(format!(
                    "cannot enroll in the farm yet: no scheduler of farm {farm:?} answered over \
                     mDNS within {} s (start it, or give its address with --scheduler)",
                    ENROLL_BROWSE.as_secs()
                ))
            })?)
        }
    };
    match enrollment.load_or_enroll(|| async move { scheduler }).await {
        Ok(credentials) => Ok(credentials),
        Err(e @ CredentialsError::NotEnrolled { .. }) => Err(Enroll::Fail(anyhow::anyhow!(
            "{e}; a node takes the token as --join-token TOKEN, DISTCC_RS_JOIN_TOKEN or \
             `join_token` in its configuration file"
        ))),
        // The scheduler answered but is not the farm the token names, or
        // refused us: trying again changes nothing.
        Err(
            e @ CredentialsError::Unreachable {
                source:
                    distcc_rs_net::NetError::NotTrusted { .. }
                    | distcc_rs_net::NetError::RefusedUs { .. }
                    | distcc_rs_net::NetError::Refused { .. },
                ..
            },
        ) => Err(Enroll::Fail(e.into())),
        Err(e @ CredentialsError::Unreachable { .. }) => Err(Enroll::Retry(e.to_string())),
        Err(e) => Err(Enroll::Fail(e.into())),
    }
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
    fn cpus_are_read_as_thousandths() {
        assert_eq!(parse_cpus("2"), Ok(2000));
        assert_eq!(parse_cpus("1.5"), Ok(1500));
        assert_eq!(parse_cpus("0.25"), Ok(250));
        assert_eq!(parse_cpus(".5"), Ok(500));
        assert_eq!(parse_cpus("0.001"), Ok(1));
        for bad in ["", "0", "0.0", "-1", "1.2345", "two", "1e3", "99999999"] {
            assert_eq!(parse_cpus(bad), Err(CpusError(bad.into())), "{bad:?}");
        }
    }

    #[test]
    fn job_limits_default_to_four_gibibytes_and_512_processes() {
        let args = parse(&[], &[]).unwrap();
        assert_eq!(args.job_memory, 4 << 30);
        assert_eq!(args.job_cpus, None);
        assert_eq!(args.job_pids, 512);
        assert_eq!(args.job_user, None);
        assert!(!args.insecure_no_sandbox);
        let args = parse(
            &[
                "--job-memory",
                "1GiB",
                "--job-cpus",
                "1.5",
                "--job-pids",
                "64",
                "--job-user",
                "builder",
                "--insecure-no-sandbox",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(args.job_memory, 1 << 30);
        assert_eq!(args.job_cpus, Some(1500));
        assert_eq!(args.job_pids, 64);
        assert_eq!(args.job_user.as_deref(), Some("builder"));
        assert!(args.insecure_no_sandbox);
        // Fewer processes than rustc needs to start is a mistake.
        assert!(parse(&["--job-pids", "4"], &[]).is_err());
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

    /// A fake environment.
    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    /// Parses `argv` (without the program name) in the environment `vars`,
    /// with no configuration file unless `argv` names one: the machine the
    /// tests run on may have a real one at the default location.
    fn parse(argv: &[&str], vars: &[(&str, &str)]) -> Result<Args, ConfigError> {
        parse_layered_args(argv, vars).map(|(args, _)| args)
    }

    fn parse_layered_args(
        argv: &[&str],
        vars: &[(&str, &str)],
    ) -> Result<(Args, Layered), ConfigError> {
        let argv = std::iter::once("distcc-rs-node").chain(argv.iter().copied());
        parse_args(argv, &env(vars), Path::new("/nonexistent/node.toml"))
    }

    /// A configuration file holding `text`, in a directory that lives as
    /// long as the returned guard.
    fn config_file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path.to_str().unwrap().to_owned())
    }

    #[test]
    fn the_default_store_size_is_ten_gibibytes() {
        let args = parse(&["--scheduler", "127.0.0.1:7700"], &[]).unwrap();
        assert_eq!(args.store_size, 10 << 30);
        let args = parse(
            &["--scheduler", "127.0.0.1:7700", "--store-size", "1M"],
            &[],
        )
        .unwrap();
        assert_eq!(args.store_size, 1 << 20);
    }

    #[test]
    fn the_toolchain_cache_defaults_to_four_gibibytes_and_prefetching_is_on() {
        let args = parse(&[], &[]).unwrap();
        assert_eq!(args.toolchain_cache_size, 4 << 30);
        assert!(args.prefetch);
        let args = parse(&["--toolchain-cache-size", "600MiB", "--no-prefetch"], &[]).unwrap();
        assert_eq!(args.toolchain_cache_size, 600 << 20);
        assert!(!args.prefetch);
        assert!(parse(&["--toolchain-cache-size", "1.5G"], &[]).is_err());
    }

    #[test]
    fn the_scheduler_is_optional_and_farm_names_are_checked() {
        let args = parse(&[], &[]).unwrap();
        assert_eq!(args.scheduler, None);
        assert_eq!(args.netname, "default");
        assert!(args.mdns);
        let args = parse(&["--netname", "team-a", "--no-mdns"], &[]).unwrap();
        assert_eq!(args.netname, "team-a");
        assert!(!args.mdns);
        assert!(parse(&["--netname", "a b"], &[]).is_err());
    }

    #[test]
    fn configuration_file_then_environment_then_flags() {
        let (_dir, path) = config_file(
            "scheduler = \"10.0.0.1:7700\"\nnetname = \"file\"\nwork_dir = \"/file\"\n\
             slots = 3\nstore_size = \"1GiB\"\nprefetch = false\n",
        );
        let file = parse(&["--config", &path], &[]).unwrap();
        assert_eq!(file.scheduler, Some("10.0.0.1:7700".parse().unwrap()));
        assert_eq!(file.netname, "file");
        assert_eq!(file.work_dir, PathBuf::from("/file"));
        assert_eq!(file.slots, Some(3));
        assert_eq!(file.store_size, 1 << 30);
        assert!(!file.prefetch);

        let vars = [
            ("DISTCC_RS_SCHEDULER", "10.0.0.2:7700"),
            ("DISTCC_RS_NETNAME", "env"),
            ("DISTCC_RS_NODE_DIR", "/env"),
        ];
        let env = parse(&["--config", &path], &vars).unwrap();
        assert_eq!(env.scheduler, Some("10.0.0.2:7700".parse().unwrap()));
        assert_eq!(env.netname, "env");
        assert_eq!(env.work_dir, PathBuf::from("/env"));
        assert_eq!(env.slots, Some(3));

        let flags = parse(
            &[
                "--config",
                &path,
                "--scheduler",
                "10.0.0.3:7700",
                "--netname",
                "flag",
                "--work-dir",
                "/flag",
                "--slots",
                "5",
            ],
            &vars,
        )
        .unwrap();
        assert_eq!(flags.scheduler, Some("10.0.0.3:7700".parse().unwrap()));
        assert_eq!(flags.netname, "flag");
        assert_eq!(flags.work_dir, PathBuf::from("/flag"));
        assert_eq!(flags.slots, Some(5));
        assert_eq!(flags.store_size, 1 << 30);

        // DISTCC_RS_CONFIG names the file when no flag does.
        let named = parse(&[], &[("DISTCC_RS_CONFIG", &path)]).unwrap();
        assert_eq!(named.netname, "file");
    }

    /// A well-formed join token, and its text.
    fn token(secret: u8) -> (JoinToken, String) {
        let text = format!(
            "drs1-{}-{}",
            "ab".repeat(16),
            format!("{secret:02x}").repeat(16)
        );
        (text.parse().unwrap(), text)
    }

    #[test]
    fn the_join_token_comes_from_the_file_the_environment_or_the_flag() {
        assert_eq!(parse(&[], &[]).unwrap().join_token, None);
        let (from_file, file_text) = token(1);
        let (from_env, env_text) = token(2);
        let (from_flag, flag_text) = token(3);
        let (_dir, path) = config_file(&format!("join_token = \"{file_text}\"\n"));
        let args = parse(&["--config", &path], &[]).unwrap();
        assert_eq!(args.join_token, Some(from_file));
        let vars = [("DISTCC_RS_JOIN_TOKEN", env_text.as_str())];
        let args = parse(&["--config", &path], &vars).unwrap();
        assert_eq!(args.join_token, Some(from_env));
        let args = parse(&["--config", &path, "--join-token", &flag_text], &vars).unwrap();
        assert_eq!(args.join_token, Some(from_flag));
    }

    #[test]
    fn a_malformed_join_token_stops_the_node_and_says_why() {
        let err = parse(&["--join-token", "drs1-abc"], &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not a join token") && err.contains("distcc-rs-scheduler token"),
            "{err}"
        );
        let err = parse(&[], &[("DISTCC_RS_JOIN_TOKEN", "secret")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("DISTCC_RS_JOIN_TOKEN") && err.contains("not a join token"),
            "{err}"
        );
        let (_dir, path) = config_file("join_token = \"drs2-00-00\"\n");
        let err = parse(&["--config", &path], &[]).unwrap_err().to_string();
        assert!(
            err.contains("`join_token") && err.contains("does not start with drs1-"),
            "{err}"
        );
    }

    #[test]
    fn the_help_explains_the_token_without_showing_it() {
        let (_, text) = token(4);
        let vars = [("DISTCC_RS_JOIN_TOKEN", text.as_str())];
        let err = parse(&["--help"], &vars).unwrap_err();
        let help = match err {
            ConfigError::CommandLine(e) => e.to_string(),
            other => panic!("not the help: {other}"),
        };
        assert!(
            help.contains("from `distcc-rs-scheduler token`; needed once, to enroll"),
            "{help}"
        );
        assert!(!help.contains(&text[20..]), "{help}");
    }

    #[tokio::test]
    async fn without_credentials_or_a_token_the_node_says_how_to_enroll() {
        let work = tempfile::tempdir().unwrap();
        let err = credentials(work.path(), "n1", None, None, Some("default"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not enrolled in the farm") && err.contains("--join-token"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn enrolling_without_mdns_needs_the_scheduler_address() {
        let work = tempfile::tempdir().unwrap();
        let (token, _) = token(5);
        let err = credentials(work.path(), "n1", Some(&token), None, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--no-mdns") && err.contains("--scheduler"),
            "{err}"
        );
        // A name the certificate cannot carry is refused before any
        // scheduler is asked.
        let err = credentials(work.path(), "a b", Some(&token), None, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot enroll as \"a b\""), "{err}");
    }

    #[tokio::test]
    async fn saved_credentials_are_used_without_asking_anyone() {
        let work = tempfile::tempdir().unwrap();
        let farm = distcc_rs_net::pki::TestFarm::new();
        let (identity, _) = farm.member(PeerRole::Node);
        let saved = Credentials {
            ca: farm.ca.cert_der().clone(),
            identity,
        };
        saved.save(&work.path().join(IDENTITY_DIR)).unwrap();
        let loaded = credentials(work.path(), "n1", None, None, None)
            .await
            .unwrap();
        assert_eq!(loaded.fingerprint(), saved.fingerprint());
        // A client's certificate in the node's directory does not count.
        let (identity, _) = farm.member(PeerRole::Client);
        Credentials {
            ca: farm.ca.cert_der().clone(),
            identity,
        }
        .save(&work.path().join(IDENTITY_DIR))
        .unwrap();
        assert!(
            credentials(work.path(), "n1", None, None, None)
                .await
                .is_err()
        );
    }

    #[test]
    fn configuration_mistakes_name_the_file_and_the_key() {
        let (_dir, path) = config_file("slot = 3\n");
        let err = parse(&["--config", &path], &[]).unwrap_err().to_string();
        assert!(
            err.contains(&path) && err.contains("unknown key `slot`"),
            "{err}"
        );
        assert!(err.contains("slots, bwrap, job_timeout"), "{err}");

        let (_dir, path) = config_file("mdns = \"off\"\n");
        let err = parse(&["--config", &path], &[]).unwrap_err().to_string();
        assert!(
            err.contains("`mdns` must be true or false, not string"),
            "{err}"
        );

        let (_dir, path) = config_file("store_size = \"lots\"\n");
        let err = parse(&["--config", &path], &[]).unwrap_err().to_string();
        assert!(
            err.contains(r#"`store_size = "lots"` is not valid: "lots" is not a size"#),
            "{err}"
        );

        let (_dir, path) = config_file("netname = \"a b\"\n");
        assert!(parse(&["--config", &path], &[]).is_err());

        let err = parse(&["--config", "/nonexistent/named.toml"], &[]).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }

    #[test]
    fn printed_settings_read_back_as_the_same_settings() {
        let (_dir, path) =
            config_file("slots = 3\nstore_size = 1048576\nbwrap = \"/usr/bin/bwrap\"\n");
        let (args, layered) = parse_layered_args(
            &[
                "--config",
                &path,
                "--no-prefetch",
                "--toolchain-cache-size",
                "600MiB",
                "--log-format",
                "json",
                "--advertise",
                "10.0.0.9:7701",
            ],
            &[("DISTCC_RS_SCHEDULER", "10.0.0.1:7700")],
        )
        .unwrap();
        let printed = print_config(&layered);
        assert!(
            printed.contains(&format!("\nslots = 3  # file {path}\n")),
            "{printed}"
        );
        assert!(
            printed.contains("\nscheduler = \"10.0.0.1:7700\"  # env DISTCC_RS_SCHEDULER\n"),
            "{printed}"
        );
        assert!(
            printed
                .contains("\ntoolchain_cache_size = \"600MiB\"  # flag --toolchain-cache-size\n"),
            "{printed}"
        );
        assert!(
            printed.contains("\nprefetch = false  # flag --no-prefetch\n"),
            "{printed}"
        );
        assert!(
            printed.contains("\njob_timeout = 600  # default\n"),
            "{printed}"
        );
        // The host name is this machine's: shown, but not set.
        assert!(printed.contains("\n# name = \""), "{printed}");

        let (_dir, printed_path) = config_file(&printed);
        let again = parse(&["--config", &printed_path], &[]).unwrap();
        assert_eq!(
            again,
            Args {
                config: Some(PathBuf::from(&printed_path)),
                ..args
            }
        );
    }

    #[test]
    fn the_configuration_reference_in_the_docs_is_current() {
        let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/CONFIG.md");
        let generated = distcc_rs_net::config_file::reference(&Args::command());
        let update = std::env::var_os("UPDATE_DOCS").is_some();
        if let Err(e) =
            distcc_rs_net::config_file::check_generated_block(&doc, "node", &generated, update)
        {
            panic!("{e}");
        }
    }
}
