//! What farm members tell each other over mDNS, as plain data.
//!
//! Nodes advertise [`NODE_SERVICE`], schedulers [`SCHEDULER_SERVICE`]. Each
//! advertisement carries a TXT record (an [`Advert`]) naming its role, its
//! farm, the protocol version it speaks and, for nodes, its id and slots.
//! Browsers keep only adverts of their own farm and protocol version
//! ([`admit`]), so two farms, or two versions of one, can share a LAN.
//!
//! The same service resolves more than once, with different subsets of its
//! addresses each time (measured with mdns-sd: one event held only the IPv4
//! address, the next both), so resolutions are merged per instance
//! ([`Sightings`]), and [`dial_order`] picks which of a service's addresses
//! to try first.
//!
//! Nothing here does IO: `distcc-rs-net` runs mDNS and feeds its results
//! through these functions.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::NodeId;
use crate::version::PROTOCOL_VERSION;

/// The mDNS service type nodes advertise.
pub const NODE_SERVICE: &str = "_distcc-rs._udp.local.";

/// The mDNS service type schedulers advertise. RFC 6763 (and mdns-sd's
/// check) allow at most 15 bytes between the `_` and the protocol label;
/// `distcc-rs-sched` is exactly 15.
pub const SCHEDULER_SERVICE: &str = "_distcc-rs-sched._udp.local.";

/// The farm every daemon and client belongs to unless told otherwise.
pub const DEFAULT_FARM: &str = "default";

/// The longest farm name, in bytes.
pub const MAX_FARM_NAME_LEN: usize = 63;

/// The longest human name an advert carries, in bytes; longer names are
/// cut at a character boundary.
pub const MAX_ADVERT_NAME_LEN: usize = 63;

/// The longest DNS label, which bounds instance and host names.
const MAX_LABEL_LEN: usize = 63;

/// TXT keys, in one place.
mod key {
    pub const ROLE: &str = "role";
    pub const FARM: &str = "farm";
    pub const PROTOCOL: &str = "proto";
    pub const PORT: &str = "port";
    pub const NODE_ID: &str = "id";
    pub const SLOTS: &str = "slots";
    pub const NAME: &str = "name";
}

/// What an advertised service is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Node,
    Scheduler,
}

impl Role {
    /// The mDNS service type of this role.
    pub fn service_type(self) -> &'static str {
        match self {
            Role::Node => NODE_SERVICE,
            Role::Scheduler => SCHEDULER_SERVICE,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Scheduler => "scheduler",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node's advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAdvert {
    pub farm: String,
    pub node: NodeId,
    pub name: String,
    /// The UDP port the node accepts QUIC connections on (jobs and
    /// adoption alike).
    pub port: u16,
    pub slots: u32,
}

/// A scheduler's advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerAdvert {
    pub farm: String,
    pub name: String,
    /// The UDP port the scheduler accepts QUIC connections on.
    pub port: u16,
}

/// Any advertisement, as carried in a TXT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advert {
    Node(NodeAdvert),
    Scheduler(SchedulerAdvert),
}

/// Why a TXT record is not a valid advert of this protocol version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxtError {
    #[error("the TXT record has no {0:?} entry")]
    Missing(&'static str),
    #[error("the TXT entry {key}={value:?} is not valid: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
    /// The advert is of another protocol version. Its other entries are not
    /// read: a future version may lay them out differently.
    #[error("it speaks protocol version {theirs}, this build speaks {ours}")]
    Version { theirs: u32, ours: u32 },
}

impl Advert {
    pub fn role(&self) -> Role {
        match self {
            Advert::Node(_) => Role::Node,
            Advert::Scheduler(_) => Role::Scheduler,
        }
    }

    pub fn farm(&self) -> &str {
        match self {
            Advert::Node(n) => &n.farm,
            Advert::Scheduler(s) => &s.farm,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Advert::Node(n) => &n.name,
            Advert::Scheduler(s) => &s.name,
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            Advert::Node(n) => n.port,
            Advert::Scheduler(s) => s.port,
        }
    }

