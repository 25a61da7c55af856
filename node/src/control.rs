//! The node's link to its scheduler: register, report, reconnect.
//!
//! The node dials the scheduler and keeps one stream open for its whole
//! registration. If the scheduler goes away (restart, network trouble) the
//! node forgets the ticket key, so it accepts no tickets it cannot check, and
//! keeps trying to register again with a capped back-off.

use std::sync::Arc;
use std::time::Duration;

use distcc_rs_net::open_stream;
use distcc_rs_proto::message::{
    NodeEvent, NodeLoad, NodeRegistration, RegisterResponse, SchedulerRequest,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::server::Shared;

/// Runs forever, keeping the node registered.
pub async fn maintain(
    shared: Arc<Shared>,
    mut events: mpsc::UnboundedReceiver<NodeEvent>,
    registered: oneshot::Sender<()>,
) {
    let mut registered = Some(registered);
    let mut backoff = Duration::from_millis(200);
    loop {
        match session(&shared, &mut events, &mut registered).await {
            Ok(reason) => {
                warn!(cause = %reason, "lost the scheduler; registering again");
                backoff = Duration::from_millis(200);
            }
            Err(e) => {
                warn!(scheduler = %shared.config.scheduler, cause = %e, "cannot register with the scheduler")
            }
        }
        *shared.ticket_key.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *shared.scheduler.lock().unwrap_or_else(|e| e.into_inner()) = None;
        // Events from the old session refer to a scheduler that is gone.
        while events.try_recv().is_ok() {}
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One registration, from connect to disconnect. Returns why it ended.
async fn session(
    shared: &Arc<Shared>,
    events: &mut mpsc::UnboundedReceiver<NodeEvent>,
    registered: &mut Option<oneshot::Sender<()>>,
) -> Result<String, distcc_rs_net::NetError> {
    let cfg = &shared.config;
    let conn = distcc_rs_net::connect(&shared.endpoint, cfg.scheduler, &shared.opts).await?;
    let (mut w, mut r) = open_stream(&conn).await?;
    let job_port = shared.endpoint.local_addr()?.port();
    w.send(&SchedulerRequest::RegisterNode(NodeRegistration {
        node: shared.node_id,
        farm: String::from("default"),
        name: cfg.name.clone(),
        job_port,
        advertise: cfg.advertise,
        slots: cfg.slots,
        toolchains: shared.toolchains.ready(),
    }))
    .await?;
    match r.recv::<RegisterResponse>().await? {
        RegisterResponse::Registered { ticket_key } => {
            shared.forget_jobs();
            *shared.ticket_key.lock().unwrap_or_else(|e| e.into_inner()) = Some(ticket_key);
            *shared.scheduler.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        }
        RegisterResponse::Refused(why) => {
            conn.close(0u32.into(), b"refused");
            return Ok(format!("the scheduler refused the registration: {why}"));
        }
    }
    info!(scheduler = %cfg.scheduler, node_id = %shared.node_id, "registered");
    if let Some(tx) = registered.take() {
        let _ = tx.send(());
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { return Ok("the node is shutting down".into()) };
                w.send(&ev).await?;
            }
            _ = tick.tick() => {
                w.send(&NodeEvent::Load(NodeLoad { running: shared.running(), slots: cfg.slots, ..NodeLoad::default() })).await?;
            }
            e = conn.closed() => return Ok(e.to_string()),
        }
    }
}
