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
        let policy = OutputPolicy::new(vec![PathBuf::from("/p/target/debug/deps")]);
        assert!(policy.check("/p/target/debug/deps/libx-1.rlib").is_ok());
        for bad in [
            "/p/target/debug/deps/../../../../etc/passwd",
            "/p/target/debug/deps/sub/libx.rlib",
            "/p/target/debug/libx.rlib",
            "relative/libx.rlib",
            "/p/target/debug/deps",
            "/etc/passwd",
        ] {
            assert!(policy.check(bad).is_err(), "{bad} must be refused");
        }
    }
}
