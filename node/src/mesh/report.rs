//! What a node reports about its mesh: neighbours, their paths, connection
//! counters, and why `join` failed.

use std::net::SocketAddr;

use crate::id::NodeId;
use crate::peers::Direction;

/// A neighbour as the library reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct NeighbourInfo {
    pub id: NodeId,
    /// CN of its certificate.
    pub name: String,
    /// Its address as seen from here.
    pub addr: SocketAddr,
    /// Who dialled.
    pub direction: Direction,
    /// Events dropped for it under [`crate::FullPolicy::Drop`].
    pub dropped: u64,
    /// The network path its connection uses now (None: not known yet).
    pub path: Option<NeighbourPath>,
}

/// How a neighbour's packets travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "path", rename_all = "lowercase")]
#[non_exhaustive]
pub enum NeighbourPath {
    /// Straight to its address.
    Direct { addr: SocketAddr },
    /// Through the relay at `via` (still end-to-end encrypted: the relay
    /// forwards QUIC packets it cannot read).
    Relayed { via: SocketAddr },
}

/// Neighbour events a receiver may fall behind before it gets
/// `RecvError::Lagged`. tokio writes every slot of a broadcast channel when
/// it is made (about 150 bytes each here): 1024 slots cost each node ~150 KiB
/// of resident memory, 2 % of an idle node, for a channel that is mostly idle.
pub const NEIGHBOUR_EVENTS: usize = 256;

/// Found / lost notifications.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NeighbourEvent {
    Found(NeighbourInfo),
    Lost {
        info: NeighbourInfo,
        reason: String,
    },
    /// The neighbour's path changed (relayed to direct after a hole punch,
    /// or back to relayed when the direct path stops answering).
    Path(NeighbourInfo),
}

/// Errors from `join`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsSetupError),
    #[error("cannot bind a UDP port: tried {tried} on {bind}: {last}; pick free ports with --port (e.g. 4816-4819, or 0 for any)")]
    Bind { tried: String, bind: String, last: std::io::Error },
    #[error("cannot start the QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
    #[error(transparent)]
    Revocation(#[from] partybus_pki::RevocationError),
    #[error("cannot serve metrics on {addr}: {source}; pick a free TCP address with --metrics (e.g. 127.0.0.1:9464)")]
    Metrics { addr: SocketAddr, source: std::io::Error },
}

/// Connection counters of one node since it joined (see [`crate::Bus::conn_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ConnStats {
    /// QUIC handshakes this node started (dials).
    pub dials: u64,
    /// Of those, completed (TLS done).
    pub dials_ok: u64,
    /// Of those, timed out (no answer within the handshake timeout).
    pub dials_timed_out: u64,
    /// Of those, given up by the second dialer of a pair because the first
    /// dialer's handshake reached it meanwhile.
    pub dials_abandoned: u64,
    /// Incoming handshakes (accepted by the endpoint).
    pub accepts: u64,
    /// Of those, completed (TLS done).
    pub accepts_ok: u64,
    /// Of those, timed out.
    pub accepts_timed_out: u64,
    /// Connections that completed TLS and hellos and became the neighbour's connection.
    pub activated: u64,
    /// Duplicate connections (a second connection to a neighbour) retired or replacing the older one.
    pub duplicates: u64,
}

/// The QUIC path to one neighbour, as quinn sees it now (see [`crate::Bus::path`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct PathStats {
    /// Smoothed round-trip time.
    pub rtt: std::time::Duration,
    /// UDP payload size in use: 1200 at first on the Internet, up to 1452 as MTU discovery
    /// proceeds; the loopback MTU from the start for peers on this host.
    pub mtu: u16,
    /// QUIC packets sent to it, and of those, lost (by our reckoning).
    pub sent_packets: u64,
    pub lost_packets: u64,
    /// Congestion window in bytes.
    pub cwnd: u64,
    /// Direct, or through which relay.
    pub path: Option<NeighbourPath>,
}

/// A neighbour with its traffic figures (see [`crate::Bus::neighbour_stats`]):
/// what `partybus status` prints. Read from counters the data plane keeps
/// anyway (quinn's connection statistics, the send queue, the delivery
/// counter); reading them takes the queue's lock for a moment, so call it
/// now and then, not per event.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct NeighbourStats {
    #[serde(flatten)]
    pub info: NeighbourInfo,
    /// Smoothed round-trip time of its connection.
    pub rtt: std::time::Duration,
    /// UDP bytes of its current connection (QUIC headers and acknowledgements
    /// included), sent and received.
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// Events queued for it, and delivered from it, since it became a
    /// neighbour (across connection switches).
    pub events_out: u64,
    pub events_in: u64,
    /// Bytes waiting in its send queue, and the queue's limit.
    pub queue_bytes: usize,
    pub queue_limit: usize,
    /// SHA-256 of the certificate it presented on its current connection
    /// (hex; what `partybus cert show` calls the fingerprint).
    pub cert_fingerprint: Option<String>,
}
