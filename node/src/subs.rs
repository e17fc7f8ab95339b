//! The subscription table (sans I/O): local listeners and every neighbour's
//! subscriptions, and the cached answer to "who wants event X?".
//!
//! Routes are cached per event name and the whole cache is dropped on any
//! change, because subscriptions change rarely and events are hot. The cache
//! is bounded: past [`ROUTE_CACHE_MAX`] names it starts again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::id::NodeId;
use crate::name::Selector;

/// Most event names whose routes are cached at once.
pub const ROUTE_CACHE_MAX: usize = 4096;

/// The [`Selector::match_cost`] one neighbour's wildcard subscriptions may
/// add up to. Routing a new event name steps at most this many automaton
/// states per byte of the name for that neighbour (so at most ~4 M steps
/// for a 1 KiB name), however it subscribes: once, 10,000 selectors of
/// `+#` repeated froze a node for 19 s per new name. 4 K is ~140 typical
/// wildcard selectors (`sensor.+.temp`) or 3 of the longest (1 KiB of
/// wildcards); literal selectors cost nothing against it.
pub const MAX_WILDCARD_COST_PER_PEER: usize = 4 * 1024;

/// A bounded map from event name to something derived from the
/// subscriptions. Everything in it is dropped on any change (callers call
/// [`NameCache::clear`]) and when it reaches [`ROUTE_CACHE_MAX`] names.
pub struct NameCache<V> {
    map: HashMap<Box<str>, V>,
}

impl<V: Clone> NameCache<V> {
    pub fn new() -> Self {
        NameCache { map: HashMap::new() }
    }

    /// The cached value for `name`, if there is one.
    pub fn get(&self, name: &str) -> Option<V> {
        self.map.get(name).cloned()
    }

    /// The cached value for `name`, computing and storing it if absent.
    pub fn get_or_insert_with(&mut self, name: &str, compute: impl FnOnce() -> V) -> V {
        if let Some(v) = self.map.get(name) {
            return v.clone();
        }
        let v = compute();
        if self.map.len() >= ROUTE_CACHE_MAX {
            self.map.clear();
        }
        self.map.insert(name.into(), v.clone());
        v
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl<V: Clone> Default for NameCache<V> {
    fn default() -> Self {
        NameCache::new()
    }
}

/// Where an event must go.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Route {
    /// Local listener ids that match (spies included), in registration order.
    pub local: Vec<u64>,
    /// Of those, how many are not spies.
    pub local_counted: usize,
    /// Neighbours with at least one matching subscription (spies included),
    /// with how many of their matching subscriptions are not spies.
    pub remote: Vec<(NodeId, usize)>,
}

impl Route {
    /// Non-spy listeners reached: what `emit` resolves to.
    pub fn counted(&self) -> usize {
        self.local_counted + self.remote.iter().map(|(_, n)| n).sum::<usize>()
    }
}

#[derive(Clone, Debug)]
struct Sub {
    selector: Selector,
    spy: bool,
}

/// Why a remote subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubLimitError {
    #[error("peer {peer:?} has {max} subscriptions already, the limit (max_subscriptions_per_peer)")]
    TooMany { peer: NodeId, max: usize },
    #[error("peer {peer:?} sent a bad selector: {err}")]
    BadSelector { peer: NodeId, err: crate::name::NameError },
    #[error(
        "peer {peer:?}: wildcard selector {selector:?}... would take its matching cost to {cost}, over the limit of {max} \
         (MAX_WILDCARD_COST_PER_PEER: fewer or shorter wildcard selectors)"
    )]
    WildcardBudget { peer: NodeId, selector: String, cost: usize, max: usize },
    #[error("peer {peer:?} may not listen to {selector:?} (its certificate's permissions)")]
    NotPermitted { peer: NodeId, selector: String },
}

/// Local and remote subscriptions.
pub struct SubTable {
    local: BTreeMap<u64, Sub>,
    remote: HashMap<NodeId, BTreeMap<u64, Sub>>,
    /// The sum of `match_cost` of each neighbour's subscriptions.
    remote_cost: HashMap<NodeId, usize>,
    /// Neighbours whose certificates restrict what they may listen to.
    restricted: HashMap<NodeId, Arc<crate::perms::PeerPerms>>,
    cache: NameCache<Arc<Route>>,
    max_per_peer: usize,
}

impl SubTable {
    pub fn new(max_per_peer: usize) -> SubTable {
        SubTable {
            local: BTreeMap::new(),
            remote: HashMap::new(),
            remote_cost: HashMap::new(),
            restricted: HashMap::new(),
            cache: NameCache::new(),
            max_per_peer,
        }
    }

    fn changed(&mut self) {
        self.cache.clear();
    }

    /// A new limit for subscriptions added from now on (a reload); a peer
    /// over it keeps what it has.
    pub fn set_max_per_peer(&mut self, max: usize) {
        self.max_per_peer = max;
    }

