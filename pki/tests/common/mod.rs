//! Shared test helpers: test hoods and odd certificates made with rcgen,
//! in-memory TLS handshakes, and "rogue" rustls configurations that present
//! a certificate without checking the other side (so the side under test is
//! the one that has to refuse).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use partybus_pki::{create_hood, create_peer, Hood, Identity};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, ServerConfig, ServerConnection, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use time::{Duration, OffsetDateTime};

/// A hood made with `create_hood` in its own temp dir.
pub struct TestHood {
    pub dir: tempfile::TempDir,
    pub name: String,
    pub hood: Hood,
}

impl TestHood {
    pub fn new(name: &str) -> TestHood {
        let dir = tempfile::tempdir().unwrap();
        create_hood(name, dir.path(), 30).unwrap();
        let hood = Hood::load(&dir.path().join(format!("{name}.crt"))).unwrap();
        TestHood { dir, name: name.to_string(), hood }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A peer made with `create_peer` and loaded.
    pub fn peer(&self, name: &str) -> Identity {
        let files = create_peer(&self.name, name, self.dir.path(), 30).unwrap();
        Identity::load(&files.cert, &files.key, &self.hood).unwrap()
    }

    /// A certificate signed by this hood with arbitrary validity (rcgen
    /// directly, bypassing create_peer's checks). Returns (cert PEM, key PEM).
    pub fn custom_peer(&self, name: &str, not_before: OffsetDateTime, not_after: OffsetDateTime, ca: bool) -> (String, String) {
        let hood_key = KeyPair::from_pem(&std::fs::read_to_string(self.path(&format!("{}.key", self.name))).unwrap()).unwrap();
        let hood_pem = std::fs::read_to_string(self.path(&format!("{}.crt", self.name))).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&hood_pem, hood_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = peer_params(name, &self.name, not_before, not_after);
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub fn expired_peer(&self, name: &str) -> (String, String) {
        let now = OffsetDateTime::now_utc();
        self.custom_peer(name, now - Duration::days(30), now - Duration::days(1), false)
    }

    pub fn future_peer(&self, name: &str) -> (String, String) {
        let now = OffsetDateTime::now_utc();
        self.custom_peer(name, now + Duration::days(1), now + Duration::days(30), false)
    }
}

pub fn peer_params(cn: &str, o: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.distinguished_name.push(DnType::OrganizationName, o);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

/// A self-signed end-entity certificate with CN = `cn`, O = `o`. With cn = o =
/// a hood's name it imitates that hood's subject exactly.
pub fn self_signed(cn: &str, o: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let now = OffsetDateTime::now_utc();
    let params = peer_params(cn, o, now - Duration::hours(1), now + Duration::days(30));
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

pub fn cert_der(pem_str: &str) -> CertificateDer<'static> {
    CertificateDer::from(pem::parse(pem_str).unwrap().into_contents())
}

pub fn key_der(pem_str: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::try_from(pem::parse(pem_str).unwrap().into_contents()).unwrap()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any server: only for rogue clients in tests.
#[derive(Debug)]
struct AcceptAnything;

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

/// `cert` with `key`, without rustls' webpki-based consistency check (which
/// refuses X.509 v1 certificates).
fn single(cert_pem: &str, key_pem: &str) -> Arc<rustls::sign::SingleCertAndKey> {
    let key = rustls::crypto::ring::sign::any_supported_type(&key_der(key_pem)).unwrap();
    Arc::new(rustls::sign::SingleCertAndKey::from(rustls::sign::CertifiedKey::new(vec![cert_der(cert_pem)], key)))
}

/// A client that presents `cert` and accepts any server.
pub fn rogue_client(cert_pem: &str, key_pem: &str) -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything))
        .with_client_cert_resolver(single(cert_pem, key_pem))
}

/// A server that presents `cert` and asks for no client certificate.
pub fn rogue_server(cert_pem: &str, key_pem: &str) -> ServerConfig {
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(single(cert_pem, key_pem))
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Side {
    Client,
    Server,
}

/// Moves all pending TLS bytes from one connection to the other; `Ok(false)`
/// if there was nothing to move.
fn transfer<A, B>(from: &mut rustls::ConnectionCommon<A>, to: &mut rustls::ConnectionCommon<B>) -> Result<bool, rustls::Error> {
    let mut buf = Vec::new();
    while from.wants_write() {
        if from.write_tls(&mut buf).unwrap() == 0 {
            break;
        }
    }
    if buf.is_empty() {
        return Ok(false);
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
        to.process_new_packets()?;
    }
    Ok(true)
}

pub struct Pair {
    pub client: ClientConnection,
    pub server: ServerConnection,
}

/// Runs a full TLS handshake in memory (the client addresses the server by
/// an IP address, as partybus does), then sends "ping" client -> server and
/// "pong" back. `Err` says which side failed first and why.
pub fn handshake(client: ClientConfig, server: ServerConfig) -> Result<Pair, (Side, rustls::Error)> {
    let mut c = ClientConnection::new(Arc::new(client), ServerName::try_from("192.0.2.7").unwrap().to_owned()).unwrap();
    let mut s = ServerConnection::new(Arc::new(server)).unwrap();
    shuttle(&mut c, &mut s)?;
    assert!(!c.is_handshaking() && !s.is_handshaking(), "handshake stalled");
    c.writer().write_all(b"ping").unwrap();
    shuttle(&mut c, &mut s)?;
    let mut got = [0u8; 4];
    s.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    s.writer().write_all(b"pong").unwrap();
    shuttle(&mut c, &mut s)?;
    c.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
    Ok(Pair { client: c, server: s })
}

fn shuttle(c: &mut ClientConnection, s: &mut ServerConnection) -> Result<(), (Side, rustls::Error)> {
    for _ in 0..50 {
        let c_to_s = transfer(&mut **c, &mut **s).map_err(|e| (Side::Server, e))?;
        let s_to_c = transfer(&mut **s, &mut **c).map_err(|e| (Side::Client, e))?;
        if !c_to_s && !s_to_c {
            return Ok(());
        }
    }
    panic!("TLS exchange did not settle");
}

/// Our server and client configs for `me` in `hood`.
pub fn configs(me: &Identity, hood: &Hood) -> (ClientConfig, ServerConfig) {
    (partybus_pki::client_config(me, hood).unwrap(), partybus_pki::server_config(me, hood).unwrap())
}

/// Asserts that the handshake failed on `side` with the given certificate error.
#[track_caller]
pub fn assert_refused(result: Result<Pair, (Side, rustls::Error)>, side: Side, check: impl Fn(&rustls::CertificateError) -> bool) {
    match result {
        Ok(_) => panic!("handshake succeeded, but {side:?} should have refused"),
        Err((got_side, rustls::Error::InvalidCertificate(e))) if got_side == side && check(&e) => {
            eprintln!("{side:?} refused as expected: {}", rustls::Error::InvalidCertificate(e));
        }
        Err((got_side, e)) => panic!("expected {side:?} to refuse, got {got_side:?}: {e} ({e:?})"),
    }
}

pub fn write(path: &Path, contents: impl AsRef<[u8]>) {
    std::fs::write(path, contents).unwrap();
}

/// Fail the calling test unless the `openssl` program runs: the tests that
/// compare with openssl never pass without it (the project's rule for tests
/// with an outside prerequisite: run completely or fail, naming it).
#[track_caller]
pub fn require_openssl(why: &str) {
    let ok = std::process::Command::new("openssl").arg("version").output().is_ok_and(|o| o.status.success());
    if !ok {
        panic!("`openssl` is not installed (Debian package `openssl`, which `.ci/run` installs); {why} need it");
    }
}
