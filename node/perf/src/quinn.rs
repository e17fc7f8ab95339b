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

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use partybus::__private::tls;
use partybus::pki::TempHood;
use serde_json::{json, Value};
use tokio::time::timeout;

use crate::alloc::fixed_mmap_threshold;
use crate::args::{threads, Measure, QuinnArgs, QuinnRole};
use crate::util::{
    bench_hood, merge, out, peer_args, percentile, r1, ready_port, rss_json, self_cpu_s, self_rss, stdin_closed, tag, Kid, Printer,
    LIFETIME,
};

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
                QuinnRole::Server => server(args).await,
                QuinnRole::Client => client(args).await,
            }
        });
    }
    let mut p = Printer::new(args.common.json, QUINN_COLS);
    let hood = bench_hood()?;
    for m in args.measures() {
        for run in 0..args.common.runs {
            if m == Measure::Mesh {
                p.row(&tag(mesh(args, &hood)?, run));
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

/// Not partybus's ALPN: a quinn-client cannot talk to a node by mistake.
const ALPN: &[u8] = b"partybus-bench-quinn";
const PING_BYTES: usize = 16;
const WRITE_BYTES: usize = 64 * 1024;
const RECORD_BYTES: usize = 16;
/// Length prefix + body.
const RECORD_WIRE: usize = 4 + RECORD_BYTES;
const RECORDS_PER_WRITE: usize = WRITE_BYTES / RECORD_WIRE;
/// A record longer than this is a protocol error.
const MAX_RECORD: usize = 1 << 20;
const REPORT_MAX: usize = 64 * 1024;
const KIND_BULK: u8 = b'B';
const KIND_RECORDS: u8 = b'R';

fn transport_default() -> Arc<quinn::TransportConfig> {
    Arc::new(quinn::TransportConfig::default())
}

fn server_config(cfg: &partybus::Config) -> Result<quinn::ServerConfig> {
    let mut tls = partybus::pki::server_config(&cfg.identity, &cfg.hood)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).context("TLS configuration not usable for QUIC")?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(quic));
    sc.transport_config(transport_default());
    Ok(sc)
}

fn client_config(cfg: &partybus::Config) -> Result<quinn::ClientConfig> {
    let mut tls = partybus::pki::client_config(&cfg.identity, &cfg.hood)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).context("TLS configuration not usable for QUIC")?;
    let mut cc = quinn::ClientConfig::new(Arc::new(quic));
    cc.transport_config(transport_default());
    Ok(cc)
}

/// A quinn server endpoint on --bind (default `[::]`, then `0.0.0.0`) and the first free --port.
fn server_endpoint(cfg: &partybus::Config) -> Result<quinn::Endpoint> {
    let ips = match cfg.bind {
        Some(ip) => vec![ip],
        None => vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED), IpAddr::V4(Ipv4Addr::UNSPECIFIED)],
    };
    let mut last = None;
    for ip in ips {
        for &port in cfg.port.ports() {
            match quinn::Endpoint::server(server_config(cfg)?, SocketAddr::new(ip, port)) {
                Ok(e) => return Ok(e),
                Err(e) => last = Some(e),
            }
        }
    }
    Err(last.map(anyhow::Error::from).unwrap_or_else(|| anyhow::anyhow!("no port to bind")).context("cannot bind the quinn server"))
}

/// Serves quinn-clients until stdin closes (local runs) or the lifetime bound.
pub async fn server(args: &QuinnArgs) -> Result<()> {
    let cfg = args.endpoint.to_config()?;
    let endpoint = server_endpoint(&cfg)?;
    let mut stop = stdin_closed(args.exit_on_stdin_eof);
    out(json!({"ready": {"port": endpoint.local_addr()?.port(), "name": cfg.identity.name()}}));
    let life = tokio::time::sleep(LIFETIME);
    tokio::pin!(life);
    loop {
        tokio::select! {
            inc = endpoint.accept() => {
                let Some(inc) = inc else { break };
                let t = args.common.timeout;
                tokio::spawn(async move {
                    if let Err(e) = serve(inc, t).await {
                        tracing::warn!("quinn-server: {e:#}");
                    }
                });
            }
            _ = &mut stop => break,
            _ = &mut life => break,
        }
    }
    endpoint.close(0u32.into(), b"bye");
    let _ = timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    Ok(())
}

