//! The endpoint's UDP socket as quinn sees it: the real socket, plus relay
//! routes and punched paths that quinn never notices.
//!
//! Sending, a packet to a connection's key goes where [`Paths`] routes it:
//! to the key itself (the common case, a direct connection: no lookup when
//! no route exists at all), to the direct address a relayed connection
//! punched, wrapped for a relay, or both. A packet for a relay we are not
//! registered at (yet) goes to [`Paths::relay_send`], which holds it until
//! the registration is answered. Receiving, our own datagrams
//! (relay and probe messages, told from QUIC by their first byte) are
//! handled here and hidden from quinn; relayed packets are unwrapped and
//! presented as coming from their key, and packets from a punched direct
//! address as coming from the relayed connection's key.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::Notify;

use super::keys::{is_relay_key, RouteBook};
use super::paths::{PathEvent, Paths, Route, Routing};
use crate::peers::canonical;
use crate::relay::server::{RelayServer, Verdict};
use crate::relay::wire::{self, Msg, RelayId, RELAY_HEADER};
use crate::wire::RelayRoute;

/// Receive slots kept back from the real socket, for the datagrams that
/// unwrapping a coalesced (GRO) batch of relayed packets splits off.
const SPARE_SLOTS: usize = 4;
/// Unwrapped packets waiting for quinn's next read at most (then dropped:
/// QUIC retransmits).
const MAX_PENDING: usize = 256;

/// The relay this node runs for others on its socket (`--no-relay`: none).
pub(crate) struct SocketRelay(Mutex<RelayServer>);

impl SocketRelay {
    pub(crate) fn new(server: RelayServer) -> SocketRelay {
        SocketRelay(Mutex::new(server))
    }

    /// Drops the registrations of revoked members (a new list is in force).
    pub(crate) fn drop_revoked(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).drop_revoked()
    }

    /// The relay server's counters (metrics).
    pub(crate) fn stats(&self) -> crate::relay::server::RelayStats {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).stats()
    }

    /// `buf[..len]` is a `Register`, `Send` or `Unregister` from `src`: returns where to
    /// send `buf[..n]` (rewritten in place), if anywhere.
    fn on_datagram(&self, src: SocketAddr, buf: &mut [u8], len: usize) -> Option<(SocketAddr, usize)> {
        let now = Instant::now();
        let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if r.next_timeout().is_some_and(|t| t <= now) {
            r.on_timeout(now);
        }
        match r.on_datagram(src, buf, len, now) {
            Verdict::Drop => None,
            Verdict::Forward { to } => Some((to, len)),
            Verdict::Reply { to, len } => Some((to, len)),
        }
    }
}

/// What the socket, its driver and the node share.
pub(crate) struct PathShared {
    pub(crate) paths: Mutex<Paths>,
    /// The socket's copy of [`Paths::routing`], refreshed after each change.
    routing: RwLock<Snapshot>,
    /// Any route, alias or relay at all (else sending needs no lookup).
    active: AtomicBool,
    pub(crate) book: RouteBook,
    /// Wakes the driver (new timers, events).
    pub(crate) wake: Notify,
    pub(crate) relay_service: Option<SocketRelay>,
    pending: Mutex<VecDeque<(SocketAddr, Vec<u8>)>>,
    events: Mutex<VecDeque<PathEvent>>,
    /// The socket, for control datagrams. Weak: quinn's endpoint owns it, so
    /// the port is released when the endpoint goes, whoever holds this.
    socket: std::sync::OnceLock<std::sync::Weak<PathSocket>>,
}

#[derive(Default)]
struct Snapshot {
    routing: Routing,
    relays: HashSet<SocketAddr>,
    /// The relays we are registered at: packets for others wait in [`Paths`].
    registered: HashSet<SocketAddr>,
}

impl PathShared {
    pub(crate) fn new(paths: Paths, relay_service: Option<SocketRelay>) -> Arc<PathShared> {
        Arc::new(PathShared {
            paths: Mutex::new(paths),
            routing: RwLock::new(Snapshot::default()),
            active: AtomicBool::new(false),
            book: RouteBook::default(),
            wake: Notify::new(),
            relay_service,
            pending: Mutex::new(VecDeque::new()),
            events: Mutex::new(VecDeque::new()),
            socket: std::sync::OnceLock::new(),
        })
    }

