//! Port mapping: ask the LAN's router to forward a UDP port to the node's
//! QUIC port, with PCP (RFC 6887), NAT-PMP (RFC 6886) or UPnP IGD, and
//! report the public address as [`DiscoverySink::external`] with the
//! protocol's name as the source (`"pcp"`, `"natpmp"`, `"upnp"`).
//!
//! * One state machine for all three ([`machine::MappingMachine`], sans
//!   I/O): a finite lease ([`PortMapOptions::lease`], default 1 h) renewed
//!   at half of what the router granted; on failure the address is
//!   withdrawn and the mapping retried with exponential backoff; a router
//!   restart (NAT-PMP/PCP epoch going backwards; for UPnP the uptime in
//!   `GetStatusInfo`, which miniupnpd and most IGDs reset with the daemon or
//!   the WAN connection; checked at each answer and every
//!   [`machine::EPOCH_CHECK`] between renewals) makes the mapping again at
//!   once; the mapping is deleted on stop.
//! * The external port asked for is our own port number, then the one we
//!   hold; when it is taken, NAT-PMP and PCP routers assign another one
//!   themselves and UPnP tries a few random ones (error 718).
//! * An external IP that is not global (a second NAT, carrier-grade NAT)
//!   makes the mapping useless: a warning, no mapping, no advertisement
//!   (unless non-global addresses are allowed, for labs and private WANs).
//! * The protocol clients are thin: [`natpmp`] and [`pcp`] (our own codecs;
//!   why, see [`natpmp`]) over one UDP exchange to the gateway's port 5351,
//!   and [`crate::upnp`] over `igd-next`. NAT-PMP and PCP talk to
//!   [`PortMapOptions::gateway`], by default the router of the default route.
//!
//! **Which protocol** ([`Mode`]): one named, or [`Mode::Auto`], which probes
//! all three *at the same time* (PCP ANNOUNCE, NAT-PMP external address
//! request, UPnP SSDP search or description fetch) and keeps the most
//! preferred one that answered: PCP, then NAT-PMP, then UPnP. Together
//! rather than one after the other, so a router that speaks only UPnP costs
//! no PCP and NAT-PMP timeouts first (a probe round takes at most the SSDP
//! search time, 3 s, and ~0.1 s when PCP answers); in that order because
//! PCP is NAT-PMP's successor (it names the external address in the mapping
//! answer, carries IPv6, and a NAT-PMP-only router says so at once), and
//! both are one small UDP exchange whose epoch reveals router restarts,
//! where UPnP is several HTTP + SOAP requests. When nothing answers:
//! one info line, then [`PROBE_RETRIES`] more rounds with growing pauses
//! (debug lines), then the service idles until stopped: no retry storm.
//! When the chosen protocol keeps failing (every
//! [`machine::REDISCOVER_AFTER`] failures) all three are probed again, and
//! another one that answers takes over (a reconfigured or replaced router).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::time::{sleep_until, timeout, Instant};

use crate::{BoxFuture, Discovery, DiscoveryContext, DiscoverySink, StopSignal};

mod choose;
pub mod gateway;
pub mod machine;
pub mod natpmp;
pub mod pcp;
mod udp;

use choose::{establish, rediscover};
use machine::{Action, Attempt, Effect, MappingMachine};

/// Pauses before the probe rounds after the first one in [`Mode::Auto`]
/// when no protocol answered; after the last, the service gives up.
pub const PROBE_RETRIES: [Duration; 3] = [Duration::from_secs(30), Duration::from_secs(120), Duration::from_secs(600)];
/// Time limit of the mapping removal on stop.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(2);

/// A port-mapping protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Pcp,
    NatPmp,
    Upnp,
}

