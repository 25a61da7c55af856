//! Retrying a farm job on another node, with the real wrapper against a
//! scripted scheduler and scripted nodes.
//!
//! The nodes do not compile anything: they replay what the real local rustc
//! printed and wrote for the same compile (recorded first, in the same
//! directory, so every path matches), or fail in the way a test asks for.
//! What the wrapper then shows cargo is compared byte for byte with what
//! plain rustc shows: a retry must print every line exactly once, including
//! the `.rmeta` notification the failed node had already passed on.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use distcc_rs_net::credentials::Credentials;
use distcc_rs_net::pki::TestFarm;
use distcc_rs_net::{
    EndpointOptions, PeerAuth, Revocations, accept_stream, bind_server, payload, peer_certificate,
};
use distcc_rs_proto::message::{
    AllocateRequest, AllocateResponse, Assignment, JobAccept, JobError, JobEvent, NodeRequest,
    OutputHeader, RunLocallyReason, SchedulerRequest,
};
use distcc_rs_proto::{CertFingerprint, JobId, NodeId, PeerRole, Ticket};

const SOURCE: &str = "pub fn f() -> u32 {\n    let unused = 1;\n    2\n}\n";

/// What a scripted node does with the job it gets.
#[derive(Debug, Clone)]
enum Behaviour {
    /// Replays the first `lines` stderr lines of the real compile (and the
    /// `.rmeta` when its notification is among them), writes to stdout, then
    /// ends the stream in the middle of the job, as a node that died would
    /// leave it.
    DiesAfter(usize),
    /// Replays the first `lines`, writes to stdout, then reports a farm
    /// failure.
    FailsAfter(usize, JobError),
    /// Refuses the job before it starts.
    Rejects(JobError),
    /// Replays the whole compile and exits 0.
    Completes,
    /// Reports a compile error: one line on stderr, exit code 1.
    CompileError,
    /// Replays the whole compile, then sends `files` extra outputs of
    /// `size` zero bytes each (`junk-N` in the output directory), and exits
    /// 0, as a hostile node filling the client's disk would.
    CompletesWithJunk { files: usize, size: usize },
    /// Accepts the job, replays the first `lines`, starts sending the
    /// `.rlib` and sends half of it when `half_an_output` is set, then sends
    /// nothing more while keeping the connection open (QUIC keep-alives
    /// included) for [`STALL`], as a node holding the compile open would.
    Stalls { lines: usize, half_an_output: bool },
}

/// How long a [`Behaviour::Stalls`] node holds the job before it gives up
/// and closes the connection, far longer than the client's deadline in
/// the tests and than [`WRAPPER_LIMIT`].
const STALL: Duration = Duration::from_secs(300);

/// How long a test lets the wrapper run before it kills it and fails, so
/// that a wrapper waiting on a stalled node fails the test instead of
/// hanging it.
const WRAPPER_LIMIT: Duration = Duration::from_secs(60);

/// The scheduler's answer to one allocation: a node (by index) or "compile
/// locally".
#[derive(Debug, Clone, Copy)]
enum Answer {
    Node(usize),
    /// Node `i`'s address, but under another node's certificate: what a
    /// client is told when the address leads to the wrong machine.
    Impostor(usize),
    RunLocally(RunLocallyReason),
}

/// What the real rustc printed and wrote for the compile.
#[derive(Debug, Clone)]
struct Reference {
    stderr: Vec<Vec<u8>>,
    outputs: Vec<(PathBuf, Vec<u8>)>,
}

/// What the scripted farm saw.
#[derive(Debug, Default)]
struct Seen {
    allocations: Vec<AllocateRequest>,
    releases: Vec<JobId>,
    /// The node each job request reached, and the ticket it carried.
    jobs: Vec<(usize, Ticket)>,
}

struct Project {
    _dir: tempfile::TempDir,
    root: PathBuf,
    rustc: PathBuf,
    args: Vec<String>,
    events: PathBuf,
}

