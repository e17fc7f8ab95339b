//! A neighbour's bounded send queue, in two lanes: bulk and express.
//!
//! `emit` appends encoded frames straight into a lane's buffer (one copy,
//! no allocation per event); the connection's writer takes a lane's whole
//! buffer at once and hands it to QUIC as one large write. That batching is
//! what makes small events cheap: QUIC's cost is per write, not per byte.
//!
//! **Lanes.** Each lane is written to a stream of its own: bulk to the
//! connection's main stream (with subscriptions and gossip), express to the
//! express stream, which QUIC sends first (a higher stream priority). An
//! event whose name and payload together are at most `express_max` bytes
//! takes the express lane, so it does not wait behind the big events queued
//! or in flight on the main stream. Events of one name keep their order
//! (the lanes' [`route`] rules, checked by a property test):
//!
//! - A big event *pins* its name to the bulk lane: the name's small events
//!   follow it on the bulk lane (behind it, in order) as long as the bulk
//!   lane is busy (something queued, or taken and not yet written).
//! - A pinned name's small event that finds the bulk lane idle unpins every
//!   name and takes the express lane behind a barrier
//!   ([`crate::wire::Frame::After`]): the receiver delivers the express
//!   stream's events past it only once it has delivered every bulk event
//!   queued before it (those may still be in QUIC's buffers or on the way).
//! - A big event that follows express events goes behind a barrier on the
//!   bulk lane: it is delivered after every express event queued before it
//!   (the express lane is fast; the wait is short).
//!
//! So order holds per name (and, by the second barrier, every big event
//! comes after the small ones emitted before it); a small event of another
//! name may overtake big ones. The pins are name hashes (a collision only
//! pins a name that need not be), at most [`MAX_PINNED`]; past that every
//! name counts as pinned until the bulk lane next idles.
//!
//! The queue is bounded in bytes, both lanes together. A bulk frame is
//! accepted when the bulk lane is empty (so one event larger than the limit
//! still passes) or when it fits below the limit minus the express reserve
//! (a quarter of the limit, at most 256 KiB): a full bulk lane leaves room
//! for small events. An express frame is accepted when the express lane is
//! empty or it fits below the limit.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

use crate::wire::{self, Frame};

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// Over the limit: wait for `SendQueue::space` or apply the full policy.
    Full,
    /// The neighbour is gone.
    Closed,
}

/// A lane of the queue, and the stream it is written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// The main stream: control frames and big events.
    Bulk = 0,
    /// The express stream: small events, sent first.
    Express = 1,
}

impl Lane {
    pub const BOTH: [Lane; 2] = [Lane::Bulk, Lane::Express];

    pub fn other(self) -> Lane {
        match self {
            Lane::Bulk => Lane::Express,
            Lane::Express => Lane::Bulk,
        }
    }
}

/// One lane's bytes and counts.
struct LaneBuf {
    buf: BytesMut,
    /// Queued before `buf`: large payloads are queued by reference (no
    /// copy), with the bytes written before them frozen in front.
    parts: Vec<Bytes>,
    parts_len: usize,
    /// Capacity to give a fresh buffer: the size of the last batch taken
    /// (within bounds), so a steady stream fills one allocation per batch
    /// instead of growing (and copying) it.
    next_cap: usize,
    /// Event frames queued so far, of those taken by a writer, and of
    /// those written to QUIC. After a connection switch, the new writer
    /// tells the peer how many went out before it (`Frame::Resume`); the
    /// other lane's barriers name a count of these (`Frame::After`).
    events: u64,
    taken_events: u64,
    written_events: u64,
    /// The largest barrier queued on this lane (barriers only grow).
    barrier: u64,
}

impl LaneBuf {
    fn new() -> LaneBuf {
        LaneBuf {
            buf: BytesMut::new(),
            parts: Vec::new(),
            parts_len: 0,
            next_cap: MIN_ALLOC,
            events: 0,
            taken_events: 0,
            written_events: 0,
            barrier: 0,
        }
    }

    fn queued(&self) -> usize {
        self.parts_len + self.buf.len()
    }

