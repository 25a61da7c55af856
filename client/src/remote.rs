//! Compiling one job on the farm.
//!
//! The steps, each of which can fail and send the job back to local rustc:
//! run the dep-info pre-pass to find the inputs, hash them, make sure the
//! toolchain bundle exists (and that the scheduler has it), ask the
//! scheduler for a node, send the node the job and whichever inputs it
//! lacks, then write outputs and forward stderr as they stream back.
//!
//! When the node, or the path to it, fails the job (see
//! [`FarmError::is_node_failure`]), the job is placed again on another node,
//! up to [`MAX_RETRIES`] times, before it goes back to local rustc. A node
//! that keeps the connection open but never finishes fails the job too,
//! once the client's deadline for one attempt ([`ClientConfig::remote_timeout`])
//! has passed.

use std::collections::HashMap;
use std::fs;
use std::io::{Seek, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use distcc_rs_net::credentials::Credentials;
use distcc_rs_net::{EndpointOptions, NetError, open_stream, payload};
use distcc_rs_pack::{Bundle, PackOptions};
use distcc_rs_proto::message::{
    AllocateRequest, AllocateResponse, Assignment, BlobHeader, FileEntry, JobAccept, JobError,
    JobEvent, JobRequest, NodeRequest, RunLocallyReason, SchedulerRequest, UploadResponse,
};
use distcc_rs_proto::{Digest, PeerRole};
use tracing::{debug, info};

use crate::argv::{self, CompileJob};
use crate::config::ClientConfig;
use crate::hashcache::{HashCache, Outcome};
use crate::local::AlreadyShown;
use crate::membership::{is_refusal, refusal};
use crate::outputs::{OutputBudget, OutputLimits, OutputPolicy};
use crate::package::{self, PackageLimits};
use crate::{depinfo, inputs};

/// Inputs travel compressed at a level that costs little CPU on the client.
const BLOB_ZSTD_LEVEL: i32 = 3;

/// After the scheduler failed to answer, wrappers skip the farm for this
/// long instead of each waiting for a connect timeout.
const SCHEDULER_DOWN_BACKOFF: Duration = Duration::from_secs(10);

/// How many other nodes a job is tried on after its first node failed it.
/// Three node failures for one job suggest the job rather than the nodes,
/// and the local compile that follows is certain to be tried.
pub const MAX_RETRIES: usize = 2;

/// How long one farm attempt may take by default, from connecting to the
/// node to its last event: longer than a node's default job timeout
/// (600 s, `--job-timeout`), so a healthy node always reports its own
/// timeout first, and only a node that holds the compile open without
/// answering meets this one.
pub const DEFAULT_REMOTE_TIMEOUT: Duration = Duration::from_secs(900);

/// Why a job did not run on the farm.
#[derive(Debug, thiserror::Error)]
pub enum FarmError {
    #[error("the dep-info pre-pass failed: {0}")]
    Prepass(String),
    #[error("cannot find the job's inputs: {0}")]
    Inputs(String),
    #[error("cannot prepare the toolchain bundle: {0}")]
    Toolchain(String),
    #[error("the scheduler at {addr} is unreachable: {reason}")]
    SchedulerUnreachable { addr: SocketAddr, reason: String },
    /// The scheduler refused our certificate (revoked, of another farm) or
    /// our request, or is not the farm's scheduler: nothing to retry until
    /// the user enrolls again.
    #[error("the farm does not admit us: {0}")]
    NotAdmitted(NetError),
    #[error("the scheduler said to compile locally: {0}")]
    RunLocally(RunLocallyReason),
    #[error("cannot upload the toolchain: {0}")]
    Upload(String),
    #[error("node {node}: {source}")]
    Job { node: String, source: JobError },
    #[error("node {node}: {source}")]
    Net { node: String, source: NetError },
    #[error("node {node} sent a bad output: {reason}")]
    Output { node: String, reason: String },
    #[error("cannot write an output of node {node} here: {reason}")]
    WriteOutput { node: String, reason: String },
    /// The node did not finish the job within the client's deadline for
    /// one attempt (`remote_timeout`), whatever it sent before.
    #[error("node {node} sent nothing conclusive within {secs} s (DISTCC_RS_REMOTE_TIMEOUT)")]
    NoAnswer { node: String, secs: u64 },
    /// Whoever answered at the node's address holds another certificate
    /// than the one the node registered with: the address leads elsewhere
    /// (a stale address, or traffic redirected on the LAN). Nothing was
    /// sent to it.
    #[error("{detail}")]
    WrongNode { node: String, detail: String },
}

impl FarmError {
    /// Whether the failure lies with the node or the path to it, so that
    /// another node may well succeed: a lost or timed-out connection, a
    /// node that refused the ticket, was busy, could not get the toolchain
    /// or start the sandbox, a run the node reported as failed, a damaged
    /// or missing output, and a node that did not finish within the
    /// client's deadline (a healthy node reports its own, shorter, job
    /// timeout first, so one that does not is at fault).
    ///
    /// Not node failures: everything that happens before a node is chosen
    /// or on this machine (it would happen again), a request the node
    /// found invalid (any node would), and a job that ran out of its time
    /// limit (another node would most likely take as long, and the local
    /// compile is the surer way to an answer). A genuine compile error is
    /// no failure at all: it is rustc's answer.
    pub fn is_node_failure(&self) -> bool {
        match self {
            FarmError::Net { .. }
            | FarmError::Output { .. }
            | FarmError::NoAnswer { .. }
            | FarmError::WrongNode { .. } => true,
            FarmError::Job { source, .. } => !matches!(
                source,
                JobError::InvalidRequest(_) | JobError::Timeout { .. }
            ),
            FarmError::Prepass(_)
            | FarmError::Inputs(_)
            | FarmError::Toolchain(_)
            | FarmError::SchedulerUnreachable { .. }
            | FarmError::NotAdmitted(_)
            | FarmError::RunLocally(_)
            | FarmError::Upload(_)
            | FarmError::WriteOutput { .. } => false,
        }
    }
}

/// What a job's farm attempts moved, summed over every node tried, and
/// which nodes failed it, for the event log. Byte counts are the
/// zstd-compressed chunk payloads on the wire, without frame headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Files in the job manifest; `None` until the job had one, in which
    /// case nothing was sent either.
    pub inputs: Option<usize>,
    /// Input blobs sent in full.
    pub blobs_sent: usize,
    pub bytes_sent: u64,
    /// Output files only: diagnostics and stdout are not counted.
    pub bytes_received: u64,
    /// Names of the nodes whose attempt failed, in order.
    pub failed_nodes: Vec<String>,
}

