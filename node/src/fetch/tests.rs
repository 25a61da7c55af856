//! A real node (mDNS off, adopted over loopback) against a fake scheduler
//! that serves toolchain bundles, some of them damaged, and fake clients
//! that send jobs with tickets the fake scheduler signed, all with
//! certificates of one test farm. Some jobs run a fake sandbox (a shell
//! script in place of bubblewrap) that prints too much.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distcc_rs_net::credentials::Credentials;
use distcc_rs_net::pki::{self, TestFarm};
use distcc_rs_net::{
    EndpointOptions, FrameReader, FrameWriter, Identity, PeerAuth, accept_stream, bind_client,
    connect, open_stream, payload,
};
use distcc_rs_proto::message::{
    AdoptReply, AdoptRequest, FarmStatus, FarmTotals, FetchResponse, JobAccept, JobError, JobEvent,
    JobOutcome, JobRequest, NodeEvent, NodeRequest, RegisterResponse, SchedulerRequest,
    ToolchainStatus,
};
use distcc_rs_proto::{CertFingerprint, Digest, JobId, NodeId, PeerRole, Ticket, ToolchainId};
use quinn::Connection;
use tokio::sync::oneshot;

use crate::{Node, NodeConfig};

/// How long any one step may take before the test gives up.
const STEP: Duration = Duration::from_secs(30);

/// A valid bundle in the layout `distcc-rs-pack` writes (manifest first,
/// then a tiny "rustc" of `size` bytes): its id and compressed bytes.
fn bundle(seed: u8, size: usize) -> (ToolchainId, Vec<u8>) {
    bundle_claiming(seed, size, size as u64)
}

/// A bundle whose manifest says its rustc has `claimed` bytes, whatever
/// it has.
fn bundle_claiming(seed: u8, size: usize, claimed: u64) -> (ToolchainId, Vec<u8>) {
    let rustc: Vec<u8> = (0..size).map(|i| (i as u8) ^ seed).collect();
    let manifest = format!(
        r#"{{"format":1,"rustc_version":"rustc 0.0.0 (fake {seed})\nhost: x86_64-unknown-linux-gnu\n","host":"x86_64-unknown-linux-gnu","rustc":"bin/rustc","interpreter":"","library_path":[],"files":[{{"path":"bin/rustc","size":{claimed},"digest":"{digest}","executable":true}}]}}"#,
        digest = blake3::hash(&rustc).to_hex(),
    );
    let mut tar = tar::Builder::new(Vec::new());
    let mut append = |kind, path: &str, data: &[u8], mode| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(0);
        tar.append_data(&mut h, path, data).unwrap();
    };
    append(
        tar::EntryType::Regular,
        "distcc-rs-bundle.json",
        manifest.as_bytes(),
        0o644,
    );
    append(tar::EntryType::Directory, "bin", &[], 0o755);
    append(tar::EntryType::Regular, "bin/rustc", &rustc, 0o755);
    let tar = tar.into_inner().unwrap();
    let id = ToolchainId(Digest(*blake3::hash(&tar).as_bytes()));
    (id, zstd::encode_all(&tar[..], 3).unwrap())
}

/// The bundle with one byte flipped in the middle.
fn flipped(bytes: &[u8]) -> Vec<u8> {
    let mut bad = bytes.to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    bad
}

/// What the fake scheduler serves and has seen.
#[derive(Default)]
struct Script {
    /// For each toolchain, the payloads to send on successive fetches; the
    /// last one repeats.
    bundles: HashMap<ToolchainId, VecDeque<Vec<u8>>>,
    fetches: HashMap<ToolchainId, usize>,
    /// The toolchain list of its status answers.
    toolchains: Vec<ToolchainStatus>,
    status_requests: usize,
}

struct Farm {
    /// Issues every certificate of the test.
    pki: TestFarm,
    node_id: NodeId,
    node_addr: SocketAddr,
    key: [u8; 32],
    script: Arc<Mutex<Script>>,
    /// The node's control stream: its events.
    events: FrameReader,
    _control: FrameWriter,
    _scheduler: Connection,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    work: tempfile::TempDir,
    next_job: u64,
}

