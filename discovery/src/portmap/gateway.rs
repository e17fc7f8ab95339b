//! Which router to ask: the default route's gateway (Linux:
//! `/proc/net/route`), and our address facing it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The IPv4 default route's gateway, if this system has one (Linux).
pub fn default_gateway_v4() -> Option<Ipv4Addr> {
    parse_proc_route(&std::fs::read_to_string("/proc/net/route").ok()?)
}

/// The gateway of the first default route (destination and mask 0, flag
/// RTF_GATEWAY) in `/proc/net/route`'s text (hex fields in host order).
pub fn parse_proc_route(text: &str) -> Option<Ipv4Addr> {
    const RTF_GATEWAY: u32 = 0x2;
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            return None;
        }
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let (dest, gw, flags, mask) = (hex(f[1])?, hex(f[2])?, hex(f[3])?, hex(f[7])?);
        (dest == 0 && mask == 0 && flags & RTF_GATEWAY != 0 && gw != 0).then(|| Ipv4Addr::from(gw.to_le_bytes()))
    })
}

/// The source address the OS picks towards `gateway` (a connected UDP
/// socket; nothing is sent).
pub fn local_ip_towards(gateway: IpAddr) -> Option<IpAddr> {
    let bind: SocketAddr = match gateway {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = std::net::UdpSocket::bind(bind).ok()?;
    sock.connect(SocketAddr::new(gateway, 9)).ok()?;
    let ip = sock.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_route_from_proc() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t0001A8C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                    eth0\t00000000\t0101A8C6\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(parse_proc_route(text), Some(Ipv4Addr::new(198, 168, 1, 1)));
        assert_eq!(parse_proc_route("Iface\tDestination\n"), None);
        assert_eq!(parse_proc_route("header\neth0 0001A8C6 00000000 0001 0 0 0 00FFFFFF 0 0 0\n"), None);
        assert_eq!(parse_proc_route("header\ngarbage\n"), None);
    }

    #[test]
    fn local_address_towards_loopback() {
        assert_eq!(local_ip_towards("127.0.0.1".parse().unwrap()), Some("127.0.0.1".parse().unwrap()));
    }
}
