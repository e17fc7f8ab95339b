//! Key kinds, private key loading, and a bridge that lets rcgen sign with
//! any key rustls can load (so an openssl-made RSA hood can sign new peers).

use std::fmt;
use std::sync::Arc;

use rustls::sign::SigningKey as TlsSigningKey;
use rustls::SignatureScheme;
use rustls_pki_types::PrivateKeyDer;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::error::PkiError;

/// The kind of key pair behind a certificate.
///
/// New hoods and peers are made with [`KeyKind::EcdsaP256`] (the default) or
/// [`KeyKind::Ed25519`]; the other kinds are accepted when loading files made
/// elsewhere (old tubemail PKIs are RSA 4096).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[non_exhaustive]
pub enum KeyKind {
    /// ECDSA on NIST P-256 with SHA-256: the default for new files.
    EcdsaP256,
    /// Ed25519.
    Ed25519,
    /// ECDSA on NIST P-384 (loaded only).
    EcdsaP384,
    /// RSA with the given modulus size (loaded only).
    Rsa {
        /// Modulus size in bits, e.g. 4096.
        bits: u32,
    },
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::EcdsaP256 => f.write_str("ECDSA P-256"),
            KeyKind::Ed25519 => f.write_str("Ed25519"),
            KeyKind::EcdsaP384 => f.write_str("ECDSA P-384"),
            KeyKind::Rsa { bits } => write!(f, "RSA {bits}"),
        }
    }
}

impl KeyKind {
    /// Reads the kind from a parsed SubjectPublicKeyInfo; `Err` describes an
    /// unknown algorithm.
    pub(crate) fn of_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyKind, String> {
        let alg = &spki.algorithm.algorithm;
        if *alg == OID_PKCS1_RSAENCRYPTION {
            match spki.parsed() {
                Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => Ok(KeyKind::Rsa { bits: bit_len(rsa.modulus) }),
                _ => Err("an RSA key that cannot be parsed".into()),
            }
        } else if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
            match curve {
                Some(c) if c == OID_EC_P256 => Ok(KeyKind::EcdsaP256),
                Some(c) if c == OID_NIST_EC_P384 => Ok(KeyKind::EcdsaP384),
                Some(c) => Err(format!("an EC key on unsupported curve {c}")),
                None => Err("an EC key without a named curve".into()),
            }
        } else if *alg == OID_SIG_ED25519 {
            Ok(KeyKind::Ed25519)
        } else {
            Err(format!("an unsupported key algorithm ({alg})"))
        }
    }
}

/// Number of significant bits in a big-endian unsigned integer.
fn bit_len(be: &[u8]) -> u32 {
    let be = match be.iter().position(|&b| b != 0) {
        Some(i) => &be[i..],
        None => return 0,
    };
    (be.len() as u32 - 1) * 8 + (8 - be[0].leading_zeros())
}

/// A private key, loaded and usable for signing.
pub(crate) struct LoadedKey {
    pub der: PrivateKeyDer<'static>,
    pub signer: Arc<dyn TlsSigningKey>,
    /// DER SubjectPublicKeyInfo of the matching public key.
    pub spki: Vec<u8>,
}

impl Clone for LoadedKey {
    fn clone(&self) -> Self {
        LoadedKey { der: self.der.clone_key(), signer: self.signer.clone(), spki: self.spki.clone() }
    }
}

impl LoadedKey {
    pub(crate) fn from_der(der: PrivateKeyDer<'static>, origin: &str) -> Result<Self, PkiError> {
        let signer = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| {
            let e = match e {
                rustls::Error::General(text) => text,
                other => other.to_string(),
            };
            PkiError::InvalidKey {
                origin: origin.to_string(),
                reason: format!("{e} (RSA 2048-8192, ECDSA P-256/P-384 and Ed25519 keys work)"),
            }
        })?;
        let spki = signer
            .public_key()
            .map(|k| k.as_ref().to_vec())
            .ok_or_else(|| PkiError::InvalidKey { origin: origin.to_string(), reason: "cannot compute the public key".into() })?;
        Ok(LoadedKey { der, signer, spki })
    }
}

/// Whether two DER SubjectPublicKeyInfos hold the same key (algorithm OID
/// and key bits; RSA parameters may be NULL or absent, so those are not compared).
pub(crate) fn same_public_key(a: &[u8], b: &[u8]) -> bool {
    match (SubjectPublicKeyInfo::from_der(a), SubjectPublicKeyInfo::from_der(b)) {
        (Ok((_, a)), Ok((_, b))) => {
            a.algorithm.algorithm == b.algorithm.algorithm && a.subject_public_key.data == b.subject_public_key.data
        }
        _ => false,
    }
}

/// Lets rcgen sign with a key loaded by rustls (any format, RSA included).
pub(crate) struct RcgenSigner {
    key: Arc<dyn TlsSigningKey>,
    scheme: SignatureScheme,
    alg: &'static rcgen::SignatureAlgorithm,
    public_key: Vec<u8>,
}

impl RcgenSigner {
    pub(crate) fn new(key: &LoadedKey, origin: &str) -> Result<Self, PkiError> {
        // For each key type: the TLS scheme to sign with and the matching X.509 algorithm.
        let choices: [(SignatureScheme, &'static rcgen::SignatureAlgorithm); 4] = [
            (SignatureScheme::ECDSA_NISTP256_SHA256, &rcgen::PKCS_ECDSA_P256_SHA256),
            (SignatureScheme::ECDSA_NISTP384_SHA384, &rcgen::PKCS_ECDSA_P384_SHA384),
            (SignatureScheme::ED25519, &rcgen::PKCS_ED25519),
            (SignatureScheme::RSA_PKCS1_SHA256, &rcgen::PKCS_RSA_SHA256),
        ];
        let (scheme, alg) = choices.into_iter().find(|(scheme, _)| key.signer.choose_scheme(&[*scheme]).is_some()).ok_or_else(|| {
            PkiError::Unsupported {
                origin: origin.to_string(),
                reason: "this key type cannot sign certificates here; use an ECDSA P-256, Ed25519 or RSA hood key".into(),
            }
        })?;
        let public_key = crate::der::spki_parts(&key.spki)
            .map(|p| p.key.to_vec())
            .ok_or_else(|| PkiError::InvalidKey { origin: origin.to_string(), reason: "cannot encode the public key".into() })?;
        Ok(RcgenSigner { key: key.signer.clone(), scheme, alg, public_key })
    }
}

impl rcgen::PublicKeyData for RcgenSigner {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.alg
    }
}

impl rcgen::SigningKey for RcgenSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let signer = self.key.choose_scheme(&[self.scheme]).ok_or(rcgen::Error::RemoteKeyError)?;
        signer.sign(msg).map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_lengths() {
        assert_eq!(bit_len(&[0x00, 0x80, 0, 0]), 24);
        assert_eq!(bit_len(&[0x01, 0xff]), 9);
        assert_eq!(bit_len(&[0, 0]), 0);
        let mut m = vec![0u8];
        m.extend(std::iter::repeat_n(0xffu8, 512));
        assert_eq!(bit_len(&m), 4096);
    }

    #[test]
    fn display() {
        assert_eq!(KeyKind::EcdsaP256.to_string(), "ECDSA P-256");
        assert_eq!(KeyKind::Ed25519.to_string(), "Ed25519");
        assert_eq!(KeyKind::Rsa { bits: 4096 }.to_string(), "RSA 4096");
    }
}
