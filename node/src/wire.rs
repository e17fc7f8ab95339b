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
mod tests {
    use super::*;

    #[test]
    fn a_frame_header_alone_reserves_little() {
        let mut dec = FrameDecoder::new(32 << 20);
        let mut head = BytesMut::new();
        put_preamble(&mut head);
        head.put_u32_le(16 << 20);
        head.put_u8(2);
        dec.push(head.freeze());
        dec.push(Bytes::from_static(b"x"));
        assert_eq!(dec.next_frame(), Ok(None));
        assert!(dec.partial.capacity() <= 2 * RESERVE_AHEAD, "{} bytes reserved for 2 received", dec.partial.capacity());
        // The rest arrives in pieces: the frame is whole and right.
        let mut sent = 2;
        while sent < 16 << 20 {
            let n = (1 << 20).min((16 << 20) - sent);
            dec.push(Bytes::from(vec![sent as u8; n]));
            sent += n;
            assert!(dec.partial.capacity() <= 2 * sent.max(RESERVE_AHEAD) + 64, "{} reserved for {sent}", dec.partial.capacity());
        }
        let f = dec.next_frame().unwrap().unwrap();
        assert_eq!(f.len(), 16 << 20);
        assert_eq!(&f[..2], &[2, b'x']);
    }

    #[test]
    fn a_length_claim_past_the_limit_is_an_error_not_an_allocation() {
        // Subscribe, one entry, id 1, its selector's length claimed as 2^60
        // (a 20-byte frame once aborted the process: "memory allocation of
        // 1152921504606846976 bytes failed"), then 16 MiB + 1.
        for claim in [1u64 << 60, u32::MAX as u64, DECODE_LIMIT as u64 + 1] {
            let mut body = vec![2u8, 1, 1, 0xfd];
            body.extend_from_slice(&claim.to_le_bytes());
            body.extend_from_slice(b"abc");
            assert!(matches!(parse(&body), Err(WireError::Malformed(_))), "{claim}");
        }
    }

    #[test]
    fn peer_lists_are_bounded_keeping_the_first_distinct_entries() {
        let a = |i: u32| SocketAddr::from((std::net::Ipv4Addr::from(0xCB00_7100 + i), 4816));
        let r = |i: u8| RelayRoute { relay: a(200), id: [i; 16] };
        // Duplicates everywhere, far more than the bound.
        let mut p = PeerAddrs {
            id: NodeId([1; 16]),
            addrs: (0..100_000).map(|i| a(i % 40)).collect(),
            relays: (0..50).map(|i| r(i % 6)).collect(),
        };
        p.bound();
        assert_eq!(p.addrs, (0..MAX_PEER_ADDRS as u32).map(a).collect::<Vec<_>>());
        assert_eq!(p.relays, (0..MAX_PEER_RELAYS as u8).map(r).collect::<Vec<_>>());
        let mut short = PeerAddrs { id: NodeId([1; 16]), addrs: vec![a(3), a(1), a(3), a(2)], relays: vec![] };
        short.bound();
        assert_eq!(short.addrs, vec![a(3), a(1), a(2)]);
    }

