//! The running node: QUIC endpoint, connections, gossip, re-dial, and the
//! shared state behind [`crate::Bus`].
//!
//! Protocol decisions live in sans-I/O modules ([`crate::wire`],
//! [`crate::subs`], [`crate::peers`]); this module only moves bytes and
//! runs the tasks: one accept loop, one dial task per attempt, per
//! connection one reader and one writer, one dispatcher per bus.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::{broadcast, mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use partybus_discovery::{DiscoveryContext, DiscoveryEvent, DiscoverySink, StopHandle, StopSignal};

use crate::config::{Config, FullPolicy};
use crate::event::{BatchBuilder, Deliveries, DeliveryTx, Listener, ListenerLookup, PeerInfo};
use crate::id::NodeId;
use crate::name::NameError;
use crate::peers::{self, canonical, Direction, Verdict};
use crate::queue::SendQueue;
use crate::subs::{NameCache, SubTable};
use crate::wire::{self, close, Frame, FrameDecoder, Hello, PeerAddrs, WireSub};

/// A neighbour as the library reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NeighbourInfo {
    pub id: NodeId,
    /// CN of its certificate.
    pub name: String,
    /// Its address as seen from here.
    pub addr: SocketAddr,
    /// Who dialled.
    pub direction: Direction,
    /// Events dropped for it under [`FullPolicy::Drop`].
    pub dropped: u64,
}

/// Neighbour events a receiver may fall behind before it gets
/// `RecvError::Lagged`. tokio writes every slot of a broadcast channel when
/// it is made (about 150 bytes each here): 1024 slots cost each node ~150 KiB
/// of resident memory, 2 % of an idle node, for a channel that is mostly idle.
pub const NEIGHBOUR_EVENTS: usize = 256;

/// Found / lost notifications.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NeighbourEvent {
    Found(NeighbourInfo),
    Lost { info: NeighbourInfo, reason: String },
}

/// Errors from `join`.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsSetupError),
    #[error("cannot bind a UDP port: tried {tried} on {bind}: {last}; pick free ports with --port (e.g. 4816-4819, or 0 for any)")]
    Bind { tried: String, bind: String, last: std::io::Error },
    #[error("cannot start the QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
}

/// Connection counters of one node since it joined (see [`crate::Bus::conn_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConnStats {
    /// QUIC handshakes this node started (dials).
    pub dials: u64,
    /// Of those, completed (TLS done).
    pub dials_ok: u64,
    /// Of those, timed out (no answer within the handshake timeout).
    pub dials_timed_out: u64,
    /// Of those, given up by the second dialer of a pair because the first
    /// dialer's handshake reached it meanwhile.
    pub dials_abandoned: u64,
    /// Incoming handshakes (accepted by the endpoint).
    pub accepts: u64,
    /// Of those, completed (TLS done).
    pub accepts_ok: u64,
    /// Of those, timed out.
    pub accepts_timed_out: u64,
    /// Connections that completed TLS and hellos and became the neighbour's connection.
    pub activated: u64,
    /// Duplicate connections (a second connection to a neighbour) retired or replacing the older one.
    pub duplicates: u64,
}

/// The QUIC path to one neighbour, as quinn sees it now (see [`crate::Bus::path`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PathStats {
    /// Smoothed round-trip time.
    pub rtt: std::time::Duration,
    /// UDP payload size in use: 1200 at first on the Internet, up to 1452 as MTU discovery
    /// proceeds; [`crate::tls::loopback_mtu`] from the start for peers on this host.
    pub mtu: u16,
    /// QUIC packets sent to it, and of those, lost (by our reckoning).
    pub sent_packets: u64,
    pub lost_packets: u64,
    /// Congestion window in bytes.
    pub cwnd: u64,
}

#[derive(Default)]
struct Counters {
    dials: AtomicU64,
    dials_ok: AtomicU64,
    dials_timed_out: AtomicU64,
    dials_abandoned: AtomicU64,
    accepts: AtomicU64,
    accepts_ok: AtomicU64,
    accepts_timed_out: AtomicU64,
    activated: AtomicU64,
    duplicates: AtomicU64,
}

impl Counters {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    fn snapshot(&self) -> ConnStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ConnStats {
            dials: g(&self.dials),
            dials_ok: g(&self.dials_ok),
            dials_timed_out: g(&self.dials_timed_out),
            dials_abandoned: g(&self.dials_abandoned),
            accepts: g(&self.accepts),
            accepts_ok: g(&self.accepts_ok),
            accepts_timed_out: g(&self.accepts_timed_out),
            activated: g(&self.activated),
            duplicates: g(&self.duplicates),
        }
    }
}

type SlotQueue = Mutex<peers::DialSlots<tokio::sync::oneshot::Sender<DialSlot>>>;

/// One of a node's outgoing handshake slots ([`peers::DialSlots`]), held
/// for the TLS handshake of a dial; the next waiting dial gets it on drop.
struct DialSlot {
    slots: Arc<SlotQueue>,
    second: bool,
    armed: bool,
}

impl Drop for DialSlot {
    fn drop(&mut self) {
        if self.armed {
            release_slot(&self.slots, self.second);
        }
    }
}

fn release_slot(slots: &Arc<SlotQueue>, second: bool) {
    let mut gone = vec![second];
    while let Some(second) = gone.pop() {
        let next = relock(slots).release(second);
        for (tx, second) in next {
            if let Err(mut slot) = tx.send(DialSlot { slots: slots.clone(), second, armed: true }) {
                // That dial is gone (cancelled): its slot goes to the next one.
                slot.armed = false;
                gone.push(second);
            }
        }
    }
}

/// Waits for a handshake slot; `second`: the second dial of a pair (queued
/// behind first dials).
async fn dial_slot(inner: &Inner, second: bool) -> DialSlot {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let now = relock(&inner.dial_slots).request(tx, second);
    match now {
        Some(_) => DialSlot { slots: inner.dial_slots.clone(), second, armed: true },
        None => rx.await.unwrap_or(DialSlot { slots: inner.dial_slots.clone(), second, armed: false }),
    }
}

/// Per-connection control shared by its reader and writer.
struct ConnCtl {
    /// Set when this connection is being retired in favour of another.
    retiring: AtomicBool,
    retire: Notify,
    /// Never sent on: its sender lives in this connection's writer task, so
    /// it closes when the writer ends, however it ends (abort included).
    writer_alive: watch::Receiver<()>,
}

impl ConnCtl {
    /// The control, and the sender to move into the writer task.
    fn new() -> (ConnCtl, watch::Sender<()>) {
        let (alive_tx, writer_alive) = watch::channel(());
        (ConnCtl { retiring: AtomicBool::new(false), retire: Notify::new(), writer_alive }, alive_tx)
    }

    /// Resolves once the writer has ended. After leave() finished the queue
    /// that means: everything sent and acknowledged, or the connection broke.
    async fn writer_ended(&self) {
        let mut rx = self.writer_alive.clone();
        while rx.changed().await.is_ok() {}
    }
}

/// Readers of retiring connections still delivering: the active reader
/// holds its events back until they are done, to keep emit order.
#[derive(Default)]
struct Drain {
    count: AtomicUsize,
    done: Notify,
}

struct Neighbour {
    info: Arc<PeerInfo>,
    direction: Direction,
    queue: Arc<SendQueue>,
    conn: quinn::Connection,
    ctl: Arc<ConnCtl>,
    /// The active connection's standing in the duplicate rule.
    rank: peers::Rank,
    /// Addresses to tell others about it.
    gossip_addrs: Vec<SocketAddr>,
    /// One writer at a time drains `queue` (a replacement waits for the old).
    writer_lock: Arc<tokio::sync::Mutex<()>>,
    drain: Arc<Drain>,
}

struct Known {
    addrs: Vec<SocketAddr>,
    via_gossip: bool,
}