/// A job that did not finish on the farm, with the stderr lines already
/// shown to cargo before it failed (the local rerun must not repeat them).
#[derive(Debug)]
pub struct Failure {
    pub error: FarmError,
    pub forwarded: Vec<Vec<u8>>,
}

impl From<FarmError> for Failure {
    fn from(error: FarmError) -> Self {
        Failure {
            error,
            forwarded: Vec::new(),
        }
    }
}

/// A job the farm ran to the end.
#[derive(Debug)]
pub struct Success {
    pub exit_code: i32,
    pub node: String,
    /// The failure of the previous node when the job was retried, for the
    /// event log.
    pub retried_after: Option<FarmError>,
}

/// Everything about a job that is known before it is placed.
struct Prepared {
    request: JobRequest,
    policy: OutputPolicy,
    /// Files rustc must have written when it exits successfully.
    expected: Vec<PathBuf>,
    paths: HashMap<Digest, PathBuf>,
}

/// Compiles `job` on the farm whose scheduler is at `scheduler`, as the
/// member `credentials` make us. `traffic` receives what was sent and
/// received, whether the job succeeds or not.
pub fn compile(
    rustc: &Path,
    args: &[String],
    job: &CompileJob,
    scheduler: SocketAddr,
    credentials: &Credentials,
    config: &ClientConfig,
    traffic: &mut Traffic,
) -> Result<Success, Failure> {
    if let Some(reason) = recently_down(&config.cache_dir, scheduler) {
        return Err(FarmError::SchedulerUnreachable {
            addr: scheduler,
            reason,
        }
        .into());
    }
    let bundle = toolchain_bundle(rustc, job, &config.cache_dir.join("toolchains"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| FarmError::Upload(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(farm(
        rustc,
        args,
        job,
        scheduler,
        credentials,
        &bundle,
        config,
        traffic,
    ))
}

/// Which bundle a job needs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BundleChoice {
    /// The host-only bundle: the job compiles for the host.
    Host,
    /// A bundle that also holds this target's standard library: the job
    /// cross-compiles to it (an rlib, so no linker is involved), and the
    /// node's rustc finds the library under its sysroot, the bundle.
    WithTarget(String),
    /// The job cannot go to the farm, for this reason.
    Unavailable(String),
}

/// Chooses the bundle for a job whose `--target` is `target` (`None` for
/// the host), given the host of the toolchain and whether the local
/// sysroot has a target's standard library installed (asked only for a
/// target other than the host).
fn choose_bundle(
    target: Option<&str>,
    host: &str,
    installed: impl FnOnce(&str) -> bool,
) -> BundleChoice {
    match target {
        None => BundleChoice::Host,
        Some(t) if t == host => BundleChoice::Host,
        Some(t) if installed(t) => BundleChoice::WithTarget(t.to_owned()),
        Some(t) => BundleChoice::Unavailable(format!(
            "the standard library of target {t} is not installed in the toolchain \
             (rustup target add {t}), so it cannot be bundled"
        )),
    }
}

/// Whether the sysroot holds a target's libraries (`rustup target add`
/// installs them into `lib/rustlib/<target>/lib`): the directory exists
/// and holds at least one rlib. For `no_std` targets that is `core` and
/// `alloc` only, which is all their crates load.
fn target_installed(sysroot: &Path, target: &str) -> bool {
    let dir = sysroot.join("lib/rustlib").join(target).join("lib");
    fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".rlib"))
    })
}

