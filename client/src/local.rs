//! Running rustc on this machine.
//!
//! Every local compile first takes one of the host's local slots
//! ([`crate::throttle`]), so a `cargo build -j 40` runs at most as many
//! local rustc processes (and their linkers) at once as the machine has
//! cores. A slot that cannot be had because the slot directory is unusable
//! is no reason to fail a build: the compile then runs unthrottled.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use tracing::warn;

use crate::throttle::{LocalSlots, Slot};

/// Replaces this process with rustc. Everything is inherited untouched:
/// stdin (probes read source from it), stdout, stderr, and the file
/// descriptors of cargo's jobserver. The local slot is inherited too, so it
/// stays taken until rustc and every child it started (the linker) have
/// exited. Returns only if exec itself failed.
pub fn exec(rustc: &Path, args: &[OsString], slots: &LocalSlots) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let slot = take_slot(slots);
    if let Some(slot) = &slot
        && let Err(e) = slot.keep_across_exec()
    {
        warn!(error = %e, "running rustc without holding a local slot");
    }
    let err = Command::new(rustc).args(args).exec();
    // Only reached when exec failed: the slot is released on return.
    drop(slot);
    err
}

/// Runs rustc after a farm attempt failed part-way. Lines the farm attempt
/// already forwarded to cargo (warnings, the `.rmeta` notification) are not
/// printed a second time, so every diagnostic reaches the user exactly once.
/// The compile holds a local slot while it runs. Returns rustc's exit code.
pub fn run_after_partial(
    rustc: &Path,
    args: &[OsString],
    forwarded: &[Vec<u8>],
    slots: &LocalSlots,
) -> std::io::Result<i32> {
    // Held until this function returns, after rustc has been waited for.
    // The slot file is close-on-exec, so rustc does not inherit it, which
    // is fine because this process outlives rustc.
    let _slot = take_slot(slots);
    if forwarded.is_empty() {
        let status = Command::new(rustc).args(args).status()?;
        return Ok(exit_code(status));
    }
    let mut shown = AlreadyShown::new(forwarded);
    let mut child = Command::new(rustc)
        .args(args)
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut out = std::io::stderr().lock();
    let mut reader = std::io::BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        // read_until keeps the newline, and a last line without one stays
        // without one.
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if !shown.is_new(&line) {
            continue;
        }
        // Keep draining even if cargo stopped reading, so rustc never
        // blocks on a full pipe and its exit code is still collected.
        let _ = out.write_all(&line);
    }
    Ok(exit_code(child.wait()?))
}

/// Takes a local slot, waiting for one if all are taken. Returns `None`, and
/// logs why, when the slots cannot be used at all: the compile then runs
/// without one rather than not at all.
fn take_slot(slots: &LocalSlots) -> Option<Slot> {
    match slots.acquire() {
        Ok(slot) => Some(slot),
        Err(e) => {
            warn!(error = %e, "compiling without a local slot");
            None
        }
    }
}

/// The stderr lines a rerun of a compile must not show again, because an
/// earlier attempt already showed them to cargo. A rerun of the same compile
/// prints the same lines (rustc's diagnostics do not depend on where it
/// runs, since remote jobs run at the client's paths), so each line shown
/// before is skipped once, and everything else is new.
#[derive(Debug, Clone, Default)]
pub struct AlreadyShown {
    remaining: HashMap<Vec<u8>, usize>,
}

impl AlreadyShown {
    /// `lines` are the lines shown so far, each as many times as it was shown.
    pub fn new(lines: &[Vec<u8>]) -> Self {
        let mut remaining = HashMap::new();
        for line in lines {
            *remaining.entry(line.clone()).or_default() += 1;
        }
        AlreadyShown { remaining }
    }

    /// Whether `line` still has to be shown. A line that was shown before
    /// is not, and uses up one of its earlier showings, so a line the rerun
    /// prints more often than the earlier attempt did is shown the extra
    /// times.
    pub fn is_new(&mut self, line: &[u8]) -> bool {
        match self.remaining.get_mut(line) {
            Some(n) if *n > 0 => {
                *n -= 1;
                false
            }
            _ => true,
        }
    }
}

/// The exit code to pass on: rustc's, or 101 (rustc's own code for an
/// abnormal end) when it was killed by a signal.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    status.code().unwrap_or(101)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_line_shown_before_is_skipped_once() {
        let before = [b"warning: a\n".to_vec(), b"warning: a\n".to_vec()];
        let mut shown = AlreadyShown::new(&before);
        assert!(!shown.is_new(b"warning: a\n"));
        assert!(shown.is_new(b"warning: b\n"));
        assert!(!shown.is_new(b"warning: a\n"));
        // A third copy was never shown.
        assert!(shown.is_new(b"warning: a\n"));
        // The same text without its newline is a different line.
        assert!(AlreadyShown::new(&before).is_new(b"warning: a"));
        assert!(AlreadyShown::default().is_new(b"anything\n"));
    }
}
