//! Shared helpers for the integration tests of the `partybus` crate: one
//! throw-away hood per test binary, nodes on loopback, bounded waits, odd
//! certificates and raw quinn endpoints ("rogues") that speak the wire
//! protocol by hand. Hoods, certificates and rogue TLS come from
//! `partybus-testkit`.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use partybus::__private::wire::{self, Frame, Hello};
use partybus::id::IdNonce;
use partybus::{Bus, Config, NeighbourEvent, NodeId, PortSpec};
pub use partybus_testkit::TestHood;

pub const HOOD: &str = "t";
pub const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Failure guard for waits (never a performance bound).
pub const GUARD: Duration = Duration::from_secs(20);

/// The hood of this test binary (created once).
pub fn hood() -> &'static TestHood {
    static H: OnceLock<TestHood> = OnceLock::new();
    H.get_or_init(|| TestHood::new(HOOD))
}

/// Serialises the heavy tests of one binary (2 cores).
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static M: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    M.lock().await
}

/// Test defaults: loopback only, any port, quick re-dials.
pub fn test_config(name: &str) -> Config {
    let h = hood();
    let mut cfg = Config::new(h.hood.clone(), h.peer(name));
    cfg.port = PortSpec::any();
    cfg.bind = Some(LOCALHOST.into());
    cfg.redial_base = Duration::from_millis(200);
    cfg.redial_max = Duration::from_secs(2);
    cfg.gossip_dial_delay = Duration::from_millis(200);
    cfg.handshake_timeout = Duration::from_secs(5);
    cfg
}

/// Node "n{i}", dialling 127.0.0.1:`connect_to` if given.
pub async fn node(i: usize, connect_to: Option<u16>, tweak: impl FnOnce(&mut Config)) -> Bus {
    node_named(&format!("n{i}"), connect_to, tweak).await
}

pub async fn node_named(name: &str, connect_to: Option<u16>, tweak: impl FnOnce(&mut Config)) -> Bus {
    let mut cfg = test_config(name);
    if let Some(p) = connect_to {
        cfg = cfg.connect([format!("127.0.0.1:{p}")]);
    }
    tweak(&mut cfg);
    Bus::join(cfg).await.expect("join")
}

/// Polls `cond` every 20 ms until true or `timeout`; returns the last value.
pub async fn wait_until(mut cond: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (guarded) until `bus` has at least `n` neighbours.
pub async fn wait_neighbours(bus: &Bus, n: usize) {
    tokio::time::timeout(GUARD, bus.wait_neighbours(n))
        .await
        .unwrap_or_else(|_| panic!("{} has {} neighbours, wanted {n}", bus.me().name, bus.neighbours().len()));
}

/// Waits (guarded) until `bus` counts `n` listeners of `event`.
pub async fn wait_listeners(bus: &Bus, event: &str, n: usize) {
    let mut rx = bus.observe_listener_count(event).unwrap();
    tokio::time::timeout(GUARD, rx.wait_for(|c| *c == n))
        .await
        .unwrap_or_else(|_| panic!("{}: listeners of {event} = {}, wanted {n}", bus.me().name, bus.listener_count(event).unwrap()))
        .unwrap();
}

/// Two connected nodes.
pub async fn pair(tweak_a: impl FnOnce(&mut Config), tweak_b: impl FnOnce(&mut Config)) -> (Bus, Bus) {
    let a = node(0, None, tweak_a).await;
    let b = node(1, Some(a.port()), tweak_b).await;
    wait_neighbours(&a, 1).await;
    wait_neighbours(&b, 1).await;
    (a, b)
}

/// Next neighbour event (guarded).
pub async fn next_neighbour_event(rx: &mut tokio::sync::broadcast::Receiver<NeighbourEvent>, timeout: Duration) -> Option<NeighbourEvent> {
    tokio::time::timeout(timeout, rx.recv()).await.ok().and_then(|r| r.ok())
}

/// A free UDP port on loopback (bound and released; racy but fine on a test box).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind((LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------
// Certificates.

/// (cert PEM, key PEM) signed by the test hood's key, valid in the past only.
pub fn expired_cert(name: &str) -> (String, String) {
    hood().expired_peer(name)
}

/// A self-signed certificate imitating a hood peer (CN = name, O = hood).
pub fn self_signed_cert(name: &str) -> (String, String) {
    partybus_testkit::self_signed(name, HOOD)
}

fn quic_transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(quinn::IdleTimeout::try_from(Duration::from_secs(10)).unwrap()));
    Arc::new(t)
}

/// A client that presents `cert` and trusts any server (the node has to refuse).
pub fn rogue_client_config(cert_pem: &str, key_pem: &str) -> quinn::ClientConfig {
    let mut tls = partybus_testkit::rogue_client(cert_pem, key_pem);
    tls.alpn_protocols = vec![wire::ALPN.to_vec()];
    let mut c = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap()));
    c.transport_config(quic_transport());
    c
}

