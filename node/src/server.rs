//! The node daemon: its shared state, its job listener, and start-up.

use std::collections::HashSet;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use distcc_rs_net::credentials::Credentials;
use distcc_rs_net::discovery::Mdns;
use distcc_rs_net::{
    EndpointOptions, FrameReader, FrameWriter, PeerCertificate, accept_stream, endpoint,
    peer_certificate,
};
use distcc_rs_proto::discovery::{Advert, NodeAdvert};
use distcc_rs_proto::message::{NodeEvent, NodeRequest};
use distcc_rs_proto::{JobId, NodeId, ToolchainId};
use quinn::VarInt;
use tokio::sync::{Notify, Semaphore, mpsc};
use tracing::{debug, info, warn};

use crate::isolation::{self, Hardened, Isolation};
use crate::limits::{self, OwnCgroups};
use crate::load::LoadSampler;
use crate::store::BlobStore;
use crate::toolchains::{ToolchainError, ToolchainLease, Toolchains, Usage};
use crate::{NodeError, access, control, fetch, job, prefetch};

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub listen: SocketAddr,
    /// An address clients should use instead of the one the scheduler sees.
    pub advertise: Option<SocketAddr>,
    /// A scheduler to dial and stay registered with (`--scheduler`), for
    /// networks where mDNS does not reach. Without it the node waits to be
    /// adopted by a scheduler that finds it.
    pub scheduler: Option<SocketAddr>,
    /// The farm the node belongs to (`--netname`): it joins schedulers of
    /// this farm only.
    pub farm: String,
    /// Whether to advertise the node over mDNS. Off, a scheduler finds the
    /// node only through `--node` or the node's own `--scheduler`.
    pub mdns: bool,
    pub work_dir: PathBuf,
    pub slots: u32,
    /// The bubblewrap binary that builds each job's sandbox.
    pub bwrap: PathBuf,
    pub job_timeout: Duration,
    /// The largest toolchain bundle the node downloads.
    pub max_bundle_size: u64,
    /// The most bytes the input store keeps; beyond it, the least recently
    /// used inputs are removed.
    pub store_size: u64,
    /// The most bytes the unpacked toolchains may take; beyond it, the least
    /// recently used toolchains no job holds are removed.
    pub toolchain_cache_size: u64,
    /// Whether the node fetches the farm's recently used toolchains while it
    /// is idle (see [`crate::prefetch`]).
    pub prefetch: bool,
    /// Whether a freshly unpacked toolchain's rustc compiles a test crate
    /// before any job uses it. Off only in tests with fake toolchains.
    pub smoke_test: bool,
    /// The user jobs run as when the node is root (`--job-user`: a name, a
    /// uid or `uid:gid`); `None` for [`crate::isolation::DEFAULT_JOB_USER`].
    pub job_user: Option<String>,
    /// The limits every job runs under.
    pub job_limits: crate::limits::Limits,
    /// How much of a job's stderr and stdout the node keeps and forwards.
    pub job_output: crate::rustc_output::OutputLimits,
    /// The node's own binary, which starts every job as the launcher
    /// ([`crate::launcher`]).
    pub launcher: PathBuf,
    /// Run jobs without the job user, the limits and the start-up check
    /// (`--insecure-no-sandbox`).
    pub insecure_no_sandbox: bool,
    /// The node's farm certificate, its key and the farm CA: the node
    /// accepts only peers with certificates of that CA, and dials its
    /// scheduler with this certificate.
    pub credentials: Credentials,
}

/// State every task of the node shares.
#[derive(Debug)]
pub struct Shared {
    pub config: NodeConfig,
    pub node_id: NodeId,
    pub store: BlobStore,
    pub toolchains: Toolchains,
    pub jobs_dir: PathBuf,
    pub slots: Arc<Semaphore>,
    /// Bounds the threads of all rustc processes together.
    pub jobserver: crate::jobserver::Jobserver,
    /// `CARGO_MAKEFLAGS` for the sandbox, naming [`Shared::jobserver`].
    pub makeflags: String,
    /// How jobs are isolated, as checked at start-up.
    pub isolation: Isolation,
    /// The key tickets are signed with, while registered with a scheduler.
    pub ticket_key: Mutex<Option<[u8; 32]>>,
    /// The connection to the scheduler, while there is one.
    pub scheduler: Mutex<Option<quinn::Connection>>,
    /// The registration link, dialled or adopted.
    pub control: control::Control,
    pub endpoint: quinn::Endpoint,
    pub opts: EndpointOptions,
    events: mpsc::UnboundedSender<NodeEvent>,
    seen_jobs: Mutex<HashSet<JobId>>,
    running: AtomicU32,
    /// When the last job ended, so that prefetching waits for the node to
    /// have been idle a while rather than filling a gap between two jobs.
    last_job_end: Mutex<Option<Instant>>,
    /// Wakes the prefetcher (on registration).
    pub prefetch_wake: Notify,
}

