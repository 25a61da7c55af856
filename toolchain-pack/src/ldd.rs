//! Asks `ldd` which shared libraries a toolchain binary loads. A bundle ships
//! these system libraries (and the loader) so that rustc, and the proc-macro
//! `.so` files it loads, run against the client's glibc on any node.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::PackError;

/// What `ldd` reported for one file.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Linkage {
    /// `(needed name, resolved path)` for each library, in `ldd` order.
    pub libs: Vec<(String, PathBuf)>,
    /// The dynamic loader (`/lib64/ld-linux-x86-64.so.2`), if one is named.
    pub interpreter: Option<PathBuf>,
}

/// Runs `ldd` on `path`. Files that are not dynamically linked (a static
/// rustc, a linker script named like a library, a shell script in a test
/// sysroot) have no libraries rather than being an error.
pub(crate) fn linkage(path: &Path) -> Result<Linkage, PackError> {
    let fail = |message: String| PackError::Ldd {
        path: path.to_owned(),
        message,
    };
    let out = Command::new("ldd")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(format!("cannot run ldd: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let not_dynamic = |s: &str| s.contains("not a dynamic executable");
    if !out.status.success() {
        if not_dynamic(&stdout) || not_dynamic(&stderr) {
            return Ok(Linkage::default());
        }
        return Err(fail(format!("{}: {}", out.status, stderr.trim())));
    }
    parse(&stdout).map_err(fail)
}

/// Parses glibc `ldd` output. The lines look like
/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)`,
/// `/lib64/ld-linux-x86-64.so.2 (0x…)` for the loader, and
/// `linux-vdso.so.1 (0x…)` for the kernel's vDSO, which has no file.
fn parse(output: &str) -> Result<Linkage, String> {
    let mut linkage = Linkage::default();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some((name, target)) = line.split_once("=>") {
            let name = name.trim();
            let target = target.trim();
            if target.starts_with("not found") {
                return Err(format!("library {name} not found"));
            }
            // Old glibc prints the vDSO as `linux-vdso.so.1 =>  (0x…)`.
            if target.starts_with('/') {
                linkage
                    .libs
                    .push((name.to_owned(), PathBuf::from(strip_address(target))));
            }
        } else if line.starts_with('/') {
            linkage.interpreter = Some(PathBuf::from(strip_address(line)));
        }
        // Anything else is the vDSO or a "statically linked" note.
    }
    Ok(linkage)
}

/// Removes the trailing ` (0x…)` load address, keeping paths with spaces intact.
fn strip_address(s: &str) -> &str {
    match s.rfind(" (") {
        Some(i) if s.ends_with(')') => s[..i].trim_end(),
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUSTC_LDD: &str = "\tlinux-vdso.so.1 (0x00007fdc87fff000)
\tlibrustc_driver-6108105cd7e839cf.so => /root/.rustup/toolchains/stable/bin/../lib/librustc_driver-6108105cd7e839cf.so (0x00007fdc80000000)
\tlibdl.so.2 => /lib/x86_64-linux-gnu/libdl.so.2 (0x00007fdc87fe9000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fdc7fe1e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007fdc88001000)
\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007fdc87ebe000)
";

    #[test]
    fn parses_libraries_and_interpreter() {
        let l = parse(RUSTC_LDD).unwrap();
        assert_eq!(
            l.interpreter.as_deref(),
            Some(Path::new("/lib64/ld-linux-x86-64.so.2"))
        );
        let names: Vec<&str> = l.libs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "librustc_driver-6108105cd7e839cf.so",
                "libdl.so.2",
                "libc.so.6",
                "libz.so.1"
            ]
        );
        assert_eq!(l.libs[2].1, Path::new("/lib/x86_64-linux-gnu/libc.so.6"));
    }

    #[test]
    fn old_vdso_form_and_static_are_skipped() {
        let l = parse("\tlinux-vdso.so.1 =>  (0x00007ffd)\n\tstatically linked\n").unwrap();
        assert_eq!(l, Linkage::default());
    }

    #[test]
    fn missing_library_is_an_error() {
        let err = parse("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(err.contains("libfoo.so.1"), "{err}");
    }

    #[test]
    fn non_elf_file_has_no_libraries() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("script");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        assert_eq!(linkage(&script).unwrap(), Linkage::default());
    }
}
