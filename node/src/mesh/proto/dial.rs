//! Dial jobs: an address to try (discovery, re-dial) or a peer learnt
//! through gossip (its addresses in order), with their claims, handshake
//! slots, retries, and the second dialer's wait for the peer's own dial.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::pacing::{Backoff, DialClass};
use super::{Conn, ConnId, Dialled, Known, Mesh, Output, Timer, MAX_DIAL_JOBS, MAX_GOSSIP_ADDRS, MAX_GOSSIP_DIAL_JOBS, MAX_KNOWN};
use crate::id::NodeId;
use crate::path::keys::is_relay_key;
use crate::peers::{self, canonical, DialFailure, Direction, SecondDial};
use crate::wire::PeerAddrs;

/// One QUIC handshake we started ([`Output::Connect`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Attempt(pub u64);

/// A dial job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct JobId(u64);

pub(super) enum Target {
    /// An address, hoping to find `expect` there (a re-dial); `gossip`:
    /// a relay route gossip named (not one of our own discovery's).
    Addr { addr: SocketAddr, expect: Option<NodeId>, retry: bool, gossip: bool },
    /// A node learnt through gossip.
    Peer(PeerDial),
}

pub(super) struct PeerDial {
    id: NodeId,
    addrs: Vec<SocketAddr>,
    /// The higher id of the pair: it dials after a grace period, behind
    /// first dials, and gives its dial up when the peer's reaches us.
    second: bool,
    /// The next address to try in this round.
    next: usize,
    /// Some address of this round timed out (worth another round).
    timed_out: bool,
    /// Since when we wait for the peer's handshake (bounded by the handshake timeout).
    waiting_since: Option<Instant>,
    /// The address being dialled now (claimed).
    claimed: Option<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Waiting for a timer: the grace period, or a retry's backoff.
    Delayed,
    /// Queued for a handshake slot.
    WaitingSlot,
    Connecting(Attempt),
    /// Connected; the claims hold until the hellos are over.
    Hellos,
    /// Waiting for the peer's handshake to end (or the wait's bound).
    WaitingIncoming,
}

pub(super) struct DialJob {
    target: Target,
    stage: Stage,
    /// Rounds started, the first included ([`peers::retry_dial`]).
    attempts: u32,
    backoff: Backoff,
}

impl DialJob {
    /// Which handshake-slot queue the job waits in.
    fn class(&self) -> DialClass {
        match &self.target {
            Target::Addr { gossip: false, .. } => DialClass::Member,
            Target::Addr { gossip: true, .. } => DialClass::Gossip,
            Target::Peer(p) if p.second => DialClass::GossipSecond,
            Target::Peer(_) => DialClass::Gossip,
        }
    }
}

impl Mesh {
    /// Is a dial to `addr` (hoping to find `expect`) still useful?
    fn dial_wanted(&self, addr: SocketAddr, expect: Option<NodeId>) -> bool {
        !self.leaving
            && !self.self_addrs.contains(&addr)
            && !self.neighbours.values().any(|n| n.remote == addr)
            && !expect.is_some_and(|id| self.neighbours.contains_key(&id) || self.shut_out(&id))
    }

    fn new_job(&mut self, target: Target, stage: Stage) -> JobId {
        self.next_job += 1;
        let id = JobId(self.next_job);
        let backoff = Backoff::new(self.cfg.redial_base, self.cfg.redial_max);
        let job = DialJob { target, stage, attempts: 1, backoff };
        if job.class() != DialClass::Member {
            self.gossip_jobs += 1;
        }
        self.jobs.insert(id, job);
        id
    }

    /// Is there room for another dial job of `class`? Gossip may fill the
    /// table only up to [`MAX_GOSSIP_DIAL_JOBS`]: the rest stays for our own
    /// discovery's candidates and re-dials.
    fn room_for(&self, class: DialClass) -> bool {
        self.jobs.len() < MAX_DIAL_JOBS && (class == DialClass::Member || self.gossip_jobs < MAX_GOSSIP_DIAL_JOBS)
    }

