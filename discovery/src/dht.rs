//! DHT rendezvous: hood members find each other through a Kademlia DHT
//! (libp2p-kad over TCP + Noise + Yamux) that runs on its own protocol
//! (`/partybus/kad/1.0.0`, never the IPFS one) and knows no peer but the
//! bootstrap nodes it is given: there are no default bootstrap nodes.
//!
//! # Records
//!
//! Every member of a hood announces itself with two things:
//!
//! * a **provider record** under the hood's rendezvous key
//!   `sha256("partybus-rendezvous:" + hood_fingerprint)`: "peer P is in this hood";
//! * a **value record** under its node key
//!   `sha256("partybus-node:" + hood_fingerprint + ":" + P)` whose value lists
//!   the node's reachable QUIC addresses (`pb1 ADDR ADDR ...`, at most
//!   [`MAX_ADDRS_PER_RECORD`] addresses).
//!
//! A lookup asks for the providers of the rendezvous key, then for the value
//! record of every provider (at most [`MAX_PROVIDERS_PER_LOOKUP`]), and
//! reports every address as a candidate. The value record carries the
//! publisher's TTL ([`DhtOptions::record_ttl`]) to the nodes that store it,
//! so a node that left stops being returned within that TTL even though
//! provider records live on (for [`PROVIDER_RECORD_TTL`] on partybus DHT
//! nodes): a provider without a value record yields nothing.
//!
//! The DHT peer identity is a fresh Ed25519 key at every start; it has
//! nothing to do with the hood certificate. Nothing found in the DHT is
//! trusted: the mesh verifies every candidate with mutual TLS.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use libp2p::futures::StreamExt;
use libp2p::identify;
use libp2p::kad::{
    self, store::MemoryStore, store::MemoryStoreConfig, GetProvidersOk, GetRecordOk, Mode, QueryResult, Quorum, Record, RecordKey,
};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{dial_opts::DialOpts, ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use tokio::time::{sleep_until, Instant};

use crate::{addr::is_global, BoxFuture, Discovery, DiscoveryContext, DiscoverySink, StopSignal};

/// The Kademlia protocol name of the partybus DHT (not IPFS's `/ipfs/kad/1.0.0`).
pub const KAD_PROTOCOL: &str = "/partybus/kad/1.0.0";
/// The identify protocol version string of partybus DHT peers.
pub const IDENTIFY_PROTOCOL: &str = "/partybus/id/1.0.0";
/// How long a partybus DHT node keeps a provider record it was sent (the
/// ADD_PROVIDER message carries no TTL, so the storing node decides).
/// [`DhtOptions::reannounce`] must stay well below it.
pub const PROVIDER_RECORD_TTL: Duration = Duration::from_secs(30 * 60);
/// Providers a partybus DHT node keeps per rendezvous key (libp2p's default, 20,
/// would lock a busy hood out for the provider TTL: extra providers are ignored).
pub const MAX_PROVIDERS_PER_KEY: usize = 100;
/// Addresses announced (and accepted) per node record.
pub const MAX_ADDRS_PER_RECORD: usize = 16;
/// Providers whose node records one lookup round fetches.
pub const MAX_PROVIDERS_PER_LOOKUP: usize = 64;
/// Addresses learnt through identify that are added to the routing table, per peer.
const MAX_IDENTIFY_ADDRS: usize = 8;
/// Size limit of a node record value.
const MAX_VALUE_BYTES: usize = 2048;
/// Upper bound of the retry backoff (bootstrap dials, failed announces).
const MAX_BACKOFF: Duration = Duration::from_secs(60);
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);
const QUERY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a resolution of one bootstrap `HOST:PORT` may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the DHT service and node.
#[derive(Debug, thiserror::Error)]
pub enum DhtError {
    #[error("DHT transport setup failed: {0}")]
    Transport(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    /// The DHT's TCP port is in use by another program (or another DHT node).
    #[error(
        "DHT TCP port {port} on {ip} is taken ({reason}): another program listens there, perhaps another partybus node \
         serving the DHT or another `partybus dht`. Stop it, or serve the DHT on another port: `partybus dht --port N`; \
         a `partybus node` serves it on the number of its own `--port` (or `--no-dht-serve` turns serving off)"
    )]
    PortTaken { ip: IpAddr, port: u16, reason: String },
    #[error("no listen address within {0:?}")]
    NoListenAddr(Duration),
}

