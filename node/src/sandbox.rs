//! The sandbox a job runs in: a plan (pure) and its bubblewrap command line.
//!
//! The job root is a directory on the node that holds the client's files at
//! their client-side absolute paths. bubblewrap makes that directory the
//! sandbox's `/`, read-only except for the job's output directories and
//! `/tmp`, mounts the toolchain read-only at [`TOOLCHAIN_MOUNT`], and
//! gives the job fresh user, pid, network, ipc, uts and cgroup namespaces, so
//! rustc sees the client's paths exactly (byte-identical output needs that)
//! and has no network. rustc is started through the bundle's own dynamic
//! loader with the bundle's libraries, so the node needs no Rust install and
//! its own glibc does not matter.
//!
//! Nothing of the node's own file system is visible inside but the job root
//! and the toolchain: not `/etc` (so no `/etc/shadow`), not the node's work
//! directory, not the host's `/proc` (a fresh one for the job's pid
//! namespace) or `/sys`. bubblewrap itself is started by the launcher
//! ([`crate::launcher`]) as the unprivileged job user, inside the job's
//! cgroup; see [`crate::isolation`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use distcc_rs_pack::BundleManifest;

/// Where the toolchain appears inside the sandbox.
pub const TOOLCHAIN_MOUNT: &str = "/.distcc-rs/toolchain";

/// Everything needed to start one job's rustc.
#[derive(Debug, Clone)]
pub struct SandboxPlan<'a> {
    /// The bubblewrap binary.
    pub bwrap: &'a Path,
    /// The job root on the node's disk.
    pub root: &'a Path,
    /// The unpacked toolchain on the node's disk.
    pub toolchain: &'a Path,
    /// rustc's working directory, as an absolute client path.
    pub cwd: &'a str,
    /// Directories, relative to the job root, that rustc may write to.
    pub writable: &'a [PathBuf],
    /// Input files, relative to the job root, that lie inside a writable
    /// directory (a dependency's `.rmeta` next to the outputs). Each is a
    /// hard link into the blob store, so each gets its own read-only bind.
    pub protected: &'a [PathBuf],
    /// rustc's environment. bubblewrap itself runs with a fixed one.
    pub env: &'a [(String, String)],
    /// `CARGO_MAKEFLAGS` naming the node's jobserver, whose descriptors
    /// rustc inherits through bubblewrap.
    pub makeflags: Option<&'a str>,
    /// Whether the host's system directories ([`HOST_SYSTEM_DIRS`]) are
    /// mounted read-only: only for the start-up check, which runs a host
    /// program (jobs run the toolchain's rustc and need none of them).
    pub host_system: bool,
}

/// The host directories the start-up check mounts, so that `touch` runs.
pub const HOST_SYSTEM_DIRS: [&str; 4] = ["usr", "bin", "lib", "lib64"];

