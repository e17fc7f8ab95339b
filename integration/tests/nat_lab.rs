//! partybus across NATs, in a namespace lab (issue 5): see
//! `partybus_integration::nat` for the topology (vps1 and a STUN host on an
//! "internet", home routers r1/r2 doing NAT with miniupnpd, h1/h2 behind them).
//!
//! 1. `dht_rendezvous_and_upnp_direct_mesh`: h1 and h2 know only the DHT
//!    bootstrap node on vps1; they map their port with UPnP, find each other
//!    in the DHT and connect directly to each other's mapped public address.
//! 2. `hub_on_vps_without_upnp`: a public hood node on vps1, h1 and h2 join it
//!    with `--connect`; no UPnP. Behind these cone NATs h1 and h2 must end on
//!    a direct path (through the hub's relay first, then a punched hole).
//!    `hub_with_symmetric_nat_and_loss`: the same with symmetric NATs and 2 %
//!    loss each way on the WAN links: joining through the hub works, and h1
//!    and h2 meet through the hub's relay and stay relayed (no punch through
//!    symmetric NATs).
//! 3. `router_restart_drops_mapping_and_mesh_heals`: r2 "reboots" (WAN down,
//!    miniupnpd killed, its mappings and conntrack gone); h2 notices, maps again
//!    and the mesh heals.
//!
//! Each prints its time to full mesh (`nat: scenario N full mesh in X s`).
//! Network labs: reported as ignored where the build finds the lab
//! cannot run (not root, no `ip`/`nft`) or with `PARTYBUS_LAB=skip`; otherwise,
//! and always under `PARTYBUS_LAB=required`, they run and fail if the lab
//! cannot run (see `partybus_integration::lab`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use partybus_integration::lab::{require_program, Lab, LabProcess, Ns};
use partybus_integration::nat::{self, NatLab, NatOptions, RouterOptions, VPS1_IP};
use partybus_integration::nodelog::{
    direct_at, has_found, has_found_after_lost, is_neighbour, last_path, ready_id, s, wait_announced, wait_external, wait_found,
};
use partybus_integration::pb;

const LOG: &str = "info,partybus=debug,partybus_discovery=debug";
const DHT_PORT: u16 = 4000;

/// Lab and partybus binary; fails the test when the lab cannot run.
fn setup(prefix: &str, upnp: bool) -> (Lab, PathBuf) {
    nat::require_prereqs(upnp);
    let lab = Lab::require(prefix);
    let bin = pb::require_bin(&[(&["node"], "--upnp"), (&["node"], "--dht"), (&["dht"], "--allow-non-global")]);
    (lab, bin)
}

struct Hood {
    bin: PathBuf,
    dir: PathBuf,
    hood: pb::HoodFiles,
}

impl Hood {
    fn new(lab: &Lab, bin: &Path) -> Hood {
        let dir = lab.dir().join("certs");
        std::fs::create_dir_all(&dir).unwrap();
        let hood = pb::create_hood(bin, &dir, "nat").unwrap();
        Hood { bin: bin.to_path_buf(), dir, hood }
    }

    /// `partybus CMD <identity of a new peer NAME> ARGS...` in `ns`.
    fn spawn(&self, lab: &Lab, ns: &Ns, cmd: &str, name: &str, args: &[String]) -> LabProcess {
        let peer = pb::create_peer(&self.bin, &self.dir, &self.hood, name).unwrap();
        let mut a = vec![cmd.to_owned()];
        a.extend(pb::identity_args(&self.hood, &peer));
        a.extend(args.iter().cloned());
        lab.spawn_env(ns, &self.bin, a, [("RUST_LOG", LOG)]).unwrap()
    }
}

/// Run `partybus emit` to completion; returns the count (last stdout line).
fn emit(hood: &Hood, lab: &Lab, ns: &Ns, name: &str, args: &[String]) -> u64 {
    let mut p = hood.spawn(lab, ns, "emit", name, args);
    let st = p.wait_exit(Duration::from_secs(60)).unwrap();
    let lines = p.lines();
    assert!(st.success(), "{}: emit exited with {st}; stdout {lines:?}\n{}", p.label(), p.stderr_tail(30));
    lines
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("{}: emit output {lines:?}\n{}", p.label(), p.stderr_tail(30)))
}

