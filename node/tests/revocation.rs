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
