//! The actor that drives the mesh state machine ([`super::proto::Mesh`]):
//! it turns what the node's tasks report into [`Input`]s, carries out the
//! [`Output`]s (spawning dials, commanding connection tasks, updating the
//! data plane, reporting neighbours), and keeps the timers. Tasks report to
//! it and never call each other.
//!
//! Its state sits behind one mutex, and its inbox is drained by whichever
//! task holds it: a task that reports while the actor is idle runs it on the
//! spot; one that finds it busy leaves its message to the task running it,
//! which empties the inbox before it lets go (and looks again after). A
//! separate actor task woken for every message cost a scheduling round per
//! hop: 25 ms on average (120 ms at worst) with 100 nodes on 2 cores, enough
//! to turn a forming mesh's crossing dials into three times as many
//! duplicates. The actor's one task sleeps until its earliest timer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch, Notify};
use tracing::info;

use super::inbox::Msg;
use super::link::{ConnCmd, ConnCtl, Drain, Start};
use super::proto::{Attempt, CloseWhy, ConnId, Input, Mesh, Output, Timer};
use super::{ConnStats, NeighbourEvent};
use crate::event::PeerInfo;
use crate::id::NodeId;
use crate::peers::Direction;
use crate::plane::{Link, Plane};
use crate::queue::SendQueue;
use crate::wire::{close, PeerAddrs};

/// What the actor acts on: the node around it (implemented in `node.rs`,
/// so that this module needs nothing of the node's).
pub(crate) trait Io {
    /// Starts a dial attempt's task; a send on `abandon` gives it up.
    fn connect(&self, attempt: Attempt, addr: SocketAddr, abandon: oneshot::Receiver<()>);
    fn plane(&self) -> &Plane;
    /// Gossip as it goes on the wire (relay keys become relay routes).
    fn wire_peers(&self, peers: Vec<crate::wire::PeerAddrs>) -> Vec<crate::wire::PeerAddrs>;
    /// What a new neighbour should hear about us beyond our hello (our
    /// relay routes, which may be newer than the hello), if anything.
    fn introduce(&self) -> Option<crate::wire::PeerAddrs>;
    fn neighbour_event(&self, event: NeighbourEvent);
    fn queue_limit(&self) -> usize;
    fn express_max(&self) -> usize;
    fn leaving(&self) -> bool;
    /// The actor's figures, for the synchronous accessors.
    fn publish(&self, stats: ConnStats, observed: &[SocketAddr]);
    fn actor(&self) -> &Actor;
    /// The revocation list in force.
    fn revoked(&self) -> &partybus_pki::RevokedSet;
}

/// Messages waiting at most; a reporter past that waits for room (a peer
/// flooding gossip waits in its own reader, not in memory).
const INBOX_LIMIT: usize = 1024;

/// A connection as the actor holds it.
struct ConnIo {
    conn: quinn::Connection,
    dir: Direction,
    cmds: mpsc::UnboundedSender<ConnCmd>,
    /// Its certificate's name and control, once the hellos are over.
    hello: Option<(Arc<PeerInfo>, Arc<ConnCtl>)>,
}

/// The mesh's actor: its inbox, and its state.
pub(crate) struct Actor {
    inbox: Mutex<VecDeque<Msg>>,
    state: Mutex<State>,
    /// Wakes reporters waiting for room in the inbox.
    space: Notify,
    /// The earliest armed timer, for the actor's task.
    next_timer: watch::Sender<Option<Instant>>,
}

