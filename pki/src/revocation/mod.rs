//! Revocation lists: which peer certificates a hood no longer accepts.
//!
//! A list is signed with the hood's key (`HOOD.key`), so a node can trust a
//! list that reaches it from anywhere (a file, a neighbour) and a member of
//! the hood cannot forge one. It is a PEM block
//! `-----BEGIN PARTYBUS REVOCATION LIST-----` around this encoding (all
//! integers big-endian):
//!
//! | field | encoding |
//! |---|---|
//! | magic | `PBRL` |
//! | version | u8, 1 |
//! | hood fingerprint | 32 bytes: SHA-256 of the hood certificate's DER |
//! | sequence | u64: 1 for the first list, +1 at every change |
//! | issued at | i64: Unix seconds |
//! | entry count | u32 (at most [`MAX_ENTRIES`]) |
//! | entries | each: 32 bytes SHA-256 of the revoked certificate's DER, u8 name length, name (UTF-8, for people; may be empty) |
//! | signature scheme | u16 (TLS `SignatureScheme`, a TLS 1.3 one) |
//! | signature | u16 length, bytes: by the hood's key over everything before the scheme |
//!
//! Entries are sorted by fingerprint, without duplicates; nothing may follow
//! the signature. A node applies a list only if it is signed by its hood's
//! key and its sequence is not older than the one in force.

mod create;
mod set;

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use rustls::SignatureScheme;

use crate::cert;
use crate::error::PkiError;
use crate::hood::Hood;
use crate::pemfile;
use crate::signature;

pub use create::{revoke, RevokeOutcome, RevokeTarget};
pub use set::RevokedSet;

/// The PEM label of a revocation list.
pub const PEM_LABEL: &str = "PARTYBUS REVOCATION LIST";
const MAGIC: &[u8; 4] = b"PBRL";
const VERSION: u8 = 1;
/// Entries a list may hold at most (a list of that size is about 5 MB).
pub const MAX_ENTRIES: usize = 65_536;
const HEADER: usize = 4 + 1 + 32 + 8 + 8 + 4;

/// Why a revocation list was refused or could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    /// Reading or writing a file, or loading the hood's certificate or key.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// Not a PEM revocation list.
    #[error("{origin}: not a revocation list (expected a `-----BEGIN {PEM_LABEL}-----` block); make one with `partybus cert revoke HOOD --cert FILE`")]
    NotAList {
        /// File name or caller-given origin.
        origin: String,
    },
    /// The bytes are not a well-formed list (truncated, tampered with, ...).
    #[error(
        "{origin}: malformed revocation list: {reason}; make a new one with `partybus cert revoke` (the file may be truncated or altered)"
    )]
    Malformed {
        /// File name or caller-given origin.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// A version this build does not read.
    #[error("{origin}: revocation list version {version} is not supported (this build reads version {VERSION}); update partybus")]
    Version {
        /// File name or caller-given origin.
        origin: String,
        /// The version found.
        version: u8,
    },
    /// The list is for another hood.
    #[error("{origin}: this revocation list is for hood {list_hood}, not for hood \"{hood}\" ({fingerprint}); use the list made with this hood's key (`partybus cert revoke {hood} ...`)")]
    OtherHood {
        /// File name or caller-given origin.
        origin: String,
        /// The hood fingerprint written in the list.
        list_hood: String,
        /// Our hood's name.
        hood: String,
        /// Our hood's fingerprint.
        fingerprint: String,
    },
    /// The signature is not the hood key's: forged or altered.
    #[error("{origin}: the revocation list is not signed by the key of hood \"{hood}\" ({reason}): it is forged or was altered; refusing it. Make the list with the hood's key: `partybus cert revoke {hood} --cert FILE --dir DIR` (DIR holding {hood}.crt and {hood}.key)")]
    BadSignature {
        /// File name or caller-given origin.
        origin: String,
        /// Our hood's name.
        hood: String,
        /// In words.
        reason: &'static str,
    },
    /// A list older than the one in force.
    #[error("revocation list {origin} has sequence {sequence}, older than the list in force (sequence {current}); keeping the newer one")]
    Older {
        /// File name or caller-given origin.
        origin: String,
        /// Its sequence number.
        sequence: u64,
        /// The sequence number in force.
        current: u64,
    },
    /// What to revoke could not be used.
    #[error("{0}")]
    Target(String),
    /// Signing failed.
    #[error("cannot sign the revocation list with {key}: {reason}")]
    Sign {
        /// The key file.
        key: String,
        /// What went wrong.
        reason: String,
    },
}

