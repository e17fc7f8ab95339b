//! UPnP IGD, the third port-mapping protocol: the gateway is found with
//! SSDP within [`UpnpOptions::search_timeout`], or taken from
//! [`UpnpOptions::gateway_url`] (its `rootDesc.xml`, no SSDP: labs, routers
//! that do not answer multicast). The lease, renewal, restart and
//! advertisement logic is [`crate::portmap`]'s, shared with NAT-PMP and
//! PCP; this module is the thin client over `igd-next` it drives:
//!
//! * the mapping is UDP, external port = the one asked for if free, else a
//!   few random ones on error 718; a router that only supports permanent
//!   mappings (error 725) gets lease 0;
//! * the external IP is asked for first: a non-global one makes no mapping;
//! * after a few failures the gateway is searched for again (a restarted
//!   miniupnpd may listen on a new HTTP port);
//! * `GetStatusInfo`'s uptime serves as the epoch (our own SOAP request):
//!   when it goes back, the router restarted and the mapping is made again.
//!
//! [`UpnpDiscovery`] is [`crate::portmap::PortMapDiscovery`] with UPnP only
//! (`--upnp`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use igd_next::aio::tokio::Tokio;
use igd_next::aio::Gateway;
use igd_next::{AddPortError, PortMappingProtocol, SearchOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use crate::addr::is_global;
use crate::portmap::{lease_secs, ClientError, Mapped, Mode, PortMapDiscovery, PortMapOptions, Protocol};
use crate::{BoxFuture, Discovery, DiscoveryContext, DiscoverySink, StopSignal};

/// External ports tried per mapping attempt when the preferred one is taken (718).
pub const MAX_PORT_TRIES: usize = 4;
/// Time limit of one request to the router.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
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

/// UPnP IGD port mapping service ("upnp"): [`PortMapDiscovery`] with UPnP only.
#[derive(Clone, Debug, Default)]
pub struct UpnpDiscovery {
    opts: UpnpOptions,
}

impl UpnpDiscovery {
    pub fn new(opts: UpnpOptions) -> Self {
        UpnpDiscovery { opts }
    }
}

impl From<UpnpOptions> for PortMapOptions {
    fn from(o: UpnpOptions) -> PortMapOptions {
        PortMapOptions {
            mode: Mode::Only(Protocol::Upnp),
            lease: o.lease,
            upnp_url: o.gateway_url,
            search_timeout: o.search_timeout,
            bind_ip: o.bind_ip,
            gateway: None,
        }
    }
}

impl Discovery for UpnpDiscovery {
    fn name(&self) -> &str {
        "upnp"
    }

    fn start(self: Box<Self>, ctx: DiscoveryContext, sink: DiscoverySink, stop: StopSignal) -> BoxFuture<'static, ()> {
        Box::new(PortMapDiscovery::new(self.opts.into())).start(ctx, sink, stop)
    }
}

/// The UPnP client [`crate::portmap`] drives: a gateway, and the external
/// port we hold there.
pub(crate) struct Client {
    gateway: Gateway<Tokio>,
    opts: PortMapOptions,
    internal_port: u16,
    held: Option<u16>,
    /// The external port of an AddPortMapping sent but not answered: the
    /// router may have made it even if the node stopped waiting (a
    /// short-lived node that leaves mid-request), so `unmap` removes it too.
    pending: Option<u16>,
    /// Set once the router said it only does permanent mappings (725).
    permanent_only: bool,
}

impl Client {
    /// Find the gateway (configured URL, else SSDP); `None` if there is none.
    pub(crate) async fn find(opts: &PortMapOptions, internal_port: u16) -> Option<Client> {
        let gateway = find_gateway(opts).await?;
        tracing::info!(gateway = %gateway.addr, "upnp: gateway found");
        Some(Client { gateway, opts: opts.clone(), internal_port, held: None, pending: None, permanent_only: false })
    }

    /// Search the gateway again (after repeated failures).
    pub(crate) async fn rediscover(&mut self) {
        if let Some(g) = find_gateway(&self.opts).await {
            if g.addr != self.gateway.addr || g.control_url != self.gateway.control_url {
                tracing::info!(gateway = %g.addr, "upnp: gateway found again");
            }
            self.gateway = g;
        }
    }