pub(crate) struct State {
    pub(crate) subs: SubTable,
    listeners: HashMap<u64, Arc<Listener>>,
    listener_cache: NameCache<Arc<Vec<Arc<Listener>>>>,
    /// Where `emit` sends each name: queues resolved (cleared by `changed`).
    emit_cache: NameCache<Arc<EmitRoute>>,
    /// The last name emitted: a hot loop on one name skips the hashing.
    emit_last: Option<Arc<EmitRoute>>,
    neighbours: HashMap<NodeId, Neighbour>,
    observers: Vec<(String, watch::Sender<usize>)>,
    known: HashMap<NodeId, Known>,
    /// Nodes that said goodbye. Ids are new at every start, so gossip about
    /// these (still in flight when they left) is stale: never dial them.
    departed: HashSet<NodeId>,
    dialing_addrs: HashSet<SocketAddr>,
    dialing_ids: HashSet<NodeId>,
    /// Incoming handshakes in progress, by remote address (see [`PendingIncoming`]).
    incoming: HashMap<SocketAddr, u32>,
    self_addrs: HashSet<SocketAddr>,
    external: Vec<SocketAddr>,
    observed: Vec<SocketAddr>,
    /// New neighbours to announce to the others (batched).
    announce: Vec<(NodeId, Vec<SocketAddr>)>,
    announce_scheduled: bool,
}

/// Queues one event frame: small payloads copied into the queue's buffer
/// (many frames per allocation), large ones by reference.
fn push_event(q: &SendQueue, flen: usize, name: &str, payload: &Bytes) -> Result<crate::queue::Pushed, crate::queue::PushError> {
    if payload.len() >= crate::queue::BY_REFERENCE {
        q.push_with_tail(flen - payload.len(), |b| wire::put_event_head(b, name, payload.len()), payload)
    } else {
        q.push_with(flen, |b| wire::put_event(b, name, payload))
    }
}

/// How far [`Inner::emit_now`] got.
pub(crate) enum Emitted {
    /// Queued everywhere. `batch_ready`: a queue passed
    /// [`crate::queue::BATCH`]; the emitter should yield so that its writer
    /// can send while it goes on emitting.
    Done { count: usize, batch_ready: bool },
    /// Some queue was full (or the local dispatcher busy).
    Wait(EmitWait),
}

/// What is left of an emit that must wait: see [`Inner::emit_wait`].
pub(crate) struct EmitWait {
    /// Listeners reached so far.
    count: usize,
    /// The queues that were full, with their listener counts.
    full: Vec<(Arc<SendQueue>, usize, NodeId)>,
    /// The local delivery, when the dispatcher's channel was full.
    local: Option<Deliveries>,
}

/// A route with the neighbours' queues resolved: what `emit` needs.
struct EmitRoute {
    name: Box<str>,
    local: bool,
    local_counted: usize,
    remote: Vec<(Arc<SendQueue>, usize, NodeId)>,
}

impl State {
    /// The route of `name`. Only names that passed validation enter the
    /// caches, so a hit needs no validation (the emit loop's common case).
    fn emit_route(&mut self, name: &str) -> Result<Arc<EmitRoute>, NameError> {
        if let Some(r) = &self.emit_last {
            if &*r.name == name {
                return Ok(r.clone());
            }
        }
        if self.emit_cache.get(name).is_none() {
            crate::name::validate_name(name)?;
        }
        let State { emit_cache, subs, neighbours, .. } = self;
        let r = emit_cache.get_or_insert_with(name, || {
            let route = subs.route(name);
            let remote = route.remote.iter().filter_map(|(peer, n)| neighbours.get(peer).map(|nb| (nb.queue.clone(), *n, *peer))).collect();
            Arc::new(EmitRoute { name: name.into(), local: !route.local.is_empty(), local_counted: route.local_counted, remote })
        });
        self.emit_last = Some(r.clone());
        Ok(r)
    }
}

/// Settings copied out of [`Config`] (the rest is consumed by `join`).
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub handshake_timeout: Duration,
    pub redial_base: Duration,
    pub redial_max: Duration,
    pub redial_for: Duration,
    pub gossip_dial_delay: Duration,
    pub queue_limit: usize,
    pub full_policy: FullPolicy,
    pub max_event_size: usize,
    pub allow_non_global: bool,
    pub advertise: Vec<SocketAddr>,
}

