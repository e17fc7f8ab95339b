//! partybus's BBR: a model-based congestion controller (after BBR v1,
//! draft-cardwell-iccrg-bbr-congestion-control) shaped for how quinn 0.11
//! sends.
//!
//! Why not quinn's BBR: quinn paces every controller at 1.25 x window / RTT
//! and has no way to take a pacing rate from it. BBR's model paces at the
//! path's bandwidth and lets the window run at twice the bandwidth-delay
//! product (BDP) only as a cap; with quinn's pacer a window of 2 BDP *is* the
//! sending rate, so quinn's BBR keeps about one BDP standing in the
//! bottleneck's queue. On a rate-limited link with a shallow queue that
//! queue does not fit: quinn's BBR lost 49-51 % of its packets on a
//! 10 Mbit/s tbf link at 80 ms (BENCHMARKS.md, "Issue 16").
//!
//! So here the window is the pacing: it is set to gain x BDP, plus what the
//! peer's acknowledgements arrive bunched by (`extra_acked`), and the gain
//! cycles as BBR's pacing gain does (1.25 to probe for more bandwidth, 0.75
//! to drain what the probe queued, then 1 for six rounds). Random loss is
//! not read as congestion, as in BBR; a round that loses more than 10 % of
//! its packets ends the start-up (the queue overflowed: no random loss on a
//! real path is that high).
//!
//! The model is a state machine with time passed in; [`Bbr`] implements
//! quinn's `Controller` on top of it, and `tests` drive it through a
//! simulated bottleneck.

mod delivery;
mod filters;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use std::any::Any;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerMetrics};

use delivery::{Delivery, Sample};
use filters::{MinRtt, WindowedMax};

/// The window grows by what is acknowledged up to this many BDPs in
/// start-up (2/ln 2: the rate doubles each round).
const STARTUP_GAIN: f64 = 2.885;
/// The gain cycle of `ProbeBw`, one phase per minimum round trip. Cruising
/// keeps a tenth of a BDP more in flight than the path holds: exactly one
/// BDP leaves the link idle whenever acknowledgements come late or lost
/// packets are being sent again (6-9 % below TCP BBR with 2 % random loss
/// at 80 ms); the 0.75 phase drains that small queue every cycle.
const PROBE_GAINS: [f64; 8] = [1.25, 0.75, 1.1, 1.1, 1.1, 1.1, 1.1, 1.1];
/// Rounds the bandwidth (and ack aggregation) estimate is kept.
const BW_ROUNDS: u64 = 10;
/// How long a minimum round trip is trusted before it is measured again.
const MIN_RTT_LIFE: Duration = Duration::from_secs(10);
/// How long `ProbeRtt` holds the window down to measure it.
const PROBE_RTT_TIME: Duration = Duration::from_millis(200);
/// Start-up ends when the bandwidth grew less than this in
/// `FULL_BW_ROUNDS` rounds...
const FULL_BW_GROWTH: f64 = 1.25;
const FULL_BW_ROUNDS: u32 = 3;
/// ...or when a round lost more than this share of its packets (and at
/// least `CONGESTION_LOSS_PACKETS`): random loss on real paths is a few
/// percent, so this is a queue that overflowed. In any mode such a round
/// also resets the bandwidth estimate to its delivery rate.
const CONGESTION_LOSS_RATE: f64 = 0.10;
const CONGESTION_LOSS_PACKETS: u64 = 5;
/// The BDP is computed over at least this time: on loopback and LANs the
/// scheduling of two busy processes delays acknowledgements by more than the
/// path's round trip.
const MIN_PIPE_TIME: Duration = Duration::from_millis(1);
/// The initial window, in packets.
const INITIAL_PACKETS: u64 = 32;
/// The smallest window, in packets.
const MIN_PACKETS: u64 = 4;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Doubling the rate each round until the bandwidth stops growing.
    Startup,
    /// Draining the queue start-up built, down to one BDP in flight.
    Drain,
    /// Cruising at the bandwidth, probing for more once per cycle.
    ProbeBw { phase: usize, since: Instant },
    /// A window of half a BDP, to measure the path's round trip without
    /// our own queue. `done` is set once little enough is in flight.
    ProbeRtt { done: Option<(Instant, u64)>, full_bw: bool },
}

