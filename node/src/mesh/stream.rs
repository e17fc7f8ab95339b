//! A connection's two halves: the readers (frames in: events to the
//! dispatcher, subscriptions to the data plane, gossip to the actor) and the
//! writer (its neighbour's send queue out). Each half has a lane per stream
//! (main and express, see [`crate::queue`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tracing::{debug, warn};

use super::errors::ProtocolError;
use super::inbox::Msg;
use super::link::{ConnCtl, Drain};
use super::proto::{ConnId, ReaderEnd};
use crate::event::{BatchBuilder, PeerInfo};
use crate::metrics::Counters;
use crate::perms::PeerPerms;
use crate::queue::{Lane, SendQueue};
use crate::ratelog::{RateLog, LOG_EVERY};
use crate::shared::Inner;
use crate::wire::{self, close, Frame, FrameDecoder, PeerAddrs};

/// How long a reader waits for the events of the connection it replaces;
/// past that they are taken as lost with it.
const RESUME_WAIT: Duration = Duration::from_secs(5);

/// How long a reader at a barrier ([`Frame::After`]) waits for the other
/// stream: it is read by the same connection, so only a stream left behind
/// by a broken connection (a switch that lost events) waits this long.
const BARRIER_WAIT: Duration = Duration::from_secs(30);

/// Gossip frames longer than this are a protocol error.
const MAX_GOSSIP: usize = 10_000;

/// Reads a connection's streams, the main one and (if the peer opened
/// one) its express stream, until both end or the connection does.
pub(super) async fn run_readers(
    inner: &Arc<Inner>,
    conn: ConnId,
    info: &Arc<PeerInfo>,
    main: (quinn::RecvStream, FrameDecoder),
    express: Option<(quinn::RecvStream, FrameDecoder)>,
    drain: &Arc<Drain>,
    perms: Option<Arc<PeerPerms>>,
) -> ReaderEnd {
    let main = run_reader(inner, conn, info, main, Lane::Bulk, drain, perms.clone());
    let Some(stream) = express else { return main.await };
    // The express reader is a task of its own, woken only by its stream:
    // polling a QUIC read that is not ready takes the connection's lock, and
    // one task polls all of its futures at every wake-up.
    let (tx, mut express) = tokio::sync::oneshot::channel();
    let _task = AbortOnDrop({
        let (inner, info, drain) = (inner.clone(), info.clone(), drain.clone());
        inner.clone().spawn_conn(async move {
            let _ = tx.send(run_reader(&inner, conn, &info, stream, Lane::Express, &drain, perms).await);
        })
    });
    tokio::pin!(main);
    let (mut main_end, mut express_done) = (None, false);
    // A broken protocol or a closed connection ends both at once; a
    // stream's clean end waits for the other's (what it still delivers
    // comes before the mesh hears of the end).
    let decisive = |e: &ReaderEnd| matches!(e, ReaderEnd::Protocol(_) | ReaderEnd::Closed { .. });
    loop {
        tokio::select! {
            e = &mut main, if main_end.is_none() => {
                if decisive(&e) {
                    return e;
                }
                main_end = Some(e);
            }
            e = &mut express, if !express_done => {
                let e = e.unwrap_or(ReaderEnd::Eof);
                if decisive(&e) {
                    return e;
                }
                express_done = true;
            }
        }
        if express_done {
            if let Some(e) = main_end.take() {
                // The main stream says what the end means (retire or leave).
                return e;
            }
        }
    }
}

