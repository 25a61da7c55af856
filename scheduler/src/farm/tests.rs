//! Farm tests: placement through the farm's own state, the queue and its
//! fairness, speed learning, and seeded simulations of whole farms. Time is
//! a plain `Instant` the tests advance by hand, and no test opens a socket.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use distcc_rs_proto::message::JobError;
use distcc_rs_proto::{CertFingerprint, Digest, JobId, NodeId, Ticket, ToolchainId};

use super::*;

/// The certificate every test request comes with.
const TEST_CLIENT: CertFingerprint = CertFingerprint([0xc1; 32]);

/// The certificate every test node registers with.
const TEST_NODE_CERT: CertFingerprint = CertFingerprint([0xd1; 32]);

const TC: ToolchainId = ToolchainId(Digest([7; 32]));
const OTHER_TC: ToolchainId = ToolchainId(Digest([8; 32]));
const DONE: JobOutcome = JobOutcome::Compiled { exit_code: 0 };
const MS: Duration = Duration::from_millis(1);

fn peer() -> SocketAddr {
    "10.0.0.9:51000".parse().unwrap()
}

fn key(node: u64) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&node.to_le_bytes());
    k
}

fn registration(node: u64, slots: u32, toolchains: Vec<ToolchainId>) -> NodeRegistration {
    NodeRegistration {
        node: NodeId(node),
        farm: "default".into(),
        name: format!("host{node}"),
        job_port: 7701,
        advertise: None,
        slots,
        toolchains,
    }
}

fn request() -> AllocateRequest {
    request_in("dev1:4000")
}

/// A request from the build `build`.
fn request_in(build: &str) -> AllocateRequest {
    AllocateRequest {
        toolchain: TC,
        crate_name: "serde".into(),
        client: "dev1:4242".into(),
        build: build.into(),
        exclude: Vec::new(),
    }
}

fn excluding(nodes: &[u64]) -> AllocateRequest {
    AllocateRequest {
        exclude: nodes.iter().map(|&n| NodeId(n)).collect(),
        ..request()
    }
}

/// The default configuration with queueing turned off.
fn no_queue() -> FarmConfig {
    FarmConfig {
        queue_timeout: Duration::ZERO,
        ..FarmConfig::default()
    }
}

/// A farm whose store holds [`TC`], with nodes given as (id, slots), none of
/// which holds a toolchain.
fn farm_with(now: Instant, nodes: &[(u64, u32)]) -> Farm {
    farm_with_config(FarmConfig::default(), now, nodes)
}

fn farm_with_config(config: FarmConfig, now: Instant, nodes: &[(u64, u32)]) -> Farm {
    let mut farm = Farm::new(config);
    farm.toolchain_stored(TC, 1000);
    for &(id, slots) in nodes {
        farm.register_node(
            now,
            &registration(id, slots, vec![]),
            peer(),
            key(id),
            TEST_NODE_CERT,
        )
        .unwrap();
    }
    farm
}

fn answer(decision: Decision) -> AllocateResponse {
    match decision {
        Decision::Answer(response) => response,
        other => panic!("expected an answer, got {other:?}"),
    }
}

fn assigned(decision: Decision) -> Assignment {
    match answer(decision) {
        AllocateResponse::Assigned(a) => a,
        other => panic!("expected an assignment, got {other:?}"),
    }
}

fn queued(decision: Decision) -> (WaiterId, Instant) {
    match decision {
        Decision::Queued { waiter, deadline } => (waiter, deadline),
        other => panic!("expected the request to wait, got {other:?}"),
    }
}

/// The single reply of a dispatch, as (waiter, node) for a grant.
fn granted(replies: Vec<Reply>) -> (WaiterId, NodeId) {
    match &replies[..] {
        [
            Reply {
                waiter,
                response: AllocateResponse::Assigned(a),
            },
        ] => (*waiter, a.node),
        other => panic!("expected one grant, got {other:?}"),
    }
}

fn running(farm: &Farm, node: u64) -> u32 {
    farm.nodes[&NodeId(node)].running()
}

/// A report from a node with `cores` cores that runs no farm job, with the
/// given CPU share and load average, and plenty of memory and disk.
fn report(cores: u32, cpu_permille: u16, load_centi: u32) -> NodeLoad {
    NodeLoad {
        running: 0,
        slots: cores,
        cores,
        cpu_busy_permille: cpu_permille,
        load_avg_centi: load_centi,
        mem_available: 16 << 30,
        disk_free: 100 << 30,
    }
}

/// Checks the bookkeeping invariants: no node runs more than its slots, the
/// per-node job sets agree with the job table, the per-build counts agree
/// with it too, and every waiter sits in exactly its build's queue.
fn check_invariants(farm: &Farm) {
    let mut in_nodes = 0;
    for (id, node) in &farm.nodes {
        assert!(
            node.running() <= node.slots,
            "{id} runs {} jobs on {} slots",
            node.running(),
            node.slots
        );
        for job in &node.jobs {
            assert_eq!(farm.jobs[job].node, *id, "{job} is filed under {id}");
        }
        in_nodes += node.jobs.len();
    }
    assert_eq!(in_nodes, farm.jobs.len(), "job table and nodes disagree");
    let mut builds: BTreeMap<String, u32> = BTreeMap::new();
    for flight in farm.jobs.values() {
        *builds.entry(flight.build.clone()).or_default() += 1;
    }
    assert_eq!(builds, farm.builds, "per-build counts disagree");
    let mut queued = 0;
    for (build, queue) in &farm.queues {
        assert!(!queue.is_empty(), "an empty queue is kept for {build}");
        for waiter in queue {
            assert_eq!(&farm.waiters[waiter].request.build, build);
        }
        queued += queue.len();
    }
    assert_eq!(queued, farm.waiters.len(), "waiters and queues disagree");
    let deadlines: BTreeSet<(Instant, WaiterId)> = farm
        .waiters
        .iter()
        .map(|(id, w)| (w.deadline, *id))
        .collect();
    assert_eq!(deadlines, farm.deadlines, "waiters and deadlines disagree");
}

#[test]
fn placement_spreads_over_free_capacity() {
    // The formula itself is tested in `placement`; this checks that the farm
    // feeds it its own counts.
    let now = Instant::now();
    let mut farm = farm_with(now, &[(1, 2), (2, 8), (3, 4)]);
    let nodes: Vec<u64> = (0..7)
        .map(|_| assigned(farm.allocate(now, &request(), TEST_CLIENT)).node.0)
        .collect();
    // Idle nodes in id order; then the most free share, ties to the node
    // assigned least recently: node 2 (7/8), node 3 and 2 tied at 3/4 with
    // node 3 older, then node 2 (3/4, 5/8).
    assert_eq!(nodes, [1, 2, 3, 2, 3, 2, 2]);
    check_invariants(&farm);
}

#[test]
fn unknown_toolchain_is_requested_before_anything_else() {
    let now = Instant::now();
    let mut farm = farm_with(now, &[(1, 4)]);
    let req = AllocateRequest {
        toolchain: OTHER_TC,
        ..request()
    };
    assert_eq!(
        answer(farm.allocate(now, &req, TEST_CLIENT)),
        AllocateResponse::NeedToolchain
    );
    assert_eq!(farm.status(now).totals, FarmTotals::default());
    farm.toolchain_stored(OTHER_TC, 5);
    assigned(farm.allocate(now, &req, TEST_CLIENT));
}

#[test]
fn an_empty_farm_says_run_locally_before_asking_for_a_toolchain() {
    let now = Instant::now();
    let mut farm = Farm::default();
    let req = AllocateRequest {
        toolchain: OTHER_TC,
        ..request()
    };
    assert_eq!(
        answer(farm.allocate(now, &req, TEST_CLIENT)),
        AllocateResponse::RunLocally(RunLocallyReason::NoNodes)
    );
}

#[test]
fn released_assignments_free_their_slot_at_once() {
    let now = Instant::now();
    let mut farm = farm_with_config(no_queue(), now, &[(1, 1)]);
    let a = assigned(farm.allocate(now, &request(), TEST_CLIENT));
    assert_eq!(
        answer(farm.allocate(now, &request(), TEST_CLIENT)),
        AllocateResponse::RunLocally(RunLocallyReason::NoFreeSlot)
    );
    assert!(farm.release(a.job));
    assert!(!farm.release(a.job), "a job is released once");
    assert_eq!(farm.status(now).totals.abandoned, 1);
    let b = assigned(farm.allocate(now, &request(), TEST_CLIENT));
    // A running job is the node's to report, not the client's to release.
    assert!(farm.job_started(b.node, b.job));
    assert!(!farm.release(b.job));
    check_invariants(&farm);
}

