//! The `distcc-rs-pack` binary as a person uses it: exit codes, and errors
//! that name what is wrong. The toolchain is a small fake sysroot whose rustc
//! is a shell script, so these tests take well under a second; the library's
//! own tests pack and run the real toolchain.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const HOST: &str = "x86_64-unknown-linux-gnu";

/// A rustc that answers `-vV` and `--print sysroot`, and "compiles" by
/// writing the two files the smoke test expects into `--out-dir`.
const FAKE_RUSTC: &str = r#"#!/bin/sh
case "$1" in
  -vV) printf 'rustc 0.0.0-fake (0000000 2026-01-01)\ncommit-hash: 0000000\nhost: x86_64-unknown-linux-gnu\nrelease: 0.0.0-fake\n'; exit 0 ;;
  --print) cd "$(dirname "$0")/.." && pwd; exit 0 ;;
esac
while [ $# -gt 0 ]; do
  if [ "$1" = --out-dir ]; then out=$2; fi
  shift
done
echo rlib > "$out/libdistcc_rs_smoke.rlib"
echo rmeta > "$out/libdistcc_rs_smoke.rmeta"
"#;

/// Pseudo-random bytes, stored verbatim by zstd, so a byte of them can be
/// found and flipped in a compressed bundle.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

const NOISE_FILE: &str = "lib/rustlib/x86_64-unknown-linux-gnu/lib/libnoise-1.rlib";

/// Writes the fake sysroot and returns its rustc.
fn fake_sysroot(root: &Path) -> PathBuf {
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
    write(NOISE_FILE, &noise(64 << 10), 0o644);
    root.join("bin/rustc")
}

fn pack(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distcc-rs-pack"))
        .args(args)
        .env_remove("DISTCC_RS_CACHE_DIR")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The value of a `key: value` line of the output.
fn field(out: &Output, key: &str) -> String {
    text(&out.stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no {key}: line in {}", text(&out.stdout)))
}

fn create(rustc: &Path, out: &Path) -> PathBuf {
    let result = pack(&[
        "create",
        "--rustc",
        rustc.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(result.status.success(), "{}", text(&result.stderr));
    PathBuf::from(field(&result, "path"))
}

#[test]
fn create_verify_and_a_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    let rustc = fake_sysroot(&dir.path().join("sysroot"));
    let bundle = create(&rustc, &dir.path().join("a"));
    let again = create(&rustc, &dir.path().join("b"));
    assert_eq!(bundle.file_name(), again.file_name());
    assert_eq!(fs::read(&bundle).unwrap(), fs::read(&again).unwrap());

    let path = bundle.to_str().unwrap();
    let out = pack(&["inspect", path]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(field(&out, "commit"), "0000000");
    assert_eq!(field(&out, "targets"), HOST);

    let out = pack(&["verify", "--no-run", path]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = pack(&["verify", "--no-sandbox", path]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(field(&out, "ok").contains(path));
    assert!(field(&out, "compiled").contains(HOST));

    // A missing sandbox is an error that says what to do, not a silent
    // unsandboxed run.
    let out = pack(&["verify", "--bwrap", "/nonexistent/bwrap", path]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--no-sandbox"),
        "{}",
        text(&out.stderr)
    );

    // One flipped bit in the compressed stream, inside one file.
    let mut bytes = fs::read(&bundle).unwrap();
    let content = noise(64 << 10);
    let window = &content[20_000..20_032];
    let at = bytes
        .windows(window.len())
        .position(|w| w == window)
        .expect("random content is stored verbatim");
    bytes[at + 3] ^= 0x08;
    let bad = dir.path().join("bad").join(bundle.file_name().unwrap());
    fs::create_dir(bad.parent().unwrap()).unwrap();
    fs::write(&bad, &bytes).unwrap();
    for args in [
        &["verify", "--no-run"][..],
        &["verify", "--no-sandbox"][..],
        &["inspect"][..],
    ] {
        let out = pack(&[args, &[bad.to_str().unwrap()]].concat());
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(NOISE_FILE) && stderr.contains("does not match the manifest"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn missing_target_names_the_rustup_command() {
    let dir = tempfile::tempdir().unwrap();
    let rustc = fake_sysroot(&dir.path().join("sysroot"));
    let out = pack(&[
        "create",
        "--rustc",
        rustc.to_str().unwrap(),
        "--out",
        dir.path().join("out").to_str().unwrap(),
        "--target",
        "aarch64-unknown-linux-gnu",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("rustup target add aarch64-unknown-linux-gnu"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("out").exists()
            || fs::read_dir(dir.path().join("out"))
                .unwrap()
                .next()
                .is_none()
    );
}

#[test]
fn gc_uses_the_clients_cache_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("client-cache");
    let bundles = cache.join("toolchains/bundles");
    fs::create_dir_all(&bundles).unwrap();
    let leftover = bundles.join(".distcc-rs-pack-killed.tmp");
    fs::write(&leftover, [0u8; 4096]).unwrap();
    let unused = bundles.join(format!("{}.tar.zst", "ab".repeat(32)));
    fs::write(&unused, [0u8; 1024]).unwrap();

    // DISTCC_RS_CACHE_DIR is the default, as for the client.
    let gc = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_distcc-rs-pack"))
            .arg("gc")
            .args(args)
            .env("DISTCC_RS_CACHE_DIR", &cache)
            .output()
            .unwrap()
    };
    let out = Command::new(env!("CARGO_BIN_EXE_distcc-rs-pack"))
        .arg("cache")
        .env("DISTCC_RS_CACHE_DIR", &cache)
        .output()
        .unwrap();
    let listing = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        listing.contains(&"ab".repeat(6)) && listing.contains("(unused)"),
        "{listing}"
    );
    assert!(listing.contains(".distcc-rs-pack-killed.tmp"), "{listing}");

    let out = gc(&["--dry-run"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("would remove 2 files"), "{stdout}");
    assert!(leftover.exists() && unused.exists());

    let out = gc(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("leftover temporary file"), "{stdout}");
    assert!(stdout.contains("bundle no current entry uses"), "{stdout}");
    assert!(!leftover.exists() && !unused.exists());

    // --cache-dir wins over the variable.
    let elsewhere = dir.path().join("elsewhere/toolchains/bundles");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::write(elsewhere.join(".index-x.tmp"), b"{").unwrap();
    let out = gc(&[
        "--cache-dir",
        dir.path().join("elsewhere").to_str().unwrap(),
    ]);
    assert!(
        text(&out.stdout).contains("removed 1 files"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn help_explains_every_subcommand() {
    let out = pack(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for sub in ["create", "inspect", "verify", "unpack", "cache", "gc"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(sub)),
            "{sub} missing from --help: {help}"
        );
        let out = pack(&[sub, "--help"]);
        assert!(out.status.success(), "{sub} --help");
    }
    let create = text(&pack(&["create", "--help"]).stdout);
    assert!(
        create.contains("--level") && create.contains("--target"),
        "{create}"
    );
}
