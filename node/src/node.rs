//! A node's life: how it starts (binds, spawns its tasks) and how it leaves.
//! What its tasks share is [`crate::shared::Inner`]; the mesh's decisions are
//! in [`crate::mesh`], the data plane in [`crate::plane`].

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use partybus_discovery::{DiscoveryContext, DiscoveryEvent, DiscoverySink, StopSignal};

use crate::config::{Config, FullPolicy};
use crate::event::PeerInfo;
use crate::id::NodeId;
use crate::mesh::actor::{Actor, Io};
use crate::mesh::inbox::Msg;
use crate::mesh::link::LEAVE_FLUSH;
use crate::mesh::proto::{Attempt, Mesh, MeshConfig};
use crate::mesh::{endpoint, ConnStats, JoinError, NeighbourEvent, NEIGHBOUR_EVENTS};
use crate::path::{driver as path_driver, PathEvent, PathKind, PathShared, PathSocket, Paths, SocketRelay};
use crate::plane::Plane;
use crate::shared::{relock, Addresses, Inner, Phase, Settings};
use crate::wire::close;

/// The mesh actor's hands: the node around it.
impl Io for Arc<Inner> {
    fn connect(&self, attempt: Attempt, addr: std::net::SocketAddr, abandon: tokio::sync::oneshot::Receiver<()>) {
        self.spawn_conn(endpoint::dial(self.clone(), attempt, addr, abandon));
    }
    fn plane(&self) -> &Plane {
        &self.plane
    }
    fn neighbour_event(&self, event: NeighbourEvent) {
        let event = match event {
            NeighbourEvent::Found(info) => NeighbourEvent::Found(self.with_path(info)),
            e => e,
        };
        let _ = self.events.send(event);
    }
    fn wire_peers(&self, peers: Vec<crate::wire::PeerAddrs>) -> Vec<crate::wire::PeerAddrs> {
        Inner::wire_peers(self, peers)
    }
    fn introduce(&self) -> Option<crate::wire::PeerAddrs> {
        // Our hello went out when the QUIC handshake completed, perhaps
        // before our registration at a relay did: repeat the routes.
        let relays = self.my_routes();
        (!relays.is_empty()).then(|| crate::wire::PeerAddrs { id: self.id, addrs: self.punch_addrs(), relays })
    }
    fn queue_limit(&self) -> usize {
        self.settings.queue_limit.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn express_max(&self) -> usize {
        self.settings.express_max
    }
    fn leaving(&self) -> bool {
        self.is_leaving()
    }
    fn publish(&self, stats: ConnStats, observed: &[std::net::SocketAddr]) {
        self.publish_mesh(stats, observed);
    }
    fn actor(&self) -> &Actor {
        &self.actor
    }
    fn revoked(&self) -> &partybus_pki::RevokedSet {
        &self.revoked
    }
}

/// Starts a node. See [`crate::Bus::join`].
pub(crate) async fn start(cfg: Config) -> Result<Arc<Inner>, JoinError> {
    cfg.validate()?;
    // The revocation list in force, shared by both verifiers and `set_revocations`.
    let revoked = partybus_pki::RevokedSet::new(&cfg.hood);
    if let Some(list) = &cfg.revoked {
        revoked.apply(list, "the configured revocation list")?;
        info!(sequence = list.sequence(), revoked = list.len(), "revocation list in force");
    }
    let identity = Arc::new(crate::identity::SwapIdentity::new(cfg.identity.clone()).map_err(crate::tls::TlsSetupError::from)?);
    let server = crate::tls::server_config_with(&cfg, Some(identity.clone()), &revoked)?;
    let client = crate::tls::client_config_with(&cfg, Some(identity.clone()), &revoked)?;
    let (server_on_host, client_on_host) = crate::tls::on_host(&cfg, server.clone(), client.clone());
    let sock = crate::udp::bind(cfg.bind, cfg.port.ports(), cfg.socket_buffer)?;
    let runtime = quinn::default_runtime().ok_or_else(|| JoinError::Endpoint(std::io::Error::other("no async runtime")))?;
    // quinn gets the real socket wrapped in the path layer (relays, punched paths).
    let raw = sock.try_clone().map_err(JoinError::Endpoint)?;
    let real = runtime.wrap_udp_socket(sock).map_err(JoinError::Endpoint)?;
    let name = cfg.identity.name().to_owned();
    // The name peers read from our certificate (`tls::peer_cert_name`).
    let bound_name = partybus_pki::peer_name(cfg.identity.cert_der()).unwrap_or_else(|| "?".to_owned());
    let prover: crate::path::paths::Prover = {
        // The identity in use at each registration: a rotated certificate proves membership from then on.
        let (identity, hood) = (identity.clone(), cfg.hood.clone());
        Arc::new(move |cookie, id| {
            let msg = crate::relay::server::proof_message(cookie, id);
            partybus_pki::relay_proof(&identity.identity(), &hood, &msg).unwrap_or_else(|e| {
                warn!(error = %e, "cannot sign a relay registration; relays that serve only some hoods will refuse it");
                Vec::new()
            })
        })
    };
    // The node's relay refuses revoked members of its hood too.
    let relay = cfg
        .relay
        .serve
        .clone()
        .map(|rc| SocketRelay::new(crate::relay::server::RelayServer::new(rc, rand::random()).with_revocations(revoked.clone())));
    let serving = relay.as_ref().map(|_| "on");
    let paths = PathShared::new(Paths::new(rand::random(), Some(prover), rand::random()), relay);
    let path_socket = PathSocket::new(real, raw, paths.clone()).map_err(JoinError::Endpoint)?;
    let mut endpoint = quinn::Endpoint::new_with_abstract_socket(crate::tls::endpoint_config(), Some(server), path_socket.clone(), runtime)
        .map_err(JoinError::Endpoint)?;
    drop(path_socket);
    endpoint.set_default_client_config(client);
    let local_addr = endpoint.local_addr().map_err(JoinError::Endpoint)?;
    let metrics = match cfg.metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| JoinError::Metrics { addr, source })?;
            let bound = listener.local_addr().map_err(|source| JoinError::Metrics { addr, source })?;
            Some((listener, bound))
        }
        None => None,
    };

    let id_nonce: crate::id::IdNonce = rand::random();
    let id = NodeId::bound(&bound_name, &id_nonce);
    let me = Arc::new(PeerInfo { id, name, addr: None, local: true });
    let (dispatch_tx, dispatch_rx) = mpsc::channel(256);
    let (discovery_stop, stop_signal) = StopSignal::new();
    let full_policy: FullPolicy = cfg.full_policy;
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
    let inner = Arc::new(Inner {
        id,
        id_nonce,
        me: me.clone(),
        fingerprint: cfg.hood.fingerprint().to_owned(),
        identity,
        hood: cfg.hood.clone(),
        started: std::time::Instant::now(),
        settings: Settings {
            handshake_timeout: cfg.handshake_timeout,
            queue_limit: cfg.queue_limit.into(),
            express_max: cfg.express_max,
            max_event_size: cfg.max_event_size.into(),
            allow_non_global: cfg.allow_non_global,
            advertise: cfg.advertise.clone(),
        },
        local_addr,
        endpoint: Mutex::new(Some(endpoint.clone())),
        server_on_host: Arc::new(server_on_host),
        client_on_host,
        plane: Arc::new(Plane::new(me, cfg.max_subscriptions_per_peer, dispatch_tx, full_policy)),
        actor: Actor::new(mesh),
        addrs: Mutex::new(Addresses::default()),
        events: broadcast::channel(NEIGHBOUR_EVENTS).0,
        reachable_tx: watch::channel(Vec::new()).0,
        phase: watch::channel(Phase::Running).0,
        discovery_stop,
        discovery: Mutex::new(Vec::new()),
        tracker: TaskTracker::new(),
        cancel: CancellationToken::new(),
        next_conn: AtomicU64::new(0),
        forbidden_events: AtomicU64::new(0),
        dial_seq: AtomicU64::new(0),
        paths,
        routes_tx: watch::channel(Vec::new()).0,
        revoked,
        metrics_addr: metrics.as_ref().map(|(_, a)| *a),
    });
    if let Some((listener, addr)) = metrics {
        let me = Arc::downgrade(&inner);
        let render = Arc::new(move || me.upgrade().map(|i| crate::metrics::render(&i)));
        inner.spawn(crate::metrics::serve(listener, render, inner.cancel.clone()));
        info!(%addr, "serving metrics at http://{addr}/metrics");
    }
    inner.update_reachable();
    info!(id = %id, name = %inner.me.name, addr = %local_addr, hood = %inner.fingerprint, relay = serving.unwrap_or("off"), "joined the hood");
    // Relays named in the configuration (`--relay`), resolved until they are.
    if !cfg.relay.use_relays.is_empty() {
        let me = Arc::downgrade(&inner);
        let targets = cfg.relay.use_relays.clone();
        inner.spawn(async move {
            let mut left = targets;
            while !left.is_empty() {
                let mut unresolved = Vec::new();
                for t in left {
                    let resolved = tokio::net::lookup_host(t.clone()).await.map(|a| a.collect::<Vec<_>>());
                    match resolved {
                        Ok(addrs) => {
                            let Some(me) = me.upgrade() else { return };
                            for a in addrs {
                                me.paths.run(|p| p.add_relay(a, std::time::Instant::now()));
                            }
                        }
                        Err(e) => {
                            warn!(relay = %t, error = %e, "cannot resolve relay (expected HOST:PORT); retrying in 60 s");
                            unresolved.push(t);
                        }
                    }
                }
                left = unresolved;
                if !left.is_empty() {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
            }
        });
    }

    inner.spawn(Actor::run_timers(inner.clone()));
    inner.spawn(crate::event::run_dispatcher(dispatch_rx, inner.plane.clone()));
    inner.spawn(endpoint::accept_loop(inner.clone(), endpoint));
    {
        let me = Arc::downgrade(&inner);
        let (shared, cancel) = (inner.paths.clone(), inner.cancel.clone());
        inner.spawn(path_driver::run(shared, cancel, move |events| {
            if let Some(me) = me.upgrade() {
                on_path_events(&me, events);
            }
        }));
    }

    // Discovery services, and what they find.
    let (sink, mut disc_rx) = DiscoverySink::channel(1024);
    for svc in cfg.discovery {
        let ctx = DiscoveryContext {
            hood_fingerprint: inner.fingerprint.clone(),
            node_id: id.to_hex(),
            cert_name: inner.me.name.clone(),
            port: local_addr.port(),
            reachable: inner.reachable_tx.subscribe(),
            relay_routes: inner.routes_tx.subscribe(),
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
                    me.plane.counters.candidate(&source);
                    me.report(Msg::Candidate { addr, retry: true }).await;
                }
                DiscoveryEvent::External { addr, source } => {
                    info!(%addr, %source, "reachable at external address");
                    {
                        let mut a = relock(&me.addrs);
                        // The same address from another service: the latest says who holds it.
                        a.external.retain(|e| e.addr != addr);
                        a.external.push(crate::bus::ExternalAddr { addr, source });
                    }
                    me.update_reachable();
                }
                DiscoveryEvent::ExternalLost { addr, source } => {
                    info!(%addr, %source, "external address withdrawn");
                    relock(&me.addrs).external.retain(|e| !(e.addr == addr && e.source == source));
                    me.update_reachable();
                }
                DiscoveryEvent::Relay { addr, source } => {
                    // Our own socket is no relay for us.
                    if me.local_addr.port() == addr.port() && me.advertised().contains(&crate::peers::canonical(addr)) {
                        continue;
                    }
                    debug!(%addr, %source, "relay");
                    me.paths.run(|p| p.add_relay(addr, std::time::Instant::now()));
                }
                DiscoveryEvent::Relayed { route, source } => {
                    let route = crate::wire::RelayRoute { relay: route.relay, id: route.id };
                    if let Some(key) = me.paths.book.learn(route) {
                        debug!(%key, relay = %route.relay, %source, "candidate through a relay");
                        me.report(Msg::Candidate { addr: key, retry: true }).await;
                    }
                }
            }
        }
    });
    Ok(inner)
}