#[test]
fn job_ids_start_after_the_configured_base() {
    let now = Instant::now();
    let mut farm = Farm::new(FarmConfig {
        first_job: 7 << 32,
        ..FarmConfig::default()
    });
    farm.register_node(
        now,
        &registration(1, 2, vec![]),
        peer(),
        [1; 32],
        TEST_NODE_CERT,
    )
    .unwrap();
    farm.toolchain_stored(TC, 1);
    let a = assigned(farm.allocate(now, &request(), TEST_CLIENT));
    assert_eq!(a.job, JobId((7 << 32) + 1));
}

#[test]
fn a_burst_never_exceeds_slots() {
    let now = Instant::now();
    let mut farm = farm_with_config(no_queue(), now, &[(1, 1), (2, 2), (3, 3)]);
    let mut placed = 0;
    let mut local = 0;
    for _ in 0..10 {
        match answer(farm.allocate(now, &request(), TEST_CLIENT)) {
            AllocateResponse::Assigned(_) => placed += 1,
            AllocateResponse::RunLocally(RunLocallyReason::NoFreeSlot) => local += 1,
            other => panic!("unexpected {other:?}"),
        }
        check_invariants(&farm);
    }
    assert_eq!((placed, local), (6, 4));
    assert_eq!(
        [running(&farm, 1), running(&farm, 2), running(&farm, 3)],
        [1, 2, 3]
    );
    let totals = farm.status(now).totals;
    assert_eq!(
        (totals.assigned, totals.run_locally, totals.queued),
        (6, 4, 0)
    );
}

#[test]
fn a_burst_spreads_across_equal_nodes() {
    let now = Instant::now();
    let mut farm = farm_with(now, &[(1, 4), (2, 4), (3, 4)]);
    let nodes: Vec<u64> = (0..6)
        .map(|_| assigned(farm.allocate(now, &request(), TEST_CLIENT)).node.0)
        .collect();
    assert_eq!(nodes, [1, 2, 3, 1, 2, 3]);
}

#[test]
fn short_jobs_rotate_through_idle_nodes() {
    // Each job finishes before the next is allocated, so every node is idle
    // at every decision; only "least recently assigned" tells them apart.
    let now = Instant::now();
    let mut farm = farm_with(now, &[(1, 4), (2, 4), (3, 4)]);
    let mut order = Vec::new();
    for _ in 0..7 {
        let a = assigned(farm.allocate(now, &request(), TEST_CLIENT));
        order.push(a.node.0);
        assert!(farm.job_finished(a.node, a.job, &DONE, 100));
    }
    assert_eq!(order, [1, 2, 3, 1, 2, 3, 1]);
}

#[test]
fn finishing_frees_the_slot_and_counts_the_outcome() {
    struct Case {
        outcome: JobOutcome,
        totals: FarmTotals,
        done_failed: (u64, u64),
    }
    let cases = [
        Case {
            outcome: DONE,
            totals: FarmTotals {
                assigned: 1,
                succeeded: 1,
                run_locally: 1,
                ..FarmTotals::default()
            },
            done_failed: (1, 0),
        },
        Case {
            outcome: JobOutcome::Compiled { exit_code: 1 },
            totals: FarmTotals {
                assigned: 1,
                compile_errors: 1,
                run_locally: 1,
                ..FarmTotals::default()
            },
            done_failed: (1, 0),
        },
        Case {
            outcome: JobOutcome::Failed(JobError::Timeout { secs: 600 }),
            totals: FarmTotals {
                assigned: 1,
                failed: 1,
                run_locally: 1,
                ..FarmTotals::default()
            },
            done_failed: (0, 1),
        },
    ];
    for case in cases {
        let now = Instant::now();
        let mut farm = farm_with_config(no_queue(), now, &[(1, 1)]);
        let a = assigned(farm.allocate(now, &request(), TEST_CLIENT));
        assert_eq!(
            answer(farm.allocate(now, &request(), TEST_CLIENT)),
            AllocateResponse::RunLocally(RunLocallyReason::NoFreeSlot)
        );
        assert!(farm.job_started(a.node, a.job));
        assert!(farm.job_finished(a.node, a.job, &case.outcome, 50));
        // A second report of the same job changes nothing.
        assert!(!farm.job_finished(a.node, a.job, &case.outcome, 50));
        let status = farm.status(now);
        assert_eq!(status.totals, case.totals, "{:?}", case.outcome);
        assert_eq!(
            (status.nodes[0].jobs_done, status.nodes[0].jobs_failed),
            case.done_failed
        );
        assert_eq!(status.nodes[0].running, 0);
        assert!(status.jobs.is_empty());
        assigned(farm.allocate(now, &request(), TEST_CLIENT));
    }
}

#[test]
fn reports_about_another_nodes_job_are_ignored() {
    let now = Instant::now();
    let mut farm = farm_with(now, &[(1, 1), (2, 1)]);
    let a = assigned(farm.allocate(now, &request(), TEST_CLIENT));
    let other = if a.node == NodeId(1) {
        NodeId(2)
    } else {
        NodeId(1)
    };
    assert!(!farm.job_started(other, a.job));
    assert!(!farm.job_finished(other, a.job, &DONE, 10));
    assert!(!farm.job_finished(a.node, JobId(999), &DONE, 10));
    assert_eq!(running(&farm, a.node.0), 1);
    assert_eq!(farm.status(now).jobs[0].phase, JobPhase::Assigned);
    assert_eq!(farm.status(now).totals.succeeded, 0);
}

#[test]
fn unclaimed_assignments_expire_and_free_their_slots() {
    let t0 = Instant::now();
    let mut farm = farm_with(t0, &[(1, 2)]);
    let claimed = assigned(farm.allocate(t0, &request(), TEST_CLIENT));
    let unclaimed = assigned(farm.allocate(t0 + Duration::from_secs(1), &request(), TEST_CLIENT));
    assert!(farm.job_started(claimed.node, claimed.job));

    assert_eq!(farm.expire(t0 + Duration::from_secs(30)), []);
    assert_eq!(running(&farm, 1), 2);

    let later = t0 + Duration::from_secs(31);
    assert_eq!(farm.expire(later), [unclaimed.job]);
    check_invariants(&farm);
    let status = farm.status(later);
    assert_eq!(status.nodes[0].running, 1);
    assert_eq!(status.totals.abandoned, 1);
    assert_eq!(status.jobs.len(), 1);
    assert_eq!(status.jobs[0].job, claimed.job);
    assert_eq!(status.jobs[0].phase, JobPhase::Running);
    assert_eq!(status.jobs[0].elapsed_ms, 31_000);

    // The client turning up late is not counted twice.
    assert!(!farm.job_started(unclaimed.node, unclaimed.job));
    // A started job never expires, however long it runs.
    assert_eq!(farm.expire(t0 + Duration::from_secs(3600)), []);
    assigned(farm.allocate(later, &request(), TEST_CLIENT));
}

#[test]
fn registration_rules() {
    let now = Instant::now();
    let mut farm = Farm::default();
    assert_eq!(
        farm.register_node(
            now,
            &registration(1, 4, vec![]),
            peer(),
            key(1),
            TEST_NODE_CERT
        ),
        Ok("10.0.0.9:7701".parse().unwrap()),
        "the job port pairs with the address the node came from"
    );
    assert_eq!(
        farm.register_node(
            now,
            &registration(1, 8, vec![]),
            peer(),
            key(9),
            TEST_NODE_CERT
        ),
        Err(RegisterRefusal::DuplicateNode(NodeId(1)))
    );
    assert_eq!(
        farm.register_node(
            now,
            &registration(2, 0, vec![]),
            peer(),
            key(2),
            TEST_NODE_CERT
        ),
        Err(RegisterRefusal::NoSlots)
    );
    let advertised: SocketAddr = "192.168.1.5:9000".parse().unwrap();
    let reg = NodeRegistration {
        advertise: Some(advertised),
        ..registration(3, 2, vec![TC])
    };
    assert_eq!(
        farm.register_node(now, &reg, peer(), key(3), TEST_NODE_CERT),
        Ok(advertised)
    );

    let later = now + Duration::from_millis(1500);
    let status = farm.status(later);
    let summary: Vec<_> = status
        .nodes
        .iter()
        .map(|n| (n.node.0, n.slots, n.addr.to_string(), n.toolchains.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (1, 4, "10.0.0.9:7701".to_string(), vec![]),
            (3, 2, "192.168.1.5:9000".to_string(), vec![TC]),
        ],
        "the duplicate did not replace the first registration"
    );
    assert_eq!(status.nodes[0].connected_ms, 1500);

    // Once the first node has left, its id may register again.
    assert!(farm.remove_node(later, NodeId(1)).is_some());
    assert!(
        farm.register_node(
            later,
            &registration(1, 8, vec![]),
            peer(),
            key(9),
            TEST_NODE_CERT
        )
        .is_ok()
    );
}

