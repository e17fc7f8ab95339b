//! The endpoint's UDP socket: bound with fallbacks (dual-stack first, then
//! IPv4; each port of the spec in turn), with kernel buffers sized for
//! QUIC's bursts.
//!
//! Why the buffers: quinn hands the kernel up to ten packets per GSO send,
//! and the receiving socket (with UDP GRO) gets them as one large datagram.
//! Linux's default receive buffer (208 KiB) holds only a few such bursts
//! while the receiving task is busy handling events, and the kernel drops
//! the rest. Each drop makes QUIC's congestion control back off. On the
//! 2-core bench machines this dropped about 2 % of the datagrams of a 16-byte
//! event stream and held it to 4.6-4.9 M events/s; with 4 MiB buffers
//! nothing was dropped and it ran at 5.4-5.7 M (BENCHMARKS.md, round 4).
//! Kernel buffers are not part of the process's RSS, and hold memory only
//! while full.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, warn};

use crate::mesh::JoinError;

/// Binds the endpoint's socket: `bind` (or `[::]` dual-stack, then
/// `0.0.0.0`) on the first free port of `ports`, asking the kernel for
/// `buffer` bytes in each direction (0: the system default).
pub(crate) fn bind(bind: Option<IpAddr>, ports: &[u16], buffer: usize) -> Result<std::net::UdpSocket, JoinError> {
    let mut last = None;
    let candidates: Vec<IpAddr> = match bind {
        Some(ip) => vec![ip],
        None => vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED), IpAddr::V4(Ipv4Addr::UNSPECIFIED)],
    };
    for ip in &candidates {
        for &port in ports {
            let addr = SocketAddr::new(*ip, port);
            let attempt = (|| -> std::io::Result<std::net::UdpSocket> {
                let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
                if addr.is_ipv6() && bind.is_none() {
                    // Dual-stack: IPv4 peers arrive as ::ffff:a.b.c.d.
                    sock.set_only_v6(false)?;
                }
                sock.bind(&addr.into())?;
                size_buffers(&sock, buffer);
                Ok(sock.into())
            })();
            match attempt {
                Ok(s) => return Ok(s),
                Err(e) => {
                    let in_use = e.kind() == std::io::ErrorKind::AddrInUse;
                    last = Some(e);
                    if !in_use {
                        break; // this address family does not work here; try the next
                    }
                }
            }
        }
    }
    Err(JoinError::Bind {
        tried: ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(","),
        bind: candidates.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" and "),
        last: last.unwrap_or_else(|| std::io::Error::other("no port to try")),
    })
}

#[derive(Clone, Copy, Debug)]
enum Dir {
    Recv,
    Send,
}

impl Dir {
    fn get(self, s: &Socket) -> usize {
        match self {
            Dir::Recv => s.recv_buffer_size(),
            Dir::Send => s.send_buffer_size(),
        }
        .unwrap_or(0)
    }

    fn set(self, s: &Socket, n: usize) {
        let _ = match self {
            Dir::Recv => s.set_recv_buffer_size(n),
            Dir::Send => s.set_send_buffer_size(n),
        };
    }

    /// Past `net.core.{r,w}mem_max` (needs CAP_NET_ADMIN; root has it).
    #[cfg(target_os = "linux")]
    fn force(self, s: &Socket, n: usize) {
        use std::os::fd::AsRawFd;
        let opt = match self {
            Dir::Recv => libc::SO_RCVBUFFORCE,
            Dir::Send => libc::SO_SNDBUFFORCE,
        };
        let v = libc::c_int::try_from(n).unwrap_or(libc::c_int::MAX);
        // SAFETY: a valid socket descriptor and a c_int option value of the
        // size passed; the kernel only reads it.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn force(self, _: &Socket, _: usize) {}

    fn name(self) -> &'static str {
        match self {
            Dir::Recv => "receive",
            Dir::Send => "send",
        }
    }

    fn sysctl(self) -> &'static str {
        match self {
            Dir::Recv => "net.core.rmem_max",
            Dir::Send => "net.core.wmem_max",
        }
    }

    /// What the kernel granted: Linux reports twice the size set (the other
    /// half is its bookkeeping allowance), other systems the size itself.
    fn granted(self, s: &Socket) -> usize {
        let reported = self.get(s);
        if cfg!(target_os = "linux") {
            reported / 2
        } else {
            reported
        }
    }
}

/// Largest request passed on: the kernel takes an `int` and doubles it.
const MAX_REQUEST: usize = (i32::MAX / 2) as usize;