/// One revoked certificate.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RevokedCert {
    /// Lowercase hex SHA-256 of the certificate's DER (what
    /// `partybus cert show` prints as its fingerprint).
    pub fingerprint: String,
    /// Its common name when it was revoked by file (empty if unknown).
    pub name: String,
}

/// A revocation list whose signature was checked against a hood's key.
/// There is no other way to get one: every constructor verifies.
#[derive(Clone, PartialEq, Eq)]
pub struct RevocationList {
    hood_fingerprint: String,
    sequence: u64,
    issued_at: i64,
    entries: Vec<([u8; 32], String)>,
    /// The signed encoding, as read or made.
    encoded: Vec<u8>,
}

impl fmt::Debug for RevocationList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationList")
            .field("hood", &self.hood_fingerprint)
            .field("sequence", &self.sequence)
            .field("entries", &self.entries.len())
            .finish()
    }
}

/// The fields of a list, parsed but not yet verified.
struct Parsed<'a> {
    hood: [u8; 32],
    sequence: u64,
    issued_at: i64,
    entries: Vec<([u8; 32], String)>,
    body: &'a [u8],
    scheme: SignatureScheme,
    signature: &'a [u8],
}

impl RevocationList {
    /// Loads a list file and checks that `hood`'s key signed it.
    pub fn load(path: &Path, hood: &Hood) -> Result<RevocationList, RevocationError> {
        let pem = pemfile::read_file(path)?;
        Self::from_pem(&pem, hood, &path.display().to_string())
    }

    /// Like [`RevocationList::load`], from PEM in memory; `origin` names the source in errors.
    pub fn from_pem(pem: &[u8], hood: &Hood, origin: &str) -> Result<RevocationList, RevocationError> {
        Self::from_der(&der_from_pem(pem, origin)?, hood, origin)
    }

    /// Like [`RevocationList::from_pem`], from the encoding without PEM (as a list travels between nodes).
    pub fn from_der(der: &[u8], hood: &Hood, origin: &str) -> Result<RevocationList, RevocationError> {
        let p = parse(der, origin)?;
        let ours = hex::decode(hood.fingerprint()).unwrap_or_default();
        if p.hood[..] != ours[..] {
            return Err(RevocationError::OtherHood {
                origin: origin.to_string(),
                list_hood: hex::encode(p.hood),
                hood: hood.name().to_string(),
                fingerprint: hood.fingerprint().to_string(),
            });
        }
        let bad = |reason| RevocationError::BadSignature { origin: origin.to_string(), hood: hood.name().to_string(), reason };
        signature::verify(&hood.facts.spki, p.scheme, p.body, p.signature).map_err(|r| match r {
            signature::Refused::UnsupportedScheme => bad("its signature scheme is not one partybus uses"),
            signature::Refused::BadKey => bad("the hood's public key cannot be parsed"),
            signature::Refused::BadSignature => bad("the signature does not verify with the hood's public key"),
        })?;
        Ok(RevocationList {
            hood_fingerprint: hood.fingerprint().to_string(),
            sequence: p.sequence,
            issued_at: p.issued_at,
            entries: p.entries,
            encoded: der.to_vec(),
        })
    }