#[test]
fn removing_a_node_abandons_its_jobs_and_stops_placement_there() {
    let t0 = Instant::now();
    let mut farm = farm_with(t0, &[(1, 2), (2, 8)]);
    let jobs: Vec<Assignment> = (0..3)
        .map(|_| assigned(farm.allocate(t0, &request(), TEST_CLIENT)))
        .collect();
    let on_1: Vec<JobId> = jobs
        .iter()
        .filter(|a| a.node == NodeId(1))
        .map(|a| a.job)
        .collect();
    assert_eq!(on_1.len(), 1);

    let later = t0 + Duration::from_secs(90);
    let departure = farm.remove_node(later, NodeId(1)).unwrap();
    assert_eq!(departure.name, "host1");
    assert_eq!(departure.connected_for, Duration::from_secs(90));
    assert_eq!(departure.abandoned, on_1);
    assert_eq!(farm.remove_node(later, NodeId(1)), None);
    check_invariants(&farm);

    let status = farm.status(later);
    assert_eq!(status.nodes.len(), 1);
    assert!(status.jobs.iter().all(|j| j.node == NodeId(2)));
    assert_eq!(status.totals.abandoned, 1);
    assert!(!farm.job_finished(NodeId(1), on_1[0], &DONE, 10));
    assert_eq!(farm.status(later).totals.succeeded, 0);
    // Node 1 had the most free share; now it is gone, nothing goes there.
    for _ in 0..6 {
        assert_eq!(
            assigned(farm.allocate(later, &request(), TEST_CLIENT)).node,
            NodeId(2)
        );
    }
    check_invariants(&farm);
}

#[test]
fn ticket_mac_verifies_only_with_the_nodes_key() {
    let now = Instant::now();
    let mut farm = farm_with(now, &[(1, 1), (2, 1)]);
    let a = assigned(farm.allocate(now, &request(), TEST_CLIENT));
    assert_eq!(a.ticket.job, a.job);
    assert_eq!(a.ticket.node, a.node);
    assert_eq!(a.ticket.toolchain, TC);
    assert_eq!(a.ticket.client, TEST_CLIENT);
    assert_eq!(a.node_cert, TEST_NODE_CERT);

    let mac_under = |k: [u8; 32], t: &Ticket| {
        *blake3::keyed_hash(
            &k,
            &Ticket::signed_bytes(t.job, t.node, t.toolchain, t.client),
        )
        .as_bytes()
    };
    let own = key(a.node.0);
    let other = key(if a.node.0 == 1 { 2 } else { 1 });
    assert_eq!(mac_under(own, &a.ticket), a.ticket.mac);
    assert_ne!(mac_under(other, &a.ticket), a.ticket.mac);
    let forged = Ticket {
        job: JobId(a.job.0 + 1),
        ..a.ticket
    };
    assert_ne!(mac_under(own, &forged), a.ticket.mac);
    // A ticket handed to another client does not verify for it.
    let stolen = Ticket {
        client: CertFingerprint([0xc2; 32]),
        ..a.ticket
    };
    assert_ne!(mac_under(own, &stolen), a.ticket.mac);
    // A queued request keeps its certificate until it is granted.
    farm.allocate(now, &request(), TEST_CLIENT);
    let queued = farm.allocate(now, &request(), CertFingerprint([0xc3; 32]));
    assert!(matches!(queued, Decision::Queued { .. }), "{queued:?}");
    // Only the client the job was assigned to can give it back.
    assert!(!farm.release_by(a.job, CertFingerprint([0xc9; 32])));
    assert!(farm.release_by(a.job, TEST_CLIENT));
    let granted = farm.dispatch(now);
    let AllocateResponse::Assigned(b) = &granted[0].response else {
        panic!("{granted:?}")
    };
    assert_eq!(b.ticket.client, CertFingerprint([0xc3; 32]));
}

#[test]
fn toolchain_ready_is_recorded_and_preferred() {
    let now = Instant::now();
    let mut farm = farm_with(now, &[(1, 4), (2, 4)]);
    assert!(farm.toolchain_ready(NodeId(2), TC));
    assert!(!farm.toolchain_ready(NodeId(9), TC));
    assert_eq!(farm.status(now).nodes[1].toolchains, [TC]);
    assert_eq!(
        assigned(farm.allocate(now, &request(), TEST_CLIENT)).node,
        NodeId(2)
    );
}

#[test]
fn an_evicted_toolchain_is_no_longer_counted_as_held() {
    let now = Instant::now();
    let mut farm = farm_with(now, &[(1, 4), (2, 4)]);
    farm.toolchain_ready(NodeId(2), TC);
    farm.toolchain_ready(NodeId(2), OTHER_TC);
    assert!(farm.toolchain_evicted(NodeId(2), TC));
    assert!(!farm.toolchain_evicted(NodeId(9), TC));
    assert_eq!(farm.status(now).nodes[1].toolchains, [OTHER_TC]);
    // Neither node holds TC now: the tie goes to the lower id.
    assert_eq!(
        assigned(farm.allocate(now, &request(), TEST_CLIENT)).node,
        NodeId(1)
    );
}

#[test]
fn a_node_that_rejected_a_toolchain_gets_no_job_of_it() {
    let now = Instant::now();
    let mut farm = farm_with(now, &[(1, 4), (2, 4)]);
    farm.toolchain_stored(OTHER_TC, 1000);
    farm.toolchain_ready(NodeId(1), TC);
    assert_eq!(farm.toolchain_rejected(NodeId(1), TC), Some("host1".into()));
    assert_eq!(farm.toolchain_rejected(NodeId(9), TC), None);
    assert!(farm.status(now).nodes[0].toolchains.is_empty());
    // Every job of TC goes to node 2, even once it is busier.
    for _ in 0..4 {
        assert_eq!(
            assigned(farm.allocate(now, &request(), TEST_CLIENT)).node,
            NodeId(2)
        );
    }
    // Node 2 is full: TC waits, since node 1 will never take it...
    let (waiter, _) = queued(farm.allocate(now, &request(), TEST_CLIENT));
    // ...while other toolchains still go to node 1.
    let other = AllocateRequest {
        toolchain: OTHER_TC,
        ..request_in("dev2:1")
    };
    assert!(farm.dispatch(now).is_empty());
    farm.cancel(waiter);
    assert_eq!(
        assigned(farm.allocate(now, &other, TEST_CLIENT)).node,
        NodeId(1)
    );
    check_invariants(&farm);
}

#[test]
fn a_waiter_only_a_rejecting_node_could_serve_is_answered_at_once() {
    let now = Instant::now();
    let mut farm = farm_with(now, &[(1, 1)]);
    assigned(farm.allocate(now, &request(), TEST_CLIENT));
    let (waiter, _) = queued(farm.allocate(now, &request(), TEST_CLIENT));
    farm.toolchain_rejected(NodeId(1), TC);
    let replies = farm.dispatch(now);
    assert_eq!(
        replies,
        [Reply {
            waiter,
            response: AllocateResponse::RunLocally(RunLocallyReason::NoEligibleNode)
        }]
    );
    assert_eq!(
        answer(farm.allocate(now, &request(), TEST_CLIENT)),
        AllocateResponse::RunLocally(RunLocallyReason::NoEligibleNode)
    );
}

#[test]
fn a_rejection_ends_with_a_new_copy_or_the_node_holding_the_toolchain() {
    let now = Instant::now();
    let mut farm = farm_with(now, &[(1, 4)]);
    farm.toolchain_stored(OTHER_TC, 1000);
    farm.toolchain_rejected(NodeId(1), TC);
    // The same copy stored again (another client's upload) changes nothing.
    farm.toolchain_stored(TC, 1000);
    assert!(matches!(
        answer(farm.allocate(now, &request(), TEST_CLIENT)),
        AllocateResponse::RunLocally(RunLocallyReason::NoEligibleNode)
    ));
    // The scheduler found its copy corrupt and forgot it: clients upload.
    farm.toolchain_forgotten(TC);
    assert_eq!(
        answer(farm.allocate(now, &request(), TEST_CLIENT)),
        AllocateResponse::NeedToolchain
    );
    // A new copy lifts the rejection.
    farm.toolchain_stored(TC, 1000);
    assert_eq!(
        assigned(farm.allocate(now, &request(), TEST_CLIENT)).node,
        NodeId(1)
    );
    // So does the node reporting the toolchain ready.
    farm.toolchain_rejected(NodeId(1), OTHER_TC);
    farm.toolchain_ready(NodeId(1), OTHER_TC);
    let other = AllocateRequest {
        toolchain: OTHER_TC,
        ..request()
    };
    assert_eq!(
        assigned(farm.allocate(now, &other, TEST_CLIENT)).node,
        NodeId(1)
    );
}

