//! A node's life: dropping every `Bus` handle without `leave()` still
//! leaves the hood (peers see a goodbye, the port is released); leave is
//! idempotent and concurrent calls all return once it is done.

mod common;

use std::time::Duration;

use common::*;
use partybus::NeighbourEvent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_bus_leaves_the_hood() {
    let (a, b) = pair(|_| {}, |_| {}).await;
    let mut events = b.neighbour_events();
    let port = a.port();
    let a2 = a.clone();
    drop(a);
    // One clone left: still a member.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.neighbours().len(), 1, "a clone still holds the node");
    drop(a2);
    let reason = loop {
        match next_neighbour_event(&mut events, GUARD).await {
            Some(NeighbourEvent::Lost { reason, .. }) => break reason,
            Some(_) => continue,
            None => panic!("b never saw a leave after the last handle was dropped"),
        }
    };
    assert_eq!(reason, "left", "a said goodbye");
    // The port is released once the leave is over.
    let freed = wait_until(|| std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok(), GUARD).await;
    assert!(freed, "port {port} still bound after the node left");
    b.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_leaves_all_wait_for_the_end() {
    let (a, b) = pair(|_| {}, |_| {}).await;
    let port = a.port();
    let (x, y) = (a.clone(), a.clone());
    let t = tokio::time::Instant::now();
    tokio::join!(x.leave(), y.leave(), a.leave());
    assert!(t.elapsed() < Duration::from_secs(8), "leave took {:?}", t.elapsed());
    // Every call returned after the end: the port is free (quinn's driver
    // task, not ours, closes the socket once it sees the endpoint dropped).
    let freed = wait_until(|| std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok(), Duration::from_secs(2)).await;
    assert!(freed, "port {port} still bound after leave returned");
    assert!(matches!(a.emit("x", &1).await, Err(partybus::EmitError::Left)));
    b.leave().await;
}