/// Options of [`DhtDiscovery`].
#[derive(Clone, Debug)]
pub struct DhtOptions {
    /// Bootstrap nodes, `HOST:PORT` of their DHT TCP port (IPv6 literals in
    /// brackets). The only peers contacted unless the DHT tells us about others.
    pub bootstrap: Vec<String>,
    /// The DHT's own TCP port. `None`: the same number as the node's QUIC
    /// port (`ctx.port`) on TCP. If that one is taken, a service that only
    /// uses the DHT (not [`DhtOptions::serve`]) listens on a random port (no
    /// one needs to reach it there); a serving one fails with
    /// [`DhtError::PortTaken`], since others bootstrap from that port. An
    /// explicit port is never replaced.
    pub listen_port: Option<u16>,
    /// The address the DHT listens on; `None`: all IPv4 interfaces (0.0.0.0).
    pub listen_ip: Option<IpAddr>,
    /// Serve the DHT to others (Kademlia server mode: store records, answer
    /// queries). Only useful on a node others can reach; off by default, so a
    /// node behind NAT only uses the bootstrap nodes.
    pub serve: bool,
    /// Lifetime of our node record in the DHT (default 10 min). A node that
    /// left stops being returned within it.
    pub record_ttl: Duration,
    /// Interval of our re-announcements (default 4 min: below half of
    /// `record_ttl`, so one lost announcement does not make us disappear).
    /// Clamped to at most `record_ttl / 2`.
    pub reannounce: Duration,
    /// Interval of lookups for the other members (default 60 s), after the
    /// first ones 1, 3, 7, 15 and 31 s after the start.
    pub lookup_interval: Duration,
}

impl Default for DhtOptions {
    fn default() -> Self {
        DhtOptions {
            bootstrap: Vec::new(),
            listen_port: None,
            listen_ip: None,
            serve: false,
            record_ttl: Duration::from_secs(10 * 60),
            reannounce: Duration::from_secs(4 * 60),
            lookup_interval: Duration::from_secs(60),
        }
    }
}

/// Rendezvous through a Kademlia DHT; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct DhtDiscovery {
    opts: DhtOptions,
}

impl DhtDiscovery {
    pub fn new(opts: DhtOptions) -> Self {
        DhtDiscovery { opts }
    }

    /// Run the service until `stop` fires, like [`Discovery::start`], but
    /// return its error (a taken serving port: [`DhtError::PortTaken`])
    /// instead of only logging it, for callers that must fail on it.
    pub async fn run(self, ctx: DiscoveryContext, sink: DiscoverySink, stop: StopSignal) -> Result<(), DhtError> {
        run_service(self.opts, ctx, sink, stop).await
    }
}

mod records;
use records::{announceable, multiaddr_of, quic_multiaddr, tcp_socket_addr};
pub use records::{decode_addrs, encode_addrs, node_key, rendezvous_key};

mod core;
use self::core::{BehaviourEvent, Core};

impl Discovery for DhtDiscovery {
    fn name(&self) -> &str {
        "dht"
    }

    fn start(self: Box<Self>, ctx: DiscoveryContext, sink: DiscoverySink, stop: StopSignal) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Err(e) = self.run(ctx, sink, stop).await {
                tracing::error!(error = %e, "dht discovery failed; the DHT is not used (or served) by this node");
            }
        })
    }
}

/// An error's message, or its debug form where the message is empty (some
/// libp2p transport errors display as nothing).
fn error_text<E: std::fmt::Display + std::fmt::Debug>(e: &E) -> String {
    let s = e.to_string();
    if s.is_empty() {
        format!("{e:?}")
    } else {
        s
    }
}