/// Aborts a task when dropped (the express reader, when the main one
/// ends the connection's reading).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Hands a batch to the dispatcher, after the waits it is due (resume on
/// this lane, barrier on the other); false once the dispatcher is gone.
///
/// `skipped` events (refused by the peer's permissions) are counted as
/// delivered with the batch, after the same waits: the counts the other
/// lane's barriers and a later connection's resume wait for include every
/// event sent, and an event counted before the waits could let one sent
/// after it through first.
async fn deliver(
    inner: &Inner,
    info: &Arc<PeerInfo>,
    batch: &mut BatchBuilder,
    skipped: &mut u64,
    lane: Lane,
    drain: &Drain,
    waits: &mut [u64; 2],
) -> bool {
    let deliveries = batch.take(info);
    if deliveries.is_none() && *skipped == 0 {
        return true;
    }
    for l in Lane::BOTH {
        let n = std::mem::take(&mut waits[l as usize]);
        let bound = if l == lane { RESUME_WAIT } else { BARRIER_WAIT };
        if n > 0 && !drain.wait_for(l, n, bound).await {
            if l == lane {
                debug!(peer = %info.id.short(), "the earlier connection's events did not all arrive; taken as lost with it");
            } else {
                warn!(peer = %info.id.short(), ?lane, "the other stream did not reach its barrier in time; delivering out of order");
            }
        }
    }
    let mut n = std::mem::take(skipped);
    if let Some(deliveries) = deliveries {
        let events = deliveries.events.len() as u64;
        n += events;
        Counters::add(&inner.plane.counters.events_received, events);
        if inner.plane.dispatch_tx.send(deliveries).await.is_err() {
            return false;
        }
    }
    drain.delivered(lane, n);
    true
}

/// Reads one stream's frames until it or the connection ends.
async fn run_reader(
    inner: &Arc<Inner>,
    conn: ConnId,
    info: &Arc<PeerInfo>,
    (mut recv, mut dec): (quinn::RecvStream, FrameDecoder),
    lane: Lane,
    drain: &Drain,
    perms: Option<Arc<PeerPerms>>,
) -> ReaderEnd {
    let mut batch = BatchBuilder::new();
    // Events the peer's certificate does not allow it to emit: dropped,
    // counted (as processed, for the resume count of a switch) and logged.
    let mut emit_ok: Option<(Vec<u8>, bool)> = None;
    let (mut skipped, mut forbidden_log) = (0u64, RateLog::new(LOG_EVERY));
    let max_event = inner.settings.max_event_size();
    let mut got_retire = false;
    // Event counts to wait for before the next delivery, per lane: this
    // lane's events sent on earlier connections (a switch), the other
    // lane's events sent before a barrier.
    let mut waits = [0u64; 2];
    loop {
        // Decode everything buffered.
        loop {
            let body = match dec.next_frame() {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e) => return ReaderEnd::Protocol(e.into()),
            };
            // Events take the direct path; every other frame (and any odd
            // encoding of an event) goes through the full parser.
            let (name, offset) = match wire::event_parts(&body) {
                Some(parts) => parts,
                None => match wire::parse(&body) {
                    Ok(Frame::Event { name, payload }) => (name.as_bytes(), body.len() - payload.len()),
                    Ok(Frame::Resume { after }) => {
                        // Keep emit order across a connection switch: the
                        // events the peer sent on the earlier connection go
                        // first.
                        waits[lane as usize] = waits[lane as usize].max(after);
                        continue;
                    }
                    Ok(Frame::After { other }) => {
                        // What came before the barrier does not wait for it.
                        if !deliver(inner, info, &mut batch, &mut skipped, lane, drain, &mut waits).await {
                            return ReaderEnd::Eof;
                        }
                        let o = lane.other() as usize;
                        waits[o] = waits[o].max(other);
                        continue;
                    }
                    Ok(frame) => match control(inner, conn, info, frame).await {
                        Ok(retire) => {
                            got_retire |= retire;
                            continue;
                        }
                        Err(e) => return ReaderEnd::Protocol(e),
                    },
                    Err(e) => return ReaderEnd::Protocol(e.into()),
                },
            };
            let size = name.len() + body.len() - offset;
            if size > max_event {
                return ReaderEnd::Protocol(ProtocolError::EventTooLarge { size, max: max_event });
            }
            if let Some(p) = &perms {
                let ok = match &emit_ok {
                    Some((last, ok)) if last.as_slice() == name => *ok,
                    // An invalid name is set_name's to refuse.
                    _ => std::str::from_utf8(name).map_or(true, |n| p.may_emit(n)),
                };
                if emit_ok.as_ref().is_none_or(|(last, _)| last.as_slice() != name) {
                    emit_ok = Some((name.to_vec(), ok));
                }
                if !ok {
                    skipped += 1;
                    inner.forbidden_events.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if let Some(count) = forbidden_log.note((), 1, std::time::Instant::now()) {
                        warn!(peer = %info.id.short(), name = %info.name, event = %String::from_utf8_lossy(name), count,
                            "event dropped: the peer's certificate does not allow it to emit this (logged at most every 10 s)");
                    }
                    continue;
                }
            }
            if let Err(e) = batch.set_name(name) {
                return ReaderEnd::Protocol(ProtocolError::BadName(e));
            }
            // The payload ends the frame: trim the body to it rather than
            // take another reference to the chunk.
            let mut payload = body;
            payload.advance(offset);
            batch.push(payload);
        }
        if !deliver(inner, info, &mut batch, &mut skipped, lane, drain, &mut waits).await {
            return ReaderEnd::Eof;
        }
        match recv.read_chunk(256 * 1024, true).await {
            // Clean end of stream: retire (a switch) or leave.
            Ok(None) => return if got_retire { ReaderEnd::Retired } else { ReaderEnd::Eof },
            Ok(Some(chunk)) => {
                Counters::add(&inner.plane.counters.bytes_received, chunk.bytes.len() as u64);
                dec.push(chunk.bytes)
            }
            Err(quinn::ReadError::ConnectionLost(e)) => return closed(&e),
            Err(e) => return ReaderEnd::Protocol(ProtocolError::Stream(e.to_string())),
        }
    }
}

