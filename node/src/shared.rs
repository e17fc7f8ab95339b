//! What a node's tasks share ([`Inner`]): identity, settings, the endpoint,
//! the data plane, the actor's inbox, addresses, the node's phase, and its
//! one task set with one cancellation token.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use partybus_discovery::StopHandle;

use crate::event::PeerInfo;
use crate::id::NodeId;
use crate::mesh::actor::Actor;
use crate::mesh::inbox::Msg;
use crate::mesh::proto::ConnId;
use crate::mesh::NeighbourInfo;
use crate::mesh::{ConnStats, NeighbourEvent};
use crate::path::{PathKind, PathShared};
use crate::peers::{self, canonical};
use crate::plane::Plane;
use crate::wire::{PeerAddrs, RelayRoute};

/// Settings copied out of [`Config`] (the rest is consumed by `join`).
/// The two limits are atomics: a reload changes them (`Bus::set_limits`)
/// while the data plane reads them without a lock.
#[derive(Debug)]
pub(crate) struct Settings {
    pub handshake_timeout: Duration,
    /// Bytes a new neighbour's send queue may hold.
    pub queue_limit: AtomicUsize,
    /// Largest event on the express lane (0: none). Fixed for the node's
    /// life: each hello says whether an express stream was opened.
    pub express_max: usize,
    /// Largest event accepted (emit, and connections opened from now on).
    pub max_event_size: AtomicUsize,
    pub allow_non_global: bool,
    pub advertise: Vec<SocketAddr>,
}

/// Where a node is in its life. One value, watched: `leave` moves it
/// forward, and everything that must stop looks here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    Leaving,
    Left,
}

/// Addresses: ours as others see them, and mapped ones.
#[derive(Default)]
pub(crate) struct Addresses {
    /// Mapped addresses and the service (protocol) that mapped each.
    pub(crate) external: Vec<crate::bus::ExternalAddr>,
    observed: Vec<SocketAddr>,
    stats: ConnStats,
}

/// What a node's tasks share.
pub(crate) struct Inner {
    pub(crate) id: NodeId,
    /// Sent in our hello: with our certificate's name it proves `id`.
    pub(crate) id_nonce: crate::id::IdNonce,
    pub(crate) me: Arc<PeerInfo>,
    pub(crate) fingerprint: String,
    /// Our certificate and key, swapped by a rotation (`Bus::rotate_identity`).
    pub(crate) identity: Arc<crate::identity::SwapIdentity>,
    /// The hood (its CA certificate, for `status` and rotation checks).
    pub(crate) hood: partybus_pki::Hood,
    /// When the node joined (for `status`).
    pub(crate) started: std::time::Instant,
    pub(crate) settings: Settings,
    pub(crate) local_addr: SocketAddr,
    /// Dropped at the end of `leave`, releasing the UDP port.
    pub(crate) endpoint: Mutex<Option<quinn::Endpoint>>,
    /// QUIC settings for peers on this host (large packets from the start, see `tls::transport`).
    pub(crate) server_on_host: Arc<quinn::ServerConfig>,
    pub(crate) client_on_host: quinn::ClientConfig,
    pub(crate) plane: Arc<Plane>,
    /// The mesh's actor.
    pub(crate) actor: Actor,
    pub(crate) addrs: Mutex<Addresses>,
    pub(crate) events: broadcast::Sender<NeighbourEvent>,
    pub(crate) reachable_tx: watch::Sender<Vec<SocketAddr>>,
    pub(crate) phase: watch::Sender<Phase>,
    pub(crate) discovery_stop: StopHandle,
    /// The discovery services' tasks: leave gives them time to withdraw what they published.
    pub(crate) discovery: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Every task of the node, and the one token that stops them.
    pub(crate) tracker: TaskTracker,
    pub(crate) cancel: CancellationToken,
    pub(crate) next_conn: AtomicU64,
    /// Events dropped because the sender's certificate does not allow them.
    pub(crate) forbidden_events: AtomicU64,
    pub(crate) dial_seq: AtomicU64,
    /// Network paths: relays, punched paths ([`crate::path`]).
    pub(crate) paths: Arc<PathShared>,
    /// Our relay routes, for discovery services that announce us.
    pub(crate) routes_tx: watch::Sender<Vec<partybus_discovery::RelayRoute>>,
    /// The revocation list in force; the TLS verifiers read it at every handshake.
    pub(crate) revoked: partybus_pki::RevokedSet,
    /// Where metrics are served (`Config::metrics`, bound).
    pub(crate) metrics_addr: Option<SocketAddr>,
}

