//! Node options shared by `node`, `listen`, `emit` (and `bench --role`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use partybus::{Config, FullPolicy, PortSpec};

use super::config_file::FileConfig;

#[derive(Args, Clone, Debug, Default)]
pub struct NodeOpts {
    /// TOML config file; flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Hood CA certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// This peer's certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// This peer's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// UDP port(s): 4816, 4816,4820 or 4816-4819 (default); 0 for any.
    #[arg(long, value_name = "SPEC")]
    pub port: Option<String>,
    /// Address to bind (default: dual-stack ::).
    #[arg(long, value_name = "IP")]
    pub bind: Option<IpAddr>,
    /// Peer address to connect to (repeatable), re-tried every 60 s.
    #[arg(long, value_name = "HOST:PORT")]
    pub connect: Vec<String>,
    /// Also advertise this address (repeatable), e.g. a public address behind 1:1 NAT.
    #[arg(long, value_name = "IP:PORT")]
    pub advertise: Vec<SocketAddr>,
    /// Find hood members on the LAN with mDNS / DNS-SD.
    #[arg(long)]
    pub mdns: bool,
    /// DHT bootstrap node (repeatable): rendezvous over a Kademlia DHT.
    #[arg(long, value_name = "HOST:PORT")]
    pub dht: Vec<String>,
    /// Map our UDP port on the home router with UPnP IGD.
    #[arg(long)]
    pub upnp: bool,
    /// UPnP gateway description URL (skips SSDP search), e.g. http://ROUTER:PORT/rootDesc.xml.
    #[arg(long, value_name = "URL")]
    pub upnp_url: Option<String>,
    /// Lease of the UPnP port mapping (default 1h; renewed at half-life), e.g. 10m; 0s asks for a permanent one.
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub upnp_lease: Option<Duration>,
    /// Serve the DHT to others (default: on when this host has a global address, as on a VPS).
    #[arg(long, conflicts_with = "no_dht_serve")]
    pub dht_serve: bool,
    /// Do not serve the DHT, even on a host with a global address.
    #[arg(long)]
    pub no_dht_serve: bool,
    /// Accept and advertise non-global addresses (labs, private WANs).
    #[arg(long)]
    pub allow_non_global: bool,
    /// Neighbour idle timeout (e.g. 20s).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// QUIC keep-alive interval (e.g. 5s).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub keep_alive: Option<Duration>,
}

/// Does any local interface have a global (Internet-routable) address?
fn has_global_address() -> bool {
    if_addrs::get_if_addrs().map(|ifs| ifs.iter().any(|i| partybus::discovery::addr::is_global(i.ip()))).unwrap_or(false)
}

/// Resolves a path from the config file relative to the file's folder.
fn rel(base: Option<&std::path::Path>, p: PathBuf) -> PathBuf {
    match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p,
    }
}

impl NodeOpts {
    /// Merges the config file (if any) and the flags into a library config.
    pub fn to_config(&self) -> Result<Config> {
        let (file, base) = match &self.config {
            Some(path) => (FileConfig::load(path)?, path.parent().map(|p| p.to_path_buf())),
            None => (FileConfig::default(), None),
        };
        let base = base.as_deref();
        let from = |flag: &Option<PathBuf>, file_v: &Option<PathBuf>, what: &str, field: &str| -> Result<PathBuf> {
            match (flag, file_v) {
                (Some(p), _) => Ok(p.clone()),
                (None, Some(p)) => Ok(rel(base, p.clone())),
                (None, None) => bail!("no {what} given: use --{field} FILE or `{field} = \"FILE\"` in the config file (--config)"),
            }
        };
        let ca = from(&self.ca, &file.ca, "hood CA certificate", "ca")?;
        let cert = from(&self.cert, &file.cert, "peer certificate", "cert")?;
        let key = from(&self.key, &file.key, "peer private key", "key")?;
        let mut cfg = Config::from_files(&ca, &cert, &key)?;

        let port = self.port.clone().or(file.port.clone());
        if let Some(p) = port {
            cfg.port = p.parse::<PortSpec>().map_err(anyhow::Error::msg).context("option --port / config `port`")?;
        }
        cfg.bind = self.bind.or(file.bind);
        cfg.advertise = if self.advertise.is_empty() { file.advertise.clone() } else { self.advertise.clone() };
        cfg.allow_non_global = self.allow_non_global || file.allow_non_global.unwrap_or(false);
        if let Some(d) = self.idle_timeout.or(file.idle_timeout.map(|d| d.0)) {
            cfg.idle_timeout = d;
        }
        if let Some(d) = self.keep_alive.or(file.keep_alive.map(|d| d.0)) {
            cfg.keep_alive = d;
        }
        if let Some(l) = &file.limits {
            if let Some(q) = l.queue_limit {
                cfg.queue_limit = q;
            }
            if let Some(b) = l.socket_buffer {
                cfg.socket_buffer = b;
            }
            if let Some(m) = l.max_event_size {
                cfg.max_event_size = m;
            }
            if let Some(m) = l.max_subscriptions_per_peer {
                cfg.max_subscriptions_per_peer = m;
            }
            match l.full_policy.as_deref() {
                None | Some("block") => {}
                Some("drop") => cfg.full_policy = FullPolicy::Drop,
                Some("disconnect") => {
                    cfg.full_policy = FullPolicy::Disconnect(l.stuck_timeout.map(|d| d.0).unwrap_or(Duration::from_secs(10)))
                }
                Some(other) => bail!("config `limits.full_policy = {other:?}` is not one of \"block\", \"drop\", \"disconnect\""),
            }
        }

        // Discovery: flags add to the file's lists.
        let disc = file.discovery.clone().unwrap_or_default();
        let mut connect = disc.connect.clone();
        connect.extend(self.connect.iter().cloned());
        if !connect.is_empty() {
            let every = disc.connect_interval.map(|d| d.0).unwrap_or(Duration::from_secs(60));
            cfg.discovery.push(Box::new(partybus::discovery::StaticDiscovery::new(connect, every)));
        }
        if self.mdns || disc.mdns {
            cfg.discovery.push(Box::new(partybus::discovery::MdnsDiscovery::new()));
        }
        let upnp_url = self.upnp_url.clone().or(disc.upnp_url.clone());
        if self.upnp || disc.upnp || upnp_url.is_some() {
            let mut opts = partybus::discovery::upnp::UpnpOptions { gateway_url: upnp_url, ..Default::default() };
            if let Some(lease) = self.upnp_lease.or(disc.upnp_lease.map(|d| d.0)) {
                opts.lease = lease;
            }
            cfg.discovery.push(Box::new(partybus::discovery::upnp::UpnpDiscovery::new(opts)));
        }
        let mut dht = disc.dht.clone();
        dht.extend(self.dht.iter().cloned());
        // A node with a global address (a VPS) serves the DHT by default:
        // it is what others bootstrap from.
        let serve = if self.dht_serve {
            true
        } else if self.no_dht_serve {
            false
        } else {
            disc.dht_serve.unwrap_or_else(has_global_address)
        };
        if !dht.is_empty() || serve {
            let opts = partybus::discovery::dht::DhtOptions { bootstrap: dht, serve, ..Default::default() };
            cfg.discovery.push(Box::new(partybus::discovery::dht::DhtDiscovery::new(opts)));
        }
        Ok(cfg)
    }
}
