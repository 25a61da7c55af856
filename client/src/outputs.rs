//! Where a node may write on the client.
//!
//! A node names each output file by its absolute path. The client writes it
//! only if it lies directly in one of the output directories the job
//! declared, so a faulty or hostile node cannot overwrite anything else, and
//! writes it atomically (temporary file, then rename), so cargo never sees a
//! half-written `.rmeta` or `.rlib`. What a node may send back for one job
//! is bounded too ([`OutputLimits`]), so a hostile node can neither fill this
//! machine's disk nor its memory.

use std::path::{Component, Path, PathBuf};

use distcc_rs_proto::message::JobEvent;

use crate::argv::{CompileJob, EmitKind};

/// The most bytes of output files one job may write here, all files
/// together, unless the `max_output_size` setting says otherwise.
pub const DEFAULT_MAX_OUTPUT_SIZE: u64 = 4 << 30;

/// The most bytes one output file may have: the node refuses larger inputs
/// (`node/src/manifest.rs`), so a larger output could not be the input of
/// a dependent compile on the farm anyway.
pub const MAX_OUTPUT_FILE_SIZE: u64 = 4 << 30;

/// The most output files one job may write. A compile writes a handful
/// (`.d`, `.rmeta`, `.rlib`, `.a`); every file in the job's output
/// directories that is not an input comes back, so a proc-macro that
/// writes files there adds to them.
pub const MAX_OUTPUT_FILES: usize = 256;

/// The most bytes of rustc's stdout the client keeps for one job (on disk
/// past a few MiB, until rustc exits); the node sends at most 16 MiB.
pub const MAX_STDOUT: u64 = 16 << 20;

/// The most bytes of rustc's stderr one job may send. The client keeps
/// every line it forwarded in memory (a retry or the local rerun must not
/// show it again); a crate with thousands of warnings writes a few tens of
/// MiB of JSON diagnostics.
pub const MAX_STDERR: u64 = 256 << 20;

/// Bounds on what a node may send back for one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// All output files together, in bytes.
    pub max_total_size: u64,
    /// One output file, in bytes.
    pub max_file_size: u64,
    pub max_files: usize,
    pub max_stdout: u64,
    pub max_stderr: u64,
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits {
            max_total_size: DEFAULT_MAX_OUTPUT_SIZE,
            max_file_size: MAX_OUTPUT_FILE_SIZE,
            max_files: MAX_OUTPUT_FILES,
            max_stdout: MAX_STDOUT,
            max_stderr: MAX_STDERR,
        }
    }
}

/// A node sent more than [`OutputLimits`] allow. The job is a farm
/// failure: another node or the local rustc compiles it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} exceeds the limit ({got} > {limit})")]
pub struct OverLimit {
    pub what: String,
    pub got: u64,
    pub limit: u64,
}

/// What one farm attempt received so far, against its [`OutputLimits`].
#[derive(Debug, Clone)]
pub struct OutputBudget {
    limits: OutputLimits,
    files: usize,
    bytes: u64,
    stdout: u64,
    stderr: u64,
}

impl OutputBudget {
    pub fn new(limits: OutputLimits) -> Self {
        OutputBudget {
            limits,
            files: 0,
            bytes: 0,
            stdout: 0,
            stderr: 0,
        }
    }

