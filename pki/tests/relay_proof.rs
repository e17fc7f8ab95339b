//! Membership proofs (`relay_proof` / `verify_relay_proof`): ECDSA and
//! Ed25519 peers, foreign hoods, tampering, odd certificates. RSA (openssl)
//! hoods are in `openssl_compat.rs`, next to their fixtures.

mod common;

use std::time::Duration;

use common::TestHood;
use partybus_pki::{create_hood, create_peer_with, relay_proof, verify_relay_proof, Hood, Identity, KeyKind, ProofError};
use rustls::SignatureScheme;
use rustls_pki_types::UnixTime;

const MSG: &[u8] = b"partybus relay register v1\0cookie-cookie-id-id-id-id-id-";

fn allowed(hoods: &[&Hood]) -> Vec<String> {
    hoods.iter().map(|h| h.fingerprint().to_owned()).collect()
}

/// A proof put together by hand, in the documented layout.
fn assemble(scheme: u16, sig: &[u8], leaf: &[u8], ca: &[u8]) -> Vec<u8> {
    let mut p = scheme.to_be_bytes().to_vec();
    for f in [sig, leaf, ca] {
        p.extend_from_slice(&(f.len() as u16).to_be_bytes());
        p.extend_from_slice(f);
    }
    p
}

/// A proof signed with any certificate and key (PEM), with `ca` attached.
fn hand_made(cert_pem: &str, key_pem: &str, ca: &[u8], msg: &[u8]) -> Vec<u8> {
    let key = rustls::crypto::ring::sign::any_supported_type(&common::key_der(key_pem)).unwrap();
    let signer = key.choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256]).unwrap();
    assemble(u16::from(signer.scheme()), &signer.sign(msg).unwrap(), &common::cert_der(cert_pem), ca)
}

#[test]
fn an_ecdsa_peer_proves_membership() {
    let lab = TestHood::new("lab");
    let alice = lab.peer("alice");
    let proof = relay_proof(&alice, &lab.hood, MSG).unwrap();
    assert!(proof.len() < 1200, "an ECDSA proof fits a Register datagram without fragmenting: {} bytes", proof.len());
    // The documented layout: scheme, then three length-prefixed fields.
    assert_eq!(u16::from_be_bytes([proof[0], proof[1]]), u16::from(SignatureScheme::ECDSA_NISTP256_SHA256));

    let other = TestHood::new("other");
    let got = verify_relay_proof(&proof, MSG, &allowed(&[&other.hood, &lab.hood]), UnixTime::now()).unwrap();
    assert_eq!(got.hood_fingerprint, lab.hood.fingerprint());
    assert_eq!(got.name, "alice");
    // Fingerprints in upper case are the same hood.
    verify_relay_proof(&proof, MSG, &[lab.hood.fingerprint().to_uppercase()], UnixTime::now()).unwrap();
    // Twice (the hood's signature on the certificate is remembered then).
    verify_relay_proof(&proof, MSG, &allowed(&[&lab.hood]), UnixTime::now()).unwrap();
}

#[test]
fn an_ed25519_peer_proves_membership() {
    let lab = TestHood::new("lab");
    let files = create_peer_with("lab", "ed", lab.dir(), 30, KeyKind::Ed25519).unwrap();
    let ed = Identity::load(&files.cert, &files.key, &lab.hood).unwrap();
    let proof = relay_proof(&ed, &lab.hood, MSG).unwrap();
    assert_eq!(u16::from_be_bytes([proof[0], proof[1]]), u16::from(SignatureScheme::ED25519));
    assert_eq!(verify_relay_proof(&proof, MSG, &allowed(&[&lab.hood]), UnixTime::now()).unwrap().name, "ed");
}

