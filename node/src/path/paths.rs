//! Which network path each connection's packets take, as a state machine
//! with no I/O: fed datagrams and time, it answers where to send and what
//! to send (relay registrations, path probes).
//!
//! - **Relays we use** ([`super::relays`]). Configured ones (the `--dht`
//!   and `--connect` seeds and `--relay`) are kept registered; others are
//!   registered on demand when a peer's route names them, and forgotten
//!   when unused.
//! - **Connections.** Each QUIC connection is known by the address quinn
//!   sends to (its *key*): the peer's real address for a connection made
//!   directly, or a relay key ([`super::keys`]) for one made through a relay.
//!   A connection with a relay route and a direct address probes the direct
//!   one (pings that carry a token only the two ends know); while the probes
//!   are answered its packets go direct, otherwise through the relay and the
//!   last direct address both (QUIC drops the duplicates), so a direct path
//!   that dies costs no more than a probe interval and one that appears
//!   (a hole punched) is used at once. Neither end's quinn sees the change:
//!   the connection keeps its key, so no handshake and no migration.
//!
//! Probing a relayed connection's candidates from both ends at once is the
//! hole punch: each end's ping opens its own NAT for the other's.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::keys::{is_relay_key, key_of};
pub(crate) use super::relays::Prover;
use super::relays::Relays;
use crate::peers::canonical;
use crate::relay::wire::{self, Msg, RelayId, Token};
use crate::wire::RelayRoute;

/// A direct path is trusted this long after its last answered probe: the
/// longest a dead direct path holds a connection up before its packets also
/// go through the relay (a 2 s cut in a 5 s stream made it arrive 4.3 s late
/// with 6.5 s here, Tailscale's figure).
pub(crate) const TRUST: Duration = Duration::from_millis(3000);
/// Probes on a trusted direct path (three per [`TRUST`], so one lost probe,
/// or two, does not look like a dead path).
const KEEP_PROBING: Duration = Duration::from_millis(1000);
/// Probe rounds of a connection without a direct path: quick at first
/// (a punch needs both ends probing while the other's NAT is open), then
/// every 30 s.
const PUNCH_SCHEDULE: [Duration; 8] = [
    Duration::from_millis(0),
    Duration::from_millis(200),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(15),
];
const PUNCH_LATER: Duration = Duration::from_secs(30);
/// Candidate addresses probed per connection at most.
pub(crate) const MAX_CANDIDATES: usize = 12;

/// How to send to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Direct(SocketAddr),
    Relay {
        relay: SocketAddr,
        to: RelayId,
    },
    /// The direct path is in doubt: both (QUIC drops duplicates).
    Both {
        direct: SocketAddr,
        relay: SocketAddr,
        to: RelayId,
    },
}

/// What the socket reads on every packet: kept up to date by [`Paths`].
#[derive(Default, Debug)]
pub(crate) struct Routing {
    /// By key: how to send.
    pub routes: HashMap<SocketAddr, Route>,
    /// A direct source that stands for a key (a relayed connection's punched path).
    pub aliases: HashMap<SocketAddr, SocketAddr>,
    /// A relayed source (relay address, sender id) that stands for a key.
    pub relay_in: HashMap<(SocketAddr, RelayId), SocketAddr>,
}

/// The kind of path a connection uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PathKind {
    Direct(SocketAddr),
    Relayed(SocketAddr),
}

/// What the node hears of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PathEvent {
    /// The connection known by `key` now uses this path.
    Changed { key: SocketAddr, path: PathKind },
    /// Our relay routes, or where relays see us, changed.
    Routes,
    /// A relay we sent packets through for `key` (a relay key: our dial, or
    /// a connection through it) answered that nobody is registered under
    /// the route's id: the peer left (or has not registered there again
    /// since the relay restarted). A dial to `key` will not be answered.
    RouteGone { key: SocketAddr },
}

struct ConnPath {
    /// The probe tokens of the QUIC connections known by this key (two
    /// while a duplicate connection is being retired); probes carry the newest.
    tokens: Vec<Token>,
    relay: Option<RelayRoute>,
    /// The direct address in use or last used.
    direct: Option<SocketAddr>,
    /// Where the peer's probes come from: its packets from there are this
    /// connection's even before our own probes are answered (the peer may
    /// switch to its direct path first).
    inbound: Option<SocketAddr>,
    trusted_until: Option<Instant>,
    candidates: Vec<SocketAddr>,
    next_probe: Instant,
    round: usize,
    reported: Option<PathKind>,
}

