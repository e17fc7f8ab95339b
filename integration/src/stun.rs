//! A tiny STUN server for NAT labs: RFC 5389 Binding plus the RFC 5780
//! CHANGE-REQUEST attribute, on two addresses and two ports, which is what
//! miniupnpd's `ext_perform_stun` needs to decide that its WAN is not behind
//! a restrictive NAT (and so to allow port forwarding on "reserved" lab
//! addresses such as 203.0.113.0/24).
//!
//! Requests arrive on any of the four sockets `(primary|alternate, port|alt_port)`;
//! the answer leaves from the socket CHANGE-REQUEST asks for (change IP: the
//! other address; change port: the other port). Answers carry MAPPED-ADDRESS
//! (0x0001), XOR-MAPPED-ADDRESS (0x0020), the pre-RFC XOR-MAPPED-ADDRESS
//! (0x8020, which miniupnpd reads), RESPONSE-ORIGIN (0x802b) and OTHER-ADDRESS
//! (0x802c). No authentication, no FINGERPRINT, IPv4 and IPv6.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
pub const BINDING_REQUEST: u16 = 0x0001;
pub const BINDING_SUCCESS: u16 = 0x0101;
pub const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
pub const ATTR_CHANGE_REQUEST: u16 = 0x0003;
pub const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
pub const ATTR_XOR_MAPPED_ADDRESS_OLD: u16 = 0x8020;
pub const ATTR_SOFTWARE: u16 = 0x8022;
pub const ATTR_RESPONSE_ORIGIN: u16 = 0x802b;
pub const ATTR_OTHER_ADDRESS: u16 = 0x802c;
pub const CHANGE_IP: u32 = 0x4;
pub const CHANGE_PORT: u32 = 0x2;

/// A parsed Binding request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingRequest {
    pub transaction_id: [u8; 12],
    /// Bytes 4..8 of the header: the magic cookie, or the first part of an
    /// RFC 3489 client's 16-byte transaction id. Echoed as received.
    pub cookie_field: [u8; 4],
    pub change_ip: bool,
    pub change_port: bool,
}

/// Parse a Binding request; anything else (responses, garbage, other methods) is `None`.
pub fn parse_request(buf: &[u8]) -> Option<BindingRequest> {
    if buf.len() < 20 {
        return None;
    }
    let ty = u16::from_be_bytes([buf[0], buf[1]]);
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    if ty != BINDING_REQUEST || 20 + len > buf.len() || !len.is_multiple_of(4) {
        return None;
    }
    let cookie_field = [buf[4], buf[5], buf[6], buf[7]];
    let mut transaction_id = [0u8; 12];
    transaction_id.copy_from_slice(&buf[8..20]);
    let (mut change_ip, mut change_port) = (false, false);
    let mut at = 20;
    // Bounded by the message length; each step advances by at least 4 bytes.
    while at + 4 <= 20 + len {
        let aty = u16::from_be_bytes([buf[at], buf[at + 1]]);
        let alen = u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize;
        let body = at + 4;
        if body + alen > 20 + len {
            return None;
        }
        if aty == ATTR_CHANGE_REQUEST && alen == 4 {
            let flags = u32::from_be_bytes([buf[body], buf[body + 1], buf[body + 2], buf[body + 3]]);
            change_ip = flags & CHANGE_IP != 0;
            change_port = flags & CHANGE_PORT != 0;
        }
        at = body + alen.div_ceil(4) * 4;
    }
    Some(BindingRequest { transaction_id, cookie_field, change_ip, change_port })
}

