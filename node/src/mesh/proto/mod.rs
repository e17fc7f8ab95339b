//! The mesh's decisions as one state machine, with no I/O: no tokio, no
//! sockets, no locks, no clock of its own.
//!
//! The driver (the mesh actor) feeds it [`Input`]s with the time they
//! happened and carries out the [`Output`]s it returns: dial this address,
//! start this connection's hello, use this connection for that neighbour,
//! retire this one, tell a neighbour about others, report a neighbour found
//! or lost, arm this timer. Timers are data: the driver sleeps until the
//! earliest [`Output::ArmTimer`] and feeds the [`Timer`] back. Tests drive it
//! the same way with simulated time (`tests.rs`).
//!
//! What it owns: the neighbour table (one connection per neighbour, the
//! duplicate rule with its switch), connections from their QUIC handshake
//! until they end, dial jobs with their claims and handshake slots, incoming
//! handshakes in progress, known and departed peers, gossip intake, announce
//! batching, re-dial backoff, and leave.
//!
//! A neighbour has one *connection* ([`ConnId`]) that carries its stream of
//! frames; the connection's network path (direct today) is the driver's
//! business, so a connection that later gains a relayed path needs no change
//! here.

mod dial;
mod neighbours;
pub(crate) mod pacing;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::id::NodeId;
use crate::peers::DialFailure;
use crate::wire::PeerAddrs;
use pacing::{Backoff, DialSlots};

pub(crate) use dial::Attempt;
use dial::{DialJob, JobId};
pub(crate) use neighbours::{CloseWhy, LostReason, ReaderEnd, Teardown};
use neighbours::{Conn, Neighbour};

/// A connection, numbered by the driver when its QUIC handshake starts
/// (accepted) or completes (dialled).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ConnId(pub u64);

/// Settings the state machine decides by.
#[derive(Clone, Debug)]
pub(crate) struct MeshConfig {
    pub handshake_timeout: Duration,
    pub redial_base: Duration,
    pub redial_max: Duration,
    /// Give up re-dialling a lost neighbour after this long.
    pub redial_for: Duration,
    /// The second dialer's grace period ([`crate::peers::gossip_dial_delay`]).
    pub gossip_dial_delay: Duration,
    pub allow_non_global: bool,
    /// Outgoing handshakes at a time (0: no limit).
    pub dial_concurrency: usize,
}

/// How long announcements of new neighbours are collected before sending:
/// a burst of joins costs one frame per neighbour.
pub(crate) const ANNOUNCE_BATCH: Duration = Duration::from_millis(15);
/// Peers remembered (for gossip and re-dial) at most; gossip about more is
/// ignored, so a flood from one neighbour costs bounded memory.
pub(crate) const MAX_KNOWN: usize = 4096;
/// Dial jobs at most (each waits for a handshake slot); more gossip is ignored until some end.
pub(crate) const MAX_DIAL_JOBS: usize = 1024;
/// Of those, dial jobs that gossip made at most: a neighbour's gossip never
/// fills the table for our own discovery's candidates and re-dials.
pub(crate) const MAX_GOSSIP_DIAL_JOBS: usize = MAX_DIAL_JOBS * 3 / 4;
/// Departed ids remembered at most (then forgotten at once: a stale dial is harmless, only wasteful).
pub(crate) const MAX_DEPARTED: usize = 4096;
/// Addresses taken from one gossip entry at most.
pub(crate) const MAX_GOSSIP_ADDRS: usize = 16;