pub(crate) struct Inner {
    pub(crate) id: NodeId,
    pub(crate) me: Arc<PeerInfo>,
    pub(crate) fingerprint: String,
    pub(crate) settings: Settings,
    /// Taken (and so dropped, releasing the UDP port) by `leave`.
    endpoint: Mutex<Option<quinn::Endpoint>>,
    /// QUIC settings for peers on this host (large packets from the start, see `tls::transport`).
    server_on_host: Arc<quinn::ServerConfig>,
    client_on_host: quinn::ClientConfig,
    pub(crate) local_addr: SocketAddr,
    state: Mutex<State>,
    generation: AtomicU64,
    pub(crate) next_sub_id: AtomicU64,
    pub(crate) dispatch_tx: DeliveryTx,
    pub(crate) events: broadcast::Sender<NeighbourEvent>,
    count_tx: watch::Sender<usize>,
    reachable_tx: watch::Sender<Vec<SocketAddr>>,
    pub(crate) closing: AtomicBool,
    discovery_stop: StopHandle,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    shutdown: watch::Sender<bool>,
    counters: Counters,
    /// Numbers our outgoing connections for the duplicate rule
    /// ([`wire::Hello::dial`]).
    dial_seq: AtomicU64,
    /// Notified whenever an incoming handshake starts or ends (`State::incoming`).
    incoming_changed: Notify,
    dial_slots: Arc<SlotQueue>,
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // State is only mutated in short, panic-free sections; a poisoned lock
    // (a panic elsewhere while holding it) still holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Addresses of local interfaces (link-local excluded), with `port`.
fn interface_addrs(local: SocketAddr) -> Vec<SocketAddr> {
    let port = local.port();
    if !local.ip().is_unspecified() {
        return vec![canonical(local)];
    }
    let mut out = Vec::new();
    if let Ok(ifs) = if_addrs::get_if_addrs() {
        for i in ifs {
            let ip = i.ip();
            if peers::scope(ip) == peers::Scope::LinkLocal {
                continue;
            }
            if local.is_ipv4() && ip.is_ipv6() {
                continue;
            }
            out.push(SocketAddr::new(ip, port));
        }
    }
    if out.is_empty() {
        out.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    // Global first, then private, then loopback: the order others try them in.
    out.sort_by_key(|a| std::cmp::Reverse(peers::scope(a.ip())));
    out.dedup();
    out
}

impl Inner {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        relock(&self.state)
    }

    fn endpoint(&self) -> Option<quinn::Endpoint> {
        relock(&self.endpoint).clone()
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Call after any change to subscriptions or neighbours (with the lock held).
    pub(crate) fn changed(&self, st: &mut State) {
        st.listener_cache.clear();
        st.emit_cache.clear();
        st.emit_last = None;
        self.generation.fetch_add(1, Ordering::AcqRel);
        st.observers.retain(|(name, tx)| {
            if tx.is_closed() {
                return false;
            }
            let n = st.subs.route(name).counted();
            tx.send_if_modified(|v| {
                let m = *v != n;
                *v = n;
                m
            });
            true
        });
    }

    /// Addresses we tell peers in our hello.
    fn advertised(&self) -> Vec<SocketAddr> {
        // Interfaces are read (a system call) before taking the state lock.
        let ifs = interface_addrs(self.local_addr);
        let mut v = self.settings.advertise.clone();
        v.extend(self.state().external.iter().copied());
        v.extend(ifs);
        // A handful of addresses: a linear check beats building a set (once per connection).
        let mut out: Vec<SocketAddr> = Vec::with_capacity(v.len());
        for a in v {
            if !out.contains(&a) {
                out.push(a);
            }
        }
        out
    }

    fn update_reachable(&self) {
        let allow = self.settings.allow_non_global;
        let list: Vec<SocketAddr> = self
            .advertised()
            .into_iter()
            .filter(|a| match peers::scope(a.ip()) {
                peers::Scope::Global => true,
                peers::Scope::Private => allow,
                _ => false,
            })
            .collect();
        self.reachable_tx.send_if_modified(|v| {
            let m = *v != list;
            *v = list;
            m
        });
    }

    pub(crate) fn neighbours(&self) -> Vec<NeighbourInfo> {
        let st = self.state();
        let mut v: Vec<NeighbourInfo> = st.neighbours.values().map(neighbour_info).collect();
        v.sort_by_key(|n| n.id);
        v
    }

    pub(crate) fn path(&self, id: NodeId) -> Option<PathStats> {
        let st = self.state();
        let p = st.neighbours.get(&id)?.conn.stats().path;
        Some(PathStats { rtt: p.rtt, mtu: p.current_mtu, sent_packets: p.sent_packets, lost_packets: p.lost_packets, cwnd: p.cwnd })
    }

    pub(crate) fn conn_stats(&self) -> ConnStats {
        self.counters.snapshot()
    }

    pub(crate) fn observed(&self) -> Vec<SocketAddr> {
        self.state().observed.clone()
    }

    pub(crate) fn neighbour_count_rx(&self) -> watch::Receiver<usize> {
        self.count_tx.subscribe()
    }

    pub(crate) fn add_observer(&self, name: String) -> watch::Receiver<usize> {
        let mut st = self.state();
        let n = st.subs.route(&name).counted();
        let (tx, rx) = watch::channel(n);
        st.observers.push((name, tx));
        rx
    }

    /// Registers a local listener and tells every neighbour.
    pub(crate) fn add_listener(&self, l: Listener, spy: bool) {
        let mut st = self.state();
        let sub = WireSub { id: l.id, selector: l.selector.as_str().to_owned(), spy };
        st.subs.add_local(l.id, l.selector.clone(), spy);
        st.listeners.insert(l.id, Arc::new(l));
        let frame = Frame::Subscribe(vec![sub]);
        for nb in st.neighbours.values() {
            let _ = nb.queue.push_control(|b| wire::put_frame(b, &frame));
        }
        self.changed(&mut st);
    }

    /// Removes local listeners; returns how many existed.
    pub(crate) fn remove_listeners(&self, ids: &[u64]) -> usize {
        let mut st = self.state();
        let mut gone = Vec::new();
        for id in ids {
            if st.listeners.remove(id).is_some() {
                st.subs.remove_local(*id);
                gone.push(*id);
            }
        }
        if !gone.is_empty() {
            let frame = Frame::Unsubscribe(gone.clone());
            for nb in st.neighbours.values() {
                let _ = nb.queue.push_control(|b| wire::put_frame(b, &frame));
            }
            self.changed(&mut st);
        }
        gone.len()
    }

    pub(crate) fn listener_ids(&self, selector: Option<&str>) -> Vec<u64> {
        self.state().subs.local_ids(selector)
    }

    /// One `PeerInfo` per non-spy listener of `name`.
    pub(crate) fn listeners_of(&self, name: &str) -> Vec<PeerInfo> {
        let mut st = self.state();
        let route = st.subs.route(name);
        let mut out = vec![(*self.me).clone(); route.local_counted];
        for (peer, n) in &route.remote {
            if let Some(nb) = st.neighbours.get(peer) {
                out.extend(std::iter::repeat_n((*nb.info).clone(), *n));
            }
        }
        out
    }

    /// Queues an event for every interested neighbour and the local
    /// dispatcher where there is room now, without waiting: the whole emit
    /// in the common case. Fails only for an invalid name.
    ///
    /// Kept synchronous on purpose: the emit loop is the hot path, and only
    /// a full queue needs a future ([`Inner::emit_wait`]).
    pub(crate) fn emit_now(&self, name: &str, payload: &Bytes) -> Result<Emitted, NameError> {
        let flen = wire::event_frame_len(name, payload);
        let mut full: Vec<(Arc<SendQueue>, usize, NodeId)> = Vec::new();
        let mut batch_ready = false;
        let (count, local) = {
            let mut st = self.state();
            let route = st.emit_route(name)?;
            let mut count = route.local_counted;
            for (queue, n, peer) in &route.remote {
                match push_event(queue, flen, name, payload) {
                    Ok(p) => {
                        count += n;
                        batch_ready |= p.batch_ready;
                    }
                    Err(crate::queue::PushError::Full) => full.push((queue.clone(), *n, *peer)),
                    Err(crate::queue::PushError::Closed) => {}
                }
            }
            (count, route.local)
        };
        let mut local_wait = None;
        if local {
            let d = Deliveries::one(self.me.clone(), name.into(), payload.clone());
            match self.dispatch_tx.try_send(d) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                Err(mpsc::error::TrySendError::Full(v)) => local_wait = Some(v),
            }
        }
        if full.is_empty() && local_wait.is_none() {
            return Ok(Emitted::Done { count, batch_ready });
        }
        Ok(Emitted::Wait(EmitWait { count, full, local: local_wait }))
    }

    /// The rest of an emit that found a queue full: waits as the full
    /// policy says; resolves the final count.
    pub(crate) async fn emit_wait(&self, name: &str, payload: Bytes, rest: EmitWait) -> usize {
        let EmitWait { mut count, full, local } = rest;
        if let Some(v) = local {
            let _ = self.dispatch_tx.send(v).await;
        }
        let flen = wire::event_frame_len(name, &payload);
        for (q, n, peer) in full {
            let deadline = match self.settings.full_policy {
                FullPolicy::Drop => {
                    q.note_dropped();
                    debug!(peer = %peer.short(), event = name, "send queue full: event dropped for this neighbour (policy drop)");
                    continue;
                }
                FullPolicy::Block => None,
                FullPolicy::Disconnect(d) => Some(tokio::time::Instant::now() + d),
            };
            loop {
                let notified = q.space_notified();
                match push_event(&q, flen, name, &payload) {
                    Ok(_) => {
                        count += n;
                        break;
                    }
                    Err(crate::queue::PushError::Closed) => break,
                    Err(crate::queue::PushError::Full) => match deadline {
                        None => notified.await,
                        Some(dl) => {
                            if tokio::time::timeout_at(dl, notified).await.is_err() {
                                warn!(peer = %peer.short(), "neighbour stuck with a full send queue too long: disconnecting (policy disconnect)");
                                self.disconnect(peer, close::STUCK, "stuck");
                                break;
                            }
                        }
                    },
                }
            }
        }
        count
    }

    fn disconnect(&self, peer: NodeId, code: u32, why: &str) {
        let st = self.state();
        if let Some(nb) = st.neighbours.get(&peer) {
            nb.conn.close(code.into(), why.as_bytes());
        }
    }

    fn spawn(self: &Arc<Self>, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let h = tokio::spawn(fut);
        let mut t = relock(&self.tasks);
        t.retain(|h| !h.is_finished());
        t.push(h);
    }
}

fn neighbour_info(nb: &Neighbour) -> NeighbourInfo {
    NeighbourInfo {
        id: nb.info.id,
        name: nb.info.name.clone(),
        addr: nb.info.addr.unwrap_or_else(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)),
        direction: nb.direction,
        dropped: nb.queue.dropped(),
    }
}

impl ListenerLookup for Inner {
    fn lookup(&self, name: &str) -> (u64, Arc<Vec<Arc<Listener>>>) {
        let mut st = self.state();
        let gen = self.generation();
        let State { listener_cache, subs, listeners, .. } = &mut *st;
        let l = listener_cache
            .get_or_insert_with(name, || Arc::new(subs.route(name).local.iter().filter_map(|id| listeners.get(id).cloned()).collect()));
        (gen, l)
    }
    fn generation(&self) -> u64 {
        Inner::generation(self)
    }
    fn remove(&self, id: u64) {
        self.remove_listeners(&[id]);
    }
}

