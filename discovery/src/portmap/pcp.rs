//! PCP (RFC 6887) client: MAP and ANNOUNCE messages (pure functions) and a
//! thin client over the shared UDP exchange (`portmap/udp.rs`).
//!
//! Written here rather than taken from `crab_nat`, for the reasons given in
//! [`super::natpmp`]: two fixed-format messages (24-byte header, 36-byte MAP
//! body), and the epoch of every answer must reach the shared state machine.
//! Addresses are 16 bytes on the wire (IPv4 as `::ffff:a.b.c.d`), so the
//! same code asks an IPv6 router for a firewall pinhole (a MAP for an IPv6
//! address: the external address is then our own).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use super::udp::Exchange;
use super::{ClientError, Mapped};

pub const VERSION: u8 = 2;
const OP_ANNOUNCE: u8 = 0;
const OP_MAP: u8 = 1;
const PROTO_UDP: u8 = 17;
const HEADER: usize = 24;
const MAP_LEN: usize = HEADER + 36;

/// Result codes of RFC 6887 §7.4.
pub fn result_text(code: u8) -> &'static str {
    match code {
        0 => "SUCCESS",
        1 => "UNSUPP_VERSION",
        2 => "NOT_AUTHORIZED",
        3 => "MALFORMED_REQUEST",
        4 => "UNSUPP_OPCODE",
        5 => "UNSUPP_OPTION",
        6 => "MALFORMED_OPTION",
        7 => "NETWORK_FAILURE",
        8 => "NO_RESOURCES",
        9 => "UNSUPP_PROTOCOL",
        10 => "USER_EX_QUOTA",
        11 => "CANNOT_PROVIDE_EXTERNAL",
        12 => "ADDRESS_MISMATCH",
        13 => "EXCESSIVE_REMOTE_PEERS",
        _ => "unknown result code",
    }
}

/// An address as PCP writes it (IPv4-mapped IPv6 for IPv4).
fn wire_ip(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn from_wire(b: &[u8]) -> IpAddr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[..16]);
    let v6 = Ipv6Addr::from(o);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

fn header(op: u8, lifetime: u32, client: IpAddr) -> [u8; HEADER] {
    let mut b = [0u8; HEADER];
    b[0] = VERSION;
    b[1] = op;
    b[4..8].copy_from_slice(&lifetime.to_be_bytes());
    b[8..24].copy_from_slice(&wire_ip(client));
    b
}

/// ANNOUNCE (a probe, and the epoch check).
pub fn announce_request(client: IpAddr) -> [u8; HEADER] {
    header(OP_ANNOUNCE, 0, client)
}

/// MAP for UDP `client`:`internal_port`, suggesting `ext_port` (0: any) and no
/// particular external address; `lifetime` 0 deletes the mapping.
pub fn map_request(client: IpAddr, nonce: [u8; 12], internal_port: u16, ext_port: u16, lifetime: u32) -> [u8; MAP_LEN] {
    let mut b = [0u8; MAP_LEN];
    b[..HEADER].copy_from_slice(&header(OP_MAP, lifetime, client));
    b[24..36].copy_from_slice(&nonce);
    b[36] = PROTO_UDP;
    b[40..42].copy_from_slice(&internal_port.to_be_bytes());
    b[42..44].copy_from_slice(&ext_port.to_be_bytes());
    let any: IpAddr = if client.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    b[44..60].copy_from_slice(&wire_ip(any));
    b
}

/// A parsed success answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Announce { epoch: u32 },
    Map { epoch: u32, lifetime: u32, internal_port: u16, ext: SocketAddr },
}

/// Parse an answer to opcode `op` (for MAP: carrying our `nonce`);
/// `Ok(None)`: not an answer to this request.
pub fn parse(op: u8, nonce: &[u8; 12], b: &[u8]) -> Result<Option<Response>, ClientError> {
    if b.len() < 4 || b[1] != 0x80 | op {
        return Ok(None);
    }
    if b[0] != VERSION {
        // A NAT-PMP-only server answers with its version 0 ("unsupported version").
        return Err(ClientError::Unsupported(format!("the gateway answers PCP with version {}", b[0])));
    }
    if b.len() < HEADER {
        return Err(ClientError::Malformed(format!("PCP answer of {} bytes", b.len())));
    }
    let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let (lifetime, epoch) = (u32_at(4), u32_at(8));
    if op == OP_MAP && (b.len() < MAP_LEN || b[24..36] != nonce[..]) {
        // Another client's (or a truncated) answer.
        return Ok(None);
    }
    let result = b[3];
    if result != 0 {
        let err = format!("PCP result {result} ({})", result_text(result));
        return Err(if result == 1 { ClientError::Unsupported(err) } else { ClientError::Refused(err) });
    }
    Ok(Some(match op {
        OP_ANNOUNCE => Response::Announce { epoch },
        _ => Response::Map {
            epoch,
            lifetime,
            internal_port: u16::from_be_bytes([b[40], b[41]]),
            ext: SocketAddr::new(from_wire(&b[44..60]), u16::from_be_bytes([b[42], b[43]])),
        },
    }))
}

/// The PCP client of one node: its socket towards the gateway and the
/// nonce that makes its mapping its own (kept for renewals and deletion).
pub struct Client {
    ex: Exchange,
    local_ip: IpAddr,
    internal_port: u16,
    nonce: [u8; 12],
}

impl Client {
    pub async fn new(local_ip: IpAddr, gateway: IpAddr, internal_port: u16) -> Result<Client, ClientError> {
        Ok(Client { ex: Exchange::new(local_ip, gateway).await?, local_ip, internal_port, nonce: rand::random() })
    }