/// One connection: streams one after the other, each answered with a report.
async fn serve(inc: quinn::Incoming, t: Duration) -> Result<()> {
    let conn = timeout(t, inc.accept()?).await.context("handshake timed out")??;
    loop {
        let report = tokio::select! {
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => echo(send, recv, t).await?,
                Err(e) => return closed(e),
            },
            uni = conn.accept_uni() => match uni {
                Ok(recv) => count(recv, t).await?,
                Err(e) => return closed(e),
            },
        };
        let mut s = timeout(t, conn.open_uni()).await.context("cannot open a report stream in time")??;
        timeout(t, s.write_all(report.to_string().as_bytes())).await.context("report not sent in time")??;
        s.finish()?;
    }
}

/// The client closing the connection is the normal end.
fn closed(e: quinn::ConnectionError) -> Result<()> {
    match e {
        quinn::ConnectionError::ApplicationClosed(_) | quinn::ConnectionError::LocallyClosed => Ok(()),
        e => Err(e.into()),
    }
}

fn server_rss() -> Value {
    rss_json("server")
}

/// Sends back whatever arrives until the client finishes its side.
async fn echo(mut send: quinn::SendStream, mut recv: quinn::RecvStream, t: Duration) -> Result<Value> {
    let mut pings = 0u64;
    while let Some(c) = timeout(t, recv.read_chunk(WRITE_BYTES, true)).await.context("no ping in time")?? {
        timeout(t, send.write_all(&c.bytes)).await.context("pong not sent in time")??;
        pings += 1;
    }
    send.finish()?;
    let mut v = json!({"chunks": pings});
    merge(&mut v, server_rss());
    Ok(v)
}

/// Counts the bytes (and, for records, the length-prefixed records) of one
/// unidirectional stream until the client finishes it.
async fn count(mut recv: quinn::RecvStream, t: Duration) -> Result<Value> {
    let mut kind = [0u8];
    timeout(t, recv.read_exact(&mut kind)).await.context("no stream header in time")??;
    let records = match kind[0] {
        KIND_BULK => false,
        KIND_RECORDS => true,
        k => bail!("unknown stream kind {k}"),
    };
    let t0 = Instant::now();
    let mut bytes = 0u64;
    let mut parser = Records::default();
    while let Some(c) = timeout(t, recv.read_chunk(usize::MAX, true)).await.context("no data in time")?? {
        bytes += c.bytes.len() as u64;
        if records {
            parser.feed(&c.bytes)?;
        }
    }
    if !parser.complete() {
        bail!("the stream ended inside a record");
    }
    let mut v = json!({"bytes": bytes, "records": parser.count, "recv_seconds": t0.elapsed().as_secs_f64()});
    merge(&mut v, server_rss());
    Ok(v)
}

/// Counts 4-byte big-endian length-prefixed records, across chunk boundaries.
#[derive(Default)]
struct Records {
    head: [u8; 4],
    have: usize,
    body_left: usize,
    count: u64,
}

impl Records {
    fn feed(&mut self, mut b: &[u8]) -> Result<()> {
        while !b.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(b.len());
                b = &b[n..];
                self.body_left -= n;
                if self.body_left == 0 {
                    self.count += 1;
                }
                continue;
            }
            let len = if self.have == 0 && b.len() >= 4 {
                let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                b = &b[4..];
                len
            } else {
                let n = (4 - self.have).min(b.len());
                self.head[self.have..self.have + n].copy_from_slice(&b[..n]);
                self.have += n;
                b = &b[n..];
                if self.have < 4 {
                    break;
                }
                self.have = 0;
                u32::from_be_bytes(self.head)
            } as usize;
            if len > MAX_RECORD {
                bail!("record length {len} > {MAX_RECORD}: not a record stream");
            }
            if len == 0 {
                self.count += 1;
            }
            self.body_left = len;
        }
        Ok(())
    }

    fn complete(&self) -> bool {
        self.have == 0 && self.body_left == 0
    }
}