/// A server that presents `cert` and asks nothing of clients.
pub fn rogue_server_config(cert_pem: &str, key_pem: &str) -> quinn::ServerConfig {
    let mut tls = partybus_testkit::rogue_server(cert_pem, key_pem);
    tls.alpn_protocols = vec![wire::ALPN.to_vec()];
    let mut s = quinn::ServerConfig::with_crypto(Arc::new(quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap()));
    s.transport_config(quic_transport());
    s
}

/// A client with a VALID hood certificate (peer `name`), built like the node's.
pub fn valid_client_config(name: &str) -> quinn::ClientConfig {
    let h = hood();
    let mut tls = partybus::pki::client_config(&h.peer(name), &h.hood).unwrap();
    tls.alpn_protocols = vec![wire::ALPN.to_vec()];
    let mut c = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap()));
    c.transport_config(quic_transport());
    c
}

pub fn client_endpoint(cfg: quinn::ClientConfig) -> quinn::Endpoint {
    let mut ep = quinn::Endpoint::client((LOCALHOST, 0).into()).unwrap();
    ep.set_default_client_config(cfg);
    ep
}

pub fn server_endpoint(cfg: quinn::ServerConfig) -> quinn::Endpoint {
    quinn::Endpoint::server(cfg, (LOCALHOST, 0).into()).unwrap()
}

/// A node id and the nonce that goes with it in a hello: what a peer whose
/// certificate is named `name` can prove ([`NodeId::bound`]), or, built by
/// hand, a claim it cannot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    pub id: NodeId,
    pub nonce: IdNonce,
}

impl Claim {
    /// A new id for the certificate name `name`.
    pub fn fresh(name: &str) -> Claim {
        let nonce: IdNonce = rand::random();
        Claim { id: NodeId::bound(name, &nonce), nonce }
    }

    /// A new id for `name` that orders below (or above) `other`: tries
    /// nonces until one does (each has a 1 in 2 chance).
    pub fn ordered(name: &str, other: NodeId, below: bool) -> Claim {
        loop {
            let c = Claim::fresh(name);
            if (c.id < other) == below {
                return c;
            }
        }
    }
}

/// Preamble + hello as the node expects them, from a fresh id of the peer
/// whose certificate is named `name`.
pub fn hello_bytes(observed: SocketAddr, version: u16, name: &str) -> BytesMut {
    hello_bytes_as(observed, version, Claim::fresh(name), 1)
}

/// Preamble + hello making `claim`, numbering the connection `dial`.
pub fn hello_bytes_as(observed: SocketAddr, version: u16, claim: Claim, dial: u64) -> BytesMut {
    let mut b = BytesMut::new();
    b.extend_from_slice(&wire::MAGIC);
    b.extend_from_slice(&version.to_le_bytes());
    let hello = Hello { id: claim.id, nonce: claim.nonce, port: 0, addrs: vec![], relays: vec![], observed, dial };
    wire::put_frame(&mut b, &Frame::Hello(hello));
    b
}

/// After a handshake: open our stream, send the hello (protocol `version`)
/// of the peer whose certificate is named `name`.
pub async fn send_hello(conn: &quinn::Connection, version: u16, name: &str) -> quinn::SendStream {
    send_hello_bytes(conn, hello_bytes(conn.remote_address(), version, name)).await
}

/// [`send_hello`] making `claim`, numbering the connection `dial`.
pub async fn send_hello_as(conn: &quinn::Connection, claim: Claim, dial: u64) -> quinn::SendStream {
    send_hello_bytes(conn, hello_bytes_as(conn.remote_address(), wire::PROTOCOL_VERSION, claim, dial)).await
}

async fn send_hello_bytes(conn: &quinn::Connection, hello: BytesMut) -> quinn::SendStream {
    let mut s = conn.open_uni().await.expect("open_uni");
    s.write_all(&hello).await.expect("write hello");
    s
}

/// One encoded frame.
pub fn frame(f: &Frame<'_>) -> Bytes {
    let mut b = BytesMut::new();
    wire::put_frame(&mut b, f);
    b.freeze()
}

/// A QUIC connection from `ep` to node `target` (guarded), accepted as hood member.
pub async fn connect_to_node(ep: &quinn::Endpoint, target: &Bus) -> quinn::Connection {
    tokio::time::timeout(GUARD, ep.connect((LOCALHOST, target.port()).into(), "partybus").unwrap())
        .await
        .expect("handshake in time")
        .expect("a valid hood certificate is accepted")
}

/// How a connection ended, waiting at most `timeout`.
pub async fn closed_within(conn: &quinn::Connection, timeout: Duration) -> Option<quinn::ConnectionError> {
    tokio::time::timeout(timeout, conn.closed()).await.ok()
}

/// The application close code, if the connection was closed by the peer with one.
pub fn app_code(e: &quinn::ConnectionError) -> Option<u32> {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner() as u32),
        _ => None,
    }
}
