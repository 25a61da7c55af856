//! The package directory: files a compile may read without telling anyone.
//!
//! rustc's dep-info lists what the compiler reads, but not what proc-macros
//! read (`std::fs::read` relative to `CARGO_MANIFEST_DIR`: templates, SQL
//! schemas, test tables). Shipping the package's whole directory covers
//! them. Build output (any directory marked with cargo's `CACHEDIR.TAG`) and
//! version-control metadata are left out, and a package too large to ship is
//! reported so the caller can compile locally rather than guess.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Bounds on what is shipped from one package directory.
#[derive(Debug, Clone, Copy)]
pub struct PackageLimits {
    pub max_files: usize,
    pub max_bytes: u64,
}

impl Default for PackageLimits {
    fn default() -> Self {
        PackageLimits {
            max_files: 20_000,
            max_bytes: 256 << 20,
        }
    }
}

/// Why the package directory cannot be shipped.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("the package directory {dir} holds more than {limit} files")]
    TooManyFiles { dir: PathBuf, limit: usize },
    #[error("the package directory {dir} holds more than {limit} bytes")]
    TooLarge { dir: PathBuf, limit: u64 },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Directory names never shipped: version control metadata.
const SKIPPED_DIRS: &[&str] = &[".git", ".hg", ".svn", ".jj"];

/// Lists every regular file under `dir` (following file symlinks, not
/// directory symlinks), sorted.
pub fn files(dir: &Path, limits: PackageLimits) -> Result<Vec<PathBuf>, PackageError> {
    let mut out = Vec::new();
    let mut bytes = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackageError::Io { path, source }
    };
    while let Some(d) = stack.pop() {
        // Cargo marks every target directory with this file.
        if d.join("CACHEDIR.TAG").exists() {
            continue;
        }
        for entry in fs::read_dir(&d).map_err(io_err(&d))? {
            let entry = entry.map_err(io_err(&d))?;
            let path = entry.path();
            let ty = entry.file_type().map_err(io_err(&path))?;
            if ty.is_dir() {
                if !SKIPPED_DIRS.iter().any(|s| entry.file_name() == *s) {
                    stack.push(path);
                }
                continue;
            }
            // A symlink counts if it leads to a regular file; its content
            // is shipped under the link's own path.
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            bytes += meta.len();
            out.push(path);
            if out.len() > limits.max_files {
                return Err(PackageError::TooManyFiles {
                    dir: dir.to_path_buf(),
                    limit: limits.max_files,
                });
            }
            if bytes > limits.max_bytes {
                return Err(PackageError::TooLarge {
                    dir: dir.to_path_buf(),
                    limit: limits.max_bytes,
                });
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ships_sources_and_data_but_not_build_output_or_vcs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        for f in [
            "Cargo.toml",
            "src/lib.rs",
            "data/table.txt",
            "target/debug/libx.rlib",
            ".git/HEAD",
        ] {
            fs::create_dir_all(p.join(f).parent().unwrap()).unwrap();
            fs::write(p.join(f), b"x").unwrap();
        }
        fs::write(
            p.join("target/CACHEDIR.TAG"),
            b"Signature: 8a477f597d28d172789f06886806bc55",
        )
        .unwrap();
        std::os::unix::fs::symlink(p.join("data/table.txt"), p.join("link.txt")).unwrap();
        std::os::unix::fs::symlink(p.join("data"), p.join("datalink")).unwrap();
        let got: Vec<String> = files(p, PackageLimits::default())
            .unwrap()
            .iter()
            .map(|f| f.strip_prefix(p).unwrap().display().to_string())
            .collect();
        assert_eq!(
            got,
            ["Cargo.toml", "data/table.txt", "link.txt", "src/lib.rs"]
        );
    }

    #[test]
    fn oversized_packages_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..5 {
            fs::write(dir.path().join(format!("f{i}")), vec![0u8; 100]).unwrap();
        }
        let few = PackageLimits {
            max_files: 3,
            max_bytes: u64::MAX,
        };
        assert!(matches!(
            files(dir.path(), few),
            Err(PackageError::TooManyFiles { .. })
        ));
        let small = PackageLimits {
            max_files: 100,
            max_bytes: 250,
        };
        assert!(matches!(
            files(dir.path(), small),
            Err(PackageError::TooLarge { .. })
        ));
    }
}