    /// The TXT record for this advert, as key/value pairs. The name is cut
    /// to [`MAX_ADVERT_NAME_LEN`] bytes so the record always fits.
    pub fn to_txt(&self) -> Vec<(String, String)> {
        let mut txt = vec![
            (key::ROLE, self.role().as_str().to_owned()),
            (key::PROTOCOL, PROTOCOL_VERSION.to_string()),
            (key::FARM, self.farm().to_owned()),
            (
                key::NAME,
                truncate(self.name(), MAX_ADVERT_NAME_LEN).to_owned(),
            ),
            (key::PORT, self.port().to_string()),
        ];
        if let Advert::Node(n) = self {
            txt.push((key::NODE_ID, format!("{:016x}", n.node.0)));
            txt.push((key::SLOTS, n.slots.to_string()));
        }
        txt.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// Reads an advert from a TXT record's key/value pairs. Keys are
    /// matched without regard to case (RFC 6763 section 6.4); unknown keys
    /// are ignored, so later versions may add some.
    pub fn from_txt<K, V>(txt: &[(K, V)]) -> Result<Advert, TxtError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let get = |wanted: &'static str| {
            txt.iter()
                .find(|(k, _)| k.as_ref().eq_ignore_ascii_case(wanted))
                .map(|(_, v)| v.as_ref())
                .ok_or(TxtError::Missing(wanted))
        };
        let invalid = |key: &'static str, value: &str, reason: String| TxtError::Invalid {
            key,
            value: value.to_owned(),
            reason,
        };
        let number = |key: &'static str| -> Result<u64, TxtError> {
            let value = get(key)?;
            value
                .parse::<u64>()
                .map_err(|e| invalid(key, value, e.to_string()))
        };

        let protocol = number(key::PROTOCOL)?;
        if protocol != u64::from(PROTOCOL_VERSION) {
            return Err(TxtError::Version {
                theirs: u32::try_from(protocol).unwrap_or(u32::MAX),
                ours: PROTOCOL_VERSION,
            });
        }
        let farm = get(key::FARM)?;
        validate_farm_name(farm).map_err(|e| invalid(key::FARM, farm, e.to_string()))?;
        let name = get(key::NAME)?.to_owned();
        let port = number(key::PORT)?;
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid(key::PORT, &port.to_string(), "not a port".into()))?;
        let role = get(key::ROLE)?;
        match role {
            "node" => {
                let id = get(key::NODE_ID)?;
                let node = (id.len() == 16)
                    .then(|| u64::from_str_radix(id, 16).ok())
                    .flatten()
                    .ok_or_else(|| invalid(key::NODE_ID, id, "not 16 hex digits".into()))?;
                let slots = number(key::SLOTS)?;
                let slots = u32::try_from(slots)
                    .ok()
                    .filter(|s| *s != 0)
                    .ok_or_else(|| {
                        invalid(key::SLOTS, &slots.to_string(), "not 1 to 2^32-1".into())
                    })?;
                Ok(Advert::Node(NodeAdvert {
                    farm: farm.to_owned(),
                    node: NodeId(node),
                    name,
                    port,
                    slots,
                }))
            }
            "scheduler" => Ok(Advert::Scheduler(SchedulerAdvert {
                farm: farm.to_owned(),
                name,
                port,
            })),
            other => Err(invalid(key::ROLE, other, "not node or scheduler".into())),
        }
    }
}

/// Why a browser passes over a service it found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    #[error("{0}")]
    Malformed(TxtError),
    #[error("it belongs to farm {theirs:?}, not to farm {ours:?}")]
    OtherFarm { theirs: String, ours: String },
    #[error("it advertises a {theirs} under the {expected} service type")]
    WrongRole { theirs: Role, expected: Role },
}

