//! Helpers for `partybus bench`: child processes, RSS, payloads, tables,
//! result lines. The developer benchmarks (`partybus-perf`, node/perf/)
//! compile this same file as their `util` module, so it depends on nothing
//! else in the `partybus` binary.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use partybus::pki::TempHood;
use serde_json::{json, Value};

/// How long a passive role (receiver, ponger, node, quinn server) lives at most.
pub const LIFETIME: Duration = Duration::from_secs(600);

/// Prints one JSON line on stdout, flushed.
pub fn out(v: Value) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{v}");
    let _ = o.flush();
}

/// Resolves when stdin closes (when run by an orchestrator, `watch`), else never.
pub fn stdin_closed(watch: bool) -> tokio::sync::oneshot::Receiver<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if watch {
        // A plain thread: a blocked stdin read must not hold the runtime at exit.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            let _ = tx.send(());
        });
    } else {
        std::mem::forget(tx);
    }
    rx
}

/// `{PREFIX_rss_kib: VmHWM, PREFIX_rss_now_kib: VmRSS}` of this process.
pub fn rss_json(prefix: &str) -> Value {
    let (hwm, rss) = self_rss();
    json!({format!("{prefix}_rss_kib"): hwm, format!("{prefix}_rss_now_kib"): rss})
}

/// Adds the fields of object `b` to object `a`.
pub fn merge(a: &mut Value, b: Value) {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
}

/// A result line with its run number (from 1).
pub fn tag(mut v: Value, run: usize) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.insert("run".into(), json!(run + 1));
    }
    v
}

/// `(VmHWM, VmRSS)` of a process in KiB, from `/proc/PID/status` (Linux).
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// `(VmHWM, VmRSS)` of this process in KiB (0 where unknown).
pub fn self_rss() -> (u64, u64) {
    rss_kib(std::process::id()).unwrap_or((0, 0))
}

/// CPU time (user + system) this process has used, in seconds, from
/// `/proc/self/stat` (clock ticks; 0 where unknown). Throughput runs are
/// CPU-bound on both ends, so CPU per event is the figure that stays
/// comparable when the machine is busy with other work.
pub fn self_cpu_s() -> f64 {
    let Ok(text) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the command name (which may hold spaces) in parentheses.
    let Some(rest) = text.rfind(')').map(|i| &text[i + 1..]) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// A MessagePack payload of exactly `size` bytes (a `bin` of size minus its header).
pub fn payload(size: usize) -> Result<Bytes> {
    let mut v = Vec::with_capacity(size);
    match size {
        0 => bail!("--payload must be at least 1 byte (a MessagePack value)"),
        1 => v.push(0xc0), // nil
        n if n - 2 < 256 => {
            v.push(0xc4);
            v.push((n - 2) as u8);
        }
        n if n - 3 < 65536 => {
            v.push(0xc5);
            v.extend_from_slice(&((n - 3) as u16).to_be_bytes());
        }
        n => {
            v.push(0xc6);
            v.extend_from_slice(&((n - 5) as u32).to_be_bytes());
        }
    }
    v.resize(size, 0x55);
    Ok(Bytes::from(v))
}

/// `--ca --cert --key` arguments of peer `name` of `hood` (made on first use).
pub fn peer_args(hood: &TempHood, name: &str) -> Result<Vec<OsString>> {
    let f = hood.peer(name).with_context(|| format!("cannot create peer {name}"))?;
    Ok(vec!["--ca".into(), hood.files().cert.into(), "--cert".into(), f.cert.into(), "--key".into(), f.key.into()])
}

/// The throw-away hood of a local run: peers made on first use, valid 2 days.
pub fn bench_hood() -> Result<TempHood> {
    TempHood::new("bench", 2).context("cannot create the benchmark hood")
}

/// Options every locally spawned node gets: loopback, any port, no DHT.
pub fn loopback_args() -> Vec<OsString> {
    ["--port", "0", "--bind", "127.0.0.1", "--no-dht-serve"].iter().map(OsString::from).collect()
}

/// A line a child printed, with when it was read.
pub struct Line {
    pub kid: usize,
    pub at: Instant,
    pub value: Value,
}

/// A child process of this binary whose stdout JSON lines are collected.
pub struct Kid {
    pub child: Child,
    stdin: Option<ChildStdin>,
    rx: Option<mpsc::Receiver<Line>>,
    /// Whether the child exits by itself when its stdin closes.
    graceful: bool,
}

impl Kid {
    /// Spawns this executable with ARGS. Lines go to `shared` if given, else to the
    /// kid's own channel (see [`Kid::expect`]).
    pub fn spawn(args: Vec<OsString>, idx: usize, shared: Option<mpsc::Sender<Line>>, graceful: bool) -> Result<Kid> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let mut cmd = Command::new(exe);
        cmd.args(&args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        let mut child = cmd.spawn().context("cannot start a child process")?;
        let stdout = child.stdout.take().expect("piped");
        let stdin = child.stdin.take();
        let (tx, rx) = match shared {
            Some(tx) => (tx, None),
            None => {
                let (tx, rx) = mpsc::channel();
                (tx, Some(rx))
            }
        };
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    if tx.send(Line { kid: idx, at: Instant::now(), value }).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Kid { child, stdin, rx, graceful })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a line that is an object with key `key`; returns its value.
    pub fn expect(&self, key: &str, timeout: Duration) -> Result<Value> {
        let rx = self.rx.as_ref().expect("kid has its own channel");
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => {
                    if let Some(v) = l.value.get(key) {
                        return Ok(v.clone());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => bail!("child {} did not report {key:?} within {timeout:?}", self.child.id()),
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("child {} exited before reporting {key:?}", self.child.id()),
            }
        }
    }

    /// Asks a bench role to stop (closes its stdin) and waits a little; kills it otherwise.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        drop(self.stdin.take());
        if self.graceful {
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop_now();
        }
    }
}

