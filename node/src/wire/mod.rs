//! The wire protocol, and all of its encoding: nothing else in the crate
//! touches bytes on the wire.
//!
//! Each side of a connection opens one unidirectional QUIC stream (the main
//! stream) and writes, in order: the 4-byte magic `PBUS`, the protocol
//! version (u16, little endian), then frames. A frame is a u32 little-endian body length followed
//! by the body, a [`Frame`] encoded with bincode 2 (serde, standard config).
//! The version is checked before any frame is parsed, so a future protocol
//! change is reported as such instead of being misparsed. The first frame is
//! always [`Frame::Hello`].
//!
//! A sender whose hello says [`Hello::express`] opens a second
//! unidirectional stream right after the main one, the *express stream*,
//! which starts with the same magic and version and then carries only small
//! events (and [`Frame::Resume`], [`Frame::After`], [`Frame::Retire`]); it
//! has a higher QUIC priority, so a small event never waits behind the big
//! ones queued on the main stream (see [`crate::queue`] for which event goes
//! where and how order per name is kept). Subscriptions, gossip and big
//! events stay on the main stream.

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::id::NodeId;

/// QUIC ALPN protocol id.
pub const ALPN: &[u8] = b"partybus/1";
/// Stream magic.
pub const MAGIC: [u8; 4] = *b"PBUS";
/// Protocol version spoken by this build.
///
/// 2: [`Hello::dial`] (the duplicate-connection rule needs a rank both ends
/// agree on).
/// 3: [`Frame::Resume`] (in-order delivery across a connection switch).
/// 4: relay routes in [`Hello::relays`] and [`PeerAddrs::relays`].
/// 5: [`Hello::nonce`]: node ids are bound to the certificate's name.
/// 6: [`Frame::Revocations`] (a hood's signed revocation list spreads through the mesh).
/// 7: the express stream ([`Hello::express`], [`Frame::After`]).
pub const PROTOCOL_VERSION: u16 = 7;
/// Bytes of magic + version.
pub const PREAMBLE_LEN: usize = 6;
/// The largest hello accepted (one of [`MAX_PEER_ADDRS`] addresses and
/// [`MAX_PEER_RELAYS`] relays takes well under 2 KiB).
pub const MAX_HELLO: usize = 64 * 1024;
/// Addresses one hello or gossip entry may name; the rest are dropped.
pub const MAX_PEER_ADDRS: usize = 32;
/// Relay routes one hello or gossip entry may name; the rest are dropped.
pub const MAX_PEER_RELAYS: usize = 4;
/// Frame bytes on top of an event's name and payload that `max_frame` allows.
pub const FRAME_OVERHEAD: usize = 64 * 1024;

/// QUIC application close codes.
pub mod close {
    /// The node leaves the hood (`leave()`): do not re-dial.
    pub const GOODBYE: u32 = 0x10;
    /// A second connection between the same two nodes: the other one stays.
    pub const DUPLICATE: u32 = 0x11;
    /// The peer turned out to be ourselves.
    pub const SELF_CONNECT: u32 = 0x12;
    /// The peer broke the protocol (malformed or oversized frame, limits).
    pub const PROTOCOL: u32 = 0x13;
    /// The peer speaks another protocol version.
    pub const VERSION: u32 = 0x14;
    /// The peer stayed stuck too long with a full send queue (policy `Disconnect`).
    pub const STUCK: u32 = 0x15;
    /// The peer's certificate is revoked by the hood's revocation list.
    pub const REVOKED: u32 = 0x16;
}

/// A subscription as it travels: an id unique per sender (never reused
/// while the sender runs) and the selector text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSub {
    pub id: u64,
    pub selector: String,
    pub spy: bool,
}

/// A way to reach a node through a relay: the relay's address and the id
/// the node registered there (`crate::relay`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RelayRoute {
    pub relay: SocketAddr,
    pub id: [u8; 16],
}

/// What a node tells another about a third: its id and where to reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddrs {
    pub id: NodeId,
    pub addrs: Vec<SocketAddr>,
    /// Relays it is registered at.
    pub relays: Vec<RelayRoute>,
}

/// The first frame on every stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Id of the sending node (new at every start):
    /// `NodeId::bound(name in its certificate, nonce)`, checked by the receiver.
    pub id: NodeId,
    /// The random part of `id`.
    pub nonce: crate::id::IdNonce,
    /// The sender's UDP port (its QUIC endpoint).
    pub port: u16,
    /// Addresses the sender believes it can be reached at, and (for hole
    /// punching) where others see it.
    pub addrs: Vec<SocketAddr>,
    /// Relays the sender is registered at.
    pub relays: Vec<RelayRoute>,
    /// The address at which the sender sees the receiver (the receiver's
    /// "observed address"); unspecified when the connection is relayed.
    pub observed: SocketAddr,
    /// Sent by the dialer: its number for this connection, larger for
    /// every later one (a per-process counter; ids are new at every start).
    /// Both ends rank duplicate connections by it
    /// (`peers::Rank`). The accepting side sends 0.
    pub dial: u64,
    /// The sender opened an express stream on this connection, right
    /// after this one (the receiver accepts it before the hellos are over).
    pub express: bool,
}

