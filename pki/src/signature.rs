//! Signing a message with a loaded key and checking such a signature with a
//! certificate's public key, as a TLS 1.3 CertificateVerify does: TLS 1.3
//! schemes only (no PKCS#1 v1.5, no SHA-1), checked with the algorithms of
//! rustls' ring provider. Membership proofs ([`crate::proof`]) and
//! revocation lists ([`crate::revocation`]) are signed this way, so every key
//! kind a hood or peer may have (ECDSA P-256/P-384, Ed25519, RSA of openssl
//! hoods) signs and verifies alike.

use rustls::sign::SigningKey;
use rustls::SignatureScheme;

/// The schemes a signature may use: TLS 1.3's, in the order of preference
/// of a signer (the key's kind picks one).
pub(crate) const TLS13_SCHEMES: [SignatureScheme; 6] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
];

/// Signs `message` with `key`, with the first of [`TLS13_SCHEMES`] the key
/// can use. `Err` says why not, in words.
pub(crate) fn sign(key: &dyn SigningKey, message: &[u8]) -> Result<(SignatureScheme, Vec<u8>), String> {
    // One scheme at a time, in our order (rustls' RSA key would pick SHA-512 first).
    let signer =
        TLS13_SCHEMES.iter().find_map(|s| key.choose_scheme(&[*s])).ok_or_else(|| "the key has no TLS 1.3 signature scheme".to_string())?;
    let scheme = signer.scheme();
    let signature = signer.sign(message).map_err(|e| e.to_string())?;
    Ok((scheme, signature))
}

/// Why a signature was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not a TLS 1.3 scheme this crate verifies.
    UnsupportedScheme,
    /// The public key cannot be parsed.
    BadKey,
    /// It does not verify with the key (or the scheme is for another key type).
    BadSignature,
}

/// Checks `signature` over `message` with the public key `spki` (DER
/// SubjectPublicKeyInfo), as rustls' `verify_tls13_signature` would: the
/// first algorithm of the scheme, which must be one for the key's type.
pub(crate) fn verify(spki: &[u8], scheme: SignatureScheme, message: &[u8], signature: &[u8]) -> Result<(), Refused> {
    if !TLS13_SCHEMES.contains(&scheme) {
        return Err(Refused::UnsupportedScheme);
    }
    let key = crate::der::spki_parts(spki).ok_or(Refused::BadKey)?;
    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    let alg = algs.mapping.iter().find(|(s, _)| *s == scheme).and_then(|(_, a)| a.first()).ok_or(Refused::UnsupportedScheme)?;
    if alg.public_key_alg_id().as_ref() != key.alg {
        return Err(Refused::BadSignature);
    }
    alg.verify_signature(key.key, message, signature).map_err(|_| Refused::BadSignature)
}