/// The bundle for `job` from the client's cache, packed on first use: the
/// host-only bundle, or for a cross-compile one that adds the target's
/// standard library (a separate cache entry and bundle id; the host-only
/// bundle still serves the build's host crates, build scripts and
/// proc-macros).
fn toolchain_bundle(rustc: &Path, job: &CompileJob, cache: &Path) -> Result<Bundle, FarmError> {
    let toolchain = |e: distcc_rs_pack::PackError| FarmError::Toolchain(e.to_string());
    let host =
        distcc_rs_pack::ensure_cached(cache, rustc, &PackOptions::default()).map_err(toolchain)?;
    let installed = |target: &str| {
        distcc_rs_pack::locate_sysroot(rustc).is_ok_and(|s| target_installed(&s, target))
    };
    match choose_bundle(job.target.as_deref(), &host.manifest.host, installed) {
        BundleChoice::Host => Ok(host),
        BundleChoice::WithTarget(target) => {
            let opts = PackOptions {
                targets: vec![target],
                ..PackOptions::default()
            };
            distcc_rs_pack::ensure_cached(cache, rustc, &opts).map_err(toolchain)
        }
        BundleChoice::Unavailable(reason) => Err(FarmError::Toolchain(reason)),
    }
}

/// Finds, hashes and describes the job's inputs. Runs only once a node is
/// assigned, so a farm that cannot take the job costs nothing here.
fn prepare(
    rustc: &Path,
    args: &[String],
    job: &CompileJob,
    ticket: distcc_rs_proto::Ticket,
    hashes: &HashCache,
) -> Result<Prepared, FarmError> {
    // Cheap: derived from rustc's location when cargo passes the real
    // binary, which it does (rustup resolves its proxy first).
    let sysroot =
        distcc_rs_pack::locate_sysroot(rustc).map_err(|e| FarmError::Toolchain(e.to_string()))?;
    let cwd = std::env::current_dir()
        .map_err(|e| FarmError::Inputs(format!("no working directory: {e}")))?;

    let skip_prepass = inputs::can_skip_prepass(args, job);
    let deps = if skip_prepass {
        depinfo::DepInfo::default()
    } else {
        run_prepass(rustc, args, job)?
    };

    let env = shipped_env();
    let plan = inputs::plan(job, &deps, &cwd, &sysroot, &env)
        .map_err(|e| FarmError::Inputs(e.to_string()))?;

    let mut all_files = plan.files.clone();
    if skip_prepass {
        all_files.extend(
            inputs::dependency_crate_files(job, &cwd)
                .map_err(|e| FarmError::Inputs(format!("listing dependency crates: {e}")))?,
        );
        // What the build script generated, whether or not anything
        // `include!`s it: without dep-info there is no telling which.
        if let Some(out_dir) = env.iter().find(|(k, _)| k == "OUT_DIR").map(|(_, v)| v) {
            all_files.extend(
                package::files(Path::new(out_dir), PackageLimits::default())
                    .map_err(|e| FarmError::Inputs(e.to_string()))?,
            );
        }
    }
    if let Some(dir) = env
        .iter()
        .find(|(k, _)| k == "CARGO_MANIFEST_DIR")
        .map(|(_, v)| v)
    {
        let extra = package::files(Path::new(dir), PackageLimits::default())
            .map_err(|e| FarmError::Inputs(e.to_string()))?;
        all_files.extend(extra);
        all_files.sort();
        all_files.dedup();
    }
    let started = Instant::now();
    let (mut hits, mut hashed_bytes) = (0usize, 0u64);
    let mut files = Vec::with_capacity(all_files.len());
    let mut paths = HashMap::new();
    for path in &all_files {
        let (h, outcome) = hashes
            .hash(path)
            .map_err(|e| FarmError::Inputs(format!("{}: {e}", path.display())))?;
        match outcome {
            Outcome::Hit => hits += 1,
            Outcome::Stored | Outcome::Uncached => hashed_bytes += h.size,
        }
        files.push(FileEntry {
            path: utf8(path)?,
            digest: h.digest,
            size: h.size,
            executable: h.executable,
        });
        paths.insert(h.digest, path.clone());
    }
    debug!(
        crate_name = %job.crate_name,
        files = files.len(),
        hits,
        hashed_bytes,
        ms = format_args!("{:.1}", started.elapsed().as_secs_f64() * 1000.0),
        "inputs hashed"
    );
    let request = JobRequest {
        ticket,
        crate_name: job.crate_name.clone(),
        args: args.to_vec(),
        env,
        cwd: utf8(&cwd)?,
        files,
        dirs: plan
            .dirs
            .iter()
            .map(|d| utf8(d))
            .collect::<Result<_, _>>()?,
        output_dirs: plan
            .output_dirs
            .iter()
            .map(|d| utf8(d))
            .collect::<Result<_, _>>()?,
    };
    Ok(Prepared {
        request,
        policy: OutputPolicy::new(plan.output_dirs),
        expected: crate::outputs::expected(job, &cwd),
        paths,
    })
}

fn utf8(p: &Path) -> Result<String, FarmError> {
    p.to_str()
        .map(str::to_owned)
        .ok_or_else(|| FarmError::Inputs(format!("path {} is not UTF-8", p.display())))
}

/// The environment rustc gets on the node: this process's environment minus
/// what only makes sense here (cargo's jobserver file descriptors, the temp
/// directory, the wrapper's own settings). Proc-macros may read any other
/// variable, so everything else goes.
pub fn shipped_env() -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| !is_local_only(k))
        .collect();
    env.sort();
    env
}

fn is_local_only(name: &str) -> bool {
    matches!(name, "CARGO_MAKEFLAGS" | "MAKEFLAGS" | "MFLAGS" | "TMPDIR")
        || name.starts_with("DISTCC_RS_")
        // The dynamic loader's settings name this machine's files; on the
        // node they would at best print warnings into rustc's stderr.
        || name.starts_with("LD_")
}

