//! A relay on a UDP socket of its own: what `partybus dht` runs. (A node
//! serves its relay on its QUIC socket instead, driving a
//! [`RelayServer`] itself.)
//!
//! One task: receive batches of datagrams (quinn's UDP layer: GRO and
//! `recvmmsg`), hand each to the [`RelayServer`], send what it says (runs of
//! datagrams to one client in one GSO send); sweep expired clients when it asks;
//! stop when the token is cancelled. Datagrams that are not ours
//! ([`wire::is_ours`]: a stray QUIC packet, a scanner) are dropped unseen.
//! It logs once at start, and at most once a [`REPORT_INTERVAL`] a summary
//! of what it refused, never per packet.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use std::io::IoSliceMut;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::server::{RelayConfig, RelayServer, RelayStats, Verdict};
use super::wire;

/// Refusals and drops are summed up in the log at most this often.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// A running relay service. Dropping it does not stop it: cancel its token.
pub struct RelayService {
    local_addr: SocketAddr,
    server: Arc<Mutex<RelayServer>>,
    task: tokio::task::JoinHandle<()>,
}

impl RelayService {
    /// Serves a relay with `cfg` on `socket` until `cancel` is cancelled.
    /// Call it within a tokio runtime. The cookie key is random.
    pub fn spawn(socket: UdpSocket, cfg: RelayConfig, cancel: CancellationToken) -> io::Result<RelayService> {
        let local_addr = socket.local_addr()?;
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| io::Error::other("no random bytes for the relay's cookie key"))?;
        tracing::info!(
            address = %local_addr,
            policy = %cfg.policy,
            max_clients = cfg.max_clients,
            max_clients_per_ip = cfg.max_clients_per_ip,
            client_rate = %Rate(cfg.client_rate),
            client_burst = cfg.client_burst,
            total_rate = %Rate(cfg.total_rate),
            lifetime = ?cfg.lifetime,
            "relay serving"
        );
        let server = Arc::new(Mutex::new(RelayServer::new(cfg, seed)));
        let task = tokio::spawn(run(socket, server.clone(), cancel));
        Ok(RelayService { local_addr, server, task })
    }

    /// The address it serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The relay's counters and client count now.
    pub fn stats(&self) -> RelayStats {
        lock(&self.server).stats()
    }

    /// Waits until the service has stopped (after its token was cancelled).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

fn lock(m: &Mutex<RelayServer>) -> MutexGuard<'_, RelayServer> {
    // The server's methods do not panic halfway through a change.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Bytes per second, for people.
struct Rate(u64);

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            r if r >= 1_000_000 && r % 100_000 == 0 => write!(f, "{}MB/s", r as f64 / 1e6),
            r if r >= 1_000 && r % 100 == 0 => write!(f, "{}kB/s", r as f64 / 1e3),
            r => write!(f, "{r}B/s"),
        }
    }
}

enum Event {
    Stop,
    Timer,
    Readable,
    RecvError(io::Error),
}

/// Receive slots per read (each takes a coalesced batch of up to 64 KiB).
const SLOTS: usize = 16;
const SLOT_LEN: usize = 64 * 1024;

