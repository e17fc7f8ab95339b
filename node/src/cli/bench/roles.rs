//! One end of a benchmark (`partybus bench SCENARIO --role ROLE ...`): the
//! processes that are measured. Each prints `{"ready":{...}}` once joined
//! and `{"result":{...}}` lines; they run alone for two-machine runs, or as
//! children of the orchestrator (`super::local`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use partybus::{Bus, NeighbourEvent};
use serde_json::{json, Value};

use super::args::{BenchArgs, Scenario};
use super::util::{merge, out, packets, payload, percentile, r1, rss_json, self_cpu_s, stdin_closed, LIFETIME};

/// Data events of throughput and fanout.
pub const DATA: &str = "bench.t";
/// Emitter -> receivers: "that was all", payload = events emitted.
pub const END: &str = "bench.ctl.end";
/// Receivers -> emitter: counts and RSS.
pub const DONE: &str = "bench.ctl.done";
/// Emitter/pinger -> others: exit.
pub const QUIT: &str = "bench.ctl.quit";
pub const PING: &str = "bench.ping";
pub const PONG: &str = "bench.pong";
/// latency with --bulk: pinger -> ponger, the bulk stream small pings wait behind.
pub const BULK: &str = "bench.bulk";

async fn join(args: &BenchArgs) -> Result<Bus> {
    let cfg = args.node.to_config()?;
    Bus::join(cfg).await.context("cannot join the hood")
}

fn ready(bus: &Bus) {
    out(json!({"ready": {"port": bus.port(), "id": bus.id().to_hex(), "name": bus.me().name}}));
}

async fn wait_listeners(bus: &Bus, event: &str, n: usize, timeout: Duration) -> Result<()> {
    let mut rx = bus.observe_listener_count(event)?;
    if tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await.is_err() {
        bail!("{} listener(s) of {event:?} after {timeout:?}, wanted {n} (is the other end running and reachable?)", *rx.borrow());
    }
    Ok(())
}

/// Counts data events with the cheapest handler; answers each END with DONE.
pub async fn receiver(args: &BenchArgs) -> Result<()> {
    let bus = join(args).await?;
    let counter = Arc::new(AtomicU64::new(0));
    let c = counter.clone();
    let _h = bus.on(DATA, move |_| {
        c.fetch_add(1, Ordering::Relaxed);
    })?;
    let mut end = bus.subscribe(END)?;
    let mut quit = bus.subscribe(QUIT)?;
    let mut stop = stdin_closed(args.exit_on_stdin_eof);
    ready(&bus);
    let life = tokio::time::sleep(LIFETIME);
    tokio::pin!(life);
    let mut cpu0 = self_cpu_s();
    loop {
        tokio::select! {
            ev = end.recv() => {
                let Some(ev) = ev else { break };
                let emitted: u64 = ev.decode().unwrap_or(0);
                // END is small and the data may be big: END may overtake
                // data events (order holds per name). Wait until every one
                // emitted is counted, or the count stops moving for 1 s.
                let (mut seen, mut moved) = (counter.load(Ordering::Relaxed), Instant::now());
                while seen < emitted && moved.elapsed() < Duration::from_secs(1) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let now = counter.load(Ordering::Relaxed);
                    if now != seen {
                        (seen, moved) = (now, Instant::now());
                    }
                }
                let received = counter.swap(0, Ordering::Relaxed);
                let cpu = self_cpu_s();
                let mut msg = json!({"name": bus.me().name, "emitted": emitted, "received": received,
                    "receiver_cpu_s": r1((cpu - cpu0) * 100.0) / 100.0});
                cpu0 = cpu;
                merge(&mut msg, rss_json("receiver"));
                // The emitter's DONE subscription may still be on its way.
                let _ = wait_listeners(&bus, DONE, 1, args.timeout).await;
                bus.emit(DONE, &msg).await?;
                out(json!({"result": msg}));
            }
            _ = quit.recv() => break,
            _ = &mut stop => break,
            _ = &mut life => break,
        }
    }
    bus.leave().await;
    Ok(())
}

