//! Real TLS 1.3 handshakes in memory between our client and server
//! configurations, and refusals in both directions.

mod common;

use common::{assert_refused, configs, handshake, rogue_client, rogue_server, Side, TestHood};
use rustls::CertificateError;

#[test]
fn two_peers_of_one_hood_talk_both_ways() {
    let lab = TestHood::new("lab");
    let alice = lab.peer("alice");
    let bob = lab.peer("bob");
    let (alice_client, alice_server) = configs(&alice, &lab.hood);
    let (bob_client, bob_server) = configs(&bob, &lab.hood);

    let pair = handshake(alice_client, bob_server).unwrap();
    let seen_by_bob = &pair.server.peer_certificates().unwrap()[0];
    assert_eq!(partybus_pki::peer_name(seen_by_bob).as_deref(), Some("alice"));
    let seen_by_alice = &pair.client.peer_certificates().unwrap()[0];
    assert_eq!(partybus_pki::peer_name(seen_by_alice).as_deref(), Some("bob"));
    assert_eq!(pair.client.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    // AES-128-GCM-SHA256 first (SHA-256 has CPU instructions, SHA-384 mostly not).
    assert_eq!(pair.client.negotiated_cipher_suite().map(|s| s.suite()), Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));

    handshake(bob_client, alice_server).unwrap();
}

#[test]
fn configs_are_tls13_only_without_alpn() {
    let lab = TestHood::new("lab");
    let me = lab.peer("me");
    let (client, server) = configs(&me, &lab.hood);
    assert!(client.alpn_protocols.is_empty());
    assert!(server.alpn_protocols.is_empty());
}

#[test]
fn identity_of_other_hood_is_rejected_by_config() {
    let a = TestHood::new("a");
    let b = TestHood::new("b");
    let me = a.peer("me");
    let err = partybus_pki::server_config(&me, &b.hood).unwrap_err();
    assert!(matches!(err, partybus_pki::PkiError::HoodMismatch { .. }), "{err}");
    assert!(partybus_pki::client_config(&me, &b.hood).is_err());
}

#[test]
fn peer_of_another_hood_is_refused_both_ways() {
    let lab = TestHood::new("lab");
    let other = TestHood::new("other");
    let me = lab.peer("me");
    let stranger = other.peer("stranger");
    let (my_client, my_server) = configs(&me, &lab.hood);
    let (their_client, their_server) = configs(&stranger, &other.hood);

    // As server: the stranger connects to us. (Our server speaks first in
    // TLS 1.3, so the stranger's own verifier would refuse us first; use a
    // rogue client that checks nothing so that our server has to decide.)
    let (cert, key) = other_hood_files(&other, "stranger");
    assert_refused(handshake(rogue_client(&cert, &key), my_server), Side::Server, |e| *e == CertificateError::UnknownIssuer);
    // As client: we connect to the stranger.
    assert_refused(handshake(my_client, rogue_server(&cert, &key)), Side::Client, |e| *e == CertificateError::UnknownIssuer);
    // And with the stranger's real configs, whoever checks first refuses.
    let (my_client, my_server) = configs(&me, &lab.hood);
    assert_refused(handshake(my_client, their_server), Side::Client, |e| *e == CertificateError::UnknownIssuer);
    assert_refused(handshake(their_client, my_server), Side::Client, |e| *e == CertificateError::UnknownIssuer);
}

fn other_hood_files(hood: &TestHood, name: &str) -> (String, String) {
    let read = |ext: &str| std::fs::read_to_string(hood.path(&format!("{}.{name}.{ext}", hood.name))).unwrap();
    (read("crt"), read("key"))
}

#[test]
fn self_signed_is_refused_both_ways() {
    let lab = TestHood::new("lab");
    let me = lab.peer("me");
    let (cert, key) = common::self_signed("mallory", "lab");
    let (my_client, my_server) = configs(&me, &lab.hood);
    assert_refused(handshake(rogue_client(&cert, &key), my_server), Side::Server, |e| *e == CertificateError::UnknownIssuer);
    assert_refused(handshake(my_client, rogue_server(&cert, &key)), Side::Client, |e| *e == CertificateError::UnknownIssuer);
}