impl Project {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::create_dir_all(root.join("target/deps")).unwrap();
        std::fs::write(root.join("src/lib.rs"), SOURCE).unwrap();
        let deps = root.join("target/deps");
        let deps = deps.to_str().unwrap();
        let args = [
            "--crate-name",
            "retried",
            "--edition=2021",
            "src/lib.rs",
            "--error-format=json",
            "--json=diagnostic-rendered-ansi,artifacts,future-incompat",
            "--crate-type",
            "lib",
            "--emit=dep-info,metadata,link",
            "-C",
            "embed-bitcode=no",
            "-C",
            "metadata=5eed",
            "-C",
            "extra-filename=-5eed",
            "--out-dir",
            deps,
            "-L",
            &format!("dependency={deps}"),
        ]
        .map(String::from)
        .to_vec();
        Project {
            events: root.join("events.jsonl"),
            rustc: real_rustc(),
            args,
            root,
            _dir: dir,
        }
    }

    /// Compiles with the real rustc, keeps what it printed and wrote, and
    /// removes the outputs so that only the wrapper can bring them back.
    fn reference(&self) -> Reference {
        let out = Command::new(&self.rustc)
            .args(&self.args)
            .current_dir(&self.root)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let deps = self.root.join("target/deps");
        let mut outputs = Vec::new();
        for entry in std::fs::read_dir(&deps).unwrap() {
            let path = entry.unwrap().path();
            outputs.push((path.clone(), std::fs::read(&path).unwrap()));
            std::fs::remove_file(&path).unwrap();
        }
        outputs.sort();
        let stderr = lines(&out.stderr);
        assert!(
            stderr.iter().any(|l| is_rmeta_note(l)) && stderr.len() >= 3,
            "a warning and the artifact notifications: {:?}",
            String::from_utf8_lossy(&out.stderr)
        );
        Reference { stderr, outputs }
    }

    /// Runs the wrapper once against the scripted farm, as the client
    /// whose credentials it saved.
    fn wrapper(&self, farm: &Farm) -> Output {
        self.wrapper_with(farm.scheduler, farm.identity.path(), &[])
    }

    /// Runs the wrapper once against the scheduler at `scheduler`, with the
    /// credentials in `identity` (if any) and the extra variables `vars`.
    fn wrapper_with(
        &self,
        scheduler: SocketAddr,
        identity: &Path,
        vars: &[(&str, &str)],
    ) -> Output {
        self.wrapper_command(scheduler, identity, vars)
            .output()
            .unwrap()
    }

    /// [`Project::wrapper_with`] as the client of `farm`, killed and failing
    /// the test if it runs for more than `limit`; also returns how long it
    /// ran.
    fn wrapper_within(
        &self,
        farm: &Farm,
        vars: &[(&str, &str)],
        limit: Duration,
    ) -> (Output, Duration) {
        let started = Instant::now();
        let mut child = self
            .wrapper_command(farm.scheduler, farm.identity.path(), vars)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let read = |mut pipe: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                pipe.read_to_end(&mut bytes).unwrap();
                bytes
            })
        };
        let stdout = read(Box::new(child.stdout.take().unwrap()));
        let stderr = read(Box::new(child.stderr.take().unwrap()));
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the wrapper still ran after {limit:?}; stderr so far: {}",
                    String::from_utf8_lossy(&stderr.join().unwrap())
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = started.elapsed();
        let out = Output {
            status,
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        };
        (out, elapsed)
    }

    /// The wrapper's command line, for [`Project::wrapper_with`].
    fn wrapper_command(
        &self,
        scheduler: SocketAddr,
        identity: &Path,
        vars: &[(&str, &str)],
    ) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_distcc-rs"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("DISTCC_RS_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg(&self.rustc)
            .args(&self.args)
            .current_dir(&self.root)
            .env("DISTCC_RS_SCHEDULER", scheduler.to_string())
            .env("DISTCC_RS_CACHE_DIR", shared_cache_dir())
            .env("DISTCC_RS_EVENTS", &self.events)
            .env("DISTCC_RS_IDENTITY_DIR", identity)
            .envs(vars.iter().copied())
            .stdin(Stdio::null());
        cmd
    }

    fn event(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(&self.events).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        serde_json::from_str(lines[0]).unwrap()
    }

    fn outputs(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out: Vec<_> = std::fs::read_dir(self.root.join("target/deps"))
            .unwrap()
            .map(|e| {
                let path = e.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                (path, bytes)
            })
            .collect();
        out.sort();
        out
    }
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

/// The toolchain bundle takes seconds to pack, so every test of every run
/// shares one client cache, which `cargo clean` removes.
fn shared_cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("distcc-rs-client-cache")
}

