//! A running node: what its tasks share ([`Inner`]), how it starts, and how
//! it leaves. The mesh's decisions are in [`crate::mesh`], the data plane in
//! [`crate::plane`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use partybus_discovery::{DiscoveryContext, DiscoveryEvent, DiscoverySink, StopHandle, StopSignal};

use crate::config::{Config, FullPolicy};
use crate::event::PeerInfo;
use crate::id::NodeId;
use crate::mesh::actor::{Actor, Msg};
use crate::mesh::conn::LEAVE_FLUSH;
use crate::mesh::proto::{ConnId, Mesh, MeshConfig};
use crate::mesh::{endpoint, ConnStats, JoinError, NeighbourEvent, NEIGHBOUR_EVENTS};
use crate::peers::{self, canonical};
use crate::plane::Plane;
use crate::wire::close;

/// Settings copied out of [`Config`] (the rest is consumed by `join`).
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub handshake_timeout: Duration,
    pub queue_limit: usize,
    pub max_event_size: usize,
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
struct Addresses {
    external: Vec<SocketAddr>,
    observed: Vec<SocketAddr>,
    stats: ConnStats,
}

/// What a node's tasks share.
pub(crate) struct Inner {
    pub(crate) id: NodeId,
    pub(crate) me: Arc<PeerInfo>,
    pub(crate) fingerprint: String,
    pub(crate) settings: Settings,
    pub(crate) local_addr: SocketAddr,
    /// Dropped at the end of `leave`, releasing the UDP port.
    endpoint: Mutex<Option<quinn::Endpoint>>,
    /// QUIC settings for peers on this host (large packets from the start, see `tls::transport`).
    pub(crate) server_on_host: Arc<quinn::ServerConfig>,
    pub(crate) client_on_host: quinn::ClientConfig,
    pub(crate) plane: Arc<Plane>,
    /// To the mesh actor.
    mesh_tx: mpsc::Sender<Msg>,
    addrs: Mutex<Addresses>,
    pub(crate) events: broadcast::Sender<NeighbourEvent>,
    reachable_tx: watch::Sender<Vec<SocketAddr>>,
    phase: watch::Sender<Phase>,
    discovery_stop: StopHandle,
    /// The discovery services' tasks: leave gives them time to withdraw what they published.
    discovery: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Every task of the node, and the one token that stops them.
    pub(crate) tracker: TaskTracker,
    pub(crate) cancel: CancellationToken,
    next_conn: AtomicU64,
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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

impl Inner {
    pub(crate) fn endpoint(&self) -> Option<quinn::Endpoint> {
        relock(&self.endpoint).clone()
    }

    pub(crate) fn next_conn(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Spawns a task of this node (tracked; stopped by `leave`).
    pub(crate) fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, fut: F) -> tokio::task::JoinHandle<()> {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            cancel.run_until_cancelled(fut).await;
        })
    }

    /// Reports to the mesh actor (waits while its queue is full; a no-op once it has stopped).
    pub(crate) async fn report(&self, msg: Msg) {
        let _ = self.mesh_tx.send(msg).await;
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
        v.extend(relock(&self.addrs).external.iter().copied());
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

    fn update_reachable(&self) {
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
        let msg = Msg::Candidate { addr, retry: true };
        if let Err(mpsc::error::TrySendError::Full(msg)) = self.mesh_tx.try_send(msg) {
            let me = self.clone();
            self.spawn(async move { me.report(msg).await });
        }
    }

    pub(crate) fn neighbour_count_rx(&self) -> watch::Receiver<usize> {
        self.plane.count_tx.subscribe()
    }

    pub(crate) fn path(&self, id: NodeId) -> Option<crate::mesh::PathStats> {
        let p = self.plane.state().links.get(&id)?.conn.stats().path;
        Some(crate::mesh::PathStats {
            rtt: p.rtt,
            mtu: p.current_mtu,
            sent_packets: p.sent_packets,
            lost_packets: p.lost_packets,
            cwnd: p.cwnd,
        })
    }
}

