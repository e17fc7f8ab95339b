//! Pacing of dials: handshake slots, and backoff between attempts.

use std::time::Duration;

/// Which queue a dial waits in, in the order they are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DialClass {
    /// An address from this node's own discovery (static, mDNS, DHT,
    /// UPnP) or a re-dial of a lost neighbour: a member we have reason to
    /// expect there.
    Member,
    /// A first dial of a node learnt through gossip (the lower id of the
    /// pair), or a relay route gossip named for it.
    Gossip,
    /// A second dial of a node learnt through gossip (the higher id's,
    /// after its grace period).
    GossipSecond,
}

const CLASSES: [DialClass; 3] = [DialClass::Member, DialClass::Gossip, DialClass::GossipSecond];

/// Paces one node's outgoing handshakes: at most `limit` at a time (0: no
/// limit), the others wait in one queue per [`DialClass`], served in that
/// order.
///
/// Gossip is what any neighbour says, and a neighbour may name thousands of
/// unreachable addresses, each holding a slot until the handshake timeout:
/// gossip dials never take the last free slot, so a dial of a member (a
/// restarted neighbour, a seed) always finds one soon. Once 10,000 gossip
/// entries kept a node from reconnecting to a restarted peer for 91 s.
///
/// First dials go before second dials: when many nodes are busy at once, a
/// second dial waits behind the first dials its node still has to make, and
/// by its turn the peer's own first dial has usually arrived (then it is
/// not made at all). In a burst of joins (a whole mesh forming at once)
/// unpaced dials put every handshake in flight at the same time: each then
/// takes as long as all of them together, passes QUIC's retransmission
/// timer (resent flights, more work) and eventually the handshake timeout.
///
/// `T` is what a waiting dial is woken with (a channel in the node).
#[derive(Debug)]
pub struct DialSlots<T> {
    limit: usize,
    running: [usize; 3],
    queues: [std::collections::VecDeque<T>; 3],
}

fn ix(c: DialClass) -> usize {
    match c {
        DialClass::Member => 0,
        DialClass::Gossip => 1,
        DialClass::GossipSecond => 2,
    }
}

impl<T> DialSlots<T> {
    pub fn new(limit: usize) -> DialSlots<T> {
        DialSlots { limit, running: [0; 3], queues: Default::default() }
    }

    /// May a dial of `class` start now (queues aside)?
    fn may_start(&self, class: DialClass) -> bool {
        if self.limit == 0 {
            return true;
        }
        if self.running() >= self.limit {
            return false;
        }
        // Gossip keeps one slot free for members (when there are two or more).
        class == DialClass::Member || self.limit < 2 || self.running[1] + self.running[2] < self.limit - 1
    }

    /// Is nobody of `class`, or of a class served before it, waiting?
    fn none_ahead(&self, class: DialClass) -> bool {
        self.queues[..=ix(class)].iter().all(|q| q.is_empty())
    }

    /// A dial wants to start: `Some(waker)` back means start now (the slot
    /// is taken), `None` that it was queued.
    pub fn request(&mut self, waker: T, class: DialClass) -> Option<T> {
        if self.may_start(class) && self.none_ahead(class) {
            self.running[ix(class)] += 1;
            return Some(waker);
        }
        self.queues[ix(class)].push_back(waker);
        None
    }

    /// A dial's handshake is over (or it gave its slot back): the waiters to
    /// start next, which now hold a slot each, with their class.
    pub fn release(&mut self, class: DialClass) -> Vec<(T, DialClass)> {
        self.running[ix(class)] = self.running[ix(class)].saturating_sub(1);
        let mut next = Vec::new();
        for c in CLASSES {
            // A class is served only when those before it wait for nothing.
            if !self.queues[..ix(c)].iter().all(|q| q.is_empty()) {
                break;
            }
            while self.may_start(c) {
                let Some(w) = self.queues[ix(c)].pop_front() else { break };
                self.running[ix(c)] += 1;
                next.push((w, c));
            }
        }
        next
    }

    pub fn running(&self) -> usize {
        self.running.iter().sum()
    }

    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.queues.iter().map(|q| q.len()).sum()
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

#[cfg(test)]
mod tests {
    use super::*;

    use DialClass::{Gossip, GossipSecond as Second, Member};

    #[test]
    fn dial_slots_pace_and_put_first_dials_first() {
        let mut s = DialSlots::new(3);
        assert_eq!(s.request("a", Gossip), Some("a"));
        assert_eq!(s.request("x", Second), Some("x"), "a free slot serves a second dial too");
        assert_eq!(s.request("b", Gossip), None, "gossip leaves the last slot to members");
        assert_eq!(s.request("y", Second), None);
        assert_eq!(s.request("c", Gossip), None);
        assert_eq!((s.running(), s.waiting()), (2, 3));
        // First dials go before second dials, each queue in order.
        assert_eq!(s.release(Gossip), vec![("b", Gossip)]);
        assert_eq!(s.release(Second), vec![("c", Gossip)]);
        assert_eq!(s.release(Gossip), vec![("y", Second)]);
        assert_eq!((s.running(), s.waiting()), (2, 0));
        assert!(s.release(Gossip).is_empty());
        assert!(s.release(Second).is_empty());
        assert_eq!(s.running(), 0);
        assert!(s.release(Gossip).is_empty(), "never below zero");
        assert_eq!(s.running(), 0);
        assert_eq!(s.request("d", Gossip), Some("d"));
    }

    #[test]
    fn a_flood_of_gossip_dials_leaves_a_slot_to_members() {
        let mut s = DialSlots::new(4);
        for i in 0..1000 {
            let started = s.request(i, if i % 2 == 0 { Gossip } else { Second });
            assert_eq!(started.is_some(), i < 3, "{i}");
        }
        // A member (a restarted neighbour's address) starts at once.
        assert_eq!(s.request(5000, Member), Some(5000));
        // The next member waits, but before all the gossip.
        assert_eq!(s.request(5001, Member), None);
        assert_eq!(s.release(Gossip), vec![(5001, Member)]);
        // Members done: the freed slot goes back to gossip, but the last one stays free.
        assert_eq!(s.release(Member), vec![(4, Gossip)]);
        assert_eq!(s.release(Member), vec![]);
        assert_eq!((s.running(), s.waiting()), (3, 996));
    }

    #[test]
    fn queued_dials_are_not_overtaken() {
        let mut s = DialSlots::new(1);
        assert_eq!(s.request(1, Gossip), Some(1));
        assert_eq!(s.request(2, Second), None);
        assert_eq!(s.release(Gossip), vec![(2, Second)]);
        // A slot frees while a first dial waits: a new second dial queues behind it.
        assert_eq!(s.request(3, Gossip), None);
        assert_eq!(s.release(Second), vec![(3, Gossip)]);
        assert_eq!(s.request(4, Second), None);
        assert_eq!(s.release(Gossip), vec![(4, Second)]);
        // With one slot, members come first but nothing can be kept free.
        assert_eq!(s.request(5, Member), None);
        assert_eq!(s.request(6, Gossip), None);
        assert_eq!(s.release(Second), vec![(5, Member)]);
        assert_eq!(s.release(Member), vec![(6, Gossip)]);
    }

    #[test]
    fn unlimited_slots_never_queue() {
        let mut s = DialSlots::new(0);
        for i in 0..1000 {
            assert_eq!(s.request(i, if i % 2 == 0 { Second } else { Gossip }), Some(i));
        }
        assert!(s.release(Second).is_empty());
        assert_eq!(s.running(), 999);
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
}
