//! Turning a parsed job and its dep-info into the set of files and directories
//! a node needs.
//!
//! The node recreates the client's paths at the same absolute locations, since
//! rustc embeds absolute paths in its outputs and byte-identical results need
//! identical paths. So every path here is made absolute against the client's
//! working directory and normalised lexically, never canonicalised: resolving
//! symlinks would change the paths rustc sees.
//!
//! The only IO is looking for `-l static` archives, which rustc bundles into
//! the rlib but does not list in the dep-info.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use crate::argv::{CompileJob, EmitKind, SearchKind};
use crate::depinfo::DepInfo;

/// What a node must recreate to run one job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputPlan {
    /// Every file to ship: absolute, sorted, without duplicates, and without
    /// anything under the sysroot (the node has its own toolchain).
    pub files: Vec<PathBuf>,
    /// Directories to create on the node even when no shipped file lies in
    /// them, because rustc opens or searches them: the cwd, the output
    /// directories, `OUT_DIR`, every `-L` directory. Absolute, sorted, without
    /// duplicates, without anything under the sysroot.
    pub dirs: Vec<PathBuf>,
    /// Where rustc writes: `--out-dir` and the parent of every explicit output
    /// path (`-o`, `--emit=KIND=PATH`), or the cwd when neither is given, as
    /// that is where rustc then writes. Absolute, sorted, without duplicates.
    pub output_dirs: Vec<PathBuf>,
}

/// Why a job's inputs cannot be shipped. The caller compiles locally.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    /// A `-l static` archive was not found in the `-L native=`/`-L all=`
    /// directories. rustc may still find it in the sysroot, or fail; either
    /// way the local rustc knows best.
    #[error("native static library `{name}` not found in {searched:?}")]
    NativeLibNotFound {
        /// The library name as given to `-l`.
        name: String,
        /// The files that were looked for, in order.
        searched: Vec<PathBuf>,
    },
    /// A path points into a kernel filesystem, whose contents are neither
    /// files we can ship nor the same on the node.
    #[error("path {0} is under /proc, /sys or /dev")]
    ForbiddenPath(PathBuf),
    /// A path is still relative after joining it to the working directory,
    /// which means the working directory itself was relative.
    #[error("path {0} is not absolute")]
    NotAbsolute(PathBuf),
}

/// Kernel filesystems: reading them means something else on the node.
const FORBIDDEN_ROOTS: &[&str] = &["/proc", "/sys", "/dev"];

/// Plans what to ship for `job`, given what its dep-info pre-pass reported.
///
/// `cwd` is rustc's working directory, `sysroot` the client's toolchain root
/// (`rustc --print=sysroot`; empty to exclude nothing), `env` the environment
/// rustc runs with (only `OUT_DIR` is read).
pub fn plan(
    job: &CompileJob,
    depinfo: &DepInfo,
    cwd: &Path,
    sysroot: &Path,
    env: &[(String, String)],
) -> Result<InputPlan, InputError> {
    // Everything else is resolved against the cwd, so it must be absolute
    // itself.
    if !cwd.is_absolute() {
        return Err(InputError::NotAbsolute(cwd.to_path_buf()));
    }
    let cwd = normalize(cwd);
    // An empty sysroot would otherwise mean the cwd and exclude every source.
    let sysroot = (!sysroot.as_os_str().is_empty()).then(|| normalize(&cwd.join(sysroot)));
    let resolver = Resolver { cwd: &cwd, sysroot };
    let cwd = resolver.resolve_path(&cwd)?;

    let mut files = BTreeSet::new();
    let file_paths = std::iter::once(job.src.as_str())
        .chain(depinfo.files.iter().map(String::as_str))
        .chain(job.externs.iter().filter_map(|ext| ext.path.as_deref()));
    for path in file_paths {
        let path = resolver.resolve(path)?;
        if !resolver.in_sysroot(&path) {
            files.insert(path);
        }
    }
    for archive in static_archives(job, &resolver)? {
        if !resolver.in_sysroot(&archive) {
            files.insert(archive);
        }
    }

    let mut output_dirs = BTreeSet::new();
    if let Some(out_dir) = &job.out_dir {
        output_dirs.insert(resolver.resolve(out_dir)?);
    }
    let explicit_outputs = job
        .output_file
        .iter()
        .map(String::as_str)
        .chain(job.emit.iter().filter_map(EmitKind::path));
    for output in explicit_outputs {
        let output = resolver.resolve(output)?;
        // A normalised absolute path other than `/` always has a parent.
        if let Some(parent) = output.parent() {
            output_dirs.insert(parent.to_path_buf());
        }
    }
    if output_dirs.is_empty() {
        output_dirs.insert(cwd.clone());
    }

    let mut dirs: BTreeSet<PathBuf> = output_dirs.iter().cloned().collect();
    dirs.insert(cwd);
    // The last assignment wins, as it would when building an environment.
    if let Some((_, out_dir)) = env.iter().rev().find(|(name, _)| name == "OUT_DIR") {
        dirs.insert(resolver.resolve(out_dir)?);
    }
    for search in &job.search_paths {
        dirs.insert(resolver.resolve(&search.path)?);
    }
    dirs.retain(|dir| !resolver.in_sysroot(dir));

    Ok(InputPlan {
        files: files.into_iter().collect(),
        dirs: dirs.into_iter().collect(),
        output_dirs: output_dirs.into_iter().collect(),
    })
}

