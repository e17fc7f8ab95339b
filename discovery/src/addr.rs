//! Address classification shared by discovery services and the mesh.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// True for addresses routable on the public Internet.
///
/// Excludes loopback, unspecified, private (RFC 1918), shared (100.64/10),
/// link-local, documentation (192.0.2/24, 198.51.100/24, 203.0.113/24),
/// benchmarking (198.18/15), multicast, broadcast and reserved ranges, and the
/// IPv6 equivalents (ULA fc00::/7, link-local fe80::/10, documentation
/// 2001:db8::/32). A lab or private WAN sets `allow_non_global` to accept such
/// addresses where a service would otherwise drop them.
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_global_v4(v4);
            }
            is_global_v6(v6)
        }
    }
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10 shared (CGNAT)
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24 protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15 benchmarking
        || o[0] >= 240) // reserved
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        for (s, g) in [
            ("8.8.8.8", true),
            ("1.1.1.1", true),
            ("127.0.0.1", false),
            ("10.1.2.3", false),
            ("172.16.0.1", false),
            ("192.168.1.1", false),
            ("100.64.0.1", false),
            ("169.254.1.1", false),
            ("203.0.113.5", false),
            ("198.51.100.5", false),
            ("198.18.1.2", false),
            ("198.19.1.2", false),
            ("0.0.0.0", false),
            ("255.255.255.255", false),
            ("2606:4700::1", true),
            ("::1", false),
            ("fe80::1", false),
            ("fd00::1", false),
            ("2001:db8::1", false),
            ("::ffff:10.0.0.1", false),
            ("::ffff:8.8.8.8", true),
        ] {
            assert_eq!(is_global(s.parse().unwrap()), g, "{s}");
        }
    }
}