/// Fails with [`DhtError::PortTaken`] if a TCP listener holds `ip:port`.
///
/// libp2p listens with `SO_REUSEPORT`: a second DHT node on a port that one
/// already serves would bind it without an error and silently share its
/// connections with the first. A plain listener (no `SO_REUSEPORT`) cannot
/// bind there, so a short-lived one tells whether the port is free. (A
/// program binding the port between this probe and the real listen is not
/// detected; that window is a few microseconds.) Port 0 is always free.
pub fn check_port_free(ip: IpAddr, port: u16) -> Result<(), DhtError> {
    if port == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind(SocketAddr::new(ip, port)) {
        Ok(probe) => {
            drop(probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(DhtError::PortTaken { ip, port, reason: e.to_string() }),
        Err(e) => Err(DhtError::Listen { addr: SocketAddr::new(ip, port).to_string(), reason: e.to_string() }),
    }
}

/// State of our own announcement.
struct Announce {
    /// What we last announced as external addresses (empty: nothing).
    addrs: Vec<SocketAddr>,
    routes: Vec<crate::RelayRoute>,
    put_query: Option<kad::QueryId>,
    next: Instant,
    backoff: Duration,
}

/// The first lookup gap after a start.
const FIRST_LOOKUP_GAP: Duration = Duration::from_secs(1);

/// The wait before the next lookup, after a wait of `gap`: 1, 2, 4, 8 ...
/// seconds, then `interval`.
fn next_lookup_gap(gap: Duration, interval: Duration) -> Duration {
    if gap.is_zero() {
        FIRST_LOOKUP_GAP.min(interval)
    } else {
        (gap * 2).min(interval)
    }
}

async fn run_service(opts: DhtOptions, ctx: DiscoveryContext, sink: DiscoverySink, mut stop: StopSignal) -> Result<(), DhtError> {
    let record_ttl = opts.record_ttl.max(Duration::from_secs(2));
    let reannounce = opts.reannounce.clamp(Duration::from_millis(100), record_ttl / 2);
    let lookup_interval = opts.lookup_interval.max(Duration::from_millis(100));
    let mode = if opts.serve { Mode::Server } else { Mode::Client };
    let mut core = Core::new(ctx.allow_non_global, opts.bootstrap.clone(), mode, record_ttl)?;
    let ip = opts.listen_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    match opts.listen_port {
        Some(p) => core.listen(ip, p, false).await?,
        // A serving node is a bootstrap node: others are told its port, so
        // it never moves silently to another one.
        None => core.listen(ip, ctx.port, !opts.serve).await?,
    }
    let local = core.local_peer_id();
    tracing::info!(peer_id = %local, listen = ?core.listen_addrs, serve = opts.serve, "dht discovery started");
    if opts.bootstrap.is_empty() {
        tracing::info!("dht: no bootstrap nodes configured; waiting for others to connect");
    }

    let rdv = RecordKey::new(&rendezvous_key(&ctx.hood_fingerprint));
    let own_key = RecordKey::new(&node_key(&ctx.hood_fingerprint, &local));
    let mut reachable = ctx.reachable.clone();
    let mut relay_routes = ctx.relay_routes.clone();
    let mut routes_open = true;
    // The bootstrap nodes relay too: a member behind a NAT registers there.
    for target in &opts.bootstrap {
        if let Ok(Ok(addrs)) = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(target.as_str())).await {
            for a in addrs.take(4) {
                sink.relay(a, "dht");
            }
        }
    }
    let mut ann =
        Announce { addrs: Vec::new(), routes: Vec::new(), put_query: None, next: Instant::now(), backoff: Duration::from_secs(1) };
    let mut next_lookup = Instant::now();
    // Lookups come quickly after the start and slow down to
    // `lookup_interval`: a member whose record was stored a moment late (a
    // lost packet on the way to the DHT, a member that started just after
    // us) is found in seconds, not at the next full interval (60 s).
    let mut lookup_gap = Duration::ZERO;
    let mut last_lookup: Option<Instant> = None;
    // Node-record queries of the current lookup round: query -> provider.
    let mut record_queries: HashMap<kad::QueryId, PeerId> = HashMap::new();
    let mut provider_query: Option<kad::QueryId> = None;
    let mut seen_providers: HashSet<PeerId> = HashSet::new();
    let mut reachable_open = true;

    loop {
        core.bootstrap_tick().await;
        let now = Instant::now();
        if now >= ann.next {
            let addrs = announceable(&reachable.borrow_and_update(), ctx.allow_non_global);
            let routes: Vec<crate::RelayRoute> = relay_routes.borrow_and_update().clone();
            announce(&mut core, &mut ann, &rdv, &own_key, (addrs, routes), record_ttl, reannounce);
        }
        if now >= next_lookup {
            lookup_gap = next_lookup_gap(lookup_gap, lookup_interval);
            next_lookup = now + lookup_gap;
            last_lookup = Some(now);
            if provider_query.is_none() {
                seen_providers.clear();
                provider_query = Some(core.swarm.behaviour_mut().kad.get_providers(rdv.clone()));
            }
        }
        let wake = ann.next.min(next_lookup).min(core.next_bootstrap_dial);
        tokio::select! {
            _ = stop.stopped() => break,
            _ = sleep_until(wake) => {}
            r = reachable.changed(), if reachable_open => {
                if r.is_err() {
                    reachable_open = false;
                } else {
                    // Announce the new set soon (debounced a little).
                    ann.next = ann.next.min(Instant::now() + Duration::from_millis(200));
                }
            }
            r = relay_routes.changed(), if routes_open => {
                if r.is_err() {
                    routes_open = false;
                } else {
                    ann.next = ann.next.min(Instant::now() + Duration::from_millis(200));
                }
            }
            ev = core.swarm.select_next_some() => {
                match ev {
                    SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed { id, result, step, .. })) => {
                        match result {
                            QueryResult::GetProviders(Ok(GetProvidersOk::FoundProviders { providers, .. })) => {
                                for p in providers {
                                    if p == local || seen_providers.len() >= MAX_PROVIDERS_PER_LOOKUP
                                        || !seen_providers.insert(p) {
                                        continue;
                                    }
                                    let q = core.swarm.behaviour_mut().kad
                                        .get_record(RecordKey::new(&node_key(&ctx.hood_fingerprint, &p)));
                                    record_queries.insert(q, p);
                                }
                            }
                            QueryResult::GetProviders(r) => {
                                if step.last {
                                    provider_query = None;
                                }
                                if let Err(e) = r {
                                    tracing::debug!(error = %e, "dht: provider lookup failed");
                                }
                            }
                            QueryResult::GetRecord(Ok(GetRecordOk::FoundRecord(pr))) => {
                                if let Some(p) = record_queries.get(&id) {
                                    if pr.record.publisher.is_some_and(|publ| publ != *p) {
                                        tracing::debug!(provider = %p, "dht: node record from another publisher ignored");
                                    } else {
                                        for a in decode_addrs(&pr.record.value) {
                                            if ctx.allow_non_global || is_global(a.ip()) {
                                                sink.candidate(a, "dht");
                                            }
                                        }
                                        for r in records::decode_routes(&pr.record.value) {
                                            if ctx.allow_non_global || is_global(r.relay.ip()) {
                                                sink.relayed(r, "dht");
                                            }
                                        }
                                    }
                                    // One record per provider is enough.
                                    if let Some(mut q) = core.swarm.behaviour_mut().kad.query_mut(&id) {
                                        q.finish();
                                    }
                                }
                            }
                            QueryResult::GetRecord(_) => {}
                            QueryResult::PutRecord(r) if Some(id) == ann.put_query => {
                                ann.put_query = None;
                                match r {
                                    Ok(_) => {
                                        ann.backoff = Duration::from_secs(1);
                                        tracing::debug!("dht: node record stored");
                                    }
                                    Err(e) => {
                                        tracing::debug!(error = %e, "dht: storing node record failed, retrying");
                                        ann.next = Instant::now() + ann.backoff.min(reannounce);
                                        ann.backoff = (ann.backoff * 2).min(MAX_BACKOFF);
                                    }
                                }
                            }
                            QueryResult::StartProviding(Err(e)) => {
                                tracing::debug!(error = %e, "dht: provider announcement failed");
                            }
                            _ => {}
                        }
                        if step.last {
                            record_queries.remove(&id);
                            if Some(id) == provider_query {
                                provider_query = None;
                            }
                        }
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated { is_new_peer: true, .. })) => {
                        // A (re)joined DHT: an announcement that failed for lack of
                        // peers is worth retrying right away, and so is a lookup.
                        if ann.put_query.is_none() && ann.backoff > Duration::from_secs(1) {
                            ann.next = Instant::now();
                            ann.backoff = Duration::from_secs(1);
                        }
                        // The first lookup usually ran before any peer was
                        // known and found nothing: look again now (at most
                        // once a second while peers keep arriving).
                        let soon = last_lookup.map_or(Instant::now(), |t| t + Duration::from_secs(1));
                        next_lookup = next_lookup.min(soon.max(Instant::now()));
                    }
                    other => core.on_common_event(other),
                }
            }
        }
    }

    // Stop announcing: forget our records locally. Copies elsewhere expire
    // within `record_ttl` (the node record) and are ignored after that.
    let kad = &mut core.swarm.behaviour_mut().kad;
    kad.stop_providing(&rdv);
    kad.remove_record(&own_key);
    let peers: Vec<PeerId> = core.swarm.connected_peers().copied().collect();
    for p in peers {
        let _ = core.swarm.disconnect_peer_id(p);
    }
    tracing::info!("dht discovery stopped");
    Ok(())
}

