//! Which port-mapping protocols a lab router's miniupnpd serves.
//!
//! miniupnpd turns UPnP IGD on and off (`enable_upnp`) and NAT-PMP together
//! with PCP (`enable_natpmp`: one switch for both, one UDP port 5351). A
//! router with only one of NAT-PMP and PCP is made with an nftables rule on
//! the router's input: it drops requests of the other version (the first
//! byte of the UDP payload: 0 for NAT-PMP, 2 for PCP), like a router whose
//! daemon does not run that protocol at all.

/// A port-mapping protocol of the lab routers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapProto {
    Upnp,
    NatPmp,
    Pcp,
}

impl MapProto {
    pub const ALL: [MapProto; 3] = [MapProto::Pcp, MapProto::NatPmp, MapProto::Upnp];

    /// The name partybus uses (`--port-mapping`, the discovery source).
    pub fn name(self) -> &'static str {
        match self {
            MapProto::Upnp => "upnp",
            MapProto::NatPmp => "natpmp",
            MapProto::Pcp => "pcp",
        }
    }
}

impl std::fmt::Display for MapProto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The nftables table (family inet) that filters NAT-PMP or PCP.
pub const FILTER_TABLE: &str = "pbmapproto";

/// miniupnpd's `enable_upnp` / `enable_natpmp` for `only` (None: everything).
pub fn switches(only: Option<MapProto>) -> (bool, bool) {
    match only {
        None => (true, true),
        Some(MapProto::Upnp) => (true, false),
        Some(_) => (false, true),
    }
}

/// The ruleset that leaves only `only` of NAT-PMP and PCP on port 5351
/// (None when nothing needs filtering).
pub fn filter_ruleset(only: Option<MapProto>) -> Option<String> {
    let drop_version = match only {
        Some(MapProto::NatPmp) => 2,
        Some(MapProto::Pcp) => 0,
        _ => return None,
    };
    Some(format!(
        r#"table inet {FILTER_TABLE} {{
  chain in {{
    type filter hook input priority -10; policy accept;
    iifname "lan" udp dport 5351 @th,64,8 {drop_version} drop
  }}
}}
"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        assert!(filter_ruleset(Some(MapProto::NatPmp)).unwrap().contains("@th,64,8 2 drop"));
        assert!(filter_ruleset(Some(MapProto::Pcp)).unwrap().contains("@th,64,8 0 drop"));
        assert_eq!(filter_ruleset(Some(MapProto::Upnp)), None);
        assert_eq!(filter_ruleset(None), None);
        assert_eq!(switches(Some(MapProto::Pcp)), (false, true));
    }
}
