//! [`Identity`]: our own peer certificate and its private key.

use std::fmt;
use std::path::Path;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::cert::{self, Problem, Purpose};
use crate::error::PkiError;
use crate::hood::Hood;
use crate::key::{self, KeyKind, LoadedKey};
use crate::pemfile;

/// What [`Identity::load_with`] asks of the private key file's permissions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyFileCheck {
    /// Refuse a key file that every user of the machine may read or change
    /// (any of the mode's "other" bits), as ssh does. The default.
    #[default]
    Private,
    /// Load it whatever its mode (`--allow-readable-key`).
    AnyMode,
}

/// A peer's own identity: its certificate and private key, checked to belong
/// together and to be issued by the hood. A clone shares the key's signer.
#[derive(Clone)]
pub struct Identity {
    cert: CertificateDer<'static>,
    key: LoadedKey,
    name: String,
    hood_name: String,
    hood_fingerprint: String,
    key_kind: KeyKind,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("hood_name", &self.hood_name)
            .field("hood_fingerprint", &self.hood_fingerprint)
            .field("key_kind", &self.key_kind)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads `HOOD.NAME.crt` and `HOOD.NAME.key` and checks that the key
    /// belongs to the certificate, that the hood issued the certificate, and
    /// that it is valid now.
    ///
    /// A key file any user of the machine may read is refused
    /// ([`PkiError::KeyOpenToOthers`]); [`Identity::load_with`] can allow it.
    pub fn load(cert_path: &Path, key_path: &Path, hood: &Hood) -> Result<Identity, PkiError> {
        Self::load_with(cert_path, key_path, hood, KeyFileCheck::Private)
    }

    /// [`Identity::load`] with a choice about the key file's permissions.
    pub fn load_with(cert_path: &Path, key_path: &Path, hood: &Hood, check: KeyFileCheck) -> Result<Identity, PkiError> {
        let cert_pem = pemfile::read_file(cert_path)?;
        let key_pem = pemfile::read_file(key_path)?;
        let identity = Self::build(&cert_pem, &key_pem, hood, &cert_path.display().to_string(), &key_path.display().to_string())?;
        // After the contents: a swapped or wrong file is the better news.
        if check == KeyFileCheck::Private {
            pemfile::check_private(key_path)?;
        }
        Ok(identity)
    }

    /// Like [`Identity::load`], from PEM in memory; `origin` names the source
    /// in errors (suffixed with "(certificate)" or "(key)").
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8], hood: &Hood, origin: &str) -> Result<Identity, PkiError> {
        Self::build(cert_pem, key_pem, hood, &format!("{origin} (certificate)"), &format!("{origin} (key)"))
    }

    fn build(cert_pem: &[u8], key_pem: &[u8], hood: &Hood, cert_origin: &str, key_origin: &str) -> Result<Identity, PkiError> {
        let cert = pemfile::cert_from_pem(cert_pem, cert_origin)?;
        let key = LoadedKey::from_der(pemfile::key_from_pem(key_pem, key_origin)?, key_origin)?;
        let facts =
            cert::CertFacts::parse(&cert).map_err(|reason| PkiError::InvalidCertificate { origin: cert_origin.to_string(), reason })?;
        if !key::same_public_key(&facts.spki, &key.spki) {
            return Err(PkiError::KeyMismatch { cert: cert_origin.to_string(), key: key_origin.to_string() });
        }
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        cert::check_peer(&cert, hood, cert::now_secs(), Purpose::Both, &algs).map_err(|p| problem_to_error(p, cert_origin, hood))?;
        let key_kind = facts
            .key_kind
            .clone()
            .map_err(|kind| PkiError::Unsupported { origin: cert_origin.to_string(), reason: format!("the certificate has {kind}") })?;
        Ok(Identity {
            name: facts.cn.clone().unwrap_or_else(|| facts.subject.clone()),
            hood_name: facts.o.clone().unwrap_or_else(|| hood.name().to_string()),
            hood_fingerprint: hood.fingerprint().to_string(),
            key_kind,
            cert,
            key,
        })
    }

    /// The peer's name: the certificate's common name (CN).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The hood name written in the certificate (its O), or the hood's CN if it has none.
    pub fn hood_name(&self) -> &str {
        &self.hood_name
    }

    /// Fingerprint of the hood this identity was checked against.
    pub fn hood_fingerprint(&self) -> &str {
        &self.hood_fingerprint
    }

    /// The kind of key.
    pub fn key_kind(&self) -> KeyKind {
        self.key_kind
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// A copy of the private key, DER.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        self.key.der.clone_key()
    }

    /// The private key, ready to sign (membership proofs).
    pub(crate) fn signing_key(&self) -> &dyn rustls::sign::SigningKey {
        &*self.key.signer
    }
}

/// Turns a refused peer check into an error naming the file.
pub(crate) fn problem_to_error(p: Problem, origin: &str, hood: &Hood) -> PkiError {
    let origin = origin.to_string();
    match p {
        Problem::Malformed(reason) => PkiError::InvalidCertificate { origin, reason },
        Problem::UnknownIssuer { .. } | Problem::BadSignature => {
            PkiError::NotSignedByHood { reason: p.describe(hood.subject()), hood: hood.name().to_string(), origin }
        }
        Problem::Expired { not_after } => PkiError::Expired { origin, not_after: cert::rfc3339(not_after) },
        Problem::NotYetValid { not_before } => PkiError::NotYetValid { origin, not_before: cert::rfc3339(not_before) },
        Problem::IsCa => PkiError::IsCa { origin },
        Problem::UnsupportedAlgorithm(_) | Problem::WrongPurpose { .. } => PkiError::Unsupported {
            reason: format!("the certificate {}; create a new one with create_peer", p.describe(hood.subject())),
            origin,
        },
        Problem::HoodNotValid(_) => PkiError::Unsupported { reason: format!("{}; create a new hood", p.describe(hood.subject())), origin },
    }
}
