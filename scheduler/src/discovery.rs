//! Finding nodes and adopting them: the scheduler's side of discovery.
//!
//! The scheduler advertises itself over mDNS (so clients can find it),
//! browses for nodes of its farm, and dials every node it found or was
//! given with `--node HOST:PORT` that is not in the farm yet. On the dialled
//! connection it opens a stream and sends [`NodeRequest::Adopt`]; a node that
//! answers [`AdoptReply::Register`] goes through the same registration and
//! control stream as a node that dialled the scheduler itself, and the
//! streams the node opens on that connection (toolchain fetches) are served
//! like any other.
//!
//! [`targets`] decides when to dial whom; this module does the IO. mDNS
//! only feeds the dialling: a node is in the farm exactly as long as its
//! control stream lives, which QUIC keep-alives watch.

pub mod targets;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use distcc_rs_net::discovery::{Discovered, Mdns};
use distcc_rs_net::{EndpointOptions, NetError, connect, open_stream};
use distcc_rs_proto::discovery::{Advert, Role, SchedulerAdvert, dial_order};
use distcc_rs_proto::message::{AdoptReply, AdoptRequest, NodeRequest, RegisterRefusal};
use quinn::{Connection, Endpoint};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::server::{ControlEnd, Shared, is_member, node_control, serve_connection};
use targets::{Attempt, Dial, Outcome, TargetKey, Targets};

/// How long a refused node has to read the refusal before the scheduler
/// closes the connection.
const REFUSAL_GRACE: Duration = Duration::from_secs(5);

/// How the scheduler finds nodes and is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// Whether to advertise the scheduler and browse for nodes over mDNS.
    /// Off by default: a library user (or test) that wants multicast on its
    /// interfaces has to ask for it.
    pub mdns: bool,
    /// Nodes to adopt by address (`--node HOST:PORT`), for networks where
    /// multicast does not reach.
    pub static_nodes: Vec<String>,
    /// A name for this scheduler in adverts and in nodes' logs.
    pub name: String,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            mdns: false,
            static_nodes: Vec::new(),
            name: "scheduler".to_owned(),
        }
    }
}

/// The running discovery task.
pub(crate) struct Discovery {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Discovery {
    /// Starts advertising, browsing and adopting in the background.
    pub(crate) fn start(shared: Arc<Shared>, endpoint: Endpoint, config: DiscoveryConfig) -> Self {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(shared, endpoint, config, stopped));
        Discovery { stop, task }
    }

    /// Withdraws the mDNS advert (browsers see the scheduler go) and ends
    /// the adopted nodes' sessions.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.task.await
            && e.is_panic()
        {
            tracing::error!(cause = %e, "the discovery task panicked");
        }
    }
}

