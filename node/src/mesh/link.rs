//! What a connection's tasks share with the actor: its control (retire,
//! writer's end), the per-neighbour delivery count that keeps emit order
//! across a switch, and the actor's commands to a connection task.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::proto::Teardown;
use crate::event::PeerInfo;
use crate::queue::{Lane, SendQueue};

/// How long leave() lets writers send what is queued and the peers
/// acknowledge it, at most.
pub(crate) const LEAVE_FLUSH: Duration = Duration::from_secs(3);

/// Per-connection control shared by its reader, its writer and the actor.
pub(crate) struct ConnCtl {
    /// Set when this connection is being retired in favour of another
    /// (watched: both of the writer's lanes wait for it).
    retiring: watch::Sender<bool>,
    /// Never sent on: its sender lives in this connection's writer task, so
    /// it closes when the writer ends, however it ends (abort included).
    writer_alive: watch::Receiver<()>,
}

impl ConnCtl {
    /// The control, and the sender to move into the writer task.
    pub(crate) fn new() -> (ConnCtl, watch::Sender<()>) {
        let (alive_tx, writer_alive) = watch::channel(());
        (ConnCtl { retiring: watch::channel(false).0, writer_alive }, alive_tx)
    }

    /// Tells the writer to send a retire and end.
    pub(crate) fn retire(&self) {
        self.retiring.send_replace(true);
    }

    pub(crate) fn is_retiring(&self) -> bool {
        *self.retiring.borrow()
    }

    /// Resolves once the connection is being retired.
    pub(crate) async fn retire_notified(&self) {
        let mut rx = self.retiring.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Resolves once the writer has ended. After leave() finished the queue
    /// that means: everything sent and acknowledged, or the connection broke.
    pub(crate) async fn writer_ended(&self) {
        let mut rx = self.writer_alive.clone();
        while rx.changed().await.is_ok() {}
    }
}

/// Events delivered from one neighbour, per lane (main and express
/// stream), across its connections: a reader continuing another
/// connection ([`crate::wire::Frame::Resume`]) waits until the events sent
/// before it on its lane are delivered, to keep emit order; a reader at a
/// barrier ([`crate::wire::Frame::After`]) waits for the other lane's count.
#[derive(Default)]
pub(crate) struct Drain {
    lanes: [LaneDrain; 2],
}

#[derive(Default)]
struct LaneDrain {
    delivered: AtomicU64,
    /// Readers in `wait_for`: only then does a delivery wake anyone (the
    /// notify takes a lock, and every batch of every reader delivers).
    waiting: AtomicUsize,
    advanced: Notify,
}

impl Drain {
    pub(crate) fn delivered(&self, lane: Lane, n: u64) {
        let l = &self.lanes[lane as usize];
        l.delivered.fetch_add(n, Ordering::SeqCst);
        if l.waiting.load(Ordering::SeqCst) > 0 {
            l.advanced.notify_waiters();
        }
    }

    /// Events delivered from this neighbour so far, both lanes (status).
    pub(crate) fn count(&self) -> u64 {
        self.lanes.iter().map(|l| l.delivered.load(Ordering::Relaxed)).sum()
    }

    /// Waits until `after` events of `lane` were delivered, at most `bound`.
    /// False if the bound passed first.
    pub(crate) async fn wait_for(&self, lane: Lane, after: u64, bound: Duration) -> bool {
        let l = &self.lanes[lane as usize];
        if l.delivered.load(Ordering::SeqCst) >= after {
            return true;
        }
        // Counted before the check: a delivery after it sees a waiter.
        l.waiting.fetch_add(1, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + bound;
        let reached = loop {
            let advanced = l.advanced.notified();
            if l.delivered.load(Ordering::SeqCst) >= after {
                break true;
            }
            if tokio::time::timeout_at(deadline, advanced).await.is_err() {
                break l.delivered.load(Ordering::SeqCst) >= after;
            }
        };
        l.waiting.fetch_sub(1, Ordering::SeqCst);
        reached
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
