//! Running one job: ticket check, inputs, toolchain, sandboxed rustc, and
//! streaming the results back.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use distcc_rs_net::payload;
use distcc_rs_net::{FrameReader, FrameWriter, NetError, PeerCertificate};
use distcc_rs_proto::message::{
    BlobHeader, JobAccept, JobError, JobEvent, JobOutcome, JobRequest, NodeEvent, OutputHeader,
};
use distcc_rs_proto::{Digest, Ticket};
use tracing::{debug, info, warn};

use crate::diagnostics::{self, Action, Gate, Verdict};
use crate::isolation::Isolation;
use crate::limits::JobCgroup;
use crate::manifest::{self, ValidJob};
use crate::rustc_output::{OutputError, RustcOutput};
use crate::sandbox::SandboxPlan;
use crate::server::Shared;
use crate::toolchains::ReadyToolchain;

/// How many times the node asks for the same inputs before it gives up.
const MAX_BLOB_ROUNDS: usize = 3;

/// Outputs are compressed fast: they cross a LAN once and are not stored.
const OUTPUT_ZSTD_LEVEL: i32 = 1;

/// Checks that the scheduler issued `ticket` for this node.
pub fn check_ticket(
    ticket: &Ticket,
    key: Option<&[u8; 32]>,
    node: distcc_rs_proto::NodeId,
) -> Result<(), JobError> {
    let key = key.ok_or_else(|| {
        JobError::BadTicket("the node is not registered with a scheduler right now".into())
    })?;
    if ticket.node != node {
        return Err(JobError::BadTicket(format!(
            "ticket is for {}, this is {node}",
            ticket.node
        )));
    }
    let mac = blake3::keyed_hash(
        key,
        &Ticket::signed_bytes(ticket.job, ticket.node, ticket.toolchain, ticket.client),
    );
    // blake3::Hash compares in constant time.
    if mac != blake3::Hash::from_bytes(ticket.mac) {
        return Err(JobError::BadTicket(
            "the ticket's signature does not verify".into(),
        ));
    }
    Ok(())
}

/// Serves one job stream from start to end, sent by the peer holding
/// `peer`. Errors on the stream itself (the client went away) are logged;
/// the slot is always released and the scheduler always told.
pub async fn serve(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    peer: Option<PeerCertificate>,
    mut w: FrameWriter,
    mut r: FrameReader,
    req: JobRequest,
) {
    let job = req.ticket.job;
    // Before the ticket is claimed: a ticket presented by anyone but its
    // client must not use up the job id its client will present.
    if let Err(why) = crate::access::authorize_job(peer, &req.ticket) {
        warn!(
            job_id = %job,
            peer = %conn.remote_address(),
            role = %crate::access::role_name(peer),
            certificate = %crate::access::fingerprint_short(peer),
            "refusing job: {why}"
        );
        let _ = w.send(&JobAccept::Rejected(JobError::BadTicket(why))).await;
        let _ = w.finish();
        return;
    }
    let key = *shared.ticket_key.lock().unwrap_or_else(|e| e.into_inner());
    let refusal = check_ticket(&req.ticket, key.as_ref(), shared.node_id)
        .and_then(|()| shared.claim_job(job));
    if let Err(e) = refusal {
        warn!(job_id = %job, cause = %e, "refusing job");
        let _ = w.send(&JobAccept::Rejected(e)).await;
        let _ = w.finish();
        return;
    }
    // From here on the ticket is genuine, so the scheduler counts this job
    // against a slot: a refusal must tell it, or the slot stays taken until
    // the assignment expires.
    let limits = manifest::Limits::default();
    let toolchain = req.ticket.toolchain;
    let refusal = match manifest::validate(&req, &limits) {
        Err(e) => Err(JobError::InvalidRequest(e.to_string())),
        Ok(valid) => match shared.toolchains.broken(toolchain) {
            // Refused before the client sends any input. The scheduler was
            // told when the toolchain broke, but may have placed this job
            // before it heard, or forgotten since (a new copy was
            // uploaded while the node still distrusts it): say it again.
            Some(reason) => {
                shared.report(NodeEvent::ToolchainRejected {
                    id: toolchain,
                    reason: reason.clone(),
                });
                Err(JobError::ToolchainUnavailable {
                    id: toolchain,
                    reason: format!("it failed verification on this node: {reason}"),
                })
            }
            None => match shared.slots.clone().try_acquire_owned() {
                Err(_) => Err(JobError::Busy),
                Ok(permit) => Ok((valid, permit)),
            },
        },
    };
    let (valid, _permit) = match refusal {
        Ok(v) => v,
        Err(e) => {
            warn!(job_id = %job, cause = %e, "refusing job");
            let _ = w.send(&JobAccept::Rejected(e.clone())).await;
            let _ = w.finish();
            shared.report_refused(job, e);
            return;
        }
    };
    shared.report(NodeEvent::JobStarted { job });
    let started = Instant::now();
    info!(job_id = %job, crate_name = %req.crate_name, "job started");
    if matches!(shared.isolation, Isolation::Insecure) {
        warn!(
            job_id = %job,
            "INSECURE: this job runs without the job user and without limits \
             (--insecure-no-sandbox)"
        );
    }

    // The job ends when it ends, when it runs out of time, or when its
    // client goes away (cargo was interrupted): dropping `run` then kills
    // rustc and removes the job directory.
    let timeout = shared.config.job_timeout;
    let result = tokio::select! {
        result = tokio::time::timeout(timeout, run(&shared, &valid, &mut w, &mut r)) => {
            result.unwrap_or(Err(RunError::Job(JobError::Timeout { secs: timeout.as_secs() })))
        }
        e = conn.closed() => Err(RunError::Net(NetError::Connection(e))),
    };
    let outcome = match result {
        Ok(code) => {
            let _ = w.send(&JobEvent::Exited { code }).await;
            JobOutcome::Compiled { exit_code: code }
        }
        Err(RunError::Job(e)) => {
            warn!(job_id = %job, cause = %e, "job failed");
            let _ = w.send(&JobEvent::Failed(e.clone())).await;
            JobOutcome::Failed(e)
        }
        Err(RunError::Net(e)) => {
            warn!(job_id = %job, cause = %e, "lost the client during the job");
            JobOutcome::Failed(JobError::Io(format!("client connection: {e}")))
        }
    };
    let _ = w.finish();
    let wall_ms = started.elapsed().as_millis() as u64;
    info!(job_id = %job, ?outcome, wall_ms, "job finished");
    shared.report(NodeEvent::JobFinished {
        job,
        outcome,
        wall_ms,
        bytes_in: r.bytes_received(),
        bytes_out: w.bytes_sent(),
    });
}