/// Start-up's end: the bandwidth stopped growing.
#[derive(Clone, Copy, Debug, Default)]
struct FullBw {
    reached: bool,
    bw: u64,
    stalled_rounds: u32,
}

impl FullBw {
    /// A round ended with the bandwidth estimate `bw` (not app-limited).
    fn round(&mut self, bw: u64) {
        if bw as f64 >= self.bw as f64 * FULL_BW_GROWTH {
            self.bw = bw;
            self.stalled_rounds = 0;
        } else {
            self.stalled_rounds += 1;
            self.reached |= self.stalled_rounds >= FULL_BW_ROUNDS;
        }
    }
}

/// What a round delivered and lost.
#[derive(Clone, Copy, Debug, Default)]
struct RoundLoss {
    acked: u64,
    lost: u64,
}

/// Acknowledgements arriving bunched (delayed acks, receive batching, the
/// peer's scheduling): how much more arrived in an epoch than the
/// bandwidth explains. The window carries that much more so that the
/// sender does not stall between bunches.
#[derive(Clone, Debug)]
struct AckAggregation {
    epoch_start: Option<Instant>,
    epoch_acked: u64,
    max: WindowedMax,
}

impl AckAggregation {
    fn update(&mut self, now: Instant, acked: u64, bw: u64, round: u64, cap: u64) {
        let start = *self.epoch_start.get_or_insert(now);
        let expected = (bw as f64 * now.saturating_duration_since(start).as_secs_f64()) as u64;
        if self.epoch_acked <= expected {
            self.epoch_start = Some(now);
            self.epoch_acked = 0;
        }
        self.epoch_acked += acked;
        let extra = self.epoch_acked.saturating_sub(expected).min(cap);
        self.max.update(round, extra);
    }

    fn get(&self) -> u64 {
        self.max.get()
    }
}

/// The controller.
#[derive(Clone, Debug)]
pub(crate) struct Bbr {
    mtu: u64,
    window: u64,
    mode: Mode,
    delivery: Delivery,
    bw: WindowedMax,
    min_rtt: MinRtt,
    round: u64,
    /// Rounds that were not app-limited: the filters age by these, so that
    /// a connection that carried only a trickle of events for a while still
    /// knows its path when a burst comes (a trickle's rate says nothing of
    /// the path, and re-learning it by 1.25x per probe cycle took seconds).
    busy_round: u64,
    next_round_delivered: u64,
    full_bw: FullBw,
    round_loss: RoundLoss,
    aggregation: AckAggregation,
    /// Bytes acknowledged in the current ack batch.
    batch_acked: u64,
}

impl Bbr {
    pub(crate) fn new(now: Instant, mtu: u16) -> Bbr {
        let mtu = u64::from(mtu);
        Bbr {
            mtu,
            window: INITIAL_PACKETS * mtu,
            mode: Mode::Startup,
            delivery: Delivery::new(now),
            bw: WindowedMax::new(BW_ROUNDS),
            min_rtt: MinRtt::new(now),
            round: 0,
            busy_round: 0,
            next_round_delivered: 0,
            full_bw: FullBw::default(),
            round_loss: RoundLoss::default(),
            aggregation: AckAggregation { epoch_start: None, epoch_acked: 0, max: WindowedMax::new(BW_ROUNDS) },
            batch_acked: 0,
        }
    }

    fn min_window(&self) -> u64 {
        MIN_PACKETS * self.mtu
    }

    /// The bandwidth-delay product, if the model has both.
    fn bdp(&self) -> Option<u64> {
        let bw = self.bw.get();
        let rtt = self.min_rtt.get()?.max(MIN_PIPE_TIME);
        (bw > 0).then_some((bw as f64 * rtt.as_secs_f64()) as u64)
    }

