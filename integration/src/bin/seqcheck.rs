//! The numbered-stream checker (see `partybus_integration::seqcheck`): one
//! partybus node that either emits numbered events at a bounded rate or
//! receives and checks them. JSON lines on stdout, logs on stderr.
//!
//! ```text
//! seqcheck emit NODE-OPTIONS [--event NAME] [--count N] [--rate N] [--payload BYTES]
//!               [--wait-listeners N] [--timeout SECS] [--max-secs SECS]
//! seqcheck recv NODE-OPTIONS [--event NAME] [--linger-ms MS] [--max-secs SECS]
//! NODE-OPTIONS: --ca F --cert F --key F [--port SPEC] [--connect HOST:PORT]...
//!               [--dht HOST:PORT]... [--allow-non-global]
//! ```
//!
//! Both print `{"ready":{"id":HEX,"port":N}}` once joined,
//! `{"progress":{...}}` about once a second, and `{"neighbour":"found"|"lost",
//! "id":..,"name":..,"addr":..}` lines as `partybus node` does.
//!
//! `emit` waits (at most `--timeout`, default 20) for `--wait-listeners`
//! (default 1) listeners of the event, then emits events 0, 1, ... at
//! `--rate` per second (default 2000) until `--count` (default 10000) or
//! `--max-secs` (default 30) is reached, then `<NAME>.end` with the count;
//! waits (at most `--ack-timeout`, default 60) for the receiver's
//! `<NAME>.ack` (sent when the end marker arrived: everything before it was
//! handled), so that leaving (which flushes the queues for a bounded time
//! only) loses nothing on a slow path; prints `{"done":{"emitted":N,"secs":S,
//! "stream_secs":T,"acked":B,"min_count":C,"waited_ms":W}}` (`secs`: emitting,
//! `stream_secs`: from the first event to the ack, null without one;
//! `min_count`: the fewest listeners an emit reached) and leaves. Exit 3
//! when no listener came (it emits nothing).
//!
//! `recv` checks every event, answers the end marker with `<NAME>.ack`
//! (payload: events received), and prints `{"result":REPORT}` (the
//! `seqcheck::Report` fields and `"ok"`) `--linger-ms` (default 1000) after
//! the end marker, or after `--max-secs` (default 120) without one; exit 0
//! when the report is ok, 2 otherwise.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use partybus::{Bus, Config, PortSpec};
use partybus_integration::seqcheck::{self, SeqCheck, MAX_EVENTS};
use serde_json::json;

#[derive(Default)]
struct Opts {
    mode: String,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    port: Option<String>,
    connect: Vec<String>,
    dht: Vec<String>,
    allow_non_global: bool,
    event: String,
    count: u64,
    rate: u64,
    payload: usize,
    wait_listeners: usize,
    timeout: Duration,
    max_secs: Duration,
    linger: Duration,
    ack_timeout: Duration,
}

fn parse() -> Result<Opts> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    if mode != "emit" && mode != "recv" {
        bail!("usage: seqcheck emit|recv --ca F --cert F --key F [options] (see the source's docs)");
    }
    let emit = mode == "emit";
    let mut o = Opts {
        mode,
        event: "seq.data".into(),
        count: 10_000,
        rate: 2_000,
        payload: 1024,
        wait_listeners: 1,
        timeout: Duration::from_secs(20),
        max_secs: Duration::from_secs(if emit { 30 } else { 120 }),
        linger: Duration::from_millis(1000),
        ack_timeout: Duration::from_secs(60),
        ..Opts::default()
    };
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--ca" => o.ca = Some(val()?.into()),
            "--cert" => o.cert = Some(val()?.into()),
            "--key" => o.key = Some(val()?.into()),
            "--port" => o.port = Some(val()?),
            "--connect" => o.connect.push(val()?),
            "--dht" => o.dht.push(val()?),
            "--allow-non-global" => o.allow_non_global = true,
            "--event" => o.event = val()?,
            "--count" => o.count = val()?.parse()?,
            "--rate" => o.rate = val()?.parse()?,
            "--payload" => o.payload = val()?.parse()?,
            "--wait-listeners" => o.wait_listeners = val()?.parse()?,
            "--timeout" => o.timeout = Duration::from_secs_f64(val()?.parse()?),
            "--max-secs" => o.max_secs = Duration::from_secs_f64(val()?.parse()?),
            "--linger-ms" => o.linger = Duration::from_millis(val()?.parse()?),
            "--ack-timeout" => o.ack_timeout = Duration::from_secs_f64(val()?.parse()?),
            _ => bail!("unknown argument {a}"),
        }
    }
    if o.count > MAX_EVENTS {
        bail!("--count is at most {MAX_EVENTS}");
    }
    if o.rate == 0 || o.rate > 1_000_000 {
        bail!("--rate must be 1..=1000000 events per second");
    }
    if o.max_secs > Duration::from_secs(600) || o.ack_timeout > Duration::from_secs(600) {
        bail!("--max-secs and --ack-timeout are at most 600");
    }
    Ok(o)
}