/// A self-signed certificate that copies the hood's subject as its issuer:
/// the name matches, the signature does not.
#[test]
fn forged_issuer_name_is_refused_both_ways() {
    let lab = TestHood::new("lab");
    let me = lab.peer("me");
    let (cert, key) = common::self_signed("lab", "lab");
    let (my_client, my_server) = configs(&me, &lab.hood);
    assert_refused(handshake(rogue_client(&cert, &key), my_server), Side::Server, |e| *e == CertificateError::BadSignature);
    assert_refused(handshake(my_client, rogue_server(&cert, &key)), Side::Client, |e| *e == CertificateError::BadSignature);
}

#[test]
fn expired_is_refused_both_ways() {
    let lab = TestHood::new("lab");
    let me = lab.peer("me");
    let (cert, key) = lab.expired_peer("old");
    let (my_client, my_server) = configs(&me, &lab.hood);
    let expired = |e: &CertificateError| matches!(e, CertificateError::ExpiredContext { .. });
    assert_refused(handshake(rogue_client(&cert, &key), my_server), Side::Server, expired);
    assert_refused(handshake(my_client, rogue_server(&cert, &key)), Side::Client, expired);
}

#[test]
fn not_yet_valid_is_refused_both_ways() {
    let lab = TestHood::new("lab");
    let me = lab.peer("me");
    let (cert, key) = lab.future_peer("early");
    let (my_client, my_server) = configs(&me, &lab.hood);
    let early = |e: &CertificateError| matches!(e, CertificateError::NotValidYetContext { .. });
    assert_refused(handshake(rogue_client(&cert, &key), my_server), Side::Server, early);
    assert_refused(handshake(my_client, rogue_server(&cert, &key)), Side::Client, early);
}

#[test]
fn hood_issued_ca_certificate_is_refused_as_peer() {
    let lab = TestHood::new("lab");
    let me = lab.peer("me");
    let now = time::OffsetDateTime::now_utc();
    let (cert, key) = lab.custom_peer("sub-ca", now - time::Duration::hours(1), now + time::Duration::days(1), true);
    let (my_client, my_server) = configs(&me, &lab.hood);
    let is_other = |e: &CertificateError| matches!(e, CertificateError::Other(o) if o.to_string().contains("CA certificate"));
    assert_refused(handshake(rogue_client(&cert, &key), my_server), Side::Server, is_other);
    assert_refused(handshake(my_client, rogue_server(&cert, &key)), Side::Client, is_other);
}

/// A certificate whose key was swapped: the hood signed the certificate, but
/// the peer does not hold its key, so the handshake signature fails.
#[test]
fn stolen_certificate_without_key_is_refused() {
    let lab = TestHood::new("lab");
    let me = lab.peer("me");
    let (cert, _) = other_hood_files(&lab, "me");
    let (_, wrong_key) = common::self_signed("x", "y");
    // rustls refuses to build a config whose key does not match; the rogue
    // configs get a resolver that pairs the stolen certificate with a wrong key.
    let (my_client, my_server) = configs(&me, &lab.hood);
    let client = stolen_client(&cert, &wrong_key);
    let result = handshake(client, my_server);
    match result {
        Err((Side::Server, e)) => eprintln!("server refused: {e}"),
        Err(other) => panic!("unexpected: {other:?}"),
        Ok(_) => panic!("accepted a certificate without its key"),
    }
    let server = stolen_server(&cert, &wrong_key);
    match handshake(my_client, server) {
        Err((Side::Client, e)) => eprintln!("client refused: {e}"),
        Err(other) => panic!("unexpected: {other:?}"),
        Ok(_) => panic!("accepted a certificate without its key"),
    }
}

