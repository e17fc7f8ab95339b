//! Delivery-rate samples (draft-cheng-iccrg-delivery-rate-estimation), fed
//! by what quinn's `Controller` trait tells: the time each packet was sent
//! and, when one is acknowledged, its send time and size.
//!
//! The rate of a sample is the data delivered between a packet's send and
//! its acknowledgement, over the longer of the send and the ack intervals:
//! the longer one, because a burst of acknowledgements (or of sends) says
//! nothing about the path's rate. quinn gives no packet number with an
//! acknowledgement, so the state at each send is kept per distinct send time:
//! packets sent at the same instant share it, since nothing can have been
//! delivered between them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The most send records kept: beyond it sends are not recorded, and their
/// acknowledgements give no sample (they still count as delivered). 4,096
/// distinct send instants cover far more than a window at any rate quinn's
/// pacer allows; each record is 48 bytes.
pub(super) const MAX_RECORDS: usize = 4096;

/// What the connection had delivered when a packet left.
#[derive(Clone, Copy, Debug)]
struct Record {
    sent: Instant,
    delivered: u64,
    delivered_time: Instant,
    first_sent: Instant,
    app_limited: bool,
}

/// One delivery-rate sample, taken from the newest packet an ack batch
/// acknowledged.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Sample {
    /// Bytes per second.
    pub rate: u64,
    /// Bytes the connection had delivered when the sampled packet left:
    /// the round counter compares it.
    pub prior_delivered: u64,
    /// The sampled packet's round trip (including the peer's ack delay).
    pub rtt: Duration,
    /// The connection had nothing to send at some point in the interval:
    /// the rate is a lower bound of the path's.
    pub app_limited: bool,
}

/// The sampler's state.
#[derive(Clone, Debug)]
pub(super) struct Delivery {
    /// Bytes acknowledged so far.
    delivered: u64,
    /// When `delivered` last grew.
    delivered_time: Instant,
    /// When the newest packet acknowledged so far was sent.
    first_sent: Instant,
    /// Nothing was in flight at the last count: the next send starts the
    /// intervals afresh (a sample must not span an idle time).
    pipe_empty: bool,
    /// Sends are app-limited until this much more has been delivered.
    app_limited_until: Option<u64>,
    records: VecDeque<Record>,
    /// The newest record acknowledged in the current ack batch.
    batch: Option<Record>,
}

impl Delivery {
    pub(super) fn new(now: Instant) -> Delivery {
        Delivery {
            delivered: 0,
            delivered_time: now,
            first_sent: now,
            pipe_empty: true,
            app_limited_until: None,
            records: VecDeque::new(),
            batch: None,
        }
    }

    pub(super) fn delivered(&self) -> u64 {
        self.delivered
    }

    /// A packet left at `now`.
    pub(super) fn on_sent(&mut self, now: Instant) {
        if self.pipe_empty {
            self.first_sent = now;
            self.delivered_time = now;
            self.pipe_empty = false;
        }
        if self.records.back().is_some_and(|r| r.sent >= now) || self.records.len() >= MAX_RECORDS {
            return;
        }
        self.records.push_back(Record {
            sent: now,
            delivered: self.delivered,
            delivered_time: self.delivered_time,
            first_sent: self.first_sent,
            app_limited: self.app_limited_until.is_some(),
        });
    }

