//! Numbered streams across path changes, in the NAT lab (issue 14): the
//! `seqcheck` bin emits numbered events on h2 at a bounded rate while a
//! `seqcheck recv` on h1 checks that none is missing, duplicated or out of
//! order, and that it arrives about on schedule (the emitter waits for the
//! receiver's acknowledgement of the end marker before it leaves); the lab
//! changes the path under the stream at given times ([`Change`]).
//!
//! Today: h1 and h2 (cone NATs) join a public hub on vps1 and their crossing
//! dials punch a direct path, switching between the two connections they make
//! (the `Resume` hand-over) while the stream starts. `hub_cone_cone_direct`
//! runs it plainly, `hub_cone_cone_direct_delay20` with 20 ms added each way
//! on each uplink (issue 14's set-up, the link emulator, python3).
//!
//! Path changes under the stream: `direct_to_relayed` (the pair's UDP dropped
//! on r1 mid-stream: only the path through the hub's relay is left),
//! `relayed_to_direct` (dropped from the start, let through mid-stream: a
//! punch then moves the connection), and `relay_restart` (the hub, the relay,
//! killed and restarted mid-stream while the direct path is blocked). A new case is a list of [`Change`]s and a test that calls
//! [`stream_case`].
//!
//! Network labs: reported as ignored where the build finds the lab cannot run
//! (not root, no `ip`/`nft`) or with `PARTYBUS_LAB=skip`; otherwise, and
//! always under `PARTYBUS_LAB=required`, they run and fail if the lab cannot
//! run (see `partybus_integration::lab`).

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use partybus_integration::lab::{Lab, LabProcess};
use partybus_integration::nat::{self, NatLab, NatOptions, RouterOptions, VPS1_IP};
use partybus_integration::pb::{self, LabHood};
use partybus_integration::seqcheck::Report;

const LOG: &str = "info,partybus=debug,partybus_discovery=info";
const HUB_PORT: u16 = 4816;
/// One lab at a time (timings, 2 cores).
static SERIAL: Mutex<()> = Mutex::new(());

/// The stream: events per second, how many, payload bytes.
#[derive(Clone, Copy, Debug)]
struct Stream {
    rate: u64,
    count: u64,
    payload: usize,
}

/// 5 s of 2000 1-KiB events per second (2 MB/s).
const STREAM: Stream = Stream { rate: 2000, count: 10_000, payload: 1024 };

/// Something the lab does to the path between h1 and h2.
#[derive(Clone, Copy, Debug)]
enum Change {
    /// Drop UDP between the two routers' public addresses (on r1, both
    /// ways): no direct path; the hub (a relay) stays reachable.
    CutDirect,
    /// Lift [`Change::CutDirect`].
    RestoreDirect,
    /// Stop the hub on vps1 (SIGKILL, like a crash) and start it again on
    /// the same port with the same identity.
    RestartHub,
}

/// The lab of a stream case, with its hub.
struct Setup<'a> {
    nat: NatLab<'a>,
    hood: LabHood,
    hub: LabProcess,
    hub_args: Vec<String>,
}

