//! Pluggable peer discovery for partybus.
//!
//! Discovery only finds *candidate* addresses. Whether a candidate really is a
//! member of the hood is decided by the mesh, which dials it over QUIC with
//! mutual TLS against the hood CA. A discovery service therefore never needs
//! to be trusted: a wrong or hostile candidate costs one failed handshake.
//!
//! A service implements [`Discovery`]. The node starts every configured
//! service with a [`DiscoveryContext`] (who we are, where we listen) and a
//! [`DiscoverySink`] (where candidates go), and stops them all on `leave()` by
//! firing the [`StopSignal`]; the service's future then finishes its goodbyes
//! (mDNS goodbye packets, UPnP mapping removal, ...) and returns.
//!
//! ```
//! use partybus_discovery::{Discovery, DiscoveryContext, DiscoverySink, StopSignal, BoxFuture};
//!
//! /// A service that reports one fixed address, once.
//! struct Once(std::net::SocketAddr);
//!
//! impl Discovery for Once {
//!     fn name(&self) -> &str { "once" }
//!     fn start(self: Box<Self>, _ctx: DiscoveryContext, sink: DiscoverySink, mut stop: StopSignal)
//!         -> BoxFuture<'static, ()>
//!     {
//!         Box::pin(async move {
//!             sink.candidate(self.0, "once");
//!             stop.stopped().await;
//!         })
//!     }
//! }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use tokio::sync::{mpsc, watch};

pub mod addr;
#[cfg(feature = "dht")]
pub mod dht;
pub mod mdns;
pub mod portmap;
pub mod static_addrs;
pub mod upnp;

pub use mdns::MdnsDiscovery;
pub use static_addrs::StaticDiscovery;

/// A boxed, sendable future, as returned by [`Discovery::start`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a discovery service knows about the node it works for.
#[derive(Clone, Debug)]
pub struct DiscoveryContext {
    /// Lowercase hex SHA-256 of the hood CA certificate's DER.
    pub hood_fingerprint: String,
    /// Lowercase hex node id (new at every start of the node).
    pub node_id: String,
    /// The CN of the node's certificate.
    pub cert_name: String,
    /// The local UDP port the node's QUIC endpoint is bound to.
    pub port: u16,
    /// Addresses the node currently believes it can be reached at (local
    /// interface addresses, UPnP-mapped addresses, addresses confirmed by
    /// peers). Services that announce the node (DHT) follow this.
    pub reachable: watch::Receiver<Vec<SocketAddr>>,
    /// Relays this node is registered at: others reach it through them
    /// (services that announce the node publish these too).
    pub relay_routes: watch::Receiver<Vec<RelayRoute>>,
    /// Accept non-global addresses (private, documentation, shared ranges)
    /// where a service would otherwise filter them out: for labs and private WANs.
    pub allow_non_global: bool,
}

/// Something a discovery service tells the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiscoveryEvent {
    /// An address at which a hood member may be listening. The mesh dials it
    /// unless it is already connected to that address.
    Candidate {
        addr: SocketAddr,
        /// Name of the service that found it, for logs.
        source: String,
    },
    /// An address at which *this* node can be reached from elsewhere (for
    /// example a UPnP port mapping). The node advertises it to neighbours.
    External { addr: SocketAddr, source: String },
    /// A previously reported external address is no longer valid.
    ExternalLost { addr: SocketAddr, source: String },
    /// A node that may relay for this one (a seed: a `--connect` target or a
    /// DHT bootstrap node). The node registers there, so that members that
    /// cannot reach it directly reach it through the relay.
    Relay { addr: SocketAddr, source: String },
    /// A hood member that can be reached through a relay.
    Relayed { route: RelayRoute, source: String },
}

/// A way to reach a node through a relay: the relay's UDP address and the
/// id the node registered there. Written `ID@ADDR` (32 hex digits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RelayRoute {
    pub relay: SocketAddr,
    pub id: [u8; 16],
}

impl std::fmt::Display for RelayRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.id {
            write!(f, "{b:02x}")?;
        }
        write!(f, "@{}", self.relay)
    }
}

impl std::str::FromStr for RelayRoute {
    type Err = String;
    fn from_str(s: &str) -> Result<RelayRoute, String> {
        let (id, addr) = s.split_once('@').ok_or_else(|| format!("relay route {s:?}: expected ID@HOST:PORT"))?;
        if id.len() != 32 || !id.is_ascii() {
            return Err(format!("relay route {s:?}: the id must be 32 hex digits"));
        }
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&id[2 * i..2 * i + 2], 16).map_err(|_| format!("relay route {s:?}: the id must be 32 hex digits"))?;
        }
        let relay = addr.parse().map_err(|_| format!("relay route {s:?}: bad relay address"))?;
        Ok(RelayRoute { relay, id: out })
    }
}