    /// The window for a gain: gain x BDP, plus the ack aggregation.
    fn target(&self, gain: f64) -> Option<u64> {
        let bdp = self.bdp()?;
        Some(((gain * bdp as f64) as u64 + self.aggregation.get()).max(self.min_window()))
    }

    /// The bandwidth estimate, bytes per second.
    #[cfg(test)]
    pub(crate) fn bandwidth(&self) -> u64 {
        self.bw.get()
    }

    fn on_sample(&mut self, now: Instant, s: Sample) {
        self.min_rtt.update(now, s.rtt);
        let round_start = s.prior_delivered >= self.next_round_delivered;
        if round_start {
            self.round += 1;
            self.busy_round += u64::from(!s.app_limited);
            self.next_round_delivered = self.delivery.delivered();
        }
        // An app-limited sample only says the path can do at least this.
        if !s.app_limited || s.rate > self.bw.get() {
            self.bw.update(self.busy_round, s.rate);
        } else {
            self.bw.expire(self.busy_round);
        }
        if round_start {
            self.end_round(s);
        }
    }

    fn end_round(&mut self, s: Sample) {
        let loss = std::mem::take(&mut self.round_loss);
        let sent = loss.acked + loss.lost;
        if loss.lost >= CONGESTION_LOSS_PACKETS * self.mtu && loss.lost as f64 > CONGESTION_LOSS_RATE * sent as f64 {
            // The queue overflowed: the path delivers less than the model
            // says (start-up overshot, or the path got slower, e.g. a
            // fall-back to a relay's capped rate). What this round delivered
            // is the path's rate now; the old maximum would keep the window
            // too large for 10 rounds, each slowed by the full queue (3 s of
            // 30 % loss after a drop from 100 to 10 Mbit/s).
            tracing::debug!(lost = loss.lost, sent, rate = s.rate, "a round lost over 10 %: the bandwidth estimate starts from its rate");
            self.full_bw.reached = true;
            self.bw.reset();
            self.bw.update(self.busy_round, s.rate);
        }
        if self.mode == Mode::Startup && !self.full_bw.reached && !s.app_limited {
            self.full_bw.round(self.bw.get());
        }
    }

    /// Mode changes and the window, after an ack batch.
    fn update_mode(&mut self, now: Instant, in_flight: u64) {
        if self.full_bw.reached && self.mode == Mode::Startup {
            self.mode = Mode::Drain;
        }
        if self.mode == Mode::Drain && self.bdp().is_some_and(|bdp| in_flight <= bdp) {
            self.mode = Mode::ProbeBw { phase: 2, since: now };
        }
        if let Mode::ProbeBw { phase, since } = self.mode {
            let rtt = self.min_rtt.get().unwrap_or(MIN_PIPE_TIME).max(MIN_PIPE_TIME);
            let elapsed = now.saturating_duration_since(since) > rtt;
            let drained = phase == 1 && self.bdp().is_some_and(|bdp| in_flight <= bdp);
            if elapsed || drained {
                self.mode = Mode::ProbeBw { phase: (phase + 1) % PROBE_GAINS.len(), since: now };
            }
        }
        if !matches!(self.mode, Mode::ProbeRtt { .. }) && self.min_rtt.expired(now, MIN_RTT_LIFE) {
            self.min_rtt.start_probe();
            self.mode = Mode::ProbeRtt { done: None, full_bw: self.full_bw.reached };
        }
        if let Mode::ProbeRtt { done, full_bw } = self.mode {
            let low = self.probe_rtt_window();
            match done {
                None if in_flight <= low => self.mode = Mode::ProbeRtt { done: Some((now + PROBE_RTT_TIME, self.round + 1)), full_bw },
                Some((until, round)) if now >= until && self.round >= round => {
                    self.min_rtt.end_probe(now);
                    self.mode = if full_bw { Mode::ProbeBw { phase: 2, since: now } } else { Mode::Startup };
                }
                _ => {}
            }
        }
        self.window = match self.mode {
            Mode::Startup => {
                let cap = self.target(STARTUP_GAIN).unwrap_or(u64::MAX).max(INITIAL_PACKETS * self.mtu);
                (self.window + self.batch_acked).min(cap)
            }
            Mode::Drain => self.target(1.0).unwrap_or(self.window),
            Mode::ProbeBw { phase, .. } => self.target(PROBE_GAINS[phase]).unwrap_or(self.window),
            Mode::ProbeRtt { .. } => self.probe_rtt_window(),
        }
        .max(self.min_window());
    }