async fn run(socket: UdpSocket, server: Arc<Mutex<RelayServer>>, cancel: CancellationToken) {
    // quinn's UDP layer: many datagrams per system call each way (recvmmsg
    // with GRO, sendmsg with GSO). One `recvfrom` and one `sendto` per
    // datagram cost 10 ms of CPU per relayed MB.
    let state = match quinn::udp::UdpSocketState::new((&socket).into()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "relay: cannot set the socket up; not relaying");
            return;
        }
    };
    let mut bufs = vec![0u8; SLOTS * SLOT_LEN];
    let mut metas = [quinn::udp::RecvMeta::default(); SLOTS];
    let now = || tokio::time::Instant::now().into_std();
    let mut report = Report { next: now() + REPORT_INTERVAL, last: RelayStats::default(), foreign: 0, send_errors: 0, recv_errors: 0 };
    loop {
        let deadline = lock(&server).next_timeout().map_or(report.next, |t| t.min(report.next));
        let event = tokio::select! {
            biased;
            _ = cancel.cancelled() => Event::Stop,
            _ = tokio::time::sleep_until(deadline.into()) => Event::Timer,
            r = socket.readable() => match r {
                Ok(()) => Event::Readable,
                Err(e) => Event::RecvError(e),
            },
        };
        match event {
            Event::Stop => break,
            Event::Timer => {
                let t = now();
                lock(&server).on_timeout(t);
                if t >= report.next {
                    report.log(&lock(&server).stats(), t);
                }
            }
            Event::Readable => {
                let got = {
                    let mut iovs: Vec<IoSliceMut<'_>> = bufs.chunks_mut(SLOT_LEN).map(IoSliceMut::new).collect();
                    socket.try_io(Interest::READABLE, || state.recv((&socket).into(), &mut iovs, &mut metas))
                };
                match got {
                    Ok(n) => {
                        for (i, m) in metas.iter().enumerate().take(n) {
                            let slot = &mut bufs[i * SLOT_LEN..i * SLOT_LEN + m.len];
                            relay_batch(&socket, &state, &server, slot, m.addr, m.stride, &mut report).await;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => recv_error(e, &mut report).await,
                }
            }
            Event::RecvError(e) => recv_error(e, &mut report).await,
        }
    }
    tracing::info!(stats = ?lock(&server).stats(), "relay stopped");
}

async fn recv_error(e: io::Error, report: &mut Report) {
    report.recv_errors += 1;
    // ICMP errors for earlier sends (Linux reports them on the next
    // receive) say nothing about this socket; anything else may
    // repeat at once, so do not spin on it.
    if !matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset) {
        tracing::debug!(error = %e, "relay: receive failed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The datagrams of one read from `src` (`stride` bytes each, the last one
/// perhaps shorter): each goes to the relay, which rewrites it in place;
/// consecutive ones forwarded to the same client go out in one GSO send.
async fn relay_batch(
    socket: &UdpSocket,
    state: &quinn::udp::UdpSocketState,
    server: &Mutex<RelayServer>,
    slot: &mut [u8],
    src: SocketAddr,
    stride: usize,
    report: &mut Report,
) {
    let stride = stride.clamp(1, slot.len().max(1));
    // (destination, first byte, datagrams) of the run being collected.
    let mut run: Option<(SocketAddr, usize, usize)> = None;
    let max_run = state.max_gso_segments().max(1);
    let t = tokio::time::Instant::now().into_std();
    let mut off = 0;
    while off < slot.len() {
        let end = (off + stride).min(slot.len());
        let seg = &mut slot[off..end];
        let verdict = if wire::is_ours(seg) {
            let len = seg.len();
            lock(server).on_datagram(src, seg, len, t)
        } else {
            report.foreign += 1;
            Verdict::Drop
        };
        match verdict {
            Verdict::Forward { to } => {
                let joins = matches!(run, Some((d, _, k)) if d == to && k < max_run);
                if !joins {
                    if let Some(r) = run.take() {
                        send_run(socket, state, slot, r, stride, report).await;
                    }
                    run = Some((to, off, 0));
                }
                if let Some((_, _, k)) = run.as_mut() {
                    *k += 1;
                }
                if end - off < stride {
                    // A shorter datagram ends a GSO batch.
                    if let Some(r) = run.take() {
                        send_run(socket, state, slot, r, stride, report).await;
                    }
                }
            }
            Verdict::Reply { to, len } => {
                if let Some(r) = run.take() {
                    send_run(socket, state, slot, r, stride, report).await;
                }
                send(socket, state, &slot[off..off + len], to, None, report).await;
            }
            Verdict::Drop => {
                if let Some(r) = run.take() {
                    send_run(socket, state, slot, r, stride, report).await;
                }
            }
        }
        off = end;
    }
    if let Some(r) = run.take() {
        send_run(socket, state, slot, r, stride, report).await;
    }
}

async fn send_run(
    socket: &UdpSocket,
    state: &quinn::udp::UdpSocketState,
    slot: &[u8],
    (to, start, count): (SocketAddr, usize, usize),
    stride: usize,
    report: &mut Report,
) {
    let end = (start + count * stride).min(slot.len());
    let segment = (count > 1).then_some(stride);
    send(socket, state, &slot[start..end], to, segment, report).await;
}

async fn send(
    socket: &UdpSocket,
    state: &quinn::udp::UdpSocketState,
    bytes: &[u8],
    to: SocketAddr,
    segment: Option<usize>,
    report: &mut Report,
) {
    let t = quinn::udp::Transmit { destination: to, ecn: None, contents: bytes, segment_size: segment, src_ip: None };
    // A full socket buffer waits (bounded: the first writable moment); any
    // other error loses the packets, which the clients' QUIC retransmits.
    for _ in 0..2 {
        match socket.try_io(Interest::WRITABLE, || state.send(socket.into(), &t)) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if socket.writable().await.is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    report.send_errors += 1;
}

/// What the periodic log line sums up.
struct Report {
    next: Instant,
    last: RelayStats,
    foreign: u64,
    send_errors: u64,
    recv_errors: u64,
}

impl Report {
    fn log(&mut self, s: &RelayStats, now: Instant) {
        let d = |now: u64, then: u64| now - then;
        let l = &self.last;
        let (full, not_allowed, bad_proof) = (
            d(s.refused_full, l.refused_full),
            d(s.refused_not_allowed, l.refused_not_allowed),
            d(s.refused_bad_proof, l.refused_bad_proof),
        );
        if full + not_allowed + bad_proof > 0 {
            tracing::info!(
                full,
                not_allowed,
                bad_proof,
                clients = s.clients,
                "relay refused {} registrations in the last {:?}",
                full + not_allowed + bad_proof,
                REPORT_INTERVAL
            );
        }
        tracing::debug!(
            clients = s.clients,
            forwarded_packets = d(s.forwarded_packets, l.forwarded_packets),
            forwarded_bytes = d(s.forwarded_bytes, l.forwarded_bytes),
            dropped_rate = d(s.dropped_rate, l.dropped_rate),
            dropped_total_rate = d(s.dropped_total_rate, l.dropped_total_rate),
            dropped_unregistered = d(s.dropped_unregistered, l.dropped_unregistered),
            dropped_busy = d(s.dropped_busy, l.dropped_busy),
            unknown = d(s.unknown, l.unknown),
            not_ours = self.foreign,
            send_errors = self.send_errors,
            recv_errors = self.recv_errors,
            "relay in the last {:?}",
            REPORT_INTERVAL
        );
        self.last = *s;
        (self.foreign, self.send_errors, self.recv_errors) = (0, 0, 0);
        self.next = now + REPORT_INTERVAL;
    }
}
