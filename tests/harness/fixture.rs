//! Fresh copies of the fixture workspaces in `tests/fixtures/`.
//!
//! A test builds its copy twice, once locally and once through the farm, in
//! the same place: byte-identical artifacts need identical absolute paths.

use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// Set to keep fixture copies (and the daemons' logs in them) after the run.
pub const KEEP_VAR: &str = "DISTCC_RS_E2E_KEEP";

/// The fixtures in the source tree.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A copy of one fixture in a temporary directory, removed when dropped
/// unless `DISTCC_RS_E2E_KEEP` is set.
///
/// The temporary directory holds two things side by side: `<name>/`, the
/// cargo workspace, and `scratch/`, for the scheduler's and nodes' state and
/// the client's logs. Keeping those outside the workspace means nothing the
/// farm writes during a build can end up among the build's inputs.
#[derive(Debug)]
pub struct Fixture {
    dir: Option<TempDir>,
    root: PathBuf,
    scratch: PathBuf,
}

impl Fixture {
    /// The cargo workspace of the copy.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A directory for daemons and logs, beside the workspace.
    pub fn scratch(&self) -> &Path {
        &self.scratch
    }

    /// The copy's cargo target directory (`cargo_build` uses it).
    pub fn target_dir(&self) -> PathBuf {
        self.root.join("target")
    }

    /// Removes the target directory, as `cargo clean` would.
    pub fn clean(&self) {
        let target = self.target_dir();
        match std::fs::remove_dir_all(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot remove {}: {e}", target.display()),
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        if std::env::var_os(KEEP_VAR).is_some() {
            eprintln!("kept fixture copy at {}", dir.keep().display());
        } else if std::thread::panicking() {
            eprintln!(
                "removing fixture copy at {} (set {KEEP_VAR}=1 to keep it)",
                dir.path().display()
            );
        }
    }
}

/// Copies `tests/fixtures/<name>` (without any `target/` in it) to a fresh
/// temporary directory.
pub fn copy_fixture(name: &str) -> Fixture {
    let source = fixtures_dir().join(name);
    assert!(source.is_dir(), "no fixture at {}", source.display());
    let dir = tempfile::Builder::new()
        .prefix(&format!("distcc-rs-e2e-{name}-"))
        .tempdir()
        .expect("create a temporary directory");
    let root = dir.path().join(name);
    let scratch = dir.path().join("scratch");
    copy_tree(&source, &root);
    std::fs::create_dir(&scratch)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", scratch.display()));
    Fixture {
        dir: Some(dir),
        root,
        scratch,
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("cannot create {}: {e}", to.display()));
    let entries =
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("cannot list {}: {e}", from.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", from.display()));
        let path = entry.path();
        let file_type = entry
            .file_type()
            .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()));
        let dest = to.join(entry.file_name());
        if file_type.is_dir() {
            // A developer may have built a fixture in place; its output is
            // not part of the fixture.
            if entry.file_name() != "target" {
                copy_tree(&path, &dest);
            }
        } else if file_type.is_file() {
            std::fs::copy(&path, &dest).unwrap_or_else(|e| {
                panic!("cannot copy {} to {}: {e}", path.display(), dest.display())
            });
        } else {
            panic!(
                "fixtures hold only files and directories: {}",
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_a_fixture_without_its_target_dir() {
        let fixture = copy_fixture("broken");
        assert!(fixture.root().join("Cargo.toml").is_file());
        assert!(fixture.root().join("src/lib.rs").is_file());
        assert!(!fixture.target_dir().exists());
        assert!(fixture.scratch().is_dir());
        let path = fixture.root().to_path_buf();
        drop(fixture);
        assert!(!path.exists() || std::env::var_os(KEEP_VAR).is_some());
    }
}
