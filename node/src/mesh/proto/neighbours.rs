//! Connections from handshake to end, and the neighbour table: the
//! one-connection-per-pair rule with its switch, announcements, and what a
//! connection's end means (lost, re-dial, departed).

use std::net::SocketAddr;
use std::time::Instant;

use super::dial::JobId;
use super::{ConnId, Known, Mesh, Output, PeerHello, Timer, ANNOUNCE_BATCH, MAX_GOSSIP_ADDRS};
use crate::id::NodeId;
use crate::mesh::errors::ProtocolError;
use crate::peers::{self, canonical, Direction, Rank, Verdict};
use crate::wire::PeerAddrs;

/// A connection the mesh knows about.
pub(super) struct Conn {
    pub(super) dir: Direction,
    /// The peer's address as seen from here.
    pub(super) remote: SocketAddr,
    stage: Stage,
}

impl Conn {
    /// The neighbour this is the connection of, if it is one's.
    pub(super) fn peer(&self) -> Option<NodeId> {
        match self.stage {
            Stage::Active(p) => Some(p),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// QUIC done or under way, hellos not yet: an incoming one counts in
    /// `Mesh::incoming`; a dialled one holds its job's claims. `dial`: our
    /// number for it (dialled only).
    Handshake { job: Option<JobId>, dial: u64 },
    /// The neighbour's connection.
    Active(NodeId),
    /// Switched away from (or a duplicate at birth): delivering what is still in flight.
    Retiring,
}

impl Conn {
    pub(super) fn handshaking(dir: Direction, remote: SocketAddr, job: Option<JobId>, dial: u64) -> Conn {
        Conn { dir, remote, stage: Stage::Handshake { job, dial } }
    }
}

pub(super) struct Neighbour {
    conn: ConnId,
    rank: Rank,
    pub(super) remote: SocketAddr,
    /// Addresses to tell others about it.
    gossip_addrs: Vec<SocketAddr>,
    /// The peer retired our connection; the one replacing it has not come yet.
    awaiting_switch: bool,
}

impl Neighbour {
    #[cfg(test)]
    pub(super) fn conn(&self) -> ConnId {
        self.conn
    }
}

/// How a connection's reader ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ReaderEnd {
    /// The stream ended without a retire: the peer left.
    Eof,
    /// The peer retired this connection: it switches to another one.
    Retired,
    /// The connection closed. `goodbye`: closed by a leaving peer (or by
    /// us): no re-dial. `reason` is for the report.
    Closed { goodbye: bool, reason: String },
    /// The peer broke the protocol.
    Protocol(ProtocolError),
}

/// Why a neighbour was lost, as reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LostReason {
    Left,
    SwitchNeverCame,
    Closed(String),
    Protocol(ProtocolError),
}

impl std::fmt::Display for LostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LostReason::Left => f.write_str("left"),
            LostReason::SwitchNeverCame => f.write_str("switched connection, but the new one never came"),
            LostReason::Closed(r) => f.write_str(r),
            LostReason::Protocol(e) => write!(f, "protocol error: {e}"),
        }
    }
}

/// How to end a connection whose reader ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Teardown {
    /// A retired connection: its events are delivered; let our retire be
    /// acknowledged, then close quietly.
    Retired,
    /// The neighbour's connection: stop writing and close (with a
    /// protocol-error code if `protocol`). `flush`: we are leaving and the
    /// peer still reads here: let the writer send what is queued first.
    Lost { flush: bool, protocol: bool },
}

/// Why the mesh closes a connection it will not use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CloseWhy {
    /// It reached our own node.
    SelfConnect,
    /// Its hellos completed while we leave.
    Leaving,
    /// The peer's certificate was revoked (while its handshake went on).
    Revoked,
}

impl Mesh {
    pub(super) fn on_incoming_started(&mut self, conn: ConnId, addr: SocketAddr, now: Instant) {
        let addr = canonical(addr);
        self.counters.accepts += 1;
        *self.incoming.entry(addr).or_default() += 1;
        self.conns.insert(conn, Conn::handshaking(Direction::In, addr, None, 0));
        self.abandon_crossing_dials(addr, now);
    }