/// The hood signature on a peer certificate is verified once per process and
/// remembered; the rest of the check is not skipped for a remembered one.
#[test]
fn remembered_certificate_is_still_checked_at_every_handshake() {
    let lab = TestHood::new("lab");
    let me = lab.peer("me");
    let alice = lab.peer("alice");
    let (cert, alice_key) = other_hood_files(&lab, "alice");
    // Remembered: alice talked to us.
    let (alice_client, _) = configs(&alice, &lab.hood);
    let (_, my_server) = configs(&me, &lab.hood);
    handshake(alice_client, my_server).unwrap();
    // The same certificate without its key: the handshake signature is still checked.
    let (_, wrong_key) = common::self_signed("x", "y");
    let (my_client, my_server) = configs(&me, &lab.hood);
    assert!(matches!(handshake(stolen_client(&cert, &wrong_key), my_server), Err((Side::Server, _))));
    assert!(matches!(handshake(my_client, stolen_server(&cert, &wrong_key)), Err((Side::Client, _))));
    // Another hood with the same name (another key) does not accept it.
    let twin = TestHood::new("lab");
    let stranger = twin.peer("me");
    let (_, twin_server) = configs(&stranger, &twin.hood);
    // (A client that checks nothing: alice's own client would refuse the twin first.)
    assert_refused(handshake(rogue_client(&cert, &alice_key), twin_server), Side::Server, |e| *e == CertificateError::BadSignature);
    // And it still works where it belongs, both ways.
    let (my_client, my_server) = configs(&me, &lab.hood);
    let (alice_client, alice_server) = configs(&alice, &lab.hood);
    handshake(alice_client, my_server).unwrap();
    let pair = handshake(my_client, alice_server).unwrap();
    assert_eq!(partybus_pki::peer_name(&pair.client.peer_certificates().unwrap()[0]).as_deref(), Some("alice"));
}

fn certified_key(cert: &str, key: &str) -> std::sync::Arc<rustls::sign::CertifiedKey> {
    let signing = rustls::crypto::ring::sign::any_supported_type(&common::key_der(key)).unwrap();
    std::sync::Arc::new(rustls::sign::CertifiedKey::new(vec![common::cert_der(cert)], signing))
}

#[derive(Debug)]
struct Fixed(std::sync::Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Fixed {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<std::sync::Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<std::sync::Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn stolen_client(cert: &str, key: &str) -> rustls::ClientConfig {
    let (base_cert, base_key) = common::self_signed("x", "y");
    let mut config = rogue_client(&base_cert, &base_key);
    config.client_auth_cert_resolver = std::sync::Arc::new(Fixed(certified_key(cert, key)));
    config
}

fn stolen_server(cert: &str, key: &str) -> rustls::ServerConfig {
    let (base_cert, base_key) = common::self_signed("x", "y");
    let mut config = rogue_server(&base_cert, &base_key);
    config.cert_resolver = std::sync::Arc::new(Fixed(certified_key(cert, key)));
    config
}

/// A client resolver that records the CA names the server hinted at and
/// presents no certificate.
#[derive(Debug, Default)]
struct RecordHints(std::sync::Mutex<Option<Vec<Vec<u8>>>>);

impl rustls::client::ResolvesClientCert for RecordHints {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<std::sync::Arc<rustls::sign::CertifiedKey>> {
        *self.0.lock().unwrap() = Some(root_hint_subjects.iter().map(|s| s.to_vec()).collect());
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

#[test]
fn certificate_request_does_not_name_the_hood() {
    // Anyone can start a handshake: the server's CertificateRequest comes
    // before the client proves anything, so it must not carry the hood CA's
    // subject (which holds the hood's name).
    let lab = TestHood::new("secret-hood-name");
    let me = lab.peer("me");
    let (_, my_server) = configs(&me, &lab.hood);
    let hints = std::sync::Arc::new(RecordHints::default());
    let client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(partybus_testkit::AcceptAnything))
        .with_client_cert_resolver(hints.clone());
    // Refused (no client certificate), but only after the request was seen.
    assert!(handshake(client, my_server).is_err());
    let seen = hints.0.lock().unwrap().clone().expect("the server asked for a client certificate");
    assert!(seen.is_empty(), "CertificateRequest named {} CA(s)", seen.len());
}
