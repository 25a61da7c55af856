//! The node's link to its scheduler: register, report, reconnect.
//!
//! A node is registered with at most one scheduler at a time, over one
//! control stream. That stream comes about in one of two ways:
//!
//! * **Dialled** ([`maintain`]): with `--scheduler`, the node dials that
//!   address, registers, and after losing the scheduler registers again
//!   with a capped back-off.
//! * **Adopted** ([`adopted`]): a scheduler that found the node (over mDNS,
//!   or given its address with `--node`) dials it and asks it to join. The
//!   node accepts if the scheduler runs the node's farm and the node has no
//!   live session; otherwise it declines and says why.
//!
//! Either way the rest is the same: the scheduler answers the registration,
//! and the node sends its events and a load report every second and after
//! every job start and end. When the session ends the node forgets the
//! ticket key, so it accepts no ticket it cannot check, and waits to be
//! adopted again (or redials its `--scheduler`).
//!
//! The session's state (the event queue and the load sampler) sits behind
//! an async mutex held for the whole session: whoever holds it is the
//! node's one scheduler, and an adoption that cannot take it at once is
//! declined.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distcc_rs_net::{FrameReader, FrameWriter, NetError, open_stream};
use distcc_rs_proto::PeerRole;
use distcc_rs_proto::message::{
    AdoptRefusal, AdoptReply, AdoptRequest, NodeEvent, NodeLoad, NodeRegistration,
    RegisterResponse, SchedulerRequest,
};
use quinn::ConnectionError;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::load::LoadSampler;
use crate::server::Shared;

/// How often the node reports its load while nothing else happens.
const LOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The first pause before redialling a `--scheduler`, and the longest.
const FIRST_REDIAL: Duration = Duration::from_millis(200);
const MAX_REDIAL: Duration = Duration::from_secs(5);

/// The node's side of its scheduler link, shared by the dialler and the
/// adoption handler.
#[derive(Debug)]
pub struct Control {
    /// Held for the whole of a registration.
    session: tokio::sync::Mutex<Session>,
    /// Who the current session is with, for adoption requests declined
    /// meanwhile.
    current: Mutex<Option<String>>,
    /// Fired with the scheduler's address at the first registration.
    first_registration: Mutex<Option<oneshot::Sender<SocketAddr>>>,
}

#[derive(Debug)]
struct Session {
    events: mpsc::UnboundedReceiver<NodeEvent>,
    /// `None` where the machine cannot be measured (no `/proc`); load
    /// reports then carry the job counts only.
    load: Option<LoadSampler>,
}

impl Control {
    pub(crate) fn new(
        events: mpsc::UnboundedReceiver<NodeEvent>,
        load: Option<LoadSampler>,
    ) -> Self {
        Control {
            session: tokio::sync::Mutex::new(Session { events, load }),
            current: Mutex::new(None),
            first_registration: Mutex::new(None),
        }
    }

    /// Arranges for `tx` to receive the scheduler's address when the node
    /// first registers, however the session came about.
    pub(crate) fn on_first_registration(&self, tx: oneshot::Sender<SocketAddr>) {
        *lock(&self.first_registration) = Some(tx);
    }

