//! miniupnpd on a lab router: its configuration, start (bounded wait until
//! it serves), kill and restart (its mappings gone), which protocols it
//! serves, and the mappings it holds.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{parse_dnat_rules, serve, MapProto, NatLab, Site, ROUTER_TABLE, STUN_IPS, STUN_PORTS, UPNP_CHAINS, UPNP_HTTP_PORT};

impl NatLab<'_> {
    /// miniupnpd's configuration for `site`.
    pub fn miniupnpd_conf(site: &Site) -> String {
        let n = &site.router.short[1..];
        let yes = |b: bool| if b { "yes" } else { "no" };
        let (upnp, natpmp) = serve::switches(*site.serve.lock().unwrap());
        let ipv6 = match &*site.lan_ip6.lock().unwrap() {
            Some(ip) => format!("ipv6_listening_ip={ip}\n"),
            None => String::new(),
        };
        format!(
            "# partybus NAT lab, router {r}\n\
             ext_ifname=wan\n\
             listening_ip=lan\n\
             http_port={UPNP_HTTP_PORT}\n\
             enable_upnp={upnp}\n\
             enable_natpmp={natpmp}\n\
             secure_mode=yes\n\
             system_uptime=no\n\
             min_lifetime=2\n\
             uuid=3f1c0e52-9a43-4d2e-8b7a-00000000000{n}\n\
             ext_perform_stun=yes\n\
             ext_stun_host={stun}\n\
             ext_stun_port={stun_port}\n\
             upnp_table_name={ROUTER_TABLE}\n\
             upnp_nat_table_name={ROUTER_TABLE}\n\
             upnp_forward_chain={f}\n\
             upnp_nat_chain={p}\n\
             upnp_nat_postrouting_chain={q}\n\
             allow 1024-65535 {lan} 1024-65535\n\
             deny 0-65535 0.0.0.0/0 0-65535\n\
             {ipv6}",
            r = site.router.short,
            stun = STUN_IPS[0],
            stun_port = STUN_PORTS[0],
            f = UPNP_CHAINS[0],
            p = UPNP_CHAINS[1],
            q = UPNP_CHAINS[2],
            lan = site.lan_cidr,
            upnp = yes(upnp),
            natpmp = yes(natpmp),
        )
    }

    /// Serve only `only` (None: all three protocols) from miniupnpd's next
    /// start on; NAT-PMP/PCP filtering applies at once.
    pub fn serve_only(&self, site: &Site, only: Option<MapProto>) -> Result<()> {
        *site.serve.lock().unwrap() = only;
        let out = self.lab.exec_unchecked(&site.router, ["nft", "delete", "table", "inet", serve::FILTER_TABLE])?;
        if !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("No such file") {
            bail!("nft delete table inet {} in {}: {}", serve::FILTER_TABLE, site.router, String::from_utf8_lossy(&out.stderr));
        }
        match serve::filter_ruleset(only) {
            Some(rules) => self.lab.nft(&site.router, &rules),
            None => Ok(()),
        }
    }

    /// Start miniupnpd on `site`'s router and wait (bounded) until it serves
    /// (STUN self-test passed, HTTP and NAT-PMP listening).
    pub fn start_miniupnpd(&self, site: &Site) -> Result<()> {
        let mut guard = site.miniupnpd.lock().unwrap();
        if guard.is_some() {
            bail!("miniupnpd already runs on {}", site.router);
        }
        let k = {
            let mut s = site.upnp_starts.lock().unwrap();
            *s += 1;
            *s
        };
        let dir = self.lab.dir();
        let conf = dir.join(format!("{}-miniupnpd.conf", site.router.short));
        let pid = dir.join(format!("{}-miniupnpd-{k}.pid", site.router.short));
        std::fs::write(&conf, Self::miniupnpd_conf(site))?;
        let mut p =
            self.lab.spawn(&site.router, "miniupnpd", ["-d".as_ref(), "-f".as_ref(), conf.as_os_str(), "-P".as_ref(), pid.as_os_str()])?;
        // STUN takes up to 3 s per round; give it a few. The last line of
        // its start: NAT-PMP/PCP listening, or (without them) HTTP.
        let (upnp, natpmp) = serve::switches(*site.serve.lock().unwrap());
        let ready = if natpmp { "Listening for NAT-PMP/PCP traffic" } else { "HTTP listening on port" };
        let line = p
            .wait_for_stderr(|l| l.contains("Port forwarding is impossible") || l.contains(ready), Duration::from_secs(20))
            .with_context(|| format!("miniupnpd on {} did not start", site.router))?;
        if line.contains("impossible") {
            bail!("miniupnpd on {}: {line}\n{}", site.router, p.stderr_tail(20));
        }
        let text = p.stderr_text();
        if !text.contains("Port forwarding is now enabled") {
            bail!("miniupnpd on {} did not enable port forwarding:\n{}", site.router, p.stderr_tail(30));
        }
        if upnp {
            self.wait_http(site)?;
        }
        *guard = Some(p);
        Ok(())
    }

    /// Wait (bounded) until miniupnpd's HTTP port answers on the LAN.
    fn wait_http(&self, site: &Site) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let addr = SocketAddr::V4(SocketAddrV4::new(site.lan_ip, UPNP_HTTP_PORT));
            let ok = self
                .lab
                .exec_unchecked(&site.host, ["bash", "-c", &format!("exec 3<>/dev/tcp/{}/{}", addr.ip(), addr.port())])
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("miniupnpd on {}: HTTP port {addr} does not answer", site.router);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kill miniupnpd (SIGKILL: like a crash or power loss, it cleans up
    /// nothing) and flush its chains, so every mapping is gone.
    pub fn stop_miniupnpd(&self, site: &Site) -> Result<()> {
        if let Some(mut p) = site.miniupnpd.lock().unwrap().take() {
            p.kill();
        }
        let mut rules = String::new();
        for c in UPNP_CHAINS {
            rules.push_str(&format!("flush chain inet {ROUTER_TABLE} {c}\n"));
        }
        self.lab.nft(&site.router, &rules)
    }

    /// [`NatLab::stop_miniupnpd`], then [`NatLab::start_miniupnpd`].
    pub fn restart_miniupnpd(&self, site: &Site) -> Result<()> {
        self.stop_miniupnpd(site)?;
        self.start_miniupnpd(site)
    }

    /// The log (stderr) of the running miniupnpd of `site`.
    pub fn miniupnpd_log(&self, site: &Site) -> String {
        site.miniupnpd.lock().unwrap().as_ref().map(|p| p.stderr_text()).unwrap_or_default()
    }

    /// The UDP port mappings miniupnpd holds now: (external port, internal address),
    /// read from its DNAT chain.
    pub fn udp_mappings(&self, site: &Site) -> Result<Vec<(u16, SocketAddr)>> {
        let out = self.lab.exec(&site.router, ["nft", "list", "chain", "inet", ROUTER_TABLE, UPNP_CHAINS[1]])?;
        Ok(parse_dnat_rules(&String::from_utf8_lossy(&out.stdout)))
    }

    /// Wait (bounded) until `site` maps UDP to `internal`; returns the external port.
    pub fn wait_mapping(&self, site: &Site, internal: SocketAddr, timeout: Duration) -> Result<u16> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.udp_mappings(site)?;
            if let Some((ext, _)) = m.iter().find(|(_, i)| *i == internal) {
                return Ok(*ext);
            }
            if Instant::now() >= deadline {
                bail!("{}: no UDP mapping to {internal} within {timeout:?}; mappings: {m:?}", site.router);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
