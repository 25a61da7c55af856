//! Validation of job requests.
//!
//! A job request comes from a client over the network and names absolute
//! paths that the node recreates on its own disk. Everything in it is
//! checked here, as a pure function of the request, before any file is
//! touched: paths are absolute, normalised, free of `..`, outside the
//! kernel's pseudo file systems, and sizes are bounded.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use distcc_rs_proto::message::{FileEntry, JobRequest};

/// Limits on what one job may ask for.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_files: usize,
    pub max_file_size: u64,
    pub max_total_size: u64,
    pub max_args: usize,
    pub max_env: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_files: 100_000,
            max_file_size: 4 << 30,
            max_total_size: 32 << 30,
            max_args: 100_000,
            max_env: 10_000,
        }
    }
}

/// Why a request is refused. The message goes back to the client verbatim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("path {0:?} is not absolute")]
    NotAbsolute(String),
    #[error("path {0:?} contains `..` or `.` components or is not normalised")]
    NotNormal(String),
    #[error("path {0:?} lies in a directory the sandbox reserves")]
    Reserved(String),
    #[error("path {0:?} is listed twice")]
    Duplicate(String),
    #[error("path {0:?} is both a file and a directory")]
    FileIsDirectory(String),
    #[error("{what} exceeds the limit ({got} > {limit})")]
    TooLarge {
        what: &'static str,
        got: u64,
        limit: u64,
    },
    #[error("the working directory {0:?} is not listed as a directory")]
    CwdMissing(String),
    #[error("environment variable {0:?} has an invalid name or value")]
    BadEnv(String),
    #[error("argument {0:?} contains a NUL byte")]
    BadArg(String),
}

/// Directories the sandbox mounts itself. A client path under one of them
/// would be hidden by the mount or would shadow the toolchain.
const RESERVED: &[&str] = &["/proc", "/dev", "/sys", "/.distcc-rs"];

/// Checks one path and returns it as a relative path, ready to be joined to
/// a job root. Only `Normal` components survive, so the joined path cannot
/// leave the root lexically; symlinks cannot redirect it either, because the
/// node creates every directory and file of a job root itself.
pub fn relative_to_root(path: &str) -> Result<PathBuf, ManifestError> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(ManifestError::NotAbsolute(path.to_owned()));
    }
    let mut rel = PathBuf::new();
    for comp in p.components() {
        match comp {
            Component::RootDir => {}
            Component::Normal(c) => rel.push(c),
            _ => return Err(ManifestError::NotNormal(path.to_owned())),
        }
    }
    // `Path::components` silently drops `.` and repeated slashes; a request
    // containing them was not produced by our client, so refuse it.
    if p.to_str() != Some(&format!("/{}", rel.display())) && path != "/" {
        return Err(ManifestError::NotNormal(path.to_owned()));
    }
    if RESERVED.iter().any(|r| p.starts_with(r)) {
        return Err(ManifestError::Reserved(path.to_owned()));
    }
    Ok(rel)
}

/// A request whose paths and sizes have been checked.
#[derive(Debug)]
pub struct ValidJob<'a> {
    pub request: &'a JobRequest,
    /// Each input with its path relative to the job root.
    pub files: Vec<(&'a FileEntry, PathBuf)>,
    /// Directories relative to the job root.
    pub dirs: Vec<PathBuf>,
    pub output_dirs: Vec<PathBuf>,
    pub total_size: u64,
}

