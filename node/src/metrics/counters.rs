//! Counters that nothing else keeps, bumped where things happen. Those on
//! the data path (emit, reader, writer) are relaxed atomic adds, one per
//! emit or per batch; the rest are control-plane events.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// How a TLS handshake ended, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Handshake {
    Ok,
    TimedOut,
    /// The peer's certificate is revoked (ours or its verifier said so).
    Revoked,
    /// Another certificate problem (unknown issuer, expired, bad signature, ...).
    BadCertificate,
    /// Anything else (the peer closed it, unreachable, ...).
    Other,
}

impl Handshake {
    pub(crate) const ALL: [Handshake; 5] =
        [Handshake::Ok, Handshake::TimedOut, Handshake::Revoked, Handshake::BadCertificate, Handshake::Other];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Handshake::Ok => "ok",
            Handshake::TimedOut => "timeout",
            Handshake::Revoked => "revoked",
            Handshake::BadCertificate => "bad_certificate",
            Handshake::Other => "other",
        }
    }

    /// Classifies a failed QUIC handshake by its TLS alert: the one our
    /// verifier sent (a local transport error) or the peer's (a close).
    pub(crate) fn of_error(e: &quinn::ConnectionError) -> Handshake {
        use quinn::ConnectionError as E;
        let code = match e {
            E::TimedOut => return Handshake::TimedOut,
            E::TransportError(t) => t.code,
            E::ConnectionClosed(c) => c.error_code,
            _ => return Handshake::Other,
        };
        // TLS alerts (RFC 8446 section 6): certificate_revoked (44); bad_certificate (42),
        // unsupported_certificate (43), certificate_expired (45), certificate_unknown (46),
        // unknown_ca (48), certificate_required (116).
        let alert = |a: u8| code == quinn::TransportErrorCode::crypto(a);
        if alert(44) {
            Handshake::Revoked
        } else if [42, 43, 45, 46, 48, 116].into_iter().any(alert) {
            Handshake::BadCertificate
        } else {
            Handshake::Other
        }
    }
}

/// Why a neighbour was lost, as counted (a small fixed set of labels).
pub(crate) const LOST_REASONS: [&str; 7] = ["left", "closed", "timeout", "protocol", "stuck", "revoked", "switch"];

/// Node-wide counters since the node joined.
#[derive(Default)]
pub(crate) struct Counters {
    /// `emit` calls.
    pub emits: AtomicU64,
    /// Event copies queued for neighbours (one per interested neighbour).
    pub events_sent: AtomicU64,
    /// Events received from neighbours.
    pub events_received: AtomicU64,
    /// Bytes written to and read from neighbours' event streams (frames, with their headers).
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Event copies dropped under `FullPolicy::Drop`.
    pub events_dropped: AtomicU64,
    /// TLS handshakes by direction (0: out, 1: in) and result ([`Handshake::ALL`] order).
    handshakes: [[AtomicU64; 5]; 2],
    /// Hello exchanges that failed after TLS: protocol version mismatch, or other.
    pub hello_version: AtomicU64,
    pub hello_other: AtomicU64,
    /// Neighbours found, and lost by reason ([`LOST_REASONS`] order).
    pub neighbours_found: AtomicU64,
    lost: [AtomicU64; 7],
    /// Connections closed because the peer's certificate was revoked.
    pub revoked_closed: AtomicU64,
    /// Neighbours disconnected because their queue stayed full (`FullPolicy::Disconnect`).
    pub stuck_closed: AtomicU64,
    /// Addresses discovery services named, by service.
    candidates: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn handshake(&self, incoming: bool, result: Handshake) {
        let i = Handshake::ALL.iter().position(|h| *h == result).expect("listed");
        Self::add(&self.handshakes[usize::from(incoming)][i], 1);
    }

    /// (direction, result, count) for every combination.
    pub(crate) fn handshakes(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for (d, dir) in ["out", "in"].into_iter().enumerate() {
            for (i, h) in Handshake::ALL.iter().enumerate() {
                out.push((dir, h.label(), Self::get(&self.handshakes[d][i])));
            }
        }
        out
    }

    /// Counts a lost neighbour; `reason` is the text the mesh gave.
    pub(crate) fn lost(&self, reason: &str) {
        let r = reason.to_ascii_lowercase();
        let kind = if r == "left" {
            "left"
        } else if r.contains("revoked") {
            "revoked"
        } else if r.contains("stuck") {
            "stuck"
        } else if r.contains("timed out") || r.contains("timeout") {
            "timeout"
        } else if r.contains("protocol") || r.contains("broke") {
            "protocol"
        } else if r.contains("switch") {
            "switch"
        } else {
            "closed"
        };
        let i = LOST_REASONS.iter().position(|k| *k == kind).expect("listed");
        Self::add(&self.lost[i], 1);
    }

    pub(crate) fn lost_by_reason(&self) -> Vec<(&'static str, u64)> {
        LOST_REASONS.iter().enumerate().map(|(i, k)| (*k, Self::get(&self.lost[i]))).collect()
    }

    /// Counts an address named by discovery service `source` (control plane).
    pub(crate) fn candidate(&self, source: &str) {
        let mut m = self.candidates.lock().unwrap_or_else(|p| p.into_inner());
        // Service names are few; a bound keeps a misbehaving one from growing the map.
        if m.len() < 32 || m.contains_key(source) {
            *m.entry(source.to_owned()).or_default() += 1;
        }
    }

    pub(crate) fn candidates(&self) -> Vec<(String, u64)> {
        self.candidates.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}
