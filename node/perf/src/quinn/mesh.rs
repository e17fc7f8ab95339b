//! `quinn --measure mesh`: many endpoints in this process, one connection
//! per pair.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use partybus::__private::tls;
use partybus::pki::TempHood;
use serde_json::{json, Value};
use tokio::time::timeout;

use super::config::{client_config, server_config};
use crate::alloc::fixed_mmap_threshold;
use crate::args::{threads, QuinnArgs};
use crate::util::{self_cpu_s, self_rss};

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
pub fn mesh(args: &QuinnArgs, hood: &TempHood) -> Result<Value> {
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
