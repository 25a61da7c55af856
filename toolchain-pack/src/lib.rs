//! Hermetic, content-addressed rustc toolchain bundles.
//!
//! The client packs its own rustc (compiler, driver, LLVM, the standard
//! library of the host and of any extra targets, and the system libraries
//! and dynamic loader they link against) into a reproducible `.tar.zst`
//! named by the BLAKE3 of its uncompressed tar stream ([`create`],
//! [`ensure_cached`]; [`gc`] cleans that cache). Nodes without any Rust
//! install verify and unpack it ([`unpack`] checks the hash and every file
//! against the manifest), then start rustc through the bundled loader
//! ([`rustc_command`]):
//!
//! ```text
//! <dir>/<interpreter> --library-path <dir>/lib:<dir>/sys <dir>/bin/rustc …
//! ```
//!
//! rustc finds its sysroot (the unpack directory) by itself, so no
//! environment is needed. [`smoke_test`] runs an unpacked bundle's rustc on
//! a tiny crate for each of its targets, under a caller-chosen sandbox.

mod bundle;
mod cache;
mod error;
mod extraction;
mod hashing;
mod ldd;
mod manifest;
mod smoke;
mod toolchain;

pub use bundle::{Bundle, PackOptions, PackProgress, create, create_with_progress};
pub use cache::{
    CacheEntry, CacheFile, CacheListing, CachedBundle, EntryState, GcReport, Removal,
    RemovalReason, ensure_cached, gc, list_cache,
};
pub use error::PackError;
pub use extraction::{
    UnpackLimits, Verified, identify_file, unpack, unpack_with_limits, verify_contents, verify_file,
};
pub use manifest::{BUNDLE_FORMAT, BUNDLE_MANIFEST_PATH, BundleFile, BundleManifest};
pub use smoke::{
    SMOKE_TIMEOUT, SmokeReport, TargetCheck, bwrap_launcher, rustc_command, smoke_test,
    smoke_test_as,
};
pub use toolchain::{ToolchainInfo, bundle_targets, detect, find_program, locate_sysroot};

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

        // The smoke test passes bare and, where bubblewrap is installed,
        // inside the sandbox that shows it nothing but the bundle.
        let smoke = dir.path().join("smoke");
        fs::create_dir(&smoke).unwrap();
        let report = smoke_test(&root, &manifest, &smoke, &[]).unwrap();
        assert_eq!(report.version, m.version_line());
        assert_eq!(report.targets.len(), 1);
        assert!(report.targets[0].std);
        match find_program(Path::new("bwrap")) {
            Some(bwrap) => {
                let sandboxed = dir.path().join("sandboxed");
                fs::create_dir(&sandboxed).unwrap();
                let launcher = bwrap_launcher(&bwrap, &root, &sandboxed);
                let started = Instant::now();
                smoke_test(&root, &manifest, &sandboxed, &launcher).unwrap();
                eprintln!("sandboxed smoke test in {:.2?}", started.elapsed());
                // The sandbox really hides the host: the host's own rustc
                // cannot be started inside it.
                let mut hidden = launcher.clone();
                hidden.push(host_rustc_binary().into());
                let status = Command::new(&hidden[0])
                    .args(&hidden[1..])
                    .arg("-V")
                    .stderr(std::process::Stdio::null())
                    .status()
                    .unwrap();
                assert!(!status.success(), "the host's rustc ran in the sandbox");
            }
            None => eprintln!("bwrap not installed: skipping the sandboxed smoke test"),
        }

        // Packing again, on one thread instead of all, gives the same bytes:
        // the acceptance check at full size, where zstd splits the stream
        // into many jobs.
        let started = Instant::now();
        let info = detect(&host_rustc()).unwrap();
        let single = PackOptions {
            threads: 1,
            ..PackOptions::default()
        };
        let again = create(&info, &single, &dir.path().join("again")).unwrap();
        eprintln!("packed again on one thread in {:.2?}", started.elapsed());
        assert_eq!(again.id, bundle.id);
        assert_eq!(again.compressed_size, bundle.compressed_size);
        assert_eq!(file_digest(&again.path), file_digest(&bundle.path));
    }

    /// The real compiler binary of the host toolchain (not a rustup proxy).
    fn host_rustc_binary() -> PathBuf {
        detect(&host_rustc()).unwrap().sysroot.join("bin/rustc")
    }

    fn file_digest(path: &Path) -> blake3::Hash {
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(File::open(path).unwrap()).unwrap();
        hasher.finalize()
    }

    /// A command that starts the bundled rustc the way a node does.
    fn bundled_rustc(root: &Path, manifest: &BundleManifest) -> Command {
        let argv = rustc_command(root, manifest);
        let mut cmd = Command::new(&argv[0]);
        cmd.env_clear().args(&argv[1..]);
        cmd
    }
}
