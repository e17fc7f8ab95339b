//! The path state machine against simulated NATs and a real relay state
//! machine ([`crate::relay::server`]), in simulated time.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::relay::server::{RelayConfig, RelayPolicy, RelayServer, Verdict};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const RELAY: &str = "203.0.113.10:4000";

/// A home router: port-restricted cone (one public port per host port) or
/// symmetric (a new public port per destination).
struct Nat {
    public_ip: &'static str,
    symmetric: bool,
    /// (private, destination) -> public port
    out: HashMap<(SocketAddr, SocketAddr), u16>,
    /// Public port -> (private host, destinations it sent to)
    map: HashMap<u16, (SocketAddr, HashSet<SocketAddr>)>,
    next_port: u16,
}

impl Nat {
    fn new(public_ip: &'static str, symmetric: bool) -> Nat {
        Nat { public_ip, symmetric, out: HashMap::new(), map: HashMap::new(), next_port: 20000 }
    }

    fn outbound(&mut self, from: SocketAddr, to: SocketAddr) -> SocketAddr {
        let port = if self.symmetric {
            *self.out.entry((from, to)).or_insert_with(|| {
                self.next_port += 1;
                self.next_port
            })
        } else {
            from.port()
        };
        self.map.entry(port).or_insert_with(|| (from, HashSet::new())).1.insert(to);
        sa(&format!("{}:{port}", self.public_ip))
    }

    /// Where an inbound datagram from `from` to public `port` goes, if it is let in.
    fn inbound(&self, from: SocketAddr, port: u16) -> Option<SocketAddr> {
        let (host, sent_to) = self.map.get(&port)?;
        sent_to.contains(&from).then_some(*host)
    }
}

struct Host {
    private: SocketAddr,
    paths: Paths,
    nat: Nat,
}

struct World {
    now: Instant,
    hosts: Vec<Host>,
    relay: RelayServer,
    /// Datagrams in flight: (from public, to public, bytes).
    wire: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// Public addresses whose traffic to each other is dropped (a cut direct path).
    cut: bool,
    pings: usize,
    /// Per host: how many of its next `Register` datagrams are lost on the way.
    lose_registers: [usize; 2],
    /// Relayed packets delivered: (host, when, payload).
    relayed: Vec<(usize, Instant, Vec<u8>)>,
}