    /// Counts one event of the job stream, before anything of it is
    /// written or kept. An output is counted at the size its header
    /// declares, before its temporary file exists; the client then refuses
    /// to receive more than that size (`recv_compressed`'s limit), so a
    /// refused output leaves nothing behind and an admitted one cannot
    /// grow past what was counted.
    pub fn admit(&mut self, event: &JobEvent) -> Result<(), OverLimit> {
        let over = |what: String, got: u64, limit: u64| {
            if got > limit {
                Err(OverLimit { what, got, limit })
            } else {
                Ok(())
            }
        };
        match event {
            JobEvent::Output(header) => {
                over(
                    format!("the size of output {}", header.path),
                    header.size,
                    self.limits.max_file_size,
                )?;
                let files = self.files + 1;
                over(
                    "the number of output files".into(),
                    files as u64,
                    self.limits.max_files as u64,
                )?;
                let bytes = self.bytes.saturating_add(header.size);
                over(
                    "the total size of the outputs".into(),
                    bytes,
                    self.limits.max_total_size,
                )?;
                (self.files, self.bytes) = (files, bytes);
            }
            JobEvent::Stdout(bytes) => {
                self.stdout += bytes.len() as u64;
                over("rustc's stdout".into(), self.stdout, self.limits.max_stdout)?;
            }
            JobEvent::Stderr(bytes) => {
                self.stderr += bytes.len() as u64;
                over("rustc's stderr".into(), self.stderr, self.limits.max_stderr)?;
            }
            JobEvent::Running | JobEvent::Exited { .. } | JobEvent::Failed(_) => {}
        }
        Ok(())
    }
}

/// The output directories of one job.
#[derive(Debug, Clone)]
pub struct OutputPolicy {
    dirs: Vec<PathBuf>,
}

/// Why an output path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the node sent an output at {0:?}, outside the job's output directories")]
pub struct OutsideOutputs(pub String);

impl OutputPolicy {
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        OutputPolicy { dirs }
    }

    /// Checks a path a node sent and returns it as a local path.
    pub fn check(&self, path: &str) -> Result<PathBuf, OutsideOutputs> {
        let p = Path::new(path);
        let refuse = || OutsideOutputs(path.to_owned());
        if !p.is_absolute()
            || p.components()
                .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
        {
            return Err(refuse());
        }
        let parent = p.parent().ok_or_else(refuse)?;
        if p.file_name().is_none() || !self.dirs.iter().any(|d| d == parent) {
            return Err(refuse());
        }
        Ok(p.to_path_buf())
    }
}

/// Creates the temporary file an output is received into, in the
/// directory the output goes to, so that [`install`] is an atomic rename
/// within one file system. It is private (0600) until installed.
pub fn temp_file_in(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(".distcc-rs-")
        .tempfile_in(dir)
}

/// Gives a received output rustc's mode and renames it to `local`, a path
/// [`OutputPolicy::check`] accepted. The rename replaces whatever entry is
/// at `local` without following it: a symlink left in an output directory
/// is replaced, never written through.
pub fn install(
    tmp: tempfile::NamedTempFile,
    local: &Path,
    executable: bool,
) -> Result<(), tempfile::PersistError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if executable { 0o755 } else { 0o644 };
    let _ = tmp
        .as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode));
    tmp.persist(local).map(drop)
}

