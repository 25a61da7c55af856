//! Reading what a job's rustc prints, within bounds.
//!
//! rustc's stderr is read line by line (the diagnostics gate judges whole
//! lines, and holds some of them until rustc exits) and its stdout is
//! collected whole, to be sent at the end. Both come from code the node
//! does not trust: a proc-macro or a build of a hostile crate can print
//! without end, or without ever writing a newline. The job's cgroup bounds
//! rustc's memory, not the node's, so every byte the node keeps of either
//! stream is counted here: one stderr line at most [`MAX_LINE`] bytes, all
//! of stderr at most [`MAX_STDERR`], stdout at most [`MAX_STDOUT`]. Going
//! over is an [`OutputError::Over`]; the job fails as a farm failure and
//! rustc is killed ([`crate::job`]).
//!
//! Lines are never cut: what is returned is byte for byte what rustc
//! wrote, so a JSON diagnostic reaches cargo intact and the gate sees it
//! whole.

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::task::JoinHandle;

/// The longest stderr line the node keeps. rustc's longest lines are JSON
/// diagnostics with their rendered text, tens to hundreds of KiB for the
/// worst type errors; 16 MiB is far beyond any of them, and small next to
/// the stderr limit.
pub const MAX_LINE: usize = 16 << 20;

/// The most stderr bytes of one job, every line counted with its newline,
/// as the node forwards it. The client refuses more than this
/// (`client/src/outputs.rs`, `MAX_STDERR`), so a job going over could not
/// succeed anyway.
pub const MAX_STDERR: u64 = 256 << 20;

/// The most stdout bytes of one job, as the client's `MAX_STDOUT`.
pub const MAX_STDOUT: u64 = 16 << 20;

/// The bounds on what one job may print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// One stderr line, without its newline.
    pub max_line: usize,
    /// All of stderr, each line with its newline.
    pub max_stderr: u64,
    pub max_stdout: u64,
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits {
            max_line: MAX_LINE,
            max_stderr: MAX_STDERR,
            max_stdout: MAX_STDOUT,
        }
    }
}

/// A job printed more than its [`OutputLimits`] allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} exceeds the node's limit of {limit} bytes")]
pub struct OverLimit {
    pub what: &'static str,
    pub limit: u64,
}

/// Why reading a job's output stopped early.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error(transparent)]
    Over(#[from] OverLimit),
    #[error("reading rustc's {stream}: {source}")]
    Io {
        stream: &'static str,
        source: io::Error,
    },
}

/// rustc's stderr, line by line.
pub struct StderrLines<R> {
    reader: BufReader<R>,
    /// The line being read, across calls that were cancelled.
    line: Vec<u8>,
    /// Bytes of the lines returned so far, each with its newline.
    total: u64,
    max_line: usize,
    max_total: u64,
}

impl<R: AsyncRead + Unpin> StderrLines<R> {
    pub fn new(reader: R, limits: &OutputLimits) -> Self {
        StderrLines {
            reader: BufReader::new(reader),
            line: Vec::new(),
            total: 0,
            max_line: limits.max_line,
            max_total: limits.max_stderr,
        }
    }

    /// The next line, without its newline; `None` once stderr is closed.
    /// A last line without a newline is returned as it is.
    ///
    /// Fails as soon as the line being read grows past the line limit or
    /// would take stderr past its limit, before more of it is kept. Cancel
    /// safe: a call dropped halfway keeps what it read for the next.
    pub async fn next_line(&mut self) -> Result<Option<Vec<u8>>, OutputError> {
        loop {
            let available = self
                .reader
                .fill_buf()
                .await
                .map_err(|source| OutputError::Io {
                    stream: "stderr",
                    source,
                })?;
            if available.is_empty() {
                return Ok((!self.line.is_empty()).then(|| self.take_line()));
            }
            let end = available.iter().position(|&b| b == b'\n');
            let piece = &available[..end.unwrap_or(available.len())];
            let len = self.line.len() + piece.len();
            if len > self.max_line {
                return Err(OverLimit {
                    what: "a line of rustc's stderr",
                    limit: self.max_line as u64,
                }
                .into());
            }
            // The line is forwarded with a newline, whether it has one.
            if self.total + len as u64 + 1 > self.max_total {
                return Err(OverLimit {
                    what: "rustc's stderr",
                    limit: self.max_total,
                }
                .into());
            }
            self.line.extend_from_slice(piece);
            let used = piece.len() + usize::from(end.is_some());
            // No await between keeping the bytes and consuming them.
            self.reader.consume(used);
            if end.is_some() {
                return Ok(Some(self.take_line()));
            }
        }
    }