/// Finds the archives of the `-l static` libraries rustc bundles into this
/// job's output, as rustc does: in the `-L native=` and `-L all=` directories
/// in argument order, first match wins.
///
/// rustc reads them only when it writes the artifact (`--emit=link`) and only
/// for libraries it bundles, so a `cargo check` or a `-bundle` library needs no
/// archive.
fn static_archives(job: &CompileJob, resolver: &Resolver<'_>) -> Result<Vec<PathBuf>, InputError> {
    if !job
        .emit
        .iter()
        .any(|emit| matches!(emit, EmitKind::Link(_)))
    {
        return Ok(Vec::new());
    }
    let native_dirs = job
        .search_paths
        .iter()
        .filter(|search| matches!(search.kind, SearchKind::Native | SearchKind::All))
        .map(|search| resolver.resolve(&search.path))
        .collect::<Result<Vec<_>, _>>()?;
    let mut archives = Vec::new();
    for lib in &job.native_libs {
        if lib.kind != "static" || lib.has_modifier_disabled("bundle") {
            continue;
        }
        let file_name = if lib.has_modifier_enabled("verbatim") {
            lib.name.clone()
        } else {
            format!("lib{}.a", lib.name)
        };
        let searched: Vec<PathBuf> = native_dirs.iter().map(|dir| dir.join(&file_name)).collect();
        match searched.iter().find(|candidate| is_file(candidate)) {
            Some(found) => archives.push(found.clone()),
            None => {
                return Err(InputError::NativeLibNotFound {
                    name: lib.name.clone(),
                    searched,
                });
            }
        }
    }
    Ok(archives)
}

fn is_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|meta| meta.is_file())
}

/// Makes paths absolute against the cwd and checks them.
struct Resolver<'a> {
    /// Absolute and normalised.
    cwd: &'a Path,
    /// Absolute and normalised, when known.
    sysroot: Option<PathBuf>,
}

impl Resolver<'_> {
    fn resolve(&self, path: &str) -> Result<PathBuf, InputError> {
        self.resolve_path(Path::new(path))
    }

    fn resolve_path(&self, path: &Path) -> Result<PathBuf, InputError> {
        let path = normalize(&self.cwd.join(path));
        if !path.is_absolute() {
            return Err(InputError::NotAbsolute(path));
        }
        if FORBIDDEN_ROOTS.iter().any(|root| path.starts_with(root)) {
            return Err(InputError::ForbiddenPath(path));
        }
        Ok(path)
    }

    fn in_sysroot(&self, path: &Path) -> bool {
        self.sysroot
            .as_ref()
            .is_some_and(|sysroot| path.starts_with(sysroot))
    }
}

/// Removes `.` and resolves `..` without touching the filesystem. `..` at the
/// root stays at the root, as the kernel does.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) => {}
                // A relative path that climbs above its start keeps the `..`;
                // the absolute check then rejects it.
                _ => out.push(".."),
            },
            other => out.push(other),
        }
    }
    out
}

