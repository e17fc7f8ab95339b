//! Running a node in production: reload (SIGHUP, `partybus status
//! --reload`), certificate rotation, systemd's readiness notifications.
//! Real processes on loopback.

mod procs;

use std::time::{Duration, Instant};

use procs::*;
use serde_json::Value;

#[test]
fn sighup_adds_a_static_peer_and_an_invalid_config_leaves_the_node_as_it_was() {
    let d = hood();
    let dir = d.path();
    peer(dir, "a", 365);
    peer(dir, "b", 365);
    let mut args = vec!["node".to_owned()];
    args.extend(pki(dir, "b"));
    args.extend(["--control".into(), s(&dir.join("b.sock"))]);
    let b = Daemon::spawn(&args, &[]);
    let pb = b.port();
    // a: a config file and no --control: status finds the socket from the file's path.
    // Its log filter comes from the file (no RUST_LOG).
    let cfg = config(dir, "a.toml", "a", "log = \"warn\"\n");
    let cfg_s = s(&cfg);
    let log = dir.join("a.log");
    let mut a = Daemon::spawn_full(&["node".into(), "--config".into(), cfg_s.clone()], &[("RUST_LOG", "")], false, Some(&log));
    a.port();
    let by_config = ["--config", cfg_s.as_str()];
    assert!(names(&status(&by_config)).is_empty());

    // A second node on the same socket is refused, naming it.
    let o = run(&["node", "--config", &cfg_s]);
    assert!(!o.status.success() && text(&o.stderr).contains("another node is running with the control socket"), "{}", text(&o.stderr));

    // SIGHUP with b added to the static peer list: a dials it.
    config(dir, "a.toml", "a", &format!("log = \"warn\"\n[discovery]\nconnect = [\"127.0.0.1:{pb}\"]\n"));
    a.signal("HUP");
    let st = status_until(&by_config, "a connects to b after SIGHUP", |st| names(st) == ["b"]);
    let b_id = neighbour(&st, "b").unwrap()["id"].clone();

    // An invalid config: refused with the reason, the node goes on as before.
    config(dir, "a.toml", "a", &format!("[discovery]\nconnect = [\"127.0.0.1:{pb}\"]\n[limits]\nfull_policy = \"sometimes\"\n"));
    let o = run(&["status", "--config", &cfg_s, "--reload"]);
    let err = text(&o.stderr);
    assert!(!o.status.success() && err.contains("full_policy") && err.contains("sometimes"), "{err}");
    std::fs::write(&cfg, "prot = 1\n").unwrap();
    let o = run(&["status", "--config", &cfg_s, "--reload"]);
    assert!(!o.status.success() && text(&o.stderr).contains("prot"), "{}", text(&o.stderr));
    a.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert!(a.alive(), "an invalid config does not stop the node");
    let st = status(&by_config);
    assert_eq!(neighbour(&st, "b").map(|n| n["id"].clone()), Some(b_id), "still connected to the same b: {st}");

    // A good config again: a reload reports what it applied. The log
    // filter goes to debug (a new static target makes debug lines at once),
    // and a change to mDNS needs a restart.
    assert!(!std::fs::read_to_string(&log).unwrap().contains("DEBUG"), "no debug lines before");
    let free = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let good =
        format!("log = \"debug\"\n[discovery]\nconnect = [\"127.0.0.1:{pb}\", \"{free}\"]\nmdns = true\n[limits]\nqueue_limit = 100000\n");
    config(dir, "a.toml", "a", &good);
    let out = ok(&["status", "--config", &cfg_s, "--reload", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let applied: Vec<&str> = v["applied"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    assert!(applied.iter().any(|x| x.starts_with("limits: queue_limit 100000")), "{v}");
    assert!(applied.contains(&"log: debug") && applied.iter().any(|x| x.starts_with("connect: added")), "{v}");
    assert_eq!(v["restart_needed"], serde_json::json!(["mdns: false -> true"]));
    let t = Instant::now();
    while !std::fs::read_to_string(&log).unwrap().contains("DEBUG") {
        assert!(t.elapsed() < GUARD, "no debug line after the reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(a.term().success());
    drop(b);
    // The socket went with the node: a new node on the same config starts.
    let c = Daemon::spawn(&["node".into(), "--config".into(), cfg_s.clone()], &[]);
    c.port();
    assert!(c.term().success());
}

#[test]
fn a_certificate_rotated_by_reload_keeps_the_node_connected_and_new_handshakes_present_it() {
    let d = hood();
    let dir = d.path();
    peer(dir, "a", 365);
    peer(dir, "b", 365);
    peer(dir, "c", 365);
    let fingerprint = |file: &str| -> String {
        let v: Value = serde_json::from_str(&ok(&["cert", "show", &s(&dir.join(file)), "--json"])).unwrap();
        v["fingerprint"].as_str().unwrap().to_owned()
    };
    let old = fingerprint("h.a.crt");
    let cfg = config(dir, "a.toml", "a", "");
    let cfg_s = s(&cfg);
    let a = Daemon::spawn(&["node".into(), "--config".into(), cfg_s.clone(), "--control".into(), s(&dir.join("a.sock"))], &[]);
    let pa = a.port();
    let by_a = ["--control".to_owned(), s(&dir.join("a.sock"))];
    let by_a: Vec<&str> = by_a.iter().map(String::as_str).collect();
    let mut args = vec!["node".to_owned(), "--connect".into(), format!("127.0.0.1:{pa}"), "--control".into(), s(&dir.join("b.sock"))];
    args.extend(pki(dir, "b"));
    let b = Daemon::spawn(&args, &[]);
    b.port();
    let by_b = ["--control".to_owned(), s(&dir.join("b.sock"))];
    let by_b: Vec<&str> = by_b.iter().map(String::as_str).collect();
    let st = status_until(&by_b, "b connects to a", |st| names(st) == ["a"]);
    assert_eq!(neighbour(&st, "a").unwrap()["cert"], old.as_str());
    let a_id = neighbour(&st, "a").unwrap()["id"].clone();

    // A new certificate for a (same hood, same name), in another folder.
    let new_dir = dir.join("new");
    std::fs::create_dir(&new_dir).unwrap();
    for f in ["h.crt", "h.key"] {
        std::fs::copy(dir.join(f), new_dir.join(f)).unwrap();
    }
    peer(&new_dir, "a", 365);
    let new = fingerprint("new/h.a.crt");
    assert_ne!(old, new);

    // A certificate for another name is refused, and so is one of another hood.
    let wrong = "cert = \"h.c.crt\"\nkey = \"h.c.key\"\n";
    std::fs::write(&cfg, format!("ca = \"h.crt\"\n{wrong}port = \"0\"\nbind = \"127.0.0.1\"\n")).unwrap();
    let o = run(&["status", "--config", &cfg_s, "--control", by_a[1], "--reload"]);
    assert!(!o.status.success() && text(&o.stderr).contains("keeps the name"), "{}", text(&o.stderr));
    let other = tempfile::tempdir().unwrap();
    ok(&["hood", "create", "h", "--dir", other.path().to_str().unwrap()]);
    peer(other.path(), "a", 365);
    let o_s = |f: &str| s(&other.path().join(f));
    std::fs::write(
        &cfg,
        format!("ca = {:?}\ncert = {:?}\nkey = {:?}\nport = \"0\"\nbind = \"127.0.0.1\"\n", o_s("h.crt"), o_s("h.a.crt"), o_s("h.a.key")),
    )
    .unwrap();
    let o = run(&["status", "--control", by_a[1], "--reload"]);
    assert!(!o.status.success() && text(&o.stderr).contains("cannot change hoods"), "{}", text(&o.stderr));
    // A key that does not match the certificate.
    std::fs::write(&cfg, "ca = \"h.crt\"\ncert = \"new/h.a.crt\"\nkey = \"h.a.key\"\nport = \"0\"\nbind = \"127.0.0.1\"\n").unwrap();
    let o = run(&["status", "--control", by_a[1], "--reload"]);
    assert!(!o.status.success() && text(&o.stderr).contains("key"), "{}", text(&o.stderr));
    assert_eq!(status(&by_a)["certificate"]["fingerprint"], old.as_str(), "refused reloads change nothing");

    // The rotation.
    std::fs::write(&cfg, "ca = \"h.crt\"\ncert = \"new/h.a.crt\"\nkey = \"new/h.a.key\"\nport = \"0\"\nbind = \"127.0.0.1\"\n").unwrap();
    let out = ok(&["status", "--control", by_a[1], "--reload"]);
    assert!(out.contains("applied: certificate"), "{out}");
    assert_eq!(status(&by_a)["certificate"]["fingerprint"], new.as_str());

    // c, connecting now, sees the new certificate; b keeps its connection (and the old one).
    let mut args = vec!["node".to_owned(), "--connect".into(), format!("127.0.0.1:{pa}"), "--control".into(), s(&dir.join("c.sock"))];
    args.extend(pki(dir, "c"));
    let c = Daemon::spawn(&args, &[]);
    c.port();
    let by_c = ["--control".to_owned(), s(&dir.join("c.sock"))];
    let by_c: Vec<&str> = by_c.iter().map(String::as_str).collect();
    let st = status_until(&by_c, "c connects to a", |st| neighbour(st, "a").is_some());
    assert_eq!(neighbour(&st, "a").unwrap()["cert"], new.as_str(), "a new handshake presents the new certificate");
    let st = status_until(&by_b, "b meets c", |st| names(st) == ["a", "c"]);
    let a_at_b = neighbour(&st, "a").unwrap();
    assert_eq!((&a_at_b["id"], &a_at_b["cert"]), (&a_id, &Value::from(old.as_str())), "b's connection to a stayed up");
    for d in [c, b, a] {
        assert!(d.term().success());
    }
}

#[test]
fn the_node_tells_systemd_ready_reloading_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let d = hood();
    let dir = d.path();
    peer(dir, "a", 365);
    let notify = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(GUARD)).unwrap();
    let recv = || {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification within the guard time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let cfg = config(dir, "a.toml", "a", "");
    let control = s(&dir.join("a.sock"));
    let a =
        Daemon::spawn(&["node".into(), "--config".into(), s(&cfg), "--control".into(), control.clone()], &[("NOTIFY_SOCKET", &s(&notify))]);
    let ready = recv();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // Ready means listening: the ready line is out and the control socket answers.
    let port = a.port();
    assert_eq!(status(&["--control", &control])["port"], port);
    a.signal("HUP");
    let reloading = recv();
    assert!(reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reloading:?}");
    assert!(recv().lines().any(|l| l == "READY=1"), "READY=1 after the reload");
    a.signal("TERM");
    assert_eq!(recv(), "STOPPING=1");
    assert!(a.term().success());
}