    pub fn add_local(&mut self, id: u64, selector: Selector, spy: bool) {
        self.local.insert(id, Sub { selector, spy });
        self.changed();
    }

    /// Removes a local listener; returns whether it existed.
    pub fn remove_local(&mut self, id: u64) -> bool {
        let had = self.local.remove(&id).is_some();
        if had {
            self.changed();
        }
        had
    }

    /// Local listener ids whose selector is exactly `selector` (or all when `None`).
    pub fn local_ids(&self, selector: Option<&str>) -> Vec<u64> {
        self.local.iter().filter(|(_, s)| selector.is_none_or(|t| s.selector.as_str() == t)).map(|(id, _)| *id).collect()
    }

    /// Local subscriptions in the form they travel in.
    pub fn local_wire(&self) -> Vec<crate::wire::WireSub> {
        self.local.iter().map(|(id, s)| crate::wire::WireSub { id: *id, selector: s.selector.as_str().to_owned(), spy: s.spy }).collect()
    }

    /// Adds a neighbour's subscription (idempotent by id), within limits.
    pub fn add_remote(&mut self, peer: NodeId, id: u64, selector: &str, spy: bool) -> Result<(), SubLimitError> {
        let selector = Selector::new(selector).map_err(|err| SubLimitError::BadSelector { peer, err })?;
        // A literal subscription to a name the peer may not listen to is
        // refused; a wildcard one is taken, and only the events it may
        // listen to are ever routed to it (see `compute`).
        if selector.match_cost() == 0 && self.restricted.get(&peer).is_some_and(|p| !p.may_listen(selector.as_str())) {
            return Err(SubLimitError::NotPermitted { peer, selector: selector.as_str().chars().take(64).collect() });
        }
        let subs = self.remote.entry(peer).or_default();
        if !subs.contains_key(&id) && subs.len() >= self.max_per_peer {
            return Err(SubLimitError::TooMany { peer, max: self.max_per_peer });
        }
        let cost = self.remote_cost.entry(peer).or_default();
        let replaced = subs.get(&id).map_or(0, |s| s.selector.match_cost());
        let new_cost = *cost - replaced + selector.match_cost();
        if new_cost > MAX_WILDCARD_COST_PER_PEER && selector.match_cost() > replaced {
            return Err(SubLimitError::WildcardBudget {
                peer,
                selector: selector.as_str().chars().take(64).collect(),
                cost: new_cost,
                max: MAX_WILDCARD_COST_PER_PEER,
            });
        }
        *cost = new_cost;
        subs.insert(id, Sub { selector, spy });
        self.changed();
        Ok(())
    }

    pub fn remove_remote(&mut self, peer: NodeId, id: u64) {
        if let Some(subs) = self.remote.get_mut(&peer) {
            if let Some(s) = subs.remove(&id) {
                if let Some(c) = self.remote_cost.get_mut(&peer) {
                    *c -= s.selector.match_cost();
                }
                self.changed();
            }
        }
    }

    /// What a neighbour may listen to, from its certificate: events it may
    /// not are never routed to it, whatever it subscribes.
    pub(crate) fn set_permissions(&mut self, peer: NodeId, perms: Option<Arc<crate::perms::PeerPerms>>) {
        match perms.filter(|p| p.listen_restricted()) {
            Some(p) => self.restricted.insert(peer, p),
            None => self.restricted.remove(&peer),
        };
        self.changed();
    }

    /// Forgets everything a neighbour subscribed to (it is gone).
    pub fn remove_peer(&mut self, peer: NodeId) {
        self.remote_cost.remove(&peer);
        self.restricted.remove(&peer);
        if self.remote.remove(&peer).is_some() {
            self.changed();
        }
    }

    /// How many subscriptions a neighbour holds.
    #[cfg(test)]
    fn remote_len(&self, peer: NodeId) -> usize {
        self.remote.get(&peer).map_or(0, |s| s.len())
    }

    /// Who wants `name` (cached).
    pub fn route(&mut self, name: &str) -> Arc<Route> {
        let SubTable { cache, local, remote, restricted, .. } = self;
        cache.get_or_insert_with(name, || Arc::new(compute(local, remote, restricted, name)))
    }
}