impl<'a> Setup<'a> {
    fn new(lab: &'a Lab, bin: &Path, opts: NatOptions) -> Setup<'a> {
        let nat = NatLab::build(lab, opts).unwrap();
        let hood = LabHood::new(lab, bin, "seq", LOG).unwrap();
        let mut hub_args = vec!["node".to_owned()];
        hub_args.extend(hood.identity("vps1").unwrap());
        hub_args.extend(["--port".into(), HUB_PORT.to_string(), "--allow-non-global".into()]);
        let hub = start_hub(lab, &nat, &hood, &hub_args);
        Setup { nat, hood, hub, hub_args }
    }

    fn apply(&mut self, lab: &Lab, change: Change) {
        eprintln!("path_change: {change:?}");
        match change {
            Change::CutDirect => self.nat.block_udp(&self.nat.r1, self.nat.r2.wan_ip).unwrap(),
            Change::RestoreDirect => self.nat.unblock_udp(&self.nat.r1).unwrap(),
            Change::RestartHub => {
                self.hub.kill();
                self.hub = start_hub(lab, &self.nat, &self.hood, &self.hub_args);
            }
        }
    }
}

fn start_hub(lab: &Lab, nat: &NatLab<'_>, hood: &LabHood, args: &[String]) -> LabProcess {
    let mut hub = lab.spawn_env(&nat.vps1, &hood.bin, args, [("RUST_LOG", LOG)]).unwrap();
    hub.wait_for_json(|v| v.get("ready").is_some(), Duration::from_secs(20)).unwrap();
    hub
}

/// `seqcheck MODE <identity of a new peer NAME> ARGS...` in `ns`.
fn seqcheck(lab: &Lab, s: &Setup<'_>, ns: &partybus_integration::Ns, mode: &str, name: &str, args: &[String]) -> LabProcess {
    let mut a = vec![mode.to_owned()];
    a.extend(s.hood.identity(name).unwrap());
    a.extend(["--connect".into(), format!("{VPS1_IP}:{HUB_PORT}"), "--allow-non-global".into()]);
    a.extend(args.iter().cloned());
    lab.spawn_env(ns, seqcheck_bin(), a, [("RUST_LOG", LOG)]).unwrap()
}

/// The `seqcheck` bin built with these tests, or `PARTYBUS_SEQCHECK_BIN`
/// (e.g. a release build, for high rates).
fn seqcheck_bin() -> std::path::PathBuf {
    std::env::var_os("PARTYBUS_SEQCHECK_BIN").map(Into::into).unwrap_or_else(|| env!("CARGO_BIN_EXE_seqcheck").into())
}

/// What a stream run saw.
struct StreamRun {
    report: Report,
    /// The emitter's `done` object.
    done: serde_json::Value,
    /// Every stdout line of the emitter and the receiver (progress, neighbours).
    emit_lines: Vec<String>,
    recv_lines: Vec<String>,
}

impl StreamRun {
    /// Both ends' progress lines in time order (each end's clock starts at
    /// its own start): events received in each second, and the emitter's
    /// count with its view of the path to the receiver (a blocked emitter
    /// prints nothing until it can emit again).
    fn profile(&self) -> String {
        let json = |lines: &[String]| -> Vec<serde_json::Value> {
            lines
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| v.get("progress").cloned())
                .collect()
        };
        let mut rows: Vec<(f64, String)> = Vec::new();
        let mut last = 0;
        for r in json(&self.recv_lines) {
            let n = r["received"].as_u64().unwrap_or(0);
            rows.push((r["secs"].as_f64().unwrap_or(0.0), format!("recv +{} events", n - last)));
            last = n;
        }
        for e in json(&self.emit_lines) {
            let path = e["paths"].as_array().and_then(|a| a.iter().find(|p| p["name"] == "recv").cloned());
            let path = path
                .map(|p| {
                    format!("rtt {:.0} ms, cwnd {}, sent {}, lost {}", p["rtt_ms"].as_f64().unwrap_or(0.0), p["cwnd"], p["sent"], p["lost"])
                })
                .unwrap_or_else(|| "no path".into());
            rows.push((e["secs"].as_f64().unwrap_or(0.0), format!("emit {} emitted; path to recv: {path}", e["emitted"])));
        }
        rows.sort_by(|a, b| a.0.total_cmp(&b.0));
        rows.iter().map(|(t, l)| format!("  {t:>5.1} s  {l}\n")).collect()
    }
}