#[test]
fn status_says_when_each_toolchain_was_last_placed_and_who_holds_it() {
    let t0 = Instant::now();
    let mut farm = farm_with(t0, &[(1, 4), (2, 4), (3, 4)]);
    farm.toolchain_stored(OTHER_TC, 2000);
    farm.toolchain_ready(NodeId(1), TC);
    farm.toolchain_ready(NodeId(3), TC);
    assigned(farm.allocate(t0, &request(), TEST_CLIENT));
    let status = farm.status(t0 + 1500 * MS);
    let by_id: BTreeMap<ToolchainId, &ToolchainStatus> =
        status.toolchains.iter().map(|t| (t.id, t)).collect();
    assert_eq!(by_id[&TC].last_used_ms, Some(1500));
    assert_eq!(by_id[&TC].holders, 2);
    assert_eq!(by_id[&TC].compressed_size, 1000);
    assert_eq!(by_id[&OTHER_TC].last_used_ms, None);
    assert_eq!(by_id[&OTHER_TC].holders, 0);
}

#[test]
fn load_reports_steer_placement_until_they_go_stale() {
    let t0 = Instant::now();
    let mut farm = farm_with(t0, &[(1, 8), (2, 8)]);
    // Node 1's machine is fully busy with work that is not the farm's.
    assert!(farm.node_load(NodeId(1), report(8, 1000, 800), t0));
    assert!(!farm.node_load(NodeId(9), report(8, 0, 0), t0));
    // Node 1 scores 1 × (1 − 0.75) = 0.25: node 2 takes jobs until its own
    // free share falls to 2/8, then the tie goes to the never-used node 1.
    let nodes: Vec<u64> = (0..7)
        .map(|_| assigned(farm.allocate(t0, &request(), TEST_CLIENT)).node.0)
        .collect();
    assert_eq!(nodes, [2, 2, 2, 2, 2, 2, 1]);

    // Still fresh at the age limit: 7/8 × 0.25 = 0.22 loses to 2/8.
    let at_limit = t0 + LOAD_MAX_AGE;
    let a = assigned(farm.allocate(at_limit, &request(), TEST_CLIENT));
    assert_eq!(a.node, NodeId(2));
    assert!(farm.release(a.job));
    // Just past it the report no longer counts: 7/8 beats 2/8.
    let stale = at_limit + MS;
    assert_eq!(
        assigned(farm.allocate(stale, &request(), TEST_CLIENT)).node,
        NodeId(1)
    );

    // The latest report shows in the status, stale or not.
    let status = farm.status(stale);
    assert_eq!(status.nodes[0].load, Some(report(8, 1000, 800)));
    assert_eq!(status.nodes[1].load, None);
    check_invariants(&farm);
}

#[test]
fn exclusions_and_short_nodes_make_requests_run_locally_at_once() {
    let now = Instant::now();
    let mut farm = farm_with(now, &[(1, 4), (2, 4)]);
    assert_eq!(
        answer(farm.allocate(now, &excluding(&[2, 1, 2]), TEST_CLIENT)),
        AllocateResponse::RunLocally(RunLocallyReason::NoEligibleNode)
    );
    assert_eq!(
        assigned(farm.allocate(now, &excluding(&[1]), TEST_CLIENT)).node,
        NodeId(2)
    );

    // Node 2 runs out of disk: a request that excludes node 1 has nowhere
    // to go, and the others go to node 1 even once node 2 is the emptier.
    let short = NodeLoad {
        disk_free: 1 << 20,
        ..report(4, 0, 0)
    };
    assert!(farm.node_load(NodeId(2), short, now));
    assert_eq!(
        answer(farm.allocate(now, &excluding(&[1]), TEST_CLIENT)),
        AllocateResponse::RunLocally(RunLocallyReason::NoEligibleNode)
    );
    for _ in 0..4 {
        assert_eq!(
            assigned(farm.allocate(now, &request(), TEST_CLIENT)).node,
            NodeId(1)
        );
    }
    assert_eq!(farm.status(now).totals.run_locally, 2);
    check_invariants(&farm);

    // Node 1 is full but could take the job later, so the request waits;
    // node 2 reporting free disk again is what lets it through.
    let (waiter, _) = queued(farm.allocate(now, &request(), TEST_CLIENT));
    assert_eq!(farm.dispatch(now), []);
    assert!(farm.node_load(NodeId(2), report(4, 0, 0), now));
    assert_eq!(granted(farm.dispatch(now)), (waiter, NodeId(2)));
    check_invariants(&farm);
}

#[test]
fn a_waiter_gets_a_freed_slot_or_runs_locally_at_its_deadline() {
    let t0 = Instant::now();
    let mut farm = farm_with(t0, &[(1, 1)]);
    let first = assigned(farm.allocate(t0, &request(), TEST_CLIENT));
    let (waiter, deadline) = queued(farm.allocate(t0, &request(), TEST_CLIENT));
    assert_eq!(deadline, t0 + QUEUE_TIMEOUT);
    let status = farm.status(t0);
    assert_eq!((status.waiting, status.totals.queued), (1, 1));
    assert_eq!(farm.dispatch(t0 + Duration::from_secs(1)), []);

    // The slot frees before the deadline: the waiter gets it.
    let t1 = t0 + Duration::from_millis(1500);
    assert!(farm.job_finished(first.node, first.job, &DONE, 1500));
    assert_eq!(granted(farm.dispatch(t1)), (waiter, NodeId(1)));
    assert_eq!(farm.dispatch(t1), [], "a waiter is answered once");
    let status = farm.status(t1);
    assert_eq!((status.waiting, status.totals.assigned), (0, 2));
    check_invariants(&farm);

    // The next waiter's slot frees only at its deadline, which is too late:
    // it is told to compile locally and the slot stays free.
    let (late, deadline) = queued(farm.allocate(t1, &request(), TEST_CLIENT));
    assert_eq!(farm.dispatch(deadline - MS), []);
    let job = farm.nodes[&NodeId(1)].jobs.first().copied().unwrap();
    assert!(farm.job_finished(NodeId(1), job, &DONE, 10));
    assert_eq!(
        farm.dispatch(deadline),
        [Reply {
            waiter: late,
            response: AllocateResponse::RunLocally(RunLocallyReason::NoFreeSlot),
        }]
    );
    assert_eq!(running(&farm, 1), 0);
    let totals = farm.status(deadline).totals;
    assert_eq!(
        (totals.queued, totals.assigned, totals.run_locally),
        (2, 2, 1)
    );
    check_invariants(&farm);
}

#[test]
fn waiters_can_be_cancelled_or_timed_out_by_the_caller() {
    let now = Instant::now();
    let mut farm = farm_with(now, &[(1, 1)]);
    let a = assigned(farm.allocate(now, &request(), TEST_CLIENT));
    let (gone, _) = queued(farm.allocate(now, &request(), TEST_CLIENT));
    let (timed, _) = queued(farm.allocate(now, &request(), TEST_CLIENT));
    assert!(farm.cancel(gone));
    assert!(!farm.cancel(gone), "a waiter is cancelled once");
    assert_eq!(
        farm.time_out(timed),
        Some(AllocateResponse::RunLocally(RunLocallyReason::NoFreeSlot))
    );
    assert_eq!(farm.time_out(timed), None);
    assert!(!farm.cancel(timed));
    check_invariants(&farm);

    // Neither is granted the slot when it frees.
    assert!(farm.job_finished(a.node, a.job, &DONE, 10));
    assert_eq!(farm.dispatch(now), []);
    let status = farm.status(now);
    assert_eq!(status.waiting, 0);
    assert_eq!(status.totals.run_locally, 1);
    assert_eq!(running(&farm, 1), 0);

    // A grant that was dispatched cannot be cancelled any more.
    let b = assigned(farm.allocate(now, &request(), TEST_CLIENT));
    let (w, _) = queued(farm.allocate(now, &request(), TEST_CLIENT));
    assert!(farm.job_finished(b.node, b.job, &DONE, 10));
    assert_eq!(granted(farm.dispatch(now)), (w, NodeId(1)));
    assert!(!farm.cancel(w));
    assert_eq!(farm.time_out(w), None);
}

