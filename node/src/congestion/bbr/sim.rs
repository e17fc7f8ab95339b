//! A simulated bottleneck for the controller's tests, in simulated time.
//!
//! It sends the way quinn 0.11 does, since that is what the controller is
//! shaped for: at most `window` bytes in flight, paced by a token bucket
//! that refills at 1.25 x window / smoothed RTT and holds 2 ms of that
//! (10 to 256 packets), losses found by packet (3) and time (9/8 RTT)
//! thresholds. The receiver acknowledges every second packet at once and a
//! single one after 25 ms. Between them: random loss, then a drop-tail queue
//! of `buffer` bytes served at `rate`, then `one_way` of delay each way.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

pub(super) const PACKET: u64 = 1200;
const MAX_ACK_DELAY: Duration = Duration::from_millis(25);

/// What the simulation drives (the controller's model inputs).
pub(super) trait Model {
    fn sent(&mut self, now: Instant);
    fn acked(&mut self, now: Instant, sent: Instant, bytes: u64);
    fn end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool);
    fn lost(&mut self, now: Instant, bytes: u64, persistent: bool);
    fn window(&self) -> u64;
}

impl Model for super::Bbr {
    fn sent(&mut self, now: Instant) {
        super::Bbr::sent(self, now)
    }
    fn acked(&mut self, now: Instant, sent: Instant, bytes: u64) {
        super::Bbr::acked(self, now, sent, bytes)
    }
    fn end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool) {
        super::Bbr::end_acks(self, now, in_flight, app_limited)
    }
    fn lost(&mut self, now: Instant, bytes: u64, persistent: bool) {
        super::Bbr::lost(self, now, bytes, persistent)
    }
    fn window(&self) -> u64 {
        quinn::congestion::Controller::window(self)
    }
}

/// A controller that keeps one window: the tests' yardstick (a window of
/// 2 BDP behaves as quinn's BBR does under quinn's pacer).
pub(super) struct Fixed(pub u64);

impl Model for Fixed {
    fn sent(&mut self, _: Instant) {}
    fn acked(&mut self, _: Instant, _: Instant, _: u64) {}
    fn end_acks(&mut self, _: Instant, _: u64, _: bool) {}
    fn lost(&mut self, _: Instant, _: u64, _: bool) {}
    fn window(&self) -> u64 {
        self.0
    }
}

/// The path.
#[derive(Clone, Copy, Debug)]
pub(super) struct Link {
    /// Bottleneck rate, bytes per second.
    pub rate: u64,
    /// Bottleneck queue, bytes.
    pub buffer: u64,
    /// Propagation delay each way.
    pub one_way: Duration,
    /// Chance that a data packet is lost at random, before the queue.
    pub loss: f64,
    /// From this time on, the rate is the second value (a path change).
    pub rate_change: Option<(Duration, u64)>,
    /// From this time on, the delay each way is the second value.
    pub delay_change: Option<(Duration, Duration)>,
    /// Until this time the application offers only this many bytes per
    /// second (a trickle of events), then all it can.
    pub trickle: Option<(Duration, u64)>,
}

/// What came of a run, over the measured span.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    /// Bytes per second that reached the receiver.
    pub goodput: f64,
    /// Share of sent packets dropped by the queue (random loss not counted).
    pub queue_drops: f64,
    /// Mean time packets waited in the bottleneck's queue.
    pub mean_queue_delay: Duration,
    pub packets: u64,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// Packet `pn` reaches the receiver.
    Arrive(u64),
    /// An acknowledgement of these packets reaches the sender.
    Ack(Vec<u64>),
    /// The receiver's delayed-ack timer, generation `n`.
    AckTimer(u64),
    /// The sender may send again (pacing).
    Wake,
}

struct Sent {
    time: Instant,
    acked: bool,
    lost: bool,
}

/// Run `model` over `link` for `duration`; measure from `measure_from`.
pub(super) fn run(model: &mut dyn Model, link: Link, duration: Duration, measure_from: Duration, seed: u64) -> Outcome {
    run_at(model, link, Instant::now(), duration, measure_from, seed)
}