    pub(super) fn on_incoming_done(&mut self, conn: ConnId, result: Result<(), crate::peers::DialFailure>, now: Instant) {
        match result {
            Ok(()) => self.counters.accepts_ok += 1,
            Err(f) => {
                if f == crate::peers::DialFailure::TimedOut {
                    self.counters.accepts_timed_out += 1;
                }
                self.end_handshake(conn, now);
            }
        }
    }

    /// A connection's handshake is over, whatever its outcome: a second
    /// dialer waiting for it decides now; a dial's claims are released.
    pub(super) fn end_handshake(&mut self, conn: ConnId, now: Instant) {
        let Some(c) = self.conns.get(&conn) else { return };
        let Stage::Handshake { job, .. } = c.stage else { return };
        let (dir, remote) = (c.dir, c.remote);
        self.conns.remove(&conn);
        self.release_handshake(dir, remote, job, now);
    }

    fn release_handshake(&mut self, dir: Direction, remote: SocketAddr, job: Option<JobId>, now: Instant) {
        match dir {
            Direction::In => {
                if let Some(n) = self.incoming.get_mut(&remote) {
                    *n -= 1;
                    if *n == 0 {
                        self.incoming.remove(&remote);
                        self.incoming_over(remote, now);
                    }
                }
            }
            Direction::Out => {
                if let Some(job) = job {
                    self.finish_job(job);
                }
            }
        }
    }

    pub(super) fn on_hello(&mut self, conn: ConnId, hello: PeerHello, now: Instant) {
        let Some(c) = self.conns.get(&conn) else { return };
        let Stage::Handshake { job, dial } = c.stage else { return };
        let (dir, remote) = (c.dir, c.remote);
        let peer = hello.id;
        if peer == self.me {
            tracing::debug!(%remote, "connected to myself; remembering the address");
            self.self_addrs.insert(remote);
            if let Some(a) = job.and_then(|j| self.job_addr(j)) {
                self.self_addrs.insert(a);
            }
            self.conns.remove(&conn);
            self.out.push_back(Output::Close { conn, why: CloseWhy::SelfConnect });
            self.release_handshake(dir, remote, job, now);
            return;
        }
        if self.leaving || self.revoked.contains(&peer) {
            // No new neighbours while leaving, and never a revoked one.
            let why = if self.leaving { CloseWhy::Leaving } else { CloseWhy::Revoked };
            self.conns.remove(&conn);
            self.out.push_back(Output::Close { conn, why });
            self.release_handshake(dir, remote, job, now);
            return;
        }
        let obs = canonical(hello.observed);
        // A relayed connection's peer does not see our address.
        if obs.port() != 0 && !obs.ip().is_unspecified() && !self.observed.contains(&obs) {
            self.observed.insert(0, obs);
            self.observed.truncate(8);
        }
        let rank = Rank::new(self.me, peer, dir, if dir == Direction::Out { dial } else { hello.dial });
        let mut gossip_addrs = vec![remote];
        for a in hello.addrs.into_iter().map(canonical) {
            if gossip_addrs.len() < MAX_GOSSIP_ADDRS && !gossip_addrs.contains(&a) {
                gossip_addrs.push(a);
            }
        }
        match peers::decide(self.neighbours.get(&peer).map(|n| n.rank), rank) {
            Verdict::Activate => self.activate(conn, peer, rank, remote, gossip_addrs, now),
            Verdict::Replace => {
                self.counters.duplicates += 1;
                tracing::debug!(peer = %peer.short(), "second connection wins; retiring the older one");
                let nb = self.neighbours.get_mut(&peer).expect("decide saw it");
                let old = std::mem::replace(&mut nb.conn, conn);
                nb.rank = rank;
                nb.remote = remote;
                let old_ended = std::mem::take(&mut nb.awaiting_switch);
                self.set_stage(old, Stage::Retiring);
                self.set_stage(conn, Stage::Active(peer));
                self.out.push_back(Output::Switch { peer, from: old, to: conn });
                if old_ended {
                    // Its reader ended already (the peer retired it first).
                    self.conns.remove(&old);
                    self.out.push_back(Output::Teardown { conn: old, how: Teardown::Retired });
                }
            }
            Verdict::Retire => {
                self.counters.duplicates += 1;
                tracing::debug!(peer = %peer.short(), "duplicate connection; retiring it");
                self.set_stage(conn, Stage::Retiring);
                self.out.push_back(Output::RetireAtBirth { conn, peer });
            }
        }
        self.release_handshake(dir, remote, job, now);
    }

