//! Running an unpacked bundle's rustc on a tiny crate. Hashes prove that a
//! bundle holds what its packer put in; only running it proves that what the
//! packer put in works on this machine: that the bundled loader, system
//! libraries, driver, LLVM and standard libraries fit together and need
//! nothing from the host.
//!
//! The command runs with an empty environment (but `TMPDIR`) and through an
//! optional launcher prefix, so the same check runs bare, under the
//! bubblewrap sandbox [`bwrap_launcher`] describes, or under a node's own
//! sandbox. The launcher must show the bundle and the work directory at
//! their real paths, since the command names them by those.

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::PackError;
use crate::manifest::BundleManifest;

/// How long one run of the bundled rustc may take. Compiling the smoke crate
/// takes well under a second; a run still going after this is stuck.
pub const SMOKE_TIMEOUT: Duration = Duration::from_secs(120);

/// The crate compiled for targets that have `std`. It touches `core`,
/// `alloc` and `std`, generics and a derive, so that the metadata of each
/// standard crate is loaded and LLVM generates code.
const STD_CRATE: &str = "\
//! distcc-rs-pack smoke test.
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    pub text: String,
    pub count: usize,
}

pub fn histogram(text: &str) -> Vec<Word> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(text, count)| Word { text: text.to_owned(), count })
        .collect()
}

pub fn describe<T: std::fmt::Debug>(value: &T) -> String {
    format!(\"{value:?}\")
}
";

/// The crate compiled for `no_std` targets, whose bundles hold `core` (and
/// usually `alloc`) but no `std`.
const CORE_CRATE: &str = "\
//! distcc-rs-pack smoke test for a target without std.
#![no_std]

pub fn checksum(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0u32, |sum, b| sum.rotate_left(5) ^ u32::from(*b))
}
";

const CRATE_NAME: &str = "distcc_rs_smoke";

/// What [`smoke_test`] checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SmokeReport {
    /// The first line of `rustc -vV` as the bundled rustc printed it.
    pub version: String,
    /// One entry per target of the bundle, in the manifest's order.
    pub targets: Vec<TargetCheck>,
}

/// One target's compile.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetCheck {
    pub target: String,
    /// Whether the crate used `std` (else it was `no_std`).
    pub std: bool,
    pub elapsed: Duration,
}

/// The program and arguments that start the bundled rustc unpacked at
/// `root`: through the bundle's own dynamic loader with the bundle's library
/// directories when the manifest names a loader, else rustc directly.
pub fn rustc_command(root: &Path, manifest: &BundleManifest) -> Vec<OsString> {
    if manifest.interpreter.is_empty() {
        return vec![root.join(&manifest.rustc).into()];
    }
    let library_path = manifest
        .library_path
        .iter()
        .map(|dir| root.join(dir).into_os_string())
        .collect::<Vec<_>>()
        .join(std::ffi::OsStr::new(":"));
    vec![
        root.join(&manifest.interpreter).into(),
        "--library-path".into(),
        library_path,
        root.join(&manifest.rustc).into(),
    ]
}

/// A bubblewrap launcher for [`smoke_test`]: fresh namespaces (so no
/// network), nothing of the host's file system but `root` (read-only) and
/// `work` (writable) at their own paths, plus `/proc` and `/dev`, an empty
/// environment but `TMPDIR`, and bubblewrap dies with its parent.
pub fn bwrap_launcher(bwrap: &Path, root: &Path, work: &Path) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec![bwrap.into()];
    let mut push = |items: &[&std::ffi::OsStr]| argv.extend(items.iter().map(OsString::from));
    push(&[
        "--die-with-parent".as_ref(),
        "--new-session".as_ref(),
        "--unshare-all".as_ref(),
        "--clearenv".as_ref(),
        "--setenv".as_ref(),
        "TMPDIR".as_ref(),
        work.as_os_str(),
        // The work directory first, so that a bundle inside it is still
        // mounted read-only on top.
        "--bind".as_ref(),
        work.as_os_str(),
        work.as_os_str(),
        "--ro-bind".as_ref(),
        root.as_os_str(),
        root.as_os_str(),
        "--proc".as_ref(),
        "/proc".as_ref(),
        "--dev".as_ref(),
        "/dev".as_ref(),
        "--chdir".as_ref(),
        work.as_os_str(),
        "--".as_ref(),
    ]);
    argv
}

