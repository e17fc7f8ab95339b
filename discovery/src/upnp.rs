//! UPnP IGD port mapping: ask the LAN's router to forward a UDP port to the
//! node's QUIC port and report the resulting public address as
//! [`DiscoverySink::external`].
//!
//! * The gateway is found with SSDP within [`UpnpOptions::search_timeout`], or
//!   taken from [`UpnpOptions::gateway_url`] (its `rootDesc.xml`, no SSDP: labs,
//!   routers that do not answer multicast). No gateway: one info log, and the
//!   service idles until stopped.
//! * The mapping (UDP, external port = our port if free, else a few random
//!   ones on error 718) has a finite lease ([`UpnpOptions::lease`], default
//!   1 h) renewed at half-life; a router that only supports permanent
//!   mappings (error 725) gets lease 0 and is re-checked every
//!   [`PERMANENT_RECHECK`]. The mapping is deleted on stop.
//! * An external IP that is not global (a second NAT, carrier-grade NAT)
//!   makes the mapping useless: a warning, no mapping, no advertisement
//!   (unless `allow_non_global`, for labs and private WANs).
//! * When renewal fails or the external address changes (a router restart
//!   dropped the mapping, a new WAN IP), the old address is withdrawn with
//!   [`DiscoverySink::external_lost`], the mapping is made again with
//!   backoff, and the new address is reported.
//!
//! All decisions (what to report, when to try again) are made by the pure
//! [`MappingMachine`]; the async part only talks to the router.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use igd_next::aio::tokio::Tokio;
use igd_next::aio::Gateway;
use igd_next::{AddPortError, PortMappingProtocol, SearchOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep_until, timeout, Instant};

use crate::{addr::is_global, BoxFuture, Discovery, DiscoveryContext, DiscoverySink, StopSignal};

/// How often a permanent (lease 0) mapping and an unusable external IP are re-checked.
pub const PERMANENT_RECHECK: Duration = Duration::from_secs(5 * 60);
/// First retry delay after a failure; doubles up to [`MAX_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_secs(5);
/// Longest retry delay after failures.
pub const MAX_RETRY: Duration = Duration::from_secs(10 * 60);
/// External ports tried per mapping attempt when the preferred one is taken (718).
pub const MAX_PORT_TRIES: usize = 4;
/// Consecutive failures after which the gateway is searched for again (a
/// restarted miniupnpd listens on a new HTTP port).
pub const REDISCOVER_AFTER: u32 = 3;
/// Time limit of one request to the router.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time limit of the mapping removal on stop.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_DESC_BYTES: usize = 256 * 1024;
const DESCRIPTION: &str = "partybus";

/// Options of [`UpnpDiscovery`].
#[derive(Clone, Debug)]
pub struct UpnpOptions {
    /// How long the SSDP gateway search may take (default 3 s).
    pub search_timeout: Duration,
    /// Lease of the port mapping (default 1 h); renewed at half-life.
    /// `Duration::ZERO` asks for a permanent mapping (still deleted on stop).
    pub lease: Duration,
    /// `http://ROUTER:PORT/rootDesc.xml`: skip SSDP and use this gateway.
    pub gateway_url: Option<String>,
    /// Local address to search from and to map to (the LAN address facing
    /// the gateway). Default: the address the OS routes to the gateway from.
    pub bind_ip: Option<IpAddr>,
}

impl Default for UpnpOptions {
    fn default() -> Self {
        UpnpOptions { search_timeout: Duration::from_secs(3), lease: Duration::from_secs(60 * 60), gateway_url: None, bind_ip: None }
    }
}

/// UPnP IGD port mapping service ("upnp"); see the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct UpnpDiscovery {
    opts: UpnpOptions,
}

impl UpnpDiscovery {
    pub fn new(opts: UpnpOptions) -> Self {
        UpnpDiscovery { opts }
    }
}

/// The outcome of one mapping attempt, as fed to [`MappingMachine::on_attempt`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The router maps `ext` to us with this lease (`ZERO`: permanent).
    Mapped { ext: SocketAddr, lease: Duration },
    /// The router's external IP is not global and non-global addresses are
    /// not allowed: no mapping was made.
    Unusable { ext_ip: IpAddr },
    /// The router could not be reached or refused the mapping.
    Failed,
}