fn out(v: serde_json::Value) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{v}");
    let _ = o.flush();
}

fn config(o: &Opts) -> Result<Config> {
    let (Some(ca), Some(cert), Some(key)) = (&o.ca, &o.cert, &o.key) else { bail!("--ca, --cert and --key are required") };
    let mut cfg = Config::from_files(ca, cert, key)?.connect(o.connect.clone());
    if let Some(p) = &o.port {
        cfg.port = p.parse::<PortSpec>().map_err(anyhow::Error::msg)?;
    }
    cfg.allow_non_global = o.allow_non_global;
    if !o.dht.is_empty() {
        let opts = partybus::discovery::dht::DhtOptions { bootstrap: o.dht.clone(), ..Default::default() };
        cfg.discovery.push(Box::new(partybus::discovery::dht::DhtDiscovery::new(opts)));
    }
    Ok(cfg)
}

fn ready(bus: &Bus) {
    out(json!({"ready": {"id": bus.id().to_hex(), "port": bus.port()}}));
    // Neighbour changes, as `partybus node` prints them (for diagnosing a
    // damaged stream), from a task of their own.
    let mut events = bus.neighbour_events();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(partybus::NeighbourEvent::Found(n)) => out(
                    json!({"neighbour": "found", "id": n.id.to_hex(), "name": n.name, "addr": n.addr.to_string(), "direction": n.direction.to_string()}),
                ),
                Ok(partybus::NeighbourEvent::Lost { info, reason }) => out(
                    json!({"neighbour": "lost", "id": info.id.to_hex(), "name": info.name, "addr": info.addr.to_string(), "reason": reason}),
                ),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
    });
}

/// Each neighbour's QUIC path now: name, smoothed RTT, congestion window,
/// packets sent and lost, MTU.
fn paths(bus: &Bus) -> serde_json::Value {
    let v: Vec<serde_json::Value> = bus
        .neighbours()
        .into_iter()
        .filter_map(|n| {
            let p = bus.path(n.id)?;
            Some(json!({"name": n.name, "rtt_ms": p.rtt.as_secs_f64() * 1e3, "cwnd": p.cwnd, "sent": p.sent_packets, "lost": p.lost_packets, "mtu": p.mtu}))
        })
        .collect();
    json!(v)
}

