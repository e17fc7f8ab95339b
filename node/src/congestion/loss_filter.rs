//! BBR that does not take random loss for congestion: losses reach quinn's
//! BBR only when more than [`LOSS_THRESHOLD`] of a round trip's packets are
//! lost (or on persistent congestion).
//!
//! Why: quinn's BBR (from Chromium's BBRv1 port) enters recovery on any
//! loss and stays there while every round trip loses something, and a round
//! that is in recovery and did not grow the bandwidth estimate by 25 % ends
//! its startup. On a path that drops 1-2 % of packets at random (Wi-Fi,
//! mobile, long intercontinental paths) that is every round: startup ended
//! early and the window was held to what was in flight, 30.5 MB/s against TCP
//! BBR's 40.8 on issue 16's 80 ms, 1 %-per-uplink path. Linux's BBR ignores
//! loss below its model's bounds; BBRv2 reads loss as a signal only above
//! 2 % of a round's packets. Random loss at the rates we target stays under
//! the threshold here; a bottleneck queue that overflows drops far more
//! than that in a round (the whole excess of the window), so real congestion
//! still reaches the controller.

use std::any::Any;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerMetrics};

/// Fraction of a round trip's bytes that must be lost before the loss is
/// passed on as congestion.
pub(crate) const LOSS_THRESHOLD: f64 = 0.1;

/// Loss and delivery counted over one round trip.
#[derive(Clone, Copy, Debug, Default)]
struct Round {
    start: Option<Instant>,
    acked: u64,
    lost: u64,
    /// Send time of the latest packet lost in this round.
    last_sent: Option<Instant>,
}

pub(crate) struct LossFilter {
    inner: Box<dyn Controller>,
    threshold: f64,
    round: Round,
    /// Length of a round: the smoothed RTT quinn last reported.
    rtt: Duration,
}

impl LossFilter {
    pub(crate) fn new(inner: Box<dyn Controller>, threshold: f64) -> LossFilter {
        LossFilter { inner, threshold, round: Round::default(), rtt: Duration::from_millis(100) }
    }

    /// `bytes` were acknowledged; the smoothed RTT is `rtt`.
    fn acked(&mut self, bytes: u64, rtt: Duration) {
        self.rtt = rtt;
        self.round.acked += bytes;
    }

    /// A round is over at `now`: pass its losses on if they were too many.
    fn end_round(&mut self, now: Instant) {
        let r = std::mem::take(&mut self.round);
        self.round.start = Some(now);
        if r.lost == 0 {
            return;
        }
        let rate = r.lost as f64 / (r.acked + r.lost) as f64;
        if rate > self.threshold {
            self.inner.on_congestion_event(now, r.last_sent.unwrap_or(now), false, r.lost);
        }
    }
}

impl Controller for LossFilter {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number)
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &quinn_proto::RttEstimator) {
        self.acked(bytes, rtt.get());
        self.inner.on_ack(now, sent, bytes, app_limited, rtt)
    }

    fn on_end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool, largest_packet_num_acked: Option<u64>) {
        match self.round.start {
            None => self.round.start = Some(now),
            Some(start) if now.saturating_duration_since(start) >= self.rtt => self.end_round(now),
            Some(_) => {}
        }
        self.inner.on_end_acks(now, in_flight, app_limited, largest_packet_num_acked)
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, is_persistent_congestion: bool, lost_bytes: u64) {
        if is_persistent_congestion {
            // Nothing got through for several probe timeouts: not random loss.
            self.inner.on_congestion_event(now, sent, true, lost_bytes);
            return;
        }
        self.round.lost += lost_bytes;
        self.round.last_sent = Some(self.round.last_sent.map_or(sent, |s| s.max(sent)));
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu)
    }

    fn window(&self) -> u64 {
        self.inner.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(LossFilter { inner: self.inner.clone_box(), threshold: self.threshold, round: self.round, rtt: self.rtt })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use quinn::congestion::{BbrConfig, ControllerFactory};

    use super::*;

    /// Counts what reaches it.
    #[derive(Clone, Default)]
    struct Probe(Arc<std::sync::Mutex<Vec<(u64, bool)>>>);

    impl Controller for Probe {
        fn on_congestion_event(&mut self, _: Instant, _: Instant, persistent: bool, lost: u64) {
            self.0.lock().unwrap().push((lost, persistent));
        }
        fn on_mtu_update(&mut self, _: u16) {}
        fn window(&self) -> u64 {
            12_000
        }
        fn clone_box(&self) -> Box<dyn Controller> {
            Box::new(self.clone())
        }
        fn initial_window(&self) -> u64 {
            12_000
        }
        fn into_any(self: Box<Self>) -> Box<dyn Any> {
            self
        }
    }

    /// One round trip (100 ms) of `acked` bytes and `lost` bytes, in ten ack batches.
    fn round(f: &mut LossFilter, t: &mut Instant, acked: u64, lost: u64) {
        for i in 0..10 {
            *t += Duration::from_millis(10);
            f.acked(acked / 10, Duration::from_millis(100));
            f.on_end_acks(*t, 100_000, false, Some(i));
            if i == 5 && lost > 0 {
                f.on_congestion_event(*t, *t - Duration::from_millis(100), false, lost);
            }
        }
    }

    #[test]
    fn random_loss_is_not_congestion_but_a_flood_of_losses_is() {
        let probe = Probe::default();
        let seen = probe.0.clone();
        let mut f = LossFilter::new(Box::new(probe), LOSS_THRESHOLD);
        let mut t = Instant::now();
        // 2 % of a round lost: filtered out, round after round.
        for _ in 0..5 {
            round(&mut f, &mut t, 1_000_000, 20_000);
        }
        round(&mut f, &mut t, 1_000_000, 0);
        assert!(seen.lock().unwrap().is_empty(), "{:?}", seen.lock().unwrap());
        // A queue overflowing: a third of the round lost, passed on whole.
        round(&mut f, &mut t, 1_000_000, 500_000);
        round(&mut f, &mut t, 1_000_000, 0);
        assert_eq!(*seen.lock().unwrap(), vec![(500_000, false)]);
        // Persistent congestion always goes through, at once.
        f.on_congestion_event(t, t, true, 1200);
        assert_eq!(seen.lock().unwrap().last(), Some(&(1200, true)));
    }

    #[test]
    fn wraps_quinns_bbr() {
        let t0 = Instant::now();
        let inner = Arc::new(BbrConfig::default()).build(t0, 1200);
        let mut f = LossFilter::new(inner, LOSS_THRESHOLD);
        let w = f.window();
        f.on_congestion_event(t0, t0, false, 1200);
        assert_eq!(f.window(), w);
        assert_eq!(f.clone_box().window(), w);
    }
}
