//! IPv6 in the NAT lab (issue 17): `partybus_integration::nat::ipv6` adds
//! 2001:db8::/32 addresses to the internet, vps1, r1 and h1 (no NAT66) and
//! an IPv6-only host v6h.
//!
//! 1. `ipv6_only_member_and_dual_stack_member_meet`: a member on v6h (no
//!    IPv4 at all) and one on h1 behind r1 (dual stack; its IPv6 address is
//!    global-looking, not translated) become neighbours over IPv6 and an
//!    event goes each way.
//! 2. `pcp_map_for_ipv6_opens_a_pinhole`: what RFC 6887 describes for an
//!    IPv6 host behind a firewall: a PCP MAP for its IPv6 address opens an
//!    inbound pinhole (the "external" address is its own). Before the MAP,
//!    a datagram from v6h to h1 is dropped by r1's firewall; after it, it
//!    arrives; deleting the mapping closes the pinhole again.
//!
//! Network labs: reported as ignored where the build finds the lab
//! cannot run (not root, no `ip`/`nft`) or with `PARTYBUS_LAB=skip`; otherwise,
//! and always under `PARTYBUS_LAB=required`, they run and fail if the lab
//! cannot run (see `partybus_integration::lab`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use partybus_integration::lab::Lab;
use partybus_integration::nat::{self, MapProto, NatLab, NatOptions, RouterOptions, H1_IP6, R1_LAN6, V6H_IP6};
use partybus_integration::nodelog::{ready_id, s, wait_external, wait_found};
use partybus_integration::pb::{self, LabHood};

const LOG: &str = "info,partybus=debug,partybus_discovery=debug";

fn build(lab: &Lab) -> (NatLab<'_>, partybus_integration::lab::Ns) {
    // NAT-PMP/PCP only: with `ipv6_listening_ip`, miniupnpd 2.3.1 binds its
    // UPnP HTTP socket to that IPv6 address alone (nothing on the LAN's IPv4
    // address, which the lab's start check uses).
    let r1 = RouterOptions { upnp: true, serve: Some(MapProto::Pcp), ..Default::default() };
    let nat =
        NatLab::build(lab, NatOptions { r1, r2: RouterOptions::default(), stun_server: Some(env!("CARGO_BIN_EXE_stun-server").into()) })
            .unwrap();
    let v6h = nat.add_ipv6().unwrap();
    // miniupnpd learns its IPv6 LAN address at its next start.
    nat.restart_miniupnpd(&nat.r1).unwrap();
    (nat, v6h)
}

/// Scenario 1; see the module docs.
#[test]
#[cfg_attr(
    partybus_no_lab,
    ignore = "network lab (needs root, ip, nft, miniupnpd) unavailable here or PARTYBUS_LAB=skip; PARTYBUS_LAB=required runs it"
)]
fn ipv6_only_member_reaches_a_member_behind_a_firewall_through_its_pcp_pinhole() {
    nat::require_prereqs(true);
    let lab = Lab::require("pm6mesh");
    let bin = pb::require_bin(&[(&["node"], "--port-mapping-gateway")]);
    let (nat, v6h) = build(&lab);
    let hood = LabHood::new(&lab, &bin, "v6", LOG).unwrap();
    // h1 (dual stack behind r1) opens a pinhole for its port with PCP over IPv6.
    let t0 = Instant::now();
    let args = s(&["--port", "4816", "--port-mapping", "pcp", "--port-mapping-gateway", R1_LAN6, "--allow-non-global"]);
    let mut h1 = hood.spawn(&lab, &nat.r1.host, "node", "h1", &args).unwrap();
    let h1_id = ready_id(&mut h1);
    let x1 = wait_external(&mut h1, "pcp", Duration::from_secs(15));
    let h1_at: SocketAddr = format!("[{H1_IP6}]:4816").parse().unwrap();
    assert_eq!(x1, h1_at, "an IPv6 pinhole's external address is the host's own");
    eprintln!("v6: h1 opened a PCP pinhole for {x1} in {:.2} s", t0.elapsed().as_secs_f64());
    // v6h, which has no IPv4 at all, dials h1 through r1's firewall.
    let t = Instant::now();
    let mut v =
        hood.spawn(&lab, &v6h, "node", "v6h", &s(&["--port", "4816", "--connect", &h1_at.to_string(), "--allow-non-global"])).unwrap();
    let v_id = ready_id(&mut v);
    let found = wait_found(&mut v, &h1_id, Duration::from_secs(20));
    assert_eq!((found["addr"].as_str(), found["direction"].as_str()), (Some(h1_at.to_string().as_str()), Some("out")), "{found}");
    let back = wait_found(&mut h1, &v_id, Duration::from_secs(10));
    assert_eq!(back["direction"], "in", "{back}");
    assert_eq!(
        back["addr"].as_str().and_then(|a| a.parse::<SocketAddr>().ok()).map(|a| a.ip().to_string()),
        Some(V6H_IP6.to_owned()),
        "{back}"
    );
    eprintln!("v6: v6h (IPv6 only) and h1 are neighbours over IPv6 in {:.2} s", t.elapsed().as_secs_f64());
    for p in [&mut v, &mut h1] {
        p.terminate(Duration::from_secs(10)).unwrap();
    }
}

