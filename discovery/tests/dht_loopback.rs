//! DHT rendezvous on loopback: one plain DHT node, three services of hood A,
//! one of hood B. Everything binds to 127.0.0.1; nothing leaves the machine.
#![cfg(feature = "dht")]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use partybus_discovery::dht::{DhtDiscovery, DhtError, DhtNode, DhtNodeOptions, DhtOptions};
use partybus_discovery::{Discovery, DiscoveryContext, DiscoveryEvent, DiscoverySink, StopHandle, StopSignal};
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout, Instant};

const TTL: Duration = Duration::from_secs(3);

struct Svc {
    quic: SocketAddr,
    rx: mpsc::Receiver<DiscoveryEvent>,
    stop: StopHandle,
    task: tokio::task::JoinHandle<()>,
    _reach: watch::Sender<Vec<SocketAddr>>,
}

fn start(fp: &str, quic_port: u16, bootstrap: SocketAddr, serve: bool) -> Svc {
    let quic: SocketAddr = SocketAddr::from(([127, 0, 0, 1], quic_port));
    let (reach_tx, reach_rx) = watch::channel(vec![quic]);
    let ctx = DiscoveryContext {
        hood_fingerprint: fp.into(),
        node_id: format!("{quic_port:032x}"),
        cert_name: format!("n{quic_port}"),
        port: quic_port,
        reachable: reach_rx,
        relay_routes: watch::channel(vec![]).1,
        allow_non_global: true,
    };
    let opts = DhtOptions {
        bootstrap: vec![bootstrap.to_string()],
        listen_port: Some(0),
        listen_ip: Some([127, 0, 0, 1].into()),
        serve,
        record_ttl: TTL,
        reannounce: Duration::from_millis(1000),
        lookup_interval: Duration::from_millis(300),
    };
    let (sink, rx) = DiscoverySink::channel(1024);
    let (stop, sig): (StopHandle, StopSignal) = StopSignal::new();
    let svc: Box<dyn Discovery> = Box::new(DhtDiscovery::new(opts));
    assert_eq!(svc.name(), "dht");
    let task = tokio::spawn(svc.start(ctx, sink, sig));
    Svc { quic, rx, stop, task, _reach: reach_tx }
}

