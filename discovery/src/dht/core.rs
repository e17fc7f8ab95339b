//! The libp2p side of the DHT: a swarm with Kademlia and identify, its
//! listening, bootstrap dials and connection events, shared by the hood
//! service and the plain node.

use super::*;

#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    pub(super) kad: kad::Behaviour<MemoryStore>,
    pub(super) identify: identify::Behaviour,
}

/// Everything the DHT service and the plain node have in common: a swarm,
/// the bootstrap list and the address policy.
pub(super) struct Core {
    pub(super) swarm: Swarm<Behaviour>,
    pub(super) allow_non_global: bool,
    pub(super) bootstrap: Vec<String>,
    /// Peers we reached through a bootstrap address.
    pub(super) bootstrap_peers: HashSet<PeerId>,
    /// Dials to bootstrap addresses in flight.
    pub(super) bootstrap_dials: HashSet<ConnectionId>,
    pub(super) next_bootstrap_dial: Instant,
    pub(super) bootstrap_backoff: Duration,
    pub(super) listen_addrs: Vec<Multiaddr>,
}

impl Core {
    pub(super) fn new(allow_non_global: bool, bootstrap: Vec<String>, mode: Mode, record_ttl: Duration) -> Result<Core, DhtError> {
        let keypair = libp2p::identity::Keypair::generate_ed25519();
        let local = keypair.public().to_peer_id();
        let mut kcfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
        kcfg.set_query_timeout(QUERY_TIMEOUT)
            .set_record_ttl(Some(record_ttl))
            .set_provider_record_ttl(Some(PROVIDER_RECORD_TTL))
            // We re-announce ourselves; libp2p's own publication would outlive us.
            .set_publication_interval(None)
            .set_provider_publication_interval(None)
            .set_caching(kad::Caching::Disabled);
        let store = MemoryStore::with_config(
            local,
            MemoryStoreConfig {
                max_records: 4096,
                max_value_bytes: MAX_VALUE_BYTES,
                max_providers_per_key: MAX_PROVIDERS_PER_KEY,
                max_provided_keys: 1024,
            },
        );
        let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
            .map_err(|e| DhtError::Transport(e.to_string()))?
            .with_behaviour(|key| {
                let mut kad = kad::Behaviour::with_config(local, store, kcfg);
                kad.set_mode(Some(mode));
                let identify = identify::Behaviour::new(
                    identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                        .with_agent_version(format!("partybus/{}", env!("CARGO_PKG_VERSION"))),
                );
                Behaviour { kad, identify }
            })
            .map_err(|e| DhtError::Transport(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
            .build();
        Ok(Core {
            swarm,
            allow_non_global,
            bootstrap,
            bootstrap_peers: HashSet::new(),
            bootstrap_dials: HashSet::new(),
            next_bootstrap_dial: Instant::now(),
            bootstrap_backoff: Duration::from_secs(1),
            listen_addrs: Vec::new(),
        })
    }

    pub(super) fn local_peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    pub(super) fn allowed_ip(&self, ip: IpAddr) -> bool {
        !ip.is_unspecified() && (self.allow_non_global || is_global(ip))
    }

    /// Listen on `ip:port`; with `fallback_any`, on a random port if that one
    /// is taken (else [`DhtError::PortTaken`]). Waits (bounded) for the first
    /// listen address.
    pub(super) async fn listen(&mut self, ip: IpAddr, port: u16, fallback_any: bool) -> Result<(), DhtError> {
        let mut port = port;
        if let Err(e) = check_port_free(ip, port) {
            if !(fallback_any && matches!(e, DhtError::PortTaken { .. })) {
                return Err(e);
            }
            tracing::info!(port, error = %e, "dht: TCP port taken, listening on a random port");
            port = 0;
        }
        let ma = multiaddr_of(SocketAddr::new(ip, port));
        self.swarm.listen_on(ma.clone()).map_err(|e| DhtError::Listen { addr: ma.to_string(), reason: error_text(&e) })?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let ev = tokio::select! {
                ev = self.swarm.select_next_some() => ev,
                _ = sleep_until(deadline) => return Err(DhtError::NoListenAddr(Duration::from_secs(5))),
            };
            match ev {
                SwarmEvent::NewListenAddr { address, .. } => {
                    self.listen_addrs.push(address);
                    return Ok(());
                }
                SwarmEvent::ListenerClosed { reason: Err(e), .. } | SwarmEvent::ListenerError { error: e, .. } => {
                    return Err(DhtError::Listen { addr: ma.to_string(), reason: error_text(&e) });
                }
                other => self.on_common_event(other),
            }
        }
    }

    /// Resolve and dial every bootstrap node we are not connected to.
    pub(super) async fn dial_bootstrap(&mut self) {
        let connected = self.bootstrap_peers.iter().any(|p| self.swarm.is_connected(p));
        if connected || self.bootstrap.is_empty() {
            return;
        }
        for target in self.bootstrap.clone() {
            let addrs = match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(target.as_str())).await {
                Ok(Ok(a)) => a.collect::<Vec<_>>(),
                Ok(Err(e)) => {
                    tracing::warn!(%target, error = %e, "dht: cannot resolve bootstrap node (expected HOST:PORT)");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(%target, "dht: resolving bootstrap node timed out");
                    continue;
                }
            };
            for sa in addrs.into_iter().take(4) {
                tracing::debug!(addr = %sa, "dht: dialing bootstrap node");
                let dial = DialOpts::unknown_peer_id().address(multiaddr_of(sa)).build();
                let id = dial.connection_id();
                // Bounded: dials end in ConnectionEstablished or OutgoingConnectionError.
                if self.bootstrap_dials.len() < 64 {
                    self.bootstrap_dials.insert(id);
                }
                if let Err(e) = self.swarm.dial(dial) {
                    self.bootstrap_dials.remove(&id);
                    tracing::debug!(addr = %sa, error = %e, "dht: dial failed");
                }
            }
        }
    }