    /// Dials `addr` unless connected or dialling there already; `gossip`:
    /// a neighbour named it (it waits behind our own discovery's dials).
    pub(super) fn dial_addr(&mut self, addr: SocketAddr, expect: Option<NodeId>, retry: bool, gossip: bool, now: Instant) {
        let addr = canonical(addr);
        if addr.port() == 0 || addr.ip().is_unspecified() || !self.dial_wanted(addr, expect) {
            return;
        }
        let class = if gossip { DialClass::Gossip } else { DialClass::Member };
        if !self.room_for(class) || !self.dialing_addrs.insert(addr) {
            return;
        }
        let job = self.new_job(Target::Addr { addr, expect, retry, gossip }, Stage::WaitingSlot);
        self.request_slot(job, now);
    }

    /// Gossip from the neighbour on `conn`: dial the nodes we do not know yet.
    pub(super) fn on_gossip(&mut self, conn: ConnId, list: Vec<PeerAddrs>, now: Instant) {
        let Some(link) = self.conns.get(&conn).map(|c| c.remote) else { return };
        let sender = self.conns.get(&conn).and_then(|c| c.peer());
        let allow = self.cfg.allow_non_global;
        for p in list {
            if Some(p.id) == sender {
                // The neighbour tells us where it is reachable now (it
                // registered at a relay since its hello).
                self.update_neighbour_addrs(p.id, p.addrs, now);
                continue;
            }
            if self.dialing_ids.contains(&p.id) && !self.neighbours.contains_key(&p.id) {
                // Being dialled (perhaps at addresses that time out): a relay
                // route learnt meanwhile is tried at once, beside that dial
                // (not for a peer on this host: that dial is as good as it gets).
                // (`RouteBook::join` puts such a peer's own address first.)
                if !p.addrs.first().is_some_and(|a| canonical(*a).ip().is_loopback()) {
                    for a in p.addrs.iter().copied().filter(|a| is_relay_key(*a)).take(4) {
                        self.dial_addr(a, Some(p.id), false, true, now);
                    }
                }
                continue;
            }
            // In a forming mesh nearly every entry names a node we are
            // connected to or dialling already: skip those before any allocation.
            if p.id == self.me || self.neighbours.contains_key(&p.id) || self.dialing_ids.contains(&p.id) || self.shut_out(&p.id) {
                continue;
            }
            if !self.room_for(DialClass::Gossip) || (self.known.len() >= MAX_KNOWN && !self.known.contains_key(&p.id)) {
                tracing::debug!(peer = %p.id.short(), "gossip ignored: too many peers known or being dialled");
                continue;
            }
            let addrs: Vec<SocketAddr> =
                p.addrs.into_iter().map(canonical).filter(|a| peers::may_gossip(*a, link, allow)).take(MAX_GOSSIP_ADDRS).collect();
            if addrs.is_empty() {
                continue;
            }
            self.dialing_ids.insert(p.id);
            self.known.insert(p.id, Known { addrs: addrs.clone(), via_gossip: true });
            let unit = self.unit();
            let delay = peers::gossip_dial_delay(self.me, p.id, self.cfg.gossip_dial_delay, unit);
            let dial =
                PeerDial { id: p.id, addrs, second: !delay.is_zero(), next: 0, timed_out: false, waiting_since: None, claimed: None };
            if delay.is_zero() {
                let job = self.new_job(Target::Peer(dial), Stage::WaitingSlot);
                self.request_slot(job, now);
            } else {
                let job = self.new_job(Target::Peer(dial), Stage::Delayed);
                self.arm(now + delay, Timer::Dial(job));
            }
        }
    }

