//! A process running in a lab namespace: its stdout read line by line on a
//! thread (bounded), its stderr in a file kept with the lab, waits for lines
//! and exits, and a kill on drop.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use super::MAX_LINES;

#[derive(Default)]
struct Shared {
    state: Mutex<OutState>,
    cond: Condvar,
}

#[derive(Default)]
struct OutState {
    lines: Vec<String>,
    /// Lines dropped from the front to bound memory.
    dropped: usize,
    eof: bool,
}

/// Collect stdout lines into `shared` (and a copy into `copy`, kept with the
/// lab files for failure diagnostics).
fn read_lines(out: impl Read, shared: &Shared, mut copy: Option<File>) {
    let mut r = BufReader::new(out);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if let Some(f) = copy.as_mut() {
                    let _ = f.write_all(&buf);
                }
                let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_owned();
                let mut st = shared.state.lock().unwrap();
                if st.lines.len() >= MAX_LINES {
                    st.lines.remove(0);
                    st.dropped += 1;
                }
                st.lines.push(line);
                shared.cond.notify_all();
            }
        }
    }
    shared.state.lock().unwrap().eof = true;
    shared.cond.notify_all();
}

/// A process running in a lab namespace. Dropping it kills it; if the test
/// is failing (panicking) the tail of its stderr is printed.
pub struct LabProcess {
    label: String,
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    shared: Arc<Shared>,
    /// Index (counting dropped lines) of the next line `wait_for_line` looks at.
    cursor: usize,
    stderr_path: PathBuf,
    reader: Option<std::thread::JoinHandle<()>>,
    /// Byte offset in the stderr file where `wait_for_stderr` looks next.
    stderr_cursor: u64,
}

impl fmt::Debug for LabProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LabProcess").field("label", &self.label).field("pid", &self.child.id()).finish()
    }
}

impl LabProcess {
    /// Takes over `child` (stdout piped, stderr going to `stderr_path`).
    pub(super) fn start(label: String, mut child: Child, stderr_path: PathBuf) -> Result<LabProcess> {
        let out = child.stdout.take().expect("piped stdout");
        let shared = Arc::new(Shared::default());
        let s2 = shared.clone();
        let copy = File::create(stderr_path.with_extension("stdout")).ok();
        let reader = std::thread::Builder::new().name(format!("lab-out-{label}")).spawn(move || read_lines(out, &s2, copy))?;
        Ok(LabProcess { label, child, stdin: None, shared, cursor: 0, stderr_path, reader: Some(reader), stderr_cursor: 0 }.with_stdin())
    }

    fn with_stdin(mut self) -> Self {
        self.stdin = self.child.stdin.take();
        self
    }