/// What the mesh is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Input {
    /// Discovery (or [`crate::Bus::connect`]) names an address. With
    /// `retry`, a dial that times out is tried again with backoff.
    Candidate { addr: SocketAddr, retry: bool },
    /// A dial's QUIC handshake ended: `Ok` with the connection (whose
    /// hello, carrying its dial number, is on its way already).
    Dialled { attempt: Attempt, result: Result<Dialled, DialFailure> },
    /// An incoming QUIC handshake started (its first packet was accepted).
    IncomingStarted { conn: ConnId, addr: SocketAddr },
    /// That handshake ended: `Ok` means TLS completed and the hellos follow.
    IncomingDone { conn: ConnId, result: Result<(), DialFailure> },
    /// Both hellos went through on `conn`.
    Hello { conn: ConnId, hello: PeerHello },
    /// The hello exchange failed (the driver closed the connection).
    HelloFailed { conn: ConnId },
    /// A neighbour's list of its other neighbours.
    Gossip { conn: ConnId, peers: Vec<PeerAddrs> },
    /// The connection's reader ended.
    ReaderEnded { conn: ConnId, end: ReaderEnd },
    /// A timer armed by [`Output::ArmTimer`] is due.
    Timer(Timer),
    /// Leave the hood: no more dials; connections that end now are departures.
    Leave,
    /// These nodes' certificates are revoked (their connections are being
    /// closed): never dial, re-dial, gossip or accept them again.
    Revoked { peers: Vec<NodeId> },
    /// The relay behind relay key `addr` knows nobody under its id (the
    /// path layer heard `Unknown`): a dial to `addr` in progress is given up
    /// now, its handshake slot freed, and counted as a failed attempt.
    RouteGone { addr: SocketAddr },
}

/// A dial that connected: the driver's number for the connection, and the
/// dialer's number for it ([`crate::wire::Hello::dial`]: a per-process
/// counter taken when the QUIC handshake completes, so a later connection
/// has a larger number; its hello goes out at once, without waiting for the
/// mesh).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dialled {
    pub conn: ConnId,
    pub dial: u64,
    /// The peer's address.
    pub remote: SocketAddr,
}

/// What a peer said in its hello, as the state machine needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PeerHello {
    pub id: NodeId,
    /// Where the peer believes it can be reached.
    pub addrs: Vec<SocketAddr>,
    /// Where the peer sees us.
    pub observed: SocketAddr,
    /// The dialer's number for this connection (ours when we dialled).
    pub dial: u64,
}

/// What the mesh asks of its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Output {
    /// Start a QUIC handshake to `addr`; answer with [`Input::Dialled`].
    Connect { attempt: Attempt, addr: SocketAddr },
    /// Give that handshake up (the peer's own dial reached us, or its relay
    /// route is gone); no answer is expected.
    Abandon { attempt: Attempt },
    /// `conn` is `peer`'s connection, the first one: open its send queue
    /// with our subscriptions and `peers` (the rest of the mesh), start its
    /// writer and reader, report the neighbour found.
    Activate { conn: ConnId, peer: NodeId, peers: Vec<PeerAddrs> },
    /// `to` replaces `from` as `peer`'s connection: `from` sends a retire
    /// and ends; `to`'s writer continues the same queue once `from`'s has
    /// stopped; events still arriving on `from` are delivered first.
    Switch { peer: NodeId, from: ConnId, to: ConnId },
    /// `conn` duplicates `peer`'s connection and loses: it sends a retire and ends.
    RetireAtBirth { conn: ConnId, peer: NodeId },
    /// Queue a gossip frame for `peer`.
    SendPeers { peer: NodeId, peers: Vec<PeerAddrs> },
    /// Close a connection the mesh will not use.
    Close { conn: ConnId, why: CloseWhy },
    /// `peer`, whose connection was `conn`, is lost.
    Lost { peer: NodeId, conn: ConnId, reason: LostReason },
    /// How to end `conn`, whose reader has ended.
    Teardown { conn: ConnId, how: Teardown },
    /// Feed `timer` back at `at` (or later).
    ArmTimer { at: Instant, timer: Timer },
}

/// Timers, as data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// Send the collected announcements.
    Announce,
    /// A dial job's wait is over (grace period, backoff, or waiting for a peer's handshake).
    Dial(JobId),
    /// Time to re-dial a lost neighbour.
    Redial(NodeId),
    /// The peer retired `conn` but the connection replacing it never came.
    SwitchWait(NodeId, ConnId),
}

/// Counters since the node joined, as reported ([`crate::ConnStats`]).
pub(crate) type Counters = crate::mesh::ConnStats;

/// Where to find a peer again.
struct Known {
    addrs: Vec<SocketAddr>,
    /// Learnt through gossip: whoever told us told everyone.
    via_gossip: bool,
}

struct Redial {
    addrs: Vec<SocketAddr>,
    since: Instant,
    backoff: Backoff,
}

/// The mesh state machine. See the module documentation.
pub(crate) struct Mesh {
    me: NodeId,
    cfg: MeshConfig,
    rng: SmallRng,
    out: VecDeque<Output>,
    counters: Counters,
    leaving: bool,

