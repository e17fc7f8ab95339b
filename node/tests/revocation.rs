//! Issue 15: revocation over real QUIC on loopback. A list signed with the
//! hood key, applied with `Bus::set_revocations`, cuts a member out within
//! a second, and it can neither dial back in nor be dialled; older lists and
//! other hoods' lists are refused.

mod common;

use std::time::{Duration, Instant};

use common::*;
use partybus::pki::revocation::{revoke, RevokeTarget};
use partybus::pki::{RevocationError, RevocationList};
use partybus::{Bus, NodeId};

fn ids(bus: &Bus) -> Vec<NodeId> {
    let mut v: Vec<NodeId> = bus.neighbours().into_iter().map(|n| n.id).collect();
    v.sort();
    v
}

/// Revokes peer `name` of the test hood (the hood's `t.revoked` grows).
fn revoke_peer(name: &str) -> RevocationList {
    let h = hood();
    let (cert, _) = h.peer_files(name);
    revoke(HOOD, h.dir(), RevokeTarget::Cert(cert)).expect("revoke").list
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_member_is_cut_out_at_once_and_stays_out() {
    let _heavy = heavy().await;
    let a = node_named("ra", None, |_| {}).await;
    let b = node_named("rb", Some(a.port()), |_| {}).await;
    let m = node_named("rm", Some(a.port()), |_| {}).await;
    for n in [&a, &b, &m] {
        wait_neighbours(n, 2).await;
    }

    // The list revokes rm; every node but rm applies it (as a reload would).
    let list = revoke_peer("rm");
    let applied = Instant::now();
    a.set_revocations(&list).expect("a applies the list");
    b.set_revocations(&list).expect("b applies the list");
    assert_eq!(a.revocation_sequence(), list.sequence());
    let cut = wait_until(|| m.neighbours().is_empty() && ids(&a) == vec![b.id()] && ids(&b) == vec![a.id()], GUARD).await;
    let took = applied.elapsed();
    assert!(cut, "rm still connected: a {:?} b {:?} m {:?}", ids(&a), ids(&b), ids(&m));
    assert!(took < Duration::from_secs(1), "cut out after {took:?}");

    // It dials us: rm re-dials a and b (static discovery, backoff from
    // 200 ms) and every handshake is refused by their server verifiers.
    let accepts = a.conn_stats().accepts;
    let tried = wait_until(|| a.conn_stats().accepts >= accepts + 2, GUARD).await;
    assert!(tried, "rm never dialled a again ({} accepts)", a.conn_stats().accepts);
    // We dial it: a's client verifier refuses rm's certificate.
    let dials = a.conn_stats().dials;
    a.connect(m.local_addr());
    b.connect(m.local_addr());
    assert!(wait_until(|| a.conn_stats().dials > dials, GUARD).await, "a did not dial rm");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(m.neighbours().is_empty(), "rm got back in: {:?}", ids(&m));
    assert_eq!(ids(&a), vec![b.id()]);
    assert_eq!(ids(&b), vec![a.id()]);
    // The metrics say what happened.
    let text = a.metrics_text();
    let value = |sample: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(&format!("{sample} "))).unwrap_or_else(|| panic!("no {sample} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("partybus_handshakes_total{direction=\"in\",result=\"revoked\"}") >= 1.0, "{text}");
    assert!(value("partybus_handshakes_total{direction=\"out\",result=\"revoked\"}") >= 1.0, "{text}");
    assert_eq!(value("partybus_disconnects_total{reason=\"revoked\"}"), 1.0);
    assert_eq!(value("partybus_revocation_sequence"), list.sequence() as f64);
    assert_eq!(value("partybus_revoked_certificates"), list.len() as f64);

    // The same list again is harmless; an older one is refused.
    a.set_revocations(&list).expect("the same list again");
    let newer = revoke_peer("someone-else");
    a.set_revocations(&newer).expect("a newer list");
    let e = a.set_revocations(&list).unwrap_err();
    assert!(matches!(e, RevocationError::Older { .. }), "{e}");
    assert_eq!(a.revocation_sequence(), newer.sequence());
    // Another hood's list (even one that names no member of ours) is refused.
    let other = partybus::pki::TempHood::new("other", 30).unwrap();
    let stranger = other.peer("x").unwrap();
    let theirs = revoke("other", other.dir(), RevokeTarget::Cert(stranger.cert)).unwrap().list;
    let e = a.set_revocations(&theirs).unwrap_err();
    assert!(matches!(e, RevocationError::OtherHood { .. }), "{e}");

    for n in [m, b, a] {
        n.leave().await;
    }
}

/// A node started with the list refuses the revoked member from the first
/// handshake on, whoever dials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_given_at_start_refuses_both_directions() {
    let _heavy = heavy().await;
    let list = revoke_peer("sm");
    let a = node_named("sa", None, |c| c.revoked = Some(list.clone())).await;
    let m = node_named("sm", Some(a.port()), |_| {}).await;
    assert!(wait_until(|| a.conn_stats().accepts >= 1, GUARD).await, "sm never dialled");
    a.connect(m.local_addr());
    assert!(wait_until(|| a.conn_stats().dials >= 1, GUARD).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(a.neighbours().is_empty() && m.neighbours().is_empty(), "a {:?} m {:?}", ids(&a), ids(&m));
    assert_eq!(a.conn_stats().accepts_ok + a.conn_stats().dials_ok, 0, "{:?}", a.conn_stats());
    // A member not on the list gets in.
    let b = node_named("sb", Some(a.port()), |_| {}).await;
    wait_neighbours(&a, 1).await;
    assert_eq!(ids(&a), vec![b.id()]);
    for n in [m, b, a] {
        n.leave().await;
    }
}

/// A list applied on one node reaches the others through the mesh (each
/// passes a newer list on once), and a node that joins later gets it from
/// its first neighbour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_applied_on_one_node_spreads_through_the_hood() {
    let _heavy = heavy().await;
    let a = node_named("pa", None, |_| {}).await;
    let b = node_named("pb", Some(a.port()), |_| {}).await;
    let m = node_named("pm", Some(a.port()), |_| {}).await;
    for n in [&a, &b, &m] {
        wait_neighbours(n, 2).await;
    }
    let list = revoke_peer("pm");
    a.set_revocations(&list).expect("a applies the list");
    // b never had the list applied: it learns it from a and cuts pm out too.
    let spread = wait_until(|| b.revocation_sequence() == list.sequence() && m.neighbours().is_empty(), GUARD).await;
    assert!(spread, "b at sequence {}, pm's neighbours {:?}", b.revocation_sequence(), ids(&m));
    assert_eq!(ids(&b), vec![a.id()]);
    // The revoked node was not sent the list.
    assert_eq!(m.revocation_sequence(), 0);
    // A later member hears it from its first neighbour.
    let c = node_named("pc", Some(b.port()), |_| {}).await;
    wait_neighbours(&c, 2).await;
    assert!(wait_until(|| c.revocation_sequence() == list.sequence(), GUARD).await, "pc at {}", c.revocation_sequence());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(m.neighbours().is_empty(), "pm got in through pc: {:?}", ids(&m));
    for n in [m, c, b, a] {
        n.leave().await;
    }
}

