//! `distcc-rs-pack`: create, inspect, verify and unpack toolchain bundles by
//! hand, clean the client's bundle cache, and push, list and remove the
//! bundles on a farm's scheduler. The client and the node use the library
//! directly; this binary is for people preparing, debugging or pre-seeding
//! a farm.

mod farm;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use distcc_rs_net::config_file::client::{self, ClientFile};
use distcc_rs_net::credentials::{Credentials, CredentialsError, Enrollment};
use distcc_rs_pack::{BundleManifest, EntryState, PackOptions, PackProgress};
use distcc_rs_proto::discovery::{DEFAULT_FARM, validate_farm_name};
use distcc_rs_proto::message::RemoveResponse;
use distcc_rs_proto::{JoinToken, PeerRole, ToolchainId};

use crate::farm::{Farm, LocalBundle, Pushed};

/// Builds, inspects, verifies and unpacks hermetic rustc toolchain bundles.
///
/// A bundle is a reproducible .tar.zst holding rustc, its driver and LLVM
/// libraries, the standard library of the host and of any extra targets,
/// and the system libraries and dynamic loader they need, so that a machine
/// without Rust can run it. Bundles are named by the BLAKE3 hash of their
/// uncompressed tar stream (`<id>.tar.zst`), and packing the same toolchain
/// twice gives the same bytes.
///
/// The client (`distcc-rs`) packs its toolchain by itself on first use,
/// caches it and uploads it to the farm's scheduler; this tool is for
/// packing by hand, checking a bundle before it is trusted, cleaning that
/// cache, and managing the bundles the scheduler stores (`push`, `list`,
/// `rm`).
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pack a local toolchain into <OUT>/<ID>.tar.zst.
    ///
    /// Takes bin/rustc, librustc_driver, libLLVM, the whole
    /// lib/rustlib/<target>/lib of the host and of each --target, and the
    /// shared libraries `ldd` reports for rustc and its libraries (with the
    /// dynamic loader), so the bundle runs on a node without Rust and with
    /// another glibc. The linker, docs and other tools stay out: linking
    /// happens on the client. Progress goes to stderr, the summary to
    /// stdout.
    Create {
        /// The rustc whose toolchain to pack; rustup proxies are resolved by
        /// asking rustc for its sysroot.
        #[arg(long, env = "RUSTC", default_value = "rustc")]
        rustc: PathBuf,
        /// Directory to write the bundle into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Also bundle the standard library of this target, so that nodes
        /// can compile library crates for it (repeat for several). The
        /// host's is always bundled. The target must be installed:
        /// `rustup target add <TARGET>`.
        #[arg(long = "target", value_name = "TARGET")]
        targets: Vec<String>,
        /// zstd compression level, 1-22. The default, 3, packs a toolchain
        /// in seconds; 19 is about 20% smaller and takes minutes. The level
        /// changes the file's bytes, never the bundle id, which names the
        /// uncompressed content.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=22))]
        level: i32,
        /// Compression threads; 0 uses every core. The output bytes do not
        /// depend on this.
        #[arg(long, default_value_t = 0)]
        threads: u32,
    },
    /// Check a bundle's hash and files and print a summary of its manifest.
    ///
    /// The expected id is the file name without `.tar.zst`. If the name is
    /// not an id, the computed id is printed instead. Nothing is unpacked or
    /// run; `verify` does that.
    Inspect {
        /// The bundle file.
        bundle: PathBuf,
    },
    /// Check a bundle completely and run its rustc on a tiny crate.
    ///
    /// Checks the bundle's hash against its id, every entry path, and every
    /// file's size, mode and BLAKE3 digest against the manifest, naming the
    /// file at fault; then unpacks it into a scratch directory and runs the
    /// bundled rustc there (`rustc -vV`, then a small library crate for
    /// each target the bundle holds) with an empty environment, inside a
    /// bubblewrap sandbox: fresh namespaces and no network, only the
    /// bundle (read-only) and a work directory visible. Exits non-zero on
    /// any failure. Nothing is left behind.
    Verify {
        /// The bundle file.
        bundle: PathBuf,
        /// Expected bundle id; defaults to the file name without `.tar.zst`,
        /// and to the computed id when the name is not an id.
        #[arg(long)]
        id: Option<ToolchainId>,
        /// Only check the hash and files; do not unpack or run anything.
        #[arg(long)]
        no_run: bool,
        /// Run the bundled rustc without a sandbox, for machines without
        /// bubblewrap. Only do this with bundles you trust.
        #[arg(long, conflicts_with = "no_run")]
        no_sandbox: bool,
        /// The bubblewrap binary.
        #[arg(long, default_value = "bwrap")]
        bwrap: PathBuf,
        /// Where to unpack the bundle for the run (about three times the
        /// bundle's size); removed afterwards.
        #[arg(long, value_name = "DIR")]
        scratch: Option<PathBuf>,
    },
    /// Verify a bundle and unpack it into a new directory.
    ///
    /// The checks are those of `verify --no-run`; nothing appears at DEST
    /// unless all pass.
    Unpack {
        /// The bundle file.
        bundle: PathBuf,
        /// Directory to create; it must not exist yet.
        dest: PathBuf,
        /// Expected bundle id; defaults to the file name without `.tar.zst`.
        #[arg(long)]
        id: Option<ToolchainId>,
    },
    /// List the client's bundle cache and whether each entry is current.
    ///
    /// An entry is current while the toolchain it was packed from is
    /// installed and unchanged and its bundle is present.
    Cache {
        #[command(flatten)]
        cache: CacheDir,
    },
    /// Remove what the client's bundle cache no longer needs.
    ///
    /// Removes index entries whose toolchain is gone or changed (e.g. by
    /// `rustup update`), whose bundle is missing or that cannot be read;
    /// bundles that no current entry uses; and temporary files of killed
    /// packers. Current entries and their bundles stay. Holds the cache's
    /// pack lock, so it waits for, and never races, a client that is
    /// packing.
    Gc {
        #[command(flatten)]
        cache: CacheDir,
        /// Only print what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Upload a toolchain bundle to the farm's scheduler.
    ///
    /// Given a BUNDLE file, uploads it. Otherwise uploads the bundle of
    /// --rustc from the client's bundle cache, packing it first if the
    /// cache lacks it: the very bundle the client would upload on first use,
    /// so pushing ahead spares the first build that wait. Does nothing when
    /// the scheduler already stores the bundle. The scheduler verifies the
    /// bundle before storing it, and evicts its least recently used bundles
    /// if the upload would not fit (its --max-store-size). A progress bar
    /// goes to stderr when it is a terminal; the result goes to stdout.
    Push {
        /// A bundle file, as `create` writes it (<ID>.tar.zst). If its name
        /// is not an id, the id is computed first.
        #[arg(conflicts_with_all = ["rustc", "targets"])]
        bundle: Option<PathBuf>,
        /// The rustc whose toolchain to push [default: $RUSTC, else rustc].
        #[arg(long)]
        rustc: Option<PathBuf>,
        /// Also bundle the standard library of this target (repeat for
        /// several), as the client does for jobs that cross-compile to it.
        #[arg(long = "target", value_name = "TARGET")]
        targets: Vec<String>,
        #[command(flatten)]
        cache: CacheDir,
        #[command(flatten)]
        farm: FarmArgs,
    },
    /// List the bundles the farm's scheduler stores.
    ///
    /// One line per bundle: the start of its id, its rustc release, the
    /// targets it holds the standard library of, its compressed size, how
    /// long ago it was stored and a job of it was last placed, how many
    /// connected nodes hold it unpacked, and its jobs in flight. The
    /// scheduler evicts the least recently used bundle first when its store
    /// is full.
    List {
        /// Print JSON instead of a table: full ids, and ages in
        /// milliseconds.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        farm: FarmArgs,
    },
    /// Remove a bundle from the farm's scheduler.
    ///
    /// The scheduler refuses while jobs of the bundle are in flight or
    /// nodes are downloading it, unless --force is given. Nodes keep their
    /// unpacked copies until their own cache evicts them; the next client
    /// that needs the toolchain uploads it again.
    Rm {
        /// The bundle's id, or a prefix of it that names it alone (as
        /// `list` shows them).
        id: String,
        /// Remove it even while it is in use: jobs of it whose node has not
        /// unpacked it yet fail over to other nodes or to local compiles.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        farm: FarmArgs,
    },
}

