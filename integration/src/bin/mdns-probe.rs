//! Runs partybus's mDNS discovery service alone, for lab tests of mDNS
//! without a node: prints JSON lines on stdout —
//! `{"ready":{...}}`, then `{"candidate":"ip:port"}` for each report — and
//! stops (unregister + daemon shutdown) at EOF on stdin or after `--secs`,
//! printing `{"stopped":{"ms":N}}`.
//!
//! Usage: mdns-probe --fingerprint HEX --id HEX --name CN --port N [--secs S] [--loopback]

use std::time::{Duration, Instant};

use partybus_discovery::{Discovery, DiscoveryContext, DiscoveryEvent, DiscoverySink, MdnsDiscovery, StopSignal};
use tokio::io::AsyncBufReadExt;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    let mut fingerprint = None;
    let mut id = None;
    let mut name = "probe".to_owned();
    let mut port = 4816u16;
    let mut secs = 60u64;
    let mut loopback = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| anyhow::anyhow!("{a} needs a value"));
        match a.as_str() {
            "--fingerprint" => fingerprint = Some(val()?),
            "--id" => id = Some(val()?),
            "--name" => name = val()?,
            "--port" => port = val()?.parse()?,
            "--secs" => secs = val()?.parse()?,
            "--loopback" => loopback = true,
            _ => anyhow::bail!("unknown argument {a}"),
        }
    }
    let fingerprint = fingerprint.ok_or_else(|| anyhow::anyhow!("--fingerprint is required"))?;
    let id = id.ok_or_else(|| anyhow::anyhow!("--id is required"))?;

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let ctx = DiscoveryContext {
            hood_fingerprint: fingerprint.clone(),
            node_id: id.clone(),
            cert_name: name.clone(),
            port,
            reachable: tokio::sync::watch::channel(vec![]).1,
            relay_routes: tokio::sync::watch::channel(vec![]).1,
            allow_non_global: true,
        };
        let (sink, mut rx) = DiscoverySink::channel(256);
        let (handle, stop) = StopSignal::new();
        let svc = Box::new(MdnsDiscovery::new().include_loopback(loopback));
        let task = tokio::spawn(svc.start(ctx, sink, stop));
        println!("{}", serde_json::json!({"ready": {"id": id, "name": name, "port": port, "fingerprint": fingerprint}}));
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let deadline = tokio::time::sleep(Duration::from_secs(secs));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                line = stdin.next_line() => match line {
                    Ok(Some(_)) => {}
                    _ => break,
                },
                ev = rx.recv() => match ev {
                    Some(DiscoveryEvent::Candidate { addr, source }) => {
                        println!("{}", serde_json::json!({"candidate": addr.to_string(), "source": source}));
                    }
                    Some(_) => {}
                    None => break,
                },
            }
        }
        let t = Instant::now();
        handle.stop();
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        println!("{}", serde_json::json!({"stopped": {"ms": t.elapsed().as_millis() as u64}}));
    });
    Ok(())
}
