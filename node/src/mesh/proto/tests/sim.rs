//! A simulated network of [`Mesh`]es (see the parent module).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::super::*;
use crate::peers::DialFailure;

mod checks;

/// Interleavings per test.
pub(crate) const SEEDS: u64 = 500;
/// Steps per run at most (a run that does not settle fails).
const MAX_STEPS: usize = 200_000;

pub(crate) fn config() -> MeshConfig {
    MeshConfig {
        handshake_timeout: Duration::from_secs(10),
        redial_base: Duration::from_secs(1),
        redial_max: Duration::from_secs(120),
        redial_for: Duration::from_secs(7 * 24 * 3600),
        gossip_dial_delay: Duration::from_millis(500),
        allow_non_global: true,
        dial_concurrency: 4,
    }
}

#[derive(Clone, Debug)]
enum Frame {
    Hello(PeerHello),
    Event(u64),
    Peers(Vec<PeerAddrs>),
    Retire,
    /// Events sent on earlier connections (first on a switched-to one).
    Resume(u64),
    Eof,
    /// The writing end closed the connection (after what it had written).
    Closed {
        goodbye: bool,
    },
}

/// Frames in flight in each direction: `frames[i]` is written by `ends[i]`.
struct Pipe {
    ends: [(usize, ConnId); 2],
    frames: [VecDeque<Frame>; 2],
}

#[derive(Default)]
struct ConnState {
    pipe: usize,
    side: usize,
    hello_sent: bool,
    hello_got: Option<PeerHello>,
    hello_done: bool,
    /// The driver gave it a reader and a writer.
    started: bool,
    got_retire: bool,
    /// The peer's resume: events it sent before this connection.
    resume: Option<u64>,
    reader_done: bool,
    /// Wrote its retire, or closed.
    writer_done: bool,
}

struct Handshake {
    from: usize,
    attempt: Attempt,
    from_addr: SocketAddr,
    to: usize,
    /// The address dialled.
    to_addr: SocketAddr,
    /// The accepting side's connection, once the first packet arrived.
    to_conn: Option<ConnId>,
}

struct Node {
    mesh: Mesh,
    id: NodeId,
    addrs: Vec<SocketAddr>,
    alive: bool,
    conns: HashMap<ConnId, ConnState>,
    next_conn: u64,
    /// The connection writing each neighbour's queue.
    writer: HashMap<NodeId, ConnId>,
    queue: HashMap<NodeId, VecDeque<u64>>,
    delivered: HashMap<NodeId, Vec<u64>>,
    /// Events written to each neighbour, on any connection.
    written: HashMap<NodeId, u64>,
    emitted: HashMap<NodeId, u64>,
    budget: HashMap<NodeId, u64>,
    log: Vec<(Instant, Output)>,
    /// Connections dialled (the dialer's numbering).
    dials: u64,
    timers: BTreeMap<(Instant, u64), Timer>,
}

#[derive(Clone, Copy, Debug)]
enum Action {
    Arrive(usize),
    Complete(usize),
    Deliver(usize, usize),
    Write(usize, NodeId),
    Emit(usize, NodeId),
    /// A short timer (grace period, backoff, announcements) fires now.
    Fire(usize, Instant, u64),
}

pub(crate) struct Sim {
    rng: SmallRng,
    pub(crate) now: Instant,
    nodes: Vec<Node>,
    pipes: Vec<Pipe>,
    handshakes: Vec<Option<Handshake>>,
    /// Dials to nobody: they time out (due time, node, attempt).
    timeouts: BTreeMap<(Instant, u64), (usize, Attempt)>,
    seq: u64,
    pub(crate) switches: usize,
    seed: u64,
}

impl Sim {
    pub(crate) fn new(seed: u64) -> Sim {
        Sim {
            rng: SmallRng::seed_from_u64(seed),
            now: Instant::now(),
            nodes: Vec::new(),
            pipes: Vec::new(),
            handshakes: Vec::new(),
            timeouts: BTreeMap::new(),
            seq: 0,
            switches: 0,
            seed,
        }
    }