/// Connects to --connect and runs the --measure measurements, one result line each.
pub async fn client(args: &QuinnArgs) -> Result<()> {
    let cfg = args.endpoint.to_config()?;
    let to = args.endpoint.connect.first().context("quinn-client needs --connect HOST:PORT")?;
    let addr = tokio::net::lookup_host(to.as_str()).await?.next().with_context(|| format!("{to}: no address"))?;
    let local_ip = cfg.bind.unwrap_or(if addr.is_ipv6() { Ipv6Addr::UNSPECIFIED.into() } else { Ipv4Addr::UNSPECIFIED.into() });
    let endpoint = quinn::Endpoint::client(SocketAddr::new(local_ip, 0)).context("cannot bind the quinn client")?;
    let connecting = endpoint.connect_with(client_config(&cfg)?, addr, "partybus")?;
    let t = args.common.timeout;
    let conn = timeout(t, connecting).await.with_context(|| format!("no connection to {addr} within {t:?}"))??;
    for m in args.measures() {
        let v = match m {
            Measure::Latency => ping_pong(&conn, args).await?,
            Measure::Bulk => one_way(&conn, args, false).await?,
            Measure::Records => one_way(&conn, args, true).await?,
            Measure::Mesh => {
                bail!("--measure mesh runs its endpoints in one process: run `partybus-perf quinn --measure mesh` without --role")
            }
        };
        out(json!({"result": v}));
    }
    conn.close(0u32.into(), b"done");
    let _ = timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    Ok(())
}

/// The server's report after a measurement (its own unidirectional stream).
async fn report(conn: &quinn::Connection, t: Duration) -> Result<Value> {
    let mut r = timeout(t, conn.accept_uni()).await.with_context(|| format!("no report from the quinn-server within {t:?}"))??;
    let b = timeout(t, r.read_to_end(REPORT_MAX)).await.context("report not read in time")??;
    serde_json::from_slice(&b).context("the quinn-server's report is not JSON")
}

fn server_fields(v: &mut Value, rep: &Value) {
    for k in ["server_rss_kib", "server_rss_now_kib"] {
        v[k] = rep[k].clone();
    }
}