#[derive(clap::Args)]
struct FarmArgs {
    /// The scheduler's address, HOST:PORT. Defaults to
    /// $DISTCC_RS_SCHEDULER, else `scheduler` in the client's configuration
    /// file, else the scheduler of the farm found over mDNS (unless mDNS is
    /// off by DISTCC_RS_MDNS or `mdns`), as the client finds it.
    #[arg(long, value_name = "HOST:PORT")]
    scheduler: Option<String>,
    /// The farm whose scheduler to look for over mDNS. Defaults to
    /// $DISTCC_RS_NETNAME, else `netname` in the client's configuration
    /// file, else `default`.
    #[arg(long, value_name = "NAME")]
    netname: Option<String>,
    /// The farm's join token, to enroll with when no client certificate is
    /// saved. Defaults to $DISTCC_RS_JOIN_TOKEN, else `join_token` in the
    /// client's configuration file. The certificate is the client's own
    /// (the directory $DISTCC_RS_IDENTITY_DIR or `identity_dir` names, else
    /// ~/.config/distcc-rs/identity/<netname>), so after `distcc-rs join`
    /// no token is needed.
    #[arg(long, value_name = "TOKEN")]
    join_token: Option<String>,
}

impl FarmArgs {
    /// Finds the scheduler and connects to it with the client's
    /// credentials, enrolling first if there are none and a token is given.
    async fn connect(&self) -> Result<Farm> {
        let var = client_settings()?;
        let farm = self
            .netname
            .clone()
            .or_else(|| var("DISTCC_RS_NETNAME"))
            .unwrap_or_else(|| DEFAULT_FARM.to_owned());
        validate_farm_name(&farm).with_context(|| format!("farm name {farm:?}"))?;
        let membership = membership(self.join_token.as_deref(), &farm, &var)?;
        // Without credentials or a token there is nothing to ask the
        // scheduler, so say so before looking for it.
        let saved = membership.saved()?;
        let source = farm::scheduler_source(self.scheduler.as_deref(), &farm, &var);
        let addr = farm::locate(&source).await?;
        let credentials = match saved {
            Some(credentials) => credentials,
            None => {
                let credentials = membership.enroll(addr).await?;
                eprintln!(
                    "distcc-rs-pack: enrolled in the farm as client {:?} (certificate {}, saved \
                     in {})",
                    membership.name,
                    credentials.fingerprint().short(),
                    membership.dir.display()
                );
                credentials
            }
        };
        Farm::connect(addr, &credentials).await
    }
}

