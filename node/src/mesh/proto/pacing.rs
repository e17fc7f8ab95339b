//! Pacing of dials: handshake slots, and backoff between attempts.

use std::time::Duration;

/// Paces one node's outgoing handshakes: at most `limit` at a time (0: no
/// limit), the others wait in two queues. First dials (the lower id of a
/// pair, seeds, re-dials) go before second dials (the higher id's, after its
/// grace period): when many nodes are busy at once, a second dial waits
/// behind the first dials its node still has to make, and by its turn the
/// peer's own first dial has usually arrived (then it is not made at all).
///
/// In a burst of joins (a whole mesh forming at once) unpaced dials put
/// every handshake in flight at the same time: each then takes as long as
/// all of them together, passes QUIC's retransmission timer (resent
/// flights, more work) and eventually the handshake timeout.
///
/// `T` is what a waiting dial is woken with (a channel in the node).
#[derive(Debug)]
pub struct DialSlots<T> {
    limit: usize,
    running_first: usize,
    running_second: usize,
    first: std::collections::VecDeque<T>,
    second: std::collections::VecDeque<T>,
}

impl<T> DialSlots<T> {
    pub fn new(limit: usize) -> DialSlots<T> {
        DialSlots { limit, running_first: 0, running_second: 0, first: Default::default(), second: Default::default() }
    }

    fn free(&self) -> bool {
        self.limit == 0 || self.running() < self.limit
    }

    /// A dial wants to start: `Some(waker)` back means start now (the slot
    /// is taken), `None` that it was queued.
    pub fn request(&mut self, waker: T, second: bool) -> Option<T> {
        if !second {
            if self.free() && self.first.is_empty() {
                self.running_first += 1;
                return Some(waker);
            }
            self.first.push_back(waker);
        } else {
            if self.free() && self.first.is_empty() && self.second.is_empty() {
                self.running_second += 1;
                return Some(waker);
            }
            self.second.push_back(waker);
        }
        None
    }

    /// A dial's handshake is over (or it gave its slot back): the waiters to
    /// start next, which now hold a slot each (`true`: a second dial's).
    pub fn release(&mut self, second: bool) -> Vec<(T, bool)> {
        if second {
            self.running_second = self.running_second.saturating_sub(1);
        } else {
            self.running_first = self.running_first.saturating_sub(1);
        }
        let mut next = Vec::new();
        while self.free() {
            let Some(w) = self.first.pop_front() else { break };
            self.running_first += 1;
            next.push((w, false));
        }
        while self.first.is_empty() && self.free() {
            let Some(w) = self.second.pop_front() else { break };
            self.running_second += 1;
            next.push((w, true));
        }
        next
    }

    pub fn running(&self) -> usize {
        self.running_first + self.running_second
    }

    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.first.len() + self.second.len()
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

    #[test]
    fn dial_slots_pace_and_put_first_dials_first() {
        let mut s = DialSlots::new(2);
        assert_eq!(s.request("a", false), Some("a"));
        assert_eq!(s.request("x", true), Some("x"), "a free slot serves a second dial too");
        assert_eq!(s.request("b", false), None, "full: queued");
        assert_eq!(s.request("y", true), None);
        assert_eq!(s.request("c", false), None);
        assert_eq!((s.running(), s.waiting()), (2, 3));
        // First dials go before second dials, each queue in order.
        assert_eq!(s.release(false), vec![("b", false)]);
        assert_eq!(s.release(true), vec![("c", false)]);
        assert_eq!(s.release(false), vec![("y", true)]);
        assert_eq!((s.running(), s.waiting()), (2, 0));
        assert!(s.release(false).is_empty());
        assert!(s.release(true).is_empty());
        assert_eq!(s.running(), 0);
        assert!(s.release(false).is_empty(), "never below zero");
        assert_eq!(s.running(), 0);
        assert_eq!(s.request("d", false), Some("d"));
    }

    #[test]
    fn queued_dials_are_not_overtaken() {
        let mut s = DialSlots::new(1);
        assert_eq!(s.request(1, false), Some(1));
        assert_eq!(s.request(2, true), None);
        assert_eq!(s.release(false), vec![(2, true)]);
        // A slot frees while a first dial waits: a new second dial queues behind it.
        assert_eq!(s.request(3, false), None);
        assert_eq!(s.release(true), vec![(3, false)]);
        assert_eq!(s.request(4, true), None);
        assert_eq!(s.release(false), vec![(4, true)]);
    }

    #[test]
    fn unlimited_slots_never_queue() {
        let mut s = DialSlots::new(0);
        for i in 0..1000 {
            assert_eq!(s.request(i, i % 2 == 0), Some(i));
        }
        assert!(s.release(true).is_empty());
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