async fn run(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    config: DiscoveryConfig,
    mut stop: oneshot::Receiver<()>,
) {
    let local = match endpoint.local_addr() {
        Ok(local) => local,
        Err(e) => {
            warn!(cause = %e, "cannot read the scheduler's own address; no node will be adopted");
            return;
        }
    };
    let mut targets = Targets::new();
    for node in &config.static_nodes {
        targets.add_static(node, Instant::now());
    }
    let farm = shared.farm_name.clone();
    let (mdns, mut found) = if config.mdns {
        match start_mdns(&farm, &config.name, local) {
            Ok((mdns, found)) => (Some(mdns), Some(found)),
            Err(e) => {
                warn!(
                    cause = %e,
                    "mDNS is unavailable, so nodes cannot be found automatically: \
                     give them with --node HOST:PORT, or start them with --scheduler"
                );
                (None, None)
            }
        }
    } else {
        (None, None)
    };
    let me = AdoptRequest {
        farm: farm.clone(),
        scheduler_name: config.name.clone(),
    };
    let opts = EndpointOptions {
        protocol_version: shared.protocol_version,
        ..EndpointOptions::default()
    };

    let mut attempts: JoinSet<(TargetKey, Outcome, Option<String>)> = JoinSet::new();
    loop {
        for attempt in targets.due(Instant::now()) {
            let key = attempt.key.clone();
            let span = info_span!("adopt", target = %key);
            let task = adopt(
                shared.clone(),
                endpoint.clone(),
                attempt,
                me.clone(),
                opts.clone(),
            );
            attempts.spawn(
                async move {
                    let (outcome, detail) = task.await;
                    (key, outcome, detail)
                }
                .instrument(span),
            );
        }
        let next_due = targets.next_due();
        tokio::select! {
            _ = &mut stop => break,
            event = next_found(&mut found) => match event {
                Some(Discovered::Found { instance, advert: Advert::Node(node), addrs }) => {
                    debug!(instance, node_id = %node.node, ?addrs, "found a node over mDNS");
                    targets.found(&instance, node.node, addrs, Instant::now());
                }
                Some(Discovered::Removed { instance, advert }) => {
                    info!(
                        instance,
                        "node {} withdrew its mDNS advert; it is no longer dialled \
                         (a session it has stays until its connection ends)",
                        advert.name()
                    );
                    targets.removed(&instance);
                }
                Some(Discovered::Found { .. }) => {}
                None => {
                    warn!("mDNS browsing stopped; nodes that appear from now on are not adopted");
                    found = None;
                }
            },
            Some(done) = attempts.join_next() => match done {
                Ok((key, outcome, detail)) => {
                    let ended = targets.ended(&key, outcome, Instant::now());
                    if let Some(detail) = detail {
                        let retry = ended.retry_in.map_or_else(
                            || "it is no longer advertised, so not again".to_owned(),
                            |d| format!("next try in {} s", d.as_secs()),
                        );
                        if ended.warn {
                            warn!(
                                target = %key,
                                "cannot adopt node {key}: {detail}; {retry}, \
                                 and further failures are logged at debug level"
                            );
                        } else {
                            debug!(target = %key, "cannot adopt node {key}: {detail}; {retry}");
                        }
                    }
                }
                Err(e) if e.is_panic() => {
                    tracing::error!(cause = %e, "an adoption task panicked");
                }
                Err(_) => {}
            },
            () = sleep_until(next_due) => {}
        }
    }
    // Ending the sessions removes the adopted nodes from the farm with
    // "the scheduler is shutting down".
    attempts.shutdown().await;
    if let Some(mdns) = mdns {
        mdns.shutdown().await;
    }
}

fn start_mdns(
    farm: &str,
    name: &str,
    local: SocketAddr,
) -> Result<(Mdns, mpsc::UnboundedReceiver<Discovered>), distcc_rs_net::discovery::DiscoveryError> {
    let mdns = Mdns::start(local.ip())?;
    let advert = Advert::Scheduler(SchedulerAdvert {
        farm: farm.to_owned(),
        name: name.to_owned(),
        port: local.port(),
    });
    // Instance names must be unique on the LAN; a scheduler has no stable
    // id, and a fresh tag per run also keeps a restarted scheduler from
    // colliding with its own previous advert still in caches.
    let mut tag = [0u8; 4];
    let _ = getrandom::fill(&mut tag);
    let instance = mdns.advertise(&advert, &hex_tag(&tag))?;
    let found = mdns.browse(Role::Node, farm)?;
    info!(
        farm,
        instance, "advertising the scheduler over mDNS and looking for nodes of farm {farm:?}"
    );
    Ok((mdns, found))
}

