//! The two ends of a baseline measurement: the server echoes pings and
//! counts what it receives, the client measures.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::time::timeout;

use super::config::{client_config, server_config};
use crate::args::{Measure, QuinnArgs};
use crate::util::{merge, out, percentile, r1, rss_json, stdin_closed, LIFETIME};

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
