//! Static discovery: a fixed list of `host:port` (IP or DNS name), resolved
//! and reported again every `interval` (tubemail re-tried every 60 s), so a
//! peer that was down, or a DNS name that moved, is picked up later.

use std::time::Duration;

use tokio::sync::watch;

use crate::{BoxFuture, Discovery, DiscoveryContext, DiscoverySink, StopSignal};

/// Reports each configured address as a candidate, now and every `interval`.
#[derive(Clone, Debug)]
pub struct StaticDiscovery {
    targets: watch::Receiver<Vec<String>>,
    interval: Duration,
}

impl StaticDiscovery {
    /// `targets` are `host:port` strings; IPv6 literals need brackets (`[::1]:4816`).
    pub fn new(targets: Vec<String>, interval: Duration) -> Self {
        Self::watched(watch::channel(targets).1, interval)
    }

    /// A list that can change while the node runs (a config reload): a new
    /// list is reported at once, and a target taken off it is no longer
    /// reported (so no longer dialled because of this list).
    pub fn watched(targets: watch::Receiver<Vec<String>>, interval: Duration) -> Self {
        StaticDiscovery { targets, interval: interval.max(Duration::from_millis(10)) }
    }
}

impl Discovery for StaticDiscovery {
    fn name(&self) -> &str {
        "static"
    }

    fn start(self: Box<Self>, _ctx: DiscoveryContext, sink: DiscoverySink, mut stop: StopSignal) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut warned = std::collections::HashSet::new();
            let mut targets = self.targets;
            loop {
                let list = targets.borrow_and_update().clone();
                for target in &list {
                    match tokio::net::lookup_host(target.as_str()).await {
                        Ok(addrs) => {
                            for addr in addrs {
                                sink.candidate(addr, "static");
                                // A seed is the natural relay for members behind NATs.
                                sink.relay(addr, "static");
                            }
                        }
                        Err(e) => {
                            // Warn once per target; keep trying quietly afterwards.
                            if warned.insert(target.clone()) {
                                tracing::warn!(target = %target, error = %e,
                                    "static discovery: cannot resolve address (expected HOST:PORT); will retry");
                            }
                        }
                    }
                }
                tokio::select! {
                    _ = stop.stopped() => return,
                    _ = tokio::time::sleep(self.interval) => {}
                    // A sender dropped is no change: keep the list.
                    Ok(()) = targets.changed() => {}
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DiscoveryEvent;
    use tokio::sync::watch;

    fn ctx() -> DiscoveryContext {
        DiscoveryContext {
            hood_fingerprint: "00".repeat(32),
            node_id: "11".repeat(16),
            cert_name: "t".into(),
            port: 4816,
            reachable: watch::channel(vec![]).1,
            relay_routes: watch::channel(vec![]).1,
            allow_non_global: false,
        }
    }

    #[tokio::test]
    async fn reports_and_repeats_then_stops() {
        let (sink, mut rx) = DiscoverySink::channel(16);
        let (handle, stop) = StopSignal::new();
        let svc = Box::new(StaticDiscovery::new(vec!["127.0.0.1:4816".into(), "[::1]:4817".into()], Duration::from_millis(20)));
        let task = tokio::spawn(svc.start(ctx(), sink, stop));
        let mut seen = Vec::new();
        while seen.len() < 4 {
            match rx.recv().await.unwrap() {
                DiscoveryEvent::Candidate { addr, .. } => seen.push(addr.to_string()),
                // Each target is a relay too, reported right after it.
                DiscoveryEvent::Relay { addr, .. } => assert_eq!(Some(&addr.to_string()), seen.last()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen[0], "127.0.0.1:4816");
        assert_eq!(seen[1], "[::1]:4817");
        assert_eq!(seen[2], "127.0.0.1:4816", "re-reported on the next round");
        handle.stop();
        tokio::time::timeout(Duration::from_secs(2), task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_new_list_is_reported_at_once_and_replaces_the_old() {
        let (sink, mut rx) = DiscoverySink::channel(16);
        let (handle, stop) = StopSignal::new();
        let (tx, targets) = watch::channel(vec!["127.0.0.1:1".to_owned()]);
        // An hour between rounds: anything after the first comes from the change.
        let svc = Box::new(StaticDiscovery::watched(targets, Duration::from_secs(3600)));
        let task = tokio::spawn(svc.start(ctx(), sink, stop));
        async fn next(rx: &mut tokio::sync::mpsc::Receiver<DiscoveryEvent>) -> String {
            loop {
                if let DiscoveryEvent::Candidate { addr, .. } =
                    tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap()
                {
                    return addr.to_string();
                }
            }
        }
        assert_eq!(next(&mut rx).await, "127.0.0.1:1");
        tx.send(vec!["127.0.0.1:2".to_owned()]).unwrap();
        assert_eq!(next(&mut rx).await, "127.0.0.1:2", "the new list, without the removed target");
        handle.stop();
        tokio::time::timeout(Duration::from_secs(2), task).await.unwrap().unwrap();
    }
}
