use super::*;
use crate::TempHood;

fn revoke_peer(t: &TempHood, name: &str) -> RevokeOutcome {
    let files = t.peer(name).unwrap();
    revoke(t.name(), t.dir(), RevokeTarget::Cert(files.cert)).unwrap()
}

#[test]
fn revoke_round_trip_and_sequence() {
    let t = TempHood::new("lab", 30).unwrap();
    let first = revoke_peer(&t, "alice");
    assert!(first.added);
    assert_eq!((first.list.sequence(), first.list.len()), (1, 1));
    assert_eq!(first.list.entries()[0].name, "alice");
    let second = revoke_peer(&t, "bob");
    assert_eq!((second.list.sequence(), second.list.len()), (2, 2));
    // Again: nothing changes.
    let again = revoke(t.name(), t.dir(), RevokeTarget::Fingerprint(second.fingerprint.to_uppercase())).unwrap();
    assert!(!again.added);
    assert_eq!(again.list.sequence(), 2);
    let loaded = RevocationList::load(&second.path, t.hood()).unwrap();
    assert_eq!(loaded, second.list);
    let alice = std::fs::read(t.path("lab.alice.crt")).unwrap();
    assert!(loaded.contains_cert(&crate::pemfile::cert_from_pem(&alice, "x").unwrap()));
    // By fingerprint, the name is found in the folder.
    let carol = t.peer("carol").unwrap();
    let info = crate::CertInfo::from_file(&carol.cert).unwrap();
    let third = revoke(t.name(), t.dir(), RevokeTarget::Fingerprint(info.fingerprint)).unwrap();
    assert_eq!(third.name, "carol");
    assert_eq!(third.list.sequence(), 3);
}

#[test]
fn every_truncation_and_tampering_is_refused() {
    let t = TempHood::new("lab", 30).unwrap();
    let out = revoke_peer(&t, "alice");
    let der = out.list.as_der().to_vec();
    for n in 0..der.len() {
        assert!(RevocationList::from_der(&der[..n], t.hood(), "x").is_err(), "truncated at {n}");
    }
    let mut longer = der.clone();
    longer.push(0);
    assert!(matches!(RevocationList::from_der(&longer, t.hood(), "x"), Err(RevocationError::Malformed { .. })));
    // Flipping any bit of the signed part breaks the signature (or the form).
    for i in 5..der.len() - 4 {
        let mut bad = der.clone();
        bad[i] ^= 0x01;
        assert!(RevocationList::from_der(&bad, t.hood(), "x").is_err(), "bit flip at {i}");
    }
    let mut v2 = der.clone();
    v2[4] = 2;
    assert!(matches!(RevocationList::from_der(&v2, t.hood(), "x"), Err(RevocationError::Version { version: 2, .. })));
}

#[test]
fn a_list_signed_by_another_hood_is_refused() {
    let ours = TempHood::new("lab", 30).unwrap();
    // The other hood has the same name, so only the key tells them apart.
    let other = TempHood::new("lab", 30).unwrap();
    let forged = revoke_peer(&other, "alice");
    let e = RevocationList::load(&forged.path, ours.hood()).unwrap_err();
    assert!(matches!(e, RevocationError::OtherHood { .. }), "{e}");
    // Same hood fingerprint written in, signed by the other key.
    let key =
        crate::key::LoadedKey::from_der(crate::pemfile::key_from_pem(&std::fs::read(other.path("lab.key")).unwrap(), "k").unwrap(), "k")
            .unwrap();
    let mut body = forged.list.as_der()[..HEADER + 33 + 5].to_vec();
    body[5..37].copy_from_slice(&hex::decode(ours.hood().fingerprint()).unwrap());
    let (scheme, sig) = crate::signature::sign(&*key.signer, &body).unwrap();
    body.extend_from_slice(&u16::from(scheme).to_be_bytes());
    body.extend_from_slice(&(sig.len() as u16).to_be_bytes());
    body.extend_from_slice(&sig);
    let e = RevocationList::from_der(&body, ours.hood(), "forged.revoked").unwrap_err();
    assert!(matches!(e, RevocationError::BadSignature { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("forged.revoked") && text.contains("partybus cert revoke lab"), "{text}");
}

#[test]
fn the_set_refuses_older_lists_and_other_hoods() {
    let t = TempHood::new("lab", 30).unwrap();
    let one = revoke_peer(&t, "alice").list;
    let two = revoke_peer(&t, "bob").list;
    let set = RevokedSet::new(t.hood());
    assert!(set.is_empty() && set.sequence() == 0);
    set.apply(&two, "two").unwrap();
    assert_eq!((set.sequence(), set.len()), (2, 2));
    let e = set.apply(&one, "one").unwrap_err();
    assert!(matches!(e, RevocationError::Older { sequence: 1, current: 2, .. }), "{e}");
    set.apply(&two, "two again").unwrap();
    let other = TempHood::new("other", 30).unwrap();
    let theirs = revoke_peer(&other, "x").list;
    assert!(matches!(set.apply(&theirs, "x"), Err(RevocationError::OtherHood { .. })));
    let bob = t.identity("bob").unwrap();
    assert!(set.is_revoked(bob.cert_der()));
}

#[test]
fn revoking_bad_targets_says_why() {
    let t = TempHood::new("lab", 30).unwrap();
    let e = revoke(t.name(), t.dir(), RevokeTarget::Fingerprint("abc".into())).unwrap_err().to_string();
    assert!(e.contains("64 hex digits"), "{e}");
    let e = revoke(t.name(), t.dir(), RevokeTarget::Cert(t.path("lab.crt"))).unwrap_err().to_string();
    assert!(e.contains("hood's own certificate"), "{e}");
    let other = TempHood::new("other", 30).unwrap();
    let stranger = other.peer("x").unwrap();
    let e = revoke(t.name(), t.dir(), RevokeTarget::Cert(stranger.cert)).unwrap_err().to_string();
    assert!(e.contains("not a certificate of hood \"lab\""), "{e}");
}
