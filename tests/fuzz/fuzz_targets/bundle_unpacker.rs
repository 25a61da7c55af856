//! Unpacking a toolchain bundle, as a node does with what the scheduler
//! sends it.
//!
//! Input: one control byte, then the bundle in one of four forms, chosen by
//! the control byte's two low bits:
//! * 0: a tar stream, whose header checksums the target recomputes (else
//!   almost every mutation of a name, a link target or an entry type would
//!   stop at the tar crate's checksum test), then compresses and unpacks
//!   under its true id, so that only the entry and manifest checks can
//!   refuse it;
//! * 2: the same without fixing the checksums;
//! * 1: a compressed bundle as is, unpacked under the id of whatever it
//!   decompresses to, so that the zstd layer is fuzzed too;
//! * 3: a list of entries that `arbitrary` builds from the path pieces that
//!   matter (`..`, `.`, empty components, absolute paths, among them the
//!   absolute path of the directory beside the destination), with every
//!   kind of entry and a manifest that lists the regular files with their
//!   true digests, so the path and link rules decide and nothing else.
//!
//! Each run unpacks into `<base>/nodes/tc`, beside `<base>/outside`, which
//! holds a file, an empty directory and a symlink out of the base.
//!
//! Asserted, besides never panicking:
//! * nothing under `<base>` changes but `nodes/tc`: `outside` keeps its
//!   content, no other entry appears in `<base>` or `<base>/nodes`, and a
//!   refused bundle leaves no `nodes/tc` and no temporary directory;
//! * in an accepted bundle every entry is a directory, a regular file or a
//!   symlink whose target is relative, free of `..`, and resolves inside
//!   `nodes/tc` when it resolves at all, and every file the manifest lists
//!   is there with its size.

#![no_main]

use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use distcc_rs_pack::{BUNDLE_FORMAT, BUNDLE_MANIFEST_PATH, BundleFile, BundleManifest, unpack};
use distcc_rs_proto::{Digest, ToolchainId};
use libfuzzer_sys::fuzz_target;

/// A directory of this process's own, made once: an absolute path entries
/// could only guess.
fn base() -> &'static Path {
    static BASE: OnceLock<tempfile::TempDir> = OnceLock::new();
    BASE.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("distcc-rs-fuzz-")
            .tempdir()
            .unwrap()
    })
    .path()
}

/// Every path under `dir` with what it is: a file's content, a symlink's
/// target, or "dir".
fn snapshot(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut all = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let what = if meta.is_dir() {
                pending.push(path.clone());
                "dir".to_owned()
            } else if meta.is_symlink() {
                format!("-> {}", fs::read_link(&path).unwrap().display())
            } else {
                String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned()
            };
            all.push((path, what));
        }
    }
    all.sort();
    all
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Checks an unpacked toolchain: only directories, regular files and
/// symlinks that stay inside.
fn check_unpacked(dest: &Path) {
    let canonical = fs::canonicalize(dest).unwrap();
    let mut pending = vec![dest.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                pending.push(path);
            } else if meta.is_symlink() {
                let target = fs::read_link(&path).unwrap();
                assert!(
                    target
                        .components()
                        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir)),
                    "{path:?} -> {target:?}"
                );
                if let Ok(resolved) = fs::canonicalize(&path) {
                    assert!(
                        resolved.starts_with(&canonical),
                        "{path:?} resolves to {resolved:?}"
                    );
                }
            } else {
                assert!(meta.is_file(), "{path:?} is neither file, dir nor link");
            }
        }
    }
}

