//! The TOML config file of `partybus node` (and the other node commands).
//! Flags override it (see `NodeOpts::resolve` in `opts.rs`): a flag wins
//! over the file's setting, `--no-...` turns off a boolean the file turns
//! on, and a list on the command line replaces the file's list.
//!
//! ```toml
//! ca = "hood.crt"            # paths are relative to this file
//! cert = "hood.vps1.crt"
//! key = "hood.vps1.key"          # must not be readable by every user (chmod 600)
//! # allow_readable_key = false    # true: load it anyway
//! port = "4816-4819"
//! # bind = "::"
//! # advertise = ["203.0.113.5:4816"]
//! # allow_non_global = false
//! # idle_timeout = "10s"
//! # keep_alive = "2s"
//! # congestion = "bbr"             # or "cubic", "newreno"
//! # relay = true                  # serve as a relay for this hood's members (on the node's UDP port)
//! # relays = ["relay.example.org:4816"]   # relays to use (UDP HOST:PORT)
//! # relay_max_clients = 1024
//! # relay_client_rate = "2MB/s"    # per client; also "500KiB/s", "16Mbit/s"
//! # relay_total_rate = "50MB/s"    # all clients together
//! # revoked = "hood.revoked"       # the hood's revocation list (`partybus cert revoke`)
//! # metrics = "127.0.0.1:9464"     # serve http://127.0.0.1:9464/metrics (unauthenticated: keep it local)
//! # control = "/run/partybus/node.sock"   # control socket of `partybus node` (see `partybus status`)
//! # log = "info"                  # log filter, e.g. "partybus=debug"; RUST_LOG overrides it
//!
//! [discovery]
//! connect = ["peer.example.org:4816"]
//! # connect_interval = "60s"
//! mdns = false
//! dht = ["dht.example.org:4816"]
//! # dht_serve = true        # default: on when this host has a global address
//! # port_mapping = "auto"         # or "upnp", "natpmp", "pcp", "off" (default)
//! # port_mapping_gateway = "198.18.1.1"   # NAT-PMP/PCP router; default: the default route's
//! # port_mapping_lease = "1h"     # renewed at half-life
//! upnp = false                    # true: the same as port_mapping = "upnp"
//! # upnp_url = "http://198.18.1.1:5000/rootDesc.xml"
//!
//! [limits]
//! # queue_limit = 4194304          # bytes per neighbour
//! # express_max = 1024             # events up to this size take the express stream; 0: one stream
//! # socket_buffer = 4194304        # UDP kernel buffer per direction; 0: system default
//! # full_policy = "disconnect"     # or "block", "drop"
//! # stuck_timeout = "10s"          # "disconnect": a queue full this long without draining
//! # stuck_timeout = "10s"          # for "disconnect"
//! # max_event_size = 16777216
//! # max_subscriptions_per_peer = 10000
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

/// A duration written like "20s" or "500ms".
#[derive(Clone, Copy, Debug)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Dur)
            .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration like \"20s\" or \"500ms\": {e}")))
    }
}

#[derive(Deserialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub port: Option<String>,
    pub bind: Option<IpAddr>,
    #[serde(default)]
    pub advertise: Vec<SocketAddr>,
    pub allow_non_global: Option<bool>,
    pub allow_readable_key: Option<bool>,
    pub idle_timeout: Option<Dur>,
    pub keep_alive: Option<Dur>,
    /// "bbr", "cubic" or "newreno" (checked when resolved, naming the key).
    pub congestion: Option<String>,
    /// Serve as a relay (default true).
    pub relay: Option<bool>,
    /// Relays to use, `HOST:PORT`.
    #[serde(default)]
    pub relays: Vec<String>,
    pub relay_max_clients: Option<usize>,
    /// A rate like "2MB/s" (checked when resolved, naming the key).
    pub relay_client_rate: Option<String>,
    pub relay_total_rate: Option<String>,
    /// The hood's revocation list (`HOOD.revoked`).
    pub revoked: Option<PathBuf>,
    /// Serve metrics on this TCP address.
    pub metrics: Option<SocketAddr>,
    pub discovery: Option<DiscoveryConfig>,
    pub limits: Option<Limits>,
    /// The control socket of `partybus node` (relative to this file).
    pub control: Option<PathBuf>,
    /// Log filter (tracing's `EnvFilter` syntax); reloadable.
    pub log: Option<String>,
}

#[derive(Deserialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    #[serde(default)]
    pub connect: Vec<String>,
    pub connect_interval: Option<Dur>,
    #[serde(default)]
    pub mdns: bool,
    #[serde(default)]
    pub dht: Vec<String>,
    pub dht_serve: Option<bool>,
    #[serde(default)]
    pub upnp: bool,
    pub upnp_url: Option<String>,
    /// Older spelling of `port_mapping_lease`.
    pub upnp_lease: Option<Dur>,
    pub port_mapping: Option<String>,
    pub port_mapping_gateway: Option<IpAddr>,
    pub port_mapping_lease: Option<Dur>,
}

#[derive(Deserialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub queue_limit: Option<usize>,
    pub express_max: Option<usize>,
    pub socket_buffer: Option<usize>,
    pub full_policy: Option<String>,
    pub stuck_timeout: Option<Dur>,
    pub max_event_size: Option<usize>,
    pub max_subscriptions_per_peer: Option<usize>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config file {} is not valid", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let doc = include_str!("config_file.rs");
        let example: String = doc
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .map(|l| l.trim_start_matches("//!").strip_prefix(' ').unwrap_or(""))
            .skip_while(|l| !l.starts_with("```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("```"))
            .collect::<Vec<_>>()
            .join("\n");
        let c: FileConfig = toml::from_str(&example).unwrap();
        assert_eq!(c.port.as_deref(), Some("4816-4819"));
        assert_eq!(c.discovery.unwrap().dht, vec!["dht.example.org:4816".to_string()]);
    }

    #[test]
    fn parses_the_readme_example() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```toml\n").expect("README has a toml block") + "```toml\n".len();
        let example = &readme[start..start + readme[start..].find("```").expect("the block ends")];
        let c: FileConfig = toml::from_str(example).unwrap_or_else(|e| panic!("README's config example: {e}"));
        assert_eq!(c.cert.as_deref(), Some(Path::new("hood.vps1.crt")));
        // Every commented-out setting is a real one too.
        let uncommented: String = example.lines().map(|l| l.strip_prefix("# ").unwrap_or(l)).collect::<Vec<_>>().join("\n");
        let c: FileConfig = toml::from_str(&uncommented).unwrap_or_else(|e| panic!("README's config example, uncommented: {e}"));
        assert_eq!(c.discovery.and_then(|d| d.connect_interval).map(|d| d.0), Some(std::time::Duration::from_secs(60)));
    }

    #[test]
    fn unknown_field_is_named() {
        let e = toml::from_str::<FileConfig>("prot = \"1\"").unwrap_err().to_string();
        assert!(e.contains("prot"), "{e}");
        let e = toml::from_str::<FileConfig>("idle_timeout = \"soon\"").unwrap_err().to_string();
        assert!(e.contains("not a duration"), "{e}");
    }
}
