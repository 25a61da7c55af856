//! Table-driven tests of the scoring formula and the choice.

use distcc_rs_proto::NodeId;
use distcc_rs_proto::message::NodeLoad;

use super::*;

/// An idle-machine report from a node with `cores` cores and plenty of
/// memory and disk.
fn report(cores: u32, running: u32, cpu_permille: u16, load_centi: u32) -> NodeLoad {
    NodeLoad {
        running,
        slots: cores,
        cores,
        cpu_busy_permille: cpu_permille,
        load_avg_centi: load_centi,
        mem_available: 16 << 30,
        disk_free: 100 << 30,
    }
}

/// A candidate with neutral speed, no report, no toolchain, never assigned.
fn node(id: u64, slots: u32, running: u32) -> Candidate {
    Candidate {
        node: NodeId(id),
        slots,
        running,
        load: None,
        speed: 1.0,
        holds_toolchain: false,
        last_assigned: 0,
        excluded: false,
    }
}

fn with_load(c: Candidate, load: NodeLoad) -> Candidate {
    Candidate {
        load: Some(load),
        ..c
    }
}

fn with_speed(c: Candidate, speed: f64) -> Candidate {
    Candidate { speed, ..c }
}

fn holding(c: Candidate) -> Candidate {
    Candidate {
        holds_toolchain: true,
        ..c
    }
}

fn last(c: Candidate, last_assigned: u64) -> Candidate {
    Candidate { last_assigned, ..c }
}

fn excluded(c: Candidate) -> Candidate {
    Candidate {
        excluded: true,
        ..c
    }
}