fn lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn is_rmeta_note(line: &[u8]) -> bool {
    let text = String::from_utf8_lossy(line);
    text.contains(r#""$message_type":"artifact""#) && text.contains(r#""emit":"metadata""#)
}

/// A scripted scheduler and its nodes, served from a background runtime,
/// with certificates of a farm CA of their own, and a client's credentials
/// of the same farm saved for the wrapper.
struct Farm {
    _rt: tokio::runtime::Runtime,
    scheduler: SocketAddr,
    nodes: Vec<(NodeId, String)>,
    seen: Arc<Mutex<Seen>>,
    /// The client's saved credentials.
    identity: tempfile::TempDir,
}

impl Farm {
    fn start(reference: &Reference, nodes: Vec<Behaviour>, answers: Vec<Answer>) -> Farm {
        Farm::start_revoking(reference, nodes, answers, false)
    }

    /// [`Farm::start`], with a scheduler that has revoked the client's
    /// certificate when `revoke_client` is set.
    fn start_revoking(
        reference: &Reference,
        nodes: Vec<Behaviour>,
        answers: Vec<Answer>,
        revoke_client: bool,
    ) -> Farm {
        let pki = TestFarm::new();
        let client = pki.member(PeerRole::Client).0;
        let revoked = Revocations::default();
        if revoke_client {
            revoked.replace([distcc_rs_net::pki::fingerprint(&client.cert_chain[0])].into());
        }
        let identity = tempfile::tempdir().unwrap();
        Credentials {
            ca: pki.ca.cert_der().clone(),
            identity: client,
        }
        .save(identity.path())
        .unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let _guard = rt.enter();
        let mut addrs = Vec::new();
        let mut names = Vec::new();
        let mut certs = Vec::new();
        for (i, behaviour) in nodes.into_iter().enumerate() {
            let (endpoint, cert) = server(&pki, PeerRole::Node, Revocations::default());
            addrs.push(endpoint.local_addr().unwrap());
            certs.push(cert);
            names.push((NodeId(1000 + i as u64), format!("n{}", i + 1)));
            rt.spawn(node(
                endpoint,
                i,
                behaviour,
                reference.clone(),
                seen.clone(),
            ));
        }
        let (endpoint, _) = server(&pki, PeerRole::Scheduler, revoked);
        let scheduler = endpoint.local_addr().unwrap();
        let placements: Vec<_> = names
            .iter()
            .zip(&addrs)
            .zip(&certs)
            .map(|(((id, name), addr), cert)| (*id, name.clone(), *addr, *cert))
            .collect();
        rt.spawn(scheduler_task(endpoint, answers, placements, seen.clone()));
        drop(_guard);
        Farm {
            _rt: rt,
            scheduler,
            nodes: names,
            seen,
            identity,
        }
    }

    fn node_id(&self, name: &str) -> NodeId {
        self.nodes.iter().find(|(_, n)| n == name).unwrap().0
    }
}

/// A daemon's endpoint with a certificate of `pki` for `role`, refusing the
/// certificates in `revoked`.
fn server(
    pki: &TestFarm,
    role: PeerRole,
    revoked: Revocations,
) -> (quinn::Endpoint, CertFingerprint) {
    let (identity, mut auth) = pki.member(role);
    if let PeerAuth::Farm(trust) = &mut auth {
        trust.revoked = revoked;
    }
    let endpoint = bind_server(
        "127.0.0.1:0".parse().unwrap(),
        &identity,
        &auth,
        &EndpointOptions::default(),
    )
    .unwrap();
    (
        endpoint,
        distcc_rs_net::pki::fingerprint(&identity.cert_chain[0]),
    )
}

async fn scheduler_task(
    endpoint: quinn::Endpoint,
    answers: Vec<Answer>,
    nodes: Vec<(NodeId, String, SocketAddr, CertFingerprint)>,
    seen: Arc<Mutex<Seen>>,
) {
    let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(conn) = incoming.await else { continue };
        // Tickets are bound to the client's certificate; the scripted nodes
        // do not check them.
        let client = peer_certificate(&conn)
            .map(|c| c.fingerprint)
            .unwrap_or(CertFingerprint([0; 32]));
        let (answers, nodes, seen) = (answers.clone(), nodes.clone(), seen.clone());
        tokio::spawn(async move {
            // One stream at a time, in the order the client opened them, so
            // a release is recorded before the allocation that follows it.
            while let Some((mut w, mut r)) = accept_stream(&conn).await {
                match r.recv::<SchedulerRequest>().await {
                    Ok(SchedulerRequest::Allocate(request)) => {
                        let answer = answers.lock().unwrap().pop_front();
                        let job = {
                            let mut seen = seen.lock().unwrap();
                            seen.allocations.push(request.clone());
                            JobId(seen.allocations.len() as u64)
                        };
                        let response = match answer {
                            Some(answer @ (Answer::Node(i) | Answer::Impostor(i))) => {
                                let (node, ref name, addr, cert) = nodes[i];
                                let node_cert = match answer {
                                    Answer::Impostor(_) => CertFingerprint([0xee; 32]),
                                    _ => cert,
                                };
                                AllocateResponse::Assigned(Assignment {
                                    job,
                                    node,
                                    node_name: name.clone(),
                                    addr,
                                    node_cert,
                                    ticket: Ticket {
                                        job,
                                        node,
                                        toolchain: request.toolchain,
                                        client,
                                        mac: [0; 32],
                                    },
                                })
                            }
                            Some(Answer::RunLocally(reason)) => {
                                AllocateResponse::RunLocally(reason)
                            }
                            // More allocations than the test expects: the
                            // count of allocations seen shows it.
                            None => AllocateResponse::RunLocally(RunLocallyReason::NoNodes),
                        };
                        let _ = w.send(&response).await;
                    }
                    Ok(SchedulerRequest::Release { job }) => {
                        seen.lock().unwrap().releases.push(job);
                    }
                    _ => {}
                }
            }
        });
    }
}