/// Scenario 2; see the module docs.
#[test]
#[cfg_attr(
    partybus_no_lab,
    ignore = "network lab (needs root, ip, nft, miniupnpd) unavailable here or PARTYBUS_LAB=skip; PARTYBUS_LAB=required runs it"
)]
fn pcp_map_for_ipv6_opens_a_pinhole() {
    nat::require_prereqs(true);
    let lab = Lab::require("pm6pin");
    let (nat, v6h) = build(&lab);
    let site = &nat.r1;
    let args = ["--bind-ip", H1_IP6, "--mode", "pcp", "--gateway", R1_LAN6, "--lease-secs", "60", "--manual"];
    let mut p = lab.spawn_env(&site.host, env!("CARGO_BIN_EXE_portmap-probe"), args, [("RUST_LOG", "partybus_discovery=debug")]).unwrap();
    let port = p.wait_for_json(|v| v.get("ready").is_some(), Duration::from_secs(10)).unwrap()["ready"]["port"].as_u64().unwrap() as u16;
    let me = SocketAddr::new(H1_IP6.parse().unwrap(), port);
    let send = format!("for i in 1 2 3; do printf hello > /dev/udp/{H1_IP6}/{port}; sleep 0.2; done");
    let received = |p: &partybus_integration::lab::LabProcess| p.lines().iter().filter(|l| l.contains("received")).count();
    let pinholes = || {
        let out = lab.exec(&site.router, ["nft", "list", "chain", "inet", nat::ROUTER_TABLE, nat::UPNP_CHAINS[0]]).unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&format!("dport {port} ")))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };

    // No pinhole: r1's firewall drops what v6h sends.
    lab.exec(&v6h, ["bash", "-c", &send]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(received(&p), 0, "a datagram passed r1's firewall without a pinhole: {:?}", p.lines());

    // PCP MAP for h1's IPv6 address: the answer names the address itself.
    let t = Instant::now();
    p.write_line("map").unwrap();
    let v = p.wait_for_json(|v| v.get("external").is_some(), Duration::from_secs(15)).unwrap();
    assert_eq!((v["external"].as_str(), v["source"].as_str()), (Some(me.to_string().as_str()), Some("pcp")), "{v}");
    let rules = pinholes();
    assert_eq!(rules.len(), 1, "{rules:?}");
    eprintln!("pcp6: pinhole for {me} in {:.2} s: {}", t.elapsed().as_secs_f64(), rules[0].trim());
    lab.exec(&v6h, ["bash", "-c", &send]).unwrap();
    let got = p.wait_for_json(|v| v.get("received").is_some(), Duration::from_secs(3)).unwrap();
    assert_eq!(
        got["received"]["from"].as_str().and_then(|a| a.parse::<SocketAddr>().ok()).map(|a| a.ip().to_string()),
        Some(V6H_IP6.into())
    );

    // Deleted (lifetime 0): the pinhole is closed again.
    p.write_line("unmap").unwrap();
    p.wait_for_json(|v| v.get("unmapped").is_some(), Duration::from_secs(10)).unwrap();
    assert!(pinholes().is_empty(), "pinhole left: {:?}", pinholes());
    let before = received(&p);
    lab.exec(&v6h, ["bash", "-c", &send]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(received(&p), before, "a datagram passed after the pinhole was deleted");
    p.close_stdin();
    p.wait_for_json(|v| v.get("stopped").is_some(), Duration::from_secs(10)).unwrap();
}