/// What the service must do after an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    External(SocketAddr),
    ExternalLost(SocketAddr),
    /// Warn (once per IP) that the external IP is not global.
    WarnUnusable(IpAddr),
    /// Search the gateway again before the next attempt.
    Rediscover,
}

/// The pure decision part of the UPnP service: which address is advertised,
/// what to tell the sink, and when to try again.
#[derive(Clone, Debug, Default)]
pub struct MappingMachine {
    advertised: Option<SocketAddr>,
    failures: u32,
    warned: Option<IpAddr>,
}

impl MappingMachine {
    pub fn new() -> Self {
        Self::default()
    }

    /// The external address currently reported to the sink.
    pub fn advertised(&self) -> Option<SocketAddr> {
        self.advertised
    }

    /// Consecutive failed attempts.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Feed the outcome of an attempt; returns the effects, in order, and the
    /// delay until the next attempt (renewal or retry).
    pub fn on_attempt(&mut self, attempt: Attempt) -> (Vec<Effect>, Duration) {
        let mut fx = Vec::new();
        match attempt {
            Attempt::Mapped { ext, lease } => {
                self.failures = 0;
                self.warned = None;
                if let Some(old) = self.advertised.filter(|old| *old != ext) {
                    fx.push(Effect::ExternalLost(old));
                    self.advertised = None;
                }
                if self.advertised.is_none() {
                    fx.push(Effect::External(ext));
                    self.advertised = Some(ext);
                }
                (fx, renew_delay(lease))
            }
            Attempt::Unusable { ext_ip } => {
                self.failures = 0;
                if let Some(old) = self.advertised.take() {
                    fx.push(Effect::ExternalLost(old));
                }
                if self.warned != Some(ext_ip) {
                    self.warned = Some(ext_ip);
                    fx.push(Effect::WarnUnusable(ext_ip));
                }
                (fx, PERMANENT_RECHECK)
            }
            Attempt::Failed => {
                self.failures = self.failures.saturating_add(1);
                if let Some(old) = self.advertised.take() {
                    fx.push(Effect::ExternalLost(old));
                }
                if self.failures.is_multiple_of(REDISCOVER_AFTER) {
                    fx.push(Effect::Rediscover);
                }
                (fx, retry_delay(self.failures))
            }
        }
    }
}

/// When to renew a mapping with this lease: at half-life (at least 1 s);
/// permanent mappings are re-checked every [`PERMANENT_RECHECK`].
pub fn renew_delay(lease: Duration) -> Duration {
    if lease.is_zero() {
        PERMANENT_RECHECK
    } else {
        (lease / 2).max(Duration::from_secs(1))
    }
}

/// Delay before the next attempt after `failures` consecutive failures
/// (1 → [`FIRST_RETRY`], doubling, at most [`MAX_RETRY`]).
pub fn retry_delay(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << exp).min(MAX_RETRY)
}

/// Lease in whole seconds as UPnP wants it (0 = permanent), at most 1 week.
fn lease_secs(lease: Duration) -> u32 {
    if lease.is_zero() {
        0
    } else {
        lease.as_secs().clamp(1, 7 * 24 * 3600) as u32
    }
}

impl Discovery for UpnpDiscovery {
    fn name(&self) -> &str {
        "upnp"
    }

    fn start(self: Box<Self>, ctx: DiscoveryContext, sink: DiscoverySink, stop: StopSignal) -> BoxFuture<'static, ()> {
        Box::pin(run(self.opts, ctx, sink, stop))
    }
}

/// The mapping we hold on the router.
struct Held {
    gateway: Gateway<Tokio>,
    ext_port: u16,
}

