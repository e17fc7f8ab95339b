//! The mesh state machine driven by a simulated network with simulated
//! time: several [`Mesh`]es, connections as ordered pipes of frames, and a
//! seeded scheduler that picks the next thing to happen among everything
//! that could (a handshake packet arriving, a frame delivered, a writer
//! sending, an event emitted, a timer firing). Each test runs hundreds of
//! seeds; a failure names its seed, and the same seed replays the same run.
//!
//! The data plane is modelled as the driver implements it: one send queue
//! per neighbour that survives a switch, a writer per connection that ends
//! with a retire, and readers that hold the new connection's events back
//! until the retiring one has delivered its own.

mod sim;

use std::net::SocketAddr;
use std::time::Duration;

use sim::{Sim, SEEDS};

use super::*;
use crate::peers::DialFailure;

fn addr(host: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([198, 18, 0, host], port))
}

/// Two nodes discover each other at once, each through every address of
/// the other (IPv4 and IPv6 on a LAN: up to four connections), and emit
/// while the duplicates are sorted out. In every interleaving both keep
/// the same one connection, retire the others, and every event arrives
/// once, in order.
#[test]
fn crossing_dials_keep_one_connection_and_lose_nothing() {
    let mut switches = 0;
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed);
        let a = sim.node(&[addr(1, 4816), addr(11, 4816)]);
        let b = sim.node(&[addr(2, 4816), addr(12, 4816)]);
        for (from, to) in [(a, b), (b, a)] {
            for x in sim.addrs(to) {
                sim.input(from, Input::Candidate { addr: x, retry: true });
            }
        }
        sim.emit_budget(a, b, 40);
        sim.emit_budget(b, a, 40);
        sim.run();
        sim.assert_full_mesh();
        sim.assert_delivered_in_order();
        switches += sim.switches;
    }
    // The interleavings did exercise the switch, not only lucky orders.
    assert!(switches > SEEDS as usize / 4, "only {switches} switches in {SEEDS} runs");
}

/// A single connection is kept whoever dialled it: a node behind NAT that
/// can only dial out keeps its connection whatever the ids are.
#[test]
fn a_lone_connection_is_kept_whatever_the_ids() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed);
        let a = sim.node(&[addr(1, 4816)]);
        let b = sim.node(&[addr(2, 4816)]);
        // Only the higher id dials (the one whose connection is secondary).
        let (low, high) = if sim.id(a) < sim.id(b) { (a, b) } else { (b, a) };
        let target = sim.addrs(low)[0];
        sim.input(high, Input::Candidate { addr: target, retry: false });
        sim.emit_budget(high, low, 20);
        sim.run();
        sim.assert_full_mesh();
        sim.assert_delivered_in_order();
        assert_eq!(sim.switches, 0, "seed {seed}");
        assert_eq!(sim.counters(high).duplicates + sim.counters(low).duplicates, 0, "seed {seed}");
    }
}

/// Three nodes that know only a seed become a full mesh through gossip
/// (announcements, first and second dialers, the second dialer giving its
/// dial up when the first one's reaches it), in every interleaving.
#[test]
fn gossip_makes_a_full_mesh() {
    let mut abandoned = 0;
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed);
        sim.node(&[addr(1, 4816)]); // the seed
        let others: Vec<usize> = (2..5).map(|h| sim.node(&[addr(h, 4816)])).collect();
        for &n in &others {
            sim.input(n, Input::Candidate { addr: addr(1, 4816), retry: true });
        }
        sim.run();
        sim.assert_full_mesh();
        abandoned += (0..4).map(|n| sim.counters(n).dials_abandoned).sum::<u64>();
    }
    // The interleavings include the second dialer's race (its dial given
    // up when the first dialer's reached it), not only calm orders.
    assert!(abandoned > 0, "no dial was ever given up in {SEEDS} runs");
}

/// Leave during a handshake: the leaving node starts no dial and makes no
/// neighbour after it, and ends with nothing pending.
#[test]
fn leave_during_a_handshake() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed);
        let a = sim.node(&[addr(1, 4816)]);
        let b = sim.node(&[addr(2, 4816)]);
        sim.input(a, Input::Candidate { addr: addr(2, 4816), retry: true });
        sim.input(b, Input::Candidate { addr: addr(1, 4816), retry: true });
        // Leave after a random number of steps: anywhere in the handshakes.
        let steps = sim.random(12);
        sim.steps(steps);
        sim.input(a, Input::Leave);
        let after = sim.outputs_seen(a);
        sim.run();
        let late = sim.outputs_since(a, after);
        assert!(
            !late.iter().any(|o| matches!(o, Output::Connect { .. } | Output::Activate { .. } | Output::Switch { .. })),
            "seed {seed}: after leave: {late:?}"
        );
        assert!(sim.mesh(a).jobs.is_empty() && sim.mesh(a).dialing_addrs.is_empty(), "seed {seed}");
    }
}