async fn node(
    endpoint: quinn::Endpoint,
    index: usize,
    behaviour: Behaviour,
    reference: Reference,
    seen: Arc<Mutex<Seen>>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let Ok(conn) = incoming.await else { continue };
        let Some((mut w, mut r)) = accept_stream(&conn).await else {
            continue;
        };
        let Ok(NodeRequest::Job(request)) = r.recv::<NodeRequest>().await else {
            continue;
        };
        seen.lock().unwrap().jobs.push((index, request.ticket));
        if let Behaviour::Rejects(e) = &behaviour {
            let _ = w.send(&JobAccept::Rejected(e.clone())).await;
            let _ = w.finish();
            conn.closed().await;
            continue;
        }
        let _ = w.send(&JobAccept::NeedBlobs(Vec::new())).await;
        let _ = w.send(&JobEvent::Running).await;
        let replay = match &behaviour {
            Behaviour::DiesAfter(n) | Behaviour::FailsAfter(n, _) => *n,
            Behaviour::Completes | Behaviour::CompletesWithJunk { .. } => reference.stderr.len(),
            Behaviour::CompileError | Behaviour::Rejects(_) => 0,
            Behaviour::Stalls { lines, .. } => *lines,
        };
        let _ = replay_compile(&mut w, &reference, replay).await;
        match &behaviour {
            Behaviour::DiesAfter(_) => {
                let _ = w
                    .send(&JobEvent::Stdout(b"from a dying node\n".to_vec()))
                    .await;
            }
            Behaviour::FailsAfter(_, e) => {
                let _ = w
                    .send(&JobEvent::Stdout(b"from a failing node\n".to_vec()))
                    .await;
                let _ = w.send(&JobEvent::Failed(e.clone())).await;
            }
            Behaviour::Completes => {
                for (path, bytes) in &reference.outputs {
                    if !path.to_string_lossy().ends_with(".rmeta") {
                        let _ = send_output(&mut w, path, bytes).await;
                    }
                }
                let _ = w.send(&JobEvent::Stdout(b"hello from n2\n".to_vec())).await;
                let _ = w.send(&JobEvent::Exited { code: 0 }).await;
            }
            Behaviour::CompletesWithJunk { files, size } => {
                for (path, bytes) in &reference.outputs {
                    if !path.to_string_lossy().ends_with(".rmeta") {
                        let _ = send_output(&mut w, path, bytes).await;
                    }
                }
                let dir = reference.outputs[0].0.parent().unwrap();
                for i in 0..*files {
                    let junk = dir.join(format!("junk-{i}"));
                    if send_output(&mut w, &junk, &vec![0; *size]).await.is_err() {
                        break;
                    }
                }
                let _ = w.send(&JobEvent::Exited { code: 0 }).await;
            }
            Behaviour::CompileError => {
                let line =
                    br#"{"$message_type":"diagnostic","message":"scripted error","level":"error"}"#;
                let mut line = line.to_vec();
                line.push(b'\n');
                let _ = w.send(&JobEvent::Stderr(line)).await;
                let _ = w.send(&JobEvent::Exited { code: 1 }).await;
            }
            Behaviour::Stalls { half_an_output, .. } => {
                if *half_an_output {
                    let (path, bytes) = reference
                        .outputs
                        .iter()
                        .find(|(p, _)| p.to_string_lossy().ends_with(".rlib"))
                        .expect("an rlib output");
                    let _ = send_half_an_output(&mut w, path, bytes).await;
                }
                // Neither the rest nor the end of the stream: the
                // connection stays up, answering keep-alives, until the
                // client goes away or the node gives up.
                let _ = tokio::time::timeout(STALL, conn.closed()).await;
                continue;
            }
            Behaviour::Rejects(_) => unreachable!("answered above"),
        }
        // Everything is sent; ending the stream now is what a node that
        // died at this point would leave the client with. The client closes
        // the connection once it has read the lot.
        let _ = w.finish();
        conn.closed().await;
    }
}