impl World {
    fn new(sym_a: bool, sym_b: bool) -> World {
        let host = |i: u8, ip: &'static str, sym: bool| Host {
            private: sa(&format!("198.18.{i}.2:4816")),
            paths: Paths::new([i; 32], None, u64::from(i)),
            nat: Nat::new(ip, sym),
        };
        World {
            now: Instant::now(),
            hosts: vec![host(1, "203.0.113.1", sym_a), host(2, "203.0.113.2", sym_b)],
            relay: RelayServer::new(RelayConfig { policy: RelayPolicy::Open, ..RelayConfig::default() }, [9; 32]),
            wire: Vec::new(),
            cut: false,
            pings: 0,
            lose_registers: [0; 2],
            relayed: Vec::new(),
        }
    }

    /// Sends what the hosts' state machines want sent, through their NATs.
    fn collect(&mut self) {
        for (i, h) in self.hosts.iter_mut().enumerate() {
            while let Some((to, b)) = h.paths.poll_transmit() {
                match wire::decode(&b) {
                    Some(Msg::Ping { .. }) => self.pings += 1,
                    Some(Msg::Register { .. }) if self.lose_registers[i] > 0 => {
                        self.lose_registers[i] -= 1;
                        continue;
                    }
                    _ => {}
                }
                let from = h.nat.outbound(h.private, to);
                self.wire.push((from, to, b));
            }
        }
    }

    /// Delivers everything in flight (and what that makes the relay answer).
    fn deliver(&mut self) {
        for _ in 0..10 {
            self.collect();
            let wire = std::mem::take(&mut self.wire);
            if wire.is_empty() {
                return;
            }
            for (from, to, mut b) in wire {
                if to == sa(RELAY) {
                    let len = b.len();
                    let (to, n) = match self.relay.on_datagram(from, &mut b, len, self.now) {
                        Verdict::Reply { to, len: n } => (to, n),
                        Verdict::Forward { to } => (to, len),
                        Verdict::Drop => continue,
                    };
                    b.truncate(n);
                    self.wire.push((sa(RELAY), to, b));
                    continue;
                }
                if self.cut && from != sa(RELAY) && to != sa(RELAY) {
                    continue;
                }
                let now = self.now;
                for (i, h) in self.hosts.iter_mut().enumerate() {
                    if to.ip().to_string() != h.nat.public_ip {
                        continue;
                    }
                    if h.nat.inbound(from, to.port()).is_some() {
                        match wire::decode(&b) {
                            Some(Msg::Recv { payload, .. }) => self.relayed.push((i, now, payload.to_vec())),
                            Some(m) => h.paths.on_datagram(from, m, now),
                            None => {}
                        }
                    }
                }
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += Duration::from_millis(50);
            let now = self.now;
            for h in &mut self.hosts {
                h.paths.handle_timeout(now);
            }
            self.deliver();
        }
    }

    /// Both hosts registered at the relay, then a relayed connection between them.
    fn connect(&mut self) -> (SocketAddr, SocketAddr) {
        let now = self.now;
        for h in &mut self.hosts {
            h.paths.add_relay(sa(RELAY), now);
        }
        self.run_for(Duration::from_millis(200));
        let routes: Vec<RelayRoute> = self.hosts.iter().map(|h| h.paths.my_routes(self.now)[0]).collect();
        let seen: Vec<Vec<SocketAddr>> = self.hosts.iter().map(|h| h.paths.observed()).collect();
        let keys = (key_of(&routes[1]), key_of(&routes[0]));
        let token = [7; 16];
        let now = self.now;
        // Each end: the other's relay route, and its private and relay-observed addresses.
        let cands_b = vec![self.hosts[1].private, seen[1][0]];
        let cands_a = vec![self.hosts[0].private, seen[0][0]];
        self.hosts[0].paths.add_conn(keys.0, token, &[routes[1]], &cands_b, now);
        self.hosts[1].paths.add_conn(keys.1, token, &[routes[0]], &cands_a, now);
        keys
    }

    fn path(&self, host: usize, key: SocketAddr) -> Option<PathKind> {
        self.hosts[host].paths.path_of(key)
    }
}

#[test]
fn registration_gives_routes_and_the_observed_address() {
    let mut w = World::new(false, true);
    w.connect();
    assert_eq!(w.hosts[0].paths.observed(), vec![sa("203.0.113.1:4816")]);
    let seen = w.hosts[1].paths.observed();
    assert_eq!(seen.len(), 1);
    assert_ne!(seen[0].port(), 4816, "a symmetric NAT maps a new port");
    assert_eq!(w.hosts[0].paths.my_routes(w.now)[0].relay, sa(RELAY));
}

#[test]
fn cone_to_cone_punches_through_to_a_direct_path() {
    let mut w = World::new(false, false);
    let (ka, kb) = w.connect();
    assert_eq!(w.path(0, ka), Some(PathKind::Relayed(sa(RELAY))));
    w.run_for(Duration::from_secs(2));
    assert_eq!(w.path(0, ka), Some(PathKind::Direct(sa("203.0.113.2:4816"))));
    assert_eq!(w.path(1, kb), Some(PathKind::Direct(sa("203.0.113.1:4816"))));
    // The socket sends straight there, and takes packets from there as the key's.
    assert_eq!(w.hosts[0].paths.routing().routes.get(&ka), Some(&Route::Direct(sa("203.0.113.2:4816"))));
    assert_eq!(w.hosts[0].paths.routing().aliases.get(&sa("203.0.113.2:4816")), Some(&ka));
}

#[test]
fn symmetric_nat_stays_relayed_with_bounded_probes() {
    for (a, b) in [(false, true), (true, false), (true, true)] {
        let mut w = World::new(a, b);
        let (ka, kb) = w.connect();
        w.run_for(Duration::from_secs(120));
        assert_eq!(w.path(0, ka), Some(PathKind::Relayed(sa(RELAY))), "{a} {b}");
        assert_eq!(w.path(1, kb), Some(PathKind::Relayed(sa(RELAY))), "{a} {b}");
        // Quick rounds first, then one every 30 s: tens of probes, not thousands.
        assert!(w.pings < 150, "{a} {b}: {} probes in 120 s", w.pings);
    }
}

