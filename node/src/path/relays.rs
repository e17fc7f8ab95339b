//! The relays a node uses as a client: registering (a cookie round trip,
//! then a refresh every 15 s that also keeps the NAT's mapping towards the
//! relay alive), the routes that registration gives (where others reach us)
//! and where the relays see us. Part of the path state machine
//! ([`super::paths`]): no I/O, time passed in, datagrams to send pushed
//! onto the caller's queue.

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
        }
    }
}

/// The relays we use. Methods that change our routes return `true`.
pub(crate) struct Relays {
    secret: [u8; 32],
    id: RelayId,
    prover: Option<Prover>,
    clients: HashMap<SocketAddr, RelayClient>,
}

impl Relays {
    pub(crate) fn new(secret: [u8; 32], prover: Option<Prover>) -> Relays {
        Relays { id: RelayId::of_secret(&secret), secret, prover, clients: HashMap::new() }
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

    /// Keep registered at `relay` (a seed, or `--relay`).
    pub(crate) fn add(&mut self, relay: SocketAddr, now: Instant, out: &mut Out) -> bool {
        let relay = canonical(relay);
        if let Some(c) = self.clients.get_mut(&relay) {
            c.configured = true;
            return false;
        }
        if self.clients.len() >= MAX_RELAYS {
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
        if self.clients.len() >= MAX_RELAYS {
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

    pub(crate) fn on_registered(&mut self, src: SocketAddr, id: RelayId, lifetime: u16, observed: SocketAddr, now: Instant) -> bool {
        if id != self.id {
            return false;
        }
        let Some(c) = self.clients.get_mut(&src) else { return false };
        let life = Duration::from_secs(lifetime.max(1).into());
        let was = c.registered_until.is_some_and(|t| now < t);
        c.registered_until = Some(now + life);
        c.retry = REGISTER_RETRY;
        c.refused_logged = false;
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
