//! A rogue peer with a VALID hood certificate (raw quinn) that breaks the
//! wire protocol: the node must disconnect it with an application close
//! code and keep working; and per-peer subscription limits.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use partybus::__private::wire::{self, close, Frame, FrameDecoder, WireSub};
use partybus::Bus;

async fn rogue(target: &Bus) -> (quinn::Endpoint, quinn::Connection) {
    let ep = client_endpoint(valid_client_config("rogue"));
    let conn = connect_to_node(&ep, target).await;
    (ep, conn)
}

/// Sends the preamble (with `version`), a hello, then `tail`; expects the
/// node to close the connection with `code`.
async fn expect_closed(a: &Bus, what: &str, version: u16, tail: &[u8], code: u32) {
    let (ep, conn) = rogue(a).await;
    let mut s = send_hello(&conn, version, "rogue").await;
    if !tail.is_empty() {
        let _ = s.write_all(tail).await; // may fail once the node closed
    }
    let e = closed_within(&conn, GUARD).await.unwrap_or_else(|| panic!("{what}: the node kept the connection"));
    assert_eq!(app_code(&e), Some(code), "{what}: {e}");
    eprintln!("{what}: closed with {e}");
    ep.close(0u32.into(), b"");
}

async fn still_works(a: &Bus, b: &Bus, got: &std::sync::Arc<std::sync::atomic::AtomicUsize>, n: usize) {
    assert_eq!(a.emit("alive", &n).await.unwrap(), 1);
    let ok = wait_until(|| got.load(std::sync::atomic::Ordering::SeqCst) >= n, GUARD).await;
    assert!(ok, "b got {} alive events, wanted {n}", got.load(std::sync::atomic::Ordering::SeqCst));
    assert!(wait_until(|| a.neighbours().len() == 1, GUARD).await, "the rogue must be gone: {:?}", a.neighbours());
    assert_eq!(a.neighbours()[0].id, b.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_breakers_are_disconnected_and_the_node_keeps_working() {
    let (a, b) = pair(|_| {}, |_| {}).await;
    let got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let g = got.clone();
    let _h = b.on("alive", move |_| {
        g.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    wait_listeners(&a, "alive", 1).await;
    let v = wire::PROTOCOL_VERSION;
    let mut n = 0;

    // (a) a frame announcing 4 GiB.
    expect_closed(&a, "4 GiB frame", v, &u32::MAX.to_le_bytes(), close::PROTOCOL).await;
    n += 1;
    still_works(&a, &b, &got, n).await;

    // (b) garbage bincode: unknown enum variant, then trailing junk.
    let mut garbage = 4u32.to_le_bytes().to_vec();
    garbage.extend_from_slice(&[200, 1, 2, 3]);
    expect_closed(&a, "garbage bincode", v, &garbage, close::PROTOCOL).await;
    let mut trailing = frame(&Frame::Retire).to_vec();
    let len = u32::from_le_bytes(trailing[..4].try_into().unwrap()) + 1;
    trailing[..4].copy_from_slice(&len.to_le_bytes());
    trailing.push(0);
    expect_closed(&a, "trailing bytes", v, &trailing, close::PROTOCOL).await;
    n += 1;
    still_works(&a, &b, &got, n).await;

    // (c) an event with an invalid name.
    let bad_event = frame(&Frame::Event { name: "bad name!", payload: b"\xc0" });
    expect_closed(&a, "invalid event name", v, &bad_event, close::PROTOCOL).await;
    let wild_event = frame(&Frame::Event { name: "alive.#", payload: b"\xc0" });
    expect_closed(&a, "wildcard in event name", v, &wild_event, close::PROTOCOL).await;
    // The first event of a stream with an empty name (the batch decoder
    // once started from a "known" empty name and skipped the check).
    let empty_event = frame(&Frame::Event { name: "", payload: b"\xc0" });
    expect_closed(&a, "empty event name", v, &empty_event, close::PROTOCOL).await;
    n += 1;
    still_works(&a, &b, &got, n).await;

    // (d) a wrong protocol version in the preamble.
    expect_closed(&a, "next version", v + 1, &[], close::VERSION).await;
    expect_closed(&a, "previous version", v - 1, &[], close::VERSION).await;
    expect_closed(&a, "version 0", 0, &[], close::VERSION).await;
    n += 1;
    still_works(&a, &b, &got, n).await;

    // More: not partybus at all, a first frame that is not a hello, a second hello.
    {
        let (ep, conn) = rogue(&a).await;
        let mut s = conn.open_uni().await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let e = closed_within(&conn, GUARD).await.expect("bad magic closes");
        assert_eq!(app_code(&e), Some(close::VERSION), "{e}");
        ep.close(0u32.into(), b"");
    }
    {
        let (ep, conn) = rogue(&a).await;
        let mut s = conn.open_uni().await.unwrap();
        let mut b = BytesMut::new();
        wire::put_preamble(&mut b);
        wire::put_frame(&mut b, &Frame::Subscribe(vec![]));
        s.write_all(&b).await.unwrap();
        let e = closed_within(&conn, GUARD).await.expect("no hello closes");
        assert_eq!(app_code(&e), Some(close::PROTOCOL), "{e}");
        ep.close(0u32.into(), b"");
    }
    let second_hello = hello_bytes("127.0.0.1:1".parse().unwrap(), v, "rogue")[wire::PREAMBLE_LEN..].to_vec();
    expect_closed(&a, "second hello", v, &second_hello, close::PROTOCOL).await;
    // An event over the receiver's limit.
    let big = vec![0u8; (16 << 20) + 1000]; // frame within max_frame, event over max_event_size
    let mut huge = BytesMut::new();
    wire::put_event(&mut huge, "alive", &big);
    expect_closed(&a, "oversized event", v, &huge, close::PROTOCOL).await;
    n += 1;
    still_works(&a, &b, &got, n).await;

    a.leave().await;
    b.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_hold_more_subscriptions_than_the_limit() {
    let a = node(0, None, |c| c.max_subscriptions_per_peer = 5).await;
    let (ep, conn) = rogue(&a).await;
    let mut s = send_hello(&conn, wire::PROTOCOL_VERSION, "rogue").await;
    let subs =
        |ids: std::ops::Range<u64>| frame(&Frame::Subscribe(ids.map(|id| WireSub { id, selector: "lim".into(), spy: false }).collect()));
    s.write_all(&subs(1..9)).await.unwrap(); // 8 > 5
    assert!(wait_until(|| a.listener_count("lim").unwrap() == 5, GUARD).await);
    s.write_all(&subs(20..23)).await.unwrap(); // more, one frame later
    s.write_all(&subs(1..3)).await.unwrap(); // re-subscribing known ids is idempotent
    s.write_all(&frame(&Frame::Unsubscribe(vec![1]))).await.unwrap();
    assert!(wait_until(|| a.listener_count("lim").unwrap() == 4, GUARD).await);
    s.write_all(&subs(30..40)).await.unwrap(); // one slot free again
    assert!(wait_until(|| a.listener_count("lim").unwrap() == 5, GUARD).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(a.listener_count("lim").unwrap(), 5);
    assert_eq!(a.listeners("lim").unwrap().iter().filter(|p| p.name == "rogue").count(), 5);
    assert_eq!(a.neighbours().len(), 1, "refusing subscriptions does not disconnect");

    // The rogue is a real neighbour: it gets events on a's stream.
    assert_eq!(a.emit("lim", &42u8).await.unwrap(), 5);
    let mut rs = conn.accept_uni().await.unwrap();
    let mut dec = FrameDecoder::new(1 << 20);
    let found = tokio::time::timeout(GUARD, async {
        loop {
            while let Some(body) = dec.next_frame().unwrap() {
                if let Frame::Event { name, payload } = wire::parse(&body).unwrap() {
                    return (name.to_owned(), payload.to_vec());
                }
            }
            let chunk = rs.read_chunk(64 * 1024, true).await.unwrap().expect("stream open");
            dec.push(chunk.bytes);
        }
    })
    .await
    .expect("event reaches the rogue");
    assert_eq!(found.0, "lim");
    assert_eq!(partybus::payload::decode::<u8>(&found.1).unwrap(), 42);
    ep.close(0u32.into(), b"");
    a.leave().await;
}

/// A member with a valid certificate says hello with another node's id
/// (learnt from gossip) and a huge dial number, to become that node for
/// its victim and take its traffic. The id is not the one its certificate
/// proves: refused, and the real neighbour keeps its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_pass_for_another_node() {
    let (a, b) = pair(|_| {}, |_| {}).await;
    let got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let g = got.clone();
    let _h = b.on("alive", move |_| {
        g.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    wait_listeners(&a, "alive", 1).await;
    for (what, claim) in [
        ("b's id, any nonce", Claim { id: b.id(), nonce: rand::random() }),
        // An id that b's certificate name would prove, from the rogue's.
        ("an id of b's certificate name", Claim::fresh(&a.neighbours()[0].name)),
    ] {
        let (ep, conn) = rogue(&a).await;
        let _s = send_hello_as(&conn, claim, u64::MAX / 2).await;
        let e = closed_within(&conn, GUARD).await.unwrap_or_else(|| panic!("{what}: the node kept the impostor"));
        assert_eq!(app_code(&e), Some(close::PROTOCOL), "{what}: {e}");
        assert!(e.to_string().contains("unproven node id"), "{what}: {e}");
        ep.close(0u32.into(), b"");
    }
    still_works(&a, &b, &got, 1).await;
    assert_eq!(a.listeners("alive").unwrap().len(), 1);
    // The rogue's own id is fine: it becomes a neighbour of its own.
    let (ep, conn) = rogue(&a).await;
    let _s = send_hello(&conn, wire::PROTOCOL_VERSION, "rogue").await;
    assert!(wait_until(|| a.neighbours().len() == 2, GUARD).await, "{:?}", a.neighbours());
    assert!(a.neighbours().iter().any(|n| n.id == b.id()));
    ep.close(0u32.into(), b"");
    a.leave().await;
    b.leave().await;
}

/// Long address lists cost bounded time and memory: a hello naming 320,000
/// addresses (2.6 MB; once a 50 s freeze) is over the hello's size limit
/// and refused; gossip of 10,000 entries of 64 addresses each is cut to the
/// first distinct ones per entry. The node answers its honest neighbour
/// throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_address_lists_cost_bounded_time() {
    let (a, b) = pair(|_| {}, |_| {}).await;
    let got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let g = got.clone();
    let _h = b.on("alive", move |_| {
        g.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    wait_listeners(&a, "alive", 1).await;
    let addr = |i: u32| std::net::SocketAddr::from((std::net::Ipv4Addr::from(0xC612_0000 + (i & 0xffff)), 1 + (i >> 16) as u16));

    // The hello.
    let (ep, conn) = rogue(&a).await;
    let claim = Claim::fresh("rogue");
    let hello = wire::Hello {
        id: claim.id,
        nonce: claim.nonce,
        port: 0,
        addrs: (0..320_000).map(addr).collect(),
        relays: vec![],
        observed: conn.remote_address(),
        dial: 1,
    };
    let mut b2 = bytes::BytesMut::new();
    wire::put_preamble(&mut b2);
    wire::put_frame(&mut b2, &Frame::Hello(hello));
    assert!(b2.len() > 1_000_000, "{} bytes", b2.len());
    let mut s = conn.open_uni().await.unwrap();
    let _ = s.write_all(&b2).await;
    let e = closed_within(&conn, GUARD).await.expect("an oversized hello closes");
    assert_eq!(app_code(&e), Some(close::PROTOCOL), "{e}");
    ep.close(0u32.into(), b"");
    still_works(&a, &b, &got, 1).await;

    // Gossip.
    let (ep, conn) = rogue(&a).await;
    let mut s = send_hello(&conn, wire::PROTOCOL_VERSION, "rogue").await;
    assert!(wait_until(|| a.neighbours().len() == 2, GUARD).await);
    let list: Vec<wire::PeerAddrs> = (0..10_000u32)
        .map(|i| {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_be_bytes());
            wire::PeerAddrs { id: partybus::NodeId(id), addrs: (0..64).map(|j| addr(i * 64 + j)).collect(), relays: vec![] }
        })
        .collect();
    let started = std::time::Instant::now();
    s.write_all(&frame(&Frame::Peers(list))).await.unwrap();
    // Honest traffic goes on while the node digests it.
    assert_eq!(a.emit("alive", &2).await.unwrap(), 1);
    assert!(wait_until(|| got.load(std::sync::atomic::Ordering::SeqCst) >= 2, GUARD).await);
    eprintln!("gossip flood: honest event through after {:?}", started.elapsed());
    ep.close(0u32.into(), b"");
    a.leave().await;
    b.leave().await;
}

/// A member that subscribes and then never reads (withholding QUIC
/// flow-control credit) once stopped `emit` for everyone under the default
/// policy. Now the default lets it go after 10 s without progress, and the
/// honest neighbour gets every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_reads_is_let_go_by_default() {
    let _g = heavy().await;
    const N: usize = 200;
    let (a, b) = pair(|_| {}, |_| {}).await;
    let got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let g = got.clone();
    let _h = b.on("bulk", move |_| {
        g.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    let (ep, conn) = rogue(&a).await;
    let mut s = send_hello(&conn, wire::PROTOCOL_VERSION, "rogue").await;
    s.write_chunk(frame(&Frame::Subscribe(vec![WireSub { id: 1, selector: "bulk".into(), spy: false }]))).await.unwrap();
    wait_listeners(&a, "bulk", 2).await;
    // The rogue never accepts the node's stream: 200 x 64 KiB fill its
    // receive window and then the node's send queue.
    let a2 = a.clone();
    let started = std::time::Instant::now();
    let emitter = tokio::spawn(async move {
        let payload = vec![7u8; 64 << 10];
        for _ in 0..N {
            a2.emit_bytes("bulk", &payload).await.unwrap();
        }
    });
    tokio::time::timeout(Duration::from_secs(60), emitter).await.expect("emit must not wait for ever on a stuck member").unwrap();
    eprintln!("200 events emitted in {:?} with a stuck member", started.elapsed());
    let e = closed_within(&conn, GUARD).await.expect("the stuck member is disconnected");
    assert_eq!(app_code(&e), Some(close::STUCK), "{e}");
    assert!(wait_until(|| got.load(std::sync::atomic::Ordering::SeqCst) == N, GUARD).await, "b got {got:?}");
    ep.close(0u32.into(), b"");
    a.leave().await;
    b.leave().await;
}

/// A member subscribes 10,000 selectors of 1 KiB of wildcards (once a 19 s
/// freeze per new event name): past its wildcard budget they are refused,
/// and emitting fresh 1 KiB names to an honest neighbour goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_selectors_cost_bounded_matching() {
    let (a, b) = pair(|_| {}, |_| {}).await;
    let got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let g = got.clone();
    let _h = b.on("#", move |_| {
        g.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    let (ep, conn) = rogue(&a).await;
    let mut s = send_hello(&conn, wire::PROTOCOL_VERSION, "rogue").await;
    let hostile = "+#".repeat(512);
    let subs: Vec<WireSub> = (0..10_000).map(|id| WireSub { id, selector: hostile.clone(), spy: false }).collect();
    s.write_all(&frame(&Frame::Subscribe(subs))).await.unwrap();
    // The rogue holds what its budget allows (3 of them), b its one.
    let name = |i: usize| format!("n{i}.{}", "a".repeat(1000));
    assert!(wait_until(|| a.listeners(&name(0)).map_or(0, |l| l.len()) == 4, GUARD).await, "{:?}", a.listeners(&name(0)).map(|l| l.len()));
    let started = std::time::Instant::now();
    for i in 1..=20 {
        assert_eq!(a.emit(&name(i), &i).await.unwrap(), 4);
    }
    assert!(wait_until(|| got.load(std::sync::atomic::Ordering::SeqCst) == 20, GUARD).await);
    eprintln!("20 fresh 1 KiB names routed past a full wildcard budget in {:?}", started.elapsed());
    ep.close(0u32.into(), b"");
    a.leave().await;
    b.leave().await;
}

/// A client whose certificate check never returns: its handshakes stay
/// half-open at the node (which waits for the client's Finished).
#[derive(Debug)]
struct Stall;

impl rustls::client::danger::ServerCertVerifier for Stall {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        // Blocks the flood's one runtime thread for good: its endpoint
        // never answers again (the thread ends with the test process).
        loop {
            std::thread::park();
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        partybus_testkit::AcceptAnything.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        partybus_testkit::AcceptAnything.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        partybus_testkit::AcceptAnything.supported_verify_schemes()
    }
}

fn stalling_client() -> quinn::ClientConfig {
    use rustls::client::danger::ServerCertVerifier as _;
    let _ = Stall.supported_verify_schemes();
    let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(Stall))
        .with_no_client_auth();
    tls.alpn_protocols = vec![wire::ALPN.to_vec()];
    quinn::ClientConfig::new(std::sync::Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap()))
}

/// 600 handshakes started from one address that then goes silent mid-
/// handshake (half-open, each held until the handshake timeout; 6,000 once
/// cost a node 255 MB it kept). The node holds at most its per-source share
/// of them, and an honest newcomer from another address joins at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_handshakes_are_bounded() {
    let _g = heavy().await;
    let (a, b) = pair(|_| {}, |_| {}).await;
    let target = std::net::SocketAddr::from((LOCALHOST, a.port()));
    // The flood, from 127.0.0.2, on a runtime of its own whose one thread
    // its certificate check then blocks for good.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut ep = quinn::Endpoint::client((std::net::Ipv4Addr::new(127, 0, 0, 2), 0).into()).unwrap();
            ep.set_default_client_config(stalling_client());
            let pending: Vec<_> = (0..600).filter_map(|_| ep.connect(target, "partybus").ok()).collect();
            futures_util::future::join_all(pending).await;
        });
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let c = node(2, Some(a.port()), |_| {}).await;
    assert!(wait_until(|| a.neighbours().len() == 2, GUARD).await, "{:?}", a.neighbours());
    eprintln!("an honest node joined {:?} after a flood of 600 half-open handshakes", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    // Every handshake of the flood is held until the handshake timeout: at
    // most 32 from one source at a time.
    let stats = a.conn_stats();
    let held = stats.accepts - stats.accepts_ok;
    eprintln!("accepts {} of which ok {}: {held} held half-open", stats.accepts, stats.accepts_ok);
    assert!(held <= 32 + 2, "the node held {held} handshakes from one source");
    c.leave().await;
    a.leave().await;
    b.leave().await;
}