    conns: HashMap<ConnId, Conn>,
    neighbours: HashMap<NodeId, Neighbour>,
    known: HashMap<NodeId, Known>,
    /// Nodes that said goodbye. Ids are new at every start, so gossip about
    /// these (still in flight when they left) is stale: never dial them.
    departed: HashSet<NodeId>,
    /// Nodes whose certificates are revoked (never forgotten: one per
    /// revoked neighbour seen, so bounded by the revocation list's size).
    revoked: HashSet<NodeId>,
    /// Addresses that turned out to be our own.
    self_addrs: HashSet<SocketAddr>,
    /// Where peers see us, newest first.
    observed: Vec<SocketAddr>,

    jobs: HashMap<JobId, DialJob>,
    /// Of `jobs`, those not of `DialClass::Member`.
    gossip_jobs: usize,
    next_job: u64,
    attempts: HashMap<Attempt, JobId>,
    next_attempt: u64,
    slots: DialSlots<JobId>,
    /// Claims: no second dial starts for an address or id being dialled.
    dialing_addrs: HashSet<SocketAddr>,
    dialing_ids: HashSet<NodeId>,
    /// Incoming handshakes in progress, by remote address (until their hellos are over).
    incoming: HashMap<SocketAddr, u32>,

    /// New neighbours to announce to the others (batched).
    announce: Vec<(NodeId, Vec<SocketAddr>)>,
    announce_armed: bool,
    redials: HashMap<NodeId, Redial>,
}

impl Mesh {
    /// A mesh for node `me`; `seed` drives the jitter (fixed in tests).
    pub(crate) fn new(me: NodeId, cfg: MeshConfig, seed: u64) -> Mesh {
        Mesh {
            me,
            slots: DialSlots::new(cfg.dial_concurrency),
            cfg,
            rng: SmallRng::seed_from_u64(seed),
            out: VecDeque::new(),
            counters: Counters::default(),
            leaving: false,
            conns: HashMap::new(),
            neighbours: HashMap::new(),
            known: HashMap::new(),
            departed: HashSet::new(),
            revoked: HashSet::new(),
            self_addrs: HashSet::new(),
            observed: Vec::new(),
            jobs: HashMap::new(),
            gossip_jobs: 0,
            next_job: 0,
            attempts: HashMap::new(),
            next_attempt: 0,
            dialing_addrs: HashSet::new(),
            dialing_ids: HashSet::new(),
            incoming: HashMap::new(),
            announce: Vec::new(),
            announce_armed: false,
            redials: HashMap::new(),
        }
    }

    /// Feeds one input that happened at `now`; read the outputs with [`Mesh::poll_output`].
    pub(crate) fn handle(&mut self, input: Input, now: Instant) {
        match input {
            Input::Candidate { addr, retry } => self.dial_addr(addr, None, retry, false, now),
            Input::Dialled { attempt, result } => self.on_dialled(attempt, result, now),
            Input::IncomingStarted { conn, addr } => self.on_incoming_started(conn, addr, now),
            Input::IncomingDone { conn, result } => self.on_incoming_done(conn, result, now),
            Input::Hello { conn, hello } => self.on_hello(conn, hello, now),
            Input::HelloFailed { conn } => self.end_handshake(conn, now),
            Input::Gossip { conn, peers } => self.on_gossip(conn, peers, now),
            Input::ReaderEnded { conn, end } => self.on_reader_ended(conn, end, now),
            Input::Timer(t) => self.on_timer(t, now),
            Input::Leave => self.leave(now),
            Input::Revoked { peers } => self.on_revoked(peers),
            Input::RouteGone { addr } => self.on_route_gone(addr, now),
        }
    }

