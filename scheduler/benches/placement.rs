//! Placement decisions per second: the pure core only, no network.
//!
//! Run with `cargo bench -p distcc-rs-scheduler --bench placement`. Each
//! scenario builds a farm in memory, brings it to a steady state, then
//! times cycles of "one job finishes, one new request is placed" for a few
//! seconds and prints one line:
//!
//! ```text
//! placement: 1000 nodes, 75% busy: 123456 decisions/s (8.1 µs each)
//! ```
//!
//! Every node holds a fresh load report and half of them hold the
//! toolchain, so each decision computes the whole formula for every node.
//! The last scenario keeps the farm full with requests waiting, so every
//! cycle is a job finishing and a dispatch granting its slot to the fairest
//! waiter.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use distcc_rs_proto::message::{
    AllocateRequest, AllocateResponse, Assignment, JobOutcome, NodeLoad, NodeRegistration,
};
use distcc_rs_proto::{CertFingerprint, Digest, NodeId, ToolchainId};
use distcc_rs_scheduler::{Decision, Farm, FarmConfig};

const TC: ToolchainId = ToolchainId(Digest([7; 32]));
const SLOTS: u32 = 8;
/// How long each scenario is timed.
const RUN_FOR: Duration = Duration::from_secs(3);

/// xorshift64: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// The certificate every simulated request comes with.
const TEST_CLIENT: CertFingerprint = CertFingerprint([0xc1; 32]);

/// The certificate every simulated node registers with.
const TEST_NODE_CERT: CertFingerprint = CertFingerprint([0xd1; 32]);

fn request(rng: &mut Rng, build: usize) -> AllocateRequest {
    AllocateRequest {
        toolchain: TC,
        crate_name: format!("crate{}", rng.below(300)),
        client: "bench:1".into(),
        build: format!("build{build}"),
        exclude: Vec::new(),
    }
}

/// A farm of `nodes` nodes with `SLOTS` slots each, every one with a load
/// report, half of them holding the toolchain.
fn farm(nodes: usize, now: Instant) -> Farm {
    let mut farm = Farm::new(FarmConfig::default());
    farm.toolchain_stored(TC, 1);
    let peer: SocketAddr = "10.0.0.1:40000".parse().unwrap();
    for id in 1..=nodes as u64 {
        let registration = NodeRegistration {
            node: NodeId(id),
            farm: "default".into(),
            name: format!("node{id}"),
            job_port: 7701,
            advertise: None,
            slots: SLOTS,
            toolchains: if id % 2 == 0 { vec![TC] } else { vec![] },
        };
        farm.register_node(now, &registration, peer, [id as u8; 32], TEST_NODE_CERT)
            .unwrap();
        let load = NodeLoad {
            running: 0,
            slots: SLOTS,
            cores: SLOTS,
            cpu_busy_permille: (id % 1000) as u16,
            load_avg_centi: (id % 800) as u32,
            mem_available: 8 << 30,
            disk_free: 100 << 30,
        };
        farm.node_load(NodeId(id), load, now);
    }
    farm
}

fn finish(farm: &mut Farm, a: &Assignment, wall_ms: u64) {
    let done = JobOutcome::Compiled { exit_code: 0 };
    assert!(farm.job_finished(a.node, a.job, &done, wall_ms));
}

/// Steady state at `busy` of the slots: each cycle finishes a random job
/// and places a new one.
fn steady(nodes: usize, busy: f64) {
    let mut rng = Rng(0x5eed);
    let t0 = Instant::now();
    let mut farm = farm(nodes, t0);
    let target = (nodes as f64 * f64::from(SLOTS) * busy) as usize;
    let mut in_flight: Vec<Assignment> = Vec::with_capacity(target + 1);
    let place = |farm: &mut Farm, rng: &mut Rng, now: Instant| match farm.allocate(
        now,
        &request(rng, 0),
        TEST_CLIENT,
    ) {
        Decision::Answer(AllocateResponse::Assigned(a)) => a,
        other => panic!("unexpected {other:?}"),
    };
    for _ in 0..target.max(1) {
        let a = place(&mut farm, &mut rng, t0);
        in_flight.push(a);
    }
    let started = Instant::now();
    let mut decisions = 0u64;
    while started.elapsed() < RUN_FOR {
        for _ in 0..256 {
            let i = rng.below(in_flight.len());
            let done = in_flight.swap_remove(i);
            finish(&mut farm, &done, 1000 + rng.below(5000) as u64);
            let a = place(&mut farm, &mut rng, t0);
            in_flight.push(black_box(a));
            decisions += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "placement: {nodes} nodes, {}% busy: {:.0} decisions/s ({:.1} µs each)",
        (busy * 100.0).round(),
        decisions as f64 / secs,
        secs * 1e6 / decisions as f64
    );
}

/// A full farm with requests from four builds waiting: each cycle finishes
/// a random job, dispatches (one grant), and queues a new request.
fn saturated(nodes: usize, waiting: usize) {
    let mut rng = Rng(0xf011);
    let t0 = Instant::now();
    let mut farm = farm(nodes, t0);
    let mut in_flight: Vec<Assignment> = Vec::new();
    let mut build = 0;
    let mut next_build = || {
        build = (build + 1) % 4;
        build
    };
    for _ in 0..nodes * SLOTS as usize + waiting {
        match farm.allocate(t0, &request(&mut rng, next_build()), TEST_CLIENT) {
            Decision::Answer(AllocateResponse::Assigned(a)) => in_flight.push(a),
            Decision::Queued { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(farm.waiting(), waiting);
    let started = Instant::now();
    let mut grants = 0u64;
    // Simulated time creeps forward so that no waiter reaches its deadline.
    let mut now = t0;
    while started.elapsed() < RUN_FOR {
        for _ in 0..256 {
            now += Duration::from_micros(1);
            let i = rng.below(in_flight.len());
            let done = in_flight.swap_remove(i);
            finish(&mut farm, &done, 1000 + rng.below(5000) as u64);
            for reply in farm.dispatch(now) {
                match reply.response {
                    AllocateResponse::Assigned(a) => in_flight.push(a),
                    other => panic!("unexpected {other:?}"),
                }
                grants += 1;
            }
            match farm.allocate(now, &request(&mut rng, next_build()), TEST_CLIENT) {
                Decision::Queued { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "placement: {nodes} nodes, full, {waiting} waiting: {:.0} grants/s ({:.1} µs per finish, grant and new request)",
        grants as f64 / secs,
        secs * 1e6 / grants as f64
    );
}

fn main() {
    steady(1000, 0.75);
    steady(1000, 0.25);
    steady(100, 0.75);
    steady(10_000, 0.75);
    saturated(1000, 500);
}