    pub(crate) fn node(&mut self, addrs: &[SocketAddr]) -> usize {
        let id = NodeId(self.rng.random());
        let mesh = Mesh::new(id, config(), self.rng.random());
        self.nodes.push(Node {
            mesh,
            id,
            addrs: addrs.to_vec(),
            alive: true,
            conns: HashMap::new(),
            next_conn: 0,
            writer: HashMap::new(),
            queue: HashMap::new(),
            delivered: HashMap::new(),
            written: HashMap::new(),
            emitted: HashMap::new(),
            budget: HashMap::new(),
            log: Vec::new(),
            dials: 0,
            timers: BTreeMap::new(),
        });
        self.nodes.len() - 1
    }

    /// `from` emits `count` events to `to` while they are neighbours.
    pub(crate) fn emit_budget(&mut self, from: usize, to: usize, count: u64) {
        let id = self.nodes[to].id;
        self.nodes[from].budget.insert(id, count);
    }

    pub(crate) fn input(&mut self, n: usize, input: Input) {
        let now = self.now;
        self.nodes[n].mesh.handle(input, now);
        self.settle();
    }

    /// Carries out every node's outputs until none is left.
    fn settle(&mut self) {
        loop {
            let mut any = false;
            for n in 0..self.nodes.len() {
                while let Some(o) = self.nodes[n].mesh.poll_output() {
                    any = true;
                    self.nodes[n].log.push((self.now, o.clone()));
                    self.apply(n, o);
                }
            }
            if !any {
                return;
            }
        }
    }

    fn new_conn(&mut self, n: usize) -> ConnId {
        self.nodes[n].next_conn += 1;
        ConnId(self.nodes[n].next_conn)
    }