/// Scenario 2: a public hub node, h1 and h2 join it with --connect; no UPnP.
#[test]
#[cfg_attr(
    partybus_no_lab,
    ignore = "network lab (needs root, ip, nft) unavailable here or PARTYBUS_LAB=skip; PARTYBUS_LAB=required runs it"
)]
fn hub_on_vps_without_upnp() {
    let (lab, bin) = setup("nathub", false);
    hub_scenario(&lab, &bin, NatOptions::default(), "2");
}

/// Scenario 2 with symmetric NATs (`masquerade fully-random`) and 2 % loss
/// each way on both WAN links: joining through the hub still works.
#[test]
#[cfg_attr(
    partybus_no_lab,
    ignore = "network lab (needs root, ip, nft) unavailable here or PARTYBUS_LAB=skip; PARTYBUS_LAB=required runs it"
)]
fn hub_with_symmetric_nat_and_loss() {
    let (lab, bin) = setup("natsym", false);
    let r = RouterOptions { symmetric: true, loss_ppm: 20_000, ..Default::default() };
    hub_scenario(&lab, &bin, NatOptions { r1: r.clone(), r2: r, stun_server: None }, "2s");
}

fn hub_scenario(lab: &Lab, bin: &Path, opts: NatOptions, sc: &str) {
    let symmetric = opts.r1.symmetric;
    let nat = NatLab::build(lab, opts).unwrap();
    let hood = Hood::new(lab, bin);
    let hub = format!("{VPS1_IP}:4816");
    let t0 = Instant::now();
    let mut vps = hood.spawn(lab, &nat.vps1, "node", "vps1", &s(&["--port", "4816", "--allow-non-global"]));
    let vps_id = ready_id(&mut vps);
    let join = s(&["--port", "4816", "--connect", &hub, "--allow-non-global"]);
    let mut h1 = hood.spawn(lab, &nat.r1.host, "node", "h1", &join);
    let mut h2 = hood.spawn(lab, &nat.r2.host, "node", "h2", &join);
    let h1_id = ready_id(&mut h1);
    let h2_id = ready_id(&mut h2);
    wait_found(&mut h1, &vps_id, Duration::from_secs(30));
    wait_found(&mut h2, &vps_id, Duration::from_secs(30));
    // The hub sees them at their routers' public addresses (masquerade keeps the port).
    let a1 = wait_found(&mut vps, &h1_id, Duration::from_secs(30));
    let a2 = if let Some(v) = has_found(&vps, &h2_id) { v } else { wait_found(&mut vps, &h2_id, Duration::from_secs(30)) };
    eprintln!("nat: scenario {sc} full mesh (h1, h2 joined through vps1) in {:.2} s", t0.elapsed().as_secs_f64());
    let ip_of = |v: &serde_json::Value| v["addr"].as_str().unwrap().parse::<SocketAddr>().unwrap();
    assert_eq!(ip_of(&a1).ip(), nat.r1.wan_ip, "{a1}");
    assert_eq!(ip_of(&a2).ip(), nat.r2.wan_ip, "{a2}");
    if !symmetric {
        // Port-restricted cone: masquerade keeps the port.
        assert_eq!(ip_of(&a1).port(), 4816, "{a1}");
        assert_eq!(ip_of(&a2).port(), 4816, "{a2}");
    }

    // Events: a listener on vps1 gets an emit from h1 and one from h2.
    let to_vps = s(&["--port", "4817", "--connect", &hub, "--allow-non-global", "lab.to-vps1"]);
    let mut lv = hood.spawn(lab, &nat.vps1, "listen", "lv", &to_vps);
    for (host, name) in [(&nat.r1.host, "e1"), (&nat.r2.host, "e2")] {
        let t = Instant::now();
        let args = s(&[
            "--port",
            "4818",
            "--connect",
            &hub,
            "--allow-non-global",
            "lab.to-vps1",
            &format!(r#"{{"from":"{name}"}}"#),
            "--wait-listeners",
            "1",
            "--timeout",
            "30s",
        ]);
        let n = emit(&hood, lab, host, name, &args);
        assert_eq!(n, 1, "emit from {host} reached {n} listeners");
        let ev = lv.wait_for_json(|v| v["event"] == "lab.to-vps1", Duration::from_secs(10)).unwrap();
        assert_eq!(ev["payload"]["from"], name);
        eprintln!("nat: scenario {sc} event {host} -> vps1 delivered in {:.2} s", t.elapsed().as_secs_f64());
    }
    // And the other way: a listener on h1 gets an emit from vps1.
    let mut l1 =
        hood.spawn(lab, &nat.r1.host, "listen", "l1", &s(&["--port", "4817", "--connect", &hub, "--allow-non-global", "lab.to-h1"]));
    let t = Instant::now();
    let args = s(&[
        "--port",
        "4818",
        "--connect",
        &hub,
        "--allow-non-global",
        "lab.to-h1",
        r#"{"from":"vps1"}"#,
        "--wait-listeners",
        "1",
        "--timeout",
        "30s",
    ]);
    let n = emit(&hood, lab, &nat.vps1, "ev", &args);
    assert_eq!(n, 1, "emit from vps1 reached {n} listeners");
    let ev = l1.wait_for_json(|v| v["event"] == "lab.to-h1", Duration::from_secs(10)).unwrap();
    assert_eq!(ev["payload"]["from"], "vps1");
    eprintln!("nat: scenario {sc} event vps1 -> h1 delivered in {:.2} s", t.elapsed().as_secs_f64());

    // h1 <-> h2: each registers at the hub's relay and learns the other's
    // relay route and observed address through gossip; they connect through
    // the relay and probe each other's public address at the same time.
    // Behind cone NATs that punches a direct path (the same connection moves
    // to it: the last path line says direct, at the other router's public
    // address); behind symmetric NATs it cannot, and they stay relayed
    // through vps1. Either way they are neighbours.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !(is_neighbour(&h1, &h2_id) && is_neighbour(&h2, &h1_id)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(is_neighbour(&h1, &h2_id) && is_neighbour(&h2, &h1_id), "h1 and h2 did not meet within 30 s");
    let want = if symmetric { "relayed" } else { "direct" };
    let settle = Instant::now() + Duration::from_secs(10);
    while Instant::now() < settle
        && !(last_path(&h1, &h2_id).is_some_and(|v| v["path"] == want) && last_path(&h2, &h1_id).is_some_and(|v| v["path"] == want))
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (p12, p21) = (last_path(&h1, &h2_id), last_path(&h2, &h1_id));
    eprintln!("nat: scenario {sc} h1<->h2 after {:.1} s: h1 sees h2 {p12:?}, h2 sees h1 {p21:?}", t0.elapsed().as_secs_f64());
    let (p12, p21) = (p12.expect("h1 printed no path for h2"), p21.expect("h2 printed no path for h1"));
    assert_eq!(p12["path"], want, "{p12}");
    assert_eq!(p21["path"], want, "{p21}");
    if symmetric {
        assert_eq!(p12["via"], hub.as_str(), "{p12}");
        assert_eq!(p21["via"], hub.as_str(), "{p21}");
    } else {
        assert_eq!(ip_of(&p12), SocketAddr::new(nat.r2.wan_ip.into(), 4816), "h1 -> h2 not at r2's public address: {p12}");
        assert_eq!(ip_of(&p21), SocketAddr::new(nat.r1.wan_ip.into(), 4816), "h2 -> h1 not at r1's public address: {p21}");
    }
    for p in [&mut vps, &mut h1, &mut h2, &mut lv, &mut l1] {
        p.signal("TERM").unwrap();
    }
    for p in [&mut vps, &mut h1, &mut h2, &mut lv, &mut l1] {
        p.wait_exit(Duration::from_secs(10)).unwrap();
    }
}

/// The UPnP + DHT lab of scenarios 1 and 3: both routers with miniupnpd,
/// the DHT bootstrap node on vps1, h1 in the hood (mapped and announced),
/// then h2 joining; returns once h1 and h2 are neighbours.
struct DhtMesh<'a> {
    nat: NatLab<'a>,
    hood: Hood,
    boot: String,
    node_args: Vec<String>,
    h1: LabProcess,
    h2: LabProcess,
    h1_id: String,
    h2_id: String,
    /// External (mapped) addresses of the h1 and h2 nodes.
    x1: SocketAddr,
    x2: SocketAddr,
    _dht: LabProcess,
}