/// A lost neighbour is re-dialled with exponential backoff and jitter,
/// capped at `redial_max`, and given up after `redial_for` (7 days).
#[test]
fn redial_backs_off_and_gives_up_after_seven_days() {
    let mut sim = Sim::new(7);
    let a = sim.node(&[addr(1, 4816)]);
    let b = sim.node(&[addr(2, 4816)]);
    sim.input(a, Input::Candidate { addr: addr(2, 4816), retry: false });
    sim.run();
    sim.assert_full_mesh();
    // b vanishes without a goodbye (its host died): its address stops answering.
    sim.crash(b);
    sim.run_for(Duration::from_secs(9 * 24 * 3600));
    let dials = sim.connects_to(a, addr(2, 4816));
    assert!(dials.len() > 10, "{} re-dials", dials.len());
    let cfg = sim.cfg();
    let gaps: Vec<Duration> = dials.windows(2).map(|w| w[1] - w[0]).collect();
    for g in &gaps {
        // Jitter in [d/2, d]; the dial itself takes up to the handshake timeout.
        assert!(*g <= cfg.redial_max + cfg.handshake_timeout, "gap {g:?}");
    }
    assert!(gaps[0] < gaps[5], "backoff grows: {gaps:?}");
    let last = *dials.last().unwrap() - sim.lost_at(a).expect("b was lost");
    assert!(last <= cfg.redial_for + cfg.redial_max, "re-dialled {last:?} after the loss");
    assert!(last >= cfg.redial_for - cfg.redial_max - cfg.handshake_timeout, "gave up early, {last:?} after the loss");
    assert!(sim.mesh(a).redials.is_empty() && sim.mesh(a).jobs.is_empty());
}

/// Gossip naming a node that said goodbye (still in flight when it left)
/// never makes a dial.
#[test]
fn gossip_of_a_departed_peer_is_ignored() {
    let mut sim = Sim::new(3);
    let a = sim.node(&[addr(1, 4816)]);
    let b = sim.node(&[addr(2, 4816)]);
    let c = sim.node(&[addr(3, 4816)]);
    sim.input(a, Input::Candidate { addr: addr(2, 4816), retry: false });
    sim.input(c, Input::Candidate { addr: addr(1, 4816), retry: false });
    sim.run();
    sim.assert_full_mesh();
    let b_id = sim.id(b);
    sim.input(b, Input::Leave);
    sim.close_all(b);
    sim.run();
    assert_eq!(sim.mesh(a).neighbour_count(), 1);
    // Stale gossip about b arrives at a from c.
    let conn = sim.mesh(a).neighbour_conns().into_iter().find(|(p, _)| *p == sim.id(c)).unwrap().1;
    let before = sim.connects_to(a, addr(2, 4816)).len();
    sim.input(a, Input::Gossip { conn, peers: vec![PeerAddrs { id: b_id, addrs: vec![addr(2, 4816)], relays: vec![] }] });
    sim.run();
    assert_eq!(sim.connects_to(a, addr(2, 4816)).len(), before);
}

/// A neighbour whose certificate is revoked is lost without a re-dial
/// (its connection does not end with a goodbye), gossip about it is
/// ignored, and a hello from it (a handshake that raced the list) is closed.
#[test]
fn a_revoked_peer_is_never_dialled_again() {
    let mut sim = Sim::new(4);
    let a = sim.node(&[addr(1, 4816)]);
    let b = sim.node(&[addr(2, 4816)]);
    let c = sim.node(&[addr(3, 4816)]);
    sim.input(a, Input::Candidate { addr: addr(2, 4816), retry: false });
    sim.input(c, Input::Candidate { addr: addr(1, 4816), retry: false });
    sim.run();
    sim.assert_full_mesh();
    let b_id = sim.id(b);
    let before = sim.connects_to(a, addr(2, 4816)).len();
    sim.input(a, Input::Revoked { peers: vec![b_id] });
    // Not a goodbye: without the revocation, a would re-dial b.
    sim.crash(b);
    sim.run_for(Duration::from_secs(600));
    assert_eq!(sim.mesh(a).neighbour_count(), 1);
    assert_eq!(sim.connects_to(a, addr(2, 4816)).len(), before, "a re-dialled the revoked b");
    let conn = sim.mesh(a).neighbour_conns().into_iter().find(|(p, _)| *p == sim.id(c)).unwrap().1;
    sim.input(a, Input::Gossip { conn, peers: vec![PeerAddrs { id: b_id, addrs: vec![addr(2, 4816)], relays: vec![] }] });
    sim.run_for(Duration::from_secs(60));
    assert_eq!(sim.connects_to(a, addr(2, 4816)).len(), before, "a dialled the revoked b on gossip");
    // A hello from b's id closes its connection.
    let now = sim.now;
    let m = sim.mesh_mut(a);
    m.handle(Input::IncomingStarted { conn: ConnId(9_999), addr: addr(2, 4817) }, now);
    m.handle(Input::IncomingDone { conn: ConnId(9_999), result: Ok(()) }, now);
    let hello = PeerHello { id: b_id, addrs: vec![], observed: addr(1, 4816), dial: 1 };
    m.handle(Input::Hello { conn: ConnId(9_999), hello }, now);
    let outs: Vec<Output> = std::iter::from_fn(|| m.poll_output()).collect();
    assert!(outs.contains(&Output::Close { conn: ConnId(9_999), why: CloseWhy::Revoked }), "{outs:?}");
    assert_eq!(m.neighbour_count(), 1);
}