/// Starts a node. See [`crate::Bus::join`].
pub(crate) async fn start(cfg: Config) -> Result<Arc<Inner>, JoinError> {
    let server = crate::tls::server_config(&cfg)?;
    let client = crate::tls::client_config(&cfg)?;
    let (server_on_host, client_on_host) = crate::tls::on_host(&cfg, server.clone(), client.clone());
    let sock = crate::udp::bind(cfg.bind, cfg.port.ports(), cfg.socket_buffer)?;
    let runtime = quinn::default_runtime().ok_or_else(|| JoinError::Endpoint(std::io::Error::other("no async runtime")))?;
    let mut endpoint = quinn::Endpoint::new(crate::tls::endpoint_config(), Some(server), sock, runtime).map_err(JoinError::Endpoint)?;
    endpoint.set_default_client_config(client);
    let local_addr = endpoint.local_addr().map_err(JoinError::Endpoint)?;

    let id = NodeId::random();
    let me = Arc::new(PeerInfo { id, name: cfg.identity.name().to_owned(), addr: None, local: true });
    let (dispatch_tx, dispatch_rx) = mpsc::channel(256);
    let (events, _) = broadcast::channel(NEIGHBOUR_EVENTS);
    let (count_tx, _) = watch::channel(0);
    let (reachable_tx, reachable_rx) = watch::channel(Vec::new());
    let (discovery_stop, stop_signal) = StopSignal::new();
    let (shutdown, _) = watch::channel(false);
    let settings = Settings {
        handshake_timeout: cfg.handshake_timeout,
        redial_base: cfg.redial_base,
        redial_max: cfg.redial_max,
        redial_for: cfg.redial_for,
        gossip_dial_delay: cfg.gossip_dial_delay,
        queue_limit: cfg.queue_limit,
        full_policy: cfg.full_policy,
        max_event_size: cfg.max_event_size,
        allow_non_global: cfg.allow_non_global,
        advertise: cfg.advertise.clone(),
    };
    let inner = Arc::new(Inner {
        id,
        me,
        fingerprint: cfg.hood.fingerprint().to_owned(),
        settings,
        endpoint: Mutex::new(Some(endpoint)),
        server_on_host: Arc::new(server_on_host),
        client_on_host,
        local_addr,
        state: Mutex::new(State {
            subs: SubTable::new(cfg.max_subscriptions_per_peer),
            listeners: HashMap::new(),
            listener_cache: NameCache::new(),
            emit_cache: NameCache::new(),
            emit_last: None,
            neighbours: HashMap::new(),
            observers: Vec::new(),
            known: HashMap::new(),
            departed: HashSet::new(),
            dialing_addrs: HashSet::new(),
            dialing_ids: HashSet::new(),
            incoming: HashMap::new(),
            self_addrs: HashSet::new(),
            external: Vec::new(),
            observed: Vec::new(),
            announce: Vec::new(),
            announce_scheduled: false,
        }),
        generation: AtomicU64::new(0),
        next_sub_id: AtomicU64::new(1),
        dispatch_tx,
        events,
        count_tx,
        reachable_tx,
        closing: AtomicBool::new(false),
        discovery_stop,
        tasks: Mutex::new(Vec::new()),
        shutdown,
        counters: Counters::default(),
        dial_seq: AtomicU64::new(0),
        incoming_changed: Notify::new(),
        dial_slots: Arc::new(Mutex::new(peers::DialSlots::new(cfg.dial_concurrency))),
    });
    inner.update_reachable();
    info!(id = %id, name = %inner.me.name, addr = %local_addr, hood = %inner.fingerprint, "joined the hood");

    // Dispatcher.
    {
        let lookup: Arc<dyn ListenerLookup> = inner.clone();
        let mut sd = inner.shutdown.subscribe();
        inner.spawn(async move {
            tokio::select! {
                _ = crate::event::run_dispatcher(dispatch_rx, lookup) => {}
                _ = sd.wait_for(|s| *s) => {}
            }
        });
    }
    // Accept loop.
    {
        let me = inner.clone();
        inner.spawn(accept_loop(me));
    }
    // Discovery services.
    let (sink, mut disc_rx) = DiscoverySink::channel(1024);
    for svc in cfg.discovery {
        let ctx = DiscoveryContext {
            hood_fingerprint: inner.fingerprint.clone(),
            node_id: id.to_hex(),
            cert_name: inner.me.name.clone(),
            port: local_addr.port(),
            reachable: reachable_rx.clone(),
            allow_non_global: inner.settings.allow_non_global,
        };
        debug!(service = svc.name(), "starting discovery");
        let fut = svc.start(ctx, sink.clone(), stop_signal.clone());
        inner.spawn(fut);
    }
    drop(sink);
    {
        let me = inner.clone();
        let mut sd = inner.shutdown.subscribe();
        inner.spawn(async move {
            loop {
                let ev = tokio::select! {
                    ev = disc_rx.recv() => ev,
                    _ = sd.wait_for(|s| *s) => None,
                };
                let Some(ev) = ev else { return };
                match ev {
                    DiscoveryEvent::Candidate { addr, source } => {
                        debug!(%addr, %source, "candidate");
                        dial(&me, addr, None, true);
                    }
                    DiscoveryEvent::External { addr, source } => {
                        info!(%addr, %source, "reachable at external address");
                        {
                            let mut st = me.state();
                            if !st.external.contains(&addr) {
                                st.external.push(addr);
                            }
                        }
                        me.update_reachable();
                    }
                    DiscoveryEvent::ExternalLost { addr, source } => {
                        info!(%addr, %source, "external address withdrawn");
                        me.state().external.retain(|a| *a != addr);
                        me.update_reachable();
                    }
                }
            }
        });
    }
    Ok(inner)
}

async fn accept_loop(inner: Arc<Inner>) {
    let Some(endpoint) = inner.endpoint() else { return };
    while let Some(incoming) = endpoint.accept().await {
        if inner.closing.load(Ordering::Acquire) {
            incoming.refuse();
            continue;
        }
        let me = inner.clone();
        let remote = incoming.remote_address();
        Counters::bump(&inner.counters.accepts);
        let pending = PendingIncoming::new(&inner, canonical(remote));
        let connecting =
            if canonical(remote).ip().is_loopback() { incoming.accept_with(inner.server_on_host.clone()) } else { incoming.accept() };
        tokio::spawn(async move {
            let connecting = async move { connecting?.await };
            let conn = match tokio::time::timeout(me.settings.handshake_timeout, connecting).await {
                Ok(Ok(c)) => {
                    Counters::bump(&me.counters.accepts_ok);
                    c
                }
                // The dialer's application closed the handshake: a second
                // dialer giving up its dial because ours reached it first
                // (`dial_known`), or a node leaving. Nothing to warn about.
                Ok(Err(quinn::ConnectionError::ConnectionClosed(c))) if c.error_code == quinn::TransportErrorCode::APPLICATION_ERROR => {
                    debug!(remote = %canonical(remote), "the dialer gave its handshake up");
                    return;
                }
                Ok(Err(e)) => {
                    warn!(remote = %canonical(remote), reason = %e, "refused incoming connection");
                    return;
                }
                Err(_) => {
                    Counters::bump(&me.counters.accepts_timed_out);
                    warn!(remote = %canonical(remote), "incoming handshake timed out");
                    return;
                }
            };
            run_connection(me, conn, Direction::In, None, Handshake::Incoming(pending)).await;
        });
    }
}

/// An incoming handshake in progress, from its first packet until the
/// connection is a neighbour (or failed): the second dialer of a pair waits
/// for it instead of opening a crossing connection ([`peers::second_dial`]).
struct PendingIncoming {
    inner: Arc<Inner>,
    addr: SocketAddr,
}

impl PendingIncoming {
    fn new(inner: &Arc<Inner>, addr: SocketAddr) -> PendingIncoming {
        *inner.state().incoming.entry(addr).or_default() += 1;
        inner.incoming_changed.notify_waiters();
        PendingIncoming { inner: inner.clone(), addr }
    }
}

impl Drop for PendingIncoming {
    fn drop(&mut self) {
        let mut st = self.inner.state();
        if let Some(n) = st.incoming.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                st.incoming.remove(&self.addr);
            }
        }
        drop(st);
        self.inner.incoming_changed.notify_waiters();
    }
}

/// What a connection holds until its hellos are over (then dropped, which
/// tells the dialling logic).
#[allow(dead_code)] // The fields are held for their `Drop`.
enum Handshake {
    /// Accepted: second dialers wait for it ([`PendingIncoming`]).
    Incoming(PendingIncoming),
    /// Dialled: the claims on the address and, for a peer learnt through
    /// gossip, on its id ([`DialClaim`]).
    Dialled { addr: DialClaim, id: Option<DialClaim> },
}

/// What a dial claims, so that no second dial starts for it.
#[derive(Clone, Copy)]
enum DialTarget {
    /// An address (`State::dialing_addrs`).
    Addr(SocketAddr),
    /// A node learnt through gossip (`State::dialing_ids`).
    Id(NodeId),
}

/// A node's claim to be dialling a target, released when dropped. Taken
/// before dialling and, when the dial succeeds, held until the new
/// connection's hellos are over: until then, gossip or discovery naming the
/// same target must not start a second dial (under load, the hellos of a
/// mesh forming took long enough that this made most duplicate connections).
/// Every way out of a dial (failure, giving up, the task dropped at
/// shutdown) releases it.
struct DialClaim {
    inner: Arc<Inner>,
    target: DialTarget,
}

impl DialClaim {
    /// Claims `target` in `st` (the state, locked by the caller); `None` if
    /// it is claimed already. A claim locks the state when dropped: never
    /// drop one while holding `st`.
    fn take(inner: &Arc<Inner>, st: &mut State, target: DialTarget) -> Option<DialClaim> {
        let fresh = match target {
            DialTarget::Addr(a) => st.dialing_addrs.insert(a),
            DialTarget::Id(id) => st.dialing_ids.insert(id),
        };
        fresh.then(|| DialClaim { inner: inner.clone(), target })
    }
}

