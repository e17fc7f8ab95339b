//! The relay server with simulated time and addresses.

use super::*;
use crate::relay::wire::{Msg, Refusal, RelayId, RELAY_HEADER};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn v4(n: u32, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::from(n)), port)
}

fn secret(n: u32) -> [u8; 32] {
    let mut s = [0x5a; 32];
    s[..4].copy_from_slice(&n.to_be_bytes());
    s
}

#[derive(Debug, PartialEq, Eq)]
enum Out {
    Drop,
    Forward(SocketAddr, Vec<u8>),
    Reply(SocketAddr, Vec<u8>),
}

impl Out {
    /// The answer's message, for a reply.
    fn reply(&self) -> (SocketAddr, Msg<'_>) {
        match self {
            Out::Reply(to, b) => (*to, wire::decode(b).expect("a well-formed answer")),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    /// `None` for `Registered`, the reason for `Refused`.
    fn refusal(&self) -> Option<Refusal> {
        match self.reply().1 {
            Msg::Registered { .. } => None,
            Msg::Refused { reason } => Some(reason),
            other => panic!("expected Registered or Refused, got {other:?}"),
        }
    }

    fn challenge(&self) -> Cookie {
        match self.reply().1 {
            Msg::Challenge { cookie } => cookie,
            other => panic!("expected a challenge, got {other:?}"),
        }
    }
}

struct Relay {
    server: RelayServer,
    now: Instant,
}

impl Relay {
    fn new(cfg: RelayConfig) -> Relay {
        Relay::with_seed(cfg, [7; 32])
    }

    fn with_seed(cfg: RelayConfig, seed: [u8; 32]) -> Relay {
        Relay { server: RelayServer::new(cfg, seed), now: Instant::now() }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.server.on_timeout(self.now);
    }

    /// Hands `datagram` to the relay as if from `src`.
    fn raw(&mut self, src: SocketAddr, datagram: &[u8]) -> Out {
        let mut buf = vec![0u8; 2048];
        buf[..datagram.len()].copy_from_slice(datagram);
        match self.server.on_datagram(src, &mut buf, datagram.len(), self.now) {
            Verdict::Drop => Out::Drop,
            Verdict::Forward { to } => Out::Forward(to, buf[..datagram.len()].to_vec()),
            Verdict::Reply { to, len } => {
                assert!(len <= datagram.len(), "an answer of {len} bytes to {} bytes", datagram.len());
                Out::Reply(to, buf[..len].to_vec())
            }
        }
    }

    fn msg(&mut self, src: SocketAddr, msg: &Msg<'_>) -> Out {
        let mut b = Vec::new();
        wire::encode(msg, &mut b);
        self.raw(src, &b)
    }

    fn register_with(&mut self, src: SocketAddr, cookie: Cookie, secret: [u8; 32], proof: &[u8]) -> Out {
        self.msg(src, &Msg::Register { cookie, secret, proof })
    }

    /// The full round trip: Register with zeros, Challenge, Register with the cookie.
    fn register(&mut self, src: SocketAddr, n: u32) -> RelayId {
        let cookie = self.cookie_for(src);
        let out = self.register_with(src, cookie, secret(n), b"");
        let (to, msg) = out.reply();
        assert_eq!(to, crate::peers::canonical(src));
        let Msg::Registered { id, lifetime, observed } = msg else { panic!("expected Registered, got {msg:?}") };
        assert_eq!((id, lifetime, observed), (RelayId::of_secret(&secret(n)), 60, crate::peers::canonical(src)));
        id
    }

    fn cookie_for(&mut self, src: SocketAddr) -> Cookie {
        let out = self.register_with(src, [0; 16], secret(0), b"");
        let (to, _) = out.reply();
        assert_eq!(to, crate::peers::canonical(src));
        out.challenge()
    }

    fn send(&mut self, src: SocketAddr, to: RelayId, payload: &[u8]) -> Out {
        self.msg(src, &Msg::Send { to, payload })
    }
}

fn small(max_clients: usize) -> RelayConfig {
    RelayConfig { max_clients, max_clients_per_ip: max_clients, ..RelayConfig::default() }
}

#[test]
fn registration_round_trip() {
    let mut r = Relay::new(RelayConfig::default());
    let a = addr("203.0.113.5:4000");
    let out = r.register_with(a, [0; 16], secret(1), b"");
    let (to, msg) = out.reply();
    assert_eq!(to, a);
    let Msg::Challenge { cookie } = msg else { panic!("{msg:?}") };
    assert_ne!(cookie, [0; 16]);
    assert_eq!(r.server.stats().clients, 0, "a challenge keeps no state");
    let out = r.register_with(a, cookie, secret(1), b"");
    assert_eq!(out.reply().1, Msg::Registered { id: RelayId::of_secret(&secret(1)), lifetime: 60, observed: a });
    let s = r.server.stats();
    assert_eq!((s.clients, s.registered, s.challenges), (1, 1, 1));
    // The same datagram again is a refresh: same answer, nothing new.
    let out = r.register_with(a, cookie, secret(1), b"");
    assert!(matches!(out.reply().1, Msg::Registered { .. }));
    assert_eq!((r.server.stats().clients, r.server.stats().registered), (1, 1));
    // The helper does the same.
    r.register(addr("[2001:db8::7]:9"), 2);
    assert_eq!(r.server.stats().clients, 2);
}

#[test]
fn a_bad_or_old_cookie_gets_a_challenge() {
    let mut r = Relay::new(RelayConfig::default());
    let a = addr("198.51.100.1:1234");
    let cookie = r.cookie_for(a);
    let mut bad = cookie;
    bad[0] ^= 1;
    let fresh = r.register_with(a, bad, secret(1), b"").challenge();
    assert_eq!(fresh, cookie, "the same epoch, the same cookie");
    assert_eq!(r.server.stats().clients, 0);
    // In the next epoch the old cookie is still good...
    r.advance(COOKIE_EPOCH);
    assert!(matches!(r.register_with(a, cookie, secret(1), b"").reply().1, Msg::Registered { .. }));
    // ... and one epoch later no longer: a refresh with it gets a new one.
    r.advance(COOKIE_EPOCH);
    let newer = r.register_with(a, cookie, secret(1), b"").challenge();
    assert_ne!(newer, cookie);
    assert!(matches!(r.register_with(a, newer, secret(1), b"").reply().1, Msg::Registered { .. }));
}

#[test]
fn a_cookie_is_good_for_its_address_only() {
    let mut r = Relay::new(RelayConfig::default());
    let a = addr("198.51.100.1:1234");
    let cookie = r.cookie_for(a);
    for other in ["198.51.100.1:1235", "198.51.100.2:1234", "[2001:db8::1]:1234"] {
        let b = addr(other);
        let out = r.register_with(b, cookie, secret(1), b"");
        let (to, _) = out.reply();
        assert_eq!(to, b, "the challenge goes to the sender only");
        assert_ne!(out.challenge(), cookie);
    }
    assert_eq!(r.server.stats().clients, 0);
}

#[test]
fn forwarding_rewrites_the_header_and_goes_to_the_registered_address() {
    let mut r = Relay::new(RelayConfig::default());
    let (a, b) = (addr("203.0.113.1:1000"), addr("203.0.113.2:2000"));
    let ida = r.register(a, 1);
    let idb = r.register(b, 2);
    let out = r.send(a, idb, b"\xc0quic packet");
    let Out::Forward(to, bytes) = out else { panic!("{out:?}") };
    assert_eq!(to, b);
    assert_eq!(wire::decode(&bytes), Some(Msg::Recv { from: ida, payload: b"\xc0quic packet" }));
    let out = r.send(b, ida, b"");
    assert_eq!(out, Out::Forward(a, recv_bytes(idb, b"")));
    let s = r.server.stats();
    assert_eq!((s.forwarded_packets, s.forwarded_bytes), (2, (RELAY_HEADER + 12 + RELAY_HEADER) as u64));
    // From any other address: a challenge, nothing forwarded.
    let out = r.send(addr("203.0.113.66:1000"), idb, b"spoof");
    assert_eq!(out.reply().0, addr("203.0.113.66:1000"));
    out.challenge();
}

fn recv_bytes(from: RelayId, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    wire::encode(&Msg::Recv { from, payload }, &mut b);
    b
}

#[test]
fn a_send_from_an_unregistered_address_gets_a_challenge_no_longer_than_itself() {
    let mut r = Relay::new(RelayConfig::default());
    let b = addr("203.0.113.2:2000");
    let idb = r.register(b, 2);
    let stranger = addr("192.0.2.50:5000");
    // The shortest Send (17 bytes) gets a 17-byte challenge.
    let out = r.send(stranger, idb, b"");
    let Out::Reply(to, bytes) = &out else { panic!("{out:?}") };
    assert_eq!((*to, bytes.len()), (stranger, RELAY_HEADER));
    out.challenge();
    // Shorter than a Send: not even decoded.
    assert_eq!(r.raw(stranger, &[wire::Tag::Send as u8; 16]), Out::Drop);
    let s = r.server.stats();
    assert_eq!(s.dropped_unregistered, 1);
    assert_eq!(s.forwarded_packets, 0);
    // Challenges for unregistered Sends are rate-limited, for all addresses together.
    let mut challenged = 0;
    for i in 0..(CHALLENGES_BURST + 100) as u32 {
        let src = v4(0xc000_0200 + (i % 200), 1000 + (i / 200) as u16);
        if matches!(r.send(src, idb, b"x"), Out::Reply(..)) {
            challenged += 1;
        }
    }
    assert!(challenged <= CHALLENGES_BURST, "{challenged}");
    r.advance(Duration::from_secs(1));
    assert!(matches!(r.send(stranger, idb, b"x"), Out::Reply(..)), "the budget refills");
}

/// Random datagrams from random addresses that never echo a cookie: the
/// relay sends nothing but challenges, only to the sender, never longer than
/// what it answers, and forwards nothing.
#[test]
fn nothing_but_challenges_goes_to_an_address_that_did_not_echo_a_cookie() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut r = Relay::new(RelayConfig::default());
    let member = addr("203.0.113.2:2000");
    let idm = r.register(member, 2);
    for i in 0..20_000 {
        let src = v4(rng.random::<u32>() | 1, rng.random_range(1..=u16::MAX));
        let len = rng.random_range(0..200);
        let mut d: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if let Some(first) = d.first_mut() {
            *first = [1u8, 2, 3, 4, 5, 6, 7, 0x10, 0x11, 0x3f][i % 10];
        }
        if i % 7 == 0 && d.len() >= RELAY_HEADER {
            d[1..RELAY_HEADER].copy_from_slice(&idm.0); // aimed at the member
        }
        match r.raw(src, &d) {
            Out::Drop => {}
            Out::Reply(to, answer) if to == src => {
                assert!(matches!(wire::decode(&answer), Some(Msg::Challenge { .. })), "{answer:?}");
            }
            other => panic!("{other:?} for {d:?} from {src}"),
        }
    }
    assert_eq!(r.server.stats().clients, 1);
    assert_eq!(r.server.stats().forwarded_packets, 0);
}

#[test]
fn a_send_to_an_unknown_id_is_answered_unknown_within_a_rate() {
    let mut r = Relay::new(RelayConfig::default());
    let a = addr("203.0.113.1:1000");
    r.register(a, 1);
    let nobody = RelayId([0xee; 16]);
    let answered = (0..20).filter(|_| matches!(r.send(a, nobody, b"x"), Out::Reply(..))).count();
    assert_eq!(answered as u64, UNKNOWN_BURST);
    assert_eq!(r.server.stats().unknown, 20);
    r.advance(Duration::from_secs(1));
    let out = r.send(a, nobody, b"x");
    assert_eq!(out.reply(), (a, Msg::Unknown { id: nobody }));
}

#[test]
fn registering_again_from_a_new_address_moves_the_id() {
    let mut r = Relay::new(RelayConfig::default());
    let (old, new, b) = (addr("198.51.100.9:40000"), addr("198.51.100.9:40001"), addr("203.0.113.2:2000"));
    let ida = r.register(old, 1);
    let idb = r.register(b, 2);
    assert_eq!(r.register(new, 1), ida);
    let s = r.server.stats();
    assert_eq!((s.clients, s.moved), (2, 1));
    assert!(matches!(r.send(b, ida, b"p"), Out::Forward(to, _) if to == new));
    // The old address is no longer registered: its Sends get a challenge.
    r.send(old, idb, b"p").challenge();
    assert!(matches!(r.send(new, idb, b"p"), Out::Forward(to, _) if to == b));
    // Someone else registering at the old address does not take the id.
    r.register(old, 3);
    assert!(matches!(r.send(b, ida, b"p"), Out::Forward(to, _) if to == new));
}

#[test]
fn a_new_id_from_a_registered_address_replaces_the_old_one() {
    let mut r = Relay::new(RelayConfig::default());
    let (a, b) = (addr("203.0.113.1:1000"), addr("203.0.113.2:2000"));
    let old = r.register(a, 1);
    r.register(b, 2);
    for n in 10..1000 {
        r.register(a, n);
    }
    assert_eq!(r.server.stats().clients, 2, "one address holds one id");
    assert_eq!(r.send(b, old, b"p").reply().1, Msg::Unknown { id: old });
    let newest = RelayId::of_secret(&secret(999));
    assert!(matches!(r.send(b, newest, b"p"), Out::Forward(to, _) if to == a));
}

/// A leaving client's `Unregister` ends its registration at once (a peer
/// dialling its route is answered `Unknown`, not forwarded into the void for
/// the rest of the lifetime); one with the wrong secret, or from another
/// address, changes nothing; none is answered.
#[test]
fn unregister_ends_a_registration_only_for_its_owner() {
    let mut r = Relay::new(RelayConfig::default());
    let (a, b, c) = (addr("203.0.113.1:1000"), addr("203.0.113.2:2000"), addr("203.0.113.3:3000"));
    let ida = r.register(a, 1);
    r.register(b, 2);
    let unregister = |n: u32| {
        let mut d = Vec::new();
        wire::encode(&Msg::Unregister { secret: secret(n) }, &mut d);
        d
    };
    // Someone else's secret from a's address, and a's secret from elsewhere.
    assert_eq!(r.raw(a, &unregister(2)), Out::Drop);
    assert_eq!(r.raw(c, &unregister(1)), Out::Drop);
    assert!(matches!(r.send(b, ida, b"p"), Out::Forward(to, _) if to == a));
    assert_eq!(r.server.stats().clients, 2);
    // The owner, from its address.
    assert_eq!(r.raw(a, &unregister(1)), Out::Drop);
    let s = r.server.stats();
    assert_eq!((s.clients, s.unregistered), (1, 1));
    assert_eq!(r.send(b, ida, b"p").reply().1, Msg::Unknown { id: ida });
    // It is gone as a sender too, and may register again.
    r.send(a, ida, b"p").challenge();
    assert_eq!(r.register(a, 1), ida);
    assert!(matches!(r.send(b, ida, b"p"), Out::Forward(to, _) if to == a));
}

#[test]
fn registrations_expire_unless_refreshed() {
    let mut r = Relay::new(RelayConfig::default());
    let (a, b) = (addr("203.0.113.1:1000"), addr("203.0.113.2:2000"));
    let ida = r.register(a, 1);
    let idb = r.register(b, 2);
    assert!(r.server.next_timeout().is_some_and(|t| t <= r.now + Duration::from_secs(60)));
    for _ in 0..4 {
        r.advance(Duration::from_secs(20));
        r.register(b, 2); // b refreshes; a does not
    }
    let s = r.server.stats();
    assert_eq!((s.clients, s.expired), (1, 1));
    assert_eq!(r.send(b, ida, b"p").reply().1, Msg::Unknown { id: ida });
    r.send(a, idb, b"p").challenge();
    // Expired entries are gone at once even between sweeps.
    r.advance(Duration::from_secs(59));
    r.now += Duration::from_secs(2);
    r.send(b, idb, b"p").challenge();
    r.server.on_timeout(r.now);
    assert_eq!(r.server.stats().clients, 0);
    assert_eq!(r.server.next_timeout(), None);
}

#[test]
fn after_a_relay_restart_a_client_gets_a_challenge_and_registers_again() {
    let mut r = Relay::with_seed(RelayConfig::default(), [1; 32]);
    let (a, b) = (addr("203.0.113.1:1000"), addr("203.0.113.2:2000"));
    let cookie_a = r.cookie_for(a);
    r.register_with(a, cookie_a, secret(1), b"").reply();
    let idb = r.register(b, 2);
    // The relay restarts: new key, empty table.
    let mut r2 = Relay::with_seed(RelayConfig::default(), [2; 32]);
    r2.now = r.now;
    r2.register(b, 2);
    let fresh = r2.send(a, idb, b"p").challenge();
    // Its old refresh datagram gets a challenge too (the old cookie is from another key).
    assert_eq!(r2.register_with(a, cookie_a, secret(1), b"").challenge(), fresh);
    assert!(matches!(r2.register_with(a, fresh, secret(1), b"").reply().1, Msg::Registered { .. }));
    assert!(matches!(r2.send(a, idb, b"p"), Out::Forward(to, _) if to == b));
}

#[test]
fn a_client_over_its_rate_is_throttled_and_the_others_are_not() {
    let cfg = RelayConfig { client_rate: 100_000, client_burst: 10_000, total_rate: 10_000_000, ..RelayConfig::default() };
    let mut r = Relay::new(cfg);
    let (a, b) = (addr("203.0.113.1:1000"), addr("203.0.113.2:2000"));
    let ida = r.register(a, 1);
    let idb = r.register(b, 2);
    let packet = [0u8; 1200 - RELAY_HEADER];
    let (mut a_through, mut b_through) = (0usize, 0usize);
    // One simulated second: a sends 1.2 MB/s, b 60 kB/s (under its 100 kB/s).
    for ms in 0..1000 {
        r.now += Duration::from_millis(1);
        if matches!(r.send(a, idb, &packet), Out::Forward(..)) {
            a_through += 1;
        }
        if ms % 20 == 0 && matches!(r.send(b, ida, &packet), Out::Forward(..)) {
            b_through += 1;
        }
    }
    // a: the burst plus a second of rate, in 1200-byte packets.
    let expected = (10_000 + 100_000) / 1200;
    assert!((expected - 2..=expected + 1).contains(&a_through), "a got {a_through} through, expected about {expected}");
    assert_eq!(b_through, 50, "b is not throttled");
    let s = r.server.stats();
    assert_eq!(s.dropped_rate, (1000 - a_through) as u64);
    assert_eq!(s.dropped_total_rate, 0);
}

#[test]
fn all_clients_together_are_held_to_the_total_rate() {
    // Total 1 MB/s (burst 100 kB), clients 1 MB/s each: four clients at 500 kB/s each.
    let cfg = RelayConfig { client_rate: 1_000_000, client_burst: 100_000, total_rate: 1_000_000, ..RelayConfig::default() };
    let mut r = Relay::new(cfg);
    let addrs: Vec<SocketAddr> = (1..=4).map(|i| addr(&format!("203.0.113.{i}:1000"))).collect();
    let ids: Vec<RelayId> = addrs.iter().enumerate().map(|(i, a)| r.register(*a, i as u32)).collect();
    let packet = [0u8; 1000 - RELAY_HEADER];
    let mut through = 0u64;
    for _ in 0..2000 {
        r.now += Duration::from_millis(1);
        for (i, a) in addrs.iter().enumerate() {
            if matches!(r.send(*a, ids[(i + 1) % 4], &packet), Out::Forward(..)) {
                through += 1000;
            }
        }
    }
    // Two seconds at 1 MB/s plus the 100 kB burst, of 4 MB offered.
    assert!((2_000_000..=2_101_000).contains(&through), "{through}");
    let s = r.server.stats();
    assert!(s.dropped_total_rate > 0 && s.dropped_rate == 0, "{s:?}");
}

#[test]
fn a_flood_of_registrations_keeps_the_table_at_max_clients() {
    let mut r = Relay::new(small(64));
    let early = addr("203.0.113.1:1000");
    let id_early = r.register(early, 1);
    let mut refused = 0;
    for i in 0..10_000u32 {
        let src = v4(0x0a00_0000 + i, 4000);
        let cookie = r.cookie_for(src);
        match r.register_with(src, cookie, secret(100 + i), b"").reply().1 {
            Msg::Registered { .. } => {}
            Msg::Refused { reason: Refusal::Full } => refused += 1,
            other => panic!("{other:?}"),
        }
        assert!(r.server.stats().clients <= 64);
    }
    let s = r.server.stats();
    assert_eq!((s.clients, s.refused_full, refused), (64, 10_000 - 63, 10_000 - 63));
    // Registered clients keep their place: refreshes and moves still work.
    assert_eq!(r.register(early, 1), id_early);
    assert_eq!(r.register(addr("203.0.113.1:1001"), 1), id_early);
    // Once some expire (the flooders stop refreshing), there is room again.
    r.advance(Duration::from_secs(61));
    assert_eq!(r.server.stats().clients, 0);
    r.register(addr("192.0.2.1:1"), 7);
}

#[test]
fn one_host_cannot_take_every_slot() {
    let cfg = RelayConfig { max_clients: 100, max_clients_per_ip: 4, ..RelayConfig::default() };
    let mut r = Relay::new(cfg);
    for port in 1..=10u16 {
        let src = SocketAddr::new(addr("198.51.100.7:1").ip(), port);
        let cookie = r.cookie_for(src);
        let out = r.register_with(src, cookie, secret(u32::from(port)), b"");
        let expected = if port <= 4 { None } else { Some(Refusal::Full) };
        assert_eq!(out.refusal(), expected, "port {port}");
    }
    // IPv6: per /64.
    for i in 1..=5u16 {
        let src = addr(&format!("[2001:db8:0:1::{i}]:7"));
        let cookie = r.cookie_for(src);
        let out = r.register_with(src, cookie, secret(1000 + u32::from(i)), b"");
        assert_eq!(out.refusal().is_none(), i <= 4, "{i}: {out:?}");
    }
    r.register(addr("[2001:db8:0:2::1]:7"), 2000);
    assert_eq!(r.server.stats().clients, 9);
}

#[test]
fn ipv4_mapped_addresses_are_one_address() {
    let mut r = Relay::new(RelayConfig::default());
    let mapped = addr("[::ffff:203.0.113.1]:1000");
    let plain = addr("203.0.113.1:1000");
    let cookie = r.cookie_for(mapped);
    let out = r.register_with(plain, cookie, secret(1), b"");
    assert_eq!(out.reply(), (plain, Msg::Registered { id: RelayId::of_secret(&secret(1)), lifetime: 60, observed: plain }));
    let idb = r.register(addr("203.0.113.2:2000"), 2);
    assert!(matches!(r.send(mapped, idb, b"p"), Out::Forward(..)));
}

#[test]
fn datagrams_that_are_not_for_a_relay_are_dropped() {
    let mut r = Relay::new(RelayConfig::default());
    let a = addr("203.0.113.1:1000");
    let ida = r.register(a, 1);
    for m in [
        Msg::Recv { from: ida, payload: b"x" },
        Msg::Challenge { cookie: [1; 16] },
        Msg::Unknown { id: ida },
        Msg::Refused { reason: Refusal::Full },
        Msg::Ping { token: [0; 16], nonce: [0; 8] },
    ] {
        assert_eq!(r.msg(a, &m), Out::Drop, "{m:?}");
    }
    assert_eq!(r.msg(addr("203.0.113.1:0"), &Msg::Register { cookie: [0; 16], secret: secret(1), proof: b"" }), Out::Drop);
    assert_eq!(r.server.stats().dropped_invalid, 6);
}

mod hoods {
    use super::*;
    use partybus_testkit::TestHood;