pub(crate) fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Addresses of local interfaces (link-local excluded), with `port`.
fn interface_addrs(local: SocketAddr) -> Vec<SocketAddr> {
    let port = local.port();
    if !local.ip().is_unspecified() {
        return vec![canonical(local)];
    }
    let mut out = Vec::new();
    if let Ok(ifs) = if_addrs::get_if_addrs() {
        for i in ifs {
            let ip = i.ip();
            if peers::scope(ip) == peers::Scope::LinkLocal || (local.is_ipv4() && ip.is_ipv6()) {
                continue;
            }
            out.push(SocketAddr::new(ip, port));
        }
    }
    if out.is_empty() {
        out.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    // Global first, then private, then loopback: the order others try them in.
    out.sort_by_key(|a| std::cmp::Reverse(peers::scope(a.ip())));
    out.dedup();
    out
}

impl Settings {
    pub(crate) fn max_event_size(&self) -> usize {
        self.max_event_size.load(Ordering::Relaxed)
    }
}

impl Inner {
    pub(crate) fn endpoint(&self) -> Option<quinn::Endpoint> {
        relock(&self.endpoint).clone()
    }

    pub(crate) fn next_conn(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Numbers a dialled connection when its QUIC handshake completes (a
    /// later connection gets a larger number, which the duplicate rule
    /// needs; see `wire::Hello::dial`).
    pub(crate) fn next_dial(&self) -> u64 {
        self.dial_seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Spawns a connection's task (a dial, an incoming handshake, a
    /// connection, a writer): tracked, but not wrapped in the cancellation
    /// token. These end by themselves once their connection closes (leave
    /// closes the endpoint), and polling the token's future on every wake
    /// of the busiest tasks cost a shared lock each time.
    pub(crate) fn spawn_conn<F: std::future::Future<Output = ()> + Send + 'static>(&self, fut: F) -> tokio::task::JoinHandle<()> {
        self.tracker.spawn(fut)
    }

    /// Spawns a task of this node (tracked; stopped by `leave`).
    pub(crate) fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, fut: F) -> tokio::task::JoinHandle<()> {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            cancel.run_until_cancelled(fut).await;
        })
    }

    /// Reports to the mesh's actor (waits while its inbox is full).
    pub(crate) async fn report(self: &Arc<Self>, msg: Msg) {
        self.actor.report(self, msg).await
    }

    pub(crate) fn is_leaving(&self) -> bool {
        *self.phase.borrow() != Phase::Running
    }

    /// The actor's figures, for the synchronous accessors.
    pub(crate) fn publish_mesh(&self, stats: ConnStats, observed: &[SocketAddr]) {
        let mut a = relock(&self.addrs);
        a.stats = stats;
        if a.observed != observed {
            a.observed = observed.to_vec();
        }
    }

    pub(crate) fn conn_stats(&self) -> ConnStats {
        relock(&self.addrs).stats
    }

    pub(crate) fn observed(&self) -> Vec<SocketAddr> {
        relock(&self.addrs).observed.clone()
    }

    /// Addresses we tell peers in our hello.
    pub(crate) fn advertised(&self) -> Vec<SocketAddr> {
        // Interfaces are read (a system call) before taking the lock.
        let ifs = interface_addrs(self.local_addr);
        let mut v = self.settings.advertise.clone();
        v.extend(relock(&self.addrs).external.iter().map(|e| e.addr));
        v.extend(ifs);
        // A handful of addresses: a linear check beats building a set (once per connection).
        let mut out: Vec<SocketAddr> = Vec::with_capacity(v.len());
        for a in v {
            if !out.contains(&a) {
                out.push(a);
            }
        }
        out
    }

    pub(crate) fn update_reachable(&self) {
        let allow = self.settings.allow_non_global;
        let list: Vec<SocketAddr> = self
            .advertised()
            .into_iter()
            .filter(|a| match peers::scope(a.ip()) {
                peers::Scope::Global => true,
                peers::Scope::Private => allow,
                _ => false,
            })
            .collect();
        self.reachable_tx.send_if_modified(|v| {
            let m = *v != list;
            *v = list;
            m
        });
    }

    /// Dials `addr` (timeouts retried with backoff) unless connected or dialling there.
    pub(crate) fn connect(self: &Arc<Self>, addr: SocketAddr) {
        self.actor.post(self, Msg::Candidate { addr, retry: true });
    }

    /// Puts a newer revocation list in force: new handshakes with revoked
    /// peers fail from now on, and the actor closes every connection whose
    /// peer it revokes (and never dials or gossips those peers again).
    pub(crate) fn set_revocations(self: &Arc<Self>, list: &partybus_pki::RevocationList) -> Result<(), partybus_pki::RevocationError> {
        let newer = self.revoked.apply(list, &format!("revocation list sequence {}", list.sequence()))?;
        tracing::info!(sequence = list.sequence(), revoked = list.len(), "revocation list applied");
        self.actor.post(self, Msg::Revoke);
        if let Some(relay) = &self.paths.relay_service {
            let dropped = relay.drop_revoked();
            if dropped > 0 {
                tracing::info!(dropped, "relay: dropped the registrations of revoked members");
            }
        }
        if newer {
            // Every node passes a newer list on once: the hood learns it in
            // one wave, and a list it has seen stops there.
            self.plane.push_revocations(list.as_der(), &self.revoked);
        }
        Ok(())
    }

    /// A neighbour's revocation list: applied if newer than ours and signed
    /// by our hood's key; one that is not signed so is a protocol error (a
    /// member cannot make one, so the sender forged or mangled it).
    pub(crate) fn revocations_from(self: &Arc<Self>, from: &PeerInfo, der: &[u8]) -> Result<(), crate::mesh::errors::ProtocolError> {
        // Only a newer list is worth a signature check.
        match partybus_pki::revocation::claimed_sequence(der) {
            Some(seq) if seq <= self.revoked.sequence() => return Ok(()),
            _ => {}
        }
        let origin = format!("the revocation list from neighbour \"{}\"", from.name);
        let refused = |e: partybus_pki::RevocationError| crate::mesh::errors::ProtocolError::BadRevocations(e.to_string());
        let list = partybus_pki::RevocationList::from_der(der, &self.hood, &origin).map_err(refused)?;
        match self.set_revocations(&list) {
            Ok(()) => Ok(()),
            // Another neighbour's copy won the race: nothing to do.
            Err(partybus_pki::RevocationError::Older { .. }) => Ok(()),
            Err(e) => Err(refused(e)),
        }
    }

    pub(crate) fn neighbour_count_rx(&self) -> watch::Receiver<usize> {
        self.plane.count_tx.subscribe()
    }

    pub(crate) fn path(&self, id: NodeId) -> Option<crate::mesh::PathStats> {
        let (stats, key) = {
            let st = self.plane.state();
            let link = st.links.get(&id)?;
            (link.conn.stats().path, link.info.addr)
        };
        Some(crate::mesh::PathStats {
            rtt: stats.rtt,
            mtu: stats.current_mtu,
            sent_packets: stats.sent_packets,
            lost_packets: stats.lost_packets,
            cwnd: stats.cwnd,
            path: key.and_then(|k| self.path_kind(k)),
        })
    }

    /// Every neighbour with its traffic figures.
    pub(crate) fn neighbour_stats(&self) -> Vec<crate::mesh::NeighbourStats> {
        // Copied out under the plane's lock; quinn's and the queue's figures read after it.
        let links: Vec<_> = {
            let st = self.plane.state();
            st.links.values().map(|l| (l.info(), l.conn.clone(), l.queue.clone(), l.drain.clone())).collect()
        };
        links
            .into_iter()
            .map(|(info, conn, queue, drain)| {
                let stats = conn.stats();
                let (queue_bytes, events_out, queue_limit) = queue.fill();
                crate::mesh::NeighbourStats {
                    info: self.with_path(info),
                    rtt: stats.path.rtt,
                    bytes_out: stats.udp_tx.bytes,
                    bytes_in: stats.udp_rx.bytes,
                    events_out,
                    events_in: drain.count(),
                    queue_bytes,
                    queue_limit,
                    cert_fingerprint: crate::tls::peer_cert_fingerprint(&conn),
                }
            })
            .collect()
    }

    /// The path of the connection known by `key` (its remote address as quinn sees it).
    pub(crate) fn path_kind(&self, key: SocketAddr) -> Option<crate::mesh::NeighbourPath> {
        let p = self.paths.run(|p| p.path_of(key))?;
        Some(match p {
            PathKind::Direct(addr) => crate::mesh::NeighbourPath::Direct { addr },
            PathKind::Relayed(via) => crate::mesh::NeighbourPath::Relayed { via },
        })
    }

    /// `info` with its path filled in (the plane knows connections, not paths).
    pub(crate) fn with_path(&self, mut info: NeighbourInfo) -> NeighbourInfo {
        info.path = self.path_kind(info.addr);
        match info.path {
            Some(crate::mesh::NeighbourPath::Direct { addr }) => info.addr = addr,
            Some(crate::mesh::NeighbourPath::Relayed { via }) => info.addr = via,
            None => {}
        }
        info
    }

    /// Our relay routes now.
    pub(crate) fn my_routes(&self) -> Vec<RelayRoute> {
        self.paths.run(|p| p.my_routes(std::time::Instant::now()))
    }

    /// Gossip as it goes on the wire: relay keys become the routes they stand for.
    pub(crate) fn wire_peers(&self, peers: Vec<PeerAddrs>) -> Vec<PeerAddrs> {
        peers
            .into_iter()
            .map(|p| {
                let (addrs, relays) = self.paths.book.split(&p.addrs);
                PeerAddrs { id: p.id, addrs, relays }
            })
            .collect()
    }

    /// Gossip as the mesh takes it: routes become relay keys (dialled first).
    pub(crate) fn mesh_peers(&self, peers: Vec<PeerAddrs>) -> Vec<PeerAddrs> {
        peers
            .into_iter()
            .map(|p| {
                let addrs = self.paths.book.join(p.addrs, &p.relays);
                PeerAddrs { id: p.id, addrs, relays: Vec::new() }
            })
            .collect()
    }

    /// Addresses we tell a peer for hole punching: the advertised ones, and
    /// where neighbours and relays see us.
    pub(crate) fn punch_addrs(&self) -> Vec<SocketAddr> {
        // Where others see us first: behind a NAT, those are the ones a punch needs.
        let mut v = self.paths.run(|p| p.observed());
        for a in self.observed().into_iter().chain(self.advertised()) {
            if !v.contains(&a) && !crate::path::keys::is_relay_key(a) {
                v.push(a);
            }
        }
        v.truncate(crate::path::paths::MAX_CANDIDATES);
        v
    }
}