    /// Signs a new list for `hood` with its key's signer.
    pub(crate) fn sign(
        hood: &Hood,
        key: &dyn rustls::sign::SigningKey,
        key_origin: &str,
        sequence: u64,
        mut entries: Vec<([u8; 32], String)>,
    ) -> Result<RevocationList, RevocationError> {
        entries.sort_by_key(|a| a.0);
        entries.dedup_by(|a, b| a.0 == b.0);
        if entries.len() > MAX_ENTRIES {
            return Err(RevocationError::Target(format!("a revocation list holds at most {MAX_ENTRIES} certificates")));
        }
        let issued_at = cert::now_secs();
        let mut out = Vec::with_capacity(HEADER + entries.len() * 50 + 600);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&hex::decode(hood.fingerprint()).unwrap_or_default());
        out.extend_from_slice(&sequence.to_be_bytes());
        out.extend_from_slice(&issued_at.to_be_bytes());
        out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        for (fp, name) in &mut entries {
            // Names are for people; a long one is cut at a character boundary.
            let mut end = name.len().min(255);
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            name.truncate(end);
            out.extend_from_slice(fp);
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
        }
        let (scheme, sig) = signature::sign(key, &out).map_err(|reason| RevocationError::Sign { key: key_origin.to_string(), reason })?;
        out.extend_from_slice(&u16::from(scheme).to_be_bytes());
        let len = u16::try_from(sig.len())
            .map_err(|_| RevocationError::Sign { key: key_origin.to_string(), reason: "signature too long".into() })?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&sig);
        // What we made must verify like any list.
        Self::from_der(&out, hood, "the new revocation list")
    }

    /// The fingerprint of the hood whose key signed it.
    pub fn hood_fingerprint(&self) -> &str {
        &self.hood_fingerprint
    }

    /// The sequence number: larger is newer.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// When it was signed, Unix seconds.
    pub fn issued_at(&self) -> i64 {
        self.issued_at
    }

    /// When it was signed, RFC 3339.
    pub fn issued_at_rfc3339(&self) -> String {
        cert::rfc3339(self.issued_at)
    }

    /// The revoked certificates, by fingerprint.
    pub fn entries(&self) -> Vec<RevokedCert> {
        self.entries.iter().map(|(fp, name)| RevokedCert { fingerprint: hex::encode(fp), name: name.clone() }).collect()
    }

    /// Number of revoked certificates.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it revokes nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the certificate with this SHA-256 (raw bytes) is revoked.
    pub fn contains(&self, fingerprint: &[u8; 32]) -> bool {
        self.entries.binary_search_by(|(fp, _)| fp.cmp(fingerprint)).is_ok()
    }

    /// Whether this certificate (DER) is revoked.
    pub fn contains_cert(&self, cert_der: &[u8]) -> bool {
        self.contains(&sha256(cert_der))
    }

    /// The set of revoked fingerprints.
    pub(crate) fn fingerprint_set(&self) -> HashSet<[u8; 32]> {
        self.entries.iter().map(|(fp, _)| *fp).collect()
    }

    /// The signed encoding (without PEM), as [`RevocationList::from_der`] reads it.
    pub fn as_der(&self) -> &[u8] {
        &self.encoded
    }

    /// The list as a PEM file.
    pub fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new(PEM_LABEL, self.encoded.clone()))
    }
}

/// The sequence number an encoded list claims, read without checking
/// anything else: cheap, to skip a signature check for a list that is not
/// newer than the one in force.
pub fn claimed_sequence(der: &[u8]) -> Option<u64> {
    if der.len() < HEADER || &der[..4] != MAGIC || der[4] != VERSION {
        return None;
    }
    Some(u64::from_be_bytes(der[37..45].try_into().ok()?))
}

/// SHA-256, raw.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// What a list says, without checking who signed it: for display
/// (`partybus cert show`), and to find the hood it claims to be for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RevocationInfo {
    /// The hood fingerprint written in the list.
    pub hood_fingerprint: String,
    /// Its sequence number.
    pub sequence: u64,
    /// When it was signed, RFC 3339.
    pub issued_at: String,
    /// The revoked certificates.
    pub revoked: Vec<RevokedCert>,
}

