//! Losses of a hole punch's first flight are not congestion.
//!
//! Why: a hole-punched connection starts with a loss that says nothing
//! about the path. Two hosts behind NATs that dial each other at once each
//! send a first Initial before the other's NAT has a mapping for them; the
//! NAT drops the first one to arrive (that drop is how a punch works) and
//! its retransmission gets through. Cubic took that loss as congestion before
//! anything was acknowledged: window and slow-start threshold went to 0.7 of
//! the initial window (8400 bytes), so there was no slow start, and
//! congestion avoidance from 6 packets took about 10 s at an 80 ms RTT to
//! reach the path's rate. The connection that lost its Initial is the lower
//! id's dial (it dials at once after gossip, the higher id waits), which is
//! also the one the duplicate rule keeps: the lower id's sends to the higher
//! one ran at 1 MB/s instead of 12 MB/s in half of issue 14's lab runs
//! (`integration/tests/path_change.rs`, `issue14_*`).
//!
//! A lost first flight costs no more than the initial window sent once more
//! at the same rate; every loss after the first acknowledgement counts as
//! before.

use std::any::Any;
use std::time::Instant;

use quinn::congestion::{Controller, ControllerMetrics};

/// When the peer first acknowledged something, and the rule that follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct FirstAck(Option<Instant>);

impl FirstAck {
    /// An acknowledgement arrived at `now`.
    fn acked(&mut self, now: Instant) {
        self.0.get_or_insert(now);
    }

    /// Does losing a packet sent at `sent` say anything about congestion?
    /// Not when no acknowledgement had arrived yet when it was sent (nor since).
    fn counts(&self, sent: Instant) -> bool {
        self.0.is_some_and(|first| sent >= first)
    }
}

pub(super) struct PunchTolerantController {
    inner: Box<dyn Controller>,
    first_ack: FirstAck,
}

impl PunchTolerantController {
    pub(super) fn new(inner: Box<dyn Controller>) -> PunchTolerantController {
        PunchTolerantController { inner, first_ack: FirstAck::default() }
    }
}

impl Controller for PunchTolerantController {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number)
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &quinn_proto::RttEstimator) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt)
    }

    // quinn calls this after each batch of acknowledgements, before it looks
    // for lost packets: a loss found in the same batch as the first
    // acknowledgement is judged against it.
    fn on_end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool, largest_packet_num_acked: Option<u64>) {
        self.first_ack.acked(now);
        self.inner.on_end_acks(now, in_flight, app_limited, largest_packet_num_acked)
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, is_persistent_congestion: bool, lost_bytes: u64) {
        if self.first_ack.counts(sent) {
            self.inner.on_congestion_event(now, sent, is_persistent_congestion, lost_bytes)
        } else {
            tracing::debug!(lost_bytes, "loss before the first acknowledgement (a hole punch's first flight): not congestion");
        }
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
        Box::new(PunchTolerantController { inner: self.inner.clone_box(), first_ack: self.first_ack })
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
    use std::time::Duration;

    use quinn::congestion::{ControllerFactory, CubicConfig};

    use super::super::{Congestion, PunchTolerant};
    use super::*;

    #[test]
    fn only_losses_after_the_first_ack_count() {
        let t0 = Instant::now();
        let mut first = FirstAck::default();
        assert!(!first.counts(t0), "nothing acknowledged yet");
        first.acked(t0 + Duration::from_secs(1));
        first.acked(t0 + Duration::from_secs(2)); // the first one stays
        assert!(!first.counts(t0), "sent before the first acknowledgement");
        assert!(!first.counts(t0 + Duration::from_millis(999)));
        assert!(first.counts(t0 + Duration::from_secs(1)));
        assert!(first.counts(t0 + Duration::from_secs(3)));
    }

    #[test]
    fn the_punch_loss_leaves_the_window_alone() {
        let t0 = Instant::now();
        let factory = Arc::new(PunchTolerant::new(Congestion::Cubic));
        let mut cc = factory.clone().build(t0, 1200);
        let initial = cc.window();
        assert_eq!(initial, cc.initial_window());
        cc.on_sent(t0, 1200, 0);
        // The first Initial is lost (the peer's NAT dropped it): no congestion.
        cc.on_congestion_event(t0 + Duration::from_secs(1), t0, false, 1200);
        assert_eq!(cc.window(), initial);
        // Its retransmission is acknowledged; a loss found in the same batch
        // of a packet sent before still does not count.
        let t1 = t0 + Duration::from_millis(1100);
        cc.on_end_acks(t1, 0, false, Some(1));
        cc.on_congestion_event(t1, t0 + Duration::from_millis(1000), false, 1200);
        assert_eq!(cc.window(), initial);
        // A loss of a packet sent after that is congestion, as with plain Cubic.
        let mut plain = Arc::new(CubicConfig::default()).build(t0, 1200);
        let t2 = t1 + Duration::from_millis(100);
        cc.on_congestion_event(t2 + Duration::from_millis(200), t2, false, 1200);
        plain.on_congestion_event(t2 + Duration::from_millis(200), t2, false, 1200);
        assert!(cc.window() < initial);
        assert_eq!(cc.window(), plain.window());
        // A copy keeps what it learnt.
        let mut copy = cc.clone_box();
        let t3 = t2 + Duration::from_secs(1);
        copy.on_congestion_event(t3 + Duration::from_millis(200), t3, false, 1200);
        assert!(copy.window() < cc.window());
    }

    #[test]
    fn names_parse_and_print() {
        for name in Congestion::NAMES {
            let c: Congestion = name.parse().unwrap();
            assert_eq!(c.to_string(), name);
        }
        assert_eq!("BBR".parse::<Congestion>(), Ok(Congestion::Bbr));
        let e = "vegas".parse::<Congestion>().unwrap_err().to_string();
        assert!(e.contains("\"vegas\"") && e.contains("\"bbr\", \"cubic\" or \"newreno\""), "{e}");
    }

    #[test]
    fn every_controller_builds_and_ignores_the_punch_loss() {
        let t0 = Instant::now();
        for name in Congestion::NAMES {
            let mut cc = Arc::new(PunchTolerant::new(name.parse().unwrap())).build(t0, 1200);
            let initial = cc.window();
            assert!(initial >= 10 * 1200, "{name}: initial window {initial}");
            cc.on_sent(t0, 1200, 0);
            cc.on_congestion_event(t0 + Duration::from_secs(1), t0, false, 1200);
            assert_eq!(cc.window(), initial, "{name}");
        }
    }
}