fn down_marker(cache_dir: &Path, scheduler: SocketAddr) -> PathBuf {
    cache_dir.join(format!(
        "scheduler-down-{}",
        scheduler.to_string().replace([':', '[', ']'], "_")
    ))
}

pub(crate) fn recently_down(cache_dir: &Path, scheduler: SocketAddr) -> Option<String> {
    let meta = fs::metadata(down_marker(cache_dir, scheduler)).ok()?;
    let age = SystemTime::now()
        .duration_since(meta.modified().ok()?)
        .ok()?;
    (age < SCHEDULER_DOWN_BACKOFF).then(|| format!("it did not answer {} s ago", age.as_secs()))
}

pub(crate) fn mark_down(cache_dir: &Path, scheduler: SocketAddr) {
    let _ = fs::create_dir_all(cache_dir);
    let _ = fs::write(down_marker(cache_dir, scheduler), b"");
}

#[allow(clippy::too_many_arguments)]
async fn farm(
    rustc: &Path,
    args: &[String],
    job: &CompileJob,
    scheduler: SocketAddr,
    credentials: &Credentials,
    bundle: &Bundle,
    config: &ClientConfig,
    traffic: &mut Traffic,
) -> Result<Success, Failure> {
    let opts = EndpointOptions::default();
    let unreachable = |reason: String| FarmError::SchedulerUnreachable {
        addr: scheduler,
        reason,
    };
    let endpoint = distcc_rs_net::bind_client(
        scheduler,
        Some(&credentials.identity),
        &credentials.auth(),
        &opts,
    )
    .map_err(|e| unreachable(e.to_string()))?;
    let conn = match distcc_rs_net::connect(&endpoint, scheduler, PeerRole::Scheduler, &opts).await
    {
        Ok(c) => c,
        // The scheduler answered, so it is not down: our certificate is the
        // trouble (or its is), and the error says what to do.
        Err(e) if is_refusal(&e) => return Err(FarmError::NotAdmitted(e).into()),
        Err(e) => {
            mark_down(&config.cache_dir, scheduler);
            return Err(unreachable(e.to_string()).into());
        }
    };
    let host = host_name();
    let mut request = AllocateRequest {
        toolchain: bundle.id,
        crate_name: job.crate_name.clone(),
        client: format!("{host}:{}", std::process::id()),
        build: build_id(&host),
        exclude: Vec::new(),
    };
    let mut uploaded = false;
    let hashes = HashCache::new(config.cache_dir.join("hashes"));
    // Inputs are found and hashed once, for the first node; a retry sends
    // the same request with the new node's ticket.
    let mut prepared: Option<Prepared> = None;
    // Every stderr line shown to cargo so far, over all attempts.
    let mut forwarded = Vec::new();
    // Why the previous node failed, while the job is being retried.
    let mut node_failure: Option<FarmError> = None;
    let result = loop {
        let assignment = match allocate(&conn, scheduler, &request, bundle, config, &mut uploaded)
            .await
        {
            Ok(a) => a,
            Err(e) => match node_failure.take() {
                // The node's failure is what went wrong; the scheduler's
                // answer to the retry (no other node, or no answer at all)
                // only says that nothing else can be tried.
                Some(failure) => {
                    info!(crate_name = %job.crate_name, answer = %e, "no other node to retry on");
                    break Err(failure);
                }
                None => break Err(e),
            },
        };
        debug!(
            job_id = %assignment.job,
            node = %assignment.node_name,
            attempt = request.exclude.len() + 1,
            "placed"
        );
        let prepared = match prepared {
            Some(ref p) => p,
            None => match prepare(rustc, args, job, assignment.ticket, &hashes) {
                Ok(p) => {
                    traffic.inputs = Some(p.request.files.len());
                    prepared.insert(p)
                }
                Err(e) => {
                    release(&conn, assignment.job).await;
                    break Err(e);
                }
            },
        };
        let mut attempt = Attempt {
            shown_before: AlreadyShown::new(&forwarded),
            forwarded: &mut forwarded,
            traffic,
            pipelining: config.pipelining,
            output_limits: config.output_limits,
        };
        // The whole attempt on this node is bounded: a node that keeps the
        // connection alive and sends nothing (or never the end) would
        // otherwise hold the compile until cargo is interrupted. Dropping
        // the attempt closes the connection and removes the temporary file
        // of an output still arriving; the stderr it showed is in
        // `forwarded`, so the retry or the local compile does not repeat it.
        let outcome = tokio::time::timeout(
            config.remote_timeout,
            run_job(&endpoint, &opts, &assignment, prepared, &mut attempt),
        )
        .await
        .unwrap_or_else(|_| {
            Err(FarmError::NoAnswer {
                node: assignment.node_name.clone(),
                secs: config.remote_timeout.as_secs(),
            })
        });
        match outcome {
            Ok(exit_code) => {
                break Ok(Success {
                    exit_code,
                    node: assignment.node_name,
                    retried_after: node_failure,
                });
            }
            Err(error) => {
                // A job the node never started still holds a slot on the
                // scheduler (for one it started, the release is ignored).
                release(&conn, assignment.job).await;
                traffic.failed_nodes.push(assignment.node_name);
                if !error.is_node_failure() || request.exclude.len() >= MAX_RETRIES {
                    break Err(error);
                }
                info!(crate_name = %job.crate_name, cause = %error, "retrying on another node");
                request.exclude.push(assignment.node);
                node_failure = Some(error);
            }
        }
    };
    conn.close(0u32.into(), b"done");
    // Let the close frames go out, but do not make every compile wait for
    // the full closing handshake.
    let _ = tokio::time::timeout(Duration::from_millis(5), endpoint.wait_idle()).await;
    result.map_err(|error| Failure { error, forwarded })
}