/// Validates a whole job request against `limits`.
pub fn validate<'a>(req: &'a JobRequest, limits: &Limits) -> Result<ValidJob<'a>, ManifestError> {
    let bound = |what, got: usize, limit: usize| {
        if got > limit {
            Err(ManifestError::TooLarge {
                what,
                got: got as u64,
                limit: limit as u64,
            })
        } else {
            Ok(())
        }
    };
    bound("file count", req.files.len(), limits.max_files)?;
    bound("argument count", req.args.len(), limits.max_args)?;
    bound("environment size", req.env.len(), limits.max_env)?;

    for (k, v) in &req.env {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return Err(ManifestError::BadEnv(k.clone()));
        }
    }
    if let Some(a) = req.args.iter().find(|a| a.contains('\0')) {
        return Err(ManifestError::BadArg(a.clone()));
    }
    let mut seen = HashSet::new();
    let mut files = Vec::with_capacity(req.files.len());
    let mut total = 0u64;
    for f in &req.files {
        if f.size > limits.max_file_size {
            return Err(ManifestError::TooLarge {
                what: "file size",
                got: f.size,
                limit: limits.max_file_size,
            });
        }
        total += f.size;
        let rel = relative_to_root(&f.path)?;
        if !seen.insert(rel.clone()) {
            return Err(ManifestError::Duplicate(f.path.clone()));
        }
        files.push((f, rel));
    }
    if total > limits.max_total_size {
        return Err(ManifestError::TooLarge {
            what: "total input size",
            got: total,
            limit: limits.max_total_size,
        });
    }
    let dirs = req
        .dirs
        .iter()
        .map(|d| relative_to_root(d))
        .collect::<Result<Vec<_>, _>>()?;
    for (d, raw) in dirs.iter().zip(&req.dirs) {
        if seen.contains(d) {
            return Err(ManifestError::FileIsDirectory(raw.clone()));
        }
    }
    let output_dirs = req
        .output_dirs
        .iter()
        .map(|d| relative_to_root(d))
        .collect::<Result<Vec<_>, _>>()?;
    let cwd = relative_to_root(&req.cwd)?;
    if !dirs.contains(&cwd) {
        return Err(ManifestError::CwdMissing(req.cwd.clone()));
    }
    // A file may not sit where another entry needs a directory.
    for (f, rel) in &files {
        if rel.ancestors().skip(1).any(|a| seen.contains(a)) {
            return Err(ManifestError::FileIsDirectory(f.path.clone()));
        }
    }
    Ok(ValidJob {
        request: req,
        files,
        dirs,
        output_dirs,
        total_size: total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use distcc_rs_proto::{Digest, JobId, NodeId, Ticket, ToolchainId};

    fn entry(path: &str, size: u64) -> FileEntry {
        FileEntry {
            path: path.into(),
            digest: Digest([0; 32]),
            size,
            executable: false,
        }
    }

    fn request(files: Vec<FileEntry>) -> JobRequest {
        JobRequest {
            ticket: Ticket {
                job: JobId(1),
                node: NodeId(1),
                toolchain: ToolchainId(Digest([0; 32])),
                mac: [0; 32],
            },
            crate_name: "c".into(),
            args: vec![],
            env: vec![],
            cwd: "/w".into(),
            files,
            dirs: vec!["/w".into(), "/w/target".into()],
            output_dirs: vec!["/w/target".into()],
        }
    }

    #[test]
    fn paths_are_checked() {
        let cases: &[(&str, Result<&str, ()>)] = &[
            ("/home/u/p/src/lib.rs", Ok("home/u/p/src/lib.rs")),
            ("relative/x.rs", Err(())),
            ("/home/u/../../etc/shadow", Err(())),
            ("/home/./u", Err(())),
            ("/home//u", Err(())),
            ("/proc/self/environ", Err(())),
            ("/dev/sda", Err(())),
            ("/.distcc-rs/toolchain/bin/rustc", Err(())),
            ("/procfs/ok", Ok("procfs/ok")),
        ];
        for (input, want) in cases {
            let got = relative_to_root(input);
            match want {
                Ok(rel) => assert_eq!(got.as_deref(), Ok(Path::new(rel)), "{input}"),
                Err(()) => assert!(got.is_err(), "{input} should be refused, got {got:?}"),
            }
        }
    }

    #[test]
    fn a_sound_request_validates() {
        let req = request(vec![
            entry("/w/src/lib.rs", 10),
            entry("/w/target/libx.rmeta", 5),
        ]);
        let v = validate(&req, &Limits::default()).unwrap();
        assert_eq!(v.files.len(), 2);
        assert_eq!(v.total_size, 15);
        assert_eq!(v.output_dirs, vec![PathBuf::from("w/target")]);
    }

    #[test]
    fn hostile_requests_are_refused() {
        let dup = request(vec![entry("/w/a", 1), entry("/w/a", 1)]);
        assert!(matches!(
            validate(&dup, &Limits::default()),
            Err(ManifestError::Duplicate(_))
        ));

        let escape = request(vec![entry("/w/../etc/passwd", 1)]);
        assert!(matches!(
            validate(&escape, &Limits::default()),
            Err(ManifestError::NotNormal(_))
        ));

        let huge = request(vec![entry("/w/a", 10 << 30)]);
        let limits = Limits {
            max_file_size: 1 << 30,
            ..Limits::default()
        };
        assert!(matches!(
            validate(&huge, &limits),
            Err(ManifestError::TooLarge { .. })
        ));

        let file_as_dir = request(vec![entry("/w/target", 1)]);
        assert!(matches!(
            validate(&file_as_dir, &Limits::default()),
            Err(ManifestError::FileIsDirectory(_))
        ));

        let nested = request(vec![entry("/w/a", 1), entry("/w/a/b", 1)]);
        assert!(matches!(
            validate(&nested, &Limits::default()),
            Err(ManifestError::FileIsDirectory(_))
        ));

        let mut bad_env = request(vec![]);
        bad_env.env = vec![("A=B".into(), "x".into())];
        assert!(matches!(
            validate(&bad_env, &Limits::default()),
            Err(ManifestError::BadEnv(_))
        ));
        bad_env.env = vec![("A".into(), "x\0y".into())];
        assert!(matches!(
            validate(&bad_env, &Limits::default()),
            Err(ManifestError::BadEnv(_))
        ));

        let mut no_cwd = request(vec![]);
        no_cwd.cwd = "/elsewhere".into();
        assert!(matches!(
            validate(&no_cwd, &Limits::default()),
            Err(ManifestError::CwdMissing(_))
        ));
    }
}