/// What the path layer reports: a neighbour's path changed; our relay routes changed.
fn on_path_events(inner: &Arc<Inner>, events: Vec<PathEvent>) {
    let mut routes_changed = false;
    for e in events {
        match e {
            PathEvent::Changed { key, path } => {
                let found = {
                    let st = inner.plane.state();
                    st.links.values().find(|l| l.info.addr.map(crate::peers::canonical) == Some(key)).map(|l| (l.info(), l.conn.clone()))
                };
                let info = found.map(|(info, conn)| {
                    if matches!(path, PathKind::Relayed(_)) {
                        // The direct path died: what was in flight on it is
                        // lost, and QUIC's retransmission timer has backed
                        // off meanwhile. An empty datagram goes out now (on
                        // the new path) and its acknowledgement tells QUIC
                        // what to send again.
                        let _ = conn.send_datagram(bytes::Bytes::new());
                    }
                    info
                });
                match path {
                    PathKind::Direct(addr) => info!(%key, %addr, "path: direct"),
                    PathKind::Relayed(via) => info!(%key, %via, "path: relayed"),
                }
                if let Some(info) = info {
                    let _ = inner.events.send(NeighbourEvent::Path(inner.with_path(info)));
                }
            }
            PathEvent::Routes => routes_changed = true,
            // A dial through that route would wait for the handshake timeout.
            PathEvent::RouteGone { key } => inner.actor.post(inner, Msg::RouteGone { addr: key }),
        }
    }
    if routes_changed {
        let mine = inner.my_routes();
        // Neighbours heard our hello before we registered: tell them (they tell the others).
        if !mine.is_empty() {
            let me = crate::wire::PeerAddrs { id: inner.id, addrs: inner.punch_addrs(), relays: mine.clone() };
            let peers: Vec<NodeId> = inner.plane.state().links.keys().copied().collect();
            for p in peers {
                inner.plane.push_peers(p, vec![me.clone()]);
            }
        }
        let routes: Vec<partybus_discovery::RelayRoute> =
            mine.into_iter().map(|r| partybus_discovery::RelayRoute { relay: r.relay, id: r.id }).collect();
        inner.routes_tx.send_if_modified(|v| {
            let m = *v != routes;
            *v = routes;
            m
        });
    }
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
    // Every neighbour's queue ends here: its writer sends what emit already
    // counted, then finishes. (First: the mesh may drop a neighbour from
    // the data plane as soon as it hears of the leave.)
    let writers: Vec<_> = {
        let st = inner.plane.state();
        st.links.values().map(|l| (l.queue.clone(), l.ctl.clone())).collect()
    };
    for (q, _) in &writers {
        q.finish();
    }
    inner.report(Msg::Leave).await;
    inner.discovery_stop.stop();

    // Let the peers acknowledge what was sent: closing the endpoint
    // discards anything in flight. Bounded: a peer that stopped answering
    // does not hold the leave up.
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
    // Our relays forget us now: a peer dialling our relay route (a DHT
    // record outlives us) hears at once that we are gone, instead of its
    // dial holding a handshake slot until the handshake timeout.
    inner.paths.run(|p| p.leave());

    // Discovery (told to stop above) gets a moment to withdraw what it
    // published; then every task stops.
    let discovery = std::mem::take(&mut *relock(&inner.discovery));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    for task in discovery {
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            debug!("a discovery service did not stop within 3 s: cancelling it");
        }
    }
    // Connection tasks still waiting for the actor's word end with it.
    inner.actor.clear();
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
