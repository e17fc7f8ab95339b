//! What the DHT stores for a hood: its keys, the node record's encoding,
//! which addresses are announced, and how socket addresses look as multiaddrs.

use super::*;

/// The key under which the members of the hood with this CA fingerprint provide.
pub fn rendezvous_key(hood_fingerprint: &str) -> Vec<u8> {
    sha256(format!("partybus-rendezvous:{hood_fingerprint}").as_bytes())
}

/// The key of the record that lists the addresses of DHT peer `peer` in the hood.
pub fn node_key(hood_fingerprint: &str, peer: &PeerId) -> Vec<u8> {
    sha256(format!("partybus-node:{hood_fingerprint}:{peer}").as_bytes())
}

pub(super) fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().to_vec()
}

/// Encode a node record value: `pb1` then the addresses, space separated.
pub fn encode_addrs(addrs: &[SocketAddr]) -> Vec<u8> {
    let mut s = String::from("pb1");
    for a in addrs.iter().take(MAX_ADDRS_PER_RECORD) {
        s.push(' ');
        s.push_str(&a.to_string());
    }
    s.into_bytes()
}

/// Encode a node record with relay routes: `pb1`, the addresses, then
/// `via=ID@ADDR` per route (older readers skip what does not parse).
pub fn encode_record(addrs: &[SocketAddr], routes: &[crate::RelayRoute]) -> Vec<u8> {
    let mut v = encode_addrs(addrs);
    for r in routes.iter().take(MAX_ROUTES_PER_RECORD) {
        v.extend_from_slice(format!(" via={r}").as_bytes());
    }
    v
}

/// The relay routes of a node record.
pub fn decode_routes(value: &[u8]) -> Vec<crate::RelayRoute> {
    tokens(value).filter_map(|t| t.strip_prefix("via=")?.parse().ok()).take(MAX_ROUTES_PER_RECORD).collect()
}

/// The tokens after `pb1` of a node record value; none for unknown
/// versions, garbage and oversized values.
fn tokens(value: &[u8]) -> impl Iterator<Item = &str> {
    let s = (value.len() <= MAX_VALUE_BYTES).then(|| std::str::from_utf8(value).ok()).flatten().unwrap_or("");
    let mut it = s.split_ascii_whitespace();
    let known = it.next() == Some("pb1");
    it.filter(move |_| known)
}

/// Relay routes in a node record at most.
pub const MAX_ROUTES_PER_RECORD: usize = 4;

/// Decode a node record value; unknown versions and garbage yield nothing.
pub fn decode_addrs(value: &[u8]) -> Vec<SocketAddr> {
    tokens(value).take(MAX_ADDRS_PER_RECORD).filter_map(|t| t.parse().ok()).collect()
}

/// The addresses we announce: de-duplicated, no unspecified or zero port,
/// only global ones unless `allow_non_global`.
pub(super) fn announceable(addrs: &[SocketAddr], allow_non_global: bool) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in addrs {
        if a.port() == 0 || a.ip().is_unspecified() || !(allow_non_global || is_global(a.ip())) {
            continue;
        }
        if !out.contains(a) {
            out.push(*a);
        }
        if out.len() == MAX_ADDRS_PER_RECORD {
            break;
        }
    }
    out
}

/// `ip:port` of a `/ip4|ip6/../tcp/..` multiaddr.
pub(super) fn tcp_socket_addr(ma: &Multiaddr) -> Option<SocketAddr> {
    let mut it = ma.iter();
    let ip: IpAddr = match it.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    match it.next()? {
        Protocol::Tcp(port) => Some(SocketAddr::new(ip, port)),
        _ => None,
    }
}

/// `/ip4|ip6/X/udp/P/quic-v1`: how a QUIC address looks in the DHT.
pub(super) fn quic_multiaddr(sa: SocketAddr) -> Multiaddr {
    let mut ma = Multiaddr::empty();
    ma.push(match sa.ip() {
        IpAddr::V4(ip) => Protocol::Ip4(ip),
        IpAddr::V6(ip) => Protocol::Ip6(ip),
    });
    ma.push(Protocol::Udp(sa.port()));
    ma.push(Protocol::QuicV1);
    ma
}

pub(super) fn multiaddr_of(sa: SocketAddr) -> Multiaddr {
    let mut ma = Multiaddr::empty();
    ma.push(match sa.ip() {
        IpAddr::V4(ip) => Protocol::Ip4(ip),
        IpAddr::V6(ip) => Protocol::Ip6(ip),
    });
    ma.push(Protocol::Tcp(sa.port()));
    ma
}