/// Reads the TXT record of a service found under `expected`'s service type
/// and keeps it only if it is a valid advert of that role, of this protocol
/// version and of farm `farm`.
pub fn admit<K, V>(txt: &[(K, V)], expected: Role, farm: &str) -> Result<Advert, Ignored>
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    let advert = Advert::from_txt(txt).map_err(Ignored::Malformed)?;
    if advert.role() != expected {
        return Err(Ignored::WrongRole {
            theirs: advert.role(),
            expected,
        });
    }
    if advert.farm() != farm {
        return Err(Ignored::OtherFarm {
            theirs: advert.farm().to_owned(),
            ours: farm.to_owned(),
        });
    }
    Ok(advert)
}

/// Why a farm name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FarmNameError {
    #[error("a farm name cannot be empty")]
    Empty,
    #[error("farm name {0:?} is longer than {MAX_FARM_NAME_LEN} bytes")]
    TooLong(String),
    #[error("farm name {0:?} may only contain ASCII letters, digits, '-', '_' and '.'")]
    BadCharacter(String),
}

/// Checks a farm name (`--netname`): 1 to 63 ASCII letters, digits, `-`,
/// `_` or `.`, so that it fits a TXT entry and reads the same in every log.
/// Names are compared exactly, case included.
pub fn validate_farm_name(name: &str) -> Result<(), FarmNameError> {
    if name.is_empty() {
        return Err(FarmNameError::Empty);
    }
    if name.len() > MAX_FARM_NAME_LEN {
        return Err(FarmNameError::TooLong(name.to_owned()));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(FarmNameError::BadCharacter(name.to_owned()));
    }
    Ok(())
}

/// An mDNS instance name (one DNS label) made of a human name and a
/// suffix that makes it unique, e.g. `build-box-1a2b3c4d5e6f7081` for a node
/// named `build-box`. The human part keeps letters, digits and `-` (other
/// characters become `-`) and is shortened so the whole fits 63 bytes.
pub fn instance_name(name: &str, unique: &str) -> String {
    let unique = sanitize_label(unique);
    let unique = truncate(&unique, MAX_LABEL_LEN - 1);
    let room = MAX_LABEL_LEN - unique.len() - 1;
    let name = sanitize_label(name);
    let name = truncate(name.trim_matches('-'), room).trim_matches('-');
    if name.is_empty() {
        unique.to_owned()
    } else {
        format!("{name}-{unique}")
    }
}

/// The mDNS host name (`<label>.local.`) a daemon's address records are
/// published under. Each daemon gets its own, so that several daemons on
/// one machine never contend for one host name.
pub fn host_name(role: Role, unique: &str) -> String {
    let label = instance_name(&format!("distcc-rs-{role}"), unique);
    format!("{label}.local.")
}

fn sanitize_label(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// The longest prefix of `s` of at most `max` bytes that ends at a
/// character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A service's addresses in the order to try them, for an endpoint bound to
/// `local`.
///
/// An IPv4 socket cannot reach IPv6 addresses, so those are dropped for it;
/// an IPv6 socket (dual-stack) can reach both. IPv4 comes first because a
/// farm's hosts almost always share an IPv4 network, while IPv6 link-local
/// addresses are only usable with the right interface scope. Within a
/// family, routable addresses come before link-local ones and loopback comes
/// last: a scheduler that reached a node on the same machine over loopback
/// would hand clients on other machines a loopback address for it. Link-local
/// IPv6 addresses without an interface scope, unspecified and multicast
/// addresses cannot be dialled and are dropped. Duplicates are removed.
pub fn dial_order(
    addrs: impl IntoIterator<Item = SocketAddr>,
    local: SocketAddr,
) -> Vec<SocketAddr> {
    let mut ranked: Vec<(u8, SocketAddr)> = addrs
        .into_iter()
        .filter(|a| a.port() != 0)
        .filter(|a| local.is_ipv6() || a.is_ipv4())
        .filter_map(|a| rank(a).map(|r| (r, a)))
        .collect();
    ranked.sort();
    ranked.dedup();
    ranked.into_iter().map(|(_, a)| a).collect()
}

/// Lower is tried first; `None` cannot be dialled.
fn rank(addr: SocketAddr) -> Option<u8> {
    match addr {
        SocketAddr::V4(a) => {
            let ip = a.ip();
            if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
                None
            } else if ip.is_loopback() {
                Some(2)
            } else if ip.is_link_local() {
                Some(1)
            } else {
                Some(0)
            }
        }
        SocketAddr::V6(a) => {
            let ip = a.ip();
            if let Some(v4) = ip.to_ipv4_mapped() {
                return rank(SocketAddr::new(IpAddr::V4(v4), a.port()));
            }
            if ip.is_unspecified() || ip.is_multicast() {
                None
            } else if ip.is_loopback() {
                Some(5)
            } else if ip.is_unicast_link_local() {
                // Without a scope the kernel cannot tell which interface to
                // send on.
                (a.scope_id() != 0).then_some(4)
            } else {
                Some(3)
            }
        }
    }
}