async fn emit(o: &Opts) -> Result<ExitCode> {
    let bus = Bus::join(config(o)?).await.context("cannot join the hood")?;
    ready(&bus);
    let t_wait = tokio::time::Instant::now();
    let end = format!("{}.end", o.event);
    let mut ack = bus.subscribe(&format!("{}.ack", o.event))?;
    let mut rx = bus.observe_listener_count(&o.event)?;
    let mut rx_end = bus.observe_listener_count(&end)?;
    let want = o.wait_listeners;
    let waited = tokio::time::timeout(o.timeout, async {
        let _ = rx.wait_for(|c| *c >= want).await;
        let _ = rx_end.wait_for(|c| *c >= want).await;
    })
    .await;
    if waited.is_err() {
        let n = *rx.borrow();
        out(json!({"done": {"emitted": 0, "secs": 0.0, "min_count": n, "waited_ms": t_wait.elapsed().as_millis() as u64}}));
        eprintln!("seqcheck: {n} listener(s) of {:?} after {:?}, wanted {}", o.event, o.timeout, o.wait_listeners);
        bus.leave().await;
        return Ok(ExitCode::from(3));
    }
    let waited_ms = t_wait.elapsed().as_millis() as u64;
    let t0 = tokio::time::Instant::now();
    let deadline = t0 + o.max_secs;
    // Paced in small bursts: at most one sleep per millisecond of schedule.
    let burst = (o.rate / 1000).max(1);
    let mut min_count = usize::MAX;
    let mut next_progress = t0 + Duration::from_secs(1);
    let mut sent = 0u64;
    while sent < o.count {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        let due = t0 + Duration::from_secs_f64(sent as f64 / o.rate as f64);
        if due > now {
            tokio::time::sleep_until(due).await;
        }
        for _ in 0..burst.min(o.count - sent) {
            let n = bus.emit_raw(&o.event, seqcheck::payload(sent, o.payload).into()).await?;
            min_count = min_count.min(n);
            sent += 1;
        }
        if now >= next_progress {
            next_progress += Duration::from_secs(1);
            out(json!({"progress": {"emitted": sent, "secs": t0.elapsed().as_secs_f64(), "paths": paths(&bus)}}));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    bus.emit(&end, &sent).await?;
    let acked = tokio::time::timeout(o.ack_timeout, ack.recv()).await.ok().flatten().is_some();
    let stream_secs = acked.then(|| t0.elapsed().as_secs_f64());
    let min_count = if sent == 0 { 0 } else { min_count };
    out(
        json!({"done": {"emitted": sent, "secs": secs, "stream_secs": stream_secs, "acked": acked, "min_count": min_count, "waited_ms": waited_ms}}),
    );
    bus.leave().await;
    Ok(ExitCode::SUCCESS)
}

async fn recv(o: &Opts) -> Result<ExitCode> {
    let bus = Bus::join(config(o)?).await.context("cannot join the hood")?;
    let check = Arc::new(Mutex::new(SeqCheck::new()));
    let ended = Arc::new(tokio::sync::Notify::new());
    let c = check.clone();
    // Handlers run in arrival order on the dispatcher: the end marker's
    // handler runs after those of every event delivered before it.
    let _data = bus.on(&o.event, move |ev| c.lock().unwrap().on_payload(ev.raw()))?;
    let (c, e) = (check.clone(), ended.clone());
    let _end = bus.on(&format!("{}.end", o.event), move |ev| {
        c.lock().unwrap().on_end(ev.decode::<u64>().unwrap_or(0));
        e.notify_one();
    })?;
    ready(&bus);
    let t0 = tokio::time::Instant::now();
    let deadline = t0 + o.max_secs;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = ended.notified() => break,
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tick.tick() => {
                let r = check.lock().unwrap().report();
                out(json!({"progress": {"received": r.received, "missing_so_far": r.missing, "secs": t0.elapsed().as_secs_f64(), "paths": paths(&bus)}}));
            }
        }
    }
    // The end marker is small and may overtake big data events still on
    // their way (order holds per event name): wait for the numbers it
    // announced, while they keep coming (at most `linger` without one).
    let mut last = (check.lock().unwrap().received(), tokio::time::Instant::now());
    while check.lock().unwrap().ended() && !check.lock().unwrap().complete() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = check.lock().unwrap().received();
        if now != last.0 {
            last = (now, tokio::time::Instant::now());
        } else if last.1.elapsed() >= o.linger {
            break;
        }
    }
    let (ended, received) = {
        let c = check.lock().unwrap();
        (c.ended(), c.received())
    };
    if ended {
        // The emitter waits for this before it leaves. Its subscription came
        // with its first frames; the wait is only a bound.
        let ack = format!("{}.ack", o.event);
        let mut rx = bus.observe_listener_count(&ack)?;
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|c| *c >= 1)).await;
        bus.emit(&ack, &received).await?;
        // Stragglers (late or duplicate events) show up in the report.
        tokio::time::sleep(o.linger).await;
    }
    let report = check.lock().unwrap().report();
    let ok = report.ok();
    let mut v = serde_json::to_value(&report)?;
    v["ok"] = json!(ok);
    v["summary"] = json!(report.summary());
    out(json!({ "result": v }));
    bus.leave().await;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    let run = || -> Result<ExitCode> {
        let o = parse()?;
        // One thread, like the partybus CLI.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            if o.mode == "emit" {
                emit(&o).await
            } else {
                recv(&o).await
            }
        })
    };
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("seqcheck: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