/// Emits data events for `--count`/`--duration`, then END; waits for every
/// receiver's DONE (bounded), prints the result.
pub async fn emitter(args: &BenchArgs) -> Result<()> {
    let receivers = if args.scenario == Scenario::Fanout { args.receivers } else { 1 };
    let sizes = args.payload_sizes();
    let bus = join(args).await?;
    let mut done = bus.subscribe(DONE)?;
    ready(&bus);
    wait_listeners(&bus, DATA, receivers, args.timeout).await?;
    wait_listeners(&bus, END, receivers, args.timeout).await?;
    let (count, duration) = args.bounds();
    for size in sizes {
        let data = payload(size)?;
        let cpu0 = self_cpu_s();
        let packets0 = packets([&bus]);
        let t0 = Instant::now();
        let mut sent: u64 = 0;
        'emit: loop {
            let chunk = 256.min(count - sent);
            for _ in 0..chunk {
                bus.emit_raw(DATA, data.clone()).await?;
            }
            sent += chunk;
            if sent >= count || t0.elapsed() >= duration {
                break 'emit;
            }
        }
        let emit_secs = t0.elapsed().as_secs_f64();
        bus.emit(END, &sent).await?;
        let mut received = 0u64;
        let mut answers = 0usize;
        let mut receiver_rss = 0u64;
        let mut receiver_rss_now = 0u64;
        let mut receiver_cpu = 0f64;
        let deadline = tokio::time::Instant::now() + args.timeout;
        while answers < receivers {
            match tokio::time::timeout_at(deadline, done.recv()).await {
                Ok(Some(ev)) => {
                    let v: Value = ev.decode().unwrap_or(Value::Null);
                    received += v["received"].as_u64().unwrap_or(0);
                    receiver_rss = receiver_rss.max(v["receiver_rss_kib"].as_u64().unwrap_or(0));
                    receiver_rss_now = receiver_rss_now.max(v["receiver_rss_now_kib"].as_u64().unwrap_or(0));
                    receiver_cpu += v["receiver_cpu_s"].as_f64().unwrap_or(0.0);
                    answers += 1;
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!("only {answers} of {receivers} receivers answered within {:?}", args.timeout);
                    break;
                }
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let emitter_cpu = self_cpu_s() - cpu0;
        let packets1 = packets([&bus]);
        let per_event_ns = |cpu: f64, n: u64| if n == 0 { 0.0 } else { (cpu * 1e9 / n as f64).round() };
        let mut v = json!({
            "scenario": args.scenario.name(),
            "payload_bytes": size,
            "receivers": receivers,
            "emitted": sent,
            "events": received,
            "seconds": (secs * 1e4).round() / 1e4,
            "emit_seconds": (emit_secs * 1e4).round() / 1e4,
            "events_per_s": (received as f64 / secs).round(),
            "mb_per_s": r1(received as f64 * size as f64 / secs / 1e6),
            "lost": (sent * receivers as u64).saturating_sub(received),
            "answers": answers,
            "receiver_rss_kib": receiver_rss,
            "receiver_rss_now_kib": receiver_rss_now,
            // CPU per event on each side (summed over receivers): comparable
            // across runs even when the machine is busy (10 ms resolution).
            "emitter_cpu_s": r1(emitter_cpu * 100.0) / 100.0,
            "receiver_cpu_s": r1(receiver_cpu * 100.0) / 100.0,
            "emitter_cpu_ns_per_event": per_event_ns(emitter_cpu, sent),
            "receiver_cpu_ns_per_event": per_event_ns(receiver_cpu, received),
            // The emitter's QUIC packets: losses (a full receive buffer on
            // loopback) make congestion control back off.
            "packets_sent": packets1.0.saturating_sub(packets0.0),
            "packets_lost": packets1.1.saturating_sub(packets0.1),
        });
        merge(&mut v, rss_json("emitter"));
        out(json!({"result": v}));
    }
    let _ = bus.emit(QUIT, &()).await;
    bus.leave().await;
    Ok(())
}

/// Answers every ping with a pong carrying the same payload.
pub async fn ponger(args: &BenchArgs) -> Result<()> {
    let bus = join(args).await?;
    let mut ping = bus.subscribe(PING)?;
    // Bulk events (pinger --bulk) are only counted: the cheapest handler.
    let bulk = Arc::new(AtomicU64::new(0));
    let b = bulk.clone();
    let _h = bus.on(BULK, move |_| {
        b.fetch_add(1, Ordering::Relaxed);
    })?;
    let mut quit = bus.subscribe(QUIT)?;
    let mut stop = stdin_closed(args.exit_on_stdin_eof);
    ready(&bus);
    let life = tokio::time::sleep(LIFETIME);
    tokio::pin!(life);
    loop {
        tokio::select! {
            biased;
            ev = ping.recv() => {
                let Some(ev) = ev else { break };
                bus.emit_raw(PONG, ev.raw().clone()).await?;
            }
            _ = quit.recv() => break,
            _ = &mut stop => break,
            _ = &mut life => break,
        }
    }
    bus.leave().await;
    Ok(())
}

/// The smallest ping: a MessagePack `bin` header and an 8-byte number.
const MIN_PING: usize = 10;

/// `data` with `n` in its last 8 bytes (the ponger echoes the bytes back).
fn numbered(data: &Bytes, n: u64) -> Bytes {
    let mut v = data.to_vec();
    let at = v.len() - 8;
    v[at..].copy_from_slice(&n.to_be_bytes());
    Bytes::from(v)
}

/// The number a pong carries back.
fn number(raw: &[u8]) -> Option<u64> {
    let at = raw.len().checked_sub(8)?;
    Some(u64::from_be_bytes(raw[at..].try_into().ok()?))
}

/// Warm-up, then `--round-trips` pings, one at a time; prints percentiles.
/// With `--bulk` (or `--under-bulk`), a stream of big events to the ponger runs throughout.
pub async fn pinger(args: &BenchArgs) -> Result<()> {
    let size = args.payload.first().copied().unwrap_or(16);
    if size < MIN_PING {
        bail!("bench latency needs --payload of at least {MIN_PING} bytes: each ping carries its number");
    }
    let data = payload(size)?;
    let ping = |n: u64| numbered(&data, n);
    let bus = join(args).await?;
    let mut pong = bus.subscribe(PONG)?;
    ready(&bus);
    wait_listeners(&bus, PING, 1, args.timeout).await?;
    // The first pings may find the ponger without our PONG subscription yet: retry.
    let start = tokio::time::Instant::now();
    // Their pongs may all come back, late: each pong is matched to its ping
    // by number, and the others are dropped (a pong answering an earlier
    // ping was once read as a 7 µs round trip on a 200 ms lossy path).
    let mut n = 0u64;
    loop {
        n += 1;
        bus.emit_raw(PING, ping(n)).await?;
        if tokio::time::timeout(Duration::from_millis(200), pong.recv()).await.is_ok() {
            break;
        }
        if start.elapsed() > args.timeout {
            bail!("no pong within {:?}", args.timeout);
        }
    }
    let bound = Instant::now() + args.timeout.max(Duration::from_secs(60));
    // With --bulk, a task keeps the ponger's queue full of bulk events while
    // we ping (bounded: it stops with the pings, at `bound` at the latest).
    let bulk = match args.bulk {
        Some(size) => {
            wait_listeners(&bus, BULK, 1, args.timeout).await?;
            let (bus, data) = (bus.clone(), payload(size)?);
            let sent = Arc::new(AtomicU64::new(0));
            let count = sent.clone();
            let task = tokio::spawn(async move {
                while Instant::now() < bound {
                    if bus.emit_raw(BULK, data.clone()).await.is_err() {
                        break;
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
            // Let the queue fill before the first measured ping.
            tokio::time::sleep(Duration::from_millis(500)).await;
            Some((size, sent, task, Instant::now()))
        }
        None => None,
    };
    // Events are reliable: a pong that is late is slow, not lost. Waiting
    // for it (up to --timeout) keeps it from being taken for the next
    // ping's (a 1 s bound read as 5 µs round trips on a 200 ms lossy path).
    let wait = args.timeout;
    let mut samples = Vec::with_capacity(args.round_trips);
    let mut lost = 0u64;
    for i in 0..(args.warmup + args.round_trips) {
        if Instant::now() > bound {
            break;
        }
        let t = Instant::now();
        n += 1;
        bus.emit_raw(PING, ping(n)).await?;
        let answer = async {
            loop {
                match pong.recv().await {
                    Some(ev) if number(ev.raw()) == Some(n) => return Some(()),
                    Some(_) => continue, // a late pong of an earlier ping
                    None => return None,
                }
            }
        };
        match tokio::time::timeout(wait, answer).await {
            Ok(Some(())) => {
                if i >= args.warmup {
                    samples.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
            Ok(None) => bail!("the bus left"),
            Err(_) => lost += 1,
        }
    }
    samples.sort_by(f64::total_cmp);
    let mut v = json!({
        "scenario": if args.bulk.is_some() { "latency-under-bulk" } else { "latency" },
        "payload_bytes": size,
        "events": samples.len(),
        "lost": lost,
        "p50_us": r1(percentile(&samples, 50.0)),
        "p90_us": r1(percentile(&samples, 90.0)),
        "p99_us": r1(percentile(&samples, 99.0)),
        "max_us": r1(samples.last().copied().unwrap_or(0.0)),
        "min_us": r1(samples.first().copied().unwrap_or(0.0)),
    });
    if let Some((size, sent, task, t0)) = bulk {
        task.abort();
        let n = sent.load(Ordering::Relaxed);
        merge(
            &mut v,
            json!({"bulk_payload_bytes": size, "bulk_events_queued": n,
            "bulk_mb_per_s": r1(n as f64 * size as f64 / t0.elapsed().as_secs_f64() / 1e6)}),
        );
    }
    merge(&mut v, rss_json("pinger"));
    out(json!({"result": v}));
    let _ = bus.emit(QUIT, &()).await;
    bus.leave().await;
    Ok(())
}

/// A plain node that prints neighbour changes with its RSS (memory and
/// mesh measurements across machines).
pub async fn node(args: &BenchArgs) -> Result<()> {
    let bus = join(args).await?;
    let mut events = bus.neighbour_events();
    let mut stop = stdin_closed(args.exit_on_stdin_eof);
    ready(&bus);
    let life = tokio::time::sleep(LIFETIME);
    tokio::pin!(life);
    let mut count = 0usize;
    loop {
        tokio::select! {
            ev = events.recv() => {
                let kind = match ev {
                    Ok(NeighbourEvent::Found(_)) => { count += 1; "found" }
                    Ok(NeighbourEvent::Lost { .. }) => { count = count.saturating_sub(1); "lost" }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => { count = bus.neighbours().len(); "lagged" }
                    Err(_) => break,
                };
                let mut v = json!({"neighbour": kind, "count": count});
                merge(&mut v, rss_json("node"));
                out(v);
            }
            _ = &mut stop => break,
            _ = &mut life => break,
        }
    }
    bus.leave().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ping_carries_its_number_and_stays_its_size() {
        for size in [MIN_PING, 16, 1024] {
            let data = payload(size).unwrap();
            let p = numbered(&data, 0x0102_0304_0506_0708);
            assert_eq!(p.len(), size);
            assert_eq!(p[..2], data[..2], "the MessagePack header stays");
            assert_eq!(number(&p), Some(0x0102_0304_0506_0708));
            assert_ne!(number(&numbered(&data, 7)), number(&numbered(&data, 8)));
        }
        assert_eq!(number(b"short"), None);
    }
}
