//! The `RUSTC_WRAPPER` entry point: decide, compile, report.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use distcc_rs_net::credentials::CredentialsError;
use tracing::{info, warn};

use crate::argv::{self, Classification};
use crate::config::ClientConfig;
use crate::events::{self, Event, Placement};
use crate::membership::{Membership, MembershipError};
use crate::remote::Traffic;
use crate::throttle::LocalSlots;
use crate::{discovery, local, remote};

/// Handles one rustc invocation: `rustc` is the compiler cargo asked for,
/// `args` its arguments, `config` the client's settings. Returns the exit
/// code to leave with.
pub fn run(config: &ClientConfig, rustc: &Path, args: Vec<OsString>) -> i32 {
    let started = Instant::now();
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
                    failed_nodes: traffic.failed_nodes,
                },
            );
        }
    };

    // Every way off the farm before a node is tried: note why, then become
    // rustc.
    let run_locally = |name: Option<String>, types: Vec<String>, reason: String| {
        record(
            name,
            types,
            Placement::Local,
            None,
            Some(reason),
            None,
            Traffic::default(),
        );
        exec_local(config, rustc, &args)
    };

    let expanded = match argv::expand_argfiles(args.clone()) {
        Ok(a) => a,
        Err(e) => {
            return run_locally(None, vec![], e.to_string());
        }
    };
    let job = match argv::classify(&expanded) {
        Classification::Local(reason) => {
            let name = flag_values(&expanded, "--crate-name").into_iter().next();
            let types = flag_values(&expanded, "--crate-type");
            return run_locally(name, types, reason.to_string());
        }
        Classification::Distribute(job) => job,
    };
    let name = Some(job.crate_name.clone());
    let types = job.crate_types.clone();
    // The farm's certificate comes before the scheduler's address: without
    // one (and without a token to enroll with) there is no point in looking
    // for the scheduler over mDNS. Reasons to stay off the farm altogether
    // (a broken file, DISTCC_RS_DISABLE) are named first.
    let membership = match farm_off(config) {
        Some(reason) => Err(reason),
        None => Membership::from_config(config)
            .and_then(|m| m.saved().map(|saved| (m, saved)))
            .map_err(|e| {
                // The wrapper may not write to stderr (cargo shows it as
                // rustc's), so the log and the event say what to do.
                warn!(cause = %e, "no farm certificate; compiling locally");
                e.to_string()
            }),
    };
    let (membership, saved) = match membership {
        Ok(m) => m,
        Err(reason) => {
            return run_locally(name, types, reason);
        }
    };
    let scheduler = resolve_scheduler(config);
    // Set when the address came from mDNS (or its cache), which must be
    // told when the address turns out not to work.
    let discovered_farm = match (&config.scheduler, &config.farm) {
        (None, Ok(farm)) => Some(farm.clone()),
        _ => None,
    };
    let scheduler = match scheduler {
        Ok(s) => s,
        Err(reason) => {
            return run_locally(name, types, reason);
        }
    };
    let credentials = match saved {
        Some(credentials) => credentials,
        // A join token is configured: enroll (once for all the wrappers
        // that start together).
        None => match enroll(config, &membership, scheduler) {
            Ok(credentials) => credentials,
            Err(reason) => {
                warn!(cause = %reason, "cannot enroll in the farm; compiling locally");
                return run_locally(name, types, reason);
            }
        },
    };
    let mut traffic = Traffic::default();
    match remote::compile(
        rustc,
        &expanded,
        &job,
        scheduler,
        &credentials,
        config,
        &mut traffic,
    ) {
        Ok(done) => {
            info!(crate_name = %job.crate_name, node = %done.node, code = done.exit_code, "compiled on the farm");
            // A retried job's reason is why its earlier node failed.
            record(
                name,
                types,
                Placement::Remote,
                Some(done.node),
                done.retried_after.map(|e| e.to_string()),
                Some(done.exit_code),
                traffic,
            );
            done.exit_code
        }
        Err(failure) => {
            warn!(crate_name = %job.crate_name, cause = %failure.error, "compiling locally instead");
            if let Some(farm) = &discovered_farm
                && matches!(
                    failure.error,
                    remote::FarmError::SchedulerUnreachable { .. }
                )
            {
                discovery::forget(&config.cache_dir, farm);
            }
            let slots = LocalSlots::from_config(config);
            let code = match local::run_after_partial(rustc, &args, &failure.forwarded, &slots) {
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

/// Where the scheduler is: the configured one, else the scheduler of
/// the farm found over mDNS (see [`discovery`]). The error is the reason to
/// compile locally, for the event log.
fn resolve_scheduler(config: &ClientConfig) -> Result<SocketAddr, String> {
    if let Some(reason) = farm_off(config) {
        return Err(reason);
    }
    match &config.scheduler {
        Some(Ok(addr)) => Ok(*addr),
        Some(Err(e)) => Err(e.clone()),
        None if !config.mdns => Err(
            "no scheduler configured (set DISTCC_RS_SCHEDULER or `scheduler` in the \
             configuration file; looking for one over mDNS is off by DISTCC_RS_MDNS or `mdns`)"
                .to_owned(),
        ),
        None => {
            let farm = config.farm.as_ref().map_err(Clone::clone)?;
            discovery::scheduler(&config.cache_dir, farm)
        }
    }
}

/// Enrolls with the scheduler at `scheduler` (or takes the credentials a
/// wrapper that enrolled meanwhile saved). Wrappers that start together
/// enroll one after the other, so a scheduler that does not answer is
/// remembered as down, as for jobs, before the next wrapper gets its turn:
/// the ones queued behind the first then skip the farm instead of each
/// waiting for a connect timeout in turn.
fn enroll(
    config: &ClientConfig,
    membership: &Membership,
    scheduler: SocketAddr,
) -> Result<distcc_rs_net::credentials::Credentials, String> {
    // Best effort: without the lock, enrollment is still serialised (by
    // the identity directory's lock), only not the marking of a dead
    // scheduler.
    let _turn = enroll_turn(&config.cache_dir);
    if let Ok(Some(saved)) = membership.saved() {
        return Ok(saved);
    }
    if let Some(reason) = remote::recently_down(&config.cache_dir, scheduler) {
        return Err(format!(
            "cannot enroll: the scheduler at {scheduler} is unreachable: {reason}"
        ));
    }
    membership
        .load_or_enroll_blocking(|| async move { Some(scheduler) })
        .map_err(|e| {
            if let MembershipError::Credentials(CredentialsError::Unreachable { .. }) = e {
                remote::mark_down(&config.cache_dir, scheduler);
            }
            e.to_string()
        })
}

/// Waits for this wrapper's turn to enroll: an exclusive lock on
/// `enroll.lock` in the cache directory, held until the result is dropped.
fn enroll_turn(cache_dir: &Path) -> Option<std::fs::File> {
    std::fs::create_dir_all(cache_dir).ok()?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cache_dir.join("enroll.lock"))
        .ok()?;
    file.lock().ok()?;
    Some(file)
}

/// Why the farm is not to be used at all, whatever the scheduler and the
/// credentials: a broken configuration file, or the farm disabled.
fn farm_off(config: &ClientConfig) -> Option<String> {
    if let Some(problem) = &config.file_problem {
        warn!(%problem, "the configuration file is broken; compiling locally");
        return Some(format!(
            "the configuration file is broken, so everything compiles locally: {problem}"
        ));
    }
    if config.disabled {
        return Some(
            "disabled by DISTCC_RS_DISABLE (or `disable` in the configuration file)".to_owned(),
        );
    }
    None
}

fn exec_local(config: &ClientConfig, rustc: &Path, args: &[OsString]) -> i32 {
    let err = local::exec(rustc, args, &LocalSlots::from_config(config));
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

    #[test]
    fn a_broken_configuration_file_keeps_every_compile_local() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        std::fs::write(&path, "scheduler = \"127.0.0.1:7700\"\ndisabled = true\n").unwrap();
        let path = path.to_str().unwrap().to_owned();
        let config = ClientConfig::from_lookup(|k| (k == "DISTCC_RS_CONFIG").then(|| path.clone()));
        // The scheduler is valid, but the file's typo may have meant to keep
        // jobs off the farm.
        assert!(matches!(config.scheduler, Some(Ok(_))));
        let reason = resolve_scheduler(&config).unwrap_err();
        assert!(
            reason.starts_with("the configuration file is broken, so everything compiles locally")
                && reason.contains("unknown key `disabled`"),
            "{reason}"
        );
    }
}
