//! A NAT lab on top of [`crate::lab`]: an "internet" with public hosts, two
//! home routers doing NAT (nftables masquerade) with a host behind each, and
//! optionally miniupnpd on the routers (UPnP IGD + NAT-PMP/PCP).
//!
//! ```text
//!                 "internet" namespace `inet`, bridge inet0
//!                 203.0.113.1/24 + 198.51.100.1/24, routes between the two,
//!                 drops private destinations, no default route: nothing
//!                 leaves the lab
//!      +--------------+---------------+------------------+-----------------+
//!   vps1 .10       stun .3 + .4       r1 wan              r2 wan
//!   203.0.113.10   203.0.113.3/.4     203.0.113.21        198.51.100.22
//!                  (STUN 3478/3479)   | NAT, miniupnpd     | NAT, miniupnpd
//!                                     r1 lan 198.18.1.1    r2 lan 198.18.2.1
//!                                     h1 198.18.1.10       h2 198.18.2.10
//! ```
//!
//! * The routers masquerade LAN traffic leaving `wan`: plain `masquerade` is
//!   a port-restricted cone NAT (endpoint-independent mapping, port
//!   preservation), [`RouterOptions::symmetric`] uses `masquerade
//!   fully-random` (a symmetric NAT). No hairpinning.
//! * Unsolicited WAN packets are dropped (never rejected: an ICMP answer
//!   would create conntrack state that spoils a later hole punch).
//! * [`RouterOptions::loss_ppm`] drops that many packets per million in each
//!   direction on the WAN link (`numgen random`; no `tc netem` here).
//! * [`RouterOptions::delay_ms`] delays every frame on the WAN link by that
//!   much in each direction: the router's `wan` is then a TAP device joined
//!   to a TAP port of the internet bridge by the user-space link emulator
//!   `tools/linkemu.py` (python3), which runs while the lab does.
//! * [`NatLab::block_udp`] drops UDP between a router and one address (a
//!   direct path cut while the rest of the internet stays reachable);
//!   [`NatLab::unblock_udp`] lifts it.
//! * With [`RouterOptions::upnp`], miniupnpd runs in the router namespace with
//!   its own chains in the router's `inet pbnat` table (`upnp_forward`,
//!   `upnp_prerouting`, `upnp_postrouting`), HTTP on a fixed port
//!   ([`UPNP_HTTP_PORT`]), `secure_mode`, mappings allowed for the LAN only.
//!   Its WAN addresses are "reserved" (documentation ranges), so it must run
//!   its STUN self-test against the lab STUN server to enable forwarding; the
//!   router accepts those answers in its input chain.
//!
//! * [`RouterOptions::serve`] / [`NatLab::serve_only`]: miniupnpd serves only
//!   one of UPnP, NAT-PMP and PCP (`nat/serve.rs`); `nat/miniupnpd.rs` starts,
//!   kills and restarts it and reads its mappings.
//! * [`NatLab::add_ipv6`] (`nat/ipv6.rs`): IPv6 from 2001:db8::/32 on the
//!   internet, vps1, r1 and h1 (no NAT66), and an IPv6-only host.
//!
//! Everything is removed with the [`Lab`]; the miniupnpd and STUN processes
//! are killed when the [`NatLab`] is dropped (drop it before the lab, e.g. by
//! declaring it after the lab).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use crate::lab::{require_program, which, Bridge, Lab, LabProcess, Ns};

mod ipv6;
mod miniupnpd;
mod serve;
pub use ipv6::{H1_IP6, R1_LAN6, V6H_IP6, VPS1_IP6};
pub use serve::MapProto;

/// Public address of the VPS host.
pub const VPS1_IP: &str = "203.0.113.10";
/// The two addresses of the STUN host.
pub const STUN_IPS: [&str; 2] = ["203.0.113.3", "203.0.113.4"];
/// STUN ports (primary, alternate).
pub const STUN_PORTS: [u16; 2] = [3478, 3479];
/// miniupnpd's HTTP port on the routers (fixed, so a restarted daemon is
/// found at the same URL).
pub const UPNP_HTTP_PORT: u16 = 5000;
/// The nftables table (family inet) of a router.
pub const ROUTER_TABLE: &str = "pbnat";
/// miniupnpd's chains in [`ROUTER_TABLE`].
pub const UPNP_CHAINS: [&str; 3] = ["upnp_forward", "upnp_prerouting", "upnp_postrouting"];