    fn owner(&self, addr: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.alive && n.addrs.contains(&addr))
    }

    fn write(&mut self, n: usize, conn: ConnId, f: Frame) {
        let Some(c) = self.nodes[n].conns.get(&conn) else { return };
        if c.writer_done {
            return;
        }
        let (p, side) = (c.pipe, c.side);
        self.pipes[p].frames[side].push_back(f);
    }

    /// Ends `conn`'s writing side: a retire then the end of the stream, or a close.
    fn end_writer(&mut self, n: usize, conn: ConnId, frames: &[Frame]) {
        for f in frames {
            self.write(n, conn, f.clone());
        }
        if let Some(c) = self.nodes[n].conns.get_mut(&conn) {
            c.writer_done = true;
        }
    }

    fn stop_reading(&mut self, n: usize, conn: ConnId) {
        if let Some(c) = self.nodes[n].conns.get_mut(&conn) {
            c.reader_done = true;
        }
    }

    fn start(&mut self, n: usize, conn: ConnId) {
        if let Some(c) = self.nodes[n].conns.get_mut(&conn) {
            c.started = true;
        }
    }

    fn apply(&mut self, n: usize, o: Output) {
        match o {
            Output::Connect { attempt, addr } => match self.owner(addr) {
                Some(to) => {
                    let from_addr = self.nodes[n].addrs[0];
                    self.handshakes.push(Some(Handshake { from: n, attempt, from_addr, to, to_addr: addr, to_conn: None }));
                }
                _ => {
                    self.seq += 1;
                    self.timeouts.insert((self.now + config().handshake_timeout, self.seq), (n, attempt));
                }
            },
            Output::Abandon { attempt } => {
                let Some(i) = self.handshakes.iter().position(|h| h.as_ref().is_some_and(|h| h.from == n && h.attempt == attempt)) else {
                    return;
                };
                // Sometimes the abandon comes too late: the handshake completes anyway.
                if self.rng.random_bool(0.25) {
                    return;
                }
                let h = self.handshakes[i].take().expect("found");
                if let Some(conn) = h.to_conn {
                    let now = self.now;
                    self.nodes[h.to].mesh.handle(Input::IncomingDone { conn, result: Err(DialFailure::Refused) }, now);
                }
            }
            Output::Activate { conn, peer, peers } => {
                self.start(n, conn);
                self.nodes[n].writer.insert(peer, conn);
                self.nodes[n].queue.entry(peer).or_default();
                if !peers.is_empty() {
                    self.write(n, conn, Frame::Peers(peers));
                }
            }
            Output::Switch { peer, from, to } => {
                self.switches += 1;
                self.end_writer(n, from, &[Frame::Retire, Frame::Eof]);
                self.start(n, to);
                self.nodes[n].writer.insert(peer, to);
                let written = self.nodes[n].written.get(&peer).copied().unwrap_or(0);
                if written > 0 {
                    self.write(n, to, Frame::Resume(written));
                }
            }
            Output::RetireAtBirth { conn, .. } => {
                self.start(n, conn);
                self.end_writer(n, conn, &[Frame::Retire, Frame::Eof]);
            }
            Output::SendPeers { peer, peers } => {
                if let Some(conn) = self.nodes[n].writer.get(&peer).copied() {
                    self.write(n, conn, Frame::Peers(peers));
                }
            }
            Output::Close { conn, .. } => {
                self.end_writer(n, conn, &[Frame::Closed { goodbye: true }]);
                self.stop_reading(n, conn);
            }
            Output::Lost { peer, .. } => {
                self.nodes[n].writer.remove(&peer);
                self.nodes[n].queue.remove(&peer);
            }
            Output::Teardown { conn, how } => {
                let goodbye = matches!(how, Teardown::Lost { .. });
                self.end_writer(n, conn, &[Frame::Closed { goodbye }]);
                self.stop_reading(n, conn);
            }
            Output::ArmTimer { at, timer } => {
                self.seq += 1;
                self.nodes[n].timers.insert((at, self.seq), timer);
            }
        }
    }

    fn hello(&self, n: usize, conn: ConnId, dial: u64) -> PeerHello {
        let c = &self.nodes[n].conns[&conn];
        let (other, _) = self.pipes[c.pipe].ends[1 - c.side];
        PeerHello { id: self.nodes[n].id, addrs: self.nodes[n].addrs.clone(), observed: self.nodes[other].addrs[0], dial }
    }

    fn hello_done(&mut self, n: usize, conn: ConnId) {
        let c = self.nodes[n].conns.get_mut(&conn).expect("known");
        if c.hello_sent && !c.hello_done && !c.reader_done {
            if let Some(h) = c.hello_got.clone() {
                c.hello_done = true;
                let now = self.now;
                self.nodes[n].mesh.handle(Input::Hello { conn, hello: h }, now);
            }
        }
    }

    fn actions(&self, with_timers: bool) -> Vec<Action> {
        let mut v = Vec::new();
        for (i, h) in self.handshakes.iter().enumerate() {
            if let Some(h) = h {
                v.push(if h.to_conn.is_none() { Action::Arrive(i) } else { Action::Complete(i) });
            }
        }
        for (p, pipe) in self.pipes.iter().enumerate() {
            for dir in 0..2 {
                let Some(f) = pipe.frames[dir].front() else { continue };
                let (n, conn) = pipe.ends[1 - dir];
                let c = &self.nodes[n].conns[&conn];
                let ready = c.reader_done
                    || match f {
                        Frame::Hello(_) => true,
                        Frame::Closed { .. } if !c.hello_done => true,
                        Frame::Event(_) => c.started && c.resume.is_none_or(|k| self.delivered_from(n, conn) >= k),
                        _ => c.started,
                    };
                if ready {
                    v.push(Action::Deliver(p, dir));
                }
            }
        }
        for (n, node) in self.nodes.iter().enumerate() {
            for (peer, conn) in &node.writer {
                let c = &node.conns[conn];
                if c.started && !c.writer_done && node.queue.get(peer).is_some_and(|q| !q.is_empty()) {
                    v.push(Action::Write(n, *peer));
                }
                if node.budget.get(peer).is_some_and(|b| *b > 0) {
                    v.push(Action::Emit(n, *peer));
                }
            }
            if with_timers {
                if let Some(((at, seq), _)) = node.timers.iter().find(|(_, t)| matches!(t, Timer::Dial(_) | Timer::Announce)) {
                    v.push(Action::Fire(n, *at, *seq));
                }
            }
        }
        v
    }

    /// Events `n` delivered from the peer at the other end of `conn`.
    fn delivered_from(&self, n: usize, conn: ConnId) -> u64 {
        let c = &self.nodes[n].conns[&conn];
        let peer = self.nodes[self.pipes[c.pipe].ends[1 - c.side].0].id;
        self.nodes[n].delivered.get(&peer).map_or(0, |v| v.len() as u64)
    }

    fn act(&mut self, a: Action) {
        let now = self.now;
        match a {
            Action::Arrive(i) => {
                let (to, from_addr) = {
                    let h = self.handshakes[i].as_ref().expect("live");
                    (h.to, h.from_addr)
                };
                let conn = self.new_conn(to);
                self.handshakes[i].as_mut().expect("live").to_conn = Some(conn);
                self.nodes[to].mesh.handle(Input::IncomingStarted { conn, addr: from_addr }, now);
            }
            Action::Complete(i) => {
                let h = self.handshakes[i].take().expect("live");
                let to_conn = h.to_conn.expect("arrived");
                let from_conn = self.new_conn(h.from);
                let p = self.pipes.len();
                self.pipes.push(Pipe { ends: [(h.from, from_conn), (h.to, to_conn)], frames: Default::default() });
                self.nodes[h.from].conns.insert(from_conn, ConnState { pipe: p, side: 0, ..Default::default() });
                self.nodes[h.to].conns.insert(to_conn, ConnState { pipe: p, side: 1, ..Default::default() });
                // The accepting side sends its hello unasked.
                let hello = self.hello(h.to, to_conn, 0);
                self.write(h.to, to_conn, Frame::Hello(hello));
                self.nodes[h.to].conns.get_mut(&to_conn).expect("new").hello_sent = true;
                self.nodes[h.to].mesh.handle(Input::IncomingDone { conn: to_conn, result: Ok(()) }, now);
                // The dialer numbers the connection and sends its hello at once.
                self.nodes[h.from].dials += 1;
                let dial = self.nodes[h.from].dials;
                let hello = self.hello(h.from, from_conn, dial);
                self.write(h.from, from_conn, Frame::Hello(hello));
                self.nodes[h.from].conns.get_mut(&from_conn).expect("new").hello_sent = true;
                self.nodes[h.from]
                    .mesh
                    .handle(Input::Dialled { attempt: h.attempt, result: Ok(Dialled { conn: from_conn, dial, remote: h.to_addr }) }, now);
                self.hello_done(h.from, from_conn);
            }
            Action::Deliver(p, dir) => {
                let f = self.pipes[p].frames[dir].pop_front().expect("ready");
                let (n, conn) = self.pipes[p].ends[1 - dir];
                if self.nodes[n].conns[&conn].reader_done {
                    return;
                }
                let peer_id = self.nodes[self.pipes[p].ends[dir].0].id;
                match f {
                    Frame::Hello(h) => {
                        self.nodes[n].conns.get_mut(&conn).expect("known").hello_got = Some(h);
                        self.hello_done(n, conn);
                    }
                    Frame::Event(seq) => self.nodes[n].delivered.entry(peer_id).or_default().push(seq),
                    Frame::Peers(peers) => self.nodes[n].mesh.handle(Input::Gossip { conn, peers }, now),
                    Frame::Retire => self.nodes[n].conns.get_mut(&conn).expect("known").got_retire = true,
                    Frame::Resume(k) => self.nodes[n].conns.get_mut(&conn).expect("known").resume = Some(k),
                    Frame::Eof => {
                        let retired = self.nodes[n].conns[&conn].got_retire;
                        self.stop_reading(n, conn);
                        let end = if retired { ReaderEnd::Retired } else { ReaderEnd::Eof };
                        self.nodes[n].mesh.handle(Input::ReaderEnded { conn, end }, now);
                    }
                    Frame::Closed { goodbye } => {
                        let hello_done = self.nodes[n].conns[&conn].hello_done;
                        self.stop_reading(n, conn);
                        let input = if hello_done {
                            Input::ReaderEnded { conn, end: ReaderEnd::Closed { goodbye, reason: "closed".into() } }
                        } else {
                            Input::HelloFailed { conn }
                        };
                        self.nodes[n].mesh.handle(input, now);
                    }
                }
            }
            Action::Write(n, peer) => {
                let conn = self.nodes[n].writer[&peer];
                let seq = self.nodes[n].queue.get_mut(&peer).and_then(|q| q.pop_front()).expect("ready");
                *self.nodes[n].written.entry(peer).or_default() += 1;
                self.write(n, conn, Frame::Event(seq));
            }
            Action::Emit(n, peer) => {
                let node = &mut self.nodes[n];
                *node.budget.get_mut(&peer).expect("ready") -= 1;
                let seq = node.emitted.entry(peer).or_default();
                node.queue.get_mut(&peer).expect("neighbour").push_back(*seq);
                *seq += 1;
            }
            Action::Fire(n, at, seq) => {
                let timer = self.nodes[n].timers.remove(&(at, seq)).expect("armed");
                self.now = self.now.max(at);
                let now = self.now;
                self.nodes[n].mesh.handle(Input::Timer(timer), now);
            }
        }
        self.settle();
    }

    /// Fires the earliest due timer (or dial timeout) up to `until`; false if none.
    fn advance(&mut self, until: Instant) -> bool {
        let node_timer = self.nodes.iter().enumerate().filter_map(|(n, node)| node.timers.first_key_value().map(|(k, _)| (*k, n))).min();
        let timeout = self.timeouts.first_key_value().map(|(k, _)| *k);
        match (node_timer, timeout) {
            (Some((k, n)), t) if t.is_none_or(|t| k <= t) => {
                if k.0 > until {
                    return false;
                }
                let timer = self.nodes[n].timers.remove(&k).expect("first");
                self.now = self.now.max(k.0);
                let now = self.now;
                self.nodes[n].mesh.handle(Input::Timer(timer), now);
            }
            (_, Some(k)) => {
                if k.0 > until {
                    return false;
                }
                let (n, attempt) = self.timeouts.remove(&k).expect("first");
                self.now = self.now.max(k.0);
                let now = self.now;
                self.nodes[n].mesh.handle(Input::Dialled { attempt, result: Err(DialFailure::TimedOut) }, now);
            }
            _ => return false,
        }
        self.settle();
        true
    }

    /// `k` random steps (no timers).
    pub(crate) fn steps(&mut self, k: usize) {
        for _ in 0..k {
            let acts = self.actions(false);
            if acts.is_empty() {
                return;
            }
            let a = acts[self.rng.random_range(0..acts.len())];
            self.act(a);
        }
    }

    /// Runs until nothing is left to do (timers included) within a simulated hour.
    pub(crate) fn run(&mut self) {
        self.run_for(Duration::from_secs(3600));
    }

    pub(crate) fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        for _ in 0..MAX_STEPS {
            let acts = self.actions(true);
            if acts.is_empty() {
                if !self.advance(until) {
                    return;
                }
                continue;
            }
            let a = acts[self.rng.random_range(0..acts.len())];
            self.act(a);
        }
        panic!("seed {}: no quiescence after {MAX_STEPS} steps", self.seed);
    }
}