/// A neighbour flooding gossip costs bounded memory and bounded dials.
#[test]
fn a_flood_of_gossip_is_bounded() {
    let mut sim = Sim::new(5);
    let a = sim.node(&[addr(1, 4816)]);
    sim.node(&[addr(2, 4816)]); // the neighbour that floods
    sim.input(a, Input::Candidate { addr: addr(2, 4816), retry: false });
    sim.run();
    let conn = sim.mesh(a).neighbour_conns()[0].1;
    let mut n = 0u32;
    for _ in 0..20 {
        let peers = (0..10_000)
            .map(|_| {
                n += 1;
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&n.to_be_bytes());
                id[15] = 0xff;
                let [x, y, z, w] = n.to_be_bytes();
                PeerAddrs { id: NodeId(id), addrs: vec![SocketAddr::from(([198, 19 ^ x, y ^ z, w], 4816)); 40], relays: vec![] }
            })
            .collect();
        let now = sim.now;
        sim.mesh_mut(a).handle(Input::Gossip { conn, peers }, now);
    }
    let (known, jobs, _) = sim.mesh(a).sizes();
    assert!(known <= MAX_KNOWN + 2, "{known} known");
    assert!(jobs <= MAX_DIAL_JOBS, "{jobs} dial jobs");
    // Handshakes in flight stay within the dial concurrency.
    let connects = std::iter::from_fn(|| sim.mesh_mut(a).poll_output()).filter(|o| matches!(o, Output::Connect { .. })).count();
    assert!(connects <= sim.cfg().dial_concurrency, "{connects} dials at once");
}

/// A neighbour gossiping 10,000 unreachable nodes (16 addresses each)
/// cannot keep a node from dialling a member its own discovery finds:
/// gossip dials always leave a handshake slot free. Before, the member's
/// dial waited behind every gossip dial's 10 s timeout (91 s and more).
#[test]
fn a_gossip_flood_does_not_starve_member_dials() {
    let mut sim = Sim::new(11);
    let a = sim.node(&[addr(1, 4816)]);
    sim.node(&[addr(2, 4816)]); // the neighbour that floods
    sim.input(a, Input::Candidate { addr: addr(2, 4816), retry: false });
    sim.run();
    let conn = sim.mesh(a).neighbour_conns()[0].1;
    let peers = (0..10_000u32)
        .map(|n| {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&n.to_be_bytes());
            let [_, _, y, z] = n.to_be_bytes();
            let addrs = (0..16).map(|p| SocketAddr::from(([198, 19, y, z], 1000 + p))).collect();
            PeerAddrs { id: NodeId(id), addrs, relays: vec![] }
        })
        .collect();
    sim.input(a, Input::Gossip { conn, peers });
    sim.run_for(Duration::from_secs(3));
    assert!(sim.mesh(a).sizes().1 > 100, "the flood is being dialled");
    let c = sim.node(&[addr(3, 4816)]);
    sim.input(a, Input::Candidate { addr: addr(3, 4816), retry: false });
    sim.run_for(Duration::from_secs(2));
    let c_id = sim.id(c);
    assert!(sim.mesh(a).neighbour_conns().iter().any(|(p, _)| *p == c_id), "a did not reach the member c within 2 s");
}

