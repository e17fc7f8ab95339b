//! Library configuration.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use partybus_discovery::Discovery;
use partybus_pki::{Hood, Identity, KeyFileCheck, RevocationList};

use crate::relay::server::{RelayConfig, RelayPolicy};

mod checks;
pub use checks::ConfigError;

/// Which UDP port(s) to try, in order; the first free one is used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec(Vec<u16>);

impl PortSpec {
    /// tubemail's default: 4816-4819.
    pub fn default_range() -> PortSpec {
        PortSpec((4816..=4819).collect())
    }
    /// Any free port (the OS picks).
    pub fn any() -> PortSpec {
        PortSpec(vec![0])
    }
    pub fn single(p: u16) -> PortSpec {
        PortSpec(vec![p])
    }
    pub fn ports(&self) -> &[u16] {
        &self.0
    }
}

impl Default for PortSpec {
    fn default() -> Self {
        PortSpec::default_range()
    }
}

impl std::str::FromStr for PortSpec {
    type Err = String;
    /// `4816`, `4816,4820`, `4816-4819`, mixes of those, or `0` for any.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| format!("port spec {s:?}: {why}; expected a number, a list (4816,4820), or a range (4816-4819)");
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(bad("empty element"));
            }
            if let Some((a, b)) = part.split_once('-') {
                let a: u16 = a.trim().parse().map_err(|_| bad(&format!("{a:?} is not a port number")))?;
                let b: u16 = b.trim().parse().map_err(|_| bad(&format!("{b:?} is not a port number")))?;
                if a > b || a == 0 {
                    return Err(bad(&format!("range {a}-{b} is empty or starts at 0")));
                }
                if b - a > 1000 {
                    return Err(bad("range longer than 1000 ports"));
                }
                out.extend(a..=b);
            } else {
                out.push(part.parse().map_err(|_| bad(&format!("{part:?} is not a port number")))?);
            }
        }
        Ok(PortSpec(out))
    }
}

/// What `emit` does when a neighbour's send queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FullPolicy {
    /// Wait until the queue has room, however long: nothing is lost, a slow
    /// receiver slows the emitter down, and one that never reads stops
    /// `emit` for everyone.
    Block,
    /// Drop the event for that neighbour (counted in
    /// [`NeighbourInfo::dropped`](crate::NeighbourInfo)); it is then not
    /// counted in `emit`'s result.
    Drop,
    /// Wait like `Block` while the neighbour makes progress; when its queue
    /// has not drained at all for the given time, disconnect it (logged)
    /// and go on. The default, with [`FullPolicy::STUCK`]: a slow neighbour
    /// slows emitters down, a stuck one (buggy, or withholding QUIC credit
    /// on purpose) cannot stop them for longer than that.
    Disconnect(Duration),
}

impl FullPolicy {
    /// How long the default policy lets a neighbour's queue stay full
    /// without any progress.
    pub const STUCK: Duration = Duration::from_secs(10);
}

impl Default for FullPolicy {
    fn default() -> Self {
        FullPolicy::Disconnect(FullPolicy::STUCK)
    }
}

/// Relaying: serving as a relay for others, and the relays this node uses.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelaySettings {
    /// Serve as a relay on the node's UDP socket with these limits and
    /// policy; `None` (`--no-relay`, `relay = false`): do not. [`Config::new`]
    /// sets [`RelayConfig::default`]'s limits with the policy
    /// `RelayPolicy::Hoods(vec![the node's hood fingerprint])`: a node
    /// relays for members of its own hood only.
    pub serve: Option<RelayConfig>,
    /// Relays this node registers with as a client, `HOST:PORT` (UDP; a
    /// `partybus dht` relays on its DHT port number). Empty: none.
    pub use_relays: Vec<String>,
}

impl RelaySettings {
    /// Serving on for members of `hood` only, with the default limits; no relays used.
    pub fn for_hood(hood: &Hood) -> RelaySettings {
        RelaySettings {
            serve: Some(RelayConfig { policy: RelayPolicy::Hoods(vec![hood.fingerprint().to_owned()]), ..RelayConfig::default() }),
            use_relays: Vec::new(),
        }
    }
}