/// The client's credentials as `distcc-rs-pack` finds them: the client's
/// identity directory and join token (the flag, else the client's
/// settings), enrolling as a client under the client's name.
#[derive(Debug)]
struct Membership {
    dir: PathBuf,
    token: Option<JoinToken>,
    name: String,
}

/// The membership for farm `farm`, from `--join-token` (`flag`) and the
/// client's settings `var`.
fn membership(
    flag: Option<&str>,
    farm: &str,
    var: &impl Fn(&str) -> Option<String>,
) -> Result<Membership> {
    let token = match (flag, var("DISTCC_RS_JOIN_TOKEN")) {
        (Some(text), _) => Some(text.parse::<JoinToken>().context("--join-token")?),
        // The value is a secret: the error names where it came from only.
        (None, Some(text)) => Some(text.parse::<JoinToken>().context(
            "DISTCC_RS_JOIN_TOKEN (or `join_token` in the client's configuration file)",
        )?),
        (None, None) => None,
    };
    let dir = match var("DISTCC_RS_IDENTITY_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => client::default_identity_dir(var, farm).context(
            "no directory for the client's farm certificate: set DISTCC_RS_IDENTITY_DIR \
             (neither XDG_CONFIG_HOME nor HOME is set)",
        )?,
    };
    Ok(Membership {
        dir,
        token,
        name: client::member_name(var),
    })
}

impl Membership {
    fn enrollment(&self) -> Enrollment<'_> {
        Enrollment {
            dir: &self.dir,
            role: PeerRole::Client,
            name: &self.name,
            token: self.token.as_ref(),
        }
    }

    /// The saved credentials; `None` when a token is given to enroll with;
    /// an error saying how to enroll when there is neither.
    fn saved(&self) -> Result<Option<Credentials>> {
        match self.enrollment().saved()? {
            Some(credentials) => Ok(Some(credentials)),
            None if self.token.is_some() => Ok(None),
            None => Err(anyhow!(
                "{}; this tool also takes --join-token TOKEN",
                CredentialsError::NotEnrolled {
                    dir: self.dir.clone()
                }
            )),
        }
    }

    /// Enrolls with the scheduler at `addr` (once, should several run at
    /// the same time) and saves the credentials.
    async fn enroll(&self, addr: std::net::SocketAddr) -> Result<Credentials> {
        Ok(self
            .enrollment()
            .load_or_enroll(|| async move { Some(addr) })
            .await?)
    }
}

