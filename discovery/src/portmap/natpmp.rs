//! NAT-PMP (RFC 6886) client: the message formats (pure functions) and a
//! thin client over the shared UDP exchange (`portmap/udp.rs`).
//!
//! Written here rather than taken from `crab_nat` (the maintained crate for
//! NAT-PMP and PCP): the whole protocol is two 2- and 12-byte requests and
//! their 12- and 16-byte answers, and our own codec keeps the pieces the
//! shared state machine needs in view (the epoch of *every* answer, for the
//! restart check; the socket bound to the node's LAN address; our bounded
//! retransmissions) and avoids a second `rand` major version and three more
//! dependencies in the build.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::udp::Exchange;
use super::{ClientError, Mapped};

pub const VERSION: u8 = 0;
const OP_EXTERNAL: u8 = 0;
const OP_MAP_UDP: u8 = 1;

/// Result codes of RFC 6886 §3.5.
pub fn result_text(code: u16) -> &'static str {
    match code {
        0 => "success",
        1 => "unsupported version",
        2 => "not authorized / refused",
        3 => "network failure",
        4 => "out of resources",
        5 => "unsupported opcode",
        _ => "unknown result code",
    }
}

/// The external address request.
pub fn external_request() -> [u8; 2] {
    [VERSION, OP_EXTERNAL]
}

/// A UDP mapping request (`lifetime` 0 with `ext_port` 0 deletes it).
pub fn map_request(internal_port: u16, ext_port: u16, lifetime: u32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = VERSION;
    b[1] = OP_MAP_UDP;
    b[4..6].copy_from_slice(&internal_port.to_be_bytes());
    b[6..8].copy_from_slice(&ext_port.to_be_bytes());
    b[8..12].copy_from_slice(&lifetime.to_be_bytes());
    b
}

/// A parsed answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    External { epoch: u32, ip: Ipv4Addr },
    Map { epoch: u32, internal_port: u16, ext_port: u16, lifetime: u32 },
}

/// Parse an answer to opcode `op`; `Ok(None)`: not an answer to it (ignore).
pub fn parse(op: u8, b: &[u8]) -> Result<Option<Response>, ClientError> {
    if b.len() < 4 || b[1] != 128 + op {
        return Ok(None);
    }
    if b[0] != VERSION {
        // A PCP-only server answers our version 0 with its own version.
        return Err(ClientError::Unsupported(format!("the gateway answers NAT-PMP with version {}", b[0])));
    }
    let result = u16::from_be_bytes([b[2], b[3]]);
    if result != 0 {
        return Err(ClientError::Refused(format!("NAT-PMP result {result} ({})", result_text(result))));
    }
    let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    match op {
        OP_EXTERNAL if b.len() >= 12 => Ok(Some(Response::External { epoch: u32_at(4), ip: Ipv4Addr::new(b[8], b[9], b[10], b[11]) })),
        OP_MAP_UDP if b.len() >= 16 => {
            Ok(Some(Response::Map { epoch: u32_at(4), internal_port: u16_at(8), ext_port: u16_at(10), lifetime: u32_at(12) }))
        }
        _ => Err(ClientError::Malformed(format!("NAT-PMP answer of {} bytes to opcode {op}", b.len()))),
    }
}

/// The NAT-PMP client of one node: its socket towards the gateway.
pub struct Client {
    ex: Exchange,
    internal_port: u16,
}

impl Client {
    pub async fn new(local_ip: IpAddr, gateway: IpAddr, internal_port: u16) -> Result<Client, ClientError> {
        Ok(Client { ex: Exchange::new(local_ip, gateway).await?, internal_port })
    }

    /// The router's external IPv4 address and epoch.
    pub async fn external(&self, tries: u32) -> Result<(Ipv4Addr, u32), ClientError> {
        let r = self.ex.request(&external_request(), tries, |b| parse(OP_EXTERNAL, b)).await?;
        match r {
            Response::External { epoch, ip } => Ok((ip, epoch)),
            other => Err(ClientError::Malformed(format!("unexpected answer {other:?}"))),
        }
    }

    /// Map (or renew) our port, asking for external port `want`; the router
    /// picks another when that one is taken. The external IP comes from an
    /// external address request first: with a non-global one (a second NAT)
    /// and `!allow_non_global`, no mapping is made.
    pub async fn map(&self, want: u16, lease: Duration, allow_non_global: bool) -> Result<Mapped, ClientError> {
        let (ip, _) = self.external(super::udp::TRIES).await?;
        if ip.is_unspecified() {
            return Err(ClientError::Refused("the router has no external address (WAN down?)".into()));
        }
        if !allow_non_global && !crate::addr::is_global(IpAddr::V4(ip)) {
            return Err(ClientError::Unusable(IpAddr::V4(ip)));
        }
        let lifetime = super::udp_lifetime(lease);
        let req = map_request(self.internal_port, want, lifetime);
        let r = self.ex.request(&req, super::udp::TRIES, |b| parse(OP_MAP_UDP, b)).await?;
        match r {
            Response::Map { epoch, internal_port, ext_port, lifetime } if internal_port == self.internal_port && ext_port != 0 => {
                Ok(Mapped {
                    ext: SocketAddr::new(IpAddr::V4(ip), ext_port),
                    lease: Duration::from_secs(lifetime.into()),
                    epoch: Some(epoch),
                })
            }
            other => Err(ClientError::Malformed(format!("unexpected answer {other:?}"))),
        }
    }

    /// Delete our mapping (one try each way; used on stop).
    pub async fn unmap(&self) -> Result<(), ClientError> {
        self.ex.request(&map_request(self.internal_port, 0, 0), 2, |b| parse(OP_MAP_UDP, b)).await.map(|_| ())
    }

    /// The router's epoch (an external address request), `None` without an answer.
    pub async fn epoch(&self) -> Option<u32> {
        self.external(super::udp::TRIES).await.ok().map(|(_, e)| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_requests() {
        assert_eq!(external_request(), [0, 0]);
        assert_eq!(map_request(4816, 4817, 7200), [0, 1, 0, 0, 0x12, 0xd0, 0x12, 0xd1, 0, 0, 0x1c, 0x20]);
        assert_eq!(map_request(4816, 0, 0)[6..], [0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn parses_answers() {
        let ext = [0, 128, 0, 0, 0, 0, 1, 0, 203, 0, 113, 21];
        assert_eq!(parse(0, &ext).unwrap(), Some(Response::External { epoch: 256, ip: Ipv4Addr::new(203, 0, 113, 21) }));
        let map = [0, 129, 0, 0, 0, 0, 0, 9, 0x12, 0xd0, 0x75, 0x30, 0, 0, 0, 60];
        assert_eq!(parse(1, &map).unwrap(), Some(Response::Map { epoch: 9, internal_port: 4816, ext_port: 30000, lifetime: 60 }));
        // An answer to another opcode: not ours; a PCP server's: no NAT-PMP there.
        assert_eq!(parse(0, &map).unwrap(), None);
        assert!(matches!(parse(1, &[2, 129, 0, 1]), Err(ClientError::Unsupported(_))));
        // Refusals name the code; truncated answers are errors, not panics.
        let e = parse(1, &[0, 129, 0, 2, 0, 0, 0, 9]).unwrap_err().to_string();
        assert!(e.contains("not authorized"), "{e}");
        assert!(parse(1, &map[..12]).is_err());
        assert_eq!(parse(1, &[0]).unwrap(), None);
    }
}