    fn probe_rtt_window(&self) -> u64 {
        self.bdp().map_or(self.min_window(), |bdp| bdp / 2).max(self.min_window())
    }
}

impl Bbr {
    // The model's inputs, as quinn's `Controller` calls give them (the
    // simulated link of the tests calls these directly: quinn's
    // `RttEstimator` cannot be made outside quinn, and the model does not
    // need it).

    /// A packet left at `now`.
    pub(crate) fn sent(&mut self, now: Instant) {
        self.delivery.on_sent(now);
    }

    /// A packet sent at `sent` of `bytes` was acknowledged at `now`.
    pub(crate) fn acked(&mut self, now: Instant, sent: Instant, bytes: u64) {
        self.delivery.on_ack(now, sent, bytes);
        self.batch_acked += bytes;
        self.round_loss.acked += bytes;
    }

    /// An ack batch ended with `in_flight` bytes in flight; `app_limited`:
    /// the sender had run out of data before it.
    pub(crate) fn end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool) {
        if app_limited {
            self.delivery.app_limited(in_flight);
        }
        if let Some(sample) = self.delivery.end_acks(now, in_flight) {
            self.on_sample(now, sample);
        }
        let bw = self.bw.get();
        if bw > 0 && self.batch_acked > 0 {
            let cap = self.window.min((bw as f64 * 0.1) as u64);
            self.aggregation.update(now, self.batch_acked, bw, self.busy_round, cap);
        }
        // An app-limited sender does not grow its window in start-up: it has
        // not shown that the path takes more.
        if app_limited && self.mode == Mode::Startup {
            self.batch_acked = 0;
        }
        self.update_mode(now, in_flight);
        self.batch_acked = 0;
    }

    /// `bytes` were declared lost at `now`; `persistent`: everything sent
    /// over several round trips was.
    pub(crate) fn lost(&mut self, now: Instant, bytes: u64, persistent: bool) {
        self.round_loss.lost += bytes;
        if persistent {
            // The path is not the one the model describes (it died, or
            // moved). Start over from a small window; the round trip is
            // kept until it expires.
            tracing::debug!("persistent congestion: the bandwidth model starts over");
            let min_rtt = self.min_rtt;
            *self = Bbr::new(now, self.mtu as u16);
            self.min_rtt = min_rtt;
            self.window = self.min_window();
        }
    }
}

impl Controller for Bbr {
    fn on_sent(&mut self, now: Instant, _bytes: u64, _last_packet_number: u64) {
        // quinn passes the length of the whole send buffer so far (several
        // packets for a GSO batch), not this packet's: only the time is used.
        self.sent(now);
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, _app_limited: bool, _rtt: &quinn_proto::RttEstimator) {
        self.acked(now, sent, bytes);
    }

    fn on_end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool, _largest_packet_num_acked: Option<u64>) {
        self.end_acks(now, in_flight, app_limited);
    }

    fn on_congestion_event(&mut self, now: Instant, _sent: Instant, is_persistent_congestion: bool, lost_bytes: u64) {
        self.lost(now, lost_bytes, is_persistent_congestion);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = u64::from(new_mtu);
        self.window = self.window.max(self.min_window());
    }

    fn window(&self) -> u64 {
        self.window
    }

    fn metrics(&self) -> ControllerMetrics {
        // No pacing rate: quinn paces by the window (see the module docs).
        let mut m = ControllerMetrics::default();
        m.congestion_window = self.window;
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        INITIAL_PACKETS * self.mtu
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}