/// Asks the scheduler for a node, uploading the toolchain first if the
/// scheduler lacks it (once: `uploaded` remembers it across retries).
async fn allocate(
    conn: &quinn::Connection,
    scheduler: SocketAddr,
    request: &AllocateRequest,
    bundle: &Bundle,
    config: &ClientConfig,
    uploaded: &mut bool,
) -> Result<Assignment, FarmError> {
    // A scheduler that refuses our certificate closes the connection at
    // the first request (TLS 1.3 lets the client finish its handshake
    // first), and the close says why.
    let unreachable = |e: NetError| match refusal(conn, scheduler) {
        Some(refused) => FarmError::NotAdmitted(refused),
        None => FarmError::SchedulerUnreachable {
            addr: scheduler,
            reason: e.to_string(),
        },
    };
    loop {
        let (mut w, mut r) = open_stream(conn).await.map_err(unreachable)?;
        w.send(&SchedulerRequest::Allocate(request.clone()))
            .await
            .map_err(unreachable)?;
        match r.recv::<AllocateResponse>().await.map_err(unreachable)? {
            AllocateResponse::Assigned(a) => return Ok(a),
            AllocateResponse::RunLocally(reason) => return Err(FarmError::RunLocally(reason)),
            AllocateResponse::NeedToolchain if !*uploaded => {
                upload(conn, bundle, &config.cache_dir).await?;
                *uploaded = true;
            }
            AllocateResponse::NeedToolchain => {
                return Err(FarmError::Upload(
                    "the scheduler still lacks the toolchain after an upload".into(),
                ));
            }
        }
    }
}

/// This machine's host name, for the scheduler's displays and logs.
fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The build this job belongs to, so the scheduler shares the farm between
/// builds rather than between wrapper processes: the host name and the pid
/// of this process's parent. Cargo starts every wrapper of a build itself
/// (checked: even when run through rustup's proxy, whose process becomes
/// cargo by exec), so they all share that parent, and a `cargo` run by a
/// build script is a build of its own.
fn build_id(host: &str) -> String {
    format!("{host}:{}", std::os::unix::process::parent_id())
}

/// Gives an unused assignment back to the scheduler. Best effort: if this
/// fails, the assignment expires on its own.
async fn release(conn: &quinn::Connection, job: distcc_rs_proto::JobId) {
    if let Ok((mut w, _r)) = open_stream(conn).await
        && w.send(&SchedulerRequest::Release { job }).await.is_ok()
    {
        // Bounded: a scheduler that stopped answering must not hold up the
        // compile, and the assignment expires on its own anyway.
        let _ = tokio::time::timeout(Duration::from_millis(500), w.finish_and_wait()).await;
    }
}

/// The dep-info pre-pass: the real arguments, emitting only dep-info, with
/// every crate file rustc loads listed too (an unstable flag, unlocked for
/// this run only).
fn run_prepass(
    rustc: &Path,
    args: &[String],
    job: &CompileJob,
) -> Result<depinfo::DepInfo, FarmError> {
    let prepass_started = Instant::now();
    let scratch = tempfile::tempdir().map_err(|e| FarmError::Prepass(e.to_string()))?;
    let d_path = scratch.path().join("prepass.d");
    let d_str = d_path
        .to_str()
        .ok_or_else(|| FarmError::Prepass("temp dir is not UTF-8".into()))?;
    let out = Command::new(rustc)
        .args(argv::prepass_args(args, d_str))
        .env("RUSTC_BOOTSTRAP", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| FarmError::Prepass(format!("cannot run rustc: {e}")))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        return Err(FarmError::Prepass(text.chars().take(400).collect()));
    }
    let text = fs::read_to_string(&d_path).map_err(|e| FarmError::Prepass(e.to_string()))?;
    let deps = depinfo::parse(&text).map_err(|e| FarmError::Prepass(e.to_string()))?;
    debug!(
        crate_name = %job.crate_name,
        ms = format_args!("{:.1}", prepass_started.elapsed().as_secs_f64() * 1000.0),
        "dep-info pre-pass done"
    );
    Ok(deps)
}

