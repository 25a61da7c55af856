//! The `distcc-rs-scheduler` daemon. This file is glue: it parses flags, sets
//! up logging, binds the QUIC endpoint, announces the bound address and hands
//! over to `distcc_rs_scheduler::run` until SIGINT or SIGTERM.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, ValueEnum};
use distcc_rs_net::config_file::{ConfigError, Layered, parse_layered};
use distcc_rs_net::{EndpointOptions, bind_server};
use distcc_rs_proto::discovery::{DEFAULT_FARM, FarmNameError, validate_farm_name};
use distcc_rs_scheduler::authority::Security;
use distcc_rs_scheduler::{DEFAULT_MAX_BUNDLE_SIZE, DiscoveryConfig, SchedulerConfig};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

/// Where state goes when no flag, variable or configuration file says.
const DEFAULT_STATE_DIR: &str = "/var/lib/distcc-rs/scheduler";

/// The configuration file read when neither --config nor DISTCC_RS_CONFIG
/// names one, if it exists.
const DEFAULT_CONFIG: &str = "/etc/distcc-rs/scheduler.toml";

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
///
/// Every setting below can also be given in a TOML configuration file
/// (/etc/distcc-rs/scheduler.toml, or the file --config names), under the
/// flag's name in snake_case: `max_store_size = "50GiB"`, `nodes = ["a:7701"]`,
/// `mdns = false`. Environment variables override the file, and flags
/// override both; --print-config shows the result. See docs/CONFIG.md.
///
/// On first start the scheduler creates the farm's certificate authority in
/// STATE_DIR/pki and a join token; `distcc-rs-scheduler token` prints the
/// token. Nodes (--join-token) and clients (`distcc-rs join TOKEN`) enroll
/// once with it, and every connection is then mutually authenticated.
#[derive(Debug, PartialEq, Parser)]
#[command(name = "distcc-rs-scheduler", version)]
struct Args {
    #[command(subcommand)]
    admin: Option<Admin>,

    /// The TOML configuration file to read [default:
    /// /etc/distcc-rs/scheduler.toml, if it exists]. A file named here or by
    /// the variable must exist.
    #[arg(long, value_name = "FILE", env = "DISTCC_RS_CONFIG")]
    config: Option<PathBuf>,

    /// Print the settings in force as a configuration file, each with where
    /// it came from (default, file, env or flag), and exit.
    #[arg(long)]
    print_config: bool,

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
    /// their own --scheduler. Flags replace the configuration file's list.
    #[arg(long = "node", value_name = "HOST:PORT")]
    nodes: Vec<String>,

    /// Neither advertise the scheduler nor look for nodes over mDNS
    /// (multicast DNS, on the listen address's interface, or on every
    /// interface when listening on 0.0.0.0 or [::]). Nodes then
    /// join only through --node or their own --scheduler, and clients need
    /// DISTCC_RS_SCHEDULER.
    #[arg(long = "no-mdns", action = ArgAction::SetFalse)]
    mdns: bool,

    /// Where the scheduler keeps toolchain bundles (in its `toolchains`
    /// subdirectory) and the farm's certificate authority, join token and
    /// member records (in `pki`; back it up). Created if missing. systemd's StateDirectory= sets
    /// $STATE_DIRECTORY (the first of its directories is taken).
    #[arg(
        long,
        value_name = "DIR",
        env = "STATE_DIRECTORY",
        default_value = DEFAULT_STATE_DIR,
        global = true
    )]
    state_dir: PathBuf,

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

