//! The driver against a fake NAT-PMP/PCP server on a loopback address
//! (each test its own 127.0.0.x, the server port being fixed at 5351).

use std::net::IpAddr;
use std::time::Duration;

use tokio::time::timeout;

use super::choose::probe;
use super::*;
use crate::DiscoveryEvent;
use fake_server::FakeServer;

fn ctx(port: u16) -> DiscoveryContext {
    DiscoveryContext {
        hood_fingerprint: "00".repeat(32),
        node_id: "11".repeat(16),
        cert_name: "t".into(),
        port,
        reachable: tokio::sync::watch::channel(vec![]).1,
        relay_routes: tokio::sync::watch::channel(vec![]).1,
        allow_non_global: false,
    }
}

fn opts(mode: Mode, gw: &str, lease: Duration) -> PortMapOptions {
    PortMapOptions {
        mode,
        lease,
        gateway: Some(gw.parse().unwrap()),
        bind_ip: Some("127.0.0.1".parse().unwrap()),
        search_timeout: Duration::from_millis(300),
        // A closed loopback port: UPnP fails at once, no SSDP multicast.
        upnp_url: Some("http://127.0.0.1:1/rootDesc.xml".into()),
    }
}

async fn next(rx: &mut tokio::sync::mpsc::Receiver<DiscoveryEvent>) -> DiscoveryEvent {
    timeout(Duration::from_secs(10), rx.recv()).await.expect("an event in time").expect("service alive")
}

async fn until(what: &str, f: impl Fn() -> bool) {
    timeout(Duration::from_secs(10), async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[test]
fn lease_seconds() {
    assert_eq!(lease_secs(Duration::ZERO), 0);
    assert_eq!(lease_secs(Duration::from_millis(10)), 1);
    assert_eq!(lease_secs(Duration::from_secs(3600)), 3600);
    assert_eq!(lease_secs(Duration::from_secs(100 * 24 * 3600)), 7 * 24 * 3600);
    assert_eq!(udp_lifetime(Duration::ZERO), NO_PERMANENT_LIFETIME, "lifetime 0 would delete the mapping");
    assert_eq!(udp_lifetime(Duration::from_millis(10)), 1);
    assert_eq!("natpmp".parse::<Mode>(), Ok(Mode::Only(Protocol::NatPmp)));
    assert_eq!("auto".parse::<Mode>(), Ok(Mode::Auto));
    assert!("upnp2".parse::<Mode>().unwrap_err().contains("auto, upnp, natpmp, pcp or off"));
}

/// Each of NAT-PMP and PCP: mapped (taken port → the server's choice),
/// renewed at half-life, re-made after the server "restarts" (epoch back
/// to 0, mappings gone), deleted on stop.
#[tokio::test]
async fn natpmp_and_pcp_map_renew_survive_restart_and_unmap() {
    for (proto, gw) in [(Protocol::NatPmp, "127.0.0.21"), (Protocol::Pcp, "127.0.0.22")] {
        let fake = FakeServer::start(gw, true, true).await;
        fake.take_port(4816); // someone else has "our" port: the server picks another
        let (sink, mut rx) = DiscoverySink::channel(16);
        let (handle, stop) = StopSignal::new();
        let task =
            tokio::spawn(Box::new(PortMapDiscovery::new(opts(Mode::Only(proto), gw, Duration::from_secs(2)))).start(ctx(4816), sink, stop));
        let DiscoveryEvent::External { addr, source } = next(&mut rx).await else { panic!() };
        assert_eq!(source, proto.name());
        assert_eq!(addr.ip(), "8.8.8.8".parse::<IpAddr>().unwrap());
        assert_ne!(addr.port(), 4816, "{proto}: the taken port was not avoided");
        // Renewed at half-life (1 s), to the same port.
        until("a renewal", || fake.maps() >= 2).await;
        assert_eq!(fake.mapping(4816), Some(addr.port()), "{proto}");
        // Restart: epoch back to 0, mappings forgotten, and now the port is
        // free. The next renewal notices and maps (the machine sees the epoch).
        fake.restart();
        until("a mapping after the restart", || fake.mapping(4816).is_some()).await;
        handle.stop();
        timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
        assert_eq!(fake.mapping(4816), None, "{proto}: mapping not deleted on stop");
        let mut last = None;
        while let Ok(ev) = rx.try_recv() {
            last = Some(ev);
        }
        assert!(matches!(last, Some(DiscoveryEvent::ExternalLost { .. })), "{proto}: {last:?}");
    }
}

/// Auto: PCP preferred where both answer; a NAT-PMP-only server (answers
/// PCP with "unsupported version") gives NAT-PMP; nothing answering gives
/// up after one round with one info line (the retries are minutes apart).
#[tokio::test]
async fn auto_prefers_pcp_then_natpmp() {
    let both = FakeServer::start("127.0.0.23", true, true).await;
    let c = probe(&opts(Mode::Auto, "127.0.0.23", Duration::from_secs(60)), 4816).await.expect("an answer");
    assert_eq!(c.protocol(), Protocol::Pcp);
    drop(both);
    let pmp = FakeServer::start("127.0.0.24", false, true).await;
    let t = std::time::Instant::now();
    let c = probe(&opts(Mode::Auto, "127.0.0.24", Duration::from_secs(60)), 4816).await.expect("an answer");
    assert_eq!(c.protocol(), Protocol::NatPmp);
    assert!(t.elapsed() < Duration::from_millis(1500), "PCP's refusal should be quick: {:?}", t.elapsed());
    drop(pmp);
    let pcp_only = FakeServer::start("127.0.0.25", true, false).await;
    let c = probe(&opts(Mode::Auto, "127.0.0.25", Duration::from_secs(60)), 4816).await.expect("an answer");
    assert_eq!(c.protocol(), Protocol::Pcp);
    drop(pcp_only);
    // Nobody: no answer within the probe time (UPnP search bounded too).
    let t = std::time::Instant::now();
    assert!(probe(&opts(Mode::Auto, "127.0.0.26", Duration::from_secs(60)), 4816).await.is_none());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

mod fake_server;