impl Shared {
    /// Queues an event for the scheduler. Events raised while the scheduler
    /// is unreachable are dropped: a new registration starts afresh.
    pub fn report(&self, event: NodeEvent) {
        match &event {
            NodeEvent::JobStarted { .. } => {
                self.running.fetch_add(1, Ordering::Relaxed);
            }
            NodeEvent::JobFinished { .. } => {
                self.running.fetch_sub(1, Ordering::Relaxed);
                *self.last_job_end.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            }
            _ => {}
        }
        let _ = self.events.send(event);
    }

    /// Tells the scheduler that a job it placed here was refused, so it
    /// frees the slot at once. The job never started, so the node's own
    /// count of running jobs is not touched.
    pub fn report_refused(&self, job: JobId, error: distcc_rs_proto::message::JobError) {
        let _ = self.events.send(NodeEvent::JobFinished {
            job,
            outcome: distcc_rs_proto::message::JobOutcome::Failed(error),
            wall_ms: 0,
            bytes_in: 0,
            bytes_out: 0,
        });
    }

    /// Forgets which job ids were used. Called on every new registration:
    /// tickets carry a key that is new with each registration, so replays
    /// of an older registration's tickets already fail their signature, and
    /// a restarted scheduler may number its jobs from the start again.
    pub fn forget_jobs(&self) {
        self.seen_jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub fn running(&self) -> u32 {
        self.running.load(Ordering::Relaxed)
    }

    /// How long the node has run no job, `None` while it runs one. A node
    /// that never ran a job has been idle since it started.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.running() > 0 {
            return None;
        }
        let end = *self.last_job_end.lock().unwrap_or_else(|e| e.into_inner());
        Some(end.map_or(Duration::MAX, |at| at.elapsed()))
    }

    /// Records that a job id was used, refusing a ticket presented twice.
    pub fn claim_job(&self, job: JobId) -> Result<(), distcc_rs_proto::message::JobError> {
        let mut seen = self.seen_jobs.lock().unwrap_or_else(|e| e.into_inner());
        // Job ids only grow within a scheduler's life; a bounded memory is
        // enough to stop replays of recent tickets.
        if seen.len() > 1_000_000 {
            seen.clear();
        }
        if !seen.insert(job) {
            return Err(distcc_rs_proto::message::JobError::BadTicket(format!(
                "ticket for {job} was already used"
            )));
        }
        Ok(())
    }

    /// Returns a lease on the toolchain for a job, fetching it from the
    /// scheduler if needed.
    pub async fn toolchain(
        self: &Arc<Self>,
        id: ToolchainId,
    ) -> Result<ToolchainLease, ToolchainError> {
        let lease = self
            .toolchains
            .acquire(id, Usage::Job, || fetch::fetch(self, id, None))
            .await?;
        self.report(NodeEvent::ToolchainReady(id));
        Ok(lease)
    }

    /// Fetches a toolchain no job needs yet, unless that would evict a
    /// toolchain used at or after `last_used` (the farm's last use of it).
    pub async fn prefetch(
        self: &Arc<Self>,
        id: ToolchainId,
        last_used: SystemTime,
    ) -> Result<(), ToolchainError> {
        let lease = self
            .toolchains
            .acquire(id, Usage::Prefetch { last_used }, || {
                fetch::fetch(self, id, Some(last_used))
            })
            .await?;
        drop(lease);
        self.report(NodeEvent::ToolchainReady(id));
        Ok(())
    }
}

/// A node that has bound its socket and opened its directories.
pub struct Node {
    shared: Arc<Shared>,
}