    /// The WAN connection's uptime (`GetStatusInfo`), which the state
    /// machine treats like NAT-PMP's epoch: when it goes back, the router
    /// (or its WAN connection) restarted and the mapping is made again.
    /// `None` when the router does not say.
    pub(crate) async fn epoch(&self) -> Option<u32> {
        match timeout(REQUEST_TIMEOUT, status_uptime(&self.gateway)).await {
            Ok(Ok(up)) => Some(up),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "upnp: GetStatusInfo");
                None
            }
            Err(_) => None,
        }
    }

    /// Delete the mapping we hold.
    pub(crate) async fn unmap(&mut self) -> Result<(), ClientError> {
        if let Some(p) = self.pending.take().filter(|p| Some(*p) != self.held) {
            let _ = timeout(REQUEST_TIMEOUT, self.gateway.remove_port(PortMappingProtocol::UDP, p)).await;
        }
        let Some(port) = self.held.take() else { return Ok(()) };
        match timeout(REQUEST_TIMEOUT, self.gateway.remove_port(PortMappingProtocol::UDP, port)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ClientError::Upnp(format!("DeletePortMapping: {e}"))),
            Err(_) => Err(ClientError::NoAnswer),
        }
    }

    /// Learn the external IP, then add (or renew) the mapping, asking for
    /// external port `want` first.
    pub(crate) async fn map(&mut self, want: u16, lease: Duration, allow_non_global: bool) -> Result<Mapped, ClientError> {
        let ext_ip = match timeout(REQUEST_TIMEOUT, self.gateway.get_external_ip()).await {
            Ok(Ok(ip)) if !ip.is_unspecified() => ip,
            Ok(Ok(_)) => return Err(ClientError::Refused("the router reports no external IP (WAN down?)".into())),
            Ok(Err(e)) => return Err(ClientError::Upnp(format!("GetExternalIPAddress: {e}"))),
            Err(_) => return Err(ClientError::NoAnswer),
        };
        if !is_global(ext_ip) && !allow_non_global {
            // Useless mapping: drop the one we may hold.
            let _ = self.unmap().await;
            return Err(ClientError::Unusable(ext_ip));
        }
        let bind = self.opts.bind_ip.filter(|ip| !ip.is_unspecified());
        let Some(internal_ip) = bind.or_else(|| crate::portmap::gateway::local_ip_towards(self.gateway.addr.ip())) else {
            return Err(ClientError::Upnp(format!("no local IPv4 address towards the gateway {}", self.gateway.addr)));
        };
        let local = SocketAddr::new(internal_ip, self.internal_port);
        let mut lease = if self.permanent_only { Duration::ZERO } else { lease };

        let mut ports = vec![want];
        while ports.len() < MAX_PORT_TRIES {
            ports.push(rand::random_range(20_000u16..65_000u16));
        }
        let mut tries = 0;
        let mut i = 0;
        while i < ports.len() && tries < MAX_PORT_TRIES + 2 {
            tries += 1;
            let port = ports[i];
            self.pending = Some(port);
            let res =
                timeout(REQUEST_TIMEOUT, self.gateway.add_port(PortMappingProtocol::UDP, port, local, lease_secs(lease), DESCRIPTION))
                    .await;
            self.pending = None;
            match res {
                Ok(Ok(())) => {
                    if let Some(old) = self.held.filter(|p| *p != port) {
                        let _ = timeout(REQUEST_TIMEOUT, self.gateway.remove_port(PortMappingProtocol::UDP, old)).await;
                    }
                    self.held = Some(port);
                    let epoch = self.epoch().await;
                    return Ok(Mapped { ext: SocketAddr::new(ext_ip, port), lease, epoch });
                }
                Ok(Err(AddPortError::OnlyPermanentLeasesSupported)) if !lease.is_zero() => {
                    tracing::info!("upnp: router supports only permanent mappings; using lease 0");
                    self.permanent_only = true;
                    lease = Duration::ZERO;
                    // Same port again.
                }
                Ok(Err(AddPortError::PortInUse)) => {
                    tracing::debug!(port, "upnp: external port taken (718), trying another");
                    if self.held == Some(port) {
                        // Someone else holds "our" port now (router restarted).
                        self.held = None;
                    }
                    i += 1;
                }
                Ok(Err(AddPortError::SamePortValuesRequired)) if port != self.internal_port => {
                    // The router wants external == internal port: that one or nothing.
                    ports.truncate(i + 1);
                    ports[i] = self.internal_port;
                }
                Ok(Err(e)) => return Err(ClientError::Upnp(format!("AddPortMapping for port {port}: {e}"))),
                Err(_) => return Err(ClientError::NoAnswer),
            }
        }
        Err(ClientError::Upnp("AddPortMapping: every external port tried is taken".into()))
    }
}

async fn find_gateway(opts: &PortMapOptions) -> Option<Gateway<Tokio>> {
    if let Some(url) = &opts.upnp_url {
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
    so.bind_addr = SocketAddr::new(opts.bind_ip.filter(|ip| ip.is_ipv4()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), 0);
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
    http_request(addr, &format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: partybus\r\n\r\n")).await
}

/// Send `req` (a whole HTTP/1.0 request), read the answer (bounded), return its body if 200.
async fn http_request(addr: SocketAddr, req: &str) -> Result<Vec<u8>, String> {
    let mut s = timeout(REQUEST_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
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

/// `GetStatusInfo` of the WAN connection service: its `NewUptime`, the
/// seconds the connection (in miniupnpd: the daemon) has been up. Our own
/// SOAP request: `igd-next` has no call for it.
async fn status_uptime(gateway: &Gateway<Tokio>) -> Result<u32, String> {
    let st = &gateway.service_type;
    let body = format!(
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:GetStatusInfo xmlns:u=\"{st}\">\
         </u:GetStatusInfo></s:Body></s:Envelope>"
    );
    let path = match parse_http_url(&gateway.control_url) {
        Ok(u) => u.path,
        Err(_) => gateway.control_url.clone(),
    };
    let req = format!(
        "POST {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: partybus\r\n\
         Content-Type: text/xml; charset=\"utf-8\"\r\nSOAPAction: \"{st}#GetStatusInfo\"\r\nContent-Length: {len}\r\n\r\n{body}",
        host = gateway.addr,
        len = body.len(),
    );
    parse_uptime(&http_request(gateway.addr, &req).await?)
}

/// `NewUptime` from a `GetStatusInfo` answer.
fn parse_uptime(body: &[u8]) -> Result<u32, String> {
    let text = String::from_utf8_lossy(body);
    let start = text.find("<NewUptime>").ok_or("no NewUptime in the answer")? + "<NewUptime>".len();
    let end = text[start..].find('<').ok_or("unterminated NewUptime")? + start;
    text[start..end].trim().parse().map_err(|_| format!("NewUptime {:?} is not a number", &text[start..end]))
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