#[test]
fn a_dead_direct_path_falls_back_to_the_relay_and_comes_back() {
    let mut w = World::new(false, false);
    let (ka, _) = w.connect();
    w.run_for(Duration::from_secs(2));
    assert!(matches!(w.path(0, ka), Some(PathKind::Direct(_))));
    w.cut = true;
    w.run_for(TRUST + Duration::from_secs(1));
    assert_eq!(w.path(0, ka), Some(PathKind::Relayed(sa(RELAY))));
    // In doubt, both: the relay carries the packets, the direct address is still tried.
    assert!(matches!(w.hosts[0].paths.routing().routes.get(&ka), Some(Route::Both { .. })));
    w.cut = false;
    w.run_for(Duration::from_secs(20));
    assert!(matches!(w.path(0, ka), Some(PathKind::Direct(_))));
}

#[test]
fn a_probe_that_comes_back_to_its_sender_proves_nothing() {
    let mut p = Paths::new([1; 32], None, 1);
    let now = Instant::now();
    let me = sa("198.18.1.2:4816");
    let key = key_of(&RelayRoute { relay: sa(RELAY), id: [2; 16] });
    p.add_conn(key, [7; 16], &[RelayRoute { relay: sa(RELAY), id: [2; 16] }], &[me], now);
    p.handle_timeout(now);
    let mut looped = 0;
    while let Some((to, b)) = p.poll_transmit() {
        if to == me {
            // Our own probe arrives at our own socket.
            let m = wire::decode(&b).unwrap();
            p.on_datagram(me, m, now);
            looped += 1;
        }
    }
    assert_eq!(looped, 1);
    // No pong to ourselves, no direct path.
    assert!(std::iter::from_fn(|| p.poll_transmit()).all(|(_, b)| !matches!(wire::decode(&b), Some(Msg::Pong { .. }))));
    assert_eq!(p.path_of(key), Some(PathKind::Relayed(sa(RELAY))));
}

#[test]
fn a_pong_must_answer_a_probe() {
    let mut p = Paths::new([1; 32], None, 1);
    let now = Instant::now();
    let route = RelayRoute { relay: sa(RELAY), id: [2; 16] };
    let key = key_of(&route);
    p.add_conn(key, [7; 16], &[route], &[], now);
    // A pong with the right token but a nonce we never sent (a replay).
    p.on_datagram(sa("203.0.113.66:1"), Msg::Pong { token: [7; 16], nonce: [0; 8], observed: sa("203.0.113.1:1") }, now);
    assert_eq!(p.path_of(key), Some(PathKind::Relayed(sa(RELAY))));
}

/// A relayed packet (a `Send` to `to`) carrying `payload`.
fn send_to(to: RelayRoute, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    wire::encode(&Msg::Send { to: RelayId(to.id), payload }, &mut b);
    b
}

fn registers(out: &[(SocketAddr, Vec<u8>)]) -> usize {
    out.iter().filter(|(_, b)| matches!(wire::decode(b), Some(Msg::Register { .. }))).count()
}

fn drain(p: &mut Paths) -> Vec<(SocketAddr, Vec<u8>)> {
    std::iter::from_fn(|| p.poll_transmit()).collect()
}