/// What a closed connection means for the mesh.
fn closed(e: &quinn::ConnectionError) -> ReaderEnd {
    use quinn::ConnectionError as E;
    let goodbye = matches!(e, E::ApplicationClosed(c) if c.error_code == close::GOODBYE.into()) || matches!(e, E::LocallyClosed);
    let reason = match e {
        E::ApplicationClosed(c) if c.error_code == close::GOODBYE.into() => "left".into(),
        E::ApplicationClosed(c) if c.error_code == close::PROTOCOL.into() => {
            format!("closed by peer: protocol error ({})", String::from_utf8_lossy(&c.reason))
        }
        E::ApplicationClosed(c) if c.error_code == close::REVOKED.into() => "certificate revoked".into(),
        E::ApplicationClosed(c) if c.error_code == close::STUCK.into() => {
            "closed by peer: stuck (its send queue to us stayed full too long; its full policy is disconnect)".into()
        }
        E::TimedOut => "timed out (no answer within the idle timeout)".into(),
        other => other.to_string(),
    };
    ReaderEnd::Closed { goodbye, reason }
}

/// Handles a frame other than an event; `Ok(true)` for a retire.
async fn control(inner: &Arc<Inner>, conn: ConnId, info: &PeerInfo, frame: Frame<'_>) -> Result<bool, ProtocolError> {
    match frame {
        Frame::Subscribe(subs) => inner.plane.remote_subs(info.id, subs, Vec::new()),
        Frame::Unsubscribe(ids) => inner.plane.remote_subs(info.id, Vec::new(), ids),
        Frame::Peers(mut list) => {
            if list.len() > MAX_GOSSIP {
                return Err(ProtocolError::GossipTooLong(list.len()));
            }
            list.iter_mut().for_each(PeerAddrs::bound);
            // Bounded channel: a peer flooding gossip waits here, not in memory.
            // The neighbour on its own relays (registered after its hello).
            if let (Some(me), Some(key)) = (list.iter().find(|p| p.id == info.id), info.addr) {
                let (routes, addrs) = (me.relays.clone(), me.addrs.clone());
                inner.paths.run(|p| p.update_conn(key, &routes, &addrs, std::time::Instant::now()));
            }
            let peers = inner.mesh_peers(list);
            inner.report(Msg::Gossip { conn, peers }).await;
        }
        Frame::Revocations(der) => inner.revocations_from(info, der)?,
        // The peer sends nothing more here; EOF follows.
        Frame::Retire => return Ok(true),
        Frame::Resume { .. } | Frame::After { .. } => unreachable!("the reader takes resumes and barriers before calling this"),
        Frame::Hello(_) => return Err(ProtocolError::SecondHello),
        // The reader takes events before calling this.
        Frame::Event { .. } => unreachable!("events are read before control frames"),
    }
    Ok(false)
}

