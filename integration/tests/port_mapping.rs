//! Port mapping with PCP, NAT-PMP and UPnP IGD against miniupnpd (issue 17),
//! in the NAT lab of `partybus_integration::nat`: r1's miniupnpd serves one
//! protocol at a time (`RouterOptions::serve`; see `nat::serve` for how
//! NAT-PMP and PCP are told apart), h1 behind it.
//!
//! 1. `pcp_lifecycle`, `natpmp_lifecycle`, `upnp_lifecycle` (one scenario,
//!    [`lifecycle`]): a node on h1 with `--port-mapping PROTO` and a 4 s
//!    lease maps its port (the router holds the mapping it reports),
//!    renews it every 2 s, announces it in the DHT, and a node on vps1 whose
//!    only discovery is the DHT reaches it directly at the mapped address;
//!    the router's daemon restarts with its mappings gone, and the node
//!    notices (NAT-PMP/PCP: the epoch went back; UPnP: GetStatusInfo's
//!    uptime did) and maps again; on leave the mapping is deleted.
//! 2. `auto_picks_what_answers_and_gives_up_cleanly`: `--port-mapping auto`
//!    (the `portmap-probe` service) with only PCP, only NAT-PMP, only UPnP
//!    on the router maps with that one; when the router moves from PCP to
//!    UPnP it follows after three failed renewals; with no daemon at all it
//!    says so in one log line and does not probe again within the test (the
//!    next round is 30 s later).
//!
//! Each prints the time to a mapping (`portmap: ...`).
//! Network labs: reported as ignored where the build finds the lab
//! cannot run (not root, no `ip`/`nft`) or with `PARTYBUS_LAB=skip`; otherwise,
//! and always under `PARTYBUS_LAB=required`, they run and fail if the lab
//! cannot run (see `partybus_integration::lab`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use partybus_integration::lab::Lab;
use partybus_integration::nat::{self, MapProto, NatLab, NatOptions, RouterOptions, VPS1_IP};
use partybus_integration::nodelog::{count_log, ready_id, s, wait_announced, wait_direct_at, wait_external, wait_log_count};
use partybus_integration::pb::{self, LabHood};

const LOG: &str = "info,partybus=debug,partybus_discovery=debug";
const DHT_PORT: u16 = 4000;

/// A NAT lab whose r1 runs miniupnpd serving only `serve`.
fn build(lab: &Lab, serve: MapProto) -> NatLab<'_> {
    let r1 = RouterOptions { upnp: true, serve: Some(serve), ..Default::default() };
    NatLab::build(lab, NatOptions { r1, r2: RouterOptions::default(), stun_server: Some(env!("CARGO_BIN_EXE_stun-server").into()) })
        .unwrap()
}

#[test]
#[cfg_attr(
    partybus_no_lab,
    ignore = "network lab (needs root, ip, nft, miniupnpd) unavailable here or PARTYBUS_LAB=skip; PARTYBUS_LAB=required runs it"
)]
fn pcp_lifecycle() {
    lifecycle(MapProto::Pcp);
}

#[test]
#[cfg_attr(
    partybus_no_lab,
    ignore = "network lab (needs root, ip, nft, miniupnpd) unavailable here or PARTYBUS_LAB=skip; PARTYBUS_LAB=required runs it"
)]
fn natpmp_lifecycle() {
    lifecycle(MapProto::NatPmp);
}

#[test]
#[cfg_attr(
    partybus_no_lab,
    ignore = "network lab (needs root, ip, nft, miniupnpd) unavailable here or PARTYBUS_LAB=skip; PARTYBUS_LAB=required runs it"
)]
fn upnp_lifecycle() {
    lifecycle(MapProto::Upnp);
}