    fn request_slot(&mut self, job: JobId, now: Instant) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        j.stage = Stage::WaitingSlot;
        let second = j.class();
        if self.slots.request(job, second).is_some() {
            self.slot_granted(job, now);
        }
    }

    /// A handshake is over: its slot goes to the next waiting jobs (slots
    /// granted to jobs that ended meanwhile are passed on).
    fn release_slot(&mut self, class: DialClass, now: Instant) {
        let mut freed = vec![class];
        let mut granted = Vec::new();
        while let Some(class) = freed.pop() {
            for (job, class) in self.slots.release(class) {
                if self.jobs.get(&job).is_some_and(|j| j.stage == Stage::WaitingSlot) {
                    granted.push(job);
                } else {
                    freed.push(class);
                }
            }
        }
        for job in granted {
            self.slot_granted(job, now);
        }
    }

    fn slot_granted(&mut self, job: JobId, now: Instant) {
        let Some(j) = self.jobs.get(&job) else { return };
        let second = j.class();
        match &j.target {
            Target::Addr { addr, expect, .. } => {
                let (addr, expect) = (*addr, *expect);
                if self.dial_wanted(addr, expect) {
                    self.connect(job, addr);
                } else {
                    self.release_slot(second, now);
                    self.finish_job(job);
                }
            }
            Target::Peer(p) => {
                // Connected meanwhile, or it said goodbye: do not dial it.
                let done = self.leaving || self.neighbours.contains_key(&p.id) || self.shut_out(&p.id);
                // Its own dial reached us (the second dialer's, after its
                // grace period, or the first dialer's while ours waited for
                // a slot): wait for it rather than open a crossing connection.
                let handshaking = p.addrs.iter().any(|a| self.incoming.contains_key(a));
                let waited = p.waiting_since.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
                match peers::second_dial(done, handshaking, waited, self.cfg.handshake_timeout) {
                    SecondDial::Done => {
                        self.release_slot(second, now);
                        self.finish_job(job);
                    }
                    SecondDial::Wait => {
                        self.release_slot(second, now);
                        self.wait_for_incoming(job, now);
                    }
                    SecondDial::Dial => {
                        let next = p
                            .addrs
                            .iter()
                            .enumerate()
                            .skip(p.next)
                            .find(|(_, a)| !self.self_addrs.contains(*a) && !self.dialing_addrs.contains(*a));
                        match next.map(|(i, a)| (i, *a)) {
                            Some((i, addr)) => {
                                self.dialing_addrs.insert(addr);
                                if let Some(Target::Peer(p)) = self.jobs.get_mut(&job).map(|j| &mut j.target) {
                                    p.next = i;
                                    p.claimed = Some(addr);
                                }
                                self.connect(job, addr);
                            }
                            None => {
                                self.release_slot(second, now);
                                self.end_round(job, now);
                            }
                        }
                    }
                }
            }
        }
    }

    fn wait_for_incoming(&mut self, job: JobId, now: Instant) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        let Target::Peer(p) = &mut j.target else { return };
        let since = *p.waiting_since.get_or_insert(now);
        j.stage = Stage::WaitingIncoming;
        let at = since + self.cfg.handshake_timeout;
        self.arm(at, Timer::Dial(job));
    }

    fn connect(&mut self, job: JobId, addr: SocketAddr) {
        self.next_attempt += 1;
        let attempt = super::Attempt(self.next_attempt);
        if let Some(j) = self.jobs.get_mut(&job) {
            j.stage = Stage::Connecting(attempt);
        }
        self.attempts.insert(attempt, job);
        self.counters.dials += 1;
        self.out.push_back(Output::Connect { attempt, addr });
    }

    pub(super) fn on_dialled(&mut self, attempt: Attempt, result: Result<Dialled, DialFailure>, now: Instant) {
        let Some(job) = self.attempts.remove(&attempt) else {
            // Given up meanwhile, but the handshake had completed (and its
            // hello gone out) before the driver heard: a connection like
            // any other. The duplicate rule keeps it or retires it, as both
            // ends agree; closing it could cut a connection the peer has
            // already made its neighbour's.
            if let Ok(Dialled { conn, dial, remote }) = result {
                if !self.leaving {
                    self.counters.dials_abandoned = self.counters.dials_abandoned.saturating_sub(1);
                }
                self.counters.dials_ok += 1;
                self.conns.insert(conn, Conn::handshaking(Direction::Out, canonical(remote), None, dial));
            }
            return;
        };
        let Some(j) = self.jobs.get(&job) else { return };
        let second = j.class();
        self.release_slot(second, now);
        match result {
            Ok(Dialled { conn, dial, remote }) => {
                self.counters.dials_ok += 1;
                let Some(j) = self.jobs.get_mut(&job) else { return };
                j.stage = Stage::Hellos;
                let addr = match &j.target {
                    Target::Addr { addr, .. } => *addr,
                    // A connecting job holds its address; the driver's is the same.
                    Target::Peer(p) => p.claimed.unwrap_or(canonical(remote)),
                };
                self.conns.insert(conn, Conn::handshaking(Direction::Out, addr, Some(job), dial));
            }
            Err(failure) => {
                if failure == DialFailure::TimedOut {
                    self.counters.dials_timed_out += 1;
                }
                let unit = self.unit();
                let Some(j) = self.jobs.get_mut(&job) else { return };
                match &mut j.target {
                    Target::Addr { retry, .. } => {
                        if *retry && peers::retry_dial(failure, j.attempts) {
                            j.stage = Stage::Delayed;
                            let d = j.backoff.next_delay(unit);
                            self.arm(now + d, Timer::Dial(job));
                        } else {
                            self.finish_job(job);
                        }
                    }
                    Target::Peer(p) => {
                        if let Some(a) = p.claimed.take() {
                            self.dialing_addrs.remove(&a);
                        }
                        p.timed_out |= matches!(failure, DialFailure::TimedOut | DialFailure::Gone);
                        p.next += 1;
                        if p.next < p.addrs.len() {
                            self.request_slot(job, now);
                        } else {
                            self.end_round(job, now);
                        }
                    }
                }
            }
        }
    }

    /// Every address of a gossip dial was tried: another round after a
    /// backoff if one timed out (within [`peers::DIAL_ATTEMPTS`]), else done.
    fn end_round(&mut self, job: JobId, now: Instant) {
        let unit = self.unit();
        let Some(j) = self.jobs.get_mut(&job) else { return };
        let Target::Peer(p) = &mut j.target else { return };
        if p.timed_out && peers::retry_dial(DialFailure::TimedOut, j.attempts) {
            j.attempts += 1;
            p.next = 0;
            p.timed_out = false;
            j.stage = Stage::Delayed;
            let d = j.backoff.next_delay(unit);
            self.arm(now + d, Timer::Dial(job));
        } else {
            self.finish_job(job);
        }
    }

    pub(super) fn on_dial_timer(&mut self, job: JobId, now: Instant) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        match (j.stage, &mut j.target) {
            (Stage::Delayed, Target::Addr { addr, expect, .. }) => {
                let (addr, expect) = (*addr, *expect);
                j.attempts += 1;
                if self.dial_wanted(addr, expect) {
                    self.request_slot(job, now);
                } else {
                    self.finish_job(job);
                }
            }
            (Stage::Delayed, Target::Peer(_)) => self.request_slot(job, now),
            // The wait's bound: decide again (and dial, the wait being over).
            (Stage::WaitingIncoming, Target::Peer(p)) if p.waiting_since.is_some_and(|s| now >= s + self.cfg.handshake_timeout) => {
                p.next = 0;
                self.request_slot(job, now);
            }
            _ => {} // a stale timer
        }
    }

    /// An incoming handshake from `addr` started: a second dialer dialling
    /// that peer gives its dial up (the first dialer was slow, not absent:
    /// its connection would win anyway, and two handshakes cost twice the
    /// CPU) and waits for the outcome instead, within the same bound.
    pub(super) fn abandon_crossing_dials(&mut self, addr: SocketAddr, now: Instant) {
        let limit = self.cfg.handshake_timeout;
        let crossing: Vec<(JobId, Attempt)> = self
            .jobs
            .iter()
            .filter_map(|(id, j)| match (&j.target, j.stage) {
                (Target::Peer(p), Stage::Connecting(a))
                    if p.second && p.addrs.contains(&addr) && p.waiting_since.is_none_or(|s| now < s + limit) =>
                {
                    Some((*id, a))
                }
                _ => None,
            })
            .collect();
        for (job, attempt) in crossing {
            self.attempts.remove(&attempt);
            self.out.push_back(Output::Abandon { attempt });
            self.counters.dials_abandoned += 1;
            if let Some(Target::Peer(p)) = self.jobs.get_mut(&job).map(|j| &mut j.target) {
                if let Some(a) = p.claimed.take() {
                    self.dialing_addrs.remove(&a);
                }
            }
            self.release_slot(DialClass::GossipSecond, now);
            self.wait_for_incoming(job, now);
        }
    }

    /// The relay behind relay key `addr` knows nobody under its id: a dial
    /// there would only wait for the handshake timeout, holding a handshake
    /// slot that a live peer's dial is waiting for (DHT records outlive the
    /// nodes that published them, and their relay routes often come first).
    /// The dial is given up now and ends as a failed attempt
    /// ([`DialFailure::Gone`]): a retry after backoff, or the job's next address.
    pub(super) fn on_route_gone(&mut self, addr: SocketAddr, now: Instant) {
        let addr = canonical(addr);
        if !is_relay_key(addr) {
            return; // only a relay route can be gone this way
        }
        let gone: Vec<Attempt> = self
            .jobs
            .iter()
            .filter_map(|(id, j)| match j.stage {
                Stage::Connecting(a) if self.job_addr(*id) == Some(addr) => Some(a),
                _ => None,
            })
            .collect();
        for attempt in gone {
            tracing::debug!(%addr, "dial given up: the relay knows nobody under that route");
            self.out.push_back(Output::Abandon { attempt });
            // As an abandoned dial: one that completed all the same is counted back.
            self.counters.dials_abandoned += 1;
            self.on_dialled(attempt, Err(DialFailure::Gone), now);
        }
    }

    /// No handshake from `addr` is under way any more: gossip dials
    /// waiting for one decide again.
    pub(super) fn incoming_over(&mut self, addr: SocketAddr, now: Instant) {
        let waiting: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, j)| {
                j.stage == Stage::WaitingIncoming
                    && matches!(&j.target, Target::Peer(p) if p.addrs.contains(&addr) && !p.addrs.iter().any(|a| self.incoming.contains_key(a)))
            })
            .map(|(id, _)| *id)
            .collect();
        for job in waiting {
            if let Some(Target::Peer(p)) = self.jobs.get_mut(&job).map(|j| &mut j.target) {
                p.next = 0;
            }
            self.request_slot(job, now);
        }
    }

    /// Ends a job and releases its claims. Nothing else refers to it:
    /// timers and slots granted to it find it gone.
    pub(super) fn finish_job(&mut self, job: JobId) {
        let Some(j) = self.jobs.remove(&job) else { return };
        if j.class() != DialClass::Member {
            self.gossip_jobs -= 1;
        }
        if let Stage::Connecting(a) = j.stage {
            self.attempts.remove(&a);
        }
        match j.target {
            Target::Addr { addr, .. } => {
                self.dialing_addrs.remove(&addr);
            }
            Target::Peer(p) => {
                self.dialing_ids.remove(&p.id);
                if let Some(a) = p.claimed {
                    self.dialing_addrs.remove(&a);
                }
            }
        }
    }

    /// The address a job dialled (to remember as our own on a self-connect).
    pub(super) fn job_addr(&self, job: JobId) -> Option<SocketAddr> {
        match &self.jobs.get(&job)?.target {
            Target::Addr { addr, .. } => Some(*addr),
            Target::Peer(p) => p.claimed,
        }
    }
}