    /// A packet sent at `sent` of `bytes` was acknowledged at `now`.
    pub(super) fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64) {
        self.delivered += bytes;
        self.delivered_time = now;
        if self.app_limited_until.is_some_and(|until| self.delivered >= until) {
            self.app_limited_until = None;
        }
        // Records older than this one belong to packets acknowledged already
        // or lost (or reordered, which costs only their sample).
        while self.records.front().is_some_and(|r| r.sent < sent) {
            self.records.pop_front();
        }
        if let Some(r) = self.records.front().filter(|r| r.sent == sent).copied() {
            if self.batch.is_none_or(|b| r.delivered >= b.delivered) {
                self.batch = Some(r);
            }
        }
    }

    /// quinn says the connection had nothing more to send: what is in flight
    /// now, and until it is delivered, cannot show the path's rate.
    pub(super) fn app_limited(&mut self, in_flight: u64) {
        self.app_limited_until = Some(self.delivered + in_flight.max(1));
    }

    /// An ack batch ended with `in_flight` bytes still in flight: the sample
    /// of the batch, if it gave one.
    pub(super) fn end_acks(&mut self, now: Instant, in_flight: u64) -> Option<Sample> {
        self.pipe_empty = in_flight == 0;
        let r = self.batch.take()?;
        self.first_sent = r.sent;
        let send_elapsed = r.sent.saturating_duration_since(r.first_sent);
        let ack_elapsed = now.saturating_duration_since(r.delivered_time);
        let interval = send_elapsed.max(ack_elapsed);
        let nanos = interval.as_nanos();
        if nanos == 0 {
            return None;
        }
        let bytes = self.delivered - r.delivered;
        let rate = (u128::from(bytes) * 1_000_000_000 / nanos).min(u128::from(u64::MAX)) as u64;
        Some(Sample { rate, prior_delivered: r.delivered, rtt: now.saturating_duration_since(r.sent), app_limited: r.app_limited })
    }

    #[cfg(test)]
    pub(super) fn records(&self) -> usize {
        self.records.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_steady_flow_samples_its_rate() {
        // One 1,000-byte packet every ms, each acknowledged 50 ms later:
        // 1 MB/s.
        let t0 = Instant::now();
        let mut d = Delivery::new(t0);
        let mut last = None;
        for i in 0..200u64 {
            let now = t0 + ms(i);
            d.on_sent(now);
            if i >= 50 {
                d.on_ack(now, t0 + ms(i - 50), 1000);
                last = d.end_acks(now, 50_000);
            }
        }
        let s = last.expect("a sample");
        assert!((950_000..=1_050_000).contains(&s.rate), "{s:?}");
        assert_eq!(s.rtt, ms(50));
        assert!(!s.app_limited);
    }

    #[test]
    fn a_burst_of_acks_is_not_a_fast_path() {
        // Ten packets sent over 100 ms, all acknowledged at once: the rate is
        // bounded by the send interval (10 kB in 0.1 s), not the ack burst.
        let t0 = Instant::now();
        let mut d = Delivery::new(t0);
        for i in 0..10u64 {
            d.on_sent(t0 + ms(10 * i));
        }
        let now = t0 + ms(150);
        for i in 0..10u64 {
            d.on_ack(now, t0 + ms(10 * i), 1000);
        }
        let s = d.end_acks(now, 0).expect("a sample");
        // The newest packet's sample: 10 kB over the longer of its send
        // interval (90 ms) and its ack interval (150 ms), not over the
        // instant in which the acks came.
        assert_eq!(s.rate, 10_000 * 1000 / 150, "{s:?}");
    }

    #[test]
    fn an_idle_pipe_starts_the_intervals_afresh() {
        let t0 = Instant::now();
        let mut d = Delivery::new(t0);
        d.on_sent(t0);
        d.on_ack(t0 + ms(10), t0, 1000);
        assert!(d.end_acks(t0 + ms(10), 0).is_some());
        // 10 s idle, then one packet: its sample spans 10 ms, not 10 s.
        let t1 = t0 + Duration::from_secs(10);
        d.on_sent(t1);
        d.on_ack(t1 + ms(10), t1, 1000);
        let s = d.end_acks(t1 + ms(10), 0).unwrap();
        assert_eq!(s.rate, 100_000, "{s:?}");
    }

    #[test]
    fn app_limited_sends_are_marked_until_delivered() {
        let t0 = Instant::now();
        let mut d = Delivery::new(t0);
        d.app_limited(0);
        d.on_sent(t0);
        d.on_ack(t0 + ms(10), t0, 1000);
        assert!(d.end_acks(t0 + ms(10), 0).unwrap().app_limited);
        d.on_sent(t0 + ms(20));
        d.on_ack(t0 + ms(30), t0 + ms(20), 1000);
        assert!(!d.end_acks(t0 + ms(30), 0).unwrap().app_limited);
    }

    #[test]
    fn records_stay_bounded_when_nothing_is_acknowledged() {
        let t0 = Instant::now();
        let mut d = Delivery::new(t0);
        for i in 0..(3 * MAX_RECORDS as u64) {
            d.on_sent(t0 + Duration::from_micros(i));
        }
        assert_eq!(d.records(), MAX_RECORDS);
        // An unknown send time (a packet sent past the cap) counts as
        // delivered and gives no sample.
        d.on_ack(t0 + ms(100), t0 + Duration::from_micros(3 * MAX_RECORDS as u64 - 1), 1000);
        assert_eq!(d.delivered(), 1000);
        assert!(d.end_acks(t0 + ms(100), 0).is_none());
        assert_eq!(d.records(), 0);
    }
}
