//! Facts read from one certificate, and the check "was this issued by the
//! hood and is it valid now" that both file loading and the TLS verifiers use.
//!
//! The check is done here rather than by webpki because webpki refuses X.509
//! v1 certificates, and `openssl x509 -req` (as used by tubemail's scripts)
//! makes v1 peer certificates.

use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::der;
use crate::key::KeyKind;

/// What this crate needs to know about a certificate.
#[derive(Clone, Debug)]
pub(crate) struct CertFacts {
    pub subject_raw: Vec<u8>,
    pub issuer_raw: Vec<u8>,
    pub subject: String,
    pub issuer: String,
    pub cn: Option<String>,
    pub o: Option<String>,
    /// Whole DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
    pub key_kind: Result<KeyKind, String>,
    pub serial: String,
    /// UNIX seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// X.509 version as written on the wire: 0 = v1, 2 = v3.
    pub version: u32,
    /// basicConstraints cA, `None` if the extension is absent.
    pub basic_ca: Option<bool>,
    /// keyUsage keyCertSign, `None` if the extension is absent.
    pub key_cert_sign: Option<bool>,
    /// extendedKeyUsage (server_auth, client_auth), `None` if absent or anyExtendedKeyUsage.
    pub eku: Option<(bool, bool)>,
    /// The permissions extension, `None` if absent, `Err` if unreadable.
    pub permissions: Option<Result<crate::Permissions, String>>,
}

fn first_str<'a>(mut it: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>) -> Option<String> {
    it.next().and_then(|a| a.as_str().ok()).map(str::to_string)
}

impl CertFacts {
    /// Parses `der`; `Err` is a human-readable reason.
    pub(crate) fn parse(der: &[u8]) -> Result<CertFacts, String> {
        let (rest, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        if !rest.is_empty() {
            return Err("trailing bytes after the certificate".into());
        }
        Self::from_parsed(&cert)
    }

    fn from_parsed(cert: &X509Certificate<'_>) -> Result<CertFacts, String> {
        let basic_ca = cert.basic_constraints().map_err(|e| format!("bad basicConstraints: {e}"))?.map(|b| b.value.ca);
        let key_cert_sign = cert.key_usage().map_err(|e| format!("bad keyUsage: {e}"))?.map(|k| k.value.key_cert_sign());
        let eku = cert
            .extended_key_usage()
            .map_err(|e| format!("bad extendedKeyUsage: {e}"))?
            .and_then(|e| (!e.value.any).then_some((e.value.server_auth, e.value.client_auth)));
        let perm_oid = x509_parser::oid_registry::Oid::from(crate::PERMISSIONS_OID).map_err(|_| "bad permissions OID".to_string())?;
        let permissions = cert.extensions().iter().find(|e| e.oid == perm_oid).map(|e| crate::Permissions::from_der(e.value));
        Ok(CertFacts {
            subject_raw: cert.subject().as_raw().to_vec(),
            issuer_raw: cert.issuer().as_raw().to_vec(),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            cn: first_str(cert.subject().iter_common_name()),
            o: first_str(cert.subject().iter_organization()),
            spki: cert.public_key().raw.to_vec(),
            key_kind: KeyKind::of_spki(cert.public_key()),
            serial: cert.raw_serial_as_string(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            version: cert.version().0,
            basic_ca,
            key_cert_sign,
            eku,
            permissions,
        })
    }

    pub(crate) fn self_issued(&self) -> bool {
        self.subject_raw == self.issuer_raw
    }
}

/// Why a certificate is refused. Turned into a [`crate::PkiError`] when
/// loading files and into a [`rustls::Error`] during a handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Problem {
    Malformed(String),
    /// The issuer name is not the hood's subject.
    UnknownIssuer {
        issuer: String,
    },
    /// Issuer name matches but the hood's key did not make the signature.
    BadSignature,
    UnsupportedAlgorithm(String),
    Expired {
        not_after: i64,
    },
    NotYetValid {
        not_before: i64,
    },
    IsCa,
    WrongPurpose {
        needed: &'static str,
    },
    HoodNotValid(String),
}

impl Problem {
    pub(crate) fn describe(&self, hood_subject: &str) -> String {
        match self {
            Problem::Malformed(r) => format!("malformed certificate: {r}"),
            Problem::UnknownIssuer { issuer } => {
                format!("issued by \"{issuer}\", not by the hood \"{hood_subject}\"")
            }
            Problem::BadSignature => format!(
                "names the hood \"{hood_subject}\" as issuer, but the hood's key did not sign it (forged, or from another hood with the same name)"
            ),
            Problem::UnsupportedAlgorithm(a) => format!("signed with an unsupported algorithm: {a}"),
            Problem::Expired { not_after } => format!("expired on {}", rfc3339(*not_after)),
            Problem::NotYetValid { not_before } => {
                format!("not valid before {}", rfc3339(*not_before))
            }
            Problem::IsCa => "is a CA certificate, not a peer certificate".into(),
            Problem::WrongPurpose { needed } => {
                format!("its extendedKeyUsage does not allow {needed}")
            }
            Problem::HoodNotValid(r) => format!("the hood certificate itself {r}"),
        }
    }
}

/// Formats UNIX seconds as RFC 3339 (UTC).
pub(crate) fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("@{secs}"))
}