/// Drain events that arrived until `until`, returning candidate addresses.
async fn candidates_until(rx: &mut mpsc::Receiver<DiscoveryEvent>, until: Instant) -> HashSet<SocketAddr> {
    let mut seen = HashSet::new();
    while let Ok(Some(ev)) = tokio::time::timeout_at(until, rx.recv()).await {
        match ev {
            DiscoveryEvent::Candidate { addr, source } => {
                assert_eq!(source, "dht");
                seen.insert(addr);
            }
            // The bootstrap nodes, as relays.
            DiscoveryEvent::Relay { source, .. } => assert_eq!(source, "dht"),
            other => panic!("unexpected {other:?}"),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendezvous_on_loopback() {
    let node = DhtNode::bind(DhtNodeOptions { port: 0, bootstrap: vec![], allow_non_global: true, listen_ip: Some([127, 0, 0, 1].into()) })
        .await
        .expect("dht node");
    let boot = node.local_addr().expect("listen addr");
    assert!(boot.ip().is_loopback());
    let (node_stop, node_sig) = StopSignal::new();
    let node_task = tokio::spawn(node.run(node_sig));

    let hood_a = "aa".repeat(32);
    let hood_b = "bb".repeat(32);
    // QUIC ports are only advertised, never bound: nothing dials them here.
    let mut a: Vec<Svc> = (0..3).map(|i| start(&hood_a, 40001 + i, boot, i == 2)).collect();
    let mut b = start(&hood_b, 40100, boot, false);

    // Each hood-A service finds the other two.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut found: HashMap<usize, HashSet<SocketAddr>> = HashMap::new();
    let mut b_seen = HashSet::new();
    loop {
        for (i, s) in a.iter_mut().enumerate() {
            let got = candidates_until(&mut s.rx, Instant::now() + Duration::from_millis(100)).await;
            found.entry(i).or_default().extend(got);
        }
        b_seen.extend(candidates_until(&mut b.rx, Instant::now() + Duration::from_millis(50)).await);
        let done = (0..3).all(|i| {
            let want: HashSet<SocketAddr> = (0..3).filter(|j| *j != i).map(|j| a[j].quic).collect();
            found[&i].is_superset(&want)
        });
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "rendezvous incomplete: {found:?}");
    }
    for i in 0..3 {
        assert!(!found[&i].contains(&a[i].quic), "service {i} reported itself");
        assert!(!found[&i].contains(&b.quic), "hood A service {i} got hood B's address");
    }
    // Hood B hears nothing of hood A (a few more lookup rounds to be sure).
    b_seen.extend(candidates_until(&mut b.rx, Instant::now() + Duration::from_secs(1)).await);
    let a_addrs: HashSet<SocketAddr> = a.iter().map(|s| s.quic).collect();
    assert!(b_seen.is_disjoint(&a_addrs), "hood B got hood A addresses: {b_seen:?}");

    // Service 0 leaves: within the TTL (plus a lookup round) it is no longer returned.
    let gone = a.remove(0);
    gone.stop.stop();
    timeout(Duration::from_secs(5), gone.task).await.expect("service stops in time").unwrap();
    let left_at = Instant::now();
    // Let records expire (TTL from the last announcement, which was at most
    // `reannounce` ago), then watch two more seconds of lookups.
    for s in a.iter_mut() {
        let _ = candidates_until(&mut s.rx, left_at + TTL + Duration::from_millis(500)).await;
    }
    let window_end = Instant::now() + Duration::from_secs(2);
    for s in a.iter_mut() {
        let seen = candidates_until(&mut s.rx, window_end).await;
        assert!(!seen.contains(&gone.quic), "departed node still returned after TTL: {seen:?}");
    }
    // ... while the remaining two still find each other.
    let (s1, s2) = (a[0].quic, a[1].quic);
    let until = Instant::now() + Duration::from_secs(3);
    let seen1 = candidates_until(&mut a[0].rx, until).await;
    assert!(seen1.contains(&s2), "{seen1:?}");
    let until = Instant::now() + Duration::from_secs(3);
    let seen2 = candidates_until(&mut a[1].rx, until).await;
    assert!(seen2.contains(&s1), "{seen2:?}");

    for s in a.into_iter().chain(std::iter::once(b)) {
        s.stop.stop();
        timeout(Duration::from_secs(5), s.task).await.expect("service stops").unwrap();
    }
    node_stop.stop();
    timeout(Duration::from_secs(5), node_task).await.expect("node stops").unwrap().unwrap();
}

fn loopback_node(port: u16) -> DhtNodeOptions {
    DhtNodeOptions { port, bootstrap: vec![], allow_non_global: true, listen_ip: Some([127, 0, 0, 1].into()) }
}

/// The message of a taken port names the port and the way out.
fn assert_port_taken(e: &DhtError, port: u16) {
    assert!(matches!(e, DhtError::PortTaken { port: p, .. } if *p == port), "{e:?}");
    let msg = e.to_string();
    for want in [format!("port {port}"), "taken".into(), "--port".into()] {
        assert!(msg.contains(&want), "message lacks {want:?}: {msg}");
    }
}

/// A bootstrap node (`partybus dht`) whose port is taken fails, naming the
/// port, whether a plain program holds it or another DHT node (libp2p
/// listens with SO_REUSEPORT, so without a check the second node would bind
/// the same port silently and share its connections).
#[tokio::test]
async fn bootstrap_node_on_a_taken_port_fails_loudly() {
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = plain.local_addr().unwrap().port();
    let e = DhtNode::bind(loopback_node(port)).await.err().expect("bound a port another program listens on");
    assert_port_taken(&e, port);
    drop(plain);

    let first = DhtNode::bind(loopback_node(0)).await.expect("first node");
    let port = first.local_addr().unwrap().port();
    let e = DhtNode::bind(loopback_node(port)).await.err().expect("a second DHT node shares the first one's port");
    assert_port_taken(&e, port);
    // And with the port free again it binds exactly there.
    drop(first);
    let again = DhtNode::bind(loopback_node(port)).await.expect("port free again");
    assert_eq!(again.local_addr().unwrap().port(), port);
}

fn ctx_with_port(port: u16) -> DiscoveryContext {
    DiscoveryContext {
        hood_fingerprint: "cc".repeat(32),
        node_id: "11".repeat(16),
        cert_name: "n".into(),
        port,
        reachable: watch::channel(vec![]).1,
        relay_routes: watch::channel(vec![]).1,
        allow_non_global: true,
    }
}

/// A node serving the DHT (`listen_port: None`: the node's own port number on
/// TCP) is a bootstrap node too: a taken port is an error, not a random
/// port. A node only using the DHT may move to a random port.
#[tokio::test]
async fn serving_node_on_a_taken_default_port_fails_loudly() {
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = plain.local_addr().unwrap().port();
    let opts = |serve| DhtOptions { listen_ip: Some([127, 0, 0, 1].into()), serve, ..Default::default() };

    let (sink, _rx) = DiscoverySink::channel(16);
    let (_stop, sig) = StopSignal::new();
    let run = DhtDiscovery::new(opts(true)).run(ctx_with_port(port), sink, sig);
    let e = timeout(Duration::from_secs(10), run).await.expect("fails at once").expect_err("served the DHT somewhere else");
    assert_port_taken(&e, port);

    // A client-only service keeps running on another port.
    let (sink, _rx) = DiscoverySink::channel(16);
    let (stop, sig) = StopSignal::new();
    let task = tokio::spawn(DhtDiscovery::new(opts(false)).run(ctx_with_port(port), sink, sig));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!task.is_finished(), "client-only service stopped: {:?}", task.await);
    stop.stop();
    timeout(Duration::from_secs(5), task).await.expect("stops").unwrap().expect("client-only service ran");
}