/// The port in a `{"ready":{"port":N}}` value.
pub fn ready_port(v: &Value) -> Result<u16> {
    v.get("port").and_then(Value::as_u64).map(|p| p as u16).context("ready line without a port")
}

/// Prints results: one JSON line each, or a table.
pub struct Printer {
    json: bool,
    cols: Vec<(&'static str, &'static str)>,
    header_done: bool,
}

impl Printer {
    /// `cols`: (header, key) pairs for the table.
    pub fn new(json: bool, cols: &[(&'static str, &'static str)]) -> Printer {
        Printer { json, cols: cols.to_vec(), header_done: false }
    }

    pub fn row(&mut self, v: &Value) {
        let mut o = std::io::stdout().lock();
        if self.json {
            let _ = writeln!(o, "{v}");
            let _ = o.flush();
            return;
        }
        if !self.header_done {
            self.header_done = true;
            let h: Vec<String> = self.cols.iter().map(|(h, _)| format!("{h:>12}")).collect();
            let _ = writeln!(o, "{}", h.join(" "));
        }
        let cells: Vec<String> = self
            .cols
            .iter()
            .map(|(_, k)| {
                let s = match v.get(*k) {
                    None | Some(Value::Null) => "-".to_owned(),
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => match n.as_f64() {
                        Some(f) if n.is_f64() => fmt_num(f),
                        _ => n.to_string(),
                    },
                    Some(other) => other.to_string(),
                };
                format!("{s:>12}")
            })
            .collect();
        let _ = writeln!(o, "{}", cells.join(" "));
        let _ = o.flush();
    }
}

fn fmt_num(f: f64) -> String {
    if f.abs() >= 1e6 {
        format!("{:.2}M", f / 1e6)
    } else if f.abs() >= 1000.0 {
        format!("{f:.0}")
    } else if f.abs() >= 10.0 {
        format!("{f:.1}")
    } else {
        format!("{f:.3}")
    }
}

/// QUIC packets sent and, of those, lost on the connections of `buses` to
/// their neighbours, so far.
pub fn packets<'a>(buses: impl IntoIterator<Item = &'a partybus::Bus>) -> (u64, u64) {
    let mut total = (0, 0);
    for b in buses {
        for p in b.neighbours().into_iter().filter_map(|nb| b.path(nb.id)) {
            total.0 += p.sent_packets;
            total.1 += p.lost_packets;
        }
    }
    total
}

/// Rounds to one decimal (for µs and MB/s in JSON).
pub fn r1(f: f64) -> f64 {
    (f * 10.0).round() / 10.0
}

/// Percentile `p` (0-100) of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Table columns of a mesh result, in `partybus bench mesh` and `partybus-perf mesh` alike (the JSON lines hold more).
pub const MESH_COLS: &[(&str, &str)] = &[
    ("scenario", "scenario"),
    ("nodes", "nodes"),
    ("seconds", "seconds"),
    ("from first", "seconds_from_first"),
    ("spawn s", "spawn_seconds"),
    ("node RSS KiB", "node_rss_kib"),
    ("proc RSS KiB", "process_rss_kib"),
];