#[derive(clap::Args)]
struct CacheDir {
    /// The client's cache directory; bundles are in its `toolchains`
    /// subdirectory. Defaults as the client's does: $DISTCC_RS_CACHE_DIR,
    /// else `cache_dir` in the client's configuration file, else
    /// $XDG_CACHE_HOME/distcc-rs, else ~/.cache/distcc-rs (empty variables
    /// count as unset).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

impl CacheDir {
    /// The directory `ensure_cached` is given: `<cache dir>/toolchains`.
    fn bundle_cache(&self) -> Result<PathBuf> {
        let dir = match &self.cache_dir {
            Some(dir) => dir.clone(),
            None => default_cache_dir()?,
        };
        Ok(dir.join("toolchains"))
    }
}

/// The client's cache directory, by the client's rule (client/src/config.rs).
fn default_cache_dir() -> Result<PathBuf> {
    let var = client_settings()?;
    Ok(var("DISTCC_RS_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| var("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("distcc-rs")))
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache/distcc-rs")))
        .unwrap_or_else(|| std::env::temp_dir().join("distcc-rs")))
}

/// Reads the client's settings as the client does: each environment
/// variable (empty counts as unset), else the key of the client's
/// configuration file that stands for it. Unlike the client, which then
/// compiles locally, this refuses a broken file: a person is there to fix
/// it.
fn client_settings() -> Result<impl Fn(&str) -> Option<String>> {
    client_settings_from(|name| std::env::var(name).ok())
}

/// [`client_settings`] with the environment read through `env`.
fn client_settings_from(
    env: impl Fn(&str) -> Option<String>,
) -> Result<impl Fn(&str) -> Option<String>> {
    let env = move |name: &str| env(name).filter(|v| !v.is_empty());
    let file = ClientFile::load(&env);
    if let Some(problem) = file.as_ref().and_then(|f| f.problems.first()) {
        bail!("{problem}");
    }
    Ok(move |name: &str| env(name).or_else(|| file.as_ref()?.get(name).map(str::to_owned)))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "distcc-rs-pack: error: {}",
                distcc_rs_net::one_line(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Create {
            rustc,
            out,
            targets,
            level,
            threads,
        } => create(
            &rustc,
            &out,
            PackOptions {
                level,
                threads,
                targets,
            },
        ),
        Command::Inspect { bundle } => inspect(&bundle),
        Command::Verify {
            bundle,
            id,
            no_run,
            no_sandbox,
            bwrap,
            scratch,
        } => {
            let sandbox = (!no_sandbox).then_some(bwrap);
            verify(&bundle, id, no_run, sandbox, scratch)
        }
        Command::Unpack { bundle, dest, id } => unpack(&bundle, &dest, id),
        Command::Cache { cache } => list_cache(&cache.bundle_cache()?),
        Command::Gc { cache, dry_run } => gc(&cache.bundle_cache()?, dry_run),
        Command::Push {
            bundle,
            rustc,
            targets,
            cache,
            farm,
        } => {
            let local = match bundle {
                Some(path) => local_bundle(&path)?,
                None => cached_bundle(rustc, targets, &cache)?,
            };
            on_farm(push(&farm, &local))
        }
        Command::List { json, farm } => on_farm(list(&farm, json)),
        Command::Rm { id, force, farm } => on_farm(remove(&farm, &id, force)),
    }
}

/// Runs one farm command on a runtime of its own.
fn on_farm(command: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(command)
}

/// A bundle file to push: its id from its name, else computed.
fn local_bundle(path: &Path) -> Result<LocalBundle> {
    let size = fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let id = match id_from_name(path) {
        // The scheduler checks the content against the id anyway.
        Some(id) => id,
        None => {
            eprintln!("computing the id of {}", path.display());
            distcc_rs_pack::identify_file(path)
                .with_context(|| format!("reading {}", path.display()))?
                .1
        }
    };
    Ok(LocalBundle {
        id,
        path: path.to_owned(),
        size,
    })
}