/// Where a discovery service reports what it finds. Cheap to clone.
///
/// Reporting never blocks: if the node is not keeping up, candidates are
/// dropped (the service will report them again on its next round) rather than
/// held without bound.
#[derive(Clone, Debug)]
pub struct DiscoverySink {
    tx: mpsc::Sender<DiscoveryEvent>,
}

impl DiscoverySink {
    /// A sink and the receiver the node reads from; `capacity` bounds memory.
    pub fn channel(capacity: usize) -> (DiscoverySink, mpsc::Receiver<DiscoveryEvent>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (DiscoverySink { tx }, rx)
    }

    /// Report a candidate peer address.
    pub fn candidate(&self, addr: SocketAddr, source: &str) {
        self.send(DiscoveryEvent::Candidate { addr, source: source.to_owned() });
    }

    /// Report an address at which this node is reachable.
    pub fn external(&self, addr: SocketAddr, source: &str) {
        self.send(DiscoveryEvent::External { addr, source: source.to_owned() });
    }

    /// Report a node that may relay for this one.
    pub fn relay(&self, addr: SocketAddr, source: &str) {
        self.send(DiscoveryEvent::Relay { addr, source: source.to_owned() });
    }

    /// Report a member reachable through a relay.
    pub fn relayed(&self, route: RelayRoute, source: &str) {
        self.send(DiscoveryEvent::Relayed { route, source: source.to_owned() });
    }

    /// Withdraw an address reported with [`DiscoverySink::external`].
    pub fn external_lost(&self, addr: SocketAddr, source: &str) {
        self.send(DiscoveryEvent::ExternalLost { addr, source: source.to_owned() });
    }

    fn send(&self, ev: DiscoveryEvent) {
        if let Err(mpsc::error::TrySendError::Full(ev)) = self.tx.try_send(ev) {
            tracing::debug!(?ev, "discovery sink full, event dropped (it will be reported again)");
        }
    }

    /// True once the node has stopped listening.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Fired by the node when discovery must stop (on `leave()`).
#[derive(Clone, Debug)]
pub struct StopSignal {
    rx: watch::Receiver<bool>,
}

/// The node's side of a [`StopSignal`].
#[derive(Debug)]
pub struct StopHandle {
    tx: watch::Sender<bool>,
}

impl StopSignal {
    /// A new signal and the handle that fires it.
    pub fn new() -> (StopHandle, StopSignal) {
        let (tx, rx) = watch::channel(false);
        (StopHandle { tx }, StopSignal { rx })
    }

    /// Resolves once stop has been requested (or the handle was dropped).
    pub async fn stopped(&mut self) {
        // An error means the handle is gone, which also means "stop".
        let _ = self.rx.wait_for(|s| *s).await;
    }

    /// True if stop has been requested.
    pub fn is_stopped(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }
}

impl StopHandle {
    /// Ask every service holding a matching [`StopSignal`] to stop.
    pub fn stop(&self) {
        let _ = self.tx.send(true);
    }
}

/// A discovery service. Implement it to plug in your own way of finding peers.
pub trait Discovery: Send + 'static {
    /// A short name for logs ("static", "mdns", "dht", "upnp", ...).
    fn name(&self) -> &str;

    /// Run until `stop` fires, reporting into `sink`; then clean up
    /// (goodbyes, mapping removal) and return. The node spawns the returned
    /// future and awaits it on `leave()`, with a time limit.
    fn start(self: Box<Self>, ctx: DiscoveryContext, sink: DiscoverySink, stop: StopSignal) -> BoxFuture<'static, ()>;
}

/// A discovery service made from a closure, as tubemail's discovery factories
/// allowed: `FnDiscovery::new("mine", |ctx, sink, stop| Box::pin(async move { ... }))`.
pub struct FnDiscovery<F> {
    name: String,
    f: F,
}

impl<F> FnDiscovery<F>
where
    F: FnOnce(DiscoveryContext, DiscoverySink, StopSignal) -> BoxFuture<'static, ()> + Send + 'static,
{
    pub fn new(name: impl Into<String>, f: F) -> Self {
        FnDiscovery { name: name.into(), f }
    }
}

impl<F> Discovery for FnDiscovery<F>
where
    F: FnOnce(DiscoveryContext, DiscoverySink, StopSignal) -> BoxFuture<'static, ()> + Send + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }
    fn start(self: Box<Self>, ctx: DiscoveryContext, sink: DiscoverySink, stop: StopSignal) -> BoxFuture<'static, ()> {
        (self.f)(ctx, sink, stop)
    }
}
