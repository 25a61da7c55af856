//! The node's validation of job requests.
//!
//! Input: one control byte, then either the bincode body of a `JobRequest`
//! as it arrives on the wire (control byte even), or bytes that `arbitrary`
//! turns into a request whose paths are built from the pieces that matter:
//! `.`, `..`, empty components, the sandbox's reserved directories, names
//! that merely look like dots, stray NULs (control byte odd). Bit 1 of the
//! control byte picks small limits so the size and count checks are reached.
//!
//! Asserted, besides never panicking:
//! * `relative_to_root` agrees with an independent statement of the rule on
//!   every path in the request: a path is accepted exactly when it is `/`
//!   or `/` followed by non-empty components none of which is `.` or `..`,
//!   contains no NUL and does not lie under a reserved directory, and the
//!   relative path it returns is those components;
//! * an accepted request stays within its limits, every path in it joins
//!   onto a job root to something inside that root, no file is listed
//!   twice, is `/`, or sits where another entry needs a directory, the
//!   working directory is one of the directories, and no argument or
//!   environment entry carries a NUL;
//! * a refusal has a message.

#![no_main]

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use distcc_rs_node::manifest::{self, Limits};
use distcc_rs_proto::codec;
use distcc_rs_proto::message::{FileEntry, JobRequest};
use distcc_rs_proto::{Digest, JobId, NodeId, Ticket, ToolchainId};
use libfuzzer_sys::fuzz_target;

const RESERVED: &[&str] = &["proc", "dev", "sys", ".distcc-rs"];

/// Path components worth combining: the ones the rules are about, and
/// names that only resemble them.
const NAMES: &[&str] = &[
    "w",
    "src",
    "target",
    "lib.rs",
    "proc",
    "dev",
    "sys",
    ".distcc-rs",
    "tmp",
    "..a",
    "a..",
    "...",
    ".hidden",
    "procfs",
    "toolchain",
    "deps",
];