/// Current time in UNIX seconds.
pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

pub(crate) fn check_validity(facts: &CertFacts, now: i64) -> Result<(), Problem> {
    if now < facts.not_before {
        return Err(Problem::NotYetValid { not_before: facts.not_before });
    }
    if now > facts.not_after {
        return Err(Problem::Expired { not_after: facts.not_after });
    }
    Ok(())
}

/// Verifies that `issuer_spki` (a DER SubjectPublicKeyInfo) made the
/// signature on `cert_der`, with the algorithms of rustls' ring provider.
pub(crate) fn check_signature(cert_der: &[u8], issuer_spki: &[u8], algs: &WebPkiSupportedAlgorithms) -> Result<(), Problem> {
    let parts = der::signed_parts(cert_der).ok_or_else(|| Problem::Malformed("cannot split certificate into TBS and signature".into()))?;
    let key = der::spki_parts(issuer_spki).ok_or_else(|| Problem::Malformed("cannot parse the issuer's public key".into()))?;
    let mut tried = false;
    for alg in algs.all.iter().filter(|a| a.signature_alg_id().as_ref() == parts.signature_alg && a.public_key_alg_id().as_ref() == key.alg)
    {
        tried = true;
        if alg.verify_signature(key.key, parts.tbs, parts.signature).is_ok() {
            return Ok(());
        }
    }
    if tried {
        Err(Problem::BadSignature)
    } else if algs.all.iter().any(|a| a.signature_alg_id().as_ref() == parts.signature_alg) {
        // A known algorithm, but not for the issuer's key type: cannot be its signature.
        Err(Problem::BadSignature)
    } else {
        Err(Problem::UnsupportedAlgorithm(alg_name(parts.signature_alg)))
    }
}

fn alg_name(alg_id: &[u8]) -> String {
    use x509_parser::oid_registry::Oid;
    // AlgorithmIdentifier contents start with the OID element.
    match der::read(alg_id) {
        Some((tlv, _)) if tlv.tag == 0x06 => {
            let oid = Oid::new(std::borrow::Cow::Borrowed(tlv.value));
            match x509_parser::objects::oid2sn(&oid, x509_parser::objects::oid_registry()) {
                Ok(sn) => format!("{sn} ({oid}); SHA-1 and MD5 signatures are refused, re-issue the certificate with SHA-256"),
                Err(_) => format!("{oid}"),
            }
        }
        _ => "an unreadable algorithm identifier".into(),
    }
}

/// What a peer certificate is used for, for the extendedKeyUsage check.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Purpose {
    Server,
    Client,
    /// Loading our own identity: a partybus peer is server and client.
    Both,
}

/// The whole peer check: issued directly by the hood (issuer name and
/// signature), not a CA, allowed for `purpose`, valid at `now`, and the hood
/// itself valid at `now`.
pub(crate) fn check_peer(
    cert_der: &CertificateDer<'_>,
    hood: &crate::Hood,
    now: i64,
    purpose: Purpose,
    algs: &WebPkiSupportedAlgorithms,
) -> Result<CertFacts, Problem> {
    let facts = check_issued_by(cert_der, hood, algs)?;
    check_use(&facts, hood, now, purpose)?;
    Ok(facts)
}

/// The part of [`check_peer`] that depends only on the certificate's bytes
/// and the hood's key: parses it, checks the issuer name and that the hood's
/// key made the signature. Its result never changes for the same bytes and
/// hood, so it may be remembered ([`crate::verified`]).
pub(crate) fn check_issued_by(cert_der: &[u8], hood: &crate::Hood, algs: &WebPkiSupportedAlgorithms) -> Result<CertFacts, Problem> {
    let facts = CertFacts::parse(cert_der).map_err(Problem::Malformed)?;
    if facts.issuer_raw != hood.facts.subject_raw {
        return Err(Problem::UnknownIssuer { issuer: facts.issuer.clone() });
    }
    check_signature(cert_der, &hood.facts.spki, algs)?;
    Ok(facts)
}

/// The rest of [`check_peer`], done at every use: not a CA, allowed for
/// `purpose`, the hood and the certificate valid at `now`.
pub(crate) fn check_use(facts: &CertFacts, hood: &crate::Hood, now: i64, purpose: Purpose) -> Result<(), Problem> {
    if facts.basic_ca == Some(true) {
        return Err(Problem::IsCa);
    }
    if let Some((server, client)) = facts.eku {
        match purpose {
            Purpose::Server if !server => return Err(Problem::WrongPurpose { needed: "TLS server authentication" }),
            Purpose::Client if !client => return Err(Problem::WrongPurpose { needed: "TLS client authentication" }),
            Purpose::Both if !(server && client) => {
                return Err(Problem::WrongPurpose { needed: "both TLS server and client authentication (a partybus peer is both)" })
            }
            _ => {}
        }
    }
    check_validity(&hood.facts, now).map_err(|p| {
        Problem::HoodNotValid(match p {
            Problem::Expired { not_after } => format!("expired on {}", rfc3339(not_after)),
            Problem::NotYetValid { not_before } => {
                format!("is not valid before {}", rfc3339(not_before))
            }
            other => other.describe(""),
        })
    })?;
    check_validity(facts, now)
}
