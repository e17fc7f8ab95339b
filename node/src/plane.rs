//! The data plane: subscriptions, local listeners, and each neighbour's
//! send queue, behind one lock of their own. `emit`, the dispatcher and the
//! readers use it; the mesh actor only adds and removes links here, so
//! emit never waits on the mesh's decisions.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::config::FullPolicy;
use crate::event::{Deliveries, DeliveryTx, Listener, ListenerLookup, PeerInfo};
use crate::id::NodeId;
use crate::mesh::link::{ConnCtl, Drain};
use crate::mesh::NeighbourInfo;
use crate::metrics::Counters;
use crate::name::NameError;
use crate::peers::Direction;
use crate::queue::{PushError, SendQueue};
use crate::ratelog::{RateLog, LOG_EVERY};
use crate::subs::{NameCache, SubTable};
use crate::wire::{self, close, Frame, PeerAddrs, WireSub};

/// A neighbour as the data plane sees it: where its events go.
pub(crate) struct Link {
    pub info: Arc<PeerInfo>,
    pub direction: Direction,
    pub queue: Arc<SendQueue>,
    /// The connection in use now (it changes at a switch; the queue stays).
    pub conn: quinn::Connection,
    pub ctl: Arc<ConnCtl>,
    /// One writer at a time drains `queue` (a replacement waits for the old).
    pub writer_lock: Arc<tokio::sync::Mutex<()>>,
    pub drain: Arc<Drain>,
}

impl Link {
    pub(crate) fn info(&self) -> NeighbourInfo {
        NeighbourInfo {
            id: self.info.id,
            name: self.info.name.clone(),
            addr: self.info.addr.unwrap_or_else(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)),
            direction: self.direction,
            dropped: self.queue.dropped(),
            path: None,
        }
    }
}

pub(crate) struct State {
    pub(crate) subs: SubTable,
    listeners: HashMap<u64, Arc<Listener>>,
    listener_cache: NameCache<Arc<Vec<Arc<Listener>>>>,
    /// Where `emit` sends each name: queues resolved (cleared by `changed`).
    emit_cache: NameCache<Arc<EmitRoute>>,
    /// The last name emitted: a hot loop on one name skips the hashing.
    emit_last: Option<Arc<EmitRoute>>,
    pub(crate) links: HashMap<NodeId, Link>,
    observers: Vec<(String, watch::Sender<usize>)>,
    /// Refused subscriptions, logged once per peer per interval.
    refusals: RateLog<NodeId>,
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
        let State { emit_cache, subs, links, .. } = self;
        let r = emit_cache.get_or_insert_with(name, || {
            let route = subs.route(name);
            let remote = route.remote.iter().filter_map(|(peer, n)| links.get(peer).map(|l| (l.queue.clone(), *n, *peer))).collect();
            Arc::new(EmitRoute { name: name.into(), local: !route.local.is_empty(), local_counted: route.local_counted, remote })
        });
        self.emit_last = Some(r.clone());
        Ok(r)
    }
}

/// How far [`Plane::emit_now`] got.
pub(crate) enum Emitted {
    /// Queued everywhere. `batch_ready`: a queue passed
    /// [`crate::queue::BATCH`]; the emitter should yield so that its writer
    /// can send while it goes on emitting.
    Done { count: usize, batch_ready: bool },
    /// Some queue was full (or the local dispatcher busy).
    Wait(EmitWait),
}

/// What is left of an emit that must wait: see [`Plane::emit_wait`].
pub(crate) struct EmitWait {
    /// Listeners reached so far.
    count: usize,
    /// The queues that were full, with their listener counts.
    full: Vec<(Arc<SendQueue>, usize, NodeId)>,
    /// The local delivery, when the dispatcher's channel was full.
    local: Option<Deliveries>,
}

/// The data plane of one node.
pub(crate) struct Plane {
    pub(crate) me: Arc<PeerInfo>,
    state: Mutex<State>,
    generation: AtomicU64,
    pub(crate) next_sub_id: AtomicU64,
    pub(crate) dispatch_tx: DeliveryTx,
    pub(crate) full_policy: FullPolicy,
    /// The node's counters (metrics); the data path only adds to them.
    pub(crate) counters: Arc<Counters>,
    /// Neighbour count, for [`crate::Bus::wait_neighbours`].
    pub(crate) count_tx: watch::Sender<usize>,
}

