//! The relay itself, without I/O: datagrams in, verdicts out.
//!
//! [`RelayServer::on_datagram`] takes one datagram (one of ours:
//! [`wire::is_ours`]) and says what to do with it: drop it, forward it (it was
//! rewritten in place from `Send` to `Recv`), or send the answer written over
//! it back. There is no socket, task or clock in here; the caller passes the
//! time. [`super::service`] drives one on a plain UDP socket (`partybus dht`);
//! a node drives one on its QUIC socket.
//!
//! # Registration
//!
//! A client proves that it receives at its source address before the relay
//! sends it anything but a 17-byte `Challenge`: it echoes the challenge's
//! cookie, HMAC-SHA256(relay key, epoch || address) truncated to 16 bytes.
//! Epochs are [`COOKIE_EPOCH`] long and a cookie of the current or the
//! previous epoch is accepted (so a cookie lives 30 to 60 s); the key is
//! random at every start of the relay ([`RelayServer::new`]'s seed), so
//! cookies need no state. Then the relay registers `RelayId::of_secret(secret)`
//! at that address, for [`RelayConfig::lifetime`]; the client refreshes by
//! sending the same `Register` again (every ~15-20 s, which also keeps its
//! NAT mapping open). The same id registered from a new address moves there
//! (NAT rebinding): only the holder of the secret can do that. One address
//! holds one id: a new id registered from an address replaces the old one.
//! A client that leaves sends `Unregister` with its secret from its
//! registered address, and its registration ends at once (not answered):
//! peers that dial it meanwhile (a DHT record outlives it) are answered
//! `Unknown` and give up at once, rather than at their handshake timeout.
//!
//! With [`RelayPolicy::Hoods`], a registration must carry a membership proof
//! (`partybus_pki::relay_proof` over [`proof_message`]) for one of the
//! listed hoods. It is verified only when the (address, id) pair is new, so
//! refreshes cost one HMAC and a table lookup.
//!
//! # Forwarding
//!
//! A `Send` from a registered address is forwarded to the destination id's
//! registered address as a `Recv` from the sender's id (same length, header
//! rewritten in place). Nothing else is ever sent to an address that has not
//! echoed a cookie: a `Send` from an unregistered address (e.g. after the
//! relay restarted) is answered with a `Challenge` (globally rate-limited),
//! so the client re-registers at once; a `Send` to an unknown id is answered
//! with `Unknown` (rate-limited per client). No answer is longer than the
//! datagram it answers.
//!
//! # Limits
//!
//! Memory: state exists only for registered clients, at most
//! [`RelayConfig::max_clients`] of them and [`RelayConfig::max_clients_per_ip`]
//! per IP address (per /64 for IPv6); a validated registration beyond that is
//! answered `Refused{Full}` and changes nothing (registered clients are
//! never pushed out). Bandwidth: each client has a token bucket
//! ([`RelayConfig::client_rate`], [`RelayConfig::client_burst`]) and all
//! forwarding shares one ([`RelayConfig::total_rate`]); a packet over either is
//! dropped and counted, so a client over its cap is throttled and the others
//! are not. CPU: proof verifications (an ECDSA or RSA signature check each)
//! are limited to [`PROOF_CHECKS_PER_SEC`]; a registration over that budget is
//! dropped (the client retries).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use rustls_pki_types::UnixTime;

use super::wire::{self, Cookie, Msg, Refusal, RelayId};

mod bucket;
mod config;

use bucket::Bucket;
pub use config::{RelayConfig, RelayPolicy, RelayStats, Verdict};

/// What a membership proof signs, before the cookie and the id.
pub const PROOF_CONTEXT: &[u8] = b"partybus relay register v1\0";

/// The message a client signs for a registration with `cookie` (the relay's
/// challenge to its address) and `id`: [`PROOF_CONTEXT`] || cookie || id.
/// Sign it with `partybus_pki::relay_proof`.
pub fn proof_message(cookie: &Cookie, id: &RelayId) -> Vec<u8> {
    let mut m = Vec::with_capacity(PROOF_CONTEXT.len() + 32);
    m.extend_from_slice(PROOF_CONTEXT);
    m.extend_from_slice(cookie);
    m.extend_from_slice(&id.0);
    m
}