/// How one home router behaves.
#[derive(Clone, Debug, Default)]
pub struct RouterOptions {
    /// `masquerade fully-random`: a new external port per destination (symmetric NAT).
    pub symmetric: bool,
    /// Packets dropped per million, in each direction of the WAN link.
    pub loss_ppm: u32,
    /// Run miniupnpd (UPnP IGD, NAT-PMP/PCP) on the router.
    pub upnp: bool,
    /// With `upnp`: serve only this port-mapping protocol (None: all three);
    /// [`NatLab::serve_only`] changes it for the next start.
    pub serve: Option<MapProto>,
    /// One-way delay added on the WAN link, each direction (0: a plain veth,
    /// no emulator). Needs python3.
    pub delay_ms: u32,
}

/// Options of the whole NAT lab.
#[derive(Clone, Debug, Default)]
pub struct NatOptions {
    pub r1: RouterOptions,
    pub r2: RouterOptions,
    /// The `stun-server` binary (needed when a router runs miniupnpd), e.g.
    /// `env!("CARGO_BIN_EXE_stun-server")` in a test of this crate.
    pub stun_server: Option<PathBuf>,
}

/// A home: router, LAN, host.
pub struct Site {
    /// "r1" / "r2".
    pub router: Ns,
    /// "h1" / "h2".
    pub host: Ns,
    /// The router's public (WAN) address.
    pub wan_ip: Ipv4Addr,
    /// The router's LAN address (the host's default gateway).
    pub lan_ip: Ipv4Addr,
    /// The host's LAN address.
    pub host_ip: Ipv4Addr,
    /// The LAN, e.g. `198.18.1.0/24`.
    pub lan_cidr: String,
    pub opts: RouterOptions,
    miniupnpd: Mutex<Option<LabProcess>>,
    /// The link emulator of a delayed WAN link.
    linkemu: Mutex<Option<LabProcess>>,
    /// Starts of miniupnpd so far (config and pid file names).
    upnp_starts: Mutex<u32>,
    /// What miniupnpd serves from its next start.
    serve: Mutex<Option<MapProto>>,
    /// The LAN's IPv6 address once [`NatLab::add_ipv6`] gave it one
    /// (miniupnpd's `ipv6_listening_ip` from its next start).
    lan_ip6: Mutex<Option<String>>,
}

impl Site {
    /// `http://LAN_IP:5000/rootDesc.xml`: miniupnpd's description URL.
    pub fn upnp_url(&self) -> String {
        format!("http://{}:{UPNP_HTTP_PORT}/rootDesc.xml", self.lan_ip)
    }
}

/// The built NAT lab; see the module documentation.
pub struct NatLab<'a> {
    lab: &'a Lab,
    /// Dropped (killed) before the namespaces go.
    stun: Option<LabProcess>,
    /// The internet router namespace (holds bridge `inet0`).
    pub inet: Ns,
    pub inet_bridge: Bridge,
    pub vps1: Ns,
    pub stun_host: Ns,
    pub r1: Site,
    pub r2: Site,
}

/// Fail the calling lab test ([`crate::lab::unavailable`]) unless the
/// programs the NAT lab needs beyond the lab's own `ip` and `nft` are
/// installed. `upnp`: miniupnpd too.
#[track_caller]
pub fn require_prereqs(upnp: bool) {
    if upnp {
        require_program("miniupnpd", "miniupnpd and miniupnpd-nftables");
    }
}

/// [`require_prereqs`] for a lab whose routers use `opts` (python3 for a
/// delayed WAN link, miniupnpd for UPnP).
#[track_caller]
pub fn require_prereqs_for(opts: &NatOptions) {
    require_prereqs(opts.r1.upnp || opts.r2.upnp);
    if opts.r1.delay_ms > 0 || opts.r2.delay_ms > 0 {
        require_program("python3", "python3");
    }
}

/// Environment variable: another copy of the link emulator to use.
pub const LINKEMU_ENV: &str = "PARTYBUS_LINKEMU";

/// The user-space link emulator (`integration/tools/linkemu.py`, a copy of
/// the shared lab tool; [`LINKEMU_ENV`] overrides it).
pub fn linkemu_script() -> PathBuf {
    match std::env::var_os(LINKEMU_ENV) {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tools").join("linkemu.py"),
    }
}