/// Runs `stream` from h2 to h1 in a lab with routers `opts`: `before`
/// applied before the stream starts, each of `during` at its time after the
/// first event was emitted. Prints the receiver's summary.
fn run_stream(case: &str, opts: NatOptions, stream: Stream, before: &[Change], during: &[(Duration, Change)]) -> StreamRun {
    nat::require_prereqs_for(&opts);
    let bin = pb::require_bin(&[(&["node"], "--allow-non-global")]);
    let lab = Lab::require("pathchg");
    let t0 = Instant::now();
    let mut s = Setup::new(&lab, &bin, opts);
    for c in before {
        s.apply(&lab, *c);
    }
    let secs = stream.count as f64 / stream.rate as f64;
    let max_secs = (secs * 3.0 + 10.0).ceil();
    let mut recv = seqcheck(&lab, &s, &s.nat.r1.host, "recv", "recv", &["--port".into(), "4816".into(), "--max-secs".into(), "120".into()]);
    recv.wait_for_json(|v| v.get("ready").is_some(), Duration::from_secs(20)).unwrap();
    let eargs: Vec<String> = [
        ("--port", "4817".to_owned()),
        ("--rate", stream.rate.to_string()),
        ("--count", stream.count.to_string()),
        ("--payload", stream.payload.to_string()),
        ("--max-secs", max_secs.to_string()),
        ("--timeout", "20".into()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_owned(), v])
    .collect();
    let mut emit = seqcheck(&lab, &s, &s.nat.r2.host, "emit", "emit", &eargs);
    emit.wait_for_json(|v| v.get("ready").is_some(), Duration::from_secs(20)).unwrap();
    // The first progress line comes a second after the first event: start the clock at the first.
    let started = emit.wait_for_json(|v| v.get("progress").is_some() || v.get("done").is_some(), Duration::from_secs(40)).unwrap();
    let t_stream = Instant::now() - Duration::from_secs_f64(started["progress"]["secs"].as_f64().unwrap_or(0.0));
    for (at, change) in during {
        let wait = (t_stream + *at).saturating_duration_since(Instant::now());
        std::thread::sleep(wait);
        s.apply(&lab, *change);
    }
    let done = emit.wait_for_json(|v| v.get("done").is_some(), Duration::from_secs_f64(max_secs + 20.0)).unwrap();
    let result = recv.wait_for_json(|v| v.get("result").is_some(), Duration::from_secs(130)).unwrap();
    let report: Report = serde_json::from_value(result["result"].clone()).unwrap();
    let d = done["done"].clone();
    eprintln!(
        "path_change: {case}: {} (emitter: {} emitted in {:.2} s, all received {} s after the first, after waiting {} ms for the listener, min count {}; case {:.1} s)",
        report.summary(),
        d["emitted"],
        d["secs"].as_f64().unwrap_or(0.0),
        d["stream_secs"].as_f64().map(|t| format!("{t:.2}")).unwrap_or_else(|| "? (no ack)".into()),
        d["waited_ms"],
        d["min_count"],
        t0.elapsed().as_secs_f64()
    );
    for p in [&mut emit, &mut recv] {
        let _ = p.wait_exit(Duration::from_secs(15));
    }
    StreamRun { report, done: d, emit_lines: emit.lines(), recv_lines: recv.lines() }
}

/// How much longer than its schedule a stream may take to arrive completely
/// (a switch, a slow CI machine; 0.1 s is usual). A punched path that starts
/// without slow start (issue 14, before node/src/congestion.rs) took 5 s more
/// for [`STREAM`] with 20 ms per uplink, in half of the runs.
const STREAM_SLACK: Duration = Duration::from_secs(3);
/// What a path that dies under the stream may cost on top: the node trusts a
/// direct path for 3 s after its last answered probe (`path::paths::TRUST`).
const OUTAGE: Duration = Duration::from_secs(4);

/// [`run_stream`], one lab at a time, asserting that every event arrived
/// once and in order, and about on schedule.
fn stream_case(case: &str, opts: NatOptions, stream: Stream, before: &[Change], during: &[(Duration, Change)]) -> Report {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let run = run_stream(case, opts, stream, before, during);
    assert!(run.done["emitted"].as_u64() == Some(stream.count), "{case}: the emitter did not emit everything: {}", run.done);
    assert!(run.report.ok(), "{case}: the stream came through damaged: {}\n{}", run.report.summary(), run.profile());
    let took = run.done["stream_secs"].as_f64().unwrap_or(f64::INFINITY);
    let schedule = stream.count as f64 / stream.rate as f64;
    // A path that dies under the stream holds it up until the node notices
    // (no answer to its probes for 3 s) or the relay is back.
    let outage = if during.iter().any(|(_, c)| matches!(c, Change::CutDirect | Change::RestartHub)) { OUTAGE } else { Duration::ZERO };
    let slack = STREAM_SLACK + outage;
    assert!(
        took <= schedule + slack.as_secs_f64(),
        "{case}: the stream arrived whole but slowly: {took:.1} s for {schedule:.1} s of events (more than {slack:?} late)\n{}",
        run.profile()
    );
    run.report
}

