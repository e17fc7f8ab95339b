//! partybus's UPnP IGD service against a real gateway: miniupnpd on a NAT
//! router of the namespace lab (`partybus_integration::nat`), the service
//! alone (`portmap-probe`) on the host behind it. (Formerly
//! `discovery/tests/upnp_igd.rs`, an `#[ignore]`d test to be started by hand
//! inside a namespace; it runs its own lab now.)
//!
//! Network labs: reported as ignored where the build finds the lab
//! cannot run (not root, no `ip`/`nft`) or with `PARTYBUS_LAB=skip`; otherwise,
//! and always under `PARTYBUS_LAB=required`, they run and fail if the lab
//! cannot run (see `partybus_integration::lab`).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use partybus_integration::lab::{Lab, LabProcess};
use partybus_integration::nat::{self, NatLab, NatOptions, RouterOptions, VPS1_IP};

fn addr_of(v: &serde_json::Value, key: &str) -> SocketAddr {
    v[key].as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no {key} address in {v}"))
}

/// Both ways to find the gateway (its description URL, and an SSDP search on
/// the LAN): each maps its port on the router's public address, a datagram
/// from the "internet" reaches the host through the mapping, and stopping
/// withdraws the address and deletes the mapping.
#[test]
#[cfg_attr(
    partybus_no_lab,
    ignore = "network lab (needs root, ip, nft, miniupnpd) unavailable here or PARTYBUS_LAB=skip; PARTYBUS_LAB=required runs it"
)]
fn maps_through_miniupnpd() {
    nat::require_prereqs(true);
    let lab = Lab::require("upnpigd");
    let up = RouterOptions { upnp: true, ..Default::default() };
    let nat = NatLab::build(
        &lab,
        NatOptions { r1: up, r2: RouterOptions::default(), stun_server: Some(env!("CARGO_BIN_EXE_stun-server").into()) },
    )
    .unwrap();
    let site = &nat.r1;
    let probe = env!("CARGO_BIN_EXE_portmap-probe");
    let env = [("RUST_LOG", "partybus_discovery=debug")];
    let host_ip = site.host_ip.to_string();
    let url = site.upnp_url();
    let spawn = |args: &[&str]| lab.spawn_env(&site.host, probe, args, env).unwrap();
    let mut probes: Vec<(&str, LabProcess)> = vec![
        ("url", spawn(&["--bind-ip", &host_ip, "--gateway-url", &url, "--lease-secs", "60"])),
        ("ssdp", spawn(&["--bind-ip", &host_ip, "--lease-secs", "60"])),
    ];

    let mut mapped = Vec::new();
    for (how, p) in probes.iter_mut() {
        let t = Instant::now();
        let port =
            p.wait_for_json(|v| v.get("ready").is_some(), Duration::from_secs(10)).unwrap()["ready"]["port"].as_u64().unwrap() as u16;
        let v = p
            .wait_for_json(|v| v.get("external").is_some(), Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{how}: no mapping: {e:#}\nminiupnpd:\n{}", nat.miniupnpd_log(site)));
        let ext = addr_of(&v, "external");
        assert_eq!(v["source"], "upnp", "{v}");
        assert_eq!(ext.ip(), IpAddr::V4(site.wan_ip), "{how}: external address {ext} is not r1's WAN address");
        // The router holds exactly that mapping, to the probe's socket.
        let internal = SocketAddr::new(site.host_ip.into(), port);
        let ext_port = nat.wait_mapping(site, internal, Duration::from_secs(5)).unwrap();
        assert_eq!(ext_port, ext.port(), "{how}: reported {ext}, router maps {ext_port} -> {internal}");
        eprintln!("upnp ({how}): {internal} mapped at {ext} in {:.2} s", t.elapsed().as_secs_f64());
        mapped.push(ext);
    }
    assert_ne!(mapped[0], mapped[1], "two sockets got the same mapping");

    // A datagram from the internet (vps1) reaches each probe through its
    // mapping. Sent a few times (bounded): UDP may be dropped.
    for ((how, p), ext) in probes.iter_mut().zip(&mapped) {
        let send = format!("for i in 1 2 3 4 5; do printf hello > /dev/udp/{}/{}; sleep 0.2; done", ext.ip(), ext.port());
        lab.exec(&nat.vps1, ["bash", "-c", &send]).unwrap();
        let v = p
            .wait_for_json(|v| v.get("received").is_some(), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{how}: nothing arrived through {ext}: {e:#}"));
        assert_eq!(v["received"]["bytes"], 5, "{v}");
        let from: SocketAddr = v["received"]["from"].as_str().unwrap().parse().unwrap();
        assert_eq!(from.ip().to_string(), VPS1_IP, "{how}: {v}");
    }

    // Stop: each withdraws its address, and the router has no mapping left.
    for ((how, p), ext) in probes.iter_mut().zip(&mapped) {
        p.close_stdin();
        let v = p.wait_for_json(|v| v.get("external_lost").is_some() || v.get("stopped").is_some(), Duration::from_secs(15)).unwrap();
        assert_eq!(v.get("external_lost").map(|_| addr_of(&v, "external_lost")), Some(*ext), "{how}: {v}");
        p.wait_for_json(|v| v.get("stopped").is_some(), Duration::from_secs(15)).unwrap();
        assert!(p.wait_exit(Duration::from_secs(5)).unwrap().success());
    }
    let left = nat.udp_mappings(site).unwrap();
    assert!(left.is_empty(), "mappings left after the probes stopped: {left:?}");
}