/// Sends the blobs a node asked for, compressed, counting each one in
/// `traffic` as soon as it is sent (so a failure part-way still reports
/// what went).
async fn send_blobs(
    w: &mut distcc_rs_net::FrameWriter,
    missing: &[Digest],
    prepared: &Prepared,
    node: &str,
    traffic: &mut Traffic,
) -> Result<(), FarmError> {
    let net = |source: NetError| FarmError::Net {
        node: node.to_owned(),
        source,
    };
    for digest in missing {
        let path = prepared
            .paths
            .get(digest)
            .ok_or_else(|| FarmError::Output {
                node: node.to_owned(),
                reason: format!("asked for blob {digest:?}, which is not an input"),
            })?;
        let file = fs::File::open(path)
            .map_err(|e| FarmError::Inputs(format!("{}: {e}", path.display())))?;
        let size = file
            .metadata()
            .map_err(|e| FarmError::Inputs(e.to_string()))?
            .len();
        w.send(&BlobHeader {
            digest: *digest,
            size,
        })
        .await
        .map_err(net)?;
        let (_, wire) = payload::send_compressed(w, file, BLOB_ZSTD_LEVEL)
            .await
            .map_err(net)?;
        traffic.blobs_sent += 1;
        traffic.bytes_sent += wire;
    }
    Ok(())
}

/// Uploads the toolchain bundle, once per farm even when many wrappers
/// need it at the same moment: they queue on a lock file, and each one that
/// gets the lock asks the scheduler again before sending 100+ MiB.
async fn upload(
    conn: &quinn::Connection,
    bundle: &Bundle,
    cache_dir: &Path,
) -> Result<(), FarmError> {
    let lock_path = cache_dir.join("upload.lock");
    let lock = tokio::task::spawn_blocking(move || {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        f.lock()?;
        Ok::<_, std::io::Error>(f)
    })
    .await
    .map_err(|e| FarmError::Upload(e.to_string()))?
    .map_err(|e| FarmError::Upload(format!("upload lock: {e}")))?;
    let err = |e: NetError| FarmError::Upload(e.to_string());

    // Another wrapper may have uploaded it while this one waited.
    let (mut w, mut r) = open_stream(conn).await.map_err(err)?;
    w.send(&SchedulerRequest::Status).await.map_err(err)?;
    let status: distcc_rs_proto::message::FarmStatus = r.recv().await.map_err(err)?;
    if status.toolchains.iter().any(|t| t.id == bundle.id) {
        return Ok(());
    }
    info!(toolchain = %bundle.id, bytes = bundle.compressed_size, "uploading the toolchain");
    let (mut w, mut r) = open_stream(conn).await.map_err(err)?;
    w.send(&SchedulerRequest::UploadToolchain {
        id: bundle.id,
        compressed_size: bundle.compressed_size,
    })
    .await
    .map_err(err)?;
    let file = fs::File::open(&bundle.path).map_err(|e| FarmError::Upload(e.to_string()))?;
    payload::send_raw(&mut w, file).await.map_err(err)?;
    w.finish().map_err(err)?;
    let response: UploadResponse = r.recv().await.map_err(err)?;
    drop(lock);
    match response {
        UploadResponse::Stored => Ok(()),
        UploadResponse::Rejected(e) => Err(FarmError::Upload(e.to_string())),
    }
}

/// The state of one farm attempt that outlives its failure.
struct Attempt<'a> {
    /// What earlier attempts at this job showed cargo, not to be shown
    /// again: a retry prints the same diagnostics, and with pipelining the
    /// same `.rmeta` notification, which cargo must not see twice.
    shown_before: AlreadyShown,
    /// Stderr lines shown to cargo, by this attempt and the earlier ones.
    forwarded: &'a mut Vec<Vec<u8>>,
    traffic: &'a mut Traffic,
    /// When false, the `.rmeta` notification waits for rustc's exit.
    pipelining: bool,
    output_limits: OutputLimits,
}