fn compute(
    local: &BTreeMap<u64, Sub>,
    remote: &HashMap<NodeId, BTreeMap<u64, Sub>>,
    restricted: &HashMap<NodeId, Arc<crate::perms::PeerPerms>>,
    name: &str,
) -> Route {
    let mut route = Route::default();
    for (id, s) in local {
        if s.selector.matches(name) {
            route.local.push(*id);
            route.local_counted += usize::from(!s.spy);
        }
    }
    for (peer, subs) in remote {
        if restricted.get(peer).is_some_and(|p| !p.may_listen(name)) {
            continue;
        }
        let mut any = false;
        let mut counted = 0;
        for s in subs.values() {
            if s.selector.matches(name) {
                any = true;
                counted += usize::from(!s.spy);
            }
        }
        if any {
            route.remote.push((*peer, counted));
        }
    }
    route.remote.sort_unstable();
    route
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(s: &str) -> Selector {
        Selector::new(s).unwrap()
    }

    #[test]
    fn routes_count_non_spies_and_send_once_per_peer() {
        let a = NodeId([1; 16]);
        let b = NodeId([2; 16]);
        let mut t = SubTable::new(10);
        t.add_local(1, sel("music"), false);
        t.add_local(2, sel("+"), true);
        t.add_remote(a, 1, "music", false).unwrap();
        t.add_remote(a, 2, "mus+", false).unwrap();
        t.add_remote(a, 3, "#", true).unwrap();
        t.add_remote(b, 1, "#", true).unwrap();
        let r = t.route("music");
        assert_eq!(r.local, vec![1, 2]);
        assert_eq!(r.local_counted, 1);
        assert_eq!(r.remote, vec![(a, 2), (b, 0)]);
        assert_eq!(r.counted(), 3);
        // cached until a change
        assert!(Arc::ptr_eq(&r, &t.route("music")));
        t.remove_peer(a);
        let r2 = t.route("music");
        assert_eq!(r2.remote, vec![(b, 0)]);
        assert_eq!(r2.counted(), 1);
        t.remove_local(1);
        assert_eq!(t.route("music").counted(), 0);
        assert_eq!(t.route("$SYS").remote, vec![]);
    }

    #[test]
    fn remote_limits_and_idempotence() {
        let a = NodeId([1; 16]);
        let mut t = SubTable::new(2);
        t.add_remote(a, 1, "x", false).unwrap();
        t.add_remote(a, 1, "x", false).unwrap();
        t.add_remote(a, 2, "y", false).unwrap();
        assert!(matches!(t.add_remote(a, 3, "z", false), Err(SubLimitError::TooMany { .. })));
        assert!(matches!(t.add_remote(a, 2, "bad selector", false), Err(SubLimitError::BadSelector { .. })));
        assert_eq!(t.remote_len(a), 2);
        t.remove_remote(a, 1);
        t.remove_remote(a, 1);
        assert_eq!(t.remote_len(a), 1);
    }

    #[test]
    fn a_neighbours_wildcards_have_a_matching_budget() {
        let a = NodeId([1; 16]);
        let b = NodeId([2; 16]);
        let mut t = SubTable::new(10_000);
        // The attack of old: 1 KiB selectors of `+#`, then new long names.
        let hostile = "+#".repeat(512);
        let mut taken = 0;
        for id in 0..10_000 {
            match t.add_remote(a, id, &hostile, false) {
                Ok(()) => taken += 1,
                Err(SubLimitError::WildcardBudget { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(taken, MAX_WILDCARD_COST_PER_PEER / (1024 + 16));
        // Literal selectors cost nothing against it; another neighbour has its own.
        t.add_remote(a, 20_000, "exact.name", false).unwrap();
        t.add_remote(b, 1, "sensor.+.temp", false).unwrap();
        // Re-subscribing an id with a cheaper selector is always allowed,
        // and removing frees the budget.
        let hostile_cost = 1024 + 16;
        t.add_remote(a, 0, "x.+", false).unwrap();
        let room = MAX_WILDCARD_COST_PER_PEER - (taken - 1) * hostile_cost - (3 + 16);
        let more = (10_001..10_100).take_while(|id| t.add_remote(a, *id, &hostile, false).is_ok()).count();
        assert_eq!(more, room / hostile_cost);
        t.remove_remote(a, 1);
        t.add_remote(a, 10_200, &hostile, false).unwrap();
        let e = t.add_remote(a, 10_201, &hostile, false).unwrap_err().to_string();
        assert!(e.len() < 400 && e.contains("MAX_WILDCARD_COST_PER_PEER"), "{e}");
        t.remove_peer(a);
        t.add_remote(a, 1, &hostile, false).unwrap();

        // Routing a fresh 1 KiB name past a full budget is bounded work.
        let mut t = SubTable::new(10_000);
        for id in 0..10_000 {
            let _ = t.add_remote(a, id, &hostile, false);
        }
        let started = std::time::Instant::now();
        for i in 0..10 {
            let name = format!("{i}{}", "a".repeat(1000));
            assert_eq!(t.route(&name).remote, vec![(a, taken)]);
        }
        eprintln!("10 routes of fresh 1 KiB names past a full wildcard budget: {:?}", started.elapsed());
    }

    #[test]
    fn cache_is_bounded() {
        let mut t = SubTable::new(1);
        t.add_local(1, sel("+"), false);
        for i in 0..(ROUTE_CACHE_MAX * 2) {
            t.route(&format!("n{i}"));
        }
        assert!(t.cache.len() <= ROUTE_CACHE_MAX && !t.cache.is_empty());
    }
}