    /// [`PathShared::with`], sending through the socket (if it still exists).
    pub(crate) fn run<R>(&self, f: impl FnOnce(&mut Paths) -> R) -> R {
        let socket = self.socket.get().and_then(|w| w.upgrade());
        self.with(
            &|to, b| {
                if let Some(s) = &socket {
                    s.send_raw(to, b)
                }
            },
            f,
        )
    }

    /// Runs `f` on the state machine, then publishes what changed: the
    /// routing to the socket, datagrams to `send`, events to the node.
    pub(crate) fn with<R>(&self, send: &dyn Fn(SocketAddr, &[u8]), f: impl FnOnce(&mut Paths) -> R) -> R {
        let mut p = self.paths.lock().unwrap_or_else(|e| e.into_inner());
        let before = p.next_timeout();
        let r = f(&mut p);
        let after = p.next_timeout();
        {
            let mut snap = self.routing.write().unwrap_or_else(|e| e.into_inner());
            let routing = p.routing();
            if snap.routing.routes != routing.routes || snap.routing.aliases != routing.aliases || snap.routing.relay_in != routing.relay_in
            {
                snap.routing =
                    Routing { routes: routing.routes.clone(), aliases: routing.aliases.clone(), relay_in: routing.relay_in.clone() };
            }
            snap.relays = p.relay_addrs();
            snap.registered = p.registered_relays(Instant::now());
            let active = !snap.relays.is_empty() || !snap.routing.routes.is_empty() || !snap.routing.aliases.is_empty();
            self.active.store(active, Ordering::Release);
        }
        while let Some((to, b)) = p.poll_transmit() {
            send(to, &b);
        }
        let mut any = false;
        {
            let mut ev = self.events.lock().unwrap_or_else(|e| e.into_inner());
            while let Some(e) = p.poll_event() {
                ev.push_back(e);
                any = true;
            }
        }
        drop(p);
        // The driver looks again if there are events or a timer moved earlier.
        if any || after.is_some_and(|a| before.is_none_or(|b| a < b)) {
            self.wake.notify_one();
        }
        r
    }

    pub(crate) fn take_events(&self) -> Vec<PathEvent> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect()
    }

    /// How to send to `dest`; `false` with a relay we are not registered at
    /// (the relayed part must go through [`Paths::relay_send`]).
    fn route(&self, dest: SocketAddr) -> Option<(Route, bool)> {
        let dest = canonical(dest);
        let snap = self.routing.read().unwrap_or_else(|e| e.into_inner());
        if self.active.load(Ordering::Acquire) {
            if let Some(r) = snap.routing.routes.get(&dest) {
                let ready = match r {
                    Route::Direct(_) => true,
                    Route::Relay { relay, .. } | Route::Both { relay, .. } => snap.registered.contains(relay),
                };
                return Some((*r, ready));
            }
        }
        // A dial through a relay, before its connection is known to `Paths`.
        let RelayRoute { relay, id } = self.book.route(dest)?;
        Some((Route::Relay { relay, to: RelayId(id) }, snap.registered.contains(&relay)))
    }
}

/// The socket handed to quinn.
pub(crate) struct PathSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    /// The same socket, for control datagrams sent outside quinn's I/O
    /// (tokio's `try_io` refuses to send before quinn first polled for writing).
    raw: std::net::UdpSocket,
    /// The real socket is IPv6 (dual-stack): quinn uses IPv4-mapped forms.
    v6: bool,
    shared: Arc<PathShared>,
}

impl fmt::Debug for PathSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PathSocket").field("inner", &self.inner).finish()
    }
}

