//! TLS session resumption is off: a resumed TLS 1.3 session carries no
//! client certificate (the server takes the one remembered from the first
//! session), so a node that gave out tickets would let a client that once
//! held a good certificate skip the hood check (expiry included). Real QUIC
//! on loopback.
//!
//! One client connects with a hood member's certificate, disconnects, and
//! reconnects presenting a certificate of another hood (same hood name,
//! other key). Against a control server with rustls' defaults it stores and
//! offers a ticket and is let in as the member: the test's client can
//! resume. Against a node it gets no ticket, makes a full handshake, and is
//! refused by the hood check.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{wait_until, GUARD};
use partybus::pki::{create_hood, create_peer, Hood, Identity};
use partybus::{Bus, Config, PortSpec};
use partybus_testkit::AcceptAnything;
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::NamedGroup;
use rustls_pki_types::ServerName;

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// The node's ALPN (`partybus::wire::ALPN`).
const ALPN: &[u8] = b"partybus/1";

/// A client session store that counts the TLS 1.3 tickets it is given and
/// the ones it hands out for resumption.
#[derive(Debug)]
struct Recorder {
    inner: ClientSessionMemoryCache,
    stored: AtomicUsize,
    offered: AtomicUsize,
}

impl Recorder {
    fn new() -> Arc<Recorder> {
        Arc::new(Recorder { inner: ClientSessionMemoryCache::new(32), stored: AtomicUsize::new(0), offered: AtomicUsize::new(0) })
    }
    fn stored(&self) -> usize {
        self.stored.load(Ordering::SeqCst)
    }
    fn offered(&self) -> usize {
        self.offered.load(Ordering::SeqCst)
    }
}

impl ClientSessionStore for Recorder {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server_name, group)
    }
    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(server_name)
    }
    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.inner.set_tls12_session(server_name, value)
    }
    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }
    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name)
    }
    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.stored.fetch_add(1, Ordering::SeqCst);
        self.inner.insert_tls13_ticket(server_name, value)
    }
    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        let t = self.inner.take_tls13_ticket(server_name);
        if t.is_some() {
            self.offered.fetch_add(1, Ordering::SeqCst);
        }
        t
    }
}

/// Two hoods of the same name ("t"): ours (peers "node", "member",
/// "control") and an impostor's (peer "stranger").
struct Hoods {
    ours: tempfile::TempDir,
    other: tempfile::TempDir,
}

impl Hoods {
    fn new() -> Hoods {
        let ours = tempfile::tempdir().unwrap();
        create_hood("t", ours.path(), 30).unwrap();
        for p in ["node", "member", "control"] {
            create_peer("t", p, ours.path(), 30).unwrap();
        }
        let other = tempfile::tempdir().unwrap();
        create_hood("t", other.path(), 30).unwrap();
        create_peer("t", "stranger", other.path(), 30).unwrap();
        Hoods { ours, other }
    }
    fn hood(&self) -> Hood {
        Hood::load(&self.ours.path().join("t.crt")).unwrap()
    }
    fn identity(&self, dir: &Path, name: &str, hood: &Hood) -> Identity {
        Identity::load(&dir.join(format!("t.{name}.crt")), &dir.join(format!("t.{name}.key")), hood).unwrap()
    }
    fn ours(&self, name: &str) -> Identity {
        self.identity(self.ours.path(), name, &self.hood())
    }
    fn config(&self, name: &str) -> Config {
        let d = self.ours.path();
        let mut cfg = Config::from_files(&d.join("t.crt"), &d.join(format!("t.{name}.crt")), &d.join(format!("t.{name}.key"))).unwrap();
        cfg.port = PortSpec::any();
        cfg.bind = Some(LOCALHOST.into());
        cfg
    }
}

/// The client's certificate: the member's at first, then the stranger's.
/// One resolver object throughout, as rustls resumes a session only with
/// the same configuration objects (verifier and certificate resolver).
#[derive(Debug)]
struct SwitchingCert {
    member: Arc<rustls::sign::CertifiedKey>,
    stranger: Arc<rustls::sign::CertifiedKey>,
    is_stranger: AtomicBool,
}

impl rustls::client::ResolvesClientCert for SwitchingCert {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(if self.is_stranger.load(Ordering::SeqCst) { self.stranger.clone() } else { self.member.clone() })
    }
    fn has_certs(&self) -> bool {
        true
    }
}

fn certified(id: &Identity) -> Arc<rustls::sign::CertifiedKey> {
    let signer = rustls::crypto::ring::sign::any_supported_type(&id.key_der()).unwrap();
    Arc::new(rustls::sign::CertifiedKey::new(vec![id.cert_der().clone()], signer))
}