/// A job ends in a farm failure the client hears about, or in a broken
/// stream it cannot hear about.
enum RunError {
    Job(JobError),
    Net(NetError),
}

impl From<NetError> for RunError {
    fn from(e: NetError) -> Self {
        RunError::Net(e)
    }
}

fn io_err(what: &str, e: impl std::fmt::Display) -> RunError {
    RunError::Job(JobError::Io(format!("{what}: {e}")))
}

async fn run(
    shared: &Arc<Shared>,
    job: &ValidJob<'_>,
    w: &mut FrameWriter,
    r: &mut FrameReader,
) -> Result<i32, RunError> {
    let req = job.request;
    // Fetch the toolchain while the inputs arrive.
    let tc_shared = shared.clone();
    let tc_id = req.ticket.toolchain;
    let toolchain = tokio::spawn(async move { tc_shared.toolchain(tc_id).await });

    // The lease keeps every input of the job in the store until the job
    // ends, so an eviction cannot remove a blob between this check and the
    // moment it is linked into the job root.
    let lease = shared.store.lease(req.files.iter().map(|f| &f.digest));
    // Ask for what the store lacks, then again for whatever arrived
    // damaged, until nothing is missing or the client keeps failing.
    let mut want = lease.missing().to_vec();
    let mut rounds = 0;
    loop {
        w.send(&JobAccept::NeedBlobs(want.clone())).await?;
        if want.is_empty() {
            break;
        }
        rounds += 1;
        let damaged = receive_blobs(shared, &want, job, r).await?;
        if let Some(first) = damaged.first() {
            warn!(job_id = %req.ticket.job, count = damaged.len(), "input blobs arrived damaged; asking again");
            if rounds >= MAX_BLOB_ROUNDS {
                return Err(RunError::Job(JobError::BlobCorrupt { digest: *first }));
            }
        }
        want = damaged;
    }
    if rounds > 0 {
        // New blobs may have taken the store over its limit. The eviction
        // runs on its own blocking thread; this job does not wait for it.
        drop(shared.store.evict_in_background());
    }

    // The lease keeps the toolchain in the cache until rustc has exited.
    let toolchain = match toolchain.await {
        Ok(Ok(tc)) => tc,
        Ok(Err(e)) => {
            return Err(RunError::Job(JobError::ToolchainUnavailable {
                id: tc_id,
                reason: e.to_string(),
            }));
        }
        Err(e) => return Err(io_err("toolchain task", e)),
    };

    let root = JobRoot::create(&shared.jobs_dir, req.ticket.job)?;
    // Thousands of links and directories: blocking work, done off the
    // async workers.
    let (dirs, placements) = root_layout(&root.path, job);
    // The job user owns what the job may write (its output directories and
    // /tmp) and the job root itself, which it must be able to enter; the
    // rest belongs to the node and is read-only inside anyway.
    let writable: Vec<PathBuf> = std::iter::once(root.path.clone())
        .chain(
            job.output_dirs
                .iter()
                .map(PathBuf::as_path)
                .chain([Path::new("tmp")])
                .map(|d| root.path.join(d)),
        )
        .collect();
    let user = shared.isolation.job_user();
    let store = shared.store.clone();
    tokio::task::spawn_blocking(move || {
        populate(&store, &dirs, &placements)?;
        crate::isolation::chown_writable(user, &writable)
            .map_err(|e| io_err("giving the job user its directories", e))
    })
    .await
    .map_err(|e| io_err("populating the job directory", e))??;
    w.send(&JobEvent::Running).await?;
    let code = compile(shared, job, &root.path, &toolchain, w).await;
    if let Err(RunError::Job(JobError::Sandbox(why))) = &code
        && diagnostics::is_loader_failure(why)
    {
        // The toolchain's own libraries may be damaged on disk. Checking
        // hashes 500 MB, so it runs on its own; a damaged copy is removed
        // and the next job fetches it again.
        let toolchains = shared.toolchains.clone();
        drop(tokio::task::spawn_blocking(move || {
            toolchains.check_damage(tc_id)
        }));
    }
    // Only now may the job's inputs and toolchain be evicted.
    drop(lease);
    drop(toolchain);
    code
}

