//! The scheduler's network edge: QUIC connections in, [`Farm`] and
//! [`ToolchainStore`] calls out.
//!
//! Every connection gets a task, and every stream on it a task of its own
//! that reads one [`SchedulerRequest`] and serves it. The farm sits behind a
//! std `Mutex` that is only ever held for a few plain method calls, never
//! across an `.await`, so no task can stall another for longer than that.
//!
//! A node is part of the farm exactly as long as its control stream (the
//! stream it registered on) is readable. When the node closes the stream,
//! its connection closes, or the connection times out because the node
//! stopped answering keep-alives, the read fails and the node is removed.
//! The removal sits in a drop guard, so it also happens when the task is
//! aborted at shutdown.
//!
//! No stream error ends the server: each is logged with the peer and the
//! request it concerned, and the other streams carry on.
//!
//! An allocation that finds every slot busy waits in the farm's queue. Its
//! task registers a oneshot sender next to the farm, under the same lock, and
//! every release of that lock (`FarmGuard`'s drop) dispatches: whatever a
//! task changed, a slot that freed goes to the fairest waiter at once, and no
//! grant can be made before its sender is in place. The waiting task holds
//! no lock; it wakes on the grant, on its own deadline, or when its client's
//! connection closes.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use distcc_rs_net::{
    FrameReader, FrameWriter, NetError, PeerCertificate, accept_stream, endpoint, payload,
    peer_certificate,
};
use distcc_rs_proto::auth::{EnrollRequest, EnrollResponse, close};
use distcc_rs_proto::message::{
    AllocateRequest, AllocateResponse, BundleError, FetchResponse, NodeEvent, NodeRegistration,
    RegisterRefusal, RegisterResponse, RunLocallyReason, SchedulerRequest, UploadResponse,
};
use distcc_rs_proto::{CertFingerprint, JobId, NodeId, PROTOCOL_VERSION, ToolchainId};
use quinn::{Connection, ConnectionError, ReadError};
use tokio::sync::oneshot;
use tokio::task::{JoinError, JoinSet};
use tracing::{Instrument, debug, error, info, info_span, trace, warn};

use crate::access::{authorize, request_name};
use crate::authority::Security;
use crate::discovery::{Discovery, DiscoveryConfig};
use crate::farm::{Decision, Farm, FarmConfig, JobReport, WaiterId};
use crate::store::{
    DEFAULT_MAX_BUNDLE_SIZE, DEFAULT_MAX_STORE_SIZE, Recheck, StoreError, StoredBundle,
    ToolchainStore,
};

/// How often unclaimed assignments are expired even when no request comes
/// in, so that `distcc-rs status` on an idle farm shows freed slots.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(1);

/// How long shutdown waits for connections to acknowledge their close.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How the scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Where persistent state lives; toolchain bundles go in its
    /// `toolchains` subdirectory, which is created if missing.
    pub state_dir: PathBuf,
    /// The largest compressed toolchain bundle a client may upload.
    pub max_bundle_size: u64,
    /// The compressed bytes all stored bundles may take together; the
    /// least recently used are evicted to make room.
    pub max_store_size: u64,
    /// Placement tunables.
    pub farm: FarmConfig,
    /// The protocol version the endpoint was bound with, used to name a
    /// version mismatch when an incoming handshake fails.
    pub protocol_version: u32,
    /// mDNS and the nodes to adopt (see [`crate::discovery`]). The farm's
    /// name is `farm.farm_name`.
    pub discovery: DiscoveryConfig,
}

impl SchedulerConfig {
    /// The defaults, with state under `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        SchedulerConfig {
            state_dir: state_dir.into(),
            max_bundle_size: DEFAULT_MAX_BUNDLE_SIZE,
            max_store_size: DEFAULT_MAX_STORE_SIZE,
            farm: FarmConfig::default(),
            protocol_version: PROTOCOL_VERSION,
            discovery: DiscoveryConfig::default(),
        }
    }
}

/// Why the scheduler could not run.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The toolchain store could not be opened or listed at start-up.
    #[error("cannot open the toolchain store: {0}")]
    Store(#[from] StoreError),
}

/// Why serving one request failed. Only logged: the peer learns of it as a
/// broken stream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("no randomness for a ticket key: {0}")]
    Entropy(getrandom::Error),
    #[error("the request needs a certificate")]
    NoCertificate,
}