struct State {
    mesh: Mesh,
    /// Armed timers, by due time (and arming order).
    timers: BTreeMap<(Instant, u64), Timer>,
    timer_seq: u64,
    conns: HashMap<ConnId, ConnIo>,
    /// Dials in flight: a send gives one up.
    attempts: HashMap<Attempt, oneshot::Sender<()>>,
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Actor {
    pub(crate) fn new(mesh: Mesh) -> Actor {
        Actor {
            inbox: Mutex::new(VecDeque::new()),
            state: Mutex::new(State { mesh, timers: BTreeMap::new(), timer_seq: 0, conns: HashMap::new(), attempts: HashMap::new() }),
            space: Notify::new(),
            next_timer: watch::channel(None).0,
        }
    }

    /// Reports `msg`, waiting while the inbox is full.
    pub(crate) async fn report(&self, io: &impl Io, msg: Msg) {
        loop {
            let room = self.space.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if relock(&self.inbox).len() < INBOX_LIMIT {
                break;
            }
            room.await;
        }
        self.post(io, msg);
    }

    /// Reports `msg` without waiting.
    pub(crate) fn post(&self, io: &impl Io, msg: Msg) {
        relock(&self.inbox).push_back(msg);
        self.drive(io);
    }

    /// Runs the actor unless another task is running it: every message
    /// waiting, the timers due, then the outputs.
    fn drive(&self, io: &impl Io) {
        loop {
            let mut st = match self.state.try_lock() {
                Ok(st) => st,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                // Its holder empties the inbox before it lets go.
                Err(TryLockError::WouldBlock) => return,
            };
            loop {
                let batch = std::mem::take(&mut *relock(&self.inbox));
                if batch.is_empty() {
                    break;
                }
                self.space.notify_waiters();
                for msg in batch {
                    st.on_msg(io, msg);
                }
            }
            st.fire_timers();
            // Figures first: whoever sees a neighbour in the data plane
            // (added by `carry_out`) sees it counted too.
            io.publish(st.mesh.counters(), st.mesh.observed());
            st.carry_out(io);
            // Published while the state is held: a driver that follows
            // publishes after us, so the timer task never sees a stale time.
            let next = st.timers.first_key_value().map(|((at, _), _)| *at);
            self.next_timer.send_if_modified(|t| std::mem::replace(t, next) != next);
            drop(st);
            // A message posted after our last look, while we still held the state.
            if relock(&self.inbox).is_empty() {
                return;
            }
        }
    }

    /// The actor's task: sleeps until the earliest timer, then runs the actor.
    pub(crate) async fn run_timers(io: impl Io) {
        let mut next = io.actor().next_timer.subscribe();
        loop {
            let at = *next.borrow_and_update();
            let due = async {
                match at {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = due => io.actor().drive(&io),
                changed = next.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Forgets every connection and dial (the node has left).
    pub(crate) fn clear(&self) {
        let mut st = relock(&self.state);
        st.conns.clear();
        st.attempts.clear();
        st.timers.clear();
        relock(&self.inbox).clear();
        // Reporters waiting for room go on (and find the node leaving).
        self.space.notify_waiters();
    }
}

impl State {
    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            self.mesh.handle(Input::Timer(timer), now);
        }
    }

    fn on_msg(&mut self, io: &impl Io, msg: Msg) {
        let now = Instant::now();
        let input = match msg {
            Msg::Candidate { addr, retry } => Input::Candidate { addr, retry },
            Msg::Dialled { attempt, result } => {
                self.attempts.remove(&attempt);
                let result = result.map(|(dialled, conn, cmds)| {
                    self.conns.insert(dialled.conn, ConnIo { conn, dir: Direction::Out, cmds, hello: None });
                    dialled
                });
                Input::Dialled { attempt, result }
            }
            Msg::IncomingStarted { conn, addr } => Input::IncomingStarted { conn, addr },
            Msg::IncomingDone { conn: id, result } => {
                let result = result.map(|(conn, cmds)| {
                    self.conns.insert(id, ConnIo { conn, dir: Direction::In, cmds, hello: None });
                });
                Input::IncomingDone { conn: id, result }
            }
            Msg::Hello { conn, hello, name, ctl } => {
                if let Some(io) = self.conns.get_mut(&conn) {
                    let addr = Some(crate::peers::canonical(io.conn.remote_address()));
                    io.hello = Some((Arc::new(PeerInfo { id: hello.id, name, addr, local: false }), ctl));
                }
                Input::Hello { conn, hello }
            }
            Msg::HelloFailed { conn } => {
                self.conns.remove(&conn);
                Input::HelloFailed { conn }
            }
            Msg::Gossip { conn, peers } => Input::Gossip { conn, peers },
            Msg::ReaderEnded { conn, end } => Input::ReaderEnded { conn, end },
            Msg::Revoke => Input::Revoked { peers: self.close_revoked(io) },
            Msg::Leave => Input::Leave,
            Msg::RouteGone { addr } => Input::RouteGone { addr },
        };
        self.mesh.handle(input, now);
    }

    fn carry_out(&mut self, io: &impl Io) {
        while let Some(out) = self.mesh.poll_output() {
            match out {
                Output::Connect { attempt, addr } => {
                    let (abandon, abandoned) = oneshot::channel();
                    self.attempts.insert(attempt, abandon);
                    io.connect(attempt, addr, abandoned);
                }
                Output::Abandon { attempt } => {
                    if let Some(abandon) = self.attempts.remove(&attempt) {
                        let _ = abandon.send(());
                    }
                }
                Output::Activate { conn, peer, peers } => self.activate(io, conn, peer, peers),
                Output::Switch { peer, from, to } => self.switch(io, peer, from, to),
                Output::RetireAtBirth { conn, peer } => {
                    let drain = io.plane().state().links.get(&peer).map(|l| l.drain.clone()).unwrap_or_default();
                    if let Some((info, ctl)) = self.conns.get(&conn).and_then(|c| c.hello.clone()) {
                        ctl.retire();
                        self.command(conn, ConnCmd::Start(Start { info, queue: None, drain }));
                    }
                }
                Output::SendPeers { peer, peers } => io.plane().push_peers(peer, io.wire_peers(peers)),
                Output::Close { conn, why } => {
                    let (code, reason): (u32, &'static [u8]) = match why {
                        CloseWhy::SelfConnect => (close::SELF_CONNECT, b"self"),
                        CloseWhy::Leaving => (close::GOODBYE, b"leaving"),
                        CloseWhy::Revoked => (close::REVOKED, b"certificate revoked"),
                    };
                    self.command(conn, ConnCmd::Close { code, reason });
                    self.conns.remove(&conn);
                }
                Output::Lost { peer, reason, .. } => {
                    // Leaving: the queue stays open for leave's flush.
                    if let Some((info, n)) = io.plane().remove_link(peer, !io.leaving()) {
                        io.plane().counters.lost(&reason.to_string());
                        info!(peer = %peer.short(), name = %info.name, addr = %info.addr, reason = %reason, neighbours = n, "neighbour lost");
                        io.neighbour_event(NeighbourEvent::Lost { info, reason: reason.to_string() });
                    }
                }
                Output::Teardown { conn, how } => {
                    self.command(conn, ConnCmd::Teardown(how));
                    self.conns.remove(&conn);
                }
                Output::ArmTimer { at, timer } => {
                    self.timer_seq += 1;
                    self.timers.insert((at, self.timer_seq), timer);
                }
            }
        }
    }

    /// Closes every connection (neighbour, handshake or hello in progress)
    /// whose peer's certificate is revoked now; returns the node ids of
    /// those whose hello told us theirs. Their tasks report the end as usual.
    fn close_revoked(&mut self, io: &impl Io) -> Vec<NodeId> {
        let mut ids = Vec::new();
        for c in self.conns.values().filter(|c| crate::tls::peer_revoked(&c.conn, io.revoked())) {
            let peer = c.hello.as_ref().map(|(info, _)| info.clone());
            info!(
                peer = %peer.as_ref().map(|p| p.id.short().to_string()).unwrap_or_default(),
                name = %crate::tls::peer_cert_name(&c.conn),
                addr = %c.conn.remote_address(),
                "certificate revoked: closing the connection"
            );
            c.conn.close(close::REVOKED.into(), b"certificate revoked");
            crate::metrics::Counters::add(&io.plane().counters.revoked_closed, 1);
            ids.extend(peer.map(|p| p.id));
        }
        ids
    }

    fn command(&self, conn: ConnId, cmd: ConnCmd) {
        if let Some(io) = self.conns.get(&conn) {
            let _ = io.cmds.send(cmd);
        }
    }

    fn activate(&mut self, io: &impl Io, conn: ConnId, peer: NodeId, peers: Vec<PeerAddrs>) {
        let Some(c) = self.conns.get(&conn) else { return };
        let Some((info, ctl)) = c.hello.clone() else { return };
        let queue = Arc::new(SendQueue::new(io.queue_limit(), io.express_max()));
        let writer_lock = Arc::new(tokio::sync::Mutex::new(()));
        let drain = Arc::new(Drain::default());
        let link = Link {
            info: info.clone(),
            direction: c.dir,
            queue: queue.clone(),
            conn: c.conn.clone(),
            ctl,
            writer_lock: writer_lock.clone(),
            drain: drain.clone(),
        };
        let mut peers = io.wire_peers(peers);
        peers.extend(io.introduce());
        let ninfo = io.plane().add_link(peer, link, peers);
        // A new neighbour learns the revocation list in force (it ignores an older one).
        if let Some(list) = io.revoked().list() {
            io.plane().push_revocations_to(list.as_der(), io.revoked(), Some(peer));
        }
        crate::metrics::Counters::add(&io.plane().counters.neighbours_found, 1);
        let n = self.mesh.neighbour_count();
        info!(peer = %peer.short(), name = %ninfo.name, addr = %ninfo.addr, direction = %c.dir, neighbours = n, "neighbour found");
        self.command(conn, ConnCmd::Start(Start { info, queue: Some((queue, writer_lock)), drain }));
        io.neighbour_event(NeighbourEvent::Found(ninfo));
    }

    fn switch(&mut self, io: &impl Io, peer: NodeId, from: ConnId, to: ConnId) {
        let Some(c) = self.conns.get(&to) else { return };
        let Some((info, ctl)) = c.hello.clone() else { return };
        let start = {
            let mut st = io.plane().state();
            let Some(link) = st.links.get_mut(&peer) else { return };
            // The old writer sends a retire and ends; its reader delivers
            // what is still in flight before the new reader does.
            link.ctl.retire();
            link.conn = c.conn.clone();
            link.ctl = ctl;
            link.direction = c.dir;
            link.info = info.clone();
            Start { info, queue: Some((link.queue.clone(), link.writer_lock.clone())), drain: link.drain.clone() }
        };
        tracing::debug!(peer = %peer.short(), from = from.0, to = to.0, "switched connection");
        self.command(to, ConnCmd::Start(start));
    }
}
