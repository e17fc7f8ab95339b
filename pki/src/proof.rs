//! Membership proofs: a peer shows a relay (or anyone else who knows only
//! hood fingerprints) that it belongs to a hood, without a TLS handshake.
//!
//! A proof is the peer's signature over a message the verifier chose (a
//! relay's message holds its address-bound cookie, so a proof cannot be
//! replayed elsewhere or for long), with the peer's certificate and its
//! hood's certificate attached:
//!
//! | field | encoding |
//! |---|---|
//! | signature scheme | u16 BE (TLS `SignatureScheme`, a TLS 1.3 one) |
//! | signature | u16 BE length, bytes |
//! | peer certificate | u16 BE length, DER |
//! | hood certificate | u16 BE length, DER |
//!
//! Nothing may follow. [`verify_relay_proof`] accepts it when the hood's
//! fingerprint is one of the allowed ones and the peer certificate passes
//! exactly the check a TLS handshake of this crate makes of a client
//! ([`crate::cert::check_peer`]: issued directly by the hood, not a CA,
//! extendedKeyUsage allowing clientAuth if present, both valid at `now`;
//! X.509 v1 peers of old openssl hoods included), and the signature over the
//! message verifies with the peer certificate's key, as a TLS 1.3
//! CertificateVerify would (TLS 1.3 schemes only: no PKCS#1 v1.5, no SHA-1).
//!
//! Sizes: with ECDSA P-256 hood and peer, a proof is about 1 KB; with RSA
//! 4096 ones (old tubemail hoods) about 3.5 KB.

use std::sync::Arc;

use rustls::SignatureScheme;
use rustls_pki_types::UnixTime;

use crate::cert::{self, Problem, Purpose};
use crate::error::PkiError;
use crate::hood::Hood;
use crate::identity::Identity;
use crate::signature;
use crate::verified;

/// Who a valid proof was made by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvenMember {
    /// The hood's fingerprint (lowercase hex SHA-256 of its certificate), one of the allowed ones.
    pub hood_fingerprint: String,
    /// The peer's name: its certificate's common name (CN).
    pub name: String,
    /// The peer certificate's fingerprint (lowercase hex SHA-256 of its
    /// DER), to check against a revocation list.
    pub certificate: String,
}

/// Why a membership proof was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The bytes are not a proof (truncated, trailing bytes, empty fields).
    #[error("malformed membership proof: {0}")]
    Malformed(&'static str),
    /// The proof is for a hood that is not among the allowed ones.
    #[error("membership proof for hood {fingerprint}, which is not among the allowed hoods")]
    NotAllowed {
        /// The fingerprint of the hood certificate in the proof.
        fingerprint: String,
    },
    /// The hood certificate in the proof is not a usable hood (CA) certificate.
    #[error("the hood certificate in the membership proof is refused: {0}")]
    BadHood(String),
    /// The peer certificate was not issued by the hood, is a CA, or may not be used as a client.
    #[error("the peer certificate in the membership proof is refused: {0}")]
    BadCertificate(String),
    /// The peer certificate has expired.
    #[error("the peer certificate in the membership proof expired on {not_after}")]
    Expired {
        /// End of validity, RFC 3339.
        not_after: String,
    },
    /// The peer certificate is not valid yet.
    #[error("the peer certificate in the membership proof is not valid before {not_before}")]
    NotYetValid {
        /// Start of validity, RFC 3339.
        not_before: String,
    },
    /// The signature scheme is not a TLS 1.3 one this crate verifies.
    #[error("membership proof signed with unsupported scheme {0:#06x}")]
    UnsupportedScheme(u16),
    /// The signature does not verify with the peer certificate's key.
    #[error("the membership proof's signature does not verify with the peer certificate's key")]
    BadSignature,
}

/// Signs `message` with `identity`'s private key and returns the proof that
/// [`verify_relay_proof`] checks: the TLS 1.3 signature scheme (u16 BE),
/// then the signature, the peer certificate (DER) and the hood certificate
/// (DER), each with a u16 BE length before it.
///
/// `hood` must be the hood `identity` was loaded with
/// ([`PkiError::HoodMismatch`] otherwise); its certificate goes into the
/// proof, so that a verifier needs to know nothing but its fingerprint.
pub fn relay_proof(identity: &Identity, hood: &Hood, message: &[u8]) -> Result<Vec<u8>, PkiError> {
    crate::tls::same_hood(identity, hood)?;
    let fail = |reason: String| PkiError::Generate { what: format!("a membership proof for \"{}\"", identity.name()), reason };
    let (scheme, signature) =
        signature::sign(identity.signing_key(), message).map_err(|e| fail(format!("a {} key cannot sign: {e}", identity.key_kind())))?;
    let (leaf, ca) = (identity.cert_der().as_ref(), hood.der().as_ref());
    let mut out = Vec::with_capacity(8 + signature.len() + leaf.len() + ca.len());
    out.extend_from_slice(&u16::from(scheme).to_be_bytes());
    for field in [&signature[..], leaf, ca] {
        let len = u16::try_from(field.len()).map_err(|_| fail(format!("a field of {} bytes does not fit", field.len())))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(field);
    }
    Ok(out)
}

