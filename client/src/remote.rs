//! Compiling one job on the farm.
//!
//! The steps, each of which can fail and send the job back to local rustc:
//! run the dep-info pre-pass to find the inputs, hash them, make sure the
//! toolchain bundle exists (and that the scheduler has it), ask the
//! scheduler for a node, send the node the job and whichever inputs it
//! lacks, then write outputs and forward stderr as they stream back.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use distcc_rs_net::{EndpointOptions, NetError, PeerAuth, open_stream, payload};
use distcc_rs_pack::{Bundle, PackOptions};
use distcc_rs_proto::Digest;
use distcc_rs_proto::message::{
    AllocateRequest, AllocateResponse, Assignment, BlobHeader, FileEntry, JobAccept, JobError,
    JobEvent, JobRequest, RunLocallyReason, SchedulerRequest, UploadResponse,
};
use tracing::{debug, info};

use crate::argv::{self, CompileJob};
use crate::config::ClientConfig;
use crate::outputs::OutputPolicy;
use crate::package::{self, PackageLimits};
use crate::{depinfo, inputs};

/// Inputs travel compressed at a level that costs little CPU on the client.
const BLOB_ZSTD_LEVEL: i32 = 3;

/// After the scheduler failed to answer, wrappers skip the farm for this
/// long instead of each waiting for a connect timeout.
const SCHEDULER_DOWN_BACKOFF: Duration = Duration::from_secs(10);

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
}

/// Everything about a job that is known before it is placed.
struct Prepared {
    request: JobRequest,
    policy: OutputPolicy,
    /// Files rustc must have written when it exits successfully.
    expected: Vec<PathBuf>,
    paths: HashMap<Digest, PathBuf>,
}

