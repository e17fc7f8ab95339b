//! A plain DHT node: the bootstrap server (`partybus dht`), which belongs to
//! no hood, needs no certificate, and only keeps the Kademlia table and records.

use super::*;

/// Options of a plain DHT node ([`run_dht_node`]).
#[derive(Clone, Debug, Default)]
pub struct DhtNodeOptions {
    /// TCP port to listen on (0: random).
    pub port: u16,
    /// Other DHT nodes to join, `HOST:PORT`.
    pub bootstrap: Vec<String>,
    /// Keep non-global addresses (learnt from peers) in the routing table: for labs and private WANs.
    pub allow_non_global: bool,
    /// Address to listen on; `None`: all IPv4 interfaces.
    pub listen_ip: Option<IpAddr>,
}

/// A plain DHT node (Kademlia server) that belongs to no hood and needs no
/// certificates: the bootstrap server (`partybus dht`).
pub struct DhtNode {
    core: Core,
}

impl DhtNode {
    /// Create the node and start listening.
    pub async fn bind(opts: DhtNodeOptions) -> Result<DhtNode, DhtError> {
        // Records on a plain node live as long as their publisher says (the
        // TTL travels with the record), and at most this long.
        let mut core = Core::new(opts.allow_non_global, opts.bootstrap, Mode::Server, Duration::from_secs(60 * 60))?;
        let ip = opts.listen_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        core.listen(ip, opts.port, false).await?;
        Ok(DhtNode { core })
    }

    /// This node's DHT peer id.
    pub fn peer_id(&self) -> PeerId {
        self.core.local_peer_id()
    }

    /// Listen addresses known so far (`/ip4/../tcp/..`).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.core.listen_addrs.clone()
    }

    /// The first listen address as `ip:port`.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.core.listen_addrs.iter().find_map(tcp_socket_addr)
    }

    /// Serve until `stop` fires.
    pub async fn run(mut self, mut stop: StopSignal) -> Result<(), DhtError> {
        tracing::info!(peer_id = %self.peer_id(), listen = ?self.core.listen_addrs, "dht node running");
        loop {
            self.core.bootstrap_tick().await;
            let wake = self.core.next_bootstrap_dial;
            tokio::select! {
                _ = stop.stopped() => break,
                _ = sleep_until(wake) => {}
                ev = self.core.swarm.select_next_some() => self.core.on_common_event(ev),
            }
        }
        tracing::info!("dht node stopped");
        Ok(())
    }
}

/// Run a plain DHT node until `stop` fires; logs its PeerId and listen addresses.
pub async fn run_dht_node(opts: DhtNodeOptions, stop: StopSignal) -> Result<(), DhtError> {
    let node = DhtNode::bind(opts).await?;
    for a in node.listen_addrs() {
        tracing::info!(peer_id = %node.peer_id(), address = %a, "dht node listening");
    }
    node.run(stop).await
}
