//! The lease state machine shared by the three port-mapping protocols
//! (sans I/O: the driver passes the time in and carries out the effects).
//!
//! It decides which external address is advertised, when the mapping is
//! renewed (at half its granted lifetime), when a failed attempt is retried
//! (exponential backoff), when the gateway should be searched for again, and
//! whether the router restarted: NAT-PMP and PCP answers carry the server's
//! *epoch* (seconds since its mappings were last lost); an epoch that went
//! backwards, or advanced much less than our own clock did, means the router
//! restarted and forgot every mapping (RFC 6886 §3.6, RFC 6887 §8.5), so
//! the mapping is made again at once instead of at the next renewal.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How often a permanent (lease 0) mapping and an unusable external IP are re-checked.
pub const PERMANENT_RECHECK: Duration = Duration::from_secs(5 * 60);
/// First retry delay after a failure; doubles up to [`MAX_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_secs(5);
/// Longest retry delay after failures.
pub const MAX_RETRY: Duration = Duration::from_secs(10 * 60);
/// Consecutive failures after which the gateway is searched for again (a
/// restarted miniupnpd listens on a new HTTP port).
pub const REDISCOVER_AFTER: u32 = 3;
/// How often the epoch of a NAT-PMP/PCP router is checked between
/// renewals (one small UDP exchange), so a restart is noticed within this
/// time even when the lease is long.
pub const EPOCH_CHECK: Duration = Duration::from_secs(60);

/// The outcome of one mapping attempt, as fed to [`MappingMachine::on_attempt`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The router maps `ext` to us with this lease (`ZERO`: permanent);
    /// `epoch`: the server's epoch in its answer (NAT-PMP, PCP).
    Mapped { ext: SocketAddr, lease: Duration, epoch: Option<u32> },
    /// The router's external IP is not global and non-global addresses are
    /// not allowed: no mapping was made (or it was deleted again).
    Unusable { ext_ip: IpAddr },
    /// The router could not be reached or refused the mapping.
    Failed,
}

/// What the driver must do after an input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    External(SocketAddr),
    ExternalLost(SocketAddr),
    /// Warn (once per IP) that the external IP is not global.
    WarnUnusable(IpAddr),
    /// Search the gateway again before the next attempt.
    Rediscover,
    /// The router's epoch says it restarted (old epoch, new epoch): its
    /// mappings are gone. Log it; the next action is a mapping, now.
    RouterRestarted {
        before: u32,
        now: u32,
    },
}

/// What the driver does at [`MappingMachine::next`]'s time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Map (or renew) the port.
    Map,
    /// Ask only for the router's epoch (NAT-PMP external address request,
    /// PCP ANNOUNCE) and feed it to [`MappingMachine::on_epoch`].
    CheckEpoch,
}

/// The shared decision part of port mapping; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct MappingMachine {
    advertised: Option<SocketAddr>,
    failures: u32,
    warned: Option<IpAddr>,
    /// The last epoch the router told us, and when.
    epoch: Option<(u32, Instant)>,
    /// When the next mapping attempt is due.
    map_at: Instant,
    /// When the next epoch check is due (protocols with an epoch only).
    check_at: Option<Instant>,
}

impl MappingMachine {
    /// A machine whose first mapping attempt is due `now`.
    pub fn new(now: Instant) -> Self {
        MappingMachine { advertised: None, failures: 0, warned: None, epoch: None, map_at: now, check_at: None }
    }

    /// The external address currently reported to the sink.
    pub fn advertised(&self) -> Option<SocketAddr> {
        self.advertised
    }

    /// Consecutive failed attempts.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// When to act next, and how.
    pub fn next(&self) -> (Instant, Action) {
        match self.check_at {
            Some(c) if c < self.map_at => (c, Action::CheckEpoch),
            _ => (self.map_at, Action::Map),
        }
    }