    /// The next thing to do, in the order decided.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub(crate) fn counters(&self) -> Counters {
        self.counters
    }

    /// Where peers see us, newest first (at most 8).
    pub(crate) fn observed(&self) -> &[SocketAddr] {
        &self.observed
    }

    /// The neighbour count.
    pub(crate) fn neighbour_count(&self) -> usize {
        self.neighbours.len()
    }

    /// No dial, claim, handshake or retiring connection is pending (tests).
    #[cfg(test)]
    pub(crate) fn is_settled(&self) -> bool {
        self.jobs.is_empty()
            && self.attempts.is_empty()
            && self.dialing_addrs.is_empty()
            && self.dialing_ids.is_empty()
            && self.incoming.is_empty()
            && self.slots.running() == 0
            && self.conns.len() == self.neighbours.len()
    }

    /// The neighbours and their connections (tests).
    #[cfg(test)]
    pub(crate) fn neighbour_conns(&self) -> Vec<(NodeId, ConnId)> {
        let mut v: Vec<_> = self.neighbours.iter().map(|(p, n)| (*p, n.conn())).collect();
        v.sort();
        v
    }

    #[cfg(test)]
    pub(crate) fn sizes(&self) -> (usize, usize, usize) {
        (self.known.len(), self.jobs.len(), self.departed.len())
    }

    fn on_timer(&mut self, t: Timer, now: Instant) {
        match t {
            Timer::Announce => self.flush_announcements(),
            Timer::Dial(job) => self.on_dial_timer(job, now),
            Timer::Redial(id) => self.on_redial_timer(id, now),
            Timer::SwitchWait(peer, conn) => self.on_switch_wait(peer, conn, now),
        }
    }

    fn arm(&mut self, at: Instant, timer: Timer) {
        self.out.push_back(Output::ArmTimer { at, timer });
    }

    /// A random number in [0, 1) for jitter.
    fn unit(&mut self) -> f64 {
        self.rng.random::<f64>()
    }

    fn leave(&mut self, now: Instant) {
        if self.leaving {
            return;
        }
        self.leaving = true;
        // Dials in flight end by themselves (the endpoint closes); nothing new starts.
        let jobs: Vec<JobId> = self.jobs.keys().copied().collect();
        for job in jobs {
            self.finish_job(job);
        }
        self.redials.clear();
        self.lose_awaiting_switch(now);
    }

    /// Nodes not to dial, re-dial or take gossip about: departed or revoked.
    fn shut_out(&self, peer: &NodeId) -> bool {
        self.departed.contains(peer) || self.revoked.contains(peer)
    }

    fn on_revoked(&mut self, peers: Vec<NodeId>) {
        for p in peers {
            tracing::debug!(peer = %p.short(), "revoked: never dialled or gossipped again");
            self.revoked.insert(p);
            self.known.remove(&p);
            self.redials.remove(&p);
            self.announce.retain(|(a, _)| *a != p);
        }
    }

    /// Remembers a departed node (bounded).
    fn depart(&mut self, peer: NodeId) {
        self.known.remove(&peer);
        self.redials.remove(&peer);
        if self.departed.len() >= MAX_DEPARTED {
            self.departed.clear();
        }
        self.departed.insert(peer);
    }

    /// Starts re-dialling a lost neighbour at its known addresses, with
    /// backoff, for at most `redial_for`.
    fn start_redial(&mut self, peer: NodeId, now: Instant) {
        let addrs = self.known.get(&peer).map(|k| k.addrs.clone()).unwrap_or_default();
        if addrs.is_empty() || self.leaving || self.revoked.contains(&peer) {
            return;
        }
        let mut backoff = Backoff::new(self.cfg.redial_base, self.cfg.redial_max);
        let d = backoff.next_delay(self.unit());
        self.redials.insert(peer, Redial { addrs, since: now, backoff });
        self.arm(now + d, Timer::Redial(peer));
    }

    fn on_redial_timer(&mut self, peer: NodeId, now: Instant) {
        let Some(r) = self.redials.get(&peer) else { return };
        let back = self.neighbours.contains_key(&peer);
        // Someone else lives at its address now (it restarted with a new id).
        let replaced = self.neighbours.values().any(|n| r.addrs.contains(&n.remote));
        if self.leaving || back || replaced || now.duration_since(r.since) > self.cfg.redial_for {
            self.redials.remove(&peer);
            return;
        }
        let addrs = r.addrs.clone();
        tracing::debug!(peer = %peer.short(), attempt = r.backoff.attempts(), "re-dialling lost neighbour");
        for addr in addrs {
            self.dial_addr(addr, Some(peer), false, false, now);
        }
        let unit = self.unit();
        let r = self.redials.get_mut(&peer).expect("checked above");
        let d = r.backoff.next_delay(unit);
        self.arm(now + d, Timer::Redial(peer));
    }
}
