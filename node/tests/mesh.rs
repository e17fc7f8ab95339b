//! Issue 2: the mesh over real QUIC on loopback: neighbours, certificate
//! refusals, full mesh through one introducer, leave, crash and restart.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use partybus::{Bus, Direction, NeighbourEvent, NodeId, PortSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_see_each_other() {
    let a = node(0, None, |_| {}).await;
    let mut a_events = a.neighbour_events();
    let b = node(1, Some(a.port()), |_| {}).await;

    let found = next_neighbour_event(&mut a_events, GUARD).await.expect("a sees b");
    let NeighbourEvent::Found(info) = found else { panic!("expected Found, got {found:?}") };
    assert_eq!(info.id, b.id());
    assert_eq!(info.name, "n1");
    assert_eq!(info.direction, Direction::In);
    assert_eq!(info.addr, SocketAddr::from((LOCALHOST, b.port())));

    wait_neighbours(&b, 1).await;
    let nb = b.neighbours();
    assert_eq!(nb.len(), 1);
    assert_eq!(nb[0].id, a.id());
    assert_eq!(nb[0].name, "n0");
    assert_eq!(nb[0].direction, Direction::Out);
    assert_eq!(nb[0].addr, SocketAddr::from((LOCALHOST, a.port())));
    assert_eq!(nb[0].dropped, 0);
    assert_eq!(a.neighbours().len(), 1);
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert_ne!(a.id(), b.id());

    b.leave().await;
    a.leave().await;
}

/// Node `a` dials a rogue server presenting `cert`, and a rogue client
/// presenting `cert` dials `a`; the rogues trust anything, so the refusal
/// must come from the node. Neither ends with a neighbour.
async fn refused_both_ways(what: &str, cert: &str, key: &str, why: &str) {
    let a = node_named(&format!("guard-{what}"), None, |_| {}).await;
    let mut a_events = a.neighbour_events();

    // a dials the rogue.
    let server = server_endpoint(rogue_server_config(cert, key));
    a.connect(server.local_addr().unwrap());
    let incoming = tokio::time::timeout(GUARD, server.accept()).await.expect("a dials").expect("incoming");
    match tokio::time::timeout(GUARD, incoming).await.expect("handshake ends") {
        Err(e) => {
            eprintln!("{what}: a (client) refused the rogue server: {e}");
            assert!(e.to_string().contains(why), "{what}: {e}");
        }
        Ok(conn) => {
            // Should not happen; still try to become a neighbour.
            let _s = send_hello(&conn, wire_version(), "rogue").await;
            let e = closed_within(&conn, Duration::from_secs(5)).await;
            panic!("{what}: a accepted the rogue server's certificate (then {e:?})");
        }
    }

    // The rogue dials a.
    let client = client_endpoint(rogue_client_config(cert, key));
    match client.connect(a.local_addr_v4(), "partybus").unwrap().await {
        Err(e) => {
            eprintln!("{what}: a (server) refused the rogue client: {e}");
            assert!(e.to_string().contains(why), "{what}: {e}");
        }
        Ok(conn) => {
            // TLS 1.3: the client may finish before the server checked its
            // certificate; the server must then close the connection.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                if let Ok(mut s) = conn.open_uni().await {
                    let _ = s.write_all(&hello_bytes(conn.remote_address(), wire_version(), "rogue")).await;
                }
            })
            .await;
            let e = closed_within(&conn, GUARD).await.expect("a must close the rogue client's connection");
            assert_eq!(app_code(&e), None, "{what}: closed by the application, not by TLS: {e}");
            eprintln!("{what}: a (server) refused the rogue client after the handshake: {e}");
            assert!(e.to_string().contains(why), "{what}: {e}");
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.neighbours().is_empty(), "{what}: {:?}", a.neighbours());
    assert!(a_events.try_recv().is_err(), "{what}: no neighbour event expected");
    a.leave().await;
    server.close(0u32.into(), b"");
    client.close(0u32.into(), b"");
}

fn wire_version() -> u16 {
    partybus::__private::wire::PROTOCOL_VERSION
}

