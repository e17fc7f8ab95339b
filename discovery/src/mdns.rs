//! mDNS / DNS-SD discovery on the local link (crate `mdns-sd`).
//!
//! Every node advertises one service instance whose *type* is derived from
//! the hood fingerprint, `_tm-<first 12 hex of the fingerprint>._udp.local.`,
//! so nodes of different hoods never even see each other's records. The
//! instance name is `<cert name>-<first 8 hex of the node id>`, sanitised to
//! the rules of a DNS label. The service browses for its own type and reports
//! every resolved address of every other instance as a candidate.
//!
//! mdns-sd runs its own thread; it sends on every interface that is up
//! (IPv4 and IPv6, loopback excluded unless asked for) and re-reads the
//! interface list every few seconds, so interfaces and addresses that come and
//! go are followed (the advertised addresses follow too: `enable_addr_auto`).
//!
//! On stop the instance is unregistered (goodbye packets, so peers forget us at
//! once instead of after the record TTL) and the daemon is shut down; each step
//! is bounded in time.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use mdns_sd::{IfKind, ResolvedService, ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo};

use crate::{BoxFuture, Discovery, DiscoveryContext, DiscoverySink, StopSignal};

/// Maximum length of a DNS label (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;

/// Name under which candidates are reported and the service is logged.
const NAME: &str = "mdns";

/// Time allowed for each step of the shutdown (unregister, daemon exit).
const STOP_STEP_TIMEOUT: Duration = Duration::from_secs(2);

/// DNS-SD type of the service for a hood: `_tm-<first 12 hex>._udp.local.`.
///
/// The service name ("tm-" + 12 hex) is exactly the 15 bytes RFC 6763 allows.
/// Non-hex characters in `hood_fingerprint` are ignored (a fingerprint written
/// as `AB:CD:...` gives the same type as `abcd...`).
pub fn service_type(hood_fingerprint: &str) -> String {
    let hex: String = hood_fingerprint.chars().filter(char::is_ascii_hexdigit).map(|c| c.to_ascii_lowercase()).take(12).collect();
    format!("_tm-{hex}._udp.local.")
}

/// Instance name of a node: `<cert name>-<first 8 hex of node id>`, made a
/// valid DNS label (letters, digits and `-`; no leading, trailing or doubled
/// `-`; lowercase; at most 63 bytes). The certificate-name part is shortened
/// first, so the node-id part always survives.
pub fn instance_name(cert_name: &str, node_id: &str) -> String {
    let id: String = sanitize_label(&node_id.chars().filter(char::is_ascii_alphanumeric).take(8).collect::<String>(), 8);
    let id = if id.is_empty() { "0".to_owned() } else { id };
    let room = MAX_LABEL_LEN - 1 - id.len();
    let mut name = sanitize_label(cert_name, room);
    if name.is_empty() {
        name = "node".to_owned();
    }
    format!("{name}-{id}")
}

/// Make `s` a DNS label of at most `max_len` bytes: ASCII letters and digits
/// are kept (lowercased), every run of anything else becomes one `-`, and
/// `-` never starts or ends the label. May return an empty string.
pub fn sanitize_label(s: &str, max_len: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_len));
    let mut pending_dash = false;
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            if pending_dash && !out.is_empty() {
                if out.len() + 2 > max_len {
                    break;
                }
                out.push('-');
            }
            pending_dash = false;
            if out.len() + 1 > max_len {
                break;
            }
            out.push(c.to_ascii_lowercase());
        } else {
            pending_dash = true;
        }
    }
    // Truncation may only stop before a dash is pushed, so no trailing dash.
    debug_assert!(!out.ends_with('-') && !out.starts_with('-'));
    out
}

/// The socket addresses of a resolved instance we would dial: IPv6
/// link-local addresses get the scope (interface index) they were seen on;
/// unspecified and multicast addresses are dropped, loopback unless allowed.
fn dial_addrs(svc: &ResolvedService, include_loopback: bool) -> Vec<SocketAddr> {
    let port = svc.get_port();
    let mut out: Vec<SocketAddr> = svc
        .get_addresses()
        .iter()
        .filter_map(|sip| {
            let ip = sip.to_ip_addr();
            if !reportable(ip, include_loopback) {
                return None;
            }
            Some(match sip {
                ScopedIp::V6(v6) if is_v6_link_local(v6.addr()) => {
                    SocketAddr::V6(SocketAddrV6::new(*v6.addr(), port, 0, v6.scope_id().index))
                }
                _ => SocketAddr::new(ip, port),
            })
        })
        .collect();
    // IPv4 first, then stable order: the mesh dials in the order reported.
    out.sort_by_key(|a| (a.is_ipv6(), *a));
    out
}

fn is_v6_link_local(ip: &std::net::Ipv6Addr) -> bool {
    (ip.segments()[0] & 0xffc0) == 0xfe80
}

/// mDNS / DNS-SD discovery of hood members on the local links.
#[derive(Clone, Debug)]
pub struct MdnsDiscovery {
    include_loopback: bool,
    rereport_interval: Duration,
    ip_check_interval_secs: u32,
}