/// Sends the first `n` stderr lines of the real compile, each `.rmeta`
/// notification preceded by the `.rmeta` itself, as a node does.
async fn replay_compile(
    w: &mut distcc_rs_net::FrameWriter,
    reference: &Reference,
    n: usize,
) -> Result<(), distcc_rs_net::NetError> {
    for line in reference.stderr.iter().take(n) {
        if is_rmeta_note(line) {
            let (path, bytes) = reference
                .outputs
                .iter()
                .find(|(p, _)| p.to_string_lossy().ends_with(".rmeta"))
                .expect("an rmeta output");
            send_output(w, path, bytes).await?;
        }
        w.send(&JobEvent::Stderr(line.clone())).await?;
    }
    Ok(())
}

async fn send_output(
    w: &mut distcc_rs_net::FrameWriter,
    path: &Path,
    bytes: &[u8],
) -> Result<(), distcc_rs_net::NetError> {
    w.send(&JobEvent::Output(OutputHeader {
        path: path.to_str().unwrap().to_owned(),
        size: bytes.len() as u64,
        executable: false,
    }))
    .await?;
    payload::send_compressed(w, bytes, 1).await?;
    Ok(())
}

/// Sends the header of an output and the first half of its compressed
/// payload, without ending it.
async fn send_half_an_output(
    w: &mut distcc_rs_net::FrameWriter,
    path: &Path,
    bytes: &[u8],
) -> Result<(), distcc_rs_net::NetError> {
    w.send(&JobEvent::Output(OutputHeader {
        path: path.to_str().unwrap().to_owned(),
        size: bytes.len() as u64,
        executable: false,
    }))
    .await?;
    let compressed = zstd::encode_all(bytes, 1).unwrap();
    w.send_chunk(&compressed[..compressed.len() / 2]).await
}

/// How many leading lines the failing nodes replay: past the first
/// warning and the `.rmeta` notification, so the retry has both to leave
/// out.
fn lines_through_rmeta_note(reference: &Reference) -> usize {
    reference
        .stderr
        .iter()
        .position(|l| is_rmeta_note(l))
        .unwrap()
        + 1
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

fn failed_nodes(event: &serde_json::Value) -> Vec<String> {
    event
        .get("failed_nodes")
        .map(|v| serde_json::from_value(v.clone()).unwrap())
        .unwrap_or_default()
}

#[test]
fn a_job_whose_node_dies_is_retried_on_another_node() {
    let project = Project::new();
    let reference = project.reference();
    let farm = Farm::start(
        &reference,
        vec![
            Behaviour::DiesAfter(lines_through_rmeta_note(&reference)),
            Behaviour::Completes,
        ],
        vec![Answer::Node(0), Answer::Node(1)],
    );
    let out = project.wrapper(&farm);

    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&reference.stderr.concat()),
        "every line once, the .rmeta notification included"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from n2\n");
    assert_eq!(project.outputs(), reference.outputs);

    let event = project.event();
    assert_eq!(event["where"], "remote", "{event}");
    assert_eq!(event["node"], "n2", "{event}");
    assert_eq!(failed_nodes(&event), ["n1"], "{event}");
    assert!(event["reason"].as_str().unwrap().contains("n1"), "{event}");

    let seen = farm.seen.lock().unwrap();
    let excludes: Vec<_> = seen.allocations.iter().map(|a| a.exclude.clone()).collect();
    assert_eq!(excludes, [vec![], vec![farm.node_id("n1")]]);
    // Every wrapper of a build names the build after its parent, which is
    // cargo (here, this test), and itself after its own pid.
    let build = format!("{}:{}", host(), std::process::id());
    for a in &seen.allocations {
        assert_eq!(a.build, build);
        assert!(a.client.starts_with(&format!("{}:", host())));
        assert_ne!(a.client, build);
    }
    assert!(seen.releases.contains(&JobId(1)), "{:?}", seen.releases);
    // Each node got its own ticket.
    let tickets: Vec<_> = seen.jobs.iter().map(|(i, t)| (*i, t.node)).collect();
    assert_eq!(tickets, [(0, farm.node_id("n1")), (1, farm.node_id("n2"))]);
}