/// Receives the blobs in `missing`, storing each one whose content matches
/// its digest. Returns the digests of those that arrived damaged.
async fn receive_blobs(
    shared: &Shared,
    missing: &[Digest],
    job: &ValidJob<'_>,
    r: &mut FrameReader,
) -> Result<Vec<Digest>, RunError> {
    let mut damaged = Vec::new();
    let mut pending: HashSet<Digest> = missing.iter().copied().collect();
    let sizes: std::collections::HashMap<Digest, u64> =
        job.files.iter().map(|(f, _)| (f.digest, f.size)).collect();
    while !pending.is_empty() {
        let header: BlobHeader = r.recv().await?;
        if !pending.remove(&header.digest) {
            return Err(RunError::Job(JobError::InvalidRequest(format!(
                "blob {:?} was not asked for",
                header.digest
            ))));
        }
        let limit = sizes.get(&header.digest).copied().unwrap_or(0);
        let mut tmp = shared.store.temp_file().map_err(|e| io_err("store", e))?;
        let (digest, size) = match payload::recv_compressed(r, tmp.as_file_mut(), limit).await {
            Ok(got) => (got.digest, got.size),
            // Longer than announced, or not valid zstd: the rest of the
            // payload was skipped, so the stream is still usable.
            Err(NetError::PayloadTooLarge { .. } | NetError::Io(_)) => {
                damaged.push(header.digest);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if digest != header.digest || size != header.size {
            damaged.push(header.digest);
            continue;
        }
        shared
            .store
            .commit(tmp, &digest)
            .map_err(|e| io_err("store", e))?;
    }
    Ok(damaged)
}

/// A job's private directory, removed when the job ends.
struct JobRoot {
    path: PathBuf,
}

impl JobRoot {
    fn create(jobs_dir: &Path, job: distcc_rs_proto::JobId) -> Result<Self, RunError> {
        // Unique even when a restarted scheduler reuses a job id while the
        // old job of that id still runs here.
        let path = tempfile::Builder::new()
            .prefix(&format!("{job}-"))
            .tempdir_in(jobs_dir)
            .map_err(|e| io_err("job dir", e))?
            .keep();
        Ok(JobRoot { path })
    }
}

/// Where a job's directories go and where each input is placed, under
/// `root`: the validated paths joined to it, plus the sandbox's mount
/// points.
fn root_layout(root: &Path, job: &ValidJob<'_>) -> (Vec<PathBuf>, Vec<(Digest, PathBuf, bool)>) {
    let dirs = job
        .dirs
        .iter()
        .chain(&job.output_dirs)
        .map(PathBuf::as_path)
        .chain(SandboxPlan::mount_points().iter().map(Path::new))
        .map(|d| root.join(d))
        .collect();
    let placements = job
        .files
        .iter()
        .map(|(f, rel)| (f.digest, root.join(rel), f.executable))
        .collect();
    (dirs, placements)
}

/// Creates a job's directories and places its inputs from the store.
fn populate(
    store: &crate::store::BlobStore,
    dirs: &[PathBuf],
    placements: &[(Digest, PathBuf, bool)],
) -> Result<(), RunError> {
    for dir in dirs {
        fs::create_dir_all(dir).map_err(|e| io_err("creating a directory", e))?;
    }
    for (digest, dest, executable) in placements {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| io_err("creating a directory", e))?;
        }
        store
            .place(digest, dest, *executable)
            .map_err(|e| io_err(&format!("placing {}", dest.display()), e))?;
    }
    Ok(())
}