impl RevocationInfo {
    /// Reads a list without checking its signature.
    pub fn from_pem(pem: &[u8], origin: &str) -> Result<RevocationInfo, RevocationError> {
        let der = der_from_pem(pem, origin)?;
        let p = parse(&der, origin)?;
        Ok(RevocationInfo {
            hood_fingerprint: hex::encode(p.hood),
            sequence: p.sequence,
            issued_at: cert::rfc3339(p.issued_at),
            revoked: p.entries.iter().map(|(fp, name)| RevokedCert { fingerprint: hex::encode(fp), name: name.clone() }).collect(),
        })
    }

    /// Whether `pem` holds a revocation list (rather than a certificate).
    pub fn is_list(pem: &[u8]) -> bool {
        pem::parse_many(pem).is_ok_and(|blocks| blocks.iter().any(|b| b.tag() == PEM_LABEL))
    }
}

fn der_from_pem(pem: &[u8], origin: &str) -> Result<Vec<u8>, RevocationError> {
    let blocks = pem::parse_many(pem).map_err(|_| RevocationError::NotAList { origin: origin.to_string() })?;
    blocks
        .into_iter()
        .find(|b| b.tag() == PEM_LABEL)
        .map(|b| b.into_contents())
        .ok_or_else(|| RevocationError::NotAList { origin: origin.to_string() })
}

fn parse<'a>(b: &'a [u8], origin: &str) -> Result<Parsed<'a>, RevocationError> {
    let bad = |reason: &str| RevocationError::Malformed { origin: origin.to_string(), reason: reason.to_string() };
    if b.len() < 5 || &b[..4] != MAGIC {
        return Err(bad("it does not start with the PBRL magic"));
    }
    if b[4] != VERSION {
        return Err(RevocationError::Version { origin: origin.to_string(), version: b[4] });
    }
    if b.len() < HEADER {
        return Err(bad("shorter than its header"));
    }
    let mut hood = [0u8; 32];
    hood.copy_from_slice(&b[5..37]);
    let sequence = u64::from_be_bytes(b[37..45].try_into().expect("8 bytes"));
    let issued_at = i64::from_be_bytes(b[45..53].try_into().expect("8 bytes"));
    let count = u32::from_be_bytes(b[53..57].try_into().expect("4 bytes")) as usize;
    if count > MAX_ENTRIES {
        return Err(bad("more entries than a list may hold"));
    }
    let mut at = HEADER;
    let mut entries: Vec<([u8; 32], String)> = Vec::with_capacity(count.min(b.len() / 33));
    for _ in 0..count {
        let Some(fp) = b.get(at..at + 32) else { return Err(bad("an entry is truncated")) };
        let Some(&len) = b.get(at + 32) else { return Err(bad("an entry is truncated")) };
        let Some(name) = b.get(at + 33..at + 33 + usize::from(len)) else { return Err(bad("an entry's name is truncated")) };
        let name = std::str::from_utf8(name).map_err(|_| bad("an entry's name is not UTF-8"))?;
        let fp: [u8; 32] = fp.try_into().expect("32 bytes");
        if entries.last().is_some_and(|(last, _)| *last >= fp) {
            return Err(bad("the entries are not sorted by fingerprint without duplicates"));
        }
        entries.push((fp, name.to_string()));
        at += 33 + usize::from(len);
    }
    let body = &b[..at];
    let Some(scheme) = b.get(at..at + 2) else { return Err(bad("the signature is missing")) };
    let Some(len) = b.get(at + 2..at + 4) else { return Err(bad("the signature is missing")) };
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let Some(signature) = b.get(at + 4..at + 4 + len) else { return Err(bad("the signature is truncated")) };
    if len == 0 {
        return Err(bad("the signature is empty"));
    }
    if b.len() != at + 4 + len {
        return Err(bad("trailing bytes after the signature"));
    }
    Ok(Parsed {
        hood,
        sequence,
        issued_at,
        entries,
        body,
        scheme: SignatureScheme::from(u16::from_be_bytes([scheme[0], scheme[1]])),
        signature,
    })
}

#[cfg(test)]
mod tests;
