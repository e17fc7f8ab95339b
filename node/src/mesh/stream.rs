//! A connection's two halves: the reader (frames in: events to the
//! dispatcher, subscriptions to the data plane, gossip to the actor) and the
//! writer (its neighbour's send queue out).

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
use crate::queue::SendQueue;
use crate::ratelog::{RateLog, LOG_EVERY};
use crate::shared::Inner;
use crate::wire::{self, close, Frame, FrameDecoder, PeerAddrs};

/// How long a reader waits for the events of the connection it replaces;
/// past that they are taken as lost with it.
const RESUME_WAIT: Duration = Duration::from_secs(5);

/// Gossip frames longer than this are a protocol error.
const MAX_GOSSIP: usize = 10_000;

/// Reads frames until the stream or the connection ends.
pub(super) async fn run_reader(
    inner: &Arc<Inner>,
    conn: ConnId,
    info: &Arc<PeerInfo>,
    mut recv: quinn::RecvStream,
    mut dec: FrameDecoder,
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
    // Events the peer sent on earlier connections before this one (a switch).
    let mut resume_after: Option<u64> = None;
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
                        resume_after = Some(after);
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
        if let Some(deliveries) = batch.take(info) {
            // Keep emit order across a connection switch: the events the
            // peer sent on the earlier connection go first.
            if let Some(after) = resume_after.take() {
                drain.wait_for(after, RESUME_WAIT).await;
            }
            let n = deliveries.events.len() as u64;
            Counters::add(&inner.plane.counters.events_received, n);
            if inner.plane.dispatch_tx.send(deliveries).await.is_err() {
                return ReaderEnd::Eof;
            }
            drain.delivered(n);
        }
        if skipped > 0 {
            drain.delivered(std::mem::take(&mut skipped));
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
        Frame::Resume { .. } => unreachable!("the reader takes resumes before calling this"),
        Frame::Hello(_) => return Err(ProtocolError::SecondHello),
        // The reader takes events before calling this.
        Frame::Event { .. } => unreachable!("events are read before control frames"),
    }
    Ok(false)
}

/// Ends a retired connection's stream with a retire, and waits (bounded)
/// until the peer has it all: the connection is closed after that, and a
/// close discards what is unacknowledged.
async fn retire(mut send: quinn::SendStream, frame: bytes::Bytes) {
    let _ = send.write_chunk(frame).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
}

/// Sends `queue` on `send` until the queue finishes (leave), the
/// connection is retired, or a write fails. `None`: retired at birth.
pub(super) async fn run_writer(
    mut send: quinn::SendStream,
    queue: Option<(Arc<SendQueue>, Arc<tokio::sync::Mutex<()>>)>,
    ctl: Arc<ConnCtl>,
    conn: quinn::Connection,
    counters: Arc<Counters>,
) {
    let retire_frame = || {
        let mut b = BytesMut::new();
        wire::put_frame(&mut b, &Frame::Retire);
        b.freeze()
    };
    let Some((queue, lock)) = queue else {
        return retire(send, retire_frame()).await;
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
        return retire(send, retire_frame()).await;
    }
    // Continuing another connection's queue: say how many events it sent,
    // so that the peer delivers ours after them.
    let after = queue.taken_events();
    if after > 0 {
        let mut b = BytesMut::new();
        wire::put_frame(&mut b, &Frame::Resume { after });
        if send.write_chunk(b.freeze()).await.is_err() {
            return;
        }
    }
    loop {
        if ctl.is_retiring() {
            // Releases the lock: the new writer continues the queue.
            return retire(send, retire_frame()).await;
        }
        tokio::select! {
            biased;
            _ = ctl.retire_notified() => continue,
            data = queue.take() => match data {
                Some(mut parts) => {
                    Counters::add(&counters.bytes_sent, parts.iter().map(|p| p.len() as u64).sum());
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
