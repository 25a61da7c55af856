//! Snapshots of the compiled libraries in a target directory, for checking
//! that a farm build produced the same bytes as a local one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Relative path (under `target/debug/deps`) to file content.
pub type Artifacts = BTreeMap<PathBuf, Vec<u8>>;

/// Reads every `.rlib` and `.rmeta` file under `<target_dir>/debug/deps`.
///
/// Only libraries are compared: binaries and proc-macro `.so` files are
/// linked locally in both builds, and `.d` files name the dep-info only.
pub fn snapshot_artifacts(target_dir: &Path) -> Artifacts {
    let deps = target_dir.join("debug").join("deps");
    let mut artifacts = Artifacts::new();
    collect(&deps, &deps, &mut artifacts);
    artifacts
}

fn collect(root: &Path, dir: &Path, out: &mut Artifacts) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        let path = entry.path();
        let file_type = entry
            .file_type()
            .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()));
        if file_type.is_dir() {
            collect(root, &path, out);
        } else if path
            .extension()
            .is_some_and(|ext| ext == "rlib" || ext == "rmeta")
        {
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let relative = path.strip_prefix(root).expect("collected under root");
            out.insert(relative.to_path_buf(), bytes);
        }
    }
}

/// Lists every difference between two snapshots: files only in one of
/// them, and files whose bytes differ (with their sizes and the first
/// differing offset). Empty when they are identical.
pub fn diff_artifacts(expected: &Artifacts, actual: &Artifacts) -> Vec<String> {
    let mut differences = Vec::new();
    for path in expected.keys().filter(|p| !actual.contains_key(*p)) {
        differences.push(format!("{} is missing", path.display()));
    }
    for path in actual.keys().filter(|p| !expected.contains_key(*p)) {
        differences.push(format!("{} is unexpected", path.display()));
    }
    for (path, want) in expected {
        let Some(got) = actual.get(path) else {
            continue;
        };
        if want != got {
            let offset = want
                .iter()
                .zip(got.iter())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| want.len().min(got.len()));
            differences.push(format!(
                "{} differs: {} bytes expected, {} bytes found, first difference at byte {offset}",
                path.display(),
                want.len(),
                got.len()
            ));
        }
    }
    differences
}

/// Asserts that two snapshots hold the same files with the same bytes,
/// naming the differing files otherwise. An empty snapshot is an error too:
/// comparing nothing with nothing proves nothing.
pub fn compare_artifacts(expected: &Artifacts, actual: &Artifacts) {
    assert!(
        !expected.is_empty(),
        "the expected snapshot has no .rlib or .rmeta files"
    );
    let differences = diff_artifacts(expected, actual);
    assert!(
        differences.is_empty(),
        "{} of {} artifacts differ:\n  {}",
        differences.len(),
        expected.len(),
        differences.join("\n  ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, content: &[u8]) {
        let deps = dir.join("debug").join("deps");
        std::fs::create_dir_all(&deps).unwrap();
        std::fs::write(deps.join(name), content).unwrap();
    }

    #[test]
    fn identical_trees_compare_equal_and_differences_are_named() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for dir in [a.path(), b.path()] {
            write(dir, "libbase-1.rlib", b"rlib bytes");
            write(dir, "libbase-1.rmeta", b"rmeta bytes");
            // Neither of these is a library artifact, so they are not compared.
            write(dir, "base-1.d", dir.to_str().unwrap().as_bytes());
        }
        write(b.path(), "app-2", b"a binary");
        let snap_a = snapshot_artifacts(a.path());
        let snap_b = snapshot_artifacts(b.path());
        assert_eq!(snap_a.len(), 2);
        compare_artifacts(&snap_a, &snap_b);

        write(b.path(), "libbase-1.rlib", b"rlib bytez");
        write(b.path(), "libextra-3.rmeta", b"");
        let snap_b = snapshot_artifacts(b.path());
        let differences = diff_artifacts(&snap_a, &snap_b);
        assert_eq!(differences.len(), 2, "{differences:?}");
        assert!(differences[0].contains("libextra-3.rmeta is unexpected"));
        assert!(differences[1].contains("libbase-1.rlib differs"));
        assert!(differences[1].contains("first difference at byte 9"));

        let failure = std::panic::catch_unwind(|| compare_artifacts(&snap_a, &snap_b))
            .expect_err("different snapshots do not compare equal");
        let message = failure.downcast_ref::<String>().unwrap();
        assert!(message.contains("libbase-1.rlib"), "{message}");
    }
}
