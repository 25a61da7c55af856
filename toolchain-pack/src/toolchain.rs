//! The local toolchain: asking rustc about itself, and choosing which of its
//! files go into a bundle. Only what an rlib compile needs is taken
//! (research: rustc-mechanics §7): the compiler, and the standard library of
//! the host and of any extra targets asked for. Linking stays on the client,
//! so the self-contained linker, docs and unrequested targets are left out.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::PackError;
use crate::ldd;

/// What rustc says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolchainInfo {
    /// The rustc that was asked (possibly a rustup proxy).
    pub rustc: PathBuf,
    /// The canonical sysroot that rustc uses.
    pub sysroot: PathBuf,
    /// The host triple, e.g. `x86_64-unknown-linux-gnu`.
    pub host: String,
    /// The full `rustc -vV` output.
    pub version_verbose: String,
}

/// Runs `rustc -vV` and `rustc --print sysroot`. Going through rustc rather
/// than guessing from its path is what makes rustup proxies and
/// `rust-toolchain.toml` overrides resolve to the toolchain cargo would use.
pub fn detect(rustc: &Path) -> Result<ToolchainInfo, PackError> {
    let version_verbose = run_rustc(rustc, &["-vV"])?;
    let host = version_verbose
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|h| h.trim().to_owned())
        .ok_or_else(|| PackError::Rustc {
            rustc: rustc.to_owned(),
            message: "`rustc -vV` printed no `host:` line".into(),
        })?;
    let sysroot = sysroot_from_rustc(rustc)?;
    Ok(ToolchainInfo {
        rustc: rustc.to_owned(),
        sysroot,
        host,
        version_verbose,
    })
}

/// Finds the sysroot cheaply when `rustc` is the real compiler binary inside
/// a sysroot (`<sysroot>/bin/rustc`), which is where rustc itself looks, and
/// asks rustc otherwise (rustup proxies, distribution layouts). The cache
/// calls this on every compile, where spawning rustc would cost tens of
/// milliseconds.
pub fn locate_sysroot(rustc: &Path) -> Result<PathBuf, PackError> {
    match sysroot_from_location(rustc) {
        Some(sysroot) => Ok(sysroot),
        None => sysroot_from_rustc(rustc),
    }
}

fn sysroot_from_location(rustc: &Path) -> Option<PathBuf> {
    let path = if rustc.components().count() == 1 {
        search_path(rustc.as_os_str())?
    } else {
        rustc.to_owned()
    };
    let real = fs::canonicalize(path).ok()?;
    if real.file_name()? != "rustc" {
        return None;
    }
    let bin = real.parent()?;
    if bin.file_name()? != "bin" {
        return None;
    }
    let root = bin.parent()?;
    let has_driver = driver_libraries(root).is_ok_and(|d| !d.is_empty());
    (root.join("lib/rustlib").is_dir() && has_driver).then(|| root.to_owned())
}

/// Finds a program the way the shell would: a path with a slash is taken as
/// it is (if it is an executable file), a bare name is looked up in `$PATH`.
/// Used to find `bwrap` before promising a sandbox.
pub fn find_program(name: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if name.components().count() > 1 {
        let executable =
            fs::metadata(name).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        return executable.then(|| name.to_owned());
    }
    search_path(name.as_os_str())
}