fn cone(delay_ms: u32) -> NatOptions {
    let r = RouterOptions { delay_ms, ..Default::default() };
    NatOptions { r1: r.clone(), r2: r, stun_server: None }
}

#[test]
#[cfg_attr(
    partybus_no_lab,
    ignore = "network lab (needs root, ip, nft) unavailable here or PARTYBUS_LAB=skip; PARTYBUS_LAB=required runs it"
)]
fn hub_cone_cone_direct() {
    stream_case("hub_cone_cone_direct", cone(0), STREAM, &[], &[]);
}

#[test]
#[cfg_attr(
    partybus_no_lab,
    ignore = "network lab (needs root, ip, nft, python3) unavailable here or PARTYBUS_LAB=skip; PARTYBUS_LAB=required runs it"
)]
fn hub_cone_cone_direct_delay20() {
    stream_case("hub_cone_cone_direct_delay20", cone(20), STREAM, &[], &[]);
}

#[test]
#[cfg_attr(
    partybus_no_lab,
    ignore = "network lab (needs root, ip, nft) unavailable here or PARTYBUS_LAB=skip; PARTYBUS_LAB=required runs it"
)]
fn direct_to_relayed() {
    stream_case("direct_to_relayed", cone(0), STREAM, &[], &[(Duration::from_secs(2), Change::CutDirect)]);
}

#[test]
#[cfg_attr(
    partybus_no_lab,
    ignore = "network lab (needs root, ip, nft) unavailable here or PARTYBUS_LAB=skip; PARTYBUS_LAB=required runs it"
)]
fn relayed_to_direct() {
    stream_case("relayed_to_direct", cone(0), STREAM, &[Change::CutDirect], &[(Duration::from_secs(2), Change::RestoreDirect)]);
}

#[test]
#[cfg_attr(
    partybus_no_lab,
    ignore = "network lab (needs root, ip, nft) unavailable here or PARTYBUS_LAB=skip; PARTYBUS_LAB=required runs it"
)]
fn relay_restart() {
    stream_case("relay_restart", cone(0), STREAM, &[Change::CutDirect], &[(Duration::from_secs(2), Change::RestartHub)]);
}

