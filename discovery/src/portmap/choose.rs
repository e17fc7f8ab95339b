//! Which protocol client the port-mapping service drives: the configured
//! one, or in [`Mode::Auto`] the preferred one that answers a probe round
//! (all three at once); and the client itself, one enum over the three.

use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::DiscoveryContext;

use super::{gateway, natpmp, pcp, udp, ClientError, Mapped, Mode, PortMapOptions, Protocol, PROBE_RETRIES};

/// One protocol client, as the driver uses it.
pub(super) enum Client {
    Pcp(pcp::Client),
    NatPmp(natpmp::Client),
    Upnp(Box<crate::upnp::Client>),
}

impl Client {
    pub(super) fn protocol(&self) -> Protocol {
        match self {
            Client::Pcp(_) => Protocol::Pcp,
            Client::NatPmp(_) => Protocol::NatPmp,
            Client::Upnp(_) => Protocol::Upnp,
        }
    }

    pub(super) async fn map(&mut self, want: u16, lease: Duration, allow_non_global: bool) -> Result<Mapped, ClientError> {
        match self {
            Client::Pcp(c) => c.map(want, lease, allow_non_global).await,
            Client::NatPmp(c) => c.map(want, lease, allow_non_global).await,
            Client::Upnp(c) => c.map(want, lease, allow_non_global).await,
        }
    }

    pub(super) async fn unmap(&mut self) -> Result<(), ClientError> {
        match self {
            Client::Pcp(c) => c.unmap().await,
            Client::NatPmp(c) => c.unmap().await,
            Client::Upnp(c) => c.unmap().await,
        }
    }

    pub(super) async fn epoch(&self) -> Option<u32> {
        match self {
            Client::Pcp(c) => c.epoch().await,
            Client::NatPmp(c) => c.epoch().await,
            Client::Upnp(c) => c.epoch().await,
        }
    }

    pub(super) async fn rediscover(&mut self) {
        if let Client::Upnp(c) = self {
            c.rediscover().await;
        }
    }
}

/// After repeated failures: UPnP searches its gateway again; in
/// [`Mode::Auto`] all three are probed again, and another protocol that
/// answers (the router was reconfigured or replaced) is returned.
pub(super) async fn rediscover(opts: &PortMapOptions, port: u16, current: Protocol, client: &mut Client) -> Option<Client> {
    if opts.mode == Mode::Auto {
        match probe(opts, port).await {
            Some(c) if c.protocol() != current => return Some(c),
            _ => {}
        }
    }
    client.rediscover().await;
    None
}

/// The client of the configured protocol, or in [`Mode::Auto`] of the
/// preferred one that answers a probe (bounded rounds, see the module docs).
pub(super) async fn establish(opts: &PortMapOptions, ctx: &DiscoveryContext) -> Option<Client> {
    match opts.mode {
        Mode::Only(Protocol::Upnp) => match crate::upnp::Client::find(opts, ctx.port).await {
            Some(c) => Some(Client::Upnp(Box::new(c))),
            None => {
                tracing::info!("upnp: no UPnP gateway found; port mapping disabled");
                None
            }
        },
        Mode::Only(p) => {
            let (local, gw) = udp_endpoints(opts)?;
            let made = match p {
                Protocol::Pcp => pcp::Client::new(local, gw, ctx.port).await.map(Client::Pcp),
                _ => natpmp::Client::new(local, gw, ctx.port).await.map(Client::NatPmp),
            };
            match made {
                Ok(c) => {
                    tracing::info!(gateway = %gw, "{p}: mapping through the gateway");
                    Some(c)
                }
                Err(e) => {
                    tracing::warn!(gateway = %gw, error = %e, "{p}: cannot talk to the gateway; port mapping disabled");
                    None
                }
            }
        }
        Mode::Auto => {
            let started = Instant::now();
            for round in 0..=PROBE_RETRIES.len() {
                if round > 0 {
                    tokio::time::sleep(PROBE_RETRIES[round - 1]).await;
                }
                if let Some(c) = probe(opts, ctx.port).await {
                    tracing::info!(
                        protocol = %c.protocol(),
                        after_ms = started.elapsed().as_millis() as u64,
                        "port mapping: {} answered; using it",
                        c.protocol()
                    );
                    return Some(c);
                }
                if round == 0 {
                    tracing::info!(
                        "port mapping: no gateway answered PCP, NAT-PMP or UPnP; probing again after {:?}, then giving up",
                        PROBE_RETRIES
                    );
                } else {
                    tracing::debug!(round, "port mapping: still no gateway answered");
                }
            }
            None
        }
    }
}

/// Local address and NAT-PMP/PCP server: configured, or the default route's router.
fn udp_endpoints(opts: &PortMapOptions) -> Option<(IpAddr, IpAddr)> {
    let Some(gw) = opts.gateway.or_else(|| gateway::default_gateway_v4().map(IpAddr::V4)) else {
        tracing::info!("port mapping: no default route, so no router to ask (name one with --port-mapping-gateway)");
        return None;
    };
    let Some(local) = opts.bind_ip.filter(|ip| !ip.is_unspecified()).or_else(|| gateway::local_ip_towards(gw)) else {
        tracing::info!(gateway = %gw, "port mapping: no local address towards the gateway");
        return None;
    };
    Some((local, gw))
}

/// One probe round of [`Mode::Auto`]: all three at once, the preferred one that answers.
pub(super) async fn probe(opts: &PortMapOptions, port: u16) -> Option<Client> {
    let endpoints = udp_endpoints(opts);
    let pcp_probe = async {
        let (local, gw) = endpoints?;
        let c = pcp::Client::new(local, gw, port).await.ok()?;
        match c.announce(udp::TRIES).await {
            Ok(_) => Some(Client::Pcp(c)),
            Err(e) => {
                tracing::debug!(error = %e, "port mapping: PCP probe");
                None
            }
        }
    };
    let pmp_probe = async {
        let (local, gw) = endpoints?;
        let c = natpmp::Client::new(local, gw, port).await.ok()?;
        match c.external(udp::TRIES).await {
            Ok(_) => Some(Client::NatPmp(c)),
            Err(e) => {
                tracing::debug!(error = %e, "port mapping: NAT-PMP probe");
                None
            }
        }
    };
    let upnp_probe = async { crate::upnp::Client::find(opts, port).await.map(|c| Client::Upnp(Box::new(c))) };
    tokio::pin!(pcp_probe, pmp_probe, upnp_probe);
    // Slots in order of preference: None = still probing, Some(None) = no answer.
    let mut slots: [Option<Option<Client>>; 3] = [None, None, None];
    loop {
        // The first answered slot with only failures before it wins.
        let mut winner = None;
        for (i, slot) in slots.iter().enumerate() {
            match slot {
                Some(Some(_)) => {
                    winner = Some(i);
                    break;
                }
                Some(None) => continue,
                None => break,
            }
        }
        if let Some(i) = winner {
            return slots[i].take().flatten();
        }
        if slots.iter().all(|s| matches!(s, Some(None))) {
            return None;
        }
        tokio::select! {
            c = &mut pcp_probe, if slots[0].is_none() => slots[0] = Some(c),
            c = &mut pmp_probe, if slots[1].is_none() => slots[1] = Some(c),
            c = &mut upnp_probe, if slots[2].is_none() => slots[2] = Some(c),
        }
    }
}