impl ConnPath {
    fn trusted(&self, now: Instant) -> bool {
        self.trusted_until.is_some_and(|t| now < t)
    }

    fn route(&self, now: Instant) -> Option<Route> {
        let relay = self.relay.map(|r| (r.relay, RelayId(r.id)));
        match (self.direct, relay) {
            (Some(d), _) if self.trusted(now) => Some(Route::Direct(d)),
            (Some(d), Some((relay, to))) => Some(Route::Both { direct: d, relay, to }),
            (None, Some((relay, to))) => Some(Route::Relay { relay, to }),
            (Some(d), None) => Some(Route::Direct(d)),
            (None, None) => None,
        }
    }

    fn kind(&self, now: Instant) -> Option<PathKind> {
        match self.route(now)? {
            Route::Direct(d) => Some(PathKind::Direct(d)),
            Route::Relay { relay, .. } | Route::Both { relay, .. } => Some(PathKind::Relayed(relay)),
        }
    }
}

/// The path state machine. See the module documentation.
pub(crate) struct Paths {
    relays: Relays,
    conns: HashMap<SocketAddr, ConnPath>,
    tokens: HashMap<Token, SocketAddr>,
    routing: Routing,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<PathEvent>,
    rng: SmallRng,
    /// Probes we sent, by nonce: a pong must answer one of them, and a probe
    /// that comes back to us (we probed one of our own addresses) is ignored.
    probes: HashMap<[u8; 8], (SocketAddr, Instant)>,
}

/// Probes remembered at most (older ones are forgotten first, after [`PROBE_MEMORY`]).
const MAX_PROBES: usize = 4096;
/// How long a probe waits for its pong.
const PROBE_MEMORY: Duration = Duration::from_secs(10);

