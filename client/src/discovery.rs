//! Finding the scheduler over mDNS when `DISTCC_RS_SCHEDULER` is unset.
//!
//! cargo starts one wrapper process per rustc, and a browse takes up to a
//! second or so, so the answer is cached in the cache directory: a found
//! scheduler for [`FOUND_TTL`], and the absence of one for
//! [`NOT_FOUND_TTL`], so that a machine without a farm pays the wait once
//! every few seconds rather than on every rustc. One wrapper browses while
//! the others wait for its answer (a file lock), so a build that starts
//! forty wrappers at once browses once. When the cached scheduler does not
//! answer, [`forget`] replaces the entry with "not found", so the next
//! wrappers compile locally for a while and then look again.
//!
//! The cache is per farm and per network namespace: an address found
//! inside a container or test namespace means nothing outside it.
//!
//! The cache format and its ageing are pure functions; the rest is IO.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, info};

/// How long a wrapper browses before it gives up and compiles locally.
/// Measured: a scheduler already advertising is found 70 ms to 1.1 s after
/// the browse starts.
pub const BROWSE_TIMEOUT: Duration = Duration::from_millis(1500);

/// How long a found scheduler is trusted without looking again.
pub const FOUND_TTL: Duration = Duration::from_secs(60);

/// How long "no scheduler" is trusted without looking again.
pub const NOT_FOUND_TTL: Duration = Duration::from_secs(10);

/// What the cache remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cached {
    Found(SocketAddr),
    NotFound,
}

impl Cached {
    /// The cache file's content.
    pub fn render(self) -> String {
        match self {
            Cached::Found(addr) => format!("found {addr}\n"),
            Cached::NotFound => "not-found\n".to_owned(),
        }
    }

    /// Reads a cache file's content; `None` for anything unexpected.
    pub fn parse(text: &str) -> Option<Cached> {
        let line = text.trim();
        if line == "not-found" {
            return Some(Cached::NotFound);
        }
        line.strip_prefix("found ")?.parse().ok().map(Cached::Found)
    }

    /// The entry if it is still fresh at `age`.
    pub fn fresh(self, age: Duration) -> Option<Cached> {
        let ttl = match self {
            Cached::Found(_) => FOUND_TTL,
            Cached::NotFound => NOT_FOUND_TTL,
        };
        (age < ttl).then_some(self)
    }
}

/// The scheduler of `farm`, from the cache or by browsing for at most
/// [`BROWSE_TIMEOUT`]. The error says why there is none, for the event log.
pub fn scheduler(cache_dir: &Path, farm: &str) -> Result<SocketAddr, String> {
    let cache = cache_path(cache_dir, farm);
    let answer = match read_fresh(&cache) {
        Some(cached) => cached,
        None => browse_once(&cache, farm)?,
    };
    match answer {
        Cached::Found(addr) => Ok(addr),
        Cached::NotFound => Err(format!(
            "no scheduler of farm {farm:?} answered over mDNS \
             (set DISTCC_RS_SCHEDULER, or DISTCC_RS_NETNAME for another farm)"
        )),
    }
}

/// Records that the scheduler found for `farm` did not answer, so the next
/// wrappers compile locally for [`NOT_FOUND_TTL`] and then look again.
pub fn forget(cache_dir: &Path, farm: &str) {
    let cache = cache_path(cache_dir, farm);
    if let Err(e) = write_atomically(&cache, &Cached::NotFound.render()) {
        debug!(cause = %e, path = %cache.display(), "cannot update the discovery cache");
    }
}

/// Browses for the scheduler of `farm` for at most `timeout`, without the
/// cache (for `distcc-rs status`). `Ok(None)` when none answered.
pub fn browse(farm: &str, timeout: Duration) -> Result<Option<SocketAddr>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime
        .block_on(distcc_rs_net::discovery::find_scheduler(farm, timeout))
        .map_err(|e| e.to_string())
}

