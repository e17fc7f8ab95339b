//! `partybus-perf mesh` (formerly `partybus bench mesh --in-process`):
//! --nodes Bus instances in this process that know only node 0, on tokio's
//! multi-thread scheduler or one current_thread runtime per thread; time, CPU,
//! handshakes and RSS until every node has every other as a neighbour.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use crate::alloc::fixed_mmap_threshold;
use crate::args::{threads, MeshArgs};
use crate::util::{bench_hood, packets, self_cpu_s, self_rss, tag, Printer, MESH_COLS};

/// `partybus-perf mesh`: the runs, one result line each.
pub fn run(args: &MeshArgs) -> Result<()> {
    let mut p = Printer::new(args.common.json, MESH_COLS);
    fixed_mmap_threshold();
    let n = args.nodes.max(2);
    // Default: tokio's multi-thread (work-stealing) scheduler with one worker
    // per core, as `#[tokio::main]` gives a program hosting many nodes.
    // `--thread-per-core` gives each thread its own current_thread runtime and
    // a share of the nodes instead (a node's tasks never change threads). Over
    // two whole bench suites work stealing formed the mesh faster (medians
    // 2.7 and 3.2 s against 3.1 and 3.5 s); alternating single runs had
    // favoured thread per core, so the difference is within this VM's noise.
    let threads = threads(args.threads);
    let work_stealing = !args.thread_per_core && threads > 1;
    let hood = bench_hood()?;
    let mut files = Vec::new();
    for i in 0..n {
        files.push(hood.peer(&format!("node{i}"))?);
    }
    let ca = hood.files().cert;
    let rt = if work_stealing {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    };
    // With one thread, the nodes run on `rt` itself, on this thread.
    let pool = if work_stealing || threads == 1 { None } else { Some(RuntimePool::new(threads)?) };
    let spawn_on = |i: usize| pool.as_ref().map_or_else(|| rt.handle().clone(), |p| p.handles[i % p.handles.len()].clone());
    for run in 0..args.common.runs {
        let res = rt.block_on(async {
            let mut cfgs = Vec::new();
            for f in &files {
                let mut c = partybus::Config::from_files(&ca, &f.cert, &f.key)?;
                c.port = partybus::PortSpec::any();
                c.bind = Some(std::net::Ipv4Addr::LOCALHOST.into());
                cfgs.push(c);
            }
            let cpu0 = self_cpu_s();
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
            let bound = (args.common.timeout * 2).max(Duration::from_secs(60));
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
            let cpu = self_cpu_s() - cpu0;
            let (hwm, rss) = self_rss();
            let stats: Vec<partybus::ConnStats> = buses.iter().map(|b| b.conn_stats()).collect();
            let sum = |f: fn(&partybus::ConnStats) -> u64| stats.iter().map(f).sum::<u64>();
            // QUIC packets on the connections that make the mesh (both ends).
            let (packets_sent, packets_lost) = packets(buses.iter());
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