/// Runs the bundled rustc unpacked at `root`: `-vV` must print the version
/// the manifest records, and a tiny library crate must compile to an rlib
/// for every target the bundle holds. `work` is an existing, writable
/// directory for the sources and outputs. `launcher` is put in front of
/// every command (empty to run rustc directly), e.g. [`bwrap_launcher`].
pub fn smoke_test(
    root: &Path,
    manifest: &BundleManifest,
    work: &Path,
    launcher: &[OsString],
) -> Result<SmokeReport, PackError> {
    smoke_test_as(root, manifest, work, launcher, &|_| Ok(()))
}

/// [`smoke_test`], for a launcher that runs rustc as another user:
/// `hand_over` is called with every directory rustc writes to (`work` and
/// each target's output directory) once they all exist and before anything
/// runs, so that it can give them to that user.
pub fn smoke_test_as(
    root: &Path,
    manifest: &BundleManifest,
    work: &Path,
    launcher: &[OsString],
    hand_over: &dyn Fn(&[PathBuf]) -> std::io::Result<()>,
) -> Result<SmokeReport, PackError> {
    let rustc = rustc_command(root, manifest);
    let host = manifest.host.clone();

    // Every file and directory first, then the hand-over, then the runs.
    let mut writable = vec![work.to_path_buf()];
    let mut plans = Vec::new();
    for target in manifest.targets() {
        let std = manifest.has_std(target);
        let (name, code) = if std {
            ("smoke_std.rs", STD_CRATE)
        } else {
            ("smoke_core.rs", CORE_CRATE)
        };
        let src = work.join(name);
        fs::write(&src, code).map_err(PackError::io(&src))?;
        let out = work.join("out").join(target);
        fs::create_dir_all(&out).map_err(PackError::io(&out))?;
        writable.push(work.join("out"));
        writable.push(out.clone());
        plans.push((target, std, src, out));
    }
    writable.dedup();
    hand_over(&writable).map_err(PackError::io(work))?;

    let version = run(launcher, &rustc, &["-vV".into()], work, "version")?;
    let printed = fs::read_to_string(&version.stdout).map_err(PackError::io(&version.stdout))?;
    if printed != manifest.rustc_version {
        return Err(PackError::SmokeTest {
            target: host,
            message: format!(
                "`rustc -vV` printed {:?}, the manifest records {:?}",
                printed.lines().next().unwrap_or_default(),
                manifest.version_line()
            ),
        });
    }

    let mut targets = Vec::new();
    for (target, std, src, out) in plans {
        let args: Vec<OsString> = [
            "--crate-name",
            CRATE_NAME,
            "--crate-type",
            "lib",
            "--edition",
            "2021",
            "--emit",
            "metadata,link",
            "--target",
            target,
            "--out-dir",
        ]
        .iter()
        .map(OsString::from)
        .chain([out.clone().into(), src.into()])
        .collect();
        let started = Instant::now();
        run(launcher, &rustc, &args, work, target)?;
        for ext in ["rlib", "rmeta"] {
            let file = out.join(format!("lib{CRATE_NAME}.{ext}"));
            if !fs::metadata(&file).is_ok_and(|m| m.is_file() && m.len() > 0) {
                return Err(PackError::SmokeTest {
                    target: target.to_owned(),
                    message: format!("rustc succeeded but wrote no {}", file.display()),
                });
            }
        }
        targets.push(TargetCheck {
            target: target.to_owned(),
            std,
            elapsed: started.elapsed(),
        });
    }
    Ok(SmokeReport {
        version: printed.lines().next().unwrap_or_default().to_owned(),
        targets,
    })
}

/// Where one run's output went.
struct Ran {
    stdout: PathBuf,
}

/// Runs `launcher ++ rustc ++ args` in `work` with an empty environment but
/// `TMPDIR`, stdout and stderr going to files in `work` (so a chatty rustc
/// cannot block on a full pipe while we wait for it), and fails unless it
/// exits successfully within [`SMOKE_TIMEOUT`].
fn run(
    launcher: &[OsString],
    rustc: &[OsString],
    args: &[OsString],
    work: &Path,
    label: &str,
) -> Result<Ran, PackError> {
    let fail = |message: String| PackError::SmokeTest {
        target: label.to_owned(),
        message,
    };
    let mut argv = launcher.iter().chain(rustc).chain(args);
    let program = argv.next().expect("the rustc command is never empty");
    let stdout = work.join(format!("{label}.stdout"));
    let stderr = work.join(format!("{label}.stderr"));
    let create = |p: &Path| File::create(p).map_err(PackError::io(p));
    let child = Command::new(program)
        .args(argv)
        .env_clear()
        .env("TMPDIR", work)
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(create(&stdout)?)
        .stderr(create(&stderr)?)
        .spawn()
        .map_err(|e| {
            fail(format!(
                "cannot start {}: {e}",
                Path::new(program).display()
            ))
        })?;
    let status = wait_with_timeout(child, SMOKE_TIMEOUT)
        .map_err(|e| fail(format!("waiting for rustc: {e}")))?;
    let Some(status) = status else {
        return Err(fail(format!(
            "rustc did not finish within {} s",
            SMOKE_TIMEOUT.as_secs()
        )));
    };
    if !status.success() {
        let text = fs::read(&stderr).unwrap_or_default();
        return Err(fail(format!(
            "{} ({status}): {}",
            Path::new(program).display(),
            tail(&String::from_utf8_lossy(&text))
        )));
    }
    Ok(Ran { stdout })
}