/// A dial that fails at once is not retried; one that times out is, within
/// its attempts; a candidate for an address already dialled is not dialled twice.
#[test]
fn candidates_are_claimed_and_retried_on_timeouts_only() {
    let t0 = std::time::Instant::now();
    let me = NodeId([1; 16]);
    let mut m = Mesh::new(me, sim::config(), 1);
    let target = addr(9, 4816);
    m.handle(Input::Candidate { addr: target, retry: true }, t0);
    m.handle(Input::Candidate { addr: target, retry: true }, t0);
    let outs: Vec<Output> = std::iter::from_fn(|| m.poll_output()).collect();
    let attempts: Vec<Attempt> =
        outs.iter().filter_map(|o| if let Output::Connect { attempt, .. } = o { Some(*attempt) } else { None }).collect();
    assert_eq!(attempts.len(), 1, "{outs:?}");
    m.handle(Input::Dialled { attempt: attempts[0], result: Err(DialFailure::Refused) }, t0);
    assert!(m.is_settled());
    m.handle(Input::Candidate { addr: target, retry: true }, t0);
    let mut now = t0;
    let mut tries = 0;
    loop {
        let outs: Vec<Output> = std::iter::from_fn(|| m.poll_output()).collect();
        if let Some(attempt) = outs.iter().find_map(|o| if let Output::Connect { attempt, .. } = o { Some(*attempt) } else { None }) {
            tries += 1;
            now += m.cfg.handshake_timeout;
            m.handle(Input::Dialled { attempt, result: Err(DialFailure::TimedOut) }, now);
            continue;
        }
        match outs.iter().find_map(|o| if let Output::ArmTimer { at, timer } = o { Some((*at, *timer)) } else { None }) {
            Some((at, timer)) => {
                now = now.max(at);
                m.handle(Input::Timer(timer), now);
            }
            None => break,
        }
    }
    assert_eq!(tries, crate::peers::DIAL_ATTEMPTS);
    assert!(m.is_settled());
}

/// The issue-14 outlier: the DHT names four addresses of nodes that left
/// (two relay routes, two LAN addresses) before the live peer's. They take
/// the four handshake slots; when the relays answer that nobody is
/// registered under the two routes (`RouteGone`), those dials are given up
/// at once and the live peer's address is dialled in the same instant,
/// not after the 10 s handshake timeout. The gone routes are retried after
/// a backoff, not at once.
#[test]
fn a_dial_to_a_gone_relay_route_frees_its_slot_at_once() {
    let t0 = std::time::Instant::now();
    let mut m = Mesh::new(NodeId([1; 16]), sim::config(), 1);
    assert_eq!(m.cfg.dial_concurrency, 4);
    let relay_key = |n: u8| SocketAddr::from(([240, 0, 0, n], 7000));
    let stale = [relay_key(1), addr(21, 4816), relay_key(2), addr(22, 4816)];
    let live = relay_key(3);
    for a in stale.into_iter().chain([live]) {
        m.handle(Input::Candidate { addr: a, retry: true }, t0);
    }
    let connects = |m: &mut Mesh| -> Vec<(Attempt, SocketAddr)> {
        std::iter::from_fn(|| m.poll_output())
            .filter_map(|o| if let Output::Connect { attempt, addr } = o { Some((attempt, addr)) } else { None })
            .collect()
    };
    let first = connects(&mut m);
    assert_eq!(first.iter().map(|(_, a)| *a).collect::<Vec<_>>(), stale, "the stale addresses take every slot");
    // 20 ms later the relay's `Unknown` for the first stale route arrives.
    let t1 = t0 + Duration::from_millis(20);
    m.handle(Input::RouteGone { addr: relay_key(1) }, t1);
    let outs: Vec<Output> = std::iter::from_fn(|| m.poll_output()).collect();
    assert!(outs.contains(&Output::Abandon { attempt: first[0].0 }), "{outs:?}");
    let started: Vec<SocketAddr> =
        outs.iter().filter_map(|o| if let Output::Connect { addr, .. } = o { Some(*addr) } else { None }).collect();
    assert_eq!(started, vec![live], "the live peer is dialled at once");
    let retry_at = outs.iter().find_map(|o| if let Output::ArmTimer { at, timer: Timer::Dial(_) } = o { Some(*at) } else { None });
    assert!(retry_at.is_some_and(|at| at >= t1 + m.cfg.redial_base / 2), "a gone route is retried after a backoff: {outs:?}");
    // A route that is not being dialled (or a LAN address) changes nothing.
    m.handle(Input::RouteGone { addr: relay_key(9) }, t1);
    m.handle(Input::RouteGone { addr: addr(21, 4816) }, t1);
    let outs: Vec<Output> = std::iter::from_fn(|| m.poll_output()).collect();
    assert!(outs.is_empty(), "{outs:?}");
    // The retried route's slot is free again in the same way when its retry is answered `Unknown`.
    m.handle(Input::RouteGone { addr: relay_key(2) }, t1);
    let outs: Vec<Output> = std::iter::from_fn(|| m.poll_output()).collect();
    assert!(outs.contains(&Output::Abandon { attempt: first[2].0 }), "{outs:?}");
    assert_eq!(m.counters().dials_abandoned, 2);
}