/// Keeps the first [`MAX_PEER_ADDRS`] distinct addresses and
/// [`MAX_PEER_RELAYS`] distinct relay routes: what a peer says about itself
/// or others costs bounded memory and time, however long its lists.
fn bound_lists(addrs: &mut Vec<SocketAddr>, relays: &mut Vec<RelayRoute>) {
    fn dedup_truncate<T: Copy + Eq + std::hash::Hash>(v: &mut Vec<T>, max: usize) {
        let mut seen = std::collections::HashSet::with_capacity(max);
        let mut kept = 0;
        for i in 0..v.len() {
            if kept == max {
                break;
            }
            if seen.insert(v[i]) {
                v.swap(kept, i);
                kept += 1;
            }
        }
        v.truncate(kept);
    }
    dedup_truncate(addrs, MAX_PEER_ADDRS);
    dedup_truncate(relays, MAX_PEER_RELAYS);
}

impl Hello {
    /// See [`bound_lists`].
    pub fn bound(&mut self) {
        bound_lists(&mut self.addrs, &mut self.relays);
    }
}

impl PeerAddrs {
    /// See [`bound_lists`].
    pub fn bound(&mut self) {
        bound_lists(&mut self.addrs, &mut self.relays);
    }
}

/// One protocol frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame<'a> {
    Hello(Hello),
    /// Gossip: other neighbours of the sender.
    Peers(Vec<PeerAddrs>),
    /// Add subscriptions (idempotent by id).
    Subscribe(Vec<WireSub>),
    /// Remove subscriptions (idempotent).
    Unsubscribe(Vec<u64>),
    /// An event. Borrowed on decode: no copy of the payload.
    Event {
        name: &'a str,
        #[serde(with = "serde_bytes", borrow)]
        payload: &'a [u8],
    },
    /// The sender retires this connection in favour of another one to the
    /// same node; nothing follows on this stream.
    Retire,
    /// First on a connection that continues another one's send queue (a
    /// switch): `after` event frames were sent to this node on the earlier
    /// connections. The receiver delivers the events that follow only once
    /// it has delivered that many: the two ends may see the connections
    /// complete in opposite orders, so the earlier connection's events can
    /// still be on their way when this one is read.
    Resume {
        after: u64,
    },
    /// The hood's revocation list in force at the sender (its signed
    /// encoding, `partybus_pki::RevocationList::as_der`): sent to every
    /// neighbour when a newer list is applied, and to a new neighbour. The
    /// receiver applies it if it is newer than its own and signed by the
    /// hood's key; a list that is not is a protocol error.
    Revocations(#[serde(with = "serde_bytes", borrow)] &'a [u8]),
    /// A barrier between the sender's two streams: the events that follow
    /// on this stream are delivered only once `other` events of the
    /// sender's other stream (main or express; counted like
    /// [`Frame::Resume`], across connections) have been delivered. The
    /// sender puts one where the order of its events would otherwise depend
    /// on which stream the receiver reads first.
    After {
        other: u64,
    },
}

