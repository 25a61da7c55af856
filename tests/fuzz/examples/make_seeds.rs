//! Writes the seed inputs under `tests/fuzz/seeds/<target>/` from real data:
//! frames the codec encodes, a job request as a client sends it, and a
//! bundle the real packer makes from a tiny fake sysroot. The fuzzer starts
//! from these rather than from nothing, so it reaches deep into each format
//! within seconds.
//!
//! Run from the repository root when the wire format or the bundle format
//! changes:
//!
//! ```sh
//! cargo +nightly run --manifest-path tests/fuzz/Cargo.toml --example make_seeds
//! ```

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use distcc_rs_pack::{BUNDLE_FORMAT, BUNDLE_MANIFEST_PATH, BundleFile, BundleManifest};
use distcc_rs_pack::{PackOptions, ToolchainInfo, create};
use distcc_rs_proto::codec::{self, HEADER_LEN};
use distcc_rs_proto::message::{
    AllocateRequest, BlobHeader, FileEntry, JobAccept, JobEvent, JobRequest, NodeRequest,
    OutputHeader, SchedulerRequest,
};
use distcc_rs_proto::{Digest, JobId, NodeId, Ticket, ToolchainId};

const HOST: &str = "x86_64-unknown-linux-gnu";

fn job_request() -> JobRequest {
    let file = |path: &str, size| FileEntry {
        path: path.into(),
        digest: Digest(*blake3::hash(path.as_bytes()).as_bytes()),
        size,
        executable: false,
    };
    JobRequest {
        ticket: Ticket {
            job: JobId(7),
            node: NodeId(2),
            toolchain: ToolchainId(Digest([3; 32])),
            client: distcc_rs_proto::CertFingerprint([5; 32]),
            mac: [9; 32],
        },
        crate_name: "serde".into(),
        args: [
            "--crate-name",
            "serde",
            "--edition=2021",
            "src/lib.rs",
            "--crate-type",
            "lib",
            "--emit=dep-info,metadata,link",
            "--out-dir",
            "/home/u/p/target/debug/deps",
        ]
        .map(String::from)
        .to_vec(),
        env: vec![
            ("CARGO_PKG_NAME".into(), "serde".into()),
            (
                "OUT_DIR".into(),
                "/home/u/p/target/debug/build/serde-1/out".into(),
            ),
        ],
        cwd: "/home/u/p".into(),
        files: vec![
            file("/home/u/p/src/lib.rs", 1200),
            file("/home/u/p/src/de.rs", 300),
            file("/home/u/p/target/debug/deps/libserde_derive-2.so", 90_000),
            file("/home/u/p/target/debug/deps/libitoa-3.rmeta", 4000),
        ],
        dirs: vec![
            "/home/u/p".into(),
            "/home/u/p/target/debug/build/serde-1/out".into(),
            "/home/u/p/target/debug/deps".into(),
        ],
        output_dirs: vec!["/home/u/p/target/debug/deps".into()],
    }
}

fn frame<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    codec::encode(msg).unwrap()
}

fn write(dir: &Path, name: &str, control: u8, bytes: &[u8]) {
    fs::create_dir_all(dir).unwrap();
    let mut seed = vec![control];
    seed.extend_from_slice(bytes);
    fs::write(dir.join(name), seed).unwrap();
}

/// A sysroot with a shell-script rustc and a few small libraries: enough
/// for the real packer.
fn fake_sysroot(root: &Path) -> ToolchainInfo {
    let put = |rel: &str, content: &[u8], mode: u32| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    let version = format!("rustc 0.0.0-fake\nhost: {HOST}\n");
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in\n  -vV) printf 'rustc 0.0.0-fake\\nhost: {HOST}\\n' ;;\n  --print) cd \"$(dirname \"$0\")/..\" && pwd ;;\nesac\n"
    );
    put("bin/rustc", script.as_bytes(), 0o755);
    put("lib/librustc_driver-0123.so", b"driver", 0o644);
    put("lib/libLLVM.so.22.1-fake", b"llvm", 0o644);
    let t = format!("lib/rustlib/{HOST}/lib");
    put(&format!("{t}/libstd-1.rlib"), b"rlib", 0o644);
    put(&format!("{t}/libcore-1.rmeta"), b"core", 0o644);
    ToolchainInfo {
        rustc: root.join("bin/rustc"),
        sysroot: fs::canonicalize(root).unwrap(),
        host: HOST.into(),
        version_verbose: version,
    }
}