#[test]
fn a_job_that_fails_on_three_nodes_compiles_locally() {
    let project = Project::new();
    let reference = project.reference();
    let farm = Farm::start(
        &reference,
        vec![
            Behaviour::FailsAfter(
                lines_through_rmeta_note(&reference),
                JobError::Sandbox("bwrap: cannot mount".into()),
            ),
            Behaviour::Rejects(JobError::Busy),
            Behaviour::FailsAfter(0, JobError::Killed { signal: 9 }),
            Behaviour::Completes,
        ],
        // A fourth node is offered but must not be asked for.
        vec![
            Answer::Node(0),
            Answer::Node(1),
            Answer::Node(2),
            Answer::Node(3),
        ],
    );
    let out = project.wrapper(&farm);

    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&reference.stderr.concat())
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert_eq!(project.outputs(), reference.outputs);

    let event = project.event();
    assert_eq!(event["where"], "fallback", "{event}");
    assert_eq!(failed_nodes(&event), ["n1", "n2", "n3"], "{event}");

    let seen = farm.seen.lock().unwrap();
    let excludes: Vec<_> = seen.allocations.iter().map(|a| a.exclude.clone()).collect();
    let (n1, n2) = (farm.node_id("n1"), farm.node_id("n2"));
    assert_eq!(excludes, [vec![], vec![n1], vec![n1, n2]]);
    assert!(
        seen.releases.contains(&JobId(1)) && seen.releases.contains(&JobId(2)),
        "{:?}",
        seen.releases
    );
}

#[test]
fn a_compile_error_is_not_retried() {
    let project = Project::new();
    let reference = project.reference();
    let farm = Farm::start(
        &reference,
        vec![Behaviour::CompileError, Behaviour::Completes],
        vec![Answer::Node(0), Answer::Node(1)],
    );
    let out = project.wrapper(&farm);

    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("scripted error"),
        "{out:?}"
    );
    let event = project.event();
    assert_eq!(event["where"], "remote", "{event}");
    assert_eq!(event["node"], "n1", "{event}");
    assert!(failed_nodes(&event).is_empty(), "{event}");
    assert_eq!(farm.seen.lock().unwrap().allocations.len(), 1);
}

#[test]
fn a_retry_with_no_other_node_compiles_locally() {
    let project = Project::new();
    let reference = project.reference();
    let farm = Farm::start(
        &reference,
        vec![Behaviour::DiesAfter(lines_through_rmeta_note(&reference))],
        vec![
            Answer::Node(0),
            Answer::RunLocally(RunLocallyReason::NoEligibleNode),
        ],
    );
    let out = project.wrapper(&farm);

    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&reference.stderr.concat())
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert_eq!(project.outputs(), reference.outputs);
    let event = project.event();
    assert_eq!(event["where"], "fallback", "{event}");
    assert_eq!(failed_nodes(&event), ["n1"], "{event}");
    // The reason is the node's failure, not the scheduler's refusal to
    // offer another node.
    assert!(
        event["reason"].as_str().unwrap().starts_with("node n1"),
        "{event}"
    );
    assert_eq!(farm.seen.lock().unwrap().allocations.len(), 2);
}

/// What plain rustc would have left: the same stderr byte for byte, no
/// stdout, the same outputs, exit code 0.
fn assert_as_plain_rustc(project: &Project, reference: &Reference, out: &Output) {
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&reference.stderr.concat())
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert_eq!(project.outputs(), reference.outputs);
}

#[test]
fn without_a_certificate_or_a_token_the_job_compiles_locally_and_says_how_to_enroll() {
    let project = Project::new();
    let reference = project.reference();
    let farm = Farm::start(
        &reference,
        vec![Behaviour::Completes],
        vec![Answer::Node(0)],
    );
    let nothing_saved = tempfile::tempdir().unwrap();
    let out = project.wrapper_with(farm.scheduler, nothing_saved.path(), &[]);

    assert_as_plain_rustc(&project, &reference, &out);
    let event = project.event();
    assert_eq!(event["where"], "local", "{event}");
    let reason = event["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("not enrolled in the farm")
            && reason.contains(nothing_saved.path().to_str().unwrap())
            && reason.contains("distcc-rs join TOKEN")
            && reason.contains("DISTCC_RS_JOIN_TOKEN"),
        "{event}"
    );
    // The farm was never asked.
    assert!(farm.seen.lock().unwrap().allocations.is_empty());
}

