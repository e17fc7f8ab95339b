//! A neighbour's bounded send queue.
//!
//! `emit` appends encoded frames straight into the queue's buffer (one copy,
//! no allocation per event); the connection's writer task takes the whole
//! buffer at once and hands it to QUIC as one large write. That batching is
//! what makes small events cheap: QUIC's cost is per write, not per byte.
//!
//! The queue is bounded in bytes. A frame is accepted when the queue is
//! empty (so one event larger than the limit still passes) or when it fits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// Over the limit: wait for `SendQueue::space` or apply the full policy.
    Full,
    /// The neighbour is gone.
    Closed,
}

struct Inner {
    buf: BytesMut,
    /// Queued before `buf`: large payloads are queued by reference (no
    /// copy), with the bytes written before them frozen in front.
    parts: Vec<Bytes>,
    parts_len: usize,
    closed: bool,
    /// Capacity to give a fresh buffer: the size of the last batch taken
    /// (within bounds), so a steady stream fills one allocation per batch
    /// instead of growing (and copying) it.
    next_cap: usize,
    /// Event frames queued so far, and of those, taken by a writer: after
    /// a connection switch, the new writer tells the peer how many events
    /// went out before it (the wire's `Frame::Resume`).
    events: u64,
    taken_events: u64,
}

/// Smallest buffer allocated: many small frames share one allocation.
const MIN_ALLOC: usize = 64 * 1024;

/// Queued bytes at which a batch is worth writing now. An emitter that
/// never awaits would otherwise fill the whole queue before the writer (and
/// QUIC's connection driver) get to run on its thread: sending would come in
/// bursts of `limit` bytes while the receiver idles in between. Yielding once
/// per batch keeps emitting and sending overlapped, at one yield per batch.
pub const BATCH: usize = 256 * 1024;

/// A frame was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// This frame took the queue past [`BATCH`] bytes: the emitter should
    /// yield so that the writer can take the batch.
    pub batch_ready: bool,
}

/// Payloads at least this large are queued by reference instead of copied:
/// above it a copy costs more than the extra part does.
pub const BY_REFERENCE: usize = 16 * 1024;

impl Inner {
    fn queued(&self) -> usize {
        self.parts_len + self.buf.len()
    }

    /// Takes everything queued, leaving an empty buffer (allocated on the
    /// next push).
    fn take_all(&mut self, limit: usize) -> Vec<Bytes> {
        self.taken_events = self.events;
        self.next_cap = self.buf.len().min(limit).max(MIN_ALLOC);
        let mut out = std::mem::take(&mut self.parts);
        self.parts_len = 0;
        if !self.buf.is_empty() {
            out.push(std::mem::take(&mut self.buf).freeze());
        }
        out
    }

    fn reserve(&mut self, len: usize) {
        if self.buf.capacity() - self.buf.len() < len {
            // Grow in big steps so many small frames share one allocation.
            let step = len.max(self.next_cap);
            self.buf.reserve(step);
        }
    }
}

/// Bounded byte queue between emitters and one connection writer.
pub struct SendQueue {
    inner: Mutex<Inner>,
    limit: usize,
    /// Wakes the writer: data queued (or queue closed).
    data: Notify,
    /// Wakes emitters: the writer took the buffer (or queue closed).
    space: Notify,
    dropped: AtomicU64,
}

