//! Farm membership end to end: nodes and clients join with the farm's
//! token, outsiders are refused with clear words on both sides, a revoked
//! node is shut out, and none of it ever fails a build.

use std::time::{Duration, Instant};

use distcc_rs_e2e::events::describe;
use distcc_rs_e2e::{
    FarmEnv, Node, Scheduler, Where, compare_artifacts, copy_fixture, snapshot_artifacts, status,
    wait_until,
};

use crate::{farm_build, farm_test, local_reference};

/// How long a refused node may take to give up, and a revocation to reach
/// a running node.
const SETTLE: Duration = Duration::from_secs(30);

#[test]
fn only_members_take_part_and_a_revoked_node_is_shut_out() {
    let _serial = farm_test();
    let fixture = copy_fixture("workspace");
    let local = local_reference(&fixture, None);

    let scheduler = Scheduler::start(fixture.scratch());
    let n1 = Node::start(fixture.scratch(), scheduler.addr(), "n1", &[]);
    let certs = scheduler.admin(&["certs", "--json"]);
    assert!(
        certs.contains("\"name\": \"n1\"") && certs.contains("\"role\": \"Node\""),
        "the node enrolled with the token should be listed:\n{certs}"
    );

    // A node with a token whose secret is wrong is refused, says so, and
    // stops; the scheduler logs the refusal.
    let token = scheduler.token();
    let forged = format!("{}{}", &token[..token.len() - 4], "0000");
    assert_ne!(forged, token);
    let mut intruder = Node::spawn(
        fixture.scratch(),
        scheduler.addr(),
        "intruder",
        &["--join-token", &forged],
    );
    let exit = intruder
        .wait_exit(SETTLE)
        .expect("a node with a bad token stops by itself");
    assert!(!exit.success());
    assert!(
        intruder.log().contains("not (or no longer) valid"),
        "the refused node should say its token is not valid:\n{}",
        intruder.log()
    );
    assert!(
        scheduler.log().contains("refused an enrollment"),
        "the scheduler should log the refused enrollment:\n{}",
        scheduler.log()
    );

    // A client that is not a member compiles everything locally, and the
    // build passes exactly as plain rustc's.
    let mut outsider = FarmEnv::new(scheduler.addr(), &fixture.scratch().join("outsider"));
    outsider.token = None;
    farm_build(&fixture, &outsider);
    compare_artifacts(&local.artifacts, &snapshot_artifacts(&fixture.target_dir()));
    let events = outsider.events();
    assert!(
        events.iter().all(|e| e.place != Where::Remote),
        "a client without a certificate compiled remotely:\n{}",
        describe(&events)
    );
    assert!(
        outsider
            .client_log_tail(400)
            .contains("not enrolled in the farm"),
        "the client should say it is not enrolled:\n{}",
        outsider.client_log_tail(60)
    );
    fixture.clean();

    // A member compiles through the farm.
    let member = FarmEnv::new(scheduler.addr(), &fixture.scratch().join("member"));
    farm_build(&fixture, &member);
    compare_artifacts(&local.artifacts, &snapshot_artifacts(&fixture.target_dir()));
    assert!(
        member.events().iter().any(|e| e.place == Where::Remote),
        "the enrolled client compiled nothing remotely:\n{}",
        describe(&member.events())
    );
    fixture.clean();

    // Revoking the node closes its connection at once and refuses it from
    // then on; both sides say why.
    let revoked = scheduler.admin(&["revoke", "n1"]);
    assert!(revoked.contains("revoked serial"), "{revoked}");
    wait_until(
        Instant::now() + SETTLE,
        "the revoked node to leave the farm",
        || status(scheduler.addr()).nodes.is_empty(),
    );
    wait_until(
        Instant::now() + SETTLE,
        "the revoked node to log that its certificate was revoked",
        || n1.log().contains("revoked by the farm's admin"),
    );
    // The node tries to come back, and its handshake is refused.
    wait_until(
        Instant::now() + SETTLE,
        "the scheduler to refuse the revoked node's reconnection",
        || scheduler.log().contains("refused a revoked certificate"),
    );

    // With no node left the member's build runs locally, and still passes.
    let after = FarmEnv::new(scheduler.addr(), &fixture.scratch().join("after"));
    farm_build(&fixture, &after);
    compare_artifacts(&local.artifacts, &snapshot_artifacts(&fixture.target_dir()));
    assert!(after.events().iter().all(|e| e.place != Where::Remote));
}
