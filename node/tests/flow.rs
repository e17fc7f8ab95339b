//! Issue 3, flow: ordering and completeness at volume, big events,
//! backpressure (block) and the drop policy.

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use partybus::FullPolicy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_thousand_small_events_arrive_in_order() {
    let _g = heavy().await;
    const N: u64 = 100_000;
    let (a, b) = pair(|_| {}, |_| {}).await;
    // Sequence numbers start at 1; 0 = none yet; u64::MAX = out of order.
    let last = Arc::new(AtomicU64::new(0));
    let count = Arc::new(AtomicU64::new(0));
    let (l, c) = (last.clone(), count.clone());
    let _h = b
        .on("seq", move |ev| {
            let n: u64 = ev.decode().unwrap();
            let prev = l.load(Ordering::Relaxed);
            if prev != u64::MAX {
                l.store(if n > prev { n } else { u64::MAX }, Ordering::Relaxed);
            }
            c.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
    wait_listeners(&a, "seq", 1).await;
    let mut reached = 0;
    for i in 1..=N {
        reached += a.emit("seq", &i).await.unwrap();
    }
    assert_eq!(reached as u64, N);
    let ok = wait_until(|| count.load(Ordering::Relaxed) >= N, Duration::from_secs(60)).await;
    assert!(ok, "received {} of {N}", count.load(Ordering::Relaxed));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(count.load(Ordering::Relaxed), N, "no duplicates");
    assert_eq!(last.load(Ordering::Relaxed), N, "strictly increasing, ending at N (u64::MAX = out of order)");
    a.leave().await;
    b.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_events_of_one_mib_arrive_whole() {
    let _g = heavy().await;
    const N: usize = 100;
    const SIZE: usize = 1 << 20;
    let (a, b) = pair(|_| {}, |_| {}).await;
    let mut sub = b.subscribe("big").unwrap();
    wait_listeners(&a, "big", 1).await;
    let reader = tokio::spawn(async move {
        for i in 0..N {
            let ev = tokio::time::timeout(GUARD, sub.recv()).await.expect("next big event").expect("open");
            let v = ev.bytes().unwrap();
            assert_eq!(v.len(), SIZE, "event {i}");
            assert_eq!(&v[..8], &(i as u64).to_le_bytes(), "event {i} in order");
            assert!(v[8..].iter().all(|&x| x == (i % 251) as u8), "event {i} intact");
        }
        sub
    });
    for i in 0..N {
        let mut v = vec![(i % 251) as u8; SIZE];
        v[..8].copy_from_slice(&(i as u64).to_le_bytes());
        assert_eq!(a.emit_bytes("big", &v).await.unwrap(), 1);
    }
    let mut sub = tokio::time::timeout(Duration::from_secs(60), reader).await.expect("all arrive").expect("reader ok");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(sub.try_next_none(), "no extra events");
    // Peers on one host use large packets from the start (partybus::tls::loopback_mtu):
    // 100 MiB went by in far fewer datagrams than 1452-byte packets would take.
    let path = a.path(b.id()).expect("b is a's neighbour");
    assert_eq!(path.mtu, partybus::__private::tls::loopback_mtu(), "{path:?}");
    if std::fs::read_to_string("/sys/class/net/lo/mtu").is_ok_and(|m| m.trim() == "65536") {
        assert!(path.mtu > 6000, "{path:?}");
        let bytes = (N * SIZE) as u64;
        assert!(path.sent_packets < bytes / 6000 + 1000, "{path:?}");
    }
    a.leave().await;
    b.leave().await;
}

trait TryNext {
    fn try_next_none(&mut self) -> bool;
}
impl TryNext for partybus::Subscription {
    fn try_next_none(&mut self) -> bool {
        use futures_util::FutureExt;
        self.recv().now_or_never().is_none()
    }
}

/// Emits `n` events of `size` bytes from a task; returns (emitted so far, sum of counts, handle).
fn spawn_emitter(a: partybus::Bus, n: usize, size: usize) -> (Arc<AtomicUsize>, Arc<AtomicUsize>, tokio::task::JoinHandle<partybus::Bus>) {
    let emitted = Arc::new(AtomicUsize::new(0));
    let reached = Arc::new(AtomicUsize::new(0));
    let (e, r) = (emitted.clone(), reached.clone());
    let h = tokio::spawn(async move {
        for i in 0..n {
            let mut v = vec![0u8; size];
            v[..8].copy_from_slice(&(i as u64).to_le_bytes());
            r.fetch_add(a.emit_bytes("bp", &v).await.unwrap(), Ordering::SeqCst);
            e.fetch_add(1, Ordering::SeqCst);
        }
        a
    });
    (emitted, reached, h)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_blocks_the_emitter_and_loses_nothing() {
    let _g = heavy().await;
    const N: usize = 20_000;
    const SIZE: usize = 1024;
    let (a, b) = pair(
        |c| {
            c.queue_limit = 64 << 10;
            c.full_policy = FullPolicy::Block;
        },
        |_| {},
    )
    .await;
    let mut sub = b.subscribe("bp").unwrap();
    wait_listeners(&a, "bp", 1).await;

    // The subscriber does not read at first: every buffer on the way fills
    // (stream channel, dispatcher, QUIC windows, the 64 KiB send queue) and
    // then the emitter must wait instead of queueing 20 MB.
    let (emitted, reached, h) = spawn_emitter(a, N, SIZE);
    let stalled_at = settle(&emitted, Duration::from_millis(1000)).await;
    assert!(stalled_at < N, "the emitter never blocked: {stalled_at} of {N} emitted with nobody reading");
    eprintln!("emitter blocked after {stalled_at} events of {SIZE} bytes");

    // A slow reader now: everything arrives, in order.
    for i in 0..N {
        let ev = tokio::time::timeout(GUARD, sub.recv()).await.expect("next event").expect("open");
        let v = ev.bytes().unwrap();
        assert_eq!(u64::from_le_bytes(v[..8].try_into().unwrap()), i as u64);
        if i % 200 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let a = tokio::time::timeout(GUARD, h).await.expect("emitter done").unwrap();
    assert_eq!(emitted.load(Ordering::SeqCst), N);
    assert_eq!(reached.load(Ordering::SeqCst), N, "Block never drops: every emit counted");
    assert_eq!(a.dropped(), 0);
    a.leave().await;
    b.leave().await;
}

/// A pair whose emitter `a` has a 16 KiB send queue and `policy` when it is full.
async fn small_queue_pair(policy: FullPolicy) -> (partybus::Bus, partybus::Bus) {
    pair(
        |c| {
            c.queue_limit = 16 << 10;
            c.full_policy = policy;
        },
        |_| {},
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drop_policy_drops_and_counts_instead_of_blocking() {
    let _g = heavy().await;
    const N: usize = 20_000;
    const SIZE: usize = 1024;
    let (a, b) = small_queue_pair(FullPolicy::Drop).await;
    let mut sub = b.subscribe("bp").unwrap();
    wait_listeners(&a, "bp", 1).await;
    let a2 = a.clone();
    let (emitted, reached, h) = spawn_emitter(a2, N, SIZE);
    // Nobody reads, yet the emitter finishes.
    tokio::time::timeout(Duration::from_secs(60), h).await.expect("a Drop emitter never blocks").unwrap();
    assert_eq!(emitted.load(Ordering::SeqCst), N);
    let reached = reached.load(Ordering::SeqCst);
    let dropped = a.dropped() as usize;
    assert!(dropped > 0, "nothing dropped with nobody reading");
    assert_eq!(reached + dropped, N, "emit counts exclude dropped events");
    assert_eq!(a.neighbours()[0].dropped as usize, dropped);

    // Exactly the counted events arrive, in order, with gaps.
    let seen = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..reached {
        let ev = tokio::time::timeout(GUARD, sub.recv()).await.expect("counted event arrives").expect("open");
        let v = ev.bytes().unwrap();
        seen.lock().unwrap().push(u64::from_le_bytes(v[..8].try_into().unwrap()));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sub.try_next_none(), "more events than counted");
    let in_order = seen.lock().unwrap().windows(2).all(|w| w[0] < w[1]);
    assert!(in_order, "in order");
    a.leave().await;
    b.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disconnect_policy_lets_go_of_a_stuck_neighbour() {
    let _g = heavy().await;
    const N: usize = 20_000;
    const SIZE: usize = 1024;
    let (a, b) = small_queue_pair(FullPolicy::Disconnect(Duration::from_millis(300))).await;
    let mut b_events = b.neighbour_events();
    // Subscribed, not read for now: b stops taking data once its buffers
    // are full, and a's queue towards b stays full.
    let mut sub = b.subscribe("bp").unwrap();
    wait_listeners(&a, "bp", 1).await;
    let (emitted, reached, h) = spawn_emitter(a.clone(), N, SIZE);
    tokio::time::timeout(Duration::from_secs(60), h).await.expect("a Disconnect emitter does not wait for ever").unwrap();
    assert_eq!(emitted.load(Ordering::SeqCst), N);
    let reached = reached.load(Ordering::SeqCst);
    assert!(reached < N, "the event that waited for the stuck neighbour is not counted: {reached}");
    // b's subscriber wakes up: b takes what it had, then learns that a
    // closed the connection, and why.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), sub.recv()).await {} });
    let reason = loop {
        match tokio::time::timeout(GUARD, b_events.recv()).await {
            Ok(Ok(partybus::NeighbourEvent::Lost { reason, .. })) => break reason,
            Ok(Ok(_)) => continue,
            other => panic!("b never lost a: {other:?}"),
        }
    };
    assert!(reason.contains("stuck"), "reason: {reason}");
    drain.abort();
    a.leave().await;
    b.leave().await;
}