    /// Nothing queued and everything taken written to QUIC.
    fn idle(&self) -> bool {
        self.queued() == 0 && self.written_events == self.events
    }

    /// Takes everything queued, leaving an empty buffer (allocated on the
    /// next push).
    fn take_all(&mut self, limit: usize) -> Taken {
        self.taken_events = self.events;
        self.next_cap = self.buf.len().min(limit).max(MIN_ALLOC);
        let mut parts = std::mem::take(&mut self.parts);
        self.parts_len = 0;
        if !self.buf.is_empty() {
            parts.push(std::mem::take(&mut self.buf).freeze());
        }
        Taken { parts, events: self.events }
    }

    fn reserve(&mut self, len: usize) {
        if self.buf.capacity() - self.buf.len() < len {
            // Grow in big steps so many small frames share one allocation.
            let step = len.max(self.next_cap);
            self.buf.reserve(step);
        }
    }

    fn clear(&mut self) {
        self.buf = BytesMut::new();
        self.parts = Vec::new();
        self.parts_len = 0;
    }
}

/// Names pinned to the bulk lane (see the module docs).
struct Pins {
    hashes: HashSet<u64>,
    all: bool,
    hasher: std::collections::hash_map::RandomState,
    /// The name pinned last (its hash is in `hashes`): a stream of big
    /// events of one name is not hashed per event.
    last: String,
}

/// Pinned names kept at most; past that every name counts as pinned.
pub const MAX_PINNED: usize = 1024;

impl Pins {
    fn hash(&self, name: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(name.as_bytes());
        h.finish()
    }

    fn pinned(&self, name: &str) -> bool {
        self.all || (!self.hashes.is_empty() && (self.last == name || self.hashes.contains(&self.hash(name))))
    }
}

struct Inner {
    lanes: [LaneBuf; 2],
    pins: Pins,
    closed: bool,
}

impl Inner {
    fn lane(&mut self, l: Lane) -> &mut LaneBuf {
        &mut self.lanes[l as usize]
    }

    fn queued(&self) -> usize {
        self.lanes[0].queued() + self.lanes[1].queued()
    }
}

/// Where an event goes, decided under the queue's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Route {
    lane: Lane,
    /// A barrier to queue first: the other lane's event count to wait for.
    barrier: Option<u64>,
    /// Pin the name (a big event), by its hash.
    pin: Option<u64>,
    /// Unpin every name (a pinned small event found the bulk lane idle).
    unpin: bool,
}

/// The lane rules (see the module docs): where an event of `size` bytes
/// (name + payload) named `name` goes now.
fn route(g: &Inner, express_max: usize, name: &str, size: usize) -> Route {
    let (bulk, express) = (&g.lanes[Lane::Bulk as usize], &g.lanes[Lane::Express as usize]);
    if size > express_max || express_max == 0 {
        // Behind every express event queued so far, unless a barrier
        // already says so.
        let barrier = (express_max > 0 && express.events > bulk.barrier).then_some(express.events);
        let pin = (express_max > 0 && !g.pins.all && g.pins.last != name).then(|| g.pins.hash(name));
        return Route { lane: Lane::Bulk, barrier, pin, unpin: false };
    }
    if !g.pins.pinned(name) {
        return Route { lane: Lane::Express, barrier: None, pin: None, unpin: false };
    }
    if !bulk.idle() {
        return Route { lane: Lane::Bulk, barrier: None, pin: None, unpin: false };
    }
    let barrier = (bulk.events > express.barrier).then_some(bulk.events);
    Route { lane: Lane::Express, barrier, pin: None, unpin: true }
}

/// Smallest buffer allocated: many small frames share one allocation.
const MIN_ALLOC: usize = 64 * 1024;

/// Queued bytes at which a batch is worth writing now. An emitter that
/// never awaits would otherwise fill the whole queue before the writer (and
/// QUIC's connection driver) get to run on its thread: sending would come in
/// bursts of `limit` bytes while the receiver idles in between. Yielding once
/// per batch keeps emitting and sending overlapped, at one yield per batch.
pub const BATCH: usize = 256 * 1024;

