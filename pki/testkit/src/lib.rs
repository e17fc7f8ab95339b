//! Test support shared by the partybus crates (`publish = false`): the test
//! hood, certificates a hood would never issue (expired, not yet valid, CA,
//! self-signed; made with rcgen), and "rogue" rustls configurations that
//! present a certificate and accept any peer, so the side under test is the
//! one that has to refuse.
//!
//! A test hood is a [`partybus_pki::TempHood`] with panicking shortcuts; code
//! outside tests (the `partybus bench` orchestrator, the examples) uses
//! `TempHood` itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use partybus_pki::{Hood, Identity, TempHood};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use time::{Duration, OffsetDateTime};

/// Validity of test hoods and their peers.
pub const TEST_DAYS: u32 = 30;

/// A hood made with `create_hood` in its own temporary folder; peers are made
/// with `create_peer` on first use. Panics on any error (tests only).
pub struct TestHood {
    /// The hood's name.
    pub name: String,
    /// The hood, loaded.
    pub hood: Hood,
    temp: TempHood,
}

impl TestHood {
    /// Hood `name`, valid for [`TEST_DAYS`].
    pub fn new(name: &str) -> TestHood {
        let temp = TempHood::new(name, TEST_DAYS).expect("create a test hood");
        TestHood { name: name.to_owned(), hood: temp.hood().clone(), temp }
    }

    /// The [`TempHood`] underneath.
    pub fn temp(&self) -> &TempHood {
        &self.temp
    }

    /// The folder with every file of this hood.
    pub fn dir(&self) -> &Path {
        self.temp.dir()
    }

    /// `file` in [`TestHood::dir`].
    pub fn path(&self, file: &str) -> PathBuf {
        self.temp.path(file)
    }

    /// The hood's certificate, `NAME.crt`.
    pub fn ca(&self) -> PathBuf {
        self.temp.files().cert
    }

    /// The hood's private key, `NAME.key`.
    pub fn ca_key(&self) -> PathBuf {
        self.temp.files().key
    }

    /// Certificate and key paths of peer `name`, made on first use.
    pub fn peer_files(&self, name: &str) -> (PathBuf, PathBuf) {
        let f = self.temp.peer(name).expect("create a test peer");
        (f.cert, f.key)
    }

    /// Peer `name` (made on first use), loaded.
    pub fn peer(&self, name: &str) -> Identity {
        self.temp.identity(name).expect("load a test peer")
    }

    /// A certificate signed by this hood with any validity, optionally a CA
    /// (rcgen directly, bypassing `create_peer`'s checks). Returns (cert PEM, key PEM).
    pub fn custom_peer(&self, name: &str, not_before: OffsetDateTime, not_after: OffsetDateTime, ca: bool) -> (String, String) {
        let hood_key = KeyPair::from_pem(&read(&self.ca_key())).expect("hood key");
        let issuer = Issuer::from_ca_cert_pem(&read(&self.ca()), hood_key).expect("hood certificate");
        let key = KeyPair::generate().expect("key");
        let mut params = peer_params(name, &self.name, not_before, not_after);
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        let cert = params.signed_by(&key, &issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    /// Signed by this hood, valid in the past only.
    pub fn expired_peer(&self, name: &str) -> (String, String) {
        let now = OffsetDateTime::now_utc();
        self.custom_peer(name, now - Duration::days(30), now - Duration::days(1), false)
    }

    /// Signed by this hood, valid from tomorrow.
    pub fn future_peer(&self, name: &str) -> (String, String) {
        let now = OffsetDateTime::now_utc();
        self.custom_peer(name, now + Duration::days(1), now + Duration::days(30), false)
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fields of a peer certificate: CN = `cn`, O = `o`, server and client auth.
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

/// A self-signed end-entity certificate with CN = `cn`, O = `o` (with cn = o =
/// a hood's name it imitates that hood's subject exactly). Returns (cert PEM, key PEM).
pub fn self_signed(cn: &str, o: &str) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let now = OffsetDateTime::now_utc();
    let cert = peer_params(cn, o, now - Duration::hours(1), now + Duration::days(30)).self_signed(&key).expect("sign");
    (cert.pem(), key.serialize_pem())
}

/// The DER of the first PEM block of `pem_str`.
pub fn cert_der(pem_str: &str) -> CertificateDer<'static> {
    CertificateDer::from(pem::parse(pem_str).expect("PEM").into_contents())
}

/// The private key in the first PEM block of `pem_str`.
pub fn key_der(pem_str: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::try_from(pem::parse(pem_str).expect("PEM").into_contents()).expect("a private key")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server certificate verifier that accepts any server: only for rogue clients in tests.
#[derive(Debug)]
pub struct AcceptAnything;

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
    let key = rustls::crypto::ring::sign::any_supported_type(&key_der(key_pem)).expect("a usable key");
    Arc::new(rustls::sign::SingleCertAndKey::from(rustls::sign::CertifiedKey::new(vec![cert_der(cert_pem)], key)))
}

/// A TLS 1.3 client that presents `cert` and accepts any server ([`AcceptAnything`]).
pub fn rogue_client(cert_pem: &str, key_pem: &str) -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything))
        .with_client_cert_resolver(single(cert_pem, key_pem))
}

/// A TLS 1.3 server that presents `cert` and asks for no client certificate.
pub fn rogue_server(cert_pem: &str, key_pem: &str) -> ServerConfig {
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_cert_resolver(single(cert_pem, key_pem))
}