#[test]
fn freed_slots_go_to_the_build_with_the_fewest_jobs_in_flight() {
    let t0 = Instant::now();
    let mut farm = farm_with(t0, &[(1, 4)]);
    // Build a fills the node and queues two more; build b queues two later.
    let a_jobs: Vec<Assignment> = (0..4)
        .map(|_| assigned(farm.allocate(t0, &request_in("a"), TEST_CLIENT)))
        .collect();
    let (a1, _) = queued(farm.allocate(t0, &request_in("a"), TEST_CLIENT));
    let (a2, _) = queued(farm.allocate(t0, &request_in("a"), TEST_CLIENT));
    let (b1, _) = queued(farm.allocate(t0 + MS, &request_in("b"), TEST_CLIENT));
    let (b2, _) = queued(farm.allocate(t0 + MS, &request_in("b"), TEST_CLIENT));
    assert_eq!(farm.dispatch(t0 + MS), []);

    let finish_and_dispatch = |farm: &mut Farm, job: &Assignment| {
        assert!(farm.job_finished(job.node, job.job, &DONE, 100));
        let (waiter, _) = granted(farm.dispatch(t0 + 2 * MS));
        check_invariants(farm);
        waiter
    };
    // a holds 4 and b none: b gets the next two slots although a's waiters
    // came first. Then a holds 2 and b 2: a's waiters in arrival order.
    let order: Vec<WaiterId> = a_jobs
        .iter()
        .map(|job| finish_and_dispatch(&mut farm, job))
        .collect();
    assert_eq!(order, [b1, b2, a1, a2]);
    assert_eq!(farm.builds.get("a"), Some(&2));
    assert_eq!(farm.builds.get("b"), Some(&2));
}

#[test]
fn equal_builds_are_served_in_arrival_order() {
    let t0 = Instant::now();
    let mut farm = farm_with(t0, &[(1, 2)]);
    assigned(farm.allocate(t0, &request_in("x"), TEST_CLIENT));
    assigned(farm.allocate(t0, &request_in("y"), TEST_CLIENT));
    let (y1, _) = queued(farm.allocate(t0, &request_in("y"), TEST_CLIENT));
    let (x1, _) = queued(farm.allocate(t0, &request_in("x"), TEST_CLIENT));
    // A node joins with two slots. Both builds hold one job and y's waiter
    // came first, so it goes first; then x holds fewer.
    farm.register_node(
        t0,
        &registration(2, 2, vec![]),
        peer(),
        key(2),
        TEST_NODE_CERT,
    )
    .unwrap();
    let order: Vec<WaiterId> = farm.dispatch(t0).iter().map(|r| r.waiter).collect();
    assert_eq!(order, [y1, x1]);
    check_invariants(&farm);
}

#[test]
fn new_requests_queue_behind_waiters() {
    let t0 = Instant::now();
    let mut farm = farm_with(t0, &[(1, 1)]);
    let a = assigned(farm.allocate(t0, &request_in("x"), TEST_CLIENT));
    let (w1, _) = queued(farm.allocate(t0, &request_in("y"), TEST_CLIENT));
    // The slot frees, but before a dispatch hands it out a new request
    // comes: it queues rather than jumping ahead of w1.
    assert!(farm.job_finished(a.node, a.job, &DONE, 10));
    let (w2, _) = queued(farm.allocate(t0, &request_in("z"), TEST_CLIENT));
    assert_eq!(granted(farm.dispatch(t0)), (w1, NodeId(1)));
    assert_eq!(farm.waiting(), 1);
    assert!(farm.cancel(w2));
    check_invariants(&farm);
}

#[test]
fn waiters_no_node_can_take_are_answered_at_once() {
    let t0 = Instant::now();
    let mut farm = farm_with(t0, &[(1, 1), (2, 1)]);
    assigned(farm.allocate(t0, &request(), TEST_CLIENT));
    assigned(farm.allocate(t0, &request(), TEST_CLIENT));
    let (only_1, _) = queued(farm.allocate(t0, &excluding(&[2]), TEST_CLIENT));
    let (any, _) = queued(farm.allocate(t0, &request(), TEST_CLIENT));
    assert_eq!(farm.dispatch(t0), []);

    // Node 1 dies: the waiter that excluded node 2 has nowhere to go.
    farm.remove_node(t0, NodeId(1)).unwrap();
    assert_eq!(
        farm.dispatch(t0),
        [Reply {
            waiter: only_1,
            response: AllocateResponse::RunLocally(RunLocallyReason::NoEligibleNode),
        }]
    );
    // Node 2 runs short of memory: nobody can take the other one either.
    let short = NodeLoad {
        mem_available: 100 << 20,
        ..report(4, 0, 0)
    };
    assert!(farm.node_load(NodeId(2), short, t0));
    assert_eq!(
        farm.dispatch(t0),
        [Reply {
            waiter: any,
            response: AllocateResponse::RunLocally(RunLocallyReason::NoEligibleNode),
        }]
    );

    // The last node leaves while someone waits.
    assert!(farm.node_load(NodeId(2), report(4, 0, 0), t0));
    let (last, _) = queued(farm.allocate(t0, &request(), TEST_CLIENT));
    farm.remove_node(t0, NodeId(2)).unwrap();
    assert_eq!(
        farm.dispatch(t0),
        [Reply {
            waiter: last,
            response: AllocateResponse::RunLocally(RunLocallyReason::NoNodes),
        }]
    );
    assert_eq!(farm.status(t0).totals.run_locally, 3);
    check_invariants(&farm);
}

#[test]
fn status_reports_load_speed_waiting_and_the_farm_name() {
    let now = Instant::now();
    let mut farm = Farm::new(FarmConfig {
        farm_name: "lab".into(),
        ..FarmConfig::default()
    });
    farm.toolchain_stored(TC, 1);
    let reg = NodeRegistration {
        farm: "lab".into(),
        ..registration(1, 1, vec![TC])
    };
    farm.register_node(now, &reg, peer(), key(1), TEST_NODE_CERT)
        .unwrap();
    let load = report(16, 250, 400);
    assert!(farm.node_load(NodeId(1), load, now));
    assigned(farm.allocate(now, &request(), TEST_CLIENT));
    queued(farm.allocate(now, &request(), TEST_CLIENT));
    let status = farm.status(now);
    assert_eq!(status.farm, "lab");
    assert_eq!(status.waiting, 1);
    assert_eq!(status.totals.queued, 1);
    assert_eq!(status.nodes[0].load, Some(load));
    assert_eq!(status.nodes[0].speed, 1.0);
}

/// Runs one job of `krate` on `node` (by excluding every other node), and
/// reports it finished with `outcome` after `wall_ms`.
fn run_on(farm: &mut Farm, node: u64, krate: &str, outcome: JobOutcome, wall_ms: u64) {
    let others: Vec<NodeId> = farm
        .nodes
        .keys()
        .filter(|id| id.0 != node)
        .copied()
        .collect();
    let req = AllocateRequest {
        crate_name: krate.into(),
        exclude: others,
        ..request()
    };
    let a = assigned(farm.allocate(Instant::now(), &req, TEST_CLIENT));
    assert_eq!(a.node, NodeId(node));
    assert!(farm.job_started(a.node, a.job));
    assert!(farm.job_finished(a.node, a.job, &outcome, wall_ms));
}

fn speeds(farm: &Farm) -> Vec<f64> {
    farm.status(Instant::now())
        .nodes
        .iter()
        .map(|n| n.speed)
        .collect()
}

fn assert_speeds(farm: &Farm, expect: &[f64]) {
    let got = speeds(farm);
    assert!(
        got.len() == expect.len() && got.iter().zip(expect).all(|(g, e)| (g - e).abs() < 1e-9),
        "speeds {got:?}, expected {expect:?}"
    );
}

#[test]
fn speed_is_learned_from_successful_compiles_on_warm_nodes() {
    let now = Instant::now();
    let mut farm = farm_with(now, &[]);
    for (id, tcs) in [(1, vec![TC]), (2, vec![TC]), (3, vec![])] {
        farm.register_node(
            now,
            &registration(id, 4, tcs),
            peer(),
            key(id),
            TEST_NODE_CERT,
        )
        .unwrap();
    }
    // The first compile of a crate only sets its reference time.
    run_on(&mut farm, 1, "serde", DONE, 1000);
    assert_speeds(&farm, &[1.0, 1.0, 1.0]);
    // Sample 1000/2000 = 0.5: 1 + 0.2 × (0.5 − 1) = 0.9. The reference
    // moves to 1000 + 0.2 × (2000 − 1000) = 1200.
    run_on(&mut farm, 2, "serde", DONE, 2000);
    assert_speeds(&farm, &[1.0, 0.9, 1.0]);
    // Sample 1200/600 = 2: 1 + 0.2 × 1 = 1.2; the reference becomes 1080.
    run_on(&mut farm, 1, "serde", DONE, 600);
    assert_speeds(&farm, &[1.2, 0.9, 1.0]);

    // Compile errors, farm failures and zero times teach nothing, and
    // neither does a node that had to fetch the toolchain first.
    run_on(
        &mut farm,
        1,
        "serde",
        JobOutcome::Compiled { exit_code: 1 },
        5,
    );
    run_on(&mut farm, 1, "serde", JobOutcome::Failed(JobError::Busy), 5);
    run_on(&mut farm, 1, "serde", DONE, 0);
    run_on(&mut farm, 3, "serde", DONE, 5);
    assert_speeds(&farm, &[1.2, 0.9, 1.0]);
    // Once it holds the toolchain, it does: 1080/540 = 2.
    assert!(farm.toolchain_ready(NodeId(3), TC));
    run_on(&mut farm, 3, "serde", DONE, 540);
    assert_speeds(&farm, &[1.2, 0.9, 1.2]);
    // Outliers are clamped: 972/1 counts as 4, so 0.9 + 0.2 × 3.1 = 1.52.
    run_on(&mut farm, 2, "serde", DONE, 1);
    assert_speeds(&farm, &[1.2, 1.52, 1.2]);
    // Another crate has its own reference.
    run_on(&mut farm, 2, "regex", DONE, 100);
    assert_speeds(&farm, &[1.2, 1.52, 1.2]);
    // Sample 100/100 = 1: 1.2 + 0.2 × (1 − 1.2) = 1.16.
    run_on(&mut farm, 1, "regex", DONE, 100);
    assert_speeds(&farm, &[1.16, 1.52, 1.2]);

    // Speed counts in placement: node 2 wins among idle holders.
    assert_eq!(
        assigned(farm.allocate(now, &request(), TEST_CLIENT)).node,
        NodeId(2)
    );
}