/// State shared by all tasks.
pub(crate) struct Shared {
    farm: Mutex<Booking>,
    store: ToolchainStore,
    /// Toolchains whose stored copy is being verified again after a node
    /// rejected it, so that several nodes rejecting the same bundle cause
    /// one check.
    rechecking: Mutex<HashSet<ToolchainId>>,
    pub(crate) protocol_version: u32,
    /// The farm's name: registrations of nodes of another farm are refused,
    /// and discovery adopts and advertises for this farm only.
    pub(crate) farm_name: String,
    /// The farm CA, for enrollment and revocation.
    security: Security,
    /// Every open connection with the certificate it was made with, so that
    /// a revocation can close the revoked member's connections.
    connections: Mutex<HashMap<usize, (CertFingerprint, Connection)>>,
}

impl Shared {
    /// The fingerprint of the peer's certificate on `conn` if it has been
    /// revoked.
    pub(crate) fn revoked_peer(&self, conn: &Connection) -> Option<CertFingerprint> {
        let cert = peer_certificate(conn)?;
        self.security
            .revocations
            .contains(&cert.fingerprint)
            .then_some(cert.fingerprint)
    }

    /// Locks the farm. Releasing the lock dispatches grants to waiting
    /// allocations (see [`FarmGuard`]).
    fn farm(&self) -> FarmGuard<'_> {
        // Farm methods keep their invariants at every point where they could
        // panic (they only panic on broken invariants anyway), so the state
        // behind a poisoned lock is still the best state there is.
        FarmGuard(self.farm.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The farm, and the channels on which waiting allocations expect their
/// answers. One lock covers both, so a waiter is never granted before its
/// channel is registered.
struct Booking {
    farm: Farm,
    waiting: HashMap<WaiterId, oneshot::Sender<AllocateResponse>>,
}

impl Booking {
    fn new(farm: Farm) -> Self {
        Booking {
            farm,
            waiting: HashMap::new(),
        }
    }
}

/// The locked farm. Dropping it first answers every waiter the farm can
/// answer now, so each change that frees a slot (a job finished, released or
/// expired, a node joined or reported) hands the slot out before anyone else
/// can see it free.
struct FarmGuard<'a>(MutexGuard<'a, Booking>);

impl FarmGuard<'_> {
    /// Registers the channel a queued allocation waits on.
    fn wait(&mut self, waiter: WaiterId, answer: oneshot::Sender<AllocateResponse>) {
        self.0.waiting.insert(waiter, answer);
    }

    /// Takes a request out of the queue at its deadline, with its channel.
    /// `None` if it was answered already (the answer is in its channel).
    fn time_out_waiter(&mut self, waiter: WaiterId) -> Option<AllocateResponse> {
        let response = self.0.farm.time_out(waiter)?;
        self.0.waiting.remove(&waiter);
        Some(response)
    }

    /// Takes a request whose client left out of the queue, with its channel.
    /// False if it was answered already.
    fn withdraw(&mut self, waiter: WaiterId) -> bool {
        let withdrawn = self.0.farm.cancel(waiter);
        if withdrawn {
            self.0.waiting.remove(&waiter);
        }
        withdrawn
    }
}

impl Deref for FarmGuard<'_> {
    type Target = Farm;

    fn deref(&self) -> &Farm {
        &self.0.farm
    }
}

impl DerefMut for FarmGuard<'_> {
    fn deref_mut(&mut self) -> &mut Farm {
        &mut self.0.farm
    }
}

impl Drop for FarmGuard<'_> {
    fn drop(&mut self) {
        let booking = &mut *self.0;
        // Releasing a grant nobody can take frees its slot again, which may
        // serve another waiter; hence the loop.
        loop {
            let replies = booking.farm.dispatch(Instant::now());
            if replies.is_empty() {
                break;
            }
            for reply in replies {
                let delivered = match booking.waiting.remove(&reply.waiter) {
                    Some(answer) => answer.send(reply.response),
                    None => Err(reply.response),
                };
                // The waiting task is gone (aborted at shutdown, or it never
                // registered): a grant must not hold a slot for nobody.
                if let Err(AllocateResponse::Assigned(a)) = delivered {
                    booking.farm.release(a.job);
                }
            }
        }
        // Every channel belongs to a request still in the queue; one left
        // behind would be a leak.
        debug_assert!(
            booking.waiting.keys().all(|w| booking.farm.is_waiting(*w)),
            "a channel outlived its queued request"
        );
    }
}

