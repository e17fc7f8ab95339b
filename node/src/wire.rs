//! The wire protocol, and all of its encoding: nothing else in the crate
//! touches bytes on the wire.
//!
//! Each side of a connection opens one unidirectional QUIC stream and writes,
//! in order: the 4-byte magic `PBUS`, the protocol version (u16, little
//! endian), then frames. A frame is a u32 little-endian body length followed
//! by the body, a [`Frame`] encoded with bincode 2 (serde, standard config).
//! The version is checked before any frame is parsed, so a future protocol
//! change is reported as such instead of being misparsed. The first frame is
//! always [`Frame::Hello`].
//!
//! Keeping subscriptions, gossip and events on one ordered stream per
//! direction means a subscription always arrives before the events that it
//! makes a peer send, and an unsubscribe after them.

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::id::NodeId;

/// QUIC ALPN protocol id.
pub const ALPN: &[u8] = b"partybus/1";
/// Stream magic.
pub const MAGIC: [u8; 4] = *b"PBUS";
/// Protocol version spoken by this build.
pub const PROTOCOL_VERSION: u16 = 1;
/// Bytes of magic + version.
pub const PREAMBLE_LEN: usize = 6;
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
}

/// A subscription as it travels: an id unique per sender (never reused
/// while the sender runs) and the selector text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSub {
    pub id: u64,
    pub selector: String,
    pub spy: bool,
}

/// What a node tells another about a third: its id and where to reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddrs {
    pub id: NodeId,
    pub addrs: Vec<SocketAddr>,
}

/// The first frame on every stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Random id of the sending node (new at every start).
    pub id: NodeId,
    /// The sender's UDP port (its QUIC endpoint).
    pub port: u16,
    /// Addresses the sender believes it can be reached at.
    pub addrs: Vec<SocketAddr>,
    /// The address at which the sender sees the receiver (the receiver's
    /// "observed address").
    pub observed: SocketAddr,
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
}

/// Wire errors; each closes the connection with [`close::PROTOCOL`] or [`close::VERSION`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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

/// Decodes an event frame directly (the hot path); `None` for anything else
/// or anything unusual, which [`parse`] then leaves to bincode.
fn parse_event(body: &[u8]) -> Option<Frame<'_>> {
    let (&variant, rest) = body.split_first()?;
    if variant != EVENT_VARIANT {
        return None;
    }
    let (nlen, used) = get_varint(rest)?;
    let rest = &rest[used..];
    let name = std::str::from_utf8(rest.get(..nlen)?).ok()?;
    let rest = &rest[nlen..];
    let (plen, used) = get_varint(rest)?;
    let rest = &rest[used..];
    if rest.len() != plen {
        return None;
    }
    Some(Frame::Event { name, payload: rest })
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
        bincode::serde::borrow_decode_from_slice(body, config()).map_err(|e| WireError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(WireError::Malformed(format!("{} trailing bytes after the frame", body.len() - used)));
    }
    Ok(frame)
}

/// Splits an incoming byte stream into frame bodies (sans I/O): feed it with
/// [`FrameDecoder::feed`], take frames with [`FrameDecoder::next_frame`].
/// Memory is bounded: a frame announcing more than `max_frame` bytes is an
/// error before any of it is buffered.
///
/// The buffer is allocated on the first bytes, not up front, and
/// [`FrameDecoder::release_if_empty`] drops it again: a node keeps one
/// decoder per neighbour, and an idle link should not pin 64 KiB.
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame: usize,
    preamble_done: bool,
}

/// Size of a fresh receive buffer. Frames are split off it without a copy,
/// so while data flows many small frames share one allocation; BytesMut
/// remembers this as the buffer's "original capacity" and allocates at least
/// as much whenever it has to move to a new buffer.
const RECV_ALLOC: usize = 64 * 1024;

impl FrameDecoder {
    pub fn new(max_frame: usize) -> FrameDecoder {
        FrameDecoder { buf: BytesMut::new(), max_frame, preamble_done: false }
    }

    /// Appends received bytes (allocating the buffer if there is none).
    pub fn feed(&mut self, data: &[u8]) {
        if self.buf.capacity() == 0 {
            self.buf = BytesMut::with_capacity(data.len().max(RECV_ALLOC));
        }
        self.buf.extend_from_slice(data);
    }