async fn run_job(
    endpoint: &quinn::Endpoint,
    opts: &EndpointOptions,
    assignment: &Assignment,
    prepared: &Prepared,
    attempt: &mut Attempt<'_>,
) -> Result<i32, FarmError> {
    let node = assignment.node_name.clone();
    let net = |source: NetError| FarmError::Net {
        node: node.clone(),
        source,
    };
    // Phase timings for the debug log: where a remote compile's time goes.
    let started = Instant::now();
    let ms = |since: Instant| format!("{:.1}", since.elapsed().as_secs_f64() * 1000.0);
    let conn = distcc_rs_net::connect(endpoint, assignment.addr, PeerRole::Node, opts)
        .await
        .map_err(net)?;
    // TLS proved the peer is a node of the farm; the scheduler says which
    // node, and the job's sources go to that one only.
    let found = distcc_rs_net::peer_certificate(&conn).map(|c| c.fingerprint);
    if found != Some(assignment.node_cert) {
        conn.close(0u32.into(), b"not the assigned node");
        let detail = format!(
            "the peer at {} is not node {node}: its certificate {} is not the one the node \
             registered with ({})",
            assignment.addr,
            found.map_or_else(|| "none".to_owned(), |f| f.short()),
            assignment.node_cert.short()
        );
        return Err(FarmError::WrongNode { node, detail });
    }
    // A node that refuses our certificate says so by closing the
    // connection, which a failed stream shows only as a lost connection.
    let net = |source: NetError| FarmError::Net {
        node: node.clone(),
        source: refusal(&conn, assignment.addr).unwrap_or(source),
    };
    let (mut w, mut r) = open_stream(&conn).await.map_err(net)?;
    let request = JobRequest {
        ticket: assignment.ticket,
        ..prepared.request.clone()
    };
    w.send(&NodeRequest::Job(request)).await.map_err(net)?;
    loop {
        let missing = match r.recv::<JobAccept>().await.map_err(net)? {
            JobAccept::Rejected(source) => return Err(FarmError::Job { node, source }),
            JobAccept::NeedBlobs(missing) if missing.is_empty() => break,
            JobAccept::NeedBlobs(missing) => missing,
        };
        send_blobs(&mut w, &missing, prepared, &node, attempt.traffic).await?;
    }
    debug!(
        blobs = attempt.traffic.blobs_sent,
        bytes = attempt.traffic.bytes_sent,
        ms = %ms(started),
        "inputs sent"
    );
    let running_since = Instant::now();

    let mut stderr = std::io::stderr().lock();
    let mut received = std::collections::HashSet::new();
    // Lines held back until rustc exits: without pipelining, the `.rmeta`
    // notification. They count as forwarded only once written, so a job
    // that fails before then leaves them to the local rerun.
    let mut held: Vec<Vec<u8>> = Vec::new();
    // rustc's stdout (a proc-macro's `println!`) is shown only once the
    // attempt succeeded, so a failed attempt leaves nothing that the retry
    // or the local compile would print a second time. It is small as a
    // rule, but kept on disk past a few MiB.
    let mut stdout_held = tempfile::spooled_tempfile(4 << 20);
    let mut budget = OutputBudget::new(attempt.output_limits);
    loop {
        let event = r.recv::<JobEvent>().await.map_err(net)?;
        budget.admit(&event).map_err(|e| FarmError::Output {
            node: node.clone(),
            reason: e.to_string(),
        })?;
        match event {
            JobEvent::Running => {}
            JobEvent::Stderr(bytes) if !attempt.pipelining && is_metadata_artifact(&bytes) => {
                held.push(bytes);
            }
            JobEvent::Stderr(bytes) => {
                if attempt.shown_before.is_new(&bytes) {
                    forward(&mut stderr, &bytes);
                    attempt.forwarded.push(bytes);
                }
            }
            JobEvent::Output(header) => {
                let bad = |reason: String| FarmError::Output {
                    node: node.clone(),
                    reason,
                };
                let local = prepared
                    .policy
                    .check(&header.path)
                    .map_err(|e| bad(e.to_string()))?;
                let parent = local
                    .parent()
                    .ok_or_else(|| bad("no parent directory".into()))?;
                let cannot_write = |reason: String| FarmError::WriteOutput {
                    node: node.clone(),
                    reason,
                };
                let mut tmp = crate::outputs::temp_file_in(parent).map_err(|e| {
                    cannot_write(format!("cannot write in {}: {e}", parent.display()))
                })?;
                let got = payload::recv_compressed(&mut r, tmp.as_file_mut(), header.size)
                    .await
                    .map_err(net)?;
                attempt.traffic.bytes_received += got.wire;
                if got.size != header.size {
                    return Err(bad(format!(
                        "{} arrived with {} of {} bytes",
                        header.path, got.size, header.size
                    )));
                }
                crate::outputs::install(tmp, &local, header.executable).map_err(|e| {
                    cannot_write(format!("cannot write {}: {}", header.path, e.error))
                })?;
                received.insert(local);
            }
            JobEvent::Exited { code } => {
                debug!(code, ms = %ms(running_since), "remote rustc exited and outputs arrived");
                conn.close(0u32.into(), b"done");
                if code == 0
                    && let Some(missing) = prepared.expected.iter().find(|p| !received.contains(*p))
                {
                    return Err(FarmError::Output {
                        node,
                        reason: format!("rustc succeeded but {} never arrived", missing.display()),
                    });
                }
                for line in held {
                    if attempt.shown_before.is_new(&line) {
                        forward(&mut stderr, &line);
                        attempt.forwarded.push(line);
                    }
                }
                // A failed write means cargo went away, as with stderr.
                if stdout_held.rewind().is_ok() {
                    let mut stdout = std::io::stdout().lock();
                    let _ = std::io::copy(&mut stdout_held, &mut stdout);
                    let _ = stdout.flush();
                }
                return Ok(code);
            }
            JobEvent::Stdout(bytes) => {
                stdout_held
                    .write_all(&bytes)
                    .map_err(|e| FarmError::WriteOutput {
                        node: node.clone(),
                        reason: format!("cannot keep rustc's stdout until it exits: {e}"),
                    })?;
            }
            JobEvent::Failed(source) => return Err(FarmError::Job { node, source }),
        }
    }
}

/// Writes a piece of rustc's stderr through to cargo. A failed write means
/// cargo went away; nothing useful can be done about it here.
fn forward(stderr: &mut impl Write, bytes: &[u8]) {
    let _ = stderr.write_all(bytes);
    let _ = stderr.flush();
}

