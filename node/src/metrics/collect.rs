//! One scrape: a snapshot of the node's figures, encoded by
//! `prometheus-client` in the OpenMetrics text format.
//!
//! Names follow the Prometheus conventions: `partybus_` first, the unit in
//! the name (`_bytes`, `_seconds`), `_total` on counters (added by the
//! encoder). Labels take values from small fixed sets only.

use std::borrow::Cow;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use super::Counters;
use crate::mesh::NeighbourPath;
use crate::shared::Inner;

type Labels = Vec<(Cow<'static, str>, Cow<'static, str>)>;

/// A metric family: its rows (labels, value).
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    counter: bool,
    rows: Vec<(Labels, f64)>,
}

/// Everything one scrape shows, read from the node when the scrape starts.
#[derive(Debug, Default)]
struct Snapshot(Vec<Family>);

impl Snapshot {
    fn counter(&mut self, name: &'static str, help: &'static str, unit: Option<Unit>, v: u64) {
        self.0.push(Family { name, help, unit, counter: true, rows: vec![(Vec::new(), v as f64)] });
    }
    fn gauge(&mut self, name: &'static str, help: &'static str, unit: Option<Unit>, v: f64) {
        self.0.push(Family { name, help, unit, counter: false, rows: vec![(Vec::new(), v)] });
    }
    fn family(&mut self, name: &'static str, help: &'static str, counter: bool, rows: Vec<(Labels, f64)>) {
        self.0.push(Family { name, help, unit: None, counter, rows });
    }
}

fn label(k: &'static str, v: impl Into<Cow<'static, str>>) -> Labels {
    vec![(Cow::Borrowed(k), v.into())]
}

fn labels2(k1: &'static str, v1: &'static str, k2: &'static str, v2: &'static str) -> Labels {
    vec![(Cow::Borrowed(k1), Cow::Borrowed(v1)), (Cow::Borrowed(k2), Cow::Borrowed(v2))]
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            if f.counter {
                let m = encoder.encode_descriptor(f.name, f.help, f.unit.as_ref(), prometheus_client::metrics::MetricType::Counter)?;
                encode_rows(m, &f.rows, |v, e| ConstCounter::new(v as u64).encode(e))?;
            } else {
                let m = encoder.encode_descriptor(f.name, f.help, f.unit.as_ref(), prometheus_client::metrics::MetricType::Gauge)?;
                encode_rows(m, &f.rows, |v, e| ConstGauge::new(v).encode(e))?;
            }
        }
        Ok(())
    }
}

fn encode_rows(
    mut m: prometheus_client::encoding::MetricEncoder<'_>,
    rows: &[(Labels, f64)],
    one: impl Fn(f64, prometheus_client::encoding::MetricEncoder<'_>) -> Result<(), std::fmt::Error>,
) -> Result<(), std::fmt::Error> {
    for (labels, v) in rows {
        if labels.is_empty() {
            // A family without labels has exactly one row.
            return one(*v, m);
        }
        one(*v, m.encode_family(labels)?)?;
    }
    Ok(())
}

/// The node's metrics, as the text a scrape returns.
pub(crate) fn render(inner: &Inner) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot(inner)));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// External addresses in force by the service that reported them.
fn externals(inner: &Inner) -> Vec<(String, u64)> {
    let mut by: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for e in &crate::shared::relock(&inner.addrs).external {
        *by.entry(e.source.clone()).or_default() += 1;
    }
    by.into_iter().collect()
}