fn config(work: &std::path::Path, cache: u64, prefetch: bool, pki: &TestFarm) -> NodeConfig {
    let (identity, _) = pki.member(PeerRole::Node);
    NodeConfig {
        name: "test-node".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        scheduler: None,
        farm: "default".into(),
        // Never on the host's interfaces.
        mdns: false,
        work_dir: work.to_path_buf(),
        slots: 2,
        bwrap: "bwrap".into(),
        job_timeout: Duration::from_secs(60),
        max_bundle_size: 1 << 20,
        store_size: 1 << 20,
        toolchain_cache_size: cache,
        prefetch,
        // The fake toolchains have no rustc that could compile anything.
        smoke_test: false,
        job_user: None,
        job_limits: crate::limits::Limits {
            memory: 1 << 30,
            cpu_millis: 1000,
            pids: 128,
        },
        job_output: Default::default(),
        launcher: "distcc-rs-node".into(),
        // No job runs in these tests, and their work directory is a
        // private temporary one the job user could not reach; the sandbox
        // is checked by the end-to-end tests.
        insecure_no_sandbox: true,
        credentials: Credentials {
            ca: pki.ca.cert_der().clone(),
            identity,
        },
    }
}

/// A connection to the node at `addr` from the holder of `identity`.
async fn dial(addr: SocketAddr, identity: &Identity, auth: &PeerAuth) -> Connection {
    let opts = EndpointOptions::default();
    let endpoint = bind_client(addr, Some(identity), auth, &opts).unwrap();
    connect(&endpoint, addr, PeerRole::Node, &opts)
        .await
        .unwrap()
}

impl Farm {
    /// Starts a node, and a fake scheduler that adopts it and serves
    /// `script`.
    async fn start(cache: u64, prefetch: bool, script: Script) -> Farm {
        Farm::start_with(cache, prefetch, script, |_| {}).await
    }

    /// As [`Farm::start`], with the node's configuration changed by
    /// `tweak` first.
    async fn start_with(
        cache: u64,
        prefetch: bool,
        script: Script,
        tweak: impl FnOnce(&mut NodeConfig),
    ) -> Farm {
        let work = tempfile::tempdir().unwrap();
        let pki = TestFarm::new();
        let mut config = config(work.path(), cache, prefetch, &pki);
        tweak(&mut config);
        let node = Node::bind(config).expect("the node starts (is bubblewrap installed?)");
        let node_addr = node.local_addr().unwrap();
        let (registered_tx, registered) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(node.serve(registered_tx, async move {
            let _ = stopped.await;
        }));

        let (identity, auth) = pki.member(PeerRole::Scheduler);
        let conn = dial(node_addr, &identity, &auth).await;
        let (mut w, mut r) = open_stream(&conn).await.unwrap();
        w.send(&NodeRequest::Adopt(AdoptRequest {
            farm: "default".into(),
            scheduler_name: "fake".into(),
        }))
        .await
        .unwrap();
        let reply: AdoptReply = tokio::time::timeout(STEP, r.recv()).await.unwrap().unwrap();
        let AdoptReply::Register(registration) = reply else {
            panic!("the node declined: {reply:?}");
        };
        let script = Arc::new(Mutex::new(script));
        // The node's own streams to the scheduler: fetches and status.
        let served = script.clone();
        let serving = conn.clone();
        tokio::spawn(async move {
            while let Some((w, r)) = accept_stream(&serving).await {
                tokio::spawn(serve(served.clone(), w, r));
            }
        });
        let key = [7; 32];
        w.send(&RegisterResponse::Registered { ticket_key: key })
            .await
            .unwrap();
        tokio::time::timeout(STEP, registered)
            .await
            .unwrap()
            .unwrap();
        Farm {
            pki,
            node_id: registration.node,
            node_addr,
            key,
            script,
            events: r,
            _control: w,
            _scheduler: conn,
            stop,
            task,
            work,
            next_job: 1,
        }
    }

