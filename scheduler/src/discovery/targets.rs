//! Which nodes to dial, and when: the pure core of adoption.
//!
//! A target is a node the scheduler knows how to reach: one found over mDNS
//! (keyed by its instance name) or one given with `--node HOST:PORT` (keyed
//! by that text). Each is idle, being dialled, or a member. An idle target
//! is due once its back-off has passed; a failed attempt doubles the
//! back-off up to [`MAX_BACKOFF`], so a node that was killed (its mDNS
//! records outlive it until they expire, which takes over an hour) costs one
//! connection attempt every few seconds, not a stream of them. Only the first failure after a success
//! is worth a warning; the others are logged quietly ([`Ended::warn`]).
//!
//! mDNS removal only stops the dialling. A node's membership is its QUIC
//! connection, which the server follows on its own.
//!
//! Time is passed in, so the tests run without a clock.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use distcc_rs_proto::NodeId;

/// The wait before the first retry of a target, and after a member leaves.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The longest wait between two attempts at one target. A node that
/// crashed and restarts advertises exactly what it advertised before, which
/// mDNS does not report again, so this is also how long such a node may
/// wait to be adopted again; one QUIC handshake attempt per dead node every
/// ten seconds costs nothing worth saving.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How long to wait before looking again at a target whose node is in the
/// farm already (it registered by dialling the scheduler itself).
pub const MEMBER_RECHECK: Duration = Duration::from_secs(5);

/// How a target was found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum TargetKey {
    /// Over mDNS, by instance name.
    Mdns(String),
    /// From `--node`, by the `HOST:PORT` text given.
    Static(String),
}

impl std::fmt::Display for TargetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetKey::Mdns(instance) => write!(f, "{instance} (mDNS)"),
            TargetKey::Static(addr) => write!(f, "{addr} (--node)"),
        }
    }
}

/// Where to dial a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dial {
    /// Every address mDNS reported, to be put in order by
    /// `distcc_rs_proto::discovery::dial_order`.
    Addrs(Vec<SocketAddr>),
    /// A `HOST:PORT` to resolve at each attempt, since a host name may move.
    HostPort(String),
}

/// What the caller should do with a target that is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub key: TargetKey,
    /// The node's id, when its advert or an earlier adoption told it.
    pub node: Option<NodeId>,
    pub dial: Dial,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The node joined the farm, and its session has ended since.
    Served { node: NodeId },
    /// The node is in the farm already (it dialled the scheduler itself, or
    /// another target reached it); nothing was dialled.
    AlreadyMember,
    /// The node could not be reached, declined, or was refused.
    Failed,
}

/// What [`Targets::ended`] decided about a finished attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// Whether the failure deserves a warning: the first one since the
    /// target last worked (or since it was found). Later ones are debug.
    pub warn: bool,
    /// When the target is tried next; `None` when it was forgotten (mDNS
    /// removed it while the attempt ran).
    pub retry_in: Option<Duration>,
}

#[derive(Debug)]
struct Target {
    node: Option<NodeId>,
    dial: Dial,
    phase: Phase,
    /// Consecutive failures; sets the back-off.
    failures: u32,
    /// mDNS said goodbye while an attempt ran: forget the target when it
    /// ends.
    forget: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle { due: Instant },
    Busy,
}

/// Every node the scheduler may dial.
#[derive(Debug, Default)]
pub struct Targets {
    targets: BTreeMap<TargetKey, Target>,
}

impl Targets {
    pub fn new() -> Self {
        Targets::default()
    }

    /// Adds a `--node` target, due at once. Static targets are never
    /// forgotten.
    pub fn add_static(&mut self, host_port: &str, now: Instant) {
        let key = TargetKey::Static(host_port.to_owned());
        self.targets.entry(key).or_insert(Target {
            node: None,
            dial: Dial::HostPort(host_port.to_owned()),
            phase: Phase::Idle { due: now },
            failures: 0,
            forget: false,
        });
    }

