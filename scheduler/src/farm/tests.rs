//! Placement tests. Time is a plain `Instant` the tests advance by hand, and
//! no test opens a socket.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use distcc_rs_proto::message::JobError;
use distcc_rs_proto::{Digest, JobId, NodeId, Ticket, ToolchainId};

use super::*;

const TC: ToolchainId = ToolchainId(Digest([7; 32]));
const OTHER_TC: ToolchainId = ToolchainId(Digest([8; 32]));

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
    AllocateRequest {
        toolchain: TC,
        crate_name: "serde".into(),
        client: "dev1:4242".into(),
        build: "dev1:4000".into(),
        exclude: Vec::new(),
    }
}

/// A farm whose store holds [`TC`], with nodes given as (id, slots).
fn farm_with(now: Instant, nodes: &[(u64, u32)]) -> Farm {
    let mut farm = Farm::default();
    farm.toolchain_stored(TC, 1000);
    for &(id, slots) in nodes {
        farm.register_node(now, &registration(id, slots, vec![]), peer(), key(id))
            .unwrap();
    }
    farm
}

fn assigned(response: AllocateResponse) -> Assignment {
    match response {
        AllocateResponse::Assigned(a) => a,
        other => panic!("expected an assignment, got {other:?}"),
    }
}

fn running(farm: &Farm, node: u64) -> u32 {
    farm.nodes[&NodeId(node)].running()
}

/// Checks the bookkeeping invariants: no node runs more than its slots, and
/// the per-node job sets agree with the job table.
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
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Node(u64),
    Local(RunLocallyReason),
}

struct Case {
    name: &'static str,
    /// (id, slots, running, holds the toolchain). Running jobs are assigned
    /// in table order, so among nodes with equal load an earlier row was
    /// assigned less recently.
    nodes: &'static [(u64, u32, u32, bool)],
    expect: Expect,
}

#[test]
fn placement_prefers_as_documented() {
    use Expect::*;
    let cases = [
        Case {
            name: "lowest load wins",
            nodes: &[(1, 4, 2, false), (2, 4, 1, false), (3, 4, 3, false)],
            expect: Node(2),
        },
        Case {
            name: "load is relative to slots",
            nodes: &[(1, 2, 1, false), (2, 8, 3, false)],
            expect: Node(2),
        },
        Case {
            name: "full nodes are skipped",
            nodes: &[(1, 1, 1, false), (2, 4, 3, false)],
            expect: Node(2),
        },
        Case {
            name: "every slot busy",
            nodes: &[(1, 1, 1, true), (2, 2, 2, false)],
            expect: Local(RunLocallyReason::NoFreeSlot),
        },
        Case {
            name: "no nodes",
            nodes: &[],
            expect: Local(RunLocallyReason::NoNodes),
        },
        Case {
            name: "toolchain breaks a load tie",
            nodes: &[(1, 4, 0, false), (2, 4, 0, true), (3, 4, 0, false)],
            expect: Node(2),
        },
        Case {
            name: "toolchain breaks a relative load tie",
            nodes: &[(1, 2, 1, false), (2, 4, 2, true)],
            expect: Node(2),
        },
        Case {
            name: "lower load beats holding the toolchain",
            nodes: &[(1, 4, 2, true), (2, 4, 1, false)],
            expect: Node(2),
        },
        Case {
            name: "fewer running breaks a relative load tie",
            nodes: &[(1, 8, 2, false), (2, 4, 1, false)],
            expect: Node(2),
        },
        Case {
            name: "least recently assigned breaks a full tie",
            nodes: &[(2, 4, 1, false), (1, 4, 1, false)],
            expect: Node(2),
        },
        Case {
            name: "lowest id breaks a tie between idle nodes",
            nodes: &[(5, 4, 0, false), (3, 4, 0, false)],
            expect: Node(3),
        },
    ];
    let now = Instant::now();
    for case in &cases {
        let mut farm = farm_with(now, &[]);
        for &(id, slots, _, holds) in case.nodes {
            let toolchains = if holds { vec![TC] } else { vec![OTHER_TC] };
            farm.register_node(now, &registration(id, slots, toolchains), peer(), key(id))
                .unwrap();
        }
        for &(id, _, busy, _) in case.nodes {
            for _ in 0..busy {
                farm.assign(now, NodeId(id), &request());
            }
        }
        let got = match farm.allocate(now, &request()) {
            AllocateResponse::Assigned(a) => Expect::Node(a.node.0),
            AllocateResponse::RunLocally(reason) => Expect::Local(reason),
            AllocateResponse::NeedToolchain => panic!("{}: asked for the toolchain", case.name),
        };
        assert_eq!(got, case.expect, "case: {}", case.name);
        check_invariants(&farm);
    }
}

