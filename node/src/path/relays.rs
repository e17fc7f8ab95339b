//! The relays a node uses as a client: registering (a cookie round trip,
//! then a refresh every 15 s that also keeps the NAT's mapping towards the
//! relay alive), the routes that registration gives (where others reach us)
//! and where the relays see us. Part of the path state machine
//! ([`super::paths`]): no I/O, time passed in, datagrams to send pushed
//! onto the caller's queue.
//!
//! # Packets for a relay we are not registered at
//!
//! A relay answers a `Send` from an address not registered there with a
//! `Challenge` and forwards nothing, so a dial through a relay made before
//! our own registration there was answered used to lose its Initial packets.
//! Worse, each of those challenges prompted our next `Register` just after
//! quinn's retransmission had been lost the same way, so a registration
//! that got through left the handshake waiting for quinn's next probe
//! timeout, which backs off (Initials at 0, 1, 3, 7 and 15 s): two lost
//! registrations cost 2 s, four cost 4 s, and six the whole 10 s handshake
//! timeout. Such packets are now held here ([`Relays::hold`], bounded by
//! [`HELD_PACKETS`], [`HELD_BYTES`] and [`HELD_AGE`]) and sent the moment the
//! registration is answered, and while any are held the registration is
//! retried every [`HELD_RETRY`] instead of backing off.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::peers::canonical;
use crate::relay::wire::{self, Cookie, Msg, Refusal, RelayId};
use crate::wire::RelayRoute;

/// A registration is refreshed this often (it also keeps the NAT's mapping
/// towards the relay alive: conntrack forgets an unanswered UDP flow after 30 s).
pub(crate) const REFRESH: Duration = Duration::from_secs(15);
/// First retry of an unanswered registration; it doubles up to [`REGISTER_RETRY_MAX`].
const REGISTER_RETRY: Duration = Duration::from_secs(1);
const REGISTER_RETRY_MAX: Duration = Duration::from_secs(30);
/// After a relay refused us.
const REFUSED_RETRY: Duration = Duration::from_secs(60);
/// An on-demand relay no connection used for this long is forgotten.
const RELAY_IDLE: Duration = Duration::from_secs(120);
/// Relays used at most (configured plus on demand).
const MAX_RELAYS: usize = 16;
/// Relayed packets held per relay while our registration there is not
/// answered, at most: the oldest go first. A handshake's Initials and their
/// retransmissions, for a few dials at once.
pub(crate) const HELD_PACKETS: usize = 32;
/// Bytes held per relay at most (so 16 relays hold at most 1 MiB).
pub(crate) const HELD_BYTES: usize = 64 * 1024;
/// A held packet older than this is dropped rather than sent: quinn has sent
/// newer ones by then (its Initial retransmissions are at most 4 s apart
/// within a 10 s handshake timeout), and a dial given up should not start a
/// handshake at the peer.
pub(crate) const HELD_AGE: Duration = Duration::from_secs(5);
/// An unanswered registration is retried this often while packets wait for it.
pub(crate) const HELD_RETRY: Duration = Duration::from_millis(500);

/// Signs a registration: the membership proof for relays that serve only
/// some hoods (empty: no proof).
pub(crate) type Prover = Arc<dyn Fn(&Cookie, &RelayId) -> Vec<u8> + Send + Sync>;

/// Datagrams to send: (to, bytes).
pub(crate) type Out = VecDeque<(SocketAddr, Vec<u8>)>;

struct RelayClient {
    configured: bool,
    cookie: Option<Cookie>,
    registered_until: Option<Instant>,
    observed: Option<SocketAddr>,
    next_at: Instant,
    retry: Duration,
    last_used: Instant,
    /// Last registration sent (a challenge is answered at most this often).
    last_sent: Option<Instant>,
    /// The proof for the current cookie (signing costs up to milliseconds with RSA keys).
    proof: Option<(Cookie, Vec<u8>)>,
    refused_logged: bool,
    /// The relay refused us; cleared when it registers us.
    refused: bool,
    /// Relayed packets (whole `Send` datagrams) waiting for our registration, oldest first.
    held: VecDeque<(Instant, Vec<u8>)>,
    held_bytes: usize,
}

impl RelayClient {
    fn new(configured: bool, now: Instant) -> RelayClient {
        RelayClient {
            configured,
            cookie: None,
            registered_until: None,
            observed: None,
            next_at: now,
            retry: REGISTER_RETRY,
            last_used: now,
            last_sent: None,
            proof: None,
            refused_logged: false,
            refused: false,
            held: VecDeque::new(),
            held_bytes: 0,
        }
    }

    fn registered(&self, now: Instant) -> bool {
        self.registered_until.is_some_and(|t| now < t)
    }

    /// Drops held packets past [`HELD_AGE`].
    fn expire_held(&mut self, now: Instant) {
        while let Some((at, b)) = self.held.front() {
            if now.saturating_duration_since(*at) < HELD_AGE {
                break;
            }
            self.held_bytes -= b.len();
            self.held.pop_front();
        }
    }