/// Length of a cookie epoch. A cookie is accepted in its epoch and the next.
pub const COOKIE_EPOCH: Duration = Duration::from_secs(30);
/// Proof verifications per second at most (burst [`PROOF_CHECKS_BURST`]).
/// One costs ~0.1-1 ms of CPU (ECDSA or RSA verifications and certificate
/// parsing); registrations over the budget are dropped, not refused.
pub const PROOF_CHECKS_PER_SEC: u64 = 1_000;
/// Proof verifications in a burst: all the clients of a relay that restarted
/// re-register within a second or two.
pub const PROOF_CHECKS_BURST: u64 = 256;
/// Challenges per second at most in answer to a `Send` from an unregistered
/// address (burst [`CHALLENGES_BURST`]): a `Challenge` is as long as the
/// shortest `Send`, so the relay would otherwise reflect at the rate it is
/// sent to. Clients re-register at their next refresh anyway.
pub const CHALLENGES_PER_SEC: u64 = 2_000;
/// See [`CHALLENGES_PER_SEC`].
pub const CHALLENGES_BURST: u64 = 512;
/// `Unknown` answers per second to one client (burst [`UNKNOWN_BURST`]).
pub const UNKNOWN_PER_SEC: u64 = 2;
/// See [`UNKNOWN_PER_SEC`].
pub const UNKNOWN_BURST: u64 = 4;
/// Expiry sweeps are at least this far apart (entries past their lifetime
/// are treated as gone at once all the same).
const MIN_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

struct Client {
    addr: SocketAddr,
    expires: Instant,
    /// The fingerprint of the certificate its membership proof showed (hood policy).
    cert: Option<String>,
    bytes: Bucket,
    unknown: Bucket,
}

/// What a registration comes to.
enum Answer {
    Challenge(Cookie),
    Registered(RelayId),
    Refused(Refusal),
    Drop,
}

/// A relay: see the [module docs](self).
pub struct RelayServer {
    cfg: RelayConfig,
    key: ring::hmac::Key,
    /// Start of epoch 0: the first datagram's time.
    origin: Option<Instant>,
    clients: HashMap<RelayId, Client>,
    by_addr: HashMap<SocketAddr, RelayId>,
    per_ip: HashMap<IpAddr, usize>,
    total: Bucket,
    total_burst: u64,
    challenges: Bucket,
    proofs: Bucket,
    next_sweep: Option<Instant>,
    stats: RelayStats,
    scratch: Vec<u8>,
    /// A hood relay's revocation list: revoked members may not register.
    revoked: Option<partybus_pki::RevokedSet>,
}

