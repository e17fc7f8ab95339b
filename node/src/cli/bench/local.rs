//! The orchestrator: runs every role of a scenario on loopback, each measured
//! end in its own child process of this binary, with a throw-away hood.

use std::ffi::OsString;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::util::{loopback_args, ready_port, rss_kib, Kid, Line, Printer, TempHood};
use super::BenchArgs;

fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

/// `bench SCENARIO --role ROLE` with the peer's certificates, loopback and the shared options.
fn role_args(args: &BenchArgs, hood: &TempHood, role: &str, peer: &str) -> Result<Vec<OsString>> {
    let mut v = os(&["bench", args.scenario.name(), "--role", role, "--exit-on-stdin-eof"]);
    v.extend(hood.peer_args(peer)?);
    v.extend(loopback_args());
    v.extend(args.pass_through());
    Ok(v)
}

fn connect(port: u16) -> Vec<OsString> {
    os(&["--connect", &format!("127.0.0.1:{port}")])
}

fn tag(mut v: Value, run: usize) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.insert("run".into(), json!(run + 1));
    }
    v
}

/// Time to wait for a result: the load itself plus the drain timeout, with margin.
fn result_bound(args: &BenchArgs) -> Duration {
    let (_, d) = args.bounds();
    d.min(Duration::from_secs(600)) + args.timeout * 2 + Duration::from_secs(10)
}