    fn fetches(&self, id: ToolchainId) -> usize {
        self.script
            .lock()
            .unwrap()
            .fetches
            .get(&id)
            .copied()
            .unwrap_or(0)
    }

    /// The node's next event other than a load report.
    async fn event(&mut self) -> NodeEvent {
        loop {
            let ev = tokio::time::timeout(STEP, self.events.recv())
                .await
                .expect("the node sent no event in time")
                .unwrap();
            if !matches!(ev, NodeEvent::Load(_)) {
                return ev;
            }
        }
    }

    /// The node's next toolchain event, skipping job and load reports.
    async fn toolchain_event(&mut self) -> NodeEvent {
        loop {
            let ev = self.event().await;
            if !matches!(
                ev,
                NodeEvent::JobStarted { .. } | NodeEvent::JobFinished { .. }
            ) {
                return ev;
            }
        }
    }

    /// Sends a job of toolchain `id` as a client would, with no inputs, and
    /// returns how the node answered: its refusal, or the job's last event.
    async fn job(&mut self, id: ToolchainId) -> Result<JobEvent, JobError> {
        let (identity, auth) = self.pki.member(PeerRole::Client);
        let ticket = self.ticket(id, pki::fingerprint(&identity.cert_chain[0]));
        self.send(ticket, &identity, &auth).await
    }

    /// A ticket the fake scheduler signed for the next job, of toolchain
    /// `id`, issued to the client with the certificate `client`.
    fn ticket(&mut self, id: ToolchainId, client: CertFingerprint) -> Ticket {
        let job = JobId(self.next_job);
        self.next_job += 1;
        let mac = blake3::keyed_hash(
            &self.key,
            &Ticket::signed_bytes(job, self.node_id, id, client),
        );
        Ticket {
            job,
            node: self.node_id,
            toolchain: id,
            client,
            mac: *mac.as_bytes(),
        }
    }

    /// Sends the job `ticket` allows, with no inputs, from the holder of
    /// `identity`, and returns how the node answered: its refusal, or the
    /// job's last event.
    async fn send(
        &self,
        ticket: Ticket,
        identity: &Identity,
        auth: &PeerAuth,
    ) -> Result<JobEvent, JobError> {
        let mut events = self.send_all(ticket, identity, auth).await?;
        Ok(events.pop().expect("the job ended with an event"))
    }

    /// As [`Farm::send`], but returns every event of the job.
    async fn send_all(
        &self,
        ticket: Ticket,
        identity: &Identity,
        auth: &PeerAuth,
    ) -> Result<Vec<JobEvent>, JobError> {
        let request = JobRequest {
            ticket,
            crate_name: "x".into(),
            args: vec!["--crate-name".into(), "x".into()],
            env: vec![],
            cwd: "/src".into(),
            files: vec![],
            dirs: vec!["/src".into()],
            output_dirs: vec!["/src/out".into()],
        };
        let conn = dial(self.node_addr, identity, auth).await;
        let (mut w, mut r) = open_stream(&conn).await.unwrap();
        w.send(&NodeRequest::Job(request)).await.unwrap();
        let accept: JobAccept = tokio::time::timeout(STEP, r.recv()).await.unwrap().unwrap();
        match accept {
            JobAccept::Rejected(e) => return Err(e),
            JobAccept::NeedBlobs(want) => assert!(want.is_empty(), "{want:?}"),
        }
        let mut events = Vec::new();
        loop {
            let ev: JobEvent = tokio::time::timeout(STEP, r.recv()).await.unwrap().unwrap();
            let last = matches!(ev, JobEvent::Exited { .. } | JobEvent::Failed(_));
            events.push(ev);
            if last {
                return Ok(events);
            }
        }
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap();
    }
}

