//! [`CertInfo`]: what `partybus cert show` prints about a certificate file.

use std::fmt;
use std::path::Path;

use crate::cert::{self, CertFacts};
use crate::error::PkiError;
use crate::pemfile;

/// A readable summary of one certificate (hood or peer). Serializable for
/// JSON output; `Display` gives a multi-line text form.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct CertInfo {
    /// Full subject, e.g. `CN=alice, O=lab`.
    pub subject: String,
    /// Full issuer; the hood's subject for a peer, the same as `subject` for a hood.
    pub issuer: String,
    /// Serial number, colon-separated hex.
    pub serial: String,
    /// Start of validity, RFC 3339.
    pub not_before: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// Key type, e.g. `ECDSA P-256`, `Ed25519`, `RSA 4096`.
    pub key_type: String,
    /// Whether this is a CA (hood) certificate.
    pub is_ca: bool,
    /// Lowercase hex SHA-256 of the certificate's DER encoding. For a hood
    /// this is the hood fingerprint.
    pub fingerprint: String,
    /// Common name: the hood or peer name.
    pub cn: Option<String>,
    /// Organization: the hood name.
    pub o: Option<String>,
    /// What the hood allows this peer (the permissions extension); `None`:
    /// everything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<crate::Permissions>,
    /// End of validity, seconds since 1970 (for expiry warnings; not in `cert show`).
    #[serde(skip)]
    pub not_after_unix: i64,
}

impl CertInfo {
    /// Reads the first certificate of a PEM file. This only describes the
    /// certificate; it does not check it against a hood or the clock.
    pub fn from_file(path: &Path) -> Result<CertInfo, PkiError> {
        let origin = path.display().to_string();
        Self::from_pem(&pemfile::read_file(path)?, &origin)
    }

    /// Like [`CertInfo::from_file`], from PEM in memory; `origin` names the source in errors.
    pub fn from_pem(pem: &[u8], origin: &str) -> Result<CertInfo, PkiError> {
        let der = pemfile::cert_from_pem(pem, origin)?;
        Self::from_der(&der, origin)
    }

    /// Like [`CertInfo::from_pem`], from one DER certificate.
    pub fn from_der(der: &rustls_pki_types::CertificateDer<'_>, origin: &str) -> Result<CertInfo, PkiError> {
        let der = der.clone().into_owned();
        let facts = CertFacts::parse(&der).map_err(|reason| PkiError::InvalidCertificate { origin: origin.to_string(), reason })?;
        let is_ca = facts.basic_ca == Some(true) || (facts.basic_ca.is_none() && facts.version == 0 && facts.self_issued());
        Ok(CertInfo {
            subject: facts.subject.clone(),
            issuer: facts.issuer.clone(),
            serial: facts.serial.clone(),
            not_before: cert::rfc3339(facts.not_before),
            not_after: cert::rfc3339(facts.not_after),
            not_after_unix: facts.not_after,
            permissions: facts
                .permissions
                .clone()
                .map(|p| p.unwrap_or(crate::Permissions { emit: Some(Vec::new()), listen: Some(Vec::new()) })),
            key_type: match &facts.key_kind {
                Ok(kind) => kind.to_string(),
                Err(other) => other.clone(),
            },
            is_ca,
            fingerprint: crate::sha256_hex(&der),
            cn: facts.cn,
            o: facts.o,
        })
    }
}

impl fmt::Display for CertInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.is_ca { "hood (CA)" } else { "peer" };
        writeln!(f, "{kind} certificate")?;
        writeln!(f, "  subject:     {}", self.subject)?;
        writeln!(f, "  issuer:      {}", self.issuer)?;
        writeln!(f, "  serial:      {}", self.serial)?;
        writeln!(f, "  valid from:  {}", self.not_before)?;
        writeln!(f, "  valid until: {}", self.not_after)?;
        writeln!(f, "  key:         {}", self.key_type)?;
        if let Some(p) = &self.permissions {
            writeln!(f, "  permissions: {p}")?;
        }
        if self.is_ca {
            write!(f, "  hood fingerprint: {}", self.fingerprint)
        } else {
            write!(f, "  fingerprint (SHA-256): {}", self.fingerprint)
        }
    }
}