/// A bundle with a symlink and a hard link, which the packer never writes
/// but the unpacker accepts when they stay inside.
fn linked_tar() -> Vec<u8> {
    let content = b"#!";
    let manifest = BundleManifest {
        format: BUNDLE_FORMAT,
        rustc_version: "rustc 0.0.0\n".into(),
        host: HOST.into(),
        rustc: "bin/rustc".into(),
        interpreter: String::new(),
        library_path: vec!["lib".into()],
        // A hard link is a link entry, not a file the manifest lists.
        files: vec![BundleFile {
            path: "bin/rustc".into(),
            size: content.len() as u64,
            digest: Digest(*blake3::hash(content).as_bytes()),
            executable: true,
        }],
    };
    let header = |kind: tar::EntryType, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o755);
        h.set_mtime(0);
        h
    };
    let mut tar = tar::Builder::new(Vec::new());
    let json = manifest.to_json();
    let mut h = header(tar::EntryType::Regular, json.len() as u64);
    tar.append_data(&mut h, BUNDLE_MANIFEST_PATH, &json[..])
        .unwrap();
    let mut h = header(tar::EntryType::Directory, 0);
    tar.append_data(&mut h, "bin", &b""[..]).unwrap();
    let mut h = header(tar::EntryType::Regular, 2);
    tar.append_data(&mut h, "bin/rustc", &content[..]).unwrap();
    let mut h = header(tar::EntryType::Link, 0);
    tar.append_link(&mut h, "lib/hard", "bin/rustc").unwrap();
    let mut h = header(tar::EntryType::Symlink, 0);
    tar.append_link(&mut h, "lib/soft", "hard").unwrap();
    tar.into_inner().unwrap()
}

fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tests/fuzz/seeds".into());
    let out = Path::new(&out);

    // Frames: one byte says how the stream is split (see the target).
    let dir = out.join("frame_decoder");
    let job = frame(&NodeRequest::Job(job_request()));
    write(&dir, "job_request_whole", 0x40, &job);
    write(&dir, "job_request_bytewise", 0x00, &job);
    let mut conversation = Vec::new();
    for f in [
        frame(&SchedulerRequest::Allocate(AllocateRequest {
            toolchain: ToolchainId(Digest([3; 32])),
            crate_name: "serde".into(),
            client: "host:123".into(),
            build: "host:100".into(),
            exclude: vec![NodeId(4)],
        })),
        frame(&JobAccept::NeedBlobs(vec![
            Digest([5; 32]),
            Digest([6; 32]),
        ])),
        frame(&BlobHeader {
            digest: Digest([5; 32]),
            size: 1200,
        }),
        frame(&JobEvent::Running),
        frame(&JobEvent::Stderr(
            b"{\"$message_type\":\"artifact\"}\n".to_vec(),
        )),
        frame(&JobEvent::Output(OutputHeader {
            path: "/home/u/p/target/debug/deps/libserde-1.rmeta".into(),
            size: 4000,
            executable: false,
        })),
        frame(&JobEvent::Exited { code: 0 }),
        frame(&SchedulerRequest::Status),
    ] {
        conversation.extend_from_slice(&f);
    }
    write(&dir, "conversation", 0x03, &conversation);
    write(&dir, "small_limit", 0xc0, &frame(&SchedulerRequest::Status));

    // Job requests: the wire body, with the real and with small limits.
    // The request must pass validation, so mutations start from a valid one.
    distcc_rs_node::manifest::validate(&job_request(), &Default::default())
        .expect("the seed request must be valid");
    let dir = out.join("manifest_validator");
    write(&dir, "wire_request", 0x00, &job[HEADER_LEN + 1..]);
    write(
        &dir,
        "wire_request_small_limits",
        0x02,
        &job[HEADER_LEN + 1..],
    );

    // Bundles: the real packer's output as a tar stream and compressed, and
    // a bundle with links.
    let dir = out.join("bundle_unpacker");
    let work = tempfile::tempdir().unwrap();
    let info = fake_sysroot(&work.path().join("sysroot"));
    let opts = PackOptions {
        level: 19,
        threads: 1,
        targets: Vec::new(),
    };
    let bundle = create(&info, &opts, &work.path().join("out")).unwrap();
    let compressed = fs::read(&bundle.path).unwrap();
    let raw = zstd::decode_all(&compressed[..]).unwrap();
    let links = linked_tar();
    // Both must unpack, so that the fuzzer starts from the path where
    // files and links are actually written.
    for (i, tar) in [&raw, &links].into_iter().enumerate() {
        let id = ToolchainId(Digest(*blake3::hash(tar).as_bytes()));
        let dest = work.path().join(format!("unpacked-{i}"));
        distcc_rs_pack::unpack(&zstd::encode_all(&tar[..], 1).unwrap()[..], &dest, id)
            .expect("a seed bundle must unpack");
    }
    write(&dir, "packed_tar", 0x00, &raw);
    write(&dir, "packed_zst", 0x01, &compressed);
    write(&dir, "links_tar", 0x00, &links);
    // The structured form: no entries beyond the manifest and `bin/rustc`.
    write(&dir, "structured_empty", 0x03, &[]);
    println!("seeds written under {}", out.display());
}
