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
        }
    }

    /// Sends what the hosts' state machines want sent, through their NATs.
    fn collect(&mut self) {
        for h in &mut self.hosts {
            while let Some((to, b)) = h.paths.poll_transmit() {
                if matches!(wire::decode(&b), Some(Msg::Ping { .. })) {
                    self.pings += 1;
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
                for h in &mut self.hosts {
                    if to.ip().to_string() != h.nat.public_ip {
                        continue;
                    }
                    if h.nat.inbound(from, to.port()).is_some() {
                        if let Some(m) = wire::decode(&b) {
                            h.paths.on_datagram(from, m, now);
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