fn snapshot(inner: &Inner) -> Snapshot {
    let c: &Counters = &inner.plane.counters;
    let get = Counters::get;
    let mut s = Snapshot::default();

    s.family(
        "partybus_node",
        "This node: its certificate's name, its id (new at every start) and its hood's fingerprint; always 1.",
        false,
        vec![(
            vec![
                ("name".into(), inner.me.name.clone().into()),
                ("id".into(), inner.id.to_hex().into()),
                ("hood".into(), inner.fingerprint.clone().into()),
            ],
            1.0,
        )],
    );
    s.gauge("partybus_uptime", "Time since the node joined.", Some(Unit::Seconds), inner.started.elapsed().as_secs_f64());

    // Neighbours, by network path, and what waits in their send queues.
    let (mut direct, mut relayed, mut unknown, mut queued) = (0u32, 0u32, 0u32, 0usize);
    let links: Vec<_> = {
        let st = inner.plane.state();
        st.links.values().map(|l| (l.info(), l.queue.clone())).collect()
    };
    for (info, queue) in links {
        queued += queue.queued_bytes();
        match inner.with_path(info).path {
            Some(NeighbourPath::Direct { .. }) => direct += 1,
            Some(NeighbourPath::Relayed { .. }) => relayed += 1,
            None => unknown += 1,
        }
    }
    s.family(
        "partybus_neighbours",
        "Neighbours connected now, by network path (direct, relayed through a relay, or not known yet).",
        false,
        vec![
            (label("path", "direct"), f64::from(direct)),
            (label("path", "relayed"), f64::from(relayed)),
            (label("path", "unknown"), f64::from(unknown)),
        ],
    );
    s.gauge("partybus_queue", "Bytes waiting in the neighbours' send queues, all together.", Some(Unit::Bytes), queued as f64);
    s.gauge(
        "partybus_queue_limit",
        "The send queue limit of each neighbour.",
        Some(Unit::Bytes),
        inner.settings.queue_limit.load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    s.counter("partybus_neighbours_found", "Neighbours found (connections that became a neighbour's).", None, get(&c.neighbours_found));
    s.family(
        "partybus_neighbours_lost",
        "Neighbours lost, by reason: left (goodbye), closed, timeout (idle), protocol, stuck, revoked, switch.",
        true,
        c.lost_by_reason().into_iter().map(|(r, v)| (label("reason", r), v as f64)).collect(),
    );

    // Events.
    s.counter("partybus_emits", "emit calls on this node.", None, get(&c.emits));
    s.counter("partybus_events_sent", "Event copies queued for neighbours (one per interested neighbour).", None, get(&c.events_sent));
    s.counter("partybus_events_received", "Events received from neighbours.", None, get(&c.events_received));
    s.counter(
        "partybus_events_forbidden",
        "Events received and dropped because the sender's certificate does not allow it to emit them.",
        None,
        inner.forbidden_events.load(std::sync::atomic::Ordering::Relaxed),
    );
    s.family(
        "partybus_events_dropped",
        "Event copies dropped for a neighbour whose send queue was full, by full policy.",
        true,
        vec![(label("policy", "drop"), get(&c.events_dropped) as f64)],
    );
    s.counter(
        "partybus_stream_sent",
        "Bytes written to neighbours' event streams (frames and their headers).",
        Some(Unit::Bytes),
        get(&c.bytes_sent),
    );
    s.counter("partybus_stream_received", "Bytes read from neighbours' event streams.", Some(Unit::Bytes), get(&c.bytes_received));
    s.family(
        "partybus_disconnects",
        "Connections this node closed by policy: stuck (full policy disconnect) or revoked (certificate revoked).",
        true,
        vec![(label("reason", "stuck"), get(&c.stuck_closed) as f64), (label("reason", "revoked"), get(&c.revoked_closed) as f64)],
    );

    // Handshakes and dials.
    s.family(
        "partybus_handshakes",
        "TLS handshakes by direction (out: we dialled) and result (ok, timeout, revoked, bad_certificate, other).",
        true,
        c.handshakes().into_iter().map(|(d, r, v)| (labels2("direction", d, "result", r), v as f64)).collect(),
    );
    s.family(
        "partybus_hello_failures",
        "Connections whose hello exchange failed after TLS: version (another protocol version) or other.",
        true,
        vec![(label("reason", "version"), get(&c.hello_version) as f64), (label("reason", "other"), get(&c.hello_other) as f64)],
    );
    let cs = inner.conn_stats();
    s.counter("partybus_dials", "Dials (outgoing QUIC handshakes started), re-dials included.", None, cs.dials);
    s.counter("partybus_dials_abandoned", "Dials given up because the peer's own dial reached us first.", None, cs.dials_abandoned);
    s.counter("partybus_accepts", "Incoming QUIC handshakes accepted by the endpoint.", None, cs.accepts);
    s.counter(
        "partybus_duplicate_connections",
        "Second connections to a neighbour, retired or replacing the older one.",
        None,
        cs.duplicates,
    );

    // Discovery.
    s.family(
        "partybus_discovery_candidates",
        "Addresses discovery services named, by service (static, mdns, dht, upnp, ...).",
        true,
        c.candidates().into_iter().map(|(src, v)| (label("source", src), v as f64)).collect(),
    );
    s.family(
        "partybus_external_addresses",
        "Addresses this node is reachable at from outside, by the service that found them (upnp, natpmp, pcp: a router port mapping).",
        false,
        externals(inner).into_iter().map(|(src, v)| (label("source", src), v as f64)).collect(),
    );

    // Relays: this node as a relay server, and as a client of relays.
    s.gauge(
        "partybus_relay_registrations",
        "Relays this node is registered at now (its relay routes).",
        None,
        inner.my_routes().len() as f64,
    );
    if let Some(relay) = &inner.paths.relay_service {
        let r = relay.stats();
        s.gauge("partybus_relay_server_clients", "Clients registered at this node's relay server.", None, r.clients as f64);
        s.counter("partybus_relay_server_forwarded_packets", "Packets this node's relay server forwarded.", None, r.forwarded_packets);
        s.counter("partybus_relay_server_forwarded", "Bytes this node's relay server forwarded.", Some(Unit::Bytes), r.forwarded_bytes);
        s.family(
            "partybus_relay_server_dropped_packets",
            "Packets this node's relay server dropped, by reason.",
            true,
            vec![
                (label("reason", "client_rate"), r.dropped_rate as f64),
                (label("reason", "total_rate"), r.dropped_total_rate as f64),
                (label("reason", "unregistered"), r.dropped_unregistered as f64),
                (label("reason", "busy"), r.dropped_busy as f64),
                (label("reason", "invalid"), r.dropped_invalid as f64),
            ],
        );
        s.counter("partybus_relay_server_refused_registrations", "Registrations this node's relay server refused.", None, r.refused());
    }

    // Revocation.
    s.gauge(
        "partybus_revocation_sequence",
        "Sequence number of the revocation list in force (0: none).",
        None,
        inner.revoked.sequence() as f64,
    );
    s.gauge("partybus_revoked_certificates", "Certificates the revocation list in force revokes.", None, inner.revoked.len() as f64);
    s
}