async fn run(opts: UpnpOptions, ctx: DiscoveryContext, sink: DiscoverySink, mut stop: StopSignal) {
    let Some(mut gateway) = (tokio::select! {
        g = find_gateway(&opts) => g,
        _ = stop.stopped() => return,
    }) else {
        tracing::info!("upnp: no UPnP gateway found; port mapping disabled");
        stop.stopped().await;
        return;
    };
    tracing::info!(gateway = %gateway.addr, "upnp: gateway found");

    let mut machine = MappingMachine::new();
    let mut lease = opts.lease;
    let mut held: Option<Held> = None;
    loop {
        let attempt = tokio::select! {
            a = map_once(&gateway, &opts, &ctx, &mut lease, &mut held) => a,
            _ = stop.stopped() => break,
        };
        let (effects, delay) = machine.on_attempt(attempt.clone());
        let mut rediscover = false;
        for e in effects {
            match e {
                Effect::External(a) => {
                    tracing::info!(external = %a, "upnp: port mapped");
                    sink.external(a, "upnp");
                }
                Effect::ExternalLost(a) => {
                    tracing::info!(external = %a, "upnp: mapping lost");
                    sink.external_lost(a, "upnp");
                }
                Effect::WarnUnusable(ip) => tracing::warn!(
                    external_ip = %ip,
                    "upnp: the router's external IP is not a public address (a second NAT?): \
                     a port mapping would be useless, not advertising it"
                ),
                Effect::Rediscover => rediscover = true,
            }
        }
        if let Attempt::Failed = attempt {
            tracing::debug!(failures = machine.failures(), retry_in = ?delay, "upnp: mapping attempt failed");
        }
        let wake = Instant::now() + delay;
        tokio::select! {
            _ = sleep_until(wake) => {}
            _ = stop.stopped() => break,
        }
        if rediscover {
            let found = tokio::select! {
                g = find_gateway(&opts) => g,
                _ = stop.stopped() => break,
            };
            if let Some(g) = found {
                if g.addr != gateway.addr || g.control_url != gateway.control_url {
                    tracing::info!(gateway = %g.addr, "upnp: gateway found again");
                }
                gateway = g;
            }
        }
    }

    if let Some(h) = held {
        match timeout(REMOVE_TIMEOUT, h.gateway.remove_port(PortMappingProtocol::UDP, h.ext_port)).await {
            Ok(Ok(())) => tracing::info!(port = h.ext_port, "upnp: mapping removed"),
            Ok(Err(e)) => tracing::debug!(error = %e, "upnp: removing the mapping failed"),
            Err(_) => tracing::debug!("upnp: removing the mapping timed out"),
        }
    }
    if let Some(a) = machine.advertised() {
        sink.external_lost(a, "upnp");
    }
}

/// One attempt: learn the external IP, then add (or renew) the mapping.
async fn map_once(
    gateway: &Gateway<Tokio>,
    opts: &UpnpOptions,
    ctx: &DiscoveryContext,
    lease: &mut Duration,
    held: &mut Option<Held>,
) -> Attempt {
    let ext_ip = match timeout(REQUEST_TIMEOUT, gateway.get_external_ip()).await {
        Ok(Ok(ip)) if !ip.is_unspecified() => ip,
        Ok(Ok(_)) => {
            tracing::debug!("upnp: router reports no external IP (WAN down?)");
            return Attempt::Failed;
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "upnp: GetExternalIPAddress failed");
            return Attempt::Failed;
        }
        Err(_) => return Attempt::Failed,
    };
    if !is_global(ext_ip) && !ctx.allow_non_global {
        // Useless mapping: drop the one we may hold.
        if let Some(h) = held.take() {
            let _ = timeout(REQUEST_TIMEOUT, h.gateway.remove_port(PortMappingProtocol::UDP, h.ext_port)).await;
        }
        return Attempt::Unusable { ext_ip };
    }
    let Some(internal_ip) = internal_ip(opts, gateway.addr) else {
        tracing::debug!(gateway = %gateway.addr, "upnp: no local IPv4 address towards the gateway");
        return Attempt::Failed;
    };
    let local = SocketAddr::new(internal_ip, ctx.port);

    // Preferred external port: the one we hold, else our own port number.
    let mut ports = vec![held.as_ref().map(|h| h.ext_port).unwrap_or(ctx.port)];
    while ports.len() < MAX_PORT_TRIES {
        ports.push(rand::random_range(20_000u16..65_000u16));
    }
    let mut tries = 0;
    let mut i = 0;
    while i < ports.len() && tries < MAX_PORT_TRIES + 2 {
        tries += 1;
        let port = ports[i];
        let res = timeout(REQUEST_TIMEOUT, gateway.add_port(PortMappingProtocol::UDP, port, local, lease_secs(*lease), DESCRIPTION)).await;
        match res {
            Ok(Ok(())) => {
                if let Some(old) = held.as_ref().filter(|h| h.ext_port != port) {
                    let _ = timeout(REQUEST_TIMEOUT, old.gateway.remove_port(PortMappingProtocol::UDP, old.ext_port)).await;
                }
                *held = Some(Held { gateway: gateway.clone(), ext_port: port });
                return Attempt::Mapped { ext: SocketAddr::new(ext_ip, port), lease: *lease };
            }
            Ok(Err(AddPortError::OnlyPermanentLeasesSupported)) if !lease.is_zero() => {
                tracing::info!("upnp: router supports only permanent mappings; using lease 0");
                *lease = Duration::ZERO;
                // Same port again.
            }
            Ok(Err(AddPortError::PortInUse)) => {
                tracing::debug!(port, "upnp: external port taken (718), trying another");
                if held.as_ref().is_some_and(|h| h.ext_port == port) {
                    // Someone else holds "our" port now (router restarted).
                    *held = None;
                }
                i += 1;
            }
            Ok(Err(AddPortError::SamePortValuesRequired)) if port != ctx.port => {
                // The router wants external == internal port: that one or nothing.
                ports.truncate(i + 1);
                ports[i] = ctx.port;
            }
            Ok(Err(e)) => {
                tracing::debug!(port, error = %e, "upnp: AddPortMapping failed");
                return Attempt::Failed;
            }
            Err(_) => {
                tracing::debug!(port, "upnp: AddPortMapping timed out");
                return Attempt::Failed;
            }
        }
    }
    Attempt::Failed
}

