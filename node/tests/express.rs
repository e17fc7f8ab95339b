//! Issue 16 (3): small events do not wait behind big ones, and events of
//! one name keep their order whatever their sizes.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use partybus::__private::wire::{self, Frame, FrameDecoder, WireSub};
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};

/// A frame the node sent, with the index of the stream it came on (in the
/// order the node opened them).
#[derive(Debug)]
enum Got {
    Hello,
    Event { stream: usize, name: String, payload: Vec<u8> },
    Other,
}

/// Reads every stream the node opens on `conn`, each in a task of its own,
/// into one channel. Stream 0 (the main stream) is read up to the hello and
/// then only while `main_open` is true: a receiver that stops reading it.
fn read_node_streams(conn: quinn::Connection, main_open: watch::Receiver<bool>) -> mpsc::UnboundedReceiver<Got> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        for stream in 0.. {
            let Ok(mut recv) = conn.accept_uni().await else { return };
            let (tx, mut open) = (tx.clone(), main_open.clone());
            tokio::spawn(async move {
                let mut dec = FrameDecoder::new(1 << 20);
                let mut hello_seen = stream != 0;
                loop {
                    while let Some(body) = dec.next_frame().expect("the node speaks the protocol") {
                        let got = match wire::parse(&body).expect("a frame") {
                            Frame::Hello(_) => {
                                hello_seen = true;
                                Got::Hello
                            }
                            Frame::Event { name, payload } => Got::Event { stream, name: name.to_owned(), payload: payload.to_vec() },
                            _ => Got::Other,
                        };
                        let _ = tx.send(got);
                    }
                    if stream == 0 && hello_seen {
                        let _ = open.wait_for(|o| *o).await;
                    }
                    match recv.read_chunk(64 * 1024, true).await {
                        Ok(Some(c)) => dec.push(c.bytes),
                        _ => return,
                    }
                }
            });
        }
    });
    rx
}

/// Emits `n` events of `size` bytes named "big" (payload starts with the
/// index); returns (emitted so far, handle).
fn spawn_big_emitter(a: partybus::Bus, n: usize, size: usize) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let emitted = Arc::new(AtomicUsize::new(0));
    let e = emitted.clone();
    let h = tokio::spawn(async move {
        for i in 0..n {
            let mut v = vec![0u8; size];
            v[..8].copy_from_slice(&(i as u64).to_le_bytes());
            assert_eq!(a.emit_raw("big", bytes::Bytes::from(v)).await.unwrap(), 1);
            e.fetch_add(1, Ordering::SeqCst);
        }
    });
    (emitted, h)
}

