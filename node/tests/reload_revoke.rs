//! Issue 15: revocation by reload. A node whose config gains a revocation
//! list (`revoked = FILE`) cuts the revoked member out within a second of
//! `partybus status --reload`, the list spreads to the other members, the
//! revoked member cannot come back, and a forged list is refused by the
//! reload with the node going on as before. Real processes on loopback.

mod procs;

use std::time::{Duration, Instant};

use procs::*;
use serde_json::Value;

#[test]
fn a_reload_with_a_revocation_list_cuts_the_member_out_and_a_forged_list_is_refused() {
    let d = hood();
    let dir = d.path();
    for p in ["a", "b", "m"] {
        peer(dir, p, 365);
    }
    let cfg = config(dir, "a.toml", "a", "");
    let cfg_s = s(&cfg);
    let mut a = Daemon::spawn(&["node".into(), "--config".into(), cfg_s.clone()], &[]);
    let pa = a.port();
    let by_config = ["--config", cfg_s.as_str()];
    let spawn = |name: &str| {
        let mut args = vec!["node".to_owned()];
        args.extend(pki(dir, name));
        args.extend(["--connect".into(), format!("127.0.0.1:{pa}"), "--control".into(), s(&dir.join(format!("{name}.sock")))]);
        let p = Daemon::spawn(&args, &[]);
        p.port();
        p
    };
    let _b = spawn("b");
    let _m = spawn("m");
    let b_sock = s(&dir.join("b.sock"));
    let m_sock = s(&dir.join("m.sock"));
    status_until(&by_config, "a sees b and m", |st| {
        let mut n = names(st);
        n.sort();
        n == ["b", "m"]
    });

    // Revoke m, name the list in a's config, reload.
    ok(&["cert", "revoke", "h", "--cert", &s(&dir.join("h.m.crt")), "--dir", &s(dir)]);
    config(dir, "a.toml", "a", "revoked = \"h.revoked\"\n");
    let out = ok(&["status", "--config", &cfg_s, "--reload", "--json"]);
    let reloaded = Instant::now();
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["applied"].as_array().unwrap().iter().any(|x| x.as_str().unwrap().starts_with("revoked: sequence 1")), "{v}");
    status_until(&by_config, "a drops m", |st| names(st) == ["b"]);
    let took = reloaded.elapsed();
    assert!(took < Duration::from_secs(1), "m cut out {took:?} after the reload");
    // b never had the list: it gets it from a and drops m too; m is alone.
    status_until(&["--control", b_sock.as_str()], "b drops m", |st| names(st) == ["a"]);
    status_until(&["--control", m_sock.as_str()], "m is alone", |st| names(st).is_empty());
    // m keeps re-dialling (a lost neighbour) and never gets back in.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(names(&status(&by_config)), ["b"]);
    assert!(names(&status(&["--control", m_sock.as_str()])).is_empty());

    // A forged list (one byte of the signed part changed): the reload is refused, naming the file.
    let pem = std::fs::read_to_string(dir.join("h.revoked")).unwrap();
    let mut lines: Vec<String> = pem.lines().map(str::to_owned).collect();
    // The second line's fourth character encodes byte 50: the issued-at time.
    let body = &mut lines[2];
    let flip = if body.as_bytes()[3] == b'A' { "B" } else { "A" };
    body.replace_range(3..4, flip);
    std::fs::write(dir.join("forged.revoked"), lines.join("\n") + "\n").unwrap();
    config(dir, "a.toml", "a", "revoked = \"forged.revoked\"\n");
    let o = run(&["status", "--config", &cfg_s, "--reload"]);
    let err = text(&o.stderr);
    assert!(!o.status.success() && err.contains("forged.revoked") && err.contains("not signed by the key of hood \"h\""), "{err}");
    assert!(a.alive(), "a refused reload does not stop the node");
    assert_eq!(names(&status(&by_config)), ["b"]);
    assert!(a.term().success());
}
