//! The relay and path-probe datagrams, and all of their encoding.
//!
//! They share the node's UDP socket with QUIC. QUIC packets always have the
//! fixed bit (0x40) set, and partybus endpoints do not grease it
//! ([`crate::tls::endpoint_config`]); a datagram whose first byte has both
//! top bits clear is one of these, told apart by that byte ([`Tag`]).
//!
//! No reply is larger than the datagram it answers: a relay or a node cannot
//! be used to amplify traffic towards a forged source address. Relays send
//! nothing but a [`Msg::Challenge`] to an address that has not proven it
//! receives what is sent to it (by echoing the challenge's cookie).
//!
//! | tag | message | layout after the tag |
//! |---|---|---|
//! | 0x01 | `Register` | cookie (16), secret (32), proof (rest, may be empty) |
//! | 0x02 | `Challenge` | cookie (16) |
//! | 0x03 | `Registered` | id (16), lifetime in seconds (u16 BE), observed address |
//! | 0x04 | `Send` | destination id (16), payload (rest: a QUIC packet) |
//! | 0x05 | `Recv` | source id (16), payload (rest) |
//! | 0x06 | `Unknown` | id (16): nobody is registered under it |
//! | 0x07 | `Refused` | reason (u8, [`Refusal`]) |
//! | 0x08 | `Unregister` | secret (32): the client leaves (no answer) |
//! | 0x10 | `Ping` | token (16), nonce (8), zero padding to [`PING_LEN`] |
//! | 0x11 | `Pong` | token (16), nonce (8), observed address |
//!
//! An address is 1 byte family (4 or 6), the IP (4 or 16), the port (u16 BE).
//! `Send` and `Recv` have the same length, so a relay forwards a packet by
//! rewriting its 17-byte header in place.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A relay client's public id: the first 16 bytes of SHA-256 of its secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayId(pub [u8; 16]);

impl RelayId {
    /// The id that `secret` registers.
    pub fn of_secret(secret: &[u8; 32]) -> RelayId {
        let d = ring::digest::digest(&ring::digest::SHA256, secret);
        let mut id = [0; 16];
        id.copy_from_slice(&d.as_ref()[..16]);
        RelayId(id)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<RelayId> {
        let v = hex::decode(s).ok()?;
        Some(RelayId(v.try_into().ok()?))
    }
}

impl std::fmt::Debug for RelayId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RelayId({})", &self.to_hex()[..8])
    }
}

impl std::fmt::Display for RelayId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A token that only the two ends of one QUIC connection know (exported
/// from its TLS session): path probes carry it.
pub type Token = [u8; 16];
/// A relay's address-validation cookie.
pub type Cookie = [u8; 16];

/// Message kinds: the first byte of the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Tag {
    Register = 0x01,
    Challenge = 0x02,
    Registered = 0x03,
    Send = 0x04,
    Recv = 0x05,
    Unknown = 0x06,
    Refused = 0x07,
    Unregister = 0x08,
    Ping = 0x10,
    Pong = 0x11,
}

impl Tag {
    fn from_byte(b: u8) -> Option<Tag> {
        Some(match b {
            0x01 => Tag::Register,
            0x02 => Tag::Challenge,
            0x03 => Tag::Registered,
            0x04 => Tag::Send,
            0x05 => Tag::Recv,
            0x06 => Tag::Unknown,
            0x07 => Tag::Refused,
            0x08 => Tag::Unregister,
            0x10 => Tag::Ping,
            0x11 => Tag::Pong,
            _ => return None,
        })
    }
}

/// Why a relay refused a registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[repr(u8)]
pub enum Refusal {
    #[error("the relay serves only some hoods, and the registration proved membership of none of them")]
    NotAllowed = 1,
    #[error("the relay has as many clients as it takes")]
    Full = 2,
    #[error("the membership proof did not verify")]
    BadProof = 3,
    #[error("the relay refused for a reason this build does not know")]
    Other = 255,
}

impl Refusal {
    fn from_byte(b: u8) -> Refusal {
        match b {
            1 => Refusal::NotAllowed,
            2 => Refusal::Full,
            3 => Refusal::BadProof,
            _ => Refusal::Other,
        }
    }
}

/// Header bytes of `Send` and `Recv` (tag and id).
pub const RELAY_HEADER: usize = 17;
/// Length of a `Ping` (padded so that the `Pong` answering it is no longer).
pub const PING_LEN: usize = 1 + 16 + 8 + ADDR_MAX;
/// An encoded address at most.
pub const ADDR_MAX: usize = 1 + 16 + 2;
/// A `Register` without proof.
pub const REGISTER_MIN: usize = 1 + 16 + 32;