#[test]
fn a_malformed_join_token_compiles_locally_without_showing_the_token() {
    let project = Project::new();
    let reference = project.reference();
    let farm = Farm::start(
        &reference,
        vec![Behaviour::Completes],
        vec![Answer::Node(0)],
    );
    let nothing_saved = tempfile::tempdir().unwrap();
    let out = project.wrapper_with(
        farm.scheduler,
        nothing_saved.path(),
        &[("DISTCC_RS_JOIN_TOKEN", "drs1-SECRETSECRET")],
    );

    assert_as_plain_rustc(&project, &reference, &out);
    let event = project.event();
    assert_eq!(event["where"], "local", "{event}");
    let reason = event["reason"].as_str().unwrap();
    assert!(
        reason.contains("DISTCC_RS_JOIN_TOKEN: not a join token") && !reason.contains("SECRET"),
        "{event}"
    );
    assert!(farm.seen.lock().unwrap().allocations.is_empty());
}

#[test]
fn a_revoked_certificate_compiles_locally_and_says_so() {
    let project = Project::new();
    let reference = project.reference();
    let farm = Farm::start_revoking(
        &reference,
        vec![Behaviour::Completes],
        vec![Answer::Node(0)],
        true,
    );
    let out = project.wrapper(&farm);

    assert_as_plain_rustc(&project, &reference, &out);
    assert_not_admitted(&project, &farm, "our certificate has been revoked");
}

/// The job fell back to a local compile because the scheduler would not
/// have us, for the reason `why` names, and nothing was allocated.
fn assert_not_admitted(project: &Project, farm: &Farm, why: &str) {
    let event = project.event();
    assert_eq!(event["where"], "fallback", "{event}");
    let reason = event["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("the farm does not admit us") && reason.contains(why),
        "{event}"
    );
    assert!(farm.seen.lock().unwrap().allocations.is_empty());
}

#[test]
fn a_certificate_of_another_farm_compiles_locally_and_says_so() {
    let project = Project::new();
    let reference = project.reference();
    let farm = Farm::start(
        &reference,
        vec![Behaviour::Completes],
        vec![Answer::Node(0)],
    );
    // The wrapper's credentials come from a farm CA the scheduler's
    // certificate does not chain to.
    let other = TestFarm::new();
    let foreign = tempfile::tempdir().unwrap();
    Credentials {
        ca: other.ca.cert_der().clone(),
        identity: other.member(PeerRole::Client).0,
    }
    .save(foreign.path())
    .unwrap();
    let out = project.wrapper_with(farm.scheduler, foreign.path(), &[]);

    assert_as_plain_rustc(&project, &reference, &out);
    assert_not_admitted(&project, &farm, "is not a trusted member of this farm");
}

/// A node that sends more output bytes than the client accepts for one job
/// fails the job, which the next node compiles; the refused output is never
/// written, not even in part.
#[test]
fn a_node_that_sends_too_many_output_bytes_fails_the_job_not_the_build() {
    let project = Project::new();
    let reference = project.reference();
    let total: usize = reference.outputs.iter().map(|(_, b)| b.len()).sum();
    let limit = total + 1000;
    let farm = Farm::start(
        &reference,
        vec![
            Behaviour::CompletesWithJunk {
                files: 1,
                size: 1001,
            },
            Behaviour::Completes,
        ],
        vec![Answer::Node(0), Answer::Node(1)],
    );
    let out = project.wrapper_with(
        farm.scheduler,
        farm.identity.path(),
        &[("DISTCC_RS_MAX_OUTPUT_SIZE", &limit.to_string())],
    );

    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&reference.stderr.concat())
    );
    // No junk, no temporary file: exactly what rustc writes.
    assert_eq!(project.outputs(), reference.outputs);
    let event = project.event();
    assert_eq!(event["where"], "remote", "{event}");
    assert_eq!(event["node"], "n2", "{event}");
    assert_eq!(failed_nodes(&event), ["n1"], "{event}");
    let reason = event["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!(
            "the total size of the outputs exceeds the limit ({} > {limit})",
            limit + 1
        )),
        "{event}"
    );
}