impl Drop for JobRoot {
    fn drop(&mut self) {
        let path = std::mem::take(&mut self.path);
        let remove = move || {
            if let Err(e) = fs::remove_dir_all(&path) {
                warn!(path = %path.display(), cause = %e, "cannot remove job directory");
            }
        };
        // Removing thousands of links is blocking work: off the async
        // workers when there is a runtime, which is always but in tests.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

async fn compile(
    shared: &Shared,
    job: &ValidJob<'_>,
    root: &Path,
    toolchain: &ReadyToolchain,
    w: &mut FrameWriter,
) -> Result<i32, RunError> {
    let req = job.request;
    let protected: Vec<PathBuf> = job
        .files
        .iter()
        .filter(|(_, rel)| {
            job.output_dirs.iter().any(|d| rel.starts_with(d)) || rel.starts_with("tmp")
        })
        .map(|(_, rel)| rel.clone())
        .collect();
    let plan = SandboxPlan {
        bwrap: &shared.config.bwrap,
        root,
        toolchain: &toolchain.dir,
        cwd: &req.cwd,
        writable: &job.output_dirs,
        protected: &protected,
        env: &req.env,
        makeflags: Some(&shared.makeflags),
        host_system: false,
    };
    let (bwrap, bwrap_args) = plan.rustc_command(&toolchain.manifest, &req.args);
    let cgroup = match &shared.isolation {
        Isolation::Hardened(h) => {
            let name = root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| req.ticket.job.to_string());
            JobCgroup::create(&h.mechanism, &name, &h.limits).map_err(|e| {
                RunError::Job(JobError::Sandbox(format!(
                    "cannot create the job's cgroup: {e}"
                )))
            })?
        }
        Isolation::Insecure => None,
    };
    let (program, args) = shared
        .isolation
        .command(cgroup.as_ref(), &bwrap, &bwrap_args);
    let mut child = tokio::process::Command::new(&program)
        .args(&args)
        .env_clear()
        .envs(SandboxPlan::host_env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            RunError::Job(JobError::Sandbox(format!(
                "cannot start {}: {e}",
                program.display()
            )))
        })?;