/// The issue-14 lab failure (`dht_cone_sym_loss2`): the dialler's first two
/// registrations are lost and it dials the peer's relay route at once. Its
/// packets wait for the registration instead of being answered with
/// challenges, the registration is retried every `HELD_RETRY` meanwhile, and
/// they reach the peer in the same instant the registration is answered.
#[test]
fn a_relayed_packet_waits_for_a_lost_registration_and_goes_when_it_is_answered() {
    use crate::path::relays::HELD_RETRY;
    let mut w = World::new(false, true);
    let now = w.now;
    w.hosts[0].paths.add_relay(sa(RELAY), now);
    w.run_for(Duration::from_millis(200));
    let listener = w.hosts[0].paths.my_routes(w.now)[0];
    w.lose_registers[1] = 2;
    let start = w.now;
    w.hosts[1].paths.add_relay(sa(RELAY), start);
    w.hosts[1].paths.relay_send(sa(RELAY), vec![send_to(listener, b"initial")], start);
    w.deliver();
    assert!(w.relayed.is_empty(), "nothing goes through the relay before we are registered there");
    let mut registered = None;
    while w.now < start + Duration::from_secs(5) && w.relayed.is_empty() {
        w.run_for(Duration::from_millis(50));
        if registered.is_none() && !w.hosts[1].paths.my_routes(w.now).is_empty() {
            registered = Some(w.now);
        }
    }
    let registered = registered.expect("the dialler registered");
    assert_eq!(w.lose_registers[1], 0, "both lost registrations were sent");
    // Lost at once and after HELD_RETRY; the third is answered.
    assert!(registered <= start + 2 * HELD_RETRY + Duration::from_millis(50), "registered after {:?}", registered - start);
    assert_eq!(w.relayed, vec![(0, registered, b"initial".to_vec())], "held until the registration, sent with it");
    // Registered: packets go out at once, nothing is held.
    w.hosts[1].paths.relay_send(sa(RELAY), vec![send_to(listener, b"next")], w.now);
    w.deliver();
    assert_eq!(w.relayed.last(), Some(&(0, w.now, b"next".to_vec())));
}

#[test]
fn held_packets_are_bounded_in_count_bytes_and_age() {
    use crate::path::relays::{HELD_AGE, HELD_BYTES, HELD_PACKETS};
    let relay = sa(RELAY);
    let peer = RelayRoute { relay, id: [2; 16] };
    let registered = |p: &mut Paths, now| {
        let id = RelayId::of_secret(&[1; 32]);
        p.on_datagram(relay, Msg::Registered { id, lifetime: 60, observed: sa("203.0.113.1:4816") }, now);
    };
    let payloads = |out: &[(SocketAddr, Vec<u8>)]| -> Vec<Vec<u8>> {
        out.iter()
            .filter_map(|(to, b)| match wire::decode(b) {
                Some(Msg::Send { payload, .. }) if *to == relay => Some(payload.to_vec()),
                _ => None,
            })
            .collect()
    };

    // Count: a hundred small packets, the newest HELD_PACKETS kept, in order.
    let t0 = Instant::now();
    let mut p = Paths::new([1; 32], None, 1);
    p.add_relay(relay, t0);
    for i in 0..100u32 {
        p.relay_send(relay, vec![send_to(peer, &i.to_be_bytes())], t0);
    }
    assert!(payloads(&drain(&mut p)).is_empty());
    registered(&mut p, t0 + Duration::from_millis(10));
    let sent = payloads(&drain(&mut p));
    let want: Vec<Vec<u8>> = (100 - HELD_PACKETS as u32..100).map(|i| i.to_be_bytes().to_vec()).collect();
    assert_eq!(sent, want);

    // Bytes: full-size packets, no more than HELD_BYTES of them.
    let mut p = Paths::new([1; 32], None, 1);
    p.add_relay(relay, t0);
    p.relay_send(relay, (0..HELD_PACKETS).map(|_| send_to(peer, &[0xc0; 4000])).collect(), t0);
    registered(&mut p, t0);
    let held: usize = drain(&mut p).iter().filter(|(_, b)| matches!(wire::decode(b), Some(Msg::Send { .. }))).map(|(_, b)| b.len()).sum();
    assert!(held > 0 && held <= HELD_BYTES, "{held} bytes held");

    // Age: a packet older than HELD_AGE when the registration comes is dropped.
    let mut p = Paths::new([1; 32], None, 1);
    p.add_relay(relay, t0);
    p.relay_send(relay, vec![send_to(peer, b"old")], t0);
    p.relay_send(relay, vec![send_to(peer, b"new")], t0 + HELD_AGE - Duration::from_millis(100));
    registered(&mut p, t0 + HELD_AGE + Duration::from_millis(1));
    assert_eq!(payloads(&drain(&mut p)), vec![b"new".to_vec()]);
}