impl PathSocket {
    /// `raw` is a clone of the socket `inner` wraps.
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, raw: std::net::UdpSocket, shared: Arc<PathShared>) -> io::Result<Arc<PathSocket>> {
        let v6 = inner.local_addr()?.is_ipv6();
        let s = Arc::new(PathSocket { inner, raw, v6, shared: shared.clone() });
        let _ = shared.socket.set(Arc::downgrade(&s));
        Ok(s)
    }

    /// `addr` in the form quinn uses on this socket.
    fn present(&self, addr: SocketAddr) -> SocketAddr {
        match addr {
            SocketAddr::V4(v4) if self.v6 => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
            a => a,
        }
    }

    /// Sends one control datagram, best effort (they are all retried).
    pub(crate) fn send_raw(&self, to: SocketAddr, bytes: &[u8]) {
        if let Err(e) = self.raw.send_to(bytes, self.present(to)) {
            tracing::trace!(%to, error = %e, "control datagram not sent");
        }
    }

    fn send_relayed(&self, t: &Transmit<'_>, relay: SocketAddr, to: RelayId, registered: bool) -> io::Result<()> {
        let seg = t.segment_size.unwrap_or(t.contents.len()).max(1);
        if !registered {
            // One `Send` per packet, held in `Paths` until our registration there is answered.
            let packets = t
                .contents
                .chunks(seg)
                .map(|chunk| {
                    let mut b = vec![0; RELAY_HEADER + chunk.len()];
                    wire::put_send_header(&mut b, to);
                    b[RELAY_HEADER..].copy_from_slice(chunk);
                    b
                })
                .collect();
            self.shared.with(&|to, b| self.send_raw(to, b), |p| p.relay_send(relay, packets, Instant::now()));
            return Ok(());
        }
        let n = t.contents.len().div_ceil(seg);
        let mut buf = Vec::with_capacity(t.contents.len() + n * RELAY_HEADER);
        for chunk in t.contents.chunks(seg) {
            let start = buf.len();
            buf.resize(start + RELAY_HEADER, 0);
            wire::put_send_header(&mut buf[start..], to);
            buf.extend_from_slice(chunk);
        }
        let wrapped = Transmit {
            destination: self.present(relay),
            ecn: t.ecn,
            contents: &buf,
            segment_size: t.segment_size.map(|s| s + RELAY_HEADER),
            src_ip: None,
        };
        self.inner.try_send(&wrapped)
    }

    /// Handles our datagram `d` from `src` (not a relayed packet).
    fn control(&self, src: SocketAddr, d: &mut [u8]) {
        let src = canonical(src);
        if matches!(wire::decode(d), Some(Msg::Register { .. } | Msg::Send { .. } | Msg::Unregister { .. })) {
            if let Some(svc) = &self.shared.relay_service {
                let len = d.len();
                if let Some((to, n)) = svc.on_datagram(src, d, len) {
                    self.send_raw(to, &d[..n]);
                }
            }
            return;
        }
        let Some(msg) = wire::decode(d) else { return };
        let now = Instant::now();
        self.shared.with(&|to, b| self.send_raw(to, b), |p| p.on_datagram(src, msg, now));
    }

    /// The key that relayed packets from `(relay, from)` stand for, if `relay` is one we use.
    fn relayed_key(&self, relay: SocketAddr, from: RelayId) -> Option<SocketAddr> {
        let relay = canonical(relay);
        {
            let snap = self.shared.routing.read().unwrap_or_else(|e| e.into_inner());
            if let Some(k) = snap.routing.relay_in.get(&(relay, from)) {
                return Some(*k);
            }
            if !snap.relays.contains(&relay) {
                return None;
            }
        }
        // Someone dials us through this relay: a new connection.
        self.shared.book.learn(RelayRoute { relay, id: from.0 })
    }

    fn alias(&self, src: SocketAddr) -> Option<SocketAddr> {
        if !self.shared.active.load(Ordering::Acquire) {
            return None;
        }
        self.shared.routing.read().unwrap_or_else(|e| e.into_inner()).routing.aliases.get(&canonical(src)).copied()
    }

    /// Rewrites received datagram `i` for quinn: returns false if nothing of it is for quinn.
    fn fix_up(&self, buf: &mut [u8], meta: &mut RecvMeta) -> bool {
        let len = meta.len;
        let stride = meta.stride.clamp(1, len.max(1));
        let ours = (0..len).step_by(stride).any(|off| wire::is_ours(&buf[off..]));
        if !ours {
            if let Some(k) = self.alias(meta.addr) {
                meta.addr = self.present(k);
            }
            return true;
        }
        // Relayed packets, all from one sender (a relayed bulk transfer, coalesced): unwrap in place.
        if let Some(Msg::Recv { from, .. }) = wire::decode(&buf[..stride.min(len)]) {
            let same = (0..len).step_by(stride).all(|off| buf[off] == wire::Tag::Recv as u8 && buf[off + 1..].starts_with(&from.0));
            if same && stride > RELAY_HEADER {
                let Some(key) = self.relayed_key(meta.addr, from) else { return false };
                let mut w = 0;
                for off in (0..len).step_by(stride) {
                    let end = (off + stride).min(len);
                    if end - off < RELAY_HEADER {
                        break;
                    }
                    buf.copy_within(off + RELAY_HEADER..end, w);
                    w += end - off - RELAY_HEADER;
                }
                meta.len = w;
                meta.stride = stride - RELAY_HEADER;
                meta.addr = self.present(key);
                return w > 0;
            }
        }
        // Anything else: one segment at a time; packets for quinn wait in `pending`.
        let mut pending = Vec::new();
        for off in (0..len).step_by(stride) {
            let end = (off + stride).min(len);
            let seg = &mut buf[off..end];
            if !wire::is_ours(seg) {
                let src = self.alias(meta.addr).unwrap_or(meta.addr);
                pending.push((self.present(src), seg.to_vec()));
                continue;
            }
            if let Some(Msg::Recv { from, payload }) = wire::decode(seg) {
                if let Some(key) = self.relayed_key(meta.addr, from) {
                    pending.push((self.present(key), payload.to_vec()));
                }
                continue;
            }
            self.control(meta.addr, seg);
        }
        if !pending.is_empty() {
            let mut q = self.shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            for p in pending {
                if q.len() < MAX_PENDING {
                    q.push_back(p);
                }
            }
        }
        false
    }

    /// Hands waiting unwrapped packets to quinn.
    fn deliver_pending(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> usize {
        let mut q = self.shared.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        while n < bufs.len() {
            let Some((addr, bytes)) = q.pop_front() else { break };
            if bytes.len() > bufs[n].len() {
                continue;
            }
            bufs[n][..bytes.len()].copy_from_slice(&bytes);
            meta[n] = RecvMeta { addr, len: bytes.len(), stride: bytes.len(), ecn: None, dst_ip: None };
            n += 1;
        }
        n
    }
}