    fn set_current(&self, who: Option<String>) {
        *lock(&self.current) = who;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps the node registered with the scheduler at `scheduler` (the
/// `--scheduler` fallback), forever. Between attempts, and while an adopted
/// session runs, the session is free for adoption.
pub async fn maintain(shared: Arc<Shared>, scheduler: SocketAddr) {
    let mut backoff = FIRST_REDIAL;
    loop {
        let result = {
            let mut session = shared.control.session.lock().await;
            shared
                .control
                .set_current(Some(format!("{scheduler} (--scheduler)")));
            let result = dial(&shared, &mut session, scheduler).await;
            end_session(&shared, &mut session);
            result
        };
        match result {
            Ok(Ended::ShuttingDown) => return,
            Ok(Ended::Lost(reason)) => {
                warn!(%scheduler, cause = %reason, "lost the scheduler; registering again");
                backoff = FIRST_REDIAL;
            }
            Err(e) => {
                warn!(%scheduler, cause = %e, "cannot register with the scheduler");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_REDIAL);
    }
}

/// Dials the scheduler and runs one session. Returns why it ended.
async fn dial(
    shared: &Arc<Shared>,
    session: &mut Session,
    scheduler: SocketAddr,
) -> Result<Ended, NetError> {
    // TLS checks that the certificate on the other end is the scheduler's.
    let conn = distcc_rs_net::connect(
        &shared.endpoint,
        scheduler,
        PeerRole::Scheduler,
        &shared.opts,
    )
    .await?;
    let (mut w, r) = open_stream(&conn).await?;
    w.send(&SchedulerRequest::RegisterNode(registration(shared)?))
        .await?;
    run_session(shared, session, &conn, w, r).await
}

/// Answers a scheduler's adoption request, arrived on `conn`, and if the
/// node joins, runs the session until it ends.
pub async fn adopted(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    mut w: FrameWriter,
    r: FrameReader,
    request: AdoptRequest,
) {
    let peer = conn.remote_address();
    let scheduler = format!("{} at {peer}", request.scheduler_name);
    let farm = &shared.config.farm;
    if &request.farm != farm {
        // A scheduler only dials nodes advertising its farm, so this is one
        // given this node's address with --node by mistake.
        info!(
            "declined adoption by scheduler {scheduler}: it runs farm {:?}, this node belongs \
             to farm {farm:?} (see --netname)",
            request.farm
        );
        decline(
            w,
            AdoptRefusal::WrongFarm {
                node: farm.clone(),
                scheduler: request.farm,
            },
        )
        .await;
        return;
    }
    let Ok(mut session) = shared.control.session.try_lock() else {
        let current = lock(&shared.control.current)
            .clone()
            .unwrap_or_else(|| "another scheduler".to_owned());
        debug!("declined adoption by scheduler {scheduler}: registered with {current}");
        decline(w, AdoptRefusal::AlreadyRegistered(current)).await;
        return;
    };
    shared.control.set_current(Some(scheduler.clone()));
    info!("adopted by scheduler {scheduler}");
    let result = async {
        w.send(&AdoptReply::Register(registration(&shared)?))
            .await?;
        run_session(&shared, &mut session, &conn, w, r).await
    }
    .await;
    end_session(&shared, &mut session);
    match result {
        Ok(Ended::ShuttingDown) => {}
        Ok(Ended::Lost(reason)) => info!(
            "the session with scheduler {scheduler} ended ({reason}); \
             waiting for a scheduler to adopt this node again"
        ),
        Err(e) => warn!(
            cause = %e,
            "the session with scheduler {scheduler} failed; \
             waiting for a scheduler to adopt this node again"
        ),
    }
}

async fn decline(mut w: FrameWriter, why: AdoptRefusal) {
    // The scheduler learns nothing more from a failed send than from the
    // stream breaking, so neither is worth more than the log line above.
    if w.send(&AdoptReply::Decline(why)).await.is_ok() {
        let _ = w.finish();
    }
}

/// What the node tells a scheduler about itself.
fn registration(shared: &Shared) -> Result<NodeRegistration, NetError> {
    let cfg = &shared.config;
    Ok(NodeRegistration {
        node: shared.node_id,
        farm: cfg.farm.clone(),
        name: cfg.name.clone(),
        job_port: shared.endpoint.local_addr()?.port(),
        advertise: cfg.advertise,
        slots: cfg.slots,
        toolchains: shared.toolchains.ready(),
    })
}

/// Why a session ended without an error of its own.
enum Ended {
    /// The node is stopping.
    ShuttingDown,
    /// The scheduler went away or refused the node, for this reason.
    Lost(String),
}

/// The node-control conversation after the registration was sent: the
/// scheduler's answer, then events and load reports until the connection
/// ends. Returns why it ended.
async fn run_session(
    shared: &Arc<Shared>,
    session: &mut Session,
    conn: &quinn::Connection,
    mut w: FrameWriter,
    mut r: FrameReader,
) -> Result<Ended, NetError> {
    let peer = conn.remote_address();
    match r.recv::<RegisterResponse>().await? {
        RegisterResponse::Registered { ticket_key } => {
            shared.forget_jobs();
            *lock(&shared.ticket_key) = Some(ticket_key);
            *lock(&shared.scheduler) = Some(conn.clone());
        }
        RegisterResponse::Refused(why) => {
            conn.close(0u32.into(), b"refused");
            return Ok(Ended::Lost(format!(
                "the scheduler refused the registration: {why}"
            )));
        }
    }
    info!(scheduler = %peer, node_id = %shared.node_id, "registered");
    if let Some(tx) = lock(&shared.control.first_registration).take() {
        let _ = tx.send(peer);
    }
    // A node that just joined is idle and may lack the toolchains the farm
    // uses: the best moment to fetch them.
    shared.prefetch_wake.notify_one();
    let mut tick = tokio::time::interval(LOAD_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = session.events.recv() => {
                let Some(ev) = ev else { return Ok(Ended::ShuttingDown) };
                let changes_load = matches!(
                    ev,
                    NodeEvent::JobStarted { .. } | NodeEvent::JobFinished { .. }
                );
                w.send(&ev).await?;
                // The scheduler places by load, so a start or end is worth
                // a fresh report at once rather than at the next tick.
                if changes_load {
                    w.send(&load(shared, session)).await?;
                }
            }
            _ = tick.tick() => w.send(&load(shared, session)).await?,
            e = conn.closed() => {
                return Ok(match e {
                    // The node closed its endpoint: it is shutting down.
                    ConnectionError::LocallyClosed => Ended::ShuttingDown,
                    other => Ended::Lost(other.to_string()),
                });
            }
        }
    }
}

fn load(shared: &Shared, session: &mut Session) -> NodeEvent {
    let running = shared.running();
    let slots = shared.config.slots;
    NodeEvent::Load(match &mut session.load {
        // A sample reads three small /proc files and one statvfs, about
        // 0.1 ms: cheap enough for the async thread.
        Some(sampler) => sampler.sample(running, slots),
        None => NodeLoad {
            running,
            slots,
            ..NodeLoad::default()
        },
    })
}

/// Forgets everything that belonged to the session that just ended.
fn end_session(shared: &Shared, session: &mut Session) {
    *lock(&shared.ticket_key) = None;
    *lock(&shared.scheduler) = None;
    shared.control.set_current(None);
    // Events from the old session refer to a scheduler that is gone.
    while session.events.try_recv().is_ok() {}
}

#[cfg(test)]
mod tests;