/// Wire errors; each closes the connection with [`close::PROTOCOL`] or [`close::VERSION`].
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("stream does not start with the partybus magic (not a partybus peer?)")]
    BadMagic,
    #[error("peer speaks protocol version {theirs}, this node speaks {ours}: upgrade the older node")]
    Version { ours: u16, theirs: u16 },
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversized { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// What decoding one frame body may claim in all (lengths of strings and
/// lists): bincode reserves what a length says before reading it, so
/// without a limit a 20-byte frame claiming a 2^60-byte string aborted the
/// process. Above the largest control frame a node sends (10,000
/// subscriptions of 1 KiB); events take [`event_parts`] and are bounded by
/// `max_frame` alone.
pub const DECODE_LIMIT: usize = 16 << 20;

fn decode_config(
) -> bincode::config::Configuration<bincode::config::LittleEndian, bincode::config::Varint, bincode::config::Limit<DECODE_LIMIT>> {
    config().with_limit::<DECODE_LIMIT>()
}

/// Writes magic and version.
pub fn put_preamble(buf: &mut BytesMut) {
    buf.put_slice(&MAGIC);
    buf.put_u16_le(PROTOCOL_VERSION);
}

/// Appends one length-prefixed frame to `buf`.
pub fn put_frame(buf: &mut BytesMut, frame: &Frame<'_>) {
    let start = buf.len();
    buf.put_u32_le(0);
    let mut w = buf.writer();
    // Writing into memory cannot fail, and every Frame is encodable.
    bincode::serde::encode_into_std_write(frame, &mut w, config()).expect("frame encoding into memory");
    let buf = w.into_inner();
    let len = (buf.len() - start - 4) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// The variant index of [`Frame::Event`] (bincode encodes it as a varint: one byte).
const EVENT_VARIANT: u8 = 4;

/// bincode 2 `standard()` varint of a length.
fn put_varint(buf: &mut BytesMut, v: usize) {
    let v = v as u64;
    if v < 251 {
        buf.put_u8(v as u8);
    } else if v <= u64::from(u16::MAX) {
        buf.put_u8(251);
        buf.put_u16_le(v as u16);
    } else if v <= u64::from(u32::MAX) {
        buf.put_u8(252);
        buf.put_u32_le(v as u32);
    } else {
        buf.put_u8(253);
        buf.put_u64_le(v);
    }
}

/// Reads a bincode 2 `standard()` varint; `None` if truncated.
fn get_varint(b: &[u8]) -> Option<(usize, usize)> {
    let (&first, rest) = b.split_first()?;
    let (v, used) = match first {
        0..=250 => (u64::from(first), 1),
        251 => (u64::from(u16::from_le_bytes(rest.get(..2)?.try_into().ok()?)), 3),
        252 => (u64::from(u32::from_le_bytes(rest.get(..4)?.try_into().ok()?)), 5),
        253 => (u64::from_le_bytes(rest.get(..8)?.try_into().ok()?), 9),
        _ => return None,
    };
    Some((usize::try_from(v).ok()?, used))
}

/// Appends an event frame without its payload, which must follow it on the
/// stream (queued by reference: [`crate::queue::SendQueue::push_with_tail`]).
/// With the payload, the same bytes as [`put_event`].
pub fn put_event_head(buf: &mut BytesMut, name: &str, payload_len: usize) {
    let start = buf.len();
    buf.put_u32_le(0);
    buf.put_u8(EVENT_VARIANT);
    put_varint(buf, name.len());
    buf.put_slice(name.as_bytes());
    put_varint(buf, payload_len);
    let len = (buf.len() - start - 4 + payload_len) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Appends an event frame; the hot path. Same bytes as
/// `put_frame(Frame::Event{..})` (a test checks), written directly.
pub fn put_event(buf: &mut BytesMut, name: &str, payload: &[u8]) {
    let start = buf.len();
    buf.put_u32_le(0);
    buf.put_u8(EVENT_VARIANT);
    put_varint(buf, name.len());
    buf.put_slice(name.as_bytes());
    put_varint(buf, payload.len());
    buf.put_slice(payload);
    let len = (buf.len() - start - 4) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// The name (unchecked bytes) and the payload's offset of an event frame
/// body, decoded directly: the receive hot path. `None` for anything else
/// or anything unusual, which [`parse`] then leaves to bincode. The payload
/// always runs to the end of the body.
pub fn event_parts(body: &[u8]) -> Option<(&[u8], usize)> {
    let (&variant, rest) = body.split_first()?;
    if variant != EVENT_VARIANT {
        return None;
    }
    let (nlen, used) = get_varint(rest)?;
    let rest = &rest[used..];
    let name = rest.get(..nlen)?;
    let rest = &rest[nlen..];
    let (plen, used) = get_varint(rest)?;
    if rest.len() - used != plen {
        return None;
    }
    Some((name, body.len() - plen))
}

/// [`event_parts`] as a [`Frame`].
fn parse_event(body: &[u8]) -> Option<Frame<'_>> {
    let (name, offset) = event_parts(body)?;
    Some(Frame::Event { name: std::str::from_utf8(name).ok()?, payload: &body[offset..] })
}

/// Bytes one event frame takes on the wire (upper bound).
pub fn event_frame_len(name: &str, payload: &[u8]) -> usize {
    4 + 1 + 9 + name.len() + 9 + payload.len()
}

/// Parses one frame body.
pub fn parse(body: &[u8]) -> Result<Frame<'_>, WireError> {
    if let Some(f) = parse_event(body) {
        return Ok(f);
    }
    let (frame, used): (Frame<'_>, usize) =
        bincode::serde::borrow_decode_from_slice(body, decode_config()).map_err(|e| WireError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(WireError::Malformed(format!("{} trailing bytes after the frame", body.len() - used)));
    }
    Ok(frame)
}

/// What a frame split across chunks gets reserved at once; larger frames
/// grow (by doubling) as their bytes arrive.
const RESERVE_AHEAD: usize = 256 * 1024;

/// Splits an incoming byte stream into frame bodies (sans I/O): feed it the
/// chunks QUIC hands over with [`FrameDecoder::push`], take frames with
/// [`FrameDecoder::next_frame`].
///
/// A frame that lies wholly inside a chunk is returned as a slice of that
/// chunk: no copy, one reference count. Only a frame split across chunks is
/// assembled in a buffer of its own, which then becomes the frame; so an
/// idle connection holds no buffer at all.
///
/// Memory is bounded: a frame announcing more than `max_frame` bytes is an
/// error before any of it is buffered.
pub struct FrameDecoder {
    /// The unread rest of the last chunk (empty while `partial` is not).
    chunk: Bytes,
    /// The start of a frame (or of the preamble) that a chunk boundary cut.
    partial: BytesMut,
    max_frame: usize,
    preamble_done: bool,
}

impl FrameDecoder {
    pub fn new(max_frame: usize) -> FrameDecoder {
        FrameDecoder { chunk: Bytes::new(), partial: BytesMut::new(), max_frame, preamble_done: false }
    }

    /// Changes the largest frame accepted from now on (the hello has a
    /// smaller limit than the events after it).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// Hands over the next bytes of the stream. Take the frames before
    /// pushing more: only then are frames slices of the chunk they came in.
    pub fn push(&mut self, chunk: Bytes) {
        if self.chunk.is_empty() && self.partial.is_empty() {
            self.chunk = chunk;
        } else {
            let rest = std::mem::take(&mut self.chunk);
            self.partial.extend_from_slice(&rest);
            self.partial.extend_from_slice(&chunk);
        }
    }

    /// Bytes received but not yet returned as frames.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.chunk.len() + self.partial.len()
    }

    /// The first `n` bytes of the stream, if `n` have arrived. When they
    /// are not in one piece, they are gathered in `partial`.
    fn front(&mut self, n: usize) -> Option<&[u8]> {
        if self.partial.is_empty() && self.chunk.len() >= n {
            return Some(&self.chunk[..n]);
        }
        // Room for the whole frame at once up to `RESERVE_AHEAD` (one
        // allocation, no growth by doubling, for every event up to that
        // size); beyond, room for twice what has arrived: a header alone
        // announcing 16 MB once pinned 16 MB per connection.
        let have = self.partial.len() + self.chunk.len();
        let room = n.min(have.saturating_mul(2).max(RESERVE_AHEAD));
        self.partial.reserve(room.saturating_sub(self.partial.len()));
        let need = n.saturating_sub(self.partial.len()).min(self.chunk.len());
        if need > 0 {
            self.partial.extend_from_slice(&self.chunk[..need]);
            self.chunk.advance(need);
            if self.chunk.is_empty() {
                self.chunk = Bytes::new();
            }
        }
        (self.partial.len() >= n).then(|| &self.partial[..n])
    }

    /// Removes the first `n` bytes (which [`Self::front`] found) from the stream.
    fn split(&mut self, n: usize) -> Bytes {
        if self.partial.is_empty() {
            let frame = self.chunk.split_to(n);
            if self.chunk.is_empty() {
                // An empty slice still holds the chunk's allocation: let go
                // of it, so an idle link keeps no receive buffer alive.
                self.chunk = Bytes::new();
            }
            frame
        } else if self.partial.len() == n {
            // The assembled frame keeps the buffer; none is left behind.
            std::mem::take(&mut self.partial).freeze()
        } else {
            self.partial.split_to(n).freeze()
        }
    }

    /// The next complete frame body, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, WireError> {
        if !self.preamble_done {
            let Some(pre) = self.front(PREAMBLE_LEN) else {
                let got = &self.partial[..self.partial.len().min(4)];
                if !MAGIC.starts_with(got) {
                    return Err(WireError::BadMagic);
                }
                return Ok(None);
            };
            if pre[..4] != MAGIC {
                return Err(WireError::BadMagic);
            }
            let theirs = u16::from_le_bytes([pre[4], pre[5]]);
            if theirs != PROTOCOL_VERSION {
                return Err(WireError::Version { ours: PROTOCOL_VERSION, theirs });
            }
            self.split(PREAMBLE_LEN);
            self.preamble_done = true;
        }
        let Some(head) = self.front(4) else { return Ok(None) };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > self.max_frame {
            return Err(WireError::Oversized { len, max: self.max_frame });
        }
        if self.front(4 + len).is_none() {
            return Ok(None);
        }
        let mut frame = self.split(4 + len);
        frame.advance(4);
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests;
