//! The manifest stored as the first entry of every bundle. It tells a node how
//! to start the bundled rustc (which loader, which library directories) and
//! lists every file, so the node can check what it unpacked without trusting
//! the archive's own structure.

use std::path::{Component, Path};

use distcc_rs_proto::Digest;
use serde::{Deserialize, Serialize};

use crate::error::PackError;

/// Path of the manifest inside the tar; it is always the first entry.
pub const BUNDLE_MANIFEST_PATH: &str = "distcc-rs-bundle.json";

/// The manifest format this crate writes and accepts.
pub const BUNDLE_FORMAT: u32 = 1;

/// Describes a bundle. It holds no times and no absolute paths, so packing the
/// same toolchain twice yields the same manifest bytes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct BundleManifest {
    /// Always [`BUNDLE_FORMAT`] for bundles written by this version.
    pub format: u32,
    /// The full output of `rustc -vV`.
    pub rustc_version: String,
    /// The host triple from `rustc -vV`, e.g. `x86_64-unknown-linux-gnu`.
    pub host: String,
    /// Relative path of the compiler binary, `bin/rustc`.
    pub rustc: String,
    /// Relative path of the bundled dynamic loader, e.g.
    /// `sys/ld-linux-x86-64.so.2`. Empty when rustc is not a dynamically linked
    /// executable (a static build), in which case it is run directly.
    pub interpreter: String,
    /// Relative directories to pass to the loader as `--library-path`, in order.
    pub library_path: Vec<String>,
    /// Every regular file in the bundle except the manifest, sorted by path.
    pub files: Vec<BundleFile>,
}

/// One regular file of a bundle.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct BundleFile {
    /// Path relative to the bundle root, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 of the content, written as hex so the manifest stays readable.
    #[serde(with = "hex_digest")]
    pub digest: Digest,
    /// Whether the file is stored with mode 0o755 rather than 0o644.
    pub executable: bool,
}

impl BundleManifest {
    /// Total uncompressed size of the listed files. A node reads it from a
    /// manifest it does not trust yet, to make room before unpacking, so
    /// sizes that add up past `u64::MAX` saturate rather than panic.
    pub fn total_size(&self) -> u64 {
        self.files
            .iter()
            .fold(0u64, |total, f| total.saturating_add(f.size))
    }

    /// The first line of `rustc -vV`, e.g. `rustc 1.95.0 (… 2026-…)`.
    pub fn version_line(&self) -> &str {
        self.rustc_version.lines().next().unwrap_or_default()
    }

    /// A `key: value` field of the stored `rustc -vV` output, e.g.
    /// `commit-hash` or `release`.
    pub fn version_field(&self, key: &str) -> Option<&str> {
        self.rustc_version.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim())
        })
    }

    /// The rustc release, e.g. `1.95.0`, from the stored `rustc -vV`.
    pub fn release(&self) -> Option<&str> {
        self.version_field("release")
    }

    /// The commit rustc was built from, from the stored `rustc -vV`
    /// (`unknown` for some distribution builds).
    pub fn commit_hash(&self) -> Option<&str> {
        self.version_field("commit-hash")
    }

    /// The targets whose standard library the bundle holds, sorted. They are
    /// read from the file list (`lib/rustlib/<target>/lib/…`) rather than
    /// stored beside it, so they cannot disagree with what is in the bundle.
    pub fn targets(&self) -> Vec<&str> {
        let mut targets: Vec<&str> = self
            .files
            .iter()
            .filter_map(|f| {
                let rest = f.path.strip_prefix("lib/rustlib/")?;
                let (target, rest) = rest.split_once('/')?;
                rest.starts_with("lib/").then_some(target)
            })
            .collect();
        // Packers write the list sorted, but a manifest from elsewhere need
        // not be.
        targets.sort_unstable();
        targets.dedup();
        targets
    }

    /// Whether the bundle holds the full standard library (`std`) for
    /// `target`, rather than only `core` and `alloc` as `no_std` targets do.
    pub fn has_std(&self, target: &str) -> bool {
        let dir = format!("lib/rustlib/{target}/lib/");
        self.files.iter().any(|f| {
            f.path
                .strip_prefix(&dir)
                .is_some_and(|name| name.starts_with("libstd-") && name.ends_with(".rlib"))
        })
    }

    /// Parses a manifest and checks that the paths a node will use to start
    /// rustc are safe relative paths that the manifest itself lists, so a node
    /// can join them onto the unpack directory without further checks.
    pub fn from_json(bytes: &[u8]) -> Result<Self, PackError> {
        let manifest: BundleManifest = serde_json::from_slice(bytes)
            .map_err(|e| PackError::Malformed(format!("manifest is not valid JSON: {e}")))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The manifest as written into the bundle. Pretty-printed because people
    /// read it with `tar xOf`; serde_json keeps struct field order, so the
    /// bytes are deterministic.
    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes =
            serde_json::to_vec_pretty(self).expect("a manifest always serializes to JSON");
        bytes.push(b'\n');
        bytes
    }

    fn validate(&self) -> Result<(), PackError> {
        if self.format != BUNDLE_FORMAT {
            return Err(PackError::Malformed(format!(
                "unsupported manifest format {} (this build reads {BUNDLE_FORMAT})",
                self.format
            )));
        }
        for file in &self.files {
            check_relative(&file.path)?;
        }
        let listed = |p: &str| self.files.iter().any(|f| f.path == p);
        check_relative(&self.rustc)?;
        if !listed(&self.rustc) {
            return Err(PackError::Malformed(format!(
                "manifest names rustc {:?} but does not list it",
                self.rustc
            )));
        }
        if !self.interpreter.is_empty() {
            check_relative(&self.interpreter)?;
            if !listed(&self.interpreter) {
                return Err(PackError::Malformed(format!(
                    "manifest names interpreter {:?} but does not list it",
                    self.interpreter
                )));
            }
        }
        for dir in &self.library_path {
            check_relative(dir)?;
        }
        Ok(())
    }
}