/// The bundle the client would use for `rustc` and `targets`, from its
/// cache, packed now if the cache lacks it.
fn cached_bundle(
    rustc: Option<PathBuf>,
    targets: Vec<String>,
    cache: &CacheDir,
) -> Result<LocalBundle> {
    let rustc = rustc
        .or_else(|| {
            std::env::var_os("RUSTC")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("rustc"));
    let dir = cache.bundle_cache()?;
    let started = Instant::now();
    let opts = PackOptions {
        targets,
        ..PackOptions::default()
    };
    let bundle = distcc_rs_pack::ensure_cached(&dir, &rustc, &opts).with_context(|| {
        format!(
            "packing the toolchain of {} into the cache {}",
            rustc.display(),
            dir.display()
        )
    })?;
    // `ensure_cached` does not say whether it packed, so the time tells.
    eprintln!(
        "bundle of {} ({}) ready in {:.2} s (client cache {})",
        bundle.manifest.version_line(),
        bundle.manifest.targets().join(" "),
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(LocalBundle {
        id: bundle.id,
        path: bundle.path,
        size: bundle.compressed_size,
    })
}

async fn push(args: &FarmArgs, bundle: &LocalBundle) -> Result<()> {
    let farm = args.connect().await?;
    let result = farm.push(bundle).await;
    let addr = farm.addr;
    farm.close().await;
    println!("id:        {}", bundle.id);
    println!("scheduler: {addr}");
    match result? {
        Pushed::AlreadyStored => println!("pushed:    no, the scheduler already stores it"),
        Pushed::Uploaded { elapsed } => println!(
            "pushed:    {} in {:.2} s ({}/s)",
            mib(bundle.size),
            elapsed.as_secs_f64(),
            mib((bundle.size as f64 / elapsed.as_secs_f64().max(1e-3)) as u64)
        ),
    }
    Ok(())
}

async fn list(args: &FarmArgs, json: bool) -> Result<()> {
    let farm = args.connect().await?;
    let list = farm.list().await;
    let addr = farm.addr;
    farm.close().await;
    let list = list?;
    if json {
        let doc = farm::list_json(addr, &list);
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("JSON values always serialize")
        );
    } else {
        print!("{}", farm::render_list(addr, &list));
    }
    Ok(())
}

async fn remove(args: &FarmArgs, prefix: &str, force: bool) -> Result<()> {
    let farm = args.connect().await?;
    let result = remove_on(&farm, prefix, force).await;
    farm.close().await;
    result
}

async fn remove_on(farm: &Farm, prefix: &str, force: bool) -> Result<()> {
    let list = farm.list().await?;
    let ids: Vec<ToolchainId> = list.toolchains.iter().map(|t| t.id).collect();
    let id = farm::match_prefix(&ids, prefix)?;
    match farm.remove(id, force).await? {
        RemoveResponse::Removed { freed } => {
            println!("removed:   {id} ({} freed)", mib(freed));
            Ok(())
        }
        RemoveResponse::NotFound => bail!("the scheduler no longer stores {id}"),
        RemoveResponse::InUse { jobs, downloads } => bail!(
            "bundle {id} is in use ({jobs} job(s) in flight, {downloads} node download(s)); \
             try again when they are done, or pass --force to remove it anyway"
        ),
        RemoveResponse::Failed(e) => {
            Err(anyhow!(e).context(format!("the scheduler could not remove {id}")))
        }
    }
}

fn create(rustc: &Path, out: &Path, opts: PackOptions) -> Result<()> {
    let started = Instant::now();
    let info = distcc_rs_pack::detect(rustc)
        .with_context(|| format!("asking {} about its toolchain", rustc.display()))?;
    let version = info.version_verbose.lines().next().unwrap_or_default();
    eprintln!("packing {version} from {}", info.sysroot.display());
    let threads = opts.effective_threads();
    let mut hashing_secs = 0.0;
    let mut progress = |stage: PackProgress| match stage {
        PackProgress::Selected {
            files,
            bytes,
            targets,
        } => {
            eprintln!(
                "selected {files} files, {} (targets: {})",
                mib(bytes),
                targets.join(", ")
            );
        }
        PackProgress::Hashed { elapsed } => {
            hashing_secs = elapsed.as_secs_f64();
            eprintln!(
                "hashed in {hashing_secs:.2} s; compressing with zstd level {} on {threads} threads",
                opts.level
            );
        }
    };
    let bundle = distcc_rs_pack::create_with_progress(&info, &opts, out, &mut progress)
        .with_context(|| format!("packing the toolchain at {}", info.sysroot.display()))?;
    let elapsed = started.elapsed().as_secs_f64();
    let m = &bundle.manifest;
    let raw = m.total_size();
    println!("id:         {}", bundle.id);
    println!("path:       {}", bundle.path.display());
    println!("toolchain:  {}", m.version_line());
    println!("commit:     {}", m.commit_hash().unwrap_or("unknown"));
    println!("host:       {}", m.host);
    println!("targets:    {}", m.targets().join(" "));
    println!("files:      {}", m.files.len());
    println!("raw size:   {} ({raw} bytes)", mib(raw));
    println!(
        "compressed: {} ({} bytes, {:.1}% of raw)",
        mib(bundle.compressed_size),
        bundle.compressed_size,
        100.0 * bundle.compressed_size as f64 / raw.max(1) as f64
    );
    println!("level:      {}", opts.level);
    println!(
        "time:       {elapsed:.2} s (hashing {hashing_secs:.2} s, compressing {:.2} s)",
        (elapsed - hashing_secs).max(0.0)
    );
    Ok(())
}

fn inspect(path: &Path) -> Result<()> {
    let v = distcc_rs_pack::verify_contents(path, id_from_name(path))
        .with_context(|| format!("verifying {}", path.display()))?;
    print_summary(&v.manifest);
    let how = if id_from_name(path).is_some() {
        "verified"
    } else {
        "computed; the file name is not an id"
    };
    println!("id:        {} ({how})", v.id);
    Ok(())
}

fn print_summary(m: &BundleManifest) {
    println!("toolchain: {}", m.version_line());
    println!("release:   {}", m.release().unwrap_or("unknown"));
    println!("commit:    {}", m.commit_hash().unwrap_or("unknown"));
    println!("host:      {}", m.host);
    println!("targets:   {}", m.targets().join(" "));
    println!("format:    {}", m.format);
    println!(
        "start:     {} --library-path {} {}",
        if m.interpreter.is_empty() {
            "(none)"
        } else {
            &m.interpreter
        },
        m.library_path.join(":"),
        m.rustc
    );
    println!("files:     {}", m.files.len());
    println!("size:      {}", mib(m.total_size()));
}

fn verify(
    bundle: &Path,
    id: Option<ToolchainId>,
    no_run: bool,
    bwrap: Option<PathBuf>,
    scratch: Option<PathBuf>,
) -> Result<()> {
    let context = || format!("verifying {}", bundle.display());
    let expected = id.or_else(|| id_from_name(bundle));
    let started = Instant::now();
    if no_run {
        let v = distcc_rs_pack::verify_contents(bundle, expected).with_context(context)?;
        print_summary(&v.manifest);
        println!(
            "checked:   {} files, {}, and the bundle hash in {:.2} s",
            v.files,
            mib(v.bytes),
            started.elapsed().as_secs_f64()
        );
        println!("id:        {}", v.id);
        return Ok(());
    }
    // Look for the sandbox first, so that a missing one fails at once
    // rather than after a long unpack.
    let bwrap = match bwrap {
        None => None,
        Some(name) => Some(distcc_rs_pack::find_program(&name).ok_or_else(|| {
            anyhow!(
                "bubblewrap ({}) is not installed, so the bundled rustc cannot be run in a \
                 sandbox; install it (e.g. `apt install bubblewrap`), pass --no-sandbox to run \
                 it unsandboxed, or --no-run to only check the files",
                name.display()
            )
        })?),
    };
    // Without an expected id, one pass computes it and a second unpacks
    // against it; with one, the unpack alone checks everything.
    let expected = match expected {
        Some(id) => id,
        None => {
            distcc_rs_pack::verify_contents(bundle, None)
                .with_context(context)?
                .id
        }
    };
    let scratch_dir = scratch.unwrap_or_else(std::env::temp_dir);
    let scratch = tempfile::Builder::new()
        .prefix("distcc-rs-pack-verify-")
        .tempdir_in(&scratch_dir)
        .with_context(|| format!("creating a scratch directory in {}", scratch_dir.display()))?;
    let root = scratch.path().join("toolchain");
    let work = scratch.path().join("work");
    fs::create_dir(&work).with_context(|| format!("creating {}", work.display()))?;
    let file = File::open(bundle).with_context(|| format!("opening {}", bundle.display()))?;
    let manifest = distcc_rs_pack::unpack(file, &root, expected).with_context(context)?;
    print_summary(&manifest);
    println!(
        "checked:   {} files, {}, and the bundle hash; unpacked in {:.2} s",
        manifest.files.len(),
        mib(manifest.total_size()),
        started.elapsed().as_secs_f64()
    );
    println!("id:        {expected}");

    let launcher = match &bwrap {
        Some(bwrap) => distcc_rs_pack::bwrap_launcher(bwrap, &root, &work),
        None => {
            eprintln!("warning: running the bundled rustc without a sandbox (--no-sandbox)");
            Vec::new()
        }
    };
    let report = match distcc_rs_pack::smoke_test(&root, &manifest, &work, &launcher) {
        Ok(report) => report,
        Err(e) => {
            let err =
                anyhow::Error::new(e).context(format!("running the rustc of {}", bundle.display()));
            if bwrap.is_none() {
                return Err(err);
            }
            // bubblewrap failing (no user namespaces in a container, say)
            // looks like rustc failing; say what to try.
            bail!(
                "{} (if bubblewrap itself failed, --no-sandbox runs a bundle you trust without it)",
                distcc_rs_net::one_line(err.as_ref())
            );
        }
    };
    for check in &report.targets {
        println!(
            "compiled:  {} crate for {} in {:.2} s{}",
            if check.std { "a std" } else { "a no_std" },
            check.target,
            check.elapsed.as_secs_f64(),
            if bwrap.is_some() {
                " (sandboxed)"
            } else {
                " (no sandbox)"
            }
        );
    }
    println!(
        "ok:        {} verified in {:.2} s",
        bundle.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn unpack(bundle: &Path, dest: &Path, id: Option<ToolchainId>) -> Result<()> {
    let Some(id) = id.or_else(|| id_from_name(bundle)) else {
        bail!(
            "{} is not named <id>.tar.zst; pass the expected id with --id",
            bundle.display()
        );
    };
    let started = Instant::now();
    let file = File::open(bundle).with_context(|| format!("opening {}", bundle.display()))?;
    let manifest = distcc_rs_pack::unpack(file, dest, id)
        .with_context(|| format!("unpacking {} into {}", bundle.display(), dest.display()))?;
    print_summary(&manifest);
    println!(
        "unpacked:  {} in {:.2} s",
        dest.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn list_cache(dir: &Path) -> Result<()> {
    let listing = distcc_rs_pack::list_cache(dir)
        .with_context(|| format!("listing the bundle cache {}", dir.display()))?;
    println!("cache: {}", dir.display());
    if listing.entries.is_empty() && listing.bundles.is_empty() {
        println!("(empty)");
    }
    for e in &listing.entries {
        let id = e.id.map_or_else(|| "?".to_owned(), |id| id.0.short());
        println!(
            "entry  {id}  {}  [{}]  {}  ({})",
            e.version.as_deref().unwrap_or("?"),
            e.targets.join(" "),
            e.sysroot
                .as_deref()
                .map_or_else(|| "?".into(), |p| p.display().to_string()),
            e.state
        );
    }
    for b in &listing.bundles {
        println!(
            "bundle {}  {}  ({})",
            b.id.0.short(),
            mib(b.file.bytes),
            if b.in_use { "in use" } else { "unused" }
        );
    }
    for t in &listing.temporaries {
        println!("temp   {}  {}", t.path.display(), mib(t.bytes));
    }
    let stale = listing
        .entries
        .iter()
        .filter(|e| e.state != EntryState::Current)
        .count();
    let unused = listing.bundles.iter().filter(|b| !b.in_use).count();
    if stale + unused + listing.temporaries.len() > 0 {
        println!("run `distcc-rs-pack gc` to remove what is not current or in use");
    }
    Ok(())
}

fn gc(dir: &Path, dry_run: bool) -> Result<()> {
    let report = distcc_rs_pack::gc(dir, dry_run)
        .with_context(|| format!("cleaning the bundle cache {}", dir.display()))?;
    let verb = if dry_run { "would remove" } else { "removed" };
    for r in &report.removed {
        println!(
            "{verb} {} ({}): {}",
            r.file.path.display(),
            mib(r.file.bytes),
            r.reason
        );
    }
    println!(
        "{} {} files, {} freed{}; kept {} current entries and {} bundles ({})",
        verb,
        report.removed.len(),
        mib(report.freed),
        if dry_run { " (dry run)" } else { "" },
        report.kept_entries,
        report.kept_bundles,
        mib(report.kept_bytes)
    );
    Ok(())
}

/// The id a bundle file is named by, `<64 hex digits>.tar.zst`.
fn id_from_name(path: &Path) -> Option<ToolchainId> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".tar.zst")?.parse().ok()
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_settings_are_variables_over_the_client_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        fs::write(
            &path,
            "scheduler = \"10.0.0.1:7700\"\ncache_dir = \"/file\"\n",
        )
        .unwrap();
        let path = path.to_str().unwrap().to_owned();
        let env = |pairs: Vec<(&'static str, String)>| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.clone())
            }
        };

        let var = client_settings_from(env(vec![
            ("DISTCC_RS_CONFIG", path.clone()),
            ("DISTCC_RS_SCHEDULER", "10.0.0.2:7700".into()),
            ("DISTCC_RS_CACHE_DIR", String::new()),
            ("HOME", "/home/u".into()),
        ]))
        .unwrap();
        assert_eq!(var("DISTCC_RS_SCHEDULER").as_deref(), Some("10.0.0.2:7700"));
        assert_eq!(var("DISTCC_RS_CACHE_DIR").as_deref(), Some("/file"));
        assert_eq!(var("HOME").as_deref(), Some("/home/u"));
        assert_eq!(var("DISTCC_RS_NETNAME"), None);

        fs::write(&path, "schedular = \"10.0.0.1:7700\"\n").unwrap();
        let broken = client_settings_from(env(vec![("DISTCC_RS_CONFIG", path.clone())]));
        let message = broken.err().unwrap().to_string();
        assert!(message.contains("unknown key `schedular`"), "{message}");
    }

    #[test]
    fn the_client_credentials_are_found_as_the_client_finds_them() {
        const FILE_TOKEN: &str =
            "drs1-0123456789abcdef0123456789abcdef-fedcba9876543210fedcba9876543210";
        const FLAG_TOKEN: &str =
            "drs1-00000000000000000000000000000000-11111111111111111111111111111111";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        fs::write(
            &path,
            format!("join_token = \"{FILE_TOKEN}\"\nidentity_dir = \"/file/id\"\n"),
        )
        .unwrap();
        let path = path.to_str().unwrap().to_owned();
        let env = |pairs: Vec<(&'static str, String)>| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.clone())
            }
        };

        // The file's settings; the flag's token over them.
        let var = client_settings_from(env(vec![("DISTCC_RS_CONFIG", path.clone())])).unwrap();
        let m = membership(None, "lab", &var).unwrap();
        assert_eq!(m.dir, PathBuf::from("/file/id"));
        assert_eq!(m.token, Some(FILE_TOKEN.parse().unwrap()));
        let m = membership(Some(FLAG_TOKEN), "lab", &var).unwrap();
        assert_eq!(m.token, Some(FLAG_TOKEN.parse().unwrap()));

        // Defaults: no token, the farm's directory under the config home.
        let var = client_settings_from(env(vec![
            ("HOME", "/home/u".into()),
            ("USER", "alice".into()),
        ]))
        .unwrap();
        let m = membership(None, "lab", &var).unwrap();
        assert_eq!(
            m.dir,
            PathBuf::from("/home/u/.config/distcc-rs/identity/lab")
        );
        assert_eq!(m.token, None);
        assert!(m.name.starts_with("alice@"), "{}", m.name);
        // Not enrolled, and nothing to enroll with: the error says how.
        let err = m.saved().unwrap_err().to_string();
        assert!(
            err.contains("not enrolled") && err.contains("--join-token"),
            "{err}"
        );

        // A malformed token names where it came from, not what it is.
        let var = client_settings_from(env(vec![("DISTCC_RS_JOIN_TOKEN", "drs1-SECRET".into())]))
            .unwrap();
        let err = format!("{:#}", membership(None, "lab", &var).unwrap_err());
        assert!(
            err.contains("DISTCC_RS_JOIN_TOKEN") && !err.contains("SECRET"),
            "{err}"
        );
        let err = membership(Some("bad"), "lab", &var)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--join-token"), "{err}");
    }
}