/// Our LAN address facing the gateway: `bind_ip`, else the source address
/// the OS picks for it (a connected UDP socket; nothing is sent).
fn internal_ip(opts: &UpnpOptions, gateway: SocketAddr) -> Option<IpAddr> {
    if let Some(ip) = opts.bind_ip.filter(|ip| !ip.is_unspecified()) {
        return Some(ip);
    }
    let bind: SocketAddr = match gateway {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => return None,
    };
    let sock = std::net::UdpSocket::bind(bind).ok()?;
    sock.connect(gateway).ok()?;
    let ip = sock.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

async fn find_gateway(opts: &UpnpOptions) -> Option<Gateway<Tokio>> {
    if let Some(url) = &opts.gateway_url {
        match timeout(opts.search_timeout.max(Duration::from_secs(1)) * 2, gateway_from_url(url)).await {
            Ok(Ok(g)) => return Some(g),
            Ok(Err(e)) => {
                tracing::warn!(%url, error = %e, "upnp: cannot use the configured gateway");
                return None;
            }
            Err(_) => {
                tracing::warn!(%url, "upnp: the configured gateway did not answer in time");
                return None;
            }
        }
    }
    let mut so = SearchOptions::default();
    so.bind_addr = SocketAddr::new(opts.bind_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), 0);
    so.timeout = Some(opts.search_timeout);
    so.single_search_timeout = Some(opts.search_timeout);
    // Our own time limit as well, should the crate's ever not hold.
    match timeout(opts.search_timeout + Duration::from_secs(1), igd_next::aio::tokio::search_gateway(so)).await {
        Ok(Ok(g)) => Some(g),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "upnp: gateway search failed");
            None
        }
        Err(_) => None,
    }
}

/// Parsed `http://HOST[:PORT]/PATH`.
#[derive(Debug, PartialEq, Eq)]
struct HttpUrl {
    host: String,
    port: u16,
    path: String,
}

fn parse_http_url(url: &str) -> Result<HttpUrl, String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs are supported")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        let end = h.find(']').ok_or("bad IPv6 literal")?;
        let port = match h[end + 1..].strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| "bad port")?,
            None => 80,
        };
        (h[..end].to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| "bad port")?),
            None => (hostport.to_string(), 80),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    Ok(HttpUrl { host, port, path })
}

/// Resolve `reference` (absolute URL, absolute path or relative path) against
/// the description's URL, as a path on the gateway or an absolute URL.
fn resolve_ref(base_path: &str, reference: &str) -> String {
    let reference = reference.trim();
    if reference.starts_with("http://") || reference.starts_with('/') {
        return reference.to_string();
    }
    let dir = match base_path.rfind('/') {
        Some(i) => &base_path[..=i],
        None => "/",
    };
    format!("{dir}{reference}")
}

/// A minimal HTTP/1.0 GET (no chunked encoding), bounded in size and by the caller's timeout.
async fn http_get(addr: SocketAddr, host: &str, path: &str) -> Result<Vec<u8>, String> {
    let mut s = timeout(REQUEST_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: partybus\r\n\r\n");
    s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    (&mut s).take(MAX_DESC_BYTES as u64 + 1).read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    if buf.len() > MAX_DESC_BYTES {
        return Err("response too large".into());
    }
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no HTTP header end")?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("HTTP status: {status}"));
    }
    Ok(buf[split + 4..].to_vec())
}