/// The part of the limit only the express lane may use.
const MAX_RESERVE: usize = 256 * 1024;

/// A frame was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// This frame took its lane past [`BATCH`] bytes: the emitter should
    /// yield so that the writer can take the batch.
    pub batch_ready: bool,
}

/// What a writer took from a lane.
#[derive(Debug, PartialEq)]
pub struct Taken {
    /// The bytes, in order (usually one part).
    pub parts: Vec<Bytes>,
    /// The lane's event count up to the end of `parts`: pass it to
    /// [`SendQueue::written`] once QUIC has them.
    pub events: u64,
}

/// Payloads at least this large are queued by reference instead of copied:
/// above it a copy costs more than the extra part does.
pub const BY_REFERENCE: usize = 16 * 1024;

/// Bounded byte queue between emitters and one connection writer.
pub struct SendQueue {
    inner: Mutex<Inner>,
    limit: usize,
    /// The bulk lane's limit: `limit` less the express reserve.
    bulk_limit: usize,
    express_max: usize,
    /// Wakes a lane's writer: data queued (or queue closed).
    data: [Notify; 2],
    /// Wakes emitters: a writer took a lane (or queue closed).
    space: Notify,
    dropped: AtomicU64,
}

impl SendQueue {
    /// A queue of `limit` bytes; events up to `express_max` bytes (name +
    /// payload) take the express lane (0: everything is bulk).
    pub fn new(limit: usize, express_max: usize) -> SendQueue {
        let limit = limit.max(1);
        let reserve = if express_max > 0 { (limit / 4).min(MAX_RESERVE) } else { 0 };
        SendQueue {
            inner: Mutex::new(Inner {
                lanes: [LaneBuf::new(), LaneBuf::new()],
                pins: Pins { hashes: HashSet::new(), all: false, hasher: Default::default(), last: String::new() },
                closed: false,
            }),
            limit,
            bulk_limit: limit - reserve,
            express_max,
            data: [Notify::new(), Notify::new()],
            space: Notify::new(),
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the buffers invalid
        // (appends are plain byte copies), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one event frame (`flen`: its length bound, see
    /// [`wire::event_frame_len`]) on the lane the rules choose: small
    /// payloads copied into the lane's buffer (many frames per allocation),
    /// large ones by reference.
    pub fn push_event(&self, name: &str, payload: &Bytes, flen: usize) -> Result<Pushed, PushError> {
        let mut g = self.lock();
        if g.closed {
            return Err(PushError::Closed);
        }
        let r = route(&g, self.express_max, name, name.len() + payload.len());
        let barrier_len = if r.barrier.is_some() { AFTER_LEN } else { 0 };
        let total = g.queued();
        let lane_queued = g.lane(r.lane).queued();
        let cap = match r.lane {
            Lane::Bulk => self.bulk_limit,
            Lane::Express => self.limit,
        };
        if lane_queued > 0 && total + flen + barrier_len > cap {
            return Err(PushError::Full);
        }
        if let Some(h) = r.pin {
            if g.pins.hashes.len() >= MAX_PINNED {
                g.pins.all = true;
            } else {
                g.pins.hashes.insert(h);
                g.pins.last.clear();
                g.pins.last.push_str(name);
            }
        }
        if r.unpin {
            g.pins.hashes.clear();
            g.pins.all = false;
            g.pins.last.clear();
        }
        let lane = g.lane(r.lane);
        if let Some(other) = r.barrier {
            lane.barrier = other;
            lane.reserve(AFTER_LEN);
            wire::put_frame(&mut lane.buf, &Frame::After { other });
        }
        if payload.len() >= BY_REFERENCE {
            let head = flen - payload.len();
            lane.reserve(head);
            wire::put_event_head(&mut lane.buf, name, payload.len());
            // What is written so far goes in front of the payload; `buf`
            // keeps its spare capacity for the frames that follow.
            let head = lane.buf.split().freeze();
            lane.parts_len += head.len() + payload.len();
            lane.parts.push(head);
            lane.parts.push(payload.clone());
        } else {
            lane.reserve(flen);
            wire::put_event(&mut lane.buf, name, payload);
        }
        lane.events += 1;
        let after = lane.queued();
        drop(g);
        if lane_queued == 0 {
            self.data[r.lane as usize].notify_one();
        }
        Ok(Pushed { batch_ready: lane_queued < BATCH && after >= BATCH })
    }

    /// Appends a frame to the bulk lane whatever the limit (control frames:
    /// subscriptions, gossip; they are small and must never be dropped).
    pub fn push_control(&self, write: impl FnOnce(&mut BytesMut)) -> Result<(), PushError> {
        let mut g = self.lock();
        if g.closed {
            return Err(PushError::Closed);
        }
        let lane = g.lane(Lane::Bulk);
        let was_empty = lane.queued() == 0;
        write(&mut lane.buf);
        drop(g);
        if was_empty {
            self.data[Lane::Bulk as usize].notify_one();
        }
        Ok(())
    }

    /// Waits until a writer takes a lane or the queue closes.
    /// Register interest *before* re-checking, to miss no wake-up:
    /// use [`SendQueue::space_notified`].
    pub fn space_notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.space.notified()
    }

    /// A lane's writer: everything queued on it (in order), or `None` once
    /// the queue is closed and the lane empty.
    pub async fn take(&self, lane: Lane) -> Option<Taken> {
        loop {
            let notified = self.data[lane as usize].notified();
            match self.take_now(lane) {
                Ok(t) => return Some(t),
                Err(true) => return None,
                Err(false) => notified.await,
            }
        }
    }

    /// Takes what is queued on `lane` without waiting.
    pub fn try_take(&self, lane: Lane) -> Option<Taken> {
        self.take_now(lane).ok()
    }

    /// What is queued on `lane`, or whether the queue is closed (checked
    /// under the same lock: nothing queued before a finish is missed).
    fn take_now(&self, lane: Lane) -> Result<Taken, bool> {
        let mut g = self.lock();
        let closed = g.closed;
        let l = g.lane(lane);
        if l.queued() == 0 {
            return Err(closed);
        }
        let out = l.take_all(self.limit);
        drop(g);
        self.space.notify_waiters();
        Ok(out)
    }

    /// The writer handed a [`Taken`] to QUIC: its events count as written
    /// (a lane with everything written and nothing queued is idle).
    pub fn written(&self, lane: Lane, events: u64) {
        let mut g = self.lock();
        let l = g.lane(lane);
        l.written_events = l.written_events.max(events);
    }

    /// Closes the queue: pushes fail, waiting emitters and the writers
    /// wake. Returns the bytes that were still queued.
    pub fn close(&self) -> usize {
        let mut g = self.lock();
        g.closed = true;
        let left = g.queued();
        for l in &mut g.lanes {
            l.clear();
        }
        drop(g);
        self.wake_all();
        left
    }

    /// Marks the end of input without discarding what is queued (leave):
    /// the writers drain, then see `None`.
    pub fn finish(&self) {
        self.lock().closed = true;
        self.wake_all();
    }

    fn wake_all(&self) {
        for d in &self.data {
            d.notify_one();
        }
        self.space.notify_waiters();
    }

    /// Bytes waiting to be sent (metrics).
    pub(crate) fn queued_bytes(&self) -> usize {
        self.lock().queued()
    }

    /// (bytes queued now, event frames queued since it was made, the limit):
    /// for `status`, now and then.
    pub fn fill(&self) -> (usize, u64, usize) {
        let g = self.lock();
        (g.queued(), g.lanes.iter().map(|l| l.events).sum(), self.limit)
    }

    pub fn note_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Events dropped for this neighbour under the `Drop` policy.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Event frames of `lane` taken by writers so far.
    pub fn taken_events(&self, lane: Lane) -> u64 {
        self.lock().lane(lane).taken_events
    }
}

/// Bytes of an encoded [`Frame::After`], at most.
const AFTER_LEN: usize = 4 + 1 + 9;

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
