//! What a connection's tasks share with the actor: its control (retire,
//! writer's end), the per-neighbour delivery count that keeps emit order
//! across a switch, and the actor's commands to a connection task.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::proto::Teardown;
use crate::event::PeerInfo;
use crate::queue::SendQueue;

/// How long leave() lets writers send what is queued and the peers
/// acknowledge it, at most.
pub(crate) const LEAVE_FLUSH: Duration = Duration::from_secs(3);

/// Per-connection control shared by its reader, its writer and the actor.
pub(crate) struct ConnCtl {
    /// Set when this connection is being retired in favour of another.
    retiring: AtomicBool,
    retire: Notify,
    /// Never sent on: its sender lives in this connection's writer task, so
    /// it closes when the writer ends, however it ends (abort included).
    writer_alive: watch::Receiver<()>,
}

impl ConnCtl {
    /// The control, and the sender to move into the writer task.
    pub(crate) fn new() -> (ConnCtl, watch::Sender<()>) {
        let (alive_tx, writer_alive) = watch::channel(());
        (ConnCtl { retiring: AtomicBool::new(false), retire: Notify::new(), writer_alive }, alive_tx)
    }

    /// Tells the writer to send a retire and end.
    pub(crate) fn retire(&self) {
        self.retiring.store(true, Ordering::Release);
        self.retire.notify_one();
    }

    pub(crate) fn is_retiring(&self) -> bool {
        self.retiring.load(Ordering::Acquire)
    }

    pub(crate) async fn retire_notified(&self) {
        self.retire.notified().await
    }

    /// Resolves once the writer has ended. After leave() finished the queue
    /// that means: everything sent and acknowledged, or the connection broke.
    pub(crate) async fn writer_ended(&self) {
        let mut rx = self.writer_alive.clone();
        while rx.changed().await.is_ok() {}
    }
}

/// Events delivered from one neighbour, across its connections: a reader
/// continuing another connection ([`crate::wire::Frame::Resume`]) waits
/// until the events sent before it are delivered, to keep emit order.
#[derive(Default)]
pub(crate) struct Drain {
    delivered: AtomicU64,
    /// Readers in `wait_for`: only then does a delivery wake anyone (the
    /// notify takes a lock, and every batch of every reader delivers).
    waiting: AtomicUsize,
    advanced: Notify,
}

impl Drain {
    pub(crate) fn delivered(&self, n: u64) {
        self.delivered.fetch_add(n, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.advanced.notify_waiters();
        }
    }

    /// Events delivered from this neighbour so far.
    pub(crate) fn count(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Waits until `after` events were delivered, at most `bound`.
    pub(crate) async fn wait_for(&self, after: u64, bound: Duration) {
        // Counted before the check: a delivery after it sees a waiter.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let advanced = self.advanced.notified();
            if self.delivered.load(Ordering::SeqCst) >= after || tokio::time::timeout_at(deadline, advanced).await.is_err() {
                break;
            }
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the writer continues, as the mesh decided.
pub(crate) struct Start {
    pub info: Arc<PeerInfo>,
    /// `None`: retired at birth (send a retire and end).
    pub queue: Option<(Arc<SendQueue>, Arc<tokio::sync::Mutex<()>>)>,
    pub drain: Arc<Drain>,
}

/// The actor's commands to a connection task.
pub(crate) enum ConnCmd {
    Start(Start),
    Teardown(Teardown),
    /// Close unused (our own node, or an abandoned dial).
    Close {
        code: u32,
        reason: &'static [u8],
    },
}
