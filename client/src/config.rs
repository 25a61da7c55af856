//! The client's settings, read from its environment.
//!
//! The client runs as `RUSTC_WRAPPER`, once per rustc invocation, so it
//! takes its settings from environment variables that cargo passes through.

use std::net::SocketAddr;
use std::path::PathBuf;

use distcc_rs_proto::discovery::{DEFAULT_FARM, validate_farm_name};

/// Environment variable names, in one place for the docs and the tests.
pub mod vars {
    /// The scheduler's address, `host:port`. Unset, the client looks for
    /// the scheduler of its farm over mDNS.
    pub const SCHEDULER: &str = "DISTCC_RS_SCHEDULER";
    /// The farm whose scheduler mDNS looks for (default `default`).
    pub const NETNAME: &str = "DISTCC_RS_NETNAME";
    /// Set to `0` or `false` to never look for the scheduler over mDNS;
    /// without `DISTCC_RS_SCHEDULER` everything then compiles locally.
    pub const MDNS: &str = "DISTCC_RS_MDNS";
    /// Where the client keeps its toolchain bundle cache.
    pub const CACHE_DIR: &str = "DISTCC_RS_CACHE_DIR";
    /// A file to append one JSON line per invocation to.
    pub const EVENTS: &str = "DISTCC_RS_EVENTS";
    /// A tracing filter (e.g. `debug`); the client logs nothing without it.
    pub const LOG: &str = "DISTCC_RS_LOG";
    /// The log file (default: `client.log` in the cache directory).
    pub const LOG_FILE: &str = "DISTCC_RS_LOG_FILE";
    /// Set to `1` to compile everything locally.
    pub const DISABLE: &str = "DISTCC_RS_DISABLE";
    /// Set to `0` or `false` to hold back the `.rmeta` notification of a
    /// farm compile until the compile ends, as a farm without pipelining
    /// would (for benchmarks).
    pub const PIPELINING: &str = "DISTCC_RS_PIPELINING";
    /// How many local compiles (linking, build scripts, proc-macros, probes,
    /// fallbacks) may run at once across every wrapper on this machine that
    /// shares the cache directory (default: the number of CPUs).
    pub const LOCAL_SLOTS: &str = "DISTCC_RS_LOCAL_SLOTS";
}

/// The client's settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub scheduler: Option<Result<SocketAddr, String>>,
    pub cache_dir: PathBuf,
    pub events: Option<PathBuf>,
    pub disabled: bool,
    /// Whether cargo hears of a farm compile's `.rmeta` as soon as it
    /// arrives (so dependents start early), or only when the compile ends.
    pub pipelining: bool,
    /// The farm to look for over mDNS, or why `DISTCC_RS_NETNAME` is not a
    /// farm name.
    pub farm: Result<String, String>,
    /// Whether the scheduler may be looked for over mDNS when
    /// `DISTCC_RS_SCHEDULER` is unset.
    pub mdns: bool,
}

impl ClientConfig {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the settings through `lookup`, so tests need no real environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let scheduler = lookup(vars::SCHEDULER).filter(|s| !s.is_empty()).map(|s| {
            s.parse::<SocketAddr>()
                .map_err(|e| format!("{}={s:?} is not host:port: {e}", vars::SCHEDULER))
        });
        let cache_dir = lookup(vars::CACHE_DIR)
            .map(PathBuf::from)
            .or_else(|| lookup("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("distcc-rs")))
            .or_else(|| lookup("HOME").map(|h| PathBuf::from(h).join(".cache/distcc-rs")))
            .unwrap_or_else(|| std::env::temp_dir().join("distcc-rs"));
        ClientConfig {
            scheduler,
            cache_dir,
            events: lookup(vars::EVENTS)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            disabled: lookup(vars::DISABLE).is_some_and(|v| v == "1" || v == "true"),
            pipelining: !lookup(vars::PIPELINING).is_some_and(|v| v == "0" || v == "false"),
            farm: farm_name(lookup(vars::NETNAME)),
            mdns: !lookup(vars::MDNS).is_some_and(|v| v == "0" || v == "false"),
        }
    }
}

/// The farm named by `DISTCC_RS_NETNAME`, `default` when it is unset or
/// empty.
fn farm_name(value: Option<String>) -> Result<String, String> {
    let name = value
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_FARM.to_owned());
    validate_farm_name(&name)
        .map(|()| name)
        .map_err(|e| format!("{}: {e}", vars::NETNAME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let c = ClientConfig::from_lookup(env(&[
            ("DISTCC_RS_SCHEDULER", "127.0.0.1:7700"),
            ("HOME", "/home/u"),
        ]));
        assert_eq!(c.scheduler, Some(Ok("127.0.0.1:7700".parse().unwrap())));
        assert_eq!(c.cache_dir, PathBuf::from("/home/u/.cache/distcc-rs"));
        assert!(!c.disabled);
        assert!(c.pipelining);

        let c = ClientConfig::from_lookup(env(&[
            ("DISTCC_RS_SCHEDULER", "not an address"),
            ("DISTCC_RS_CACHE_DIR", "/c"),
            ("DISTCC_RS_DISABLE", "1"),
            ("DISTCC_RS_PIPELINING", "0"),
        ]));
        assert!(matches!(c.scheduler, Some(Err(_))));
        assert_eq!(c.cache_dir, PathBuf::from("/c"));
        assert!(c.disabled);
        assert!(!c.pipelining);
        assert!(!ClientConfig::from_lookup(env(&[("DISTCC_RS_PIPELINING", "false")])).pipelining);
        assert!(ClientConfig::from_lookup(env(&[("DISTCC_RS_PIPELINING", "1")])).pipelining);

        let c = ClientConfig::from_lookup(env(&[]));
        assert_eq!(c.scheduler, None);
        assert_eq!(c.farm, Ok("default".to_owned()));
        assert!(c.mdns);
    }

    #[test]
    fn farm_and_mdns_settings() {
        let lookup = |pairs: Vec<(&'static str, &'static str)>| {
            ClientConfig::from_lookup(move |k| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            })
        };
        let c = lookup(vec![
            ("DISTCC_RS_NETNAME", "team-a"),
            ("DISTCC_RS_MDNS", "0"),
        ]);
        assert_eq!(c.farm, Ok("team-a".to_owned()));
        assert!(!c.mdns);
        assert_eq!(
            lookup(vec![("DISTCC_RS_NETNAME", "")]).farm,
            Ok("default".into())
        );
        let bad = lookup(vec![("DISTCC_RS_NETNAME", "a b")]).farm.unwrap_err();
        assert!(bad.starts_with("DISTCC_RS_NETNAME: "), "{bad}");
        assert!(!lookup(vec![("DISTCC_RS_MDNS", "false")]).mdns);
        assert!(lookup(vec![("DISTCC_RS_MDNS", "1")]).mdns);
    }
}
