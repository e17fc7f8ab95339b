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
    // The dialer is the lower id.
    match dir {
        Direction::Out => own < peer,
        Direction::In => peer < own,
    }
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

/// Where a connection stands in the one-connection-per-pair rule
/// ([`decide`]). Both ends compute the same rank for the same connection,
/// from facts both know: who dialled it, and the dialer's number for it.
///
/// Ordered: any primary connection outranks any secondary one; between two
/// of the same kind (so from the same dialer), the later dial wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank {
    /// Dialled by the lower id ([`is_primary`]). First field: it decides first.
    primary: bool,
    /// The dialer's sequence number for this connection
    /// ([`crate::wire::Hello::dial`]): a per-process counter, and a node id
    /// is new at every start, so a larger number is a later dial.
    dial: u64,
}

impl Rank {
    /// The rank of a connection between `own` and `peer` that `dir` says
    /// who dialled; `dial` is the dialer's number (ours when we dialled,
    /// the one in the peer's hello when it did).
    pub fn new(own: NodeId, peer: NodeId, dir: Direction, dial: u64) -> Rank {
        Rank { primary: is_primary(own, peer, dir), dial }
    }
}

/// The one-connection-per-pair rule.
///
/// When two connections to the same node exist, both have completed a
/// handshake, so both directions work and either may be kept without losing
/// reachability. The higher [`Rank`] wins: the primary one (dialled by the
/// lower id); between two of the same kind the later dial (the older one
/// is most likely half-open after a network change). A lone connection is
/// always kept, whoever dialled it: a node behind NAT that can only dial
/// out keeps its connection whatever the ids are (the flaw of tubemail's
/// rule).
///
/// Both ends must keep the same connection, yet each sees the connections
/// complete in its own order (a dialer's two dials to a peer's IPv4 and
/// IPv6 addresses may finish in one order there and in the other order at
/// the peer). The rank depends on neither end's order, so both keep the
/// highest-ranked connection whatever order they saw; "the newer one as
/// seen here" would let each end retire the connection the other keeps.
pub fn decide(active: Option<Rank>, new: Rank) -> Verdict {
    match active {
        None => Verdict::Activate,
        Some(active) if new > active => Verdict::Replace,
        // Equal ranks only come from a peer that repeats a dial number:
        // keep what we have (both ends do).
        Some(_) => Verdict::Retire,
    }
}

/// Does `own` dial `peer` as soon as gossip introduces them? The lower id
/// does: the connection it opens is the primary one, which the duplicate
/// rule ([`decide`]) keeps, so a crossing dial from the other side would only
/// be retired again.
pub fn dials_first(own: NodeId, peer: NodeId) -> bool {
    own < peer
}

/// When gossip tells us about a node we are not connected to: the lower id
/// dials at once, the higher id waits a grace period and dials only if the
/// pair is still unconnected and no handshake from the peer is under way
/// (see [`second_dial`]). This avoids most simultaneous opens (each a full
/// handshake on both ends, then retired); when the lower id cannot reach us
/// (we are behind NAT) our later dial still connects, and punches our NAT.
///
/// The grace period is `delay` stretched by `unit` in [0, 1) to
/// [delay, 2·delay): nodes introduced by the same gossip frame do not all
/// dial in the same instant.
pub fn gossip_dial_delay(own: NodeId, peer: NodeId, delay: Duration, unit: f64) -> Duration {
    if dials_first(own, peer) {
        Duration::ZERO
    } else {
        delay.mul_f64(1.0 + unit.clamp(0.0, 1.0))
    }
}

/// What the second dialer of a pair (the higher id) does once its grace
/// period is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecondDial {
    /// Connected meanwhile (or the peer left): nothing to do.
    Done,
    /// A handshake from one of the peer's addresses is under way (its dial
    /// reached us): wait for its outcome rather than open a second one.
    Wait,
    /// Dial.
    Dial,
}