impl Drop for DialClaim {
    fn drop(&mut self) {
        let mut st = self.inner.state();
        match self.target {
            DialTarget::Addr(a) => st.dialing_addrs.remove(&a),
            DialTarget::Id(id) => st.dialing_ids.remove(&id),
        };
    }
}

/// Is a handshake from one of `addrs` (a peer's addresses) under way?
fn handshake_from(st: &State, addrs: &[SocketAddr]) -> bool {
    addrs.iter().any(|a| st.incoming.contains_key(a))
}

/// Dials `addr` unless already connected or dialling there. `expect` is the
/// node id we hope to find (from gossip), to avoid parallel dials. With
/// `retry`, a dial that times out is tried again with backoff
/// ([`peers::retry_dial`]): a seed too busy to answer a burst of joins in
/// time is tried again within seconds, not at the next discovery round.
pub(crate) fn dial(inner: &Arc<Inner>, addr: SocketAddr, expect: Option<NodeId>, retry: bool) {
    let addr = canonical(addr);
    if inner.closing.load(Ordering::Acquire) || addr.port() == 0 || addr.ip().is_unspecified() {
        return;
    }
    let claim = {
        let mut st = inner.state();
        if !dial_wanted(inner, &st, addr, expect) {
            return;
        }
        match DialClaim::take(inner, &mut st, DialTarget::Addr(addr)) {
            Some(c) => c,
            None => return,
        }
    };
    let me = inner.clone();
    tokio::spawn(async move {
        let mut backoff = peers::Backoff::new(me.settings.redial_base, me.settings.redial_max);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let slot = dial_slot(&me, false).await;
            if !dial_wanted(&me, &me.state(), addr, expect) {
                break;
            }
            let res = dial_once(&me, addr).await;
            drop(slot);
            match res {
                Ok(conn) => {
                    run_connection(me, conn, Direction::Out, Some(addr), Handshake::Dialled { addr: claim, id: None }).await;
                    return;
                }
                Err((failure, e)) => {
                    debug!(%addr, error = %e, attempts, "dial failed");
                    if !retry || !peers::retry_dial(failure, attempts) {
                        break;
                    }
                }
            }
            let d = backoff.next_delay(rand::random::<f64>());
            tokio::time::sleep(d).await;
            if !dial_wanted(&me, &me.state(), addr, expect) {
                break;
            }
        }
        // `claim` is released here.
    });
}

/// Is a dial to `addr` (hoping to find `expect`) still useful?
fn dial_wanted(inner: &Inner, st: &State, addr: SocketAddr, expect: Option<NodeId>) -> bool {
    !inner.closing.load(Ordering::Acquire)
        && !st.self_addrs.contains(&addr)
        && !st.neighbours.values().any(|n| n.info.addr == Some(addr))
        && !expect.is_some_and(|id| st.neighbours.contains_key(&id) || st.departed.contains(&id))
}

async fn dial_once(inner: &Arc<Inner>, addr: SocketAddr) -> Result<quinn::Connection, (peers::DialFailure, String)> {
    use peers::DialFailure::{Refused, TimedOut};
    let endpoint = inner.endpoint().ok_or((Refused, "the node has left".to_owned()))?;
    let connecting = if addr.ip().is_loopback() {
        endpoint.connect_with(inner.client_on_host.clone(), addr, "partybus")
    } else {
        endpoint.connect(addr, "partybus")
    }
    .map_err(|e| (Refused, e.to_string()))?;
    Counters::bump(&inner.counters.dials);
    match tokio::time::timeout(inner.settings.handshake_timeout, connecting).await {
        Ok(Ok(c)) => {
            Counters::bump(&inner.counters.dials_ok);
            Ok(c)
        }
        Ok(Err(e)) => {
            // TLS refusals are worth a warning: they name the reason.
            if matches!(e, quinn::ConnectionError::TransportError(_) | quinn::ConnectionError::ConnectionClosed(_)) {
                warn!(%addr, reason = %e, "connection refused");
            }
            let failure = if matches!(e, quinn::ConnectionError::TimedOut) { TimedOut } else { Refused };
            Err((failure, e.to_string()))
        }
        Err(_) => {
            Counters::bump(&inner.counters.dials_timed_out);
            Err((TimedOut, "handshake timed out".into()))
        }
    }
}

/// Dials a node learnt through gossip, trying its addresses in order, after
/// `delay` (the second dialer's grace period, [`peers::gossip_dial_delay`]).
/// `id_claim` is the caller's claim on `id` ([`DialTarget::Id`]).
fn dial_known(inner: &Arc<Inner>, id_claim: DialClaim, id: NodeId, addrs: Vec<SocketAddr>, delay: Duration) {
    let me = inner.clone();
    tokio::spawn(async move {
        let addrs: Vec<SocketAddr> = addrs.into_iter().map(canonical).collect();
        let second = !delay.is_zero();
        if second {
            tokio::time::sleep(delay).await;
        }
        let mut backoff = peers::Backoff::new(me.settings.redial_base, me.settings.redial_max);
        let mut attempts = 0;
        // Since when we wait for a handshake from the peer (bounded by the handshake timeout).
        let mut waiting_since: Option<Instant> = None;
        'attempts: loop {
            attempts += 1;
            let mut timed_out = false;
            for &addr in &addrs {
                let slot = dial_slot(&me, second).await;
                let decision = {
                    let st = me.state();
                    // Connected meanwhile, or it said goodbye while we waited: do not dial it.
                    let done = me.closing.load(Ordering::Acquire) || st.neighbours.contains_key(&id) || st.departed.contains(&id);
                    // Its own dial reached us (the second dialer's, after its grace
                    // period, or the first dialer's while our dial waited for a slot):
                    // wait for it rather than open a crossing connection.
                    let handshaking = handshake_from(&st, &addrs);
                    let waited = waiting_since.map_or(Duration::ZERO, |t| t.elapsed());
                    peers::second_dial(done, handshaking, waited, me.settings.handshake_timeout)
                };
                match decision {
                    peers::SecondDial::Done => break 'attempts,
                    peers::SecondDial::Wait => {
                        let since = *waiting_since.get_or_insert_with(Instant::now);
                        drop(slot);
                        incoming_changes(&me, &addrs, false, since + me.settings.handshake_timeout).await;
                        attempts -= 1;
                        continue 'attempts;
                    }
                    peers::SecondDial::Dial => {}
                }
                let addr_claim = {
                    let mut st = me.state();
                    if st.self_addrs.contains(&addr) {
                        None
                    } else {
                        DialClaim::take(&me, &mut st, DialTarget::Addr(addr))
                    }
                };
                let Some(addr_claim) = addr_claim else { continue };
                // As the second dialer, give our dial up if the first
                // dialer's reaches us meanwhile (it was slow, not absent):
                // its connection would win the tie-break anyway, and two
                // handshakes cost twice the CPU. We then wait for its outcome
                // as above, within the same bound.
                let budget_ends = waiting_since.unwrap_or_else(Instant::now) + me.settings.handshake_timeout;
                let res = if second {
                    tokio::select! {
                        r = dial_once(&me, addr) => Some(r),
                        () = incoming_changes(&me, &addrs, true, budget_ends) => None,
                    }
                } else {
                    Some(dial_once(&me, addr).await)
                };
                drop(slot);
                match res {
                    Some(Ok(conn)) => {
                        let claims = Handshake::Dialled { addr: addr_claim, id: Some(id_claim) };
                        run_connection(me, conn, Direction::Out, Some(addr), claims).await;
                        return;
                    }
                    None => {
                        drop(addr_claim);
                        Counters::bump(&me.counters.dials_abandoned);
                        debug!(%addr, peer = %id.short(), "dial given up: the peer's own dial reached us");
                        waiting_since.get_or_insert_with(Instant::now);
                        attempts -= 1;
                        continue 'attempts;
                    }
                    Some(Err((failure, e))) => {
                        drop(addr_claim);
                        timed_out |= failure == peers::DialFailure::TimedOut;
                        debug!(%addr, peer = %id.short(), error = %e, attempts, "dial failed");
                    }
                }
            }
            if !timed_out || !peers::retry_dial(peers::DialFailure::TimedOut, attempts) {
                break;
            }
            tokio::time::sleep(backoff.next_delay(rand::random::<f64>())).await;
        }
        drop(id_claim); // no more dials for this peer from this task
    });
}

