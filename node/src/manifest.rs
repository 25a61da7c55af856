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
    /// Directories to create (`dirs`); each is a directory in the job root.
    pub max_dirs: usize,
    /// Output directories; each is a writable bind mount in the sandbox and
    /// a directory whose files go back to the client. A compile has one or
    /// two.
    pub max_output_dirs: usize,
    /// Bytes in one path: Linux's `PATH_MAX`, past which no file could be
    /// opened by its path anyway.
    pub max_path_len: usize,
    /// Components of one path. The checks for files beneath files walk
    /// every ancestor of every path, so a request of deep paths would cost
    /// time quadratic in their length; real paths are a few dozen deep.
    pub max_path_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_files: 100_000,
            max_file_size: 4 << 30,
            max_total_size: 32 << 30,
            max_args: 100_000,
            max_env: 10_000,
            max_dirs: 100_000,
            max_output_dirs: 64,
            max_path_len: 4096,
            max_path_depth: 256,
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
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
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
    // No file system takes one, and bubblewrap's command line cannot carry
    // one: refused here rather than half-way through building the job root.
    if path.contains('\0') {
        return Err(ManifestError::Nul(path.to_owned()));
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
    bound("directory count", req.dirs.len(), limits.max_dirs)?;
    bound(
        "output directory count",
        req.output_dirs.len(),
        limits.max_output_dirs,
    )?;
    // Every path is bounded before anything walks it.
    for path in req
        .files
        .iter()
        .map(|f| &f.path)
        .chain(&req.dirs)
        .chain(&req.output_dirs)
        .chain([&req.cwd])
    {
        bound("path length", path.len(), limits.max_path_len)?;
        let depth = path.bytes().filter(|&b| b == b'/').count();
        bound("path depth", depth, limits.max_path_depth)?;
    }

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
        // `/` is the job root itself, which is always a directory.
        if rel.as_os_str().is_empty() {
            return Err(ManifestError::FileIsDirectory(f.path.clone()));
        }
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
    let output_dirs = req
        .output_dirs
        .iter()
        .map(|d| relative_to_root(d))
        .collect::<Result<Vec<_>, _>>()?;
    // A directory may neither be a file nor lie beneath one: the node would
    // fail half-way through building the job root instead of refusing the
    // request up front.
    for (d, raw) in dirs
        .iter()
        .zip(&req.dirs)
        .chain(output_dirs.iter().zip(&req.output_dirs))
    {
        if d.ancestors().any(|a| seen.contains(a)) {
            return Err(ManifestError::FileIsDirectory(raw.clone()));
        }
    }
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
    use distcc_rs_proto::{CertFingerprint, Digest, JobId, NodeId, Ticket, ToolchainId};

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
                client: CertFingerprint([0; 32]),
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

    /// A request a client could send, before a case makes it hostile.
    fn sound() -> JobRequest {
        let mut req = request(vec![
            entry("/w/src/lib.rs", 10),
            entry("/w/target/libdep.rmeta", 5),
        ]);
        req.args = vec!["--crate-name".into(), "c".into()];
        req.env = vec![("CARGO_PKG_NAME".into(), "c".into())];
        req
    }

    type Edit = fn(&mut JobRequest);
    type Kind = fn(&ManifestError) -> bool;

    #[test]
    fn hostile_requests_are_refused_with_a_clear_error() {
        let small = Limits {
            max_files: 3,
            max_file_size: 100,
            max_total_size: 150,
            max_args: 3,
            max_env: 2,
            max_dirs: 3,
            max_output_dirs: 2,
            max_path_len: 40,
            max_path_depth: 7,
        };
        // What the case changes, the kind of refusal, and what the message
        // must name so the client's log says what was wrong.
        let cases: &[(Edit, Kind, &str)] = &[
            // `..` anywhere, in every field that holds a path.
            (
                |r| r.files[0].path = "/w/../etc/passwd".into(),
                |e| matches!(e, ManifestError::NotNormal(_)),
                "/w/../etc/passwd",
            ),
            (
                |r| r.files[0].path = "/w/src/..".into(),
                |e| matches!(e, ManifestError::NotNormal(_)),
                "/w/src/..",
            ),
            (
                |r| r.dirs.push("/w/../../etc".into()),
                |e| matches!(e, ManifestError::NotNormal(_)),
                "/w/../../etc",
            ),
            (
                |r| r.output_dirs = vec!["/w/target/../../../etc".into()],
                |e| matches!(e, ManifestError::NotNormal(_)),
                "/w/target/../../../etc",
            ),
            (
                |r| r.cwd = "/w/..".into(),
                |e| matches!(e, ManifestError::NotNormal(_)),
                "/w/..",
            ),
            // Paths that would name the same place as a normal one.
            (
                |r| r.files[0].path = "/w/./src/lib.rs".into(),
                |e| matches!(e, ManifestError::NotNormal(_)),
                "/w/./src/lib.rs",
            ),
            (
                |r| r.output_dirs = vec!["/w//target".into()],
                |e| matches!(e, ManifestError::NotNormal(_)),
                "/w//target",
            ),
            (
                |r| r.dirs.push("//etc".into()),
                |e| matches!(e, ManifestError::NotNormal(_)),
                "//etc",
            ),
            (
                |r| r.cwd = "/w/".into(),
                |e| matches!(e, ManifestError::NotNormal(_)),
                "/w/",
            ),
            (
                |r| r.output_dirs = vec!["/w/tar\0get".into()],
                |e| matches!(e, ManifestError::Nul(_)),
                "/w/tar\\0get",
            ),
            (
                |r| r.cwd = "/w\0".into(),
                |e| matches!(e, ManifestError::Nul(_)),
                "/w\\0",
            ),
            // Relative paths would land wherever the node happens to be.
            (
                |r| r.files[0].path = "src/lib.rs".into(),
                |e| matches!(e, ManifestError::NotAbsolute(_)),
                "src/lib.rs",
            ),
            (
                |r| r.dirs.push("target".into()),
                |e| matches!(e, ManifestError::NotAbsolute(_)),
                "target",
            ),
            (
                |r| r.output_dirs = vec!["../target".into()],
                |e| matches!(e, ManifestError::NotAbsolute(_)),
                "../target",
            ),
            (
                |r| r.cwd = String::new(),
                |e| matches!(e, ManifestError::NotAbsolute(_)),
                "\"\"",
            ),
            // What the sandbox mounts itself.
            (
                |r| r.files[0].path = "/proc/self/environ".into(),
                |e| matches!(e, ManifestError::Reserved(_)),
                "/proc/self/environ",
            ),
            (
                |r| r.output_dirs = vec!["/dev/shm".into()],
                |e| matches!(e, ManifestError::Reserved(_)),
                "/dev/shm",
            ),
            (
                |r| r.dirs.push("/.distcc-rs/toolchain".into()),
                |e| matches!(e, ManifestError::Reserved(_)),
                "/.distcc-rs/toolchain",
            ),
            (
                |r| r.cwd = "/sys".into(),
                |e| matches!(e, ManifestError::Reserved(_)),
                "/sys",
            ),
            // Files and directories that cannot both exist.
            (
                |r| r.files[0].path = "/".into(),
                |e| matches!(e, ManifestError::FileIsDirectory(_)),
                "\"/\"",
            ),
            (
                |r| r.dirs.push("/w/src/lib.rs/x".into()),
                |e| matches!(e, ManifestError::FileIsDirectory(_)),
                "/w/src/lib.rs/x",
            ),
            (
                |r| r.output_dirs = vec!["/w/src/lib.rs".into()],
                |e| matches!(e, ManifestError::FileIsDirectory(_)),
                "/w/src/lib.rs",
            ),
            (
                |r| r.output_dirs.push("/w/target/libdep.rmeta/out".into()),
                |e| matches!(e, ManifestError::FileIsDirectory(_)),
                "/w/target/libdep.rmeta/out",
            ),
            (
                |r| r.files[1].path = "/w/src/lib.rs/inner".into(),
                |e| matches!(e, ManifestError::FileIsDirectory(_)),
                "/w/src/lib.rs/inner",
            ),
            (
                |r| r.files[1].path = "/w/src/lib.rs".into(),
                |e| matches!(e, ManifestError::Duplicate(_)),
                "/w/src/lib.rs",
            ),
            // Sizes and counts over the limits.
            (
                |r| {
                    r.files.push(entry("/w/a", 1));
                    r.files.push(entry("/w/b", 1));
                },
                |e| {
                    matches!(
                        e,
                        ManifestError::TooLarge {
                            what: "file count",
                            got: 4,
                            limit: 3
                        }
                    )
                },
                "file count",
            ),
            (
                |r| r.files[0].size = 101,
                |e| {
                    matches!(
                        e,
                        ManifestError::TooLarge {
                            what: "file size",
                            got: 101,
                            ..
                        }
                    )
                },
                "file size",
            ),
            (
                |r| r.files[0].size = u64::MAX,
                |e| {
                    matches!(
                        e,
                        ManifestError::TooLarge {
                            what: "file size",
                            ..
                        }
                    )
                },
                "file size",
            ),
            (
                |r| {
                    r.files[0].size = 100;
                    r.files[1].size = 100;
                },
                |e| {
                    matches!(
                        e,
                        ManifestError::TooLarge {
                            what: "total input size",
                            got: 200,
                            ..
                        }
                    )
                },
                "total input size",
            ),
            (
                |r| r.args = vec!["-v".into(); 4],
                |e| {
                    matches!(
                        e,
                        ManifestError::TooLarge {
                            what: "argument count",
                            ..
                        }
                    )
                },
                "argument count",
            ),
            (
                |r| r.env = vec![("A".into(), "1".into()); 3],
                |e| {
                    matches!(
                        e,
                        ManifestError::TooLarge {
                            what: "environment size",
                            ..
                        }
                    )
                },
                "environment size",
            ),
            (
                |r| r.dirs.extend(["/w/a".into(), "/w/b".into()]),
                |e| {
                    matches!(
                        e,
                        ManifestError::TooLarge {
                            what: "directory count",
                            got: 4,
                            limit: 3
                        }
                    )
                },
                "directory count",
            ),
            (
                |r| r.output_dirs.extend(["/w/a".into(), "/w/b".into()]),
                |e| {
                    matches!(
                        e,
                        ManifestError::TooLarge {
                            what: "output directory count",
                            got: 3,
                            limit: 2
                        }
                    )
                },
                "output directory count",
            ),
            (
                |r| r.files[0].path = format!("/w/{}", "x".repeat(38)),
                |e| {
                    matches!(
                        e,
                        ManifestError::TooLarge {
                            what: "path length",
                            got: 41,
                            limit: 40
                        }
                    )
                },
                "path length",
            ),
            (
                |r| r.cwd = format!("/w{}", "/xx".repeat(13)),
                |e| {
                    matches!(
                        e,
                        ManifestError::TooLarge {
                            what: "path length",
                            ..
                        }
                    )
                },
                "path length",
            ),
            (
                |r| r.dirs.push("/w/a/b/c/d/e/f/g".into()),
                |e| {
                    matches!(
                        e,
                        ManifestError::TooLarge {
                            what: "path depth",
                            got: 8,
                            limit: 7
                        }
                    )
                },
                "path depth",
            ),
            (
                |r| r.output_dirs.push("/w/a/b/c/d/e/f/g".into()),
                |e| {
                    matches!(
                        e,
                        ManifestError::TooLarge {
                            what: "path depth",
                            ..
                        }
                    )
                },
                "path depth",
            ),
            // Strings the sandbox's command line cannot carry.
            (
                |r| r.args.push("--cfg\0x".into()),
                |e| matches!(e, ManifestError::BadArg(_)),
                "--cfg",
            ),
            (
                |r| r.env[0].0 = String::new(),
                |e| matches!(e, ManifestError::BadEnv(_)),
                "\"\"",
            ),
            (
                |r| r.env[0].0 = "LD_PRELOAD=/x".into(),
                |e| matches!(e, ManifestError::BadEnv(_)),
                "LD_PRELOAD",
            ),
            (
                |r| r.env[0].0 = "A\0B".into(),
                |e| matches!(e, ManifestError::BadEnv(_)),
                "A",
            ),
            (
                |r| r.env[0].1 = "x\0y".into(),
                |e| matches!(e, ManifestError::BadEnv(_)),
                "CARGO_PKG_NAME",
            ),
            (
                |r| r.cwd = "/elsewhere".into(),
                |e| matches!(e, ManifestError::CwdMissing(_)),
                "/elsewhere",
            ),
        ];
        validate(&sound(), &small).expect("the base request is sound");
        for (i, (edit, kind, named)) in cases.iter().enumerate() {
            let mut req = sound();
            edit(&mut req);
            match validate(&req, &small) {
                Ok(_) => panic!("case {i} was accepted: {req:?}"),
                Err(e) => {
                    assert!(kind(&e), "case {i}: wrong refusal {e:?}");
                    let message = e.to_string();
                    assert!(
                        message.contains(named),
                        "case {i}: {message:?} names no {named:?}"
                    );
                }
            }
        }
    }

    /// Names that look odd but are plain file names are accepted, and every
    /// path the validator returns stays inside whatever root it is joined to.
    #[test]
    fn odd_but_harmless_names_stay_inside_the_root() {
        let mut req = sound();
        for path in [
            "/w/..a",
            "/w/a..",
            "/w/.../x",
            "/w/.hidden",
            "/w/a b/c",
            "/w/\u{e9}t\u{e9}",
            "/procfs/x",
            "/devices/x",
            "/w/target/..rmeta",
        ] {
            req.files.push(entry(path, 1));
        }
        req.output_dirs.push("/w/...".into());
        req.dirs.push("/".into());
        let valid = validate(&req, &Limits::default()).unwrap();
        let root = Path::new("/node/jobs/1");
        let rels = valid
            .files
            .iter()
            .map(|(_, rel)| rel)
            .chain(&valid.dirs)
            .chain(&valid.output_dirs);
        for rel in rels {
            assert!(
                rel.components().all(|c| matches!(c, Component::Normal(_))),
                "{rel:?}"
            );
            assert!(root.join(rel).starts_with(root), "{rel:?}");
        }
        assert_eq!(valid.files.len(), 11);
    }
}