fn dht_mesh<'a>(lab: &'a Lab, bin: &Path, scenario: u32, extra: &[&str]) -> DhtMesh<'a> {
    let up = RouterOptions { upnp: true, ..Default::default() };
    let nat =
        NatLab::build(lab, NatOptions { r1: up.clone(), r2: up, stun_server: Some(env!("CARGO_BIN_EXE_stun-server").into()) }).unwrap();
    let hood = Hood::new(lab, bin);
    let mut dht = lab
        .spawn_env(
            &nat.vps1,
            bin,
            s(&["dht", "--port", &DHT_PORT.to_string(), "--bind", VPS1_IP, "--allow-non-global"]),
            [("RUST_LOG", LOG)],
        )
        .unwrap();
    dht.wait_for_json(|v| v.get("ready").is_some(), Duration::from_secs(20)).unwrap();
    let boot = format!("{VPS1_IP}:{DHT_PORT}");
    let mut node_args = s(&["--port", "4816", "--upnp", "--dht", &boot, "--allow-non-global"]);
    node_args.extend(s(extra));

    // h1 is in the hood already (mapped, announced in the DHT); h2 joins.
    let t0 = Instant::now();
    let mut h1 = hood.spawn(lab, &nat.r1.host, "node", "h1", &node_args);
    let h1_id = ready_id(&mut h1);
    let x1 = wait_external(&mut h1, "upnp", Duration::from_secs(20));
    let m1 = nat.wait_mapping(&nat.r1, SocketAddr::new(nat.r1.host_ip.into(), 4816), Duration::from_secs(5)).unwrap();
    assert_eq!(x1, SocketAddr::new(nat.r1.wan_ip.into(), m1), "h1's external address is not its mapping on r1");
    wait_announced(&mut h1, x1, Duration::from_secs(20));
    eprintln!("nat: scenario {scenario} h1 mapped at {x1} and announced in the DHT after {:.2} s", t0.elapsed().as_secs_f64());

    let t1 = Instant::now();
    let mut h2 = hood.spawn(lab, &nat.r2.host, "node", "h2", &node_args);
    let h2_id = ready_id(&mut h2);
    let x2 = wait_external(&mut h2, "upnp", Duration::from_secs(20));
    let m2 = nat.wait_mapping(&nat.r2, SocketAddr::new(nat.r2.host_ip.into(), 4816), Duration::from_secs(5)).unwrap();
    assert_eq!(x2, SocketAddr::new(nat.r2.wan_ip.into(), m2), "h2's external address is not its mapping on r2");

    let f21 = wait_found(&mut h2, &h1_id, Duration::from_secs(30));
    let f12 = if let Some(v) = has_found(&h1, &h2_id) { v } else { wait_found(&mut h1, &h2_id, Duration::from_secs(30)) };
    eprintln!("nat: scenario {scenario} full mesh in {:.2} s (h2 joining; h2 mapped at {x2})", t1.elapsed().as_secs_f64());
    eprintln!(
        "nat: scenario {scenario} h1 sees h2 at {} ({}), h2 sees h1 at {} ({})",
        f12["addr"], f12["direction"], f21["addr"], f21["direction"]
    );
    // Direct, through the mappings (perhaps after meeting through the DHT
    // node's relay): the last path lines name the mapped addresses.
    let settle = Instant::now() + Duration::from_secs(15);
    while Instant::now() < settle && !(direct_at(&h1, &h2_id, x2) && direct_at(&h2, &h1_id, x1)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(direct_at(&h1, &h2_id, x2), "h1 -> h2 not direct through h2's mapping {x2}: {f12} {:?}", last_path(&h1, &h2_id));
    assert!(direct_at(&h2, &h1_id, x1), "h2 -> h1 not direct through h1's mapping {x1}: {f21} {:?}", last_path(&h2, &h1_id));
    DhtMesh { nat, hood, boot, node_args, h1, h2, h1_id, h2_id, x1, x2, _dht: dht }
}