/// Waits until `counter` has not moved for `quiet`; returns its value.
async fn settle(counter: &AtomicUsize, quiet: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + GUARD;
    let mut last = counter.load(Ordering::SeqCst);
    loop {
        tokio::time::sleep(quiet).await;
        let now = counter.load(Ordering::SeqCst);
        if now == last || tokio::time::Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// A neighbour (a raw QUIC peer) stops reading the node's main stream
/// while the node streams 64 KiB events to it: QUIC's flow control stops
/// the main stream and the node's send queue fills (the emitter blocks).
/// A 16-byte event emitted then must arrive while the whole backlog is
/// still queued, not after it; then everything arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_event_overtakes_a_stalled_bulk_stream() {
    let _g = heavy().await;
    const N: usize = 400;
    const SIZE: usize = 64 * 1024;
    let a = node_named("bulky", None, |_| {}).await;
    let ep = client_endpoint(valid_client_config("slowpoke"));
    let conn = connect_to_node(&ep, &a).await;
    let (open_tx, open_rx) = watch::channel(false);
    let mut got = read_node_streams(conn.clone(), open_rx);
    let mut s = send_hello_as(&conn, Claim::fresh("slowpoke"), 1).await;
    let subs = ["big", "small"].iter().enumerate().map(|(i, n)| WireSub { id: i as u64 + 1, selector: (*n).into(), spy: false }).collect();
    s.write_chunk(frame(&Frame::Subscribe(subs))).await.unwrap();
    wait_listeners(&a, "big", 1).await;
    wait_listeners(&a, "small", 1).await;

    let (emitted, h) = spawn_big_emitter(a.clone(), N, SIZE);
    let stalled_at = settle(&emitted, Duration::from_millis(500)).await;
    assert!(stalled_at < N, "the emitter never blocked: {stalled_at} of {N} emitted with the main stream unread");
    eprintln!("emitter blocked after {stalled_at} events of {SIZE} bytes; none read");

    let small = {
        let a = a.clone();
        tokio::spawn(async move { a.emit("small", &7u8).await.unwrap() })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut bigs_before = 0;
    let arrived = loop {
        match tokio::time::timeout_at(deadline, got.recv()).await {
            Ok(Some(Got::Event { name, stream, .. })) if name == "small" => break Some(stream),
            Ok(Some(Got::Event { .. })) => bigs_before += 1,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break None,
        }
    };
    let Some(stream) = arrived else {
        panic!("the 16-byte event did not arrive within 5 s while {stalled_at} events of 64 KiB were queued ahead of it")
    };
    assert_eq!(bigs_before, 0, "nothing of the main stream was read");
    assert_eq!(tokio::time::timeout(GUARD, small).await.expect("the small emit returns").unwrap(), 1);
    eprintln!("the small event arrived on stream {stream} with {stalled_at} big events emitted and unread");

    // Read the main stream again: every big event, in order.
    open_tx.send_replace(true);
    let mut next = 0usize;
    while next < N {
        match tokio::time::timeout(GUARD, got.recv()).await.expect("the big events arrive").expect("reader alive") {
            Got::Event { name, payload, .. } => {
                assert_eq!(name, "big");
                assert_eq!(payload.len(), SIZE);
                assert_eq!(u64::from_le_bytes(payload[..8].try_into().unwrap()), next as u64, "in order");
                next += 1;
            }
            Got::Hello | Got::Other => {}
        }
    }
    tokio::time::timeout(GUARD, h).await.expect("the emitter finishes").unwrap();
    a.leave().await;
    ep.close(0u32.into(), b"");
}

/// Event names of the mix: (name, chance of a big event in percent).
const MIX: [(&str, u32); 4] = [("mix.small", 0), ("mix.big", 100), ("mix.both", 50), ("mix.rare", 5)];

/// One seeded run: node a emits a random mix of sizes under `MIX`'s names
/// (pausing now and then, so that the bulk stream idles and names move
/// between the streams); b's slow consumer checks that every name's events
/// arrive complete and in order.
async fn per_name_order(seed: u64, queue_limit: usize) {
    const N: usize = 3000;
    let (a, b) = pair(|c| c.queue_limit = queue_limit, |_| {}).await;
    let mut sub = b.subscribe("mix.#").unwrap();
    wait_listeners(&a, "mix.both", 1).await;
    let consumer = tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xc0ffee);
        let mut next: HashMap<String, u64> = HashMap::new();
        for i in 0..N {
            let ev = tokio::time::timeout(GUARD, sub.recv()).await.unwrap_or_else(|_| panic!("event {i} of {N} in time")).expect("open");
            let v = ev.bytes().unwrap();
            let seq = u64::from_le_bytes(v[..8].try_into().unwrap());
            let want = next.entry(ev.name().to_owned()).or_insert(0);
            assert_eq!(seq, *want, "seed {seed}: {} out of order", ev.name());
            *want += 1;
            if rng.random_ratio(1, 300) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        next
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut sent: HashMap<&str, u64> = HashMap::new();
    for _ in 0..N {
        let (name, big_pct) = MIX[rng.random_range(0..MIX.len())];
        let size = if rng.random_range(0..100) < big_pct { rng.random_range(1100..64 * 1024) } else { rng.random_range(8..900) };
        let seq = sent.entry(name).or_insert(0);
        let mut v = vec![0u8; size];
        v[..8].copy_from_slice(&seq.to_le_bytes());
        *seq += 1;
        assert_eq!(a.emit_bytes(name, &v).await.unwrap(), 1);
        if rng.random_ratio(1, 100) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(1..10))).await;
        }
    }
    let got = tokio::time::timeout(Duration::from_secs(60), consumer).await.expect("all arrive").expect("consumer ok");
    for (name, n) in sent {
        assert_eq!(got.get(name).copied().unwrap_or(0), n, "seed {seed}: all of {name}");
    }
    a.leave().await;
    b.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_name_order_holds_under_a_random_mix_of_sizes() {
    let _g = heavy().await;
    // A small queue makes the emitter wait often (the bulk stream busy),
    // the default one lets it run ahead.
    for (seed, limit) in [(16, 256 << 10), (1616, 4 << 20)] {
        eprintln!("seed {seed}, queue limit {limit}");
        per_name_order(seed, limit).await;
    }
}

