//! `partybus-perf quinn` (formerly `partybus bench quinn`): the baseline.
//! Plain quinn endpoints with the
//! hood's mutual TLS (`partybus_pki` configs, quinn's default transport
//! settings), no partybus on top. The quinn-client measures; the
//! quinn-server echoes pings and counts what it receives, and after each
//! measurement reports its counts and RSS on a unidirectional stream.
//!
//! Client -> server: one bidirectional stream per ping-pong run; one
//! unidirectional stream per bulk/records run, starting with a kind byte.
//! Records are a 4-byte big-endian length and a 16-byte body.

//!
//! Modules: `config` (the endpoints' TLS and transport), `ends` (the server
//! and client roles), `mesh` (the in-process mesh of endpoints); here, the
//! orchestration of a local run.

use std::ffi::OsString;
use std::time::Duration;

use anyhow::{Context, Result};
use partybus::pki::TempHood;

use crate::args::{Measure, QuinnArgs, QuinnRole};
use crate::util::{bench_hood, peer_args, ready_port, tag, Kid, Printer};

mod config;
mod ends;
mod mesh;

/// Table columns (the JSON lines hold more).
const QUINN_COLS: &[(&str, &str)] = &[
    ("scenario", "scenario"),
    ("payload B", "payload_bytes"),
    ("events", "events"),
    ("seconds", "seconds"),
    ("events/s", "events_per_s"),
    ("MB/s", "mb_per_s"),
    ("lost", "lost"),
    ("p50 µs", "p50_us"),
    ("p90 µs", "p90_us"),
    ("p99 µs", "p99_us"),
    ("max µs", "max_us"),
    ("client RSS KiB", "client_rss_kib"),
    ("server RSS KiB", "server_rss_kib"),
];

/// `partybus-perf quinn`: one end with --role, else every measurement and
/// run with a fresh server and client process each (the mesh in this process).
pub fn run(args: &QuinnArgs) -> Result<()> {
    if let Some(role) = args.role {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
        return rt.block_on(async {
            match role {
                QuinnRole::Server => ends::server(args).await,
                QuinnRole::Client => ends::client(args).await,
            }
        });
    }
    let mut p = Printer::new(args.common.json, QUINN_COLS);
    let hood = bench_hood()?;
    for m in args.measures() {
        for run in 0..args.common.runs {
            if m == Measure::Mesh {
                p.row(&tag(mesh::mesh(args, &hood)?, run));
                continue;
            }
            let server = Kid::spawn(role_args(args, &hood, "server")?, 0, None, true)?;
            let port = ready_port(&server.expect("ready", args.common.timeout)?)?;
            let mut a = role_args(args, &hood, "client")?;
            a.extend(os(&["--connect", &format!("127.0.0.1:{port}"), "--measure", m.name()]));
            let client = Kid::spawn(a, 1, None, true)?;
            // The load, then the ping-pong loop's own bound of max(--timeout, 60s), with margin.
            let (_, d) = args.bounds();
            let t = args.common.timeout;
            let bound = d.min(Duration::from_secs(600)) + t * 2 + Duration::from_secs(10) + t.max(Duration::from_secs(60));
            let res = client.expect("result", bound)?;
            p.row(&tag(res, run));
            client.stop();
            server.stop();
        }
    }
    Ok(())
}

fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

/// `quinn --role ROLE` on loopback with peer ROLE's certificates and the shared options.
fn role_args(args: &QuinnArgs, hood: &TempHood, role: &str) -> Result<Vec<OsString>> {
    let mut v = os(&["quinn", "--role", role, "--exit-on-stdin-eof", "--port", "0", "--bind", "127.0.0.1"]);
    v.extend(peer_args(hood, role)?);
    v.extend(os(&["--timeout", &humantime::format_duration(args.common.timeout).to_string()]));
    if let Some(c) = args.count {
        v.extend(os(&["--count", &c.to_string()]));
    }
    if let Some(d) = args.duration {
        v.extend(os(&["--duration", &humantime::format_duration(d).to_string()]));
    }
    v.extend(os(&["--round-trips", &args.round_trips.to_string(), "--warmup", &args.warmup.to_string()]));
    Ok(v)
}