/// Resolves when an incoming handshake from one of `addrs` is under way
/// (`under_way`) or when none is any more (`!under_way`), if that happens
/// before `until`: at `until` it resolves too if `!under_way` (the wait is
/// over: dial), and never if `under_way` (the dial goes on).
async fn incoming_changes(inner: &Inner, addrs: &[SocketAddr], under_way: bool, until: Instant) {
    loop {
        if Instant::now() >= until {
            if under_way {
                std::future::pending::<()>().await;
            }
            return;
        }
        // Registered before the check, so that a change between the two is not missed.
        let changed = inner.incoming_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if handshake_from(&inner.state(), addrs) == under_way {
            return;
        }
        tokio::select! {
            () = changed => {}
            () = tokio::time::sleep_until(until.into()) => {}
        }
    }
}

/// Re-dials a lost neighbour with exponential backoff and jitter.
fn redial(inner: &Arc<Inner>, id: NodeId, addrs: Vec<SocketAddr>) {
    if addrs.is_empty() {
        return;
    }
    let me = inner.clone();
    tokio::spawn(async move {
        let start = Instant::now();
        let mut backoff = peers::Backoff::new(me.settings.redial_base, me.settings.redial_max);
        let mut shutdown = me.shutdown.subscribe();
        loop {
            let d = backoff.next_delay(rand::random::<f64>());
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            if me.closing.load(Ordering::Acquire) || start.elapsed() > me.settings.redial_for {
                return;
            }
            {
                let st = me.state();
                // Back already (it dialled us), or someone else now lives at
                // its address (it restarted with a new id): done.
                if st.neighbours.contains_key(&id) || st.neighbours.values().any(|n| n.info.addr.is_some_and(|a| addrs.contains(&a))) {
                    return;
                }
            }
            debug!(peer = %id.short(), attempt = backoff.attempts(), "re-dialling lost neighbour");
            for addr in &addrs {
                dial(&me, *addr, Some(id), false);
            }
        }
    });
}

/// Reads frames until the hello.
async fn read_hello(recv: &mut quinn::RecvStream, dec: &mut FrameDecoder) -> Result<Hello, String> {
    loop {
        if let Some(body) = dec.next_frame().map_err(|e| e.to_string())? {
            return match wire::parse(&body).map_err(|e| e.to_string())? {
                Frame::Hello(h) => Ok(h),
                other => Err(format!("expected hello, got {other:?}")),
            };
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(None) => return Err("stream ended before hello".into()),
            Ok(Some(chunk)) => dec.push(chunk.bytes),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Runs one connection from handshake to end.
async fn run_connection(inner: Arc<Inner>, conn: quinn::Connection, dir: Direction, dialed: Option<SocketAddr>, until_hellos: Handshake) {
    let remote = canonical(conn.remote_address());
    let cert_name = crate::tls::peer_cert_name(&conn);
    let max_frame = inner.settings.max_event_size + wire::FRAME_OVERHEAD;

    // 1. Hellos, both ways, within the handshake timeout.
    // Numbered when the QUIC handshake is done: a later connection gets a
    // larger number, which is what the duplicate rule needs.
    let dial = match dir {
        Direction::Out => inner.dial_seq.fetch_add(1, Ordering::Relaxed) + 1,
        Direction::In => 0,
    };
    let hello_out = Hello { id: inner.id, port: inner.local_addr.port(), addrs: inner.advertised(), observed: remote, dial };
    let handshake = async {
        let mut send = conn.open_uni().await.map_err(|e| e.to_string())?;
        let mut buf = BytesMut::new();
        wire::put_preamble(&mut buf);
        wire::put_frame(&mut buf, &Frame::Hello(hello_out));
        send.write_all(&buf).await.map_err(|e| e.to_string())?;
        let mut recv = conn.accept_uni().await.map_err(|e| e.to_string())?;
        let mut dec = FrameDecoder::new(max_frame);
        let hello = read_hello(&mut recv, &mut dec).await?;
        Ok::<_, String>((send, recv, dec, hello))
    };
    let (send, recv, dec, hello) = match tokio::time::timeout(inner.settings.handshake_timeout, handshake).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            if e.contains("version") || e.contains("magic") {
                warn!(%remote, error = %e, "protocol mismatch");
                conn.close(close::VERSION.into(), e.as_bytes());
            } else {
                debug!(%remote, error = %e, "hello failed");
                conn.close(close::PROTOCOL.into(), b"hello failed");
            }
            return;
        }
        Err(_) => {
            debug!(%remote, "hello timed out");
            conn.close(close::PROTOCOL.into(), b"hello timeout");
            return;
        }
    };
    let peer = hello.id;
    if peer == inner.id {
        debug!(%remote, "connected to myself; remembering the address");
        let mut st = inner.state();
        st.self_addrs.insert(remote);
        if let Some(d) = dialed {
            st.self_addrs.insert(d);
        }
        drop(st);
        conn.close(close::SELF_CONNECT.into(), b"self");
        return;
    }

    // 2. Decide, and set the neighbour up.
    let rank = peers::Rank::new(inner.id, peer, dir, if dir == Direction::Out { dial } else { hello.dial });
    let (ctl, writer_alive) = ConnCtl::new();
    let ctl = Arc::new(ctl);
    let info = Arc::new(PeerInfo { id: peer, name: cert_name.clone(), addr: Some(remote), local: false });
    let mut gossip_addrs = vec![remote];
    for a in &hello.addrs {
        let a = canonical(*a);
        if !gossip_addrs.contains(&a) {
            gossip_addrs.push(a);
        }
    }
    let (_verdict, queue, writer_lock, drain) = {
        let mut st = inner.state();
        let obs = canonical(hello.observed);
        if !st.observed.contains(&obs) {
            st.observed.insert(0, obs);
            st.observed.truncate(8);
        }
        let verdict = peers::decide(st.neighbours.get(&peer).map(|n| n.rank), rank);
        Counters::bump(if verdict == Verdict::Activate { &inner.counters.activated } else { &inner.counters.duplicates });
        match verdict {
            Verdict::Activate => {
                let queue = Arc::new(SendQueue::new(inner.settings.queue_limit));
                let drain = Arc::new(Drain::default());
                let writer_lock = Arc::new(tokio::sync::Mutex::new(()));
                // What the new neighbour must know first: our subscriptions,
                // then the rest of the mesh.
                let subs = st.subs.local_wire();
                if !subs.is_empty() {
                    let _ = queue.push_control(|b| wire::put_frame(b, &Frame::Subscribe(subs)));
                }
                let others: Vec<PeerAddrs> = st
                    .neighbours
                    .values()
                    .map(|n| PeerAddrs {
                        id: n.info.id,
                        addrs: n
                            .gossip_addrs
                            .iter()
                            .copied()
                            .filter(|a| peers::may_gossip(*a, remote, inner.settings.allow_non_global))
                            .collect(),
                    })
                    .filter(|p| !p.addrs.is_empty())
                    .collect();
                if !others.is_empty() {
                    let _ = queue.push_control(|b| wire::put_frame(b, &Frame::Peers(others)));
                }
                // Announce it to the others, unless the mesh already heard of
                // it through gossip (then whoever told us told everyone).
                let heard = st.known.get(&peer).is_some_and(|k| k.via_gossip);
                if !heard {
                    // Batched: a burst of joins costs one frame per neighbour.
                    st.announce.push((peer, gossip_addrs.clone()));
                    if !st.announce_scheduled {
                        st.announce_scheduled = true;
                        let me = inner.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(ANNOUNCE_BATCH).await;
                            flush_announcements(&me);
                        });
                    }
                }
                // For re-dialling: only addresses that mean something from here.
                let redial_addrs =
                    gossip_addrs.iter().copied().filter(|a| peers::may_gossip(*a, remote, inner.settings.allow_non_global)).collect();
                st.known.insert(peer, Known { addrs: redial_addrs, via_gossip: heard });
                st.neighbours.insert(
                    peer,
                    Neighbour {
                        info: info.clone(),
                        direction: dir,
                        queue: queue.clone(),
                        conn: conn.clone(),
                        ctl: ctl.clone(),
                        rank,
                        gossip_addrs: gossip_addrs.clone(),
                        writer_lock: writer_lock.clone(),
                        drain: drain.clone(),
                    },
                );
                let n = st.neighbours.len();
                inner.changed(&mut st);
                inner.count_tx.send_replace(n);
                let ninfo = neighbour_info(st.neighbours.get(&peer).expect("just inserted"));
                drop(st);
                info!(peer = %peer.short(), name = %cert_name, addr = %remote, direction = %dir, neighbours = n, "neighbour found");
                let _ = inner.events.send(NeighbourEvent::Found(ninfo));
                (verdict, Some(queue), Some(writer_lock), drain)
            }
            Verdict::Replace => {
                let nb = st.neighbours.get_mut(&peer).expect("decide saw it");
                debug!(peer = %peer.short(), "second connection wins; retiring the older one");
                nb.ctl.retiring.store(true, Ordering::Release);
                nb.ctl.retire.notify_one();
                nb.drain.count.fetch_add(1, Ordering::AcqRel);
                nb.conn = conn.clone();
                nb.ctl = ctl.clone();
                nb.rank = rank;
                nb.direction = dir;
                nb.info = info.clone();
                (verdict, Some(nb.queue.clone()), Some(nb.writer_lock.clone()), nb.drain.clone())
            }
            Verdict::Retire => {
                let nb = st.neighbours.get(&peer).expect("decide saw it");
                debug!(peer = %peer.short(), "duplicate connection; retiring it");
                ctl.retiring.store(true, Ordering::Release);
                nb.drain.count.fetch_add(1, Ordering::AcqRel);
                (verdict, None, None, nb.drain.clone())
            }
        }
    };

    // The handshake is over: a second dialer waiting for it decides now.
    drop(until_hellos);

    // 3. Writer.
    let mut writer = {
        let ctl = ctl.clone();
        let conn2 = conn.clone();
        tokio::spawn(async move {
            // Dropped with the task, even one aborted before it first ran.
            let _alive = writer_alive;
            run_writer(send, queue, writer_lock, ctl, conn2).await
        })
    };

    // 4. Reader, until the stream or the connection ends.
    let outcome = run_reader(&inner, peer, &info, recv, dec, &ctl, &drain, remote).await;

    // 5. Clean up.
    if matches!(outcome, ReaderEnd::Retired) && !ctl.retiring.load(Ordering::Acquire) {
        // The peer switched to another connection that has not reached us
        // yet: give it time to arrive before calling the neighbour lost.
        let deadline = Instant::now() + inner.settings.handshake_timeout;
        while !ctl.retiring.load(Ordering::Acquire) && Instant::now() < deadline && !inner.closing.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let was_retiring = ctl.retiring.load(Ordering::Acquire);
    if was_retiring {
        drain.count.fetch_sub(1, Ordering::AcqRel);
        drain.done.notify_waiters();
        // Both sides are done with this stream; let the writer's finish be
        // acknowledged, then close quietly.
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        conn.close(close::DUPLICATE.into(), b"duplicate");
        return;
    }
    // The active connection ended: the neighbour is lost.
    let reason = match &outcome {
        ReaderEnd::Eof => "left".to_owned(),
        ReaderEnd::Retired => "switched connection, but the new one never came".to_owned(),
        ReaderEnd::Conn(e) => describe_close(e),
        ReaderEnd::Protocol(e) => {
            warn!(peer = %peer.short(), name = %cert_name, addr = %remote, error = %e, "peer broke the protocol; disconnecting");
            conn.close(close::PROTOCOL.into(), e.as_bytes());
            format!("protocol error: {e}")
        }
    };
    if matches!(outcome, ReaderEnd::Retired) && inner.closing.load(Ordering::Acquire) {
        // We leave while the peer was switching away from this connection.
        // It still reads here until we end our stream, and leave() has
        // finished our queue: let the writer send what emit counted (leave
        // bounds its own wait, then closes the endpoint).
        let _ = tokio::time::timeout(LEAVE_FLUSH, &mut writer).await;
    }
    writer.abort();
    // No re-dial after a goodbye, or after the peer broke the protocol (it
    // would only break it again; static discovery still retries it).
    let goodbye = matches!(&outcome, ReaderEnd::Eof | ReaderEnd::Protocol(_))
        || matches!(&outcome, ReaderEnd::Conn(quinn::ConnectionError::ApplicationClosed(c)) if c.error_code == close::GOODBYE.into())
        || matches!(&outcome, ReaderEnd::Conn(quinn::ConnectionError::LocallyClosed));
    let lost = {
        let mut st = inner.state();
        let is_active = st.neighbours.get(&peer).is_some_and(|n| Arc::ptr_eq(&n.ctl, &ctl));
        if is_active {
            let nb = st.neighbours.remove(&peer).expect("checked");
            nb.queue.close();
            st.subs.remove_peer(peer);
            let n = st.neighbours.len();
            inner.changed(&mut st);
            inner.count_tx.send_replace(n);
            Some((neighbour_info(&nb), n, st.known.get(&peer).map(|k| k.addrs.clone()).unwrap_or_default()))
        } else {
            None
        }
    };
    if let Some((ninfo, n, addrs)) = lost {
        info!(peer = %peer.short(), name = %cert_name, addr = %remote, reason = %reason, neighbours = n, "neighbour lost");
        let _ = inner.events.send(NeighbourEvent::Lost { info: ninfo, reason });
        conn.close(close::GOODBYE.into(), b"bye");
        if !goodbye && !inner.closing.load(Ordering::Acquire) {
            redial(&inner, peer, addrs);
        } else {
            let mut st = inner.state();
            st.known.remove(&peer);
            if st.departed.len() >= 4096 {
                st.departed.clear(); // bounded; a stale dial is harmless, only wasteful
            }
            st.departed.insert(peer);
        }
    }
}

