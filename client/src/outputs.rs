//! Where a node may write on the client.
//!
//! A node names each output file by its absolute path. The client writes it
//! only if it lies directly in one of the output directories the job
//! declared, so a faulty or hostile node cannot overwrite anything else, and
//! writes it atomically (temporary file, then rename), so cargo never sees a
//! half-written `.rmeta` or `.rlib`.

use std::path::{Component, Path, PathBuf};

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

#[cfg(test)]
mod tests {
    use super::*;

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