/// One service as seen so far: its latest advert and every address any of
/// its resolutions carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    pub advert: Advert,
    /// Addresses with the advert's port.
    pub addrs: BTreeSet<SocketAddr>,
}

/// The services a browser has seen, by instance (full) name.
#[derive(Debug, Default)]
pub struct Sightings {
    seen: BTreeMap<String, Sighting>,
}

impl Sightings {
    pub fn new() -> Self {
        Sightings::default()
    }

    /// Records a resolution of `instance` and returns the merged view, or
    /// `None` when it added nothing new (same advert, no new address), so
    /// that repeated resolutions are not reported again.
    ///
    /// Addresses accumulate while the advert stays the same. A changed
    /// advert (a restart on another port, new slots) replaces the old view:
    /// the old addresses may belong to the old incarnation.
    pub fn resolved(
        &mut self,
        instance: &str,
        advert: Advert,
        ips: impl IntoIterator<Item = SocketAddr>,
    ) -> Option<&Sighting> {
        let port = advert.port();
        let ips: BTreeSet<SocketAddr> = ips
            .into_iter()
            .map(|mut a| {
                a.set_port(port);
                a
            })
            .collect();
        let changed = match self.seen.get_mut(instance) {
            Some(known) if known.advert == advert => {
                let before = known.addrs.len();
                known.addrs.extend(ips);
                known.addrs.len() != before
            }
            _ => {
                self.seen
                    .insert(instance.to_owned(), Sighting { advert, addrs: ips });
                true
            }
        };
        if changed {
            self.seen.get(instance)
        } else {
            None
        }
    }

