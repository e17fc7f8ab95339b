//! A relay on a UDP socket of its own: what `partybus dht` runs. (A node
//! serves its relay on its QUIC socket instead, driving a
//! [`RelayServer`] itself.)
//!
//! One task: receive into a 64 KiB buffer, hand the datagram to the
//! [`RelayServer`], send what it says; sweep expired clients when it asks;
//! stop when the token is cancelled. Datagrams that are not ours
//! ([`wire::is_ours`]: a stray QUIC packet, a scanner) are dropped unseen.
//! It logs once at start, and at most once a [`REPORT_INTERVAL`] a summary
//! of what it refused, never per packet.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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
    Datagram(usize, SocketAddr),
    RecvError(io::Error),
}

async fn run(socket: UdpSocket, server: Arc<Mutex<RelayServer>>, cancel: CancellationToken) {
    let mut buf = vec![0u8; 65536];
    let now = || tokio::time::Instant::now().into_std();
    let mut report = Report { next: now() + REPORT_INTERVAL, last: RelayStats::default(), foreign: 0, send_errors: 0, recv_errors: 0 };
    loop {
        let deadline = lock(&server).next_timeout().map_or(report.next, |t| t.min(report.next));
        let event = tokio::select! {
            biased;
            _ = cancel.cancelled() => Event::Stop,
            _ = tokio::time::sleep_until(deadline.into()) => Event::Timer,
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, src)) => Event::Datagram(n, src),
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
            Event::Datagram(n, src) => {
                // Then whatever else is waiting, without going back through
                // the select (a timer and a wake-up per datagram halved the
                // relay's throughput); bounded, so the timer and the stop
                // token are looked at often enough.
                let mut next = Some((n, src));
                let mut handled = 0;
                while let Some((n, src)) = next {
                    forward(&socket, &server, &mut buf, n, src, &mut report).await;
                    handled += 1;
                    next = if handled < BATCH { socket.try_recv_from(&mut buf).ok() } else { None };
                }
            }
            Event::RecvError(e) => {
                report.recv_errors += 1;
                // ICMP errors for earlier sends (Linux reports them on the next
                // receive) say nothing about this socket; anything else may
                // repeat at once, so do not spin on it.
                if !matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset) {
                    tracing::debug!(error = %e, "relay: receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    tracing::info!(stats = ?lock(&server).stats(), "relay stopped");
}

/// Datagrams handled per wake-up at most.
const BATCH: usize = 256;

/// Hands one datagram to the relay and sends what it says.
async fn forward(socket: &UdpSocket, server: &Mutex<RelayServer>, buf: &mut [u8], n: usize, src: SocketAddr, report: &mut Report) {
    if !wire::is_ours(&buf[..n]) {
        report.foreign += 1;
        return;
    }
    let verdict = lock(server).on_datagram(src, buf, n, tokio::time::Instant::now().into_std());
    let (to, len) = match verdict {
        Verdict::Drop => return,
        Verdict::Forward { to } => (to, n),
        Verdict::Reply { to, len } => (to, len),
    };
    let sent = match socket.try_send_to(&buf[..len], to) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.send_to(&buf[..len], to).await,
        r => r,
    };
    if sent.is_err() {
        // Unreachable destinations, full buffers: the client's QUIC retransmits.
        report.send_errors += 1;
    }
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