/// Serves the farm on `endpoint` until `shutdown` completes or the endpoint
/// is closed. Opens the toolchain store first and announces every bundle
/// already in it.
pub async fn run(
    endpoint: quinn::Endpoint,
    config: SchedulerConfig,
    security: Security,
    shutdown: impl Future,
) -> Result<(), SchedulerError> {
    let store = ToolchainStore::open(&config.state_dir, config.max_bundle_size)?
        .with_max_store_size(config.max_store_size);
    toolchains::evict_over_limit(&store)?;
    let mut farm_config = config.farm.clone();
    if farm_config.first_job == 0 {
        // Random upper bits: ids of this run do not collide with a previous
        // run's jobs still finishing on the nodes.
        let mut bytes = [0u8; 4];
        if getrandom::fill(&mut bytes).is_ok() {
            farm_config.first_job = u64::from(u32::from_le_bytes(bytes)) << 32;
        }
    }
    let mut farm = Farm::new(farm_config);
    let bundles = store.list()?;
    for bundle in &bundles {
        farm.toolchain_stored(bundle.id, bundle.compressed_size);
    }
    info!(
        count = bundles.len(),
        dir = %store.dir().display(),
        "toolchain store opened"
    );
    let shared = Arc::new(Shared {
        farm: Mutex::new(Booking::new(farm)),
        store,
        rechecking: Mutex::new(HashSet::new()),
        protocol_version: config.protocol_version,
        farm_name: config.farm.farm_name.clone(),
        security,
        connections: Mutex::new(HashMap::new()),
    });

    let mut tasks = JoinSet::new();
    tasks.spawn(expire_periodically(shared.clone()));
    let discovery = Discovery::start(shared.clone(), endpoint.clone(), config.discovery.clone());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let peer = incoming.remote_address();
                tasks.spawn(
                    connection(shared.clone(), incoming).instrument(info_span!("conn", %peer)),
                );
            }
            Some(done) = tasks.join_next() => log_task_end(done),
        }
    }

    info!("shutting down");
    // First, so that the mDNS goodbye goes out while the endpoint still
    // works, and adopted nodes leave like the others.
    discovery.stop().await;
    endpoint.close(0u32.into(), b"scheduler shutting down");
    // Aborting the connection tasks drops their node guards, which take the
    // nodes out of the farm and log their departure.
    tasks.shutdown().await;
    if tokio::time::timeout(CLOSE_GRACE, endpoint.wait_idle())
        .await
        .is_err()
    {
        debug!("some peers did not acknowledge the close in time");
    }
    Ok(())
}

async fn expire_periodically(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(EXPIRY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut members_seen = shared.security.authority.members_changed();
    loop {
        tick.tick().await;
        let expired = shared.farm().expire(Instant::now());
        log_expired(&expired);
        // Revocations made by `distcc-rs-scheduler revoke` while the
        // scheduler runs take effect here, within a tick.
        let changed = shared.security.authority.members_changed();
        if changed != members_seen {
            members_seen = changed;
            let shared = shared.clone();
            let _ = tokio::task::spawn_blocking(move || reload_revocations(&shared)).await;
        }
    }
}

/// Rereads the revocation list, and closes the connections of certificates
/// revoked since the last read.
fn reload_revocations(shared: &Shared) {
    let revoked = match shared.security.authority.revoked() {
        Ok(revoked) => revoked,
        Err(e) => {
            warn!(cause = %e, "cannot reload the revocation list; keeping the previous one");
            return;
        }
    };
    let newly: Vec<CertFingerprint> = revoked
        .iter()
        .filter(|f| !shared.security.revocations.contains(f))
        .copied()
        .collect();
    shared.security.revocations.replace(revoked);
    if newly.is_empty() {
        return;
    }
    info!(count = newly.len(), "certificates revoked");
    let connections = shared
        .connections
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    for (fingerprint, conn) in connections.values() {
        if newly.contains(fingerprint) {
            warn!(
                peer = %conn.remote_address(),
                certificate = %fingerprint.short(),
                "closing the connection of a revoked certificate"
            );
            conn.close(
                close::REVOKED.into(),
                b"this certificate has been revoked by the farm's admin",
            );
        }
    }
}

fn log_expired(expired: &[JobId]) {
    if !expired.is_empty() {
        info!(
            jobs = ?expired,
            "abandoned assignments whose client never reached the node"
        );
    }
}

fn log_task_end(done: Result<(), JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        error!(cause = %e, "a scheduler task panicked");
    }
}

