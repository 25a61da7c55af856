//! The node's side of adoption, over loopback: a real node (mDNS off, no
//! `--scheduler`) and a fake scheduler that dials it, both with
//! certificates of one test farm.

use std::net::SocketAddr;
use std::time::Duration;

use distcc_rs_net::credentials::Credentials;
use distcc_rs_net::pki::TestFarm;
use distcc_rs_net::{
    EndpointOptions, FrameReader, FrameWriter, Identity, NetError, PeerAuth, bind_client, connect,
    endpoint, open_stream,
};
use distcc_rs_proto::PeerRole;
use distcc_rs_proto::message::{
    AdoptRefusal, AdoptReply, AdoptRequest, NodeEvent, NodeRequest, RegisterRefusal,
    RegisterResponse,
};
use quinn::Connection;
use tokio::sync::oneshot;

use crate::{Node, NodeConfig};

/// How long any one step may take before the test gives up.
const STEP: Duration = Duration::from_secs(20);

struct Running {
    addr: SocketAddr,
    /// The node's farm, which issues the fake peers' certificates.
    pki: TestFarm,
    registered: oneshot::Receiver<SocketAddr>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    _work: tempfile::TempDir,
}

fn start_node(farm: &str) -> Running {
    let work = tempfile::tempdir().unwrap();
    let pki = TestFarm::new();
    let (identity, _) = pki.member(PeerRole::Node);
    let credentials = Credentials {
        ca: pki.ca.cert_der().clone(),
        identity,
    };
    let config = NodeConfig {
        name: "test-node".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        scheduler: None,
        farm: farm.into(),
        // Never on the host's interfaces; the end-to-end tests cover mDNS
        // inside a network namespace.
        mdns: false,
        work_dir: work.path().to_path_buf(),
        slots: 3,
        bwrap: "bwrap".into(),
        job_timeout: Duration::from_secs(60),
        max_bundle_size: 1 << 20,
        store_size: 1 << 20,
        toolchain_cache_size: 1 << 20,
        prefetch: false,
        smoke_test: false,
        job_user: None,
        job_limits: crate::limits::Limits {
            memory: 1 << 30,
            cpu_millis: 1000,
            pids: 128,
        },
        job_output: Default::default(),
        launcher: "distcc-rs-node".into(),
        // No job runs in these tests, and their work directory is a
        // private temporary one the job user could not reach; the sandbox
        // is checked by the end-to-end tests.
        insecure_no_sandbox: true,
        credentials,
    };
    let node = Node::bind(config).expect("the node starts (is bubblewrap installed?)");
    let addr = node.local_addr().unwrap();
    let (registered_tx, registered) = oneshot::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(node.serve(registered_tx, async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        pki,
        registered,
        stop,
        task,
        _work: work,
    }
}

/// A fake scheduler's connection to the node.
async fn dial(node: &Running) -> Connection {
    dial_as(node, PeerRole::Scheduler).await
}

/// A connection to the node from a peer with a certificate of `role`.
async fn dial_as(node: &Running, role: PeerRole) -> Connection {
    let (identity, auth) = node.pki.member(role);
    try_dial(node.addr, Some(&identity), &auth).await.unwrap()
}

async fn try_dial(
    node: SocketAddr,
    identity: Option<&Identity>,
    auth: &PeerAuth,
) -> Result<Connection, NetError> {
    let opts = EndpointOptions::default();
    let endpoint = bind_client(node, identity, auth, &opts).unwrap();
    connect(&endpoint, node, PeerRole::Node, &opts).await
}

async fn adopt(conn: &Connection, farm: &str) -> (AdoptReply, FrameWriter, FrameReader) {
    let (mut w, mut r) = open_stream(conn).await.unwrap();
    w.send(&NodeRequest::Adopt(AdoptRequest {
        farm: farm.into(),
        scheduler_name: "fake".into(),
    }))
    .await
    .unwrap();
    let reply = tokio::time::timeout(STEP, r.recv()).await.unwrap().unwrap();
    (reply, w, r)
}

async fn next_event(r: &mut FrameReader) -> NodeEvent {
    tokio::time::timeout(STEP, r.recv()).await.unwrap().unwrap()
}

#[tokio::test]
async fn a_node_joins_a_scheduler_of_its_farm_and_only_one_at_a_time() {
    let mut node = start_node("team-a");

    // Another farm's scheduler is declined, with the reason.
    let stranger = dial(&node).await;
    let (reply, _, _) = adopt(&stranger, "team-b").await;
    assert_eq!(
        reply,
        AdoptReply::Decline(AdoptRefusal::WrongFarm {
            node: "team-a".into(),
            scheduler: "team-b".into()
        })
    );

    // Its own farm's scheduler gets the registration, then the node-control
    // conversation on the same stream.
    let first = dial(&node).await;
    let (reply, mut w, mut r) = adopt(&first, "team-a").await;
    let AdoptReply::Register(registration) = reply else {
        panic!("the node declined its own farm: {reply:?}");
    };
    assert_eq!(registration.farm, "team-a");
    assert_eq!(registration.name, "test-node");
    assert_eq!(registration.slots, 3);
    assert_eq!(registration.job_port, node.addr.port());
    w.send(&RegisterResponse::Registered {
        ticket_key: [7; 32],
    })
    .await
    .unwrap();
    // The readiness signal names the scheduler's address.
    let scheduler = tokio::time::timeout(STEP, &mut node.registered)
        .await
        .unwrap()
        .unwrap();
    assert!(scheduler.ip().is_loopback(), "{scheduler}");
    // Load reports follow, measured on this machine.
    let NodeEvent::Load(load) = next_event(&mut r).await else {
        panic!("the first event is not a load report");
    };
    assert_eq!((load.running, load.slots), (0, 3));
    assert!(load.cores >= 1 && load.mem_available > 0, "{load:?}");

    // While registered, a second scheduler is declined.
    let second = dial(&node).await;
    let (reply, _, _) = adopt(&second, "team-a").await;
    assert!(
        matches!(reply, AdoptReply::Decline(AdoptRefusal::AlreadyRegistered(ref who)) if who.contains("fake")),
        "{reply:?}"
    );

    // When the first scheduler goes away, the node can be adopted again.
    first.close(0u32.into(), b"scheduler gone");
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let (reply, mut w, _r) = adopt(&second, "team-a").await;
        match reply {
            AdoptReply::Register(_) => {
                w.send(&RegisterResponse::Registered {
                    ticket_key: [8; 32],
                })
                .await
                .unwrap();
                break;
            }
            // The node notices the closed connection a moment later.
            AdoptReply::Decline(AdoptRefusal::AlreadyRegistered(_)) => {
                assert!(tokio::time::Instant::now() < deadline, "never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }

    node.stop.send(()).unwrap();
    node.task.await.unwrap();
}

#[tokio::test]
async fn a_refused_registration_frees_the_node_for_the_next_scheduler() {
    let node = start_node("default");
    let conn = dial(&node).await;
    let (reply, mut w, _r) = adopt(&conn, "default").await;
    assert!(matches!(reply, AdoptReply::Register(_)), "{reply:?}");
    w.send(&RegisterResponse::Refused(RegisterRefusal::NoSlots))
        .await
        .unwrap();
    // The node closes the refusing scheduler's connection and is free.
    tokio::time::timeout(STEP, conn.closed()).await.unwrap();
    let other = dial(&node).await;
    let (reply, _, _) = adopt(&other, "default").await;
    assert!(matches!(reply, AdoptReply::Register(_)), "{reply:?}");
    node.stop.send(()).unwrap();
    node.task.await.unwrap();
}

#[tokio::test]
async fn a_client_certificate_cannot_adopt_the_node() {
    let node = start_node("default");
    let conn = dial_as(&node, PeerRole::Client).await;
    let (mut w, _r) = open_stream(&conn).await.unwrap();
    w.send(&NodeRequest::Adopt(AdoptRequest {
        farm: "default".into(),
        scheduler_name: "impostor".into(),
    }))
    .await
    .unwrap();
    let closed = tokio::time::timeout(STEP, conn.closed()).await.unwrap();
    let err = endpoint::explain(closed, node.addr, distcc_rs_proto::PROTOCOL_VERSION);
    let NetError::Refused { reason, .. } = &err else {
        panic!("not a refusal: {err}");
    };
    assert_eq!(reason, "only the scheduler adopts nodes");

    // The node is still free for its scheduler.
    let scheduler = dial(&node).await;
    let (reply, _, _) = adopt(&scheduler, "default").await;
    assert!(matches!(reply, AdoptReply::Register(_)), "{reply:?}");
    node.stop.send(()).unwrap();
    node.task.await.unwrap();
}

#[tokio::test]
async fn a_peer_without_a_certificate_of_the_farm_cannot_connect() {
    let node = start_node("default");
    let (_, auth) = node.pki.member(PeerRole::Scheduler);
    let other_farm = TestFarm::new();
    let (foreign, _) = other_farm.member(PeerRole::Scheduler);
    for identity in [None, Some(&foreign)] {
        // Depending on timing the refusal ends the handshake, or the
        // connection right after it.
        let err = match try_dial(node.addr, identity, &auth).await {
            Err(e) => e,
            Ok(conn) => {
                let closed = tokio::time::timeout(STEP, conn.closed()).await.unwrap();
                endpoint::explain(closed, node.addr, distcc_rs_proto::PROTOCOL_VERSION)
            }
        };
        assert!(
            matches!(err, NetError::RefusedUs { .. }),
            "{}: {err}",
            if identity.is_some() {
                "another farm's certificate"
            } else {
                "no certificate"
            }
        );
    }
    node.stop.send(()).unwrap();
    node.task.await.unwrap();
}