/// Browses unless another wrapper did while this one waited for the lock,
/// and caches the answer.
fn browse_once(cache: &Path, farm: &str) -> Result<Cached, String> {
    let dir = cache.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let lock_path = cache.with_extension("lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
    if let Some(cached) = read_fresh(cache) {
        return Ok(cached);
    }
    let started = Instant::now();
    let answer = match browse(farm, BROWSE_TIMEOUT)? {
        Some(addr) => Cached::Found(addr),
        None => Cached::NotFound,
    };
    info!(
        farm,
        ?answer,
        ms = started.elapsed().as_millis() as u64,
        "looked for the scheduler over mDNS"
    );
    if let Err(e) = write_atomically(cache, &answer.render()) {
        debug!(cause = %e, path = %cache.display(), "cannot write the discovery cache");
    }
    // The lock is released when `lock` is dropped, after the cache holds
    // the answer the waiting wrappers will read.
    drop(lock);
    Ok(answer)
}

fn read_fresh(cache: &Path) -> Option<Cached> {
    let text = fs::read_to_string(cache).ok()?;
    let modified = fs::metadata(cache).ok()?.modified().ok()?;
    // A clock step backwards makes the entry look new; the TTLs are short.
    let age = SystemTime::now()
        .duration_since(modified)
        .unwrap_or_default();
    Cached::parse(&text)?.fresh(age)
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// `<cache>/discovery/<farm>@<network namespace>`.
fn cache_path(cache_dir: &Path, farm: &str) -> PathBuf {
    cache_dir
        .join("discovery")
        .join(format!("{farm}@{}", network_namespace()))
}

/// The network namespace's inode number, from `/proc/self/ns/net`
/// (`net:[4026531840]`), or `unknown`.
fn network_namespace() -> String {
    fs::read_link("/proc/self/ns/net")
        .ok()
        .and_then(|link| {
            let text = link.to_string_lossy().into_owned();
            let digits: String = text.chars().filter(char::is_ascii_digit).collect();
            (!digits.is_empty()).then_some(digits)
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_entries_round_trip() {
        for entry in [
            Cached::Found("10.0.0.5:7700".parse().unwrap()),
            Cached::Found("[fe80::1%2]:7700".parse().unwrap()),
            Cached::NotFound,
        ] {
            assert_eq!(Cached::parse(&entry.render()), Some(entry));
        }
        for junk in ["", "found", "found nowhere", "maybe"] {
            assert_eq!(Cached::parse(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn entries_age_out_found_slower_than_not_found() {
        let found = Cached::Found("10.0.0.5:7700".parse().unwrap());
        assert_eq!(found.fresh(Duration::from_secs(59)), Some(found));
        assert_eq!(found.fresh(FOUND_TTL), None);
        assert_eq!(
            Cached::NotFound.fresh(Duration::from_secs(9)),
            Some(Cached::NotFound)
        );
        assert_eq!(Cached::NotFound.fresh(NOT_FOUND_TTL), None);
    }

    #[test]
    fn a_fresh_entry_is_used_and_forget_turns_it_into_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = "10.0.0.5:7700".parse().unwrap();
        let cache = cache_path(dir.path(), "team-a");
        write_atomically(&cache, &Cached::Found(addr).render()).unwrap();
        // Answered from the cache: no browse, so no mDNS on this machine.
        assert_eq!(scheduler(dir.path(), "team-a"), Ok(addr));
        forget(dir.path(), "team-a");
        let err = scheduler(dir.path(), "team-a").unwrap_err();
        assert!(err.contains("team-a"), "{err}");
        // Farms are cached separately.
        assert_eq!(read_fresh(&cache_path(dir.path(), "team-b")), None);
    }

    #[test]
    fn the_cache_is_per_network_namespace() {
        let ns = network_namespace();
        assert!(ns.chars().all(|c| c.is_ascii_digit()), "{ns}");
        assert!(
            cache_path(Path::new("/c"), "f").ends_with(format!("discovery/f@{ns}")),
            "{}",
            cache_path(Path::new("/c"), "f").display()
        );
    }
}