#[test]
fn a_proof_is_for_its_message_only() {
    let lab = TestHood::new("lab");
    let proof = relay_proof(&lab.peer("alice"), &lab.hood, MSG).unwrap();
    let mut other_msg = MSG.to_vec();
    other_msg[30] ^= 1;
    let e = verify_relay_proof(&proof, &other_msg, &allowed(&[&lab.hood]), UnixTime::now()).unwrap_err();
    assert_eq!(e, ProofError::BadSignature);
}

#[test]
fn a_foreign_hood_is_not_allowed() {
    let lab = TestHood::new("lab");
    let other = TestHood::new("other");
    let proof = relay_proof(&other.peer("mallory"), &other.hood, MSG).unwrap();
    let e = verify_relay_proof(&proof, MSG, &allowed(&[&lab.hood]), UnixTime::now()).unwrap_err();
    assert_eq!(e, ProofError::NotAllowed { fingerprint: other.hood.fingerprint().to_owned() });
    assert!(e.to_string().contains(other.hood.fingerprint()), "{e}");
    // Nothing allowed: nothing passes.
    assert!(matches!(verify_relay_proof(&proof, MSG, &[], UnixTime::now()), Err(ProofError::NotAllowed { .. })));
}

#[test]
fn a_peer_of_another_hood_under_an_allowed_hood_certificate_is_refused() {
    let lab = TestHood::new("lab");
    // Same name, other key: a forged "lab" hood.
    let fake_dir = tempfile::tempdir().unwrap();
    create_hood("lab", fake_dir.path(), 30).unwrap();
    partybus_pki::create_peer("lab", "mallory", fake_dir.path(), 30).unwrap();
    let fake_hood = Hood::load(&fake_dir.path().join("lab.crt")).unwrap();
    let mallory = Identity::load(&fake_dir.path().join("lab.mallory.crt"), &fake_dir.path().join("lab.mallory.key"), &fake_hood).unwrap();
    let proof = relay_proof(&mallory, &fake_hood, MSG).unwrap();
    // The fake hood's own certificate is not allowed...
    assert!(matches!(verify_relay_proof(&proof, MSG, &allowed(&[&lab.hood]), UnixTime::now()), Err(ProofError::NotAllowed { .. })));
    // ... and with the real hood's certificate attached instead, the chain breaks.
    let sig_len = usize::from(u16::from_be_bytes([proof[2], proof[3]]));
    let sig = &proof[4..4 + sig_len];
    let forged = assemble(u16::from_be_bytes([proof[0], proof[1]]), sig, mallory.cert_der(), lab.hood.der());
    let e = verify_relay_proof(&forged, MSG, &allowed(&[&lab.hood]), UnixTime::now()).unwrap_err();
    assert!(matches!(e, ProofError::BadCertificate(_)), "{e}");
}

#[test]
fn a_tampered_signature_is_refused() {
    let lab = TestHood::new("lab");
    let proof = relay_proof(&lab.peer("alice"), &lab.hood, MSG).unwrap();
    let mut bad = proof.clone();
    bad[10] ^= 0x01; // inside the signature
    let e = verify_relay_proof(&bad, MSG, &allowed(&[&lab.hood]), UnixTime::now()).unwrap_err();
    assert_eq!(e, ProofError::BadSignature);
    // Another scheme than the key's: refused, whether or not it is a TLS 1.3 one.
    let mut bad = proof.clone();
    bad[..2].copy_from_slice(&u16::from(SignatureScheme::ED25519).to_be_bytes());
    assert_eq!(verify_relay_proof(&bad, MSG, &allowed(&[&lab.hood]), UnixTime::now()).unwrap_err(), ProofError::BadSignature);
    let mut bad = proof;
    bad[..2].copy_from_slice(&u16::from(SignatureScheme::RSA_PKCS1_SHA256).to_be_bytes());
    let e = verify_relay_proof(&bad, MSG, &allowed(&[&lab.hood]), UnixTime::now()).unwrap_err();
    assert!(matches!(e, ProofError::UnsupportedScheme(0x0401)), "{e}");
}