impl Protocol {
    /// The name used as the discovery source and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Pcp => "pcp",
            Protocol::NatPmp => "natpmp",
            Protocol::Upnp => "upnp",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which protocol(s) to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Probe all three, keep the preferred one that answers (see the module docs).
    #[default]
    Auto,
    Only(Protocol),
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        Ok(match s {
            "auto" => Mode::Auto,
            "upnp" => Mode::Only(Protocol::Upnp),
            "natpmp" | "nat-pmp" => Mode::Only(Protocol::NatPmp),
            "pcp" => Mode::Only(Protocol::Pcp),
            other => return Err(format!("{other:?} is not a port-mapping protocol: use auto, upnp, natpmp, pcp or off")),
        })
    }
}

/// Options of [`PortMapDiscovery`].
#[derive(Clone, Debug)]
pub struct PortMapOptions {
    pub mode: Mode,
    /// Lease asked for (default 1 h); renewed at half of what the router
    /// grants. `Duration::ZERO` asks UPnP for a permanent mapping (NAT-PMP
    /// and PCP have none: they ask for [`NO_PERMANENT_LIFETIME`]); still
    /// deleted on stop.
    pub lease: Duration,
    /// The NAT-PMP/PCP server. Default: the router of the default route.
    pub gateway: Option<IpAddr>,
    /// `http://ROUTER:PORT/rootDesc.xml`: use this UPnP gateway, no SSDP.
    pub upnp_url: Option<String>,
    /// How long the SSDP gateway search may take (default 3 s).
    pub search_timeout: Duration,
    /// Local address to map to (the LAN address facing the gateway).
    /// Default: the address the OS routes to the gateway from.
    pub bind_ip: Option<IpAddr>,
}

impl Default for PortMapOptions {
    fn default() -> Self {
        PortMapOptions {
            mode: Mode::Auto,
            lease: Duration::from_secs(60 * 60),
            gateway: None,
            upnp_url: None,
            search_timeout: Duration::from_secs(3),
            bind_ip: None,
        }
    }
}

/// The port-mapping service ("portmap"); see the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct PortMapDiscovery {
    opts: PortMapOptions,
}

impl PortMapDiscovery {
    pub fn new(opts: PortMapOptions) -> Self {
        PortMapDiscovery { opts }
    }
}

impl Discovery for PortMapDiscovery {
    fn name(&self) -> &str {
        match self.opts.mode {
            Mode::Auto => "portmap",
            Mode::Only(p) => p.name(),
        }
    }

    fn start(self: Box<Self>, ctx: DiscoveryContext, sink: DiscoverySink, stop: StopSignal) -> BoxFuture<'static, ()> {
        Box::pin(run(self.opts, ctx, sink, stop))
    }
}

/// Why a protocol client's request did not give a mapping.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no answer from the gateway")]
    NoAnswer,
    #[error("the gateway does not speak this protocol: {0}")]
    Unsupported(String),
    #[error("the gateway refused: {0}")]
    Refused(String),
    #[error("malformed answer: {0}")]
    Malformed(String),
    #[error("the external IP {0} is not a public address")]
    Unusable(IpAddr),
    #[error("socket: {0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Upnp(String),
}

/// A mapping the router granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapped {
    pub ext: SocketAddr,
    /// Granted lifetime (`ZERO`: permanent, UPnP only).
    pub lease: Duration,
    /// The server's epoch (NAT-PMP, PCP).
    pub epoch: Option<u32>,
}

/// Lease in whole seconds (0 = permanent), at most 1 week.
pub(crate) fn lease_secs(lease: Duration) -> u32 {
    if lease.is_zero() {
        0
    } else {
        lease.as_secs().clamp(1, 7 * 24 * 3600) as u32
    }
}

/// The lifetime NAT-PMP and PCP ask for when a permanent mapping is wanted
/// (they have none): RFC 6886's recommended 2 hours.
pub const NO_PERMANENT_LIFETIME: u32 = 7200;

/// The lifetime field of a NAT-PMP/PCP request for `lease` (never 0: that deletes).
pub(crate) fn udp_lifetime(lease: Duration) -> u32 {
    if lease.is_zero() {
        NO_PERMANENT_LIFETIME
    } else {
        lease_secs(lease)
    }
}

