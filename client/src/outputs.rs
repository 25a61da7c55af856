//! Where a node may write on the client.
//!
//! A node names each output file by its absolute path. The client writes it
//! only if it lies directly in one of the output directories the job
//! declared, so a faulty or hostile node cannot overwrite anything else, and
//! writes it atomically (temporary file, then rename), so cargo never sees a
//! half-written `.rmeta` or `.rlib`.

use std::path::{Component, Path, PathBuf};

use crate::argv::{CompileJob, EmitKind};

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
