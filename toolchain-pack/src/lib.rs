//! Hermetic, content-addressed rustc toolchain bundles.
//!
//! The client packs its own rustc (compiler, driver, LLVM, the host target's
//! standard library, and the system libraries and dynamic loader they link
//! against) into a reproducible `.tar.zst` named by the BLAKE3 of its
//! uncompressed tar stream. Nodes without any Rust install verify and unpack
//! it, then start rustc through the bundled loader:
//!
//! ```text
//! <dir>/<interpreter> --library-path <dir>/lib:<dir>/sys <dir>/bin/rustc …
//! ```
//!
//! rustc finds its sysroot (the unpack directory) by itself, so no
//! environment is needed.

mod bundle;
mod cache;
mod error;
mod extraction;
mod hashing;
mod ldd;
mod manifest;
mod toolchain;

pub use bundle::{Bundle, PackOptions, create};
pub use cache::ensure_cached;
pub use error::PackError;
pub use extraction::{identify_file, unpack, verify_file};
pub use manifest::{BUNDLE_FORMAT, BUNDLE_MANIFEST_PATH, BundleFile, BundleManifest};
pub use toolchain::{ToolchainInfo, detect, locate_sysroot};

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, File};
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::Instant;

    /// The rustc running these tests: `$RUSTC` if cargo set it, else `rustc`.
    fn host_rustc() -> PathBuf {
        std::env::var_os("RUSTC").map_or_else(|| PathBuf::from("rustc"), PathBuf::from)
    }

    /// Packs the real toolchain, unpacks it, and compiles a crate with the
    /// bundled rustc under an empty environment through the bundled loader,
    /// as a node without Rust would.
    #[test]
    fn real_toolchain_bundle_compiles_a_crate_hermetically() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let opts = PackOptions::default();

        let started = Instant::now();
        let bundle = ensure_cached(&cache, &host_rustc(), &opts).unwrap();
        let pack_time = started.elapsed();
        eprintln!(
            "packed {} files, {} MiB raw, {} MiB compressed in {:.2?}",
            bundle.manifest.files.len(),
            bundle.manifest.total_size() >> 20,
            bundle.compressed_size >> 20,
            pack_time
        );
        let mtime = fs::metadata(&bundle.path).unwrap().modified().unwrap();
        let m = &bundle.manifest;
        assert_eq!(m.rustc, "bin/rustc");
        assert!(
            m.version_line().starts_with("rustc "),
            "{}",
            m.version_line()
        );
        assert!(m.interpreter.starts_with("sys/ld-"), "{}", m.interpreter);
        assert!(
            m.files
                .iter()
                .any(|f| f.path.starts_with("lib/librustc_driver-"))
        );
        assert!(m.files.iter().any(|f| f.path == "sys/libc.so.6"));
        assert!(
            !m.files.iter().any(|f| f.path.contains("/bin/")),
            "linker bundled"
        );

        // The second call is a cache hit: fast, same bundle, not rewritten.
        let started = Instant::now();
        let again = ensure_cached(&cache, &host_rustc(), &opts).unwrap();
        let hit_time = started.elapsed();
        eprintln!("cache hit in {hit_time:.2?}");
        assert_eq!(again, bundle);
        assert_eq!(
            fs::metadata(&again.path).unwrap().modified().unwrap(),
            mtime
        );
        assert!(
            hit_time < pack_time / 4,
            "hit {hit_time:?} vs pack {pack_time:?}"
        );

        // Naming the compiler binary inside the sysroot (rather than a
        // rustup proxy) finds the same entry without spawning rustc at all.
        let real_rustc = detect(&host_rustc()).unwrap().sysroot.join("bin/rustc");
        let started = Instant::now();
        let direct = ensure_cached(&cache, &real_rustc, &opts).unwrap();
        eprintln!("cache hit via the real binary in {:.2?}", started.elapsed());
        assert_eq!(direct, bundle);

        let root = dir.path().join("node/toolchain");
        let started = Instant::now();
        let manifest = unpack(File::open(&bundle.path).unwrap(), &root, bundle.id).unwrap();
        eprintln!("unpacked in {:.2?}", started.elapsed());
        assert_eq!(&manifest, m);

        let work = dir.path().join("work");
        fs::create_dir(&work).unwrap();
        fs::write(work.join("one.rs"), "pub fn one() -> u32 { 1 }\n").unwrap();
        let status = bundled_rustc(&root, &manifest)
            .current_dir(&work)
            .args([
                "--crate-type",
                "lib",
                "--crate-name",
                "one",
                "--edition",
                "2024",
            ])
            .args(["one.rs", "--out-dir", "out"])
            .status()
            .unwrap();
        assert!(status.success(), "bundled rustc failed: {status}");
        assert!(work.join("out/libone.rlib").is_file());

        // The bundle's rustc must see the bundle as its sysroot, not the
        // host toolchain.
        let out = bundled_rustc(&root, &manifest)
            .args(["--print", "sysroot"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let printed = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        assert_eq!(
            fs::canonicalize(printed).unwrap(),
            fs::canonicalize(&root).unwrap()
        );
    }

    /// A command that starts the bundled rustc the way a node does.
    fn bundled_rustc(root: &Path, manifest: &BundleManifest) -> Command {
        let library_path = manifest
            .library_path
            .iter()
            .map(|d| root.join(d).display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let mut cmd = Command::new(root.join(&manifest.interpreter));
        cmd.env_clear()
            .arg("--library-path")
            .arg(library_path)
            .arg(root.join(&manifest.rustc));
        cmd
    }
}