#[test]
fn crate_references_are_bounded() {
    let now = Instant::now();
    let mut farm = farm_with(now, &[]);
    farm.register_node(
        now,
        &registration(1, 1, vec![TC]),
        peer(),
        key(1),
        TEST_NODE_CERT,
    )
    .unwrap();
    let extra = 10;
    for i in 0..MAX_REFERENCES + extra {
        run_on(&mut farm, 1, &format!("crate{i}"), DONE, 100);
    }
    assert_eq!(farm.references.len(), MAX_REFERENCES);
    // The least recently used went first.
    assert!(!farm.references.contains_key("crate0"));
    assert!(!farm.references.contains_key(&format!("crate{}", extra - 1)));
    assert!(farm.references.contains_key(&format!("crate{extra}")));
    assert!(
        farm.references
            .contains_key(&format!("crate{}", MAX_REFERENCES + extra - 1))
    );
}

/// A tiny deterministic PRNG (xorshift64), so the simulations need no
/// dependency and replay identically.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn random_operations_never_overcommit_a_node() {
    let mut rng = XorShift(0x5eed_1234);
    let mut now = Instant::now();
    let mut farm = Farm::default();
    farm.toolchain_stored(TC, 1);
    for id in 1..=20 {
        let slots = 1 + rng.below(8) as u32;
        let tcs = if rng.below(2) == 0 { vec![TC] } else { vec![] };
        farm.register_node(
            now,
            &registration(id, slots, tcs),
            peer(),
            key(id),
            TEST_NODE_CERT,
        )
        .unwrap();
    }
    let mut in_flight: Vec<Assignment> = Vec::new();
    let mut deadlines: BTreeMap<WaiterId, Instant> = BTreeMap::new();
    let (mut placed, mut local, mut expired) = (0u64, 0u64, 0u64);
    for _ in 0..4_000 {
        now += Duration::from_millis(rng.below(300));
        match rng.below(10) {
            // Allocate more often than finish, so the farm fills up and the
            // slot limit and the queue are actually exercised.
            0..=5 => match farm.allocate(now, &request(), TEST_CLIENT) {
                Decision::Answer(AllocateResponse::Assigned(a)) => {
                    if rng.below(4) != 0 {
                        assert!(farm.job_started(a.node, a.job));
                    }
                    in_flight.push(a);
                    placed += 1;
                }
                Decision::Queued { waiter, deadline } => {
                    let free = farm.nodes.values().any(Node::has_free_slot);
                    assert!(
                        !free || farm.waiting() > 1,
                        "queued while a slot was free and nobody waited"
                    );
                    deadlines.insert(waiter, deadline);
                }
                other => panic!("unexpected {other:?}"),
            },
            6..=8 if !in_flight.is_empty() => {
                let a = in_flight.swap_remove(rng.below(in_flight.len() as u64) as usize);
                let outcome = match rng.below(10) {
                    0 => JobOutcome::Failed(JobError::Busy),
                    1 => JobOutcome::Compiled { exit_code: 1 },
                    _ => DONE,
                };
                farm.job_finished(a.node, a.job, &outcome, rng.below(5000));
            }
            _ => {
                now += Duration::from_secs(rng.below(20));
                let gone = farm.expire(now);
                in_flight.retain(|a| !gone.contains(&a.job));
                expired += gone.len() as u64;
            }
        }
        for reply in farm.dispatch(now) {
            let deadline = deadlines.remove(&reply.waiter).unwrap();
            match reply.response {
                AllocateResponse::Assigned(a) => {
                    assert!(now < deadline, "granted after its deadline");
                    in_flight.push(a);
                    placed += 1;
                }
                AllocateResponse::RunLocally(RunLocallyReason::NoFreeSlot) => {
                    assert!(now >= deadline, "timed out before its deadline");
                    local += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        check_invariants(&farm);
        if farm.waiting() > 0 {
            assert!(
                farm.nodes.values().all(|n| !n.has_free_slot()),
                "a slot is free while requests wait"
            );
        }
    }

    let totals = farm.status(now).totals;
    assert_eq!(totals.assigned, placed);
    assert_eq!(totals.run_locally, local);
    assert_eq!(totals.abandoned, expired);
    assert_eq!(
        totals.succeeded + totals.compile_errors + totals.failed + totals.abandoned,
        totals.assigned - farm.jobs.len() as u64,
        "every assignment ends exactly once"
    );
    assert!(
        local > 0 && expired > 0 && totals.queued > local,
        "the run reached full capacity, the queue, timeouts and expiry: {totals:?}"
    );
}

// ---------------------------------------------------------------------------
// Simulations: many nodes and builds, jobs of seeded-random durations
// finishing over simulated time, checked at every step.

/// Something that happens at a simulated instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A node finishes a job.
    Finished {
        job: JobId,
        node: NodeId,
        wall_ms: u64,
    },
    /// A build is ready to send its next request: it finished compiling a
    /// job locally, or finished its own work between two jobs.
    Ready { build: usize },
}

/// A discrete-event simulation of builds sending jobs to a farm, with the
/// farm driven exactly as the server drives it: dispatch after every change.
struct Sim {
    farm: Farm,
    now: Instant,
    rng: XorShift,
    /// How fast each node really is: a job takes its crate's base time
    /// divided by this.
    true_speed: BTreeMap<NodeId, f64>,
    /// Base compile time per crate, in milliseconds.
    crates: Vec<u64>,
    /// Each compile time is its base time times a uniform factor in
    /// [1 − noise, 1 + noise].
    noise: f64,
    events: BinaryHeap<Reverse<(Instant, u64, Event)>>,
    seq: u64,
    /// Queued requests: (build, crate, deadline).
    pending: BTreeMap<WaiterId, (usize, usize, Instant)>,
    /// The same by deadline, and counted per build, so that the per-step
    /// checks need not walk them all.
    pending_deadlines: BTreeSet<(Instant, WaiterId)>,
    pending_per_build: Vec<u32>,
    /// Build of each job in flight.
    job_build: BTreeMap<JobId, usize>,
    in_flight: Vec<u32>,
    /// Whether a build sends a new request whenever one of its jobs ends
    /// (a build with unbounded work), or only sends what the test sends.
    closed_loop: bool,
    /// In a closed loop, a build's next request comes up to this long after
    /// a job ends (its own work between jobs), so demand goes up and down.
    think_ms: u64,
    /// The largest gap seen between the running jobs of the node a request
    /// was placed on and the least busy node, and the bound it was held to.
    worst_gap: (u32, u32),
    placed: Vec<u64>,
    granted: Vec<u64>,
    timed_out: Vec<u64>,
    done: Vec<u64>,
    done_on: BTreeMap<NodeId, u64>,
    /// Steps taken, to pace the expensive checks.
    steps: u64,
}

impl Sim {
    /// Nodes given as (slots, true speed), all holding the toolchain; ids
    /// start at 1.
    fn new(nodes: &[(u32, f64)], builds: usize, noise: f64, seed: u64) -> Sim {
        let now = Instant::now();
        let mut rng = XorShift(seed);
        let mut farm = Farm::default();
        farm.toolchain_stored(TC, 1);
        let mut true_speed = BTreeMap::new();
        for (i, &(slots, speed)) in nodes.iter().enumerate() {
            let id = i as u64 + 1;
            farm.register_node(
                now,
                &registration(id, slots, vec![TC]),
                peer(),
                key(id),
                TEST_NODE_CERT,
            )
            .unwrap();
            true_speed.insert(NodeId(id), speed);
        }
        // Compile times between 0.5 and 8 s, as for most crates of a
        // dependency tree.
        let crates = (0..64).map(|_| 500 + rng.below(7500)).collect();
        Sim {
            farm,
            now,
            rng,
            true_speed,
            crates,
            noise,
            events: BinaryHeap::new(),
            seq: 0,
            pending: BTreeMap::new(),
            pending_deadlines: BTreeSet::new(),
            pending_per_build: vec![0; builds],
            job_build: BTreeMap::new(),
            in_flight: vec![0; builds],
            closed_loop: false,
            think_ms: 0,
            worst_gap: (0, 0),
            placed: vec![0; builds],
            granted: vec![0; builds],
            timed_out: vec![0; builds],
            done: vec![0; builds],
            done_on: BTreeMap::new(),
            steps: 0,
        }
    }

    fn schedule(&mut self, after: Duration, event: Event) {
        self.seq += 1;
        self.events
            .push(Reverse((self.now + after, self.seq, event)));
    }

    /// A build asks for a slot for a random crate.
    fn request(&mut self, build: usize) {
        let krate = self.rng.below(self.crates.len() as u64) as usize;
        let req = AllocateRequest {
            toolchain: TC,
            crate_name: format!("crate{krate}"),
            client: format!("client{build}"),
            build: format!("build{build}"),
            exclude: Vec::new(),
        };
        let least_busy = self.farm.nodes.values().map(Node::running).min().unwrap();
        match self.farm.allocate(self.now, &req, TEST_CLIENT) {
            Decision::Answer(AllocateResponse::Assigned(a)) => {
                // Every node holds the toolchain and reports no load, so
                // only free share and speed decide: the chosen node c beat
                // the least busy node m, s_c × f_c ≥ s_m × f_m, hence
                // f_m − f_c ≤ f_m × (1 − s_m/s_c), which is at most
                // slots × (1 − slowest/fastest).
                let bound = self.decision_bound();
                let gap = running(&self.farm, a.node.0) - 1 - least_busy;
                assert!(
                    gap <= bound,
                    "placed {gap} jobs above the least busy node (bound {bound})"
                );
                if gap >= self.worst_gap.0 {
                    self.worst_gap = (gap, bound);
                }
                self.placed[build] += 1;
                self.start(a, build, krate);
            }
            Decision::Queued { waiter, deadline } => {
                assert_eq!(deadline, self.now + QUEUE_TIMEOUT);
                self.pending.insert(waiter, (build, krate, deadline));
                self.pending_deadlines.insert((deadline, waiter));
                self.pending_per_build[build] += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    fn start(&mut self, a: Assignment, build: usize, krate: usize) {
        assert!(self.farm.job_started(a.node, a.job));
        let jitter = 1.0 + self.noise * (2.0 * self.rng.unit() - 1.0);
        let wall = self.crates[krate] as f64 / self.true_speed[&a.node] * jitter;
        let wall_ms = (wall.round() as u64).max(1);
        self.job_build.insert(a.job, build);
        self.in_flight[build] += 1;
        self.schedule(
            Duration::from_millis(wall_ms),
            Event::Finished {
                job: a.job,
                node: a.node,
                wall_ms,
            },
        );
    }

    /// Dispatches and applies the replies, checking that every grant comes
    /// before its deadline and goes to a build with the fewest jobs in
    /// flight among those waiting, and that every timeout comes at or after
    /// its deadline.
    fn dispatch(&mut self) {
        for reply in self.farm.dispatch(self.now) {
            let (build, krate, deadline) = self
                .pending
                .remove(&reply.waiter)
                .expect("a reply for a request the simulation queued");
            self.pending_deadlines.remove(&(deadline, reply.waiter));
            self.pending_per_build[build] -= 1;
            match reply.response {
                AllocateResponse::Assigned(a) => {
                    assert!(self.now < deadline, "granted after its deadline");
                    let waiting =
                        (0..self.in_flight.len()).filter(|&b| self.pending_per_build[b] > 0);
                    for other in waiting {
                        assert!(
                            self.in_flight[build] <= self.in_flight[other],
                            "build {build} ({} in flight) served before build {other} ({})",
                            self.in_flight[build],
                            self.in_flight[other]
                        );
                    }
                    self.granted[build] += 1;
                    self.start(a, build, krate);
                }
                AllocateResponse::RunLocally(RunLocallyReason::NoFreeSlot) => {
                    assert!(
                        self.now >= deadline,
                        "told to run locally before its deadline"
                    );
                    self.timed_out[build] += 1;
                    if self.closed_loop {
                        let local = Duration::from_millis(self.crates[krate]);
                        self.schedule(local, Event::Ready { build });
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Advances to the next event or deadline and handles it. Returns false
    /// when nothing is left to happen.
    fn step(&mut self) -> bool {
        let next_event = self.events.peek().map(|Reverse((at, _, _))| *at);
        let next_deadline = self.pending_deadlines.first().map(|(d, _)| *d);
        let at = match (next_event, next_deadline) {
            (None, None) => return false,
            (Some(e), None) => e,
            (None, Some(d)) => d,
            (Some(e), Some(d)) => e.min(d),
        };
        assert!(at >= self.now, "time runs forwards");
        self.now = at;
        if next_event == Some(at) {
            let Some(Reverse((_, _, event))) = self.events.pop() else {
                unreachable!("peeked above")
            };
            match event {
                Event::Finished { job, node, wall_ms } => {
                    assert!(self.farm.job_finished(node, job, &DONE, wall_ms));
                    let build = self.job_build.remove(&job).unwrap();
                    self.in_flight[build] -= 1;
                    self.done[build] += 1;
                    *self.done_on.entry(node).or_default() += 1;
                    // The node's report frees the slot, and the server
                    // dispatches before the client's next request arrives.
                    self.dispatch();
                    if self.closed_loop {
                        if self.think_ms == 0 {
                            self.request(build);
                        } else {
                            let think = Duration::from_millis(self.rng.below(self.think_ms));
                            self.schedule(think, Event::Ready { build });
                        }
                    }
                }
                Event::Ready { build } => self.request(build),
            }
        }
        self.dispatch();
        self.check();
        true
    }

    /// Invariants that hold after every step. The full bookkeeping check
    /// walks every job, so it runs every 64th step; the slot limit is
    /// checked at every one.
    fn check(&mut self) {
        self.steps += 1;
        if self.steps.is_multiple_of(64) {
            check_invariants(&self.farm);
        }
        for (id, node) in &self.farm.nodes {
            assert!(node.running() <= node.slots, "{id} is oversubscribed");
        }
        let in_flight: u32 = self.in_flight.iter().sum();
        assert_eq!(in_flight as usize, self.farm.jobs.len());
        assert_eq!(self.pending.len(), self.farm.waiting());
        if !self.pending.is_empty() {
            assert!(
                self.farm.nodes.values().all(|n| !n.has_free_slot()),
                "a slot is free while requests wait"
            );
        }
    }

    /// Max − min running jobs across the nodes.
    fn spread(&self) -> u32 {
        let running = self.farm.nodes.values().map(Node::running);
        running.clone().max().unwrap() - running.min().unwrap()
    }

    /// How many more jobs than the least busy node the node a request is
    /// placed on may run, for nodes with equal slots: 0 when their learned
    /// speeds are equal, and the share of slots that the fastest node's
    /// speed advantage is worth otherwise.
    fn decision_bound(&self) -> u32 {
        let slots = self.farm.nodes.values().map(|n| n.slots).max().unwrap();
        let speeds = self.farm.nodes.values().map(|n| n.speed);
        let fastest = speeds.clone().fold(f64::MIN, f64::max);
        let slowest = speeds.fold(f64::MAX, f64::min);
        (f64::from(slots) * (1.0 - slowest / fastest)).floor() as u32
    }

    fn total_done(&self) -> u64 {
        self.done.iter().sum()
    }
}

/// Sends `per_build` requests from each of `builds` builds, interleaved at
/// random, all at the current instant.
fn burst(sim: &mut Sim, builds: usize, per_build: usize, mut after_each: impl FnMut(&Sim)) {
    let mut order: Vec<usize> = (0..builds * per_build).map(|i| i % builds).collect();
    for i in (1..order.len()).rev() {
        let j = sim.rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    for build in order {
        sim.request(build);
        sim.dispatch();
        sim.check();
        after_each(sim);
    }
}

/// The acceptance test of the placement issue: 200 equal nodes with 8 slots
/// each (1,600 slots) and 2,000 concurrent requests from two builds.
///
/// Bounds checked:
/// * no node ever runs more jobs than its slots (at every step);
/// * while the burst fills the farm, the spread of running jobs across the
///   nodes is at most 1 after every single assignment;
/// * no request waits while a slot is free (at every step);
/// * every queued request is granted before its 2 s deadline or told to
///   compile locally at or after it, never before;
/// * every grant goes to a build with the fewest jobs in flight among the
///   builds that have requests waiting;
/// * the two builds' shares of the farm differ by at most 2 % of the
///   requests placed.
#[test]
fn simulation_200_nodes_2000_concurrent_requests() {
    const NODES: usize = 200;
    const SLOTS: u32 = 8;
    let mut sim = Sim::new(&[(SLOTS, 1.0); NODES], 2, 0.0, 0x0dd_ba11);
    let mut worst_burst_spread = 0;
    burst(&mut sim, 2, 1000, |sim| {
        if sim.pending.is_empty() {
            worst_burst_spread = worst_burst_spread.max(sim.spread());
        }
    });
    assert!(worst_burst_spread <= 1, "spread {worst_burst_spread}");
    assert_eq!(sim.farm.jobs.len(), NODES * SLOTS as usize);
    assert_eq!(sim.pending.len(), 400);
    assert_eq!(sim.spread(), 0, "every node is full");

    while sim.step() {}

    let totals = sim.farm.status(sim.now).totals;
    let granted: u64 = sim.granted.iter().sum();
    let timed_out: u64 = sim.timed_out.iter().sum();
    assert_eq!(totals.queued, 400);
    assert_eq!(granted + timed_out, 400);
    assert!(
        granted > 0 && timed_out > 0,
        "{granted} granted, {timed_out} timed out"
    );
    assert_eq!(totals.assigned, 1600 + granted);
    assert_eq!(totals.run_locally, timed_out);
    assert_eq!(totals.succeeded, totals.assigned);
    let share = |b: usize| sim.placed[b] + sim.granted[b];
    let (a, b) = (share(0), share(1));
    assert!(
        a.abs_diff(b) * 50 <= a + b,
        "build shares {a} and {b} differ by more than 2 %"
    );
}

/// Equal nodes under a changing load below capacity: two builds each keep
/// up to 700 jobs going on 1,600 slots, but after each job a build works on
/// its own for up to 2 s before it asks again, so demand rises and falls;
/// compile times vary by ±10 % around their crate's, so the learned speeds
/// of the equal nodes drift apart a little. Over 12,000 compiles:
/// * every request goes to a node running at most
///   `⌊8 × (1 − slowest/fastest)⌋` jobs more than the least busy node (0
///   while learned speeds are within 14 % of each other);
/// * the spread of running jobs across the nodes (max − min), averaged
///   over all steps, stays below 2;
/// * the learned speeds stay within 10 % of 1;
/// * nobody waits, since demand never exceeds the slots.
#[test]
fn simulation_changing_load_stays_balanced() {
    let mut sim = Sim::new(&[(8, 1.0); 200], 2, 0.1, 0x5eed_cafe);
    sim.closed_loop = true;
    sim.think_ms = 2000;
    burst(&mut sim, 2, 700, |sim| assert!(sim.spread() <= 1));
    let mut spread_sum = 0u64;
    let mut steps = 0u64;
    while sim.total_done() < 12_000 {
        assert!(sim.step());
        spread_sum += u64::from(sim.spread());
        steps += 1;
    }
    assert_eq!(sim.farm.status(sim.now).totals.queued, 0, "nobody waited");
    for (id, node) in &sim.farm.nodes {
        assert!(
            (0.9..=1.1).contains(&node.speed),
            "{id} learned speed {}",
            node.speed
        );
    }
    assert_eq!(sim.worst_gap, (0, 0));
    // Finishes are random, so between requests the spread grows; what
    // placement can do is close it with each request.
    let mean_spread = spread_sum as f64 / steps as f64;
    assert!(mean_spread < 2.0, "mean spread {mean_spread}");
}

/// Two builds that each want more than the whole farm: one starts with
/// 1,000 jobs in flight and the other with 600, yet once the first freed
/// slots have gone to the smaller one, their jobs in flight differ by at
/// most 1 whenever both have requests waiting, and over 12,000 compiles
/// their shares of the farm's slot time differ by less than 1 %.
#[test]
fn simulation_two_greedy_builds_share_the_farm_evenly() {
    let mut sim = Sim::new(&[(8, 1.0); 200], 2, 0.1, 0xfa17);
    sim.closed_loop = true;
    for _ in 0..1000 {
        sim.request(0);
    }
    sim.dispatch();
    for _ in 0..1000 {
        sim.request(1);
    }
    sim.dispatch();
    sim.check();
    assert_eq!(sim.in_flight, [1000, 600]);

    let mut converged = false;
    // Slot time per build since convergence: jobs in flight × seconds.
    let mut slot_time = [0.0f64; 2];
    while sim.total_done() < 12_000 {
        let (before, in_flight) = (sim.now, sim.in_flight.clone());
        assert!(sim.step());
        if converged {
            let dt = (sim.now - before).as_secs_f64();
            for b in 0..2 {
                slot_time[b] += f64::from(in_flight[b]) * dt;
            }
        }
        let both_wait = sim.pending_per_build.iter().all(|&n| n > 0);
        let gap = sim.in_flight[0].abs_diff(sim.in_flight[1]);
        if !converged && gap <= 1 {
            converged = true;
        } else if converged && both_wait {
            assert!(gap <= 1, "jobs in flight {:?}", sim.in_flight);
        }
    }
    assert!(converged);
    let [a, b] = slot_time;
    assert!(
        (a - b).abs() <= 0.01 * (a + b),
        "builds held {a:.0} and {b:.0} slot-seconds"
    );
}

/// Half the nodes are twice as fast as the others. Under a load of half the
/// farm's slots, placement learns the difference and favours the fast
/// nodes: they learn about twice the speed of the slow ones, and after
/// the learning phase they complete at least 3 times as many compiles. (A
/// placement blind to speed would spread the jobs evenly, and the fast
/// nodes would complete only twice as many, by being faster.)
#[test]
fn simulation_faster_nodes_get_more_work() {
    let mut nodes = vec![(8, 2.0); 50];
    nodes.extend([(8, 1.0); 50]);
    let mut sim = Sim::new(&nodes, 1, 0.1, 0xfa57);
    sim.closed_loop = true;
    burst(&mut sim, 1, 400, |_| {});
    while sim.total_done() < 5_000 {
        assert!(sim.step());
    }
    let before = sim.done_on.clone();
    while sim.total_done() < 25_000 {
        assert!(sim.step());
    }
    let is_fast = |id: &NodeId| id.0 <= 50;
    let mut done = [0u64; 2];
    for (id, n) in &sim.done_on {
        done[usize::from(!is_fast(id))] += n - before.get(id).copied().unwrap_or(0);
    }
    let mean_speed = |fast: bool| {
        let speeds: Vec<f64> = sim
            .farm
            .nodes
            .iter()
            .filter(|(id, _)| is_fast(id) == fast)
            .map(|(_, n)| n.speed)
            .collect();
        speeds.iter().sum::<f64>() / speeds.len() as f64
    };
    let ratio = mean_speed(true) / mean_speed(false);
    assert!((1.6..=2.5).contains(&ratio), "learned speed ratio {ratio}");
    assert!(
        done[0] >= 3 * done[1],
        "fast nodes completed {}, slow ones {}",
        done[0],
        done[1]
    );
}

#[test]
fn job_reports_fill_a_bounded_history_of_recent_jobs() {
    let t0 = Instant::now();
    let mut farm = farm_with(t0, &[(1, 4)]);
    let a = assigned(farm.allocate(t0, &request(), TEST_CLIENT));
    let report = |bytes_in| JobReport {
        outcome: DONE,
        wall_ms: 700,
        bytes_in,
        bytes_out: 5000,
    };
    assert!(farm.job_report(t0 + 900 * MS, a.node, a.job, report(1234)));
    // A second report of the same job, or one naming another node, is
    // ignored and adds nothing.
    assert!(!farm.job_report(t0 + 950 * MS, a.node, a.job, report(1)));
    let status = farm.status(t0 + 1000 * MS);
    assert_eq!(status.recent.len(), 1);
    let r = &status.recent[0];
    assert_eq!(
        (r.job, r.node, r.crate_name.as_str()),
        (a.job, a.node, "serde")
    );
    assert_eq!(r.build, "dev1:4000");
    assert_eq!((r.total_ms, r.wall_ms, r.ended_ago_ms), (900, 700, 100));
    assert_eq!((r.bytes_in, r.bytes_out), (1234, 5000));
    assert_eq!(status.totals.succeeded, 1);

    for i in 0..RECENT_JOBS as u64 + 10 {
        let a = assigned(farm.allocate(t0, &request(), TEST_CLIENT));
        assert!(farm.job_report(t0, a.node, a.job, report(i)));
    }
    let recent = farm.status(t0).recent;
    assert_eq!(recent.len(), RECENT_JOBS);
    assert_eq!(
        recent.last().unwrap().bytes_in,
        RECENT_JOBS as u64 + 9,
        "newest last"
    );
}
