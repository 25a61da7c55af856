//! Loopback tests of the server: a real endpoint, a fake node and a fake
//! client speaking the wire protocol. Waits poll `Status` against a deadline
//! instead of sleeping for a guessed time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use distcc_rs_net::{EndpointOptions, FarmTrust, PeerAuth, bind_client, bind_server, connect};
use distcc_rs_net::{FrameReader, FrameWriter, open_stream, payload};
use distcc_rs_proto::message::{
    AllocateRequest, AllocateResponse, BundleError, FarmStatus, FetchResponse, JobOutcome,
    NodeEvent, NodeLoad, NodeRegistration, RegisterRefusal, RegisterResponse, RunLocallyReason,
    SchedulerRequest, UploadResponse,
};
use distcc_rs_proto::{JobId, NodeId, PeerRole, Ticket, ToolchainId};
use quinn::Connection;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::*;
use crate::authority::Security;
use crate::fixture;

/// A scheduler running on loopback, stopped by dropping or sending on `stop`.
struct Running {
    addr: SocketAddr,
    /// Mints the certificates of fake members.
    authority: Arc<crate::authority::Authority>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), SchedulerError>>,
}

fn start(state_dir: &std::path::Path) -> Running {
    start_with(SchedulerConfig::new(state_dir))
}

