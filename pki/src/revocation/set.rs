//! [`RevokedSet`]: the revocation list in force, shared by a node's TLS
//! verifiers and whoever applies new lists.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use super::{sha256, RevocationError, RevocationList};
use crate::hood::Hood;

/// The fingerprints revoked now, for one hood. Cloning shares it: the
/// verifiers read it at every handshake (a read lock held for one hash-set
/// lookup, never on a data path), and [`RevokedSet::apply`] swaps the
/// whole set at once, so a handshake sees the old list or the new one,
/// never a mix.
#[derive(Clone, Debug)]
pub struct RevokedSet {
    hood_fingerprint: Arc<str>,
    hood_name: Arc<str>,
    current: Arc<RwLock<Arc<Current>>>,
}

#[derive(Debug, Default)]
struct Current {
    sequence: u64,
    fingerprints: HashSet<[u8; 32]>,
    list: Option<RevocationList>,
}

impl RevokedSet {
    /// An empty set (nothing revoked, sequence 0) for `hood`.
    pub fn new(hood: &Hood) -> RevokedSet {
        RevokedSet {
            hood_fingerprint: hood.fingerprint().into(),
            hood_name: hood.name().into(),
            current: Arc::new(RwLock::new(Arc::new(Current::default()))),
        }
    }

    /// Puts `list` in force. Refused: a list for another hood, or one whose
    /// sequence is older than the one in force (an equal one is applied
    /// again, so a reload of the same file is harmless). Every list is
    /// signature-checked when made ([`RevocationList`] has no unchecked
    /// constructor). `Ok(true)` when the list is newer than the one that was
    /// in force (a node passes such a list on to its neighbours).
    pub fn apply(&self, list: &RevocationList, origin: &str) -> Result<bool, RevocationError> {
        if list.hood_fingerprint() != &*self.hood_fingerprint {
            return Err(RevocationError::OtherHood {
                origin: origin.to_string(),
                list_hood: list.hood_fingerprint().to_string(),
                hood: self.hood_name.to_string(),
                fingerprint: self.hood_fingerprint.to_string(),
            });
        }
        let new = Arc::new(Current { sequence: list.sequence(), fingerprints: list.fingerprint_set(), list: Some(list.clone()) });
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        if list.sequence() < cur.sequence {
            return Err(RevocationError::Older { origin: origin.to_string(), sequence: list.sequence(), current: cur.sequence });
        }
        let newer = list.sequence() > cur.sequence;
        *cur = new;
        Ok(newer)
    }

    /// The list in force, if any.
    pub fn list(&self) -> Option<RevocationList> {
        self.snapshot().list.clone()
    }

    /// The sequence number in force (0: no list yet).
    pub fn sequence(&self) -> u64 {
        self.snapshot().sequence
    }

    /// Number of revoked certificates in force.
    pub fn len(&self) -> usize {
        self.snapshot().fingerprints.len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.snapshot().fingerprints.is_empty()
    }

    /// Whether the certificate (DER) is revoked. Costs one SHA-256 of the
    /// certificate when anything is revoked, nothing otherwise.
    pub fn is_revoked(&self, cert_der: &[u8]) -> bool {
        let cur = self.snapshot();
        !cur.fingerprints.is_empty() && cur.fingerprints.contains(&sha256(cert_der))
    }

    /// Whether the certificate with this fingerprint (hex SHA-256, any case) is revoked.
    pub fn is_revoked_fingerprint(&self, fingerprint: &str) -> bool {
        let cur = self.snapshot();
        let Some(fp) = hex::decode(fingerprint).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()) else { return false };
        cur.fingerprints.contains(&fp)
    }

    fn snapshot(&self) -> Arc<Current> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