#[test]
fn unknown_toolchain_is_requested_before_anything_else() {
    let now = Instant::now();
    let mut farm = farm_with(now, &[(1, 4)]);
    let req = AllocateRequest {
        toolchain: OTHER_TC,
        ..request()
    };
    assert_eq!(farm.allocate(now, &req), AllocateResponse::NeedToolchain);
    assert_eq!(farm.status(now).totals, FarmTotals::default());
    farm.toolchain_stored(OTHER_TC, 5);
    assigned(farm.allocate(now, &req));
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
        farm.allocate(now, &req),
        AllocateResponse::RunLocally(RunLocallyReason::NoNodes)
    );
}

#[test]
fn released_assignments_free_their_slot_at_once() {
    let now = Instant::now();
    let mut farm = farm_with(now, &[(1, 1)]);
    let a = assigned(farm.allocate(now, &request()));
    assert!(matches!(
        farm.allocate(now, &request()),
        AllocateResponse::RunLocally(RunLocallyReason::NoFreeSlot)
    ));
    assert!(farm.release(a.job));
    assert!(!farm.release(a.job), "a job is released once");
    assert_eq!(farm.status(now).totals.abandoned, 1);
    let b = assigned(farm.allocate(now, &request()));
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
    farm.register_node(now, &registration(1, 2, vec![]), peer(), [1; 32])
        .unwrap();
    farm.toolchain_stored(TC, 1);
    let a = assigned(farm.allocate(now, &request()));
    assert_eq!(a.job, JobId((7 << 32) + 1));
}

