//! Node options shared by `node`, `listen`, `emit` (and `bench --role`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use partybus::discovery::portmap::{Mode, PortMapDiscovery, PortMapOptions, Protocol};
use partybus::{Config, Congestion, FullPolicy, PortSpec};
use partybus_pki::KeyFileCheck;

use super::config_file::FileConfig;
use super::relay_opts::{self, RelayLimitArgs};

#[derive(Args, Clone, Debug, Default)]
pub struct NodeOpts {
    /// TOML config file; flags override it (a list flag replaces the file's list).
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
    /// Peer address to connect to (repeatable; IPv6 as [::1]:4816), re-tried every 60 s.
    /// Replaces the config file's `connect` list.
    #[arg(long, value_name = "HOST:PORT")]
    pub connect: Vec<String>,
    /// Also advertise this address (repeatable), e.g. a public address behind 1:1 NAT.
    /// Replaces the config file's `advertise` list.
    #[arg(long, value_name = "IP:PORT")]
    pub advertise: Vec<SocketAddr>,
    /// Find hood members on the LAN with mDNS / DNS-SD.
    #[arg(long, overrides_with = "no_mdns")]
    pub mdns: bool,
    /// No mDNS, even if the config file turns it on.
    #[arg(long, overrides_with = "mdns")]
    pub no_mdns: bool,
    /// DHT bootstrap node (repeatable): rendezvous over a Kademlia DHT.
    /// Replaces the config file's `dht` list.
    #[arg(long, value_name = "HOST:PORT")]
    pub dht: Vec<String>,
    /// Map our UDP port on the home router: `auto` probes PCP, NAT-PMP and UPnP IGD together and
    /// keeps the first of them (in that order) that answers; `upnp`, `natpmp`, `pcp`: only that one;
    /// `off` (default).
    #[arg(long, value_name = "auto|upnp|natpmp|pcp|off", conflicts_with_all = ["upnp", "no_upnp"])]
    pub port_mapping: Option<String>,
    /// Map our UDP port with UPnP IGD only (the same as `--port-mapping upnp`).
    #[arg(long, overrides_with = "no_upnp")]
    pub upnp: bool,
    /// No port mapping, even if the config file turns it on or names a UPnP gateway (`upnp_url`).
    #[arg(long, overrides_with = "upnp", conflicts_with = "upnp_url")]
    pub no_upnp: bool,
    /// UPnP gateway description URL (skips SSDP search), e.g. http://ROUTER:PORT/rootDesc.xml.
    #[arg(long, value_name = "URL")]
    pub upnp_url: Option<String>,
    /// The router to ask with NAT-PMP and PCP (default: the default route's gateway).
    #[arg(long, value_name = "IP")]
    pub port_mapping_gateway: Option<IpAddr>,
    /// Lease of the port mapping (default 1h; renewed at half of what the router grants), e.g. 10m;
    /// 0s asks UPnP for a permanent one.
    #[arg(long, visible_alias = "upnp-lease", value_name = "DUR", value_parser = humantime::parse_duration)]
    pub port_mapping_lease: Option<Duration>,
    /// Serve the DHT to others (default: on when this host has a global address, as on a VPS).
    #[arg(long, overrides_with = "no_dht_serve")]
    pub dht_serve: bool,
    /// Do not serve the DHT, even on a host with a global address or with `dht_serve = true` in the config file.
    #[arg(long, overrides_with = "dht_serve")]
    pub no_dht_serve: bool,
    /// Accept and advertise non-global addresses (labs, private WANs).
    #[arg(long, overrides_with = "no_allow_non_global")]
    pub allow_non_global: bool,
    /// Keep to global addresses, even if the config file says `allow_non_global = true`.
    #[arg(long, overrides_with = "allow_non_global")]
    pub no_allow_non_global: bool,
    /// Load the private key even if every user of this machine may read it (refused by default, as ssh does).
    #[arg(long)]
    pub allow_readable_key: bool,
    /// Neighbour idle timeout (default 10s).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// QUIC keep-alive interval (default 2s).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub keep_alive: Option<Duration>,
    /// Congestion controller: bbr (default), cubic or newreno.
    #[arg(long, value_name = "NAME", value_parser = parse_congestion)]
    pub congestion: Option<Congestion>,
    /// Do not serve as a relay for others (default: serve members of this node's hood on its UDP port).
    /// Relays given with --relay are still used.
    #[arg(long)]
    pub no_relay: bool,
    /// Relay to use when a peer cannot be reached directly (repeatable; UDP HOST:PORT, e.g. a
    /// `partybus dht` host and its port). Replaces the config file's `relays` list.
    #[arg(long = "relay", value_name = "HOST:PORT")]
    pub relays: Vec<String>,
    #[command(flatten)]
    pub relay_limits: RelayLimitArgs,
    /// The hood's revocation list (HOOD.revoked, made by `partybus cert revoke`): refuse the peers it names.
    #[arg(long, value_name = "FILE")]
    pub revoked: Option<PathBuf>,
    /// Serve metrics (Prometheus text format) at http://ADDR/metrics, e.g. 127.0.0.1:9464.
    /// Unauthenticated: keep it on loopback or a private interface.
    #[arg(long, value_name = "IP:PORT")]
    pub metrics: Option<SocketAddr>,
}

