//! `distcc-rs-pack push`, `list` and `rm` against a real
//! `distcc-rs-scheduler` on loopback (started with `--no-mdns`; the tool is
//! always given the scheduler, so nothing here touches mDNS). The bundles
//! are packed from small fake sysroots whose rustc is a shell script, which
//! the scheduler's verification accepts: it checks structure and hashes,
//! and never runs rustc.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

const HOST: &str = "x86_64-unknown-linux-gnu";

/// A rustc that answers the questions packing asks.
const FAKE_RUSTC: &str = r#"#!/bin/sh
case "$1" in
  -vV) printf 'rustc 0.0.0-fake (0000000 2026-01-01)\ncommit-hash: 0000000\nhost: x86_64-unknown-linux-gnu\nrelease: 0.0.0-fake\n'; exit 0 ;;
  --print) cd "$(dirname "$0")/.." && pwd; exit 0 ;;
esac
exit 1
"#;

/// Incompressible bytes, so a bundle's size follows `len`.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes a fake sysroot whose bundle holds about `len` bytes of noise and
/// returns its rustc.
fn fake_sysroot(root: &Path, len: usize, seed: u64) -> PathBuf {
    let write = |rel: &str, content: &[u8], mode: u32| {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    };
    write("bin/rustc", FAKE_RUSTC.as_bytes(), 0o755);
    write("lib/librustc_driver-0123.so", &[1u8; 5000], 0o644);
    write("lib/libLLVM.so.22.1-fake", &[2u8; 70_000], 0o644);
    write(
        &format!("lib/rustlib/{HOST}/lib/libstd-1.rlib"),
        b"std",
        0o644,
    );
    write(
        &format!("lib/rustlib/{HOST}/lib/libnoise-1.rlib"),
        &noise(len, seed),
        0o644,
    );
    root.join("bin/rustc")
}

/// The profile directory the test binary was built into, e.g.
/// `target/debug`. Test binaries live in its `deps/` subdirectory.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// The scheduler binary, built (or found up to date) by cargo once per test
/// run: `cargo test -p distcc-rs-pack` does not build other packages'
/// binaries by itself, and a stale one would test old code. The whole
/// workspace's binaries are built, as `scripts/test.sh` builds them before
/// the tests: building the scheduler alone would resolve features
/// differently and replace that build's binary with another one.
fn scheduler_binary() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let profile = profile_dir();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--quiet", "--workspace", "--bins"])
            .arg("--target-dir")
            .arg(profile.parent().unwrap());
        if profile.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().unwrap();
        assert!(status.success(), "building distcc-rs-scheduler failed");
        let binary = profile.join("distcc-rs-scheduler");
        assert!(binary.is_file(), "{} was not built", binary.display());
        binary
    })
}

/// A scheduler on loopback, killed when dropped, with its farm's join
/// token and a client identity directory to enroll into.
struct Scheduler {
    child: Child,
    addr: String,
    token: String,
    identity: tempfile::TempDir,
    _state: tempfile::TempDir,
}