    fn take_line(&mut self) -> Vec<u8> {
        let line = std::mem::take(&mut self.line);
        self.total += line.len() as u64 + 1;
        line
    }
}

/// Reads all of `stdout`, failing once it holds more than `limit` bytes.
pub async fn read_stdout<R: AsyncRead + Unpin>(
    stdout: R,
    limit: u64,
) -> Result<Vec<u8>, OutputError> {
    let mut out = Vec::new();
    stdout
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .await
        .map_err(|source| OutputError::Io {
            stream: "stdout",
            source,
        })?;
    if out.len() as u64 > limit {
        return Err(OverLimit {
            what: "rustc's stdout",
            limit,
        }
        .into());
    }
    Ok(out)
}

/// Both streams of one rustc: stderr is read by the caller, line by line;
/// stdout is read all along by a task of its own, so that rustc never
/// blocks on it, and a stdout going over its limit fails the next
/// [`RustcOutput::next_line`] at once.
pub struct RustcOutput<E> {
    stderr: StderrLines<E>,
    stdout: Option<JoinHandle<Result<Vec<u8>, OutputError>>>,
    /// stdout, once it was closed within its limit.
    stdout_read: Option<Vec<u8>>,
}

impl<E: AsyncRead + Unpin> RustcOutput<E> {
    pub fn new<O>(stderr: E, stdout: O, limits: &OutputLimits) -> Self
    where
        O: AsyncRead + Unpin + Send + 'static,
    {
        let max_stdout = limits.max_stdout;
        RustcOutput {
            stderr: StderrLines::new(stderr, limits),
            stdout: Some(tokio::spawn(read_stdout(stdout, max_stdout))),
            stdout_read: None,
        }
    }

    /// The next stderr line (see [`StderrLines::next_line`]), or the
    /// error of either stream.
    pub async fn next_line(&mut self) -> Result<Option<Vec<u8>>, OutputError> {
        loop {
            let Some(task) = self.stdout.as_mut() else {
                return self.stderr.next_line().await;
            };
            tokio::select! {
                read = task => {
                    self.stdout = None;
                    self.stdout_read = Some(joined(read)?);
                }
                line = self.stderr.next_line() => return line,
            }
        }
    }

    /// All of stdout, once rustc closed it.
    pub async fn stdout(mut self) -> Result<Vec<u8>, OutputError> {
        if let Some(out) = self.stdout_read.take() {
            return Ok(out);
        }
        match self.stdout.take() {
            Some(task) => joined(task.await),
            None => Ok(Vec::new()),
        }
    }
}

impl<E> Drop for RustcOutput<E> {
    fn drop(&mut self) {
        if let Some(task) = self.stdout.take() {
            task.abort();
        }
    }
}

