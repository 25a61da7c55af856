//! Adoption over loopback, without mDNS: a scheduler given a fake node with
//! `--node` dials it, and the fake node speaks the node's side of the
//! protocol. mDNS itself is exercised by the end-to-end test in a network
//! namespace, never here: these tests run on the host's interfaces.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use distcc_rs_net::{
    EndpointOptions, FarmTrust, FrameReader, FrameWriter, PeerAuth, accept_stream, bind_client,
    bind_server, connect, open_stream, payload,
};
use distcc_rs_proto::message::{
    AdoptRefusal, AdoptReply, AdoptRequest, FarmStatus, FetchResponse, NodeRegistration,
    NodeRequest, RegisterRefusal, RegisterResponse, SchedulerRequest, UploadResponse,
};
use distcc_rs_proto::{NodeId, PeerRole, ToolchainId};
use quinn::{Connection, Endpoint};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::authority::{Authority, Security};
use crate::discovery::DiscoveryConfig;
use crate::fixture;
use crate::server::{SchedulerConfig, SchedulerError, run};

struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), SchedulerError>>,
}

impl Running {
    async fn shut_down(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

fn start(state_dir: &std::path::Path, farm: &str, discovery: DiscoveryConfig) -> Running {
    let opened = Security::open(state_dir, "scheduler-test").unwrap();
    let endpoint = bind_server(
        "127.0.0.1:0".parse().unwrap(),
        &opened.identity,
        &opened.auth,
        &EndpointOptions::default(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let mut config = SchedulerConfig {
        discovery,
        ..SchedulerConfig::new(state_dir)
    };
    config.farm.farm_name = farm.to_owned();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run(endpoint, config, opened.security, async move {
        let _ = stopped.await;
    }));
    Running { addr, stop, task }
}

/// A member's identity and trust from the CA of the scheduler whose state
/// is in `state_dir` (created here if the scheduler has not started yet).
fn member(state_dir: &std::path::Path, role: PeerRole) -> (distcc_rs_net::Identity, PeerAuth) {
    let (authority, _) = Authority::open_or_create(state_dir).unwrap();
    let ca = authority.ca();
    (
        ca.issue_identity(role, "test", 1000).unwrap(),
        PeerAuth::Farm(FarmTrust::new(ca.cert_der().clone())),
    )
}

/// A node's endpoint on loopback, with nothing behind it but the test.
fn fake_node(state_dir: &std::path::Path) -> Endpoint {
    let (identity, auth) = member(state_dir, PeerRole::Node);
    bind_server(
        "127.0.0.1:0".parse().unwrap(),
        &identity,
        &auth,
        &EndpointOptions::default(),
    )
    .unwrap()
}

fn adopting(nodes: &[SocketAddr]) -> DiscoveryConfig {
    DiscoveryConfig {
        static_nodes: nodes.iter().map(ToString::to_string).collect(),
        name: "test-scheduler".into(),
        ..DiscoveryConfig::default()
    }
}

fn registration(node: u64, farm: &str, job_port: u16) -> NodeRegistration {
    NodeRegistration {
        node: NodeId(node),
        farm: farm.into(),
        name: format!("fake-{node}"),
        job_port,
        advertise: None,
        slots: 2,
        toolchains: vec![],
    }
}

/// Waits for the scheduler to dial `node` and open its adoption stream.
async fn adoption(node: &Endpoint) -> (Connection, FrameWriter, FrameReader, AdoptRequest) {
    let conn = tokio::time::timeout(Duration::from_secs(20), node.accept())
        .await
        .expect("the scheduler dials the node")
        .unwrap()
        .await
        .unwrap();
    let (w, mut r) = accept_stream(&conn).await.unwrap();
    let NodeRequest::Adopt(request) = r.recv().await.unwrap() else {
        panic!("the scheduler's first message is not an adoption request");
    };
    (conn, w, r, request)
}

async fn client(state_dir: &std::path::Path, addr: SocketAddr) -> Connection {
    dial_as(state_dir, addr, PeerRole::Client).await
}

async fn dial_as(state_dir: &std::path::Path, addr: SocketAddr, role: PeerRole) -> Connection {
    let opts = EndpointOptions::default();
    let (identity, auth) = member(state_dir, role);
    let endpoint = bind_client(addr, Some(&identity), &auth, &opts).unwrap();
    connect(&endpoint, addr, PeerRole::Scheduler, &opts)
        .await
        .unwrap()
}

async fn status(conn: &Connection) -> FarmStatus {
    let (mut w, mut r) = open_stream(conn).await.unwrap();
    w.send(&SchedulerRequest::Status).await.unwrap();
    w.finish().unwrap();
    r.recv().await.unwrap()
}

async fn wait_for(conn: &Connection, what: &str, done: impl Fn(&FarmStatus) -> bool) -> FarmStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = status(conn).await;
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what}; last status: {status:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_static_node_is_adopted_and_served_on_the_dialled_connection() {
    let state = tempfile::tempdir().unwrap();
    let node = fake_node(state.path());
    let node_addr = node.local_addr().unwrap();
    let scheduler = start(state.path(), "default", adopting(&[node_addr]));
    let client = client(state.path(), scheduler.addr).await;
    let (id, bundle) = fixture::bundle("adopted");
    let (mut w, mut r) = open_stream(&client).await.unwrap();
    w.send(&SchedulerRequest::UploadToolchain {
        id,
        compressed_size: bundle.len() as u64,
    })
    .await
    .unwrap();
    payload::send_raw(&mut w, &bundle[..]).await.unwrap();
    w.finish().unwrap();
    assert_eq!(
        r.recv::<UploadResponse>().await.unwrap(),
        UploadResponse::Stored
    );

    let (conn, mut w, mut r, request) = adoption(&node).await;
    assert_eq!(
        request,
        AdoptRequest {
            farm: "default".into(),
            scheduler_name: "test-scheduler".into()
        }
    );
    w.send(&AdoptReply::Register(registration(
        7,
        "default",
        node_addr.port(),
    )))
    .await
    .unwrap();
    let RegisterResponse::Registered { .. } = r.recv().await.unwrap() else {
        panic!("the adopted node was refused");
    };
    let farm = wait_for(&client, "the adopted node to join", |s| s.nodes.len() == 1).await;
    // Clients are sent to the address the scheduler dialled.
    assert_eq!(farm.nodes[0].addr, node_addr);

    // The node fetches a toolchain over the connection the scheduler
    // dialled, as it would over its own.
    let fetched = fetch(&conn, id).await;
    assert_eq!(fetched, bundle);

    // The session ends when the node goes away, and the node leaves.
    conn.close(0u32.into(), b"node shutting down");
    wait_for(&client, "the node to leave", |s| s.nodes.is_empty()).await;
    scheduler.shut_down().await;
}

async fn fetch(conn: &Connection, id: ToolchainId) -> Vec<u8> {
    let (mut w, mut r) = open_stream(conn).await.unwrap();
    w.send(&SchedulerRequest::FetchToolchain(id)).await.unwrap();
    w.finish().unwrap();
    let FetchResponse::Found { compressed_size } = r.recv().await.unwrap() else {
        panic!("the scheduler does not find the bundle it stored");
    };
    let mut out = Vec::new();
    payload::recv_raw(&mut r, &mut out, compressed_size)
        .await
        .unwrap();
    out
}

#[tokio::test]
async fn a_node_that_declined_is_asked_again_later() {
    let state = tempfile::tempdir().unwrap();
    let node = fake_node(state.path());
    let node_addr = node.local_addr().unwrap();
    let scheduler = start(state.path(), "default", adopting(&[node_addr]));

    let (conn, mut w, _r, _) = adoption(&node).await;
    w.send(&AdoptReply::Decline(AdoptRefusal::AlreadyRegistered(
        "another scheduler".into(),
    )))
    .await
    .unwrap();
    w.finish().unwrap();
    conn.closed().await;

    // After its back-off the scheduler dials again, and this time the node
    // joins.
    let (_conn, mut w, mut r, _) = adoption(&node).await;
    w.send(&AdoptReply::Register(registration(
        8,
        "default",
        node_addr.port(),
    )))
    .await
    .unwrap();
    assert!(matches!(
        r.recv().await.unwrap(),
        RegisterResponse::Registered { .. }
    ));
    let client = client(state.path(), scheduler.addr).await;
    wait_for(&client, "the node to join", |s| s.nodes.len() == 1).await;
    scheduler.shut_down().await;
}

#[tokio::test]
async fn nodes_of_another_farm_are_refused_however_they_arrive() {
    let state = tempfile::tempdir().unwrap();
    let node = fake_node(state.path());
    let node_addr = node.local_addr().unwrap();
    let scheduler = start(state.path(), "team-a", adopting(&[node_addr]));

    // Adopted: the scheduler's own request names its farm, and a node that
    // registers for another farm anyway is refused.
    let (_conn, mut w, mut r, request) = adoption(&node).await;
    assert_eq!(request.farm, "team-a");
    w.send(&AdoptReply::Register(registration(
        9,
        "team-b",
        node_addr.port(),
    )))
    .await
    .unwrap();
    assert_eq!(
        r.recv::<RegisterResponse>().await.unwrap(),
        RegisterResponse::Refused(RegisterRefusal::WrongFarm {
            node: "team-b".into(),
            scheduler: "team-a".into()
        })
    );

    // Dialling in.
    let dialling = dial_as(state.path(), scheduler.addr, PeerRole::Node).await;
    let (mut w, mut r) = open_stream(&dialling).await.unwrap();
    w.send(&SchedulerRequest::RegisterNode(registration(
        10, "default", 1,
    )))
    .await
    .unwrap();
    assert_eq!(
        r.recv::<RegisterResponse>().await.unwrap(),
        RegisterResponse::Refused(RegisterRefusal::WrongFarm {
            node: "default".into(),
            scheduler: "team-a".into()
        })
    );
    assert!(status(&dialling).await.nodes.is_empty());
    scheduler.shut_down().await;
}

/// A node whose certificate was revoked is not adopted again when the
/// scheduler finds it (TLS on the scheduler's outgoing connection checks
/// only that the certificate is the farm's and a node's).
#[tokio::test]
async fn a_revoked_node_is_not_adopted() {
    use distcc_rs_net::pki::MemberKey;
    use distcc_rs_proto::auth::{EnrollRequest, EnrollResponse, close};

    let state = tempfile::tempdir().unwrap();
    let (authority, _) = Authority::open_or_create(state.path()).unwrap();
    let key = MemberKey::generate().unwrap();
    let EnrollResponse::Enrolled { certificate, .. } = authority.enroll(&EnrollRequest {
        secret: authority.token().unwrap().secret,
        role: PeerRole::Node,
        name: "gone".into(),
        public_key: key.public_key(),
    }) else {
        panic!("the enrollment was refused")
    };
    assert_eq!(authority.revoke("gone").unwrap().len(), 1);
    let identity = key.into_identity(certificate.into());
    let node = bind_server(
        "127.0.0.1:0".parse().unwrap(),
        &identity,
        &PeerAuth::Farm(FarmTrust::new(authority.ca().cert_der().clone())),
        &EndpointOptions::default(),
    )
    .unwrap();
    let node_addr = node.local_addr().unwrap();

    let scheduler = start(state.path(), "default", adopting(&[node_addr]));
    let conn = tokio::time::timeout(Duration::from_secs(20), node.accept())
        .await
        .expect("the scheduler dials the node")
        .unwrap()
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("the scheduler closes the connection");
    let quinn::ConnectionError::ApplicationClosed(why) = closed else {
        panic!("{closed:?}")
    };
    assert_eq!(u64::from(why.error_code), u64::from(close::REVOKED));
    let client = client(state.path(), scheduler.addr).await;
    assert!(status(&client).await.nodes.is_empty());
    scheduler.shut_down().await;
}