    fn proof(hood: &TestHood, peer: &str, cookie: &Cookie, n: u32) -> Vec<u8> {
        let msg = proof_message(cookie, &RelayId::of_secret(&secret(n)));
        partybus_pki::relay_proof(&hood.peer(peer), &hood.hood, &msg).unwrap()
    }

    #[test]
    fn only_members_of_the_listed_hoods_register() {
        let lab = TestHood::new("lab");
        let other = TestHood::new("other");
        let cfg = RelayConfig { policy: RelayPolicy::Hoods(vec![lab.hood.fingerprint().to_owned()]), ..RelayConfig::default() };
        let mut r = Relay::new(cfg);
        let a = addr("203.0.113.1:1000");
        let cookie = r.cookie_for(a);

        // A valid proof: registered, and refreshes are not checked again.
        let good = proof(&lab, "alice", &cookie, 1);
        assert!(matches!(r.register_with(a, cookie, secret(1), &good).reply().1, Msg::Registered { .. }));
        assert!(matches!(r.register_with(a, cookie, secret(1), &good).reply().1, Msg::Registered { .. }));
        assert!(matches!(r.register_with(a, cookie, secret(1), b"").reply().1, Msg::Registered { .. }), "a refresh");
        assert_eq!(r.server.stats().proofs_checked, 1);

        let b = addr("203.0.113.2:2000");
        let cookie_b = r.cookie_for(b);
        let refused = |r: &mut Relay, proof: &[u8], n: u32| match r.register_with(b, cookie_b, secret(n), proof).reply().1 {
            Msg::Refused { reason } => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(refused(&mut r, b"", 2), Refusal::NotAllowed, "no proof");
        assert_eq!(refused(&mut r, &proof(&other, "mallory", &cookie_b, 2), 2), Refusal::NotAllowed, "a foreign hood");
        assert_eq!(refused(&mut r, b"\x04\x03garbage", 2), Refusal::BadProof);
        // A member's proof for another registration (a's cookie, or another id) does not carry over.
        assert_eq!(refused(&mut r, &good, 1), Refusal::BadProof, "a's proof replayed from b");
        assert_eq!(refused(&mut r, &proof(&lab, "bob", &cookie_b, 3), 2), Refusal::BadProof, "a proof for another id");
        let mut tampered = proof(&lab, "bob", &cookie_b, 2);
        tampered[8] ^= 1;
        assert_eq!(refused(&mut r, &tampered, 2), Refusal::BadProof);
        assert_eq!(r.server.stats().clients, 1);
        let s = r.server.stats();
        assert_eq!((s.refused_not_allowed, s.refused_bad_proof), (2, 4));
        // Bob's own proof works; moving needs a new proof.
        assert!(matches!(r.register_with(b, cookie_b, secret(2), &proof(&lab, "bob", &cookie_b, 2)).reply().1, Msg::Registered { .. }));
        let c = addr("203.0.113.3:3000");
        let cookie_c = r.cookie_for(c);
        assert!(matches!(r.register_with(c, cookie_c, secret(2), b"").reply().1, Msg::Refused { reason: Refusal::NotAllowed }));
        assert!(matches!(r.register_with(c, cookie_c, secret(2), &proof(&lab, "bob", &cookie_c, 2)).reply().1, Msg::Registered { .. }));
        assert_eq!(r.server.stats().moved, 1);
    }

    #[test]
    fn revoked_members_are_refused_and_dropped() {
        let lab = TestHood::new("lab");
        let cfg = RelayConfig { policy: RelayPolicy::Hoods(vec![lab.hood.fingerprint().to_owned()]), ..RelayConfig::default() };
        let revoked = partybus_pki::RevokedSet::new(&lab.hood);
        let mut r = Relay { server: RelayServer::new(cfg, [7; 32]).with_revocations(revoked.clone()), now: Instant::now() };
        let (a, b) = (addr("203.0.113.1:1000"), addr("203.0.113.2:2000"));
        let (cookie_a, cookie_b) = (r.cookie_for(a), r.cookie_for(b));
        let registered = |r: &mut Relay, src, cookie, n, peer| {
            matches!(r.register_with(src, cookie, secret(n), &proof(&lab, peer, &cookie, n)).reply().1, Msg::Registered { .. })
        };
        assert!(registered(&mut r, a, cookie_a, 1, "alice"));
        assert!(registered(&mut r, b, cookie_b, 2, "bob"));
        // Revoke bob: his registration goes, and he cannot register again; alice stays.
        let (bob_cert, _) = lab.peer_files("bob");
        let list = partybus_pki::revocation::revoke("lab", lab.dir(), partybus_pki::revocation::RevokeTarget::Cert(bob_cert)).unwrap().list;
        revoked.apply(&list, "test").unwrap();
        assert_eq!(r.server.drop_revoked(), 1);
        assert_eq!(r.server.stats().clients, 1);
        assert!(!registered(&mut r, b, cookie_b, 2, "bob"));
        assert_eq!(r.register_with(b, cookie_b, secret(2), &proof(&lab, "bob", &cookie_b, 2)).refusal(), Some(Refusal::NotAllowed));
        assert!(registered(&mut r, a, cookie_a, 1, "alice"), "alice refreshes");
        assert_eq!(r.server.drop_revoked(), 0);
    }

    #[test]
    fn proof_checks_have_a_budget() {
        let lab = TestHood::new("lab");
        let cfg = RelayConfig {
            max_clients: 10_000,
            max_clients_per_ip: 10_000,
            policy: RelayPolicy::Hoods(vec![lab.hood.fingerprint().to_owned()]),
            ..RelayConfig::default()
        };
        let mut r = Relay::new(cfg);
        let a = addr("203.0.113.1:1000");
        let cookie = r.cookie_for(a);
        let mut outcomes = (0, 0);
        for n in 0..(PROOF_CHECKS_BURST as u32 + 50) {
            match r.register_with(a, cookie, secret(n), b"\x04\x03junk") {
                Out::Drop => outcomes.1 += 1,
                out => {
                    assert_eq!(out.reply().1, Msg::Refused { reason: Refusal::BadProof });
                    outcomes.0 += 1;
                }
            }
        }
        assert_eq!(outcomes, (PROOF_CHECKS_BURST as usize, 50));
        assert_eq!(r.server.stats().dropped_busy, 50);
    }
}
