//! What handlers receive, and the dispatcher that calls them off the
//! network path.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::id::NodeId;
use crate::payload::{self, PayloadError};

/// A node an event came from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PeerInfo {
    /// The node's id (new at each start).
    pub id: NodeId,
    /// The CN of its certificate.
    pub name: String,
    /// Its address as seen from here (`None` for the local node).
    pub addr: Option<SocketAddr>,
    /// True for the local node.
    pub local: bool,
}

/// One delivered event. Cheap to clone (reference-counted parts).
#[derive(Clone, Debug)]
pub struct Event {
    pub(crate) name: Arc<str>,
    pub(crate) source: Arc<PeerInfo>,
    pub(crate) payload: Bytes,
}

impl Event {
    /// The event's name (useful with wildcard selectors).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The node that emitted it.
    pub fn source(&self) -> &PeerInfo {
        &self.source
    }
    /// The payload as it travelled: MessagePack bytes.
    pub fn raw(&self) -> &Bytes {
        &self.payload
    }
    /// Decodes the payload into `T`.
    pub fn decode<'a, T: Deserialize<'a>>(&'a self) -> Result<T, PayloadError> {
        payload::decode(&self.payload)
    }
    /// Decodes a payload that is a byte buffer (emitted with `serde_bytes`
    /// or [`crate::Bus::emit_bytes`]).
    pub fn bytes(&self) -> Result<Vec<u8>, PayloadError> {
        Ok(payload::decode::<serde_bytes::ByteBuf>(&self.payload)?.into_vec())
    }
    /// The payload as JSON (binary and timestamps with markers).
    pub fn to_json(&self) -> Result<serde_json::Value, PayloadError> {
        payload::to_json(&self.payload)
    }
}

/// Where a listener's events go.
pub(crate) enum Sink {
    Fn(Box<dyn Fn(&Event) + Send + Sync>),
    Stream(mpsc::Sender<Event>),
}

pub(crate) struct Listener {
    pub id: u64,
    pub selector: crate::name::Selector,
    pub sink: Sink,
}

/// Events on their way to local listeners: what one read from the network
/// (or one local emit) produced, all from one source. Names are stored once
/// per run of equal names, so a batch costs no reference counting per event
/// beyond its payload.
pub(crate) struct Deliveries {
    pub source: Arc<PeerInfo>,
    pub names: Vec<Arc<str>>,
    /// Index into `names`, payload.
    pub events: Vec<(u32, Bytes)>,
}

impl Deliveries {
    pub fn one(source: Arc<PeerInfo>, name: Arc<str>, payload: Bytes) -> Deliveries {
        Deliveries { source, names: vec![name], events: vec![(0, payload)] }
    }
}

pub(crate) type DeliveryTx = mpsc::Sender<Deliveries>;

/// Collects the events of one network read into [`Deliveries`].
pub(crate) struct BatchBuilder {
    /// The last name seen, kept across batches: runs of one name are the
    /// common case, validated and allocated once. `None` before the first
    /// (not `""`: an empty name would then pass unvalidated).
    last_name: Option<Arc<str>>,
    names: Vec<Arc<str>>,
    events: Vec<(u32, Bytes)>,
    /// Size of the last batch: the next one is allocated at that size
    /// instead of grown (and copied) by doubling, and only when events come.
    hint: usize,
}

impl BatchBuilder {
    pub fn new() -> BatchBuilder {
        BatchBuilder { last_name: None, names: Vec::new(), events: Vec::new(), hint: 0 }
    }

    /// Sets the name of the events pushed next; `Err` says what is wrong
    /// with it.
    pub fn set_name(&mut self, name: &[u8]) -> Result<(), String> {
        let last = match &self.last_name {
            Some(last) if name == last.as_bytes() => last,
            _ => {
                let valid = std::str::from_utf8(name).ok().filter(|n| crate::name::validate_name(n).is_ok());
                let Some(name) = valid else {
                    return Err(format!("invalid event name {:?}", String::from_utf8_lossy(name)));
                };
                self.last_name.insert(Arc::from(name))
            }
        };
        if self.names.last().is_none_or(|n| !Arc::ptr_eq(n, last)) {
            self.names.push(last.clone());
        }
        Ok(())
    }

    /// Adds an event with the name last set.
    pub fn push(&mut self, payload: Bytes) {
        if self.events.is_empty() {
            self.events.reserve(self.hint);
        }
        self.events.push(((self.names.len() - 1) as u32, payload));
    }

    /// The batch collected so far, if any.
    pub fn take(&mut self, source: &Arc<PeerInfo>) -> Option<Deliveries> {
        if self.events.is_empty() {
            return None;
        }
        self.hint = self.events.len().min(4096);
        Some(Deliveries { source: source.clone(), names: std::mem::take(&mut self.names), events: std::mem::take(&mut self.events) })
    }
}

/// The listeners of one name, in registration order.
pub(crate) type Listeners = Arc<Vec<Arc<Listener>>>;

/// Looks up the listeners for a name; returns them in registration order.
pub(crate) trait ListenerLookup: Send + Sync + 'static {
    fn lookup(&self, name: &str) -> (u64, Listeners);
    fn generation(&self) -> u64;
    fn remove(&self, id: u64);
}

/// Runs handlers for every delivery, in order. A panicking handler is
/// caught and logged; a stream whose receiver is gone removes its listener.
pub(crate) async fn run_dispatcher(mut rx: mpsc::Receiver<Deliveries>, lookup: Arc<dyn ListenerLookup>) {
    let mut cached: Option<(Arc<str>, u64, Listeners)> = None;
    while let Some(Deliveries { source, names, events }) = rx.recv().await {
        // One Event, updated in place: handlers borrow it, streams clone it.
        let mut ev: Option<Event> = None;
        for (ni, payload) in events {
            let Some(name) = names.get(ni as usize) else { continue };
            let gen = lookup.generation();
            let hit = matches!(&cached, Some((n, g, _)) if *g == gen && (Arc::ptr_eq(n, name) || **n == **name));
            if !hit {
                let (g, l) = lookup.lookup(name);
                cached = Some((name.clone(), g, l));
            }
            let Some((_, _, listeners)) = &cached else { continue };
            if listeners.is_empty() {
                continue;
            }
            let ev = match &mut ev {
                Some(e) => {
                    if !Arc::ptr_eq(&e.name, name) {
                        e.name = name.clone();
                    }
                    e.payload = payload;
                    e
                }
                None => ev.insert(Event { name: name.clone(), source: source.clone(), payload }),
            };
            for l in listeners.iter() {
                match &l.sink {
                    Sink::Fn(f) => call(l, f, ev),
                    Sink::Stream(tx) => match tx.try_send(ev.clone()) {
                        Ok(()) => {}
                        // Waits when the subscriber is slow: backpressure
                        // reaches the emitters through the network queues.
                        Err(mpsc::error::TrySendError::Full(e)) => {
                            if tx.send(e).await.is_err() {
                                lookup.remove(l.id);
                            }
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => lookup.remove(l.id),
                    },
                }
            }
        }
    }
}

fn call(l: &Listener, f: &(dyn Fn(&Event) + Send + Sync), ev: &Event) {
    if let Err(p) = std::panic::catch_unwind(AssertUnwindSafe(|| f(ev))) {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic".into());
        tracing::error!(selector = %l.selector, event = %ev.name, panic = %msg, "listener panicked; the bus carries on");
    }
}