    let inputs: HashSet<&Path> = job.files.iter().map(|(_, rel)| rel.as_path()).collect();
    let mut sent: HashSet<PathBuf> = HashSet::new();
    let mut gate = Gate::new(diagnostics::expects_json(&req.args));
    let stderr = child.stderr.take().expect("stderr is piped");
    // rustc itself writes nothing to stdout for a compile, but proc-macros
    // may print there; it is collected (up to a bound) and sent at the end.
    let stdout = child.stdout.take().expect("stdout is piped");
    // What the node keeps of either stream is bounded: the node's memory is
    // outside the job's cgroup.
    let mut output = RustcOutput::new(stderr, stdout, &shared.config.job_output);
    loop {
        let line = match output.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                // Nothing more is read, so rustc must not go on: kill it
                // now (bubblewrap takes the whole sandbox with it, and
                // dropping the cgroup kills whatever is left).
                let _ = child.kill().await;
                return Err(output_failed(req.ticket.job, e));
            }
        };
        let (action, released) = gate.line(&line);
        for held in released {
            send_stderr(w, held).await?;
        }
        match action {
            Action::Hold => {}
            Action::Forward => send_stderr(w, line).await?,
            Action::SendOutputThenForward(path) => {
                // Pipelining: the client writes the .rmeta before it shows
                // cargo this line, so dependents can start right away.
                send_output(w, &shared.store, root, &job.output_dirs, &path, &mut sent).await?;
                send_stderr(w, line).await?;
            }
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| io_err("waiting for rustc", e))?;
    let limits_hit = cgroup
        .as_ref()
        .map(JobCgroup::limits_hit)
        .unwrap_or_default();
    // Killing whatever is left and removing the cgroup happens here, not
    // when the job's directory goes: nothing of the job outlives rustc.
    drop(cgroup);
    // All of stdout, now that nothing of the job is left to write it. Over
    // its limit, the job fails for that whatever its exit: rustc may well
    // have died of the pipe the node stopped reading.
    let stdout = output
        .stdout()
        .await
        .map_err(|e| output_failed(req.ticket.job, e))?;
    if !limits_hit.is_empty() {
        warn!(
            job_id = %req.ticket.job,
            limits = ?limits_hit,
            %status,
            "the job ran into its limits"
        );
        // A failure is blamed on the limit, not on the code: a job that
        // needs more than this node allows may still compile elsewhere or
        // locally. A job that succeeded anyway coped with the limit, and
        // its result stands.
        if !status.success() {
            return Err(RunError::Job(JobError::Sandbox(format!(
                "the job ran into its {} on this node",
                limits_hit.join(" and ")
            ))));
        }
    }
    let Some(code) = status.code() else {
        use std::os::unix::process::ExitStatusExt;
        return Err(RunError::Job(JobError::Killed {
            signal: status.signal().unwrap_or(0),
        }));
    };
    match gate.finish(code) {
        Verdict::FarmFailure(why) => Err(RunError::Job(JobError::Sandbox(why))),
        Verdict::Stands(held) => {
            for line in held {
                send_stderr(w, line).await?;
            }
            for piece in stdout.chunks(distcc_rs_proto::MAX_CHUNK_LEN) {
                w.send(&JobEvent::Stdout(piece.to_vec())).await?;
            }
            for dir in &job.output_dirs {
                let Ok(entries) = fs::read_dir(root.join(dir)) else {
                    continue;
                };
                let mut names: Vec<_> = entries.flatten().collect();
                names.sort_by_key(|e| e.file_name());
                for entry in names {
                    let rel = dir.join(entry.file_name());
                    let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
                    if !is_file || inputs.contains(rel.as_path()) {
                        continue;
                    }
                    let client_path = Path::new("/").join(&rel);
                    let Some(client_path) = client_path.to_str() else {
                        continue;
                    };
                    send_output(
                        w,
                        &shared.store,
                        root,
                        &job.output_dirs,
                        client_path,
                        &mut sent,
                    )
                    .await?;
                }
            }
            // The outputs just kept may have pushed the store over its limit.
            drop(shared.store.evict_in_background());
            Ok(code)
        }
    }
}

/// The job's failure when reading rustc's output stopped: printing more
/// than the node keeps is a farm failure (the job may still compile
/// locally, where the output goes straight to cargo).
fn output_failed(job: distcc_rs_proto::JobId, e: OutputError) -> RunError {
    match e {
        OutputError::Over(over) => {
            warn!(job_id = %job, cause = %over, "rustc printed too much; stopping the job");
            RunError::Job(JobError::Sandbox(format!("the job was stopped: {over}")))
        }
        OutputError::Io { .. } => io_err("rustc's output", e),
    }
}

/// Forwards one stderr line with its newline. A line longer than a chunk
/// (a huge diagnostic) goes in pieces, so no frame exceeds the limit; the
/// client writes the pieces back to back.
async fn send_stderr(w: &mut FrameWriter, mut line: Vec<u8>) -> Result<(), NetError> {
    line.push(b'\n');
    for piece in line.chunks(distcc_rs_proto::MAX_CHUNK_LEN) {
        w.send(&JobEvent::Stderr(piece.to_vec())).await?;
    }
    Ok(())
}

/// Sends one output file, named by its client path, unless already sent.
async fn send_output(
    w: &mut FrameWriter,
    store: &crate::store::BlobStore,
    root: &Path,
    output_dirs: &[PathBuf],
    client_path: &str,
    sent: &mut HashSet<PathBuf>,
) -> Result<(), RunError> {
    let rel = output_path(output_dirs, client_path)?;
    if !sent.insert(rel.clone()) {
        return Ok(());
    }
    let (file, meta) = open_output(root, &rel, client_path)?;
    use std::os::unix::fs::PermissionsExt;
    w.send(&JobEvent::Output(OutputHeader {
        path: client_path.to_owned(),
        size: meta.len(),
        executable: meta.permissions().mode() & 0o111 != 0,
    }))
    .await?;
    // The output is also kept in the store, under the digest of exactly the
    // bytes sent: dependents compiled here next list it as an input, and
    // then it need not come back over the network. Keeping it is best
    // effort; the job does not depend on it.
    let copy = store.temp_file().ok();
    let mut tee = Tee::new(file, copy);
    payload::send_compressed(w, &mut tee, OUTPUT_ZSTD_LEVEL).await?;
    if let Some((copy, digest)) = tee.finish()
        && let Err(e) = store.commit(copy, &digest)
    {
        debug!(cause = %e, "cannot keep an output in the store");
    }
    Ok(())
}