/// Whether a job may skip the dep-info pre-pass.
///
/// Cargo passes `--cap-lints` only for crates that are not part of the
/// workspace: registry and git dependencies. A published package cannot read
/// files outside its own directory (cargo checks that when it packages it),
/// so the package directory, `OUT_DIR` and the crate files rustc may load
/// from `-L dependency=` directories are a complete input set, and the
/// pre-pass (5-15% of a debug compile, spent on the client) buys nothing.
/// A staticlib needs the rlib of every transitive dependency, which only the
/// pre-pass names precisely, so it keeps it.
pub fn can_skip_prepass(args: &[String], job: &CompileJob) -> bool {
    let foreign = args
        .iter()
        .any(|a| a == "--cap-lints" || a.starts_with("--cap-lints="));
    foreign && job.crate_types.iter().all(|t| t == "lib" || t == "rlib")
}

/// Whether rustc could load `name` as a crate when compiling a library:
/// metadata files, and proc-macro libraries (which hold their metadata
/// themselves).
pub fn is_loadable_crate_file(name: &str) -> bool {
    name.starts_with("lib") && (name.ends_with(".rmeta") || name.ends_with(".so"))
}

/// The crate files in the job's `-L dependency=` (and `-L all=`)
/// directories: what rustc searches for the dependencies of its
/// dependencies. Without a pre-pass they all go, so the node sees what
/// rustc would see here. Temporary files (dot-files) are skipped.
pub fn dependency_crate_files(job: &CompileJob, cwd: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for sp in &job.search_paths {
        if !matches!(sp.kind, SearchKind::Dependency | SearchKind::All) {
            continue;
        }
        let dir = normalize(&cwd.join(&sp.path));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if is_loadable_crate_file(name) && entry.file_type()?.is_file() {
                out.push(dir.join(name));
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::argv::{Classification, classify};

    const SYSROOT: &str = "/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu";
    const STD: &str = "/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/lib/rustlib/x86_64-unknown-linux-gnu/lib/libstd-d1237ef7159db0a2.rmeta";
    const REGISTRY: &str = "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f";

    /// Parses a distributable command line (split at spaces).
    fn job(line: &str) -> CompileJob {
        let args: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        match classify(&args) {
            Classification::Distribute(job) => job,
            Classification::Local(reason) => panic!("{line} is local: {reason}"),
        }
    }

    fn depinfo(files: &[&str]) -> DepInfo {
        DepInfo {
            files: files.iter().map(|file| (*file).to_owned()).collect(),
            env: vec![],
        }
    }

    fn paths(list: &[&str]) -> Vec<PathBuf> {
        list.iter().map(PathBuf::from).collect()
    }

    struct Case {
        name: &'static str,
        job: CompileJob,
        depinfo: DepInfo,
        cwd: &'static str,
        sysroot: &'static str,
        env: Vec<(String, String)>,
        expected: Result<InputPlan, InputError>,
    }

    #[test]
    fn plans_without_native_libs() {
        let cases = vec![
            Case {
                name: "workspace lib with relative paths",
                job: job(
                    "--crate-name ddtest --edition=2024 src/lib.rs --crate-type lib \
                          --emit=dep-info,metadata,link --out-dir /w/ddtest/target/debug/deps \
                          -L dependency=/w/ddtest/target/debug/deps \
                          --extern regex=/w/ddtest/target/debug/deps/libregex-b1b6e8fd394dc2c4.rmeta \
                          --extern proc_macro",
                ),
                depinfo: depinfo(&[
                    "src/lib.rs",
                    "src/../src/util.rs",
                    "./gen/../README.md",
                    STD,
                    "/w/ddtest/target/debug/deps/libregex-b1b6e8fd394dc2c4.rmeta",
                    "/w/ddtest/target/debug/deps/libregex_automata-3585ee272d6af782.rmeta",
                    "../shared/outside.rs",
                ]),
                cwd: "/w/ddtest",
                sysroot: SYSROOT,
                env: vec![],
                expected: Ok(InputPlan {
                    files: paths(&[
                        "/w/ddtest/README.md",
                        "/w/ddtest/src/lib.rs",
                        "/w/ddtest/src/util.rs",
                        "/w/ddtest/target/debug/deps/libregex-b1b6e8fd394dc2c4.rmeta",
                        "/w/ddtest/target/debug/deps/libregex_automata-3585ee272d6af782.rmeta",
                        "/w/shared/outside.rs",
                    ]),
                    dirs: paths(&["/w/ddtest", "/w/ddtest/target/debug/deps"]),
                    output_dirs: paths(&["/w/ddtest/target/debug/deps"]),
                }),
            },
            Case {
                name: "registry crate with OUT_DIR",
                job: job(&format!(
                    "--crate-name zstd_sys {REGISTRY}/zstd-sys-2.0.16/src/lib.rs --crate-type lib \
                     --emit=dep-info,metadata --out-dir /w/t/release/deps -L dependency=/w/t/release/deps \
                     --cap-lints allow"
                )),
                depinfo: depinfo(&[
                    &format!("{REGISTRY}/zstd-sys-2.0.16/src/lib.rs"),
                    &format!("{REGISTRY}/zstd-sys-2.0.16/src/bindings_zstd.rs"),
                    "/w/t/release/build/zstd-sys-c2d3/out/gen.rs",
                ]),
                cwd: "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/zstd-sys-2.0.16",
                sysroot: SYSROOT,
                env: vec![
                    (
                        "OUT_DIR".into(),
                        "/w/t/release/build/zstd-sys-c2d3/out".into(),
                    ),
                    ("CARGO_PKG_NAME".into(), "zstd-sys".into()),
                ],
                expected: Ok(InputPlan {
                    files: vec![
                        PathBuf::from(format!("{REGISTRY}/zstd-sys-2.0.16/src/bindings_zstd.rs")),
                        PathBuf::from(format!("{REGISTRY}/zstd-sys-2.0.16/src/lib.rs")),
                        PathBuf::from("/w/t/release/build/zstd-sys-c2d3/out/gen.rs"),
                    ],
                    dirs: vec![
                        PathBuf::from(format!("{REGISTRY}/zstd-sys-2.0.16")),
                        PathBuf::from("/w/t/release/build/zstd-sys-c2d3/out"),
                        PathBuf::from("/w/t/release/deps"),
                    ],
                    output_dirs: paths(&["/w/t/release/deps"]),
                }),
            },
            Case {
                name: "explicit output paths",
                job: job(
                    "--crate-name a src/lib.rs --crate-type lib -o out/liba.rlib \
                          --emit=link,metadata=meta/liba.rmeta,dep-info=/w/d/a.d",
                ),
                depinfo: depinfo(&["src/lib.rs"]),
                cwd: "/w/a",
                sysroot: SYSROOT,
                env: vec![],
                expected: Ok(InputPlan {
                    files: paths(&["/w/a/src/lib.rs"]),
                    dirs: paths(&["/w/a", "/w/a/meta", "/w/a/out", "/w/d"]),
                    output_dirs: paths(&["/w/a/meta", "/w/a/out", "/w/d"]),
                }),
            },
            Case {
                name: "no output directory means the cwd",
                job: job("--crate-name a src/lib.rs --crate-type rlib -L ../libs -Lall=/w/all"),
                depinfo: depinfo(&["src/lib.rs"]),
                cwd: "/w/a/./b/..",
                sysroot: SYSROOT,
                env: vec![],
                expected: Ok(InputPlan {
                    files: paths(&["/w/a/src/lib.rs"]),
                    dirs: paths(&["/w/a", "/w/all", "/w/libs"]),
                    output_dirs: paths(&["/w/a"]),
                }),
            },
            Case {
                name: "sysroot files and dirs are left out",
                job: job(&format!(
                    "--crate-name a src/lib.rs --crate-type lib --out-dir /w/o \
                     --extern core={SYSROOT}/lib/rustlib/x86_64-unknown-linux-gnu/lib/libcore-120cbae4e86ec454.rmeta \
                     -L native={SYSROOT}/lib/rustlib/x86_64-unknown-linux-gnu/lib"
                )),
                depinfo: depinfo(&[
                    "src/lib.rs",
                    STD,
                    // The same sysroot, spelled through `..`.
                    "/root/.rustup/toolchains/other/../stable-x86_64-unknown-linux-gnu/lib/liballoc.rmeta",
                    // A sibling whose name only starts like the sysroot.
                    "/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu-old/lib/x.rmeta",
                ]),
                cwd: "/w",
                sysroot: SYSROOT,
                env: vec![],
                expected: Ok(InputPlan {
                    files: paths(&[
                        "/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu-old/lib/x.rmeta",
                        "/w/src/lib.rs",
                    ]),
                    dirs: paths(&["/w", "/w/o"]),
                    output_dirs: paths(&["/w/o"]),
                }),
            },
            Case {
                name: "an empty sysroot excludes nothing",
                job: job("--crate-name a src/lib.rs --crate-type lib --out-dir /w/o"),
                depinfo: depinfo(&["src/lib.rs", STD]),
                cwd: "/w",
                sysroot: "",
                env: vec![],
                expected: Ok(InputPlan {
                    files: paths(&[STD, "/w/src/lib.rs"]),
                    dirs: paths(&["/w", "/w/o"]),
                    output_dirs: paths(&["/w/o"]),
                }),
            },
            Case {
                name: "a dep-info file under /proc",
                job: job("--crate-name a src/lib.rs --crate-type lib"),
                depinfo: depinfo(&["src/lib.rs", "/proc/self/environ"]),
                cwd: "/w",
                sysroot: SYSROOT,
                env: vec![],
                expected: Err(InputError::ForbiddenPath(PathBuf::from(
                    "/proc/self/environ",
                ))),
            },
            Case {
                name: "a relative path that climbs into /dev",
                job: job("--crate-name a src/lib.rs --crate-type lib"),
                depinfo: depinfo(&["src/lib.rs", "../../../dev/../dev/null"]),
                cwd: "/w/a",
                sysroot: SYSROOT,
                env: vec![],
                expected: Err(InputError::ForbiddenPath(PathBuf::from("/dev/null"))),
            },
            Case {
                name: "a search path under /sys",
                job: job("--crate-name a src/lib.rs --crate-type lib -L native=/sys/kernel"),
                depinfo: depinfo(&["src/lib.rs"]),
                cwd: "/w",
                sysroot: SYSROOT,
                env: vec![],
                expected: Err(InputError::ForbiddenPath(PathBuf::from("/sys/kernel"))),
            },
            Case {
                name: "/process is not /proc",
                job: job(
                    "--crate-name a /process/src/lib.rs --crate-type lib --out-dir /process/o",
                ),
                depinfo: depinfo(&[]),
                cwd: "/process",
                sysroot: SYSROOT,
                env: vec![],
                expected: Ok(InputPlan {
                    files: paths(&["/process/src/lib.rs"]),
                    dirs: paths(&["/process", "/process/o"]),
                    output_dirs: paths(&["/process/o"]),
                }),
            },
            Case {
                name: "a relative cwd",
                job: job("--crate-name a src/lib.rs --crate-type lib"),
                depinfo: depinfo(&["src/lib.rs"]),
                cwd: "w/a",
                sysroot: SYSROOT,
                env: vec![],
                expected: Err(InputError::NotAbsolute(PathBuf::from("w/a"))),
            },
        ];
        for case in cases {
            let got = plan(
                &case.job,
                &case.depinfo,
                Path::new(case.cwd),
                Path::new(case.sysroot),
                &case.env,
            );
            assert_eq!(got, case.expected, "{}", case.name);
        }
    }

    #[test]
    fn resolves_static_archives() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        for dir in ["native", "all", "plain", "deps", "dir/libdir.a"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        for file in [
            "native/libfirst.a",
            "all/libfirst.a",
            "plain/libplainonly.a",
            "deps/libdepsonly.a",
            "native/zstd.lib",
        ] {
            std::fs::write(root.join(file), b"!<arch>\n").unwrap();
        }
        let root_str = root.to_str().unwrap();
        let search = format!(
            "-L native={root_str}/native -L all={root_str}/all -L {root_str}/plain \
                              -L dependency={root_str}/deps -L native={root_str}/dir"
        );
        let searched = |name: &str| -> Vec<PathBuf> {
            ["native", "all", "plain", "dir"]
                .iter()
                .map(|dir| root.join(dir).join(name))
                .collect()
        };
        // Name, `--emit` value, `-l` flags, and the archives expected.
        type Case<'a> = (&'a str, &'a str, &'a str, Result<Vec<PathBuf>, InputError>);
        let cases: Vec<Case<'_>> = vec![
            (
                "first match wins",
                "link",
                "-l static=first",
                Ok(vec![root.join("native/libfirst.a")]),
            ),
            (
                "plain -L is searched",
                "link",
                "-lstatic=plainonly",
                Ok(vec![root.join("plain/libplainonly.a")]),
            ),
            (
                "verbatim name",
                "link",
                "-l static:+verbatim,+whole-archive=zstd.lib",
                Ok(vec![root.join("native/zstd.lib")]),
            ),
            (
                "dependency dirs are not searched",
                "link",
                "-l static=depsonly",
                Err(InputError::NativeLibNotFound {
                    name: "depsonly".into(),
                    searched: searched("libdepsonly.a"),
                }),
            ),
            (
                "a directory is not an archive",
                "link",
                "-l static=dir",
                Err(InputError::NativeLibNotFound {
                    name: "dir".into(),
                    searched: searched("libdir.a"),
                }),
            ),
            (
                "unbundled libraries are not read",
                "link",
                "-l static:-bundle=missing",
                Ok(vec![]),
            ),
            (
                "check builds do not read archives",
                "dep-info,metadata",
                "-l static=missing",
                Ok(vec![]),
            ),
            (
                "dylibs are linked later",
                "link",
                "-l dylib=missing -l missing2",
                Ok(vec![]),
            ),
        ];
        for (name, emit, libs, expected) in cases {
            let job = job(&format!(
                "--crate-name a src/lib.rs --crate-type lib --emit={emit} {search} {libs}"
            ));
            let got = plan(
                &job,
                &depinfo(&[]),
                Path::new("/w"),
                Path::new(SYSROOT),
                &[],
            )
            .map(|plan| {
                plan.files
                    .into_iter()
                    .filter(|file| file.starts_with(root))
                    .collect::<Vec<_>>()
            });
            assert_eq!(got, expected, "{name}");
        }
    }
}