/// A node that sends more output files than the client accepts for one job
/// fails the job, however small the files.
#[test]
fn a_node_that_sends_too_many_output_files_fails_the_job_not_the_build() {
    let project = Project::new();
    let reference = project.reference();
    let limit = distcc_rs::outputs::MAX_OUTPUT_FILES;
    let farm = Farm::start(
        &reference,
        vec![
            Behaviour::CompletesWithJunk {
                files: limit,
                size: 0,
            },
            Behaviour::Completes,
        ],
        vec![Answer::Node(0), Answer::Node(1)],
    );
    let out = project.wrapper(&farm);

    assert!(out.status.success(), "{out:?}");
    let event = project.event();
    assert_eq!(event["node"], "n2", "{event}");
    assert_eq!(failed_nodes(&event), ["n1"], "{event}");
    let reason = event["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!(
            "the number of output files exceeds the limit ({} > {limit})",
            limit + 1
        )),
        "{event}"
    );
    // What rustc writes is n2's; the junk files n1 got in before the limit
    // (each whole, and empty) stay.
    let outputs = project.outputs();
    for (path, bytes) in &reference.outputs {
        assert!(outputs.contains(&(path.clone(), bytes.clone())), "{path:?}");
    }
    assert!(
        outputs.len() <= limit,
        "{} files in the output directory",
        outputs.len()
    );
}

/// A node that accepts the job and then sends nothing, keeping the
/// connection alive, holds the compile only until the client's deadline for
/// one attempt: then the job goes to the next node, and when that one stalls
/// too (having shown the warning and the `.rmeta` notification and started
/// on the `.rlib`), it compiles locally. Cargo sees what plain rustc shows,
/// every line once; no temporary file of the half-received `.rlib` stays.
#[test]
fn a_node_that_holds_the_compile_open_fails_the_job_at_the_clients_deadline() {
    let project = Project::new();
    let reference = project.reference();
    let farm = Farm::start(
        &reference,
        vec![
            Behaviour::Stalls {
                lines: 0,
                half_an_output: false,
            },
            Behaviour::Stalls {
                lines: lines_through_rmeta_note(&reference),
                half_an_output: true,
            },
        ],
        vec![
            Answer::Node(0),
            Answer::Node(1),
            Answer::RunLocally(RunLocallyReason::NoEligibleNode),
        ],
    );
    let (out, elapsed) =
        project.wrapper_within(&farm, &[("DISTCC_RS_REMOTE_TIMEOUT", "2")], WRAPPER_LIMIT);
    eprintln!("the wrapper took {elapsed:?} over two stalled nodes");

    // Exactly what rustc writes: no `.distcc-rs-*` temporary file of the
    // half-received `.rlib` beside it.
    let names: Vec<_> = project.outputs().into_iter().map(|(p, _)| p).collect();
    assert!(
        !names
            .iter()
            .any(|p| p.to_string_lossy().contains("/.distcc-rs-")),
        "{names:?}"
    );
    assert_as_plain_rustc(&project, &reference, &out);
    // Two deadlines of 2 s, and nowhere near the nodes' patience.
    assert!(elapsed >= Duration::from_secs(4), "{elapsed:?}");
    assert!(elapsed < STALL / 10, "{elapsed:?}");

    let event = project.event();
    assert_eq!(event["where"], "fallback", "{event}");
    assert_eq!(failed_nodes(&event), ["n1", "n2"], "{event}");
    assert_eq!(
        event["reason"], "node n2 sent nothing conclusive within 2 s (DISTCC_RS_REMOTE_TIMEOUT)",
        "{event}"
    );
    let seen = farm.seen.lock().unwrap();
    let excludes: Vec<_> = seen.allocations.iter().map(|a| a.exclude.clone()).collect();
    let (n1, n2) = (farm.node_id("n1"), farm.node_id("n2"));
    assert_eq!(excludes, [vec![], vec![n1], vec![n1, n2]]);
    assert_eq!(seen.jobs.len(), 2, "{:?}", seen.jobs);
}

/// A client that reaches a node of the farm other than the one it was
/// assigned (the address leads elsewhere: stale, or redirected on the LAN)
/// sends it nothing and retries on another node.
#[test]
fn a_job_goes_only_to_the_node_the_scheduler_named() {
    let project = Project::new();
    let reference = project.reference();
    let farm = Farm::start(
        &reference,
        vec![Behaviour::Completes, Behaviour::Completes],
        vec![Answer::Impostor(0), Answer::Node(1)],
    );
    let out = project.wrapper(&farm);

    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&reference.stderr.concat())
    );
    assert_eq!(project.outputs(), reference.outputs);
    let event = project.event();
    assert_eq!(event["node"], "n2", "{event}");
    assert_eq!(failed_nodes(&event), ["n1"], "{event}");
    let reason = event["reason"].as_str().unwrap();
    assert!(
        reason.contains("is not node n1") && reason.contains("eeeeeeeeeeee"),
        "{event}"
    );
    // The impostor never saw the job.
    let seen = farm.seen.lock().unwrap();
    let reached: Vec<_> = seen.jobs.iter().map(|(i, _)| *i).collect();
    assert_eq!(reached, [1]);
}
