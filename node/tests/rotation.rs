//! Certificate rotation through the library: `Bus::rotate_identity`, and
//! what `Bus::neighbour_stats` shows of it.

mod common;

use std::time::Duration;

use common::*;
use partybus::pki::Identity;
use partybus::{NeighbourEvent, RotateError};

/// A second certificate for peer `name` of the test hood (the hood key signs it).
fn new_identity(name: &str) -> (tempfile::TempDir, Identity) {
    let h = hood();
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(h.ca(), d.path().join(format!("{HOOD}.crt"))).unwrap();
    std::fs::copy(h.ca_key(), d.path().join(format!("{HOOD}.key"))).unwrap();
    let f = partybus::pki::create_peer(HOOD, name, d.path(), 30).unwrap();
    let id = Identity::load(&f.cert, &f.key, &h.hood).unwrap();
    (d, id)
}

fn cert_of(bus: &partybus::Bus, name: &str) -> Option<String> {
    bus.neighbour_stats().into_iter().find(|n| n.info.name == name).and_then(|n| n.cert_fingerprint)
}

#[tokio::test]
async fn a_rotated_identity_is_presented_in_new_handshakes_and_old_connections_stay() {
    let _g = heavy().await;
    let (a, b) = pair(|_| {}, |_| {}).await;
    let old = a.certificate().unwrap().fingerprint;
    assert_eq!(cert_of(&b, "n0").as_deref(), Some(old.as_str()));
    let mut b_events = b.neighbour_events();

    // Refused: another name, another hood. Nothing changes.
    let (_d1, other_name) = new_identity("n1");
    assert!(matches!(a.rotate_identity(other_name), Err(RotateError::OtherName { .. })));
    let other_hood = TestHood::new("u");
    assert!(matches!(a.rotate_identity(other_hood.peer("n0")), Err(RotateError::OtherHood { .. })));
    assert_eq!(a.certificate().unwrap().fingerprint, old);

    let (_d2, new) = new_identity("n0");
    let new_fp = partybus::pki::CertInfo::from_der(new.cert_der(), "new").unwrap().fingerprint;
    assert_ne!(new_fp, old);
    a.rotate_identity(new).unwrap();
    assert_eq!(a.certificate().unwrap().fingerprint, new_fp);

    // A node dialling a now sees the new certificate; a dialling out presents it too.
    let c = node(2, Some(a.port()), |_| {}).await;
    wait_neighbours(&c, 2).await;
    assert_eq!(cert_of(&c, "n0").as_deref(), Some(new_fp.as_str()), "c dialled a");
    let d = node(3, None, |_| {}).await;
    let mut d_events = d.neighbour_events();
    a.connect(std::net::SocketAddr::from((LOCALHOST, d.port())));
    // d knows nobody: its first connection to a is a's dial.
    loop {
        match next_neighbour_event(&mut d_events, GUARD).await.expect("d meets a") {
            NeighbourEvent::Found(n) if n.name == "n0" => {
                assert_eq!(n.direction, partybus::Direction::In, "a dialled d");
                break;
            }
            _ => continue,
        }
    }
    assert_eq!(cert_of(&d, "n0").as_deref(), Some(new_fp.as_str()), "a dialling presents the new certificate");
    // b keeps the connection it had (and the certificate it saw then).
    assert_eq!(cert_of(&b, "n0").as_deref(), Some(old.as_str()));
    while let Some(ev) = next_neighbour_event(&mut b_events, Duration::from_millis(300)).await {
        assert!(!matches!(&ev, NeighbourEvent::Lost { info, .. } if info.name == "n0"), "b lost a: {ev:?}");
    }
    for bus in [d, c, b, a] {
        bus.leave().await;
    }
}
