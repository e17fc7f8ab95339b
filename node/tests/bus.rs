//! Issue 3: the EventEmitter-like API across real QUIC connections:
//! wildcards, spies, counts, listeners, observers, removal, streams,
//! panics, limits, names and typed payloads.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use partybus::{Bus, EmitError, Event, ListenOptions, NameError, NeighbourEvent, Timestamp};
use serde::{Deserialize, Serialize};

type Log = Arc<Mutex<Vec<String>>>;

/// A handler that records event names.
fn recorder() -> (Log, impl Fn(&Event) + Send + Sync + 'static) {
    let log: Log = Arc::default();
    let l = log.clone();
    (log, move |ev: &Event| l.lock().unwrap().push(ev.name().to_owned()))
}

fn names(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

async fn wait_len(log: &Log, n: usize) {
    let ok = wait_until(|| log.lock().unwrap().len() >= n, GUARD).await;
    assert!(ok, "got {:?}, wanted {n} events", names(log));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_match_across_the_network() {
    let (a, b) = pair(|_| {}, |_| {}).await;
    let (plus, h1) = recorder();
    let (hash, h2) = recorder();
    let (sys, h3) = recorder();
    let (foo, h4) = recorder();
    let _l1 = b.on("a.+", h1).unwrap();
    let _l2 = b.on("#", h2).unwrap();
    let _l3 = b.on("$SYS.+", h3).unwrap();
    let _l4 = b.on("foo+", h4).unwrap();
    wait_listeners(&a, "foobar", 2).await; // the last subscription arrived, so all did

    assert_eq!(a.listener_count("a.b").unwrap(), 2);
    assert_eq!(a.listener_count("a.b.c").unwrap(), 1);
    assert_eq!(a.listener_count("$SYS.up").unwrap(), 1);
    let sent = [("a.b", 2), ("a.b.c", 1), ("$SYS.up", 1), ("x", 1), ("foobar", 2), ("foo", 2), ("$other", 0)];
    for (name, want) in sent {
        assert_eq!(a.emit(name, &0u8).await.unwrap(), want, "{name}");
    }
    wait_len(&hash, 5).await;
    wait_len(&foo, 2).await;
    wait_len(&plus, 1).await;
    wait_len(&sys, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(names(&plus), ["a.b"]);
    assert_eq!(names(&hash), ["a.b", "a.b.c", "x", "foobar", "foo"]);
    assert_eq!(names(&sys), ["$SYS.up"]);
    assert_eq!(names(&foo), ["foobar", "foo"]);
    a.leave().await;
    b.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spies_are_called_but_never_counted() {
    let (a, b) = pair(|_| {}, |_| {}).await;
    let mut obs = a.observe_listener_count("s").unwrap();
    let (local_spy, h0) = recorder();
    let _ls = a.on_with("s", ListenOptions::spy(), h0).unwrap();
    let (remote_spy, h1) = recorder();
    let _rs = b.on_with("s", ListenOptions::spy(), h1).unwrap();
    let mut spy_stream = b.subscribe_with("#", ListenOptions { spy: true }).unwrap();
    let (counted, h2) = recorder();
    let counted_handle = b.on("s", h2).unwrap();
    tokio::time::timeout(GUARD, obs.wait_for(|c| *c == 1)).await.unwrap().unwrap();

    assert_eq!(a.listener_count("s").unwrap(), 1);
    let l = a.listeners("s").unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].name, "n1");
    assert!(!l[0].local);
    assert_eq!(b.listener_count("s").unwrap(), 1, "b counts its own non-spy only");
    assert_eq!(a.emit("s", "one").await.unwrap(), 1);
    wait_len(&counted, 1).await; // (emit's count is not an end-to-end ack)

    // Without the counted listener: 0 reached, spies still called.
    counted_handle.remove();
    tokio::time::timeout(GUARD, obs.wait_for(|c| *c == 0)).await.unwrap().unwrap();
    assert_eq!(a.listener_count("s").unwrap(), 0);
    assert!(a.listeners("s").unwrap().is_empty());
    assert_eq!(a.emit("s", "two").await.unwrap(), 0);

    wait_len(&local_spy, 2).await;
    wait_len(&remote_spy, 2).await;
    wait_len(&counted, 1).await;
    let ev = tokio::time::timeout(GUARD, spy_stream.recv()).await.unwrap().unwrap();
    assert_eq!(ev.decode::<String>().unwrap(), "one");
    let ev = tokio::time::timeout(GUARD, spy_stream.recv()).await.unwrap().unwrap();
    assert_eq!(ev.decode::<String>().unwrap(), "two");
    assert_eq!(ev.source().id, a.id());
    assert_eq!(ev.source().name, "n0");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(names(&counted).len(), 1);
    assert_eq!(*obs.borrow(), 0);
    a.leave().await;
    b.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_counts_local_and_remote_listeners_and_listeners_lists_them() {
    let a = node(0, None, |_| {}).await;
    let b = node(1, Some(a.port()), |_| {}).await;
    let c = node(2, Some(a.port()), |_| {}).await;
    for n in [&a, &b, &c] {
        wait_neighbours(n, 2).await;
    }
    let (la, ha) = recorder();
    let (la2, ha2) = recorder();
    let (lb, hb) = recorder();
    let (lc, hc) = recorder();
    let _l1 = a.on("e", ha).unwrap();
    let _l2 = a.on("+", ha2).unwrap();
    let _l3 = b.on("e", hb).unwrap();
    let _l4 = c.on("#", hc).unwrap();
    for n in [&a, &b, &c] {
        wait_listeners(n, "e", 4).await;
    }
    assert_eq!(a.emit("e", &1).await.unwrap(), 4);
    assert_eq!(b.emit("e", &2).await.unwrap(), 4);
    assert_eq!(c.emit("e", &3).await.unwrap(), 4);
    for l in [&la, &la2, &lb, &lc] {
        wait_len(l, 3).await;
    }

    let mut who: Vec<(String, bool)> = a.listeners("e").unwrap().into_iter().map(|p| (p.name, p.local)).collect();
    who.sort();
    assert_eq!(who, [("n0".to_owned(), true), ("n0".to_owned(), true), ("n1".to_owned(), false), ("n2".to_owned(), false)]);
    let from_b = b.listeners("e").unwrap();
    assert_eq!(from_b.iter().filter(|p| p.local).count(), 1);
    assert!(from_b.iter().filter(|p| p.name == "n0").all(|p| p.id == a.id() && p.addr.is_some()));
    // A dotted name: c's `#` matches it, a's `+` does not.
    assert_eq!(a.emit("dotted.name", &0).await.unwrap(), 1);
    assert_eq!(a.emit("$sys", &0).await.unwrap(), 1, "+ matches a $-name (any run without a dot); # does not");
    for n in [&a, &b, &c] {
        n.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_listener_count_follows_subscribe_unsubscribe_loss_and_rejoin() {
    let a = node(0, None, |_| {}).await;
    let mut obs = a.observe_listener_count("o").unwrap();
    assert_eq!(*obs.borrow(), 0);
    let b = node(1, Some(a.port()), |_| {}).await;
    let c = node(2, Some(a.port()), |_| {}).await;
    wait_neighbours(&a, 2).await;
    let step = |obs: &mut tokio::sync::watch::Receiver<usize>, n: usize| {
        let mut obs = obs.clone();
        async move {
            tokio::time::timeout(GUARD, obs.wait_for(|c| *c == n)).await.unwrap_or_else(|_| panic!("count never became {n}")).unwrap();
        }
    };
    let hb = b.on("o", |_| {}).unwrap(); // remote subscribe
    step(&mut obs, 1).await;
    let _ha = a.on("o", |_| {}).unwrap(); // local subscribe
    step(&mut obs, 2).await;
    drop(hb); // remote unsubscribe
    step(&mut obs, 1).await;
    let _hc = c.on("+", |_| {}).unwrap();
    step(&mut obs, 2).await;
    c.leave().await; // neighbour lost
    step(&mut obs, 1).await;
    let c2 = node(2, Some(a.port()), |_| {}).await; // a new node, same name
    let _hc2 = c2.on("o", |_| {}).unwrap();
    let _hc3 = c2.on("#", |_| {}).unwrap();
    step(&mut obs, 3).await;
    assert_eq!(a.listener_count("o").unwrap(), 3);
    // A second observer starts at the current value.
    assert_eq!(*a.observe_listener_count("o").unwrap().borrow(), 3);
    for n in [&a, &b, &c2] {
        n.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_listener_remove_all_and_handle_drop_unsubscribe_remotely() {
    let (a, b) = pair(|_| {}, |_| {}).await;
    let h1 = a.on("r", |_| {}).unwrap();
    let h2 = a.on("r", |_| {}).unwrap();
    let h3 = a.on("r.+", |_| {}).unwrap();
    let h4 = a.on("r.+", |_| {}).unwrap();
    let h5 = a.on("#", |_| {}).unwrap();
    wait_listeners(&b, "r", 3).await;
    wait_listeners(&b, "r.x", 3).await;

    let id1 = h1.detach();
    assert!(a.remove_listener(id1));
    assert!(!a.remove_listener(id1), "second removal finds nothing");
    wait_listeners(&b, "r", 2).await;

    assert_eq!(a.remove_all_listeners(Some("r.+")), 2);
    assert_eq!(a.remove_all_listeners(Some("r.+")), 0);
    assert_eq!(a.remove_all_listeners(Some("nothing")), 0);
    wait_listeners(&b, "r.x", 1).await;
    drop(h3); // already removed: dropping is harmless
    drop(h4);

    drop(h2);
    wait_listeners(&b, "r", 1).await;
    let _id5 = h5.id();
    let h6 = a.on("z", |_| {}).unwrap();
    assert_eq!(a.remove_all_listeners(None), 2);
    wait_listeners(&b, "r", 0).await;
    wait_listeners(&b, "z", 0).await;
    assert_eq!(b.emit("r", &0).await.unwrap(), 0);
    drop(h5);
    drop(h6);
    a.leave().await;
    b.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_stream_form_delivers_in_order_and_ends_on_leave() {
    let (a, b) = pair(|_| {}, |_| {}).await;
    let mut sub = b.subscribe("st.#").unwrap();
    assert!(sub.id() > 0);
    wait_listeners(&a, "st.x", 1).await;
    for i in 0..10u32 {
        assert_eq!(a.emit(&format!("st.{i}"), &i).await.unwrap(), 1);
    }
    for i in 0..10u32 {
        let ev = tokio::time::timeout(GUARD, sub.next()).await.unwrap().unwrap();
        assert_eq!(ev.name(), format!("st.{i}"));
        assert_eq!(ev.decode::<u32>().unwrap(), i);
        assert_eq!(ev.source().name, "n0");
    }
    // Dropping the stream removes the listener everywhere.
    let sub2 = b.subscribe("gone").unwrap();
    wait_listeners(&a, "gone", 1).await;
    drop(sub2);
    wait_listeners(&a, "gone", 0).await;

    b.leave().await;
    let end = tokio::time::timeout(GUARD, sub.recv()).await.expect("stream ends after leave");
    assert!(end.is_none());
    assert!(matches!(b.emit("st.x", &0).await, Err(EmitError::Left)));
    a.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_caught_and_the_bus_carries_on() {
    let (a, b) = pair(|_| {}, |_| {}).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let _bad = b
        .on("p", move |_| {
            c2.fetch_add(1, Ordering::SeqCst);
            panic!("handler exploded (expected by the test)");
        })
        .unwrap();
    let (good, h) = recorder();
    let _good = b.on("#", h).unwrap();
    wait_listeners(&a, "p", 2).await;
    for _ in 0..3 {
        assert_eq!(a.emit("p", &0).await.unwrap(), 2);
    }
    assert_eq!(a.emit("q", &0).await.unwrap(), 1);
    wait_len(&good, 4).await;
    assert_eq!(names(&good), ["p", "p", "p", "q"]);
    assert_eq!(calls.load(Ordering::SeqCst), 3, "the panicking handler stays registered");
    // A local emit on b reaches b's handlers too.
    assert_eq!(b.emit("p", &0).await.unwrap(), 2);
    wait_len(&good, 5).await;
    assert_eq!(b.neighbours().len(), 1);
    a.leave().await;
    b.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_events_are_refused_at_emit_and_on_receipt() {
    let (a, b) = pair(|c| c.max_event_size = 1000, |c| c.max_event_size = 4000).await;
    let _h = b.on("big", |_| {}).unwrap();
    wait_listeners(&a, "big", 1).await;
    let err = a.emit_bytes("big", &[0u8; 2000]).await.unwrap_err();
    match &err {
        EmitError::TooLarge { name, size, max } => {
            assert_eq!(name, "big");
            assert!(*size > 2000);
            assert_eq!(*max, 1000);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("max_event_size"), "{err}");
    assert_eq!(a.emit_bytes("big", &[0u8; 900]).await.unwrap(), 1);

    // A peer with a bigger limit sends something over ours: we disconnect it.
    let mut ev = a.neighbour_events();
    let _ha = a.on("huge", |_| {}).unwrap();
    wait_listeners(&b, "huge", 1).await;
    assert_eq!(b.emit_bytes("huge", &[1u8; 3000]).await.unwrap(), 1);
    let lost = loop {
        match next_neighbour_event(&mut ev, GUARD).await.expect("a drops b") {
            NeighbourEvent::Lost { reason, .. } => break reason,
            _ => continue,
        }
    };
    assert!(lost.contains("protocol error") && lost.contains("over the limit"), "{lost}");
    a.leave().await;
    b.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_and_selectors_are_errors_naming_the_char() {
    let a = node(0, None, |_| {}).await;
    let bad_char = |e: &NameError, want: char, pos: usize| match e {
        NameError::BadChar { ch, pos: p, .. } => {
            assert_eq!((*ch, *p), (want, pos), "{e}");
            assert!(e.to_string().contains(&format!("{want:?}")), "{e}");
        }
        other => panic!("expected BadChar {want:?}, got {other:?}"),
    };
    bad_char(&a.on("a b", |_| {}).err().unwrap(), ' ', 1);
    bad_char(&a.on("x/y", |_| {}).err().unwrap(), '/', 1);
    bad_char(&a.subscribe("é").err().unwrap(), 'é', 0);
    bad_char(&a.subscribe("a$").err().unwrap(), '$', 1);
    for (name, ch, pos) in [("a#", '#', 1), ("a+", '+', 1), ("a$b", '$', 1), ("ok.x*", '*', 4)] {
        match a.emit(name, &0).await {
            Err(EmitError::Name(e)) => bad_char(&e, ch, pos),
            other => panic!("{name}: {other:?}"),
        }
        bad_char(&a.listener_count(name).unwrap_err(), ch, pos);
        bad_char(&a.listeners(name).unwrap_err(), ch, pos);
        bad_char(&a.observe_listener_count(name).unwrap_err(), ch, pos);
    }
    assert!(matches!(a.emit("", &0).await, Err(EmitError::Name(NameError::Empty { .. }))));
    assert!(matches!(a.on("", |_| {}), Err(NameError::Empty { .. })));
    let long = "x".repeat(2000);
    assert!(matches!(a.emit(&long, &0).await, Err(EmitError::Name(NameError::TooLong { .. }))));
    // Valid oddities.
    let _ok = a.on("$SYS.#", |_| {}).unwrap();
    let _ok2 = a.on("a-b_c:d.+", |_| {}).unwrap();
    assert_eq!(a.emit("$SYS.x", &0).await.unwrap(), 1);
    a.leave().await;
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Beat {
    n: u32,
    sound: String,
    #[serde(with = "serde_bytes")]
    raw: Vec<u8>,
    at: Timestamp,
    tags: Vec<String>,
    gain: Option<f64>,
    nested: Inner,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Inner {
    when: Vec<Timestamp>,
    #[serde(with = "serde_bytes")]
    blob: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_payloads_with_bytes_and_timestamps_round_trip() {
    let (a, b) = pair(|_| {}, |_| {}).await;
    let got: Arc<Mutex<Vec<(Beat, serde_json::Value)>>> = Arc::default();
    let g = got.clone();
    let _h = b
        .on("beat", move |ev| {
            let beat: Beat = ev.decode().expect("decode");
            g.lock().unwrap().push((beat, ev.to_json().unwrap()));
        })
        .unwrap();
    let bytes_seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let bs = bytes_seen.clone();
    let _h2 = b.on("buf", move |ev| bs.lock().unwrap().push(ev.bytes().unwrap())).unwrap();
    wait_listeners(&a, "buf", 1).await;
    let at = std::time::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
    let beat = Beat {
        n: 7,
        sound: "utz".into(),
        raw: vec![0, 1, 255],
        at: Timestamp(at),
        tags: vec!["a".into(), "b".into()],
        gain: Some(0.5),
        nested: Inner { when: vec![Timestamp::now(), Timestamp(std::time::UNIX_EPOCH - Duration::new(5, 250))], blob: vec![9; 300] },
    };
    assert_eq!(a.emit("beat", &beat).await.unwrap(), 1);
    assert_eq!(a.emit_bytes("buf", &[1, 2, 3]).await.unwrap(), 1);
    assert!(wait_until(|| !got.lock().unwrap().is_empty() && !bytes_seen.lock().unwrap().is_empty(), GUARD).await);
    let (back, json) = got.lock().unwrap()[0].clone();
    assert_eq!(back, beat);
    assert_eq!(json["raw"]["$base64"], "AAH/");
    assert_eq!(json["at"]["$date"], "2023-11-14T22:13:20.123Z");
    assert_eq!(json["nested"]["blob"]["$base64"].as_str().unwrap().len(), 400);
    assert_eq!(bytes_seen.lock().unwrap()[0], vec![1, 2, 3]);
    a.leave().await;
    b.leave().await;
}

#[tokio::test(flavor = "current_thread")]
async fn emit_without_neighbours_reaches_local_listeners_only() {
    let a: Bus = node(0, None, |_| {}).await;
    let (l, h) = recorder();
    let _h = a.on("solo", h).unwrap();
    assert_eq!(a.emit("solo", &0).await.unwrap(), 1);
    wait_len(&l, 1).await;
    let ev_src = a.listeners("solo").unwrap();
    assert_eq!(ev_src.len(), 1);
    assert!(ev_src[0].local);
    assert_eq!(ev_src[0].id, a.id());
    a.leave().await;
}

/// `Bus::external_addrs` says which service (for port mappings: which
/// protocol) reported which address, and forgets one when it is withdrawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_addrs_name_the_protocol_that_mapped_them() {
    use partybus::discovery::FnDiscovery;
    use partybus::ExternalAddr;

    let pcp: std::net::SocketAddr = "203.0.113.7:4816".parse().unwrap();
    let pmp: std::net::SocketAddr = "198.51.100.9:30000".parse().unwrap();
    let (lose_tx, lose_rx) = tokio::sync::oneshot::channel::<()>();
    let mapper = FnDiscovery::new("mapper", move |_ctx, sink, mut stop| {
        Box::pin(async move {
            sink.external(pcp, "pcp");
            sink.external(pmp, "natpmp");
            let _ = lose_rx.await;
            sink.external_lost(pcp, "pcp");
            stop.stopped().await;
        })
    });
    let b = node_named("mapped", None, |c| c.discovery.push(Box::new(mapper))).await;
    let want =
        |v: &[(std::net::SocketAddr, &str)]| v.iter().map(|(a, s)| ExternalAddr { addr: *a, source: s.to_string() }).collect::<Vec<_>>();
    assert!(wait_until(|| b.external_addrs() == want(&[(pcp, "pcp"), (pmp, "natpmp")]), GUARD).await, "{:?}", b.external_addrs());
    lose_tx.send(()).unwrap();
    assert!(wait_until(|| b.external_addrs() == want(&[(pmp, "natpmp")]), GUARD).await, "{:?}", b.external_addrs());
    b.leave().await;
}
