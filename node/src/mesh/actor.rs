//! The one task that drives the mesh state machine ([`super::proto::Mesh`]):
//! it turns what the other tasks report into [`Input`]s, carries out the
//! [`Output`]s (spawning dials, commanding connection tasks, updating the
//! data plane, reporting neighbours), and keeps the timers. Tasks report to
//! it and never call each other.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::endpoint;
use super::inbox::Msg;
use super::link::{ConnCmd, ConnCtl, Drain, Start};
use super::proto::{Attempt, CloseWhy, ConnId, Input, Mesh, Output, Timer};
use super::NeighbourEvent;
use crate::event::PeerInfo;
use crate::id::NodeId;
use crate::peers::Direction;
use crate::plane::Link;
use crate::queue::SendQueue;
use crate::shared::Inner;
use crate::wire::{close, PeerAddrs};

/// A connection as the actor holds it.
struct ConnIo {
    conn: quinn::Connection,
    dir: Direction,
    cmds: mpsc::UnboundedSender<ConnCmd>,
    /// Its certificate's name and control, once the hellos are over.
    hello: Option<(Arc<PeerInfo>, Arc<ConnCtl>)>,
}

/// Messages handled per wake at most before timers and outputs.
const MSG_BATCH: usize = 64;

pub(crate) struct Actor {
    inner: Arc<Inner>,
    mesh: Mesh,
    rx: mpsc::Receiver<Msg>,
    /// Armed timers, by due time (and arming order).
    timers: BTreeMap<(Instant, u64), Timer>,
    timer_seq: u64,
    conns: HashMap<ConnId, ConnIo>,
    attempts: HashMap<Attempt, CancellationToken>,
}

impl Actor {
    pub(crate) fn new(inner: Arc<Inner>, mesh: Mesh, rx: mpsc::Receiver<Msg>) -> Actor {
        Actor { inner, mesh, rx, timers: BTreeMap::new(), timer_seq: 0, conns: HashMap::new(), attempts: HashMap::new() }
    }

    pub(crate) async fn run(mut self) {
        // One timer for the earliest armed one, reset when that changes.
        let sleep = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(sleep);
        let mut armed_at: Option<Instant> = None;
        loop {
            let next = self.timers.first_key_value().map(|((at, _), _)| *at);
            if next != armed_at {
                if let Some(at) = next {
                    sleep.as_mut().reset(tokio::time::Instant::from_std(at));
                }
                armed_at = next;
            }
            tokio::select! {
                msg = self.rx.recv() => {
                    let Some(msg) = msg else { return };
                    self.on_msg(msg);
                    // What else is waiting, in one go (bounded, so timers
                    // are not starved by a busy inbox).
                    for _ in 0..MSG_BATCH {
                        let Ok(msg) = self.rx.try_recv() else { break };
                        self.on_msg(msg);
                    }
                }
                () = &mut sleep, if armed_at.is_some() => {}
            }
            self.fire_timers();
            // Figures first: whoever sees a neighbour in the data plane
            // (added by `carry_out`) sees it counted too.
            self.inner.publish_mesh(self.mesh.counters(), self.mesh.observed());
            self.carry_out();
        }
    }

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