fn parse_congestion(s: &str) -> Result<Congestion, String> {
    s.parse().map_err(|e: partybus::UnknownCongestion| e.to_string())
}

/// A `--flag` / `--no-flag` pair as the command line gave it: `None` when
/// neither was given (clap keeps only the last of the two).
fn switch(on: bool, off: bool) -> Option<bool> {
    match (on, off) {
        (true, _) => Some(true),
        (false, true) => Some(false),
        (false, false) => None,
    }
}

/// Port mapping as resolved from flags and file.
#[derive(Clone, Debug, PartialEq)]
pub struct PortMapping {
    pub mode: Mode,
    pub upnp_url: Option<String>,
    pub gateway: Option<IpAddr>,
    /// None: the default lease.
    pub lease: Option<Duration>,
}

/// `auto|upnp|natpmp|pcp|off` (`None` for off); `what` names the setting in errors.
fn port_mapping_mode(text: &str, what: &str) -> Result<Option<Mode>> {
    if text == "off" {
        return Ok(None);
    }
    text.parse::<Mode>().map(Some).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

/// A list from the command line replaces the config file's list.
fn list<T: Clone>(flags: &[T], file: &[T]) -> Vec<T> {
    if flags.is_empty() {
        file.to_vec()
    } else {
        flags.to_vec()
    }
}

/// Checks the form of a `HOST:PORT` target, so a typo is an error now
/// rather than a warning and a node that never connects. Whether the host
/// resolves is left to discovery (a DNS name may come up later).
fn check_target(t: &str, what: &str) -> Result<()> {
    let fix = "expected HOST:PORT, e.g. 192.0.2.10:4816, [2001:db8::1]:4816 or peer.example.org:4816";
    let Some((host, port)) = t.rsplit_once(':') else { bail!("{what} {t:?} has no port: {fix}") };
    if host.is_empty() {
        bail!("{what} {t:?} has no host: {fix}");
    }
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        bail!("{what} {t:?}: {port:?} is not a port number (1-65535): {fix}");
    }
    if let Some(inner) = host.strip_prefix('[') {
        let Some(ip) = inner.strip_suffix(']') else { bail!("{what} {t:?}: unbalanced '[': {fix}") };
        // As a whole, so that a scope (`[fe80::1%2]:4816`) is accepted.
        if t.parse::<std::net::SocketAddrV6>().is_err() {
            bail!("{what} {t:?}: {ip:?} in brackets is not an IPv6 address: {fix}");
        }
    } else if host.contains(':') {
        bail!("{what} {t:?}: an IPv6 address needs brackets, as in [{host}]:{port}");
    }
    Ok(())
}