const WAN_SERVICES: [&str; 3] = [
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
];

/// The WAN connection service of a device description.
#[derive(Debug, PartialEq, Eq)]
struct WanService {
    service_type: String,
    control_url: String,
    scpd_url: String,
    url_base: Option<String>,
}

/// From a device description: the first WAN connection service
/// (depth-first, bounded) and `URLBase`.
fn parse_root_desc(xml: &[u8]) -> Result<WanService, String> {
    let root = xmltree::Element::parse(xml).map_err(|e| e.to_string())?;
    let url_base = root.get_child("URLBase").and_then(|e| e.get_text()).map(|t| t.trim().to_string());
    let mut pending: Vec<&xmltree::Element> = root.get_child("device").into_iter().collect();
    let mut visited = 0;
    while let Some(dev) = pending.pop() {
        visited += 1;
        if visited > 64 {
            break;
        }
        if let Some(list) = dev.get_child("serviceList") {
            for svc in list.children.iter().filter_map(|c| c.as_element()).filter(|e| e.name == "service") {
                let text = |n: &str| svc.get_child(n).and_then(|e| e.get_text()).map(|t| t.trim().to_string());
                if let (Some(st), Some(ctl), Some(scpd)) = (text("serviceType"), text("controlURL"), text("SCPDURL")) {
                    if WAN_SERVICES.contains(&st.as_str()) {
                        return Ok(WanService { service_type: st, control_url: ctl, scpd_url: scpd, url_base });
                    }
                }
            }
        }
        if let Some(list) = dev.get_child("deviceList") {
            pending.extend(list.children.iter().filter_map(|c| c.as_element()).filter(|e| e.name == "device"));
        }
    }
    Err("no WANIPConnection/WANPPPConnection service in the description".into())
}

/// From a service description (SCPD): action name → its "in" argument names, in order.
fn parse_scpd(xml: &[u8]) -> Result<HashMap<String, Vec<String>>, String> {
    let root = xmltree::Element::parse(xml).map_err(|e| e.to_string())?;
    let list = root.get_child("actionList").ok_or("no actionList")?;
    let mut out = HashMap::new();
    for action in list.children.iter().filter_map(|c| c.as_element()).filter(|e| e.name == "action") {
        let Some(name) = action.get_child("name").and_then(|e| e.get_text()) else {
            continue;
        };
        let mut args = Vec::new();
        if let Some(al) = action.get_child("argumentList") {
            for arg in al.children.iter().filter_map(|c| c.as_element()).filter(|e| e.name == "argument") {
                let dir = arg.get_child("direction").and_then(|e| e.get_text());
                let an = arg.get_child("name").and_then(|e| e.get_text());
                if let (Some(d), Some(n)) = (dir, an) {
                    if d.trim() == "in" {
                        args.push(n.trim().to_string());
                    }
                }
            }
        }
        out.insert(name.trim().to_string(), args);
    }
    Ok(out)
}

/// Build a gateway from its description URL, without SSDP.
async fn gateway_from_url(url: &str) -> Result<Gateway<Tokio>, String> {
    let u = parse_http_url(url)?;
    let addr = tokio::net::lookup_host((u.host.as_str(), u.port))
        .await
        .map_err(|e| e.to_string())?
        .find(|a| a.is_ipv4())
        .ok_or("gateway host has no IPv4 address")?;
    let host_header = format!("{}:{}", u.host, u.port);
    let desc = http_get(addr, &host_header, &u.path).await?;
    let WanService { service_type, control_url: control, scpd_url: scpd, url_base } = parse_root_desc(&desc)?;
    let base_path = match url_base.as_deref().map(parse_http_url) {
        Some(Ok(b)) => b.path,
        _ => u.path.clone(),
    };
    let control_url = resolve_ref(&base_path, &control);
    let control_schema_url = resolve_ref(&base_path, &scpd);
    let scpd_path = match parse_http_url(&control_schema_url) {
        Ok(s) => s.path,
        Err(_) => control_schema_url.clone(),
    };
    let schema = parse_scpd(&http_get(addr, &host_header, &scpd_path).await?)?;
    Ok(Gateway { addr, root_url: u.path, control_url, control_schema_url, control_schema: schema, service_type, provider: Tokio })
}

#[cfg(test)]
mod tests;