impl RelayServer {
    /// A relay with `cfg`, its cookies keyed from `key_seed` (32 random bytes
    /// at every start: cookies of an earlier run are then refused).
    /// A lifetime outside 1 s to 65,535 s is clamped into it.
    pub fn new(mut cfg: RelayConfig, key_seed: [u8; 32]) -> Self {
        cfg.lifetime = cfg.lifetime.clamp(Duration::from_secs(1), Duration::from_secs(u64::from(u16::MAX)));
        let total_burst = (cfg.total_rate / 10).max(cfg.client_burst);
        RelayServer {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key_seed),
            origin: None,
            clients: HashMap::new(),
            by_addr: HashMap::new(),
            per_ip: HashMap::new(),
            total: Bucket::full(total_burst),
            total_burst,
            challenges: Bucket::full(CHALLENGES_BURST),
            proofs: Bucket::full(PROOF_CHECKS_BURST),
            next_sweep: None,
            stats: RelayStats::default(),
            scratch: Vec::with_capacity(64),
            revoked: None,
            cfg,
        }
    }

    /// Refuses members whose certificate `revoked` names (the node's list in
    /// force, shared): at registration, and at [`RelayServer::drop_revoked`].
    pub fn with_revocations(mut self, revoked: partybus_pki::RevokedSet) -> Self {
        self.revoked = Some(revoked);
        self
    }

    /// Drops the registrations of members revoked now (a new list was
    /// applied); returns how many. Their packets are then answered as from
    /// unregistered senders, and registering again is refused.
    pub fn drop_revoked(&mut self) -> usize {
        let Some(revoked) = &self.revoked else { return 0 };
        let gone: Vec<RelayId> = self
            .clients
            .iter()
            .filter(|(_, c)| c.cert.as_deref().is_some_and(|fp| revoked.is_revoked_fingerprint(fp)))
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.remove(*id);
        }
        gone.len()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &RelayConfig {
        &self.cfg
    }

    /// Counters, and the number of clients now.
    pub fn stats(&self) -> RelayStats {
        RelayStats { clients: self.clients.len(), ..self.stats }
    }

    /// When [`RelayServer::on_timeout`] should run next (`None`: no clients).
    pub fn next_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Removes registrations past their lifetime.
    pub fn on_timeout(&mut self, now: Instant) {
        if self.next_sweep.is_none_or(|t| t > now) {
            return;
        }
        let before = self.clients.len();
        let mut gone = Vec::new();
        self.clients.retain(|id, c| {
            let live = c.expires > now;
            if !live {
                gone.push((*id, c.addr));
            }
            live
        });
        for (id, addr) in gone {
            self.forget_addr(id, addr);
        }
        self.stats.expired += (before - self.clients.len()) as u64;
        self.plan_sweep(now);
    }

    /// Handles `buf[..len]`, a datagram from `src` whose first byte has both
    /// top bits clear ([`wire::is_ours`]). On [`Verdict::Forward`],
    /// `buf[..len]` was rewritten into the `Recv` to send; on
    /// [`Verdict::Reply`], the answer was written to `buf[..answer_len]`
    /// (never longer than `len`).
    pub fn on_datagram(&mut self, src: SocketAddr, buf: &mut [u8], len: usize, now: Instant) -> Verdict {
        let src = crate::peers::canonical(src);
        if src.port() == 0 || len > buf.len() {
            self.stats.dropped_invalid += 1;
            return Verdict::Drop;
        }
        match wire::decode(&buf[..len]) {
            Some(Msg::Register { cookie, secret, proof }) => {
                let answer = self.on_register(src, cookie, &secret, proof, now);
                match answer {
                    Answer::Challenge(cookie) => self.reply(buf, len, src, &Msg::Challenge { cookie }),
                    Answer::Registered(id) => {
                        let lifetime = u16::try_from(self.cfg.lifetime.as_secs()).unwrap_or(u16::MAX);
                        self.reply(buf, len, src, &Msg::Registered { id, lifetime, observed: src })
                    }
                    Answer::Refused(reason) => self.reply(buf, len, src, &Msg::Refused { reason }),
                    Answer::Drop => Verdict::Drop,
                }
            }
            Some(Msg::Send { to, .. }) => self.on_send(src, to, buf, len, now),
            Some(Msg::Unregister { secret }) => {
                self.on_unregister(src, &secret);
                Verdict::Drop
            }
            _ => {
                self.stats.dropped_invalid += 1;
                Verdict::Drop
            }
        }
    }

    /// A leaving client ends its registration: only the id its secret names,
    /// and only from the address registered under it (the client's own
    /// socket), so nobody else can end it. Never answered.
    fn on_unregister(&mut self, src: SocketAddr, secret: &[u8; 32]) {
        let id = RelayId::of_secret(secret);
        if self.clients.get(&id).is_some_and(|c| c.addr == src) {
            self.remove(id);
            self.stats.unregistered += 1;
        } else {
            self.stats.dropped_invalid += 1;
        }
    }

    fn on_register(&mut self, src: SocketAddr, cookie: Cookie, secret: &[u8; 32], proof: &[u8], now: Instant) -> Answer {
        let epoch = self.epoch(now);
        if !self.cookie_ok(&cookie, epoch, src) {
            self.stats.challenges += 1;
            return Answer::Challenge(self.cookie(epoch, src));
        }
        let id = RelayId::of_secret(secret);
        let lifetime = self.cfg.lifetime;
        // A refresh: the same id at the same address.
        if let Some(c) = self.clients.get_mut(&id) {
            if c.addr == src && c.expires > now {
                c.expires = now + lifetime;
                return Answer::Registered(id);
            }
        }
        // A new pair. Entries past their lifetime count as gone.
        self.drop_if_expired(id, now);
        if let Some(&other) = self.by_addr.get(&src) {
            self.drop_if_expired(other, now);
        }
        let moving_from = self.clients.get(&id).map(|c| c.addr);
        let replacing = self.by_addr.get(&src).copied().filter(|other| *other != id);
        let ip = ip_key(src.ip());
        let total_after = self.clients.len() + 1 - usize::from(moving_from.is_some()) - usize::from(replacing.is_some());
        let same_ip_leaving = usize::from(moving_from.is_some_and(|a| ip_key(a.ip()) == ip)) + usize::from(replacing.is_some());
        let ip_after = (self.per_ip.get(&ip).copied().unwrap_or(0) + 1).saturating_sub(same_ip_leaving);
        if total_after > self.cfg.max_clients || ip_after > self.cfg.max_clients_per_ip {
            self.stats.refused_full += 1;
            return Answer::Refused(Refusal::Full);
        }
        let mut cert = None;
        if let RelayPolicy::Hoods(hoods) = &self.cfg.policy {
            if proof.is_empty() {
                self.stats.refused_not_allowed += 1;
                return Answer::Refused(Refusal::NotAllowed);
            }
            if !self.proofs.take(1, PROOF_CHECKS_PER_SEC, PROOF_CHECKS_BURST, now) {
                self.stats.dropped_busy += 1;
                return Answer::Drop;
            }
            self.stats.proofs_checked += 1;
            // Certificate validity needs the wall clock; the rest of the relay does not.
            match partybus_pki::verify_relay_proof(proof, &proof_message(&cookie, &id), hoods, UnixTime::now()) {
                Ok(member) if self.revoked.as_ref().is_some_and(|r| r.is_revoked_fingerprint(&member.certificate)) => {
                    self.stats.refused_not_allowed += 1;
                    return Answer::Refused(Refusal::NotAllowed);
                }
                Ok(member) => cert = Some(member.certificate),
                Err(partybus_pki::ProofError::NotAllowed { .. }) => {
                    self.stats.refused_not_allowed += 1;
                    return Answer::Refused(Refusal::NotAllowed);
                }
                Err(_) => {
                    self.stats.refused_bad_proof += 1;
                    return Answer::Refused(Refusal::BadProof);
                }
            }
        }
        if let Some(other) = replacing {
            self.remove(other);
        }
        let expires = now + lifetime;
        match self.clients.get_mut(&id) {
            Some(c) => {
                // Moves with its buckets: re-registering is no way to a fresh burst.
                let old = std::mem::replace(&mut c.addr, src);
                c.expires = expires;
                c.cert = cert;
                self.forget_addr(id, old);
                self.stats.moved += 1;
            }
            None => {
                let c =
                    Client { addr: src, expires, cert, bytes: Bucket::full(self.cfg.client_burst), unknown: Bucket::full(UNKNOWN_BURST) };
                self.clients.insert(id, c);
            }
        }
        self.by_addr.insert(src, id);
        *self.per_ip.entry(ip).or_insert(0) += 1;
        self.stats.registered += 1;
        if self.next_sweep.is_none_or(|t| t > expires) {
            self.next_sweep = Some(expires);
        }
        Answer::Registered(id)
    }

    fn on_send(&mut self, src: SocketAddr, to: RelayId, buf: &mut [u8], len: usize, now: Instant) -> Verdict {
        let from = self.by_addr.get(&src).copied();
        if let Some(from) = from {
            self.drop_if_expired(from, now);
        }
        let Some((from, sender)) = from.and_then(|id| Some((id, self.clients.get_mut(&id)?))) else {
            self.stats.dropped_unregistered += 1;
            if !self.challenges.take(1, CHALLENGES_PER_SEC, CHALLENGES_BURST, now) {
                return Verdict::Drop;
            }
            self.stats.challenges += 1;
            let epoch = self.epoch(now);
            let cookie = self.cookie(epoch, src);
            return self.reply(buf, len, src, &Msg::Challenge { cookie });
        };
        let n = len as u64;
        // Both buckets must hold the packet before either is charged.
        if !sender.bytes.holds(n, self.cfg.client_rate, self.cfg.client_burst, now) {
            self.stats.dropped_rate += 1;
            return Verdict::Drop;
        }
        if !self.total.holds(n, self.cfg.total_rate, self.total_burst, now) {
            self.stats.dropped_total_rate += 1;
            return Verdict::Drop;
        }
        sender.bytes.spend(n);
        self.total.spend(n);
        let dest = self.clients.get(&to).filter(|c| c.expires > now).map(|c| c.addr);
        match dest {
            Some(addr) => {
                wire::send_to_recv(&mut buf[..len], from);
                self.stats.forwarded_packets += 1;
                self.stats.forwarded_bytes += n;
                Verdict::Forward { to: addr }
            }
            None => {
                self.stats.unknown += 1;
                let sender = self.clients.get_mut(&from).expect("the sender is registered");
                if sender.unknown.take(1, UNKNOWN_PER_SEC, UNKNOWN_BURST, now) {
                    self.reply(buf, len, src, &Msg::Unknown { id: to })
                } else {
                    Verdict::Drop
                }
            }
        }
    }

    /// Writes `msg` over the datagram, if it is no longer.
    fn reply(&mut self, buf: &mut [u8], len: usize, to: SocketAddr, msg: &Msg<'_>) -> Verdict {
        self.scratch.clear();
        wire::encode(msg, &mut self.scratch);
        let n = self.scratch.len();
        debug_assert!(n <= len, "an answer of {n} bytes to a datagram of {len}");
        if n > len {
            return Verdict::Drop;
        }
        buf[..n].copy_from_slice(&self.scratch);
        Verdict::Reply { to, len: n }
    }

    fn epoch(&mut self, now: Instant) -> u64 {
        let origin = *self.origin.get_or_insert(now);
        now.saturating_duration_since(origin).as_secs() / COOKIE_EPOCH.as_secs()
    }

    fn cookie(&self, epoch: u64, addr: SocketAddr) -> Cookie {
        let mut data = [0u8; 8 + 1 + 16 + 2];
        data[..8].copy_from_slice(&epoch.to_be_bytes());
        let n = match addr.ip() {
            IpAddr::V4(v4) => {
                data[8] = 4;
                data[9..13].copy_from_slice(&v4.octets());
                13
            }
            IpAddr::V6(v6) => {
                data[8] = 6;
                data[9..25].copy_from_slice(&v6.octets());
                25
            }
        };
        data[n..n + 2].copy_from_slice(&addr.port().to_be_bytes());
        let tag = ring::hmac::sign(&self.key, &data[..n + 2]);
        let mut c = [0u8; 16];
        c.copy_from_slice(&tag.as_ref()[..16]);
        c
    }

    fn cookie_ok(&self, cookie: &Cookie, epoch: u64, src: SocketAddr) -> bool {
        let eq = |a: &Cookie, b: &Cookie| a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
        eq(cookie, &self.cookie(epoch, src)) || (epoch > 0 && eq(cookie, &self.cookie(epoch - 1, src)))
    }

    fn drop_if_expired(&mut self, id: RelayId, now: Instant) {
        if self.clients.get(&id).is_some_and(|c| c.expires <= now) {
            self.remove(id);
            self.stats.expired += 1;
        }
    }

    fn remove(&mut self, id: RelayId) {
        if let Some(c) = self.clients.remove(&id) {
            self.forget_addr(id, c.addr);
        }
    }

    /// Drops `addr`'s index entries for `id`.
    fn forget_addr(&mut self, id: RelayId, addr: SocketAddr) {
        if self.by_addr.get(&addr) == Some(&id) {
            self.by_addr.remove(&addr);
        }
        let ip = ip_key(addr.ip());
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    fn plan_sweep(&mut self, now: Instant) {
        self.next_sweep = self.clients.values().map(|c| c.expires).min().map(|t| t.max(now + MIN_SWEEP_INTERVAL));
    }
}

/// What the per-IP limit counts by: the address, or an IPv6 address's /64
/// (one host or one site usually has a whole /64).
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::from(u64::MAX)))),
    }
}

#[cfg(test)]
mod tests;