impl Node {
    /// Opens the work directory and binds the job listener.
    pub fn bind(config: NodeConfig) -> Result<Self, NodeError> {
        let mut config = config;
        config.bwrap = match resolve_program(&config.bwrap) {
            Some(program) => program,
            // Every job will fail in the sandbox and be compiled by its
            // client; the operator asked for a node that starts anyway.
            None if config.insecure_no_sandbox => config.bwrap.clone(),
            None => {
                return Err(NodeError::NoSandbox {
                    program: config.bwrap.clone(),
                });
            }
        };
        let work = &config.work_dir;
        fs::create_dir_all(work).map_err(|e| NodeError::io(work, e))?;
        let node_id = load_or_create_id(&work.join("node-id"))?;
        let store = BlobStore::open(work.join("store"), config.store_size)
            .map_err(|e| NodeError::io(work, e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let toolchains = Toolchains::open(
            work.join("toolchains"),
            config.toolchain_cache_size,
            tx.clone(),
        )
        .map_err(|e| NodeError::io(work, e))?;
        let jobs_dir = work.join("jobs");
        // Job roots of a previous run are garbage now.
        let _ = fs::remove_dir_all(&jobs_dir);
        fs::create_dir_all(&jobs_dir).map_err(|e| NodeError::io(&jobs_dir, e))?;
        let isolation = isolate(&config, &jobs_dir, node_id)?;
        let opts = EndpointOptions::default();
        // Client certificates are mandatory: a peer without one of this
        // farm cannot complete a handshake with the node.
        let endpoint = distcc_rs_net::bind_server(
            config.listen,
            &config.credentials.identity,
            &config.credentials.auth(),
            &opts,
        )?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let jobserver = crate::jobserver::Jobserver::new(cores.saturating_sub(1))
            .map_err(|e| NodeError::io(Path::new("jobserver pipe"), e))?;
        let makeflags = jobserver.makeflags();
        let load = LoadSampler::new(work)
            .inspect_err(|e| {
                warn!(
                    cause = %e,
                    "cannot measure this machine's load; reports to the scheduler \
                     carry job counts only"
                )
            })
            .ok();
        let shared = Arc::new(Shared {
            slots: Arc::new(Semaphore::new(config.slots as usize)),
            jobserver,
            makeflags,
            isolation,
            config,
            node_id,
            store,
            toolchains,
            jobs_dir,
            ticket_key: Mutex::new(None),
            scheduler: Mutex::new(None),
            control: control::Control::new(rx, load),
            endpoint,
            opts,
            events: tx,
            seen_jobs: Mutex::new(HashSet::new()),
            running: AtomicU32::new(0),
            last_job_end: Mutex::new(None),
            prefetch_wake: Notify::new(),
        });
        Ok(Node { shared })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, NodeError> {
        self.shared
            .endpoint
            .local_addr()
            .map_err(|e| NodeError::io(Path::new("socket"), e))
    }

    pub fn id(&self) -> NodeId {
        self.shared.node_id
    }

    /// Serves jobs, advertises the node over mDNS (unless configured off)
    /// and keeps the scheduler link up until `shutdown` resolves.
    /// `registered` receives the scheduler's address after the first
    /// successful registration, dialled or adopted.
    pub async fn serve(
        self,
        registered: tokio::sync::oneshot::Sender<SocketAddr>,
        shutdown: impl Future<Output = ()>,
    ) {
        let shared = self.shared.clone();
        shared.control.on_first_registration(registered);
        let mdns = shared.config.mdns.then(|| advertise(&shared)).flatten();
        let prefetcher = shared
            .config
            .prefetch
            .then(|| tokio::spawn(prefetch::run(shared.clone())));
        let dialler = match shared.config.scheduler {
            Some(scheduler) => Some(tokio::spawn(control::maintain(shared.clone(), scheduler))),
            None => {
                info!(
                    farm = %shared.config.farm,
                    "waiting for a scheduler of farm {:?} to adopt this node",
                    shared.config.farm
                );
                None
            }
        };
        let accept = async {
            while let Some(incoming) = shared.endpoint.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let peer = incoming.remote_address();
                    let conn = match incoming.await {
                        Ok(c) => c,
                        Err(e) => {
                            let e = endpoint::explain(e, peer, shared.opts.protocol_version);
                            warn!(%peer, cause = %e, "incoming connection failed");
                            return;
                        }
                    };
                    // Verified in the handshake; what the peer may ask for
                    // depends on the role it names.
                    let certificate = peer_certificate(&conn);
                    while let Some((w, r)) = accept_stream(&conn).await {
                        tokio::spawn(stream(shared.clone(), conn.clone(), certificate, w, r));
                    }
                });
            }
        };
        tokio::select! {
            () = accept => {}
            () = shutdown => info!("shutting down"),
        }
        if let Some(dialler) = dialler {
            dialler.abort();
        }
        if let Some(prefetcher) = prefetcher {
            prefetcher.abort();
        }
        if let Some(mdns) = mdns {
            // Browsers see the node go at once, rather than when its records
            // expire.
            mdns.shutdown().await;
        }
        shared.endpoint.close(0u32.into(), b"node shutting down");
    }
}