/// Checks where rustc says it wrote an output and returns the path relative
/// to the job root. The path comes from a stderr line, which a proc-macro
/// can forge: only a file directly inside a declared output directory may
/// be read.
fn output_path(output_dirs: &[PathBuf], client_path: &str) -> Result<PathBuf, RunError> {
    let rel = manifest::relative_to_root(client_path)
        .map_err(|e| io_err("rustc reported an output at an odd path", e))?;
    if !rel
        .parent()
        .is_some_and(|p| output_dirs.iter().any(|d| d == p))
    {
        return Err(io_err(
            "rustc reported an output outside the output directories",
            client_path,
        ));
    }
    Ok(rel)
}

/// Opens an output for reading, refusing anything but a regular file.
///
/// No symlink is followed anywhere on the way from the job root, not only
/// in the last component: the sandbox can write in an ancestor of an output
/// directory whenever that ancestor is itself writable (an output directory
/// under `/tmp`, or inside another output directory), and there it can
/// move the directory aside and leave a symlink to the node's `/` in its
/// place. Following it would send the node's own files to the client. Each
/// step opens the next component relative to the directory already open, so
/// a swap during the walk cannot redirect it either. O_NONBLOCK keeps a FIFO
/// from hanging the node.
fn open_output(
    root: &Path,
    rel: &Path,
    client_path: &str,
) -> Result<(fs::File, fs::Metadata), RunError> {
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::Mode;
    use std::os::fd::OwnedFd;

    let opening = |e: std::io::Error| io_err(&format!("opening output {client_path}"), e);
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Err(io_err(
            "rustc reported an output without a name",
            client_path,
        ));
    };
    let mut dir = OwnedFd::from(fs::File::open(root).map_err(opening)?);
    let nofollow = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    for component in parent.components() {
        dir = openat(
            &dir,
            component.as_os_str(),
            nofollow | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .map_err(|e| opening(e.into()))?;
    }
    let file = openat(&dir, name, nofollow | OFlag::O_NONBLOCK, Mode::empty())
        .map(fs::File::from)
        .map_err(|e| opening(e.into()))?;
    let meta = file.metadata().map_err(|e| io_err("output metadata", e))?;
    if !meta.is_file() {
        return Err(io_err(
            "rustc reported an output that is not a regular file",
            client_path,
        ));
    }
    Ok((file, meta))
}

/// Reads a file while hashing it and writing a copy.
struct Tee {
    inner: fs::File,
    copy: Option<tempfile::NamedTempFile>,
    hasher: blake3::Hasher,
}

impl Tee {
    fn new(inner: fs::File, copy: Option<tempfile::NamedTempFile>) -> Self {
        Tee {
            inner,
            copy,
            hasher: blake3::Hasher::new(),
        }
    }

    /// The copy and the digest of everything read, unless writing the copy
    /// failed (a full disk, say).
    fn finish(self) -> Option<(tempfile::NamedTempFile, Digest)> {
        let copy = self.copy?;
        Some((copy, Digest(*self.hasher.finalize().as_bytes())))
    }
}

impl std::io::Read for Tee {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        if let Some(copy) = &mut self.copy
            && std::io::Write::write_all(copy, &buf[..n]).is_err()
        {
            self.copy = None;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distcc_rs_proto::{CertFingerprint, JobId, NodeId, ToolchainId};

    #[test]
    fn an_output_is_kept_under_the_digest_of_what_was_read() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::BlobStore::open(dir.path().join("store"), 1 << 30).unwrap();
        let out = dir.path().join("libx.rmeta");
        let content: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        fs::write(&out, &content).unwrap();

        let mut tee = Tee::new(
            fs::File::open(&out).unwrap(),
            Some(store.temp_file().unwrap()),
        );
        let mut sent = Vec::new();
        tee.read_to_end(&mut sent).unwrap();
        assert_eq!(sent, content);
        let (copy, digest) = tee.finish().unwrap();
        assert_eq!(digest, Digest(*blake3::hash(&content).as_bytes()));
        store.commit(copy, &digest).unwrap();
        assert!(store.contains(&digest));
        assert_eq!(fs::read(store.path(&digest)).unwrap(), content);

        // Without a copy (no room in the store) nothing is kept.
        let mut tee = Tee::new(fs::File::open(&out).unwrap(), None);
        tee.read_to_end(&mut Vec::new()).unwrap();
        assert!(tee.finish().is_none());
    }

