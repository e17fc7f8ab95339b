//! Relay routes as QUIC sees them: each (relay, client id) pair stands for a
//! made-up socket address in 240.0.0.0/4 (reserved, never routed), so a
//! relayed connection is an ordinary quinn connection to that address. The
//! socket ([`super::socket`]) turns packets to such an address into relay
//! datagrams, and relayed packets back into packets from it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Mutex;

use crate::peers::canonical;
use crate::wire::RelayRoute;

/// Routes remembered at most. Each peer names a few; [`crate::mesh`] keeps
/// at most 4,096 peers. Past the bound new routes are not learnt (logged).
pub(crate) const MAX_ROUTES: usize = 16 * 1024;

/// True for an address that stands for a relay route.
pub(crate) fn is_relay_key(addr: SocketAddr) -> bool {
    match canonical(addr) {
        SocketAddr::V4(v4) => v4.ip().octets()[0] >= 240 && !v4.ip().is_broadcast(),
        SocketAddr::V6(_) => false,
    }
}

/// The address that stands for `route`: 28 bits of address and 16 of port
/// from a hash of the route, so both ends of a gossip chain agree without a table.
pub(crate) fn key_of(route: &RelayRoute) -> SocketAddr {
    let mut input = Vec::with_capacity(40);
    input.extend_from_slice(route.relay.to_string().as_bytes());
    input.extend_from_slice(&route.id);
    let d = ring::digest::digest(&ring::digest::SHA256, &input);
    let h = d.as_ref();
    let mut ip = [h[0], h[1], h[2], h[3]];
    ip[0] = 0xf0 | (ip[0] & 0x0f);
    if ip == [255, 255, 255, 255] {
        ip[3] = 254;
    }
    let port = u16::from_be_bytes([h[4], h[5]]).max(1);
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))
}

/// The routes behind the keys this node has handed out (bounded).
#[derive(Default)]
pub(crate) struct RouteBook {
    routes: Mutex<HashMap<SocketAddr, RelayRoute>>,
}

impl RouteBook {
    /// The key for `route`, remembering it.
    pub(crate) fn learn(&self, route: RelayRoute) -> Option<SocketAddr> {
        let route = RelayRoute { relay: canonical(route.relay), id: route.id };
        let key = key_of(&route);
        let mut m = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if !m.contains_key(&key) && m.len() >= MAX_ROUTES {
            tracing::debug!("relay route book full; route not learnt");
            return None;
        }
        m.insert(key, route);
        Some(key)
    }

    /// The route that `key` stands for.
    pub(crate) fn route(&self, key: SocketAddr) -> Option<RelayRoute> {
        if !is_relay_key(key) {
            return None;
        }
        self.routes.lock().unwrap_or_else(|p| p.into_inner()).get(&canonical(key)).copied()
    }

    /// Splits `addrs` into direct addresses and the routes behind relay keys.
    pub(crate) fn split(&self, addrs: &[SocketAddr]) -> (Vec<SocketAddr>, Vec<RelayRoute>) {
        let mut direct = Vec::new();
        let mut relays = Vec::new();
        for a in addrs {
            match self.route(*a) {
                Some(r) => relays.push(r),
                None if !is_relay_key(*a) => direct.push(*a),
                None => {}
            }
        }
        (direct, relays)
    }

    /// Relay keys for `routes` and `addrs`, in the order a peer is dialled:
    /// the relay first (it works whatever NATs are in between, and a punch
    /// moves the connection to a direct path right after), unless the peer
    /// is on this host (its first address, where the gossiping neighbour
    /// sees it, is a loopback address): then its addresses first.
    pub(crate) fn join(&self, addrs: Vec<SocketAddr>, routes: &[RelayRoute]) -> Vec<SocketAddr> {
        let keys = routes.iter().filter_map(|r| self.learn(*r));
        let direct = addrs.into_iter().filter(|a| !is_relay_key(*a));
        let local = direct.clone().next().is_some_and(|a| canonical(a).ip().is_loopback());
        if local {
            direct.chain(keys).collect()
        } else {
            keys.chain(direct).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_reserved_and_reversible_through_the_book() {
        let r = RelayRoute { relay: "203.0.113.1:4000".parse().unwrap(), id: [3; 16] };
        let k = key_of(&r);
        assert_eq!(k, key_of(&r));
        assert!(is_relay_key(k));
        assert!(is_relay_key(format!("[::ffff:{}]:{}", k.ip(), k.port()).parse().unwrap()));
        assert!(!is_relay_key("203.0.113.1:4000".parse().unwrap()));
        assert_ne!(k, key_of(&RelayRoute { id: [4; 16], ..r }));
        let book = RouteBook::default();
        assert_eq!(book.route(k), None);
        assert_eq!(book.learn(r), Some(k));
        assert_eq!(book.route(k), Some(r));
        let direct: SocketAddr = "198.18.0.2:1".parse().unwrap();
        let joined = book.join(vec![direct, k], &[r]);
        assert_eq!(joined, vec![k, direct]);
        assert_eq!(book.split(&joined), (vec![direct], vec![r]));
        // A peer on this host: its own addresses first.
        let lo: SocketAddr = "127.0.0.1:5".parse().unwrap();
        assert_eq!(book.join(vec![lo], &[r]), vec![lo, k]);
    }
}