async fn connection(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let peer = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            let e = endpoint::explain(e, peer, shared.protocol_version);
            warn!(cause = %e, "incoming connection failed");
            return;
        }
    };
    debug!("connection established");
    serve_connection(shared, conn).await;
}

/// Serves the streams a peer opens on a connection until it closes, on
/// connections the peer dialled and on those the scheduler dialled to adopt
/// a node alike.
pub(crate) async fn serve_connection(shared: Arc<Shared>, conn: Connection) {
    let cert = peer_certificate(&conn);
    debug!(
        role = %cert.and_then(|c| c.role).map_or_else(|| "none".to_owned(), |r| r.to_string()),
        certificate = %cert.map_or_else(|| "none".to_owned(), |c| c.fingerprint.short()),
        "peer authenticated"
    );
    // The TLS verifier refuses revoked certificates; this second check
    // covers a connection whose handshake raced the revocation.
    if let Some(c) = cert
        && shared.security.revocations.contains(&c.fingerprint)
    {
        warn!(certificate = %c.fingerprint.short(), "closing the connection of a revoked certificate");
        conn.close(
            close::REVOKED.into(),
            b"this certificate has been revoked by the farm's admin",
        );
        return;
    }
    let _tracked = cert.map(|c| TrackedConnection::new(&shared, c.fingerprint, &conn));
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            accepted = accept_stream(&conn) => {
                let Some((w, r)) = accepted else { break };
                streams.spawn(stream(shared.clone(), conn.clone(), cert, w, r).in_current_span());
            }
            Some(done) = streams.join_next() => log_task_end(done),
        }
    }
    // The connection is gone, so every stream task is about to fail its next
    // read or write. Waiting for them (rather than dropping, which would
    // abort them) lets a node's control stream log why the node left.
    while let Some(done) = streams.join_next().await {
        log_task_end(done);
    }
    debug!(
        reason = %conn.close_reason().map_or_else(|| "unknown".into(), |r| r.to_string()),
        "connection closed"
    );
}

/// A connection in [`Shared::connections`] for as long as it is served.
struct TrackedConnection<'a> {
    shared: &'a Shared,
    id: usize,
}

impl<'a> TrackedConnection<'a> {
    fn new(shared: &'a Shared, fingerprint: CertFingerprint, conn: &Connection) -> Self {
        let id = conn.stable_id();
        shared
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, (fingerprint, conn.clone()));
        TrackedConnection { shared, id }
    }
}