#[derive(Arbitrary, Debug)]
enum Part {
    Name(u8),
    Dot,
    DotDot,
    Empty,
    Nul,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum PathSpec {
    Built {
        absolute: bool,
        parts: Vec<Part>,
        trailing_slash: bool,
    },
    Raw(String),
}

impl PathSpec {
    fn build(&self) -> String {
        match self {
            PathSpec::Raw(s) => s.clone(),
            PathSpec::Built {
                absolute,
                parts,
                trailing_slash,
            } => {
                let parts: Vec<String> = parts
                    .iter()
                    .map(|p| match p {
                        Part::Name(i) => NAMES[usize::from(*i) % NAMES.len()].to_owned(),
                        Part::Dot => ".".into(),
                        Part::DotDot => "..".into(),
                        Part::Empty => String::new(),
                        Part::Nul => "a\0b".into(),
                        Part::Raw(s) => s.clone(),
                    })
                    .collect();
                let mut path = parts.join("/");
                if *absolute {
                    path.insert(0, '/');
                }
                if *trailing_slash {
                    path.push('/');
                }
                path
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Request {
    files: Vec<(PathSpec, u64, bool)>,
    dirs: Vec<PathSpec>,
    output_dirs: Vec<PathSpec>,
    cwd: PathSpec,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Request {
    fn build(&self) -> JobRequest {
        JobRequest {
            ticket: Ticket {
                job: JobId(1),
                node: NodeId(1),
                toolchain: ToolchainId(Digest([0; 32])),
                client: distcc_rs_proto::CertFingerprint([0; 32]),
                mac: [0; 32],
            },
            crate_name: "c".into(),
            args: self.args.clone(),
            env: self.env.clone(),
            cwd: self.cwd.build(),
            files: self
                .files
                .iter()
                .map(|(path, size, executable)| FileEntry {
                    path: path.build(),
                    digest: Digest([1; 32]),
                    size: *size,
                    executable: *executable,
                })
                .collect(),
            dirs: self.dirs.iter().map(PathSpec::build).collect(),
            output_dirs: self.output_dirs.iter().map(PathSpec::build).collect(),
        }
    }
}

/// The path rule, stated independently of `std::path`: the components of
/// an acceptable path, or `None`.
fn oracle(path: &str) -> Option<Vec<&str>> {
    if path == "/" {
        return Some(Vec::new());
    }
    let rest = path.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    let plain = |p: &&str| !p.is_empty() && *p != "." && *p != ".." && !p.contains('\0');
    if !parts.iter().all(plain) {
        return None;
    }
    if RESERVED.contains(&parts[0]) {
        return None;
    }
    Some(parts)
}

fn check_path_rule(path: &str) {
    let got = manifest::relative_to_root(path);
    match (oracle(path), &got) {
        (Some(parts), Ok(rel)) => {
            let rel_parts: Vec<&str> = rel
                .components()
                .map(|c| match c {
                    Component::Normal(n) => n.to_str().expect("the input was UTF-8"),
                    other => panic!("{path:?} became a path with {other:?}"),
                })
                .collect();
            assert_eq!(rel_parts, parts, "{path:?}");
        }
        (None, Err(e)) => assert!(!e.to_string().is_empty()),
        (want, got) => panic!("{path:?}: the rule says {want:?}, the validator {got:?}"),
    }
}

fn check(req: &JobRequest, limits: &Limits) {
    for path in req
        .files
        .iter()
        .map(|f| &f.path)
        .chain(&req.dirs)
        .chain(&req.output_dirs)
        .chain([&req.cwd])
    {
        check_path_rule(path);
    }

    let valid = match manifest::validate(req, limits) {
        Ok(valid) => valid,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };

    assert!(req.files.len() <= limits.max_files);
    assert!(req.args.len() <= limits.max_args);
    assert!(req.env.len() <= limits.max_env);
    assert!(req.dirs.len() <= limits.max_dirs);
    assert!(req.output_dirs.len() <= limits.max_output_dirs);
    for path in req
        .files
        .iter()
        .map(|f| &f.path)
        .chain(&req.dirs)
        .chain(&req.output_dirs)
        .chain([&req.cwd])
    {
        assert!(path.len() <= limits.max_path_len, "{path:?}");
        assert!(path.matches('/').count() <= limits.max_path_depth, "{path:?}");
    }
    assert!(req.files.iter().all(|f| f.size <= limits.max_file_size));
    assert!(valid.total_size <= limits.max_total_size);
    assert_eq!(
        valid.total_size,
        req.files.iter().map(|f| f.size).sum::<u64>()
    );
    assert!(req.args.iter().all(|a| !a.contains('\0')));
    for (k, v) in &req.env {
        assert!(!k.is_empty() && !k.contains(['=', '\0']) && !v.contains('\0'));
    }

    let root = Path::new("/node/jobs/1");
    let files: Vec<&PathBuf> = valid.files.iter().map(|(_, rel)| rel).collect();
    for rel in files
        .iter()
        .copied()
        .chain(&valid.dirs)
        .chain(&valid.output_dirs)
    {
        assert!(
            rel.components().all(|c| matches!(c, Component::Normal(_))),
            "{rel:?}"
        );
        assert!(root.join(rel).starts_with(root), "{rel:?}");
    }
    let mut seen = HashSet::new();
    for rel in &files {
        assert!(!rel.as_os_str().is_empty(), "a file at the job root itself");
        assert!(seen.insert(rel.as_path()), "{rel:?} listed twice");
    }
    // No entry that needs a directory has a file at or above it.
    for rel in files
        .iter()
        .copied()
        .chain(&valid.dirs)
        .chain(&valid.output_dirs)
    {
        let is_file = files.contains(&rel);
        for ancestor in rel.ancestors().skip(usize::from(is_file)) {
            assert!(
                !seen.contains(ancestor),
                "{rel:?} needs {ancestor:?} to be a directory, but it is a file"
            );
        }
    }
    let cwd = manifest::relative_to_root(&req.cwd).unwrap();
    assert!(valid.dirs.contains(&cwd));
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let limits = if control & 0x02 != 0 {
        Limits {
            max_files: 4,
            max_file_size: 1000,
            max_total_size: 2500,
            max_args: 4,
            max_env: 4,
            max_dirs: 4,
            max_output_dirs: 2,
            max_path_len: 64,
            max_path_depth: 8,
        }
    } else {
        Limits::default()
    };
    let req = if control & 0x01 == 0 {
        match codec::decode::<JobRequest>(rest) {
            Ok(req) => req,
            Err(_) => return,
        }
    } else {
        match Request::arbitrary_take_rest(Unstructured::new(rest)) {
            Ok(req) => req.build(),
            Err(_) => return,
        }
    };
    check(&req, &limits);
});