    /// Records an mDNS sighting (new, or with new addresses). An idle target
    /// becomes due at once: new addresses or a restart make an attempt
    /// worthwhile again, and the failure count starts over.
    pub fn found(&mut self, instance: &str, node: NodeId, addrs: Vec<SocketAddr>, now: Instant) {
        let key = TargetKey::Mdns(instance.to_owned());
        let target = self.targets.entry(key).or_insert(Target {
            node: Some(node),
            dial: Dial::Addrs(Vec::new()),
            phase: Phase::Idle { due: now },
            failures: 0,
            forget: false,
        });
        target.node = Some(node);
        target.dial = Dial::Addrs(addrs);
        target.forget = false;
        if let Phase::Idle { due } = &mut target.phase {
            *due = now;
            target.failures = 0;
        }
    }

    /// Records that an mDNS service said goodbye: stop dialling it. A
    /// session in progress is not touched.
    pub fn removed(&mut self, instance: &str) {
        let key = TargetKey::Mdns(instance.to_owned());
        let Some(target) = self.targets.get_mut(&key) else {
            return;
        };
        match target.phase {
            Phase::Idle { .. } => {
                self.targets.remove(&key);
            }
            Phase::Busy => target.forget = true,
        }
    }

    /// The targets due at `now`, marked busy. The caller starts one attempt
    /// for each and reports its end with [`Targets::ended`].
    pub fn due(&mut self, now: Instant) -> Vec<Attempt> {
        self.targets
            .iter_mut()
            .filter(|(_, t)| matches!(t.phase, Phase::Idle { due } if due <= now))
            .map(|(key, t)| {
                t.phase = Phase::Busy;
                Attempt {
                    key: key.clone(),
                    node: t.node,
                    dial: t.dial.clone(),
                }
            })
            .collect()
    }

    /// When the next idle target falls due, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.targets
            .values()
            .filter_map(|t| match t.phase {
                Phase::Idle { due } => Some(due),
                Phase::Busy => None,
            })
            .min()
    }

    /// Records how an attempt ended and schedules the next one.
    pub fn ended(&mut self, key: &TargetKey, outcome: Outcome, now: Instant) -> Ended {
        let Some(target) = self.targets.get_mut(key) else {
            return Ended {
                warn: false,
                retry_in: None,
            };
        };
        let (warn, wait) = match outcome {
            Outcome::Served { node } => {
                target.node = Some(node);
                target.failures = 0;
                (false, FIRST_BACKOFF)
            }
            Outcome::AlreadyMember => (false, MEMBER_RECHECK),
            Outcome::Failed => {
                target.failures = target.failures.saturating_add(1);
                (target.failures == 1, backoff(target.failures))
            }
        };
        if target.forget {
            self.targets.remove(key);
            return Ended {
                warn,
                retry_in: None,
            };
        }
        target.phase = Phase::Idle { due: now + wait };
        Ended {
            warn,
            retry_in: Some(wait),
        }
    }
}