/// Scenario 1 for `proto`; see the module docs.
fn lifecycle(proto: MapProto) {
    nat::require_prereqs(true);
    let lab = Lab::require(&format!("pm{proto}"));
    let bin = pb::require_bin(&[(&["node"], "--port-mapping"), (&["dht"], "--allow-non-global")]);
    let nat = build(&lab, proto);
    let site = &nat.r1;
    let hood = LabHood::new(&lab, &bin, "pm", LOG).unwrap();
    let mut dht = lab
        .spawn_env(
            &nat.vps1,
            &bin,
            s(&["dht", "--port", &DHT_PORT.to_string(), "--bind", VPS1_IP, "--allow-non-global"]),
            [("RUST_LOG", LOG)],
        )
        .unwrap();
    dht.wait_for_json(|v| v.get("ready").is_some(), Duration::from_secs(20)).unwrap();
    let boot = format!("{VPS1_IP}:{DHT_PORT}");

    // Mapped: no gateway named, so NAT-PMP/PCP ask the default route's router.
    let t0 = Instant::now();
    let args = s(&["--port", "4816", "--port-mapping", proto.name(), "--port-mapping-lease", "4s", "--dht", &boot, "--allow-non-global"]);
    let mut h1 = hood.spawn(&lab, &site.host, "node", "h1", &args).unwrap();
    let h1_id = ready_id(&mut h1);
    let x1 = wait_external(&mut h1, proto.name(), Duration::from_secs(20));
    let took = t0.elapsed();
    let internal = SocketAddr::new(site.host_ip.into(), 4816);
    let port = nat.wait_mapping(site, internal, Duration::from_secs(5)).unwrap();
    assert_eq!(x1, SocketAddr::new(site.wan_ip.into(), port), "{proto}: reported {x1}, the router maps {port} -> {internal}");
    eprintln!("portmap: {proto}: {internal} mapped at {x1} {:.2} s after the node started", took.as_secs_f64());

    // Renewed at half the 4 s lease: two more grants within ~6 s.
    let granted = format!("{proto}: mapping granted");
    assert!(wait_log_count(&h1, &granted, 3, Duration::from_secs(8)), "{proto}: not renewed: {} grants", count_log(&h1, &granted));

    // Reached from outside at the mapped address, the DHT the only discovery.
    wait_announced(&mut h1, x1, Duration::from_secs(20));
    let t = Instant::now();
    let mut out = hood.spawn(&lab, &nat.vps1, "node", "out", &s(&["--port", "4820", "--dht", &boot, "--allow-non-global"])).unwrap();
    ready_id(&mut out);
    assert!(wait_direct_at(&out, &h1_id, x1, Duration::from_secs(30)), "{proto}: vps1 did not reach h1 directly at {x1}");
    eprintln!("portmap: {proto}: vps1 reached h1 at {x1} through the DHT in {:.2} s", t.elapsed().as_secs_f64());
    out.terminate(Duration::from_secs(10)).unwrap();

    // The router's daemon restarts, its mappings gone; h1 maps again.
    let t = Instant::now();
    nat.restart_miniupnpd(site).unwrap();
    let up = t.elapsed();
    let again = nat.wait_mapping(site, internal, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{proto}: not mapped again: {e:#}"));
    // Noticed: NAT-PMP/PCP epoch, UPnP GetStatusInfo uptime went back.
    h1.wait_for_stderr(|l| l.contains("the router restarted"), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{proto}: the restart was not noticed from the epoch: {e:#}"));
    eprintln!(
        "portmap: {proto}: router restarted in {:.2} s; mapped again (port {again}) {:.2} s after it was back",
        up.as_secs_f64(),
        (t.elapsed() - up).as_secs_f64()
    );

    // Leave: the mapping is deleted.
    h1.terminate(Duration::from_secs(10)).unwrap();
    assert!(count_log(&h1, &format!("{proto}: mapping removed")) == 1, "{proto}: {}", h1.stderr_tail(20));
    let left = nat.udp_mappings(site).unwrap();
    assert!(left.is_empty(), "{proto}: mappings left after h1 left: {left:?}");
}

/// Scenario 2; see the module docs.
#[test]
#[cfg_attr(
    partybus_no_lab,
    ignore = "network lab (needs root, ip, nft, miniupnpd) unavailable here or PARTYBUS_LAB=skip; PARTYBUS_LAB=required runs it"
)]
fn auto_picks_what_answers_and_gives_up_cleanly() {
    nat::require_prereqs(true);
    let lab = Lab::require("pmauto");
    let nat = build(&lab, MapProto::Pcp);
    let site = &nat.r1;
    let host_ip = site.host_ip.to_string();
    let probe = |lab: &Lab, lease: &str| {
        let args = ["--bind-ip", &host_ip, "--mode", "auto", "--lease-secs", lease];
        let mut p =
            lab.spawn_env(&site.host, env!("CARGO_BIN_EXE_portmap-probe"), args, [("RUST_LOG", "partybus_discovery=debug")]).unwrap();
        let port =
            p.wait_for_json(|v| v.get("ready").is_some(), Duration::from_secs(10)).unwrap()["ready"]["port"].as_u64().unwrap() as u16;
        (p, port)
    };
    for proto in [MapProto::Pcp, MapProto::NatPmp, MapProto::Upnp] {
        if proto != MapProto::Pcp {
            nat.serve_only(site, Some(proto)).unwrap();
            nat.restart_miniupnpd(site).unwrap();
        }
        let t = Instant::now();
        let (mut p, port) = probe(&lab, "60");
        let v = p
            .wait_for_json(|v| v.get("external").is_some(), Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("auto with only {proto}: no mapping: {e:#}\n{}", p.stderr_tail(20)));
        assert_eq!(v["source"], proto.name(), "auto with only {proto} on the router: {v}");
        let ext: SocketAddr = v["external"].as_str().unwrap().parse().unwrap();
        let mapped = nat.wait_mapping(site, SocketAddr::new(site.host_ip.into(), port), Duration::from_secs(5)).unwrap();
        assert_eq!(ext.port(), mapped, "{v}");
        eprintln!("portmap: auto with only {proto} on the router: {proto} mapped {ext} in {:.2} s", t.elapsed().as_secs_f64());
        p.close_stdin();
        p.wait_for_json(|v| v.get("stopped").is_some(), Duration::from_secs(15)).unwrap();
        assert!(nat.udp_mappings(site).unwrap().is_empty(), "auto/{proto}: mapping left");
    }

    // The router switches from PCP to UPnP: the probe's PCP renewals fail
    // (2 s, then 5 s and 10 s later), after the third failure it probes
    // again and moves to UPnP.
    nat.serve_only(site, Some(MapProto::Pcp)).unwrap();
    nat.restart_miniupnpd(site).unwrap();
    let (mut p, _) = probe(&lab, "4");
    let v = p.wait_for_json(|v| v.get("external").is_some(), Duration::from_secs(15)).unwrap();
    assert_eq!(v["source"], "pcp", "{v}");
    let t = Instant::now();
    nat.serve_only(site, Some(MapProto::Upnp)).unwrap();
    nat.restart_miniupnpd(site).unwrap();
    let v = p
        .wait_for_json(|v| v.get("external").is_some() && v["source"] == "upnp", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("auto did not move from PCP to UPnP: {e:#}\n{}", p.stderr_tail(20)));
    eprintln!("portmap: auto moved from PCP to UPnP {:.2} s after the router changed: {v}", t.elapsed().as_secs_f64());
    p.close_stdin();
    p.wait_for_json(|v| v.get("stopped").is_some(), Duration::from_secs(15)).unwrap();
    assert!(nat.udp_mappings(site).unwrap().is_empty(), "auto pcp->upnp: mapping left");

    // No daemon: one round of probes, one info line, no storm.
    nat.stop_miniupnpd(site).unwrap();
    let t = Instant::now();
    let (mut p, _) = probe(&lab, "60");
    p.wait_for_stderr(|l| l.contains("no gateway answered"), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("auto gave up without saying so: {e:#}\n{}", p.stderr_tail(20)));
    let gave_up = t.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count_log(&p, "no gateway answered"), 1, "{}", p.stderr_tail(20));
    assert_eq!(count_log(&p, "PCP probe"), 1, "probed again: {}", p.stderr_tail(20));
    assert!(p.lines().iter().all(|l| !l.contains("external")), "{:?}", p.lines());
    eprintln!("portmap: auto with nothing on the router: gave up after {:.2} s (next round in 30 s)", gave_up.as_secs_f64());
    p.close_stdin();
    p.wait_for_json(|v| v.get("stopped").is_some(), Duration::from_secs(15)).unwrap();
}