    fn set_stage(&mut self, conn: ConnId, stage: Stage) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.stage = stage;
        }
    }

    fn activate(&mut self, conn: ConnId, peer: NodeId, rank: Rank, remote: SocketAddr, gossip_addrs: Vec<SocketAddr>, now: Instant) {
        self.counters.activated += 1;
        let allow = self.cfg.allow_non_global;
        // What the new neighbour must know: the rest of the mesh.
        let others: Vec<PeerAddrs> = self
            .neighbours
            .iter()
            .map(|(id, n)| PeerAddrs {
                id: *id,
                addrs: n.gossip_addrs.iter().copied().filter(|a| peers::may_gossip(*a, remote, allow)).collect(),
                relays: Vec::new(),
            })
            .filter(|p| !p.addrs.is_empty())
            .collect();
        // Announce it to the others, unless the mesh already heard of it
        // through gossip (then whoever told us told everyone).
        let heard = self.known.get(&peer).is_some_and(|k| k.via_gossip);
        if !heard {
            self.announce.push((peer, gossip_addrs.clone()));
            if !self.announce_armed {
                self.announce_armed = true;
                self.arm(now + ANNOUNCE_BATCH, Timer::Announce);
            }
        }
        // For re-dialling: only addresses that mean something from here.
        let redial_addrs = gossip_addrs.iter().copied().filter(|a| peers::may_gossip(*a, remote, allow)).collect();
        self.known.insert(peer, Known { addrs: redial_addrs, via_gossip: heard });
        self.redials.remove(&peer);
        self.neighbours.insert(peer, Neighbour { conn, rank, remote, gossip_addrs, awaiting_switch: false });
        self.set_stage(conn, Stage::Active(peer));
        self.out.push_back(Output::Activate { conn, peer, peers: others });
    }

    /// Neighbour `peer` names addresses (relay routes) it did not name in its
    /// hello: remember them, and tell the others.
    pub(super) fn update_neighbour_addrs(&mut self, peer: NodeId, addrs: Vec<SocketAddr>, now: Instant) {
        let Some(n) = self.neighbours.get_mut(&peer) else { return };
        let fresh: Vec<SocketAddr> =
            addrs.into_iter().map(canonical).filter(|a| !n.gossip_addrs.contains(a)).take(MAX_GOSSIP_ADDRS).collect();
        if fresh.is_empty() {
            return;
        }
        // After the address we see it at, before the rest: relay routes work
        // where the other addresses often do not.
        let rest = n.gossip_addrs.split_off(1.min(n.gossip_addrs.len()));
        n.gossip_addrs.extend(fresh.iter().copied());
        n.gossip_addrs.extend(rest);
        n.gossip_addrs.truncate(MAX_GOSSIP_ADDRS);
        let addrs = n.gossip_addrs.clone();
        if let Some(k) = self.known.get_mut(&peer) {
            for a in fresh.iter().rev() {
                if !k.addrs.contains(a) {
                    k.addrs.insert(0, *a);
                }
            }
            k.addrs.truncate(MAX_GOSSIP_ADDRS);
        }
        self.announce.retain(|(p, _)| *p != peer);
        self.announce.push((peer, addrs));
        if !self.announce_armed {
            self.announce_armed = true;
            self.arm(now + ANNOUNCE_BATCH, Timer::Announce);
        }
    }

    /// Tells every neighbour about the new neighbours collected since the
    /// last flush, in one frame each (only addresses in the link's scope).
    pub(super) fn flush_announcements(&mut self) {
        self.announce_armed = false;
        let list = std::mem::take(&mut self.announce);
        if list.is_empty() {
            return;
        }
        let allow = self.cfg.allow_non_global;
        let mut sends = Vec::new();
        for (id, n) in &self.neighbours {
            let peers: Vec<PeerAddrs> = list
                .iter()
                .filter(|(p, _)| p != id)
                .map(|(p, addrs)| PeerAddrs {
                    id: *p,
                    addrs: addrs.iter().copied().filter(|a| peers::may_gossip(*a, n.remote, allow)).collect(),
                    relays: Vec::new(),
                })
                .filter(|p| !p.addrs.is_empty())
                .collect();
            if !peers.is_empty() {
                sends.push(Output::SendPeers { peer: *id, peers });
            }
        }
        sends.sort_by_key(|o| match o {
            Output::SendPeers { peer, .. } => *peer,
            _ => unreachable!("only SendPeers"),
        });
        self.out.extend(sends);
    }

    pub(super) fn on_reader_ended(&mut self, conn: ConnId, end: ReaderEnd, now: Instant) {
        let Some(c) = self.conns.get(&conn) else { return };
        let peer = match c.stage {
            Stage::Retiring => {
                self.conns.remove(&conn);
                self.out.push_back(Output::Teardown { conn, how: Teardown::Retired });
                return;
            }
            Stage::Handshake { .. } => return self.end_handshake(conn, now),
            Stage::Active(peer) => peer,
        };
        if end == ReaderEnd::Retired && !self.leaving {
            // The peer switched to a connection that has not reached us
            // yet: give it the handshake timeout before calling the neighbour lost.
            if let Some(nb) = self.neighbours.get_mut(&peer) {
                nb.awaiting_switch = true;
            }
            self.arm(now + self.cfg.handshake_timeout, Timer::SwitchWait(peer, conn));
            return;
        }
        let flush = end == ReaderEnd::Retired; // and leaving: the peer still reads here
        let (reason, goodbye, protocol) = match end {
            ReaderEnd::Eof => (LostReason::Left, true, false),
            ReaderEnd::Retired => (LostReason::SwitchNeverCame, false, false),
            ReaderEnd::Closed { goodbye, reason } => (LostReason::Closed(reason), goodbye, false),
            // It would only break it again; static discovery still retries it.
            ReaderEnd::Protocol(e) => (LostReason::Protocol(e), true, true),
        };
        self.lose(peer, conn, reason, goodbye, Teardown::Lost { flush, protocol }, now);
    }

    pub(super) fn on_switch_wait(&mut self, peer: NodeId, conn: ConnId, now: Instant) {
        if self.neighbours.get(&peer).is_some_and(|n| n.conn == conn && n.awaiting_switch) {
            let how = Teardown::Lost { flush: self.leaving, protocol: false };
            self.lose(peer, conn, LostReason::SwitchNeverCame, false, how, now);
        }
    }

    /// At leave: neighbours whose peer retired our connection while the new
    /// one had not come are lost now, their queues flushed (the peer still reads).
    pub(super) fn lose_awaiting_switch(&mut self, now: Instant) {
        let waiting: Vec<(NodeId, ConnId)> = self.neighbours.iter().filter(|(_, n)| n.awaiting_switch).map(|(p, n)| (*p, n.conn)).collect();
        for (peer, conn) in waiting {
            self.lose(peer, conn, LostReason::SwitchNeverCame, true, Teardown::Lost { flush: true, protocol: false }, now);
        }
    }

    fn lose(&mut self, peer: NodeId, conn: ConnId, reason: LostReason, goodbye: bool, how: Teardown, now: Instant) {
        self.neighbours.remove(&peer);
        self.conns.remove(&conn);
        self.out.push_back(Output::Lost { peer, conn, reason });
        self.out.push_back(Output::Teardown { conn, how });
        if goodbye || self.leaving || self.revoked.contains(&peer) {
            self.depart(peer);
        } else {
            self.start_redial(peer, now);
        }
    }
}