    fn clear_held(&mut self) {
        self.held.clear();
        self.held_bytes = 0;
    }
}

/// The relays we use. Methods that change our routes return `true`.
pub(crate) struct Relays {
    secret: [u8; 32],
    id: RelayId,
    prover: Option<Prover>,
    clients: HashMap<SocketAddr, RelayClient>,
    /// The node left ([`Relays::leave`]): no relay is used again.
    left: bool,
}

impl Relays {
    pub(crate) fn new(secret: [u8; 32], prover: Option<Prover>) -> Relays {
        Relays { id: RelayId::of_secret(&secret), secret, prover, clients: HashMap::new(), left: false }
    }

    /// The node leaves: every relay that registered us is told to forget us
    /// now (`Unregister`), rather than keep forwarding to our closed port for
    /// the rest of the registration's lifetime; a peer that dials our relay
    /// route meanwhile (from a DHT record that outlives us) is then answered
    /// `Unknown` and gives up at once. No relay is used afterwards.
    pub(crate) fn leave(&mut self, out: &mut Out) {
        self.left = true;
        for (addr, c) in self.clients.drain() {
            if c.registered_until.is_some() {
                let mut b = Vec::with_capacity(1 + 32);
                wire::encode(&Msg::Unregister { secret: self.secret }, &mut b);
                out.push_back((addr, b));
            }
        }
    }

    /// Where we can be reached through relays (registered ones only; configured first).
    pub(crate) fn my_routes(&self, now: Instant) -> Vec<RelayRoute> {
        let mut v: Vec<(bool, RelayRoute)> = self
            .clients
            .iter()
            .filter(|(_, c)| c.registered_until.is_some_and(|t| now < t))
            .map(|(a, c)| (!c.configured, RelayRoute { relay: *a, id: self.id.0 }))
            .collect();
        v.sort_by_key(|(on_demand, r)| (*on_demand, r.relay));
        v.into_iter().map(|(_, r)| r).collect()
    }

    /// Where relays see us (our public addresses behind a NAT).
    pub(crate) fn observed(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self.clients.values().filter_map(|c| c.observed).collect();
        v.sort();
        v.dedup();
        v
    }

    /// The relays we use (only they may send us relay answers and relayed packets).
    pub(crate) fn addrs(&self) -> HashSet<SocketAddr> {
        self.clients.keys().copied().collect()
    }

    pub(crate) fn knows(&self, relay: SocketAddr) -> bool {
        self.clients.contains_key(&canonical(relay))
    }

    pub(crate) fn is_registered(&self, relay: SocketAddr) -> bool {
        self.clients.get(&canonical(relay)).is_some_and(|c| c.registered_until.is_some())
    }

    /// The relays we are registered at now (relayed packets to others are held).
    pub(crate) fn registered(&self, now: Instant) -> HashSet<SocketAddr> {
        self.clients.iter().filter(|(_, c)| c.registered(now)).map(|(a, _)| *a).collect()
    }

    /// Relayed packets (whole `Send` datagrams) for `relay`: to `out` if we
    /// are registered there, else held until we are (see the module docs),
    /// with a registration sent at once if none went out in the last
    /// [`HELD_RETRY`]. A relay we do not use (none could be added) drops them.
    pub(crate) fn hold(&mut self, relay: SocketAddr, packets: Vec<Vec<u8>>, now: Instant, out: &mut Out) -> bool {
        let relay = canonical(relay);
        let Some(c) = self.clients.get_mut(&relay) else {
            tracing::trace!(%relay, "relayed packet dropped: not a relay we use");
            return false;
        };
        c.last_used = now;
        if c.registered(now) {
            out.extend(packets.into_iter().map(|b| (relay, b)));
            return false;
        }
        c.expire_held(now);
        for b in packets {
            c.held_bytes += b.len();
            c.held.push_back((now, b));
        }
        while c.held.len() > HELD_PACKETS || c.held_bytes > HELD_BYTES {
            let Some((_, b)) = c.held.pop_front() else { break };
            c.held_bytes -= b.len();
        }
        if c.refused {
            // It refused us: it is asked again at its retry time, not per packet.
            return false;
        }
        let resend_at = c.last_sent.map_or(now, |t| t + HELD_RETRY);
        c.next_at = c.next_at.min(resend_at.max(now));
        self.register_due(now, out)
    }

    /// Keep registered at `relay` (a seed, or `--relay`).
    pub(crate) fn add(&mut self, relay: SocketAddr, now: Instant, out: &mut Out) -> bool {
        let relay = canonical(relay);
        if let Some(c) = self.clients.get_mut(&relay) {
            c.configured = true;
            return false;
        }
        if self.left || self.clients.len() >= MAX_RELAYS {
            tracing::debug!(%relay, "too many relays; not using this one");
            return false;
        }
        self.clients.insert(relay, RelayClient::new(true, now));
        self.register_due(now, out)
    }