/// Farm membership commands. They work on the files in STATE_DIR/pki, and
/// a running scheduler picks up their changes within a second, so they need
/// no restart. Run them as the user the scheduler runs as.
#[derive(Debug, PartialEq, clap::Subcommand)]
enum Admin {
    /// Print the farm's join token (creating the farm CA if there is none
    /// yet). Anyone with the token can enroll a node or a client, so share
    /// it like a password.
    Token {
        /// Replace the token with a new one first. The old token stops
        /// working for new enrollments; members already enrolled keep
        /// their certificates.
        #[arg(long)]
        rotate: bool,
    },
    /// List every certificate the farm CA issued, with its serial, role,
    /// name, fingerprint and whether it was revoked.
    Certs {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke certificates: the scheduler refuses them from then on and
    /// closes their open connections. WHO is a serial number, a member name
    /// (every certificate issued to it) or a fingerprint prefix of at least
    /// 8 hex digits, as `certs` shows them.
    Revoke {
        #[arg(value_name = "WHO")]
        who: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let env = |name: &str| std::env::var(name).ok();
    let (args, layered) = match parse_args(std::env::args_os(), &env, Path::new(DEFAULT_CONFIG)) {
        Ok(parsed) => parsed,
        Err(e) => e.exit("distcc-rs-scheduler"),
    };
    if args.print_config {
        print!("{}", layered.to_toml(&[]));
        return ExitCode::SUCCESS;
    }
    if let Some(admin) = &args.admin {
        return match admin::run(admin, &args.state_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "distcc-rs-scheduler: error: {}",
                    distcc_rs_net::one_line(e.as_ref())
                );
                ExitCode::FAILURE
            }
        };
    }
    init_logging(args.log_format);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "distcc-rs-scheduler: error: {}",
                distcc_rs_net::one_line(e.as_ref())
            );
            ExitCode::FAILURE
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
    // systemd's StateDirectory= may list several directories joined with
    // ':'; the scheduler keeps its state in the first.
    let env = |name: &str| {
        let value = env(name)?;
        match name {
            "STATE_DIRECTORY" => value.split(':').next().map(str::to_owned),
            _ => Some(value),
        }
    };
    let layered = parse_layered(Args::command(), argv, &env, default_config)?;
    let args = Args::from_arg_matches(layered.matches())?;
    Ok((args, layered))
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Stdout carries the one "listening on" line that scripts and tests wait
    // for, so logs must never go there.
    // Colour codes only for a person at a terminal: in a journal or a log
    // file they are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
    let state_dir = args.state_dir;
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;

    let options = EndpointOptions::default();
    let opened = Security::open(&state_dir, &host_name())
        .context("cannot open the farm's certificate authority")?;
    if opened.created {
        let token = opened
            .security
            .authority
            .token()
            .context("cannot read the new join token")?;
        tracing::info!(
            dir = %opened.security.authority.dir().display(),
            "created the farm's certificate authority; join token: {token} (nodes: \
             distcc-rs-node --join-token TOKEN, clients: distcc-rs join TOKEN; \
             `distcc-rs-scheduler token` prints it again)"
        );
    }
    let endpoint = bind_server(args.listen, &opened.identity, &opened.auth, &options)
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
        mdns: args.mdns,
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

    distcc_rs_scheduler::run(endpoint, config, opened.security, shutdown)
        .await
        .context("the scheduler failed")?;
    tracing::info!("stopped");
    Ok(())
}

mod admin {
    //! The membership subcommands: thin wrappers over the authority.

    use std::path::Path;

    use anyhow::Context;
    use distcc_rs_scheduler::authority::{Authority, Member};

    use super::Admin;