    /// Drops the buffer if every byte in it has been returned as a frame.
    /// Call when the stream has nothing more to read for now: frames already
    /// handed out keep their part of the allocation alive on their own, and
    /// the next [`FrameDecoder::feed`] allocates afresh. Returns whether a
    /// buffer was dropped.
    pub fn release_if_empty(&mut self) -> bool {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
            return true;
        }
        false
    }

    /// Where to read new bytes into (prefer [`FrameDecoder::feed`], which
    /// sizes a fresh buffer for many frames).
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame body, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, WireError> {
        if !self.preamble_done {
            if self.buf.len() < PREAMBLE_LEN {
                if !MAGIC.starts_with(&self.buf[..self.buf.len().min(4)]) {
                    return Err(WireError::BadMagic);
                }
                return Ok(None);
            }
            if self.buf[..4] != MAGIC {
                return Err(WireError::BadMagic);
            }
            let theirs = u16::from_le_bytes([self.buf[4], self.buf[5]]);
            if theirs != PROTOCOL_VERSION {
                return Err(WireError::Version { ours: PROTOCOL_VERSION, theirs });
            }
            self.buf.advance(PREAMBLE_LEN);
            self.preamble_done = true;
        }
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > self.max_frame {
            return Err(WireError::Oversized { len, max: self.max_frame });
        }
        if self.buf.len() < 4 + len {
            // Make room for the rest of this frame in one go.
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(4);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Frame<'static>> {
        vec![
            Frame::Hello(Hello {
                id: NodeId([7; 16]),
                port: 4816,
                addrs: vec!["127.0.0.1:4816".parse().unwrap(), "[::1]:4816".parse().unwrap()],
                observed: "198.18.0.1:5000".parse().unwrap(),
            }),
            Frame::Peers(vec![PeerAddrs { id: NodeId([1; 16]), addrs: vec!["1.2.3.4:1".parse().unwrap()] }]),
            Frame::Subscribe(vec![WireSub { id: 1, selector: "a.+".into(), spy: true }]),
            Frame::Unsubscribe(vec![1, 2, 3]),
            Frame::Event { name: "music", payload: b"\xa3utz" },
            Frame::Event { name: "big", payload: &[0u8; 70_000] },
            Frame::Retire,
        ]
    }

    #[test]
    fn round_trip_byte_by_byte() {
        let mut out = BytesMut::new();
        put_preamble(&mut out);
        for f in sample() {
            put_frame(&mut out, &f);
        }
        let mut dec = FrameDecoder::new(1 << 20);
        let mut got = Vec::new();
        for b in out.iter() {
            dec.buffer().put_u8(*b);
            while let Some(body) = dec.next_frame().unwrap() {
                got.push(body);
            }
        }
        let parsed: Vec<Frame<'_>> = got.iter().map(|b| parse(b).unwrap()).collect();
        assert_eq!(parsed, sample());
        assert_eq!(dec.pending(), 0);
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
    fn buffer_is_lazy_and_released_when_empty() {
        let mut dec = FrameDecoder::new(1 << 20);
        assert_eq!(dec.buffer().capacity(), 0, "no allocation before data");
        assert!(!dec.release_if_empty());
        let mut out = BytesMut::new();
        put_preamble(&mut out);
        put_event(&mut out, "a", b"xy");
        put_event(&mut out, "b", b"z");
        // Everything but the last byte: one frame out, one pending.
        dec.feed(&out[..out.len() - 1]);
        assert!(dec.buffer().capacity() >= RECV_ALLOC, "a fresh buffer has room for many frames");
        let first = dec.next_frame().unwrap().expect("first frame");
        assert_eq!(dec.next_frame(), Ok(None));
        assert!(!dec.release_if_empty(), "a partial frame is kept");
        dec.feed(&out[out.len() - 1..]);
        let second = dec.next_frame().unwrap().expect("second frame");
        assert_eq!(dec.pending(), 0);
        assert!(dec.release_if_empty());
        assert_eq!(dec.buffer().capacity(), 0);
        // Frames handed out stay valid after the release.
        assert_eq!(parse(&first), Ok(Frame::Event { name: "a", payload: b"xy" }));
        assert_eq!(parse(&second), Ok(Frame::Event { name: "b", payload: b"z" }));
        // And the decoder carries on with a new buffer.
        let mut more = BytesMut::new();
        put_event(&mut more, "c", b"");
        dec.feed(&more);
        assert_eq!(parse(&dec.next_frame().unwrap().expect("third frame")), Ok(Frame::Event { name: "c", payload: b"" }));
    }

    #[test]
    fn version_and_magic_are_checked() {
        let mut dec = FrameDecoder::new(100);
        dec.buffer().put_slice(b"PBUS\x02\x00");
        assert_eq!(dec.next_frame(), Err(WireError::Version { ours: 1, theirs: 2 }));
        let mut dec = FrameDecoder::new(100);
        dec.buffer().put_slice(b"GET ");
        assert_eq!(dec.next_frame(), Err(WireError::BadMagic));
        let mut dec = FrameDecoder::new(100);
        dec.buffer().put_slice(b"PB");
        assert_eq!(dec.next_frame(), Ok(None));
    }

    #[test]
    fn oversized_is_refused_before_buffering() {
        let mut dec = FrameDecoder::new(100);
        dec.buffer().put_slice(b"PBUS\x01\x00");
        dec.buffer().put_u32_le(u32::MAX);
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
