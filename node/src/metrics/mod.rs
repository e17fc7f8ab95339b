//! Metrics in the Prometheus / OpenMetrics text format.
//!
//! - [`counters`]: what nothing else counts, bumped where it happens (relaxed
//!   atomics on the data path, never a lock).
//! - `collect`: at every scrape, reads those and what the node keeps anyway
//!   (neighbours and their paths, send queues, connection counters, relay
//!   server statistics, the revocation list) into a `prometheus-client`
//!   registry's text encoding.
//! - `http`: a small HTTP/1.1 responder for `GET /metrics` on an opt-in
//!   address (`--metrics`), with bounded requests and time.

mod collect;
mod counters;
mod http;

pub(crate) use collect::render;
pub(crate) use counters::{Counters, Handshake};
pub(crate) use http::serve;