impl Drop for TrackedConnection<'_> {
    fn drop(&mut self) {
        self.shared
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

async fn stream(
    shared: Arc<Shared>,
    conn: Connection,
    cert: Option<PeerCertificate>,
    w: FrameWriter,
    mut r: FrameReader,
) {
    let request: SchedulerRequest = match r.recv().await {
        Ok(request) => request,
        Err(e) => {
            warn!(cause = %e, "cannot read a request");
            return;
        }
    };
    let peer = conn.remote_address();
    let role = cert.and_then(|c| c.role);
    if let Err(denied) = authorize(role, &request) {
        warn!(
            role = %role.map_or_else(|| "none".to_owned(), |r| r.to_string()),
            certificate = %cert.map_or_else(|| "none".to_owned(), |c| c.fingerprint.short()),
            "refused a {}: {denied}; closing the connection",
            request_name(&request)
        );
        conn.close(close::NOT_PERMITTED.into(), denied.to_string().as_bytes());
        return;
    }
    let what = request_name(&request);
    // `authorize` let through only requests whose role has a certificate;
    // the fingerprint is what registrations, tickets and releases bind to.
    let fingerprint = cert
        .map(|c| c.fingerprint)
        .ok_or(RequestError::NoCertificate);
    let result = match request {
        SchedulerRequest::Enroll(request) => enroll(&shared, request, w).await,
        SchedulerRequest::RegisterNode(registration) => match fingerprint {
            Ok(cert) => node_control(&shared, peer, cert, registration, w, r)
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        },
        SchedulerRequest::Allocate(request) => match fingerprint {
            Ok(cert) => allocate(&shared, &conn, request, cert, w).await,
            Err(e) => Err(e),
        },
        SchedulerRequest::UploadToolchain {
            id,
            compressed_size,
        } => upload(&shared, id, compressed_size, w, r).await,
        SchedulerRequest::FetchToolchain(id) => fetch(&shared, id, w).await,
        SchedulerRequest::Status => status(&shared, w).await,
        SchedulerRequest::ListToolchains => toolchains::list(shared.clone(), w).await,
        SchedulerRequest::RemoveToolchain { id, force } => {
            toolchains::remove(shared.clone(), id, force, w).await
        }
        SchedulerRequest::Release { job } => fingerprint.map(|cert| {
            if shared.farm().release_by(job, cert) {
                debug!(job_id = %job, "assignment released by its client");
            }
        }),
    };
    if let Err(e) = result {
        warn!(cause = %e, "{what} failed");
    }
}

/// How a node's control stream ended.
#[derive(Debug)]
pub(crate) enum ControlEnd {
    /// The registration was refused, and the node was told why.
    Refused(RegisterRefusal),
    /// The node was a member and has left.
    Left,
}

/// Registers a node, then follows its control stream until it ends. The
/// node may have dialled the scheduler or been dialled by it.
pub(crate) async fn node_control(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    cert: CertFingerprint,
    registration: NodeRegistration,
    mut w: FrameWriter,
    mut r: FrameReader,
) -> Result<ControlEnd, RequestError> {
    let mut ticket_key = [0u8; 32];
    getrandom::fill(&mut ticket_key).map_err(RequestError::Entropy)?;
    let node = registration.node;
    let name = registration.name.clone();
    let registered = if registration.farm != shared.farm_name {
        Err(RegisterRefusal::WrongFarm {
            node: registration.farm.clone(),
            scheduler: shared.farm_name.clone(),
        })
    } else {
        shared
            .farm()
            .register_node(Instant::now(), &registration, peer, ticket_key, cert)
    };
    let addr = match registered {
        Ok(addr) => addr,
        Err(refusal) => {
            warn!(node_id = %node, "node {name} refused: {refusal}");
            w.send(&RegisterResponse::Refused(refusal.clone())).await?;
            w.finish()?;
            return Ok(ControlEnd::Refused(refusal));
        }
    };
    let mut membership = Membership {
        shared: shared.clone(),
        node,
        name: name.clone(),
        reason: None,
    };
    info!(
        node_id = %node,
        "node {name} ({node}) joined at {addr} with {} slots",
        registration.slots
    );
    if let Err(e) = w.send(&RegisterResponse::Registered { ticket_key }).await {
        membership.reason = Some(format!("could not answer its registration: {e}"));
        return Ok(ControlEnd::Left);
    }
    // The send half stays open (and unfinished) while the node is a member,
    // so a node that watches it sees the scheduler go away rather than a
    // clean end.
    let reason = loop {
        match r.recv_opt::<NodeEvent>().await {
            Ok(Some(event)) => apply_event(shared, node, event),
            Ok(None) => break "it closed its control stream".to_owned(),
            Err(e) => break departure_reason(&e),
        }
    };
    membership.reason = Some(reason);
    drop(w);
    Ok(ControlEnd::Left)
}

/// Whether a node is in the farm, for discovery, which must not dial a node
/// that is a member already.
pub(crate) fn is_member(shared: &Shared, node: NodeId) -> bool {
    // The farm has no lookup by id; a snapshot costs a few small structs per
    // node, and discovery asks at most every few seconds per node.
    shared
        .farm()
        .status(Instant::now())
        .nodes
        .iter()
        .any(|n| n.node == node)
}

fn apply_event(shared: &Arc<Shared>, node: NodeId, event: NodeEvent) {
    match event {
        NodeEvent::JobStarted { job } => {
            let known = shared.farm().job_started(node, job);
            debug!(node_id = %node, job_id = %job, known, "job started");
        }
        NodeEvent::JobFinished {
            job,
            outcome,
            wall_ms,
            bytes_in,
            bytes_out,
        } => {
            let report = JobReport {
                outcome,
                wall_ms,
                bytes_in,
                bytes_out,
            };
            debug!(node_id = %node, job_id = %job, ?report, "job finished");
            let known = shared.farm().job_report(Instant::now(), node, job, report);
            debug!(node_id = %node, job_id = %job, known, "job report applied");
        }
        NodeEvent::ToolchainReady(id) => {
            shared.farm().toolchain_ready(node, id);
            debug!(node_id = %node, toolchain = %id.0.short(), "node holds a toolchain");
        }
        // Placement counts the farm's jobs itself, including those whose
        // client has not reached the node yet; the report adds what only the
        // node knows: foreign load, memory and disk.
        NodeEvent::Load(load) => {
            let known = shared.farm().node_load(node, load, Instant::now());
            trace!(node_id = %node, known, ?load, "load report");
        }
        NodeEvent::ToolchainEvicted(id) => {
            shared.farm().toolchain_evicted(node, id);
            debug!(node_id = %node, toolchain = %id.0.short(), "node evicted a toolchain");
        }
        NodeEvent::ToolchainRejected { id, reason } => {
            let Some(name) = shared.farm().toolchain_rejected(node, id) else {
                return;
            };
            warn!(
                node_id = %node, toolchain = %id,
                "node {name} rejected toolchain {id}: {reason}. No more jobs of that toolchain \
                 go to it; the scheduler checks its own copy of the bundle. If the copy is \
                 intact, look at the node (disk, memory, its log); restarting it clears the \
                 rejection"
            );
            recheck_bundle(shared.clone(), id);
        }
    }
}

/// Verifies the stored copy of a toolchain a node rejected, in the
/// background, and forgets it if it is corrupt, so that the next client
/// that needs it is asked to upload it again.
fn recheck_bundle(shared: Arc<Shared>, id: ToolchainId) {
    fn lock(shared: &Shared) -> MutexGuard<'_, HashSet<ToolchainId>> {
        shared
            .rechecking
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
    if !lock(&shared).insert(id) {
        return;
    }
    tokio::spawn(async move {
        let checker = shared.clone();
        let result = tokio::task::spawn_blocking(move || checker.store.recheck(id)).await;
        lock(&shared).remove(&id);
        match result {
            Ok(Recheck::Intact) => info!(
                toolchain = %id,
                "the scheduler's copy of toolchain {id} verified intact: the rejection is the \
                 node's own problem"
            ),
            Ok(Recheck::Deleted(why)) => {
                shared.farm().toolchain_forgotten(id);
                warn!(
                    toolchain = %id,
                    "the scheduler's copy of toolchain {id} was corrupt ({why}) and is deleted; \
                     the next client that needs it uploads it again"
                );
            }
            Ok(Recheck::Missing | Recheck::Replaced) => {
                debug!(toolchain = %id, "the rejected bundle is gone or was replaced");
            }
            Ok(Recheck::Unreadable(why)) => error!(
                toolchain = %id, cause = %why,
                "cannot check the scheduler's copy of a rejected toolchain; it is kept"
            ),
            Err(e) => error!(toolchain = %id, cause = %e, "the bundle check failed"),
        }
    });
}

/// Turns the error that ended a control stream into words for the log.
fn departure_reason(e: &NetError) -> String {
    match e {
        NetError::Read(ReadError::ConnectionLost(lost)) => match lost {
            ConnectionError::TimedOut => "its connection timed out".to_owned(),
            ConnectionError::ApplicationClosed(_) => "it closed its connection".to_owned(),
            ConnectionError::LocallyClosed => "the scheduler closed the connection".to_owned(),
            other => format!("its connection was lost: {other}"),
        },
        NetError::Read(ReadError::Reset(_)) => "it reset its control stream".to_owned(),
        other => format!("its control stream failed: {other}"),
    }
}

/// Keeps a node in the farm while it lives; dropping it removes the node
/// and logs why.
struct Membership {
    shared: Arc<Shared>,
    node: NodeId,
    name: String,
    /// Why the node left, once known. Unset when the task was aborted, which
    /// only happens at shutdown.
    reason: Option<String>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let reason = self
            .reason
            .take()
            .unwrap_or_else(|| "the scheduler is shutting down".to_owned());
        let departure = self.shared.farm().remove_node(Instant::now(), self.node);
        let Some(departure) = departure else { return };
        info!(
            node_id = %self.node,
            abandoned = departure.abandoned.len(),
            connected_secs = departure.connected_for.as_secs(),
            "node {} left: {reason}",
            self.name
        );
    }
}