fn start_with(config: SchedulerConfig) -> Running {
    let opened = Security::open(&config.state_dir, "scheduler-test").unwrap();
    let endpoint = bind_server(
        "127.0.0.1:0".parse().unwrap(),
        &opened.identity,
        &opened.auth,
        &EndpointOptions::default(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let authority = opened.security.authority.clone();
    let task = tokio::spawn(run(endpoint, config, opened.security, async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        authority,
        stop,
        task,
    }
}

impl Running {
    async fn shut_down(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

/// A fresh connection to the scheduler, from its own endpoint, with a
/// certificate of `role` from the scheduler's CA.
async fn dial(scheduler: &Running, role: PeerRole) -> Connection {
    let opts = EndpointOptions::default();
    let ca = scheduler.authority.ca();
    let identity = ca.issue_identity(role, "test", 1000).unwrap();
    let auth = PeerAuth::Farm(FarmTrust::new(ca.cert_der().clone()));
    let endpoint = bind_client(scheduler.addr, Some(&identity), &auth, &opts).unwrap();
    connect(&endpoint, scheduler.addr, PeerRole::Scheduler, &opts)
        .await
        .unwrap()
}

/// One request, one answer, on a new stream.
async fn ask<T: DeserializeOwned>(conn: &Connection, request: &SchedulerRequest) -> T {
    let (mut w, mut r) = open_stream(conn).await.unwrap();
    w.send(request).await.unwrap();
    w.finish().unwrap();
    r.recv().await.unwrap()
}

async fn upload(conn: &Connection, id: ToolchainId, bundle: &[u8]) -> UploadResponse {
    upload_announcing(conn, id, bundle.len() as u64, bundle).await
}

/// Uploads `bundle` after announcing `announced` bytes. Sending may fail
/// when the scheduler refuses early and stops reading; the answer is what
/// counts.
async fn upload_announcing(
    conn: &Connection,
    id: ToolchainId,
    announced: u64,
    bundle: &[u8],
) -> UploadResponse {
    let (mut w, mut r) = open_stream(conn).await.unwrap();
    w.send(&SchedulerRequest::UploadToolchain {
        id,
        compressed_size: announced,
    })
    .await
    .unwrap();
    if payload::send_raw(&mut w, bundle).await.is_ok() {
        let _ = w.finish();
    }
    r.recv().await.unwrap()
}

/// Fetches a bundle as a node does, on a node's connection of its own
/// (only nodes may fetch).
async fn fetch(scheduler: &Running, id: ToolchainId) -> Option<Vec<u8>> {
    let conn = dial(scheduler, PeerRole::Node).await;
    let (mut w, mut r) = open_stream(&conn).await.unwrap();
    w.send(&SchedulerRequest::FetchToolchain(id)).await.unwrap();
    w.finish().unwrap();
    match r.recv().await.unwrap() {
        FetchResponse::NotFound => None,
        FetchResponse::Found { compressed_size } => {
            let mut out = Vec::new();
            let got = payload::recv_raw(&mut r, &mut out, compressed_size)
                .await
                .unwrap();
            assert_eq!(got, compressed_size);
            Some(out)
        }
    }
}

/// Polls `Status` until `done` holds, failing after a generous deadline.
async fn wait_for(conn: &Connection, what: &str, done: impl Fn(&FarmStatus) -> bool) -> FarmStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status: FarmStatus = ask(conn, &SchedulerRequest::Status).await;
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

fn registration(node: u64) -> NodeRegistration {
    NodeRegistration {
        node: NodeId(node),
        farm: "default".into(),
        name: "fake-node".into(),
        job_port: 47001,
        advertise: None,
        slots: 2,
        toolchains: vec![],
    }
}

/// Registers a node on a new stream and returns the open control stream.
async fn register(
    conn: &Connection,
    registration: NodeRegistration,
) -> (RegisterResponse, FrameWriter, FrameReader) {
    let (mut w, mut r) = open_stream(conn).await.unwrap();
    w.send(&SchedulerRequest::RegisterNode(registration))
        .await
        .unwrap();
    let response = r.recv().await.unwrap();
    (response, w, r)
}

fn allocate_request(toolchain: ToolchainId) -> SchedulerRequest {
    SchedulerRequest::Allocate(AllocateRequest {
        toolchain,
        crate_name: "demo".into(),
        client: "test-client:1".into(),
        build: "test-client".into(),
        exclude: Vec::new(),
    })
}

#[tokio::test]
async fn a_node_and_a_client_go_through_a_whole_job() {
    let state = tempfile::tempdir().unwrap();
    let scheduler = start(state.path());
    let client = dial(&scheduler, PeerRole::Client).await;

    // Nobody is there yet: compile locally, and upload nothing.
    let (id, bundle) = fixture::bundle("server-test");
    let answer: AllocateResponse = ask(&client, &allocate_request(id)).await;
    assert_eq!(
        answer,
        AllocateResponse::RunLocally(RunLocallyReason::NoNodes)
    );

    // Upload, fetch back byte for byte, and check that a lie is caught.
    assert_eq!(upload(&client, id, &bundle).await, UploadResponse::Stored);
    assert_eq!(fetch(&scheduler, id).await.as_deref(), Some(&bundle[..]));
    let (unknown, _) = fixture::bundle("never-uploaded");
    assert_eq!(fetch(&scheduler, unknown).await, None);
    match upload(&client, unknown, &bundle).await {
        UploadResponse::Rejected(BundleError::HashMismatch { expected, actual }) => {
            assert_eq!((expected, actual), (unknown, id));
        }
        other => panic!("expected a hash mismatch, got {other:?}"),
    }
    assert_eq!(fetch(&scheduler, unknown).await, None);

    // A node joins and stays; a second registration under its id is refused.
    let node = dial(&scheduler, PeerRole::Node).await;
    let (response, mut control, _control_r) = register(&node, registration(7)).await;
    let RegisterResponse::Registered { ticket_key } = response else {
        panic!("registration failed: {response:?}");
    };
    // With a node there, a toolchain the scheduler lacks is asked for.
    let answer: AllocateResponse = ask(&client, &allocate_request(unknown)).await;
    assert_eq!(answer, AllocateResponse::NeedToolchain);
    let (refused, _w, _r) = register(&node, registration(7)).await;
    assert_eq!(
        refused,
        RegisterResponse::Refused(RegisterRefusal::DuplicateNode(NodeId(7)))
    );

    let answer: AllocateResponse = ask(&client, &allocate_request(id)).await;
    let AllocateResponse::Assigned(assignment) = answer else {
        panic!("expected an assignment, got {answer:?}");
    };
    assert_eq!(assignment.node, NodeId(7));
    assert_eq!(assignment.node_name, "fake-node");
    assert_eq!(
        assignment.addr,
        "127.0.0.1:47001".parse::<SocketAddr>().unwrap()
    );
    let t = assignment.ticket;
    assert_eq!(
        (t.job, t.node, t.toolchain),
        (assignment.job, NodeId(7), id)
    );
    let mac = blake3::keyed_hash(
        &ticket_key,
        &Ticket::signed_bytes(t.job, t.node, t.toolchain, t.client),
    );
    assert_eq!(*mac.as_bytes(), t.mac, "the node can check its tickets");

    let status: FarmStatus = ask(&client, &SchedulerRequest::Status).await;
    assert_eq!(status.nodes.len(), 1);
    assert_eq!(status.nodes[0].running, 1);
    assert_eq!(status.jobs.len(), 1);
    assert_eq!(status.toolchains.len(), 1);
    assert_eq!(status.toolchains[0].id, id);
    assert_eq!(status.toolchains[0].compressed_size, bundle.len() as u64);

    // The node runs the job and reports it.
    let job = assignment.job;
    control.send(&NodeEvent::JobStarted { job }).await.unwrap();
    control.send(&NodeEvent::ToolchainReady(id)).await.unwrap();
    control
        .send(&NodeEvent::JobFinished {
            job,
            outcome: JobOutcome::Compiled { exit_code: 0 },
            wall_ms: 12,
            bytes_in: 0,
            bytes_out: 0,
        })
        .await
        .unwrap();
    let status = wait_for(&client, "the job to finish", |s| s.totals.succeeded == 1).await;
    assert_eq!(status.nodes[0].running, 0);
    assert_eq!(status.nodes[0].jobs_done, 1);
    assert_eq!(status.nodes[0].toolchains, [id]);
    assert!(status.jobs.is_empty());
    assert_eq!(status.totals.assigned, 1);

    // The node goes away: it leaves the farm.
    node.close(0u32.into(), b"node stopping");
    wait_for(&client, "the node to leave", |s| s.nodes.is_empty()).await;
    let answer: AllocateResponse = ask(&client, &allocate_request(id)).await;
    assert_eq!(
        answer,
        AllocateResponse::RunLocally(RunLocallyReason::NoNodes)
    );

    client.close(0u32.into(), b"done");
    scheduler.shut_down().await;
}

#[tokio::test]
async fn stored_bundles_survive_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let (id, bundle) = fixture::bundle("restart");

    let scheduler = start(state.path());
    let client = dial(&scheduler, PeerRole::Client).await;
    assert_eq!(upload(&client, id, &bundle).await, UploadResponse::Stored);
    // A second upload of the same bundle is harmless.
    assert_eq!(upload(&client, id, &bundle).await, UploadResponse::Stored);
    client.close(0u32.into(), b"done");
    scheduler.shut_down().await;

    let scheduler = start(state.path());
    let client = dial(&scheduler, PeerRole::Client).await;
    let status: FarmStatus = ask(&client, &SchedulerRequest::Status).await;
    assert_eq!(status.toolchains.len(), 1);
    assert_eq!(status.toolchains[0].id, id);
    assert_eq!(fetch(&scheduler, id).await.as_deref(), Some(&bundle[..]));
    client.close(0u32.into(), b"done");
    scheduler.shut_down().await;
}

#[tokio::test]
async fn oversized_uploads_are_refused() {
    let state = tempfile::tempdir().unwrap();
    let scheduler = start_with(SchedulerConfig {
        max_bundle_size: 64,
        ..SchedulerConfig::new(state.path())
    });
    let client = dial(&scheduler, PeerRole::Client).await;
    let (id, bundle) = fixture::bundle("big");
    assert!(bundle.len() > 64);
    let size = bundle.len() as u64;
    // Announced honestly: refused before a byte is read.
    assert_eq!(
        upload(&client, id, &bundle).await,
        UploadResponse::Rejected(BundleError::TooLarge { size, limit: 64 })
    );
    // Announced as small: caught while receiving.
    match upload_announcing(&client, id, 10, &bundle).await {
        UploadResponse::Rejected(BundleError::TooLarge { limit: 64, .. }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let status: FarmStatus = ask(&client, &SchedulerRequest::Status).await;
    assert!(status.toolchains.is_empty());
    assert_eq!(fetch(&scheduler, id).await, None);
    client.close(0u32.into(), b"done");
    scheduler.shut_down().await;
}

#[tokio::test]
async fn shutdown_closes_node_connections_and_returns() {
    let state = tempfile::tempdir().unwrap();
    let scheduler = start(state.path());
    let node = dial(&scheduler, PeerRole::Node).await;
    let (response, _w, mut r) = register(&node, registration(1)).await;
    assert!(matches!(response, RegisterResponse::Registered { .. }));
    scheduler.shut_down().await;
    // The node sees its control stream end with the connection.
    assert!(r.recv_opt::<u8>().await.is_err());
}

/// A scheduler with a stored toolchain and one node whose only slot is
/// taken.
struct FullFarm {
    scheduler: Running,
    client: Connection,
    toolchain: ToolchainId,
    /// The node's connection, which must stay open for it to stay a member.
    _node: Connection,
    control: FrameWriter,
    /// The job holding the slot.
    first: JobId,
}

/// Starts a [`FullFarm`] whose queue holds requests for `queue_timeout`.
async fn full_farm(state: &std::path::Path, queue_timeout: Duration) -> FullFarm {
    let mut config = SchedulerConfig::new(state);
    config.farm.queue_timeout = queue_timeout;
    let scheduler = start_with(config);
    let client = dial(&scheduler, PeerRole::Client).await;
    let (id, bundle) = fixture::bundle("queue");
    assert_eq!(upload(&client, id, &bundle).await, UploadResponse::Stored);
    let node = dial(&scheduler, PeerRole::Node).await;
    let one_slot = NodeRegistration {
        slots: 1,
        ..registration(3)
    };
    let (response, control, _control_r) = register(&node, one_slot).await;
    assert!(matches!(response, RegisterResponse::Registered { .. }));
    let answer: AllocateResponse = ask(&client, &allocate_request(id)).await;
    let AllocateResponse::Assigned(first) = answer else {
        panic!("expected an assignment, got {answer:?}");
    };
    FullFarm {
        scheduler,
        client,
        toolchain: id,
        _node: node,
        control,
        first: first.job,
    }
}

#[tokio::test]
async fn a_request_waits_for_a_busy_slot_and_gets_it_when_it_frees() {
    let state = tempfile::tempdir().unwrap();
    let FullFarm {
        scheduler,
        client,
        toolchain: id,
        _node,
        mut control,
        first,
    } = full_farm(state.path(), Duration::from_secs(30)).await;

    let waiting = {
        let conn = dial(&scheduler, PeerRole::Client).await;
        tokio::spawn(async move {
            let answer: AllocateResponse = ask(&conn, &allocate_request(id)).await;
            conn.close(0u32.into(), b"done");
            answer
        })
    };
    let status = wait_for(&client, "the request to wait", |s| s.waiting == 1).await;
    assert_eq!(status.totals.queued, 1);

    control
        .send(&NodeEvent::JobStarted { job: first })
        .await
        .unwrap();
    control
        .send(&NodeEvent::JobFinished {
            job: first,
            outcome: JobOutcome::Compiled { exit_code: 0 },
            wall_ms: 40,
            bytes_in: 0,
            bytes_out: 0,
        })
        .await
        .unwrap();
    let answer = waiting.await.unwrap();
    let AllocateResponse::Assigned(second) = answer else {
        panic!("expected the freed slot, got {answer:?}");
    };
    assert_eq!(second.node, NodeId(3));
    assert_ne!(second.job, first);
    let status: FarmStatus = ask(&client, &SchedulerRequest::Status).await;
    assert_eq!(status.waiting, 0);
    assert_eq!(status.nodes[0].running, 1);
    assert_eq!(status.totals.assigned, 2);

    client.close(0u32.into(), b"done");
    scheduler.shut_down().await;
}

#[tokio::test]
async fn a_request_that_waits_too_long_runs_locally() {
    let state = tempfile::tempdir().unwrap();
    let timeout = Duration::from_millis(300);
    // The node's connection and control stream must stay open: dropping
    // either would make the node leave at once.
    let FullFarm {
        scheduler,
        client,
        toolchain: id,
        _node,
        control: _control,
        ..
    } = full_farm(state.path(), timeout).await;

    let asked = Instant::now();
    let answer: AllocateResponse = ask(&client, &allocate_request(id)).await;
    assert_eq!(
        answer,
        AllocateResponse::RunLocally(RunLocallyReason::NoFreeSlot)
    );
    assert!(
        asked.elapsed() >= timeout,
        "answered after {:?}",
        asked.elapsed()
    );
    let status: FarmStatus = ask(&client, &SchedulerRequest::Status).await;
    assert_eq!(status.waiting, 0);
    assert_eq!((status.totals.queued, status.totals.run_locally), (1, 1));

    client.close(0u32.into(), b"done");
    scheduler.shut_down().await;
}

#[tokio::test]
async fn a_client_that_leaves_while_waiting_gets_no_slot() {
    let state = tempfile::tempdir().unwrap();
    let FullFarm {
        scheduler,
        client,
        toolchain: id,
        _node,
        mut control,
        first,
    } = full_farm(state.path(), Duration::from_secs(30)).await;

    let leaving = dial(&scheduler, PeerRole::Client).await;
    let (mut w, _r) = open_stream(&leaving).await.unwrap();
    w.send(&allocate_request(id)).await.unwrap();
    w.finish().unwrap();
    wait_for(&client, "the request to wait", |s| s.waiting == 1).await;
    leaving.close(0u32.into(), b"gave up");
    wait_for(&client, "the request to be withdrawn", |s| s.waiting == 0).await;

    // The slot that frees now stays free: nobody is left to take it.
    control
        .send(&NodeEvent::JobFinished {
            job: first,
            outcome: JobOutcome::Compiled { exit_code: 0 },
            wall_ms: 40,
            bytes_in: 0,
            bytes_out: 0,
        })
        .await
        .unwrap();
    let status = wait_for(&client, "the job to finish", |s| s.totals.succeeded == 1).await;
    assert_eq!(status.nodes[0].running, 0);
    assert_eq!(status.totals.assigned, 1);
    assert_eq!(status.totals.run_locally, 0);

    client.close(0u32.into(), b"done");
    scheduler.shut_down().await;
}

#[tokio::test]
async fn load_reports_show_in_the_status_and_keep_jobs_off_short_nodes() {
    let state = tempfile::tempdir().unwrap();
    let scheduler = start(state.path());
    let client = dial(&scheduler, PeerRole::Client).await;
    let (id, bundle) = fixture::bundle("load");
    assert_eq!(upload(&client, id, &bundle).await, UploadResponse::Stored);
    let node = dial(&scheduler, PeerRole::Node).await;
    let (response, mut control, _control_r) = register(&node, registration(4)).await;
    assert!(matches!(response, RegisterResponse::Registered { .. }));

    let short = NodeLoad {
        running: 0,
        slots: 2,
        cores: 4,
        cpu_busy_permille: 100,
        load_avg_centi: 40,
        mem_available: 64 << 20,
        disk_free: 50 << 30,
    };
    control.send(&NodeEvent::Load(short)).await.unwrap();
    let status = wait_for(&client, "the load report", |s| {
        s.nodes.first().is_some_and(|n| n.load.is_some())
    })
    .await;
    assert_eq!(status.nodes[0].load, Some(short));
    assert_eq!(status.nodes[0].speed, 1.0);
    assert_eq!(status.farm, "default");
    let answer: AllocateResponse = ask(&client, &allocate_request(id)).await;
    assert_eq!(
        answer,
        AllocateResponse::RunLocally(RunLocallyReason::NoEligibleNode)
    );

    // Memory again: jobs go there again.
    let roomy = NodeLoad {
        mem_available: 8 << 30,
        ..short
    };
    control.send(&NodeEvent::Load(roomy)).await.unwrap();
    wait_for(&client, "the second report", |s| {
        s.nodes[0].load == Some(roomy)
    })
    .await;
    let answer: AllocateResponse = ask(&client, &allocate_request(id)).await;
    assert!(
        matches!(answer, AllocateResponse::Assigned(_)),
        "{answer:?}"
    );

    client.close(0u32.into(), b"done");
    scheduler.shut_down().await;
}

#[tokio::test]
async fn evictions_and_rejections_from_nodes_steer_placement_and_bundle_checks() {
    let state = tempfile::tempdir().unwrap();
    let scheduler = start(state.path());
    let client = dial(&scheduler, PeerRole::Client).await;
    let (a, bundle_a) = fixture::bundle("rejected-a");
    let (b, bundle_b) = fixture::bundle("rejected-b");
    assert_eq!(upload(&client, a, &bundle_a).await, UploadResponse::Stored);
    assert_eq!(upload(&client, b, &bundle_b).await, UploadResponse::Stored);
    let node7 = dial(&scheduler, PeerRole::Node).await;
    let (_, mut control7, _r7) = register(&node7, registration(7)).await;
    let node8 = dial(&scheduler, PeerRole::Node).await;
    let (_, mut control8, _r8) = register(&node8, registration(8)).await;
    let holders = |s: &FarmStatus, id: ToolchainId| {
        s.toolchains.iter().find(|t| t.id == id).map(|t| t.holders)
    };

    // Node 7 holds both toolchains, then evicts b.
    control7.send(&NodeEvent::ToolchainReady(a)).await.unwrap();
    control7.send(&NodeEvent::ToolchainReady(b)).await.unwrap();
    wait_for(&client, "node 7 to hold both", |s| {
        holders(s, a) == Some(1) && holders(s, b) == Some(1)
    })
    .await;
    control7
        .send(&NodeEvent::ToolchainEvicted(b))
        .await
        .unwrap();
    let status = wait_for(&client, "the eviction", |s| holders(s, b) == Some(0)).await;
    assert_eq!(status.nodes[0].toolchains, [a]);

    // Node 8 rejects b, whose stored copy is intact: b is kept, and its
    // jobs go to node 7 only.
    control8
        .send(&NodeEvent::ToolchainRejected {
            id: b,
            reason: "smoke test failed".into(),
        })
        .await
        .unwrap();
    // The rejection is applied before the next event from the same node.
    control8.send(&NodeEvent::ToolchainReady(a)).await.unwrap();
    wait_for(&client, "node 8's report", |s| holders(s, a) == Some(2)).await;
    for _ in 0..2 {
        let answer: AllocateResponse = ask(&client, &allocate_request(b)).await;
        let AllocateResponse::Assigned(assignment) = answer else {
            panic!("expected an assignment, got {answer:?}");
        };
        assert_eq!(assignment.node, NodeId(7));
    }

    // The scheduler's copy of a goes bad on disk, and node 7 rejects a: the
    // scheduler checks its copy, deletes it, and asks the next client for
    // the bundle again.
    let path = state.path().join("toolchains").join(format!("{a}.tar.zst"));
    let mut damaged = bundle_a.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x01;
    std::fs::write(&path, &damaged).unwrap();
    control7
        .send(&NodeEvent::ToolchainRejected {
            id: a,
            reason: "hash mismatch".into(),
        })
        .await
        .unwrap();
    wait_for(&client, "the corrupt copy to be forgotten", |s| {
        holders(s, a).is_none()
    })
    .await;
    assert!(!path.exists());
    let answer: AllocateResponse = ask(&client, &allocate_request(a)).await;
    assert_eq!(answer, AllocateResponse::NeedToolchain);
    // A good copy can be uploaded again.
    assert_eq!(upload(&client, a, &bundle_a).await, UploadResponse::Stored);
    let status: FarmStatus = ask(&client, &SchedulerRequest::Status).await;
    assert!(status.toolchains.iter().any(|t| t.id == b), "b is kept");
    // Node 7 is full with b's two jobs; a goes to node 8.
    let answer: AllocateResponse = ask(&client, &allocate_request(a)).await;
    assert!(
        matches!(&answer, AllocateResponse::Assigned(x) if x.node == NodeId(8)),
        "{answer:?}"
    );

    client.close(0u32.into(), b"done");
    scheduler.shut_down().await;
}

async fn list_toolchains(conn: &Connection) -> distcc_rs_proto::message::ToolchainList {
    ask(conn, &SchedulerRequest::ListToolchains).await
}

async fn remove_toolchain(
    conn: &Connection,
    id: ToolchainId,
    force: bool,
) -> distcc_rs_proto::message::RemoveResponse {
    ask(conn, &SchedulerRequest::RemoveToolchain { id, force }).await
}

fn ids(list: &distcc_rs_proto::message::ToolchainList) -> Vec<ToolchainId> {
    list.toolchains.iter().map(|t| t.id).collect()
}

fn sorted(mut ids: Vec<ToolchainId>) -> Vec<ToolchainId> {
    ids.sort();
    ids
}

#[tokio::test]
async fn toolchains_are_listed_and_removed_unless_in_use() {
    use distcc_rs_proto::message::{RemoveResponse, ToolchainHolder};
    let state = tempfile::tempdir().unwrap();
    let scheduler = start(state.path());
    let client = dial(&scheduler, PeerRole::Client).await;
    let (a, bundle_a) = fixture::bundle("list-a");
    let (b, bundle_b) = fixture::bundle("list-b");
    assert_eq!(upload(&client, a, &bundle_a).await, UploadResponse::Stored);
    assert_eq!(upload(&client, b, &bundle_b).await, UploadResponse::Stored);

    // A node that holds `a` unpacked, running a job of it.
    let node = dial(&scheduler, PeerRole::Node).await;
    let (response, _control, _control_r) = register(
        &node,
        NodeRegistration {
            toolchains: vec![a],
            ..registration(3)
        },
    )
    .await;
    assert!(matches!(response, RegisterResponse::Registered { .. }));
    let answer: AllocateResponse = ask(&client, &allocate_request(a)).await;
    assert!(
        matches!(answer, AllocateResponse::Assigned(_)),
        "{answer:?}"
    );

    let list = list_toolchains(&client).await;
    assert_eq!(ids(&list), sorted(vec![a, b]));
    assert_eq!(list.used, (bundle_a.len() + bundle_b.len()) as u64);
    assert_eq!(list.limit, crate::store::DEFAULT_MAX_STORE_SIZE);
    let entry_a = list.toolchains.iter().find(|t| t.id == a).unwrap();
    let entry_b = list.toolchains.iter().find(|t| t.id == b).unwrap();
    assert_eq!(entry_a.compressed_size, bundle_a.len() as u64);
    assert_eq!(
        entry_a.holders,
        [ToolchainHolder {
            node: NodeId(3),
            name: "fake-node".into()
        }]
    );
    assert_eq!((entry_a.jobs_in_flight, entry_a.downloads), (1, 0));
    assert!(entry_a.last_used_ago_ms.is_some(), "a job of it was placed");
    assert!(entry_b.holders.is_empty());
    assert_eq!(entry_b.jobs_in_flight, 0);
    assert_eq!(entry_b.last_used_ago_ms, None);
    let summary = entry_b.summary.as_ref().unwrap();
    assert_eq!(summary.version_line, "rustc 1.95.0 (fake list-b)");
    assert_eq!(summary.host, "x86_64-unknown-linux-gnu");

    // A bundle in use stays unless forced; one not in use goes.
    assert_eq!(
        remove_toolchain(&client, a, false).await,
        RemoveResponse::InUse {
            jobs: 1,
            downloads: 0
        }
    );
    assert_eq!(
        remove_toolchain(&client, b, false).await,
        RemoveResponse::Removed {
            freed: bundle_b.len() as u64
        }
    );
    assert_eq!(
        remove_toolchain(&client, b, false).await,
        RemoveResponse::NotFound
    );
    assert_eq!(ids(&list_toolchains(&client).await), [a]);
    assert_eq!(
        remove_toolchain(&client, a, true).await,
        RemoveResponse::Removed {
            freed: bundle_a.len() as u64
        }
    );

    // The farm forgot both: the next client uploads again.
    let answer: AllocateResponse = ask(&client, &allocate_request(a)).await;
    assert_eq!(answer, AllocateResponse::NeedToolchain);
    let status: FarmStatus = ask(&client, &SchedulerRequest::Status).await;
    assert!(status.toolchains.is_empty());
    assert_eq!(fetch(&scheduler, a).await, None);
    assert!(list_toolchains(&client).await.toolchains.is_empty());
    client.close(0u32.into(), b"done");
    scheduler.shut_down().await;
}

#[tokio::test]
async fn uploads_evict_the_least_recently_used_and_never_a_bundle_in_use() {
    let state = tempfile::tempdir().unwrap();
    let bundles: Vec<(ToolchainId, Vec<u8>)> = ["evict-a", "evict-b", "evict-c", "evict-d"]
        .iter()
        .map(|seed| fixture::bundle(seed))
        .collect();
    let [(a, bundle_a), (b, bundle_b), (c, bundle_c), (d, bundle_d)] = &bundles[..] else {
        unreachable!()
    };
    let (a, b, c, d) = (*a, *b, *c, *d);
    // Room for two of these bundles, not three.
    let largest = bundles.iter().map(|(_, b)| b.len() as u64).max().unwrap();
    let smallest = bundles.iter().map(|(_, b)| b.len() as u64).min().unwrap();
    let limit = 2 * largest + smallest / 2;
    let scheduler = start_with(SchedulerConfig {
        max_store_size: limit,
        ..SchedulerConfig::new(state.path())
    });
    let client = dial(&scheduler, PeerRole::Client).await;
    let node = dial(&scheduler, PeerRole::Node).await;
    let (response, mut control, _control_r) = register(&node, registration(5)).await;
    assert!(matches!(response, RegisterResponse::Registered { .. }));

    assert_eq!(upload(&client, a, bundle_a).await, UploadResponse::Stored);
    assert_eq!(upload(&client, b, bundle_b).await, UploadResponse::Stored);
    // A job of `a` makes it the more recently used, and keeps it in use.
    let answer: AllocateResponse = ask(&client, &allocate_request(a)).await;
    let AllocateResponse::Assigned(job_a) = answer else {
        panic!("expected an assignment, got {answer:?}");
    };

    // `c` does not fit beside both: `b`, least recently used, goes.
    assert_eq!(upload(&client, c, bundle_c).await, UploadResponse::Stored);
    assert_eq!(ids(&list_toolchains(&client).await), sorted(vec![a, c]));
    let answer: AllocateResponse = ask(&client, &allocate_request(b)).await;
    assert_eq!(answer, AllocateResponse::NeedToolchain);

    // With jobs of both `a` and `c` in flight, `d` cannot fit.
    let answer: AllocateResponse = ask(&client, &allocate_request(c)).await;
    assert!(
        matches!(answer, AllocateResponse::Assigned(_)),
        "{answer:?}"
    );
    let in_use = (bundle_a.len() + bundle_c.len()) as u64;
    assert_eq!(
        upload(&client, d, bundle_d).await,
        UploadResponse::Rejected(BundleError::StoreFull {
            size: bundle_d.len() as u64,
            limit,
            in_use
        })
    );
    assert_eq!(ids(&list_toolchains(&client).await), sorted(vec![a, c]));

    // Once `a`'s job is over, `a` may go, even though it was used after
    // `c` was stored: `c` is in use.
    let job = job_a.job;
    control.send(&NodeEvent::JobStarted { job }).await.unwrap();
    control
        .send(&NodeEvent::JobFinished {
            job,
            outcome: JobOutcome::Compiled { exit_code: 0 },
            wall_ms: 5,
            bytes_in: 0,
            bytes_out: 0,
        })
        .await
        .unwrap();
    wait_for(&client, "the job to finish", |s| s.totals.succeeded == 1).await;
    assert_eq!(upload(&client, d, bundle_d).await, UploadResponse::Stored);
    assert_eq!(ids(&list_toolchains(&client).await), sorted(vec![c, d]));

    // A bundle announced as larger than the whole store is refused before
    // anything is received.
    let (e, bundle_e) = fixture::bundle("evict-e");
    assert_eq!(
        upload_announcing(&client, e, limit + 1, &bundle_e).await,
        UploadResponse::Rejected(BundleError::StoreFull {
            size: limit + 1,
            limit,
            in_use: 0
        })
    );
    client.close(0u32.into(), b"done");
    scheduler.shut_down().await;

    // A restart with a lower limit trims the store to it, least recently
    // used first: `d` was stored after the last job of `c` was placed, so
    // `c` goes. Recency survived the restart in the files' times.
    let scheduler = start_with(SchedulerConfig {
        max_store_size: limit / 2,
        ..SchedulerConfig::new(state.path())
    });
    let client = dial(&scheduler, PeerRole::Client).await;
    assert_eq!(ids(&list_toolchains(&client).await), [d]);
    let status: FarmStatus = ask(&client, &SchedulerRequest::Status).await;
    assert_eq!(status.toolchains.len(), 1);
    client.close(0u32.into(), b"done");
    scheduler.shut_down().await;
}

mod membership {
    //! Enrollment, roles and revocation against a real scheduler.

    use distcc_rs_net::credentials::{Credentials, CredentialsError, enroll};
    use distcc_rs_proto::auth::{EnrollRefusal, close};

    use super::*;

    async fn connect_with(scheduler: &Running, credentials: &Credentials) -> Connection {
        try_connect_with(scheduler, credentials).await.unwrap()
    }

    async fn try_connect_with(
        scheduler: &Running,
        credentials: &Credentials,
    ) -> Result<Connection, NetError> {
        let opts = EndpointOptions::default();
        let endpoint = bind_client(
            scheduler.addr,
            Some(&credentials.identity),
            &credentials.auth(),
            &opts,
        )
        .unwrap();
        let conn = connect(&endpoint, scheduler.addr, PeerRole::Scheduler, &opts).await?;
        // TLS 1.3 lets the client finish its handshake before the server
        // has checked its certificate; a round trip settles it.
        let (mut w, mut r) = open_stream(&conn).await?;
        w.send(&SchedulerRequest::Status).await?;
        w.finish()?;
        match r.recv::<FarmStatus>().await {
            Ok(_) => Ok(conn),
            Err(_) => Err(distcc_rs_net::endpoint::explain(
                conn.closed().await,
                scheduler.addr,
                PROTOCOL_VERSION,
            )),
        }
    }

    /// Sends `request` on `conn` and returns how the scheduler refused it.
    async fn refusal(conn: &Connection, addr: SocketAddr, request: &SchedulerRequest) -> String {
        let (mut w, mut r) = open_stream(conn).await.unwrap();
        w.send(request).await.unwrap();
        w.finish().unwrap();
        assert!(
            r.recv::<FarmStatus>().await.is_err(),
            "the request was served"
        );
        let closed = conn.closed().await;
        let quinn::ConnectionError::ApplicationClosed(ref why) = closed else {
            panic!("{closed:?}")
        };
        assert_eq!(u64::from(why.error_code), u64::from(close::NOT_PERMITTED));
        let err = distcc_rs_net::endpoint::explain(closed, addr, PROTOCOL_VERSION);
        assert!(matches!(err, NetError::Refused { .. }), "{err}");
        err.to_string()
    }

    #[tokio::test]
    async fn members_enroll_with_the_token_and_act_only_in_their_role() {
        let state = tempfile::tempdir().unwrap();
        let scheduler = start(state.path());
        let token = scheduler.authority.token().unwrap();

        let client = enroll(scheduler.addr, &token, PeerRole::Client, "alice@h")
            .await
            .unwrap();
        assert_eq!(client.role(), Some(PeerRole::Client));
        let node = enroll(scheduler.addr, &token, PeerRole::Node, "n1")
            .await
            .unwrap();
        let listed = scheduler.authority.list().unwrap();
        assert!(listed.iter().any(|m| m.name == "alice@h"));

        // A wrong token enrolls nobody.
        let wrong = distcc_rs_proto::JoinToken {
            secret: [7; 16],
            ..token
        };
        let err = enroll(scheduler.addr, &wrong, PeerRole::Client, "mallory")
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                CredentialsError::Refused {
                    refusal: EnrollRefusal::BadToken,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("distcc-rs-scheduler token"),
            "{err}"
        );

        // A client certificate cannot register as a node.
        let conn = connect_with(&scheduler, &client).await;
        let register = SchedulerRequest::RegisterNode(NodeRegistration {
            node: NodeId(5),
            farm: "default".into(),
            name: "sneaky".into(),
            job_port: 1,
            advertise: None,
            slots: 4,
            toolchains: vec![],
        });
        let why = refusal(&conn, scheduler.addr, &register).await;
        assert!(
            why.contains("a node registration needs a node certificate and this peer's is a client certificate"),
            "{why}"
        );

        // A node certificate cannot submit jobs.
        let conn = connect_with(&scheduler, &node).await;
        let why = refusal(
            &conn,
            scheduler.addr,
            &allocate_request(ToolchainId(distcc_rs_proto::Digest([1; 32]))),
        )
        .await;
        assert!(
            why.contains("an allocation needs a client certificate"),
            "{why}"
        );

        // Without a certificate, only enrollment is served.
        let opts = EndpointOptions::default();
        let anonymous = bind_client(
            scheduler.addr,
            None,
            &PeerAuth::Enroll { pin: token.ca_pin },
            &opts,
        )
        .unwrap();
        let conn = connect(&anonymous, scheduler.addr, PeerRole::Scheduler, &opts)
            .await
            .unwrap();
        let why = refusal(&conn, scheduler.addr, &SchedulerRequest::Status).await;
        assert!(why.contains("presented none"), "{why}");

        // The nobody in the status: the sneaky node never joined.
        let conn = connect_with(&scheduler, &client).await;
        let status: FarmStatus = ask(&conn, &SchedulerRequest::Status).await;
        assert!(status.nodes.is_empty());
        scheduler.shut_down().await;
    }

    #[tokio::test]
    async fn a_revoked_member_is_cut_off_and_refused() {
        let state = tempfile::tempdir().unwrap();
        let scheduler = start(state.path());
        let token = scheduler.authority.token().unwrap();
        let alice = enroll(scheduler.addr, &token, PeerRole::Client, "alice")
            .await
            .unwrap();
        let bob = enroll(scheduler.addr, &token, PeerRole::Client, "bob")
            .await
            .unwrap();
        let alice_conn = connect_with(&scheduler, &alice).await;
        let bob_conn = connect_with(&scheduler, &bob).await;

        // As `distcc-rs-scheduler revoke alice` does, from another process.
        let (admin, _) = crate::authority::Authority::open_or_create(state.path()).unwrap();
        assert_eq!(admin.revoke("alice").unwrap().len(), 1);

        // The open connection is closed within a reload tick or two...
        let closed = tokio::time::timeout(Duration::from_secs(10), alice_conn.closed())
            .await
            .expect("the revoked member's connection is closed");
        let err = distcc_rs_net::endpoint::explain(closed, scheduler.addr, PROTOCOL_VERSION);
        assert!(err.to_string().contains("revoked"), "{err}");
        // ...a new one is refused during the handshake...
        let err = try_connect_with(&scheduler, &alice).await.unwrap_err();
        assert!(
            matches!(err, NetError::RefusedUs { alert: 44, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("revoked by the farm's admin"),
            "{err}"
        );
        // ...and everyone else carries on.
        let status: FarmStatus = ask(&bob_conn, &SchedulerRequest::Status).await;
        assert!(status.nodes.is_empty());
        connect_with(&scheduler, &bob).await;

        // A rotated token enrolls nobody with the old one.
        let rotated = scheduler.authority.rotate_token().unwrap();
        let err = enroll(scheduler.addr, &token, PeerRole::Client, "carol")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no longer"), "{err}");
        enroll(scheduler.addr, &rotated, PeerRole::Client, "carol")
            .await
            .unwrap();
        scheduler.shut_down().await;
    }
}