/// The second dialer's decision; the first dialer makes it too once its dial
/// got a handshake slot (`mesh::proto::pacing::DialSlots`), in case the other side's dial
/// arrived while it waited. `peer_handshaking`: an incoming handshake
/// from one of the peer's addresses is in progress; `waited`: how long we
/// have been waiting for such handshakes already. After `wait_limit` (the
/// handshake timeout: a handshake cannot take longer) we dial anyway, so a
/// stuck or hostile handshake never blocks the only direction that may work.
pub fn second_dial(connected: bool, peer_handshaking: bool, waited: Duration, wait_limit: Duration) -> SecondDial {
    if connected {
        SecondDial::Done
    } else if peer_handshaking && waited < wait_limit {
        SecondDial::Wait
    } else {
        SecondDial::Dial
    }
}

/// How a dial ended without a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialFailure {
    /// No complete answer within the handshake timeout: nobody there, lost
    /// packets, a NAT not open yet, or a peer too busy to answer in time.
    TimedOut,
    /// The peer (or our own checks) refused: wrong hood, protocol, or the
    /// peer is leaving. Trying again would be refused again.
    Refused,
    /// A dial through a relay route whose relay knows nobody under the
    /// route's id (it answered `Unknown`): the peer left, or has not
    /// registered there again since the relay restarted. Given up at once
    /// rather than at the handshake timeout; retried like a timeout.
    Gone,
}

/// Attempts (the first included) for a dial that times out, before the
/// address is left to discovery (static discovery re-reports its targets
/// every 60 s) or to the other side of the pair.
pub const DIAL_ATTEMPTS: u32 = 5;

