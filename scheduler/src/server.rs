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

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use distcc_rs_net::{FrameReader, FrameWriter, NetError, accept_stream, endpoint, payload};
use distcc_rs_proto::message::{
    AllocateRequest, AllocateResponse, BundleError, FetchResponse, NodeEvent, NodeRegistration,
    RegisterResponse, SchedulerRequest, UploadResponse,
};
use distcc_rs_proto::{JobId, NodeId, PROTOCOL_VERSION, ToolchainId};
use quinn::{Connection, ConnectionError, ReadError};
use tokio::task::{JoinError, JoinSet};
use tracing::{Instrument, debug, error, info, info_span, trace, warn};

use crate::farm::{Farm, FarmConfig};
use crate::store::{DEFAULT_MAX_BUNDLE_SIZE, StoreError, StoredBundle, ToolchainStore};

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
    /// Placement tunables.
    pub farm: FarmConfig,
    /// The protocol version the endpoint was bound with, used to name a
    /// version mismatch when an incoming handshake fails.
    pub protocol_version: u32,
}

impl SchedulerConfig {
    /// The defaults, with state under `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        SchedulerConfig {
            state_dir: state_dir.into(),
            max_bundle_size: DEFAULT_MAX_BUNDLE_SIZE,
            farm: FarmConfig::default(),
            protocol_version: PROTOCOL_VERSION,
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
enum RequestError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("no randomness for a ticket key: {0}")]
    Entropy(getrandom::Error),
}

/// State shared by all tasks.
struct Shared {
    farm: Mutex<Farm>,
    store: ToolchainStore,
    protocol_version: u32,
}

impl Shared {
    fn farm(&self) -> MutexGuard<'_, Farm> {
        // Farm methods keep their invariants at every point where they could
        // panic (they only panic on broken invariants anyway), so the state
        // behind a poisoned lock is still the best state there is.
        self.farm.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Serves the farm on `endpoint` until `shutdown` completes or the endpoint
/// is closed. Opens the toolchain store first and announces every bundle
/// already in it.
pub async fn run(
    endpoint: quinn::Endpoint,
    config: SchedulerConfig,
    shutdown: impl Future,
) -> Result<(), SchedulerError> {
    let store = ToolchainStore::open(&config.state_dir, config.max_bundle_size)?;
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
        farm: Mutex::new(farm),
        store,
        protocol_version: config.protocol_version,
    });

    let mut tasks = JoinSet::new();
    tasks.spawn(expire_periodically(shared.clone()));
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
    loop {
        tick.tick().await;
        let expired = shared.farm().expire(Instant::now());
        log_expired(&expired);
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
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            accepted = accept_stream(&conn) => {
                let Some((w, r)) = accepted else { break };
                streams.spawn(stream(shared.clone(), conn.clone(), w, r).in_current_span());
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

async fn stream(shared: Arc<Shared>, conn: Connection, w: FrameWriter, mut r: FrameReader) {
    let request: SchedulerRequest = match r.recv().await {
        Ok(request) => request,
        Err(e) => {
            warn!(cause = %e, "cannot read a request");
            return;
        }
    };
    let peer = conn.remote_address();
    let (what, result) = match request {
        SchedulerRequest::RegisterNode(registration) => (
            "node registration",
            node_control(&shared, peer, registration, w, r).await,
        ),
        SchedulerRequest::Allocate(request) => ("allocation", allocate(&shared, request, w).await),
        SchedulerRequest::UploadToolchain {
            id,
            compressed_size,
        } => (
            "toolchain upload",
            upload(&shared, id, compressed_size, w, r).await,
        ),
        SchedulerRequest::FetchToolchain(id) => ("toolchain fetch", fetch(&shared, id, w).await),
        SchedulerRequest::Status => ("status request", status(&shared, w).await),
        SchedulerRequest::Release { job } => {
            if shared.farm().release(job) {
                debug!(job_id = %job, "assignment released by its client");
            }
            ("release", Ok(()))
        }
    };
    if let Err(e) = result {
        warn!(cause = %e, "{what} failed");
    }
}

/// Registers a node, then follows its control stream until it ends.
async fn node_control(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    registration: NodeRegistration,
    mut w: FrameWriter,
    mut r: FrameReader,
) -> Result<(), RequestError> {
    let mut ticket_key = [0u8; 32];
    getrandom::fill(&mut ticket_key).map_err(RequestError::Entropy)?;
    let node = registration.node;
    let name = registration.name.clone();
    let registered = shared
        .farm()
        .register_node(Instant::now(), &registration, peer, ticket_key);
    let addr = match registered {
        Ok(addr) => addr,
        Err(refusal) => {
            warn!(node_id = %node, "node {name} refused: {refusal}");
            w.send(&RegisterResponse::Refused(refusal)).await?;
            w.finish()?;
            return Ok(());
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
        return Ok(());
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
    Ok(())
}

fn apply_event(shared: &Shared, node: NodeId, event: NodeEvent) {
    match event {
        NodeEvent::JobStarted { job } => {
            let known = shared.farm().job_started(node, job);
            debug!(node_id = %node, job_id = %job, known, "job started");
        }
        NodeEvent::JobFinished {
            job,
            outcome,
            wall_ms,
        } => {
            let known = shared.farm().job_finished(node, job, &outcome);
            debug!(node_id = %node, job_id = %job, known, wall_ms, ?outcome, "job finished");
        }
        NodeEvent::ToolchainReady(id) => {
            shared.farm().toolchain_ready(node, id);
            debug!(node_id = %node, toolchain = %id.0.short(), "node holds a toolchain");
        }
        // Placement counts assignments itself, including those whose client
        // has not reached the node yet, which a node's own count cannot
        // include; the report is only useful for debugging.
        NodeEvent::Load(load) => {
            trace!(node_id = %node, running = load.running, slots = load.slots, "load report");
        }
    }
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

async fn allocate(
    shared: &Shared,
    request: AllocateRequest,
    mut w: FrameWriter,
) -> Result<(), RequestError> {
    let now = Instant::now();
    let (expired, response) = {
        let mut farm = shared.farm();
        let expired = farm.expire(now);
        (expired, farm.allocate(now, &request))
    };
    log_expired(&expired);
    match &response {
        AllocateResponse::Assigned(a) => debug!(
            job_id = %a.job, node_id = %a.node, krate = %request.crate_name,
            client = %request.client, "assigned to {}", a.node_name
        ),
        AllocateResponse::NeedToolchain => debug!(
            toolchain = %request.toolchain.0.short(), client = %request.client,
            "asked the client for its toolchain"
        ),
        AllocateResponse::RunLocally(reason) => debug!(
            krate = %request.crate_name, client = %request.client,
            "told the client to compile locally: {reason}"
        ),
    }
    w.send(&response).await?;
    w.finish()?;
    Ok(())
}

async fn upload(
    shared: &Shared,
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
    shared: &Shared,
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
    let stored = tokio::task::spawn_blocking(move || upload.finish())
        .await
        .map_err(|e| BundleError::Io(format!("the verification task failed: {e}")))??;
    shared
        .farm()
        .toolchain_stored(stored.id, stored.compressed_size);
    Ok(stored)
}

async fn fetch(shared: &Shared, id: ToolchainId, mut w: FrameWriter) -> Result<(), RequestError> {
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

#[cfg(test)]
mod tests;