/// Accepts only non-empty relative paths made of normal components: no root,
/// no `..`, no `.`, so that joining them onto a directory stays inside it.
pub(crate) fn check_relative(path: &str) -> Result<(), PackError> {
    let p = Path::new(path);
    let all_normal = p.components().all(|c| matches!(c, Component::Normal(_)));
    if path.is_empty() || !all_normal {
        return Err(PackError::UnsafePath(path.to_owned()));
    }
    Ok(())
}

/// Serde adapter that writes a [`Digest`] as a 64-digit hex string rather than
/// an array of 32 numbers.
mod hex_digest {
    use distcc_rs_proto::Digest;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(digest: &Digest, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&digest.to_hex())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BundleManifest {
        BundleManifest {
            format: BUNDLE_FORMAT,
            rustc_version: "rustc 1.95.0 (abc 2026-01-01)\nhost: x86_64-unknown-linux-gnu\n".into(),
            host: "x86_64-unknown-linux-gnu".into(),
            rustc: "bin/rustc".into(),
            interpreter: "sys/ld-linux-x86-64.so.2".into(),
            library_path: vec!["lib".into(), "sys".into()],
            files: vec![
                BundleFile {
                    path: "bin/rustc".into(),
                    size: 3,
                    digest: Digest([7; 32]),
                    executable: true,
                },
                BundleFile {
                    path: "sys/ld-linux-x86-64.so.2".into(),
                    size: 5,
                    digest: Digest([9; 32]),
                    executable: true,
                },
            ],
        }
    }

    #[test]
    fn manifest_round_trips_with_hex_digests() {
        let m = sample();
        let json = m.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains(&"07".repeat(32)), "{text}");
        assert_eq!(BundleManifest::from_json(&json).unwrap(), m);
        assert_eq!(m.total_size(), 8);
        assert_eq!(m.version_line(), "rustc 1.95.0 (abc 2026-01-01)");
        assert_eq!(m.release(), None);
    }

    #[test]
    fn version_fields_and_targets_come_from_the_manifest() {
        let mut m = sample();
        m.rustc_version = "rustc 1.95.0 (59807616e 2026-04-14)\nbinary: rustc\n\
            commit-hash: 59807616e1fa2540724bfbac14d7976d7e4a3860\n\
            commit-date: 2026-04-14\nhost: x86_64-unknown-linux-gnu\n\
            release: 1.95.0\nLLVM version: 22.1.2\n"
            .into();
        assert_eq!(m.release(), Some("1.95.0"));
        assert_eq!(
            m.commit_hash(),
            Some("59807616e1fa2540724bfbac14d7976d7e4a3860")
        );
        assert_eq!(m.version_field("LLVM version"), Some("22.1.2"));
        assert_eq!(m.targets(), Vec::<&str>::new());

        let file = |path: &str| BundleFile {
            path: path.into(),
            size: 1,
            digest: Digest([1; 32]),
            executable: false,
        };
        m.files.extend([
            file("lib/rustlib/thumbv7em-none-eabi/lib/libcore-1.rlib"),
            file("lib/rustlib/x86_64-unknown-linux-gnu/lib/libcore-2.rlib"),
            file("lib/rustlib/x86_64-unknown-linux-gnu/lib/libstd-2.rlib"),
            file("lib/rustlib/x86_64-unknown-linux-gnu/lib/self-contained/crt1.o"),
            // Not a standard library directory: not a target.
            file("lib/rustlib/x86_64-unknown-linux-musl/bin/rust-lld"),
        ]);
        assert_eq!(
            m.targets(),
            ["thumbv7em-none-eabi", "x86_64-unknown-linux-gnu"]
        );
        assert!(m.has_std("x86_64-unknown-linux-gnu"));
        assert!(!m.has_std("thumbv7em-none-eabi"));
        assert!(!m.has_std("x86_64-unknown-linux-musl"));
    }

    #[test]
    fn manifest_with_escaping_paths_is_rejected() {
        let mut m = sample();
        m.library_path.push("../etc".into());
        assert!(matches!(
            BundleManifest::from_json(&m.to_json()),
            Err(PackError::UnsafePath(_))
        ));

        let mut m = sample();
        m.rustc = "/usr/bin/rustc".into();
        assert!(matches!(
            BundleManifest::from_json(&m.to_json()),
            Err(PackError::UnsafePath(_))
        ));

        let mut m = sample();
        m.interpreter = "sys/missing.so".into();
        assert!(matches!(
            BundleManifest::from_json(&m.to_json()),
            Err(PackError::Malformed(_))
        ));
    }

    #[test]
    fn sizes_that_overflow_saturate() {
        let mut m = sample();
        m.files[0].size = u64::MAX;
        let parsed = BundleManifest::from_json(&m.to_json()).unwrap();
        assert_eq!(parsed.total_size(), u64::MAX);
    }

    #[test]
    fn relative_path_check() {
        assert!(check_relative("lib/rustlib/x/lib/libstd.rlib").is_ok());
        for bad in ["", "/abs", "../x", "a/../../b", "./a", "a/./b/.."] {
            assert!(check_relative(bad).is_err(), "{bad:?} accepted");
        }
    }
}