#[cfg(test)]
mod prepass_tests {
    use super::*;
    use crate::argv::{Classification, classify};

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    fn job(args: &[String]) -> CompileJob {
        match classify(args) {
            Classification::Distribute(job) => job,
            Classification::Local(r) => panic!("{r}"),
        }
    }

    #[test]
    fn only_foreign_libraries_skip_the_prepass() {
        let cases = [
            (
                "--crate-name serde src/lib.rs --crate-type lib --cap-lints allow",
                true,
            ),
            (
                "--crate-name serde src/lib.rs --crate-type rlib --cap-lints=warn",
                true,
            ),
            // A workspace member: it may #[path] or include! anything.
            ("--crate-name base src/lib.rs --crate-type lib", false),
            // A staticlib needs every transitive rlib, which only dep-info names.
            (
                "--crate-name s src/lib.rs --crate-type staticlib --cap-lints allow",
                false,
            ),
        ];
        for (line, skip) in cases {
            let a = args(line);
            assert_eq!(can_skip_prepass(&a, &job(&a)), skip, "{line}");
        }
    }

    #[test]
    fn dependency_dirs_yield_their_crate_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let deps = dir.path().join("deps");
        std::fs::create_dir_all(deps.join("rmeta1234")).unwrap();
        for f in [
            "libserde-1.rmeta",
            "libserde-1.rlib",
            "libderive-2.so",
            "serde-1.d",
            ".distcc-rs-tmp.rmeta",
            "build_script-3",
        ] {
            std::fs::write(deps.join(f), b"x").unwrap();
        }
        let a = args(&format!(
            "--crate-name x src/lib.rs --crate-type lib -L dependency={} --cap-lints allow",
            deps.display()
        ));
        let got = dependency_crate_files(&job(&a), dir.path()).unwrap();
        let names: Vec<String> = got
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["libderive-2.so", "libserde-1.rmeta"]);
    }
}
