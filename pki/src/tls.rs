//! rustls configurations whose verifiers accept exactly the certificates
//! issued by one hood.
//!
//! Both directions use the same check ([`crate::cert::check_peer`], with the
//! hood signature remembered per certificate by [`crate::verified`]): the
//! certificate's issuer is the hood's subject, the hood's key made its
//! signature, it is not a CA, its extendedKeyUsage (if any) allows the role,
//! and it is valid now. There is no host name check: peers are reached by IP
//! address and identified by their certificate, not by a DNS name. The TLS
//! 1.3 handshake signature is checked against the certificate's raw public
//! key, so X.509 v1 certificates (old openssl) work as well as v3 ones.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};

use crate::cert::{self, Problem, Purpose};
use crate::error::PkiError;
use crate::hood::Hood;
use crate::identity::Identity;
use crate::revocation::RevokedSet;
use crate::verified;

/// The one crypto provider this crate uses: rustls' *ring* provider, with
/// TLS 1.3's AES-128-GCM-SHA256 suite preferred.
///
/// rustls' default order puts AES-256-GCM-SHA384 first. Its SHA-384 key
/// schedule and transcript hash run in software on CPUs without SHA-512
/// instructions (most of today's x86), while SHA-256 has SHA-NI: in a mesh of
/// 100 nodes forming in one process, SHA-512 blocks took 5 % of all CPU; with
/// this suite first, SHA-256 takes about 1 %. AES-128 also encrypts every
/// packet in 10 rounds instead of 14. It is the one suite TLS 1.3 requires of
/// every implementation (and QUIC's Initial packets use it anyway); the other
/// suites stay enabled (after it) for peers that prefer them.
fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    let preferred = rustls::CipherSuite::TLS13_AES_128_GCM_SHA256;
    p.cipher_suites.sort_by_key(|s| s.suite() != preferred);
    Arc::new(p)
}

/// A TLS 1.3 server configuration for `identity` that requires every client
/// to present a certificate issued by `hood`. ALPN is left to the caller.
pub fn server_config(identity: &Identity, hood: &Hood) -> Result<rustls::ServerConfig, PkiError> {
    server_config_with(identity, hood, &RevokedSet::new(hood))
}

/// [`server_config`] that also refuses clients whose certificate is in
/// `revoked` (read at every handshake, so a list applied later counts from
/// the next handshake on).
pub fn server_config_with(identity: &Identity, hood: &Hood, revoked: &RevokedSet) -> Result<rustls::ServerConfig, PkiError> {
    same_hood(identity, hood)?;
    let provider = provider();
    let verifier = Arc::new(HoodClientVerifier(HoodVerifier::new(hood, provider.clone(), revoked.clone())));
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error(identity, e))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certified_key(identity)?))
}

/// A TLS 1.3 client configuration for `identity`: presents its certificate
/// and accepts only servers whose certificate was issued by `hood` (no host
/// name check). ALPN is left to the caller.
pub fn client_config(identity: &Identity, hood: &Hood) -> Result<rustls::ClientConfig, PkiError> {
    client_config_with(identity, hood, &RevokedSet::new(hood))
}

/// [`client_config`] that also refuses servers whose certificate is in `revoked`.
pub fn client_config_with(identity: &Identity, hood: &Hood, revoked: &RevokedSet) -> Result<rustls::ClientConfig, PkiError> {
    same_hood(identity, hood)?;
    let provider = provider();
    let verifier = Arc::new(HoodServerVerifier(HoodVerifier::new(hood, provider.clone(), revoked.clone())));
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error(identity, e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(certified_key(identity)?))
}

/// Our certificate and key for rustls. Built by hand because rustls'
/// `with_single_cert` / `with_client_auth_cert` re-check the key against the
/// certificate with webpki, which refuses X.509 v1 certificates (old openssl
/// peers); [`Identity`] has already checked that they match.
fn certified_key(identity: &Identity) -> Result<Arc<SingleCertAndKey>, PkiError> {
    let key = rustls::crypto::ring::sign::any_supported_type(&identity.key_der()).map_err(|e| tls_error(identity, e))?;
    Ok(Arc::new(SingleCertAndKey::from(CertifiedKey::new(vec![identity.cert_der().clone()], key))))
}

/// The name (CN) in a peer's certificate, for logs and as the message
/// source name; `None` if the certificate cannot be parsed or has no CN.
pub fn peer_name(cert: &CertificateDer<'_>) -> Option<String> {
    verified::facts(cert).ok()?.cn.clone()
}

/// The permissions written in a peer's certificate (`None`: none written,
/// everything allowed; an extension that cannot be read allows nothing).
pub fn peer_permissions(cert: &CertificateDer<'_>) -> Option<crate::Permissions> {
    match verified::facts(cert).ok()?.permissions.clone()? {
        Ok(p) => Some(p),
        Err(_) => Some(crate::Permissions { emit: Some(Vec::new()), listen: Some(Vec::new()) }),
    }
}

