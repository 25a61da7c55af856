//! Running rustc on this machine.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};

/// Replaces this process with rustc. Everything is inherited untouched:
/// stdin (probes read source from it), stdout, stderr, and the file
/// descriptors of cargo's jobserver. Returns only if exec itself failed.
pub fn exec(rustc: &Path, args: &[OsString]) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    Command::new(rustc).args(args).exec()
}

/// Runs rustc after a farm attempt failed part-way. Lines the farm attempt
/// already forwarded to cargo (warnings, the `.rmeta` notification) are not
/// printed a second time, so every diagnostic reaches the user exactly once.
/// Returns rustc's exit code.
pub fn run_after_partial(
    rustc: &Path,
    args: &[OsString],
    forwarded: &[Vec<u8>],
) -> std::io::Result<i32> {
    if forwarded.is_empty() {
        let status = Command::new(rustc).args(args).status()?;
        return Ok(exit_code(status));
    }
    let mut skip: HashMap<&[u8], usize> = HashMap::new();
    for line in forwarded {
        *skip.entry(line.as_slice()).or_default() += 1;
    }
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
        if let Some(n) = skip.get_mut(line.as_slice())
            && *n > 0
        {
            *n -= 1;
            continue;
        }
        // Keep draining even if cargo stopped reading, so rustc never
        // blocks on a full pipe and its exit code is still collected.
        let _ = out.write_all(&line);
    }
    Ok(exit_code(child.wait()?))
}

/// The exit code to pass on: rustc's, or 101 (rustc's own code for an
/// abnormal end) when it was killed by a signal.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    status.code().unwrap_or(101)
}