    /// Every file and directory under `dir`, with each file's content and
    /// each symlink's target, to show that nothing changed there.
    fn snapshot(dir: &Path) -> Vec<(PathBuf, String)> {
        let mut all = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(d) = pending.pop() {
            for entry in fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                let meta = fs::symlink_metadata(&path).unwrap();
                let what = if meta.is_dir() {
                    pending.push(path.clone());
                    "dir".to_owned()
                } else if meta.is_symlink() {
                    format!("-> {}", fs::read_link(&path).unwrap().display())
                } else {
                    String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned()
                };
                all.push((path, what));
            }
        }
        all.sort();
        all
    }

    /// A validated request with the oddest names the validator lets
    /// through puts everything inside the job root and nothing beside it.
    #[test]
    fn a_validated_request_populates_only_its_job_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::BlobStore::open(dir.path().join("store"), 1 << 30).unwrap();
        let mut tmp = store.temp_file().unwrap();
        std::io::Write::write_all(&mut tmp, b"input").unwrap();
        let digest = Digest(*blake3::hash(b"input").as_bytes());
        store.commit(tmp, &digest).unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir_all(outside.join("etc")).unwrap();
        fs::write(outside.join("etc/passwd"), b"root:x:0:0").unwrap();
        let before = snapshot(&outside);

        let file = |path: &str| distcc_rs_proto::message::FileEntry {
            path: path.into(),
            digest,
            size: 5,
            executable: false,
        };
        let req = JobRequest {
            ticket: Ticket {
                job: JobId(1),
                node: NodeId(1),
                toolchain: ToolchainId(Digest([0; 32])),
                client: CertFingerprint([0; 32]),
                mac: [0; 32],
            },
            crate_name: "c".into(),
            args: vec![],
            env: vec![],
            cwd: "/w".into(),
            files: [
                "/w/..a",
                "/w/.../etc/passwd",
                "/w/.hidden",
                "/etc/passwd",
                "/tmp/x/y",
            ]
            .into_iter()
            .map(file)
            .collect(),
            dirs: vec!["/".into(), "/w".into(), "/w/...".into()],
            output_dirs: vec!["/w/target".into(), "/tmp/out".into()],
        };
        let valid = manifest::validate(&req, &manifest::Limits::default()).unwrap();
        let root = dir.path().join("jobs/1");
        fs::create_dir_all(&root).unwrap();
        let (dirs, placements) = root_layout(&root, &valid);
        populate(&store, &dirs, &placements).ok().unwrap();

        assert_eq!(snapshot(&outside), before);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(fs::read(root.join("etc/passwd")).unwrap(), b"input");
        assert_eq!(fs::read(root.join("w/.../etc/passwd")).unwrap(), b"input");
        assert!(root.join("w/target").is_dir() && root.join("tmp/out").is_dir());
        // The node made every entry itself: no symlink that a later step
        // could follow out of the root.
        for (path, what) in snapshot(&root) {
            assert!(!what.starts_with("-> "), "{path:?} {what}");
        }
    }

    /// The message of a refusal, or a panic naming what was accepted.
    fn refusal<T>(result: Result<T, RunError>, what: &str) -> String {
        match result {
            Ok(_) => panic!("{what} was accepted"),
            Err(RunError::Job(JobError::Io(message))) => message,
            Err(RunError::Job(other)) => panic!("{what}: unexpected refusal {other}"),
            Err(RunError::Net(other)) => panic!("{what}: unexpected refusal {other}"),
        }
    }

    #[test]
    fn only_paths_directly_inside_an_output_dir_are_read() {
        let dirs = [PathBuf::from("w/target/deps")];
        let rel = output_path(&dirs, "/w/target/deps/libx.rlib").ok().unwrap();
        assert_eq!(rel, Path::new("w/target/deps/libx.rlib"));
        for bad in [
            "/w/target/deps/../../../etc/passwd",
            "/w/target/deps/./libx.rlib",
            "/w/target/deps//libx.rlib",
            "/w/target/deps/sub/libx.rlib",
            "/w/target/libx.rlib",
            "/w/target/deps",
            "/w/target/deps/",
            "w/target/deps/libx.rlib",
            "/etc/passwd",
            "/",
            "",
        ] {
            refusal(output_path(&dirs, bad), bad);
        }
    }

    /// A job root with one output directory, `w/out`, and beside the root
    /// a directory the sandbox must never make the node read.
    struct Layout {
        _dir: tempfile::TempDir,
        root: PathBuf,
        outside: PathBuf,
    }

    fn layout() -> Layout {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir_all(root.join("w/out")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret"), b"the node's own file").unwrap();
        Layout {
            _dir: dir,
            root,
            outside,
        }
    }

    #[test]
    fn only_regular_files_are_opened_and_no_symlink_is_followed() {
        let l = layout();
        let out = l.root.join("w/out");
        fs::write(out.join("libok.rlib"), b"rlib").unwrap();
        std::os::unix::fs::symlink(l.outside.join("secret"), out.join("abs.rlib")).unwrap();
        std::os::unix::fs::symlink("../../../outside/secret", out.join("rel.rlib")).unwrap();
        std::os::unix::fs::symlink(&l.outside, out.join("dirlink")).unwrap();
        fs::create_dir(out.join("adir")).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .arg(out.join("fifo"))
            .status()
            .unwrap();
        assert!(fifo.success());

        let (mut file, meta) = open_output(&l.root, Path::new("w/out/libok.rlib"), "ok")
            .ok()
            .unwrap();
        assert_eq!(meta.len(), 4);
        let mut content = String::new();
        std::io::Read::read_to_string(&mut file, &mut content).unwrap();
        assert_eq!(content, "rlib");

        for name in ["abs.rlib", "rel.rlib", "dirlink", "adir", "missing"] {
            let rel = Path::new("w/out").join(name);
            refusal(open_output(&l.root, &rel, name), name);
        }
        // A FIFO is refused at once rather than blocking the node until a
        // writer appears.
        let message = refusal(
            open_output(&l.root, Path::new("w/out/fifo"), "fifo"),
            "fifo",
        );
        assert!(message.contains("not a regular file"), "{message}");
    }

    /// The sandbox can write in an ancestor of an output directory when
    /// that ancestor is writable too: an output directory under `/tmp`, or
    /// one inside another output directory. There it can move the ancestor
    /// aside and leave a symlink to the node's `/` in its place (bubblewrap
    /// allows renaming a directory that holds a mount point). The node must
    /// then refuse the output rather than read the node's own file.
    #[test]
    fn a_swapped_ancestor_of_an_output_dir_is_not_followed() {
        for (output_dir, writable_ancestor) in [("tmp/x/etc", "tmp/x"), ("w/sub/etc", "w/sub")] {
            let l = layout();
            fs::create_dir_all(l.root.join(output_dir)).unwrap();
            fs::create_dir_all(l.outside.join("etc")).unwrap();
            fs::write(l.outside.join("etc/passwd"), b"root:x:0:0").unwrap();
            // What code in the sandbox can do once the ancestor is writable.
            let ancestor = l.root.join(writable_ancestor);
            fs::rename(&ancestor, ancestor.with_extension("moved")).unwrap();
            std::os::unix::fs::symlink(&l.outside, &ancestor).unwrap();
            assert!(l.root.join(output_dir).join("passwd").is_file());

            let dirs = [PathBuf::from(output_dir)];
            let client_path = format!("/{output_dir}/passwd");
            let rel = output_path(&dirs, &client_path).ok().unwrap();
            let message = refusal(open_output(&l.root, &rel, &client_path), &client_path);
            assert!(message.contains(&client_path), "{message}");
        }
    }

    #[test]
    fn tickets_verify_only_with_the_right_key_and_node() {
        let key = [5u8; 32];
        let tc = ToolchainId(Digest([1; 32]));
        let client = CertFingerprint([4; 32]);
        let mac = blake3::keyed_hash(&key, &Ticket::signed_bytes(JobId(9), NodeId(2), tc, client));
        let ticket = Ticket {
            job: JobId(9),
            node: NodeId(2),
            toolchain: tc,
            client,
            mac: *mac.as_bytes(),
        };
        assert!(check_ticket(&ticket, Some(&key), NodeId(2)).is_ok());
        assert!(check_ticket(&ticket, Some(&[6u8; 32]), NodeId(2)).is_err());
        assert!(check_ticket(&ticket, Some(&key), NodeId(3)).is_err());
        assert!(check_ticket(&ticket, None, NodeId(2)).is_err());
        let forged = Ticket {
            job: JobId(10),
            ..ticket
        };
        assert!(check_ticket(&forged, Some(&key), NodeId(2)).is_err());
        // The MAC covers the client: a ticket rewritten to name another
        // client's certificate does not verify.
        let rebound = Ticket {
            client: CertFingerprint([5; 32]),
            ..ticket
        };
        assert!(check_ticket(&rebound, Some(&key), NodeId(2)).is_err());
    }
}
