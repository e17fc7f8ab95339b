//! Neighbour-state decisions (sans I/O): the duplicate-connection rule, who
//! dials first, re-dial backoff, and which addresses may be gossiped.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::id::NodeId;

/// Who opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The peer dialled us.
    In,
    /// We dialled the peer.
    Out,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::In => "in",
            Direction::Out => "out",
        })
    }
}

/// A connection is *primary* when it was dialled by the node with the lower
/// id. Both ends compute the same answer.
pub fn is_primary(own: NodeId, peer: NodeId, dir: Direction) -> bool {
    let dialer_is_lower = match dir {
        Direction::Out => own < peer,
        Direction::In => peer < own,
    };
    dialer_is_lower
}

/// What to do with a connection whose handshake just completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No connection to this node yet: use this one.
    Activate,
    /// Use this one; retire the active one gracefully (it stays readable
    /// until the peer finishes sending on it).
    Replace,
    /// Keep the active one; retire this one gracefully.
    Retire,
}

/// The one-connection-per-pair rule.
///
/// When two connections to the same node exist, both have completed a
/// handshake, so both directions work and either may be kept without losing
/// reachability. The primary one (dialled by the lower id) wins; between two
/// of the same kind the newer wins (the older one is most likely half-open
/// after a network change). A lone connection is always kept, whoever
/// dialled it: a node behind NAT that can only dial out keeps its
/// connection whatever the ids are (the flaw of tubemail's rule).
pub fn decide(active_primary: Option<bool>, new_primary: bool) -> Verdict {
    match active_primary {
        None => Verdict::Activate,
        Some(true) if !new_primary => Verdict::Retire,
        Some(_) => Verdict::Replace,
    }
}

/// When gossip tells us about a node we are not connected to: the lower id
/// dials at once, the higher id waits `delay` and dials only if no
/// connection came in meanwhile. This avoids most simultaneous opens; when
/// the lower id cannot reach us (we are behind NAT) our later dial still
/// connects.
pub fn gossip_dial_delay(own: NodeId, peer: NodeId, delay: Duration) -> Duration {
    if own < peer {
        Duration::ZERO
    } else {
        delay
    }
}

/// Exponential backoff with full jitter in [d/2, d].
#[derive(Clone, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff { base, max, attempt: 0 }
    }

    /// The delay before the next attempt, given a random `unit` in [0, 1).
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(20));
        let d = exp.min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        d.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// Address scope for gossip filtering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Loopback,
    LinkLocal,
    Private,
    Global,
}

pub fn scope(ip: IpAddr) -> Scope {
    let ip = canonical_ip(ip);
    if ip.is_loopback() {
        return Scope::Loopback;
    }
    match ip {
        IpAddr::V4(v4) if v4.is_link_local() => Scope::LinkLocal,
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => Scope::LinkLocal,
        _ if partybus_discovery::addr::is_global(ip) => Scope::Global,
        _ => Scope::Private,
    }
}

/// `::ffff:a.b.c.d` → `a.b.c.d` (dual-stack sockets report v4 peers so).
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Like [`canonical_ip`]; an IPv6 address keeps its scope id (link-local
/// addresses need it to be dialled).
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// May `addr` (of some node) be told to a neighbour we reach over `link`?
/// Global addresses always; loopback only over loopback; private addresses
/// only over a private or loopback link (same site), or everything with
/// `allow_non_global`. Link-local and unspecified addresses never (they
/// mean nothing elsewhere).
pub fn may_gossip(addr: SocketAddr, link: SocketAddr, allow_non_global: bool) -> bool {
    let a = scope(addr.ip());
    if addr.port() == 0 || canonical_ip(addr.ip()).is_unspecified() || a == Scope::LinkLocal {
        return false;
    }
    if a == Scope::Global || allow_non_global {
        return true;
    }
    let l = scope(link.ip());
    match a {
        Scope::Loopback => l == Scope::Loopback,
        Scope::Private => matches!(l, Scope::Private | Scope::Loopback),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_agree_on_primary() {
        let a = NodeId([1; 16]);
        let b = NodeId([2; 16]);
        // a dialled b: primary seen from both ends.
        assert!(is_primary(a, b, Direction::Out));
        assert!(is_primary(b, a, Direction::In));
        // b dialled a: secondary from both ends.
        assert!(!is_primary(b, a, Direction::Out));
        assert!(!is_primary(a, b, Direction::In));
    }

    #[test]
    fn duplicate_rule() {
        assert_eq!(decide(None, false), Verdict::Activate, "a lone secondary (NAT case) is kept");
        assert_eq!(decide(None, true), Verdict::Activate);
        assert_eq!(decide(Some(true), false), Verdict::Retire);
        assert_eq!(decide(Some(false), true), Verdict::Replace);
        assert_eq!(decide(Some(true), true), Verdict::Replace);
        assert_eq!(decide(Some(false), false), Verdict::Replace);
    }

    #[test]
    fn simultaneous_open_converges_on_one_connection() {
        // a < b. Connection p: a→b (primary), s: b→a (secondary). Whatever
        // order each end sees them complete in, both end with p.
        for a_first_p in [true, false] {
            for b_first_p in [true, false] {
                let end = |first_p: bool| {
                    let first = if first_p { true } else { false };
                    let second = !first;
                    let v1 = decide(None, first);
                    assert_eq!(v1, Verdict::Activate);
                    match decide(Some(first), second) {
                        Verdict::Replace => second,
                        Verdict::Retire => first,
                        Verdict::Activate => unreachable!(),
                    }
                };
                assert!(end(a_first_p));
                assert!(end(b_first_p));
            }
        }
    }

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let d: Vec<_> = (0..10).map(|_| b.next_delay(1.0)).collect();
        assert_eq!(d[0], Duration::from_secs(1));
        assert_eq!(d[1], Duration::from_secs(2));
        assert_eq!(d[9], Duration::from_secs(60));
        let mut b = Backoff::new(Duration::from_secs(4), Duration::from_secs(60));
        assert_eq!(b.next_delay(0.0), Duration::from_secs(2));
    }

    #[test]
    fn canonical_keeps_scope() {
        let ll: SocketAddr = "[fe80::1%2]:4816".parse().unwrap();
        assert_eq!(canonical(ll), ll);
        assert_eq!(canonical("[::ffff:198.18.0.1]:5".parse().unwrap()), "198.18.0.1:5".parse::<SocketAddr>().unwrap());
    }

    #[test]
    fn gossip_scope() {
        let lo: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let lan: SocketAddr = "198.18.1.2:1".parse().unwrap();
        let public: SocketAddr = "8.8.8.8:1".parse().unwrap();
        let doc: SocketAddr = "203.0.113.7:1".parse().unwrap();
        assert!(may_gossip("127.0.0.2:5".parse().unwrap(), lo, false));
        assert!(!may_gossip("127.0.0.2:5".parse().unwrap(), lan, false));
        assert!(may_gossip("198.18.2.2:5".parse().unwrap(), lan, false));
        assert!(!may_gossip("198.18.2.2:5".parse().unwrap(), public, false));
        assert!(may_gossip("1.2.3.4:5".parse().unwrap(), public, false));
        assert!(!may_gossip(doc, public, false));
        assert!(may_gossip(doc, public, true));
        assert!(!may_gossip("[fe80::1]:5".parse().unwrap(), lan, true));
        assert!(!may_gossip("0.0.0.0:5".parse().unwrap(), lo, true));
        assert!(may_gossip("[::ffff:127.0.0.1]:5".parse().unwrap(), lo, false));
    }
}