impl AsyncUdpSocket for PathSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, t: &Transmit<'_>) -> io::Result<()> {
        if !self.shared.active.load(Ordering::Acquire) && !is_relay_key(t.destination) {
            return self.inner.try_send(t);
        }
        let (route, registered) = match self.shared.route(t.destination) {
            Some((r, registered)) => (Some(r), registered),
            None => (None, true),
        };
        match route {
            // A relay key whose route is unknown (the route book was full):
            // never hand a made-up 240.0.0.0/4 address to the real socket.
            None if is_relay_key(t.destination) => Ok(()),
            None => self.inner.try_send(t),
            Some(Route::Direct(d)) => self.inner.try_send(&Transmit { destination: self.present(d), ..*t }),
            Some(Route::Relay { relay, to }) => self.send_relayed(t, relay, to, registered).or_else(quiet),
            Some(Route::Both { direct, relay, to }) => {
                let direct = self.inner.try_send(&Transmit { destination: self.present(direct), ..*t });
                if matches!(&direct, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                    return direct;
                }
                self.send_relayed(t, relay, to, registered).or_else(quiet)
            }
        }
    }

    fn poll_recv(&self, cx: &mut Context<'_>, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> Poll<io::Result<usize>> {
        loop {
            let n = self.deliver_pending(bufs, meta);
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
            let take = if bufs.len() > SPARE_SLOTS * 2 { bufs.len() - SPARE_SLOTS } else { bufs.len() };
            let n = match self.inner.poll_recv(cx, &mut bufs[..take], &mut meta[..take]) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            let mut any = false;
            for i in 0..n {
                if self.fix_up(&mut bufs[i], &mut meta[i]) {
                    any = true;
                } else {
                    meta[i].len = 0;
                }
            }
            let pending = !self.shared.pending.lock().unwrap_or_else(|e| e.into_inner()).is_empty();
            if any {
                // Move unwrapped packets into the spare slots now, if there is room.
                let extra = if pending { self.deliver_pending(&mut bufs[n..], &mut meta[n..]) } else { 0 };
                return Poll::Ready(Ok(n + extra));
            }
            if !pending {
                // Nothing for quinn in this batch: read on (the real socket
                // says when it has nothing more).
                continue;
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// A relayed packet that cannot be sent is lost, as on any path: QUIC
/// retransmits. Only a full socket buffer is worth telling quinn about.
fn quiet(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::WouldBlock {
        return Err(e);
    }
    tracing::trace!(error = %e, "relayed packet not sent");
    Ok(())
}

#[cfg(test)]
mod tests;