/// Checks a proof made by [`relay_proof`] over `message`: the hood's
/// fingerprint must be in `allowed_ca_fingerprints` (lowercase hex, as
/// [`Hood::fingerprint`]), the peer certificate must pass the check a TLS
/// handshake would make of a client at `now`, and the signature must verify
/// with its key. Cheap refusals come first (parsing, then the fingerprint,
/// one SHA-256); the hood's signature on a peer certificate is remembered
/// per certificate, so a repeated proof from one peer costs one parse of
/// each certificate and one signature verification.
///
/// The hood certificate is also checked to be a CA valid at this machine's
/// clock ([`Hood::from_der`]), whatever `now` says.
pub fn verify_relay_proof(
    proof: &[u8],
    message: &[u8],
    allowed_ca_fingerprints: &[String],
    now: UnixTime,
) -> Result<ProvenMember, ProofError> {
    let parts = Parts::parse(proof)?;
    let fingerprint = crate::sha256_hex(parts.ca);
    if !allowed_ca_fingerprints.iter().any(|f| f.eq_ignore_ascii_case(&fingerprint)) {
        return Err(ProofError::NotAllowed { fingerprint });
    }
    let hood = Hood::from_der(parts.ca.to_vec().into(), "membership proof").map_err(|e| ProofError::BadHood(e.to_string()))?;

    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    let hood_spki = &hood.facts.spki;
    let facts = match verified::issued_by(parts.leaf, hood_spki) {
        Some(f) => f,
        None => {
            let f = Arc::new(cert::check_issued_by(parts.leaf, &hood, &algs).map_err(|p| refusal(p, &hood))?);
            verified::remember(parts.leaf, hood_spki, f.clone());
            f
        }
    };
    let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    cert::check_use(&facts, &hood, now_secs, Purpose::Client).map_err(|p| refusal(p, &hood))?;

    signature::verify(&facts.spki, parts.scheme, message, parts.signature).map_err(|r| match r {
        signature::Refused::UnsupportedScheme => ProofError::UnsupportedScheme(u16::from(parts.scheme)),
        signature::Refused::BadKey => ProofError::BadCertificate("its public key cannot be parsed".into()),
        signature::Refused::BadSignature => ProofError::BadSignature,
    })?;
    Ok(ProvenMember {
        hood_fingerprint: fingerprint,
        name: facts.cn.clone().unwrap_or_else(|| facts.subject.clone()),
        certificate: crate::sha256_hex(parts.leaf),
    })
}

fn refusal(p: Problem, hood: &Hood) -> ProofError {
    match p {
        Problem::Expired { not_after } => ProofError::Expired { not_after: cert::rfc3339(not_after) },
        Problem::NotYetValid { not_before } => ProofError::NotYetValid { not_before: cert::rfc3339(not_before) },
        Problem::HoodNotValid(_) => ProofError::BadHood(p.describe(hood.subject())),
        other => ProofError::BadCertificate(other.describe(hood.subject())),
    }
}

struct Parts<'a> {
    scheme: SignatureScheme,
    signature: &'a [u8],
    leaf: &'a [u8],
    ca: &'a [u8],
}

impl<'a> Parts<'a> {
    fn parse(mut b: &'a [u8]) -> Result<Parts<'a>, ProofError> {
        let (scheme, rest) = b.split_first_chunk::<2>().ok_or(ProofError::Malformed("shorter than its header"))?;
        b = rest;
        let mut field = |what: &'static str| -> Result<&'a [u8], ProofError> {
            let (len, rest) = b.split_first_chunk::<2>().ok_or(ProofError::Malformed(what))?;
            let len = usize::from(u16::from_be_bytes(*len));
            if len == 0 || rest.len() < len {
                return Err(ProofError::Malformed(what));
            }
            let (v, rest) = rest.split_at(len);
            b = rest;
            Ok(v)
        };
        let signature = field("the signature is truncated or empty")?;
        let leaf = field("the peer certificate is truncated or empty")?;
        let ca = field("the hood certificate is truncated or empty")?;
        if !b.is_empty() {
            return Err(ProofError::Malformed("trailing bytes after the hood certificate"));
        }
        Ok(Parts { scheme: SignatureScheme::from(u16::from_be_bytes(*scheme)), signature, leaf, ca })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_truncation_is_malformed() {
        let mut p = vec![0x04, 0x03];
        for field in [&b"sig"[..], b"leaf", b"ca"] {
            p.extend_from_slice(&(field.len() as u16).to_be_bytes());
            p.extend_from_slice(field);
        }
        assert!(Parts::parse(&p).is_ok());
        for n in 0..p.len() {
            assert!(matches!(Parts::parse(&p[..n]), Err(ProofError::Malformed(_))), "{n}");
        }
        p.push(0);
        assert!(matches!(Parts::parse(&p), Err(ProofError::Malformed(_))));
        // Parsing comes first: garbage is malformed, even with nothing allowed.
        let e = verify_relay_proof(b"garbage", b"m", &[], UnixTime::now()).unwrap_err();
        assert!(matches!(e, ProofError::Malformed(_)), "{e}");
    }
}
