//! Runs partybus's port-mapping service (PCP, NAT-PMP, UPnP IGD; `--mode`)
//! alone against a real gateway, for lab tests of port mapping without a node. Binds a UDP socket on `--bind-ip` (port 0),
//! maps it, and prints JSON lines on stdout: `{"ready":{"port":N}}`, then
//! `{"external":"ip:port"}` / `{"external_lost":"ip:port"}` for the service's
//! reports and `{"received":{"bytes":N,"from":"ip:port"}}` for each datagram
//! arriving on the socket. At EOF on stdin (or after `--secs`) it stops the
//! service (which deletes the mapping), prints the reports that follow, then
//! `{"stopped":{"ms":N}}`. With `--manual` the service starts at a stdin
//! line `map` and stops at `unmap` (then `{"unmapped":true}`), while the
//! socket goes on printing what it receives.
//!
//! Usage: portmap-probe --bind-ip IP [--mode auto|upnp|natpmp|pcp] [--gateway IP]
//!        [--gateway-url URL] [--lease-secs S] [--secs S] [--manual]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use partybus_discovery::portmap::{Mode, PortMapDiscovery, PortMapOptions, Protocol};
use partybus_discovery::{Discovery, DiscoveryContext, DiscoveryEvent, DiscoverySink, StopHandle, StopSignal};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

fn print_event(ev: DiscoveryEvent) {
    match ev {
        DiscoveryEvent::External { addr, source } => println!("{}", json!({"external": addr.to_string(), "source": source})),
        DiscoveryEvent::ExternalLost { addr, source } => println!("{}", json!({"external_lost": addr.to_string(), "source": source})),
        DiscoveryEvent::Candidate { addr, source } => println!("{}", json!({"candidate": addr.to_string(), "source": source})),
        DiscoveryEvent::Relay { addr, source } => println!("{}", json!({"relay": addr.to_string(), "source": source})),
        DiscoveryEvent::Relayed { route, source } => println!("{}", json!({"relayed": route.to_string(), "source": source})),
    }
}

/// Stop the service (it deletes the mapping) and print what it reports meanwhile.
async fn stop_service((handle, task, mut rx): (StopHandle, tokio::task::JoinHandle<()>, tokio::sync::mpsc::Receiver<DiscoveryEvent>)) {
    handle.stop();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    while let Ok(ev) = rx.try_recv() {
        print_event(ev);
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    let mut bind_ip: Option<IpAddr> = None;
    let mut gateway_url = None;
    let mut lease = 60u64;
    let mut secs = 120u64;
    let mut mode = Mode::Only(Protocol::Upnp);
    let mut gateway = None;
    let mut manual = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| anyhow::anyhow!("{a} needs a value"));
        match a.as_str() {
            "--bind-ip" => bind_ip = Some(val()?.parse()?),
            "--gateway-url" => gateway_url = Some(val()?),
            "--mode" => mode = val()?.parse().map_err(|e: String| anyhow::anyhow!(e))?,
            "--gateway" => gateway = Some(val()?.parse()?),
            "--manual" => manual = true,
            "--lease-secs" => lease = val()?.parse()?,
            "--secs" => secs = val()?.parse()?,
            _ => anyhow::bail!("unknown argument {a}"),
        }
    }
    let bind_ip = bind_ip.ok_or_else(|| anyhow::anyhow!("--bind-ip is required"))?;

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let sock = tokio::net::UdpSocket::bind(SocketAddr::new(bind_ip, 0)).await?;
        let port = sock.local_addr()?.port();
        let ctx = DiscoveryContext {
            hood_fingerprint: "00".repeat(32),
            node_id: "11".repeat(16),
            cert_name: "portmap-probe".into(),
            port,
            reachable: tokio::sync::watch::channel(vec![]).1,
            relay_routes: tokio::sync::watch::channel(vec![]).1,
            allow_non_global: true, // lab WAN addresses are documentation ranges
        };
        let opts = PortMapOptions {
            mode,
            gateway,
            upnp_url: gateway_url,
            bind_ip: Some(bind_ip),
            lease: Duration::from_secs(lease),
            ..Default::default()
        };
        let service = PortMapDiscovery::new(opts);
        let start = |ctx: DiscoveryContext| {
            let (sink, rx) = DiscoverySink::channel(64);
            let (handle, stop) = StopSignal::new();
            let task = tokio::spawn(Box::new(service.clone()).start(ctx, sink, stop));
            (handle, task, rx)
        };
        let mut running = (!manual).then(|| start(ctx.clone()));
        println!("{}", json!({"ready": {"port": port}}));
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let deadline = tokio::time::sleep(Duration::from_secs(secs));
        tokio::pin!(deadline);
        let mut buf = vec![0u8; 2048];
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                line = stdin.next_line() => match line {
                    Ok(Some(l)) if manual && l.trim() == "map" && running.is_none() => running = Some(start(ctx.clone())),
                    Ok(Some(l)) if manual && l.trim() == "unmap" => {
                        if let Some(r) = running.take() {
                            stop_service(r).await;
                            println!("{}", json!({"unmapped": true}));
                        }
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                },
                r = sock.recv_from(&mut buf) => match r {
                    Ok((n, from)) => println!("{}", json!({"received": {"bytes": n, "from": from.to_string()}})),
                    Err(e) => eprintln!("portmap-probe: recv: {e}"),
                },
                ev = async { running.as_mut().unwrap().2.recv().await }, if running.is_some() => match ev {
                    Some(ev) => print_event(ev),
                    None => break,
                },
            }
        }
        let t = Instant::now();
        if let Some(r) = running.take() {
            stop_service(r).await;
        }
        println!("{}", json!({"stopped": {"ms": t.elapsed().as_millis() as u64}}));
        anyhow::Ok(())
    })
}