/// A frame of the node's, as the switch test keeps it.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Event(String, u64),
    Resume(u64),
    Retire,
    Other,
}

/// Reads both of the node's streams on `conn` (after `open` turns true)
/// until they end; returns (main, express) frames.
fn collect_streams(conn: quinn::Connection, open: watch::Receiver<bool>) -> tokio::task::JoinHandle<[Vec<Seen>; 2]> {
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let mut recv = tokio::time::timeout(GUARD, conn.accept_uni()).await.expect("the node's streams").unwrap();
            let mut open = open.clone();
            tasks.push(tokio::spawn(async move {
                let _ = open.wait_for(|o| *o).await;
                let mut dec = FrameDecoder::new(1 << 20);
                let mut seen = Vec::new();
                loop {
                    while let Some(body) = dec.next_frame().expect("the node speaks the protocol") {
                        seen.push(match wire::parse(&body).expect("a frame") {
                            Frame::Event { name, payload } => {
                                Seen::Event(name.to_owned(), u64::from_le_bytes(payload[payload.len() - 8..].try_into().unwrap()))
                            }
                            Frame::Resume { after } => Seen::Resume(after),
                            Frame::Retire => Seen::Retire,
                            _ => Seen::Other,
                        });
                    }
                    match tokio::time::timeout(GUARD, recv.read_chunk(256 * 1024, true)).await.expect("the node's stream moves") {
                        Ok(Some(c)) => dec.push(c.bytes),
                        _ => return seen,
                    }
                }
            }));
        }
        let express = tasks.pop().unwrap().await.unwrap();
        let main = tasks.pop().unwrap().await.unwrap();
        [main, express]
    })
}

/// The numbers of `name`'s events in `frames`, in order.
fn numbers(frames: &[Seen], name: &str) -> Vec<u64> {
    frames.iter().filter_map(|f| if let Seen::Event(n, i) = f { (n == name).then_some(*i) } else { None }).collect()
}