/// The flags and the config file merged: flags win, a list on the command
/// line replaces the file's list. Pure (no files read but the config file,
/// no network), so the merge rules can be tested.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resolved {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub port: Option<PortSpec>,
    pub bind: Option<IpAddr>,
    pub advertise: Vec<SocketAddr>,
    pub allow_non_global: bool,
    pub allow_readable_key: bool,
    pub idle_timeout: Option<Duration>,
    pub keep_alive: Option<Duration>,
    pub congestion: Option<Congestion>,
    pub connect: Vec<String>,
    pub connect_interval: Duration,
    pub mdns: bool,
    /// Port mapping on (None: off).
    pub port_mapping: Option<PortMapping>,
    pub dht: Vec<String>,
    /// None: serve when this host has a global address.
    pub dht_serve: Option<bool>,
    pub queue_limit: Option<usize>,
    pub express_max: Option<usize>,
    pub socket_buffer: Option<usize>,
    pub max_event_size: Option<usize>,
    pub max_subscriptions_per_peer: Option<usize>,
    pub full_policy: Option<FullPolicy>,
    /// Serve as a relay (with the hood-only policy the library sets).
    pub relay_serve: bool,
    /// The relay's limits, flags over the file.
    pub relay_limits: RelayLimitArgs,
    /// Relays to use.
    pub relays: Vec<String>,
    /// The revocation list file.
    pub revoked: Option<PathBuf>,
    /// Where to serve metrics.
    pub metrics: Option<SocketAddr>,
    /// The config file's control socket (resolved against the file's folder).
    pub control: Option<PathBuf>,
    /// The config file's log filter.
    pub log: Option<String>,
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
    /// Merges the config file (if any) and the flags: flags override the
    /// file; `--connect`, `--dht` and `--advertise` replace the file's lists.
    pub fn resolve(&self) -> Result<Resolved> {
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
        let mut r = Resolved {
            ca: from(&self.ca, &file.ca, "hood CA certificate", "ca")?,
            cert: from(&self.cert, &file.cert, "peer certificate", "cert")?,
            key: from(&self.key, &file.key, "peer private key", "key")?,
            ..Resolved::default()
        };
        if let Some(p) = self.port.clone().or(file.port.clone()) {
            r.port = Some(p.parse::<PortSpec>().map_err(anyhow::Error::msg).context("option --port / config `port`")?);
        }
        r.bind = self.bind.or(file.bind);
        r.advertise = list(&self.advertise, &file.advertise);
        r.allow_non_global = switch(self.allow_non_global, self.no_allow_non_global).or(file.allow_non_global).unwrap_or(false);
        r.allow_readable_key = self.allow_readable_key || file.allow_readable_key.unwrap_or(false);
        r.idle_timeout = self.idle_timeout.or(file.idle_timeout.map(|d| d.0));
        r.keep_alive = self.keep_alive.or(file.keep_alive.map(|d| d.0));
        r.congestion = match (self.congestion, &file.congestion) {
            (Some(c), _) => Some(c),
            (None, Some(text)) => Some(text.parse::<Congestion>().context("config `congestion`")?),
            (None, None) => None,
        };
        if let Some(l) = &file.limits {
            r.queue_limit = l.queue_limit;
            r.express_max = l.express_max;
            r.socket_buffer = l.socket_buffer;
            r.max_event_size = l.max_event_size;
            r.max_subscriptions_per_peer = l.max_subscriptions_per_peer;
            let stuck = l.stuck_timeout.map(|d| d.0);
            r.full_policy = match l.full_policy.as_deref() {
                // The default policy is "disconnect": a stuck_timeout alone tunes it.
                None => stuck.map(FullPolicy::Disconnect),
                Some("block") => Some(FullPolicy::Block),
                Some("drop") => Some(FullPolicy::Drop),
                Some("disconnect") => Some(FullPolicy::Disconnect(stuck.unwrap_or(FullPolicy::STUCK))),
                Some(other) => bail!("config `limits.full_policy = {other:?}` is not one of \"block\", \"drop\", \"disconnect\""),
            };
        }

        let disc = file.discovery.clone().unwrap_or_default();
        r.connect = list(&self.connect, &disc.connect);
        for t in &r.connect {
            check_target(t, if self.connect.is_empty() { "config `discovery.connect` entry" } else { "--connect" })?;
        }
        r.connect_interval = disc.connect_interval.map(|d| d.0).unwrap_or(Duration::from_secs(60));
        r.mdns = switch(self.mdns, self.no_mdns).unwrap_or(disc.mdns);
        r.port_mapping = self.port_mapping_setting(&disc)?;
        r.dht = list(&self.dht, &disc.dht);
        for t in &r.dht {
            check_target(t, if self.dht.is_empty() { "config `discovery.dht` entry" } else { "--dht" })?;
        }
        r.dht_serve = switch(self.dht_serve, self.no_dht_serve).or(disc.dht_serve);

        r.relay_serve = !self.no_relay && file.relay.unwrap_or(true);
        let l = &self.relay_limits;
        r.relay_limits = RelayLimitArgs {
            relay_max_clients: l.relay_max_clients.or(file.relay_max_clients),
            relay_client_rate: match (l.relay_client_rate, &file.relay_client_rate) {
                (Some(v), _) => Some(v),
                (None, Some(text)) => Some(relay_opts::rate_from_file("relay_client_rate", text)?),
                (None, None) => None,
            },
            relay_total_rate: match (l.relay_total_rate, &file.relay_total_rate) {
                (Some(v), _) => Some(v),
                (None, Some(text)) => Some(relay_opts::rate_from_file("relay_total_rate", text)?),
                (None, None) => None,
            },
        };
        if r.relay_limits.relay_max_clients == Some(0) {
            bail!("config `relay_max_clients = 0`: a relay takes at least 1 client (or turn it off with `relay = false`)");
        }
        r.revoked = self.revoked.clone().or_else(|| file.revoked.clone().map(|p| rel(base, p)));
        r.metrics = self.metrics.or(file.metrics);
        r.control = file.control.clone().map(|p| rel(base, p));
        r.log = file.log.clone();
        r.relays = list(&self.relays, &file.relays);
        for t in &r.relays {
            check_target(t, if self.relays.is_empty() { "config `relays` entry" } else { "--relay" })?;
        }
        Ok(r)
    }

    /// Port mapping: `--port-mapping`, else `--upnp`/`--no-upnp`, else the
    /// file's `port_mapping`, else its `upnp` (or a `upnp_url`: UPnP).
    fn port_mapping_setting(&self, disc: &super::config_file::DiscoveryConfig) -> Result<Option<PortMapping>> {
        let upnp_url = self.upnp_url.clone().or(disc.upnp_url.clone());
        let mode = if let Some(m) = &self.port_mapping {
            port_mapping_mode(m, "--port-mapping")?
        } else if let Some(on) = switch(self.upnp, self.no_upnp) {
            on.then_some(Mode::Only(Protocol::Upnp))
        } else if let Some(m) = &disc.port_mapping {
            port_mapping_mode(m, "config `discovery.port_mapping`")?
        } else {
            // A gateway URL in the file (or on the command line) implies UPnP.
            (disc.upnp || upnp_url.is_some()).then_some(Mode::Only(Protocol::Upnp))
        };
        Ok(mode.map(|mode| PortMapping {
            mode,
            upnp_url,
            gateway: self.port_mapping_gateway.or(disc.port_mapping_gateway),
            lease: self.port_mapping_lease.or(disc.port_mapping_lease.or(disc.upnp_lease).map(|d| d.0)),
        }))
    }

    /// Merges the config file (if any) and the flags into a library config.
    pub fn to_config(&self) -> Result<Config> {
        Self::config_from(self.resolve()?, None)
    }

    /// A library config from resolved options. With `static_peers`, the
    /// static peer list is that watch (always present, so that a reload can
    /// add peers to a node started without any); the caller sends `r.connect`.
    pub fn config_from(r: Resolved, static_peers: Option<tokio::sync::watch::Receiver<Vec<String>>>) -> Result<Config> {
        let check = if r.allow_readable_key { KeyFileCheck::AnyMode } else { KeyFileCheck::Private };
        let mut cfg = Config::from_files_with(&r.ca, &r.cert, &r.key, check)?;
        if let Some(path) = &r.revoked {
            // Checked against the hood now: a forged or foreign list stops the start.
            let list = partybus::pki::RevocationList::load(path, &cfg.hood).context("option --revoked / config `revoked`")?;
            cfg.revoked = Some(list);
        }
        cfg.metrics = r.metrics;
        if let Some(p) = r.port {
            cfg.port = p;
        }
        cfg.bind = r.bind;
        cfg.advertise = r.advertise;
        cfg.allow_non_global = r.allow_non_global;
        if let Some(d) = r.idle_timeout {
            cfg.idle_timeout = d;
        }
        if let Some(d) = r.keep_alive {
            cfg.keep_alive = d;
        }
        if let Some(c) = r.congestion {
            cfg.congestion = c;
        }
        if let Some(q) = r.queue_limit {
            cfg.queue_limit = q;
        }
        if let Some(x) = r.express_max {
            cfg.express_max = x;
        }
        if let Some(b) = r.socket_buffer {
            cfg.socket_buffer = b;
        }
        if let Some(m) = r.max_event_size {
            cfg.max_event_size = m;
        }
        if let Some(m) = r.max_subscriptions_per_peer {
            cfg.max_subscriptions_per_peer = m;
        }
        if let Some(p) = r.full_policy {
            cfg.full_policy = p;
        }
        // Config::new serves a relay for the node's own hood; the limits are ours to set.
        cfg.relay.serve = if r.relay_serve { cfg.relay.serve.take().map(|c| r.relay_limits.apply(c)) } else { None };
        cfg.relay.use_relays = r.relays;
        match static_peers {
            Some(rx) => cfg.discovery.push(Box::new(partybus::discovery::StaticDiscovery::watched(rx, r.connect_interval))),
            None if !r.connect.is_empty() => {
                cfg.discovery.push(Box::new(partybus::discovery::StaticDiscovery::new(r.connect, r.connect_interval)))
            }
            None => {}
        }
        if r.mdns {
            cfg.discovery.push(Box::new(partybus::discovery::MdnsDiscovery::new()));
        }
        if let Some(pm) = r.port_mapping {
            let mut opts = PortMapOptions { mode: pm.mode, upnp_url: pm.upnp_url, gateway: pm.gateway, ..Default::default() };
            if let Some(lease) = pm.lease {
                opts.lease = lease;
            }
            cfg.discovery.push(Box::new(PortMapDiscovery::new(opts)));
        }
        // A node with a global address (a VPS) serves the DHT by default:
        // it is what others bootstrap from.
        let serve = r.dht_serve.unwrap_or_else(has_global_address);
        if !r.dht.is_empty() || serve {
            let opts = partybus::discovery::dht::DhtOptions { bootstrap: r.dht, serve, ..Default::default() };
            cfg.discovery.push(Box::new(partybus::discovery::dht::DhtDiscovery::new(opts)));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests;