    /// A packet is about to go through `relay`: register there if we are not.
    pub(crate) fn use_relay(&mut self, relay: SocketAddr, now: Instant, out: &mut Out) -> bool {
        let relay = canonical(relay);
        if let Some(c) = self.clients.get_mut(&relay) {
            c.last_used = now;
            return false;
        }
        if self.left || self.clients.len() >= MAX_RELAYS {
            return false;
        }
        tracing::debug!(%relay, "registering at a peer's relay");
        self.clients.insert(relay, RelayClient::new(false, now));
        self.register_due(now, out)
    }

    pub(crate) fn on_challenge(&mut self, src: SocketAddr, cookie: Cookie, now: Instant, out: &mut Out) -> bool {
        let Some(c) = self.clients.get_mut(&src) else { return false };
        let same = c.cookie == Some(cookie);
        c.cookie = Some(cookie);
        // A relay that restarted answers every packet with a challenge: one
        // registration with the same cookie per half second is enough.
        if same && c.last_sent.is_some_and(|t| now.duration_since(t) < Duration::from_millis(500)) {
            c.next_at = c.next_at.min(now + Duration::from_millis(500));
            return false;
        }
        c.next_at = now;
        self.register_due(now, out)
    }

    /// Our registration at `src` was answered: held packets go out now, in order.
    pub(crate) fn on_registered(
        &mut self,
        src: SocketAddr,
        id: RelayId,
        lifetime: u16,
        observed: SocketAddr,
        now: Instant,
        out: &mut Out,
    ) -> bool {
        if id != self.id {
            return false;
        }
        let Some(c) = self.clients.get_mut(&src) else { return false };
        let life = Duration::from_secs(lifetime.max(1).into());
        let was = c.registered(now);
        c.registered_until = Some(now + life);
        c.retry = REGISTER_RETRY;
        c.refused_logged = false;
        c.refused = false;
        c.expire_held(now);
        if !c.held.is_empty() {
            tracing::debug!(relay = %src, packets = c.held.len(), "registered: sending the relayed packets that waited for it");
        }
        c.held_bytes = 0;
        out.extend(c.held.drain(..).map(|(_, b)| (src, b)));
        c.next_at = now + REFRESH.min(life / 3);
        let observed = canonical(observed);
        let moved = c.observed != Some(observed);
        c.observed = Some(observed);
        if !was {
            tracing::info!(relay = %src, %observed, "registered at relay");
        }
        !was || moved
    }

    pub(crate) fn on_refused(&mut self, src: SocketAddr, reason: Refusal, now: Instant) -> bool {
        let Some(c) = self.clients.get_mut(&src) else { return false };
        if !c.refused_logged {
            c.refused_logged = true;
            tracing::warn!(relay = %src, %reason, "the relay refused to relay for this node");
        }
        c.registered_until = None;
        c.refused = true;
        // It will not carry them.
        c.clear_held();
        c.next_at = now + REFUSED_RETRY;
        true
    }

    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        self.clients.values().map(|c| c.next_at).min()
    }

    /// Registrations and refreshes that are due.
    pub(crate) fn register_due(&mut self, now: Instant, out: &mut Out) -> bool {
        let mut changed = false;
        let id = self.id;
        for (addr, c) in self.clients.iter_mut() {
            c.expire_held(now);
            if c.next_at > now {
                continue;
            }
            let cookie = c.cookie.unwrap_or([0; 16]);
            let proof = match (&self.prover, c.cookie) {
                (Some(p), Some(_)) => match &c.proof {
                    Some((k, v)) if *k == cookie => v.clone(),
                    _ => {
                        let v = p(&cookie, &id);
                        c.proof = Some((cookie, v.clone()));
                        v
                    }
                },
                _ => Vec::new(),
            };
            let mut b = Vec::with_capacity(wire::REGISTER_MIN + proof.len());
            wire::encode(&Msg::Register { cookie, secret: self.secret, proof: &proof }, &mut b);
            out.push_back((*addr, b));
            c.last_sent = Some(now);
            if c.registered_until.is_some_and(|t| now < t) {
                // A refresh: the answer moves `next_at` on; without one, retry soon.
                c.next_at = now + REGISTER_RETRY;
            } else if !c.held.is_empty() && !c.refused {
                // Packets wait for this registration: no backing off.
                c.next_at = now + HELD_RETRY;
            } else {
                c.next_at = now + c.retry;
                c.retry = (c.retry * 2).min(REGISTER_RETRY_MAX);
            }
            if c.registered_until.is_some_and(|t| now >= t) {
                c.registered_until = None;
                tracing::info!(relay = %addr, "registration at relay expired");
                changed = true;
            }
        }
        changed
    }

    /// Forgets on-demand relays that no connection in `used` uses and that
    /// have been idle for a while.
    pub(crate) fn forget_idle(&mut self, used: &[SocketAddr], now: Instant) -> bool {
        let before = self.clients.len();
        self.clients.retain(|a, c| c.configured || used.contains(a) || now.duration_since(c.last_used) < RELAY_IDLE);
        self.clients.len() != before
    }
}