async fn serve(script: Arc<Mutex<Script>>, mut w: FrameWriter, mut r: FrameReader) {
    match r.recv::<SchedulerRequest>().await.unwrap() {
        SchedulerRequest::FetchToolchain(id) => {
            let payload = {
                let mut s = script.lock().unwrap();
                *s.fetches.entry(id).or_default() += 1;
                s.bundles.get_mut(&id).and_then(|queue| {
                    if queue.len() > 1 {
                        queue.pop_front()
                    } else {
                        queue.front().cloned()
                    }
                })
            };
            match payload {
                Some(bytes) => {
                    w.send(&FetchResponse::Found {
                        compressed_size: bytes.len() as u64,
                    })
                    .await
                    .unwrap();
                    payload::send_raw(&mut w, &bytes[..]).await.unwrap();
                }
                None => w.send(&FetchResponse::NotFound).await.unwrap(),
            }
        }
        SchedulerRequest::Status => {
            let toolchains = {
                let mut s = script.lock().unwrap();
                s.status_requests += 1;
                s.toolchains.clone()
            };
            w.send(&FarmStatus {
                nodes: vec![],
                jobs: vec![],
                toolchains,
                totals: FarmTotals::default(),
                waiting: 0,
                farm: "default".into(),
                recent: vec![],
            })
            .await
            .unwrap();
        }
        other => panic!("the fake scheduler does not serve {other:?}"),
    }
    let _ = w.finish();
}

fn script(bundles: Vec<(ToolchainId, Vec<Vec<u8>>)>) -> Script {
    Script {
        bundles: bundles
            .into_iter()
            .map(|(id, payloads)| (id, payloads.into()))
            .collect(),
        ..Script::default()
    }
}

#[tokio::test]
async fn a_corrupt_bundle_is_fetched_again_then_rejected_and_the_scheduler_told() {
    let (id, good) = bundle(1, 4096);
    // A bundle cut short, then two with a flipped byte.
    let truncated = good[..good.len() / 2].to_vec();
    let mut farm = Farm::start(
        1 << 20,
        false,
        script(vec![(id, vec![truncated, flipped(&good), flipped(&good)])]),
    )
    .await;

    let outcome = farm.job(id).await.unwrap();
    let JobEvent::Failed(JobError::ToolchainUnavailable { id: failed, reason }) = outcome else {
        panic!("the job should fail for want of its toolchain: {outcome:?}");
    };
    assert_eq!(failed, id);
    assert!(reason.contains("failed verification"), "{reason}");
    assert_eq!(farm.fetches(id), 3, "one fetch and two more attempts");

    // The scheduler hears of the rejection, and of the job's failure.
    assert_eq!(farm.event().await, NodeEvent::JobStarted { job: JobId(1) });
    let NodeEvent::ToolchainRejected {
        id: rejected,
        reason,
    } = farm.event().await
    else {
        panic!("the node did not report the rejection");
    };
    assert_eq!(rejected, id);
    assert!(reason.contains("fetched 3 times"), "{reason}");
    let NodeEvent::JobFinished { outcome, .. } = farm.event().await else {
        panic!("the job's end was not reported");
    };
    assert!(
        matches!(
            outcome,
            JobOutcome::Failed(JobError::ToolchainUnavailable { .. })
        ),
        "{outcome:?}"
    );

    // The next job that needs it is refused at once, without a download,
    // and the scheduler is reminded.
    let refused = farm.job(id).await.unwrap_err();
    assert!(
        matches!(&refused, JobError::ToolchainUnavailable { reason, .. } if reason.contains("failed verification")),
        "{refused:?}"
    );
    assert_eq!(farm.fetches(id), 3);
    assert!(matches!(
        farm.event().await,
        NodeEvent::ToolchainRejected { id: again, .. } if again == id
    ));
    farm.stop().await;
}

#[tokio::test]
async fn a_bundle_damaged_in_transit_is_fetched_again_and_used() {
    let (id, good) = bundle(2, 4096);
    let mut farm = Farm::start(
        1 << 20,
        false,
        script(vec![(id, vec![flipped(&good), good])]),
    )
    .await;
    let outcome = farm.job(id).await.unwrap();
    // The fake rustc cannot run, but the toolchain was there.
    assert!(
        !matches!(
            outcome,
            JobEvent::Failed(JobError::ToolchainUnavailable { .. })
        ),
        "{outcome:?}"
    );
    assert_eq!(farm.fetches(id), 2);
    assert_eq!(farm.toolchain_event().await, NodeEvent::ToolchainReady(id));
    farm.stop().await;
}