fn describe_close(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) if c.error_code == close::GOODBYE.into() => "left".into(),
        quinn::ConnectionError::ApplicationClosed(c) if c.error_code == close::PROTOCOL.into() => {
            format!("closed by peer: protocol error ({})", String::from_utf8_lossy(&c.reason))
        }
        quinn::ConnectionError::ApplicationClosed(c) if c.error_code == close::STUCK.into() => {
            "closed by peer: stuck (its send queue to us stayed full too long; its full policy is disconnect)".into()
        }
        quinn::ConnectionError::TimedOut => "timed out (no answer within the idle timeout)".into(),
        other => other.to_string(),
    }
}

enum ReaderEnd {
    Eof,
    /// The peer retired this connection (it switches to another one).
    Retired,
    Conn(quinn::ConnectionError),
    Protocol(String),
}

#[allow(clippy::too_many_arguments)]
async fn run_reader(
    inner: &Arc<Inner>,
    peer: NodeId,
    info: &Arc<PeerInfo>,
    mut recv: quinn::RecvStream,
    mut dec: FrameDecoder,
    ctl: &Arc<ConnCtl>,
    drain: &Arc<Drain>,
    remote: SocketAddr,
) -> ReaderEnd {
    let mut batch = BatchBuilder::new();
    let max_event = inner.settings.max_event_size;
    let mut got_retire = false;
    loop {
        // Decode everything buffered.
        loop {
            let body = match dec.next_frame() {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e) => return ReaderEnd::Protocol(e.to_string()),
            };
            // Events take the direct path; every other frame (and any odd
            // encoding of an event) goes through the full parser.
            let (name, offset) = match wire::event_parts(&body) {
                Some(parts) => parts,
                None => match wire::parse(&body) {
                    Ok(Frame::Event { name, payload }) => (name.as_bytes(), body.len() - payload.len()),
                    Ok(frame) => match handle_control(inner, peer, remote, frame) {
                        Ok(retire) => {
                            got_retire |= retire;
                            continue;
                        }
                        Err(e) => return ReaderEnd::Protocol(e),
                    },
                    Err(e) => return ReaderEnd::Protocol(e.to_string()),
                },
            };
            let size = name.len() + body.len() - offset;
            if size > max_event {
                return ReaderEnd::Protocol(format!("event of {size} bytes over the limit"));
            }
            if let Err(e) = batch.set_name(name) {
                return ReaderEnd::Protocol(e);
            }
            // The payload ends the frame: trim the body to it rather than
            // take another reference to the chunk.
            let mut payload = body;
            payload.advance(offset);
            batch.push(payload);
        }
        if let Some(deliveries) = batch.take(info) {
            // Keep emit order across a connection switch: events still
            // arriving on a retiring connection go first.
            if !ctl.retiring.load(Ordering::Acquire) {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                while drain.count.load(Ordering::Acquire) > 0 {
                    let n = drain.done.notified();
                    if drain.count.load(Ordering::Acquire) == 0 || tokio::time::timeout_at(deadline, n).await.is_err() {
                        break;
                    }
                }
            }
            if inner.dispatch_tx.send(deliveries).await.is_err() {
                return ReaderEnd::Eof;
            }
        }
        match recv.read_chunk(256 * 1024, true).await {
            Ok(None) => {
                // Clean end of stream: retire (a switch) or leave.
                return if got_retire { ReaderEnd::Retired } else { ReaderEnd::Eof };
            }
            Ok(Some(chunk)) => dec.push(chunk.bytes),
            Err(quinn::ReadError::ConnectionLost(e)) => return ReaderEnd::Conn(e),
            Err(e) => return ReaderEnd::Protocol(format!("stream error: {e}")),
        }
    }
}