#[test]
fn choice_follows_the_formula() {
    use Choice::*;
    let low_memory = NodeLoad {
        mem_available: MIN_MEMORY - 1,
        ..report(8, 0, 0, 0)
    };
    let low_disk = NodeLoad {
        disk_free: MIN_DISK - 1,
        ..report(8, 0, 0, 0)
    };
    let cases: Vec<(&str, Vec<Candidate>, Choice)> = vec![
        (
            "most free share wins",
            vec![node(1, 4, 2), node(2, 4, 1), node(3, 4, 3)],
            Place(NodeId(2)),
        ),
        (
            "free share is relative to slots: 5/8 beats 1/2",
            vec![node(1, 2, 1), node(2, 8, 3)],
            Place(NodeId(2)),
        ),
        (
            "full nodes are skipped however good otherwise",
            vec![with_speed(holding(node(1, 1, 1)), 4.0), node(2, 4, 3)],
            Place(NodeId(2)),
        ),
        (
            "every slot busy: the request may wait",
            vec![node(1, 1, 1), node(2, 2, 2)],
            AllBusy,
        ),
        ("no candidates at all", vec![], NoneEligible),
        (
            "every node excluded",
            vec![excluded(node(1, 4, 0)), excluded(node(2, 4, 0))],
            NoneEligible,
        ),
        (
            "an excluded node is passed over for a busier one",
            vec![excluded(node(1, 4, 0)), node(2, 4, 3)],
            Place(NodeId(2)),
        ),
        (
            "excluded nodes do not count as busy",
            vec![excluded(node(1, 4, 0)), node(2, 4, 4)],
            AllBusy,
        ),
        (
            "short of memory: not eligible",
            vec![with_load(node(1, 8, 0), low_memory), node(2, 8, 7)],
            Place(NodeId(2)),
        ),
        (
            "short of disk: not eligible",
            vec![with_load(node(1, 8, 0), low_disk), node(2, 8, 7)],
            Place(NodeId(2)),
        ),
        (
            "only nodes short of memory or disk: none eligible",
            vec![
                with_load(node(1, 8, 0), low_memory),
                with_load(node(2, 8, 0), low_disk),
            ],
            NoneEligible,
        ),
        (
            "a report without measurements is no reason to skip a node",
            vec![with_load(node(1, 8, 0), NodeLoad::default()), node(2, 8, 1)],
            Place(NodeId(1)),
        ),
        (
            // 1 × 1 × (1 − 0.75) = 0.25 against 0.5.
            "foreign load: an idle node busy with other work loses to a half-full one",
            vec![
                with_load(node(1, 8, 0), report(8, 0, 1000, 800)),
                node(2, 8, 4),
            ],
            Place(NodeId(2)),
        ),
        (
            // Node 1's machine is fully busy, but its report shows 8 farm
            // jobs on 8 cores, which explain all of it; 2 have finished since
            // (the scheduler's count is 6), so 2/8 free beats 1/8 free.
            "load the farm's own jobs explain is not foreign",
            vec![
                with_load(node(1, 8, 6), report(8, 8, 1000, 800)),
                node(2, 8, 7),
            ],
            Place(NodeId(1)),
        ),
        (
            // The CPU is busy but the load average is low: jobs that just
            // ended, not foreign work. (And the other way round below.)
            "a CPU spike without a load average is not foreign",
            vec![
                with_load(node(1, 8, 0), report(8, 0, 1000, 50)),
                node(2, 8, 1),
            ],
            Place(NodeId(1)),
        ),
        (
            "a lingering load average with an idle CPU is not foreign",
            vec![
                with_load(node(1, 8, 0), report(8, 0, 30, 800)),
                node(2, 8, 1),
            ],
            Place(NodeId(1)),
        ),
        (
            // Half the cores foreign-busy: 1 − 0.75 × 0.5 = 0.625 against
            // 5/8 = 0.625, a tie that the never-assigned node 2 wins; with
            // 4/8 free the loaded node loses clearly.
            "half foreign load equals three busy slots of eight",
            vec![
                last(with_load(node(1, 8, 0), report(8, 0, 500, 400)), 1),
                node(2, 8, 3),
            ],
            Place(NodeId(2)),
        ),
        (
            // 2 × 5/8 = 1.25 against 1 × 1.
            "a fast node with fewer free slots beats an idle average one",
            vec![with_speed(node(1, 8, 3), 2.0), node(2, 8, 0)],
            Place(NodeId(1)),
        ),
        (
            // 0.5 × 1 = 0.5 against 5/8.
            "a slow idle node loses to a partly busy average one",
            vec![with_speed(node(1, 8, 0), 0.5), node(2, 8, 3)],
            Place(NodeId(2)),
        ),
        (
            "holding the toolchain wins among idle nodes",
            vec![node(1, 4, 0), holding(node(2, 4, 0)), node(3, 4, 0)],
            Place(NodeId(2)),
        ),
        (
            // 1 × 5/8 against 0.5 × 1.
            "a holder with more than half its slots free beats an idle cold node",
            vec![holding(node(1, 8, 3)), node(2, 8, 0)],
            Place(NodeId(1)),
        ),
        (
            // 1 × 3/8 against 0.5 × 1: the burst spreads to a cold node.
            "a holder more than half full loses to an idle cold node",
            vec![holding(node(1, 8, 5)), node(2, 8, 0)],
            Place(NodeId(2)),
        ),
        (
            "least recently assigned breaks a tie",
            vec![last(node(1, 4, 1), 9), last(node(2, 4, 1), 3)],
            Place(NodeId(2)),
        ),
        (
            "lowest id breaks a full tie",
            vec![last(node(5, 4, 0), 2), last(node(3, 4, 0), 2)],
            Place(NodeId(3)),
        ),
        (
            // Nodes 1 and 2 have learned speed 1.0 and done work before;
            // node 3 has never been used and counts as average.
            "an idle never-used node gets tried",
            vec![
                last(node(1, 8, 0), 7),
                last(node(2, 8, 0), 8),
                node(3, 8, 0),
            ],
            Place(NodeId(3)),
        ),
        (
            // 1.3 × 4/8 = 0.65 against the newcomer's neutral 1.0.
            "a never-used node is tried before a fast node that is half full",
            vec![last(with_speed(node(1, 8, 4), 1.3), 7), node(2, 8, 0)],
            Place(NodeId(2)),
        ),
    ];
    let policy = Policy::default();
    for (name, candidates, expect) in cases {
        assert_eq!(choose(&policy, candidates), expect, "case: {name}");
    }
}

#[test]
fn foreign_load_table() {
    // (cores, running in report, cpu permille, load average × 100, expected)
    let cases: [(u32, u32, u16, u32, f64); 9] = [
        (8, 0, 0, 0, 0.0),
        (8, 0, 1000, 800, 1.0),
        (8, 0, 500, 400, 0.5),
        (8, 4, 500, 400, 0.0),
        (8, 2, 500, 400, 0.25),
        // The smaller signal counts.
        (8, 0, 250, 800, 0.25),
        (8, 0, 1000, 200, 0.25),
        // An overloaded machine (load average above the core count) counts
        // as fully busy, not more.
        (4, 0, 1000, 1600, 1.0),
        // No measurements.
        (0, 0, 1000, 1600, 0.0),
    ];
    for (cores, running, cpu, load, expect) in cases {
        let got = foreign_load(&report(cores, running, cpu, load));
        assert!(
            (got - expect).abs() < 1e-9,
            "cores {cores}, running {running}, cpu {cpu}‰, load {load}: {got} != {expect}"
        );
    }
}

