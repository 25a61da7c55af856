//! Enrolling in the farm: `distcc-rs join`, `distcc-rs status` with and
//! without credentials, and the wrapper enrolling by itself with
//! `DISTCC_RS_JOIN_TOKEN`, against a scripted scheduler that holds a test
//! farm's CA and answers enrollment as the real one does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use distcc_rs_net::credentials::Credentials;
use distcc_rs_net::pki::TestFarm;
use distcc_rs_net::{EndpointOptions, PeerAuth, accept_stream, bind_server, peer_certificate};
use distcc_rs_proto::auth::{EnrollRefusal, EnrollResponse};
use distcc_rs_proto::message::{
    AllocateResponse, FarmStatus, FarmTotals, RunLocallyReason, SchedulerRequest,
};
use distcc_rs_proto::{JoinToken, PeerRole};

const SECRET: [u8; 16] = [7; 16];

/// What the scripted scheduler saw.
#[derive(Debug, Default)]
struct Seen {
    /// The names enrolled under, in order.
    enrolled: Vec<String>,
    /// Allocation requests from members.
    allocations: usize,
    /// Status requests from members.
    statuses: usize,
}

/// A scripted scheduler of a test farm, on loopback.
struct Scheduler {
    _rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    token: JoinToken,
    seen: Arc<Mutex<Seen>>,
}

impl Scheduler {
    fn start() -> Scheduler {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let farm = Arc::new(TestFarm::new());
        let (identity, mut auth) = farm.member(PeerRole::Scheduler);
        // Certificate-less peers may connect, to enroll only.
        if let PeerAuth::Farm(trust) = &mut auth {
            trust.allow_anonymous = true;
        }
        let endpoint = {
            let _guard = rt.enter();
            bind_server(
                "127.0.0.1:0".parse().unwrap(),
                &identity,
                &auth,
                &EndpointOptions::default(),
            )
            .unwrap()
        };
        let addr = endpoint.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        rt.spawn(serve(endpoint, farm.clone(), seen.clone()));
        Scheduler {
            _rt: rt,
            addr,
            token: JoinToken {
                ca_pin: farm.ca.pin(),
                secret: SECRET,
            },
            seen,
        }
    }
}

async fn serve(endpoint: quinn::Endpoint, farm: Arc<TestFarm>, seen: Arc<Mutex<Seen>>) {
    let serial = Arc::new(std::sync::atomic::AtomicU64::new(100));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(conn) = incoming.await else { continue };
        let member = peer_certificate(&conn).is_some();
        let (farm, seen, serial) = (farm.clone(), seen.clone(), serial.clone());
        tokio::spawn(async move {
            while let Some((mut w, mut r)) = accept_stream(&conn).await {
                match r.recv::<SchedulerRequest>().await {
                    Ok(SchedulerRequest::Enroll(request)) => {
                        let response = if request.secret != SECRET {
                            EnrollResponse::Refused(EnrollRefusal::BadToken)
                        } else {
                            let serial = serial.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let certificate = farm
                                .ca
                                .issue(request.role, &request.name, &request.public_key, serial)
                                .unwrap();
                            seen.lock().unwrap().enrolled.push(request.name);
                            EnrollResponse::Enrolled {
                                certificate: certificate.to_vec(),
                                ca_certificate: farm.ca.cert_der().to_vec(),
                                serial,
                            }
                        };
                        let _ = w.send(&response).await;
                        let _ = w.finish();
                    }
                    Ok(SchedulerRequest::Status) if member => {
                        seen.lock().unwrap().statuses += 1;
                        let _ = w
                            .send(&FarmStatus {
                                nodes: vec![],
                                jobs: vec![],
                                toolchains: vec![],
                                totals: FarmTotals::default(),
                                waiting: 0,
                                farm: "scripted".into(),
                                recent: vec![],
                            })
                            .await;
                    }
                    Ok(SchedulerRequest::Allocate(_)) if member => {
                        seen.lock().unwrap().allocations += 1;
                        let _ = w
                            .send(&AllocateResponse::RunLocally(RunLocallyReason::NoNodes))
                            .await;
                    }
                    // Anything else from a peer without a certificate is
                    // refused, as the real scheduler does.
                    _ => conn.close(
                        distcc_rs_proto::auth::close::NOT_PERMITTED.into(),
                        b"enroll first",
                    ),
                }
            }
        });
    }
}