impl DhtMesh<'_> {
    /// A listener on `to` (joining like the nodes: UPnP + DHT) receives an
    /// emit from `from`; the emit's count is exactly 1.
    fn event(&self, lab: &Lab, from: &Ns, to: &Ns, tag: &str, scenario: u32) {
        let t = Instant::now();
        let event = format!("lab.{tag}");
        let mut args = self.node_args.clone();
        args[1] = "4817".into();
        args.push(event.clone());
        let mut l = self.hood.spawn(lab, to, "listen", &format!("l{tag}"), &args);
        // Emit looks the listener up in the DHT once it is there (or hears
        // of it by gossip): wait until it has announced its mapped address.
        let x = wait_external(&mut l, "upnp", Duration::from_secs(20));
        wait_announced(&mut l, x, Duration::from_secs(20));
        let mut args = self.node_args.clone();
        args[1] = "4818".into();
        args.extend(s(&[&event, &format!(r#"{{"tag":"{tag}"}}"#), "--wait-listeners", "1", "--timeout", "30s"]));
        let n = emit(&self.hood, lab, from, &format!("e{tag}"), &args);
        assert_eq!(n, 1, "emit {from} -> {to} reached {n} listeners");
        let ev = l.wait_for_json(|v| v["event"] == event.as_str(), Duration::from_secs(10)).unwrap();
        assert_eq!(ev["payload"]["tag"], tag);
        eprintln!("nat: scenario {scenario} event {from} -> {to} delivered in {:.2} s", t.elapsed().as_secs_f64());
        l.signal("TERM").unwrap();
        l.wait_exit(Duration::from_secs(10)).unwrap();
    }
}

/// Scenario 1: DHT rendezvous + UPnP mappings, direct connection, events both ways.
#[test]
#[cfg_attr(
    partybus_no_lab,
    ignore = "network lab (needs root, ip, nft, miniupnpd) unavailable here or PARTYBUS_LAB=skip; PARTYBUS_LAB=required runs it"
)]
fn dht_rendezvous_and_upnp_direct_mesh() {
    let (lab, bin) = setup("natdht", true);
    let mut m = dht_mesh(&lab, &bin, 1, &[]);
    let (h1, h2) = (m.nat.r1.host.clone(), m.nat.r2.host.clone());
    m.event(&lab, &h2, &h1, "h2-to-h1", 1);
    m.event(&lab, &h1, &h2, "h1-to-h2", 1);
    assert!(is_neighbour(&m.h1, &m.h2_id) && is_neighbour(&m.h2, &m.h1_id), "h1 and h2 lost each other");
    eprintln!(
        "nat: scenario 1 bootstrap {} only; mappings r1 {:?}, r2 {:?}",
        m.boot,
        m.nat.udp_mappings(&m.nat.r1).unwrap(),
        m.nat.udp_mappings(&m.nat.r2).unwrap()
    );
    for p in [&mut m.h1, &mut m.h2] {
        p.signal("TERM").unwrap();
    }
    for p in [&mut m.h1, &mut m.h2] {
        p.wait_exit(Duration::from_secs(10)).unwrap();
    }
    // Stopping removes the mappings.
    let left: Vec<_> = m.nat.udp_mappings(&m.nat.r1).unwrap().into_iter().chain(m.nat.udp_mappings(&m.nat.r2).unwrap()).collect();
    assert!(left.is_empty(), "mappings left after the nodes stopped: {left:?}");
}

/// Scenario 3: r2 "reboots": WAN down, miniupnpd killed, its chains and the
/// router's conntrack state flushed, then WAN up and miniupnpd started again
/// with no mappings. h2 notices (renewal fails: short lease), maps again, and
/// h1 and h2 find each other again; events flow.
#[test]
#[cfg_attr(
    partybus_no_lab,
    ignore = "network lab (needs root, ip, nft, miniupnpd, conntrack) unavailable here or PARTYBUS_LAB=skip; PARTYBUS_LAB=required runs it"
)]
fn router_restart_drops_mapping_and_mesh_heals() {
    let (lab, bin) = setup("natrst", true);
    // conntrack simulates the router's reboot (its state forgotten).
    require_program("conntrack", "conntrack");
    pb::require_bin(&[(&["node"], "--upnp-lease")]);
    // Lease 6 s: renewed every 3 s. Idle timeout 4 s: the cut is noticed soon.
    let mut m = dht_mesh(&lab, &bin, 3, &["--upnp-lease", "6s", "--keep-alive", "1s", "--idle-timeout", "4s"]);
    let internal2 = SocketAddr::new(m.nat.r2.host_ip.into(), 4816);

    let t0 = Instant::now();
    m.nat.set_wan(&m.nat.r2, false).unwrap();
    m.nat.stop_miniupnpd(&m.nat.r2).unwrap();
    m.nat.flush_conntrack(&m.nat.r2).unwrap();
    assert!(m.nat.udp_mappings(&m.nat.r2).unwrap().is_empty());
    // h2 notices: the renewal fails, the external address is withdrawn.
    m.h2.wait_for_stderr(|l| l.contains("upnp: mapping lost"), Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("h2 did not notice the lost mapping: {e:#}"));
    m.h2.wait_for_stderr(|l| l.contains("external address withdrawn") && l.contains(&m.x2.to_string()), Duration::from_secs(5)).unwrap();
    eprintln!("nat: scenario 3 h2 noticed the lost mapping after {:.2} s", t0.elapsed().as_secs_f64());
    // The connection dies (idle timeout) on both sides.
    let (h1_id, h2_id) = (m.h1_id.clone(), m.h2_id.clone());
    m.h1.wait_for_json(|v| v["neighbour"] == "lost" && v["id"] == h2_id.as_str(), Duration::from_secs(15)).unwrap();
    m.h2.wait_for_json(|v| v["neighbour"] == "lost" && v["id"] == h1_id.as_str(), Duration::from_secs(15)).unwrap();
    eprintln!("nat: scenario 3 h1 and h2 lost each other after {:.2} s", t0.elapsed().as_secs_f64());

    // The router comes back, without the old mappings.
    m.nat.set_wan(&m.nat.r2, true).unwrap();
    let t_up = Instant::now();
    m.nat.start_miniupnpd(&m.nat.r2).unwrap();
    eprintln!("nat: scenario 3 r2 back after {:.2} s down", t0.elapsed().as_secs_f64());
    let f12 = if let Some(v) = has_found_after_lost(&m.h1, &h2_id) { v } else { wait_found(&mut m.h1, &h2_id, Duration::from_secs(60)) };
    let f21 = if let Some(v) = has_found_after_lost(&m.h2, &h1_id) { v } else { wait_found(&mut m.h2, &h1_id, Duration::from_secs(30)) };
    eprintln!(
        "nat: scenario 3 full mesh again in {:.2} s after the router came back ({:.2} s after the cut); h1 sees h2 at {} ({}), h2 sees h1 at {} ({})",
        t_up.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64(),
        f12["addr"],
        f12["direction"],
        f21["addr"],
        f21["direction"]
    );
    // They may meet again through the DHT node's relay first; either way the
    // path ends direct, between the routers' public addresses.
    let direct_to = |p: &LabProcess, id: &str, ip: std::net::Ipv4Addr| {
        last_path(p, id).is_some_and(|v| {
            v["path"] == "direct" && v["addr"].as_str().and_then(|a| a.parse::<SocketAddr>().ok()).is_some_and(|a| a.ip() == ip)
        })
    };
    let settle = Instant::now() + Duration::from_secs(15);
    while Instant::now() < settle && !(direct_to(&m.h1, &h2_id, m.nat.r2.wan_ip) && direct_to(&m.h2, &h1_id, m.nat.r1.wan_ip)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (p12, p21) = (last_path(&m.h1, &h2_id), last_path(&m.h2, &h1_id));
    assert!(direct_to(&m.h1, &h2_id, m.nat.r2.wan_ip), "h1 -> h2 not direct to r2's public address: {p12:?}");
    assert!(direct_to(&m.h2, &h1_id, m.nat.r1.wan_ip), "h2 -> h1 not direct to r1's public address: {p21:?}");

    // h2 mapped again on the new miniupnpd.
    let x2 = wait_external(&mut m.h2, "upnp", Duration::from_secs(30));
    let port = m.nat.wait_mapping(&m.nat.r2, internal2, Duration::from_secs(5)).unwrap();
    assert_eq!(x2, SocketAddr::new(m.nat.r2.wan_ip.into(), port));
    eprintln!("nat: scenario 3 h2 mapped again at {x2} {:.2} s after the router came back", t_up.elapsed().as_secs_f64());
    // The new mapping takes fresh connections from the internet: a probe
    // node on vps1 dials h2 there.
    let mut probe =
        m.hood.spawn(&lab, &m.nat.vps1, "node", "probe", &s(&["--port", "4820", "--connect", &x2.to_string(), "--allow-non-global"]));
    let fp = wait_found(&mut probe, &h2_id, Duration::from_secs(20));
    assert_eq!(fp["addr"], x2.to_string(), "{fp}");
    assert_eq!(fp["direction"], "out", "{fp}");
    probe.signal("TERM").unwrap();
    probe.wait_exit(Duration::from_secs(10)).unwrap();

    // Events flow both ways, including into r2's LAN through its new mappings.
    let (h1, h2) = (m.nat.r1.host.clone(), m.nat.r2.host.clone());
    m.event(&lab, &h1, &h2, "h1-to-h2", 3);
    m.event(&lab, &h2, &h1, "h2-to-h1", 3);
    let _ = m.x1;
}
