//! The allocation round trip over the real protocol on loopback.
//!
//! Run with `cargo bench -p distcc-rs-scheduler --bench allocation`. It
//! starts a scheduler in this process on 127.0.0.1, registers fake nodes
//! over the real node protocol (they keep their control streams open and
//! never run anything), and asks for slots as a client would, giving each
//! one back with `Release` so the farm never fills up:
//!
//! * over one open connection, one stream per request (the scheduler's
//!   protocol), timing open-stream, request and answer;
//! * with a new client endpoint and connection per request, as the wrapper
//!   does (cargo starts one wrapper process per rustc), timing bind,
//!   handshake, request and answer;
//! * with many clients at once, for throughput.
//!
//! Each prints one line with the median and the 99th percentile. The store
//! is seeded with a bundle file before start-up, since allocation only
//! checks that the toolchain is known and never reads the bundle.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use distcc_rs_net::{
    EndpointOptions, FarmTrust, FrameReader, FrameWriter, Identity, PeerAuth, bind_client,
    bind_server, connect, open_stream,
};
use distcc_rs_proto::message::{
    AllocateRequest, AllocateResponse, NodeRegistration, RegisterResponse, SchedulerRequest,
};
use distcc_rs_proto::{Digest, NodeId, PeerRole, ToolchainId};
use distcc_rs_scheduler::SchedulerConfig;
use distcc_rs_scheduler::authority::Security;
use quinn::Connection;
use tokio::sync::oneshot;

const TC: ToolchainId = ToolchainId(Digest([7; 32]));
const NODES: u64 = 50;
const SLOTS: u32 = 16;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(bench());
}

async fn bench() {
    let state = tempfile::tempdir().expect("a temporary directory");
    let toolchains = state.path().join("toolchains");
    std::fs::create_dir_all(&toolchains).expect("the store directory");
    std::fs::write(toolchains.join(format!("{}.tar.zst", TC.0.to_hex())), b"x")
        .expect("a seeded bundle");

    let opened = Security::open(state.path(), "bench-scheduler").expect("a farm CA");
    let endpoint = bind_server(
        "127.0.0.1:0".parse().unwrap(),
        &opened.identity,
        &opened.auth,
        &EndpointOptions::default(),
    )
    .expect("a server endpoint");
    let ca = opened.security.authority.ca();
    let member = |role| {
        (
            ca.issue_identity(role, "bench", 1000)
                .expect("a certificate"),
            PeerAuth::Farm(FarmTrust::new(ca.cert_der().clone())),
        )
    };
    let node_member = member(PeerRole::Node);
    let client_member = member(PeerRole::Client);
    let addr = endpoint.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(distcc_rs_scheduler::run(
        endpoint,
        SchedulerConfig::new(state.path()),
        opened.security.clone(),
        async move {
            let _ = stopped.await;
        },
    ));

    // The nodes share one connection; each keeps its control stream.
    let nodes_conn = dial(addr, &node_member).await;
    let mut controls = Vec::new();
    for id in 1..=NODES {
        controls.push(register(&nodes_conn, id).await);
    }

    let client = dial(addr, &client_member).await;
    // Warm up the connection and the allocator.
    for _ in 0..200 {
        allocate_and_release(&client).await;
    }
    let mut one_conn = Vec::new();
    for _ in 0..5000 {
        one_conn.push(allocate_and_release(&client).await);
    }
    report("one open connection, a stream per request", &mut one_conn);

    let mut fresh = Vec::new();
    for _ in 0..500 {
        let started = Instant::now();
        let opts = EndpointOptions::default();
        let endpoint = bind_client(addr, Some(&client_member.0), &client_member.1, &opts).unwrap();
        let conn = connect(&endpoint, addr, PeerRole::Scheduler, &opts)
            .await
            .unwrap();
        let job = allocate(&conn).await;
        fresh.push(started.elapsed());
        release(&conn, job).await;
        conn.close(0u32.into(), b"done");
        // As the wrapper does: let the close go out, without waiting for
        // the whole closing handshake.
        let _ = tokio::time::timeout(Duration::from_millis(5), endpoint.wait_idle()).await;
    }
    report(
        "a new connection per request (bind, handshake, allocate)",
        &mut fresh,
    );

    let clients = 32;
    let per_client = 300;
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(dial(addr, &client_member).await);
    }
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            tokio::spawn(async move {
                let mut times = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    times.push(allocate_and_release(&conn).await);
                }
                times
            })
        })
        .collect();
    let mut concurrent = Vec::new();
    for task in tasks {
        concurrent.extend(task.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    report(
        &format!(
            "{clients} clients at once, {:.0} allocations/s",
            concurrent.len() as f64 / secs
        ),
        &mut concurrent,
    );

    client.close(0u32.into(), b"done");
    drop(controls);
    nodes_conn.close(0u32.into(), b"done");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

async fn dial(addr: SocketAddr, (identity, auth): &(Identity, PeerAuth)) -> Connection {
    let opts = EndpointOptions::default();
    let endpoint = bind_client(addr, Some(identity), auth, &opts).unwrap();
    connect(&endpoint, addr, PeerRole::Scheduler, &opts)
        .await
        .unwrap()
}

async fn register(conn: &Connection, id: u64) -> (FrameWriter, FrameReader) {
    let (mut w, mut r) = open_stream(conn).await.unwrap();
    let registration = NodeRegistration {
        node: NodeId(id),
        farm: "default".into(),
        name: format!("bench-node-{id}"),
        job_port: 47001,
        advertise: None,
        slots: SLOTS,
        toolchains: vec![TC],
    };
    w.send(&SchedulerRequest::RegisterNode(registration))
        .await
        .unwrap();
    let response: RegisterResponse = r.recv().await.unwrap();
    assert!(matches!(response, RegisterResponse::Registered { .. }));
    (w, r)
}

/// One allocation round trip on `conn`; returns the job to release.
async fn allocate(conn: &Connection) -> distcc_rs_proto::JobId {
    let (mut w, mut r) = open_stream(conn).await.unwrap();
    w.send(&SchedulerRequest::Allocate(AllocateRequest {
        toolchain: TC,
        crate_name: "bench".into(),
        client: "bench:1".into(),
        build: "bench".into(),
        exclude: Vec::new(),
    }))
    .await
    .unwrap();
    w.finish().unwrap();
    match r.recv().await.unwrap() {
        AllocateResponse::Assigned(a) => a.job,
        other => panic!("expected an assignment, got {other:?}"),
    }
}

async fn release(conn: &Connection, job: distcc_rs_proto::JobId) {
    let (mut w, _r) = open_stream(conn).await.unwrap();
    w.send(&SchedulerRequest::Release { job }).await.unwrap();
    w.finish().unwrap();
}

/// Times one allocation (not the release that follows it).
async fn allocate_and_release(conn: &Connection) -> Duration {
    let started = Instant::now();
    let job = allocate(conn).await;
    let took = started.elapsed();
    release(conn, job).await;
    took
}

fn report(what: &str, times: &mut [Duration]) {
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "allocation: {what}: {} requests, p50 {:.0} µs, p99 {:.0} µs",
        times.len(),
        at(0.50).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
    );
}