impl Paths {
    /// `secret` is this node's relay secret (new at every start).
    pub(crate) fn new(secret: [u8; 32], prover: Option<Prover>, seed: u64) -> Paths {
        Paths {
            relays: Relays::new(secret, prover),
            conns: HashMap::new(),
            tokens: HashMap::new(),
            routing: Routing::default(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            rng: SmallRng::seed_from_u64(seed),
            probes: HashMap::new(),
        }
    }

    pub(crate) fn routing(&self) -> &Routing {
        &self.routing
    }

    /// Where we can be reached through relays (registered ones only).
    pub(crate) fn my_routes(&self, now: Instant) -> Vec<RelayRoute> {
        self.relays.my_routes(now)
    }

    /// Where relays see us (our public addresses behind a NAT).
    pub(crate) fn observed(&self) -> Vec<SocketAddr> {
        self.relays.observed()
    }

    /// The relays we use (only they may send us relay answers and relayed packets).
    pub(crate) fn relay_addrs(&self) -> std::collections::HashSet<SocketAddr> {
        self.relays.addrs()
    }

    /// The node leaves: our relays forget us now ([`Relays::leave`]). No
    /// `Routes` event: nobody is told of routes any more (discovery is
    /// stopping; a new record without them would only be one more to go stale).
    pub(crate) fn leave(&mut self) {
        self.relays.leave(&mut self.out);
    }

    /// Keep registered at `relay` (a seed, or `--relay`).
    pub(crate) fn add_relay(&mut self, relay: SocketAddr, now: Instant) {
        if self.relays.add(relay, now, &mut self.out) {
            self.events.push_back(PathEvent::Routes);
        }
    }

    /// A packet is about to go through `relay`: register there if we are not.
    pub(crate) fn use_relay(&mut self, relay: SocketAddr, now: Instant) {
        if self.relays.use_relay(relay, now, &mut self.out) {
            self.events.push_back(PathEvent::Routes);
        }
    }

    /// The relays we are registered at now: the socket sends relayed packets
    /// to these at once, and hands those for others to [`Paths::relay_send`].
    pub(crate) fn registered_relays(&self, now: Instant) -> std::collections::HashSet<SocketAddr> {
        self.relays.registered(now)
    }

    /// Relayed packets (whole `Send` datagrams) for `relay`, where we were
    /// not registered when the socket last looked: sent if we are registered
    /// there now, else held until our registration there is answered and sent
    /// right then (registering at `relay` if we did not use it yet). A dial
    /// through a relay made before our own registration there would
    /// otherwise lose its Initials to the relay's challenges and wait for
    /// quinn's backed-off retransmission ([`super::relays`]).
    pub(crate) fn relay_send(&mut self, relay: SocketAddr, packets: Vec<Vec<u8>>, now: Instant) {
        self.use_relay(relay, now);
        if self.relays.hold(relay, packets, now, &mut self.out) {
            self.events.push_back(PathEvent::Routes);
        }
    }

    /// A connection known by `key` is up: `token` is its probe token, the
    /// peer is registered at `routes` and may be reachable at `candidates`.
    pub(crate) fn add_conn(&mut self, key: SocketAddr, token: Token, routes: &[RelayRoute], candidates: &[SocketAddr], now: Instant) {
        let key = canonical(key);
        if let Some(c) = self.conns.get_mut(&key) {
            // A second connection between the same two sockets (a duplicate).
            c.tokens.retain(|t| *t != token);
            c.tokens.push(token);
            self.tokens.insert(token, key);
            return;
        }
        let relay = if is_relay_key(key) {
            routes.iter().find(|r| key_of(r) == key).copied()
        } else {
            // The relay we are registered at, or else the first one named.
            let registered = |r: &&RelayRoute| self.relays.is_registered(r.relay);
            routes.iter().find(registered).or(routes.first()).copied()
        };
        // A peer on this host is always reachable directly: no relay, no probes.
        let relay = relay.map(|r| RelayRoute { relay: canonical(r.relay), id: r.id }).filter(|_| !key.ip().is_loopback());
        if let Some(r) = relay {
            self.use_relay(r.relay, now);
        }
        let direct = (!is_relay_key(key)).then_some(key);
        let mut c = ConnPath {
            tokens: vec![token],
            relay,
            direct,
            inbound: None,
            trusted_until: direct.map(|_| now + TRUST),
            candidates: Vec::new(),
            next_probe: now,
            round: 0,
            reported: None,
        };
        if relay.is_some() {
            for a in candidates {
                Self::add_candidate(&mut c, *a, false);
            }
        }
        self.conns.insert(key, c);
        self.tokens.insert(token, key);
        self.update(key, now);
        self.update_users_of(key, now);
    }

    /// The peer behind `key` told us its relay routes and addresses anew
    /// (it registered at a relay after its hello): a connection without a
    /// relay takes one, and probing starts if it was not going on.
    pub(crate) fn update_conn(&mut self, key: SocketAddr, routes: &[RelayRoute], candidates: &[SocketAddr], now: Instant) {
        let key = canonical(key);
        let Some(c) = self.conns.get_mut(&key) else { return };
        if c.relay.is_none() && !key.ip().is_loopback() {
            let Some(r) = routes.first() else { return };
            c.relay = Some(RelayRoute { relay: canonical(r.relay), id: r.id });
            c.next_probe = now;
            let relay = canonical(r.relay);
            for a in candidates {
                Self::add_candidate(c, *a, false);
            }
            self.use_relay(relay, now);
            self.update(key, now);
        }
    }

    fn add_candidate(c: &mut ConnPath, addr: SocketAddr, front: bool) {
        let addr = canonical(addr);
        if addr.port() == 0 || addr.ip().is_unspecified() || is_relay_key(addr) || c.candidates.contains(&addr) {
            return;
        }
        if front {
            c.candidates.insert(0, addr);
            c.candidates.truncate(MAX_CANDIDATES);
        } else if c.candidates.len() < MAX_CANDIDATES {
            c.candidates.push(addr);
        }
    }

    /// The connection known by `key` with probe token `token` ended.
    pub(crate) fn remove_conn(&mut self, key: SocketAddr, token: Token, now: Instant) {
        let key = canonical(key);
        let Some(c) = self.conns.get_mut(&key) else { return };
        if !c.tokens.contains(&token) {
            return;
        }
        self.tokens.remove(&token);
        c.tokens.retain(|t| *t != token);
        if !c.tokens.is_empty() {
            return;
        }
        self.conns.remove(&key);
        self.routing.routes.remove(&key);
        self.routing.aliases.retain(|_, k| *k != key);
        self.routing.relay_in.retain(|_, k| *k != key);
        // A relayed connection that kept off this address may use it now.
        self.update_users_of(key, now);
    }

    /// The path of the connection known by `key`.
    pub(crate) fn path_of(&self, key: SocketAddr) -> Option<PathKind> {
        self.conns.get(&canonical(key))?.reported
    }

    /// Brings the socket's view of `key` up to date, and reports a change of path.
    fn update(&mut self, key: SocketAddr, now: Instant) {
        // A relayed connection whose peer's direct address is the key of
        // another connection (a duplicate, made directly, that the duplicate
        // rule will retire one way or the other) keeps to its relay: packets
        // from that address belong to the other connection, and presenting
        // them as this one's would look like a migration to quinn.
        let taken = |d: SocketAddr, conns: &HashMap<SocketAddr, ConnPath>| d != key && conns.contains_key(&d);
        let Some(c) = self.conns.get(&key) else { return };
        let direct_taken = c.direct.is_some_and(|d| taken(d, &self.conns));
        let inbound = c.inbound.filter(|i| !taken(*i, &self.conns) && *i != key);
        let relayed_exists = c.relay.is_some_and(|r| key_of(&r) != key && self.conns.contains_key(&key_of(&r)));
        let (mut route, mut kind) = (c.route(now), c.kind(now));
        if direct_taken {
            if let Some(r) = c.relay {
                route = Some(Route::Relay { relay: r.relay, to: RelayId(r.id) });
                kind = Some(PathKind::Relayed(r.relay));
            }
        }
        let c = self.conns.get_mut(&key).expect("looked up above");
        match route {
            Some(r) if !(r == Route::Direct(key)) => {
                self.routing.routes.insert(key, r);
            }
            _ => {
                self.routing.routes.remove(&key);
            }
        }
        self.routing.aliases.retain(|_, k| *k != key);
        if let Some(d) = c.direct.filter(|d| *d != key && !direct_taken) {
            self.routing.aliases.insert(d, key);
        }
        if let Some(i) = inbound {
            self.routing.aliases.insert(i, key);
        }
        self.routing.relay_in.retain(|_, k| *k != key);
        if let Some(r) = c.relay {
            // Relayed packets from the peer are this connection's if it was
            // made through the relay, or if it falls back to the relay now
            // and no connection made through the relay exists: otherwise
            // they belong to a new connection the peer dials through it.
            let falls_back = matches!(route, Some(Route::Relay { .. } | Route::Both { .. }));
            if is_relay_key(key) || (falls_back && !relayed_exists) {
                self.routing.relay_in.insert((r.relay, RelayId(r.id)), key);
            }
        }
        if kind != c.reported {
            c.reported = kind;
            if let Some(path) = kind {
                self.events.push_back(PathEvent::Changed { key, path });
            }
        }
    }

    /// Connections whose direct address is `addr` (after a connection known
    /// by `addr` came or went).
    fn update_users_of(&mut self, addr: SocketAddr, now: Instant) {
        let users: Vec<SocketAddr> = self.conns.iter().filter(|(k, c)| **k != addr && c.direct == Some(addr)).map(|(k, _)| *k).collect();
        for k in users {
            self.update(k, now);
        }
    }

    /// One of our datagrams arrived from `src` (not a relayed packet, not
    /// for the relay service).
    pub(crate) fn on_datagram(&mut self, src: SocketAddr, msg: Msg<'_>, now: Instant) {
        let src = canonical(src);
        match msg {
            Msg::Challenge { cookie } => {
                if self.relays.on_challenge(src, cookie, now, &mut self.out) {
                    self.events.push_back(PathEvent::Routes);
                }
            }
            Msg::Registered { id, lifetime, observed } => {
                if self.relays.on_registered(src, id, lifetime, observed, now, &mut self.out) {
                    self.events.push_back(PathEvent::Routes);
                }
            }
            Msg::Refused { reason } => {
                if self.relays.on_refused(src, reason, now) {
                    self.events.push_back(PathEvent::Routes);
                }
            }
            Msg::Unknown { id } => {
                if self.relays.knows(src) {
                    let key = key_of(&RelayRoute { relay: src, id: id.0 });
                    tracing::debug!(relay = %src, peer = %id, %key, "the relay does not know that peer (not registered there)");
                    self.events.push_back(PathEvent::RouteGone { key });
                }
            }
            Msg::Ping { token, nonce } => self.on_ping(src, token, nonce, now),
            Msg::Pong { token, nonce, .. } => {
                if self.probes.remove(&nonce).is_some_and(|(k, _)| self.tokens.get(&token) == Some(&k)) {
                    self.on_pong(src, token, now);
                }
            }
            // Relay service traffic and relayed packets are not ours to handle.
            Msg::Register { .. } | Msg::Send { .. } | Msg::Recv { .. } | Msg::Unregister { .. } => {}
        }
    }

    fn on_ping(&mut self, src: SocketAddr, token: Token, nonce: [u8; 8], now: Instant) {
        let Some(&key) = self.tokens.get(&token) else { return };
        if self.probes.contains_key(&nonce) {
            return; // our own probe, sent to one of our own addresses
        }
        if src != key && self.conns.contains_key(&src) {
            // Another connection (a duplicate made directly) is known by that
            // address: its packets could not be told from this one's, so this
            // one does not go direct there. No answer: the peer stays relayed too.
            return;
        }
        let mut b = Vec::with_capacity(wire::PING_LEN);
        wire::encode(&Msg::Pong { token, nonce, observed: src }, &mut b);
        self.out.push_back((src, b));
        let c = self.conns.get_mut(&key).expect("tokens follow conns");
        let moved = c.inbound != Some(src);
        c.inbound = Some(src);
        if !c.trusted(now) && c.relay.is_some() {
            // The peer's probe got through to us, so ours to where it came
            // from should get through to it now: probe at once.
            Self::add_candidate(c, src, true);
            c.next_probe = now;
        }
        if moved {
            self.update(key, now);
        }
    }

    fn on_pong(&mut self, src: SocketAddr, token: Token, now: Instant) {
        let Some(&key) = self.tokens.get(&token) else { return };
        if src != key && self.conns.contains_key(&src) {
            return; // see `on_ping`
        }
        let c = self.conns.get_mut(&key).expect("tokens follow conns");
        let was = c.trusted(now);
        c.direct = Some(src);
        c.trusted_until = Some(now + TRUST);
        c.round = 0;
        if !was {
            c.next_probe = now + KEEP_PROBING;
            tracing::debug!(%key, direct = %src, "direct path confirmed");
        }
        self.update(key, now);
    }

    /// The earliest time [`Paths::handle_timeout`] has something to do.
    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        let relays = self.relays.next_timeout();
        let conns =
            self.conns.values().filter(|c| c.relay.is_some()).flat_map(|c| [Some(c.next_probe), c.trusted_until].into_iter().flatten());
        relays.into_iter().chain(conns).min()
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.probes.retain(|_, (_, at)| now.duration_since(*at) < PROBE_MEMORY);
        let used: Vec<SocketAddr> = self.conns.values().filter_map(|c| c.relay.map(|r| r.relay)).collect();
        if self.relays.register_due(now, &mut self.out) | self.relays.forget_idle(&used, now) {
            self.events.push_back(PathEvent::Routes);
        }
        let keys: Vec<SocketAddr> = self.conns.iter().filter(|(_, c)| c.relay.is_some()).map(|(k, _)| *k).collect();
        for key in keys {
            self.probe_due(key, now);
            self.update(key, now);
        }
    }

