//! A GNU make jobserver shared by every rustc the node runs.
//!
//! rustc parallelises code generation over as many threads as its jobserver
//! grants. Under cargo that is cargo's jobserver, so a whole build stays
//! within `-j`. Without one, rustc makes its own with 32 tokens, and a node
//! running a job per core would run dozens of LLVM threads per core. So the
//! node keeps one pipe of tokens, sized to its cores, and hands it to every
//! job the way cargo does: inherited file descriptors, named in
//! `CARGO_MAKEFLAGS`.
//!
//! Each rustc holds one implicit token (its own thread), so with `slots`
//! jobs running there are at most `slots + cores - 1` busy threads.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};

/// The token pipe. Its descriptors are inherited by every child the node
/// spawns (bubblewrap passes them on to rustc).
#[derive(Debug)]
pub struct Jobserver {
    read: OwnedFd,
    write: OwnedFd,
}

impl Jobserver {
    /// A jobserver with `tokens` tokens besides each job's implicit one.
    pub fn new(tokens: usize) -> std::io::Result<Self> {
        let (read, write) = std::io::pipe()?;
        let (read, write): (OwnedFd, OwnedFd) = (read.into(), write.into());
        // std creates pipes close-on-exec; the children need these two.
        for fd in [&read, &write] {
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).map_err(std::io::Error::from)?;
        }
        let mut writer = std::fs::File::from(write.try_clone()?);
        writer.write_all(&vec![b'|'; tokens])?;
        Ok(Jobserver { read, write })
    }

    /// The value of `CARGO_MAKEFLAGS` that points rustc at this jobserver,
    /// in both the old and the current spelling of the option.
    pub fn makeflags(&self) -> String {
        let (r, w) = (self.read.as_raw_fd(), self.write.as_raw_fd());
        format!("-j --jobserver-fds={r},{w} --jobserver-auth={r},{w}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_pipe_holds_the_tokens_and_is_inherited() {
        let js = Jobserver::new(3).unwrap();
        let flags = js.makeflags();
        assert!(flags.starts_with("-j --jobserver-fds="), "{flags}");
        let inherited = fcntl(&js.read, FcntlArg::F_GETFD).unwrap();
        assert_eq!(
            inherited & FdFlag::FD_CLOEXEC.bits(),
            0,
            "children must inherit it"
        );
        let mut reader = std::fs::File::from(js.read.try_clone().unwrap());
        let mut tokens = [0u8; 3];
        reader.read_exact(&mut tokens).unwrap();
        assert_eq!(&tokens, b"|||");
    }

    #[test]
    fn a_child_process_sees_the_descriptors() {
        let js = Jobserver::new(1).unwrap();
        let fd = js.read.as_raw_fd();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("test -e /proc/self/fd/{fd} && echo inherited"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "inherited");
    }
}