/// A decoded datagram, borrowing from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg<'a> {
    Register {
        cookie: Cookie,
        secret: [u8; 32],
        proof: &'a [u8],
    },
    Challenge {
        cookie: Cookie,
    },
    Registered {
        id: RelayId,
        lifetime: u16,
        observed: SocketAddr,
    },
    Send {
        to: RelayId,
        payload: &'a [u8],
    },
    Recv {
        from: RelayId,
        payload: &'a [u8],
    },
    Unknown {
        id: RelayId,
    },
    Refused {
        reason: Refusal,
    },
    /// A leaving client ends its registration at once, rather than leaving
    /// it to expire: a peer dialling its relay route (found in a DHT record
    /// that outlives it) is then answered `Unknown` instead of waiting for
    /// the handshake timeout. It carries the secret that registered, so only
    /// the client can end its registration; the relay does not answer it.
    Unregister {
        secret: [u8; 32],
    },
    Ping {
        token: Token,
        nonce: [u8; 8],
    },
    Pong {
        token: Token,
        nonce: [u8; 8],
        observed: SocketAddr,
    },
}

/// True if `datagram` is one of ours rather than a QUIC packet.
#[inline]
pub fn is_ours(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| b & 0xc0 == 0)
}

/// Decodes a datagram; `None` for anything malformed or unknown (dropped
/// silently: an answer would be a reflection).
pub fn decode(d: &[u8]) -> Option<Msg<'_>> {
    let (&first, rest) = d.split_first()?;
    let tag = Tag::from_byte(first)?;
    let mut r = Reader(rest);
    let msg = match tag {
        Tag::Register => Msg::Register { cookie: r.array()?, secret: r.array()?, proof: r.rest() },
        Tag::Challenge => Msg::Challenge { cookie: r.array()? },
        Tag::Registered => {
            let id = RelayId(r.array()?);
            let lifetime = u16::from_be_bytes(r.array()?);
            Msg::Registered { id, lifetime, observed: r.addr()? }
        }
        Tag::Send => Msg::Send { to: RelayId(r.array()?), payload: r.rest() },
        Tag::Recv => Msg::Recv { from: RelayId(r.array()?), payload: r.rest() },
        Tag::Unknown => Msg::Unknown { id: RelayId(r.array()?) },
        Tag::Refused => Msg::Refused { reason: Refusal::from_byte(r.array::<1>()?[0]) },
        Tag::Unregister => Msg::Unregister { secret: r.array()? },
        Tag::Ping => {
            if d.len() < PING_LEN {
                return None;
            }
            Msg::Ping { token: r.array()?, nonce: r.array()? }
        }
        Tag::Pong => Msg::Pong { token: r.array()?, nonce: r.array()?, observed: r.addr()? },
    };
    Some(msg)
}

/// Encodes `msg` at the end of `out`.
pub fn encode(msg: &Msg<'_>, out: &mut Vec<u8>) {
    match msg {
        Msg::Register { cookie, secret, proof } => {
            out.push(Tag::Register as u8);
            out.extend_from_slice(cookie);
            out.extend_from_slice(secret);
            out.extend_from_slice(proof);
        }
        Msg::Challenge { cookie } => {
            out.push(Tag::Challenge as u8);
            out.extend_from_slice(cookie);
        }
        Msg::Registered { id, lifetime, observed } => {
            out.push(Tag::Registered as u8);
            out.extend_from_slice(&id.0);
            out.extend_from_slice(&lifetime.to_be_bytes());
            put_addr(*observed, out);
        }
        Msg::Send { to, payload } => {
            out.push(Tag::Send as u8);
            out.extend_from_slice(&to.0);
            out.extend_from_slice(payload);
        }
        Msg::Recv { from, payload } => {
            out.push(Tag::Recv as u8);
            out.extend_from_slice(&from.0);
            out.extend_from_slice(payload);
        }
        Msg::Unknown { id } => {
            out.push(Tag::Unknown as u8);
            out.extend_from_slice(&id.0);
        }
        Msg::Refused { reason } => {
            out.push(Tag::Refused as u8);
            out.push(*reason as u8);
        }
        Msg::Unregister { secret } => {
            out.push(Tag::Unregister as u8);
            out.extend_from_slice(secret);
        }
        Msg::Ping { token, nonce } => {
            let start = out.len();
            out.push(Tag::Ping as u8);
            out.extend_from_slice(token);
            out.extend_from_slice(nonce);
            out.resize(start + PING_LEN, 0);
        }
        Msg::Pong { token, nonce, observed } => {
            out.push(Tag::Pong as u8);
            out.extend_from_slice(token);
            out.extend_from_slice(nonce);
            put_addr(*observed, out);
        }
    }
}

/// Turns a `Send` in `buf` into the `Recv` that the relay forwards, in place.
pub fn send_to_recv(buf: &mut [u8], from: RelayId) {
    debug_assert!(buf.len() >= RELAY_HEADER && buf[0] == Tag::Send as u8);
    buf[0] = Tag::Recv as u8;
    buf[1..RELAY_HEADER].copy_from_slice(&from.0);
}

/// Writes the header of a `Send` to `to` into `buf[..RELAY_HEADER]`.
pub fn put_send_header(buf: &mut [u8], to: RelayId) {
    buf[0] = Tag::Send as u8;
    buf[1..RELAY_HEADER].copy_from_slice(&to.0);
}

