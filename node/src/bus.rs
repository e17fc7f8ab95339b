//! The public API: [`Bus`], in the spirit of Node's EventEmitter.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, watch};

use crate::config::Config;
use crate::event::{Event, Listener, PeerInfo, Sink};
use crate::id::NodeId;
use crate::mesh::{ConnStats, JoinError, NeighbourEvent, NeighbourInfo, NeighbourStats, PathStats};
use crate::name::{validate_name, NameError, Selector};
use crate::node::{self, Owner};
use crate::payload::{self, PayloadError};
use crate::plane::{Emitted, Plane};
use crate::shared::Inner;

/// Errors from [`Bus::emit`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmitError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error("event {name:?} is {size} bytes (name + payload); the limit is {max} (Config::max_event_size)")]
    TooLarge { name: String, size: usize, max: usize },
    #[error("the bus has left the hood")]
    Left,
}

/// Options for a listener.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenOptions {
    /// A spy is called like any listener but is not counted by `emit`,
    /// `listeners`, `listener_count` or `observe_listener_count`.
    pub spy: bool,
}

impl ListenOptions {
    pub fn spy() -> ListenOptions {
        ListenOptions { spy: true }
    }
}

/// A member of a hood: emit and receive events.
///
/// Cheap to clone; all clones are the same node. Call [`Bus::leave`] to
/// leave the hood cleanly; when the last clone is dropped without it, the
/// node leaves by itself (and logs a warning).
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
    _owner: Arc<Owner>,
}

/// Removes its listener when dropped or [`ListenerHandle::remove`]d.
/// [`ListenerHandle::detach`] keeps the listener for the life of the bus.
#[must_use = "dropping the handle removes the listener; call .detach() to keep it"]
pub struct ListenerHandle {
    inner: Weak<Plane>,
    id: Option<u64>,
}

impl ListenerHandle {
    /// The listener's id (for [`Bus::remove_listener`]).
    pub fn id(&self) -> u64 {
        self.id.unwrap_or_default()
    }
    /// Removes the listener now.
    pub fn remove(mut self) {
        self.remove_now();
    }
    /// Keeps the listener until `remove_listener`/`remove_all_listeners`/`leave`.
    pub fn detach(mut self) -> u64 {
        self.id.take().unwrap_or_default()
    }
    fn remove_now(&mut self) {
        if let (Some(id), Some(inner)) = (self.id.take(), self.inner.upgrade()) {
            inner.remove_listeners(&[id]);
        }
    }
}

impl Drop for ListenerHandle {
    fn drop(&mut self) {
        self.remove_now();
    }
}

/// A stream of events for one selector (see [`Bus::subscribe`]). Dropping it
/// removes the listener. A slow consumer slows the bus down (backpressure)
/// rather than losing events.
pub struct Subscription {
    rx: mpsc::Receiver<Event>,
    handle: ListenerHandle,
}

impl Subscription {
    /// The next event; `None` once the bus has left.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
    /// The listener id.
    pub fn id(&self) -> u64 {
        self.handle.id()
    }
}

impl futures_util::Stream for Subscription {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

impl Bus {
    /// Joins the hood: binds the QUIC port, starts discovery, and returns
    /// at once (neighbours arrive in the background; see
    /// [`Bus::neighbour_events`] and [`Bus::wait_neighbours`]).
    pub async fn join(config: Config) -> Result<Bus, JoinError> {
        let inner = node::start(config).await?;
        Ok(Bus { _owner: Arc::new(Owner(inner.clone())), inner })
    }

    /// This node's id (new at every start).
    pub fn id(&self) -> NodeId {
        self.inner.id
    }
    /// This node as event sources show it.
    pub fn me(&self) -> &PeerInfo {
        &self.inner.me
    }
    /// The hood fingerprint (hex SHA-256 of the CA certificate).
    pub fn fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }
    /// The bound UDP port.
    pub fn port(&self) -> u16 {
        self.inner.local_addr.port()
    }
    /// The bound socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }
    /// Addresses at which neighbours see this node (most recent first).
    pub fn observed_addrs(&self) -> Vec<SocketAddr> {
        self.inner.observed()
    }

