//! Request/answer over UDP to the gateway's port 5351, shared by NAT-PMP
//! and PCP: a socket bound to the node's LAN address and connected to the
//! gateway (only its answers arrive), and RFC 6886/6887's retransmission
//! schedule (250 ms, doubling) cut to [`TRIES`] sends: a router that does
//! not answer within ~2 s is taken as not speaking the protocol.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::{timeout_at, Instant};

use super::ClientError;

/// The NAT-PMP and PCP server port (RFC 6886, RFC 6887).
pub const SERVER_PORT: u16 = 5351;
/// Sends per request (250 + 500 + 1000 ms of waiting).
pub const TRIES: u32 = 3;
const FIRST_WAIT: Duration = Duration::from_millis(250);

pub struct Exchange {
    sock: UdpSocket,
}

impl Exchange {
    pub async fn new(local_ip: IpAddr, gateway: IpAddr) -> Result<Exchange, ClientError> {
        let sock = UdpSocket::bind(SocketAddr::new(local_ip, 0)).await.map_err(ClientError::Io)?;
        sock.connect(SocketAddr::new(gateway, SERVER_PORT)).await.map_err(ClientError::Io)?;
        Ok(Exchange { sock })
    }

    /// Send `req` up to `tries` times until `parse` accepts an answer
    /// (`Ok(None)`: not the answer to this request, keep waiting).
    pub async fn request<T>(
        &self,
        req: &[u8],
        tries: u32,
        parse: impl Fn(&[u8]) -> Result<Option<T>, ClientError>,
    ) -> Result<T, ClientError> {
        let mut buf = [0u8; 1100];
        let mut wait = FIRST_WAIT;
        for _ in 0..tries.max(1) {
            // An ICMP "port unreachable" from an earlier send shows up as
            // an error on the next call: that is an answer too ("no").
            if let Err(e) = self.sock.send(req).await {
                return Err(unreachable_or(e));
            }
            let deadline = Instant::now() + wait;
            loop {
                match timeout_at(deadline, self.sock.recv(&mut buf)).await {
                    Err(_) => break,
                    Ok(Err(e)) => return Err(unreachable_or(e)),
                    Ok(Ok(n)) => {
                        if let Some(v) = parse(&buf[..n])? {
                            return Ok(v);
                        }
                    }
                }
            }
            wait *= 2;
        }
        Err(ClientError::NoAnswer)
    }
}

fn unreachable_or(e: std::io::Error) -> ClientError {
    if e.kind() == std::io::ErrorKind::ConnectionRefused {
        ClientError::Unsupported("the gateway's port 5351 is closed (ICMP port unreachable)".into())
    } else {
        ClientError::Io(e)
    }
}