/// Compiles `job` on the farm whose scheduler is at `scheduler`.
pub fn compile(
    rustc: &Path,
    args: &[String],
    job: &CompileJob,
    scheduler: SocketAddr,
    config: &ClientConfig,
) -> Result<Success, Failure> {
    if let Some(reason) = recently_down(&config.cache_dir, scheduler) {
        return Err(FarmError::SchedulerUnreachable {
            addr: scheduler,
            reason,
        }
        .into());
    }
    let cache = config.cache_dir.join("toolchains");
    let bundle = distcc_rs_pack::ensure_cached(&cache, rustc, &PackOptions::default())
        .map_err(|e| FarmError::Toolchain(e.to_string()))?;
    // The bundle holds the standard library of its host target only.
    if let Some(target) = &job.target
        && *target != bundle.manifest.host
    {
        return Err(FarmError::Toolchain(format!(
            "the bundle has no standard library for target {target}"
        ))
        .into());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| FarmError::Upload(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(farm(rustc, args, job, scheduler, &bundle, config))
}

/// Finds, hashes and describes the job's inputs. Runs only once a node is
/// assigned, so a farm that cannot take the job costs nothing here.
fn prepare(
    rustc: &Path,
    args: &[String],
    job: &CompileJob,
    ticket: distcc_rs_proto::Ticket,
) -> Result<Prepared, FarmError> {
    // Cheap: derived from rustc's location when cargo passes the real
    // binary, which it does (rustup resolves its proxy first).
    let sysroot =
        distcc_rs_pack::locate_sysroot(rustc).map_err(|e| FarmError::Toolchain(e.to_string()))?;
    let cwd = std::env::current_dir()
        .map_err(|e| FarmError::Inputs(format!("no working directory: {e}")))?;

    // The pre-pass: the real arguments, emitting only dep-info, with every
    // crate file rustc loads listed too (an unstable flag, unlocked for this
    // run only).
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

    let env = shipped_env();
    let plan = inputs::plan(job, &deps, &cwd, &sysroot, &env)
        .map_err(|e| FarmError::Inputs(e.to_string()))?;

    let mut all_files = plan.files.clone();
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
    let mut files = Vec::with_capacity(all_files.len());
    let mut paths = HashMap::new();
    for path in &all_files {
        let (digest, size, executable) =
            hash_file(path).map_err(|e| FarmError::Inputs(format!("{}: {e}", path.display())))?;
        files.push(FileEntry {
            path: utf8(path)?,
            digest,
            size,
            executable,
        });
        paths.insert(digest, path.clone());
    }
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

fn hash_file(path: &Path) -> std::io::Result<(Digest, u64, bool)> {
    use std::os::unix::fs::PermissionsExt;
    let file = fs::File::open(path)?;
    let meta = file.metadata()?;
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(file)?;
    Ok((
        Digest(*hasher.finalize().as_bytes()),
        meta.len(),
        meta.permissions().mode() & 0o111 != 0,
    ))
}

fn down_marker(cache_dir: &Path, scheduler: SocketAddr) -> PathBuf {
    cache_dir.join(format!(
        "scheduler-down-{}",
        scheduler.to_string().replace([':', '[', ']'], "_")
    ))
}

fn recently_down(cache_dir: &Path, scheduler: SocketAddr) -> Option<String> {
    let meta = fs::metadata(down_marker(cache_dir, scheduler)).ok()?;
    let age = SystemTime::now()
        .duration_since(meta.modified().ok()?)
        .ok()?;
    (age < SCHEDULER_DOWN_BACKOFF).then(|| format!("it did not answer {} s ago", age.as_secs()))
}

fn mark_down(cache_dir: &Path, scheduler: SocketAddr) {
    let _ = fs::create_dir_all(cache_dir);
    let _ = fs::write(down_marker(cache_dir, scheduler), b"");
}

async fn farm(
    rustc: &Path,
    args: &[String],
    job: &CompileJob,
    scheduler: SocketAddr,
    bundle: &Bundle,
    config: &ClientConfig,
) -> Result<Success, Failure> {
    let opts = EndpointOptions::default();
    let unreachable = |reason: String| FarmError::SchedulerUnreachable {
        addr: scheduler,
        reason,
    };
    let endpoint = distcc_rs_net::bind_client(scheduler, None, &PeerAuth::Unauthenticated, &opts)
        .map_err(|e| unreachable(e.to_string()))?;
    let conn = match distcc_rs_net::connect(&endpoint, scheduler, &opts).await {
        Ok(c) => c,
        Err(e) => {
            mark_down(&config.cache_dir, scheduler);
            return Err(unreachable(e.to_string()).into());
        }
    };
    let client = format!(
        "{}:{}",
        fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim(),
        std::process::id()
    );
    let request = AllocateRequest {
        toolchain: bundle.id,
        crate_name: job.crate_name.clone(),
        client,
    };
    let mut uploaded = false;
    let assignment = loop {
        let (mut w, mut r) = open_stream(&conn)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        w.send(&SchedulerRequest::Allocate(request.clone()))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        match r
            .recv::<AllocateResponse>()
            .await
            .map_err(|e| unreachable(e.to_string()))?
        {
            AllocateResponse::Assigned(a) => break a,
            AllocateResponse::RunLocally(reason) => {
                return Err(FarmError::RunLocally(reason).into());
            }
            AllocateResponse::NeedToolchain if !uploaded => {
                upload(&conn, bundle, &config.cache_dir).await?;
                uploaded = true;
            }
            AllocateResponse::NeedToolchain => {
                return Err(FarmError::Upload(
                    "the scheduler still lacks the toolchain after an upload".into(),
                )
                .into());
            }
        }
    };
    debug!(job_id = %assignment.job, node = %assignment.node_name, "placed");
    let mut forwarded = Vec::new();
    let result = match prepare(rustc, args, job, assignment.ticket) {
        Ok(prepared) => run_job(&endpoint, &opts, &assignment, &prepared, &mut forwarded).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        // A job the node never started still holds a slot on the scheduler.
        release(&conn, assignment.job).await;
    }
    conn.close(0u32.into(), b"done");
    // Let the close frames go out, but do not make every compile wait for
    // the full closing handshake.
    let _ = tokio::time::timeout(Duration::from_millis(5), endpoint.wait_idle()).await;
    match result {
        Ok(exit_code) => Ok(Success {
            exit_code,
            node: assignment.node_name,
        }),
        Err(error) => Err(Failure { error, forwarded }),
    }
}

/// Gives an unused assignment back to the scheduler. Best effort: if this
/// fails, the assignment expires on its own.
async fn release(conn: &quinn::Connection, job: distcc_rs_proto::JobId) {
    if let Ok((mut w, _r)) = open_stream(conn).await
        && w.send(&SchedulerRequest::Release { job }).await.is_ok()
    {
        let _ = w.finish();
    }
}

/// Sends the blobs a node asked for, compressed. Returns the bytes sent.
async fn send_blobs(
    w: &mut distcc_rs_net::FrameWriter,
    missing: &[Digest],
    prepared: &Prepared,
    node: &str,
) -> Result<u64, FarmError> {
    let net = |source: NetError| FarmError::Net {
        node: node.to_owned(),
        source,
    };
    let mut sent = 0u64;
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
        sent += wire;
    }
    Ok(sent)
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

async fn run_job(
    endpoint: &quinn::Endpoint,
    opts: &EndpointOptions,
    assignment: &Assignment,
    prepared: &Prepared,
    forwarded: &mut Vec<Vec<u8>>,
) -> Result<i32, FarmError> {
    let node = assignment.node_name.clone();
    let net = |source: NetError| FarmError::Net {
        node: node.clone(),
        source,
    };
    let conn = distcc_rs_net::connect(endpoint, assignment.addr, opts)
        .await
        .map_err(net)?;
    let (mut w, mut r) = open_stream(&conn).await.map_err(net)?;
    w.send(&prepared.request).await.map_err(net)?;
    let mut sent = 0u64;
    let mut blobs = 0usize;
    loop {
        let missing = match r.recv::<JobAccept>().await.map_err(net)? {
            JobAccept::Rejected(source) => return Err(FarmError::Job { node, source }),
            JobAccept::NeedBlobs(missing) if missing.is_empty() => break,
            JobAccept::NeedBlobs(missing) => missing,
        };
        blobs += missing.len();
        sent += send_blobs(&mut w, &missing, prepared, &node).await?;
    }
    debug!(blobs, bytes = sent, "inputs sent");

    let mut stderr = std::io::stderr().lock();
    let mut received = std::collections::HashSet::new();
    loop {
        match r.recv::<JobEvent>().await.map_err(net)? {
            JobEvent::Running => {}
            JobEvent::Stderr(bytes) => {
                // A failed write to our own stderr means cargo went away;
                // nothing useful can be done about it here.
                let _ = stderr.write_all(&bytes);
                let _ = stderr.flush();
                forwarded.push(bytes);
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
                let mut tmp = tempfile::Builder::new()
                    .prefix(".distcc-rs-")
                    .tempfile_in(parent)
                    .map_err(|e| bad(format!("cannot write in {}: {e}", parent.display())))?;
                let (_, size) = payload::recv_compressed(&mut r, tmp.as_file_mut(), header.size)
                    .await
                    .map_err(net)?;
                if size != header.size {
                    return Err(bad(format!(
                        "{} arrived with {size} of {} bytes",
                        header.path, header.size
                    )));
                }
                // Temporary files are private (0600); rustc's outputs are not.
                use std::os::unix::fs::PermissionsExt;
                let mode = if header.executable { 0o755 } else { 0o644 };
                let _ = tmp
                    .as_file()
                    .set_permissions(fs::Permissions::from_mode(mode));
                tmp.persist(&local)
                    .map_err(|e| bad(format!("cannot write {}: {}", header.path, e.error)))?;
                received.insert(local);
            }
            JobEvent::Exited { code } => {
                conn.close(0u32.into(), b"done");
                if code == 0
                    && let Some(missing) = prepared.expected.iter().find(|p| !received.contains(*p))
                {
                    return Err(FarmError::Output {
                        node,
                        reason: format!("rustc succeeded but {} never arrived", missing.display()),
                    });
                }
                return Ok(code);
            }
            JobEvent::Stdout(bytes) => {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(&bytes);
                let _ = stdout.flush();
            }
            JobEvent::Failed(source) => return Err(FarmError::Job { node, source }),
        }
    }
}