/// Whether to try a dial again after `attempts` attempts ended in `failure`
/// (the delay comes from a `Backoff` starting at the re-dial base). Only
/// timeouts are retried: a seed that was too busy to answer (a burst of
/// nodes joining at once) or not up yet is tried again within seconds
/// rather than at the next discovery round. A route found gone is retried
/// the same way: after a relay restart the peer registers again within its
/// refresh interval.
pub fn retry_dial(failure: DialFailure, attempts: u32) -> bool {
    matches!(failure, DialFailure::TimedOut | DialFailure::Gone) && attempts < DIAL_ATTEMPTS
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
    // A relay route (it goes on the wire as the relay's address and an id).
    if crate::path::keys::is_relay_key(addr) {
        return true;
    }
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

    fn rank(primary: bool, dial: u64) -> Rank {
        Rank { primary, dial }
    }

    #[test]
    fn both_ends_rank_a_connection_alike() {
        let a = NodeId([1; 16]);
        let b = NodeId([2; 16]);
        // a dialled b (dial number 7): the same rank at both ends.
        assert_eq!(Rank::new(a, b, Direction::Out, 7), Rank::new(b, a, Direction::In, 7));
        assert_eq!(Rank::new(b, a, Direction::Out, 3), Rank::new(a, b, Direction::In, 3));
        assert!(Rank::new(a, b, Direction::Out, 1) > Rank::new(a, b, Direction::In, 9), "primary beats any secondary");
    }

    #[test]
    fn duplicate_rule() {
        assert_eq!(decide(None, rank(false, 1)), Verdict::Activate, "a lone secondary (NAT case) is kept");
        assert_eq!(decide(None, rank(true, 1)), Verdict::Activate);
        assert_eq!(decide(Some(rank(true, 1)), rank(false, 2)), Verdict::Retire);
        assert_eq!(decide(Some(rank(false, 2)), rank(true, 1)), Verdict::Replace);
        assert_eq!(decide(Some(rank(true, 1)), rank(true, 2)), Verdict::Replace, "the later dial wins");
        assert_eq!(decide(Some(rank(true, 2)), rank(true, 1)), Verdict::Retire, "an earlier dial finishing late loses");
        assert_eq!(decide(Some(rank(false, 1)), rank(false, 2)), Verdict::Replace);
        assert_eq!(decide(Some(rank(true, 2)), rank(true, 2)), Verdict::Retire, "a repeated number keeps the active one");
    }

    /// What one end keeps when it sees `order` complete, one after another.
    fn kept(order: &[Rank]) -> Rank {
        let mut active: Option<Rank> = None;
        for &r in order {
            match decide(active, r) {
                Verdict::Activate | Verdict::Replace => active = Some(r),
                Verdict::Retire => {}
            }
        }
        active.expect("at least one connection")
    }

    fn permutations(items: &[Rank]) -> Vec<Vec<Rank>> {
        if items.len() <= 1 {
            return vec![items.to_vec()];
        }
        let mut out = Vec::new();
        for i in 0..items.len() {
            let mut rest = items.to_vec();
            let first = rest.remove(i);
            for mut p in permutations(&rest) {
                p.insert(0, first);
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn both_ends_keep_the_same_connection_whatever_order_they_see() {
        // The lab failure that led to ranks: the lower id dialled the peer's
        // IPv4 and IPv6 addresses, both connections were primary, and the
        // two ends saw them finish in opposite orders. With "newer as seen
        // here wins" each end retired the connection the other kept.
        // The second set is a simultaneous open (one dial each way).
        let sets: [&[Rank]; 4] = [
            &[rank(true, 1), rank(true, 2)],
            &[rank(true, 1), rank(false, 1)],
            &[rank(true, 1), rank(true, 2), rank(false, 1)],
            &[rank(false, 1), rank(false, 2), rank(true, 3), rank(true, 4)],
        ];
        for set in sets {
            let best = *set.iter().max().unwrap();
            for here in permutations(set) {
                assert_eq!(kept(&here), best, "seen in order {here:?}");
            }
        }
    }

    #[test]
    fn only_the_lower_id_dials_at_once() {
        let a = NodeId([1; 16]);
        let b = NodeId([2; 16]);
        let d = Duration::from_millis(500);
        assert!(dials_first(a, b) && !dials_first(b, a), "exactly one side of a pair dials first");
        assert_eq!(gossip_dial_delay(a, b, d, 0.7), Duration::ZERO);
        assert_eq!(gossip_dial_delay(b, a, d, 0.0), d);
        assert_eq!(gossip_dial_delay(b, a, d, 0.5), Duration::from_millis(750));
        assert!(gossip_dial_delay(b, a, d, 7.0) <= 2 * d, "jitter is bounded");
        // The prompt dialer's connection is the one the duplicate rule keeps.
        assert!(is_primary(a, b, Direction::Out) && is_primary(b, a, Direction::In));
        assert_eq!(decide(Some(Rank::new(a, b, Direction::Out, 1)), Rank::new(a, b, Direction::In, 2)), Verdict::Retire);
    }

    #[test]
    fn second_dialer_waits_for_the_first_but_never_forever() {
        let limit = Duration::from_secs(10);
        let s = Duration::from_secs;
        assert_eq!(second_dial(true, false, s(0), limit), SecondDial::Done);
        assert_eq!(second_dial(true, true, s(0), limit), SecondDial::Done);
        assert_eq!(second_dial(false, true, s(0), limit), SecondDial::Wait, "the peer's dial reached us: let it finish");
        assert_eq!(second_dial(false, true, s(9), limit), SecondDial::Wait);
        assert_eq!(second_dial(false, true, s(10), limit), SecondDial::Dial, "a stuck handshake does not block our direction");
        assert_eq!(
            second_dial(false, false, s(0), limit),
            SecondDial::Dial,
            "nothing from the peer (it cannot reach us, e.g. our NAT): our dial connects and punches"
        );
    }

    #[test]
    fn only_timeouts_are_retried_and_not_forever() {
        assert!(retry_dial(DialFailure::TimedOut, 1));
        assert!(retry_dial(DialFailure::TimedOut, DIAL_ATTEMPTS - 1));
        assert!(!retry_dial(DialFailure::TimedOut, DIAL_ATTEMPTS));
        assert!(!retry_dial(DialFailure::Refused, 1), "a refusal would be refused again");
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
        // A global address, passed to a pure function only (nothing is sent).
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