/// Issues a certificate to a peer that knows the join token.
async fn enroll(
    shared: &Arc<Shared>,
    request: EnrollRequest,
    mut w: FrameWriter,
) -> Result<(), RequestError> {
    let (role, name) = (request.role, request.name.clone());
    let authority = shared.security.authority.clone();
    // Key checks, signing and the locked record update are blocking work.
    let response = tokio::task::spawn_blocking(move || authority.enroll(&request))
        .await
        .unwrap_or_else(|e| {
            EnrollResponse::Refused(distcc_rs_proto::auth::EnrollRefusal::Internal(
                e.to_string(),
            ))
        });
    match &response {
        EnrollResponse::Enrolled { serial, .. } => {
            info!(%role, member = %name, serial, "enrolled a new member");
        }
        EnrollResponse::Refused(why) => {
            warn!(%role, member = %name, "refused an enrollment: {why}");
        }
    }
    w.send(&response).await?;
    w.finish_and_wait().await?;
    Ok(())
}

async fn allocate(
    shared: &Shared,
    conn: &Connection,
    request: AllocateRequest,
    peer_cert: CertFingerprint,
    mut w: FrameWriter,
) -> Result<(), RequestError> {
    let now = Instant::now();
    let (answer, wake) = oneshot::channel();
    let (expired, decision) = {
        let mut farm = shared.farm();
        let expired = farm.expire(now);
        let decision = farm.allocate(now, &request, peer_cert);
        if let Decision::Queued { waiter, .. } = decision {
            farm.wait(waiter, answer);
        }
        (expired, decision)
    };
    log_expired(&expired);
    let response = match decision {
        Decision::Answer(response) => response,
        Decision::Queued { waiter, deadline } => {
            debug!(
                krate = %request.crate_name, client = %request.client, build = %request.build,
                %waiter, "every slot is busy: the request waits"
            );
            let mut queued = Queued {
                shared,
                waiter,
                wake: Some(wake),
            };
            match queued.answer(deadline, conn).await {
                Some(response) => response,
                None => {
                    debug!(%waiter, client = %request.client, "the client left while waiting");
                    return Ok(());
                }
            }
        }
    };
    match &response {
        AllocateResponse::Assigned(a) => {
            shared.store.mark_used(request.toolchain, Instant::now());
            debug!(
                job_id = %a.job, node_id = %a.node, krate = %request.crate_name,
                client = %request.client, "assigned to {}", a.node_name
            );
        }
        AllocateResponse::NeedToolchain => debug!(
            toolchain = %request.toolchain.0.short(), client = %request.client,
            "asked the client for its toolchain"
        ),
        AllocateResponse::RunLocally(reason) => debug!(
            krate = %request.crate_name, client = %request.client,
            "told the client to compile locally: {reason}"
        ),
    }
    let sent = w.send(&response).await.and_then(|()| w.finish());
    if let Err(e) = sent {
        // The client will never use the slot; free it now rather than when
        // the assignment expires.
        if let AllocateResponse::Assigned(a) = &response {
            shared.farm().release(a.job);
        }
        return Err(e.into());
    }
    Ok(())
}