/// Looks a bare command name up in `$PATH` the way the shell would.
fn search_path(name: &OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn sysroot_from_rustc(rustc: &Path) -> Result<PathBuf, PackError> {
    let printed = run_rustc(rustc, &["--print", "sysroot"])?;
    let sysroot = PathBuf::from(printed.trim());
    fs::canonicalize(&sysroot).map_err(PackError::io(sysroot))
}

fn run_rustc(rustc: &Path, args: &[&str]) -> Result<String, PackError> {
    let fail = |message: String| PackError::Rustc {
        rustc: rustc.to_owned(),
        message,
    };
    let out = Command::new(rustc)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(format!("cannot run `{}`: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(fail(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    String::from_utf8(out.stdout)
        .map_err(|_| fail(format!("`{}` printed non-UTF-8 output", args.join(" "))))
}

/// `<sysroot>/lib/librustc_driver-*.so`, sorted. There is normally exactly one.
pub(crate) fn driver_libraries(sysroot: &Path) -> Result<Vec<PathBuf>, PackError> {
    Ok(lib_dir_entries(sysroot)?
        .into_iter()
        .filter(|(name, _)| name.starts_with("librustc_driver-") && name.ends_with(".so"))
        .map(|(_, path)| path)
        .collect())
}

/// The regular files (symlinks followed) directly in `<sysroot>/lib`, sorted
/// by name.
fn lib_dir_entries(sysroot: &Path) -> Result<Vec<(String, PathBuf)>, PackError> {
    let lib = sysroot.join("lib");
    let mut out = Vec::new();
    for entry in fs::read_dir(&lib).map_err(PackError::io(&lib))? {
        let entry = entry.map_err(PackError::io(&lib))?;
        let path = entry.path();
        // Names we cannot represent in the manifest cannot be ours to ship.
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            out.push((name, path));
        }
    }
    out.sort();
    Ok(out)
}

/// The files chosen for a bundle and how to start the bundled rustc.
#[derive(Debug)]
pub(crate) struct Selection {
    /// Bundle-relative path to source path. Sources may be symlinks; their
    /// content is stored under the bundle name, so bundles hold no links.
    pub files: BTreeMap<String, PathBuf>,
    pub interpreter: String,
    pub library_path: Vec<String>,
}

/// The targets a bundle holds the standard library of: the host's, always,
/// plus `extra`, sorted and without duplicates. The host's is never left
/// out: proc-macros are built for the host, and a cross compile that uses
/// one still makes rustc load it together with the host's standard library.
pub fn bundle_targets(host: &str, extra: &[String]) -> Result<Vec<String>, PackError> {
    let mut targets = vec![host.to_owned()];
    for target in extra {
        check_target_name(target)?;
        targets.push(target.clone());
    }
    targets.sort();
    targets.dedup();
    Ok(targets)
}

/// Accepts target triples such as `x86_64-unknown-linux-gnu` or
/// `wasm32-wasip1`. A target becomes a directory name under
/// `lib/rustlib/`, so anything that could step out of that directory, and
/// custom target specification files (`foo.json` paths), are refused.
fn check_target_name(target: &str) -> Result<(), PackError> {
    let plain = target
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if target.is_empty() || !plain || target.starts_with('.') || target.ends_with(".json") {
        return Err(PackError::InvalidTarget(target.to_owned()));
    }
    Ok(())
}

/// Chooses the bundle contents for `info`'s sysroot: the compiler and the
/// standard library of the host and of every target in `extra_targets`.
pub(crate) fn select(
    info: &ToolchainInfo,
    extra_targets: &[String],
) -> Result<Selection, PackError> {
    let targets = bundle_targets(&info.host, extra_targets)?;
    let sysroot = fs::canonicalize(&info.sysroot).map_err(PackError::io(&info.sysroot))?;
    let mut files = BTreeMap::new();

    let rustc = sysroot.join("bin/rustc");
    if !fs::metadata(&rustc).is_ok_and(|m| m.is_file()) {
        return Err(PackError::MissingFile(rustc));
    }
    files.insert("bin/rustc".to_owned(), rustc.clone());

    // The driver and LLVM are what rustc loads through its RUNPATH
    // `$ORIGIN/../lib`; the other files in lib/ belong to other tools.
    let mut dynamic = vec![rustc];
    for (name, path) in lib_dir_entries(&sysroot)? {
        let driver = name.starts_with("librustc_driver-") && name.ends_with(".so");
        if driver || name.starts_with("libLLVM") {
            files.insert(format!("lib/{name}"), path.clone());
            dynamic.push(path);
        }
    }
    if !files.keys().any(|k| k.starts_with("lib/librustc_driver-")) {
        return Err(PackError::MissingFile(
            sysroot.join("lib/librustc_driver-*.so"),
        ));
    }

    // The whole `lib` directory of each target: rlibs and rmetas, plus
    // whatever else rustup put there (self-contained startup objects), which
    // is small next to the libraries.
    for target in &targets {
        let target_lib = format!("lib/rustlib/{target}/lib");
        let target_dir = sysroot.join(&target_lib);
        if !target_dir.is_dir() {
            return Err(PackError::TargetNotInstalled {
                target: target.clone(),
                sysroot: sysroot.clone(),
            });
        }
        walk(&target_dir, &target_lib, &mut files)?;
    }

    let mut interpreter = String::new();
    let mut system = BTreeMap::new();
    for (i, path) in dynamic.iter().enumerate() {
        let linkage = ldd::linkage(path)?;
        let loader = linkage
            .interpreter
            .map(|p| (file_name_of(&p).to_owned(), p));
        if let Some((name, _)) = &loader
            && i == 0
        {
            interpreter = format!("sys/{name}");
        }
        for (name, resolved) in linkage.libs.into_iter().chain(loader) {
            let real = fs::canonicalize(&resolved).map_err(PackError::io(&resolved))?;
            // The driver and LLVM resolve into the sysroot and are in lib/.
            if real.starts_with(&sysroot) {
                continue;
            }
            // Keep the first resolution of a name; ldd resolves the same name
            // to the same file for every object of one process anyway.
            system
                .entry(format!("sys/{}", file_name_of(Path::new(&name))))
                .or_insert(real);
        }
    }
    let mut library_path = vec!["lib".to_owned()];
    if !system.is_empty() {
        library_path.push("sys".to_owned());
    }
    files.extend(system);
    Ok(Selection {
        files,
        interpreter,
        library_path,
    })
}

/// The last component of a path as text; `ldd` output is text already.
fn file_name_of(path: &Path) -> &str {
    path.file_name().and_then(OsStr::to_str).unwrap_or_default()
}

/// Adds every regular file under `dir` (symlinks to files followed, symlinks
/// to directories skipped so a loop cannot trap us) as `<rel>/<name>`.
fn walk(dir: &Path, rel: &str, files: &mut BTreeMap<String, PathBuf>) -> Result<(), PackError> {
    for entry in fs::read_dir(dir).map_err(PackError::io(dir))? {
        let entry = entry.map_err(PackError::io(dir))?;
        let path = entry.path();
        let name = entry.file_name().into_string().map_err(|_| PackError::Io {
            path: path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, "file name is not UTF-8"),
        })?;
        let child = format!("{rel}/{name}");
        let link = entry.file_type().map_err(PackError::io(&path))?;
        let meta = fs::metadata(&path).map_err(PackError::io(&path))?;
        if meta.is_dir() && !link.is_symlink() {
            walk(&path, &child, files)?;
        } else if meta.is_file() {
            files.insert(child, path);
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    pub(crate) const FAKE_HOST: &str = "x86_64-unknown-linux-gnu";

    /// Builds a small sysroot whose rustc is a shell script answering `-vV`
    /// and `--print sysroot`; enough for packing and caching tests.
    pub(crate) fn fake_sysroot(root: &Path) -> ToolchainInfo {
        let write = |rel: &str, content: &[u8], mode: u32| {
            let p = root.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, content).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        };
        let script = format!(
            "#!/bin/sh\ncase \"$1\" in\n  -vV) printf 'rustc 0.0.0-fake\\nhost: {FAKE_HOST}\\n' ;;\n  --print) cd \"$(dirname \"$0\")/..\" && pwd ;;\nesac\n"
        );
        write("bin/rustc", script.as_bytes(), 0o755);
        write("lib/librustc_driver-0123.so", &[1u8; 5000], 0o644);
        write("lib/libLLVM.so.22.1-fake", &[2u8; 70_000], 0o644);
        write("lib/libstd-unrelated.so", b"not bundled", 0o644);
        let t = format!("lib/rustlib/{FAKE_HOST}/lib");
        write(&format!("{t}/libstd-1.rlib"), b"rlib", 0o644);
        write(&format!("{t}/libstd-1.rmeta"), &[3u8; 1000], 0o644);
        write(&format!("{t}/libcore-1.rmeta"), b"core", 0o644);
        write(&format!("{t}/nested/crt.o"), b"obj", 0o755);
        write(
            &format!("lib/rustlib/{FAKE_HOST}/bin/rust-lld"),
            b"lld",
            0o755,
        );
        write("share/doc/rust/README", b"docs", 0o644);
        ToolchainInfo {
            rustc: root.join("bin/rustc"),
            sysroot: fs::canonicalize(root).unwrap(),
            host: FAKE_HOST.to_owned(),
            version_verbose: format!("rustc 0.0.0-fake\nhost: {FAKE_HOST}\n"),
        }
    }

    #[test]
    fn selection_takes_only_what_rlib_compiles_need() {
        let dir = tempfile::tempdir().unwrap();
        let info = fake_sysroot(dir.path());
        let sel = select(&info, &[]).unwrap();
        let names: Vec<&str> = sel.files.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "bin/rustc",
                "lib/libLLVM.so.22.1-fake",
                "lib/librustc_driver-0123.so",
                "lib/rustlib/x86_64-unknown-linux-gnu/lib/libcore-1.rmeta",
                "lib/rustlib/x86_64-unknown-linux-gnu/lib/libstd-1.rlib",
                "lib/rustlib/x86_64-unknown-linux-gnu/lib/libstd-1.rmeta",
                "lib/rustlib/x86_64-unknown-linux-gnu/lib/nested/crt.o",
            ]
        );
        // A shell-script rustc is not dynamically linked: no loader, no sys/.
        assert_eq!(sel.interpreter, "");
        assert_eq!(sel.library_path, ["lib"]);
    }

    #[test]
    fn detect_and_locate_agree_on_fake_toolchain() {
        let dir = tempfile::tempdir().unwrap();
        let info = fake_sysroot(dir.path());
        let detected = detect(&info.rustc).unwrap();
        assert_eq!(detected.host, FAKE_HOST);
        assert_eq!(detected.sysroot, info.sysroot);
        assert_eq!(locate_sysroot(&info.rustc).unwrap(), info.sysroot);
        assert_eq!(sysroot_from_location(&info.rustc), Some(info.sysroot));
    }

    #[test]
    fn missing_driver_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let info = fake_sysroot(dir.path());
        fs::remove_file(dir.path().join("lib/librustc_driver-0123.so")).unwrap();
        assert!(matches!(select(&info, &[]), Err(PackError::MissingFile(_))));
    }

    #[test]
    fn extra_targets_add_their_standard_library() {
        let dir = tempfile::tempdir().unwrap();
        let info = fake_sysroot(dir.path());
        let arm = "aarch64-unknown-linux-gnu";
        let arm_lib = dir.path().join(format!("lib/rustlib/{arm}/lib"));
        fs::create_dir_all(&arm_lib).unwrap();
        fs::write(arm_lib.join("libstd-2.rlib"), b"arm std").unwrap();
        fs::write(arm_lib.join("libcore-2.rmeta"), b"arm core").unwrap();
        let arm_bin = dir.path().join(format!("lib/rustlib/{arm}/bin"));
        fs::create_dir_all(&arm_bin).unwrap();
        fs::write(arm_bin.join("rust-lld"), b"lld").unwrap();

        // Naming the host again, or a target twice, changes nothing.
        let extra = [arm.to_owned(), FAKE_HOST.to_owned(), arm.to_owned()];
        let sel = select(&info, &extra).unwrap();
        let arm_files: Vec<&str> = sel
            .files
            .keys()
            .map(String::as_str)
            .filter(|k| k.contains(arm))
            .collect();
        assert_eq!(
            arm_files,
            [
                "lib/rustlib/aarch64-unknown-linux-gnu/lib/libcore-2.rmeta",
                "lib/rustlib/aarch64-unknown-linux-gnu/lib/libstd-2.rlib",
            ]
        );
        // The host's standard library stays in.
        assert!(
            sel.files
                .contains_key("lib/rustlib/x86_64-unknown-linux-gnu/lib/libstd-1.rlib")
        );
        assert_eq!(bundle_targets(FAKE_HOST, &extra).unwrap(), [arm, FAKE_HOST]);
    }

    #[test]
    fn missing_or_malformed_target_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let info = fake_sysroot(dir.path());
        let err = select(&info, &["wasm32-unknown-unknown".to_owned()]).unwrap_err();
        match &err {
            PackError::TargetNotInstalled { target, sysroot } => {
                assert_eq!(target, "wasm32-unknown-unknown");
                assert_eq!(sysroot, &info.sysroot);
            }
            other => panic!("expected TargetNotInstalled, got {other}"),
        }
        assert!(
            err.to_string()
                .contains("rustup target add wasm32-unknown-unknown"),
            "{err}"
        );

        // A sysroot whose host standard library is missing names the host.
        fs::remove_dir_all(dir.path().join(format!("lib/rustlib/{FAKE_HOST}/lib"))).unwrap();
        assert!(matches!(
            select(&info, &[]),
            Err(PackError::TargetNotInstalled { target, .. }) if target == FAKE_HOST
        ));

        for bad in [
            "",
            "../x86_64-unknown-linux-gnu",
            "a/b",
            ".hidden",
            "my-target.json",
        ] {
            assert!(
                matches!(
                    select(&info, &[bad.to_owned()]),
                    Err(PackError::InvalidTarget(t)) if t == bad
                ),
                "{bad:?} accepted"
            );
        }
    }
}