/// The wait after `failures` consecutive failures (at least one).
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_BACKOFF * (1u32 << doublings)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn keys(attempts: &[Attempt]) -> Vec<TargetKey> {
        attempts.iter().map(|a| a.key.clone()).collect()
    }

    fn mdns(name: &str) -> TargetKey {
        TargetKey::Mdns(name.into())
    }

    #[test]
    fn found_and_static_targets_are_due_at_once_and_only_once() {
        let t0 = Instant::now();
        let mut targets = Targets::new();
        targets.add_static("box:7701", t0);
        targets.found("a", NodeId(1), vec![addr(1)], t0);
        let due = targets.due(t0);
        assert_eq!(
            due,
            [
                Attempt {
                    key: mdns("a"),
                    node: Some(NodeId(1)),
                    dial: Dial::Addrs(vec![addr(1)]),
                },
                Attempt {
                    key: TargetKey::Static("box:7701".into()),
                    node: None,
                    dial: Dial::HostPort("box:7701".into()),
                },
            ]
        );
        // Busy targets are not handed out twice, and nothing is due.
        assert!(targets.due(t0 + MAX_BACKOFF).is_empty());
        assert_eq!(targets.next_due(), None);
    }

    #[test]
    fn failures_back_off_exponentially_and_warn_once() {
        let mut now = Instant::now();
        let mut targets = Targets::new();
        targets.found("a", NodeId(1), vec![addr(1)], now);
        let mut waits = Vec::new();
        let mut warnings = Vec::new();
        for _ in 0..8 {
            assert_eq!(keys(&targets.due(now)), [mdns("a")]);
            let ended = targets.ended(&mdns("a"), Outcome::Failed, now);
            let wait = ended.retry_in.unwrap();
            waits.push(wait.as_secs());
            warnings.push(ended.warn);
            // Not due a moment before the back-off has passed.
            assert!(
                targets
                    .due(now + wait - Duration::from_millis(1))
                    .is_empty()
            );
            assert_eq!(targets.next_due(), Some(now + wait));
            now += wait;
        }
        assert_eq!(waits, [1, 2, 4, 8, 10, 10, 10, 10]);
        assert_eq!(
            warnings,
            [true, false, false, false, false, false, false, false]
        );

        // A session resets the count, so the next failure warns again.
        assert_eq!(keys(&targets.due(now)), [mdns("a")]);
        let ended = targets.ended(&mdns("a"), Outcome::Served { node: NodeId(1) }, now);
        assert_eq!(ended.retry_in, Some(FIRST_BACKOFF));
        now += FIRST_BACKOFF;
        assert_eq!(keys(&targets.due(now)), [mdns("a")]);
        assert!(targets.ended(&mdns("a"), Outcome::Failed, now).warn);
    }

    #[test]
    fn a_new_sighting_makes_a_waiting_target_due_at_once() {
        let mut now = Instant::now();
        let mut targets = Targets::new();
        targets.found("a", NodeId(1), vec![addr(1)], now);
        for _ in 0..3 {
            targets.due(now);
            now += targets
                .ended(&mdns("a"), Outcome::Failed, now)
                .retry_in
                .unwrap();
        }
        targets.due(now);
        targets.ended(&mdns("a"), Outcome::Failed, now);
        assert!(targets.due(now).is_empty());
        // The node restarted on another port.
        targets.found("a", NodeId(1), vec![addr(2)], now);
        let due = targets.due(now);
        assert_eq!(due[0].dial, Dial::Addrs(vec![addr(2)]));
        // And its count started over: the next failure warns.
        assert!(targets.ended(&mdns("a"), Outcome::Failed, now).warn);
    }

    #[test]
    fn removal_stops_dialling_but_not_a_running_attempt() {
        let t0 = Instant::now();
        let mut targets = Targets::new();
        targets.found("idle", NodeId(1), vec![addr(1)], t0);
        targets.found("busy", NodeId(2), vec![addr(2)], t0);
        targets.due(t0);
        targets.ended(&mdns("idle"), Outcome::Failed, t0);

        targets.removed("idle");
        targets.removed("busy");
        targets.removed("never-seen");
        assert!(targets.due(t0 + MAX_BACKOFF).is_empty());
        assert_eq!(targets.next_due(), None);
        // The running attempt ends normally and the target is then gone.
        let ended = targets.ended(&mdns("busy"), Outcome::Served { node: NodeId(2) }, t0);
        assert_eq!(ended.retry_in, None);
        assert!(targets.due(t0 + MAX_BACKOFF).is_empty());

        // Seen again after the goodbye while busy: kept.
        targets.found("again", NodeId(3), vec![addr(3)], t0);
        targets.due(t0);
        targets.removed("again");
        targets.found("again", NodeId(3), vec![addr(3)], t0);
        let ended = targets.ended(&mdns("again"), Outcome::Failed, t0);
        assert_eq!(ended.retry_in, Some(FIRST_BACKOFF));
    }

    #[test]
    fn members_are_looked_at_again_without_counting_a_failure() {
        let t0 = Instant::now();
        let mut targets = Targets::new();
        targets.add_static("box:7701", t0);
        let key = TargetKey::Static("box:7701".into());
        targets.due(t0);
        let ended = targets.ended(&key, Outcome::Served { node: NodeId(9) }, t0);
        assert_eq!(ended.retry_in, Some(FIRST_BACKOFF));
        // The id learned from the adoption comes with the next attempt.
        let due = targets.due(t0 + FIRST_BACKOFF);
        assert_eq!(due[0].node, Some(NodeId(9)));
        let ended = targets.ended(&key, Outcome::AlreadyMember, t0);
        assert_eq!(
            ended,
            Ended {
                warn: false,
                retry_in: Some(MEMBER_RECHECK)
            }
        );
        targets.due(t0 + MEMBER_RECHECK);
        assert!(targets.ended(&key, Outcome::Failed, t0).warn);
    }
}