fn announce(
    core: &mut Core,
    ann: &mut Announce,
    rdv: &RecordKey,
    own_key: &RecordKey,
    (addrs, routes): (Vec<SocketAddr>, Vec<crate::RelayRoute>),
    record_ttl: Duration,
    reannounce: Duration,
) {
    ann.next = Instant::now() + reannounce;
    let kad = &mut core.swarm.behaviour_mut().kad;
    if addrs.is_empty() && routes.is_empty() {
        if !ann.addrs.is_empty() {
            tracing::info!("dht: no reachable address or relay any more; no longer announcing");
            kad.stop_providing(rdv);
            kad.remove_record(own_key);
            for a in std::mem::take(&mut ann.addrs) {
                core.swarm.remove_external_address(&quic_multiaddr(a));
            }
            ann.routes.clear();
        }
        return;
    }
    // A node behind a NAT is reached through its relays: their addresses
    // stand in as its external ones (a DHT node hands out no provider without any).
    let external: Vec<SocketAddr> = if addrs.is_empty() { routes.iter().map(|r| r.relay).collect() } else { addrs.clone() };
    if ann.addrs != external || ann.routes != routes {
        tracing::info!(addrs = ?addrs, relays = routes.len(), "dht: announcing");
        // Provider records carry the provider's external addresses, and a
        // DHT node does not hand out providers without any. Ours are the QUIC
        // addresses as `/udp/P/quic-v1`: our TCP-only DHT transport never
        // dials them, so they cost nothing but make client-mode providers visible.
        for a in &ann.addrs {
            core.swarm.remove_external_address(&quic_multiaddr(*a));
        }
        for a in &external {
            core.swarm.add_external_address(quic_multiaddr(*a));
        }
    }
    let kad = &mut core.swarm.behaviour_mut().kad;
    let mut record = Record::new(own_key.clone(), records::encode_record(&addrs, &routes));
    record.expires = Some(std::time::Instant::now() + record_ttl);
    match kad.put_record(record, Quorum::One) {
        Ok(q) => ann.put_query = Some(q),
        Err(e) => tracing::warn!(error = %e, "dht: cannot store own node record"),
    }
    if let Err(e) = kad.start_providing(rdv.clone()) {
        tracing::warn!(error = %e, "dht: cannot provide rendezvous key");
    }
    ann.addrs = external;
    ann.routes = routes;
}

mod node;
pub use node::{run_dht_node, DhtNode, DhtNodeOptions};

#[cfg(test)]
mod tests;