/// Warm-up, then --round-trips pings of 16 bytes, one at a time, on one bidirectional stream.
async fn ping_pong(conn: &quinn::Connection, args: &QuinnArgs) -> Result<Value> {
    let t = args.common.timeout;
    let (mut send, mut recv) = timeout(t, conn.open_bi()).await.context("cannot open a stream in time")??;
    let mut ping = [0x55u8; PING_BYTES];
    let mut pong = [0u8; PING_BYTES];
    let bound = Instant::now() + t.max(Duration::from_secs(60));
    let mut samples = Vec::with_capacity(args.round_trips);
    for i in 0..(args.warmup + args.round_trips) {
        if Instant::now() > bound {
            break;
        }
        ping[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let start = Instant::now();
        timeout(t, async {
            send.write_all(&ping).await?;
            recv.read_exact(&mut pong).await?;
            anyhow::Ok(())
        })
        .await
        .with_context(|| format!("no pong within {t:?}"))??;
        let us = start.elapsed().as_secs_f64() * 1e6;
        if pong != ping {
            bail!("pong {i} is not the ping");
        }
        if i >= args.warmup {
            samples.push(us);
        }
    }
    send.finish()?;
    let rep = report(conn, t).await?;
    samples.sort_by(f64::total_cmp);
    let mut v = json!({
        "scenario": "quinn-latency",
        "payload_bytes": PING_BYTES,
        "events": samples.len(),
        "lost": 0,
        "p50_us": r1(percentile(&samples, 50.0)),
        "p90_us": r1(percentile(&samples, 90.0)),
        "p99_us": r1(percentile(&samples, 99.0)),
        "max_us": r1(samples.last().copied().unwrap_or(0.0)),
        "min_us": r1(samples.first().copied().unwrap_or(0.0)),
    });
    merge(&mut v, rss_json("client"));
    server_fields(&mut v, &rep);
    Ok(v)
}

/// 64 KiB writes (bulk) or 16-byte records batched into ~64 KiB writes on one
/// unidirectional stream for --duration or --count (writes, or records);
/// counted by the server once the stream is finished.
async fn one_way(conn: &quinn::Connection, args: &QuinnArgs, records: bool) -> Result<Value> {
    let t = args.common.timeout;
    let (count, duration) = args.bounds();
    let mut send = timeout(t, conn.open_uni()).await.context("cannot open a stream in time")??;
    let data = vec![0x55u8; WRITE_BYTES];
    let mut batch = Vec::with_capacity(WRITE_BYTES);
    let t0 = Instant::now();
    timeout(t, send.write_all(&[if records { KIND_RECORDS } else { KIND_BULK }])).await.context("write stalled")??;
    let mut sent = 0u64;
    while sent < count && t0.elapsed() < duration {
        if records {
            let n = (RECORDS_PER_WRITE as u64).min(count - sent);
            batch.clear();
            for _ in 0..n {
                batch.extend_from_slice(&(RECORD_BYTES as u32).to_be_bytes());
                batch.extend_from_slice(&data[..RECORD_BYTES]);
            }
            timeout(t, send.write_all(&batch)).await.context("write stalled")??;
            sent += n;
        } else {
            timeout(t, send.write_all(&data)).await.context("write stalled")??;
            sent += 1;
        }
    }
    let emit_secs = t0.elapsed().as_secs_f64();
    send.finish()?;
    let rep = report(conn, t).await?;
    let secs = t0.elapsed().as_secs_f64();
    let bytes = rep["bytes"].as_u64().context("report without bytes")?;
    let (size, received) = if records {
        (RECORD_BYTES, rep["records"].as_u64().context("report without records")?)
    } else {
        (WRITE_BYTES, bytes / WRITE_BYTES as u64)
    };
    let mut v = json!({
        "scenario": if records { "quinn-records" } else { "quinn-bulk" },
        "payload_bytes": size,
        "emitted": sent,
        "events": received,
        "seconds": (secs * 1e4).round() / 1e4,
        "emit_seconds": (emit_secs * 1e4).round() / 1e4,
        "recv_seconds": rep["recv_seconds"].as_f64().map(|s| (s * 1e4).round() / 1e4),
        "events_per_s": (received as f64 / secs).round(),
        "mb_per_s": r1(received as f64 * size as f64 / secs / 1e6),
        "lost": sent.saturating_sub(received),
    });
    merge(&mut v, rss_json("client"));
    server_fields(&mut v, &rep);
    Ok(v)
}

/// `quinn --measure mesh`: the floor under `partybus-perf mesh`.
/// `--nodes` plain quinn endpoints in this process (default 100), each with
/// its own hood certificate and partybus's on-host transport settings, on the
/// scheduler that scenario uses by default (tokio's multi-thread, one worker
/// per core). Each endpoint dials every endpoint after it, at most
/// [`MESH_DIALS`] at a time as a node does, so every pair gets one mutual-TLS
/// connection. Measured: from the first dial until both ends of every
/// connection are up. No streams, no gossip: what the mesh would cost if
/// partybus added nothing to the handshakes.
/// `hood` keeps the certificates across runs (made once, on the first).
fn mesh(args: &QuinnArgs, hood: &TempHood) -> Result<Value> {
    fixed_mmap_threshold();
    let n = args.nodes.unwrap_or(100).max(2);
    let threads = threads(args.threads);
    let mut cfgs = Vec::with_capacity(n);
    for i in 0..n {
        let f = hood.peer(&format!("node{i}"))?;
        cfgs.push(partybus::Config::from_files(&hood.files().cert, &f.cert, &f.key)?);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?;
    rt.block_on(async {
        let mut endpoints = Vec::with_capacity(n);
        for cfg in &cfgs {
            // partybus's transport settings for peers on this host (the
            // loopback MTU from the first packet): quinn's default would add
            // MTU probes to every connection, which a node does not send.
            let transport = tls::transport(cfg, true);
            let mut sc = server_config(cfg)?;
            sc.transport_config(transport.clone()); // replaces quinn's default set there
            let mut cc = client_config(cfg)?;
            cc.transport_config(transport);
            let sock = std::net::UdpSocket::bind(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0))
                .context("cannot bind a UDP socket on 127.0.0.1")?;
            let mut e = quinn::Endpoint::new(tls::endpoint_config(), Some(sc), sock, Arc::new(quinn::TokioRuntime))?;
            e.set_default_client_config(cc);
            endpoints.push(e);
        }
        let addrs: Vec<SocketAddr> = endpoints.iter().map(|e| e.local_addr()).collect::<std::io::Result<_>>()?;
        let t = args.common.timeout.max(Duration::from_secs(60));
        let cpu0 = self_cpu_s();
        let t0 = Instant::now();
        // Accepting ends: every endpoint but the first accepts the
        // connections of the endpoints before it.
        let mut accepts = Vec::new();
        for (i, e) in endpoints.iter().enumerate().skip(1) {
            let e = e.clone();
            accepts.push(tokio::spawn(async move {
                let mut conns = Vec::with_capacity(i);
                let mut pending = tokio::task::JoinSet::new();
                while conns.len() < i {
                    tokio::select! {
                        inc = e.accept(), if conns.len() + pending.len() < i => {
                            let inc = inc.context("endpoint closed")?;
                            pending.spawn(async move { inc.await });
                        }
                        Some(r) = pending.join_next() => conns.push(r??),
                    }
                }
                anyhow::Ok(conns)
            }));
        }
        // Dialling ends: endpoint i dials i+1.., MESH_DIALS at a time.
        let mut dials = Vec::new();
        for (i, e) in endpoints.iter().enumerate() {
            let e = e.clone();
            let targets: Vec<SocketAddr> = addrs[i + 1..].to_vec();
            dials.push(tokio::spawn(async move {
                let mut conns = Vec::with_capacity(targets.len());
                let mut running = tokio::task::JoinSet::new();
                let mut next = targets.into_iter();
                loop {
                    while running.len() < MESH_DIALS {
                        let Some(to) = next.next() else { break };
                        let connecting = e.connect(to, "partybus")?;
                        running.spawn(connecting);
                    }
                    match running.join_next().await {
                        Some(r) => conns.push(r??),
                        None => break,
                    }
                }
                anyhow::Ok(conns)
            }));
        }
        let mut conns = Vec::new();
        for h in dials.into_iter().chain(accepts) {
            conns.extend(
                timeout(t.saturating_sub(t0.elapsed()), h)
                    .await
                    .with_context(|| format!("quinn mesh of {n} not full within {t:?}"))???,
            );
        }
        let secs = t0.elapsed().as_secs_f64();
        let cpu = self_cpu_s() - cpu0;
        let (hwm, _) = self_rss();
        let pairs = n * (n - 1) / 2;
        let (sent, lost) = conns.iter().fold((0, 0), |(s, l), c| {
            let p = c.stats().path;
            (s + p.sent_packets, l + p.lost_packets)
        });
        for c in &conns {
            c.close(0u32.into(), b"done");
        }
        for e in &endpoints {
            let _ = timeout(Duration::from_secs(1), e.wait_idle()).await;
        }
        Ok(json!({
            "scenario": "quinn-mesh",
            "nodes": n,
            "threads": threads,
            "pairs": pairs,
            "connection_ends": conns.len(),
            "seconds": (secs * 1e4).round() / 1e4,
            "cpu_seconds": (cpu * 100.0).round() / 100.0,
            "cpu_ms_per_pair": (cpu * 1e3 / pairs as f64 * 100.0).round() / 100.0,
            "packets_sent": sent,
            "packets_lost": lost,
            "process_rss_kib": hwm,
        }))
    })
}

/// Dials in flight per endpoint in [`mesh`]: partybus's default `dial_concurrency`.
const MESH_DIALS: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0..n {
            let len = i % 40;
            v.extend_from_slice(&(len as u32).to_be_bytes());
            v.extend(std::iter::repeat_n(i as u8, len));
        }
        v
    }

    #[test]
    fn records_are_counted_across_any_chunk_boundaries() {
        let s = stream(100);
        for chunk in [1, 2, 3, 4, 5, 7, 19, 20, 21, 64, s.len()] {
            let mut r = Records::default();
            for c in s.chunks(chunk) {
                r.feed(c).unwrap();
            }
            assert_eq!(r.count, 100, "chunks of {chunk}");
            assert!(r.complete());
        }
        let mut r = Records::default();
        r.feed(&s[..s.len() - 1]).unwrap();
        assert_eq!(r.count, 99);
        assert!(!r.complete());
        assert!(Records::default().feed(&u32::MAX.to_be_bytes()).is_err());
    }
}
