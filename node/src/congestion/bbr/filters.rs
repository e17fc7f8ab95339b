//! Windowed filters of BBR's model: the largest delivery rate of the last
//! rounds, the smallest round trip of the last seconds.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The largest value seen in the last `rounds` rounds, exact: a monotone
/// queue with at most one entry per round, so at most `rounds` entries.
#[derive(Clone, Debug)]
pub(super) struct WindowedMax {
    rounds: u64,
    entries: VecDeque<(u64, u64)>,
}

impl WindowedMax {
    pub(super) fn new(rounds: u64) -> WindowedMax {
        WindowedMax { rounds, entries: VecDeque::new() }
    }

    /// The best value of the window (0 before any).
    pub(super) fn get(&self) -> u64 {
        self.entries.front().map_or(0, |e| e.1)
    }

    /// A value seen in round `round` (rounds never go back).
    pub(super) fn update(&mut self, round: u64, value: u64) {
        self.expire(round);
        if self.entries.back().is_some_and(|&(r, v)| r == round && v >= value) {
            return;
        }
        while self.entries.back().is_some_and(|&(_, v)| v <= value) {
            self.entries.pop_back();
        }
        self.entries.push_back((round, value));
    }

    /// Forget values older than the window as of `round`.
    pub(super) fn expire(&mut self, round: u64) {
        while self.entries.front().is_some_and(|&(r, _)| r + self.rounds <= round) {
            self.entries.pop_front();
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The smallest round trip, and when it was seen: it is kept `MIN_RTT_LIFE`
/// and then re-measured (`ProbeRtt`).
#[derive(Clone, Copy, Debug)]
pub(super) struct MinRtt {
    value: Option<Duration>,
    stamp: Instant,
}

impl MinRtt {
    pub(super) fn new(now: Instant) -> MinRtt {
        MinRtt { value: None, stamp: now }
    }

    pub(super) fn get(&self) -> Option<Duration> {
        self.value
    }

    /// Is the value older than `life` at `now`?
    pub(super) fn expired(&self, now: Instant, life: Duration) -> bool {
        now.saturating_duration_since(self.stamp) > life
    }

    /// A round trip sample: kept when it is the smallest, or when the old
    /// value has expired.
    pub(super) fn update(&mut self, now: Instant, rtt: Duration, life: Duration) {
        if self.value.is_none_or(|v| rtt <= v) || self.expired(now, life) {
            self.value = Some(rtt);
            self.stamp = now;
        }
    }

    /// The value was confirmed (a `ProbeRtt` ended): it lives on from `now`.
    pub(super) fn refresh(&mut self, now: Instant) {
        self.stamp = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_max_of_the_last_rounds() {
        let mut m = WindowedMax::new(3);
        m.update(0, 10);
        m.update(1, 5);
        assert_eq!(m.get(), 10);
        m.update(2, 7);
        assert_eq!(m.get(), 10);
        m.update(3, 1); // round 0 left the window
        assert_eq!(m.get(), 7);
        m.update(5, 2); // round 2 left too
        assert_eq!(m.get(), 2);
        m.update(5, 9);
        assert_eq!(m.get(), 9);
        m.expire(8);
        assert_eq!(m.get(), 0);
    }

    #[test]
    fn many_samples_per_round_keep_one_entry() {
        let mut m = WindowedMax::new(10);
        for round in 0..100u64 {
            for v in (0..1000u64).rev() {
                m.update(round, v + round % 7);
            }
        }
        assert!(m.len() <= 10, "{}", m.len());
        assert_eq!(m.get(), 999 + 6);
    }

    #[test]
    fn min_rtt_expires() {
        let t0 = Instant::now();
        let life = Duration::from_secs(10);
        let mut r = MinRtt::new(t0);
        r.update(t0, Duration::from_millis(80), life);
        r.update(t0 + Duration::from_secs(1), Duration::from_millis(120), life);
        assert_eq!(r.get(), Some(Duration::from_millis(80)));
        assert!(!r.expired(t0 + Duration::from_secs(10), life));
        assert!(r.expired(t0 + Duration::from_secs(11), life));
        r.update(t0 + Duration::from_secs(11), Duration::from_millis(120), life);
        assert_eq!(r.get(), Some(Duration::from_millis(120)));
    }
}