    fn sample() -> Vec<Frame<'static>> {
        vec![
            Frame::Hello(Hello {
                id: NodeId([7; 16]),
                nonce: [9; 16],
                port: 4816,
                addrs: vec!["127.0.0.1:4816".parse().unwrap(), "[::1]:4816".parse().unwrap()],
                relays: vec![RelayRoute { relay: "203.0.113.1:4000".parse().unwrap(), id: [5; 16] }],
                observed: "198.18.0.1:5000".parse().unwrap(),
                dial: 3,
                express: true,
            }),
            Frame::Peers(vec![PeerAddrs { id: NodeId([1; 16]), addrs: vec!["1.2.3.4:1".parse().unwrap()], relays: vec![] }]),
            Frame::Subscribe(vec![WireSub { id: 1, selector: "a.+".into(), spy: true }]),
            Frame::Unsubscribe(vec![1, 2, 3]),
            Frame::Event { name: "music", payload: b"\xa3utz" },
            Frame::Event { name: "big", payload: &[0u8; 70_000] },
            Frame::Retire,
            Frame::Resume { after: 12345 },
            Frame::Revocations(b"PBRL\x01 and the rest"),
            Frame::After { other: 77 },
        ]
    }

    #[test]
    fn round_trip_byte_by_byte() {
        let mut out = BytesMut::new();
        put_preamble(&mut out);
        for f in sample() {
            put_frame(&mut out, &f);
        }
        let out = out.freeze();
        // Every chunking: byte by byte, a few odd sizes, all at once.
        for step in [1usize, 2, 3, 5, 7, 13, 64, out.len()] {
            let mut dec = FrameDecoder::new(1 << 20);
            let mut got = Vec::new();
            for at in (0..out.len()).step_by(step) {
                dec.push(out.slice(at..(at + step).min(out.len())));
                while let Some(body) = dec.next_frame().unwrap() {
                    got.push(body);
                }
            }
            let parsed: Vec<Frame<'_>> = got.iter().map(|b| parse(b).unwrap()).collect();
            assert_eq!(parsed, sample(), "chunks of {step}");
            assert_eq!(dec.pending(), 0);
        }
    }

    #[test]
    fn whole_frames_are_not_copied() {
        let mut out = BytesMut::new();
        put_preamble(&mut out);
        put_event(&mut out, "a.b", b"payload");
        put_event(&mut out, "a.b", b"second");
        let out = out.freeze();
        let mut dec = FrameDecoder::new(1 << 20);
        dec.push(out.clone());
        let first = dec.next_frame().unwrap().unwrap();
        assert!(out.as_ptr_range().contains(&first.as_ptr()), "a slice of the chunk");
        assert!(dec.next_frame().unwrap().is_some());
        assert_eq!(dec.next_frame().unwrap(), None);
        // Drained: the decoder keeps no reference to the chunk.
        drop(first);
        assert!(out.is_unique(), "an idle decoder holds no receive buffer");
        // A second push before the frames are taken still keeps order.
        let mut dec = FrameDecoder::new(1 << 20);
        dec.push(out.slice(..10));
        dec.push(out.slice(10..));
        let a = dec.next_frame().unwrap().unwrap();
        let b = dec.next_frame().unwrap().unwrap();
        assert_eq!(parse(&a).unwrap(), Frame::Event { name: "a.b", payload: b"payload" });
        assert_eq!(parse(&b).unwrap(), Frame::Event { name: "a.b", payload: b"second" });
    }

    #[test]
    fn put_event_is_bincode_and_fast_parse_agrees() {
        for nlen in [1usize, 7, 250, 251, 300, 1024] {
            for plen in [0usize, 1, 16, 250, 251, 252, 1024, 65535, 65536, 70_000] {
                let name = "n".repeat(nlen);
                let payload: Vec<u8> = (0..plen).map(|i| i as u8).collect();
                let mut a = BytesMut::new();
                put_event(&mut a, &name, &payload);
                let mut b = BytesMut::new();
                put_frame(&mut b, &Frame::Event { name: &name, payload: &payload });
                assert_eq!(a, b, "name {nlen} payload {plen}");
                let mut head = BytesMut::new();
                put_event_head(&mut head, &name, payload.len());
                head.extend_from_slice(&payload);
                assert_eq!(a, head, "head + payload, name {nlen} payload {plen}");
                let body = &a[4..];
                let slow: (Frame<'_>, usize) = bincode::serde::borrow_decode_from_slice(body, config()).unwrap();
                assert_eq!(parse_event(body), Some(slow.0));
                // Truncated or padded bodies never take the fast path.
                assert_eq!(parse_event(&body[..body.len() - 1]), None);
                let mut padded = body.to_vec();
                padded.push(0);
                assert_eq!(parse_event(&padded), None);
            }
        }
        assert_eq!(parse_event(b"\x04\x01\xff\x00"), None, "bad UTF-8 goes to bincode");
    }

    #[test]
    fn event_len_bound_holds() {
        for (n, p) in [("a", 0usize), ("music", 16), ("x".repeat(300).as_str(), 70_000)].iter().map(|(n, p)| (n.to_string(), *p)) {
            let payload = vec![1u8; p];
            let mut b = BytesMut::new();
            put_event(&mut b, &n, &payload);
            assert!(b.len() <= event_frame_len(&n, &payload), "{} > bound", b.len());
        }
    }

    #[test]
    fn version_and_magic_are_checked() {
        for theirs in [PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1] {
            let mut pre = b"PBUS".to_vec();
            pre.extend_from_slice(&theirs.to_le_bytes());
            let mut dec = FrameDecoder::new(100);
            dec.push(Bytes::from(pre));
            assert_eq!(dec.next_frame(), Err(WireError::Version { ours: PROTOCOL_VERSION, theirs }));
        }
        let mut dec = FrameDecoder::new(100);
        dec.push(Bytes::from_static(b"GET "));
        assert_eq!(dec.next_frame(), Err(WireError::BadMagic));
        let mut dec = FrameDecoder::new(100);
        dec.push(Bytes::from_static(b"PB"));
        assert_eq!(dec.next_frame(), Ok(None));
        dec.push(Bytes::from_static(b"X"));
        assert_eq!(dec.next_frame(), Err(WireError::BadMagic));
    }

    #[test]
    fn oversized_is_refused_before_buffering() {
        let mut b = BytesMut::new();
        put_preamble(&mut b);
        b.put_slice(b"\xff\xff\xff\xff");
        let mut dec = FrameDecoder::new(100);
        dec.push(b.freeze());
        assert!(matches!(dec.next_frame(), Err(WireError::Oversized { .. })));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for body in [&b""[..], b"\xff\xff\xff", b"\x04\x05abc", b"\x02\x01\xfd\xff\xff\xff\xff\xff\xff\xff\xff"] {
            assert!(parse(body).is_err(), "{body:?}");
        }
        // A valid frame with trailing junk.
        let mut b = BytesMut::new();
        put_frame(&mut b, &Frame::Retire);
        let mut body = b[4..].to_vec();
        body.push(0);
        assert!(parse(&body).is_err());
    }
}