/// Waits for `child`, killing it after `timeout`. `None` means it was killed.
fn wait_with_timeout(mut child: Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            child.kill()?;
            child.wait()?;
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The end of a command's stderr, enough to show why it failed without
/// flooding the terminal.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let start = lines.len().saturating_sub(20);
    let shown = lines[start..].join("\n");
    if shown.is_empty() {
        "no output".to_owned()
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{BUNDLE_FORMAT, BundleFile};
    use distcc_rs_proto::Digest;
    use std::os::unix::fs::PermissionsExt;

    /// A manifest for a bundle whose rustc is the shell script `script`,
    /// with one std target and one no_std target.
    fn scripted(root: &Path, script: &str) -> BundleManifest {
        let rustc = root.join("bin/rustc");
        fs::create_dir_all(rustc.parent().unwrap()).unwrap();
        fs::write(&rustc, script).unwrap();
        fs::set_permissions(&rustc, fs::Permissions::from_mode(0o755)).unwrap();
        let file = |path: &str| BundleFile {
            path: path.into(),
            size: 0,
            digest: Digest([0; 32]),
            executable: false,
        };
        BundleManifest {
            format: BUNDLE_FORMAT,
            rustc_version: "rustc 0.0.0-fake\nhost: x86_64-unknown-linux-gnu\n".into(),
            host: "x86_64-unknown-linux-gnu".into(),
            rustc: "bin/rustc".into(),
            interpreter: String::new(),
            library_path: vec!["lib".into()],
            files: vec![
                file("bin/rustc"),
                file("lib/rustlib/thumbv7em-none-eabi/lib/libcore-1.rlib"),
                file("lib/rustlib/x86_64-unknown-linux-gnu/lib/libstd-1.rlib"),
            ],
        }
    }

    /// A fake rustc that answers `-vV` and "compiles" by writing the two
    /// outputs into `--out-dir`, logging its arguments and environment.
    const WORKING: &str = r#"#!/bin/sh
if [ "$1" = -vV ]; then printf 'rustc 0.0.0-fake\nhost: x86_64-unknown-linux-gnu\n'; exit 0; fi
env > "$TMPDIR/env.log"
echo "$@" >> "$TMPDIR/args.log"
while [ $# -gt 0 ]; do
  if [ "$1" = --out-dir ]; then out=$2; fi
  shift
done
echo rlib > "$out/libdistcc_rs_smoke.rlib"
echo rmeta > "$out/libdistcc_rs_smoke.rmeta"
"#;

    #[test]
    fn every_target_is_compiled_with_a_clean_environment() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let work = dir.path().join("work");
        fs::create_dir(&work).unwrap();
        let manifest = scripted(&root, WORKING);
        let report = smoke_test(&root, &manifest, &work, &[]).unwrap();
        assert_eq!(report.version, "rustc 0.0.0-fake");
        let checked: Vec<(&str, bool)> = report
            .targets
            .iter()
            .map(|t| (t.target.as_str(), t.std))
            .collect();
        assert_eq!(
            checked,
            [
                ("thumbv7em-none-eabi", false),
                ("x86_64-unknown-linux-gnu", true)
            ]
        );
        let args = fs::read_to_string(work.join("args.log")).unwrap();
        assert!(args.contains("--target thumbv7em-none-eabi"), "{args}");
        assert!(args.contains("smoke_core.rs"), "{args}");
        assert!(args.contains("--target x86_64-unknown-linux-gnu"), "{args}");
        assert!(args.contains("smoke_std.rs"), "{args}");
        // Nothing of the caller's environment reaches rustc.
        let env = fs::read_to_string(work.join("env.log")).unwrap();
        assert!(!env.contains("HOME="), "{env}");
        assert!(env.contains(&format!("TMPDIR={}", work.display())), "{env}");
    }

    /// A node hands the smoke test's directories to its job user before
    /// the untrusted rustc runs: every directory it writes to must exist by
    /// then, and nothing may have run yet.
    #[test]
    fn writable_directories_are_handed_over_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let work = dir.path().join("work");
        fs::create_dir(&work).unwrap();
        let manifest = scripted(&root, WORKING);
        let handed = std::cell::RefCell::new(Vec::new());
        let hand_over = |dirs: &[PathBuf]| {
            // Nothing has run: rustc's logs do not exist yet.
            assert!(!work.join("args.log").exists());
            assert!(dirs.iter().all(|d| d.is_dir()), "{dirs:?}");
            handed.borrow_mut().extend_from_slice(dirs);
            Ok(())
        };
        smoke_test_as(&root, &manifest, &work, &[], &hand_over).unwrap();
        let handed = handed.into_inner();
        for expected in [
            work.clone(),
            work.join("out"),
            work.join("out/thumbv7em-none-eabi"),
            work.join("out/x86_64-unknown-linux-gnu"),
        ] {
            assert!(handed.contains(&expected), "{expected:?} not in {handed:?}");
        }
        // A hand-over that fails stops the smoke test before rustc runs.
        let work2 = dir.path().join("work2");
        fs::create_dir(&work2).unwrap();
        let refuse = |_: &[PathBuf]| Err(std::io::Error::other("no such user"));
        let err = smoke_test_as(&root, &manifest, &work2, &[], &refuse).unwrap_err();
        assert!(err.to_string().contains("no such user"), "{err}");
        assert!(!work2.join("args.log").exists());
    }

    #[test]
    fn failures_are_reported_with_rustc_output() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let work = dir.path().join("work");
        fs::create_dir(&work).unwrap();

        // A rustc that reports another version than the manifest's.
        let manifest = scripted(&root, "#!/bin/sh\necho 'rustc 9.9.9'\n");
        let err = smoke_test(&root, &manifest, &work, &[]).unwrap_err();
        assert!(err.to_string().contains("rustc 9.9.9"), "{err}");

        // A rustc that fails to compile: its stderr is in the error.
        let failing = "#!/bin/sh\nif [ \"$1\" = -vV ]; then printf 'rustc 0.0.0-fake\\nhost: x86_64-unknown-linux-gnu\\n'; exit 0; fi\necho 'error: cannot load libstd' >&2\nexit 1\n";
        let manifest = scripted(&root, failing);
        let err = smoke_test(&root, &manifest, &work, &[]).unwrap_err();
        match &err {
            PackError::SmokeTest { target, message } => {
                assert_eq!(target, "thumbv7em-none-eabi");
                assert!(message.contains("cannot load libstd"), "{message}");
            }
            other => panic!("expected a smoke test failure, got {other}"),
        }

        // A rustc that succeeds without writing the rlib.
        let lazy = "#!/bin/sh\nif [ \"$1\" = -vV ]; then printf 'rustc 0.0.0-fake\\nhost: x86_64-unknown-linux-gnu\\n'; fi\nexit 0\n";
        let manifest = scripted(&root, lazy);
        let err = smoke_test(&root, &manifest, &work, &[]).unwrap_err();
        assert!(err.to_string().contains("wrote no"), "{err}");

        // A launcher that cannot be started.
        let manifest = scripted(&root, WORKING);
        let err = smoke_test(&root, &manifest, &work, &["/nonexistent/bwrap".into()]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/bwrap"), "{err}");
    }

    #[test]
    fn rustc_is_started_through_the_bundled_loader() {
        let mut manifest = scripted(tempfile::tempdir().unwrap().path(), WORKING);
        let root = Path::new("/t");
        assert_eq!(
            rustc_command(root, &manifest),
            [OsString::from("/t/bin/rustc")]
        );
        manifest.interpreter = "sys/ld-linux-x86-64.so.2".into();
        manifest.library_path = vec!["lib".into(), "sys".into()];
        assert_eq!(
            rustc_command(root, &manifest),
            [
                "/t/sys/ld-linux-x86-64.so.2",
                "--library-path",
                "/t/lib:/t/sys",
                "/t/bin/rustc"
            ]
            .map(OsString::from)
        );
        let launcher = bwrap_launcher(Path::new("/usr/bin/bwrap"), root, Path::new("/w"));
        let joined = launcher
            .iter()
            .map(|a| a.to_str().unwrap())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(joined.starts_with("/usr/bin/bwrap "), "{joined}");
        for part in [
            "--unshare-all",
            "--die-with-parent",
            "--clearenv",
            "--bind /w /w --ro-bind /t /t",
        ] {
            assert!(joined.contains(part), "{part} missing: {joined}");
        }
        assert!(joined.ends_with(" --"), "{joined}");
    }
}