#[test]
fn registration_is_retried_quickly_only_while_packets_wait() {
    use crate::path::relays::{HELD_AGE, HELD_RETRY};
    let relay = sa(RELAY);
    let peer = RelayRoute { relay, id: [2; 16] };
    let t0 = Instant::now();
    let mut p = Paths::new([1; 32], None, 1);
    p.add_relay(relay, t0);
    p.relay_send(relay, vec![send_to(peer, b"initial")], t0);
    // The relay never answers: a registration every HELD_RETRY while the packet waits...
    let count = |p: &mut Paths, from: Duration, to: Duration| {
        let mut n = registers(&drain(p));
        let mut t = from;
        while t < to {
            t += Duration::from_millis(10);
            p.handle_timeout(t0 + t);
            n += registers(&drain(p));
        }
        n
    };
    let early = count(&mut p, Duration::ZERO, HELD_AGE - Duration::from_millis(1));
    let want = (HELD_AGE.as_millis() / HELD_RETRY.as_millis()) as usize;
    assert!((want - 1..=want + 1).contains(&early), "{early} registrations in {HELD_AGE:?}, wanted about {want}");
    // ...and backing off again (2, 4, 8, 16, 30 s) once it is too old to send.
    let late = count(&mut p, HELD_AGE, HELD_AGE + Duration::from_secs(60));
    assert!(late <= 6, "{late} registrations in the minute after");
}

#[test]
fn a_relay_that_refused_us_is_not_asked_again_per_packet() {
    let relay = sa(RELAY);
    let peer = RelayRoute { relay, id: [2; 16] };
    let t0 = Instant::now();
    let mut p = Paths::new([1; 32], None, 1);
    p.add_relay(relay, t0);
    drain(&mut p);
    p.on_datagram(relay, Msg::Refused { reason: wire::Refusal::Full }, t0);
    for i in 0..50u64 {
        let t = t0 + Duration::from_millis(100 * i);
        p.relay_send(relay, vec![send_to(peer, b"x")], t);
        p.handle_timeout(t);
        let out = drain(&mut p);
        assert!(out.is_empty(), "sent {} datagrams at {i}", out.len());
    }
}

/// The issue-14 outlier (`dht_sym_sym`, second leg): a peer dials the relay
/// route of a node that left a second earlier (its DHT record outlives it).
/// The leaving node ends its registration at the relay, so the relay answers
/// the dial's packet `Unknown`, and the dialler hears `RouteGone` for the
/// route's key at once, rather than the handshake timing out 10 s later.
#[test]
fn a_node_that_leaves_unregisters_and_a_dial_to_its_route_hears_it_is_gone() {
    let mut w = World::new(true, true);
    let now = w.now;
    for h in &mut w.hosts {
        h.paths.add_relay(sa(RELAY), now);
    }
    w.run_for(Duration::from_millis(200));
    let gone = w.hosts[0].paths.my_routes(w.now)[0];
    let events = |p: &mut Paths| std::iter::from_fn(|| p.poll_event()).collect::<Vec<_>>();
    events(&mut w.hosts[1].paths);
    // Registered: a packet to its route is forwarded, nothing is reported.
    w.hosts[1].paths.relay_send(sa(RELAY), vec![send_to(gone, b"before")], w.now);
    w.deliver();
    assert_eq!(w.relayed.len(), 1);
    assert!(events(&mut w.hosts[1].paths).is_empty());
    // It leaves: the relay forgets it at once, and it never registers again.
    w.hosts[0].paths.leave();
    w.deliver();
    assert_eq!(w.relay.stats().unregistered, 1);
    w.run_for(Duration::from_secs(40));
    assert_eq!(w.relay.stats().clients, 1, "the node that left registered again");
    assert!(w.hosts[0].paths.my_routes(w.now).is_empty());
    // A dial to its route: `Unknown` from the relay, `RouteGone` for the key.
    events(&mut w.hosts[1].paths);
    w.hosts[1].paths.relay_send(sa(RELAY), vec![send_to(gone, b"initial")], w.now);
    w.deliver();
    assert_eq!(w.relayed.len(), 1, "nothing forwarded to a node that left");
    assert_eq!(events(&mut w.hosts[1].paths), vec![PathEvent::RouteGone { key: key_of(&gone) }]);
}