/// The client binary with no setting of ours but those given, and a home
/// directory of its own.
fn client(home: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distcc-rs"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("DISTCC_RS_") || k == "XDG_CONFIG_HOME" {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .env("HOME", home)
        .env("USER", "tester")
        .env("DISTCC_RS_MDNS", "0")
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn default_identity(home: &Path) -> PathBuf {
    home.join(".config/distcc-rs/identity/default")
}

#[test]
fn join_enrolls_once_and_saves_a_client_certificate() {
    let scheduler = Scheduler::start();
    let home = tempfile::tempdir().unwrap();
    let token = scheduler.token.to_string();
    let addr = scheduler.addr.to_string();

    let out = client(home.path(), &["join", &token, "--scheduler", &addr], &[]);
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    let dir = default_identity(home.path());
    let saved = Credentials::load(&dir).unwrap().expect("credentials saved");
    assert_eq!(saved.role(), Some(PeerRole::Client));
    for part in [
        "as client \"tester@".to_owned(),
        format!("certificate {}", saved.fingerprint().short()),
        format!("saved in {}", dir.display()),
    ] {
        assert!(stdout.contains(&part), "{part:?} in {stdout}");
    }
    assert!(!stdout.contains(&token[5..]), "the secret is not printed");
    let enrolled = scheduler.seen.lock().unwrap().enrolled.clone();
    assert_eq!(enrolled.len(), 1);
    assert!(enrolled[0].starts_with("tester@"), "{enrolled:?}");

    // Again: nothing to do, and the scheduler is not asked (nor needed).
    let out = client(
        home.path(),
        &["join", &token, "--scheduler", "127.0.0.1:9"],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).starts_with("already enrolled in this farm as a client")
            && text(&out.stdout).contains(&saved.fingerprint().short()),
        "{out:?}"
    );
    assert_eq!(scheduler.seen.lock().unwrap().enrolled.len(), 1);

    // --force enrolls again, with a new certificate.
    let out = client(
        home.path(),
        &["join", &token, "--scheduler", &addr, "--force"],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    let again = Credentials::load(&dir).unwrap().unwrap();
    assert_ne!(again.fingerprint(), saved.fingerprint());
    assert_eq!(scheduler.seen.lock().unwrap().enrolled.len(), 2);

    // The token can come from stdin, and the identity directory from the
    // environment.
    let elsewhere = home.path().join("elsewhere");
    let mut child = Command::new(env!("CARGO_BIN_EXE_distcc-rs"))
        .args(["join", "-", "--scheduler", &addr])
        .env("HOME", home.path())
        .env("DISTCC_RS_IDENTITY_DIR", &elsewhere)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{token}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(Credentials::load(&elsewhere).unwrap().is_some());
}

#[test]
fn join_says_why_it_failed() {
    let scheduler = Scheduler::start();
    let home = tempfile::tempdir().unwrap();
    let addr = scheduler.addr.to_string();
    let wrong = JoinToken {
        secret: [8; 16],
        ..scheduler.token
    }
    .to_string();
    let out = client(home.path(), &["join", &wrong, "--scheduler", &addr], &[]);
    assert!(!out.status.success(), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("refused the enrollment") && stderr.contains("join token is not"),
        "{stderr}"
    );
    assert!(
        Credentials::load(&default_identity(home.path()))
            .unwrap()
            .is_none()
    );

    let out = client(
        home.path(),
        &["join", "drs1-nonsense", "--scheduler", &addr],
        &[],
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("not a join token"), "{out:?}");

    // A token of another farm: the scheduler's certificate does not match
    // its pin, so the secret is never sent.
    let other = JoinToken {
        ca_pin: TestFarm::new().ca.pin(),
        secret: SECRET,
    }
    .to_string();
    let out = client(home.path(), &["join", &other, "--scheduler", &addr], &[]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        text(&out.stderr).contains("cannot reach the scheduler"),
        "{out:?}"
    );
    assert!(scheduler.seen.lock().unwrap().enrolled.is_empty());
}

#[test]
fn status_needs_a_certificate_or_a_token() {
    let scheduler = Scheduler::start();
    let home = tempfile::tempdir().unwrap();
    let addr = scheduler.addr.to_string();

    let out = client(home.path(), &["status", "--scheduler", &addr], &[]);
    assert!(!out.status.success(), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("not enrolled in the farm") && stderr.contains("distcc-rs join TOKEN"),
        "{stderr}"
    );
    assert_eq!(scheduler.seen.lock().unwrap().statuses, 0);

    // With a token, status enrolls first.
    let token = scheduler.token.to_string();
    let out = client(
        home.path(),
        &["status", "--scheduler", &addr],
        &[("DISTCC_RS_JOIN_TOKEN", &token)],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("farm \"scripted\""), "{out:?}");
    assert_eq!(scheduler.seen.lock().unwrap().enrolled.len(), 1);
    // And later without it.
    let out = client(home.path(), &["status", "--scheduler", &addr], &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(scheduler.seen.lock().unwrap().statuses, 2);
    assert_eq!(scheduler.seen.lock().unwrap().enrolled.len(), 1);
}

/// The rustc binary itself, as cargo passes it (not rustup's proxy).
fn real_rustc() -> PathBuf {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .unwrap();
    let sysroot = String::from_utf8(out.stdout).unwrap();
    Path::new(sysroot.trim()).join("bin/rustc")
}

/// A wrapper compiling the library `name` of the project in `home`, as a
/// client of no farm yet, with the extra variables `vars`.
fn spawn_wrapper(home: &Path, name: &str, vars: &[(&str, &str)]) -> std::process::Child {
    let root = home.join("project");
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::write(root.join("src/lib.rs"), "pub fn f() {}\n").unwrap();
    let out_dir = root.join(format!("target/{name}"));
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distcc-rs"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("DISTCC_RS_") || k == "XDG_CONFIG_HOME" {
            cmd.env_remove(k);
        }
    }
    cmd.arg(real_rustc())
        .args([
            "--crate-name",
            name,
            "--edition=2021",
            "src/lib.rs",
            "--crate-type",
            "lib",
            "--emit=dep-info,metadata,link",
            "--out-dir",
        ])
        .arg(&out_dir)
        .current_dir(&root)
        .env("HOME", home)
        .env("DISTCC_RS_EVENTS", home.join("events.jsonl"))
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for wrappers, each of which must leave what plain rustc would:
/// success and nothing on stderr.
fn wait_all(wrappers: Vec<std::process::Child>) {
    for child in wrappers {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(text(&out.stderr), "", "{out:?}");
    }
}

#[test]
fn wrappers_started_together_with_a_token_enroll_once() {
    let scheduler = Scheduler::start();
    let home = tempfile::tempdir().unwrap();
    let token = scheduler.token.to_string();
    let addr = scheduler.addr.to_string();
    // The toolchain bundle is shared with the other tests' runs.
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("distcc-rs-client-cache");
    let cache = cache.to_str().unwrap();
    let vars = [
        ("DISTCC_RS_SCHEDULER", addr.as_str()),
        ("DISTCC_RS_JOIN_TOKEN", token.as_str()),
        ("DISTCC_RS_CACHE_DIR", cache),
    ];
    wait_all(
        (0..4)
            .map(|i| spawn_wrapper(home.path(), &format!("lib{i}"), &vars))
            .collect(),
    );
    let seen = scheduler.seen.lock().unwrap();
    assert_eq!(seen.enrolled.len(), 1, "{seen:?}");
    // Every wrapper asked the farm as a member, and was told to compile
    // locally.
    assert_eq!(seen.allocations, 4, "{seen:?}");
    let log = std::fs::read_to_string(home.path().join("events.jsonl")).unwrap();
    assert_eq!(
        log.matches("the scheduler said to compile locally").count(),
        4,
        "{log}"
    );
    assert!(
        Credentials::load(&default_identity(home.path()))
            .unwrap()
            .is_some()
    );
}

#[test]
fn wrappers_waiting_to_enroll_with_a_silent_scheduler_do_not_each_time_out() {
    let home = tempfile::tempdir().unwrap();
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let token = JoinToken {
        ca_pin: [1; 16],
        secret: SECRET,
    }
    .to_string();
    let cache = home.path().join("cache");
    let vars = [
        ("DISTCC_RS_SCHEDULER", addr.as_str()),
        ("DISTCC_RS_JOIN_TOKEN", token.as_str()),
        ("DISTCC_RS_CACHE_DIR", cache.to_str().unwrap()),
    ];
    let started = std::time::Instant::now();
    wait_all(
        (0..3)
            .map(|i| spawn_wrapper(home.path(), &format!("lib{i}"), &vars))
            .collect(),
    );
    // One connect timeout (3 s), not two or three in a row.
    let elapsed = started.elapsed();
    assert!(elapsed.as_secs_f64() < 5.5, "{elapsed:?}");
    let log = std::fs::read_to_string(home.path().join("events.jsonl")).unwrap();
    assert_eq!(log.matches(r#""where":"local""#).count(), 3, "{log}");
    assert_eq!(
        log.matches(&format!("cannot reach the scheduler at {addr} to enroll"))
            .count()
            + log
                .matches(&format!(
                    "cannot enroll: the scheduler at {addr} is unreachable"
                ))
                .count(),
        3,
        "{log}"
    );
}