    /// Forgets a service that said goodbye (or expired); returns what was
    /// known about it.
    pub fn removed(&mut self, instance: &str) -> Option<Sighting> {
        self.seen.remove(instance)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

    use super::*;

    fn node() -> Advert {
        Advert::Node(NodeAdvert {
            farm: "default".into(),
            node: NodeId(0x1a2b_3c4d_5e6f_7081),
            name: "build-box".into(),
            port: 7701,
            slots: 8,
        })
    }

    fn scheduler() -> Advert {
        Advert::Scheduler(SchedulerAdvert {
            farm: "team-a".into(),
            name: "sched".into(),
            port: 7700,
        })
    }

    fn txt(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn with(advert: &Advert, key: &str, value: Option<&str>) -> Vec<(String, String)> {
        let mut t: Vec<(String, String)> = advert
            .to_txt()
            .into_iter()
            .filter(|(k, _)| k != key)
            .collect();
        if let Some(v) = value {
            t.push((key.to_owned(), v.to_owned()));
        }
        t
    }

    #[test]
    fn adverts_round_trip_through_txt() {
        for advert in [node(), scheduler()] {
            assert_eq!(Advert::from_txt(&advert.to_txt()), Ok(advert));
        }
        assert_eq!(
            node().to_txt(),
            txt(&[
                ("role", "node"),
                ("proto", &PROTOCOL_VERSION.to_string()),
                ("farm", "default"),
                ("name", "build-box"),
                ("port", "7701"),
                ("id", "1a2b3c4d5e6f7081"),
                ("slots", "8"),
            ])
        );
    }

    #[test]
    fn keys_match_without_case_and_unknown_keys_are_ignored() {
        let mut t: Vec<(String, String)> = node()
            .to_txt()
            .into_iter()
            .map(|(k, v)| (k.to_uppercase(), v))
            .collect();
        t.push(("future".into(), "x".into()));
        assert_eq!(Advert::from_txt(&t), Ok(node()));
    }

    #[test]
    fn other_protocol_versions_are_named_before_anything_else_is_read() {
        // A later version may lay its record out differently: only the
        // version is read, so the error says what matters.
        let t = txt(&[("proto", "99"), ("role", "something-new")]);
        assert_eq!(
            Advert::from_txt(&t),
            Err(TxtError::Version {
                theirs: 99,
                ours: PROTOCOL_VERSION
            })
        );
    }

    #[test]
    fn malformed_entries_are_refused() {
        let n = node();
        assert_eq!(
            Advert::from_txt(&with(&n, "id", None)),
            Err(TxtError::Missing("id"))
        );
        assert_eq!(
            Advert::from_txt(&with(&n, "proto", None)),
            Err(TxtError::Missing("proto"))
        );
        for (key, bad) in [
            ("id", "xyz"),
            ("id", "1a2b"),
            ("slots", "0"),
            ("slots", "-1"),
            ("port", "0"),
            ("port", "70000"),
            ("role", "client"),
            ("farm", ""),
            ("farm", "has space"),
            ("proto", "two"),
        ] {
            let result = Advert::from_txt(&with(&n, key, Some(bad)));
            assert!(
                matches!(result, Err(TxtError::Invalid { key: k, .. } | TxtError::Missing(k)) if k == key),
                "{key}={bad:?}: {result:?}"
            );
        }
    }

    #[test]
    fn long_names_are_cut_to_fit_at_a_character_boundary() {
        let long = Advert::Scheduler(SchedulerAdvert {
            farm: "f".into(),
            name: "é".repeat(40),
            port: 1,
        });
        let t = long.to_txt();
        let name = &t.iter().find(|(k, _)| k == "name").unwrap().1;
        assert_eq!(name, &"é".repeat(31));
        assert!(Advert::from_txt(&t).is_ok());
    }

    #[test]
    fn browsers_admit_only_their_role_farm_and_version() {
        let n = node();
        assert_eq!(admit(&n.to_txt(), Role::Node, "default"), Ok(n.clone()));
        assert_eq!(
            admit(&n.to_txt(), Role::Node, "other"),
            Err(Ignored::OtherFarm {
                theirs: "default".into(),
                ours: "other".into()
            })
        );
        assert_eq!(
            admit(&n.to_txt(), Role::Scheduler, "default"),
            Err(Ignored::WrongRole {
                theirs: Role::Node,
                expected: Role::Scheduler
            })
        );
        assert!(matches!(
            admit(&with(&n, "proto", Some("1")), Role::Node, "default"),
            Err(Ignored::Malformed(TxtError::Version { theirs: 1, .. }))
        ));
    }

    #[test]
    fn farm_names_are_checked() {
        for good in ["default", "team-a", "ci_2", "a.b", &"x".repeat(63)] {
            assert_eq!(validate_farm_name(good), Ok(()), "{good}");
        }
        assert_eq!(validate_farm_name(""), Err(FarmNameError::Empty));
        assert!(matches!(
            validate_farm_name(&"x".repeat(64)),
            Err(FarmNameError::TooLong(_))
        ));
        for bad in ["a b", "ü", "a/b", "a=b"] {
            assert!(
                matches!(validate_farm_name(bad), Err(FarmNameError::BadCharacter(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn instance_and_host_names_are_single_dns_labels() {
        assert_eq!(
            instance_name("build-box", "1a2b3c4d5e6f7081"),
            "build-box-1a2b3c4d5e6f7081"
        );
        assert_eq!(instance_name("my.host name", "ab"), "my-host-name-ab");
        assert_eq!(instance_name("...", "ab"), "ab");
        let long = instance_name(&"n".repeat(100), "1a2b3c4d5e6f7081");
        assert_eq!(long.len(), 63);
        assert!(long.ends_with("-1a2b3c4d5e6f7081"));
        assert_eq!(
            host_name(Role::Scheduler, "00ff"),
            "distcc-rs-scheduler-00ff.local."
        );
    }

    fn v4(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port)
    }

    fn v6(ip: &str, scope: u32, port: u16) -> SocketAddr {
        SocketAddr::V6(SocketAddrV6::new(
            ip.parse::<Ipv6Addr>().unwrap(),
            port,
            0,
            scope,
        ))
    }

    #[test]
    fn dial_order_prefers_routable_ipv4_and_drops_what_cannot_be_dialled() {
        let all = [
            v6("fe80::1", 2, 7701),
            v6("fe80::2", 0, 7701),
            v4([127, 0, 0, 1], 7701),
            v6("::1", 0, 7701),
            v6("2001:db8::5", 0, 7701),
            v4([169, 254, 1, 2], 7701),
            v4([192, 168, 1, 5], 7701),
            v4([192, 168, 1, 5], 7701),
            v4([0, 0, 0, 0], 7701),
            v4([224, 0, 0, 251], 7701),
        ];
        let dual_stack: SocketAddr = "[::]:7700".parse().unwrap();
        assert_eq!(
            dial_order(all, dual_stack),
            [
                v4([192, 168, 1, 5], 7701),
                v4([169, 254, 1, 2], 7701),
                v4([127, 0, 0, 1], 7701),
                v6("2001:db8::5", 0, 7701),
                v6("fe80::1", 2, 7701),
                v6("::1", 0, 7701),
            ]
        );
        let ipv4_only: SocketAddr = "0.0.0.0:7700".parse().unwrap();
        assert_eq!(
            dial_order(all, ipv4_only),
            [
                v4([192, 168, 1, 5], 7701),
                v4([169, 254, 1, 2], 7701),
                v4([127, 0, 0, 1], 7701),
            ]
        );
        assert!(dial_order([v6("::1", 0, 1)], ipv4_only).is_empty());
    }

    #[test]
    fn repeated_resolutions_merge_until_the_advert_changes() {
        let mut seen = Sightings::new();
        let n = node();
        // The first resolution carried only the IPv6 address, the second
        // both: the merged view has both, with the advert's port.
        let first = seen
            .resolved("a", n.clone(), [v6("fe80::1", 2, 0)])
            .cloned()
            .unwrap();
        assert_eq!(first.addrs, BTreeSet::from([v6("fe80::1", 2, 7701)]));
        let second = seen
            .resolved("a", n.clone(), [v4([10, 0, 0, 2], 0), v6("fe80::1", 2, 0)])
            .cloned()
            .unwrap();
        assert_eq!(
            second.addrs,
            BTreeSet::from([v4([10, 0, 0, 2], 7701), v6("fe80::1", 2, 7701)])
        );
        // Nothing new: nothing to report.
        assert!(
            seen.resolved("a", n.clone(), [v4([10, 0, 0, 2], 0)])
                .is_none()
        );

        // A restart on another port replaces the old view.
        let Advert::Node(mut restarted) = n.clone() else {
            unreachable!()
        };
        restarted.port = 7800;
        let third = seen
            .resolved("a", Advert::Node(restarted), [v4([10, 0, 0, 3], 0)])
            .cloned()
            .unwrap();
        assert_eq!(third.addrs, BTreeSet::from([v4([10, 0, 0, 3], 7800)]));

        assert_eq!(seen.removed("a"), Some(third));
        assert_eq!(seen.removed("a"), None);
        // After a goodbye, the same instance is news again.
        assert!(seen.resolved("a", n, [v4([10, 0, 0, 2], 0)]).is_some());
    }
}