    fn on_msg(&mut self, msg: Msg) {
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
            Msg::Leave => Input::Leave,
        };
        self.mesh.handle(input, now);
    }

    fn carry_out(&mut self) {
        while let Some(out) = self.mesh.poll_output() {
            match out {
                Output::Connect { attempt, addr } => {
                    let cancel = self.inner.cancel.child_token();
                    self.attempts.insert(attempt, cancel.clone());
                    let inner = self.inner.clone();
                    self.inner.spawn(async move {
                        cancel.run_until_cancelled(endpoint::dial(inner, attempt, addr)).await;
                    });
                }
                Output::Abandon { attempt } => {
                    if let Some(c) = self.attempts.remove(&attempt) {
                        c.cancel();
                    }
                }
                Output::Activate { conn, peer, peers } => self.activate(conn, peer, peers),
                Output::Switch { peer, from, to } => self.switch(peer, from, to),
                Output::RetireAtBirth { conn, peer } => {
                    let drain = self.inner.plane.state().links.get(&peer).map(|l| l.drain.clone()).unwrap_or_default();
                    if let Some((info, ctl)) = self.conns.get(&conn).and_then(|io| io.hello.clone()) {
                        ctl.retire();
                        self.command(conn, ConnCmd::Start(Start { info, queue: None, drain }));
                    }
                }
                Output::SendPeers { peer, peers } => self.inner.plane.push_peers(peer, peers),
                Output::Close { conn, why } => {
                    let (code, reason): (u32, &'static [u8]) = match why {
                        CloseWhy::SelfConnect => (close::SELF_CONNECT, b"self"),
                        CloseWhy::Abandoned => (close::GOODBYE, b"dial given up"),
                        CloseWhy::Leaving => (close::GOODBYE, b"leaving"),
                    };
                    self.command(conn, ConnCmd::Close { code, reason });
                    self.conns.remove(&conn);
                }
                Output::Lost { peer, conn, reason } => {
                    // Leaving: the queue stays open for leave's flush.
                    let _ = conn;
                    if let Some((info, n)) = self.inner.plane.remove_link(peer, !self.inner.is_leaving()) {
                        info!(peer = %peer.short(), name = %info.name, addr = %info.addr, reason = %reason, neighbours = n, "neighbour lost");
                        let _ = self.inner.events.send(NeighbourEvent::Lost { info, reason: reason.to_string() });
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

    fn command(&self, conn: ConnId, cmd: ConnCmd) {
        if let Some(io) = self.conns.get(&conn) {
            let _ = io.cmds.send(cmd);
        }
    }

    fn activate(&mut self, conn: ConnId, peer: NodeId, peers: Vec<PeerAddrs>) {
        let Some(io) = self.conns.get(&conn) else { return };
        let Some((info, ctl)) = io.hello.clone() else { return };
        let queue = Arc::new(SendQueue::new(self.inner.settings.queue_limit));
        let writer_lock = Arc::new(tokio::sync::Mutex::new(()));
        let drain = Arc::new(Drain::default());
        let link = Link {
            info: info.clone(),
            direction: io.dir,
            queue: queue.clone(),
            conn: io.conn.clone(),
            ctl,
            writer_lock: writer_lock.clone(),
            drain: drain.clone(),
        };
        let ninfo = self.inner.plane.add_link(peer, link, peers);
        let n = self.mesh.neighbour_count();
        info!(peer = %peer.short(), name = %ninfo.name, addr = %ninfo.addr, direction = %io.dir, neighbours = n, "neighbour found");
        self.command(conn, ConnCmd::Start(Start { info, queue: Some((queue, writer_lock)), drain }));
        let _ = self.inner.events.send(NeighbourEvent::Found(ninfo));
    }

    fn switch(&mut self, peer: NodeId, from: ConnId, to: ConnId) {
        let Some(io) = self.conns.get(&to) else { return };
        let Some((info, ctl)) = io.hello.clone() else { return };
        let start = {
            let mut st = self.inner.plane.state();
            let Some(link) = st.links.get_mut(&peer) else { return };
            // The old writer sends a retire and ends; its reader delivers
            // what is still in flight before the new reader does.
            link.ctl.retire();
            link.conn = io.conn.clone();
            link.ctl = ctl;
            link.direction = io.dir;
            link.info = info.clone();
            Start { info, queue: Some((link.queue.clone(), link.writer_lock.clone())), drain: link.drain.clone() }
        };
        tracing::debug!(peer = %peer.short(), from = from.0, to = to.0, "switched connection");
        self.command(to, ConnCmd::Start(start));
    }
}