/// Issue 14's finding, reproduced: `partybus bench throughput --role` from h2
/// to h1 across the punched cone<->cone path (joined through the hub, 20 ms
/// added each way on each uplink, no loss), 1 KiB events for 6 s, several
/// runs (`PARTYBUS_BENCH_RUNS`, default 8), each with fresh processes on fresh
/// ports (new mappings, new crossing dials). Prints each run's counts; fails
/// if a run lost events. Slow and meant for a release build:
/// `PARTYBUS_BIN=target/release/partybus cargo test ... -- --ignored issue14`.
#[test]
#[ignore = "a measurement (about 15 s per run; best with a release build via PARTYBUS_BIN): run with --ignored"]
fn issue14_bench_throughput_punched() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let opts = cone(20);
    nat::require_prereqs_for(&opts);
    let bin = pb::require_bin(&[(&["bench"], "--role")]);
    let runs: u16 = std::env::var("PARTYBUS_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(8).clamp(1, 50);
    let lab = Lab::require("issue14");
    let s = Setup::new(&lab, &bin, opts);
    let hub = format!("{VPS1_IP}:{HUB_PORT}");
    let mut short = Vec::new();
    for run in 0..runs {
        let (rport, eport) = (5000 + 2 * run, 5001 + 2 * run);
        let common = |port: u16| -> Vec<String> {
            ["--connect", &hub, "--allow-non-global", "--port", &port.to_string(), "--timeout", "30s"]
                .iter()
                .map(|x| x.to_string())
                .collect()
        };
        let mut rargs = vec!["throughput".to_owned(), "--role".into(), "receiver".into()];
        rargs.extend(common(rport));
        let mut recv = s.hood.spawn(&lab, &s.nat.r1.host, "bench", &format!("recv{run}"), &rargs).unwrap();
        recv.wait_for_json(|v| v.get("ready").is_some(), Duration::from_secs(20)).unwrap();
        let mut eargs = vec!["throughput".to_owned(), "--role".into(), "emitter".into(), "--payload".into(), "1024".into()];
        eargs.extend(["--duration".into(), "6s".into()]);
        eargs.extend(common(eport));
        let mut emit = s.hood.spawn(&lab, &s.nat.r2.host, "bench", &format!("emit{run}"), &eargs).unwrap();
        let r = emit.wait_for_json(|v| v.get("result").is_some(), Duration::from_secs(90)).unwrap();
        let r = &r["result"];
        let lost = r["lost"].as_u64().unwrap_or(u64::MAX);
        eprintln!(
            "issue14: run {run}: emitted {} received {} lost {lost} at {} MB/s in {} s (emitter packets lost {})",
            r["emitted"], r["events"], r["mb_per_s"], r["seconds"], r["packets_lost"]
        );
        if lost != 0 {
            short.push(format!("run {run}: lost {lost} of {}", r["emitted"]));
        }
        for p in [&mut emit, &mut recv] {
            if p.wait_exit(Duration::from_secs(15)).is_err() {
                p.kill();
            }
        }
    }
    assert!(short.is_empty(), "events lost on the punched path: {}", short.join("; "));
}

/// Issue 14's set-up with the checker instead of the bench: 12000 1-KiB
/// events per second for 6 s from h2 to h1 across the punched path (20 ms
/// each way on each uplink), `PARTYBUS_BENCH_RUNS` runs (default 8), each in
/// a fresh lab. Prints each run's report and per-second profile; fails if
/// any run lost, duplicated or reordered events. For a release build:
/// `PARTYBUS_SEQCHECK_BIN=target/release/seqcheck`.
#[test]
#[ignore = "a measurement (about 15 s per run; best with a release build via PARTYBUS_SEQCHECK_BIN): run with --ignored"]
fn issue14_stream_punched() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let runs: u16 = std::env::var("PARTYBUS_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(8).clamp(1, 50);
    let stream = Stream { rate: 12_000, count: 72_000, payload: 1024 };
    let mut bad = Vec::new();
    for run in 0..runs {
        let r = run_stream(&format!("issue14 run {run}"), cone(20), stream, &[], &[]);
        eprintln!("{}", r.profile());
        if !r.report.ok() || r.done["emitted"].as_u64() != Some(stream.count) {
            bad.push(format!("run {run}: {}", r.report.summary()));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// The punched path with 20 ms per uplink and 2 % loss each way on each WAN
/// link, 500 1-KiB events per second for 10 s: loss-based congestion control
/// on a lossy path (the lab notes measured TCP cubic at 1.6 Mbit/s through
/// such links). Checks the stream only (slow is expected); a measurement.
#[test]
#[ignore = "a measurement (lossy path, slow by nature): run with --ignored"]
fn hub_cone_cone_direct_loss2_delay20() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let r = RouterOptions { delay_ms: 20, loss_ppm: 20_000, ..Default::default() };
    let opts = NatOptions { r1: r.clone(), r2: r, stun_server: None };
    let stream = Stream { rate: 500, count: 5000, payload: 1024 };
    let run = run_stream("hub_cone_cone_direct_loss2_delay20", opts, stream, &[], &[]);
    eprintln!("{}", run.profile());
    assert!(run.report.ok(), "the stream came through damaged: {}", run.report.summary());
}