/// A client endpoint that presents the member's certificate until
/// `SwitchingCert::is_stranger` is set, trusts any server (the refusal must
/// come from the server), and keeps its tickets in `store`.
fn client(h: &Hoods, store: &Arc<Recorder>) -> (quinn::Endpoint, Arc<SwitchingCert>) {
    let other_hood = Hood::load(&h.other.path().join("t.crt")).unwrap();
    let certs = Arc::new(SwitchingCert {
        member: certified(&h.ours("member")),
        stranger: certified(&h.identity(h.other.path(), "stranger", &other_hood)),
        is_stranger: AtomicBool::new(false),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        // Trusts any server: the stranger must be refused by the server, not by itself.
        .with_custom_certificate_verifier(Arc::new(AcceptAnything))
        .with_client_cert_resolver(certs.clone());
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.resumption = Resumption::store(store.clone());
    let cfg = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap()));
    let mut ep = quinn::Endpoint::client((LOCALHOST, 0).into()).unwrap();
    ep.set_default_client_config(cfg);
    (ep, certs)
}

/// The CN of the certificate the server side of `conn` believes its client has.
fn client_cn(conn: &quinn::Connection) -> Option<String> {
    let chain = conn.peer_identity()?.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>().ok()?;
    partybus::pki::peer_name(chain.first()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_server_with_resumption_lets_another_hood_in() {
    let h = Hoods::new();
    // Our hood's verifiers, rustls' default tickets (2 per handshake).
    let mut tls = partybus::pki::server_config(&h.ours("control"), &h.hood()).unwrap();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    assert!(tls.send_tls13_tickets > 0, "rustls' default changed; this control needs tickets");
    let sc = quinn::ServerConfig::with_crypto(Arc::new(quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap()));
    let server = quinn::Endpoint::server(sc, (LOCALHOST, 0).into()).unwrap();
    let addr = server.local_addr().unwrap();
    let accept = |server: quinn::Endpoint| async move {
        let incoming = tokio::time::timeout(GUARD, server.accept()).await.expect("a client comes").expect("endpoint open");
        tokio::time::timeout(GUARD, incoming).await.expect("handshake ends")
    };

    let store = Recorder::new();
    let (ep, certs) = client(&h, &store);
    let (conn, served) = tokio::join!(async { ep.connect(addr, "partybus").unwrap().await }, accept(server.clone()));
    let (conn, served) = (conn.expect("the member connects"), served.expect("the member is accepted"));
    assert_eq!(client_cn(&served).as_deref(), Some("member"));
    assert!(wait_until(|| store.stored() > 0, GUARD).await, "the control server sent no ticket");
    conn.close(0u32.into(), b"");
    served.close(0u32.into(), b"");

    // The stranger offers the member's ticket, presents no certificate, and
    // the server takes it for the member: what the node must not allow.
    certs.is_stranger.store(true, Ordering::SeqCst);
    let (conn, served) = tokio::join!(async { ep.connect(addr, "partybus").unwrap().await }, accept(server.clone()));
    assert_eq!(store.offered(), 1, "the stranger's client offered the member's ticket");
    let (conn, served) = (conn.expect("resumed"), served.expect("resumed"));
    assert_eq!(client_cn(&served).as_deref(), Some("member"), "resumption skipped the check of the stranger's certificate");
    conn.close(0u32.into(), b"");
    ep.close(0u32.into(), b"");
    server.close(0u32.into(), b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_gives_out_no_tickets_so_a_reconnecting_stranger_is_checked_and_refused() {
    let h = Hoods::new();
    let node = Bus::join(h.config("node")).await.unwrap();
    let addr = SocketAddr::from((LOCALHOST, node.port()));

    // A member connects, waits for the node's hello stream (the handshake and
    // whatever the node sends after it have arrived), then leaves.
    let store = Recorder::new();
    let (ep, certs) = client(&h, &store);
    let conn = tokio::time::timeout(GUARD, ep.connect(addr, "partybus").unwrap()).await.expect("handshake ends").expect("accepted");
    let mut hello = tokio::time::timeout(GUARD, conn.accept_uni()).await.expect("the node opens its stream").unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(GUARD, hello.read_exact(&mut buf)).await.expect("the node sends its hello").unwrap();
    assert_eq!(&buf, b"PBUS");
    // Tickets travel with the server's first flight after the handshake; the
    // control test sees them at once. Allow a generous margin anyway.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.stored(), 0, "the node gave out session tickets");
    conn.close(0u32.into(), b"");

    // The stranger, with the same store: nothing to resume, a full handshake,
    // refused by the node's hood check.
    certs.is_stranger.store(true, Ordering::SeqCst);
    let result = tokio::time::timeout(GUARD, ep.connect(addr, "partybus").unwrap()).await.expect("handshake ends");
    assert_eq!(store.offered(), 0);
    let err = match result {
        Err(e) => e.to_string(),
        // TLS 1.3: the client may finish before the server has checked its
        // certificate; the server must then close the connection.
        Ok(conn) => tokio::time::timeout(GUARD, conn.closed()).await.expect("the node must close the stranger's connection").to_string(),
    };
    assert!(err.contains("BadSignature"), "{err}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(node.neighbours().is_empty(), "{:?}", node.neighbours());
    ep.close(0u32.into(), b"");
    node.leave().await;
}