    /// ANNOUNCE: the server's epoch.
    pub async fn announce(&self, tries: u32) -> Result<u32, ClientError> {
        match self.ex.request(&announce_request(self.local_ip), tries, |b| parse(OP_ANNOUNCE, &self.nonce, b)).await? {
            Response::Announce { epoch } => Ok(epoch),
            other => Err(ClientError::Malformed(format!("unexpected answer {other:?}"))),
        }
    }

    /// Map (or renew) our port, suggesting external port `want`; the server
    /// assigns another one when that is taken, and says which external
    /// address. A non-global one (a second NAT) is deleted again and
    /// reported as [`ClientError::Unusable`] unless `allow_non_global`.
    pub async fn map(&self, want: u16, lease: Duration, allow_non_global: bool) -> Result<Mapped, ClientError> {
        let lifetime = super::udp_lifetime(lease);
        let req = map_request(self.local_ip, self.nonce, self.internal_port, want, lifetime);
        match self.ex.request(&req, super::udp::TRIES, |b| parse(OP_MAP, &self.nonce, b)).await? {
            Response::Map { epoch, lifetime, internal_port, ext } if internal_port == self.internal_port && ext.port() != 0 => {
                if ext.ip().is_unspecified() {
                    return Err(ClientError::Refused("the router has no external address (WAN down?)".into()));
                }
                if !allow_non_global && !crate::addr::is_global(ext.ip()) {
                    let _ = self.unmap().await;
                    return Err(ClientError::Unusable(ext.ip()));
                }
                Ok(Mapped { ext, lease: Duration::from_secs(lifetime.into()), epoch: Some(epoch) })
            }
            other => Err(ClientError::Malformed(format!("unexpected answer {other:?}"))),
        }
    }

    /// Delete our mapping (lifetime 0, same nonce).
    pub async fn unmap(&self) -> Result<(), ClientError> {
        let req = map_request(self.local_ip, self.nonce, self.internal_port, 0, 0);
        self.ex.request(&req, 2, |b| parse(OP_MAP, &self.nonce, b)).await.map(|_| ())
    }

    /// The router's epoch, `None` without an answer.
    pub async fn epoch(&self) -> Option<u32> {
        self.announce(super::udp::TRIES).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: [u8; 12] = [7; 12];

    fn answer(op: u8, result: u8, lifetime: u32, epoch: u32) -> Vec<u8> {
        let mut b = vec![2, 0x80 | op, 0, result];
        b.extend(lifetime.to_be_bytes());
        b.extend(epoch.to_be_bytes());
        b.extend([0u8; 12]);
        b
    }

    #[test]
    fn encodes_map_and_announce() {
        let me: IpAddr = "198.18.1.10".parse().unwrap();
        let b = map_request(me, NONCE, 4816, 4816, 7200);
        assert_eq!(b.len(), 60);
        assert_eq!(&b[..8], &[2, 1, 0, 0, 0, 0, 0x1c, 0x20]);
        assert_eq!(&b[8..24], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 1, 10]);
        assert_eq!(&b[24..36], &NONCE);
        assert_eq!(&b[36..44], &[17, 0, 0, 0, 0x12, 0xd0, 0x12, 0xd0]);
        assert_eq!(&b[44..60], &Ipv4Addr::UNSPECIFIED.to_ipv6_mapped().octets());
        let a = announce_request(me);
        assert_eq!(&a[..4], &[2, 0, 0, 0]);
        // IPv6: the address itself, and "::" as "any external address".
        let me6: IpAddr = "2001:db8:1::10".parse().unwrap();
        let b6 = map_request(me6, NONCE, 4816, 4816, 60);
        assert_eq!(from_wire(&b6[8..24]), me6);
        assert_eq!(&b6[44..60], &[0u8; 16]);
    }

    #[test]
    fn parses_answers() {
        assert_eq!(parse(0, &NONCE, &answer(0, 0, 0, 77)).unwrap(), Some(Response::Announce { epoch: 77 }));
        let mut m = answer(1, 0, 120, 5);
        m.extend(NONCE);
        m.extend([17, 0, 0, 0, 0x12, 0xd0, 0x75, 0x30]);
        m.extend(Ipv4Addr::new(203, 0, 113, 21).to_ipv6_mapped().octets());
        assert_eq!(
            parse(1, &NONCE, &m).unwrap(),
            Some(Response::Map { epoch: 5, lifetime: 120, internal_port: 4816, ext: "203.0.113.21:30000".parse().unwrap() })
        );
        // Someone else's nonce, another opcode, truncation: not ours.
        assert_eq!(parse(1, &[8; 12], &m).unwrap(), None);
        assert_eq!(parse(0, &NONCE, &m).unwrap(), None);
        assert_eq!(parse(1, &NONCE, &m[..50]).unwrap(), None);
        // Refusals name the code; a NAT-PMP-only server's answer says "unsupported".
        let mut r = answer(1, 8, 30, 5);
        r.extend(NONCE);
        r.extend([0u8; 24]);
        assert!(parse(1, &NONCE, &r).unwrap_err().to_string().contains("NO_RESOURCES"));
        assert!(matches!(parse(1, &NONCE, &[0, 129, 0, 1, 0, 0, 0, 0]), Err(ClientError::Unsupported(_))));
        assert!(matches!(parse(0, &NONCE, &answer(0, 1, 0, 0)), Err(ClientError::Unsupported(_))));
        assert!(parse(0, &NONCE, &answer(0, 0, 0, 0)[..10]).is_err());
    }
}