trait V4 {
    fn local_addr_v4(&self) -> SocketAddr;
}
impl V4 for Bus {
    fn local_addr_v4(&self) -> SocketAddr {
        SocketAddr::from((LOCALHOST, self.port()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_is_refused_both_ways() {
    let (c, k) = expired_cert("old");
    refused_both_ways("expired", &c, &k, "expired").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_certificate_is_refused_both_ways() {
    let (c, k) = self_signed_cert("selfie");
    refused_both_ways("self-signed", &c, &k, "UnknownIssuer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_hood_certificate_is_refused_both_ways() {
    let other = tempfile::tempdir().unwrap();
    partybus::pki::create_hood(HOOD, other.path(), 30).unwrap(); // same name, other key
    let f = partybus::pki::create_peer(HOOD, "stranger", other.path(), 30).unwrap();
    let c = std::fs::read_to_string(&f.cert).unwrap();
    let k = std::fs::read_to_string(&f.key).unwrap();
    refused_both_ways("other-ca", &c, &k, "BadSignature").await;
}

/// Two real nodes of two hoods dial each other: both refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_two_hoods_never_connect() {
    let other = tempfile::tempdir().unwrap();
    partybus::pki::create_hood("elsewhere", other.path(), 30).unwrap();
    let f = partybus::pki::create_peer("elsewhere", "x", other.path(), 30).unwrap();
    let mut cfg = partybus::Config::from_files(&other.path().join("elsewhere.crt"), &f.cert, &f.key).unwrap();
    cfg.port = PortSpec::any();
    cfg.bind = Some(LOCALHOST.into());
    let x = Bus::join(cfg).await.unwrap();
    let a = node_named("a-of-t", Some(x.port()), |_| {}).await;
    x.connect(a.local_addr_v4());
    assert_ne!(a.fingerprint(), x.fingerprint());
    // Several dial attempts both ways; nothing may come of them.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        a.connect(x.local_addr_v4());
        x.connect(a.local_addr_v4());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(a.neighbours().is_empty(), "{:?}", a.neighbours());
    assert!(x.neighbours().is_empty(), "{:?}", x.neighbours());
    a.leave().await;
    x.leave().await;
}

const MESH: usize = 20;

/// Checks a full mesh of `buses` connection by connection:
///
/// - each node has the n-1 others as neighbours;
/// - both ends of every pair use the same connection: one end dialled it
///   (`Out`) and the other accepted it (`In`), each naming the other's
///   socket. Two live connections between a pair, each end keeping a
///   different one (the flaw of tubemail's rule), show as Out/Out or In/In;
/// - each node made each neighbour its neighbour once (`ConnStats::activated`
///   is n-1 everywhere, n*(n-1) connection ends in all): no pair was lost and
///   found again, and every further connection of a pair was counted as a
///   duplicate (retired or replacing), not as a second neighbour.
async fn check_full_mesh(buses: &[Bus]) {
    let n = buses.len();
    for b in buses {
        tokio::time::timeout(Duration::from_secs(60), b.wait_neighbours(n - 1))
            .await
            .unwrap_or_else(|_| panic!("{} has {} neighbours of {}", b.me().name, b.neighbours().len(), n - 1));
    }
    let all: HashSet<NodeId> = buses.iter().map(|b| b.id()).collect();
    assert_eq!(all.len(), n);
    let addr_of: HashMap<NodeId, SocketAddr> = buses.iter().map(|b| (b.id(), b.local_addr_v4())).collect();
    // What each end of each pair uses, as (direction, the peer's address); a
    // switch to a duplicate may still be under way at one end, so allow a
    // bounded time for both ends to agree.
    let disagreements = || {
        let view: HashMap<(NodeId, NodeId), (Direction, SocketAddr)> =
            buses.iter().flat_map(|b| b.neighbours().into_iter().map(move |nb| ((b.id(), nb.id), (nb.direction, nb.addr)))).collect();
        let mut bad = Vec::new();
        for (i, a) in buses.iter().enumerate() {
            for b in &buses[i + 1..] {
                let ab = view.get(&(a.id(), b.id())).copied();
                let ba = view.get(&(b.id(), a.id())).copied();
                let same_connection = match (ab, ba) {
                    (Some((d1, addr1)), Some((d2, addr2))) => d1 != d2 && addr1 == addr_of[&b.id()] && addr2 == addr_of[&a.id()],
                    _ => false,
                };
                if !same_connection {
                    bad.push(format!("{}->{}: {ab:?}, {}->{}: {ba:?}", a.me().name, b.me().name, b.me().name, a.me().name));
                }
            }
        }
        bad
    };
    if !wait_until(|| disagreements().is_empty(), Duration::from_secs(10)).await {
        panic!("pairs whose ends use different connections (or none): {:#?}", disagreements());
    }
    let mut activated = 0;
    let mut duplicates = 0;
    for b in buses {
        let nb = b.neighbours();
        let ids: HashSet<NodeId> = nb.iter().map(|i| i.id).collect();
        let mut expect = all.clone();
        expect.remove(&b.id());
        assert_eq!(ids, expect, "{}", b.me().name);
        assert_eq!(nb.len(), n - 1, "{}: {nb:?}", b.me().name);
        let s = b.conn_stats();
        assert_eq!(s.activated, (n - 1) as u64, "{}: each neighbour activated once: {s:?}", b.me().name);
        activated += s.activated;
        duplicates += s.duplicates;
    }
    assert_eq!(activated, (n * (n - 1)) as u64);
    eprintln!("{n} nodes: {activated} connection ends in use, {duplicates} duplicate connection ends retired or replaced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_knowing_only_node0_become_a_full_mesh() {
    let _g = heavy().await;
    let n0 = node(0, None, |_| {}).await;
    let p = n0.port();
    let mut buses = vec![n0];
    for i in 1..MESH {
        buses.push(node(i, Some(p), |_| {}).await);
    }
    check_full_mesh(&buses).await;
    futures_util::future::join_all(buses.iter().map(|b| b.leave())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_started_at_once_become_a_full_mesh() {
    let _g = heavy().await;
    let p = free_udp_port();
    let joins = (0..MESH).map(|i| async move {
        if i == 0 {
            node(0, None, |c| c.port = PortSpec::single(p)).await
        } else {
            node(i, Some(p), |_| {}).await
        }
    });
    let buses = futures_util::future::join_all(joins).await;
    assert_eq!(buses[0].port(), p);
    check_full_mesh(&buses).await;
    futures_util::future::join_all(buses.iter().map(|b| b.leave())).await;
}

async fn lost_event(rx: &mut tokio::sync::broadcast::Receiver<NeighbourEvent>, id: NodeId, timeout: Duration) -> String {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_neighbour_event(rx, left).await {
            Some(NeighbourEvent::Lost { info, reason }) if info.id == id => return reason,
            Some(_) => continue,
            None => panic!("no Lost event for {id:?} within {timeout:?}"),
        }
    }
}

async fn found_event(rx: &mut tokio::sync::broadcast::Receiver<NeighbourEvent>, name: &str, timeout: Duration) -> NodeId {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_neighbour_event(rx, left).await {
            Some(NeighbourEvent::Found(info)) if info.name == name => return info.id,
            Some(_) => continue,
            None => panic!("no Found event for {name} within {timeout:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_leaves_is_lost_at_once_and_not_redialled() {
    // The higher id of a pair that learns of the other through gossip
    // dials after gossip_dial_delay, unless connected by then: with 1 s,
    // the survivor's delayed dial is still pending when the lower id
    // leaves below, and must not go out (the goodbye forgets the leaver).
    let slow_gossip = |c: &mut partybus::Config| c.gossip_dial_delay = Duration::from_secs(1);
    let n0 = node(0, None, slow_gossip).await;
    let x = node(1, Some(n0.port()), slow_gossip).await;
    let y = node(2, Some(n0.port()), slow_gossip).await;
    for b in [&n0, &x, &y] {
        wait_neighbours(b, 2).await;
    }
    let (n1, n2) = if x.id() < y.id() { (x, y) } else { (y, x) };
    let mut e0 = n0.neighbour_events();
    let mut e2 = n2.neighbour_events();
    let (id1, port1) = (n1.id(), n1.port());
    n1.leave().await;
    drop(n1);
    // "Promptly": well before any idle timeout (20 s default) could fire.
    assert_eq!(lost_event(&mut e0, id1, Duration::from_secs(5)).await, "left");
    assert_eq!(lost_event(&mut e2, id1, Duration::from_secs(5)).await, "left");
    assert_eq!(n0.neighbours().len(), 1);
    assert_eq!(n2.neighbours().len(), 1);

    // Take over the leaver's port: with redial_base = 200 ms a re-dial
    // would show up as datagrams within 2 s.
    let mut sock = None;
    for _ in 0..50 {
        match UdpSocket::bind((LOCALHOST, port1)) {
            Ok(s) => {
                sock = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let sock = sock.expect("leave() must release the port");
    sock.set_nonblocking(true).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut buf = [0u8; 2048];
    let got = sock.recv_from(&mut buf);
    assert!(got.is_err(), "someone re-dialled the node that left: {got:?}");
    n0.leave().await;
    n2.leave().await;
}

/// A `partybus node` child process; killed (SIGKILL) on drop.
struct ChildNode {
    child: Child,
    port: u16,
    id: String,
}

impl ChildNode {
    fn start(name: &str, port: u16) -> ChildNode {
        let (cert, key) = hood().peer_files(name);
        let mut child = Command::new(env!("CARGO_BIN_EXE_partybus"))
            .args(["node", "--bind", "127.0.0.1", "--port", &port.to_string(), "--keep-alive", "500ms", "--idle-timeout", "2s"])
            .arg("--ca")
            .arg(hood().ca())
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn partybus node");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(l)) = lines.next() {
                let _ = tx.send(l);
            }
            for _ in lines {} // drain until the child exits
        });
        let line = rx.recv_timeout(GUARD).expect("ready line");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let port = v["ready"]["port"].as_u64().unwrap() as u16;
        let id = v["ready"]["id"].as_str().unwrap().to_owned();
        ChildNode { child, port, id }
    }
    fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL: no goodbye
        let _ = self.child.wait();
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_lost_within_the_idle_timeout_and_rejoins_after_restart() {
    let mut k = ChildNode::start("killme", 0);
    let tweak = |c: &mut partybus::Config| {
        c.idle_timeout = Duration::from_secs(2);
        c.keep_alive = Duration::from_millis(500);
        c.redial_base = Duration::from_millis(200);
        c.redial_max = Duration::from_millis(800);
    };
    let s0 = node(0, Some(k.port), tweak).await;
    let s1 = node(1, Some(k.port), tweak).await;
    for b in [&s0, &s1] {
        wait_neighbours(b, 2).await;
    }
    let old = s0.neighbours().into_iter().find(|n| n.name == "killme").expect("s0 sees the child");
    assert_eq!(old.id.to_hex(), k.id);
    let mut e0 = s0.neighbour_events();
    let mut e1 = s1.neighbour_events();

    k.kill9();
    // Idle timeout 2 s; the guard is generous (not a timing assertion).
    let r0 = lost_event(&mut e0, old.id, Duration::from_secs(15)).await;
    let r1 = lost_event(&mut e1, old.id, Duration::from_secs(15)).await;
    assert!(r0.contains("timed out"), "{r0}");
    assert!(r1.contains("timed out"), "{r1}");
    assert_eq!(s0.neighbours().len(), 1);

    // Restart on the same port: a new id; the survivors re-dial it.
    let k2 = ChildNode::start("killme", k.port);
    assert_eq!(k2.port, k.port);
    assert_ne!(k2.id, k.id);
    let new0 = found_event(&mut e0, "killme", GUARD).await;
    let new1 = found_event(&mut e1, "killme", GUARD).await;
    assert_eq!(new0.to_hex(), k2.id);
    assert_eq!(new1.to_hex(), k2.id);
    assert!(wait_until(|| s0.neighbours().len() == 2 && s1.neighbours().len() == 2, GUARD).await);
    drop(k2);
    s0.leave().await;
    s1.leave().await;
}

/// Discovery of one's own (`FnDiscovery`, the README's "or your own"): the
/// node starts it with its context, dials what it reports, forms the mesh
/// from it, and stops it on leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovery_function_of_ones_own_feeds_the_mesh_and_is_stopped_on_leave() {
    use partybus::discovery::{DiscoveryContext, FnDiscovery};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let a = node_named("found-by-fn", None, |_| {}).await;
    let target = a.local_addr_v4();
    let (ctx_tx, ctx_rx) = tokio::sync::oneshot::channel::<DiscoveryContext>();
    let stopped = Arc::new(AtomicBool::new(false));
    let stopped2 = stopped.clone();
    let mine = FnDiscovery::new("mine", move |ctx, sink, mut stop| {
        Box::pin(async move {
            let _ = ctx_tx.send(ctx);
            sink.candidate(target, "mine");
            stop.stopped().await;
            stopped2.store(true, Ordering::SeqCst);
        })
    });
    // No static address: the function is the only way b can find a.
    let b = node_named("uses-fn", None, |c| {
        c.discovery.push(Box::new(mine));
    })
    .await;
    let ctx = tokio::time::timeout(GUARD, ctx_rx).await.expect("the node starts the discovery").expect("context sent");
    assert_eq!(ctx.port, b.port());
    assert_eq!(ctx.node_id, b.id().to_hex());
    assert_eq!(ctx.cert_name, "uses-fn");
    assert_eq!(ctx.hood_fingerprint, b.fingerprint());

    wait_neighbours(&b, 1).await;
    wait_neighbours(&a, 1).await;
    let nb = b.neighbours();
    assert_eq!((nb[0].id, nb[0].name.as_str(), nb[0].direction, nb[0].addr), (a.id(), "found-by-fn", Direction::Out, target));
    assert!(!stopped.load(Ordering::SeqCst), "stopped before leave");
    b.leave().await;
    // leave() awaits the discovery futures (bounded); the function saw its stop.
    assert!(wait_until(|| stopped.load(Ordering::SeqCst), GUARD).await, "the discovery function was not stopped by leave()");
    a.leave().await;
}
