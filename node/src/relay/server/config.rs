//! A relay's policy and limits, what it decides per datagram, and its
//! counters.

use std::net::SocketAddr;
use std::time::Duration;

/// Who may register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayPolicy {
    /// Anyone who proves its address (`partybus dht`'s default): the relay
    /// forwards ciphertext only, between clients that know each other's id.
    Open,
    /// Members of these hoods only: lowercase hex SHA-256 fingerprints of the
    /// hood certificates (as `Hood::fingerprint`). A node serving a relay
    /// lists its own hood.
    Hoods(Vec<String>),
}

impl std::fmt::Display for RelayPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayPolicy::Open => f.write_str("open"),
            RelayPolicy::Hoods(list) => {
                f.write_str("hoods ")?;
                for (i, h) in list.iter().enumerate() {
                    let short: String = h.chars().take(16).collect();
                    write!(f, "{}{short}", if i > 0 { "," } else { "" })?;
                }
                Ok(())
            }
        }
    }
}

/// A relay's limits and policy. [`RelayConfig::default`] explains the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    /// Registered clients at most.
    pub max_clients: usize,
    /// Registered clients per IP address (IPv6: per /64) at most, so that one
    /// host cannot take every slot by registering from many ports.
    pub max_clients_per_ip: usize,
    /// Bytes per second one client may send through the relay (its token bucket's rate).
    pub client_rate: u64,
    /// Bytes one client may send at once (its token bucket's size).
    pub client_burst: u64,
    /// Bytes per second forwarded for all clients together (burst: a tenth of
    /// a second of it, at least `client_burst`).
    pub total_rate: u64,
    /// How long a registration lasts without a refresh (sent to the client in
    /// `Registered`, in whole seconds, at most 65,535).
    pub lifetime: Duration,
    /// Who may register.
    pub policy: RelayPolicy,
}

impl Default for RelayConfig {
    /// - `max_clients` 1,024: a client costs about 200 bytes here, so the
    ///   table stays far below 1 MB; more relayed members than that would
    ///   want more than one relay anyway (the total rate below is shared).
    /// - `max_clients_per_ip` 64: many members behind one NAT (an office)
    ///   fit; one host alone cannot fill the table.
    /// - `client_rate` 10 MB/s (80 Mbit/s): a relayed path is the only path
    ///   between members behind symmetric NATs, so it should carry what a
    ///   home uplink carries; five such clients fill the total below.
    ///   (At 2 MB/s, the first choice, a relayed bulk transfer lost a third
    ///   of its packets to the cap and QUIC's congestion control halved its
    ///   rate again and again: 1-2 MB/s, see BENCHMARKS.md.)
    /// - `client_burst` 1 MiB: a QUIC connection's first flights and a
    ///   window's worth of packets pass unpaced.
    /// - `total_rate` 50 MB/s (400 Mbit/s each way): what a small VPS with a
    ///   1 Gbit/s port can give away, with room for its own traffic (every
    ///   byte relayed is received and sent).
    /// - `lifetime` 60 s: clients refresh every 15-20 s, so two refreshes
    ///   may be lost; a vanished client's slot is free within a minute.
    /// - `policy` open (a `partybus dht` relay); a node serves its own hood.
    fn default() -> Self {
        RelayConfig {
            max_clients: 1_024,
            max_clients_per_ip: 64,
            client_rate: 10_000_000,
            client_burst: 1024 * 1024,
            total_rate: 50_000_000,
            lifetime: Duration::from_secs(60),
            policy: RelayPolicy::Open,
        }
    }
}

/// What to do with a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing (it is counted in [`RelayStats`]).
    Drop,
    /// Send `buf[..len]` (rewritten in place into a `Recv`) to `to`.
    Forward { to: SocketAddr },
    /// Send `buf[..len]` (the answer, written over the datagram; never longer than it) to `to`.
    Reply { to: SocketAddr, len: usize },
}

/// Counters since the relay started (and the client count now).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Registered clients: entries in the table (ones past their lifetime
    /// until the next sweep).
    pub clients: usize,
    /// New registrations (a new id, or an id at a new address).
    pub registered: u64,
    /// Of those, ids that moved to a new address.
    pub moved: u64,
    /// Registrations that ran out without a refresh.
    pub expired: u64,
    /// Challenges sent.
    pub challenges: u64,
    /// Membership proofs verified.
    pub proofs_checked: u64,
    /// Packets and bytes forwarded.
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    /// Packets dropped because their sender was over its rate.
    pub dropped_rate: u64,
    /// Packets dropped because all clients together were over the total rate.
    pub dropped_total_rate: u64,
    /// Registrations ended by their clients (`Unregister`: they left).
    pub unregistered: u64,
    /// `Send`s to an id nobody is registered under (answered `Unknown`, within its rate).
    pub unknown: u64,
    /// `Send`s from an address that is not registered (answered with a challenge, within its rate).
    pub dropped_unregistered: u64,
    /// Registrations dropped because proof checks were over their budget.
    pub dropped_busy: u64,
    /// Datagrams that are not for a relay (malformed, answers, probes, port 0).
    pub dropped_invalid: u64,
    /// Validated registrations refused: table full (or the IP's share of it).
    pub refused_full: u64,
    /// ... no proof, or a proof for a hood that is not served.
    pub refused_not_allowed: u64,
    /// ... a proof that does not verify.
    pub refused_bad_proof: u64,
}

impl RelayStats {
    /// Registrations refused, for any reason.
    pub fn refused(&self) -> u64 {
        self.refused_full + self.refused_not_allowed + self.refused_bad_proof
    }
}