    /// `<ns>:<program>#<n>`, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Path of the file holding the process's stderr (stdout is copied to
    /// the same path with extension `stdout`).
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Wait (at most `timeout`) for a stdout line matching `pred`, looking
    /// only at lines after the previous match; returns the line. Fails on
    /// timeout or when stdout closes first, with the recent output and the
    /// stderr tail in the message.
    pub fn wait_for_line(&mut self, mut pred: impl FnMut(&str) -> bool, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.state.lock().unwrap();
        loop {
            let start = self.cursor.saturating_sub(st.dropped);
            if let Some(i) = st.lines[start..].iter().position(|l| pred(l)) {
                let idx = start + i;
                self.cursor = st.dropped + idx + 1;
                return Ok(st.lines[idx].clone());
            }
            self.cursor = st.dropped + st.lines.len();
            let now = Instant::now();
            if st.eof || now >= deadline {
                let why = if st.eof { "stdout closed" } else { "timed out" };
                let recent = st.lines[st.lines.len().saturating_sub(10)..].join("\n");
                drop(st);
                bail!(
                    "{}: {why} after waiting {:?} for a matching line; last stdout lines:\n{recent}\nstderr tail:\n{}",
                    self.label,
                    timeout.saturating_sub(deadline.saturating_duration_since(now)),
                    self.stderr_tail(20)
                );
            }
            st = self.shared.cond.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    /// [`LabProcess::wait_for_line`] on lines that parse as JSON.
    pub fn wait_for_json(&mut self, mut pred: impl FnMut(&serde_json::Value) -> bool, timeout: Duration) -> Result<serde_json::Value> {
        let line = self.wait_for_line(|l| serde_json::from_str::<serde_json::Value>(l).map(|v| pred(&v)).unwrap_or(false), timeout)?;
        Ok(serde_json::from_str(&line)?)
    }

    /// All stdout lines so far (bounded; the oldest may have been dropped).
    pub fn lines(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().lines.clone()
    }

    /// Write a line to the process's stdin.
    pub fn write_line(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| anyhow!("{}: stdin is closed", self.label))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Close the process's stdin (EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Exit status if the process has exited.
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Wait (at most `timeout`) for the process to exit; then stdout is
    /// read to its end, so [`LabProcess::lines`] is complete.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                self.join_reader(deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1)));
                return Ok(st);
            }
            if Instant::now() >= deadline {
                bail!("{} did not exit within {timeout:?}; stderr tail:\n{}", self.label, self.stderr_tail(20));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn join_reader(&mut self, timeout: Duration) {
        // The reader ends at EOF; a grandchild holding stdout open could delay
        // that, so wait for EOF with a bound rather than joining blindly.
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.state.lock().unwrap();
        while !st.eof {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            st = self.shared.cond.wait_timeout(st, deadline - now).unwrap().0;
        }
        drop(st);
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }

    /// Send a signal (`"TERM"`, `"INT"`, `"HUP"`, ...) if the process is
    /// still running. Stop several processes at once by signalling them all
    /// first, then waiting for each with [`LabProcess::wait_exit`].
    pub fn signal(&mut self, sig: &str) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            let st = Command::new("kill")
                .args([&format!("-{sig}"), &self.child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if !st.success() && self.child.try_wait()?.is_none() {
                bail!("{}: kill -{sig} failed", self.label);
            }
        }
        Ok(())
    }

    /// Ask the process to stop (SIGTERM), wait up to `timeout`, then SIGKILL.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.signal("TERM")?;
        match self.wait_exit(timeout) {
            Ok(st) => Ok(st),
            Err(_) => {
                self.kill();
                Ok(self.child.wait()?)
            }
        }
    }

    /// Kill the process (SIGKILL) and reap it.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// Wait (at most `timeout`, polling) for a complete stderr line (log
    /// line) matching `pred`, looking only after the previous match; returns
    /// the line. Fails on timeout, or when the process exited and the line is
    /// not there, with the stderr tail in the message.
    pub fn wait_for_stderr(&mut self, mut pred: impl FnMut(&str) -> bool, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.child.try_wait()?.is_some();
            if let Ok(mut f) = File::open(&self.stderr_path) {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                if len > self.stderr_cursor {
                    f.seek(SeekFrom::Start(self.stderr_cursor))?;
                    // Bounded read per poll; only complete lines are consumed.
                    let mut buf = Vec::new();
                    (&mut f).take(8 << 20).read_to_end(&mut buf)?;
                    let mut consumed = 0usize;
                    while let Some(nl) = buf[consumed..].iter().position(|&b| b == b'\n') {
                        let line = String::from_utf8_lossy(&buf[consumed..consumed + nl]).into_owned();
                        consumed += nl + 1;
                        if pred(&line) {
                            self.stderr_cursor += consumed as u64;
                            return Ok(line);
                        }
                    }
                    self.stderr_cursor += consumed as u64;
                }
            }
            if exited || Instant::now() >= deadline {
                let why = if exited { "process exited" } else { "timed out" };
                bail!("{}: {why} while waiting {timeout:?} for a matching stderr line; stderr tail:\n{}", self.label, self.stderr_tail(30));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The whole stderr so far (at most its last 16 MiB), for searching logs.
    pub fn stderr_text(&self) -> String {
        let Ok(mut f) = File::open(&self.stderr_path) else { return String::new() };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 << 20)));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// The last `n` lines of the process's stderr.
    pub fn stderr_tail(&self, n: usize) -> String {
        tail_of_file(&self.stderr_path, n)
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- {} stderr tail ({}):\n{}\n----", self.label, self.stderr_path.display(), self.stderr_tail(40));
        }
    }
}

/// The last `n` lines of a file (reads at most its last 64 KiB).
pub fn tail_of_file(path: &Path, n: usize) -> String {
    let Ok(mut f) = File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let _ = f.seek(SeekFrom::Start(start));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