impl<'a> NatLab<'a> {
    /// Build the topology, load the router rulesets, start the STUN server
    /// and miniupnpd where asked for, and check basic reachability.
    pub fn build(lab: &'a Lab, opts: NatOptions) -> Result<NatLab<'a>> {
        let inet = lab.router("inet")?;
        let inet_bridge = lab.bridge_in(&inet, "inet0")?;
        lab.addr(&inet, "inet0", "203.0.113.1/24")?;
        lab.addr(&inet, "inet0", "198.51.100.1/24")?;
        // Like the real internet: private destinations are dropped silently
        // (no "net unreachable" answers), before routing.
        lab.nft(
            &inet,
            "table inet internet {\n  chain pre {\n    type filter hook prerouting priority -150; policy accept;\n    \
             ip daddr { 198.18.0.0/15, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 } drop\n  }\n}\n",
        )?;

        let vps1 = lab.namespace("vps1")?;
        lab.attach(&vps1, "eth0", &inet_bridge, Some(&format!("{VPS1_IP}/24")))?;
        lab.route(&vps1, "198.51.100.0/24", "203.0.113.1")?;

        let stun_host = lab.namespace("stun")?;
        lab.attach(&stun_host, "eth0", &inet_bridge, Some(&format!("{}/24", STUN_IPS[0])))?;
        lab.addr(&stun_host, "eth0", &format!("{}/24", STUN_IPS[1]))?;
        lab.route(&stun_host, "198.51.100.0/24", "203.0.113.1")?;

        let r1 = Self::site(lab, &inet_bridge, 1, "203.0.113.21", "203.0.113.1", opts.r1.clone())?;
        let r2 = Self::site(lab, &inet_bridge, 2, "198.51.100.22", "198.51.100.1", opts.r2.clone())?;

        let mut nat = NatLab { lab, stun: None, inet, inet_bridge, vps1, stun_host, r1, r2 };
        if nat.r1.opts.upnp || nat.r2.opts.upnp {
            let bin = opts.stun_server.clone().ok_or_else(|| anyhow!("NatOptions::stun_server is needed for miniupnpd"))?;
            nat.start_stun(&bin)?;
        }
        for site in [&nat.r1, &nat.r2] {
            if site.opts.upnp {
                nat.start_miniupnpd(site)?;
            }
        }
        Ok(nat)
    }

    pub fn lab(&self) -> &'a Lab {
        self.lab
    }

    /// Both sites.
    pub fn sites(&self) -> [&Site; 2] {
        [&self.r1, &self.r2]
    }

    fn site(lab: &Lab, inet: &Bridge, n: u8, wan: &str, gw: &str, opts: RouterOptions) -> Result<Site> {
        let router = lab.router(&format!("r{n}"))?;
        let linkemu = wan_link(lab, inet, &router, n, &format!("{wan}/24"), opts.delay_ms)?;
        lab.route(&router, "default", gw)?;
        let host = lab.namespace(&format!("h{n}"))?;
        lab.link(&router, "lan", &host, "eth0")?;
        let lan_ip: Ipv4Addr = format!("198.18.{n}.1").parse()?;
        let host_ip: Ipv4Addr = format!("198.18.{n}.10").parse()?;
        lab.addr(&router, "lan", &format!("{lan_ip}/24"))?;
        lab.addr(&host, "eth0", &format!("{host_ip}/24"))?;
        lab.route(&host, "default", &lan_ip.to_string())?;
        let site = Site {
            router,
            host,
            wan_ip: wan.parse()?,
            lan_ip,
            host_ip,
            lan_cidr: format!("198.18.{n}.0/24"),
            opts: opts.clone(),
            miniupnpd: Mutex::new(None),
            linkemu: Mutex::new(linkemu),
            upnp_starts: Mutex::new(0),
            serve: Mutex::new(opts.serve),
            lan_ip6: Mutex::new(None),
        };
        lab.nft(&site.router, &router_ruleset(&site))?;
        if site.opts.loss_ppm > 0 {
            lab.nft(&site.router, &loss_ruleset(site.opts.loss_ppm))?;
        }
        if let Some(rules) = serve::filter_ruleset(site.opts.serve) {
            lab.nft(&site.router, &rules)?;
        }
        Ok(site)
    }

    fn start_stun(&mut self, bin: &Path) -> Result<()> {
        let mut p = self.lab.spawn(
            &self.stun_host,
            bin,
            [
                STUN_IPS[0].to_owned(),
                STUN_IPS[1].to_owned(),
                STUN_PORTS[0].to_string(),
                STUN_PORTS[1].to_string(),
                "--max-seconds".into(),
                "900".into(),
            ],
        )?;
        p.wait_for_line(|l| l.starts_with("stun-server listening"), Duration::from_secs(10))?;
        self.stun = Some(p);
        Ok(())
    }

