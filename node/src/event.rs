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
    Fn(Box<dyn Fn(Event) + Send + Sync>),
    Stream(mpsc::Sender<Event>),
}

pub(crate) struct Listener {
    pub id: u64,
    pub selector: crate::name::Selector,
    pub sink: Sink,
}

/// An event on its way to local listeners.
pub(crate) struct Delivery {
    pub name: Arc<str>,
    pub source: Arc<PeerInfo>,
    pub payload: Bytes,
}

/// Batches of deliveries: one channel message per batch read from the network.
pub(crate) type DeliveryTx = mpsc::Sender<Vec<Delivery>>;

/// Looks up the listeners for a name; returns them in registration order.
pub(crate) trait ListenerLookup: Send + Sync + 'static {
    fn lookup(&self, name: &str) -> (u64, Arc<Vec<Arc<Listener>>>);
    fn generation(&self) -> u64;
    fn remove(&self, id: u64);
}

/// Runs handlers for every delivery, in order. A panicking handler is
/// caught and logged; a stream whose receiver is gone removes its listener.
pub(crate) async fn run_dispatcher(mut rx: mpsc::Receiver<Vec<Delivery>>, lookup: Arc<dyn ListenerLookup>) {
    let mut cached: Option<(Arc<str>, u64, Arc<Vec<Arc<Listener>>>)> = None;
    while let Some(batch) = rx.recv().await {
        for d in batch {
            let gen = lookup.generation();
            let listeners = match &cached {
                Some((n, g, l)) if *g == gen && **n == *d.name => l.clone(),
                _ => {
                    let (g, l) = lookup.lookup(&d.name);
                    cached = Some((d.name.clone(), g, l.clone()));
                    l
                }
            };
            if listeners.is_empty() {
                continue;
            }
            let ev = Event { name: d.name, source: d.source, payload: d.payload };
            for l in listeners.iter() {
                match &l.sink {
                    Sink::Fn(f) => {
                        let ev2 = ev.clone();
                        if let Err(p) = std::panic::catch_unwind(AssertUnwindSafe(move || f(ev2))) {
                            let msg = p
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| p.downcast_ref::<String>().cloned())
                                .unwrap_or_else(|| "non-string panic".into());
                            tracing::error!(selector = %l.selector, event = %ev_name(&ev), panic = %msg,
                                "listener panicked; the bus carries on");
                        }
                    }
                    Sink::Stream(tx) => {
                        // Waits when the subscriber is slow: backpressure
                        // reaches the emitters through the network queues.
                        if tx.send(ev.clone()).await.is_err() {
                            lookup.remove(l.id);
                        }
                    }
                }
            }
        }
    }
}

fn ev_name(e: &Event) -> &str {
    &e.name
}