    /// Dial bootstrap nodes now if due; schedules the next try with backoff.
    pub(super) async fn bootstrap_tick(&mut self) {
        if Instant::now() < self.next_bootstrap_dial {
            return;
        }
        let connected = self.bootstrap_peers.iter().any(|p| self.swarm.is_connected(p));
        if connected {
            self.bootstrap_backoff = Duration::from_secs(1);
            self.next_bootstrap_dial = Instant::now() + Duration::from_secs(30);
            return;
        }
        self.dial_bootstrap().await;
        self.next_bootstrap_dial = Instant::now() + self.bootstrap_backoff;
        self.bootstrap_backoff = (self.bootstrap_backoff * 2).min(MAX_BACKOFF);
    }

    /// Events both the service and the plain node handle the same way.
    pub(super) fn on_common_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, peer_id = %self.local_peer_id(), "dht: listening");
                self.listen_addrs.push(address);
            }
            // Our bootstrap dials carry no peer id: learn it here and put
            // the node into the routing table (kad only dials known peers).
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, connection_id, .. } if self.bootstrap_dials.remove(&connection_id) => {
                let address = endpoint.get_remote_address().clone();
                if self.bootstrap_peers.insert(peer_id) {
                    tracing::info!(%peer_id, %address, "dht: connected to bootstrap node");
                }
                self.swarm.behaviour_mut().kad.add_address(&peer_id, address);
                let _ = self.swarm.behaviour_mut().kad.bootstrap();
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                let kad_proto = StreamProtocol::new(KAD_PROTOCOL);
                if !info.protocols.contains(&kad_proto) {
                    return;
                }
                let mut added = 0;
                for ma in &info.listen_addrs {
                    if added == MAX_IDENTIFY_ADDRS {
                        break;
                    }
                    if let Some(sa) = tcp_socket_addr(ma) {
                        if sa.port() != 0 && self.allowed_ip(sa.ip()) {
                            self.swarm.behaviour_mut().kad.add_address(&peer_id, multiaddr_of(sa));
                            added += 1;
                        }
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, connection_id } => {
                if self.bootstrap_dials.remove(&connection_id) {
                    tracing::debug!(%error, "dht: bootstrap dial failed; will retry");
                } else {
                    tracing::debug!(?peer_id, %error, "dht: outgoing connection failed");
                }
            }
            _ => {}
        }
    }
}