fn joined(
    read: Result<Result<Vec<u8>, OutputError>, tokio::task::JoinError>,
) -> Result<Vec<u8>, OutputError> {
    read.unwrap_or_else(|e| {
        Err(OutputError::Io {
            stream: "stdout",
            source: io::Error::other(e),
        })
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Long enough for anything bounded; an unbounded read never ends.
    const STEP: Duration = Duration::from_secs(20);

    fn limits(max_line: usize, max_stderr: u64, max_stdout: u64) -> OutputLimits {
        OutputLimits {
            max_line,
            max_stderr,
            max_stdout,
        }
    }

    async fn all_lines(bytes: &[u8], limits: &OutputLimits) -> Result<Vec<Vec<u8>>, OutputError> {
        let mut lines = StderrLines::new(bytes, limits);
        let mut out = Vec::new();
        while let Some(line) = lines.next_line().await? {
            out.push(line);
        }
        Ok(out)
    }

    fn over(e: OutputError) -> OverLimit {
        match e {
            OutputError::Over(o) => o,
            e => panic!("not a limit: {e}"),
        }
    }

    #[tokio::test]
    async fn lines_come_back_byte_for_byte_up_to_the_limits() {
        let long = vec![b'{'; 1000];
        let mut text = b"a\r\n\n".to_vec();
        text.extend_from_slice(&long);
        text.extend_from_slice(b"\n\xff\x00tail");
        // Every line with its newline: 3 + 1 + 1001 + 7.
        let exact = limits(1000, 1012, 0);
        let lines = all_lines(&text, &exact).await.unwrap();
        assert_eq!(
            lines,
            vec![
                b"a\r".to_vec(),
                vec![],
                long.clone(),
                b"\xff\x00tail".to_vec()
            ]
        );

        let e = all_lines(&text, &limits(999, 1 << 20, 0))
            .await
            .unwrap_err();
        assert_eq!(
            over(e),
            OverLimit {
                what: "a line of rustc's stderr",
                limit: 999
            }
        );
        let e = all_lines(&text, &limits(1000, 1011, 0)).await.unwrap_err();
        assert_eq!(
            over(e),
            OverLimit {
                what: "rustc's stderr",
                limit: 1011
            }
        );
    }

    #[tokio::test]
    async fn an_endless_line_stops_at_the_line_limit() {
        // Without the limit this would read (and keep) forever.
        let mut lines = StderrLines::new(tokio::io::repeat(b'x'), &limits(64 << 10, 1 << 30, 0));
        let e = tokio::time::timeout(STEP, lines.next_line())
            .await
            .expect("the read stops")
            .unwrap_err();
        assert_eq!(over(e).what, "a line of rustc's stderr");
        assert!(lines.line.len() <= 64 << 10, "{}", lines.line.len());
    }

    #[tokio::test]
    async fn endless_short_lines_stop_at_the_stderr_limit() {
        let mut lines = StderrLines::new(tokio::io::repeat(b'\n'), &limits(16, 1000, 0));
        let count = tokio::time::timeout(STEP, async {
            let mut n = 0;
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) => {
                        assert!(line.is_empty());
                        n += 1;
                    }
                    Ok(None) => panic!("repeat never ends"),
                    Err(e) => return (n, over(e)),
                }
            }
        })
        .await
        .expect("the read stops");
        assert_eq!(
            count,
            (
                1000,
                OverLimit {
                    what: "rustc's stderr",
                    limit: 1000
                }
            )
        );
    }

    #[tokio::test]
    async fn stdout_is_kept_up_to_its_limit() {
        assert_eq!(
            read_stdout(&b"0123456789"[..], 10).await.unwrap(),
            b"0123456789"
        );
        let e = read_stdout(&b"0123456789"[..], 9).await.unwrap_err();
        assert_eq!(
            over(e),
            OverLimit {
                what: "rustc's stdout",
                limit: 9
            }
        );
        let e = tokio::time::timeout(STEP, read_stdout(tokio::io::repeat(0), 1 << 20))
            .await
            .expect("the read stops")
            .unwrap_err();
        assert_eq!(over(e).what, "rustc's stdout");
    }

    #[tokio::test]
    async fn a_flood_on_stdout_fails_the_job_while_stderr_is_quiet() {
        // stderr stays open and silent: only stdout can end the wait.
        let (_quiet_writer, quiet) = tokio::io::duplex(64);
        let mut out = RustcOutput::new(quiet, tokio::io::repeat(b'y'), &limits(16, 1 << 20, 4096));
        let e = tokio::time::timeout(STEP, out.next_line())
            .await
            .expect("the stdout limit ends the wait")
            .unwrap_err();
        assert_eq!(over(e).what, "rustc's stdout");
    }

    #[tokio::test]
    async fn a_flood_on_stdout_after_stderr_closed_fails_at_the_end() {
        let mut out = RustcOutput::new(&b""[..], tokio::io::repeat(b'y'), &limits(16, 16, 4096));
        let e = tokio::time::timeout(STEP, async {
            match out.next_line().await {
                Ok(Some(line)) => panic!("stderr was empty: {line:?}"),
                // stderr ended before stdout went over: stdout() says it.
                Ok(None) => out.stdout().await.unwrap_err(),
                Err(e) => e,
            }
        })
        .await
        .expect("the read stops");
        assert_eq!(over(e).what, "rustc's stdout");
    }

    #[tokio::test]
    async fn both_streams_of_a_real_process_arrive_whole() {
        let mut child = tokio::process::Command::new("sh")
            .args([
                "-c",
                "printf 'out' ; printf 'one\\ntwo\\n' >&2; printf 'put'",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut out = RustcOutput::new(
            child.stderr.take().unwrap(),
            child.stdout.take().unwrap(),
            &OutputLimits::default(),
        );
        let mut lines = Vec::new();
        while let Some(line) = out.next_line().await.unwrap() {
            lines.push(line);
        }
        assert_eq!(lines, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(out.stdout().await.unwrap(), b"output");
        assert!(child.wait().await.unwrap().success());
    }
}