/// The files a successful compile of `job` must have written, so that a
/// node reporting success without them is caught before cargo is. Empty
/// when `-o` is given, whose naming rules are rustc's business.
pub fn expected(job: &CompileJob, cwd: &Path) -> Vec<PathBuf> {
    if job.output_file.is_some() {
        return Vec::new();
    }
    let dir = job
        .out_dir
        .as_deref()
        .map_or_else(|| cwd.to_path_buf(), |d| cwd.join(d));
    let stem = format!("{}{}", job.crate_name, job.extra_filename);
    let mut out = Vec::new();
    for emit in &job.emit {
        match emit {
            EmitKind::DepInfo(Some(p)) | EmitKind::Metadata(Some(p)) | EmitKind::Link(Some(p)) => {
                out.push(cwd.join(p));
            }
            EmitKind::DepInfo(None) => out.push(dir.join(format!("{stem}.d"))),
            EmitKind::Metadata(None) => out.push(dir.join(format!("lib{stem}.rmeta"))),
            EmitKind::Link(None) => {
                for ty in &job.crate_types {
                    let ext = if ty == "staticlib" { "a" } else { "rlib" };
                    out.push(dir.join(format!("lib{stem}.{ext}")));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::argv::{Classification, classify};

    fn job(args: &str) -> CompileJob {
        let args: Vec<String> = args.split_whitespace().map(String::from).collect();
        match classify(&args) {
            Classification::Distribute(job) => job,
            Classification::Local(r) => panic!("{r}"),
        }
    }

    #[test]
    fn expected_outputs_follow_rustcs_naming() {
        let cwd = Path::new("/p");
        let lib = job(
            "--crate-name foo --edition=2021 src/lib.rs --crate-type lib \
                       --emit=dep-info,metadata,link -C extra-filename=-abc --out-dir /p/target/deps",
        );
        let names: Vec<String> = expected(&lib, cwd)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "/p/target/deps/foo-abc.d",
                "/p/target/deps/libfoo-abc.rlib",
                "/p/target/deps/libfoo-abc.rmeta"
            ]
        );
        let check = job(
            "--crate-name foo src/lib.rs --crate-type lib --emit=dep-info,metadata \
                         -C extra-filename=-abc --out-dir /p/target/deps",
        );
        assert_eq!(expected(&check, cwd).len(), 2);
        let stat =
            job("--crate-name foo src/lib.rs --crate-type staticlib --emit=link --out-dir out");
        assert_eq!(expected(&stat, cwd), [PathBuf::from("/p/out/libfoo.a")]);
        let named = job("--crate-name foo src/lib.rs --crate-type lib -o /p/x.rlib");
        assert!(expected(&named, cwd).is_empty());
    }

    #[test]
    fn only_files_directly_in_output_dirs_pass() {
        let policy = OutputPolicy::new(vec![
            PathBuf::from("/p/target/debug/deps"),
            PathBuf::from("/p/out"),
        ]);
        for good in [
            "/p/target/debug/deps/libx-1.rlib",
            "/p/out/..x",
            "/p/out/.d",
        ] {
            let local = policy.check(good).unwrap();
            assert_eq!(local, Path::new(good));
        }
        for bad in [
            "/p/target/debug/deps/../../../../etc/passwd",
            "/p/target/debug/deps/..",
            "/p/target/debug/deps/sub/libx.rlib",
            "/p/target/debug/deps/sub/../libx.rlib",
            "/p/target/debug/libx.rlib",
            "/p/target/debug/deps2/libx.rlib",
            "/p/target/debug/dep/libx.rlib",
            "relative/libx.rlib",
            "./libx.rlib",
            "../libx.rlib",
            "/p/target/debug/deps",
            "/p/target/debug/deps/",
            "/p/out",
            "/etc/passwd",
            "/",
            "",
        ] {
            let err = policy.check(bad).unwrap_err();
            assert_eq!(err, OutsideOutputs(bad.to_owned()));
            assert!(err.to_string().contains(bad), "{err}");
        }
        // Repeated slashes and `.` are accepted: they name the same place,
        // directly in an output directory.
        for odd in [
            "/p/out/./libx.rlib",
            "/p//out/libx.rlib",
            "/p/out//libx.rlib",
        ] {
            let local = policy.check(odd).unwrap();
            assert_eq!(local.parent(), Some(Path::new("/p/out")), "{odd}");
        }
    }

    fn output(path: &str, size: u64) -> JobEvent {
        JobEvent::Output(distcc_rs_proto::message::OutputHeader {
            path: path.into(),
            size,
            executable: false,
        })
    }

    fn small() -> OutputLimits {
        OutputLimits {
            max_total_size: 100,
            max_file_size: 60,
            max_files: 3,
            max_stdout: 10,
            max_stderr: 20,
        }
    }

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let d = OutputLimits::default();
        assert_eq!(d.max_total_size, 4 << 30);
        assert_eq!(d.max_file_size, 4 << 30);
        assert_eq!(d.max_files, 256);
        assert_eq!(d.max_stdout, 16 << 20);
        assert_eq!(d.max_stderr, 256 << 20);
    }

    #[test]
    fn one_output_file_may_not_exceed_its_limit() {
        let mut b = OutputBudget::new(small());
        b.admit(&output("/o/a", 60)).unwrap();
        let err = b.admit(&output("/o/b", 61)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the size of output /o/b exceeds the limit (61 > 60)"
        );
        // A file declared huge is refused from its header alone.
        assert!(b.admit(&output("/o/c", u64::MAX)).is_err());
    }

    #[test]
    fn all_output_files_together_may_not_exceed_the_total_limit() {
        let mut b = OutputBudget::new(small());
        b.admit(&output("/o/a", 50)).unwrap();
        b.admit(&output("/o/b", 50)).unwrap();
        let err = b.admit(&output("/o/c", 1)).unwrap_err();
        assert_eq!(
            err,
            OverLimit {
                what: "the total size of the outputs".into(),
                got: 101,
                limit: 100
            }
        );
        // Empty files still count against the number of files.
        let mut b = OutputBudget::new(small());
        for name in ["/o/a", "/o/b", "/o/c"] {
            b.admit(&output(name, 0)).unwrap();
        }
        let err = b.admit(&output("/o/d", 0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the number of output files exceeds the limit (4 > 3)"
        );
    }

    #[test]
    fn stdout_and_stderr_have_limits_of_their_own() {
        let mut b = OutputBudget::new(small());
        b.admit(&JobEvent::Stdout(vec![0; 10])).unwrap();
        b.admit(&JobEvent::Stderr(vec![0; 20])).unwrap();
        b.admit(&JobEvent::Running).unwrap();
        b.admit(&JobEvent::Exited { code: 0 }).unwrap();
        let err = b.admit(&JobEvent::Stdout(vec![0; 1])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rustc's stdout exceeds the limit (11 > 10)"
        );
        let err = b.admit(&JobEvent::Stderr(vec![0; 1])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rustc's stderr exceeds the limit (21 > 20)"
        );
    }

    /// What a node can do with the names it picks, played against the real
    /// write path: a name that is a symlink planted in the output directory
    /// (by an earlier build, a build script or anyone) is replaced, not
    /// followed, and a name that is a directory is not written at all.
    #[test]
    fn writing_an_output_never_touches_anything_outside_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("target/deps");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(outside.join("sub")).unwrap();
        std::fs::write(outside.join("secret"), b"keep me").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), out.join("abs.rlib")).unwrap();
        std::os::unix::fs::symlink("../../outside/secret", out.join("rel.rlib")).unwrap();
        std::os::unix::fs::symlink(outside.join("sub"), out.join("dirlink")).unwrap();
        std::fs::create_dir(out.join("adir")).unwrap();
        std::fs::write(out.join("adir/inner"), b"inner").unwrap();
        let policy = OutputPolicy::new(vec![out.clone()]);

        let write = |name: &str, executable: bool| {
            let path = out.join(name).to_str().unwrap().to_owned();
            let local = policy.check(&path).unwrap();
            let mut tmp = temp_file_in(local.parent().unwrap()).unwrap();
            std::io::Write::write_all(&mut tmp, b"from the node").unwrap();
            install(tmp, &local, executable).map(|()| local)
        };
        for name in ["abs.rlib", "rel.rlib", "dirlink", "new.rlib"] {
            let local = write(name, false).unwrap();
            let meta = std::fs::symlink_metadata(&local).unwrap();
            assert!(meta.is_file(), "{name} is still a link");
            assert_eq!(std::fs::read(&local).unwrap(), b"from the node");
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        }
        assert!(write("adir", true).is_err());
        assert_eq!(std::fs::read(out.join("adir/inner")).unwrap(), b"inner");

        assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"keep me");
        assert_eq!(std::fs::read_dir(outside.join("sub")).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 2);
        // No temporary file is left behind, even by the failed write.
        let mut names: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["abs.rlib", "adir", "dirlink", "new.rlib", "rel.rlib"]
        );
    }
}
