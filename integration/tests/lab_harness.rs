//! Self-tests of the network lab harness (namespaces, bridges, routers,
//! processes, cleanup). Network labs: reported as ignored where the build
//! finds the lab cannot run (not root, no `ip`/`nft`) or with
//! `PARTYBUS_LAB=skip`; otherwise, and always under `PARTYBUS_LAB=required`,
//! they run and fail if the lab cannot run (see `partybus_integration::lab`).

use std::process::Command;
use std::time::{Duration, Instant};

use partybus_integration::lab::{require_program, Lab};

fn netns_list() -> String {
    String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).into_owned()
}

#[test]
#[cfg_attr(
    partybus_no_lab,
    ignore = "network lab (needs root, ip, nft, ping) unavailable here or PARTYBUS_LAB=skip; PARTYBUS_LAB=required runs it"
)]
fn bridge_hosts_processes_and_cleanup() {
    require_program("ping", "iputils-ping");
    let lab = Lab::require("selftest");
    let run = lab.run_name().to_owned();
    let lan = lab.bridge("lan0").unwrap();
    let other = lab.bridge("lan4").unwrap();
    let a = lab.host("a", &lan, "198.18.0.11/24").unwrap();
    let b = lab.host("b", &lan, "198.18.0.12/24").unwrap();
    let c = lab.host("c", &other, "198.18.4.13/24").unwrap();

    // Addresses and link state.
    let out = lab.exec(&a, ["ip", "-o", "addr", "show", "dev", "eth0"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("198.18.0.11/24"), "{text}");
    // IPv6 link-local is usable at once (no DAD): not "tentative".
    assert!(text.contains("fe80::") && !text.contains("tentative"), "{text}");
    // bridge-nf-call-iptables is off where the bridges are.
    let sw = lab.switch().unwrap();
    let v = lab.exec(&sw, ["cat", "/proc/sys/net/bridge/bridge-nf-call-iptables"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), "0");
    // No route out of the lab: only the connected LAN.
    let routes = lab.exec(&a, ["ip", "-4", "route"]).unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(!routes.contains("default"), "{routes}");

    lab.exec(&a, ["ping", "-c1", "-W2", "198.18.0.12"]).unwrap();
    // A host on another bridge is unreachable (and there is no route to it).
    assert!(!lab.exec_unchecked(&a, ["ping", "-c1", "-W1", "198.18.4.13"]).unwrap().status.success());

    // Processes: stdout lines, stderr file, wait with timeout, kill on drop.
    let mut p = lab.spawn(&b, "sh", ["-c", "echo one; echo err >&2; echo two; sleep 30"]).unwrap();
    assert_eq!(p.wait_for_line(|l| l.starts_with('t'), Duration::from_secs(5)).unwrap(), "two");
    assert!(p.wait_for_line(|l| l == "one", Duration::from_millis(200)).is_err(), "cursor moved past 'one'");
    let t = Instant::now();
    while p.stderr_tail(5) != "err" && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(p.stderr_tail(5), "err");
    let mut q = lab.spawn(&c, "sh", ["-c", "echo '{\"ready\":{\"port\":1}}'; exec sleep 30"]).unwrap();
    let v = q.wait_for_json(|v| v.get("ready").is_some(), Duration::from_secs(5)).unwrap();
    assert_eq!(v["ready"]["port"], 1);
    let done = lab.run(&a, "sh", ["-c", "echo a; echo b"], Duration::from_secs(5)).unwrap();
    assert_eq!(done.lines(), vec!["a", "b"]);
    assert!(lab.run(&a, "sh", ["-c", "exit 3"], Duration::from_secs(5)).is_err());
    assert!(lab.run(&a, "sleep", ["5"], Duration::from_millis(200)).is_err());

    // Drop: every process killed, every namespace deleted (q is still running).
    let q_pid = q.pid();
    std::mem::forget(q); // even a leaked process handle must not survive the lab
    drop(p);
    drop(lab);
    let list = netns_list();
    assert!(!list.contains(&run), "namespaces left behind:\n{list}");
    let t = Instant::now();
    while std::path::Path::new(&format!("/proc/{q_pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{q_pid}/stat")).map(|s| !s.contains(") Z")).unwrap_or(false)
        && t.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let alive = std::fs::read_to_string(format!("/proc/{q_pid}/stat")).map(|s| !s.contains(") Z")).unwrap_or(false);
    assert!(!alive, "process {q_pid} survived the lab");
}

#[test]
#[cfg_attr(
    partybus_no_lab,
    ignore = "network lab (needs root, ip, nft) unavailable here or PARTYBUS_LAB=skip; PARTYBUS_LAB=required runs it"
)]
fn leftovers_of_crashed_runs_are_removed() {
    // Needs the prerequisites itself, like a lab test.
    drop(Lab::require("leftover"));
    // A namespace named like one of a run whose process is gone.
    let stale = "pb-leftover-4194299-0-x";
    let _ = Command::new("ip").args(["netns", "add", stale]).status();
    assert!(netns_list().contains(stale));
    let lab = Lab::new("leftover").unwrap();
    assert!(!netns_list().contains(stale), "stale namespace not removed");
    drop(lab);
}

#[test]
#[cfg_attr(
    partybus_no_lab,
    ignore = "network lab (needs root, ip, nft, ping) unavailable here or PARTYBUS_LAB=skip; PARTYBUS_LAB=required runs it"
)]
fn router_with_nat_between_lan_and_public() {
    require_program("ping", "iputils-ping");
    let lab = Lab::require("router");
    // LAN 198.18.8.0/24 behind a NAT router; "internet" 203.0.113.0/24.
    let lan = lab.bridge("lan8").unwrap();
    let wan = lab.bridge("inet").unwrap();
    let r = lab.router("r1").unwrap();
    lab.attach(&r, "lan", &lan, Some("198.18.8.1/24")).unwrap();
    lab.attach(&r, "wan", &wan, Some("203.0.113.1/24")).unwrap();
    let h = lab.host("h", &lan, "198.18.8.10/24").unwrap();
    lab.route(&h, "default", "198.18.8.1").unwrap();
    let s = lab.host("srv", &wan, "203.0.113.20/24").unwrap();
    lab.nft(
        &r,
        "table inet nat {\n  chain postrouting {\n    type nat hook postrouting priority srcnat;\n    oifname \"wan\" masquerade\n  }\n}\n",
    )
    .unwrap();
    // The server has no route back to the LAN: only NAT makes the ping work.
    lab.exec(&h, ["ping", "-c1", "-W2", "203.0.113.20"]).unwrap();
    assert!(!lab.exec_unchecked(&s, ["ping", "-c1", "-W1", "198.18.8.10"]).unwrap().status.success());
}