/// `run`, starting at `t0` (a model run again must see time go on).
pub(super) fn run_at(model: &mut dyn Model, link: Link, t0: Instant, duration: Duration, measure_from: Duration, seed: u64) -> Outcome {
    let at = |ns: u64| t0 + Duration::from_nanos(ns);
    let mut rng = seed.max(1);
    let mut random = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };

    let mut events: BinaryHeap<Reverse<(u64, u64, Event)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |events: &mut BinaryHeap<Reverse<(u64, u64, Event)>>, t: u64, e: Event| {
        seq += 1;
        events.push(Reverse((t, seq, e)));
    };

    // Sender.
    let mut sent: VecDeque<Sent> = VecDeque::new();
    let mut base_pn = 0u64;
    let mut in_flight = 0u64;
    let mut srtt: Option<Duration> = None;
    let mut latest_rtt = Duration::ZERO;
    let mut tokens = (10 * PACKET) as f64;
    let mut last_refill = t0;
    let mut largest_acked: Option<u64> = None;
    let mut wake_at: Option<u64> = None;
    let mut app_limited = false;
    // Bottleneck.
    let mut last_departure = 0u64;
    // Receiver.
    let mut unacked: Vec<u64> = Vec::new();
    let mut ack_gen = 0u64;
    // Measures.
    let measure_ns = measure_from.as_nanos() as u64;
    let (mut delivered, mut packets, mut drops, mut queued_ns, mut queued_n) = (0u64, 0u64, 0u64, 0u128, 0u64);

    let end = duration.as_nanos() as u64;
    let one_way = |t: u64| match link.delay_change {
        Some((when, delay)) if t >= when.as_nanos() as u64 => delay.as_nanos() as u64,
        _ => link.one_way.as_nanos() as u64,
    };
    push(&mut events, 0, Event::Wake);
    while let Some(Reverse((t, _, event))) = events.pop() {
        if t > end {
            break;
        }
        let now = at(t);
        match event {
            Event::Wake => wake_at = None,
            Event::Arrive(pn) => {
                if t >= measure_ns {
                    delivered += PACKET;
                }
                unacked.push(pn);
                if unacked.len() >= 2 {
                    push(&mut events, t + one_way(t), Event::Ack(std::mem::take(&mut unacked)));
                    ack_gen += 1;
                } else {
                    ack_gen += 1;
                    push(&mut events, t + MAX_ACK_DELAY.as_nanos() as u64, Event::AckTimer(ack_gen));
                }
            }
            Event::AckTimer(generation) => {
                if generation == ack_gen && !unacked.is_empty() {
                    push(&mut events, t + one_way(t), Event::Ack(std::mem::take(&mut unacked)));
                }
            }
            Event::Ack(pns) => {
                let mut newest: Option<Instant> = None;
                for pn in pns {
                    let Some(p) = pn.checked_sub(base_pn).and_then(|i| sent.get_mut(i as usize)) else { continue };
                    if p.acked {
                        continue;
                    }
                    p.acked = true;
                    if !p.lost {
                        in_flight -= PACKET;
                    }
                    model.acked(now, p.time, PACKET);
                    newest = newest.max(Some(p.time));
                    largest_acked = largest_acked.max(Some(pn));
                }
                if let Some(sent_time) = newest {
                    latest_rtt = now - sent_time;
                    srtt = Some(srtt.map_or(latest_rtt, |s| (s * 7 + latest_rtt) / 8));
                }
                model.end_acks(now, in_flight, app_limited);
                // Loss detection.
                if let (Some(largest), Some(srtt)) = (largest_acked, srtt) {
                    let threshold = srtt.max(latest_rtt) * 9 / 8;
                    let mut lost = 0;
                    for (i, p) in sent.iter_mut().enumerate() {
                        let pn = base_pn + i as u64;
                        if pn >= largest {
                            break;
                        }
                        if !p.acked && !p.lost && (pn + 3 <= largest || now - p.time > threshold) {
                            p.lost = true;
                            in_flight -= PACKET;
                            lost += PACKET;
                        }
                    }
                    if lost > 0 {
                        model.lost(now, lost, false);
                    }
                }
                while sent.front().is_some_and(|p| p.acked || p.lost) {
                    sent.pop_front();
                    base_pn += 1;
                }
            }
        }
        // Send what the application offers, the window and the pacer allow.
        loop {
            if let Some((until, rate)) = link.trickle.filter(|&(until, _)| t < until.as_nanos() as u64) {
                let offered = (t as u128 * rate as u128 / 1_000_000_000) as u64;
                if (base_pn + sent.len() as u64) * PACKET >= offered {
                    app_limited = true;
                    let next = (base_pn + sent.len() as u64 + 1) * PACKET * 1_000_000_000 / rate;
                    let wake = next.min(until.as_nanos() as u64).max(t + 1000);
                    if wake_at.is_none_or(|w| w > wake) {
                        wake_at = Some(wake);
                        push(&mut events, wake, Event::Wake);
                    }
                    break;
                }
            }
            app_limited = false;
            let window = model.window();
            if in_flight + PACKET > window {
                break;
            }
            let rtt = srtt.unwrap_or(Duration::from_millis(333));
            let capacity = ((window as u128 * 2_000_000 / rtt.as_nanos().max(1)) as u64).clamp(10 * PACKET, 256 * PACKET);
            let refill = window as f64 * 1.25 * (now - last_refill).as_secs_f64() / rtt.as_secs_f64();
            tokens = (tokens + refill).min(capacity as f64);
            last_refill = now;
            if tokens < PACKET as f64 {
                let wait = Duration::from_secs_f64((PACKET as f64 - tokens) * rtt.as_secs_f64() / (window as f64 * 1.25));
                let wake = t + (wait.as_nanos() as u64).max(1000);
                if wake_at.is_none_or(|w| w > wake) {
                    wake_at = Some(wake);
                    push(&mut events, wake, Event::Wake);
                }
                break;
            }
            tokens -= PACKET as f64;
            let pn = base_pn + sent.len() as u64;
            sent.push_back(Sent { time: now, acked: false, lost: false });
            in_flight += PACKET;
            model.sent(now);
            if t >= measure_ns {
                packets += 1;
            }
            if random() < link.loss {
                continue;
            }
            let rate = match link.rate_change {
                Some((when, rate)) if t >= when.as_nanos() as u64 => rate,
                _ => link.rate,
            };
            let backlog_ns = last_departure.saturating_sub(t);
            let backlog = (backlog_ns as u128 * rate as u128 / 1_000_000_000) as u64;
            if backlog + PACKET > link.buffer {
                if t >= measure_ns {
                    drops += 1;
                }
                continue;
            }
            let departure = last_departure.max(t) + PACKET * 1_000_000_000 / rate;
            if t >= measure_ns {
                queued_ns += u128::from(departure - t);
                queued_n += 1;
            }
            last_departure = departure;
            push(&mut events, departure + one_way(departure), Event::Arrive(pn));
        }
    }
    let span = (duration - measure_from).as_secs_f64();
    Outcome {
        goodput: delivered as f64 / span,
        queue_drops: drops as f64 / packets.max(1) as f64,
        mean_queue_delay: Duration::from_nanos((queued_ns / u128::from(queued_n.max(1))) as u64),
        packets,
    }
}