/// A member that sends a revocation list the hood's key did not sign (here:
/// a real list with one byte changed) breaks the protocol: it is
/// disconnected, and the list is not applied. An older list is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_list_from_a_neighbour_is_refused_and_disconnects_it() {
    use partybus::__private::wire::{self, close, Frame};
    let _heavy = heavy().await;
    let a = node_named("fa", None, |_| {}).await;
    let list = revoke_peer("fa-victim");
    let mut forged = list.as_der().to_vec();
    forged[50] ^= 1; // the issued-at time: the signature no longer matches
                     // More recent than anything a has: only the signature check refuses it.
    forged[37..45].copy_from_slice(&u64::MAX.to_be_bytes());

    let ep = client_endpoint(valid_client_config("fa-rogue"));
    let conn = connect_to_node(&ep, &a).await;
    let mut s = send_hello(&conn, wire::PROTOCOL_VERSION, "fa-rogue").await;
    assert!(wait_until(|| a.neighbours().len() == 1, GUARD).await, "the rogue is a neighbour first");
    s.write_all(&frame(&Frame::Revocations(&forged))).await.unwrap();
    let e = closed_within(&conn, GUARD).await.expect("a forged list closes the connection");
    assert_eq!(app_code(&e), Some(close::PROTOCOL), "{e}");
    assert_eq!(a.revocation_sequence(), 0, "the forged list was applied");
    ep.close(0u32.into(), b"");
    a.leave().await;
}