/// Ends a retired connection's stream with a retire, and waits (bounded)
/// until the peer has it all: the connection is closed after that, and a
/// close discards what is unacknowledged.
async fn retire(mut send: quinn::SendStream) {
    let mut b = BytesMut::new();
    wire::put_frame(&mut b, &Frame::Retire);
    let _ = send.write_chunk(b.freeze()).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
}

/// Retires both streams.
async fn retire_both(main: quinn::SendStream, express: Option<quinn::SendStream>) {
    tokio::join!(retire(main), async {
        if let Some(x) = express {
            retire(x).await
        }
    });
}

/// Sends `queue` on `main` (bulk lane) and `express` (express lane) until
/// the queue finishes (leave), the connection is retired, or a write fails.
/// `None`: retired at birth.
pub(super) async fn run_writer(
    inner: Arc<Inner>,
    main: quinn::SendStream,
    express: Option<quinn::SendStream>,
    queue: Option<(Arc<SendQueue>, Arc<tokio::sync::Mutex<()>>)>,
    ctl: Arc<ConnCtl>,
    conn: quinn::Connection,
    counters: Arc<Counters>,
) {
    let Some((queue, lock)) = queue else {
        return retire_both(main, express).await;
    };
    // One writer at a time: a replacement waits for the retiring writer.
    // Retired before it ever wrote (its replacement may take the lock
    // first): it has taken nothing from the queue, so it only says so.
    let guard = tokio::select! {
        biased;
        _ = ctl.retire_notified() => None,
        g = lock.lock_owned() => Some(g),
        _ = conn.closed() => return,
    };
    if guard.is_none() || ctl.is_retiring() {
        return retire_both(main, express).await;
    }
    // Both lanes, each on its stream, the express one in a task of its own
    // (woken only for its own lane); the lock is held until both end.
    let express = express.map(|x| {
        // QUIC sends the express stream's data before the main one's.
        let _ = x.set_priority(1);
        let (queue, ctl, counters) = (queue.clone(), ctl.clone(), counters.clone());
        AbortOnDrop(inner.spawn_conn(async move { write_lane(x, Lane::Express, &queue, &ctl, &counters).await }))
    });
    write_lane(main, Lane::Bulk, &queue, &ctl, &counters).await;
    if let Some(mut x) = express {
        let _ = (&mut x.0).await;
    }
}

/// One lane of the queue onto its stream.
async fn write_lane(mut send: quinn::SendStream, lane: Lane, queue: &SendQueue, ctl: &ConnCtl, counters: &Counters) {
    // Continuing another connection's queue: say how many events it sent,
    // so that the peer delivers ours after them.
    let after = queue.taken_events(lane);
    if after > 0 {
        let mut b = BytesMut::new();
        wire::put_frame(&mut b, &Frame::Resume { after });
        if send.write_chunk(b.freeze()).await.is_err() {
            return;
        }
    }
    loop {
        if ctl.is_retiring() {
            // Releases the lock (once both lanes are here): the new writer
            // continues the queue.
            return retire(send).await;
        }
        tokio::select! {
            biased;
            _ = ctl.retire_notified() => continue,
            data = queue.take(lane) => match data {
                Some(t) => {
                    let mut parts = t.parts;
                    Counters::add(&counters.bytes_sent, parts.iter().map(|p| p.len() as u64).sum());
                    if let Err(e) = send.write_all_chunks(&mut parts).await {
                        debug!(error = %e, ?lane, "write failed");
                        return;
                    }
                    queue.written(lane, t.events);
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