#[test]
fn a_burst_never_exceeds_slots() {
    let now = Instant::now();
    let mut farm = farm_with(now, &[(1, 1), (2, 2), (3, 3)]);
    let mut placed = 0;
    let mut local = 0;
    for _ in 0..10 {
        match farm.allocate(now, &request()) {
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
    assert_eq!((totals.assigned, totals.run_locally), (6, 4));
}

#[test]
fn a_burst_spreads_across_equal_nodes() {
    let now = Instant::now();
    let mut farm = farm_with(now, &[(1, 4), (2, 4), (3, 4)]);
    let nodes: Vec<u64> = (0..6)
        .map(|_| assigned(farm.allocate(now, &request())).node.0)
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
        let a = assigned(farm.allocate(now, &request()));
        order.push(a.node.0);
        assert!(farm.job_finished(a.node, a.job, &JobOutcome::Compiled { exit_code: 0 }));
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
            outcome: JobOutcome::Compiled { exit_code: 0 },
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
        let mut farm = farm_with(now, &[(1, 1)]);
        let a = assigned(farm.allocate(now, &request()));
        assert_eq!(
            farm.allocate(now, &request()),
            AllocateResponse::RunLocally(RunLocallyReason::NoFreeSlot)
        );
        assert!(farm.job_started(a.node, a.job));
        assert!(farm.job_finished(a.node, a.job, &case.outcome));
        // A second report of the same job changes nothing.
        assert!(!farm.job_finished(a.node, a.job, &case.outcome));
        let status = farm.status(now);
        assert_eq!(status.totals, case.totals, "{:?}", case.outcome);
        assert_eq!(
            (status.nodes[0].jobs_done, status.nodes[0].jobs_failed),
            case.done_failed
        );
        assert_eq!(status.nodes[0].running, 0);
        assert!(status.jobs.is_empty());
        assigned(farm.allocate(now, &request()));
    }
}

#[test]
fn reports_about_another_nodes_job_are_ignored() {
    let now = Instant::now();
    let mut farm = farm_with(now, &[(1, 1), (2, 1)]);
    let a = assigned(farm.allocate(now, &request()));
    let other = if a.node == NodeId(1) {
        NodeId(2)
    } else {
        NodeId(1)
    };
    let done = JobOutcome::Compiled { exit_code: 0 };
    assert!(!farm.job_started(other, a.job));
    assert!(!farm.job_finished(other, a.job, &done));
    assert!(!farm.job_finished(a.node, JobId(999), &done));
    assert_eq!(running(&farm, a.node.0), 1);
    assert_eq!(farm.status(now).jobs[0].phase, JobPhase::Assigned);
    assert_eq!(farm.status(now).totals.succeeded, 0);
}

#[test]
fn unclaimed_assignments_expire_and_free_their_slots() {
    let t0 = Instant::now();
    let mut farm = farm_with(t0, &[(1, 2)]);
    let claimed = assigned(farm.allocate(t0, &request()));
    let unclaimed = assigned(farm.allocate(t0 + Duration::from_secs(1), &request()));
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
    assigned(farm.allocate(later, &request()));
}

#[test]
fn registration_rules() {
    let now = Instant::now();
    let mut farm = Farm::default();
    assert_eq!(
        farm.register_node(now, &registration(1, 4, vec![]), peer(), key(1)),
        Ok("10.0.0.9:7701".parse().unwrap()),
        "the job port pairs with the address the node came from"
    );
    assert_eq!(
        farm.register_node(now, &registration(1, 8, vec![]), peer(), key(9)),
        Err(RegisterRefusal::DuplicateNode(NodeId(1)))
    );
    assert_eq!(
        farm.register_node(now, &registration(2, 0, vec![]), peer(), key(2)),
        Err(RegisterRefusal::NoSlots)
    );
    let advertised: SocketAddr = "192.168.1.5:9000".parse().unwrap();
    let reg = NodeRegistration {
        advertise: Some(advertised),
        ..registration(3, 2, vec![TC])
    };
    assert_eq!(
        farm.register_node(now, &reg, peer(), key(3)),
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
        farm.register_node(later, &registration(1, 8, vec![]), peer(), key(9))
            .is_ok()
    );
}

#[test]
fn removing_a_node_abandons_its_jobs() {
    let t0 = Instant::now();
    let mut farm = farm_with(t0, &[(1, 2), (2, 2)]);
    let jobs: Vec<Assignment> = (0..3)
        .map(|_| assigned(farm.allocate(t0, &request())))
        .collect();
    let on_1: Vec<JobId> = jobs
        .iter()
        .filter(|a| a.node == NodeId(1))
        .map(|a| a.job)
        .collect();
    assert_eq!(on_1.len(), 2);

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
    assert_eq!(status.totals.abandoned, 2);
    let done = JobOutcome::Compiled { exit_code: 0 };
    assert!(!farm.job_finished(NodeId(1), on_1[0], &done));
    assert_eq!(farm.status(later).totals.succeeded, 0);
}

#[test]
fn ticket_mac_verifies_only_with_the_nodes_key() {
    let now = Instant::now();
    let mut farm = farm_with(now, &[(1, 1), (2, 1)]);
    let a = assigned(farm.allocate(now, &request()));
    assert_eq!(a.ticket.job, a.job);
    assert_eq!(a.ticket.node, a.node);
    assert_eq!(a.ticket.toolchain, TC);

    let mac_under = |k: [u8; 32], t: &Ticket| {
        *blake3::keyed_hash(&k, &Ticket::signed_bytes(t.job, t.node, t.toolchain)).as_bytes()
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
}

#[test]
fn toolchain_ready_is_recorded_and_preferred() {
    let now = Instant::now();
    let mut farm = farm_with(now, &[(1, 4), (2, 4)]);
    assert!(farm.toolchain_ready(NodeId(2), TC));
    assert!(!farm.toolchain_ready(NodeId(9), TC));
    assert_eq!(farm.status(now).nodes[1].toolchains, [TC]);
    assert_eq!(assigned(farm.allocate(now, &request())).node, NodeId(2));
}

/// A tiny deterministic PRNG (SplitMix64), so the simulation needs no
/// dependency and replays identically.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn simulation_never_overcommits_a_node() {
    let mut rng = SplitMix(0x5eed);
    let mut now = Instant::now();
    let mut farm = Farm::default();
    farm.toolchain_stored(TC, 1);
    for id in 1..=20 {
        let slots = 1 + rng.below(8) as u32;
        let tcs = if rng.below(2) == 0 { vec![TC] } else { vec![] };
        farm.register_node(now, &registration(id, slots, tcs), peer(), key(id))
            .unwrap();
    }
    let capacity: u32 = farm.nodes.values().map(|n| n.slots).sum();
    let mut in_flight: Vec<Assignment> = Vec::new();
    let (mut placed, mut local, mut expired) = (0u64, 0u64, 0u64);

    for _ in 0..2_000 {
        now += Duration::from_millis(rng.below(500));
        match rng.below(10) {
            // Allocate more often than finish, so the farm fills up and the
            // slot limit is actually exercised.
            0..=5 => match farm.allocate(now, &request()) {
                AllocateResponse::Assigned(a) => {
                    if rng.below(4) != 0 {
                        assert!(farm.job_started(a.node, a.job));
                    }
                    in_flight.push(a);
                    placed += 1;
                }
                AllocateResponse::RunLocally(RunLocallyReason::NoFreeSlot) => {
                    let busy: u32 = farm.nodes.values().map(Node::running).sum();
                    assert_eq!(busy, capacity, "answered NoFreeSlot with free slots");
                    local += 1;
                }
                other => panic!("unexpected {other:?}"),
            },
            6..=8 if !in_flight.is_empty() => {
                let a = in_flight.swap_remove(rng.below(in_flight.len() as u64) as usize);
                let outcome = match rng.below(10) {
                    0 => JobOutcome::Failed(JobError::Busy),
                    1 => JobOutcome::Compiled { exit_code: 1 },
                    _ => JobOutcome::Compiled { exit_code: 0 },
                };
                farm.job_finished(a.node, a.job, &outcome);
            }
            _ => {
                now += Duration::from_secs(rng.below(20));
                expired += farm.expire(now).len() as u64;
            }
        }
        check_invariants(&farm);
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
        local > 0 && expired > 0,
        "the run reached full capacity and expiry"
    );
}