/// Sizes one buffer: at least `want` where the system allows it. Returns
/// what was granted.
fn grow(s: &Socket, dir: Dir, want: usize) -> usize {
    let now = dir.granted(s);
    if now >= want {
        return now;
    }
    dir.set(s, want);
    if dir.granted(s) < want {
        // Capped by the sysctl limit: a privileged process may go past it,
        // as quic-go does.
        dir.force(s, want);
    }
    dir.granted(s)
}

/// Only the first socket that falls short warns (a process may run many
/// nodes); the others log at debug level.
static WARNED: AtomicBool = AtomicBool::new(false);

fn size_buffers(s: &Socket, want: usize) {
    if want == 0 {
        return;
    }
    let want = want.min(MAX_REQUEST);
    let mut short = Vec::new();
    for dir in [Dir::Recv, Dir::Send] {
        let got = grow(s, dir, want);
        if got < want {
            short.push((dir, got));
        }
    }
    if short.is_empty() {
        return;
    }
    let what = short.iter().map(|(d, got)| format!("{} {} KiB", d.name(), got / 1024)).collect::<Vec<_>>().join(", ");
    let sysctls = short.iter().map(|(d, _)| format!("{}={want}", d.sysctl())).collect::<Vec<_>>().join(" ");
    if !WARNED.swap(true, Ordering::Relaxed) {
        warn!(
            "UDP socket buffers below the {} KiB asked for ({what}): the kernel may drop bursts, which slows QUIC down; \
             raise the limit (sysctl -w {sysctls}) or run with CAP_NET_ADMIN, or set socket_buffer = 0 \
             ([limits] in the config file, Config::socket_buffer) to keep the system default quietly",
            want / 1024
        );
    } else {
        debug!("UDP socket buffers below the {} KiB asked for ({what})", want / 1024);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn sysctl(name: &str) -> usize {
        let path = format!("/proc/sys/net/core/{name}");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
        text.trim().parse().unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Whether this process may exceed the sysctl limits (CAP_NET_ADMIN, bit
    /// 12 of the effective capabilities; root in a container may lack it).
    fn net_admin() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let caps = status.lines().find_map(|l| l.strip_prefix("CapEff:")).expect("CapEff line");
        u64::from_str_radix(caps.trim(), 16).expect("CapEff is hex") & (1 << 12) != 0
    }

    fn socket() -> Socket {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into()).unwrap();
        s
    }

    fn bound(want: usize) -> Socket {
        Socket::from(bind(Some(Ipv4Addr::LOCALHOST.into()), &[0], want).unwrap())
    }

    #[test]
    fn bound_socket_gets_the_buffers_asked_for_within_the_limits() {
        // Up to both limits: granted as asked, privileged or not (more than
        // the default wherever the limits are above it).
        let want = sysctl("rmem_max").min(sysctl("wmem_max"));
        let s = bound(want);
        assert!(Dir::Recv.granted(&s) >= want, "receive: {} granted of {want}", Dir::Recv.granted(&s));
        assert!(Dir::Send.granted(&s) >= want, "send: {} granted of {want}", Dir::Send.granted(&s));
    }

    #[test]
    fn past_the_limits_only_with_net_admin() {
        // Twice the larger limit: only SO_*BUFFORCE reaches it.
        let want = (2 * sysctl("rmem_max").max(sysctl("wmem_max"))).min(MAX_REQUEST);
        let s = bound(want);
        let (recv, send) = (Dir::Recv.granted(&s), Dir::Send.granted(&s));
        if net_admin() {
            assert!(recv >= want && send >= want, "with CAP_NET_ADMIN: receive {recv}, send {send}, asked {want}");
        } else {
            // Capped: as much as the limits allow, no more.
            assert_eq!((recv, send), (sysctl("rmem_max"), sysctl("wmem_max")), "asked {want}");
        }
    }

    #[test]
    fn zero_keeps_the_system_default() {
        let s = bound(0);
        assert_eq!(s.recv_buffer_size().unwrap(), socket().recv_buffer_size().unwrap());
        assert_eq!(s.send_buffer_size().unwrap(), socket().send_buffer_size().unwrap());
    }

    #[test]
    fn port_in_use_tries_the_next() {
        let first = bind(Some(Ipv4Addr::LOCALHOST.into()), &[0], 0).unwrap();
        let taken = first.local_addr().unwrap().port();
        let second = bind(Some(Ipv4Addr::LOCALHOST.into()), &[taken, 0], 0).unwrap();
        assert_ne!(second.local_addr().unwrap().port(), taken);
        let err = bind(Some(Ipv4Addr::LOCALHOST.into()), &[taken], 0).unwrap_err().to_string();
        assert!(err.contains(&taken.to_string()), "{err}");
    }
}