fn put_addr(a: SocketAddr, out: &mut Vec<u8>) {
    match crate::peers::canonical(a) {
        SocketAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.ip().octets());
        }
        SocketAddr::V6(v6) => {
            out.push(6);
            out.extend_from_slice(&v6.ip().octets());
        }
    }
    out.extend_from_slice(&a.port().to_be_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    fn addr(&mut self) -> Option<SocketAddr> {
        let ip = match self.array::<1>()?[0] {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            _ => return None,
        };
        Some(SocketAddr::new(ip, u16::from_be_bytes(self.array()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Msg<'static>> {
        let id = RelayId([7; 16]);
        vec![
            Msg::Register { cookie: [1; 16], secret: [2; 32], proof: b"" },
            Msg::Register { cookie: [1; 16], secret: [2; 32], proof: b"proof bytes" },
            Msg::Challenge { cookie: [3; 16] },
            Msg::Registered { id, lifetime: 60, observed: "203.0.113.5:4000".parse().unwrap() },
            Msg::Registered { id, lifetime: 1, observed: "[2001:db8::1]:9".parse().unwrap() },
            Msg::Send { to: id, payload: b"\xc0quic" },
            Msg::Recv { from: id, payload: b"" },
            Msg::Unknown { id },
            Msg::Refused { reason: Refusal::Full },
            Msg::Unregister { secret: [6; 32] },
            Msg::Ping { token: [4; 16], nonce: [5; 8] },
            Msg::Pong { token: [4; 16], nonce: [5; 8], observed: "198.51.100.7:1".parse().unwrap() },
        ]
    }

    #[test]
    fn round_trip() {
        for m in all() {
            let mut b = Vec::new();
            encode(&m, &mut b);
            assert!(is_ours(&b), "{m:?}");
            assert_eq!(decode(&b), Some(m.clone()));
        }
    }

    #[test]
    fn every_truncation_is_refused_or_shorter() {
        // A prefix decodes to nothing, or (for the messages ending in "the
        // rest") to the same kind with less payload; never a panic.
        for m in all() {
            let mut b = Vec::new();
            encode(&m, &mut b);
            for n in 0..b.len() {
                if let Some(d) = decode(&b[..n]) {
                    assert!(matches!(d, Msg::Register { .. } | Msg::Send { .. } | Msg::Recv { .. }), "{n} of {m:?} gave {d:?}");
                }
            }
        }
    }

    #[test]
    fn quic_packets_are_not_ours() {
        // Long header (0x80 set) and short header (fixed bit 0x40 set).
        for first in [0xc0u8, 0xc3, 0x40, 0x5f, 0x80] {
            assert!(!is_ours(&[first, 0, 0]));
        }
        assert!(!is_ours(&[]));
        assert_eq!(decode(&[0x3f, 0, 0]), None);
    }

    #[test]
    fn no_answer_is_larger_than_its_question() {
        let mut ping = Vec::new();
        encode(&Msg::Ping { token: [0; 16], nonce: [0; 8] }, &mut ping);
        let mut pong = Vec::new();
        encode(&Msg::Pong { token: [0; 16], nonce: [0; 8], observed: "[2001:db8::1]:65535".parse().unwrap() }, &mut pong);
        assert!(pong.len() <= ping.len());
        let mut reg = Vec::new();
        encode(&Msg::Register { cookie: [0; 16], secret: [0; 32], proof: b"" }, &mut reg);
        assert_eq!(reg.len(), REGISTER_MIN);
        for answer in [
            Msg::Challenge { cookie: [0; 16] },
            Msg::Registered { id: RelayId([0; 16]), lifetime: 0, observed: "[2001:db8::1]:1".parse().unwrap() },
            Msg::Refused { reason: Refusal::Full },
        ] {
            let mut b = Vec::new();
            encode(&answer, &mut b);
            assert!(b.len() <= reg.len(), "{answer:?}");
            // A Send as short as a header gets at most a challenge or `Unknown`.
            assert!(b.len() <= RELAY_HEADER || !matches!(answer, Msg::Challenge { .. }));
        }
    }

    #[test]
    fn forwarding_rewrites_the_header_in_place() {
        let mut b = Vec::new();
        encode(&Msg::Send { to: RelayId([9; 16]), payload: b"packet" }, &mut b);
        send_to_recv(&mut b, RelayId([8; 16]));
        assert_eq!(decode(&b), Some(Msg::Recv { from: RelayId([8; 16]), payload: b"packet" }));
        put_send_header(&mut b, RelayId([1; 16]));
        assert_eq!(decode(&b), Some(Msg::Send { to: RelayId([1; 16]), payload: b"packet" }));
    }

    #[test]
    fn id_is_the_hash_of_the_secret() {
        let a = RelayId::of_secret(&[1; 32]);
        assert_eq!(a, RelayId::of_secret(&[1; 32]));
        assert_ne!(a, RelayId::of_secret(&[2; 32]));
        assert_eq!(RelayId::from_hex(&a.to_hex()), Some(a));
    }
}
