//! IPv6 across the NAT lab (no NAT66: global-looking addresses from the
//! documentation prefix 2001:db8::/32 end to end).
//!
//! ```text
//!   inet0 2001:db8::1/64 (the internet router's bridge)
//!     vps1    2001:db8::10       v6h 2001:db8::30 (IPv6 only: no IPv4 at all)
//!     r1 wan  2001:db8::21  ->  r1 lan 2001:db8:1::1/64, h1 2001:db8:1::10
//! ```
//!
//! r1's firewall (the `inet` table of [`super::router_ruleset`]) applies to
//! IPv6 as it does to IPv4: the LAN may go out, answers come back, and
//! unsolicited packets from the WAN go to miniupnpd's forward chain, where
//! only pinholes (UPnP IGDv2 `AddPinhole`, PCP MAP for an IPv6 address)
//! let them through. ICMPv6 is accepted on the router (neighbour discovery).

use anyhow::Result;

use super::{NatLab, ROUTER_TABLE};
use crate::lab::Ns;

/// The internet router's IPv6 address on its bridge.
pub const INET6: &str = "2001:db8::1";
/// vps1's IPv6 address.
pub const VPS1_IP6: &str = "2001:db8::10";
/// The IPv6-only host's address.
pub const V6H_IP6: &str = "2001:db8::30";
/// r1's WAN and LAN IPv6 addresses, and h1's.
pub const R1_WAN6: &str = "2001:db8::21";
pub const R1_LAN6: &str = "2001:db8:1::1";
pub const H1_IP6: &str = "2001:db8:1::10";

impl NatLab<'_> {
    /// Add IPv6 to the internet, vps1, r1's WAN and LAN and h1, and an
    /// IPv6-only host `v6h` on the internet (returned).
    pub fn add_ipv6(&self) -> Result<Ns> {
        let lab = self.lab;
        lab.addr(&self.inet, &self.inet_bridge.name, &format!("{INET6}/64"))?;
        lab.route(&self.inet, "2001:db8:1::/64", R1_WAN6)?;
        lab.addr(&self.vps1, "eth0", &format!("{VPS1_IP6}/64"))?;
        lab.route(&self.vps1, "default", INET6)?;
        let v6h = lab.namespace("v6h")?;
        lab.attach(&v6h, "eth0", &self.inet_bridge, Some(&format!("{V6H_IP6}/64")))?;
        lab.route(&v6h, "default", INET6)?;
        let (r1, h1) = (&self.r1.router, &self.r1.host);
        lab.addr(r1, "wan", &format!("{R1_WAN6}/64"))?;
        lab.route(r1, "default", INET6)?;
        lab.addr(r1, "lan", &format!("{R1_LAN6}/64"))?;
        lab.addr(h1, "eth0", &format!("{H1_IP6}/64"))?;
        lab.route(h1, "default", R1_LAN6)?;
        lab.nft(r1, &format!("add rule inet {ROUTER_TABLE} input meta l4proto ipv6-icmp accept\n"))?;
        *self.r1.lan_ip6.lock().unwrap() = Some(R1_LAN6.to_owned());
        Ok(v6h)
    }
}