    /// Take the router's WAN link down or up (a router reboot, a cut line).
    pub fn set_wan(&self, site: &Site, up: bool) -> Result<()> {
        self.lab.ip(&site.router, &["link", "set", "wan", if up { "up" } else { "down" }])?;
        if up {
            // The default route went with the link.
            let gw = if site.wan_ip.octets()[0] == 203 { "203.0.113.1" } else { "198.51.100.1" };
            let _ = self.lab.ip(&site.router, &["route", "replace", "default", "via", gw]);
        }
        Ok(())
    }

    /// Forget all connection tracking state of the router (as a reboot
    /// does), with the `conntrack` tool.
    pub fn flush_conntrack(&self, site: &Site) -> Result<()> {
        if which("conntrack").is_none() {
            bail!("`conntrack` is not installed (apt-get install conntrack)");
        }
        let out = self.lab.exec_unchecked(&site.router, ["conntrack", "-F"])?;
        // conntrack -F exits 0 (or 1 with "0 flow entries" on some versions).
        if !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("flow entries") {
            bail!("conntrack -F in {}: {}", site.router, String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl NatLab<'_> {
    /// Drop every UDP packet between `site`'s router and `other` (e.g. the
    /// other router's WAN address), both ways, on the router: a direct path
    /// between the two homes breaks while the rest of the internet (a hub, a
    /// relay) stays reachable. Conntrack state is kept, so lifting the block
    /// ([`NatLab::unblock_udp`]) brings the same mappings back.
    pub fn block_udp(&self, site: &Site, other: Ipv4Addr) -> Result<()> {
        self.lab.nft(&site.router, &block_ruleset(other))
    }

    /// Lift [`NatLab::block_udp`] (no-op when nothing is blocked).
    pub fn unblock_udp(&self, site: &Site) -> Result<()> {
        let out = self.lab.exec_unchecked(&site.router, ["nft", "delete", "table", "inet", BLOCK_TABLE])?;
        if !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("No such file") {
            bail!("nft delete table inet {BLOCK_TABLE} in {}: {}", site.router, String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl Drop for NatLab<'_> {
    fn drop(&mut self) {
        for site in [&self.r1, &self.r2] {
            if let Some(mut p) = site.miniupnpd.lock().unwrap().take() {
                p.kill();
            }
            if let Some(mut p) = site.linkemu.lock().unwrap().take() {
                p.kill();
            }
        }
        if let Some(mut p) = self.stun.take() {
            p.kill();
        }
    }
}

/// The router's WAN interface `wan` with address `cidr`, plugged into the
/// internet bridge: a veth, or with `delay_ms` a TAP device joined to a TAP
/// port of the bridge by the link emulator (returned; it must outlive the lab's use).
fn wan_link(lab: &Lab, inet: &Bridge, router: &Ns, n: u8, cidr: &str, delay_ms: u32) -> Result<Option<LabProcess>> {
    if delay_ms == 0 {
        lab.attach(router, "wan", inet, Some(cidr))?;
        return Ok(None);
    }
    let python = which("python3").ok_or_else(|| anyhow!("a delayed WAN link needs python3 (apt-get install python3)"))?;
    let script = linkemu_script();
    if !script.is_file() {
        bail!("the link emulator {} is missing (set {LINKEMU_ENV})", script.display());
    }
    let port = format!("tap{n}");
    lab.ip(router, &["tuntap", "add", "dev", "wan", "mode", "tap"])?;
    lab.ip(&inet.ns, &["tuntap", "add", "dev", &port, "mode", "tap"])?;
    lab.ip(&inet.ns, &["link", "set", &port, "master", &inet.name])?;
    lab.ip(&inet.ns, &["link", "set", &port, "up"])?;
    lab.ip(router, &["link", "set", "wan", "up"])?;
    lab.addr(router, "wan", cidr)?;
    let args = [
        script.display().to_string(),
        "--a".into(),
        format!("{}:wan", router.name),
        "--b".into(),
        format!("{}:{port}", inet.ns.name),
        "--delay-ms".into(),
        delay_ms.to_string(),
        "--limit".into(),
        "20000".into(),
        "--seed".into(),
        n.to_string(),
    ];
    let p = lab.spawn(router, &python, args)?;
    // Carrier comes up on both TAPs once the emulator has opened them (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    for (ns, dev) in [(router, "wan"), (&inet.ns, port.as_str())] {
        loop {
            let out = lab.exec_unchecked(ns, ["cat", &format!("/sys/class/net/{dev}/carrier")])?;
            if String::from_utf8_lossy(&out.stdout).trim() == "1" {
                break;
            }
            if Instant::now() >= deadline {
                bail!("link emulator for {router}: no carrier on {dev} within 10 s; its stderr:\n{}", p.stderr_tail(20));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(Some(p))
}

/// The nftables table (family inet) of [`NatLab::block_udp`].
pub const BLOCK_TABLE: &str = "pbblock";

/// UDP to and from `other` dropped on a router's WAN side, both ways
/// (before conntrack and NAT: nothing of the flow's state changes).
pub fn block_ruleset(other: Ipv4Addr) -> String {
    format!(
        r#"table inet {BLOCK_TABLE} {{
  chain in {{
    type filter hook prerouting priority -310; policy accept;
    iifname "wan" ip saddr {other} meta l4proto udp drop
  }}
  chain out {{
    type filter hook postrouting priority 310; policy accept;
    oifname "wan" ip daddr {other} meta l4proto udp drop
  }}
}}
"#
    )
}

/// The router's ruleset: filter (drop unsolicited WAN traffic), NAT
/// (masquerade, miniupnpd's DNAT chain), and miniupnpd's empty chains.
pub fn router_ruleset(site: &Site) -> String {
    let masq = if site.opts.symmetric { "masquerade fully-random" } else { "masquerade" };
    let stun_ips = STUN_IPS.join(", ");
    let stun_ports = format!("{}, {}", STUN_PORTS[0], STUN_PORTS[1]);
    let [fwd, pre, post] = UPNP_CHAINS;
    format!(
        r#"table inet {ROUTER_TABLE} {{
  # miniupnpd's chains (it adds and deletes rules in them)
  chain {fwd} {{ }}
  chain {pre} {{ }}
  chain {post} {{ }}
  chain input {{
    type filter hook input priority filter; policy drop;
    iifname "lo" accept
    ct state established,related accept
    # the LAN: SSDP, UPnP HTTP, NAT-PMP/PCP, ping
    iifname "lan" accept
    # miniupnpd's STUN self-test: answers come from other addresses and ports
    iifname "wan" ip saddr {{ {stun_ips} }} udp sport {{ {stun_ports} }} accept
    # everything else from the WAN: dropped silently (never rejected)
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan" oifname "wan" accept
    iifname "wan" oifname "lan" jump {fwd}
  }}
  chain output {{
    type filter hook output priority filter; policy accept;
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "wan" jump {pre}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" jump {post}
    oifname "wan" ip saddr {lan} {masq}
  }}
}}
"#,
        lan = site.lan_cidr,
    )
}

/// Random loss on the WAN link, both directions.
pub fn loss_ruleset(ppm: u32) -> String {
    format!(
        r#"table inet pbloss {{
  chain in {{
    type filter hook prerouting priority -300; policy accept;
    iifname "wan" numgen random mod 1000000 < {ppm} drop
  }}
  chain out {{
    type filter hook postrouting priority 300; policy accept;
    oifname "wan" numgen random mod 1000000 < {ppm} drop
  }}
}}
"#
    )
}

/// `... th dport 4816 dnat ip to 198.18.1.10:4816` lines of `nft list chain`.
pub fn parse_dnat_rules(text: &str) -> Vec<(u16, SocketAddr)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(to) = line.split("dnat ip to ").nth(1).or_else(|| line.split("dnat to ").nth(1)) else { continue };
        let Some(internal) = to.split_whitespace().next().and_then(|a| a.parse::<SocketAddr>().ok()) else { continue };
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(i) = words.iter().position(|w| *w == "dport") else { continue };
        let Some(ext) = words.get(i + 1).and_then(|p| p.parse::<u16>().ok()) else { continue };
        out.push((ext, internal));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnat_rules() {
        let text = "table inet pbnat {\n\tchain upnp_prerouting {\n\t\tiif \"wan\" @nh,72,8 0x11 th dport 4816 dnat ip to 198.18.1.10:4816\n\t\tiif \"wan\" @nh,72,8 0x11 th dport 30000 dnat ip to 198.18.1.10:4817\n\t}\n}\n";
        assert_eq!(parse_dnat_rules(text), vec![(4816, "198.18.1.10:4816".parse().unwrap()), (30000, "198.18.1.10:4817".parse().unwrap())]);
        assert!(parse_dnat_rules("chain x { }").is_empty());
    }

    #[test]
    fn loss_rules() {
        assert!(loss_ruleset(20_000).contains("numgen random mod 1000000 < 20000 drop"));
    }

    #[test]
    fn block_rules() {
        let r = block_ruleset("198.51.100.22".parse().unwrap());
        assert!(r.contains("iifname \"wan\" ip saddr 198.51.100.22 meta l4proto udp drop"), "{r}");
        assert!(r.contains("oifname \"wan\" ip daddr 198.51.100.22 meta l4proto udp drop"), "{r}");
    }
}