/// Advertises the node over mDNS; `None` (with a warning saying what still
/// works) when mDNS is unavailable.
fn advertise(shared: &Shared) -> Option<Mdns> {
    let port = shared.endpoint.local_addr().ok()?.port();
    let advert = Advert::Node(NodeAdvert {
        farm: shared.config.farm.clone(),
        node: shared.node_id,
        name: shared.config.name.clone(),
        port,
        slots: shared.config.slots,
    });
    let unique = format!("{:016x}", shared.node_id.0);
    let advertised = Mdns::start(shared.config.listen.ip()).and_then(|mdns| {
        let instance = mdns.advertise(&advert, &unique)?;
        Ok((mdns, instance))
    });
    match advertised {
        Ok((mdns, instance)) => {
            info!(instance, farm = %shared.config.farm, "advertising the node over mDNS");
            Some(mdns)
        }
        Err(e) => {
            warn!(
                cause = %e,
                "cannot advertise the node over mDNS; only a scheduler given its address \
                 with --node, or the one named with --scheduler, will use it"
            );
            None
        }
    }
}

/// Serves one stream a peer opened: reads its first message and hands the
/// stream to the conversation it starts, if the peer's certificate allows
/// it.
async fn stream(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    certificate: Option<PeerCertificate>,
    w: FrameWriter,
    mut r: FrameReader,
) {
    match r.recv::<NodeRequest>().await {
        Ok(NodeRequest::Job(req)) => job::serve(shared, conn, certificate, w, r, req).await,
        Ok(NodeRequest::Adopt(adopt)) => match access::authorize_adopt(certificate) {
            Ok(()) => control::adopted(shared, conn, w, r, adopt).await,
            Err(why) => {
                warn!(
                    peer = %conn.remote_address(),
                    role = %access::role_name(certificate),
                    certificate = %access::fingerprint_short(certificate),
                    "refused an adoption request: {why}"
                );
                conn.close(
                    VarInt::from_u32(distcc_rs_proto::auth::close::NOT_PERMITTED),
                    b"only the scheduler adopts nodes",
                );
            }
        },
        Err(e) => debug!(cause = %e, "stream closed before a request arrived"),
    }
}

/// Decides how jobs run and checks that it works, or says loudly that jobs
/// will run unprotected.
fn isolate(config: &NodeConfig, jobs_dir: &Path, node: NodeId) -> Result<Isolation, NodeError> {
    if config.insecure_no_sandbox {
        warn!(
            "INSECURE: started with --insecure-no-sandbox: jobs run as the node's own user \
             ({}), without cgroup or rlimit limits (only the job timeout), and the sandbox \
             was not checked. Any client can run code on this machine with the node's rights.",
            nix::unistd::geteuid()
        );
        return Ok(Isolation::Insecure);
    }
    let user = isolation::resolve_user(
        config.job_user.as_deref(),
        nix::unistd::geteuid().as_raw(),
        &isolation::lookup_user,
    )?;
    let own = OwnCgroups::parse(&fs::read_to_string("/proc/self/cgroup").unwrap_or_default());
    let mechanism = limits::detect(
        Path::new(limits::CGROUP_ROOT),
        &own,
        &format!("{:016x}", node.0),
    );
    let hardened = Hardened {
        launcher: config.launcher.clone(),
        user,
        limits: config.job_limits,
        mechanism,
        timeout: config.job_timeout,
    };
    isolation::check(&hardened, &config.bwrap, jobs_dir)?;
    let user = match user {
        Some(u) => format!("uid {} gid {}", u.uid, u.gid),
        None => format!(
            "the node's own user (uid {}), in a user namespace",
            nix::unistd::geteuid()
        ),
    };
    let l = &config.job_limits;
    info!(
        bwrap = %config.bwrap.display(),
        "jobs run sandboxed as {user}; each is limited to {} MiB of memory, {}.{:03} CPUs \
         and {} processes through {}",
        l.memory >> 20,
        l.cpu_millis / 1000,
        l.cpu_millis % 1000,
        l.pids,
        hardened.mechanism.describe()
    );
    Ok(Isolation::Hardened(hardened))
}

/// Finds a program the way a shell would, once, at start-up: jobs then
/// run it by absolute path, whatever `PATH` a client sends.
fn resolve_program(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 {
        return runnable(program).then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| runnable(p))
}

fn load_or_create_id(path: &Path) -> Result<NodeId, NodeError> {
    if let Ok(text) = fs::read_to_string(path)
        && let Ok(id) = u64::from_str_radix(text.trim(), 16)
    {
        return Ok(NodeId(id));
    }
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| NodeError::Random(e.to_string()))?;
    let id = NodeId(u64::from_le_bytes(bytes));
    fs::write(path, format!("{:016x}\n", id.0)).map_err(|e| NodeError::io(path, e))?;
    Ok(id)
}
