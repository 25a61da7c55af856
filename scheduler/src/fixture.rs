//! Test bundles, built by hand in the layout `distcc-rs-pack` writes: the
//! manifest first, then a `bin` directory holding a tiny "rustc".

use distcc_rs_proto::{Digest, ToolchainId};

/// A valid bundle whose content depends on `seed`: its id (the BLAKE3 of the
/// uncompressed tar) and its zstd-compressed bytes.
pub(crate) fn bundle(seed: &str) -> (ToolchainId, Vec<u8>) {
    let rustc = format!("#!/bin/sh\necho fake rustc {seed}\n").into_bytes();
    let manifest = format!(
        r#"{{
  "format": 1,
  "rustc_version": "rustc 1.95.0 (fake {seed})\nhost: x86_64-unknown-linux-gnu\n",
  "host": "x86_64-unknown-linux-gnu",
  "rustc": "bin/rustc",
  "interpreter": "",
  "library_path": [],
  "files": [
    {{
      "path": "bin/rustc",
      "size": {size},
      "digest": "{digest}",
      "executable": true
    }}
  ]
}}
"#,
        size = rustc.len(),
        digest = blake3::hash(&rustc).to_hex(),
    );

    let mut tar = tar::Builder::new(Vec::new());
    append(
        &mut tar,
        tar::EntryType::Regular,
        "distcc-rs-bundle.json",
        manifest.as_bytes(),
        false,
    );
    append(&mut tar, tar::EntryType::Directory, "bin", &[], true);
    append(&mut tar, tar::EntryType::Regular, "bin/rustc", &rustc, true);
    seal(tar)
}

/// A correctly named zstd-compressed tar that lacks the manifest every bundle
/// starts with.
pub(crate) fn bundle_without_manifest() -> (ToolchainId, Vec<u8>) {
    let mut tar = tar::Builder::new(Vec::new());
    append(
        &mut tar,
        tar::EntryType::Regular,
        "hello.txt",
        b"hello\n",
        false,
    );
    seal(tar)
}

/// Finishes a bundle: its id (the BLAKE3 of the tar) and its compressed bytes.
fn seal(tar: tar::Builder<Vec<u8>>) -> (ToolchainId, Vec<u8>) {
    let tar = tar
        .into_inner()
        .expect("writing a tar to memory cannot fail");
    let id = ToolchainId(Digest(*blake3::hash(&tar).as_bytes()));
    let compressed = zstd::encode_all(&tar[..], 3).expect("compressing in memory cannot fail");
    (id, compressed)
}

fn append(
    tar: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    path: &str,
    data: &[u8],
    executable: bool,
) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(if executable { 0o755 } else { 0o644 });
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    tar.append_data(&mut h, path, data)
        .expect("writing a tar to memory cannot fail");
}