async fn run(opts: PortMapOptions, ctx: DiscoveryContext, sink: DiscoverySink, mut stop: StopSignal) {
    let found = tokio::select! {
        c = establish(&opts, &ctx) => c,
        _ = stop.stopped() => return,
    };
    let Some(mut client) = found else {
        stop.stopped().await;
        return;
    };
    let mut p = client.protocol();
    let mut machine = MappingMachine::new(std::time::Instant::now());
    let mut want = ctx.port;
    let mut held = false;
    loop {
        let (at, action) = machine.next();
        tokio::select! {
            _ = sleep_until(Instant::from_std(at)) => {}
            _ = stop.stopped() => break,
        }
        let effects = match action {
            Action::Map => {
                let res = tokio::select! {
                    r = client.map(want, opts.lease, ctx.allow_non_global) => r,
                    _ = stop.stopped() => {
                        // The router may have made the mapping we stopped
                        // waiting for: remove it on the way out.
                        held = true;
                        break;
                    }
                };
                let attempt = match res {
                    Ok(m) => {
                        held = true;
                        want = m.ext.port();
                        tracing::debug!(external = %m.ext, lease = ?m.lease, epoch = ?m.epoch, "{p}: mapping granted");
                        Attempt::Mapped { ext: m.ext, lease: m.lease, epoch: m.epoch }
                    }
                    Err(ClientError::Unusable(ip)) => {
                        held = false;
                        Attempt::Unusable { ext_ip: ip }
                    }
                    Err(e) => {
                        if machine.failures() == 0 {
                            // Once per run of failures at info; the retries (backoff) at debug.
                            tracing::info!(error = %e, "{p}: mapping failed; retrying with backoff (5 s, doubling to 10 min)");
                        } else {
                            tracing::debug!(error = %e, failures = machine.failures() + 1, "{p}: mapping attempt failed");
                        }
                        Attempt::Failed
                    }
                };
                machine.on_attempt(std::time::Instant::now(), attempt)
            }
            Action::CheckEpoch => {
                let e = tokio::select! {
                    e = client.epoch() => e,
                    _ = stop.stopped() => break,
                };
                machine.on_epoch(std::time::Instant::now(), e)
            }
        };
        for e in effects {
            match e {
                Effect::External(a) => {
                    tracing::info!(external = %a, "{p}: port mapped");
                    sink.external(a, p.name());
                }
                Effect::ExternalLost(a) => {
                    tracing::info!(external = %a, "{p}: mapping lost");
                    sink.external_lost(a, p.name());
                }
                Effect::WarnUnusable(ip) => tracing::warn!(
                    external_ip = %ip,
                    "{p}: the router's external IP is not a public address (a second NAT?): \
                     a port mapping would be useless, not advertising it"
                ),
                Effect::RouterRestarted { before, now } => {
                    tracing::info!(epoch_before = before, epoch_now = now, "{p}: the router restarted (its epoch went back); mapping again")
                }
                Effect::Rediscover => {
                    let other = tokio::select! {
                        o = rediscover(&opts, ctx.port, p, &mut client) => o,
                        _ = stop.stopped() => break,
                    };
                    if let Some(new) = other {
                        tracing::info!("port mapping: {p} fails, {} answers now: switching to it", new.protocol());
                        if held {
                            let _ = timeout(REMOVE_TIMEOUT, client.unmap()).await;
                        }
                        client = new;
                        p = client.protocol();
                        machine = MappingMachine::new(std::time::Instant::now());
                        (want, held) = (ctx.port, false);
                    }
                }
            }
        }
    }

    if held {
        match timeout(REMOVE_TIMEOUT, client.unmap()).await {
            Ok(Ok(())) => tracing::info!(port = want, "{p}: mapping removed"),
            Ok(Err(e)) => tracing::debug!(error = %e, "{p}: removing the mapping failed"),
            Err(_) => tracing::debug!("{p}: removing the mapping timed out"),
        }
    }
    if let Some(a) = machine.advertised() {
        sink.external_lost(a, p.name());
    }
}

#[cfg(test)]
mod tests;
