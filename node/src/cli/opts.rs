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
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        node: NodeOpts,
    }

    /// Parses `flags` after `--config FILE` holding `toml` (plus the
    /// certificate paths, which `resolve` does not read).
    fn resolve(toml: &str, flags: &[&str]) -> Result<Resolved> {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("node.toml");
        std::fs::write(&file, format!("ca = \"h.crt\"\ncert = \"h.a.crt\"\nkey = \"h.a.key\"\n{toml}")).unwrap();
        let mut args = vec!["partybus", "--config", file.to_str().unwrap()];
        args.extend_from_slice(flags);
        Cmd::try_parse_from(args)?.node.resolve()
    }

    fn ok(toml: &str, flags: &[&str]) -> Resolved {
        resolve(toml, flags).unwrap_or_else(|e| panic!("{toml:?} {flags:?}: {e:#}"))
    }

    #[test]
    fn a_flag_turns_a_files_boolean_off_and_on() {
        // (file setting, flag, what wins)
        type Case = (&'static str, &'static str, fn(&Resolved) -> bool);
        let cases: [Case; 4] = [
            ("[discovery]\nmdns = true", "mdns", |r| r.mdns),
            ("[discovery]\nupnp = true", "upnp", |r| r.port_mapping.is_some()),
            ("[discovery]\ndht_serve = true", "dht-serve", |r| r.dht_serve == Some(true)),
            ("allow_non_global = true", "allow-non-global", |r| r.allow_non_global),
        ];
        for (on_in_file, flag, get) in cases {
            let off_in_file = on_in_file.replace("true", "false");
            let (yes, no) = (format!("--{flag}"), format!("--no-{flag}"));
            assert!(get(&ok(on_in_file, &[])), "{on_in_file}: the file alone");
            assert!(!get(&ok(&off_in_file, &[])), "{off_in_file}: the file alone");
            assert!(!get(&ok(on_in_file, &[&no])), "{on_in_file} {no}: the flag wins");
            assert!(get(&ok(&off_in_file, &[&yes])), "{off_in_file} {yes}: the flag wins");
            assert!(get(&ok("", &[&yes])), "{yes} without a file setting");
            // Both flags: the last one wins.
            assert!(!get(&ok(on_in_file, &[&yes, &no])), "{yes} {no}");
            assert!(get(&ok(&off_in_file, &[&no, &yes])), "{no} {yes}");
        }
        // Without anything: off, and the DHT's serving left to the host's addresses.
        let r = ok("", &[]);
        assert!(!r.mdns && r.port_mapping.is_none() && !r.allow_non_global && r.dht_serve.is_none(), "{r:?}");
        assert_eq!(ok("", &["--no-dht-serve"]).dht_serve, Some(false));
    }

    #[test]
    fn upnp_url_implies_upnp_unless_no_upnp() {
        let url = "[discovery]\nupnp_url = \"http://127.0.0.1:5000/rootDesc.xml\"\nupnp_lease = \"10m\"";
        let r = ok(url, &[]).port_mapping.unwrap();
        assert_eq!(r.mode, Mode::Only(Protocol::Upnp));
        assert_eq!(r.upnp_url.as_deref(), Some("http://127.0.0.1:5000/rootDesc.xml"));
        assert_eq!(r.lease, Some(Duration::from_secs(600)));
        assert_eq!(ok(url, &["--upnp-lease", "1m"]).port_mapping.unwrap().lease, Some(Duration::from_secs(60)));
        assert_eq!(ok(url, &["--no-upnp"]).port_mapping, None);
        // --no-upnp with a gateway URL on the same command line is a contradiction.
        let e = resolve("", &["--no-upnp", "--upnp-url", "http://127.0.0.1:1/x.xml"]).unwrap_err().to_string();
        assert!(e.contains("--no-upnp") && e.contains("--upnp-url"), "{e}");
    }

    #[test]
    fn port_mapping_from_flag_and_file() {
        let mode = |toml: &str, flags: &[&str]| ok(toml, flags).port_mapping.map(|p| p.mode);
        assert_eq!(mode("", &["--port-mapping", "auto"]), Some(Mode::Auto));
        assert_eq!(mode("", &["--port-mapping", "natpmp"]), Some(Mode::Only(Protocol::NatPmp)));
        assert_eq!(mode("", &["--port-mapping", "off"]), None);
        let file = "[discovery]\nport_mapping = \"pcp\"\nport_mapping_gateway = \"198.18.1.1\"\nport_mapping_lease = \"30s\"";
        let r = ok(file, &[]).port_mapping.unwrap();
        assert_eq!(
            (r.mode, r.gateway, r.lease),
            (Mode::Only(Protocol::Pcp), Some("198.18.1.1".parse().unwrap()), Some(Duration::from_secs(30)))
        );
        // Flags win: --port-mapping, --upnp (UPnP only), --no-upnp (off).
        assert_eq!(mode(file, &["--port-mapping", "upnp"]), Some(Mode::Only(Protocol::Upnp)));
        assert_eq!(mode(file, &["--upnp"]), Some(Mode::Only(Protocol::Upnp)));
        assert_eq!(mode(file, &["--no-upnp"]), None);
        assert_eq!(ok(file, &["--port-mapping-gateway", "198.18.2.1"]).port_mapping.unwrap().gateway, Some("198.18.2.1".parse().unwrap()));
        // Bad values name the setting and the choices.
        let e = resolve("", &["--port-mapping", "igd"]).unwrap_err().to_string();
        assert!(e.contains("--port-mapping") && e.contains("auto, upnp, natpmp, pcp or off"), "{e}");
        let e = resolve("[discovery]\nport_mapping = \"nat\"", &[]).unwrap_err().to_string();
        assert!(e.contains("discovery.port_mapping") && e.contains("natpmp"), "{e}");
        // --port-mapping and --upnp together: a contradiction.
        assert!(resolve("", &["--port-mapping", "pcp", "--upnp"]).is_err());
    }

    #[test]
    fn a_list_on_the_command_line_replaces_the_files_list() {
        let file = "advertise = [\"127.0.0.9:4816\"]\n[discovery]\nconnect = [\"127.0.0.1:1\", \"localhost:2\"]\ndht = [\"127.0.0.1:3\"]";
        let r = ok(file, &[]);
        assert_eq!(r.connect, ["127.0.0.1:1", "localhost:2"]);
        assert_eq!(r.dht, ["127.0.0.1:3"]);
        assert_eq!(r.advertise, ["127.0.0.9:4816".parse::<SocketAddr>().unwrap()]);
        let r = ok(file, &["--connect", "[::1]:7", "--connect", "127.0.0.1:8", "--dht", "localhost:9", "--advertise", "127.0.0.10:1"]);
        assert_eq!(r.connect, ["[::1]:7", "127.0.0.1:8"]);
        assert_eq!(r.dht, ["localhost:9"]);
        assert_eq!(r.advertise, ["127.0.0.10:1".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn congestion_from_file_and_flag() {
        assert_eq!(ok("", &[]).congestion, None);
        assert_eq!(ok("congestion = \"cubic\"", &[]).congestion, Some(Congestion::Cubic));
        assert_eq!(ok("congestion = \"cubic\"", &["--congestion", "newreno"]).congestion, Some(Congestion::NewReno));
        let e = format!("{:#}", resolve("congestion = \"vegas\"", &[]).unwrap_err());
        assert!(e.contains("config `congestion`") && e.contains("\"bbr\", \"cubic\" or \"newreno\""), "{e}");
        let e = resolve("", &["--congestion", "vegas"]).unwrap_err().to_string();
        assert!(e.contains("--congestion") && e.contains("\"vegas\""), "{e}");
    }

    #[test]
    fn scalars_from_flags_win() {
        let file = "port = \"4816\"\nbind = \"127.0.0.1\"\nidle_timeout = \"20s\"\nkeep_alive = \"5s\"";
        let r = ok(file, &[]);
        assert_eq!((r.port.clone(), r.bind), (Some(PortSpec::single(4816)), Some("127.0.0.1".parse().unwrap())));
        assert_eq!((r.idle_timeout, r.keep_alive), (Some(Duration::from_secs(20)), Some(Duration::from_secs(5))));
        let r = ok(file, &["--port", "0", "--bind", "::1", "--idle-timeout", "3s", "--keep-alive", "1s", "--ca", "/x/ca.crt"]);
        assert_eq!((r.port.clone(), r.bind), (Some(PortSpec::any()), Some("::1".parse().unwrap())));
        assert_eq!((r.idle_timeout, r.keep_alive), (Some(Duration::from_secs(3)), Some(Duration::from_secs(1))));
        assert_eq!(r.ca, PathBuf::from("/x/ca.crt"));
        // The file's paths are relative to the file.
        assert!(r.cert.ends_with("h.a.crt") && r.cert.is_absolute(), "{:?}", r.cert);
    }

    #[test]
    fn revoked_and_metrics_from_file_and_flags() {
        let r = ok("", &[]);
        assert_eq!((r.revoked.clone(), r.metrics), (None, None));
        let r = ok("revoked = \"h.revoked\"\nmetrics = \"127.0.0.1:9464\"", &[]);
        // The file's path is relative to the file.
        assert!(r.revoked.as_ref().is_some_and(|p| p.is_absolute() && p.ends_with("h.revoked")), "{:?}", r.revoked);
        assert_eq!(r.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        let r = ok("revoked = \"h.revoked\"\nmetrics = \"127.0.0.1:9464\"", &["--revoked", "/x/other.revoked", "--metrics", "[::1]:1"]);
        assert_eq!(r.revoked, Some(PathBuf::from("/x/other.revoked")));
        assert_eq!(r.metrics, Some("[::1]:1".parse().unwrap()));
        assert!(resolve("", &["--metrics", "localhost"]).is_err());
    }

    #[test]
    fn relay_serving_and_limits_from_file_and_flags() {
        let r = ok("", &[]);
        assert!(r.relay_serve && r.relays.is_empty() && r.relay_limits == RelayLimitArgs::default(), "{r:?}");
        assert!(!ok("", &["--no-relay"]).relay_serve);
        assert!(!ok("relay = false", &[]).relay_serve);
        assert!(!ok("relay = true", &["--no-relay"]).relay_serve);
        let file =
            "relays = [\"relay.example.org:4816\"]\nrelay_max_clients = 10\nrelay_client_rate = \"1MB/s\"\nrelay_total_rate = \"80Mbit/s\"";
        let r = ok(file, &[]);
        assert_eq!(r.relays, ["relay.example.org:4816"]);
        let want = RelayLimitArgs { relay_max_clients: Some(10), relay_client_rate: Some(1_000_000), relay_total_rate: Some(10_000_000) };
        assert_eq!(r.relay_limits, want);
        let r = ok(file, &["--relay", "[::1]:1", "--relay", "127.0.0.1:2", "--relay-max-clients", "5", "--relay-client-rate", "2MiB/s"]);
        assert_eq!(r.relays, ["[::1]:1", "127.0.0.1:2"]);
        let want = RelayLimitArgs { relay_max_clients: Some(5), relay_client_rate: Some(2 << 20), relay_total_rate: Some(10_000_000) };
        assert_eq!(r.relay_limits, want);
        let applied = r.relay_limits.apply(partybus::RelayConfig::default());
        assert_eq!((applied.max_clients, applied.client_rate, applied.total_rate), (5, 2 << 20, 10_000_000));
    }

    #[test]
    fn a_bad_relay_option_names_the_flag_or_key_and_shows_the_form() {
        let e = resolve("", &["--relay-client-rate", "2Mb/s"]).unwrap_err().to_string();
        assert!(e.contains("--relay-client-rate") && e.contains("2MB/s"), "{e}");
        let e = resolve("", &["--relay-max-clients", "0"]).unwrap_err().to_string();
        assert!(e.contains("--relay-max-clients") && e.contains("1024"), "{e}");
        let e = format!("{:#}", resolve("relay_total_rate = \"fast\"", &[]).unwrap_err());
        assert!(e.contains("relay_total_rate") && e.contains("2MB/s"), "{e}");
        let e = format!("{:#}", resolve("", &["--relay", "relay.example.org"]).unwrap_err());
        assert!(e.contains("--relay") && e.contains("HOST:PORT"), "{e}");
        let e = format!("{:#}", resolve("relays = [\"x\"]", &[]).unwrap_err());
        assert!(e.contains("config `relays` entry"), "{e}");
    }

    #[test]
    fn a_malformed_target_is_an_error_that_shows_the_form() {
        for (flag, bad, says) in [
            ("--connect", "127.0.0.1", "no port"),
            ("--connect", "::1:4816", "needs brackets, as in [::1]:4816"),
            ("--connect", "[::1:4816", "unbalanced"),
            ("--connect", "[nope]:4816", "not an IPv6 address"),
            ("--connect", "localhost:port", "not a port number"),
            ("--dht", ":4816", "no host"),
            ("--dht", "localhost:70000", "not a port number"),
            ("--connect", "127.0.0.1:99999", "not a port number (1-65535)"),
            ("--relay", "127.0.0.1:0", "not a port number (1-65535)"),
        ] {
            let e = format!("{:#}", resolve("", &[flag, bad]).unwrap_err());
            assert!(e.contains(flag) && e.contains(bad) && e.contains(says), "{flag} {bad}: {e}");
        }
        let e = format!("{:#}", resolve("[discovery]\nconnect = [\"peer\"]", &[]).unwrap_err());
        assert!(e.contains("discovery.connect") && e.contains("HOST:PORT"), "{e}");
        for good in ["127.0.0.1:1", "[::1]:4816", "localhost:4816", "[fe80::1%2]:1"] {
            let r = resolve("", &["--connect", good]);
            assert!(r.is_ok(), "{good}: {r:?}");
        }
    }
}