pub(crate) fn same_hood(identity: &Identity, hood: &Hood) -> Result<(), PkiError> {
    if identity.hood_fingerprint() == hood.fingerprint() {
        Ok(())
    } else {
        Err(PkiError::HoodMismatch {
            identity: identity.name().to_string(),
            identity_hood: identity.hood_fingerprint().to_string(),
            hood: hood.fingerprint().to_string(),
        })
    }
}

fn tls_error(identity: &Identity, e: Error) -> PkiError {
    PkiError::Tls { identity: identity.name().to_string(), reason: e.to_string() }
}

/// Refusal reasons that have no rustls variant of their own; shown in full in
/// the rustls error text.
struct Refused(String);

impl fmt::Debug for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The shared part of both verifiers.
struct HoodVerifier {
    hood: Hood,
    provider: Arc<CryptoProvider>,
    revoked: RevokedSet,
}

impl fmt::Debug for HoodVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HoodVerifier").field("hood", &self.hood.name()).field("fingerprint", &self.hood.fingerprint()).finish()
    }
}

impl HoodVerifier {
    fn new(hood: &Hood, provider: Arc<CryptoProvider>, revoked: RevokedSet) -> Self {
        HoodVerifier { hood: hood.clone(), provider, revoked }
    }

    fn check(&self, end_entity: &CertificateDer<'_>, now: UnixTime, purpose: Purpose) -> Result<(), Error> {
        let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let hood_spki = &self.hood.facts.spki;
        // Parsing and the hood's signature: once per certificate (see `verified`).
        let facts = match verified::issued_by(end_entity, hood_spki) {
            Some(f) => f,
            None => {
                let f = Arc::new(
                    cert::check_issued_by(end_entity, &self.hood, &self.provider.signature_verification_algorithms)
                        .map_err(|p| self.to_rustls(p, now))?,
                );
                verified::remember(end_entity, hood_spki, f.clone());
                f
            }
        };
        // Validity, purpose, not a CA: at every handshake.
        cert::check_use(&facts, &self.hood, now_secs, purpose).map_err(|p| self.to_rustls(p, now))?;
        // Revocation last: only a certificate of this hood can be revoked by it.
        if self.revoked.is_revoked(end_entity) {
            return Err(Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(())
    }

    fn to_rustls(&self, p: Problem, now: UnixTime) -> Error {
        let secs = |t: i64| UnixTime::since_unix_epoch(std::time::Duration::from_secs(t.max(0) as u64));
        let e = match p {
            Problem::Malformed(_) => CertificateError::BadEncoding,
            Problem::UnknownIssuer { .. } => CertificateError::UnknownIssuer,
            Problem::BadSignature => CertificateError::BadSignature,
            Problem::Expired { not_after } => CertificateError::ExpiredContext { time: now, not_after: secs(not_after) },
            Problem::NotYetValid { not_before } => CertificateError::NotValidYetContext { time: now, not_before: secs(not_before) },
            Problem::WrongPurpose { .. } => CertificateError::InvalidPurpose,
            Problem::IsCa | Problem::UnsupportedAlgorithm(_) | Problem::HoodNotValid(_) => {
                CertificateError::Other(rustls::OtherError(Arc::new(Refused(format!(
                    "peer certificate refused by hood \"{}\": {}",
                    self.hood.name(),
                    p.describe(self.hood.subject())
                )))))
            }
        };
        Error::InvalidCertificate(e)
    }

    /// TLS 1.3 CertificateVerify: checked against the certificate's public
    /// key itself, so this works for X.509 v1 certificates too.
    fn tls13(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, Error> {
        // The certificate was checked a moment ago: its public key is known.
        let facts = verified::facts(cert).map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(facts.spki.as_slice()),
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn tls12(&self) -> Result<HandshakeSignatureValid, Error> {
        // Never reached: both configurations allow TLS 1.3 only.
        Err(Error::General("TLS 1.2 is not supported by partybus; use TLS 1.3".into()))
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Client side: checks the server's certificate.
#[derive(Debug)]
struct HoodServerVerifier(HoodVerifier);

impl ServerCertVerifier for HoodServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.0.check(end_entity, now, Purpose::Server)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// Server side: requires and checks the client's certificate.
#[derive(Debug)]
struct HoodClientVerifier(HoodVerifier);

impl ClientCertVerifier for HoodClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// None: the CertificateRequest goes out before the client has proved
    /// anything, and the hood CA's subject in it would tell any scanner the
    /// hood's name. Our clients hold one certificate and send it anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.0.check(end_entity, now, Purpose::Client)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}