impl Scheduler {
    fn start(max_store_size: &str) -> Scheduler {
        let state = tempfile::tempdir().unwrap();
        let mut child = Command::new(scheduler_binary())
            .args(["--no-mdns", "--listen", "127.0.0.1:0", "--max-store-size"])
            .arg(max_store_size)
            .arg("--state-dir")
            .arg(state.path())
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("distcc-rs-scheduler listening on ")
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("unexpected first line from the scheduler: {line:?}")
            })
            .to_owned();
        let out = Command::new(scheduler_binary())
            .arg("token")
            .arg("--state-dir")
            .arg(state.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let token = text(&out.stdout).trim().to_owned();
        Scheduler {
            child,
            addr,
            token,
            identity: tempfile::tempdir().unwrap(),
            _state: state,
        }
    }

    /// Runs the tool as a client of this farm: with its join token, so the
    /// first run enrolls, and the credentials that run saved.
    fn pack(&self, args: &[&str]) -> Output {
        pack_with(
            args,
            &[
                ("DISTCC_RS_IDENTITY_DIR", self.identity.path().as_os_str()),
                ("DISTCC_RS_JOIN_TOKEN", self.token.as_ref()),
            ],
        )
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the tool with no client credentials: an empty identity directory.
fn pack(args: &[&str]) -> Output {
    let nothing = tempfile::tempdir().unwrap();
    pack_with(
        args,
        &[("DISTCC_RS_IDENTITY_DIR", nothing.path().as_os_str())],
    )
}

fn pack_with(args: &[&str], vars: &[(&str, &std::ffi::OsStr)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distcc-rs-pack"))
        .args(args)
        .env_remove("DISTCC_RS_SCHEDULER")
        .env_remove("DISTCC_RS_NETNAME")
        .env_remove("DISTCC_RS_CACHE_DIR")
        .env_remove("DISTCC_RS_JOIN_TOKEN")
        .env_remove("DISTCC_RS_IDENTITY_DIR")
        .env("DISTCC_RS_MDNS", "0")
        .envs(vars.iter().copied())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn failed(out: Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

/// The value of a `key: value` line.
fn field(stdout: &str, key: &str) -> String {
    stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no {key}: line in {stdout}"))
}

/// Packs a fake sysroot with `create` and returns the bundle's path and id.
fn create(dir: &Path, name: &str, len: usize, seed: u64) -> (PathBuf, String) {
    let rustc = fake_sysroot(&dir.join(name).join("sysroot"), len, seed);
    let out = dir.join(name).join("out");
    let stdout = ok(pack(&[
        "create",
        "--rustc",
        rustc.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    (PathBuf::from(field(&stdout, "path")), field(&stdout, "id"))
}

fn list_json(scheduler: &Scheduler) -> serde_json::Value {
    let stdout = ok(scheduler.pack(&["list", "--json", "--scheduler", &scheduler.addr]));
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn listed_ids(scheduler: &Scheduler) -> Vec<String> {
    list_json(scheduler)["toolchains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn push_list_and_rm_against_a_real_scheduler() {
    let dir = tempfile::tempdir().unwrap();
    // Two bundles of about 100 KiB, and one too large for the store.
    let (first, first_id) = create(dir.path(), "first", 100 << 10, 1);
    let (second, second_id) = create(dir.path(), "second", 100 << 10, 2);
    let (huge, _) = create(dir.path(), "huge", 400 << 10, 3);
    let first_size = fs::metadata(&first).unwrap().len();
    assert!(
        first_size > 100 << 10 && first_size < 150 << 10,
        "{first_size}"
    );
    // Room for one small bundle, not two.
    let scheduler = Scheduler::start("160K");
    let addr = scheduler.addr.as_str();

    // Without a certificate or a token, the tool says how to enroll.
    let stderr = failed(pack(&["list", "--scheduler", addr]));
    assert!(
        stderr.contains("not enrolled in the farm")
            && stderr.contains("distcc-rs join TOKEN")
            && stderr.contains("--join-token"),
        "{stderr}"
    );
    // With the token, the first run enrolls as a client, and later runs
    // use the saved certificate.
    let out = scheduler.pack(&["list", "--scheduler", addr]);
    assert!(
        text(&out.stderr).contains("enrolled in the farm as client"),
        "{out:?}"
    );
    ok(out);
    let out = scheduler.pack(&["list", "--scheduler", addr]);
    assert!(!text(&out.stderr).contains("enrolled"), "{out:?}");
    ok(out);

    // Pushing uploads once; pushing again is a no-op that says so.
    let stdout = ok(scheduler.pack(&["push", first.to_str().unwrap(), "--scheduler", addr]));
    assert_eq!(field(&stdout, "id"), first_id);
    assert_eq!(field(&stdout, "scheduler"), addr);
    assert!(field(&stdout, "pushed").contains("MiB in"), "{stdout}");
    let stdout = ok(scheduler.pack(&["push", first.to_str().unwrap(), "--scheduler", addr]));
    assert!(
        field(&stdout, "pushed").contains("already stores it"),
        "{stdout}"
    );

    // A file not named by its id is identified first.
    let renamed = dir.path().join("renamed.tar.zst");
    fs::copy(&first, &renamed).unwrap();
    let stdout = ok(scheduler.pack(&["push", renamed.to_str().unwrap(), "--scheduler", addr]));
    assert_eq!(field(&stdout, "id"), first_id);
    assert!(
        field(&stdout, "pushed").contains("already stores it"),
        "{stdout}"
    );

    // Pushing by rustc goes through the client's cache, which packs the
    // same bytes: the scheduler has them already.
    let cache = dir.path().join("client-cache");
    let rustc = dir.path().join("first/sysroot/bin/rustc");
    let stdout = ok(scheduler.pack(&[
        "push",
        "--rustc",
        rustc.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--scheduler",
        addr,
    ]));
    assert_eq!(field(&stdout, "id"), first_id);
    assert!(
        field(&stdout, "pushed").contains("already stores it"),
        "{stdout}"
    );
    assert!(
        cache
            .join("toolchains/bundles")
            .join(format!("{first_id}.tar.zst"))
            .is_file()
    );

    // The table and the JSON describe the bundle from its manifest.
    let table = ok(scheduler.pack(&["list", "--scheduler", addr]));
    assert!(table.contains("1 bundle(s)"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with(&first_id[..12]))
        .unwrap_or_else(|| panic!("no row for {first_id} in {table}"));
    assert!(
        row.contains("0.0.0-fake") && row.contains(HOST) && row.contains("never"),
        "{row}"
    );
    let doc = list_json(&scheduler);
    assert_eq!(doc["limit"], 160 << 10);
    assert_eq!(doc["used"], first_size);
    let entry = &doc["toolchains"][0];
    assert_eq!(entry["id"], first_id.as_str());
    assert_eq!(entry["release"], "0.0.0-fake");
    assert_eq!(entry["host"], HOST);
    assert_eq!(entry["targets"], serde_json::json!([HOST]));
    assert_eq!(entry["holders"], serde_json::json!([]));
    assert_eq!(entry["last_used_ago_ms"], serde_json::Value::Null);

    // The second bundle does not fit beside the first, which nothing uses:
    // the first is evicted.
    ok(scheduler.pack(&["push", second.to_str().unwrap(), "--scheduler", addr]));
    assert_eq!(listed_ids(&scheduler), [second_id.as_str()]);

    // One larger than the whole store is refused, naming the limit.
    let stderr = failed(scheduler.pack(&["push", huge.to_str().unwrap(), "--scheduler", addr]));
    assert!(stderr.contains("--max-store-size"), "{stderr}");
    assert_eq!(listed_ids(&scheduler), [second_id.as_str()]);

    // `rm` takes a unique prefix, refuses what matches nothing or is not
    // hex, and removes.
    let absent = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "a", "b", "c", "d", "e", "f",
    ]
    .into_iter()
    .find(|c| !second_id.starts_with(c))
    .unwrap();
    let stderr = failed(scheduler.pack(&["rm", absent, "--scheduler", addr]));
    assert!(
        stderr.contains("no bundle whose id starts with"),
        "{stderr}"
    );
    let stderr = failed(scheduler.pack(&["rm", "xyz", "--scheduler", addr]));
    assert!(stderr.contains("not a bundle id"), "{stderr}");
    let stdout = ok(scheduler.pack(&["rm", &second_id[..8], "--scheduler", addr]));
    assert!(
        field(&stdout, "removed").starts_with(&second_id),
        "{stdout}"
    );
    assert!(listed_ids(&scheduler).is_empty());
    let table = ok(scheduler.pack(&["list", "--scheduler", addr]));
    assert!(table.contains("0 bundle(s)"), "{table}");

    // The scheduler can come from the environment, as for the client.
    let out = Command::new(env!("CARGO_BIN_EXE_distcc-rs-pack"))
        .args(["list", "--json"])
        .env("DISTCC_RS_SCHEDULER", addr)
        .env("DISTCC_RS_MDNS", "0")
        .env("DISTCC_RS_IDENTITY_DIR", scheduler.identity.path())
        .output()
        .unwrap();
    assert!(ok(out).contains("\"toolchains\": []"));
}

#[test]
fn without_a_scheduler_or_mdns_the_tool_says_what_to_set() {
    // A client of some farm, so that the scheduler is what is missing.
    let identity = tempfile::tempdir().unwrap();
    let farm = distcc_rs_net::pki::TestFarm::new();
    distcc_rs_net::credentials::Credentials {
        ca: farm.ca.cert_der().clone(),
        identity: farm.member(distcc_rs_proto::PeerRole::Client).0,
    }
    .save(identity.path())
    .unwrap();
    let member = |args: &[&str]| {
        pack_with(
            args,
            &[("DISTCC_RS_IDENTITY_DIR", identity.path().as_os_str())],
        )
    };
    let stderr = failed(member(&["list"]));
    assert!(
        stderr.contains("--scheduler") && stderr.contains("DISTCC_RS_SCHEDULER"),
        "{stderr}"
    );
    // An address nobody answers on is named in the error.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent = socket.local_addr().unwrap().to_string();
    let stderr = failed(member(&["list", "--scheduler", &silent]));
    assert!(stderr.contains(&silent), "{stderr}");
}

#[test]
fn help_explains_the_farm_commands() {
    for (command, words) in [
        (
            "push",
            &["--scheduler", "--rustc", "--target", "already stores"][..],
        ),
        ("list", &["--json", "--netname", "least recently used"][..]),
        ("rm", &["--force", "prefix", "in flight"][..]),
    ] {
        let help = ok(pack(&[command, "--help"]));
        for word in words {
            assert!(
                help.contains(word),
                "{command} --help lacks {word:?}: {help}"
            );
        }
    }
}