impl Default for MdnsDiscovery {
    fn default() -> Self {
        Self::new()
    }
}

impl MdnsDiscovery {
    /// Advertise and browse on every interface except loopback.
    pub fn new() -> Self {
        MdnsDiscovery { include_loopback: false, rereport_interval: Duration::from_secs(30), ip_check_interval_secs: 2 }
    }

    /// Also advertise on loopback and report loopback addresses (several
    /// nodes on one host without a LAN). Off by default.
    pub fn include_loopback(mut self, yes: bool) -> Self {
        self.include_loopback = yes;
        self
    }

    /// How often the addresses of known instances are reported again, so a
    /// dropped connection is dialled again (default 30 s).
    pub fn rereport_interval(mut self, interval: Duration) -> Self {
        self.rereport_interval = interval.max(Duration::from_millis(100));
        self
    }

    /// How often mdns-sd re-reads the interface list (default 2 s, min 1 s).
    pub fn ip_check_interval(mut self, interval: Duration) -> Self {
        self.ip_check_interval_secs = interval.as_secs().clamp(1, u32::MAX as u64) as u32;
        self
    }
}

impl Discovery for MdnsDiscovery {
    fn name(&self) -> &str {
        NAME
    }

    fn start(self: Box<Self>, ctx: DiscoveryContext, sink: DiscoverySink, stop: StopSignal) -> BoxFuture<'static, ()> {
        Box::pin(run(*self, ctx, sink, stop))
    }
}

