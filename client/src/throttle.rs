//! A host-wide limit on local compiles.
//!
//! Cargo runs one wrapper process per rustc, and with `-j 40` it may start
//! forty of them at once. Remote jobs should all go ahead, but compiles that
//! must run here (binaries and their linkers, build scripts, proc-macros,
//! probes, fallbacks) would then fight over the client's few cores. So every
//! local compile first takes one of N slots shared by every wrapper on the
//! machine that uses the same cache directory.
//!
//! A slot is an exclusive `flock` on one of N files in
//! `<cache_dir>/local-slots/`. `flock` locks belong to the open file, not to
//! the process: the kernel drops them when the last descriptor of that file
//! closes, which includes the death of every process holding one. A wrapper
//! that crashes, or a rustc killed by cargo, therefore never leaks a slot,
//! and a slot whose descriptor is inherited across `exec` stays taken until
//! rustc and its children (the linker) have all exited.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{debug, warn};

use crate::config::{ClientConfig, vars};

/// The slot directory's name inside the cache directory.
pub const DIR_NAME: &str = "local-slots";

/// The first pause between two rounds of tries when every slot is taken.
const FIRST_PAUSE: Duration = Duration::from_millis(2);
/// The longest pause between two rounds. Slots are held for whole compiles
/// (hundreds of milliseconds at least), so a waiter that looks twenty times
/// a second loses little time and costs little CPU.
const LONGEST_PAUSE: Duration = Duration::from_millis(50);
/// Waits longer than this are logged, so a slow local build can be traced
/// to the throttle.
const SLOW_WAIT: Duration = Duration::from_secs(1);

/// Why the local slots cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ThrottleError {
    #[error("cannot create the slot directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open slot file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock slot file {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot keep slot file {path} open across exec: {source}")]
    Inherit { path: PathBuf, source: nix::Error },
}

/// The host's local compile slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSlots {
    dir: PathBuf,
    count: usize,
}

/// One taken slot. Dropping it (or the death of every process holding its
/// descriptor) frees the slot.
#[derive(Debug)]
pub struct Slot {
    file: File,
    path: PathBuf,
}

impl LocalSlots {
    /// `count` slots (at least one) kept as files in `dir`.
    pub fn new(dir: PathBuf, count: usize) -> Self {
        LocalSlots {
            dir,
            count: count.max(1),
        }
    }

    /// The slots the process environment asks for: in the configured cache
    /// directory, as many as [`slot_count`] says.
    pub fn from_env() -> Self {
        Self::from_config(&ClientConfig::from_env())
    }

    /// The slots in `config`'s cache directory, as many as [`slot_count`]
    /// reads from `config`.
    pub fn from_config(config: &ClientConfig) -> Self {
        Self::new(
            config.cache_dir.join(DIR_NAME),
            slot_count(|var| config.setting(var).map(str::to_owned)),
        )
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Takes a free slot if there is one, without waiting.
    pub fn try_acquire(&self) -> Result<Option<Slot>, ThrottleError> {
        Self::try_each(&mut self.open_all()?, self.start())
    }

    /// Takes a slot, waiting as long as every slot is taken. Between rounds
    /// of tries the caller sleeps for a jittered, growing pause, so waiters
    /// that started together do not keep colliding.
    pub fn acquire(&self) -> Result<Slot, ThrottleError> {
        // The files stay open between rounds: a waiter only retries the
        // locks, it does not reopen N files twenty times a second. Closing
        // the unused ones afterwards is harmless, as an `flock` belongs to
        // the open file that took it and none of these took one.
        let mut files = self.open_all()?;
        let start = self.start();
        let began = Instant::now();
        let mut jitter = Jitter::seeded();
        let mut pause = FIRST_PAUSE;
        let mut logged = false;
        loop {
            if let Some(slot) = Self::try_each(&mut files, start)? {
                if logged {
                    debug!(
                        waited_ms = began.elapsed().as_millis() as u64,
                        slot = %slot.path.display(),
                        "got a local slot"
                    );
                }
                return Ok(slot);
            }
            if !logged && began.elapsed() > SLOW_WAIT {
                debug!(
                    slots = self.count,
                    "every local slot has been taken for over a second; waiting"
                );
                logged = true;
            }
            std::thread::sleep(jitter.spread(pause));
            pause = (pause * 2).min(LONGEST_PAUSE);
        }
    }

    fn open_all(&self) -> Result<Vec<(File, PathBuf)>, ThrottleError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| ThrottleError::CreateDir {
            path: self.dir.clone(),
            source,
        })?;
        (0..self.count)
            .map(|i| {
                let path = self.dir.join(format!("slot-{i}"));
                // Write access is not needed for `flock`, but creating the
                // file is, and a read-only directory is better found here
                // than as a lock that silently never conflicts.
                let file = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .map_err(|source| ThrottleError::Open {
                        path: path.clone(),
                        source,
                    })?;
                Ok((file, path))
            })
            .collect()
    }

    /// Where a round of tries begins: different wrappers begin at different
    /// slots, so that they do not all contend for slot 0 first.
    fn start(&self) -> usize {
        std::process::id() as usize % self.count
    }

    /// Tries every slot once, beginning at `start`. The slot taken, if any,
    /// leaves `files`; the others stay for the next round.
    fn try_each(
        files: &mut Vec<(File, PathBuf)>,
        start: usize,
    ) -> Result<Option<Slot>, ThrottleError> {
        let n = files.len();
        for k in 0..n {
            let i = (start + k) % n;
            // `File::try_lock` is `flock(LOCK_EX | LOCK_NB)` on Linux.
            match files[i].0.try_lock() {
                Ok(()) => {
                    let (file, path) = files.swap_remove(i);
                    return Ok(Some(Slot { file, path }));
                }
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(source)) => {
                    return Err(ThrottleError::Lock {
                        path: files[i].1.clone(),
                        source,
                    });
                }
            }
        }
        Ok(None)
    }
}