/// Starts a node. See [`crate::Bus::join`].
pub(crate) async fn start(cfg: Config) -> Result<Arc<Inner>, JoinError> {
    let server = crate::tls::server_config(&cfg)?;
    let client = crate::tls::client_config(&cfg)?;
    let (server_on_host, client_on_host) = crate::tls::on_host(&cfg, server.clone(), client.clone());
    let sock = crate::udp::bind(cfg.bind, cfg.port.ports(), cfg.socket_buffer)?;
    let runtime = quinn::default_runtime().ok_or_else(|| JoinError::Endpoint(std::io::Error::other("no async runtime")))?;
    let mut endpoint = quinn::Endpoint::new(crate::tls::endpoint_config(), Some(server), sock, runtime).map_err(JoinError::Endpoint)?;
    endpoint.set_default_client_config(client);
    let local_addr = endpoint.local_addr().map_err(JoinError::Endpoint)?;

    let id = NodeId::random();
    let me = Arc::new(PeerInfo { id, name: cfg.identity.name().to_owned(), addr: None, local: true });
    let (dispatch_tx, dispatch_rx) = mpsc::channel(256);
    let (mesh_tx, mesh_rx) = mpsc::channel(1024);
    let (discovery_stop, stop_signal) = StopSignal::new();
    let full_policy: FullPolicy = cfg.full_policy;
    let inner = Arc::new(Inner {
        id,
        me: me.clone(),
        fingerprint: cfg.hood.fingerprint().to_owned(),
        settings: Settings {
            handshake_timeout: cfg.handshake_timeout,
            queue_limit: cfg.queue_limit,
            max_event_size: cfg.max_event_size,
            allow_non_global: cfg.allow_non_global,
            advertise: cfg.advertise.clone(),
        },
        local_addr,
        endpoint: Mutex::new(Some(endpoint.clone())),
        server_on_host: Arc::new(server_on_host),
        client_on_host,
        plane: Arc::new(Plane::new(me, cfg.max_subscriptions_per_peer, dispatch_tx, full_policy)),
        mesh_tx,
        addrs: Mutex::new(Addresses::default()),
        events: broadcast::channel(NEIGHBOUR_EVENTS).0,
        reachable_tx: watch::channel(Vec::new()).0,
        phase: watch::channel(Phase::Running).0,
        discovery_stop,
        discovery: Mutex::new(Vec::new()),
        tracker: TaskTracker::new(),
        cancel: CancellationToken::new(),
        next_conn: AtomicU64::new(0),
    });
    inner.update_reachable();
    info!(id = %id, name = %inner.me.name, addr = %local_addr, hood = %inner.fingerprint, "joined the hood");

    let mesh = Mesh::new(
        id,
        MeshConfig {
            handshake_timeout: cfg.handshake_timeout,
            redial_base: cfg.redial_base,
            redial_max: cfg.redial_max,
            redial_for: cfg.redial_for,
            gossip_dial_delay: cfg.gossip_dial_delay,
            allow_non_global: cfg.allow_non_global,
            dial_concurrency: cfg.dial_concurrency,
        },
        rand::random(),
    );
    inner.spawn(Actor::new(inner.clone(), mesh, mesh_rx).run());
    inner.spawn(crate::event::run_dispatcher(dispatch_rx, inner.plane.clone()));
    inner.spawn(endpoint::accept_loop(inner.clone(), endpoint));

    // Discovery services, and what they find.
    let (sink, mut disc_rx) = DiscoverySink::channel(1024);
    for svc in cfg.discovery {
        let ctx = DiscoveryContext {
            hood_fingerprint: inner.fingerprint.clone(),
            node_id: id.to_hex(),
            cert_name: inner.me.name.clone(),
            port: local_addr.port(),
            reachable: inner.reachable_tx.subscribe(),
            allow_non_global: inner.settings.allow_non_global,
        };
        debug!(service = svc.name(), "starting discovery");
        let task = inner.spawn(svc.start(ctx, sink.clone(), stop_signal.clone()));
        relock(&inner.discovery).push(task);
    }
    drop(sink);
    let me = inner.clone();
    inner.spawn(async move {
        while let Some(ev) = disc_rx.recv().await {
            match ev {
                DiscoveryEvent::Candidate { addr, source } => {
                    debug!(%addr, %source, "candidate");
                    me.report(Msg::Candidate { addr, retry: true }).await;
                }
                DiscoveryEvent::External { addr, source } => {
                    info!(%addr, %source, "reachable at external address");
                    {
                        let mut a = relock(&me.addrs);
                        if !a.external.contains(&addr) {
                            a.external.push(addr);
                        }
                    }
                    me.update_reachable();
                }
                DiscoveryEvent::ExternalLost { addr, source } => {
                    info!(%addr, %source, "external address withdrawn");
                    relock(&me.addrs).external.retain(|a| *a != addr);
                    me.update_reachable();
                }
            }
        }
    });
    Ok(inner)
}

