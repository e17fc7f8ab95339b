//! The path state machine's timers: registrations and probes go out when
//! due, and path events reach the node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::paths::PathEvent;
use super::socket::PathShared;

/// Runs until `cancel`; `on_events` gets what [`super::Paths`] reports.
pub(crate) async fn run(shared: Arc<PathShared>, cancel: CancellationToken, on_events: impl Fn(Vec<PathEvent>) + Send) {
    loop {
        // Permits stored before this round are answered by this round.
        let notified = shared.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let next = shared.run(|p| {
            p.handle_timeout(Instant::now());
            p.next_timeout()
        });
        let events = shared.take_events();
        if !events.is_empty() {
            on_events(events);
        }
        // At least once a second: a timer may have moved earlier meanwhile.
        let wait = next.map(|t| t.saturating_duration_since(Instant::now())).unwrap_or(Duration::from_secs(1)).min(Duration::from_secs(1));
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            () = notified => {}
        }
    }
}