fn hex_tag(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn next_found(found: &mut Option<mpsc::UnboundedReceiver<Discovered>>) -> Option<Discovered> {
    match found {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(when: Option<Instant>) {
    match when {
        Some(when) => tokio::time::sleep_until(when.into()).await,
        None => std::future::pending().await,
    }
}

/// One attempt at a target: dial, ask, and if the node joins, serve it
/// until its session ends. Returns the outcome and, for failures, what to
/// log.
async fn adopt(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    attempt: Attempt,
    me: AdoptRequest,
    opts: EndpointOptions,
) -> (Outcome, Option<String>) {
    if let Some(node) = attempt.node
        && is_member(&shared, node)
    {
        return (Outcome::AlreadyMember, None);
    }
    let conn = match dial(&endpoint, &attempt.dial, &opts).await {
        Ok(conn) => conn,
        Err(why) => return (Outcome::Failed, Some(why)),
    };
    let peer = conn.remote_address();
    // TLS checked that the node's certificate is the farm's and a node's;
    // whether it was revoked only the scheduler knows.
    if let Some(revoked) = shared.revoked_peer(&conn) {
        conn.close(
            distcc_rs_proto::auth::close::REVOKED.into(),
            b"this certificate has been revoked by the farm's admin",
        );
        return (
            Outcome::Failed,
            Some(format!(
                "the node at {peer} holds a revoked certificate ({}); stop it, or remove it \
                 from --node",
                revoked.short()
            )),
        );
    }
    let (w, r, reply) = match ask(&conn, me).await {
        Ok(asked) => asked,
        Err(e) => {
            conn.close(0u32.into(), b"adoption failed");
            return (
                Outcome::Failed,
                Some(format!("the adoption conversation with {peer} failed: {e}")),
            );
        }
    };
    let registration = match reply {
        AdoptReply::Register(registration) => registration,
        AdoptReply::Decline(why) => {
            conn.close(0u32.into(), b"declined");
            return (
                Outcome::Failed,
                Some(format!("the node at {peer} declined: {why}")),
            );
        }
    };
    let node = registration.node;
    if let Some(advertised) = attempt.node
        && advertised != node
    {
        info!(
            "the node at {peer} registers as {node}, but its advert said {advertised} \
             (it may have a new work directory)"
        );
    }
    let control = async {
        // `dial` asked TLS for a node's certificate, so there is one.
        let cert = distcc_rs_net::peer_certificate(&conn)
            .map(|c| c.fingerprint)
            .unwrap_or(distcc_rs_proto::CertFingerprint([0; 32]));
        let end = node_control(&shared, peer, cert, registration, w, r).await;
        if matches!(end, Ok(ControlEnd::Refused(_))) {
            // Closing the connection would discard the refusal still in
            // flight; the node closes it itself once it has read it.
            let _ = tokio::time::timeout(REFUSAL_GRACE, conn.closed()).await;
        }
        conn.close(0u32.into(), b"session over");
        end
    };
    // Streams the node opens on this connection (toolchain fetches) are
    // served for as long as the session lasts.
    let (end, ()) = tokio::join!(control, serve_connection(shared.clone(), conn.clone()));
    match end {
        Ok(ControlEnd::Left) => (Outcome::Served { node }, None),
        Ok(ControlEnd::Refused(RegisterRefusal::DuplicateNode(_))) => {
            (Outcome::AlreadyMember, None)
        }
        Ok(ControlEnd::Refused(why)) => (
            Outcome::Failed,
            Some(format!("its registration was refused: {why}")),
        ),
        Err(e) => (
            Outcome::Failed,
            Some(format!("its control stream failed: {e}")),
        ),
    }
}

/// Connects to the first of the target's addresses that answers.
async fn dial(
    endpoint: &Endpoint,
    dial: &Dial,
    opts: &EndpointOptions,
) -> Result<Connection, String> {
    let local = endpoint
        .local_addr()
        .map_err(|e| format!("cannot read the scheduler's own address: {e}"))?;
    let addrs: Vec<SocketAddr> = match dial {
        Dial::Addrs(addrs) => addrs.clone(),
        Dial::HostPort(host_port) => tokio::net::lookup_host(host_port.as_str())
            .await
            .map_err(|e| format!("cannot resolve {host_port}: {e}"))?
            .collect(),
    };
    let candidates = dial_order(addrs.iter().copied(), local);
    if candidates.is_empty() {
        return Err(format!(
            "none of its addresses {addrs:?} can be dialled from {local} \
             (an IPv4 socket cannot reach IPv6 addresses)"
        ));
    }
    let mut failures = Vec::new();
    for addr in candidates {
        match connect(endpoint, addr, distcc_rs_proto::PeerRole::Node, opts).await {
            Ok(conn) => return Ok(conn),
            Err(e) => failures.push(format!("{addr}: {e}")),
        }
    }
    Err(format!("no address answered ({})", failures.join("; ")))
}

/// Sends the adoption request and reads the node's answer.
async fn ask(
    conn: &Connection,
    me: AdoptRequest,
) -> Result<
    (
        distcc_rs_net::FrameWriter,
        distcc_rs_net::FrameReader,
        AdoptReply,
    ),
    NetError,
> {
    let (mut w, mut r) = open_stream(conn).await?;
    w.send(&NodeRequest::Adopt(me)).await?;
    let reply = r.recv::<AdoptReply>().await?;
    Ok((w, r, reply))
}

#[cfg(test)]
mod tests;