    /// Addresses a discovery service mapped for this node on a router (a
    /// port mapping: `source` is `"pcp"`, `"natpmp"` or `"upnp"`), which it
    /// advertises to neighbours and the DHT.
    pub fn external_addrs(&self) -> Vec<ExternalAddr> {
        crate::shared::relock(&self.inner.addrs).external.clone()
    }

    /// Current neighbours.
    pub fn neighbours(&self) -> Vec<NeighbourInfo> {
        self.inner.plane.neighbours().into_iter().map(|n| self.inner.with_path(n)).collect()
    }
    /// Found/lost notifications from now on. A receiver that falls more than
    /// [`crate::NEIGHBOUR_EVENTS`] events behind gets
    /// `RecvError::Lagged(missed)` once and then the newest events; resync
    /// from [`Bus::neighbours`] then.
    pub fn neighbour_events(&self) -> broadcast::Receiver<NeighbourEvent> {
        self.inner.events.subscribe()
    }
    /// The neighbour count, as a watch.
    pub fn neighbour_count(&self) -> watch::Receiver<usize> {
        self.inner.neighbour_count_rx()
    }
    /// Waits until at least `n` neighbours are connected.
    pub async fn wait_neighbours(&self, n: usize) {
        let mut rx = self.inner.neighbour_count_rx();
        let _ = rx.wait_for(|c| *c >= n).await;
    }
    /// Connection counters since join: handshakes started, completed and
    /// timed out in each direction, duplicate connections (diagnostics).
    pub fn conn_stats(&self) -> ConnStats {
        self.inner.conn_stats()
    }
    /// The QUIC path to a current neighbour (round-trip time, packet size,
    /// losses), or None if `id` is not a neighbour.
    pub fn path(&self, id: NodeId) -> Option<PathStats> {
        self.inner.path(id)
    }
    /// Puts a newer revocation list of this node's hood in force (a reload
    /// calls this): handshakes with peers whose certificate it revokes are
    /// refused from now on, in both directions; connections to such peers
    /// are closed at once, and they are never dialled or gossipped again.
    ///
    /// Refused, leaving the list in force as it was: a list for another hood
    /// ([`partybus_pki::RevocationError::OtherHood`]) or an older one (a
    /// smaller sequence number, [`partybus_pki::RevocationError::Older`]).
    /// A list's signature is checked when it is loaded
    /// ([`partybus_pki::RevocationList::load`]), so a forged one never gets here.
    pub fn set_revocations(&self, list: &partybus_pki::RevocationList) -> Result<(), partybus_pki::RevocationError> {
        self.inner.set_revocations(list)
    }
    /// The sequence number of the revocation list in force (0: none).
    pub fn revocation_sequence(&self) -> u64 {
        self.inner.revoked.sequence()
    }
    /// Where this node serves its metrics ([`Config::metrics`], with the
    /// port the system picked for port 0), if it does.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.inner.metrics_addr
    }
    /// The node's metrics now, in the Prometheus text format (OpenMetrics),
    /// exactly as `GET /metrics` returns them.
    pub fn metrics_text(&self) -> String {
        crate::metrics::render(&self.inner)
    }
    /// Events received and dropped because the sender's certificate does
    /// not allow it to emit them (`partybus peer create --emit`).
    pub fn forbidden_events(&self) -> u64 {
        self.inner.forbidden_events.load(std::sync::atomic::Ordering::Relaxed)
    }
    /// Addresses mapped for us by a discovery service (a port mapping);
    /// [`Bus::external_addrs`] also says which protocol made each.
    pub fn mapped_addrs(&self) -> Vec<SocketAddr> {
        crate::shared::relock(&self.inner.addrs).external.iter().map(|e| e.addr).collect()
    }
    /// Every address this node tells peers: configured (`advertise`),
    /// mapped, and its interfaces' addresses.
    pub fn advertised_addrs(&self) -> Vec<SocketAddr> {
        self.inner.advertised()
    }
    /// Current neighbours with their traffic figures (round-trip time,
    /// bytes and events each way, send queue fill, drops).
    pub fn neighbour_stats(&self) -> Vec<NeighbourStats> {
        self.inner.neighbour_stats()
    }
    /// How long ago this node joined.
    pub fn uptime(&self) -> std::time::Duration {
        self.inner.started.elapsed()
    }
    /// What `partybus cert show` says about the certificate this node
    /// presents now (it changes with [`Bus::rotate_identity`]).
    pub fn certificate(&self) -> Option<partybus_pki::CertInfo> {
        self.inner.identity.cert_info()
    }
    /// What `partybus cert show` says about the hood's CA certificate.
    pub fn hood_certificate(&self) -> Option<partybus_pki::CertInfo> {
        partybus_pki::CertInfo::from_der(self.inner.hood.der(), "the hood certificate").ok()
    }
    /// Presents `identity` (a new certificate and key) in every handshake
    /// from now on; connections already up keep going. Refused unless it
    /// belongs to this node's hood and has this node's name ([`Identity::load`]
    /// has checked that the hood issued it, that it is valid now and that the
    /// key matches).
    ///
    /// [`Identity::load`]: partybus_pki::Identity::load
    pub fn rotate_identity(&self, identity: partybus_pki::Identity) -> Result<(), crate::RotateError> {
        if identity.hood_fingerprint() != self.inner.fingerprint {
            return Err(crate::RotateError::OtherHood {
                got: identity.hood_fingerprint().to_owned(),
                want: self.inner.fingerprint.clone(),
            });
        }
        self.inner.identity.rotate(identity)
    }
    /// Changes limits while running: `queue_limit` applies to neighbours
    /// found from now on (a queue keeps the limit it was made with),
    /// `max_event_size` to emits from now on and to connections opened from
    /// now on, `max_subscriptions_per_peer` to subscriptions from now on.
    pub fn set_limits(&self, queue_limit: usize, max_event_size: usize, max_subscriptions_per_peer: usize) {
        self.inner.settings.queue_limit.store(queue_limit, Ordering::Relaxed);
        self.inner.settings.max_event_size.store(max_event_size, Ordering::Relaxed);
        self.inner.plane.state().subs.set_max_per_peer(max_subscriptions_per_peer);
    }
    /// Dials an address now (in addition to discovery).
    pub fn connect(&self, addr: SocketAddr) {
        self.inner.connect(addr);
    }

    /// Calls `handler` for every event matching `selector` (wildcards `+`
    /// and `#`). Handlers run on the bus's dispatcher task, never inside
    /// `emit`; keep them short (spawn for long work). A panic is caught and
    /// logged. The handler borrows the event (one `Event` serves every
    /// handler of a delivery, with no reference counting per call); clone
    /// it, cheaply, to keep it.
    pub fn on<F>(&self, selector: &str, handler: F) -> Result<ListenerHandle, NameError>
    where
        F: Fn(&Event) + Send + Sync + 'static,
    {
        self.on_with(selector, ListenOptions::default(), handler)
    }

    /// [`Bus::on`] with options (spy).
    pub fn on_with<F>(&self, selector: &str, opts: ListenOptions, handler: F) -> Result<ListenerHandle, NameError>
    where
        F: Fn(&Event) + Send + Sync + 'static,
    {
        self.add(selector, opts, Sink::Fn(Box::new(handler)))
    }

    /// A stream of the events matching `selector`.
    pub fn subscribe(&self, selector: &str) -> Result<Subscription, NameError> {
        self.subscribe_with(selector, ListenOptions::default())
    }

    /// [`Bus::subscribe`] with options (spy).
    pub fn subscribe_with(&self, selector: &str, opts: ListenOptions) -> Result<Subscription, NameError> {
        let (tx, rx) = mpsc::channel(1024);
        let handle = self.add(selector, opts, Sink::Stream(tx))?;
        Ok(Subscription { rx, handle })
    }

    fn add(&self, selector: &str, opts: ListenOptions, sink: Sink) -> Result<ListenerHandle, NameError> {
        let selector = Selector::new(selector)?;
        let id = self.inner.plane.next_sub_id.fetch_add(1, Ordering::Relaxed);
        self.inner.plane.add_listener(Listener { id, selector, sink }, opts.spy);
        Ok(ListenerHandle { inner: Arc::downgrade(&self.inner.plane), id: Some(id) })
    }

    /// Emits `event` with a serde payload to every matching listener in the
    /// hood. Resolves the number of non-spy listeners it reached.
    ///
    /// What the count promises: the local listeners that match, plus, for
    /// each neighbour, its matching listeners whose subscription had
    /// arrived here, provided the event was accepted into that neighbour's
    /// send queue. A queued event is delivered in order unless the
    /// connection dies before it is sent; a neighbour already known to be
    /// lost is never counted. It is not an end-to-end acknowledgement.
    /// While a neighbour's queue is full this waits, as the
    /// [`crate::FullPolicy`] says (by default while the queue drains, and
    /// at most 10 s without any progress before that neighbour is
    /// disconnected).
    pub async fn emit<T: Serialize + ?Sized>(&self, event: &str, payload: &T) -> Result<usize, EmitError> {
        let bytes = payload::encode(payload)?;
        self.emit_raw(event, Bytes::from(bytes)).await
    }

    /// Emits a byte buffer (MessagePack binary; partybus' `Buffer`).
    pub async fn emit_bytes(&self, event: &str, bytes: &[u8]) -> Result<usize, EmitError> {
        self.emit(event, serde_bytes::Bytes::new(bytes)).await
    }

    /// Emits a payload that is already MessagePack-encoded.
    pub async fn emit_raw(&self, event: &str, payload: Bytes) -> Result<usize, EmitError> {
        // The name is validated on its way into the route cache (see
        // `plane::State::emit_route`), not again for every event.
        let size = event.len() + payload.len();
        let max = self.inner.settings.max_event_size();
        if size > max {
            return Err(EmitError::TooLarge { name: event.to_owned(), size, max });
        }
        if self.inner.is_leaving() {
            return Err(EmitError::Left);
        }
        Ok(match self.inner.plane.emit_now(event, &payload)? {
            Emitted::Done { count, batch_ready } => {
                if batch_ready {
                    tokio::task::yield_now().await;
                }
                count
            }
            // Boxed: keeps this future small (it is moved on every emit),
            // the allocation only happens when a queue is full.
            Emitted::Wait(rest) => Box::pin(self.inner.plane.emit_wait(event, payload, rest)).await,
        })
    }

    /// One entry per non-spy listener of `event` in the hood: the peer it lives on.
    pub fn listeners(&self, event: &str) -> Result<Vec<PeerInfo>, NameError> {
        validate_name(event)?;
        Ok(self.inner.plane.listeners_of(event))
    }

    /// Non-spy listeners of `event` in the hood.
    pub fn listener_count(&self, event: &str) -> Result<usize, NameError> {
        validate_name(event)?;
        let mut st = self.inner.plane.state();
        Ok(st.subs.route(event).counted())
    }

    /// The listener count of `event` now and at every change (local or
    /// remote subscribe/unsubscribe, neighbour found or lost). Use
    /// `changed()`/`borrow()`, or wrap in `tokio_stream::wrappers::WatchStream`.
    pub fn observe_listener_count(&self, event: &str) -> Result<watch::Receiver<usize>, NameError> {
        validate_name(event)?;
        Ok(self.inner.plane.add_observer(event.to_owned()))
    }

    /// Removes one listener by id; returns whether it existed.
    pub fn remove_listener(&self, id: u64) -> bool {
        self.inner.plane.remove_listeners(&[id]) == 1
    }

    /// Removes every local listener, or those registered with exactly
    /// `selector`; returns how many.
    pub fn remove_all_listeners(&self, selector: Option<&str>) -> usize {
        let ids = self.inner.plane.listener_ids(selector);
        self.inner.plane.remove_listeners(&ids)
    }

    /// Events dropped for neighbours under [`crate::FullPolicy::Drop`].
    pub fn dropped(&self) -> u64 {
        self.neighbours().iter().map(|n| n.dropped).sum()
    }

    /// Leaves the hood: stops discovery, flushes what was emitted, says
    /// goodbye to every neighbour (they see the loss at once), releases the
    /// port. Subscriptions end.
    pub async fn leave(&self) {
        node::leave(&self.inner).await
    }
}

/// An address at which this node is reachable from elsewhere, and who said
/// so ([`Bus::external_addrs`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ExternalAddr {
    pub addr: SocketAddr,
    /// The discovery service that reported it: for port mappings the
    /// protocol that made the mapping (`"pcp"`, `"natpmp"`, `"upnp"`).
    pub source: String,
}
