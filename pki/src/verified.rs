//! Peer certificates already found to be issued by a hood, remembered for
//! the life of the process.
//!
//! Checking a peer certificate means parsing it and verifying the hood's
//! signature on it (an ECDSA verification, ~60 µs, the costliest step of the
//! check). Both depend only on the certificate's bytes and the hood's key,
//! so the outcome is remembered per (certificate bytes, hood key): the next
//! handshake with the same peer (a re-dial, the other direction, another
//! `Bus` of this process) skips both. What depends on the moment or the use
//! (validity period of the certificate and the hood, extendedKeyUsage, not a
//! CA) is checked at every handshake all the same ([`crate::cert::check_use`]),
//! and so is the TLS handshake signature that proves the peer holds the key.
//!
//! Keys are the exact bytes (no digest), so there is nothing to collide.
//! Only successes are remembered; the table is bounded (cleared when full).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::cert::CertFacts;

/// Bound on remembered certificates (each ~1-2 KiB).
const MAX_ENTRIES: usize = 512;

struct Entry {
    /// SubjectPublicKeyInfo of the hood whose key made the signature.
    hood_spki: Vec<u8>,
    facts: Arc<CertFacts>,
}

fn table() -> MutexGuard<'static, HashMap<Vec<u8>, Entry>> {
    static TABLE: OnceLock<Mutex<HashMap<Vec<u8>, Entry>>> = OnceLock::new();
    let m = TABLE.get_or_init(|| Mutex::new(HashMap::new()));
    // Entries are inserted whole; a panic elsewhere cannot leave one half-made.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The facts of `cert_der` if it was found to be signed by the hood key `hood_spki`.
pub(crate) fn issued_by(cert_der: &[u8], hood_spki: &[u8]) -> Option<Arc<CertFacts>> {
    table().get(cert_der).filter(|e| e.hood_spki == hood_spki).map(|e| e.facts.clone())
}

/// Remembers that the hood key `hood_spki` signed `cert_der`.
pub(crate) fn remember(cert_der: &[u8], hood_spki: &[u8], facts: Arc<CertFacts>) {
    let mut t = table();
    if t.len() >= MAX_ENTRIES && !t.contains_key(cert_der) {
        t.clear();
    }
    t.insert(cert_der.to_vec(), Entry { hood_spki: hood_spki.to_vec(), facts });
}

/// The parsed facts of `cert_der` if it was checked already (for its public
/// key and name, which depend only on its bytes), else parsed now.
pub(crate) fn facts(cert_der: &[u8]) -> Result<Arc<CertFacts>, String> {
    if let Some(e) = table().get(cert_der) {
        return Ok(e.facts.clone());
    }
    CertFacts::parse(cert_der).map(Arc::new)
}
