//! [`Hood`]: a loaded hood (CA) certificate.

use std::path::Path;

use rustls_pki_types::CertificateDer;

use crate::cert::{self, CertFacts, Problem};
use crate::error::PkiError;
use crate::key::KeyKind;
use crate::pemfile;

/// A hood: the CA certificate that every peer certificate of the hood is
/// signed by. Loading one checks that it really is a CA and is valid now.
///
/// Only the certificate is needed to check peers; the hood's private key is
/// needed only to create new peers ([`crate::create_peer`]).
#[derive(Clone, Debug)]
pub struct Hood {
    der: CertificateDer<'static>,
    name: String,
    fingerprint: String,
    key_kind: KeyKind,
    pub(crate) facts: CertFacts,
}

impl Hood {
    /// Loads the hood certificate (e.g. `HOOD.crt`) from a PEM file.
    ///
    /// It must be a CA certificate (basicConstraints `CA:TRUE`, or a
    /// self-signed X.509 v1 certificate as very old openssl versions made),
    /// currently valid, with a key this crate can verify (RSA, ECDSA
    /// P-256/P-384, Ed25519).
    pub fn load(ca_path: &Path) -> Result<Hood, PkiError> {
        let pem = pemfile::read_file(ca_path)?;
        Self::from_pem(&pem, &ca_path.display().to_string())
    }

    /// Like [`Hood::load`], from PEM in memory; `origin` names the source in errors.
    pub fn from_pem(pem: &[u8], origin: &str) -> Result<Hood, PkiError> {
        let der = pemfile::cert_from_pem(pem, origin)?;
        Self::from_der(der, origin)
    }

    /// Like [`Hood::from_pem`], from DER.
    pub fn from_der(der: CertificateDer<'static>, origin: &str) -> Result<Hood, PkiError> {
        let facts = CertFacts::parse(&der).map_err(|reason| PkiError::InvalidCertificate { origin: origin.to_string(), reason })?;
        let not_ca = |reason: String| PkiError::NotACa { origin: origin.to_string(), reason };
        match facts.basic_ca {
            Some(true) => {}
            Some(false) => return Err(not_ca("its basicConstraints say CA:FALSE".into())),
            None if facts.version == 0 => {
                // X.509 v1 has no extensions: accept it as a CA only when self-signed.
                let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
                if !facts.self_issued() || cert::check_signature(&der, &facts.spki, &algs).is_err() {
                    return Err(not_ca(format!("it is an X.509 v1 certificate issued by \"{}\", not a self-signed one", facts.issuer)));
                }
            }
            None => return Err(not_ca("it has no basicConstraints extension with CA:TRUE".into())),
        }
        if facts.key_cert_sign == Some(false) {
            return Err(not_ca("its keyUsage does not allow signing certificates (keyCertSign)".into()));
        }
        let key_kind = facts.key_kind.clone().map_err(|kind| PkiError::Unsupported {
            origin: origin.to_string(),
            reason: format!("the hood certificate has {kind}; use a hood with an ECDSA P-256, Ed25519 or RSA key"),
        })?;
        match cert::check_validity(&facts, cert::now_secs()) {
            Ok(()) => {}
            Err(Problem::Expired { not_after }) => {
                return Err(PkiError::Expired { origin: origin.to_string(), not_after: cert::rfc3339(not_after) })
            }
            Err(Problem::NotYetValid { not_before }) => {
                return Err(PkiError::NotYetValid { origin: origin.to_string(), not_before: cert::rfc3339(not_before) })
            }
            Err(other) => return Err(PkiError::InvalidCertificate { origin: origin.to_string(), reason: other.describe(&facts.subject) }),
        }
        let name = facts.cn.clone().or_else(|| facts.o.clone()).unwrap_or_else(|| facts.subject.clone());
        Ok(Hood { fingerprint: crate::sha256_hex(&der), der, name, key_kind, facts })
    }

    /// Lowercase hex SHA-256 of the hood certificate's DER encoding: the
    /// hood's identity, the same value tubemail uses.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The hood's name: the certificate's common name (CN).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The hood certificate, DER.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// The hood's full subject, e.g. `CN=lab, O=lab`.
    pub fn subject(&self) -> &str {
        &self.facts.subject
    }

    /// The kind of the hood's key.
    pub fn key_kind(&self) -> KeyKind {
        self.key_kind
    }
}
