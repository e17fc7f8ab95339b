//! The orchestrator: runs every role of a scenario on loopback, each measured
//! end in its own child process of this binary, with a throw-away hood.

use std::ffi::OsString;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use partybus::pki::TempHood;

use super::args::{BenchArgs, Scenario};
use super::util::{bench_hood, loopback_args, peer_args, ready_port, rss_kib, tag, Kid, Line, Printer};

fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

/// `bench SCENARIO --role ROLE` with the peer's certificates, loopback and the shared options.
fn role_args(args: &BenchArgs, hood: &TempHood, role: &str, peer: &str) -> Result<Vec<OsString>> {
    let mut v = os(&["bench", args.scenario.name(), "--role", role, "--exit-on-stdin-eof"]);
    v.extend(peer_args(hood, peer)?);
    v.extend(loopback_args());
    v.extend(args.pass_through());
    Ok(v)
}

fn connect(port: u16) -> Vec<OsString> {
    os(&["--connect", &format!("127.0.0.1:{port}")])
}

/// Time to wait for a result: the load itself plus the drain timeout, with margin.
fn result_bound(args: &BenchArgs) -> Duration {
    let (_, d) = args.bounds();
    d.min(Duration::from_secs(600)) + args.timeout * 2 + Duration::from_secs(10)
}

pub fn throughput(args: &BenchArgs, p: &mut Printer) -> Result<()> {
    let hood = bench_hood()?;
    let fanout = args.scenario == Scenario::Fanout;
    let n = if fanout { args.receivers.max(1) } else { 1 };
    for size in args.payload_sizes() {
        for run in 0..args.runs {
            let mut receivers = Vec::new();
            let mut ports = Vec::new();
            for i in 0..n {
                let kid = Kid::spawn(role_args(args, &hood, "receiver", &format!("receiver{i}"))?, i, None, true)?;
                ports.push(ready_port(&kid.expect("ready", args.timeout)?)?);
                receivers.push(kid);
            }
            let mut a = role_args(args, &hood, "emitter", "emitter")?;
            for port in &ports {
                a.extend(connect(*port));
            }
            a.extend(os(&["--payload", &size.to_string()]));
            if fanout {
                a.extend(os(&["--receivers", &n.to_string()]));
            }
            let em = Kid::spawn(a, n, None, true)?;
            let res = em.expect("result", result_bound(args))?;
            p.row(&tag(res, run));
            em.stop();
            for r in receivers {
                r.stop();
            }
        }
    }
    Ok(())
}

pub fn latency(args: &BenchArgs, p: &mut Printer) -> Result<()> {
    let hood = bench_hood()?;
    for run in 0..args.runs {
        let ponger = Kid::spawn(role_args(args, &hood, "ponger", "ponger")?, 0, None, true)?;
        let port = ready_port(&ponger.expect("ready", args.timeout)?)?;
        let mut a = role_args(args, &hood, "pinger", "pinger")?;
        a.extend(connect(port));
        if let Some(size) = args.payload.first() {
            a.extend(os(&["--payload", &size.to_string()]));
        }
        let pinger = Kid::spawn(a, 1, None, true)?;
        let mut res = pinger.expect("result", result_bound(args))?;
        if let Some((hwm, rss)) = rss_kib(ponger.pid()) {
            res["ponger_rss_kib"] = json!(hwm);
            res["ponger_rss_now_kib"] = json!(rss);
        }
        p.row(&tag(res, run));
        pinger.stop();
        ponger.stop();
    }
    Ok(())
}

/// `partybus node` on loopback; its lines go to `tx`.
fn spawn_node(hood: &TempHood, i: usize, connect_to: Option<u16>, tx: &mpsc::Sender<Line>) -> Result<Kid> {
    let mut a = os(&["node"]);
    a.extend(peer_args(hood, &format!("node{i}"))?);
    a.extend(loopback_args());
    if let Some(port) = connect_to {
        a.extend(connect(port));
    }
    Kid::spawn(a, i, Some(tx.clone()), false)
}

/// Neighbour counts of N nodes, fed by their `{"neighbour":..,"count":..}` lines.
struct Counts {
    rx: mpsc::Receiver<Line>,
    counts: Vec<usize>,
    ports: Vec<Option<u16>>,
}

impl Counts {
    fn new(rx: mpsc::Receiver<Line>, n: usize) -> Counts {
        Counts { rx, counts: vec![0; n], ports: vec![None; n] }
    }

