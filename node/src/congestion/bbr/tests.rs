//! The controller over simulated bottlenecks (`sim`), in simulated time:
//! the paths of issue 16's lab, and the yardstick a window of two BDPs
//! gives on each (what quinn's BBR amounts to under quinn's pacer).

use std::time::{Duration, Instant};

use super::sim::{run, run_at, Fixed, Link, Model, Outcome, PACKET};
use super::Bbr;

const MBIT: u64 = 1_000_000 / 8;

fn bbr() -> Bbr {
    Bbr::new(Instant::now(), PACKET as u16)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn show(what: &str, o: &Outcome) {
    eprintln!(
        "{what}: {:.2} MB/s, queue drops {:.2} %, queue delay {:?}, {} packets",
        o.goodput / 1e6,
        o.queue_drops * 100.0,
        o.mean_queue_delay,
        o.packets
    );
}

/// issue 16's rate-limited path: 10 Mbit/s, 80 ms, a tbf queue of 50 ms.
fn shallow() -> Link {
    Link { rate: 10 * MBIT, buffer: 10 * MBIT / 20, one_way: ms(40), loss: 0.0, rate_change: None, delay_change: None, trickle: None }
}

#[test]
fn a_shallow_rate_limited_link_keeps_its_rate_without_overflowing() {
    let link = shallow();
    let ours = run(&mut bbr(), link, secs(30), secs(5), 1);
    show("bbr", &ours);
    let bdp = link.rate * 80 / 1000;
    let two_bdp = run(&mut Fixed(2 * bdp), link, secs(30), secs(5), 1);
    show("2 BDP window", &two_bdp);
    assert!(ours.goodput >= 0.85 * link.rate as f64, "{ours:?}");
    assert!(ours.queue_drops <= 0.02, "{ours:?}");
    // The yardstick overflows the queue: the test can tell.
    assert!(two_bdp.queue_drops >= 0.10, "{two_bdp:?}");
}

#[test]
fn random_loss_is_not_congestion() {
    // 80 ms, 2 % random loss (1 % on each of two uplinks), a deep queue.
    let link = Link {
        rate: 100 * MBIT,
        buffer: 100 * MBIT / 10,
        one_way: ms(40),
        loss: 0.02,
        rate_change: None,
        delay_change: None,
        trickle: None,
    };
    let o = run(&mut bbr(), link, secs(10), secs(4), 2);
    show("bbr 2 % loss", &o);
    assert!(o.goodput >= 0.75 * link.rate as f64, "{o:?}");
}

#[test]
fn a_long_lossy_path_keeps_most_of_its_rate() {
    // 200 ms, 4 % random loss.
    let link =
        Link { rate: 40 * MBIT, buffer: 40 * MBIT / 5, one_way: ms(100), loss: 0.04, rate_change: None, delay_change: None, trickle: None };
    let o = run(&mut bbr(), link, secs(16), secs(8), 3);
    show("bbr 200 ms 4 % loss", &o);
    assert!(o.goodput >= 0.6 * link.rate as f64, "{o:?}");
}

#[test]
fn a_deep_queue_stays_short() {
    // 1 s of queue at 20 Mbit/s, 40 ms: a window-filling controller would
    // wait in it; BBR keeps it to a fraction of the round trip.
    let link =
        Link { rate: 20 * MBIT, buffer: 20 * MBIT, one_way: ms(20), loss: 0.0, rate_change: None, delay_change: None, trickle: None };
    let o = run(&mut bbr(), link, secs(20), secs(5), 4);
    show("bbr deep queue", &o);
    assert!(o.goodput >= 0.9 * link.rate as f64, "{o:?}");
    assert!(o.mean_queue_delay <= ms(20), "{o:?}");
    assert_eq!(o.queue_drops, 0.0);
    let bloat = run(&mut Fixed(4 * 20 * MBIT * 40 / 1000), link, secs(20), secs(5), 4);
    show("4 BDP window", &bloat);
    assert!(bloat.mean_queue_delay >= ms(100), "{bloat:?}");
}

#[test]
fn start_up_reaches_the_rate_within_a_second() {
    let link = Link {
        rate: 200 * MBIT,
        buffer: 200 * MBIT / 10,
        one_way: ms(40),
        loss: 0.0,
        rate_change: None,
        delay_change: None,
        trickle: None,
    };
    let o = run(&mut bbr(), link, ms(2000), ms(1000), 5);
    show("bbr second 1-2", &o);
    assert!(o.goodput >= 0.8 * link.rate as f64, "{o:?}");
}

#[test]
fn a_slower_path_is_followed_without_lasting_loss() {
    // 100 Mbit/s, then 10 Mbit/s (the connection fell back to a relay's
    // capped rate): measured from 1 s after the change. The old estimate
    // kept the window ten times too large for 3 s (30 % of the packets
    // dropped) until a round that lost over 10 % reset it.
    let mut link = shallow();
    link.rate = 100 * MBIT;
    link.buffer = 100 * MBIT / 20;
    link.rate_change = Some((secs(10), 10 * MBIT));
    let o = run(&mut bbr(), link, secs(20), secs(11), 6);
    show("bbr after a drop to 10 Mbit/s", &o);
    assert!(o.goodput >= 0.85 * (10 * MBIT) as f64, "{o:?}");
    assert!(o.queue_drops <= 0.03, "{o:?}");
}

#[test]
fn the_model_learns_the_path() {
    let link = shallow();
    let mut cc = bbr();
    run(&mut cc, link, secs(20), secs(1), 7);
    let bw = cc.bandwidth();
    assert!((link.rate * 9 / 10..=link.rate * 11 / 10).contains(&bw), "bandwidth {bw}");
    let rtt = cc.min_rtt.get().unwrap();
    assert!(rtt >= ms(80) && rtt <= ms(90), "{rtt:?}");
    let w = Model::window(&cc);
    assert!(w < 2 * link.rate * 80 / 1000, "window {w} is below 2 BDP");
}

#[test]
fn a_burst_after_a_trickle_gets_the_rate_the_path_had() {
    // 8 s of bulk teach the model the path; 20 s of a 10 kB/s trickle of
    // events follow (far more than the filters' 10 rounds); then bulk again:
    // its first second is measured.
    let link = Link {
        rate: 100 * MBIT,
        buffer: 100 * MBIT / 10,
        one_way: ms(40),
        loss: 0.0,
        rate_change: None,
        delay_change: None,
        trickle: None,
    };
    let t0 = Instant::now();
    let mut cc = Bbr::new(t0, PACKET as u16);
    run_at(&mut cc, link, t0, secs(8), secs(7), 8);
    let learnt = cc.bandwidth();
    let trickle = Link { trickle: Some((secs(20), 10_000)), ..link };
    let o = run_at(&mut cc, trickle, t0 + secs(8), secs(21), secs(20), 8);
    show("bbr burst after a trickle", &o);
    assert!(cc.bandwidth() >= learnt / 2, "{} after {learnt}", cc.bandwidth());
    assert!(o.goodput >= 0.7 * link.rate as f64, "{o:?}");
}

#[test]
fn a_longer_round_trip_is_learnt() {
    // 40 ms, then 120 ms (a connection that fell back to a far relay): the
    // old minimum would hold the window to a third of the new path's BDP.
    let link = Link { rate: 40 * MBIT, buffer: 40 * MBIT / 5, one_way: ms(20), delay_change: Some((secs(5), ms(60))), ..shallow() };
    let mut cc = bbr();
    let o = run(&mut cc, link, secs(30), secs(20), 9);
    show("bbr after the round trip grew", &o);
    assert!(o.goodput >= 0.85 * link.rate as f64, "{o:?}");
    let rtt = cc.min_rtt.get().unwrap();
    assert!(rtt >= ms(120), "{rtt:?}");
}

#[test]
fn persistent_congestion_starts_the_model_over_but_keeps_the_round_trip() {
    let mut cc = bbr();
    run(&mut cc, shallow(), secs(5), secs(1), 10);
    let rtt = cc.min_rtt.get();
    assert!(cc.bandwidth() > 0 && rtt.is_some());
    cc.lost(Instant::now() + secs(6), 10 * PACKET, true);
    assert_eq!(cc.bandwidth(), 0);
    assert_eq!(Model::window(&cc), super::MIN_PACKETS * PACKET);
    assert_eq!(cc.min_rtt.get(), rtt);
}
