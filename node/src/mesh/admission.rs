//! Which incoming handshakes a node takes on (sans I/O). A handshake in
//! progress costs state until it completes or times out, and anyone can
//! start one: 6,000 half-open handshakes from a client without a
//! certificate once cost a node 255 MB that it kept. So: a bounded number at
//! a time, a bounded share per source address, and under load a stateless
//! QUIC Retry first (a spoofed source never answers it, a real one costs a
//! round trip).

use std::collections::HashMap;
use std::net::IpAddr;

/// Incoming handshakes in progress at most.
pub(crate) const MAX_IN_PROGRESS: usize = 256;
/// Of those, from one source address at most (NATs put many hosts behind one).
pub(crate) const MAX_PER_IP: usize = 32;
/// From this many in progress on, an unvalidated source gets a Retry first.
pub(crate) const RETRY_ABOVE: usize = 64;

/// What to do with an incoming handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    Accept,
    /// Ask the client to prove its address (QUIC Retry) and come back.
    Retry,
    /// Turn it away (QUIC refuse: "server busy").
    Refuse,
}

#[derive(Default)]
pub(crate) struct Admission {
    in_progress: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl Admission {
    /// Decides on a handshake from `ip`; `validated`: its address is
    /// proven (it answered a Retry); `may_retry`: a Retry is still possible.
    /// An `Accept` must be matched by one [`Admission::done`].
    pub(crate) fn admit(&mut self, ip: IpAddr, validated: bool, may_retry: bool) -> Admit {
        let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        if self.in_progress >= MAX_IN_PROGRESS || from_ip >= MAX_PER_IP {
            return Admit::Refuse;
        }
        if self.in_progress >= RETRY_ABOVE && !validated && may_retry {
            return Admit::Retry;
        }
        self.in_progress += 1;
        *self.per_ip.entry(ip).or_default() += 1;
        Admit::Accept
    }

    /// An accepted handshake from `ip` is over (done, failed or timed out).
    pub(crate) fn done(&mut self, ip: IpAddr) {
        self.in_progress = self.in_progress.saturating_sub(1);
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_all_and_per_source_with_retries_under_load() {
        let mut a = Admission::default();
        let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0xC633_6400 + i));
        // One source: its share, then refused.
        for _ in 0..MAX_PER_IP {
            assert_eq!(a.admit(ip(1), true, false), Admit::Accept);
        }
        assert_eq!(a.admit(ip(1), true, false), Admit::Refuse);
        // Many sources: unvalidated ones get a Retry once the load is up.
        let mut n = MAX_PER_IP;
        let mut i = 2;
        while n < RETRY_ABOVE {
            assert_eq!(a.admit(ip(i), false, true), Admit::Accept);
            n += 1;
            i += 1;
        }
        assert_eq!(a.admit(ip(i), false, true), Admit::Retry);
        assert_eq!(a.admit(ip(i), false, false), Admit::Accept, "a retried client that comes back validated");
        // Full: everyone is refused, validated or not.
        while a.in_progress < MAX_IN_PROGRESS {
            i += 1;
            assert_eq!(a.admit(ip(i), true, false), Admit::Accept);
        }
        assert_eq!(a.admit(ip(10_000), true, false), Admit::Refuse);
        // Ending handshakes make room again, and the per-source map empties.
        a.done(ip(1));
        assert_eq!(a.admit(ip(1), true, false), Admit::Accept);
        for _ in 0..MAX_PER_IP {
            a.done(ip(1));
        }
        assert!(!a.per_ip.contains_key(&ip(1)));
    }
}