    /// Consumes lines until `done(self)` holds; returns when it did, or fails at `deadline`.
    fn until(&mut self, deadline: Instant, what: &str, done: impl Fn(&Counts) -> bool) -> Result<Instant> {
        loop {
            if done(self) {
                return Ok(Instant::now());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => bail!("{what}: not done in time; neighbour counts: {:?}", self.counts),
            };
            if let Some(r) = line.value.get("ready") {
                self.ports[line.kid] = r.get("port").and_then(Value::as_u64).map(|p| p as u16);
            } else if let Some(c) = line.value.get("count").and_then(Value::as_u64) {
                self.counts[line.kid] = c as usize;
                if done(self) {
                    return Ok(line.at);
                }
            }
        }
    }
}

pub fn mesh(args: &BenchArgs, p: &mut Printer) -> Result<()> {
    let n = args.nodes.unwrap_or(30).max(2);
    let hood = bench_hood()?;
    for i in 0..n {
        hood.peer(&format!("node{i}"))?; // certificates first: not part of the measurement
    }
    for run in 0..args.runs {
        let (tx, rx) = mpsc::channel();
        let mut counts = Counts::new(rx, n);
        let mut kids = vec![spawn_node(&hood, 0, None, &tx)?];
        counts.until(Instant::now() + args.timeout, "node 0 ready", |c| c.ports[0].is_some())?;
        let port0 = counts.ports[0].expect("checked");
        let first = Instant::now();
        for i in 1..n {
            kids.push(spawn_node(&hood, i, Some(port0), &tx)?);
        }
        let last = Instant::now();
        let bound = (args.timeout * 2).max(Duration::from_secs(60));
        let full = counts.until(last + bound, "mesh", |c| c.counts.iter().all(|&k| k + 1 >= n))?;
        let secs = full.saturating_duration_since(last).as_secs_f64();
        std::thread::sleep(Duration::from_millis(300));
        let rss: Vec<(u64, u64)> = kids.iter().filter_map(|k| rss_kib(k.pid())).collect();
        let res = json!({
            "scenario": "mesh",
            "nodes": n,
            "seconds": (secs * 1e4).round() / 1e4,
            "spawn_seconds": (last - first).as_secs_f64(),
            "seconds_from_first": (full.saturating_duration_since(first).as_secs_f64() * 1e4).round() / 1e4,
            "node_rss_kib": rss.iter().map(|r| r.0).max().unwrap_or(0),
            "node_rss_now_kib": rss.iter().map(|r| r.1).max().unwrap_or(0),
        });
        p.row(&tag(res, run));
        drop(kids);
    }
    Ok(())
}

pub fn memory(args: &BenchArgs, p: &mut Printer) -> Result<()> {
    let n = args.neighbours.max(1);
    let hood = bench_hood()?;
    for i in 0..=n {
        hood.peer(&format!("node{i}"))?;
    }
    for run in 0..args.runs {
        let (tx, rx) = mpsc::channel();
        let mut counts = Counts::new(rx, n + 1);
        let target = spawn_node(&hood, 0, None, &tx)?;
        counts.until(Instant::now() + args.timeout, "node ready", |c| c.ports[0].is_some())?;
        let port = counts.ports[0].expect("checked");
        std::thread::sleep(Duration::from_secs(1));
        let (hwm0, rss0) = rss_kib(target.pid()).context("cannot read the node's RSS")?;
        // The first neighbour alone, then the others: the first one also pays
        // what any connection needs once per process (code pages of the
        // handshake and connection paths mapped on first use), the others
        // only their own state.
        let bound = (args.timeout * 2).max(Duration::from_secs(60));
        let mut others = vec![spawn_node(&hood, 1, Some(port), &tx)?];
        counts.until(Instant::now() + bound, "first neighbour", |c| c.counts[0] >= 1)?;
        std::thread::sleep(Duration::from_secs(2));
        let (_, rss_first) = rss_kib(target.pid()).context("cannot read the node's RSS")?;
        for i in 2..=n {
            others.push(spawn_node(&hood, i, Some(port), &tx)?);
        }
        counts.until(Instant::now() + bound, "neighbours", |c| c.counts[0] >= n)?;
        std::thread::sleep(Duration::from_secs(2));
        let (hwm1, rss1) = rss_kib(target.pid()).context("cannot read the node's RSS")?;
        let further = (n > 1).then(|| ((rss1 as f64 - rss_first as f64) / (n - 1) as f64).round());
        let res = json!({
            "scenario": "memory",
            "neighbours": n,
            "idle_rss_kib": rss0,
            "idle_hwm_kib": hwm0,
            "rss_kib": rss1,
            "hwm_kib": hwm1,
            "per_neighbour_kib": ((rss1 as f64 - rss0 as f64) / n as f64).round(),
            "first_neighbour_kib": rss_first as i64 - rss0 as i64,
            "per_further_neighbour_kib": further,
        });
        p.row(&tag(res, run));
        drop(others);
        drop(target);
    }
    Ok(())
}
