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

    /// Forget every value.
    pub(super) fn reset(&mut self) {
        self.entries.clear();
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

/// The smallest round trip, and when it was seen. It is trusted
/// `MIN_RTT_LIFE`; then `ProbeRtt` measures it again with little in flight,
/// and what that probe saw replaces it (a path whose round trip grew, e.g. a
/// connection that fell back to a relay, is learnt so).
#[derive(Clone, Copy, Debug)]
pub(super) struct MinRtt {
    value: Option<Duration>,
    stamp: Instant,
    /// The smallest sample since a probe began.
    probe: Option<Option<Duration>>,
}

impl MinRtt {
    pub(super) fn new(now: Instant) -> MinRtt {
        MinRtt { value: None, stamp: now, probe: None }
    }

    pub(super) fn get(&self) -> Option<Duration> {
        self.value
    }

    /// Is the value older than `life` at `now`?
    pub(super) fn expired(&self, now: Instant, life: Duration) -> bool {
        now.saturating_duration_since(self.stamp) > life
    }

    /// A round trip sample.
    pub(super) fn update(&mut self, now: Instant, rtt: Duration) {
        if self.value.is_none_or(|v| rtt <= v) {
            self.value = Some(rtt);
            self.stamp = now;
        }
        if let Some(best) = &mut self.probe {
            *best = Some(best.map_or(rtt, |b| b.min(rtt)));
        }
    }

    /// A probe begins: its samples are collected apart.
    pub(super) fn start_probe(&mut self) {
        self.probe = Some(None);
    }

    /// The probe ended at `now`: its smallest sample is the value from now
    /// on (the old one if it saw none).
    pub(super) fn end_probe(&mut self, now: Instant) {
        if let Some(Some(best)) = self.probe.take() {
            self.value = Some(best);
        }
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
    fn min_rtt_expires_and_a_probe_replaces_it() {
        let t0 = Instant::now();
        let life = Duration::from_secs(10);
        let ms = Duration::from_millis;
        let mut r = MinRtt::new(t0);
        r.update(t0, ms(80));
        r.update(t0 + ms(1000), ms(120));
        assert_eq!(r.get(), Some(ms(80)));
        assert!(!r.expired(t0 + ms(10_000), life));
        assert!(r.expired(t0 + ms(11_000), life));
        // A larger sample alone does not replace it, even expired...
        r.update(t0 + ms(11_000), ms(130));
        assert_eq!(r.get(), Some(ms(80)));
        // ...a probe's smallest sample does.
        r.start_probe();
        r.update(t0 + ms(11_100), ms(125));
        r.update(t0 + ms(11_200), ms(121));
        r.update(t0 + ms(11_300), ms(140));
        r.end_probe(t0 + ms(11_300));
        assert_eq!(r.get(), Some(ms(121)));
        assert!(!r.expired(t0 + ms(21_000), life));
        // A probe that saw nothing keeps the value and renews it.
        r.start_probe();
        r.end_probe(t0 + ms(30_000));
        assert_eq!(r.get(), Some(ms(121)));
        assert!(!r.expired(t0 + ms(39_000), life));
    }
}