/// An allocation waiting in the farm's queue. Dropping it before it got its
/// answer (the client left, or the task was aborted) withdraws it, and gives
/// back a grant that crossed the withdrawal.
struct Queued<'a> {
    shared: &'a Shared,
    waiter: WaiterId,
    /// Taken once the answer arrived.
    wake: Option<oneshot::Receiver<AllocateResponse>>,
}

impl Queued<'_> {
    /// Waits for the answer. At the deadline the farm is asked directly, so
    /// the answer never depends on some other request happening to
    /// dispatch. `None` if the client's connection closed first.
    async fn answer(&mut self, deadline: Instant, conn: &Connection) -> Option<AllocateResponse> {
        let wake = self.wake.as_mut()?;
        let response = tokio::select! {
            granted = &mut *wake => granted.ok(),
            () = tokio::time::sleep_until(deadline.into()) => {
                let timed_out = self.shared.farm().time_out_waiter(self.waiter);
                // `None`: it was answered just before the deadline, and the
                // answer is already in the channel.
                timed_out.or_else(|| wake.try_recv().ok())
            }
            _ = conn.closed() => return None,
        };
        self.wake = None;
        // The sender is only dropped unanswered when the farm forgot the
        // waiter without a reply, which it never does; compiling locally is
        // the safe answer if it ever did.
        Some(response.unwrap_or(AllocateResponse::RunLocally(RunLocallyReason::NoFreeSlot)))
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let Some(mut wake) = self.wake.take() else {
            return;
        };
        let mut farm = self.shared.farm();
        if !farm.withdraw(self.waiter)
            && let Ok(AllocateResponse::Assigned(a)) = wake.try_recv()
        {
            farm.release(a.job);
        }
    }
}