/// Everything `Bus::join` needs. Build with [`Config::new`] or
/// [`Config::from_files`], then adjust the public fields (new fields come
/// with defaults, so the struct cannot be built literally outside this crate).
#[non_exhaustive]
pub struct Config {
    pub hood: Hood,
    pub identity: Identity,
    /// UDP port(s) to bind, first free wins. Default 4816-4819.
    pub port: PortSpec,
    /// Address to bind; default `::` (dual-stack), falling back to `0.0.0.0`.
    pub bind: Option<IpAddr>,
    /// Addresses to advertise in addition to the local interface addresses
    /// (e.g. a VPS's public address behind 1:1 NAT).
    pub advertise: Vec<SocketAddr>,
    /// Discovery services (static, mDNS, DHT, UPnP, your own).
    pub discovery: Vec<Box<dyn Discovery>>,
    /// QUIC keep-alive; short enough to keep NAT mappings open (default 2 s).
    pub keep_alive: Duration,
    /// A neighbour silent this long is lost (default 10 s). With a keep-alive
    /// every 2 s, a lost one is sent again within a probe timeout (about
    /// 1.5 round trips), so a healthy path never goes 10 s without a packet
    /// even at a 200 ms round trip and 4 % loss each way (issue 16's lab);
    /// a dead one is noticed 8-10 s after its last packet (20 s before).
    pub idle_timeout: Duration,
    /// Congestion controller of every connection (default BBR; see
    /// BENCHMARKS.md, "Issue 16").
    pub congestion: crate::Congestion,
    /// TLS + hello must complete within this.
    pub handshake_timeout: Duration,
    /// First re-dial delay after a neighbour is lost (doubles, with jitter).
    pub redial_base: Duration,
    /// Cap on the re-dial delay.
    pub redial_max: Duration,
    /// Stop re-dialling a lost neighbour after this long (tubemail: 7 days).
    pub redial_for: Duration,
    /// The higher id of a pair learnt through gossip waits this long (times
    /// a random factor in [1, 2)) before dialling, and then only if the pair
    /// is not connected and no handshake from the other is under way (the
    /// lower id dials at once); see `peers::gossip_dial_delay`.
    pub gossip_dial_delay: Duration,
    /// Outgoing handshakes this node runs at a time (0: no limit); the rest
    /// wait, first dials of a pair before second dials
    /// (handshake slots, `mesh::proto::pacing`). A node joining a large hood over a
    /// WAN pays about one handshake time per `dial_concurrency` peers; many
    /// nodes forming a mesh at once on few cores (a whole hood started on
    /// one host) get far fewer crossing dials and no handshake pileup.
    pub dial_concurrency: usize,
    /// Bytes a neighbour's send queue may hold (both of its lanes).
    pub queue_limit: usize,
    /// Events up to this size (name + payload, bytes) travel on each
    /// connection's express stream, which QUIC sends before the main one:
    /// a small event does not wait behind big ones. Order is kept per event
    /// name (see `queue`). 0: one stream for everything, as before
    /// protocol version 7.
    pub express_max: usize,
    /// Kernel buffer asked for the UDP socket, each direction (0: the
    /// system default). Linux caps it at `net.core.rmem_max`/`wmem_max`
    /// unless the process has CAP_NET_ADMIN; the first node of a process
    /// that gets less logs a warning naming the sysctls. A small receive
    /// buffer makes the kernel drop QUIC's bursts.
    pub socket_buffer: usize,
    /// What `emit` does when a queue is full.
    pub full_policy: FullPolicy,
    /// Largest event (name + payload) accepted, sent or received.
    pub max_event_size: usize,
    /// Subscriptions one neighbour may hold here.
    pub max_subscriptions_per_peer: usize,
    /// Accept and gossip non-global addresses (labs, private WANs).
    pub allow_non_global: bool,
    /// Relaying for others and through others.
    pub relay: RelaySettings,
    /// The hood's revocation list to start with (`--revoked FILE`): peers
    /// whose certificate it names are refused at every handshake. Replace it
    /// at run time with [`crate::Bus::set_revocations`].
    pub revoked: Option<RevocationList>,
    /// Serve metrics in the Prometheus text format at `GET /metrics` on this
    /// TCP address (`--metrics 127.0.0.1:9464`); `None` (default): do not.
    /// Unauthenticated: keep it on loopback or a private interface.
    pub metrics: Option<SocketAddr>,
}

impl Config {
    /// Defaults for everything but the PKI.
    pub fn new(hood: Hood, identity: Identity) -> Config {
        Config {
            identity,
            port: PortSpec::default(),
            bind: None,
            advertise: Vec::new(),
            discovery: Vec::new(),
            keep_alive: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            congestion: crate::Congestion::default(),
            handshake_timeout: Duration::from_secs(10),
            redial_base: Duration::from_secs(1),
            redial_max: Duration::from_secs(120),
            redial_for: Duration::from_secs(7 * 24 * 3600),
            gossip_dial_delay: Duration::from_millis(500),
            dial_concurrency: 4,
            queue_limit: 4 << 20,
            express_max: 1024,
            socket_buffer: 4 << 20,
            full_policy: FullPolicy::default(),
            max_event_size: 16 << 20,
            max_subscriptions_per_peer: 10_000,
            allow_non_global: false,
            relay: RelaySettings::for_hood(&hood),
            revoked: None,
            metrics: None,
            hood,
        }
    }

    /// Loads the hood CA, certificate and key (PEM). A key file that every
    /// user of the machine may read is refused, as ssh does; see
    /// [`Config::from_files_with`].
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Config, partybus_pki::PkiError> {
        Self::from_files_with(ca, cert, key, KeyFileCheck::Private)
    }

    /// [`Config::from_files`] with a choice about the key file's permissions.
    pub fn from_files_with(ca: &Path, cert: &Path, key: &Path, check: KeyFileCheck) -> Result<Config, partybus_pki::PkiError> {
        let hood = Hood::load(ca)?;
        let identity = Identity::load_with(cert, key, &hood, check)?;
        Ok(Config::new(hood, identity))
    }

    /// Adds static discovery of `host:port` targets, re-tried every 60 s.
    pub fn connect<I, S>(mut self, targets: I) -> Config
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let t: Vec<String> = targets.into_iter().map(Into::into).collect();
        if !t.is_empty() {
            self.discovery.push(Box::new(partybus_discovery::StaticDiscovery::new(t, Duration::from_secs(60))));
        }
        self
    }

    /// Adds a discovery service.
    pub fn discover(mut self, d: impl Discovery) -> Config {
        self.discovery.push(Box::new(d));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs() {
        assert_eq!("4816".parse::<PortSpec>().unwrap().ports(), &[4816]);
        assert_eq!("4816-4819".parse::<PortSpec>().unwrap().ports(), &[4816, 4817, 4818, 4819]);
        assert_eq!("1,5-6".parse::<PortSpec>().unwrap().ports(), &[1, 5, 6]);
        assert_eq!("0".parse::<PortSpec>().unwrap(), PortSpec::any());
        for bad in ["", "x", "5-1", "1-", "70000", "1,,2", "0-3"] {
            let e = bad.parse::<PortSpec>().unwrap_err();
            assert!(e.contains("expected a number"), "{bad}: {e}");
        }
    }
}