/// Whether a stderr line is rustc's notification that the `.rmeta` is
/// written (`{"$message_type":"artifact",...,"emit":"metadata"}`), the line
/// cargo starts dependent crates on.
fn is_metadata_artifact(line: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Note<'a> {
        #[serde(rename = "$message_type", borrow)]
        message_type: Option<&'a str>,
        #[serde(borrow)]
        emit: Option<&'a str>,
    }
    // Diagnostics are long and numerous; only parse what could be a
    // notification.
    if !line.windows(10).any(|w| w == b"\"artifact\"") {
        return false;
    }
    serde_json::from_slice::<Note<'_>>(line.trim_ascii_end())
        .is_ok_and(|n| n.message_type == Some("artifact") && n.emit == Some("metadata"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cross_compile_needs_the_target_installed_and_a_bundle_with_it() {
        const HOST: &str = "x86_64-unknown-linux-gnu";
        let never = |_: &str| -> bool { panic!("asked about the sysroot for a host job") };
        assert_eq!(choose_bundle(None, HOST, never), BundleChoice::Host);
        assert_eq!(choose_bundle(Some(HOST), HOST, never), BundleChoice::Host);
        assert_eq!(
            choose_bundle(Some("aarch64-unknown-linux-gnu"), HOST, |t| t
                == "aarch64-unknown-linux-gnu"),
            BundleChoice::WithTarget("aarch64-unknown-linux-gnu".into())
        );
        let BundleChoice::Unavailable(reason) =
            choose_bundle(Some("wasm32-wasip1"), HOST, |_| false)
        else {
            panic!("a target that is not installed cannot be bundled");
        };
        assert!(
            reason.contains("rustup target add wasm32-wasip1"),
            "{reason}"
        );
    }

    #[test]
    fn a_target_is_installed_when_its_lib_directory_holds_rlibs() {
        let sysroot = tempfile::tempdir().unwrap();
        let lib = |t: &str| sysroot.path().join("lib/rustlib").join(t).join("lib");
        fs::create_dir_all(lib("thumbv7em-none-eabihf")).unwrap();
        fs::write(
            lib("thumbv7em-none-eabihf").join("libcore-0123.rlib"),
            b"core",
        )
        .unwrap();
        // A directory without libraries in it does not count.
        fs::create_dir_all(lib("aarch64-unknown-linux-gnu")).unwrap();
        fs::write(lib("aarch64-unknown-linux-gnu").join("README"), b"").unwrap();
        assert!(target_installed(sysroot.path(), "thumbv7em-none-eabihf"));
        assert!(!target_installed(
            sysroot.path(),
            "aarch64-unknown-linux-gnu"
        ));
        assert!(!target_installed(sysroot.path(), "wasm32-wasip1"));
    }

    #[test]
    fn only_failures_of_the_node_are_retried_elsewhere() {
        let node = || "n1".to_owned();
        let job = |source| FarmError::Job {
            node: node(),
            source,
        };
        let toolchain = distcc_rs_proto::ToolchainId(Digest([7; 32]));
        let retried = [
            FarmError::Net {
                node: node(),
                source: NetError::UnexpectedEof,
            },
            FarmError::Output {
                node: node(),
                reason: "truncated".into(),
            },
            FarmError::NoAnswer {
                node: node(),
                secs: 900,
            },
            FarmError::WrongNode {
                node: node(),
                detail: "the peer is not the node".into(),
            },
            job(JobError::BadTicket("stale key".into())),
            job(JobError::Busy),
            job(JobError::ToolchainUnavailable {
                id: toolchain,
                reason: "fetch failed".into(),
            }),
            job(JobError::BlobCorrupt {
                digest: Digest([1; 32]),
            }),
            job(JobError::Sandbox("bwrap".into())),
            job(JobError::Killed { signal: 9 }),
            job(JobError::Io("disk full".into())),
        ];
        let not_retried = [
            job(JobError::InvalidRequest("relative path".into())),
            job(JobError::Timeout { secs: 600 }),
            FarmError::WriteOutput {
                node: node(),
                reason: "read-only".into(),
            },
            FarmError::Prepass("E0432".into()),
            FarmError::Inputs("gone".into()),
            FarmError::Toolchain("no sysroot".into()),
            FarmError::SchedulerUnreachable {
                addr: "127.0.0.1:1".parse().unwrap(),
                reason: "timed out".into(),
            },
            FarmError::RunLocally(RunLocallyReason::NoEligibleNode),
            FarmError::Upload("rejected".into()),
            FarmError::NotAdmitted(NetError::RefusedUs {
                peer: "127.0.0.1:1".parse().unwrap(),
                alert: 44,
            }),
        ];
        for e in &retried {
            assert!(e.is_node_failure(), "{e}");
        }
        for e in &not_retried {
            assert!(!e.is_node_failure(), "{e}");
        }
    }

    #[test]
    fn only_the_metadata_notification_is_held_back() {
        let yes: [&[u8]; 2] = [
            br#"{"$message_type":"artifact","artifact":"/p/target/debug/deps/libx-1.rmeta","emit":"metadata"}"#,
            b"{\"$message_type\":\"artifact\",\"artifact\":\"/t/libx.rmeta\",\"emit\":\"metadata\"}\n",
        ];
        let no: [&[u8]; 6] = [
            br#"{"$message_type":"artifact","artifact":"/p/target/debug/deps/x-1.d","emit":"dep-info"}"#,
            br#"{"$message_type":"artifact","artifact":"/p/libx.rlib","emit":"link"}"#,
            br#"{"$message_type":"diagnostic","message":"unused \"artifact\" metadata","emit":"metadata"}"#,
            br#"{"$message_type":"artifact","artifact":"/p/libx.rmeta","emit":"metadata""#,
            b"warning: \"artifact\" emit metadata\n",
            b"",
        ];
        for line in yes {
            assert!(
                is_metadata_artifact(line),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        for line in no {
            assert!(
                !is_metadata_artifact(line),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }
}