pub fn throughput(args: &BenchArgs, p: &mut Printer) -> Result<()> {
    let hood = TempHood::new()?;
    let fanout = args.scenario == super::Scenario::Fanout;
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
    let hood = TempHood::new()?;
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

/// `bench quinn`: per measurement and run, a fresh quinn-server and quinn-client.
pub fn quinn(args: &BenchArgs, p: &mut Printer) -> Result<()> {
    let hood = TempHood::new()?;
    for m in args.measures() {
        for run in 0..args.runs {
            if m == super::Measure::Mesh {
                p.row(&tag(super::raw::mesh(args, &hood)?, run));
                continue;
            }
            let server = Kid::spawn(role_args(args, &hood, "quinn-server", "server")?, 0, None, true)?;
            let port = ready_port(&server.expect("ready", args.timeout)?)?;
            let mut a = role_args(args, &hood, "quinn-client", "client")?;
            a.extend(connect(port));
            a.extend(os(&["--measure", m.name()]));
            let client = Kid::spawn(a, 1, None, true)?;
            // The ping-pong loop's own bound is max(--timeout, 60s).
            let res = client.expect("result", result_bound(args) + args.timeout.max(Duration::from_secs(60)))?;
            p.row(&tag(res, run));
            client.stop();
            server.stop();
        }
    }
    Ok(())
}

/// `partybus node` on loopback; its lines go to `tx`.
fn spawn_node(hood: &TempHood, i: usize, connect_to: Option<u16>, tx: &mpsc::Sender<Line>) -> Result<Kid> {
    let mut a = os(&["node"]);
    a.extend(hood.peer_args(&format!("node{i}"))?);
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
    if args.in_process {
        return mesh_in_process(args, p);
    }
    let n = args.nodes.unwrap_or(30).max(2);
    let hood = TempHood::new()?;
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

fn mesh_in_process(args: &BenchArgs, p: &mut Printer) -> Result<()> {
    fixed_mmap_threshold();
    let n = args.nodes.unwrap_or(100).max(2);
    // Default: tokio's multi-thread (work-stealing) scheduler with one worker
    // per core, as `#[tokio::main]` gives a program hosting many nodes.
    // `--thread-per-core` gives each thread its own current_thread runtime and
    // a share of the nodes instead (a node's tasks never change threads). Over
    // two whole bench suites work stealing formed the mesh faster (medians
    // 2.7 and 3.2 s against 3.1 and 3.5 s); alternating single runs had
    // favoured thread per core, so the difference is within this VM's noise.
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let work_stealing = !args.thread_per_core && threads > 1;
    let hood = TempHood::new()?;
    let mut files = Vec::new();
    for i in 0..n {
        files.push(hood.peer(&format!("node{i}"))?);
    }
    let rt = if work_stealing {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    };
    // With one thread, the nodes run on `rt` itself, on this thread.
    let pool = if work_stealing || threads == 1 { None } else { Some(RuntimePool::new(threads)?) };
    let spawn_on = |i: usize| pool.as_ref().map_or_else(|| rt.handle().clone(), |p| p.handles[i % p.handles.len()].clone());
    for run in 0..args.runs {
        let res = rt.block_on(async {
            let mut cfgs = Vec::new();
            for (ca, cert, key) in &files {
                let mut c = partybus::Config::from_files(ca, cert, key)?;
                c.port = partybus::PortSpec::any();
                c.bind = Some(std::net::Ipv4Addr::LOCALHOST.into());
                cfgs.push(c);
            }
            let cpu0 = super::util::self_cpu_s();
            let mut it = cfgs.into_iter();
            let bus0 = spawn_on(0).spawn(partybus::Bus::join(it.next().expect("n >= 2"))).await??;
            let to = format!("127.0.0.1:{}", bus0.port());
            let first = Instant::now();
            let mut buses = vec![bus0];
            for (i, c) in it.enumerate() {
                buses.push(spawn_on(i + 1).spawn(partybus::Bus::join(c.connect([to.clone()]))).await??);
            }
            let last = Instant::now();
            let mut waits = Vec::new();
            for b in &buses {
                let b = b.clone();
                waits.push(tokio::spawn(async move {
                    b.wait_neighbours(n - 1).await;
                    Instant::now()
                }));
            }
            let bound = (args.timeout * 2).max(Duration::from_secs(60));
            let mut full = last;
            for w in waits {
                match tokio::time::timeout_at((last + bound).into(), w).await {
                    Ok(Ok(t)) => full = full.max(t),
                    _ => {
                        let c: Vec<usize> = buses.iter().map(|b| b.neighbours().len()).collect();
                        let s: Vec<partybus::ConnStats> = buses.iter().map(|b| b.conn_stats()).collect();
                        let dials: u64 = s.iter().map(|s| s.dials).sum();
                        let timed_out: u64 = s.iter().map(|s| s.dials_timed_out + s.accepts_timed_out).sum();
                        bail!("in-process mesh of {n} not full after {bound:?} ({dials} handshakes, {timed_out} timed out): {c:?}");
                    }
                }
            }
            let cpu = super::util::self_cpu_s() - cpu0;
            let (hwm, rss) = super::util::self_rss();
            let stats: Vec<partybus::ConnStats> = buses.iter().map(|b| b.conn_stats()).collect();
            let sum = |f: fn(&partybus::ConnStats) -> u64| stats.iter().map(f).sum::<u64>();
            // QUIC packets on the connections that make the mesh (both ends).
            let (packets_sent, packets_lost) = super::util::packets(buses.iter());
            for (i, b) in buses.iter().enumerate() {
                let b = b.clone();
                spawn_on(i).spawn(async move { b.leave().await }).await?;
            }
            Ok::<_, anyhow::Error>(json!({
                "scenario": "mesh_in_process",
                "nodes": n,
                "threads": threads,
                "scheduler": if work_stealing { "work-stealing" } else if threads == 1 { "current_thread" } else { "thread-per-core" },
                "seconds": ((full - last).as_secs_f64() * 1e4).round() / 1e4,
                "spawn_seconds": (last - first).as_secs_f64(),
                "seconds_from_first": ((full - first).as_secs_f64() * 1e4).round() / 1e4,
                "cpu_seconds": (cpu * 100.0).round() / 100.0,
                "pairs": n * (n - 1) / 2,
                "handshakes": sum(|s| s.dials),
                "handshakes_ok": sum(|s| s.dials_ok),
                "handshakes_timed_out": sum(|s| s.dials_timed_out) + sum(|s| s.accepts_timed_out),
                "duplicates": sum(|s| s.duplicates) / 2,
                "dials_abandoned": sum(|s| s.dials_abandoned),
                "packets_sent": packets_sent,
                "packets_lost": packets_lost,
                "process_rss_kib": hwm,
                "process_rss_now_kib": rss,
            }))
        })?;
        p.row(&tag(res, run));
    }
    Ok(())
}

/// glibc serves allocations from 128 KiB up with fresh `mmap`ed pages, which
/// stay untouched (free of RSS) until written, but raises that threshold to
/// the size of any such block that is freed (up to 32 MiB). quinn allocates a
/// zeroed receive buffer of ~13 MiB per endpoint (6.5 KiB loopback datagrams
/// × 64 GRO segments × 32 per batch) of which it touches a small part; once
/// the nodes of one run have left, the next run's buffers come from the heap
/// and `calloc` zeroes all 13 MiB: RSS tripled from the second run on (400 MiB
/// -> 1.2 GiB for 100 nodes). A fixed threshold keeps large blocks on `mmap`.
/// Only here: made process-wide, it slowed the emitter of `bench throughput`
/// at 1 KiB from ~1.2 to ~2.8 µs of CPU per event.
pub(super) fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

/// One current_thread runtime per thread (thread per core): each node's tasks
/// stay on one thread, with no work stealing or cross-thread wake-ups.
struct RuntimePool {
    handles: Vec<tokio::runtime::Handle>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl RuntimePool {
    fn new(n: usize) -> Result<RuntimePool> {
        let mut pool = RuntimePool { handles: Vec::new(), stops: Vec::new(), threads: Vec::new() };
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            pool.handles.push(rt.handle().clone());
            pool.stops.push(stop);
            pool.threads.push(std::thread::Builder::new().name(format!("mesh-{i}")).spawn(move || {
                let _ = rt.block_on(stopped);
            })?);
        }
        Ok(pool)
    }
}

impl Drop for RuntimePool {
    fn drop(&mut self) {
        self.stops.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

pub fn memory(args: &BenchArgs, p: &mut Printer) -> Result<()> {
    let n = args.neighbours.max(1);
    let hood = TempHood::new()?;
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