/// Handles a frame other than an event; `Ok(true)` for a retire.
fn handle_control(inner: &Arc<Inner>, peer: NodeId, remote: SocketAddr, frame: Frame<'_>) -> Result<bool, String> {
    match frame {
        Frame::Subscribe(subs) => {
            let mut st = inner.state();
            for s in subs {
                if let Err(e) = st.subs.add_remote(peer, s.id, &s.selector, s.spy) {
                    warn!(peer = %peer.short(), error = %e, "subscription refused");
                }
            }
            inner.changed(&mut st);
        }
        Frame::Unsubscribe(ids) => {
            let mut st = inner.state();
            for id in ids {
                st.subs.remove_remote(peer, id);
            }
            inner.changed(&mut st);
        }
        Frame::Peers(list) => {
            if list.len() > 10_000 {
                return Err("gossip list too long".into());
            }
            handle_gossip(inner, list, remote);
        }
        Frame::Retire => {
            // The peer sends nothing more here; EOF follows.
            return Ok(true);
        }
        Frame::Hello(_) => return Err("second hello".into()),
        // The reader takes events before calling this.
        Frame::Event { .. } => return Err("event frame in the control path".into()),
    }
    Ok(false)
}

/// How long announcements of new neighbours are collected before sending.
const ANNOUNCE_BATCH: Duration = Duration::from_millis(15);

/// Tells every neighbour about the new neighbours collected since the last
/// flush, in one frame each (only addresses in the link's scope).
fn flush_announcements(inner: &Arc<Inner>) {
    let mut st = inner.state();
    st.announce_scheduled = false;
    let list = std::mem::take(&mut st.announce);
    if list.is_empty() {
        return;
    }
    let allow = inner.settings.allow_non_global;
    for n in st.neighbours.values() {
        let Some(link) = n.info.addr else { continue };
        let peers: Vec<PeerAddrs> = list
            .iter()
            .filter(|(id, _)| *id != n.info.id)
            .map(|(id, addrs)| PeerAddrs { id: *id, addrs: addrs.iter().copied().filter(|a| peers::may_gossip(*a, link, allow)).collect() })
            .filter(|p| !p.addrs.is_empty())
            .collect();
        if !peers.is_empty() {
            let f = Frame::Peers(peers);
            let _ = n.queue.push_control(|b| wire::put_frame(b, &f));
        }
    }
}

fn handle_gossip(inner: &Arc<Inner>, list: Vec<PeerAddrs>, link: SocketAddr) {
    let allow = inner.settings.allow_non_global;
    let mut to_dial = Vec::new();
    {
        let mut st = inner.state();
        for p in list {
            // In a forming mesh nearly every entry names a node we are
            // connected to or dialling already (each new neighbour sends us
            // its whole list): skip those before any allocation.
            if p.id == inner.id || st.neighbours.contains_key(&p.id) || st.dialing_ids.contains(&p.id) || st.departed.contains(&p.id) {
                continue;
            }
            let addrs: Vec<SocketAddr> =
                p.addrs.into_iter().map(canonical).filter(|a| peers::may_gossip(*a, link, allow)).take(16).collect();
            if addrs.is_empty() {
                continue;
            }
            // Free (checked above, under the same lock); the claim is taken
            // only now so that no claim is ever dropped while `st` is held.
            let Some(claim) = DialClaim::take(inner, &mut st, DialTarget::Id(p.id)) else { continue };
            st.known.insert(p.id, Known { addrs: addrs.clone(), via_gossip: true });
            to_dial.push((claim, p.id, addrs));
        }
    }
    // The claims are dropped (if ever) by the dial tasks, not under the lock.
    for (claim, id, addrs) in to_dial {
        let delay = peers::gossip_dial_delay(inner.id, id, inner.settings.gossip_dial_delay, rand::random::<f64>());
        dial_known(inner, claim, id, addrs, delay);
    }
}

async fn run_writer(
    mut send: quinn::SendStream,
    queue: Option<Arc<SendQueue>>,
    lock: Option<Arc<tokio::sync::Mutex<()>>>,
    ctl: Arc<ConnCtl>,
    conn: quinn::Connection,
) {
    let retire_now = |_: &mut quinn::SendStream| {
        let mut b = BytesMut::new();
        wire::put_frame(&mut b, &Frame::Retire);
        b.freeze()
    };
    let (Some(queue), Some(lock)) = (queue, lock) else {
        // A retired-at-birth connection: say so and finish.
        let b = retire_now(&mut send);
        let _ = send.write_chunk(b).await;
        let _ = send.finish();
        let _ = send.stopped().await;
        return;
    };
    // One writer at a time: a replacement waits for the retiring writer.
    let _guard = tokio::select! {
        g = lock.lock_owned() => g,
        _ = conn.closed() => return,
    };
    loop {
        if ctl.retiring.load(Ordering::Acquire) {
            let b = retire_now(&mut send);
            let _ = send.write_chunk(b).await;
            let _ = send.finish();
            return; // releases the lock: the new writer continues the queue
        }
        tokio::select! {
            biased;
            _ = ctl.retire.notified() => continue,
            data = queue.take() => match data {
                Some(mut parts) => {
                    if let Err(e) = send.write_all_chunks(&mut parts).await {
                        debug!(error = %e, "write failed");
                        return;
                    }
                }
                None => {
                    // Queue finished (leave): end the stream and wait until
                    // the peer has acknowledged all of it (`stopped` resolves
                    // then), so that leave() closes nothing still in flight.
                    let _ = send.finish();
                    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
                    return;
                }
            },
        }
    }
}

/// How long leave() lets writers send what is queued and the peers
/// acknowledge it, at most.
const LEAVE_FLUSH: Duration = Duration::from_secs(3);

/// Leaves the hood: stops discovery, flushes queues, closes every
/// connection with GOODBYE, releases the port.
pub(crate) async fn leave(inner: &Arc<Inner>) {
    if inner.closing.swap(true, Ordering::AcqRel) {
        // Already leaving: wait for the endpoint to go idle.
        if let Some(ep) = inner.endpoint() {
            let _ = tokio::time::timeout(Duration::from_secs(3), ep.wait_idle()).await;
        }
        return;
    }
    // Second dialers waiting for a peer's handshake see that we are leaving.
    inner.incoming_changed.notify_waiters();
    inner.discovery_stop.stop();
    let conns: Vec<(Arc<SendQueue>, Arc<ConnCtl>)> = {
        let st = inner.state();
        st.neighbours.values().map(|n| (n.queue.clone(), n.ctl.clone())).collect()
    };
    for (q, _) in &conns {
        q.finish();
    }
    // Let the writers send what emit already counted and the peers
    // acknowledge it: closing the endpoint discards anything in flight.
    // Bounded: a peer that stopped answering does not hold the leave up.
    let flush = async {
        for (_, ctl) in &conns {
            ctl.writer_ended().await;
        }
    };
    let _ = tokio::time::timeout(LEAVE_FLUSH, flush).await;
    if let Some(ep) = inner.endpoint() {
        ep.close(close::GOODBYE.into(), b"leave");
        // Close frames go out at once; waiting longer would only wait out
        // the draining period of handshakes still in progress.
        let _ = tokio::time::timeout(Duration::from_millis(300), ep.wait_idle()).await;
    }
    // Stop discovery (bounded), the dispatcher and the rest.
    let _ = inner.shutdown.send(true);
    let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *relock(&inner.tasks));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    for t in tasks {
        let abort = t.abort_handle();
        if tokio::time::timeout_at(deadline, t).await.is_err() {
            abort.abort();
        }
    }
    let mut st = inner.state();
    st.listeners.clear();
    st.listener_cache.clear();
    st.emit_cache.clear();
    st.emit_last = None;
    st.observers.clear();
    st.neighbours.clear();
    drop(st);
    // Dropping the last endpoint handle releases the UDP port.
    relock(&inner.endpoint).take();
    info!(id = %inner.id, "left the hood");
}