impl Slot {
    /// The slot's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lets the slot's descriptor survive `exec`, so the program this
    /// process becomes, and every child it starts, keep the slot taken until
    /// the last of them exits.
    pub fn keep_across_exec(&self) -> Result<(), ThrottleError> {
        use nix::fcntl::{FcntlArg, FdFlag, fcntl};
        fcntl(&self.file, FcntlArg::F_SETFD(FdFlag::empty()))
            .map(drop)
            .map_err(|source| ThrottleError::Inherit {
                path: self.path.clone(),
                source,
            })
    }
}

/// How many local compiles may run at once: `DISTCC_RS_LOCAL_SLOTS` if it is
/// a positive number, else the number of CPUs this process may use.
pub fn slot_count(lookup: impl Fn(&str) -> Option<String>) -> usize {
    let cores = || std::thread::available_parallelism().map_or(1, usize::from);
    match lookup(vars::LOCAL_SLOTS) {
        None => cores(),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                warn!(
                    value = %v,
                    "{} is not a positive number; using the core count",
                    vars::LOCAL_SLOTS
                );
                cores()
            }
        },
    }
}

/// Spreads pauses by up to half their length either way (xorshift, seeded
/// from the pid and the clock: only the spread matters, not its quality).
struct Jitter(u64);

impl Jitter {
    fn seeded() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
        Jitter((u64::from(std::process::id()) << 32 | nanos) | 1)
    }

    fn spread(&mut self, pause: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        // A factor between 0.5 and 1.5.
        let factor = 0.5 + (self.0 % 1024) as f64 / 1024.0;
        pause.mul_f64(factor)
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::sync::mpsc;

    use super::*;

    /// Acquires on another thread, so a test can tell "waits" from "got it"
    /// without a fixed sleep deciding the outcome.
    fn acquire_in_background(slots: &LocalSlots) -> mpsc::Receiver<Slot> {
        let slots = slots.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let slot = slots.acquire().expect("acquire");
            let _ = tx.send(slot);
        });
        rx
    }

    #[test]
    fn n_holders_get_slots_and_the_next_waits_for_a_release() {
        let dir = tempfile::tempdir().unwrap();
        let slots = LocalSlots::new(dir.path().join(DIR_NAME), 3);
        let mut held: Vec<Slot> = (0..3)
            .map(|_| slots.try_acquire().unwrap().expect("a free slot"))
            .collect();
        let mut paths: Vec<_> = held.iter().map(|s| s.path().to_owned()).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), 3, "three different slots");
        assert!(slots.try_acquire().unwrap().is_none());

        let waiter = acquire_in_background(&slots);
        // The waiter has every reason to succeed within this time if a slot
        // were free; none is, so it must still be waiting.
        assert!(waiter.recv_timeout(Duration::from_millis(300)).is_err());
        let released = held.remove(1);
        let released_path = released.path().to_owned();
        drop(released);
        let got = waiter
            .recv_timeout(Duration::from_secs(10))
            .expect("the waiter gets the released slot");
        assert_eq!(got.path(), released_path);
        assert!(slots.try_acquire().unwrap().is_none());
    }

    #[test]
    fn a_slot_held_by_a_dead_process_is_free_again() {
        let dir = tempfile::tempdir().unwrap();
        let slots = LocalSlots::new(dir.path().join(DIR_NAME), 1);
        // Hand the slot to a child process as the exec path does, then close
        // this process's descriptor: the child alone holds the lock now.
        let slot = slots.try_acquire().unwrap().expect("a free slot");
        slot.keep_across_exec().unwrap();
        let mut child = Command::new("sleep").arg("600").spawn().unwrap();
        drop(slot);
        assert!(
            slots.try_acquire().unwrap().is_none(),
            "the child inherited the slot"
        );

        let waiter = acquire_in_background(&slots);
        child.kill().unwrap();
        child.wait().unwrap();
        waiter
            .recv_timeout(Duration::from_secs(10))
            .expect("the slot is free once its holder died");
    }

    #[test]
    fn an_unusable_directory_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let slots = LocalSlots::new(file.join(DIR_NAME), 2);
        assert!(matches!(
            slots.acquire(),
            Err(ThrottleError::CreateDir { .. })
        ));
    }

    #[test]
    fn the_slot_count_comes_from_the_environment_or_the_cores() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(slot_count(|_| None), cores);
        assert_eq!(slot_count(|_| Some("3".into())), 3);
        assert_eq!(slot_count(|_| Some(" 7 ".into())), 7);
        assert_eq!(slot_count(|_| Some("0".into())), cores);
        assert_eq!(slot_count(|_| Some("many".into())), cores);
        assert_eq!(LocalSlots::new(PathBuf::from("/x"), 0).count(), 1);
    }

    #[test]
    fn jitter_stays_within_half_either_way() {
        let mut j = Jitter::seeded();
        for _ in 0..1000 {
            let d = j.spread(Duration::from_millis(40));
            assert!(d >= Duration::from_millis(20) && d < Duration::from_millis(60));
        }
    }
}