impl SandboxPlan<'_> {
    /// Directories, relative to the job root, that must exist before
    /// bubblewrap starts: its mount points.
    pub fn mount_points() -> [&'static str; 4] {
        ["proc", "dev", "tmp", ".distcc-rs/toolchain"]
    }

    /// The environment bubblewrap itself runs with. Nothing of the client's
    /// may reach it: a client-chosen `PATH` or `LD_PRELOAD` would run code
    /// on the node outside the sandbox.
    pub fn host_env() -> [(&'static str, &'static str); 1] {
        [("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")]
    }

    /// bubblewrap and its arguments up to and including the `--` that
    /// precedes the sandboxed command.
    pub fn bwrap_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
        push(&["--die-with-parent", "--new-session", "--unshare-all"]);
        // Inputs are hard links into the node's blob store: writing through
        // one would corrupt the blob for every later job, so the tree is
        // read-only but for where rustc writes.
        a.push("--ro-bind".into());
        a.push(self.root.into());
        a.push("/".into());
        for dir in
            std::iter::once(Path::new("tmp")).chain(self.writable.iter().map(PathBuf::as_path))
        {
            a.push("--bind".into());
            a.push(self.root.join(dir).into());
            a.push(Path::new("/").join(dir).into());
        }
        for file in self.protected {
            a.push("--ro-bind".into());
            a.push(self.root.join(file).into());
            a.push(Path::new("/").join(file).into());
        }
        a.push("--ro-bind".into());
        a.push(self.toolchain.into());
        a.push(TOOLCHAIN_MOUNT.into());
        if self.host_system {
            for dir in HOST_SYSTEM_DIRS {
                let host = Path::new("/").join(dir);
                a.extend(["--ro-bind-try".into(), host.clone().into(), host.into()]);
            }
        }
        let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
        push(&[
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--chdir",
            self.cwd,
            "--clearenv",
        ]);
        for (k, v) in self.env {
            push(&["--setenv", k, v]);
        }
        if let Some(flags) = self.makeflags {
            push(&["--setenv", "CARGO_MAKEFLAGS", flags]);
        }
        if self.host_system {
            push(&["--setenv", "PATH", "/usr/bin:/bin"]);
        }
        push(&["--setenv", "TMPDIR", "/tmp", "--"]);
        a
    }

    /// bubblewrap running the bundle's rustc with `args`, through the
    /// bundle's own dynamic loader.
    pub fn rustc_command(
        &self,
        bundle: &BundleManifest,
        args: &[String],
    ) -> (PathBuf, Vec<OsString>) {
        let tc = |rel: &str| format!("{TOOLCHAIN_MOUNT}/{rel}");
        let mut a = self.bwrap_args();
        a.push(tc(&bundle.interpreter).into());
        a.push("--library-path".into());
        let libs: Vec<String> = bundle.library_path.iter().map(|l| tc(l)).collect();
        a.push(libs.join(":").into());
        a.push(tc(&bundle.rustc).into());
        a.extend(args.iter().map(OsString::from));
        (self.bwrap.to_path_buf(), a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle() -> BundleManifest {
        BundleManifest {
            format: 1,
            rustc_version: "rustc 1.95.0".into(),
            host: "x86_64-unknown-linux-gnu".into(),
            rustc: "bin/rustc".into(),
            interpreter: "sys/ld-linux-x86-64.so.2".into(),
            library_path: vec!["lib".into(), "sys".into()],
            files: vec![],
        }
    }

    #[test]
    fn command_mounts_root_and_toolchain_and_runs_rustc_through_the_bundled_loader() {
        let b = bundle();
        let args = vec!["--crate-name".to_string(), "x".to_string()];
        let plan = SandboxPlan {
            bwrap: Path::new("/usr/bin/bwrap"),
            root: Path::new("/var/n/jobs/j1/root"),
            toolchain: Path::new("/var/n/toolchains/abc"),
            cwd: "/home/u/p",
            writable: &[PathBuf::from("home/u/p/target/deps")],
            protected: &[PathBuf::from("home/u/p/target/deps/libdep.rmeta")],
            env: &[("CARGO_PKG_NAME".into(), "x".into())],
            makeflags: Some("-j --jobserver-fds=3,4 --jobserver-auth=3,4"),
            host_system: false,
        };
        let (prog, argv) = plan.rustc_command(&b, &args);
        assert_eq!(prog, Path::new("/usr/bin/bwrap"));
        let argv: Vec<String> = argv.into_iter().map(|a| a.into_string().unwrap()).collect();
        let joined = argv.join(" ");
        assert!(
            joined.contains("--unshare-all"),
            "no network, fresh namespaces: {joined}"
        );
        assert!(
            joined.contains("--ro-bind /var/n/jobs/j1/root / "),
            "inputs are read-only"
        );
        assert!(joined.contains("--bind /var/n/jobs/j1/root/tmp /tmp "));
        assert!(
            joined
                .contains("--bind /var/n/jobs/j1/root/home/u/p/target/deps /home/u/p/target/deps ")
        );
        let ro = joined.find("--ro-bind /var/n/jobs/j1/root /").unwrap();
        let rw = joined.find("--bind /var/n/jobs/j1/root/home").unwrap();
        assert!(ro < rw, "writable binds must come after the read-only root");
        assert!(joined.contains("--ro-bind /var/n/toolchains/abc /.distcc-rs/toolchain "));
        assert!(joined.contains(
            "--ro-bind /var/n/jobs/j1/root/home/u/p/target/deps/libdep.rmeta /home/u/p/target/deps/libdep.rmeta "
        ));
        let rw = joined
            .find("--bind /var/n/jobs/j1/root/home/u/p/target/deps ")
            .unwrap();
        let protect = joined
            .find("--ro-bind /var/n/jobs/j1/root/home/u/p/target/deps/libdep")
            .unwrap();
        assert!(
            rw < protect,
            "inputs are re-protected after their directory is made writable"
        );
        assert!(joined.contains(
            "--chdir /home/u/p --clearenv --setenv CARGO_PKG_NAME x \
             --setenv CARGO_MAKEFLAGS -j --jobserver-fds=3,4 --jobserver-auth=3,4 \
             --setenv TMPDIR /tmp --"
        ));
        let tail: Vec<&str> = argv
            .iter()
            .skip_while(|a| *a != "--")
            .skip(1)
            .map(|s| s.as_str())
            .collect();
        assert_eq!(
            tail,
            [
                "/.distcc-rs/toolchain/sys/ld-linux-x86-64.so.2",
                "--library-path",
                "/.distcc-rs/toolchain/lib:/.distcc-rs/toolchain/sys",
                "/.distcc-rs/toolchain/bin/rustc",
                "--crate-name",
                "x"
            ]
        );
    }

    #[test]
    fn only_the_start_up_check_sees_the_hosts_system_directories() {
        let writable = [PathBuf::from("check/out")];
        let plan = |host_system| SandboxPlan {
            bwrap: Path::new("/usr/bin/bwrap"),
            root: Path::new("/var/n/jobs/check-1"),
            toolchain: Path::new("/var/n/jobs/check-1/.distcc-rs/toolchain"),
            cwd: "/check",
            writable: &writable,
            protected: &[],
            env: &[],
            makeflags: None,
            host_system,
        };
        let joined = |p: SandboxPlan<'_>| {
            p.bwrap_args()
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let check = joined(plan(true));
        for dir in HOST_SYSTEM_DIRS {
            assert!(
                check.contains(&format!("--ro-bind-try /{dir} /{dir} ")),
                "{check}"
            );
        }
        assert!(check.ends_with("--setenv PATH /usr/bin:/bin --setenv TMPDIR /tmp --"));
        let job = joined(plan(false));
        assert!(!job.contains("/usr"), "a job sees none of the host: {job}");
        assert!(!job.contains("--ro-bind-try"), "{job}");
    }
}