#[test]
fn garbage_and_truncated_proofs_are_malformed() {
    let lab = TestHood::new("lab");
    let proof = relay_proof(&lab.peer("alice"), &lab.hood, MSG).unwrap();
    let ok = allowed(&[&lab.hood]);
    for bad in [&b""[..], b"\x04", b"\x04\x03\x00\x00", &[0xff; 64], &proof[..proof.len() - 1]] {
        let e = verify_relay_proof(bad, MSG, &ok, UnixTime::now()).unwrap_err();
        assert!(matches!(e, ProofError::Malformed(_)), "{e}");
    }
    let mut long = proof.clone();
    long.push(0);
    assert!(matches!(verify_relay_proof(&long, MSG, &ok, UnixTime::now()), Err(ProofError::Malformed(_))));
    // Well-formed, but the "hood certificate" is not a certificate.
    let junk_ca = b"not a certificate at all";
    let e = verify_relay_proof(&assemble(0x0403, b"sig", b"leaf", junk_ca), MSG, &[sha256_hex(junk_ca)], UnixTime::now()).unwrap_err();
    assert!(matches!(e, ProofError::BadHood(_)), "{e}");
}

#[test]
fn a_peer_certificate_as_hood_is_refused() {
    let lab = TestHood::new("lab");
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap();
    let bob_der = common::cert_der(&read(lab.peer_files("bob").0));
    // Alice's proof with bob's certificate where the hood's should be.
    let (cert, key) = lab.peer_files("alice");
    let proof = hand_made(&read(cert), &read(key), &bob_der, MSG);
    let e = verify_relay_proof(&proof, MSG, &[sha256_hex(&bob_der)], UnixTime::now()).unwrap_err();
    assert!(matches!(e, ProofError::BadHood(_)), "{e}");
}

#[test]
fn expired_future_and_ca_certificates_are_refused() {
    let lab = TestHood::new("lab");
    let ok = allowed(&[&lab.hood]);
    let ca = lab.hood.der().to_vec();

    let (cert, key) = lab.expired_peer("old");
    let e = verify_relay_proof(&hand_made(&cert, &key, &ca, MSG), MSG, &ok, UnixTime::now()).unwrap_err();
    assert!(matches!(e, ProofError::Expired { .. }), "{e}");

    let (cert, key) = lab.future_peer("early");
    let proof = hand_made(&cert, &key, &ca, MSG);
    let e = verify_relay_proof(&proof, MSG, &ok, UnixTime::now()).unwrap_err();
    assert!(matches!(e, ProofError::NotYetValid { .. }), "{e}");
    // The same proof is good two days later (`now` decides the peer certificate's validity).
    let later = UnixTime::since_unix_epoch(Duration::from_secs(UnixTime::now().as_secs() + 2 * 86400));
    assert_eq!(verify_relay_proof(&proof, MSG, &ok, later).unwrap().name, "early");

    let now = time::OffsetDateTime::now_utc();
    let (cert, key) = lab.custom_peer("sub", now - time::Duration::hours(1), now + time::Duration::days(1), true);
    let e = verify_relay_proof(&hand_made(&cert, &key, &ca, MSG), MSG, &ok, UnixTime::now()).unwrap_err();
    assert!(matches!(e, ProofError::BadCertificate(_)), "{e}");

    // Self-signed with the hood's name: not issued by the hood.
    let (cert, key) = common::self_signed("lab", "lab");
    let e = verify_relay_proof(&hand_made(&cert, &key, &ca, MSG), MSG, &ok, UnixTime::now()).unwrap_err();
    assert!(matches!(e, ProofError::BadCertificate(_)), "{e}");
}

#[test]
fn signing_needs_the_identitys_own_hood() {
    let lab = TestHood::new("lab");
    let other = TestHood::new("other");
    let e = relay_proof(&lab.peer("alice"), &other.hood, MSG).unwrap_err();
    assert!(matches!(e, partybus_pki::PkiError::HoodMismatch { .. }), "{e}");
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b))
}
