//! Repeated complaints about one peer, logged once per interval with a
//! count. A peer decides how often we would otherwise log: one 1.4 MB
//! Subscribe frame of bad selectors once gave 190,000 WARN lines (35 MB of
//! stderr).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How often one peer's complaints of one kind reach the log.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);

pub(crate) struct RateLog<K> {
    every: Duration,
    /// One entry per peer with complaints; [`RateLog::forget`] removes it
    /// when the peer goes, so it is bounded by the neighbour count.
    peers: HashMap<K, Held>,
}

struct Held {
    /// No line before this.
    quiet_until: Instant,
    /// Complaints since the last line.
    count: u64,
}

impl<K: Hash + Eq> RateLog<K> {
    pub(crate) fn new(every: Duration) -> Self {
        RateLog { every, peers: HashMap::new() }
    }

    /// Counts `n` complaints about `key`; `Some(total)` when a line is due
    /// now, `total` being the complaints since the last line (these
    /// included).
    pub(crate) fn note(&mut self, key: K, n: u64, now: Instant) -> Option<u64> {
        let held = self.peers.entry(key).or_insert(Held { quiet_until: now, count: 0 });
        held.count += n;
        if now < held.quiet_until {
            return None;
        }
        held.quiet_until = now + self.every;
        Some(std::mem::take(&mut held.count))
    }

    /// The peer is gone: what was held back is dropped with it.
    pub(crate) fn forget(&mut self, key: &K) {
        self.peers.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_what_was_held_back() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut log = RateLog::new(10 * s);
        assert_eq!(log.note("a", 3, t0), Some(3), "the first complaint is logged at once");
        assert_eq!(log.note("a", 5, t0 + s), None);
        assert_eq!(log.note("b", 1, t0 + s), Some(1), "peers are counted apart");
        assert_eq!(log.note("a", 2, t0 + 9 * s), None);
        assert_eq!(log.note("a", 1, t0 + 10 * s), Some(8), "5 + 2 held back, and this one");
        assert_eq!(log.note("a", 1, t0 + 11 * s), None);
        log.forget(&"a");
        assert_eq!(log.note("a", 1, t0 + 12 * s), Some(1), "a returning peer starts afresh");
    }
}