/// The tar stream a compressed bundle holds, when it decompresses to a
/// sane size.
fn decompressed(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(bytes)
        .ok()?
        .take(16 << 20)
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

/// Recomputes the checksum of every header in a tar stream, walking it as
/// the tar crate does: a header, its data rounded up to whole blocks, the
/// next header, until a block of zeros.
fn fix_checksums(tar: &mut [u8]) {
    let mut at = 0usize;
    while let Some(block) = tar.get_mut(at..at.saturating_add(512)) {
        if block.iter().all(|&b| b == 0) {
            break;
        }
        let mut header = tar::Header::new_old();
        header.as_mut_bytes().copy_from_slice(block);
        header.set_cksum();
        block.copy_from_slice(header.as_bytes());
        let data = header
            .entry_size()
            .unwrap_or(0)
            .div_ceil(512)
            .saturating_mul(512);
        at = at
            .saturating_add(512)
            .saturating_add(usize::try_from(data).unwrap_or(usize::MAX));
    }
}

/// Path pieces worth combining in the structured form.
#[derive(Arbitrary, Debug)]
enum Part {
    Bin,
    Lib,
    Rustc,
    A,
    B,
    Dot,
    DotDot,
    Empty,
    /// The absolute path of `<base>/outside`.
    Outside,
    Root,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct PathSpec(Vec<Part>);

impl PathSpec {
    fn build(&self, outside: &str) -> String {
        let parts: Vec<&str> = self
            .0
            .iter()
            .map(|p| match p {
                Part::Bin => "bin",
                Part::Lib => "lib",
                Part::Rustc => "rustc",
                Part::A => "a",
                Part::B => "b",
                Part::Dot => ".",
                Part::DotDot => "..",
                Part::Empty => "",
                Part::Outside => outside,
                Part::Root => "/",
                Part::Raw(s) => s,
            })
            .collect();
        parts.join("/")
    }
}

#[derive(Arbitrary, Debug)]
enum EntryKind {
    File {
        content: Vec<u8>,
        executable: bool,
        listed: bool,
    },
    Dir,
    Symlink(PathSpec),
    HardLink(PathSpec),
    Fifo,
    CharDevice,
}

#[derive(Arbitrary, Debug)]
struct Entry {
    path: PathSpec,
    kind: EntryKind,
}

/// Builds a tar stream from `entries` after a manifest listing `bin/rustc`
/// and every file entry marked as listed. Names and link targets go into
/// the header by hand, since the tar crate's own setters refuse `..` and
/// absolute paths; names longer than a header holds are cut.
fn structured_tar(entries: &[Entry], outside: &str) -> Vec<u8> {
    let rustc = b"#!".to_vec();
    let mut files = vec![BundleFile {
        path: "bin/rustc".into(),
        size: rustc.len() as u64,
        digest: Digest(*blake3::hash(&rustc).as_bytes()),
        executable: true,
    }];
    let mut built = Vec::new();
    for entry in entries {
        let path = entry.path.build(outside);
        let (kind, link, data, executable) = match &entry.kind {
            EntryKind::File {
                content,
                executable,
                listed,
            } => {
                if *listed {
                    files.push(BundleFile {
                        path: path.clone(),
                        size: content.len() as u64,
                        digest: Digest(*blake3::hash(content).as_bytes()),
                        executable: *executable,
                    });
                }
                (tar::EntryType::Regular, None, content.clone(), *executable)
            }
            EntryKind::Dir => (tar::EntryType::Directory, None, vec![], true),
            EntryKind::Symlink(to) => (
                tar::EntryType::Symlink,
                Some(to.build(outside)),
                vec![],
                false,
            ),
            EntryKind::HardLink(to) => {
                (tar::EntryType::Link, Some(to.build(outside)), vec![], false)
            }
            EntryKind::Fifo => (tar::EntryType::Fifo, None, vec![], false),
            EntryKind::CharDevice => (tar::EntryType::Char, None, vec![], false),
        };
        built.push((path, kind, link, data, executable));
    }
    let manifest = BundleManifest {
        format: BUNDLE_FORMAT,
        rustc_version: "rustc 0.0.0\n".into(),
        host: "x86_64-unknown-linux-gnu".into(),
        rustc: "bin/rustc".into(),
        interpreter: String::new(),
        library_path: vec!["lib".into()],
        files,
    };

    let mut tar = tar::Builder::new(Vec::new());
    let mut append = |name: &str, kind, link: Option<&str>, data: &[u8], executable: bool| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if executable { 0o755 } else { 0o644 });
        let field = &mut h.as_old_mut().name;
        let n = name.len().min(field.len());
        field[..n].copy_from_slice(&name.as_bytes()[..n]);
        if let Some(link) = link {
            let field = &mut h.as_old_mut().linkname;
            let n = link.len().min(field.len());
            field[..n].copy_from_slice(&link.as_bytes()[..n]);
        }
        h.set_cksum();
        tar.append(&h, data).unwrap();
    };
    append(
        BUNDLE_MANIFEST_PATH,
        tar::EntryType::Regular,
        None,
        &manifest.to_json(),
        false,
    );
    append("bin/rustc", tar::EntryType::Regular, None, &rustc, true);
    for (path, kind, link, data, executable) in &built {
        append(path, *kind, link.as_deref(), data, *executable);
    }
    tar.into_inner().unwrap()
}

fn id_of(tar: &[u8]) -> ToolchainId {
    ToolchainId(Digest(*blake3::hash(tar).as_bytes()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let base = base();
    let nodes = base.join("nodes");
    let outside = base.join("outside");

    let (bundle, id) = match control & 3 {
        1 => {
            let id = decompressed(rest).map_or(ToolchainId(Digest([0; 32])), |t| id_of(&t));
            (rest.to_vec(), id)
        }
        3 => {
            let Ok(entries) = Vec::<Entry>::arbitrary_take_rest(Unstructured::new(rest)) else {
                return;
            };
            let tar = structured_tar(&entries, outside.to_str().unwrap());
            (zstd::encode_all(&tar[..], 1).unwrap(), id_of(&tar))
        }
        mode => {
            let mut tar = rest.to_vec();
            if mode == 0 {
                fix_checksums(&mut tar);
            }
            (zstd::encode_all(&tar[..], 1).unwrap(), id_of(&tar))
        }
    };

    let _ = fs::remove_dir_all(&nodes);
    let _ = fs::remove_dir_all(&outside);
    fs::create_dir_all(&nodes).unwrap();
    fs::create_dir_all(outside.join("empty")).unwrap();
    fs::write(outside.join("secret"), b"keep me").unwrap();
    std::os::unix::fs::symlink("/", outside.join("root")).unwrap();
    let before = snapshot(&outside);
    let dest = nodes.join("tc");

    let result = unpack(&bundle[..], &dest, id);

    assert_eq!(snapshot(&outside), before, "something outside changed");
    assert_eq!(names(base), ["nodes", "outside"]);
    match result {
        Ok(manifest) => {
            assert_eq!(names(&nodes), ["tc"]);
            check_unpacked(&dest);
            for file in &manifest.files {
                let meta = fs::symlink_metadata(dest.join(&file.path)).unwrap();
                assert!(meta.is_file(), "{}", file.path);
                assert_eq!(meta.len(), file.size, "{}", file.path);
            }
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert!(names(&nodes).is_empty(), "{:?} left behind", names(&nodes));
        }
    }
});