    fn probe_due(&mut self, key: SocketAddr, now: Instant) {
        let c = self.conns.get_mut(&key).expect("caller checked");
        if c.next_probe > now {
            return;
        }
        let trusted = c.trusted(now);
        let mut targets: Vec<SocketAddr> = c.direct.into_iter().collect();
        if !trusted {
            for a in &c.candidates {
                if !targets.contains(a) {
                    targets.push(*a);
                }
            }
        }
        let token = *c.tokens.last().expect("a known connection has a token");
        if trusted {
            c.next_probe = now + KEEP_PROBING;
        } else {
            c.round += 1;
            let wait = PUNCH_SCHEDULE.get(c.round).copied().unwrap_or(PUNCH_LATER);
            // Jitter, so that a hood's probes do not beat in step.
            let jitter = wait.mul_f64(self.rng.random::<f64>() * 0.1);
            c.next_probe = now + wait + jitter;
        }
        if self.probes.len() + targets.len() > MAX_PROBES {
            self.probes.retain(|_, (_, at)| now.duration_since(*at) < PROBE_MEMORY);
        }
        for to in targets {
            if self.probes.len() >= MAX_PROBES {
                break;
            }
            let nonce: [u8; 8] = self.rng.random();
            self.probes.insert(nonce, (key, now));
            let mut b = Vec::with_capacity(wire::PING_LEN);
            wire::encode(&Msg::Ping { token, nonce }, &mut b);
            self.out.push_back((to, b));
        }
    }

    /// A datagram to send.
    pub(crate) fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }

    pub(crate) fn poll_event(&mut self) -> Option<PathEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests;