async fn run(cfg: MdnsDiscovery, ctx: DiscoveryContext, sink: DiscoverySink, mut stop: StopSignal) {
    let ty = service_type(&ctx.hood_fingerprint);
    let instance = instance_name(&ctx.cert_name, &ctx.node_id);
    let host = format!("{instance}.local.");

    let daemon = match ServiceDaemon::new() {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "mdns: cannot start the mDNS daemon; mDNS discovery is off");
            stop.stopped().await;
            return;
        }
    };
    let setup = || -> Result<(String, mdns_sd::Receiver<ServiceEvent>), mdns_sd::Error> {
        if !cfg.include_loopback {
            daemon.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])?;
        }
        daemon.set_ip_check_interval(cfg.ip_check_interval_secs)?;
        let props = [("id", ctx.node_id.as_str()), ("name", ctx.cert_name.as_str())];
        let info = ServiceInfo::new(&ty, &instance, &host, "", ctx.port, &props[..])?.enable_addr_auto();
        let fullname = info.get_fullname().to_owned();
        daemon.register(info)?;
        let rx = daemon.browse(&ty)?;
        Ok((fullname, rx))
    };
    let (fullname, mut browse) = match setup() {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, service_type = %ty, instance = %instance,
                "mdns: cannot register or browse; mDNS discovery is off");
            shutdown(&daemon, None).await;
            stop.stopped().await;
            return;
        }
    };
    tracing::info!(service_type = %ty, instance = %fullname, port = ctx.port, "mdns: advertising and browsing");

    // fullname (lowercase) -> addresses last resolved for it
    let mut known: HashMap<String, Vec<SocketAddr>> = HashMap::new();
    let own = fullname.to_ascii_lowercase();
    let mut tick = tokio::time::interval(cfg.rereport_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate
    let mut rebrowse_failures = 0u32;

    loop {
        tokio::select! {
            _ = stop.stopped() => break,
            _ = tick.tick() => {
                for addr in known.values().flatten() {
                    sink.candidate(*addr, NAME);
                }
            }
            ev = browse.recv_async() => match ev {
                Ok(ServiceEvent::ServiceResolved(svc)) => {
                    let name = svc.get_fullname().to_ascii_lowercase();
                    let is_self = name == own
                        || svc.get_property_val_str("id") == Some(ctx.node_id.as_str());
                    if is_self {
                        continue;
                    }
                    let addrs = dial_addrs(&svc, cfg.include_loopback);
                    tracing::debug!(instance = %name, ?addrs, "mdns: resolved");
                    for addr in &addrs {
                        sink.candidate(*addr, NAME);
                    }
                    known.insert(name, addrs);
                }
                Ok(ServiceEvent::ServiceRemoved(_, name)) => {
                    tracing::debug!(instance = %name, "mdns: removed");
                    known.remove(&name.to_ascii_lowercase());
                }
                Ok(_) => {}
                Err(_) => {
                    // The subscription ends if we fell behind, or the daemon died.
                    rebrowse_failures += 1;
                    if rebrowse_failures > 5 {
                        tracing::warn!("mdns: browsing keeps failing; mDNS discovery is off");
                        shutdown(&daemon, Some(&fullname)).await;
                        stop.stopped().await;
                        return;
                    }
                    tokio::select! {
                        _ = stop.stopped() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    match daemon.browse(&ty) {
                        Ok(rx) => browse = rx,
                        Err(e) => tracing::debug!(error = %e, "mdns: browse again failed"),
                    }
                }
            }
        }
    }
    shutdown(&daemon, Some(&fullname)).await;
}

/// Unregister (goodbye packets) and stop the daemon thread, each step bounded.
async fn shutdown(daemon: &ServiceDaemon, fullname: Option<&str>) {
    if let Some(fullname) = fullname {
        match daemon.unregister(fullname) {
            Ok(rx) => {
                if tokio::time::timeout(STOP_STEP_TIMEOUT, rx.recv_async()).await.is_err() {
                    tracing::debug!("mdns: unregister timed out");
                }
            }
            Err(e) => tracing::debug!(error = %e, "mdns: unregister failed"),
        }
    }
    match daemon.shutdown() {
        Ok(rx) => {
            if tokio::time::timeout(STOP_STEP_TIMEOUT, rx.recv_async()).await.is_err() {
                tracing::debug!("mdns: daemon shutdown timed out");
            }
        }
        Err(e) => tracing::debug!(error = %e, "mdns: daemon shutdown failed"),
    }
}

/// Is `ip` one we would dial? Not unspecified, not multicast, and not
/// loopback unless loopback is included.
fn reportable(ip: IpAddr, include_loopback: bool) -> bool {
    !(ip.is_unspecified() || ip.is_multicast() || (ip.is_loopback() && !include_loopback))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_type_from_fingerprint() {
        let fp = "0123456789abcdef".repeat(4);
        assert_eq!(service_type(&fp), "_tm-0123456789ab._udp.local.");
        assert_eq!(service_type("01:23:45:67:89:AB:CD:EF"), "_tm-0123456789ab._udp.local.");
        // "tm-" + 12 hex is exactly the 15 bytes RFC 6763 allows for a service name.
        let ty = service_type(&fp);
        assert_eq!(ty.trim_start_matches('_').split('.').next().unwrap().len(), 15);
    }

    #[test]
    fn different_hoods_different_types() {
        assert_ne!(service_type(&"a".repeat(64)), service_type(&"b".repeat(64)));
    }

    #[test]
    fn instance_name_simple() {
        assert_eq!(instance_name("alice", "deadbeef00112233"), "alice-deadbeef");
        assert_eq!(instance_name("Alice", "DEADBEEF00112233"), "alice-deadbeef");
    }

    #[test]
    fn instance_name_sanitises() {
        assert_eq!(instance_name("my.hood.peer one", "0a0b0c0d0e"), "my-hood-peer-one-0a0b0c0d");
        assert_eq!(instance_name("--x__y--", "12345678"), "x-y-12345678");
        assert_eq!(instance_name("ünï©ode", "12345678"), "n-ode-12345678");
        assert_eq!(instance_name("", "12345678"), "node-12345678");
        assert_eq!(instance_name("...", "12345678"), "node-12345678");
        assert_eq!(instance_name("a", ""), "a-0");
    }

    #[test]
    fn instance_name_is_a_dns_label() {
        let long = "x".repeat(200);
        for cert in [long.as_str(), "a-b-c-d-e-f-g-h-i-j-k-l-m-n-o-p-q-r-s-t-u-v-w-x-y-z-0-1-2-3-4-5-6-7-8-9", "é".repeat(40).as_str()] {
            let n = instance_name(cert, "0123456789abcdef");
            assert!(n.len() <= MAX_LABEL_LEN, "{n} is {} bytes", n.len());
            assert!(n.ends_with("-01234567"), "{n}");
            assert!(!n.starts_with('-') && !n.contains("--"), "{n}");
            assert!(n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'), "{n}");
        }
        assert_eq!(instance_name(&long, "01234567").len(), 63);
    }

    #[test]
    fn sanitize_label_truncation_never_leaves_a_dash() {
        for max in 0..12 {
            let s = sanitize_label("ab-cd-ef-gh-ij", max);
            assert!(s.len() <= max);
            assert!(!s.ends_with('-') && !s.starts_with('-'), "{max}: {s}");
        }
        assert_eq!(sanitize_label("ab-cd", 3), "ab");
        assert_eq!(sanitize_label("ab-cd", 4), "ab-c");
    }

    #[test]
    fn reportable_addresses() {
        assert!(reportable("198.18.0.11".parse().unwrap(), false));
        assert!(reportable("fe80::1".parse().unwrap(), false));
        assert!(!reportable("127.0.0.1".parse().unwrap(), false));
        assert!(reportable("127.0.0.1".parse().unwrap(), true));
        assert!(!reportable("0.0.0.0".parse().unwrap(), true));
        assert!(!reportable("224.0.0.251".parse().unwrap(), true));
    }

    #[test]
    fn service_info_accepts_our_names() {
        // mdns-sd validates the type and host name on register; check the
        // parts we control build a ServiceInfo with the expected full name.
        let ty = service_type(&"ab".repeat(32));
        let inst = instance_name("peer.one", "00112233445566778899");
        let info = ServiceInfo::new(&ty, &inst, &format!("{inst}.local."), "", 4816, &[("id", "0011")][..]).unwrap();
        assert_eq!(info.get_fullname(), "peer-one-00112233._tm-ababababab._udp.local.".replace("ababababab", "abababababab"));
    }
}
