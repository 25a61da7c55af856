//! The `RUSTC_WRAPPER` entry point: decide, compile, report.

use std::ffi::OsString;
use std::path::Path;
use std::time::Instant;

use tracing::{info, warn};

use crate::argv::{self, Classification};
use crate::config::ClientConfig;
use crate::events::{self, Event, Placement};
use crate::remote::Traffic;
use crate::{local, remote};

/// Handles one rustc invocation: `rustc` is the compiler cargo asked for,
/// `args` its arguments. Returns the exit code to leave with.
pub fn run(rustc: &Path, args: Vec<OsString>) -> i32 {
    let started = Instant::now();
    let config = ClientConfig::from_env();
    let record = |crate_name: Option<String>,
                  crate_types: Vec<String>,
                  placement: Placement,
                  node: Option<String>,
                  reason: Option<String>,
                  exit_code: Option<i32>,
                  traffic: Traffic| {
        if let Some(path) = &config.events {
            // Traffic is reported only for jobs that got as far as a
            // manifest; before that nothing can have been sent.
            let farm = traffic.inputs.is_some();
            events::append(
                path,
                &Event {
                    crate_name,
                    crate_types,
                    placement,
                    node,
                    reason,
                    exit_code,
                    ms: started.elapsed().as_millis() as u64,
                    inputs: traffic.inputs,
                    blobs_sent: farm.then_some(traffic.blobs_sent),
                    bytes_sent: farm.then_some(traffic.bytes_sent),
                    bytes_received: farm.then_some(traffic.bytes_received),
                },
            );
        }
    };

    let expanded = match argv::expand_argfiles(args.clone()) {
        Ok(a) => a,
        Err(e) => {
            record(
                None,
                vec![],
                Placement::Local,
                None,
                Some(e.to_string()),
                None,
                Traffic::default(),
            );
            return exec_local(rustc, &args);
        }
    };
    let job = match argv::classify(&expanded) {
        Classification::Local(reason) => {
            let name = flag_values(&expanded, "--crate-name").into_iter().next();
            let types = flag_values(&expanded, "--crate-type");
            record(
                name,
                types,
                Placement::Local,
                None,
                Some(reason.to_string()),
                None,
                Traffic::default(),
            );
            return exec_local(rustc, &args);
        }
        Classification::Distribute(job) => job,
    };
    let name = Some(job.crate_name.clone());
    let types = job.crate_types.clone();
    let scheduler = match (&config.scheduler, config.disabled) {
        (_, true) => Err("disabled by DISTCC_RS_DISABLE".to_owned()),
        (None, _) => Err("no scheduler configured (set DISTCC_RS_SCHEDULER)".to_owned()),
        (Some(Err(e)), _) => Err(e.clone()),
        (Some(Ok(addr)), _) => Ok(*addr),
    };
    let scheduler = match scheduler {
        Ok(s) => s,
        Err(reason) => {
            record(
                name,
                types,
                Placement::Local,
                None,
                Some(reason),
                None,
                Traffic::default(),
            );
            return exec_local(rustc, &args);
        }
    };
    let mut traffic = Traffic::default();
    match remote::compile(rustc, &expanded, &job, scheduler, &config, &mut traffic) {
        Ok(done) => {
            info!(crate_name = %job.crate_name, node = %done.node, code = done.exit_code, "compiled on the farm");
            record(
                name,
                types,
                Placement::Remote,
                Some(done.node),
                None,
                Some(done.exit_code),
                traffic,
            );
            done.exit_code
        }
        Err(failure) => {
            warn!(crate_name = %job.crate_name, cause = %failure.error, "compiling locally instead");
            let code = match local::run_after_partial(rustc, &args, &failure.forwarded) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("distcc-rs: cannot run {}: {e}", rustc.display());
                    1
                }
            };
            record(
                name,
                types,
                Placement::Fallback,
                None,
                Some(failure.error.to_string()),
                Some(code),
                traffic,
            );
            code
        }
    }
}

fn exec_local(rustc: &Path, args: &[OsString]) -> i32 {
    let err = local::exec(rustc, args);
    eprintln!("distcc-rs: cannot run {}: {err}", rustc.display());
    1
}

/// Every value of a flag given as `--flag value` or `--flag=value`, for the
/// event log of jobs that `argv::classify` did not parse into a job.
fn flag_values(args: &[String], flag: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, a) in args.iter().enumerate() {
        if a == flag {
            out.extend(args.get(i + 1).cloned());
        } else if let Some(v) = a.strip_prefix(flag).and_then(|v| v.strip_prefix('=')) {
            out.push(v.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_values_in_both_spellings() {
        let args: Vec<String> = [
            "--crate-name",
            "build_script_build",
            "--crate-type=bin",
            "--crate-type",
            "lib",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(flag_values(&args, "--crate-name"), ["build_script_build"]);
        assert_eq!(flag_values(&args, "--crate-type"), ["bin", "lib"]);
    }
}