fn push_attr(out: &mut Vec<u8>, ty: u16, value: &[u8]) {
    out.extend_from_slice(&ty.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn addr_value(a: SocketAddr) -> Vec<u8> {
    let mut v = vec![0u8];
    match a.ip() {
        IpAddr::V4(ip) => {
            v.push(1);
            v.extend_from_slice(&a.port().to_be_bytes());
            v.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            v.push(2);
            v.extend_from_slice(&a.port().to_be_bytes());
            v.extend_from_slice(&ip.octets());
        }
    }
    v
}

fn xor_addr_value(a: SocketAddr, tid: &[u8; 12]) -> Vec<u8> {
    let mut v = addr_value(a);
    let cookie = MAGIC_COOKIE.to_be_bytes();
    v[2] ^= cookie[0];
    v[3] ^= cookie[1];
    let mut key = cookie.to_vec();
    key.extend_from_slice(tid);
    for (i, b) in v[4..].iter_mut().enumerate() {
        *b ^= key[i];
    }
    v
}

/// Build the Binding success response to `req` from `client`, sent from
/// `origin`, advertising `other` as OTHER-ADDRESS.
pub fn binding_response(req: &BindingRequest, client: SocketAddr, origin: SocketAddr, other: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
    out.extend_from_slice(&[0, 0]); // length, set below
    out.extend_from_slice(&req.cookie_field);
    out.extend_from_slice(&req.transaction_id);
    push_attr(&mut out, ATTR_MAPPED_ADDRESS, &addr_value(client));
    let xor = xor_addr_value(client, &req.transaction_id);
    push_attr(&mut out, ATTR_XOR_MAPPED_ADDRESS, &xor);
    push_attr(&mut out, ATTR_XOR_MAPPED_ADDRESS_OLD, &xor);
    push_attr(&mut out, ATTR_RESPONSE_ORIGIN, &addr_value(origin));
    push_attr(&mut out, ATTR_OTHER_ADDRESS, &addr_value(other));
    push_attr(&mut out, ATTR_SOFTWARE, b"partybus-lab-stun");
    let len = (out.len() - 20) as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// Where the STUN server listens.
#[derive(Clone, Copy, Debug)]
pub struct StunConfig {
    pub primary: IpAddr,
    pub alternate: IpAddr,
    pub port: u16,
    pub alt_port: u16,
}

impl StunConfig {
    /// Socket index: bit 1 = alternate IP, bit 0 = alternate port.
    fn addr(&self, i: usize) -> SocketAddr {
        let ip = if i & 2 == 0 { self.primary } else { self.alternate };
        let port = if i & 1 == 0 { self.port } else { self.alt_port };
        SocketAddr::new(ip, port)
    }
}

/// A running server: the four bound sockets.
pub struct StunServer {
    cfg: StunConfig,
    sockets: Arc<[UdpSocket; 4]>,
}

impl StunServer {
    /// Bind the four sockets.
    pub async fn bind(cfg: StunConfig) -> std::io::Result<StunServer> {
        if cfg.primary == cfg.alternate || cfg.port == cfg.alt_port {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "need two distinct addresses and ports"));
        }
        let s0 = UdpSocket::bind(cfg.addr(0)).await?;
        let s1 = UdpSocket::bind(cfg.addr(1)).await?;
        let s2 = UdpSocket::bind(cfg.addr(2)).await?;
        let s3 = UdpSocket::bind(cfg.addr(3)).await?;
        Ok(StunServer { cfg, sockets: Arc::new([s0, s1, s2, s3]) })
    }

    pub fn config(&self) -> StunConfig {
        self.cfg
    }

    /// Serve for at most `max_time` or `max_requests` requests (whichever comes first).
    pub async fn serve(self, max_time: Duration, max_requests: u64) {
        let deadline = tokio::time::Instant::now() + max_time;
        let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..4 {
            let socks = self.sockets.clone();
            let cfg = self.cfg;
            let count = count.clone();
            tasks.push(tokio::spawn(async move {
                let mut buf = [0u8; 1500];
                while count.load(std::sync::atomic::Ordering::Relaxed) < max_requests {
                    let (n, from) = match tokio::time::timeout_at(deadline, socks[i].recv_from(&mut buf)).await {
                        Err(_) => return,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "stun: recv failed");
                            continue;
                        }
                        Ok(Ok(v)) => v,
                    };
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(req) = parse_request(&buf[..n]) else {
                        continue;
                    };
                    let j = i ^ (if req.change_ip { 2 } else { 0 }) ^ (if req.change_port { 1 } else { 0 });
                    let origin = cfg.addr(j);
                    let other = cfg.addr(i ^ 3);
                    let resp = binding_response(&req, from, origin, other);
                    tracing::debug!(%from, at = %cfg.addr(i), %origin, "stun: binding");
                    if let Err(e) = socks[j].send_to(&resp, from).await {
                        tracing::debug!(error = %e, "stun: send failed");
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(tid: [u8; 12], flags: u32) -> Vec<u8> {
        let mut v = vec![0x00, 0x01, 0x00, 0x08];
        v.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        v.extend_from_slice(&tid);
        v.extend_from_slice(&[0x00, 0x03, 0x00, 0x04]);
        v.extend_from_slice(&flags.to_be_bytes());
        v
    }

    /// Like miniupnpd's parser: the first (XOR-)MAPPED-ADDRESS, preferring 0x8020.
    fn mapped(buf: &[u8]) -> Option<SocketAddr> {
        let mut at = 20;
        let mut found = None;
        while at + 4 <= buf.len() {
            let ty = u16::from_be_bytes([buf[at], buf[at + 1]]);
            let len = u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize;
            let v = &buf[at + 4..at + 4 + len];
            if (ty == 0x0001 || ty == 0x8020) && len == 8 && v[1] == 1 {
                let mut p = [v[2], v[3]];
                let mut ip = [v[4], v[5], v[6], v[7]];
                if ty == 0x8020 {
                    p[0] ^= buf[4];
                    p[1] ^= buf[5];
                    for k in 0..4 {
                        ip[k] ^= buf[4 + k];
                    }
                    return Some(SocketAddr::new(ip.into(), u16::from_be_bytes(p)));
                }
                found = Some(SocketAddr::new(ip.into(), u16::from_be_bytes(p)));
            }
            at += 4 + len.div_ceil(4) * 4;
        }
        found
    }

    #[test]
    fn parse_and_encode() {
        let r = parse_request(&request([7; 12], CHANGE_IP | CHANGE_PORT)).unwrap();
        assert!(r.change_ip && r.change_port);
        assert_eq!(r.cookie_field, MAGIC_COOKIE.to_be_bytes());
        assert_eq!(r.transaction_id, [7; 12]);
        assert!(parse_request(&[0u8; 10]).is_none());
        let mut bad = request([1; 12], 0);
        bad[3] = 0x40; // length beyond the buffer
        assert!(parse_request(&bad).is_none());
        let client: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let resp = binding_response(&r, client, "203.0.113.1:3478".parse().unwrap(), "203.0.113.2:3479".parse().unwrap());
        assert_eq!(&resp[0..2], &[0x01, 0x01]);
        assert_eq!(u16::from_be_bytes([resp[2], resp[3]]) as usize, resp.len() - 20);
        assert_eq!(&resp[8..20], &[7; 12]);
        assert_eq!(mapped(&resp), Some(client));
    }

    /// What miniupnpd does: four requests (no change, change port, change IP,
    /// both) to the primary address; all four answered, from the right places.
    #[tokio::test]
    async fn four_way_test_on_loopback() {
        // 127.0.0.1 and 127.0.0.2 are both loopback; find a port pair free on both.
        let mut server = None;
        for _ in 0..20 {
            let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let p = probe.local_addr().unwrap().port();
            drop(probe);
            let cfg = StunConfig {
                primary: "127.0.0.1".parse().unwrap(),
                alternate: "127.0.0.2".parse().unwrap(),
                port: p,
                alt_port: p.wrapping_add(1).max(1024),
            };
            if let Ok(s) = StunServer::bind(cfg).await {
                server = Some(s);
                break;
            }
        }
        let server = server.expect("free port pair");
        let cfg = server.config();
        let task = tokio::spawn(server.serve(Duration::from_secs(10), 100));
        let primary = SocketAddr::new(cfg.primary, cfg.port);
        for (k, flags) in [0, CHANGE_PORT, CHANGE_IP, CHANGE_IP | CHANGE_PORT].into_iter().enumerate() {
            let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let tid = [k as u8 + 1; 12];
            c.send_to(&request(tid, flags), primary).await.unwrap();
            let mut buf = [0u8; 1500];
            let (n, from) = tokio::time::timeout(Duration::from_secs(3), c.recv_from(&mut buf)).await.unwrap().unwrap();
            let want_from = SocketAddr::new(
                if flags & CHANGE_IP != 0 { cfg.alternate } else { cfg.primary },
                if flags & CHANGE_PORT != 0 { cfg.alt_port } else { cfg.port },
            );
            assert_eq!(from, want_from, "flags {flags:#x}");
            assert_eq!(&buf[8..20], &tid);
            assert_eq!(mapped(&buf[..n]), Some(c.local_addr().unwrap()));
        }
        task.abort();
    }
}