impl SendQueue {
    pub fn new(limit: usize) -> SendQueue {
        SendQueue {
            inner: Mutex::new(Inner {
                buf: BytesMut::new(),
                parts: Vec::new(),
                parts_len: 0,
                closed: false,
                next_cap: MIN_ALLOC,
                events: 0,
                taken_events: 0,
            }),
            limit: limit.max(1),
            data: Notify::new(),
            space: Notify::new(),
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the buffer invalid
        // (appends are plain byte copies), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a frame produced by `write` if it fits (`len` is an upper
    /// bound of what `write` appends).
    pub fn push_with(&self, len: usize, write: impl FnOnce(&mut BytesMut)) -> Result<Pushed, PushError> {
        self.push_parts(len, write, None)
    }

    /// Appends a frame that ends with `tail`, which is queued by reference
    /// (no copy): `write` writes the rest, at most `head_len` bytes.
    pub fn push_with_tail(&self, head_len: usize, write: impl FnOnce(&mut BytesMut), tail: &Bytes) -> Result<Pushed, PushError> {
        self.push_parts(head_len, write, Some(tail))
    }

    fn push_parts(&self, head_len: usize, write: impl FnOnce(&mut BytesMut), tail: Option<&Bytes>) -> Result<Pushed, PushError> {
        let len = head_len + tail.map_or(0, |t| t.len());
        let mut g = self.lock();
        if g.closed {
            return Err(PushError::Closed);
        }
        let before = g.queued();
        if before > 0 && before + len > self.limit {
            return Err(PushError::Full);
        }
        g.reserve(head_len);
        write(&mut g.buf);
        if let Some(tail) = tail {
            // What is written so far goes in front of the tail; `buf`
            // keeps its spare capacity for the frames that follow.
            let head = g.buf.split().freeze();
            g.parts_len += head.len() + tail.len();
            g.parts.push(head);
            g.parts.push(tail.clone());
        }
        g.events += 1;
        let after = g.queued();
        drop(g);
        if before == 0 {
            self.data.notify_one();
        }
        Ok(Pushed { batch_ready: before < BATCH && after >= BATCH })
    }

    /// Appends a frame whatever the limit (control frames: subscriptions,
    /// gossip; they are small and must never be dropped).
    pub fn push_control(&self, write: impl FnOnce(&mut BytesMut)) -> Result<(), PushError> {
        let mut g = self.lock();
        if g.closed {
            return Err(PushError::Closed);
        }
        let was_empty = g.queued() == 0;
        write(&mut g.buf);
        drop(g);
        if was_empty {
            self.data.notify_one();
        }
        Ok(())
    }

    /// Waits until the writer takes the buffer or the queue closes.
    /// Register interest *before* re-checking, to miss no wake-up:
    /// use [`SendQueue::space_notified`].
    pub fn space_notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.space.notified()
    }

    /// The writer's side: everything queued (in order, usually one part),
    /// or `None` once closed and empty.
    pub async fn take(&self) -> Option<Vec<Bytes>> {
        loop {
            let notified = self.data.notified();
            {
                let mut g = self.lock();
                if g.queued() > 0 {
                    let out = g.take_all(self.limit);
                    drop(g);
                    self.space.notify_waiters();
                    return Some(out);
                }
                if g.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Takes what is queued without waiting.
    pub fn try_take(&self) -> Option<Vec<Bytes>> {
        let mut g = self.lock();
        if g.queued() == 0 {
            return None;
        }
        let out = g.take_all(self.limit);
        drop(g);
        self.space.notify_waiters();
        Some(out)
    }

    /// Closes the queue: pushes fail, waiting emitters and the writer wake.
    /// Returns the bytes that were still queued.
    pub fn close(&self) -> usize {
        let mut g = self.lock();
        g.closed = true;
        let left = g.queued();
        g.buf = BytesMut::new();
        g.parts = Vec::new();
        g.parts_len = 0;
        drop(g);
        self.data.notify_one();
        self.space.notify_waiters();
        left
    }

    /// Marks the end of input without discarding what is queued (leave):
    /// the writer drains, then sees `None`.
    pub fn finish(&self) {
        let mut g = self.lock();
        g.closed = true;
        drop(g);
        self.data.notify_one();
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
        (g.queued(), g.events, self.limit)
    }

    pub fn note_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Events dropped for this neighbour under the `Drop` policy.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Event frames taken by writers so far.
    pub fn taken_events(&self) -> u64 {
        self.lock().taken_events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn joined(parts: Option<Vec<Bytes>>) -> Vec<u8> {
        parts.expect("something queued").concat()
    }

    #[tokio::test]
    async fn bounded_and_fifo() {
        let q = SendQueue::new(10);
        q.push_with(6, |b| b.put_slice(b"abcdef")).unwrap();
        assert_eq!(q.push_with(6, |b| b.put_slice(b"ghijkl")), Err(PushError::Full));
        q.push_with(4, |b| b.put_slice(b"ghij")).unwrap();
        assert_eq!(joined(q.take().await), b"abcdefghij");
        // empty queue accepts one oversized frame
        q.push_with(20, |b| b.put_slice(&[1; 20])).unwrap();
        assert_eq!(q.push_with(1, |b| b.put_u8(1)), Err(PushError::Full));
        q.push_control(|b| b.put_u8(9)).unwrap();
        assert_eq!(joined(q.take().await).len(), 21);
        q.push_with(1, |b| b.put_u8(1)).unwrap();
        q.finish();
        assert_eq!(joined(q.take().await).len(), 1);
        assert_eq!(q.take().await, None);
        assert_eq!(q.push_with(1, |b| b.put_u8(1)), Err(PushError::Closed));
    }

    #[tokio::test]
    async fn tails_are_queued_by_reference_in_order() {
        let q = SendQueue::new(100);
        let tail = Bytes::from(vec![9u8; 40]);
        q.push_with(2, |b| b.put_slice(b"ab")).unwrap();
        q.push_with_tail(3, |b| b.put_slice(b"cd"), &tail).unwrap();
        q.push_with(2, |b| b.put_slice(b"ef")).unwrap();
        // The tail counts against the limit: 2 + 42 + 2 + 42 > 100.
        assert_eq!(q.queued_bytes(), 46);
        q.push_with_tail(2, |b| b.put_slice(b"gh"), &tail).unwrap();
        assert_eq!(q.push_with_tail(2, |b| b.put_slice(b"ij"), &tail), Err(PushError::Full));
        let parts = q.take().await.unwrap();
        assert!(parts.iter().any(|p| p.as_ptr() == tail.as_ptr()), "the tail itself, not a copy");
        let want: Vec<u8> = [&b"abcd"[..], &tail, b"efgh", &tail].concat();
        assert_eq!(parts.concat(), want);
        assert_eq!(q.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn batch_ready_once_per_batch() {
        let q = SendQueue::new(4 * BATCH);
        let frame = [7u8; 1000];
        let mut ready_at = Vec::new();
        for i in 0..(3 * BATCH / frame.len()) {
            if q.push_with(frame.len(), |b| b.put_slice(&frame)).unwrap().batch_ready {
                ready_at.push(i);
            }
        }
        // Only the frame that crosses BATCH says so, not every one after it.
        assert_eq!(ready_at, vec![BATCH / frame.len()]);
        assert!(joined(q.take().await).len() >= 2 * BATCH);
        assert!(!q.push_with(frame.len(), |b| b.put_slice(&frame)).unwrap().batch_ready);
    }

    #[tokio::test]
    async fn waiting_emitter_wakes_when_writer_takes() {
        let q = std::sync::Arc::new(SendQueue::new(4));
        q.push_with(4, |b| b.put_slice(b"full")).unwrap();
        let q2 = q.clone();
        let waiter = tokio::spawn(async move {
            loop {
                let n = q2.space_notified();
                match q2.push_with(4, |b| b.put_slice(b"next")) {
                    Ok(_) => return,
                    Err(PushError::Full) => n.await,
                    Err(PushError::Closed) => panic!("closed"),
                }
            }
        });
        tokio::task::yield_now().await;
        assert_eq!(joined(q.take().await), b"full");
        waiter.await.unwrap();
        assert_eq!(joined(q.take().await), b"next");
    }
}