    pub(super) fn run(admin: &Admin, state_dir: &Path) -> anyhow::Result<()> {
        // Only `token` may create a farm: listing or revoking in a
        // directory without one is a wrong --state-dir, not a new farm.
        if !matches!(admin, Admin::Token { .. }) && !state_dir.join("pki").join("ca.crt").exists() {
            anyhow::bail!(
                "there is no farm CA in {}: is this the scheduler's --state-dir? (the scheduler \
                 creates the CA on its first start)",
                state_dir.join("pki").display()
            );
        }
        let (authority, created) = Authority::open_or_create(state_dir).with_context(|| {
            format!(
                "cannot open the farm CA in {} (run this as the user the scheduler runs as, \
                 with the same --state-dir)",
                state_dir.display()
            )
        })?;
        if created {
            eprintln!("created a new farm CA in {}", authority.dir().display());
        }
        match admin {
            Admin::Token { rotate } => {
                let token = if *rotate {
                    let token = authority.rotate_token()?;
                    eprintln!("the previous join token no longer enrolls new members");
                    token
                } else {
                    authority.token()?
                };
                println!("{token}");
                eprintln!(
                    "join a node:   distcc-rs-node --join-token {token} ...\n\
                     join a client: distcc-rs join {token}"
                );
            }
            Admin::Certs { json } => {
                let members = authority.list()?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&members)?);
                } else {
                    print!("{}", table(&members));
                }
            }
            Admin::Revoke { who } => {
                let revoked = authority.revoke(who)?;
                if revoked.is_empty() {
                    println!("nothing to revoke: {who:?} is already revoked (or is the scheduler)");
                }
                for m in &revoked {
                    println!(
                        "revoked serial {} ({} {}, {})",
                        m.serial,
                        m.role,
                        m.name,
                        &m.fingerprint[..16]
                    );
                }
                if !revoked.is_empty() {
                    eprintln!(
                        "a running scheduler refuses these certificates within a second and \
                         closes their connections"
                    );
                }
            }
        }
        Ok(())
    }

    /// The `certs` table.
    pub(super) fn table(members: &[Member]) -> String {
        use std::fmt::Write;
        let mut out = format!(
            "{:>6}  {:<9}  {:<24}  {:<16}  {}\n",
            "SERIAL", "ROLE", "NAME", "FINGERPRINT", "STATUS"
        );
        for m in members {
            let status = match m.revoked {
                Some(at) => format!("revoked ({})", ago(at)),
                None => format!("valid, issued {}", ago(m.issued)),
            };
            let _ = writeln!(
                out,
                "{:>6}  {:<9}  {:<24}  {:<16}  {status}",
                m.serial,
                m.role.to_string(),
                m.name,
                &m.fingerprint[..16.min(m.fingerprint.len())]
            );
        }
        out
    }

    fn ago(unix: u64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let secs = now.saturating_sub(unix);
        match secs {
            0..120 => format!("{secs} s ago"),
            120..7200 => format!("{} min ago", secs / 60),
            7200..172_800 => format!("{} h ago", secs / 3600),
            _ => format!("{} days ago", secs / 86_400),
        }
    }
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
    fn parse_layered_args(
        argv: &[&str],
        vars: &[(&str, &str)],
    ) -> Result<(Args, Layered), ConfigError> {
        let argv = std::iter::once("distcc-rs-scheduler").chain(argv.iter().copied());
        parse_args(argv, &env(vars), Path::new("/nonexistent/scheduler.toml"))
    }

    fn parse(argv: &[&str], vars: &[(&str, &str)]) -> Result<Args, ConfigError> {
        parse_layered_args(argv, vars).map(|(args, _)| args)
    }

    /// A configuration file holding `text`, in a directory that lives as
    /// long as the returned guard.
    fn config_file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scheduler.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path.to_str().unwrap().to_owned())
    }

    #[test]
    fn the_store_limit_defaults_to_twenty_gibibytes() {
        let args = parse(&[], &[]).unwrap();
        assert_eq!(args.max_store_size, 20 << 30);
        assert_eq!(
            args.max_store_size,
            distcc_rs_scheduler::store::DEFAULT_MAX_STORE_SIZE
        );
        let args = parse(&["--max-store-size", "500M"], &[]).unwrap();
        assert_eq!(args.max_store_size, 500 << 20);
    }

    #[test]
    fn configuration_file_then_environment_then_flags() {
        let (_dir, path) = config_file(
            "netname = \"file\"\nnodes = [\"10.0.0.5:7701\", \"b:7701\"]\nmdns = false\n\
             state_dir = \"/file\"\nmax_store_size = \"1GiB\"\nqueue_timeout = 0.5\n",
        );
        let file = parse(&["--config", &path], &[]).unwrap();
        assert_eq!(file.netname, "file");
        assert_eq!(file.nodes, ["10.0.0.5:7701", "b:7701"]);
        assert!(!file.mdns);
        assert_eq!(file.state_dir, PathBuf::from("/file"));
        assert_eq!(file.max_store_size, 1 << 30);
        assert_eq!(file.queue_timeout, Duration::from_millis(500));

        // systemd's StateDirectory= is an environment variable, so it
        // overrides the file; of several directories the first is taken.
        let vars = [
            ("DISTCC_RS_NETNAME", "env"),
            ("STATE_DIRECTORY", "/env:/other"),
        ];
        let env = parse(&["--config", &path], &vars).unwrap();
        assert_eq!(env.netname, "env");
        assert_eq!(env.state_dir, PathBuf::from("/env"));
        assert_eq!(env.nodes, ["10.0.0.5:7701", "b:7701"]);

        let flags = parse(
            &[
                "--config",
                &path,
                "--netname",
                "flag",
                "--state-dir",
                "/flag",
                "--node",
                "c:7701",
                "--queue-timeout",
                "3",
            ],
            &vars,
        )
        .unwrap();
        assert_eq!(flags.netname, "flag");
        assert_eq!(flags.state_dir, PathBuf::from("/flag"));
        assert_eq!(flags.nodes, ["c:7701"]);
        assert_eq!(flags.queue_timeout, Duration::from_secs(3));
        assert_eq!(flags.max_store_size, 1 << 30);

        // Without a flag, variable or file, the state directory is the
        // built-in one.
        let default = parse(&[], &[]).unwrap();
        assert_eq!(default.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    }

    #[test]
    fn configuration_mistakes_name_the_file_and_the_key() {
        let (_dir, path) = config_file("node = [\"a:1\"]\n");
        let err = parse(&["--config", &path], &[]).unwrap_err().to_string();
        assert!(
            err.contains(&path) && err.contains("unknown key `node`"),
            "{err}"
        );
        assert!(
            err.contains("listen, netname, nodes, mdns, state_dir"),
            "{err}"
        );

        let (_dir, path) = config_file("nodes = \"a:1\"\n");
        let err = parse(&["--config", &path], &[]).unwrap_err().to_string();
        assert!(
            err.contains("`nodes` must be an array of strings, not string"),
            "{err}"
        );

        let (_dir, path) = config_file("queue_timeout = \"-1\"\n");
        let err = parse(&["--config", &path], &[]).unwrap_err().to_string();
        assert!(
            err.contains("`queue_timeout = \"-1\"` is not valid"),
            "{err}"
        );
    }

    #[test]
    fn printed_settings_read_back_as_the_same_settings() {
        let (_dir, path) = config_file("nodes = [\"a:7701\"]\nmax_bundle_size = 1000\n");
        let (args, layered) = parse_layered_args(
            &["--config", &path, "--no-mdns", "--queue-timeout", "0.25"],
            &[("STATE_DIRECTORY", "/srv/state")],
        )
        .unwrap();
        let printed = layered.to_toml(&[]);
        assert!(
            printed.contains(&format!("\nnodes = [\"a:7701\"]  # file {path}\n")),
            "{printed}"
        );
        assert!(
            printed.contains("\nstate_dir = \"/srv/state\"  # env STATE_DIRECTORY\n"),
            "{printed}"
        );
        assert!(
            printed.contains("\nqueue_timeout = 0.25  # flag --queue-timeout\n"),
            "{printed}"
        );
        assert!(
            printed.contains("\nmax_store_size = \"20GiB\"  # default\n"),
            "{printed}"
        );

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
            distcc_rs_net::config_file::check_generated_block(&doc, "scheduler", &generated, update)
        {
            panic!("{e}");
        }
    }
}
