//! The one-connection-per-pair rule over real QUIC, driven by a raw quinn
//! peer ("rogue" with a valid hood certificate) that controls what a real
//! node cannot: the order in which its connections finish their hellos, and
//! the dial numbers in them.
//!
//! Both ends of a pair must keep the same connection even when they see
//! the connections finish in opposite orders. A lab run caught them
//! disagreeing (a node dialled a peer's IPv4 and IPv6 addresses; each end
//! retired the connection the other kept), which lost an event and later
//! the neighbour.

mod common;

use std::time::Duration;

use common::*;
use partybus::__private::wire::{self, Frame, FrameDecoder, Hello, WireSub};

/// What the node sent on its stream, owned.
#[derive(Debug, PartialEq)]
enum Got {
    Hello(Hello),
    Subscribe(Vec<String>),
    Other,
    Event(String, Vec<u8>),
    Retire,
    Eof,
}

/// The node's stream on one connection, decoded.
struct NodeStream {
    recv: quinn::RecvStream,
    dec: FrameDecoder,
}

impl NodeStream {
    /// The node's main stream (hello, subscriptions, big events).
    async fn accept(conn: &quinn::Connection) -> NodeStream {
        let recv = tokio::time::timeout(GUARD, conn.accept_uni()).await.expect("the node opens its stream").expect("accept_uni");
        NodeStream { recv, dec: FrameDecoder::new(1 << 20) }
    }

    /// The node's express stream (small events), opened after the main one.
    async fn accept_express(conn: &quinn::Connection) -> NodeStream {
        Self::accept(conn).await
    }

    /// The next frame (guarded).
    async fn next(&mut self) -> Got {
        loop {
            if let Some(body) = self.dec.next_frame().expect("the node speaks the protocol") {
                return match wire::parse(&body).expect("a frame") {
                    Frame::Hello(h) => Got::Hello(h),
                    Frame::Subscribe(s) => Got::Subscribe(s.into_iter().map(|s| s.selector).collect()),
                    Frame::Event { name, payload } => Got::Event(name.to_owned(), payload.to_vec()),
                    Frame::Retire => Got::Retire,
                    Frame::Peers(_) | Frame::Unsubscribe(_) | Frame::Resume { .. } | Frame::After { .. } | Frame::Revocations(_) => {
                        Got::Other
                    }
                };
            }
            match tokio::time::timeout(GUARD, self.recv.read_chunk(64 * 1024, true)).await.expect("a frame from the node in time") {
                Ok(Some(c)) => self.dec.push(c.bytes),
                Ok(None) => return Got::Eof,
                Err(e) => panic!("node stream: {e}"),
            }
        }
    }

    /// Frames until the stream ends (guarded).
    async fn read_to_end(&mut self) -> Vec<Got> {
        let mut all = Vec::new();
        loop {
            match self.next().await {
                Got::Eof => return all,
                g => all.push(g),
            }
        }
    }

    /// Frames until one matching `pred`, which is returned (guarded).
    async fn until(&mut self, mut pred: impl FnMut(&Got) -> bool) -> Got {
        loop {
            let g = self.next().await;
            assert_ne!(g, Got::Eof, "the node ended the stream");
            if pred(&g) {
                return g;
            }
        }
    }
}