/// A connection switch while both lanes have events queued and in flight:
/// the node moves its queue to the kept connection, each stream of the
/// retired one ends with a retire, each stream of the kept one starts with
/// a resume counting that lane's events on the retired one, and every
/// name's events are complete and in order across the two connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_moves_both_lanes_in_order() {
    let _g = heavy().await;
    const SMALL: u64 = 3000;
    const BIG: usize = 20 * 1024;
    let a = node_named("switcher", None, |_| {}).await;
    let ep = client_endpoint(valid_client_config("twice"));
    // Both connections make the same claim: the node's certificate check
    // passes (name "twice") and the duplicate rule applies.
    let id = Claim::fresh("twice");
    let (open1_tx, open1) = watch::channel(false);
    let c1 = connect_to_node(&ep, &a).await;
    let got1 = collect_streams(c1.clone(), open1);
    let mut s1 = send_hello_as(&c1, id, 1).await;
    let subs = ["s", "b"].iter().enumerate().map(|(i, n)| WireSub { id: i as u64 + 1, selector: (*n).into(), spy: false }).collect();
    s1.write_chunk(frame(&Frame::Subscribe(subs))).await.unwrap();
    wait_listeners(&a, "s", 1).await;
    wait_listeners(&a, "b", 1).await;

    // Small "s" events, and a big "b" after every third; nobody reads yet,
    // so the emitter soon waits with both lanes queued.
    let emitted = Arc::new(AtomicUsize::new(0));
    let (e, a2) = (emitted.clone(), a.clone());
    let emitter = tokio::spawn(async move {
        let mut big = 0u64;
        for i in 0..SMALL {
            assert_eq!(a2.emit_bytes("s", &i.to_le_bytes()).await.unwrap(), 1);
            if i % 3 == 0 {
                let mut v = vec![7u8; BIG];
                v[BIG - 8..].copy_from_slice(&big.to_le_bytes());
                assert_eq!(a2.emit_bytes("b", &v).await.unwrap(), 1);
                big += 1;
            }
            e.fetch_add(1, Ordering::SeqCst);
        }
        big
    });
    let stalled = settle(&emitted, Duration::from_millis(300)).await;
    assert!(stalled < SMALL as usize, "the emitter never waited");

    // The later dial: the node keeps it and moves its queue there.
    let c2 = connect_to_node(&ep, &a).await;
    let (open2_tx, open2) = watch::channel(true);
    let got2 = collect_streams(c2.clone(), open2);
    let _s2 = send_hello_as(&c2, id, 2).await;
    // Our side of the retired one ends too, as a real node's would; then read.
    s1.write_chunk(frame(&Frame::Retire)).await.unwrap();
    s1.finish().unwrap();
    open1_tx.send_replace(true);
    let bigs = tokio::time::timeout(Duration::from_secs(60), emitter).await.expect("the emitter finishes").unwrap();
    let [main1, express1] = tokio::time::timeout(GUARD, got1).await.expect("the retired streams end").unwrap();
    a.leave().await;
    let [main2, express2] = tokio::time::timeout(GUARD, got2).await.expect("the kept streams end").unwrap();
    drop(open2_tx);

    assert_eq!(main1.last(), Some(&Seen::Retire), "the retired main stream ends with a retire");
    assert_eq!(express1.last(), Some(&Seen::Retire), "the retired express stream ends with a retire");
    let (b1, s1n) = (numbers(&main1, "b"), numbers(&express1, "s"));
    eprintln!(
        "before the switch: {} small, {} big; after: {} small, {} big",
        s1n.len(),
        b1.len(),
        numbers(&express2, "s").len(),
        numbers(&main2, "b").len()
    );
    assert!(!b1.is_empty() && !s1n.is_empty(), "both lanes had events on the retired connection");
    // Each lane of the kept connection resumes after the retired one's count.
    assert_eq!(
        main2.iter().find(|f| matches!(f, Seen::Resume(_))),
        Some(&Seen::Resume(b1.len() as u64)),
        "{:?}",
        &main2[..3.min(main2.len())]
    );
    assert_eq!(express2.iter().find(|f| matches!(f, Seen::Resume(_))), Some(&Seen::Resume(s1n.len() as u64)));
    let all_b: Vec<u64> = b1.iter().chain(numbers(&main2, "b").iter()).copied().collect();
    let all_s: Vec<u64> = s1n.iter().chain(numbers(&express2, "s").iter()).copied().collect();
    assert_eq!(all_b, (0..bigs).collect::<Vec<_>>(), "big events complete and in order across the switch");
    assert_eq!(all_s, (0..SMALL).collect::<Vec<_>>(), "small events complete and in order across the switch");
    assert!(numbers(&main1, "s").is_empty() && numbers(&express1, "b").is_empty(), "each name kept to its lane");
    ep.close(0u32.into(), b"");
}