    /// Feed the outcome of a mapping attempt made at `now`; returns the
    /// effects, in order. [`MappingMachine::next`] tells when to act again.
    pub fn on_attempt(&mut self, now: Instant, attempt: Attempt) -> Vec<Effect> {
        let mut fx = Vec::new();
        match attempt {
            Attempt::Mapped { ext, lease, epoch } => {
                self.failures = 0;
                self.warned = None;
                if let Some(e) = epoch {
                    // A restart seen in a mapping answer: the mapping we
                    // just got is the new one already, nothing more to do.
                    fx.extend(self.epoch_seen(now, e));
                }
                if let Some(old) = self.advertised.filter(|old| *old != ext) {
                    fx.push(Effect::ExternalLost(old));
                    self.advertised = None;
                }
                if self.advertised.is_none() {
                    fx.push(Effect::External(ext));
                    self.advertised = Some(ext);
                }
                let renew = renew_delay(lease);
                self.map_at = now + renew;
                self.check_at = epoch.filter(|_| renew > EPOCH_CHECK).map(|_| now + EPOCH_CHECK);
            }
            Attempt::Unusable { ext_ip } => {
                self.failures = 0;
                if let Some(old) = self.advertised.take() {
                    fx.push(Effect::ExternalLost(old));
                }
                if self.warned != Some(ext_ip) {
                    self.warned = Some(ext_ip);
                    fx.push(Effect::WarnUnusable(ext_ip));
                }
                self.map_at = now + PERMANENT_RECHECK;
                self.check_at = None;
            }
            Attempt::Failed => {
                self.failures = self.failures.saturating_add(1);
                if let Some(old) = self.advertised.take() {
                    fx.push(Effect::ExternalLost(old));
                }
                if self.failures.is_multiple_of(REDISCOVER_AFTER) {
                    fx.push(Effect::Rediscover);
                }
                self.map_at = now + retry_delay(self.failures);
                self.check_at = None;
            }
        }
        fx
    }

    /// Feed the answer to an epoch check made at `now` (`None`: no answer).
    /// A restart makes the mapping due at once; no answer makes it due at
    /// once too (a failed mapping attempt then withdraws the address).
    pub fn on_epoch(&mut self, now: Instant, epoch: Option<u32>) -> Vec<Effect> {
        let Some(e) = epoch else {
            self.map_at = now;
            self.check_at = None;
            return Vec::new();
        };
        let fx: Vec<Effect> = self.epoch_seen(now, e).into_iter().collect();
        if fx.is_empty() {
            self.check_at = Some(now + EPOCH_CHECK);
        } else {
            self.map_at = now;
            self.check_at = None;
        }
        fx
    }

    /// Record an epoch; a [`Effect::RouterRestarted`] if it shows a restart.
    fn epoch_seen(&mut self, now: Instant, epoch: u32) -> Option<Effect> {
        let prev = self.epoch.replace((epoch, now));
        let (before, at) = prev?;
        restarted(before, at, epoch, now).then_some(Effect::RouterRestarted { before, now: epoch })
    }
}

/// RFC 6887 §8.5 (RFC 6886 §3.6 says the same more loosely): the server's
/// epoch went backwards, or the server's and our clock advanced by amounts
/// that differ by more than 2 s plus 1/16 (clock drift, rounding).
pub fn restarted(before: u32, at: Instant, epoch: u32, now: Instant) -> bool {
    if epoch < before {
        return true;
    }
    let server = u64::from(epoch - before);
    let client = now.saturating_duration_since(at).as_secs();
    client + 2 < server - server / 16 || server + 2 < client - client / 16
}

/// When to renew a mapping with this lease: at half-life (at least 1 s);
/// permanent mappings are re-checked every [`PERMANENT_RECHECK`].
pub fn renew_delay(lease: Duration) -> Duration {
    if lease.is_zero() {
        PERMANENT_RECHECK
    } else {
        (lease / 2).max(Duration::from_secs(1))
    }
}

/// Delay before the next attempt after `failures` consecutive failures
/// (1 → [`FIRST_RETRY`], doubling, at most [`MAX_RETRY`]).
pub fn retry_delay(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << exp).min(MAX_RETRY)
}

#[cfg(test)]
mod tests;