#[tokio::test]
async fn a_full_cache_evicts_the_least_recently_used_toolchain_and_says_so() {
    let (a, bundle_a) = bundle(3, 6000);
    let (b, bundle_b) = bundle(4, 6000);
    // Room for one toolchain of 6000 bytes, not two.
    let mut farm = Farm::start(
        10_000,
        false,
        script(vec![(a, vec![bundle_a]), (b, vec![bundle_b])]),
    )
    .await;
    farm.job(a).await.unwrap();
    assert_eq!(farm.toolchain_event().await, NodeEvent::ToolchainReady(a));
    farm.job(b).await.unwrap();
    assert_eq!(farm.toolchain_event().await, NodeEvent::ToolchainEvicted(a));
    assert_eq!(farm.toolchain_event().await, NodeEvent::ToolchainReady(b));
    let cached: Vec<String> = std::fs::read_dir(farm.work.path().join("toolchains"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    let mut cached = cached;
    cached.sort();
    assert_eq!(cached, [b.to_string(), format!("{b}.used")]);
    farm.stop().await;
}

/// A manifest that announces more than any bundle may unpack to is refused
/// before the cache makes room for it, so it evicts nothing.
#[tokio::test]
async fn a_bundle_announcing_too_much_evicts_nothing() {
    let (a, bundle_a) = bundle(5, 6000);
    let (b, bundle_b) = bundle_claiming(6, 6000, 9 << 30);
    let mut farm = Farm::start(
        10_000,
        false,
        script(vec![(a, vec![bundle_a]), (b, vec![bundle_b])]),
    )
    .await;
    farm.job(a).await.unwrap();
    assert_eq!(farm.toolchain_event().await, NodeEvent::ToolchainReady(a));
    let outcome = farm.job(b).await.unwrap();
    let JobEvent::Failed(JobError::ToolchainUnavailable { reason, .. }) = outcome else {
        panic!("the job should fail for want of its toolchain: {outcome:?}");
    };
    assert!(
        reason.contains("the bundle's unpacked size exceeds the limit (9663676416 > 8589934592)"),
        "{reason}"
    );
    assert!(
        farm.work
            .path()
            .join("toolchains")
            .join(a.to_string())
            .is_dir(),
        "toolchain a was evicted for a bundle that could never fit"
    );
    farm.stop().await;
}

#[tokio::test]
async fn an_idle_node_prefetches_the_toolchains_the_farm_used_recently() {
    let (recent, bundle_recent) = bundle(5, 4096);
    let (unused, bundle_unused) = bundle(6, 4096);
    let mut s = script(vec![
        (recent, vec![bundle_recent.clone()]),
        (unused, vec![bundle_unused]),
    ]);
    s.toolchains = vec![
        ToolchainStatus {
            id: recent,
            compressed_size: bundle_recent.len() as u64,
            last_used_ms: Some(1_000),
            holders: 1,
        },
        // Never placed since the scheduler started: not worth fetching.
        ToolchainStatus {
            id: unused,
            compressed_size: 4096,
            last_used_ms: None,
            holders: 0,
        },
    ];
    let mut farm = Farm::start(1 << 20, true, s).await;
    // No job asked for it.
    assert_eq!(
        farm.toolchain_event().await,
        NodeEvent::ToolchainReady(recent)
    );
    // The prefetcher looks again right after a fetch and finds nothing
    // more worth fetching.
    let deadline = tokio::time::Instant::now() + STEP;
    while farm.script.lock().unwrap().status_requests < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no second look");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(farm.fetches(recent), 1);
    assert_eq!(farm.fetches(unused), 0);
    farm.stop().await;
}

#[tokio::test]
async fn a_ticket_is_good_only_on_the_connection_of_the_client_it_names() {
    let (id, good) = bundle(7, 4096);
    let mut farm = Farm::start(1 << 20, false, script(vec![(id, vec![good])])).await;
    let (owner, owner_auth) = farm.pki.member(PeerRole::Client);
    let (thief, thief_auth) = farm.pki.member(PeerRole::Client);
    let ticket = farm.ticket(id, pki::fingerprint(&owner.cert_chain[0]));

    // Another client of the farm that saw the ticket cannot use it.
    let refused = farm.send(ticket, &thief, &thief_auth).await.unwrap_err();
    assert_eq!(
        refused,
        JobError::BadTicket("the ticket was issued to another client certificate".into())
    );
    // Nor can it rewrite the ticket to name itself: the MAC covers the
    // client.
    let rebound = Ticket {
        client: pki::fingerprint(&thief.cert_chain[0]),
        ..ticket
    };
    let refused = farm.send(rebound, &thief, &thief_auth).await.unwrap_err();
    assert!(
        matches!(&refused, JobError::BadTicket(why) if why.contains("signature")),
        "{refused:?}"
    );

    // The refusals did not use the ticket up: its client's job runs (the
    // fake rustc cannot, but the node got as far as the toolchain).
    let outcome = farm.send(ticket, &owner, &owner_auth).await.unwrap();
    assert!(
        !matches!(
            outcome,
            JobEvent::Failed(JobError::ToolchainUnavailable { .. })
        ),
        "{outcome:?}"
    );
    farm.stop().await;
}

#[tokio::test]
async fn only_clients_submit_jobs() {
    let (id, good) = bundle(8, 4096);
    let mut farm = Farm::start(1 << 20, false, script(vec![(id, vec![good])])).await;
    for role in [PeerRole::Node, PeerRole::Scheduler] {
        let (identity, auth) = farm.pki.member(role);
        // Even a genuine ticket naming this very certificate.
        let ticket = farm.ticket(id, pki::fingerprint(&identity.cert_chain[0]));
        let refused = farm.send(ticket, &identity, &auth).await.unwrap_err();
        assert_eq!(
            refused,
            JobError::BadTicket(format!(
                "only clients submit jobs; this peer's certificate is for a {role}"
            ))
        );
    }
    assert_eq!(farm.fetches(id), 0);
    farm.stop().await;
}

// Jobs whose rustc prints too much. The node runs without the sandbox and
// with a shell script as "bubblewrap", which ignores its arguments (the
// sandbox and rustc command line) and prints; the limits are small.

/// The limits of these tests: 64 KiB a line, 1 MiB of stderr, 64 KiB of
/// stdout.
const SMALL_OUTPUT: crate::rustc_output::OutputLimits = crate::rustc_output::OutputLimits {
    max_line: 64 << 10,
    max_stderr: 1 << 20,
    max_stdout: 64 << 10,
};

/// A node whose jobs run `body` as a shell script in place of bubblewrap,
/// under [`SMALL_OUTPUT`], with its toolchain and the script's directory.
async fn printing_farm(seed: u8, body: &str) -> (Farm, ToolchainId, tempfile::TempDir) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake-bwrap");
    let text = format!(
        "#!/bin/sh\n{}\n",
        body.replace("$DIR", &dir.path().display().to_string())
    );
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (id, good) = bundle(seed, 4096);
    let farm = Farm::start_with(1 << 20, false, script(vec![(id, vec![good])]), |c| {
        c.bwrap = path;
        c.job_output = SMALL_OUTPUT;
    })
    .await;
    (farm, id, dir)
}

/// Runs one job on a [`printing_farm`] whose script records its pid and
/// then becomes `flood`; checks that the job failed as a farm failure
/// whose reason contains `reason` and that the printing process is gone.
async fn flooding_job_is_stopped(seed: u8, flood: &str, reason: &str) {
    let (mut farm, id, dir) =
        printing_farm(seed, &format!("echo $$ > $DIR/pid\nexec {flood}")).await;
    let outcome = farm.job(id).await.unwrap();
    let JobEvent::Failed(JobError::Sandbox(why)) = &outcome else {
        panic!("the job should be a farm failure: {outcome:?}");
    };
    assert!(why.contains(reason), "{why}");
    // Killed and reaped before the client heard of the failure.
    let pid = std::fs::read_to_string(dir.path().join("pid")).unwrap();
    let proc = std::path::Path::new("/proc").join(pid.trim());
    assert!(
        !proc.exists(),
        "the printing process {} still runs",
        pid.trim()
    );
    let NodeEvent::JobFinished { outcome, .. } = farm.event_after_start().await else {
        panic!("the job's end was not reported");
    };
    assert!(
        matches!(outcome, JobOutcome::Failed(JobError::Sandbox(_))),
        "{outcome:?}"
    );
    farm.stop().await;
}

impl Farm {
    /// The node's next job or toolchain event after a `JobStarted`.
    async fn event_after_start(&mut self) -> NodeEvent {
        loop {
            let ev = self.event().await;
            if !matches!(
                ev,
                NodeEvent::JobStarted { .. } | NodeEvent::ToolchainReady(_)
            ) {
                return ev;
            }
        }
    }
}

#[tokio::test]
async fn a_job_printing_an_endless_line_is_stopped_at_the_line_limit() {
    // NUL bytes, never a newline.
    flooding_job_is_stopped(
        20,
        "cat /dev/zero >&2",
        "the job was stopped: a line of rustc's stderr exceeds the node's limit of 65536 bytes",
    )
    .await;
}

#[tokio::test]
async fn a_job_printing_endless_lines_is_stopped_at_the_stderr_limit() {
    flooding_job_is_stopped(
        21,
        "yes >&2",
        "the job was stopped: rustc's stderr exceeds the node's limit of 1048576 bytes",
    )
    .await;
}

#[tokio::test]
async fn a_job_printing_an_endless_stdout_is_stopped_at_the_stdout_limit() {
    // stderr stays open and quiet.
    flooding_job_is_stopped(
        22,
        "cat /dev/zero",
        "the job was stopped: rustc's stdout exceeds the node's limit of 65536 bytes",
    )
    .await;
}

#[tokio::test]
async fn a_job_printing_an_endless_stdout_after_closing_stderr_is_stopped() {
    // The node stops reading stdout at its limit, so the printer dies of a
    // broken pipe: the job fails for the limit, not for that death.
    flooding_job_is_stopped(
        24,
        "cat /dev/zero 2>&-",
        "the job was stopped: rustc's stdout exceeds the node's limit of 65536 bytes",
    )
    .await;
}

#[tokio::test]
async fn output_within_the_limits_arrives_byte_for_byte() {
    // A line of exactly the line limit, and stdout of exactly its limit.
    let (mut farm, id, _dir) = printing_farm(
        23,
        "head -c 65536 /dev/zero | tr '\\0' '{' >&2\n\
         printf '\\ndone\\r\\n' >&2\n\
         head -c 65536 /dev/zero | tr '\\0' o\n\
         exit 0",
    )
    .await;
    let (identity, auth) = farm.pki.member(PeerRole::Client);
    let ticket = farm.ticket(id, pki::fingerprint(&identity.cert_chain[0]));
    let events = farm.send_all(ticket, &identity, &auth).await.unwrap();
    let (mut stderr, mut stdout) = (Vec::new(), Vec::new());
    for ev in &events {
        match ev {
            JobEvent::Stderr(bytes) => stderr.extend_from_slice(bytes),
            JobEvent::Stdout(bytes) => stdout.extend_from_slice(bytes),
            _ => {}
        }
    }
    assert_eq!(events.last(), Some(&JobEvent::Exited { code: 0 }));
    let mut expected = vec![b'{'; 65536];
    expected.extend_from_slice(b"\ndone\r\n");
    assert!(
        stderr == expected,
        "stderr differs ({} bytes)",
        stderr.len()
    );
    assert!(
        stdout == vec![b'o'; 65536],
        "stdout differs ({} bytes)",
        stdout.len()
    );
    farm.stop().await;
}