#[test]
fn scores_stay_positive_and_finite_whatever_the_inputs() {
    let policy = Policy::default();
    for speed in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-300, 1.0] {
        let c = with_speed(node(1, 4, 3), speed);
        match assess(&policy, &c) {
            Standing::Open(s) => assert!(s.is_finite() && s > 0.0, "speed {speed}: {s}"),
            other => panic!("speed {speed}: {other:?}"),
        }
    }
}

/// Places `jobs` jobs one after another, as the farm does: each choice adds
/// a running job and stamps the node as the most recently assigned.
/// Returns the running count per node.
fn burst(mut nodes: Vec<Candidate>, jobs: usize) -> Vec<u32> {
    let policy = Policy::default();
    for stamp in 1..=jobs as u64 {
        match choose(&policy, nodes.iter().copied()) {
            Choice::Place(id) => {
                let c = nodes.iter_mut().find(|c| c.node == id).unwrap();
                assert!(c.running < c.slots, "{id} chosen while full");
                c.running += 1;
                c.last_assigned = stamp;
            }
            other => panic!("job {stamp}: {other:?}"),
        }
    }
    nodes.iter().map(|c| c.running).collect()
}

#[test]
fn a_burst_spreads_instead_of_piling_up() {
    // Equal nodes: the first round of jobs visits every node once, in id
    // order, and after any number of jobs no node has two more than another.
    let equal: Vec<Candidate> = (1..=5).map(|id| node(id, 8, 0)).collect();
    for jobs in 0..=40 {
        let running = burst(equal.clone(), jobs);
        let (min, max) = (running.iter().min(), running.iter().max());
        assert!(max.unwrap() - min.unwrap() <= 1, "{jobs} jobs: {running:?}");
    }
    assert_eq!(burst(equal, 3), [1, 1, 1, 0, 0]);

    // Unequal slot counts fill in proportion to their size.
    let unequal = vec![node(1, 2, 0), node(2, 4, 0), node(3, 8, 0)];
    assert_eq!(burst(unequal.clone(), 7), [1, 2, 4]);
    assert_eq!(burst(unequal, 14), [2, 4, 8]);
}

#[test]
fn a_burst_fills_toolchain_holders_to_half_then_spreads() {
    // Two holders and two cold nodes, 8 slots each: holders take jobs until
    // their free share drops to one half, then everyone shares.
    let nodes = vec![
        holding(node(1, 8, 0)),
        holding(node(2, 8, 0)),
        node(3, 8, 0),
        node(4, 8, 0),
    ];
    assert_eq!(burst(nodes.clone(), 8), [4, 4, 0, 0]);
    let running = burst(nodes, 20);
    assert!(running[0] > running[2], "{running:?}");
    assert_eq!(running.iter().sum::<u32>(), 20);
}

#[test]
fn the_worked_example_in_the_docs_holds() {
    // docs/PLACEMENT.md, "Worked example".
    let policy = Policy::default();
    let a = with_speed(
        holding(with_load(node(1, 8, 6), report(8, 6, 800, 650))),
        1.2,
    );
    let b = with_load(node(2, 16, 4), report(16, 4, 750, 1200));
    let c = holding(with_load(
        node(3, 4, 0),
        NodeLoad {
            mem_available: 300 << 20,
            ..report(4, 0, 0, 0)
        },
    ));
    let d = with_speed(holding(node(4, 8, 8)), 1.5);
    let score = |c: &Candidate| match assess(&policy, c) {
        Standing::Open(s) => s,
        other => panic!("{other:?}"),
    };
    assert!((score(&a) - 0.2887).abs() < 1e-3, "{}", score(&a));
    assert!((score(&b) - 0.2344).abs() < 1e-3, "{}", score(&b));
    assert_eq!(assess(&policy, &c), Standing::Ineligible);
    assert_eq!(assess(&policy, &d), Standing::Full);
    assert_eq!(choose(&policy, [a, b, c, d]), Choice::Place(NodeId(1)));
    let a7 = Candidate { running: 7, ..a };
    assert!((score(&a7) - 0.1444).abs() < 1e-3, "{}", score(&a7));
    assert_eq!(choose(&policy, [a7, b, c, d]), Choice::Place(NodeId(2)));
}