async fn upload(
    shared: &Arc<Shared>,
    id: ToolchainId,
    announced: u64,
    mut w: FrameWriter,
    mut r: FrameReader,
) -> Result<(), RequestError> {
    let response = match receive_bundle(shared, id, announced, &mut r).await {
        Ok(stored) => {
            info!(
                toolchain = %id,
                compressed_size = stored.compressed_size,
                "toolchain bundle stored"
            );
            UploadResponse::Stored
        }
        Err(e) => {
            warn!(toolchain = %id, cause = %e, "toolchain upload rejected");
            UploadResponse::Rejected(e)
        }
    };
    w.send(&response).await?;
    w.finish()?;
    Ok(())
}

async fn receive_bundle(
    shared: &Arc<Shared>,
    id: ToolchainId,
    announced: u64,
    r: &mut FrameReader,
) -> Result<StoredBundle, BundleError> {
    let limit = shared.store.max_bundle_size();
    if announced > limit {
        return Err(BundleError::TooLarge {
            size: announced,
            limit,
        });
    }
    // A bundle larger than the whole store never fits, whatever is evicted.
    let store_limit = shared.store.max_store_size();
    if announced > store_limit {
        return Err(BundleError::StoreFull {
            size: announced,
            limit: store_limit,
            in_use: 0,
        });
    }
    let too_large = |limit: u64| BundleError::TooLarge {
        size: announced.max(limit.saturating_add(1)),
        limit,
    };
    let receive_error = |e: NetError| match e {
        NetError::PayloadTooLarge { limit } => too_large(limit),
        other => BundleError::Io(format!("receiving the bundle failed: {other}")),
    };

    if shared.store.has(id) {
        // Another client got here first. The stream is still drained so the
        // client sees the same conversation either way, but there is nothing
        // to write or check.
        payload::recv_raw(r, &mut std::io::sink(), limit)
            .await
            .map_err(receive_error)?;
        return Ok(StoredBundle {
            id,
            compressed_size: announced,
        });
    }

    let mut upload = shared.store.begin_upload(id)?;
    // The file writes block, but each is one chunk (at most 1 MiB) into the
    // page cache; the expensive part, verification, runs on the blocking pool.
    let received = payload::recv_raw(r, upload.writer(), limit)
        .await
        .map_err(receive_error)?;
    if received != announced {
        return Err(BundleError::Malformed(format!(
            "the upload announced {announced} bytes but delivered {received}"
        )));
    }
    // Verification, eviction and the final rename, on the blocking pool.
    let storer = shared.clone();
    tokio::task::spawn_blocking(move || toolchains::store_upload(&storer, upload))
        .await
        .map_err(|e| BundleError::Io(format!("the verification task failed: {e}")))?
}

async fn fetch(shared: &Shared, id: ToolchainId, mut w: FrameWriter) -> Result<(), RequestError> {
    // Eviction keeps a bundle while a node downloads it.
    let _lease = shared.store.lease(id);
    let opened = shared.store.open_bundle(id).unwrap_or_else(|e| {
        error!(toolchain = %id, cause = %e, "cannot open a stored bundle");
        None
    });
    match opened {
        Some((file, compressed_size)) => {
            w.send(&FetchResponse::Found { compressed_size }).await?;
            // Bundles are already zstd-compressed, so they travel raw.
            let sent = payload::send_raw(&mut w, file).await?;
            debug!(toolchain = %id.0.short(), sent, "toolchain bundle sent");
        }
        None => w.send(&FetchResponse::NotFound).await?,
    }
    w.finish()?;
    Ok(())
}

async fn status(shared: &Shared, mut w: FrameWriter) -> Result<(), RequestError> {
    let now = Instant::now();
    let (expired, status) = {
        let mut farm = shared.farm();
        let expired = farm.expire(now);
        (expired, farm.status(now))
    };
    log_expired(&expired);
    w.send(&status).await?;
    w.finish()?;
    Ok(())
}

mod toolchains;

#[cfg(test)]
mod tests;