/// Leaves the hood, in this order: no more dials and discovery; every
/// neighbour's queue sent and acknowledged (bounded); every connection
/// closed with a goodbye; every task stopped; the UDP port released.
pub(crate) async fn leave(inner: &Arc<Inner>) {
    let first = inner.phase.send_if_modified(|p| {
        let running = *p == Phase::Running;
        if running {
            *p = Phase::Leaving;
        }
        running
    });
    if !first {
        // Someone else leaves: wait until that is done.
        let mut rx = inner.phase.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|p| *p == Phase::Left)).await;
        return;
    }
    inner.report(Msg::Leave).await;
    inner.discovery_stop.stop();

    // Let the writers send what emit already counted and the peers
    // acknowledge it: closing the endpoint discards anything in flight.
    // Bounded: a peer that stopped answering does not hold the leave up.
    let writers: Vec<_> = {
        let st = inner.plane.state();
        st.links.values().map(|l| (l.queue.clone(), l.ctl.clone())).collect()
    };
    for (q, _) in &writers {
        q.finish();
    }
    let flush = async {
        for (_, ctl) in &writers {
            ctl.writer_ended().await;
        }
    };
    let _ = tokio::time::timeout(LEAVE_FLUSH, flush).await;

    if let Some(ep) = inner.endpoint() {
        ep.close(close::GOODBYE.into(), b"leave");
        // Close frames go out at once; waiting longer would only wait out
        // the draining period of handshakes still in progress.
        let _ = tokio::time::timeout(Duration::from_millis(300), ep.wait_idle()).await;
    }

    // Discovery (told to stop above) gets a moment to withdraw what it
    // published; then every task stops.
    let discovery = std::mem::take(&mut *relock(&inner.discovery));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    for task in discovery {
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            debug!("a discovery service did not stop within 3 s: cancelling it");
        }
    }
    inner.cancel.cancel();
    inner.tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), inner.tracker.wait()).await;

    inner.plane.clear();
    // Dropping the last endpoint handle releases the UDP port.
    relock(&inner.endpoint).take();
    inner.phase.send_replace(Phase::Left);
    info!(id = %inner.id, "left the hood");
}

/// Held by every [`crate::Bus`] clone: when the last one is dropped
/// without `leave()`, the node leaves by itself (its tasks would otherwise
/// keep it running in the background).
pub(crate) struct Owner(pub(crate) Arc<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        if self.0.is_leaving() {
            return;
        }
        warn!(id = %self.0.id, "the last Bus handle was dropped without leave(): leaving the hood now");
        let inner = self.0.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { leave(&inner).await });
            }
            // No runtime (dropped outside one): stop the tasks at least.
            Err(_) => inner.cancel.cancel(),
        }
    }
}