/// Two dials from one peer to the node finish their hellos at the node in
/// the order `first_dial`, then the other. Whatever that order, the node
/// keeps the later dial (number 2): the other one gets a retire and ends,
/// events flow both ways on the kept one. Run for a peer id below the
/// node's (its dials are primary) and above it (secondary).
async fn keeps_the_later_dial(below: bool, first_dial: u64) {
    let a = node_named("keeper", None, |_| {}).await;
    let claim = Claim::ordered("twice", a.id(), below);
    let peer_id = claim.id;
    let what = format!("peer {peer_id:?} (below the node: {below}), dial {first_dial} finishing first");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _h = a
        .on("up", move |ev| {
            let _ = tx.send(ev.source().id);
        })
        .unwrap();

    let ep = client_endpoint(valid_client_config("twice"));
    let c1 = connect_to_node(&ep, &a).await;
    let c2 = connect_to_node(&ep, &a).await;
    let mut n1 = NodeStream::accept(&c1).await;
    let mut n2 = NodeStream::accept(&c2).await;
    assert!(
        matches!(n1.next().await, Got::Hello(h) if h.id == a.id() && h.dial == 0 && h.express),
        "{what}: the accepting side sends dial 0"
    );
    assert!(matches!(n2.next().await, Got::Hello(_)));
    let mut x1 = NodeStream::accept_express(&c1).await;
    let mut x2 = NodeStream::accept_express(&c2).await;

    let (first, second) = if first_dial == 1 { (&c1, &c2) } else { (&c2, &c1) };
    let s_first = send_hello_as(first, claim, first_dial).await;
    assert!(wait_until(|| a.neighbours().len() == 1, GUARD).await, "{what}: the first hello makes a neighbour");
    let s_second = send_hello_as(second, claim, 3 - first_dial).await;
    let (mut s1, mut s2) = if first_dial == 1 { (s_first, s_second) } else { (s_second, s_first) };

    // The earlier dial (1) is retired, whether it came first or second.
    let on_1 = n1.read_to_end().await;
    assert_eq!(on_1.last(), Some(&Got::Retire), "{what}: dial 1 must end with a retire; the node sent {on_1:?}");
    assert!(!on_1.iter().any(|g| matches!(g, Got::Event(..))), "{what}: {on_1:?}");
    // Its express stream is retired with it.
    let x_on_1 = x1.read_to_end().await;
    assert_eq!(x_on_1, vec![Got::Retire], "{what}: dial 1's express stream");
    // As a real node would, end our side of it too.
    s1.write_chunk(frame(&Frame::Retire)).await.unwrap();
    s1.finish().unwrap();

    // The node's subscription went out on whichever connection was active
    // when the first hello made us a neighbour: on dial 1 (before its
    // retire) when that came first, else on the kept one.
    let up = Got::Subscribe(vec!["up".into()]);
    if first_dial == 1 {
        assert!(on_1.contains(&up), "{what}: {on_1:?}");
    } else {
        assert_eq!(n2.until(|g| matches!(g, Got::Subscribe(_))).await, up, "{what}");
    }
    // The kept one carries events both ways.
    s2.write_chunk(frame(&Frame::Subscribe(vec![WireSub { id: 1, selector: "down".into(), spy: false }]))).await.unwrap();
    wait_listeners(&a, "down", 1).await;
    assert_eq!(a.emit("down", &7u8).await.unwrap(), 1, "{what}");
    // A small event: on the kept connection's express stream.
    let ev = x2.until(|g| matches!(g, Got::Event(..))).await;
    assert!(matches!(&ev, Got::Event(name, _) if name == "down"), "{what}: {ev:?}");
    s2.write_chunk(frame(&Frame::Event { name: "up", payload: b"\x07" })).await.unwrap();
    let src = tokio::time::timeout(GUARD, rx.recv()).await.expect("the node got our event").unwrap();
    assert_eq!(src, peer_id, "{what}");
    assert_eq!(a.neighbours().len(), 1, "{what}: {:?}", a.neighbours());
    assert_eq!(a.neighbours()[0].id, peer_id);

    a.leave().await;
    // The node finished its stream on the kept connection when it left.
    assert!(n2.read_to_end().await.iter().all(|g| !matches!(g, Got::Retire)), "{what}: the kept connection was never retired");
    ep.close(0u32.into(), b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_later_dial_is_kept_whichever_finishes_first() {
    let _g = heavy().await;
    for below in [true, false] {
        for first_dial in [1, 2] {
            keeps_the_later_dial(below, first_dial).await;
        }
    }
}

/// The peer switched away from our connection (retire, end of stream) and
/// its new connection has not reached us yet when we leave: the peer still
/// reads the old one until we end it, so what we emitted before leaving
/// must arrive there, not be cut off with the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_flushes_a_connection_the_peer_switched_away_from() {
    let _g = heavy().await;
    let a = node_named("switched", None, |_| {}).await;
    let ep = client_endpoint(valid_client_config("switcher"));
    let c = connect_to_node(&ep, &a).await;
    let n = NodeStream::accept(&c).await;
    let mut s = send_hello_as(&c, Claim::fresh("switcher"), 1).await;
    s.write_chunk(frame(&Frame::Subscribe(vec![WireSub { id: 1, selector: "late".into(), spy: false }]))).await.unwrap();
    wait_listeners(&a, "late", 1).await;
    // Switch away: retire and end our stream.
    s.write_chunk(frame(&Frame::Retire)).await.unwrap();
    s.finish().unwrap();
    // Give the node time to read the retire (it then waits for our new
    // connection). Not a timing assertion: too short a sleep only tests the
    // plain leave instead.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Enough that sending takes a while after leave() begins (a few MB).
    let payload = vec![7u8; 32 * 1024];
    let emitted = 200;
    // Read as a peer does, meanwhile (flow control would stall the node).
    let reader = tokio::spawn(async move {
        let mut n = n;
        n.read_to_end().await.into_iter().filter(|g| matches!(g, Got::Event(..))).count()
    });
    for _ in 0..emitted {
        assert_eq!(a.emit_bytes("late", &payload).await.unwrap(), 1);
    }
    a.leave().await;
    let got = reader.await.unwrap();
    assert_eq!(got, emitted, "events emitted before leave() must reach the peer");
    ep.close(0u32.into(), b"");
}
