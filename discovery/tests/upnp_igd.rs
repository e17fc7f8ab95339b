//! UPnP against a real IGD (miniupnpd in a network-namespace NAT lab).
//! Ignored by default: run it inside the LAN host's namespace, e.g.
//!
//! ```sh
//! ip netns exec LAN_NS env PB_UPNP_BIND_IP=198.18.1.2 \
//!     PB_UPNP_GATEWAY_URL=http://198.18.1.1:5000/rootDesc.xml \
//!     PB_UPNP_EXPECT_IP=203.0.113.2 PB_UPNP_EXT_FILE=/tmp/ext \
//!     PB_UPNP_EXPECT_PACKET=1 \
//!     cargo test -p partybus-discovery --test upnp_igd -- --ignored --nocapture
//! ```
//!
//! Without `PB_UPNP_GATEWAY_URL` the gateway is found with SSDP. With
//! `PB_UPNP_EXT_FILE` the external address is written there once mapped;
//! with `PB_UPNP_EXPECT_PACKET=1` the test then waits (10 s) for one UDP
//! datagram sent from the "internet" to that address, proving the forward.
//! `PB_UPNP_LEASE_SECS` (default 60) and `PB_UPNP_HOLD_SECS` (keep the mapping
//! that long, printing events: restart the router meanwhile to see the
//! mapping withdrawn and made again).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use partybus_discovery::upnp::{UpnpDiscovery, UpnpOptions};
use partybus_discovery::{Discovery, DiscoveryContext, DiscoveryEvent, DiscoverySink, StopSignal};
use tokio::sync::watch;
use tokio::time::timeout;

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

#[tokio::test]
#[ignore = "needs a miniupnpd lab (run inside the LAN namespace)"]
async fn maps_through_miniupnpd() {
    let bind_ip: Option<IpAddr> = env("PB_UPNP_BIND_IP").map(|s| s.parse().unwrap());
    let sock = tokio::net::UdpSocket::bind(SocketAddr::new(bind_ip.unwrap_or([0, 0, 0, 0].into()), 0)).await.unwrap();
    let port = sock.local_addr().unwrap().port();
    let ctx = DiscoveryContext {
        hood_fingerprint: "00".repeat(32),
        node_id: "11".repeat(16),
        cert_name: "lab".into(),
        port,
        reachable: watch::channel(vec![]).1,
        allow_non_global: true, // lab WAN addresses are documentation ranges
    };
    let opts = UpnpOptions {
        gateway_url: env("PB_UPNP_GATEWAY_URL"),
        bind_ip,
        lease: Duration::from_secs(env("PB_UPNP_LEASE_SECS").map(|s| s.parse().unwrap()).unwrap_or(60)),
        ..Default::default()
    };
    let (sink, mut rx) = DiscoverySink::channel(16);
    let (handle, stop) = StopSignal::new();
    let task = tokio::spawn(Box::new(UpnpDiscovery::new(opts)).start(ctx, sink, stop));
    let ev = timeout(Duration::from_secs(15), rx.recv()).await.expect("mapping in time").unwrap();
    let DiscoveryEvent::External { addr, source } = ev else { panic!("unexpected {ev:?}") };
    assert_eq!(source, "upnp");
    println!("mapped: {addr} -> local port {port}");
    if let Some(ip) = env("PB_UPNP_EXPECT_IP") {
        assert_eq!(addr.ip(), ip.parse::<IpAddr>().unwrap());
    }
    if let Some(f) = env("PB_UPNP_EXT_FILE") {
        std::fs::write(&f, addr.to_string()).unwrap();
    }
    if env("PB_UPNP_EXPECT_PACKET").is_some() {
        let mut buf = [0u8; 1500];
        let (n, from) = timeout(Duration::from_secs(10), sock.recv_from(&mut buf)).await.expect("a datagram through the mapping").unwrap();
        println!("received {n} bytes from {from} through the mapping");
    }
    // With PB_UPNP_HOLD_SECS: keep the mapping (and print what happens, e.g.
    // while the router restarts) for that long.
    let mut current = Some(addr);
    if let Some(hold) = env("PB_UPNP_HOLD_SECS") {
        let end = tokio::time::Instant::now() + Duration::from_secs(hold.parse().unwrap());
        while let Ok(Some(ev)) = tokio::time::timeout_at(end, rx.recv()).await {
            println!("event: {ev:?}");
            match ev {
                DiscoveryEvent::External { addr, .. } => current = Some(addr),
                DiscoveryEvent::ExternalLost { addr, .. } if current == Some(addr) => current = None,
                _ => {}
            }
        }
    }
    handle.stop();
    timeout(Duration::from_secs(5), task).await.expect("stops in time").unwrap();
    if let Some(addr) = current {
        let ev = rx.recv().await.unwrap();
        assert_eq!(ev, DiscoveryEvent::ExternalLost { addr, source: "upnp".into() });
    }
}