impl Plane {
    pub(crate) fn new(me: Arc<PeerInfo>, max_subscriptions: usize, dispatch_tx: DeliveryTx, full_policy: FullPolicy) -> Plane {
        Plane {
            me,
            state: Mutex::new(State {
                subs: SubTable::new(max_subscriptions),
                listeners: HashMap::new(),
                listener_cache: NameCache::new(),
                emit_cache: NameCache::new(),
                emit_last: None,
                links: HashMap::new(),
                observers: Vec::new(),
                refusals: RateLog::new(LOG_EVERY),
            }),
            generation: AtomicU64::new(0),
            next_sub_id: AtomicU64::new(1),
            counters: Arc::default(),
            dispatch_tx,
            full_policy,
            count_tx: watch::channel(0).0,
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // State is only mutated in short, panic-free sections; a poisoned lock
        // (a panic elsewhere while holding it) still holds consistent data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Call after any change to subscriptions or links (with the lock held).
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

    /// A new neighbour: its queue starts with our subscriptions, then the
    /// rest of the mesh (`others`).
    pub(crate) fn add_link(&self, peer: NodeId, link: Link, others: Vec<PeerAddrs>) -> NeighbourInfo {
        let mut st = self.state();
        let subs = st.subs.local_wire();
        if !subs.is_empty() {
            let _ = link.queue.push_control(|b| wire::put_frame(b, &Frame::Subscribe(subs)));
        }
        if !others.is_empty() {
            let _ = link.queue.push_control(|b| wire::put_frame(b, &Frame::Peers(others)));
        }
        let info = link.info();
        st.subs.set_permissions(peer, crate::perms::PeerPerms::of_conn(&link.conn));
        st.links.insert(peer, link);
        let n = st.links.len();
        self.changed(&mut st);
        self.count_tx.send_replace(n);
        info
    }

    /// Removes a lost neighbour (if `conn` is still its connection): its
    /// subscriptions go; its queue is closed unless we are leaving (then
    /// leave flushes it).
    pub(crate) fn remove_link(&self, peer: NodeId, close_queue: bool) -> Option<(NeighbourInfo, usize)> {
        let mut st = self.state();
        let link = st.links.remove(&peer)?;
        if close_queue {
            link.queue.close();
        }
        st.subs.remove_peer(peer);
        st.refusals.forget(&peer);
        let n = st.links.len();
        self.changed(&mut st);
        self.count_tx.send_replace(n);
        Some((link.info(), n))
    }

    /// Queues a revocation list for every neighbour but those it revokes
    /// (their connections are closing), or for `only` that one.
    pub(crate) fn push_revocations(&self, der: &[u8], revoked: &partybus_pki::RevokedSet) {
        self.push_revocations_to(der, revoked, None);
    }

    pub(crate) fn push_revocations_to(&self, der: &[u8], revoked: &partybus_pki::RevokedSet, only: Option<NodeId>) {
        let st = self.state();
        for (id, l) in &st.links {
            if only.is_some_and(|o| o != *id) || crate::tls::peer_revoked(&l.conn, revoked) {
                continue;
            }
            let _ = l.queue.push_control(|b| wire::put_frame(b, &Frame::Revocations(der)));
        }
    }

    pub(crate) fn push_peers(&self, peer: NodeId, peers: Vec<PeerAddrs>) {
        let st = self.state();
        if let Some(l) = st.links.get(&peer) {
            let _ = l.queue.push_control(|b| wire::put_frame(b, &Frame::Peers(peers)));
        }
    }

    pub(crate) fn neighbours(&self) -> Vec<NeighbourInfo> {
        let st = self.state();
        let mut v: Vec<NeighbourInfo> = st.links.values().map(Link::info).collect();
        v.sort_by_key(|n| n.id);
        v
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
        for link in st.links.values() {
            let _ = link.queue.push_control(|b| wire::put_frame(b, &frame));
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
            for link in st.links.values() {
                let _ = link.queue.push_control(|b| wire::put_frame(b, &frame));
            }
            self.changed(&mut st);
        }
        gone.len()
    }

    /// A neighbour's subscriptions changed (its reader got the frame).
    pub(crate) fn remote_subs(&self, peer: NodeId, add: Vec<WireSub>, remove: Vec<u64>) {
        let mut st = self.state();
        let (mut refused, mut first) = (0, None);
        for s in add {
            if let Err(e) = st.subs.add_remote(peer, s.id, &s.selector, s.spy) {
                refused += 1;
                first.get_or_insert(e);
            }
        }
        if let Some(e) = first {
            if let Some(count) = st.refusals.note(peer, refused, std::time::Instant::now()) {
                warn!(peer = %peer.short(), count, first = %e, "subscriptions refused (logged at most every {LOG_EVERY:?} per peer)");
            }
        }
        for id in remove {
            st.subs.remove_remote(peer, id);
        }
        self.changed(&mut st);
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
            if let Some(l) = st.links.get(peer) {
                out.extend(std::iter::repeat_n((*l.info).clone(), *n));
            }
        }
        out
    }

    /// Forgets every listener, link and observer (the node has left).
    pub(crate) fn clear(&self) {
        let mut st = self.state();
        st.listeners.clear();
        st.listener_cache.clear();
        st.emit_cache.clear();
        st.emit_last = None;
        st.observers.clear();
        st.links.clear();
    }

    /// Queues an event for every interested neighbour and the local
    /// dispatcher where there is room now, without waiting: the whole emit
    /// in the common case. Fails only for an invalid name.
    ///
    /// Kept synchronous on purpose: the emit loop is the hot path, and only
    /// a full queue needs a future ([`Plane::emit_wait`]).
    pub(crate) fn emit_now(&self, name: &str, payload: &Bytes) -> Result<Emitted, NameError> {
        let flen = wire::event_frame_len(name, payload);
        let mut full: Vec<(Arc<SendQueue>, usize, NodeId)> = Vec::new();
        let mut batch_ready = false;
        let mut queued = 0u64;
        let (count, local) = {
            let mut st = self.state();
            let route = st.emit_route(name)?;
            let mut count = route.local_counted;
            for (queue, n, peer) in &route.remote {
                match queue.push_event(name, payload, flen) {
                    Ok(p) => {
                        count += n;
                        queued += 1;
                        batch_ready |= p.batch_ready;
                    }
                    Err(PushError::Full) => full.push((queue.clone(), *n, *peer)),
                    Err(PushError::Closed) => {}
                }
            }
            (count, route.local)
        };
        Counters::add(&self.counters.emits, 1);
        if queued > 0 {
            Counters::add(&self.counters.events_sent, queued);
        }
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
            let deadline = match self.full_policy {
                FullPolicy::Drop => {
                    q.note_dropped();
                    Counters::add(&self.counters.events_dropped, 1);
                    debug!(peer = %peer.short(), event = name, "send queue full: event dropped for this neighbour (policy drop)");
                    continue;
                }
                FullPolicy::Block => None,
                FullPolicy::Disconnect(d) => Some(d),
            };
            loop {
                let notified = q.space_notified();
                match q.push_event(name, &payload, flen) {
                    Ok(_) => {
                        count += n;
                        Counters::add(&self.counters.events_sent, 1);
                        break;
                    }
                    Err(PushError::Closed) => break,
                    Err(PushError::Full) => match deadline {
                        None => notified.await,
                        // A fresh wait after every drain: only a queue that
                        // does not move at all for `stuck` is stuck (a slow
                        // path moving a large event is not).
                        Some(stuck) => {
                            if tokio::time::timeout(stuck, notified).await.is_err() {
                                warn!(peer = %peer.short(), ?stuck, "neighbour's send queue full and not draining: disconnecting it (full policy disconnect)");
                                if let Some(l) = self.state().links.get(&peer) {
                                    l.conn.close(close::STUCK.into(), b"stuck");
                                    Counters::add(&self.counters.stuck_closed, 1);
                                }
                                break;
                            }
                        }
                    },
                }
            }
        }
        count
    }
}

impl ListenerLookup for Plane {
    fn lookup(&self, name: &str) -> (u64, Arc<Vec<Arc<Listener>>>) {
        let mut st = self.state();
        let gen = self.generation();
        let State { listener_cache, subs, listeners, .. } = &mut *st;
        let l = listener_cache
            .get_or_insert_with(name, || Arc::new(subs.route(name).local.iter().filter_map(|id| listeners.get(id).cloned()).collect()));
        (gen, l)
    }
    fn generation(&self) -> u64 {
        Plane::generation(self)
    }
    fn remove(&self, id: u64) {
        self.remove_listeners(&[id]);
    }
}
